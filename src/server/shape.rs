//! What every request must look like before anything else reads it, on every path (calldesk,
//! health, reflection, unknown ones):
//!
//! - **A content-type calldesk serves** ([`served`]): gRPC-Web's `application/grpc-web` or
//!   `application/grpc-web+proto` (exactly, as tonic-web recognises them), over HTTP/1.1 or
//!   HTTP/2; gRPC's `application/grpc` or `application/grpc+proto` (parameters such as
//!   `; charset=utf-8` and letter case aside) over HTTP/2 only. Anything else, or none, is
//!   HTTP 415, as the gRPC over HTTP/2 spec says, with `grpc-status` INVALID_ARGUMENT for gRPC
//!   clients (as grpc-go answers). tonic itself decodes any body as protobuf whatever it is
//!   labelled, so without this a `text/plain` POST would place a real call; since calldesk
//!   also speaks HTTP/1.1 (for gRPC-Web), such a POST is a "simple" cross-origin request that
//!   browsers send from any web page without a CORS preflight. The gRPC-Web types are not
//!   "simple": a browser sends them cross-origin only after a preflight that
//!   `--cors-allow-origin` answers. gRPC-Web's text encodings are not served. The console's own
//!   `GET`s never get here: [`super::console`] answers them in front of this layer.
//! - **Metadata within [`MAX_METADATA_BYTES`]** (16 KiB), counted as HTTP/2 counts a header
//!   list: name + value + 32 bytes per entry, pseudo-headers included. More is
//!   RESOURCE_EXHAUSTED for that request only. The transport itself decodes header lists up to
//!   [`MAX_HEADER_LIST_BYTES`] (256 KiB) so that they reach this check: past that h2 answers
//!   HTTP 431 itself, and far past it closes the connection (docs/api.md §7). HTTP/1.1 parses
//!   up to [`MAX_HTTP1_HEADER_FIELDS`] fields, so that its requests reach this check too, and a
//!   gRPC-Web client gets the same answers in its own form.
//! - **Who is calling, said once** ([`SENT_ONCE`]): `authorization`, `x-agent-id` and
//!   `x-calldesk-peer` at most once each, else INVALID_ARGUMENT naming the rule. The layers
//!   behind read a header's first value: a client's forged value, sent before the one an
//!   authenticating proxy appends, would otherwise win.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use http::{header::CONTENT_TYPE, HeaderMap, HeaderValue, Request, Response, StatusCode, Version};
use tower::{Layer, Service};

/// The gRPC content-types served over HTTP/2, compared without parameters and
/// case-insensitively.
const GRPC_CONTENT_TYPES: &[&str] = &["application/grpc", "application/grpc+proto"];

/// The gRPC-Web content-types served over HTTP/1.1 and HTTP/2, compared exactly: tonic-web
/// translates only these exact values (another spelling would reach tonic as plain gRPC).
const GRPC_WEB_CONTENT_TYPES: &[&str] = &["application/grpc-web", "application/grpc-web+proto"];

/// The content-type of calldesk's own gRPC-Web answers (tonic-web's).
const GRPC_WEB_RESPONSE_TYPE: &str = "application/grpc-web+proto";

/// The largest request metadata (header list) calldesk takes, as HTTP/2 counts it.
pub const MAX_METADATA_BYTES: usize = 16 * 1024;

/// The header list size HTTP/2 decodes (`SETTINGS_MAX_HEADER_LIST_SIZE`): above
/// [`MAX_METADATA_BYTES`], so that a request a little over calldesk's limit reaches this layer
/// and gets a gRPC status instead of h2's HTTP 431 (which clients see as UNKNOWN). It bounds
/// what one request's headers may hold in memory while they are decoded; more than about 1.25
/// times this in CONTINUATION frames, or 4 times it decoded, h2 treats as abuse and closes the
/// connection.
pub const MAX_HEADER_LIST_BYTES: u32 = 256 * 1024;

/// What HTTP/2 adds to each header's name and value when it sizes a header list (RFC 9113
/// §6.5.2).
const PER_HEADER_OVERHEAD: usize = 32;

/// The header fields HTTP/1.1 parses in one request (hyper's default is 100, and it answers
/// HTTP 431 past it): more than the 496 that fit in [`MAX_METADATA_BYTES`] as HTTP/2 counts
/// them (a name and 32 bytes each), so that HTTP/1.1 serves every request HTTP/2 serves, and
/// gives a gRPC-Web client RESOURCE_EXHAUSTED for metadata over 16 KiB in up to this many fields.
/// Not the 7,943 that fit in [`MAX_HEADER_LIST_BYTES`]: hyper sizes two arrays of a request by
/// this while it parses its head, and at 7,943 (0.5 MiB) that cost 12 µs per request against
/// 0.15 µs at 2,048 (64 KiB each: glibc then serves them without mmap).
pub const MAX_HTTP1_HEADER_FIELDS: usize = 2048;

/// The metadata that names the caller: each may be sent once at most.
const SENT_ONCE: [&str; 3] = [
    "authorization",
    crate::api::agent::AGENT_HEADER,
    super::auth::PEER_HEADER,
];

/// The first of [`SENT_ONCE`] that `headers` carry more than once, and how many times.
fn sent_twice(headers: &HeaderMap) -> Option<(&'static str, usize)> {
    SENT_ONCE.into_iter().find_map(|name| {
        let times = headers.get_all(name).iter().count();
        (times > 1).then_some((name, times))
    })
}

/// Refuses requests that are not gRPC or whose metadata is too large; see the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestShape;

impl<S> Layer<S> for RequestShape {
    type Service = RequestShapeService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestShapeService { inner }
    }
}

/// See [`RequestShape`].
#[derive(Debug, Clone)]
pub struct RequestShapeService<S> {
    inner: S,
}

/// Whether `headers` name a gRPC-Web content-type calldesk serves.
pub(crate) fn is_grpc_web(headers: &HeaderMap) -> bool {
    headers.get(CONTENT_TYPE).is_some_and(|v| {
        GRPC_WEB_CONTENT_TYPES
            .iter()
            .any(|t| v.as_bytes() == t.as_bytes())
    })
}

/// Whether `headers` name a gRPC content-type (gRPC-Web aside).
fn is_grpc(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let media_type = value.split(';').next().unwrap_or_default().trim();
    GRPC_CONTENT_TYPES
        .iter()
        .any(|served| media_type.eq_ignore_ascii_case(served))
}

/// Why a request of this content-type and HTTP version is not served, if it is not.
fn unserved(headers: &HeaderMap, version: Version) -> Option<String> {
    if is_grpc_web(headers) || (is_grpc(headers) && version == Version::HTTP_2) {
        return None;
    }
    if is_grpc(headers) {
        return Some(format!(
            "gRPC needs HTTP/2; over {version:?} the content-type must be {}",
            GRPC_WEB_CONTENT_TYPES.join(" or ")
        ));
    }
    Some(format!(
        "content-type must be {}, or over HTTP/2 {}",
        GRPC_WEB_CONTENT_TYPES.join(" or "),
        GRPC_CONTENT_TYPES.join(" or ")
    ))
}

/// Whether a request with these headers and this HTTP version is served; see the module docs.
pub fn served(headers: &HeaderMap, version: Version) -> bool {
    unserved(headers, version).is_none()
}

/// `status` as a trailers-only response that the request's client can read: gRPC's, or
/// gRPC-Web's content-type when the request was gRPC-Web (a gRPC-Web client refuses an
/// `application/grpc` answer). For the layers that answer before tonic-web does.
pub(crate) fn status_response<R: Default>(
    status: tonic::Status,
    request: &HeaderMap,
) -> Response<R> {
    status_response_in(status, is_grpc_web(request))
}

/// `status` as a trailers-only response, in gRPC-Web's form if `grpc_web`.
pub(crate) fn status_response_in<R: Default>(status: tonic::Status, grpc_web: bool) -> Response<R> {
    let mut response = status.into_http::<R>();
    if grpc_web {
        response.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static(GRPC_WEB_RESPONSE_TYPE),
        );
    }
    response
}

/// The request's header list size as HTTP/2 counts it.
fn metadata_bytes<B>(request: &Request<B>) -> usize {
    let uri = request.uri();
    let pseudo = [
        (":method".len(), request.method().as_str().len()),
        (":scheme".len(), uri.scheme_str().map_or(0, str::len)),
        (
            ":authority".len(),
            uri.authority().map_or(0, |a| a.as_str().len()),
        ),
        (
            ":path".len(),
            uri.path_and_query().map_or(0, |p| p.as_str().len()),
        ),
    ];
    pseudo
        .into_iter()
        .chain(
            request
                .headers()
                .iter()
                .map(|(name, value)| (name.as_str().len(), value.len())),
        )
        .map(|(name, value)| name + value + PER_HEADER_OVERHEAD)
        .sum()
}

/// Why a request is refused: the HTTP status, the gRPC code's name and the status.
fn refusal<B>(request: &Request<B>) -> Option<(StatusCode, &'static str, tonic::Status)> {
    if let Some(why) = unserved(request.headers(), request.version()) {
        let status = tonic::Status::invalid_argument(why);
        return Some((
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "INVALID_ARGUMENT",
            status,
        ));
    }
    let size = metadata_bytes(request);
    if size > MAX_METADATA_BYTES {
        let status = tonic::Status::resource_exhausted(format!(
            "the request metadata is {size} bytes, over the {} KiB limit",
            MAX_METADATA_BYTES / 1024
        ));
        return Some((StatusCode::OK, "RESOURCE_EXHAUSTED", status));
    }
    if let Some((name, times)) = sent_twice(request.headers()) {
        let status = crate::api::validate::bad_field(
            name,
            format!("must be sent at most once; this request has it {times} times"),
        );
        return Some((StatusCode::OK, "INVALID_ARGUMENT", status));
    }
    None
}

/// The response future of [`RequestShapeService`].
pub struct RequestShapeFuture<F, R> {
    state: State<F, R>,
}

enum State<F, R> {
    Inner(Pin<Box<F>>),
    Refused(Option<Response<R>>),
}

// The inner future is pinned in its box and the refusal is moved out, never pinned.
impl<F, R> Unpin for RequestShapeFuture<F, R> {}

impl<F, R, E> Future for RequestShapeFuture<F, R>
where
    F: Future<Output = Result<Response<R>, E>>,
{
    type Output = Result<Response<R>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.get_mut().state {
            State::Inner(inner) => inner.as_mut().poll(cx),
            State::Refused(response) => match response.take() {
                Some(response) => Poll::Ready(Ok(response)),
                None => Poll::Pending,
            },
        }
    }
}

/// The longest request path logged with a refusal.
const MAX_LOGGED_PATH: usize = 128;

impl<S, B, R> Service<Request<B>> for RequestShapeService<S>
where
    S: Service<Request<B>, Response = Response<R>>,
    R: Default,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = RequestShapeFuture<S::Future, R>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        if let Some((http_status, code, status)) = refusal(&request) {
            let path = request.uri().path();
            let path = path.get(..MAX_LOGGED_PATH).unwrap_or(path);
            tracing::warn!(
                method = path,
                http_status = http_status.as_u16(),
                code,
                reason = status.message(),
                "refused"
            );
            let mut response = status_response::<R>(status, request.headers());
            *response.status_mut() = http_status;
            return RequestShapeFuture {
                state: State::Refused(Some(response)),
            };
        }
        RequestShapeFuture {
            state: State::Inner(Box::pin(self.inner.call(request))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_content_type(value: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(value) = value {
            headers.insert(CONTENT_TYPE, value.parse().unwrap());
        }
        headers
    }

    #[test]
    fn grpc_over_http2_and_grpc_web_over_both() {
        for served in [
            "application/grpc",
            "application/grpc+proto",
            "Application/GRPC",
            "application/grpc ; charset=utf-8",
        ] {
            let headers = with_content_type(Some(served));
            assert!(super::served(&headers, Version::HTTP_2), "{served}");
            assert!(
                !super::served(&headers, Version::HTTP_11),
                "{served} over HTTP/1.1"
            );
        }
        for served in ["application/grpc-web", "application/grpc-web+proto"] {
            let headers = with_content_type(Some(served));
            for version in [Version::HTTP_11, Version::HTTP_2] {
                assert!(super::served(&headers, version), "{served} {version:?}");
            }
        }
        for refused in [
            None,
            Some(""),
            Some("text/plain"),
            Some("application/x-www-form-urlencoded"),
            Some("multipart/form-data"),
            Some("application/json"),
            Some("application/grpc+json"),
            Some("application/grpc-web-text"),
            Some("application/grpc-web-text+proto"),
            Some("application/grpc-web+json"),
            Some("application/grpc-web; charset=utf-8"),
            Some("Application/GRPC-Web"),
            Some("application/grpcx"),
            Some("application/grpc+protobuf"),
        ] {
            let headers = with_content_type(refused);
            for version in [Version::HTTP_11, Version::HTTP_2] {
                assert!(!super::served(&headers, version), "{refused:?} {version:?}");
            }
        }
    }

    #[test]
    fn who_is_calling_is_said_once() {
        let mut headers = HeaderMap::new();
        headers.append("x-agent-id", "a".parse().unwrap());
        headers.append("x-other", "1".parse().unwrap());
        headers.append("x-other", "2".parse().unwrap());
        assert_eq!(sent_twice(&headers), None);
        headers.append("authorization", "Bearer a".parse().unwrap());
        headers.append("authorization", "Bearer b".parse().unwrap());
        headers.append("x-agent-id", "b".parse().unwrap());
        headers.append("x-agent-id", "c".parse().unwrap());
        assert_eq!(sent_twice(&headers), Some(("authorization", 2)));
        headers.remove("authorization");
        assert_eq!(sent_twice(&headers), Some(("x-agent-id", 3)));
    }

    #[test]
    fn metadata_is_counted_as_http2_counts_it() {
        let request = Request::builder()
            .uri("http://h/p")
            .header("ab", "xyz")
            .body(())
            .unwrap();
        // :method GET, :scheme http, :authority h, :path /p, ab: xyz
        let expected = (7 + 3) + (7 + 4) + (10 + 1) + (5 + 2) + (2 + 3) + 5 * 32;
        assert_eq!(metadata_bytes(&request), expected);
    }
}
