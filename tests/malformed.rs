//! Malformed requests: every one is refused with a precise answer and places nothing.
//!
//! - Undecodable messages (bad protobuf, bad gRPC framing, no message) are INVALID_ARGUMENT,
//!   never INTERNAL (which would tell the client "the operation may have happened").
//! - A content-type other than `application/grpc` / `application/grpc+proto` is HTTP 415, on
//!   every path.
//! - Metadata over the 16 KiB limit is RESOURCE_EXHAUSTED for that request only; the
//!   connection's other calls go on. Past h2's own limit the answers are h2's (pinned here).
//! - `after_sequence` beyond the interaction's latest sequence is OUT_OF_RANGE.
//!
//! What tonic can send is sent with tonic (a raw-bytes codec for bad protobuf); what it cannot
//! (bad frames, other content-types, a GET) is sent over raw HTTP/2 with the `h2` crate.

mod support;

use std::{net::SocketAddr, time::Duration};

use bytes::{Buf, BufMut, Bytes};
use calldesk::proto::InteractionState as S;
use prost::Message;
use support::{in_process::TestServer, *};
use tonic::{
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    metadata::MetadataValue,
    Code, Status,
};

const START_CALL: &str = "/calldesk.v1.InteractionService/StartCall";
const WATCH_INTERACTION: &str = "/calldesk.v1.InteractionService/WatchInteraction";
const HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";
const REFLECTION: &str = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo";

// ---------------------------------------------------------------------------------------------
// A tonic client that sends whatever bytes it is given as the message.

/// Sends `Vec<u8>` as the message as it is, and returns the response message's bytes.
#[derive(Default, Clone)]
struct RawBytes;

impl Codec for RawBytes {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawBytes;
    type Decoder = RawBytes;
    fn encoder(&mut self) -> RawBytes {
        RawBytes
    }
    fn decoder(&mut self) -> RawBytes {
        RawBytes
    }
}

impl Encoder for RawBytes {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawBytes {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

/// A unary call of `path` with `message` as the request's bytes, from a tonic client.
async fn tonic_unary(addr: SocketAddr, path: &'static str, message: Vec<u8>) -> Status {
    let channel = endpoint(addr).connect_lazy();
    let mut grpc = tonic::client::Grpc::new(channel);
    let call = async {
        grpc.ready().await.expect("channel ready");
        let mut request = tonic::Request::new(message);
        request
            .metadata_mut()
            .insert("x-agent-id", MetadataValue::from_static("malformed"));
        grpc.unary(
            request,
            http::uri::PathAndQuery::from_static(path),
            RawBytes,
        )
        .await
    };
    match tokio::time::timeout(WAIT, call).await.expect("answered") {
        Ok(response) => panic!("{path}: accepted {:?}", response.into_inner()),
        Err(status) => status,
    }
}

// ---------------------------------------------------------------------------------------------
// Raw HTTP/2

/// One gRPC length-prefixed frame: the compression flag, a declared length, the payload.
fn frame(flag: u8, declared_len: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + payload.len());
    out.push(flag);
    out.extend_from_slice(&declared_len.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A well-formed frame carrying `message`.
fn message_frame(message: &impl Message) -> Vec<u8> {
    let payload = message.encode_to_vec();
    frame(0, payload.len() as u32, &payload)
}

/// What came back on one raw HTTP/2 stream.
#[derive(Debug)]
struct RawResponse {
    status: http::StatusCode,
    headers: http::HeaderMap,
    body: Vec<u8>,
    trailers: Option<http::HeaderMap>,
}

impl RawResponse {
    /// The gRPC status: from the headers (trailers-only) or else the trailers.
    fn grpc(&self) -> Option<(Code, String)> {
        let from = |map: &http::HeaderMap| {
            let code = map.get("grpc-status")?.to_str().ok()?.parse::<i32>().ok()?;
            let message = map
                .get("grpc-message")
                .map(|m| percent_decode(m.as_bytes()))
                .unwrap_or_default();
            Some((Code::from_i32(code), message))
        };
        from(&self.headers).or_else(|| self.trailers.as_ref().and_then(from))
    }
}

/// One request on a fresh HTTP/2 (h2c) connection: `headers` besides the pseudo-headers, and
/// `body` (None: the HEADERS frame ends the stream).
async fn raw_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Vec<u8>>,
) -> RawResponse {
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (client, connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
        tokio::spawn(connection);
        let mut client = client.ready().await.expect("h2 ready");
        let mut request = http::Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(()).expect("request");
        let (response, mut send) = client
            .send_request(request, body.is_none())
            .expect("send headers");
        if let Some(body) = body {
            // A server that answers from the headers alone may reset the stream first.
            let _ = send.send_data(Bytes::from(body), true);
        }
        let response = response.await.expect("response headers");
        let (parts, mut recv) = response.into_parts();
        let mut body = Vec::new();
        while let Some(chunk) = recv.data().await {
            let chunk = chunk.expect("response body");
            let _ = recv.flow_control().release_capacity(chunk.len());
            body.extend_from_slice(&chunk);
        }
        let trailers = recv.trailers().await.expect("response trailers");
        RawResponse {
            status: parts.status,
            headers: parts.headers,
            body,
            trailers,
        }
    };
    tokio::time::timeout(WAIT, exchange)
        .await
        .expect("answered within the timeout")
}

/// A gRPC POST of `body` to `path` as agent `agent`, with `content-type` (None: without one)
/// and any `extra` headers.
async fn grpc_post(
    addr: SocketAddr,
    path: &str,
    agent: &str,
    content_type: Option<&str>,
    extra: &[(&str, &str)],
    body: Vec<u8>,
) -> RawResponse {
    let mut headers = vec![("te", "trailers"), ("x-agent-id", agent)];
    if let Some(content_type) = content_type {
        headers.push(("content-type", content_type));
    }
    headers.extend_from_slice(extra);
    raw_request(addr, "POST", path, &headers, Some(body)).await
}

fn assert_invalid_argument(what: &str, response: &RawResponse, says: &str) {
    let (code, message) = response
        .grpc()
        .unwrap_or_else(|| panic!("{what}: no grpc-status in {response:?}"));
    assert_eq!(
        (code, response.status),
        (Code::InvalidArgument, http::StatusCode::OK),
        "{what}: {message:?}"
    );
    assert!(
        message.contains(says),
        "{what}: the message {message:?} should say {says:?}"
    );
}

async fn interactions_of(server: &TestServer, agent: &str) -> usize {
    let mut client = server.client(agent);
    list_all(&mut client, S::Unspecified).await.len()
}

// ---------------------------------------------------------------------------------------------
// 5. Undecodable messages are INVALID_ARGUMENT

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_protobuf_is_invalid_argument() {
    let server = TestServer::start().await;
    let addr = server.addr();

    // phone_number (field 1, a string) holding bytes that are not UTF-8.
    let status = tonic_unary(addr, START_CALL, vec![0x0a, 0x02, 0xff, 0xfe]).await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status
            .message()
            .starts_with("the request message could not be decoded")
            && status.message().contains("phone_number")
            && status.message().contains("UTF-8"),
        "{status:?}"
    );

    // An unknown field (15: StartCallRequest has 1 to 4) whose varint runs past 10 bytes.
    let mut bad_varint = vec![0x78];
    bad_varint.extend([0xff; 11]);
    let status = tonic_unary(addr, START_CALL, bad_varint).await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("invalid varint"), "{status:?}");

    // The same through the server-streaming path (WatchInteraction), over raw HTTP/2.
    let mut bad_varint = vec![0x10];
    bad_varint.extend([0xff; 11]);
    let response = grpc_post(
        addr,
        WATCH_INTERACTION,
        "malformed",
        Some("application/grpc"),
        &[],
        frame(0, bad_varint.len() as u32, &bad_varint),
    )
    .await;
    assert_invalid_argument("WatchInteraction, bad varint", &response, "invalid varint");

    // Health is gRPC too, with tonic-health's own codec.
    let status = tonic_unary(addr, HEALTH_CHECK, vec![0x0a, 0x01, 0xff]).await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("UTF-8"), "{status:?}");

    assert_eq!(interactions_of(&server, "malformed").await, 0);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_grpc_framing_is_invalid_argument() {
    let server = TestServer::start().await;
    let addr = server.addr();
    let valid = start_req(NUM_OK).encode_to_vec();
    let post = |extra: &'static [(&'static str, &'static str)], body: Vec<u8>| {
        grpc_post(
            addr,
            START_CALL,
            "framing",
            Some("application/grpc"),
            extra,
            body,
        )
    };

    // The frame says 100 bytes; the body ends after 10.
    let response = post(&[], frame(0, 100, &valid[..10])).await;
    assert_invalid_argument("truncated message", &response, "truncated");
    // The body ends inside the 5-byte frame header.
    let response = post(&[], vec![0, 0, 0]).await;
    assert_invalid_argument("truncated frame header", &response, "truncated");

    // A compression flag that is neither 0 nor 1.
    let response = post(&[], frame(2, valid.len() as u32, &valid)).await;
    assert_invalid_argument("compression flag 2", &response, "compression flag 2");

    // Compressed, but no grpc-encoding says how.
    let response = post(&[], frame(1, valid.len() as u32, &valid)).await;
    assert_invalid_argument("compressed, no grpc-encoding", &response, "grpc-encoding");
    // grpc-encoding identity is no compression either.
    let response = post(
        &[("grpc-encoding", "identity")],
        frame(1, valid.len() as u32, &valid),
    )
    .await;
    assert_invalid_argument("compressed, identity", &response, "grpc-encoding");

    // No message at all: a POST with an empty body, and a GET.
    let response = post(&[], Vec::new()).await;
    assert_invalid_argument("empty body", &response, "no request message");
    let response = raw_request(
        addr,
        "GET",
        START_CALL,
        &[
            ("te", "trailers"),
            ("content-type", "application/grpc"),
            ("x-agent-id", "framing"),
        ],
        None,
    )
    .await;
    assert_invalid_argument("GET without a body", &response, "no request message");

    // Nothing was placed, and the same frames, well formed, still place a call.
    assert_eq!(interactions_of(&server, "framing").await, 0);
    let response = post(&[], frame(0, valid.len() as u32, &valid)).await;
    assert_eq!(
        response.grpc().map(|(c, _)| c),
        Some(Code::Ok),
        "{response:?}"
    );
    assert_eq!(interactions_of(&server, "framing").await, 1);
    server.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 6. Content-type

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_types_other_than_grpc_are_415_and_place_nothing() {
    let server = TestServer::start().await;
    let addr = server.addr();
    let body = message_frame(&start_req(NUM_OK));

    for content_type in [
        Some("text/plain"),
        Some("application/json"),
        Some("application/grpc+json"),
        Some("application/x-www-form-urlencoded"),
        // gRPC-Web is served (tests/grpc_web.rs), but not its text encoding.
        Some("application/grpc-web-text"),
        Some("application/grpcx"),
        None,
    ] {
        let response = grpc_post(addr, START_CALL, "ct", content_type, &[], body.clone()).await;
        assert_eq!(
            response.status,
            http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "{content_type:?}: {response:?}"
        );
        assert!(response.body.is_empty(), "{content_type:?}: {response:?}");
        let (code, message) = response.grpc().expect("a grpc-status for gRPC clients");
        assert_eq!(code, Code::InvalidArgument, "{content_type:?}");
        assert!(message.contains("content-type"), "{message}");
    }
    assert_eq!(
        interactions_of(&server, "ct").await,
        0,
        "a refused content-type placed a call"
    );

    // Health and reflection, and paths that do not exist, are refused the same way.
    for path in [HEALTH_CHECK, REFLECTION, "/no.such.Service/Method"] {
        let response = grpc_post(addr, path, "ct", Some("text/plain"), &[], vec![0; 5]).await;
        assert_eq!(
            response.status,
            http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "{path}: {response:?}"
        );
    }

    // gRPC's own content-types are served: with parameters, and in any case.
    for content_type in [
        "application/grpc",
        "application/grpc+proto",
        "application/GRPC+Proto",
        "application/grpc; charset=utf-8",
    ] {
        let response = grpc_post(
            addr,
            START_CALL,
            "ct",
            Some(content_type),
            &[],
            body.clone(),
        )
        .await;
        assert_eq!(
            (response.status, response.grpc().map(|(c, _)| c)),
            (http::StatusCode::OK, Some(Code::Ok)),
            "{content_type}: {response:?}"
        );
    }
    assert_eq!(interactions_of(&server, "ct").await, 4);
    server.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 7. Metadata size

/// A StartCall with a `x-padding` metadata value of `len` bytes, on `client`'s connection.
async fn start_with_padding(client: &mut Client, len: usize) -> Result<(), Status> {
    let mut request = tonic::Request::new(start_req(NUM_OK));
    let padding = "p".repeat(len);
    request.metadata_mut().insert(
        "x-padding",
        MetadataValue::try_from(padding.as_str()).expect("ascii"),
    );
    match tokio::time::timeout(WAIT, client.start_call(request)).await {
        Ok(result) => result.map(|_| ()),
        Err(_) => panic!("StartCall with {len} bytes of metadata: no answer"),
    }
}

/// Checks that `watch` (a WatchInteractions opened on the same connection) is still alive: a
/// new call's events reach it.
async fn assert_connection_alive(
    client: &mut Client,
    watch: &mut tonic::Streaming<calldesk::proto::InteractionEvent>,
    what: &str,
) {
    let id = start_call(client, NUM_OK).await;
    end(client, &id).await.expect("EndCall");
    loop {
        match tokio::time::timeout(WAIT, watch.message()).await {
            Ok(Ok(Some(e))) if e.interaction_id == id && e.state == S::WrapUp as i32 => return,
            Ok(Ok(Some(_))) => {}
            other => panic!("{what}: the open watch on the same connection failed: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_over_the_limit_refuses_only_that_request() {
    let server = TestServer::start_with(|c| c.max_active_calls = 1000).await;
    // One client, so one connection: the watch and every call share it.
    let mut client = server.client("meta");
    let mut watch = watch_all(&mut client).await;

    start_with_padding(&mut client, 15 * 1024)
        .await
        .expect("15 KiB of metadata is within the limit");

    for kib in [17, 48, 100, 200] {
        let status = start_with_padding(&mut client, kib * 1024)
            .await
            .expect_err("over the limit");
        assert_eq!(
            status.code(),
            Code::ResourceExhausted,
            "{kib} KiB of metadata: {status:?}"
        );
        assert!(
            status.message().contains("metadata") && status.message().contains("16 KiB"),
            "{kib} KiB: {status:?}"
        );
        assert_connection_alive(&mut client, &mut watch, &format!("after {kib} KiB")).await;
    }
    // Every refused call placed nothing: 15 KiB's and the five probes' calls only.
    assert_eq!(interactions_of(&server, "meta").await, 5);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_past_the_transport_limit_gets_h2s_answers() {
    let server = TestServer::start().await;
    let mut client = server.client("meta");
    let mut watch = watch_all(&mut client).await;

    // Over h2's 256 KiB header list: h2 answers HTTP 431 itself, which gRPC clients see as
    // UNKNOWN; the connection and its other calls go on.
    let status = start_with_padding(&mut client, 300 * 1024)
        .await
        .expect_err("over the transport's limit");
    assert_eq!(status.code(), Code::Unknown, "{status:?}");
    assert!(status.message().contains("431"), "{status:?}");
    assert_connection_alive(&mut client, &mut watch, "after 300 KiB").await;

    // Far over it (more CONTINUATION frames than h2 takes for 256 KiB): h2 closes the whole
    // connection (GOAWAY ENHANCE_YOUR_CALM), and the other calls on it fail.
    let status = start_with_padding(&mut client, 1024 * 1024)
        .await
        .expect_err("far over the transport's limit");
    assert_ne!(status.code(), Code::Ok);
    match tokio::time::timeout(WAIT, watch.message()).await {
        Ok(Err(_)) | Ok(Ok(None)) => {}
        other => panic!("the watch on the closed connection should end: {other:?}"),
    }
    // The server itself is fine.
    let mut other = server.client("meta");
    start_call(&mut other, NUM_OK).await;
    server.shutdown().await;
}

/// Issue 22: gRPC-Web over HTTP/1.1 keeps the metadata promise of HTTP/2 whatever the number of
/// fields: 150 small ones (about 6 KiB) are served, and 600 or 2,000 (24 and 80 KiB as HTTP/2
/// counts them) are RESOURCE_EXHAUSTED in gRPC-Web's form, not an HTTP 431 without a status.
/// Past 2,048 fields HTTP/1.1's own limit answers 431 (docs/api.md §7), pinned here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_web_over_http1_keeps_the_metadata_limit_past_100_fields() {
    use support::grpc_web;
    let dir = tempfile::tempdir().expect("temp dir");
    let server = support::process::ServerProcess::start(dir.path(), &[]).await;
    let addr: SocketAddr = server.addr().parse().expect("address");
    for (fields, served) in [(150, true), (600, false), (2000, false)] {
        let names: Vec<String> = (0..fields).map(|i| format!("x-f-{i}")).collect();
        let mut headers: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "v")).collect();
        headers.push(("x-agent-id", "many-fields"));
        let reply = grpc_web::call(
            addr,
            "ListInteractions",
            &calldesk::proto::ListInteractionsRequest::default(),
            &headers,
        )
        .await;
        assert_eq!(
            reply.http,
            http::StatusCode::OK,
            "{fields} fields: {reply:?}"
        );
        assert_eq!(
            reply.headers.get("content-type").map(|v| v.as_bytes()),
            Some(grpc_web::GRPC_WEB.as_bytes()),
            "{fields} fields: answered in gRPC-Web's form"
        );
        if served {
            assert_eq!(
                reply.code(),
                Some(Code::Ok),
                "{fields} fields: {}",
                reply.message()
            );
        } else {
            assert_eq!(
                reply.code(),
                Some(Code::ResourceExhausted),
                "{fields} fields: {}",
                reply.message()
            );
            assert!(reply.message().contains("16 KiB"), "{}", reply.message());
        }
    }
    let names: Vec<String> = (0..3000).map(|i| format!("x-f-{i}")).collect();
    let headers: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "v")).collect();
    let request = grpc_web::post(
        "/calldesk.v1.InteractionService/ListInteractions",
        grpc_web::GRPC_WEB,
        &headers,
        grpc_web::frame(&calldesk::proto::ListInteractionsRequest::default()),
    );
    let response = grpc_web::send(addr, http::Version::HTTP_11, request).await;
    assert_eq!(response.status(), 431, "3,000 fields: HTTP/1.1's own limit");
}

// ---------------------------------------------------------------------------------------------
// 8. after_sequence beyond the end

fn assert_out_of_range(status: &Status, after: u64, latest: u64) {
    assert_eq!(status.code(), Code::OutOfRange, "after {after}: {status:?}");
    assert!(
        status
            .message()
            .contains(&format!("latest sequence is {latest}")),
        "after {after}: {status:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_sequence_beyond_a_live_interaction_is_out_of_range() {
    let server = TestServer::start().await;
    let mut c = server.client("seq");
    let id = start_call(&mut c, NUM_OK).await;
    let mut w = watch(&mut c, &id, 0).await;
    let seen = wait_for_state(&mut w, S::Delivered).await;
    let latest = seen.last().expect("events").sequence;
    assert_eq!(latest, 3);

    for after in [1 << 63, u64::MAX, latest + 1] {
        let status = watch_err(&mut c, &id, after).await;
        assert_out_of_range(&status, after, latest);
    }

    // Equal to the latest is valid: the stream waits for the next event.
    let mut at_latest = watch(&mut c, &id, latest).await;
    end(&mut c, &id).await.expect("EndCall");
    let event = next_event(&mut at_latest, WAIT).await;
    assert_eq!(event.sequence, latest + 1);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_sequence_beyond_a_completed_interaction_is_out_of_range() {
    let server =
        TestServer::start_with(|c| c.wrap_up_timeout = Some(Duration::from_millis(1))).await;
    let mut c = server.client("seq");
    let id = start_call(&mut c, NUM_BUSY).await;
    let mut w = watch(&mut c, &id, 0).await;
    let events = collect_until_completed(&mut w, WAIT).await;
    let last = events.last().expect("events").sequence;

    let status = watch_err(&mut c, &id, last + 1).await;
    assert_out_of_range(&status, last + 1, last);
    // At the last sequence: OK at once, with nothing.
    let mut w = watch(&mut c, &id, last).await;
    let (rest, end) = collect_to_end(&mut w, WAIT).await;
    end.expect("ends with OK");
    assert!(rest.is_empty(), "{rest:?}");
    server.shutdown().await;
}
