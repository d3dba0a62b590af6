//! gRPC-Web as a browser speaks it: POSTs of `application/grpc-web+proto` over HTTP/1.1 (or
//! HTTP/2 with prior knowledge), length-prefixed frames in the body, and the status either in
//! the response headers (trailers-only) or in the body's trailers frame (flag 0x80). Raw on
//! purpose, so that tests choose every header (Origin, content-type, grpc-timeout, …).

use std::{net::SocketAddr, time::Duration};

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tonic::Code;

use super::{percent_decode, WAIT};

/// The content-type browsers' gRPC-Web clients send.
pub const GRPC_WEB: &str = "application/grpc-web+proto";
/// The path prefix of calldesk's service.
pub const SERVICE: &str = "/calldesk.v1.InteractionService/";

/// A request's message as one gRPC-Web data frame.
pub fn frame(message: &impl prost::Message) -> Bytes {
    let payload = message.encode_to_vec();
    let mut out = Vec::with_capacity(5 + payload.len());
    out.push(0);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(&payload);
    out.into()
}

/// Sends `request` on a new connection of `version`, returns the response with its body
/// unread.
pub async fn send(
    addr: SocketAddr,
    version: Version,
    mut request: Request<Full<Bytes>>,
) -> Response<Incoming> {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let io = TokioIo::new(stream);
    *request.uri_mut() = format!("http://{addr}{}", request.uri().path())
        .parse()
        .expect("uri");
    let sent = async move {
        if version == Version::HTTP_2 {
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                    .await
                    .expect("h2 handshake");
            tokio::spawn(conn);
            sender.send_request(request).await
        } else {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .expect("h1 handshake");
            tokio::spawn(conn);
            sender.send_request(request).await
        }
    };
    tokio::time::timeout(WAIT, sent)
        .await
        .expect("response headers within the timeout")
        .expect("response")
}

/// A POST of `body` to `path` with `content_type` and the extra `headers`.
pub fn post(
    path: &str,
    content_type: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Request<Full<Bytes>> {
    let mut builder = Request::builder()
        .method(Method::POST)
        .uri(path)
        .header("content-type", content_type)
        .header("x-grpc-web", "1");
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(Full::new(body)).expect("request")
}

/// A whole gRPC-Web response.
#[derive(Debug)]
pub struct WebReply {
    pub http: StatusCode,
    pub headers: HeaderMap,
    /// The data frames' payloads, in order.
    pub messages: Vec<Bytes>,
    /// The trailers frame, if the body had one.
    pub trailers: Option<HeaderMap>,
}

impl WebReply {
    /// The gRPC status: the headers' (trailers-only), else the trailers frame's.
    pub fn code(&self) -> Option<Code> {
        let value = self
            .headers
            .get("grpc-status")
            .or_else(|| self.trailers.as_ref()?.get("grpc-status"))?;
        Some(Code::from_bytes(value.as_bytes()))
    }

    /// The decoded `grpc-message`, from wherever the status is.
    pub fn message(&self) -> String {
        let value = self
            .headers
            .get("grpc-message")
            .or_else(|| self.trailers.as_ref()?.get("grpc-message"));
        value
            .map(|v| percent_decode(v.as_bytes()))
            .unwrap_or_default()
    }

    /// The `i`th message, decoded.
    pub fn decode<M: prost::Message + Default>(&self, i: usize) -> M {
        M::decode(self.messages[i].clone()).expect("a well-formed message")
    }
}

/// Reads a gRPC-Web body frame by frame.
pub struct WebStream {
    body: Incoming,
    buffer: BytesMut,
    /// Set once the trailers frame was read.
    pub trailers: Option<HeaderMap>,
}

impl WebStream {
    pub fn new(body: Incoming) -> WebStream {
        WebStream {
            body,
            buffer: BytesMut::new(),
            trailers: None,
        }
    }

    /// The next message, or None at the trailers frame or the body's end (within `wait`).
    pub async fn next(&mut self, wait: Duration) -> Option<Bytes> {
        tokio::time::timeout(wait, self.next_frame())
            .await
            .expect("a frame or the end within the timeout")
    }

    async fn next_frame(&mut self) -> Option<Bytes> {
        loop {
            if self.buffer.len() >= 5 {
                let len = u32::from_be_bytes(self.buffer[1..5].try_into().unwrap()) as usize;
                if self.buffer.len() >= 5 + len {
                    let flag = self.buffer[0];
                    self.buffer.advance(5);
                    let payload = self.buffer.split_to(len).freeze();
                    if flag & 0x80 != 0 {
                        self.trailers = Some(parse_trailers(&payload));
                        return None;
                    }
                    return Some(payload);
                }
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buffer.extend_from_slice(&data);
                    }
                }
                Some(Err(e)) => panic!("body error: {e}"),
                None => return None,
            }
        }
    }
}

fn parse_trailers(payload: &[u8]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for line in String::from_utf8_lossy(payload).split("\r\n") {
        if let Some((name, value)) = line.split_once(':') {
            if let (Ok(name), Ok(value)) = (
                http::HeaderName::from_bytes(name.trim().to_ascii_lowercase().as_bytes()),
                http::HeaderValue::from_str(value.trim()),
            ) {
                map.append(name, value);
            }
        }
    }
    map
}

/// Sends `request` and reads the whole reply.
pub async fn exchange(
    addr: SocketAddr,
    version: Version,
    request: Request<Full<Bytes>>,
) -> WebReply {
    let response = send(addr, version, request).await;
    let (parts, body) = response.into_parts();
    let mut stream = WebStream::new(body);
    let mut messages = Vec::new();
    while let Some(message) = stream.next(WAIT).await {
        messages.push(message);
    }
    WebReply {
        http: parts.status,
        headers: parts.headers,
        messages,
        trailers: stream.trailers,
    }
}

/// A unary gRPC-Web call of `method` over HTTP/1.1, as a browser makes it.
pub async fn call(
    addr: SocketAddr,
    method: &str,
    message: &impl prost::Message,
    headers: &[(&str, &str)],
) -> WebReply {
    let path = format!("{SERVICE}{method}");
    exchange(
        addr,
        Version::HTTP_11,
        post(&path, GRPC_WEB, headers, frame(message)),
    )
    .await
}
