//! The agent's console at `/`: the page, script and style that `web/console` builds into
//! `web/console/dist` (committed, so that building calldesk needs no Node), embedded in the
//! binary so that one executable stays the whole install.
//!
//! [`ConsoleLayer`] answers `GET` and `HEAD` of the console's own paths and passes everything
//! else on unchanged: gRPC and gRPC-Web requests (POST) go to the services, and any other
//! request meets [`super::shape`]'s content-type rule (HTTP 415). The console is public (it
//! holds no data; the agent signs in inside it) and so sits in front of authentication and of
//! the per-RPC metrics and logs.
//!
//! The page talks gRPC-Web to the origin it came from; its headers forbid framing
//! (click-jacking a page that places calls) and loading anything from elsewhere.

use std::{
    future::Future,
    pin::Pin,
    sync::LazyLock,
    task::{Context, Poll},
};

use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use sha2::{Digest, Sha256};
use tonic::body::Body;
use tower::{Layer, Service};

/// One embedded file.
struct Asset {
    /// The request path that serves it.
    path: &'static str,
    /// Its `content-type`.
    content_type: &'static str,
    /// Its bytes, as `web/console/build.mjs` wrote them.
    bytes: &'static [u8],
}

/// The console's files. `/` is the page; the page loads the other two.
const ASSETS: &[Asset] = &[
    Asset {
        path: "/",
        content_type: "text/html; charset=utf-8",
        bytes: include_bytes!("../../web/console/dist/index.html"),
    },
    Asset {
        path: "/console.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../../web/console/dist/console.js"),
    },
    Asset {
        path: "/console.css",
        content_type: "text/css; charset=utf-8",
        bytes: include_bytes!("../../web/console/dist/console.css"),
    },
];

/// The page's Content-Security-Policy: its own script, style and origin only (gRPC-Web goes
/// to the origin that served it), no framing, no forms posted anywhere.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// The page's sign-in mode as it ships: an agent id sent as `x-agent-id`.
const DEVELOPMENT_MODE: &str = r#"<meta name="calldesk-auth" content="development">"#;
/// The same with `--auth-tokens` or `--jwt-jwks`: the agent pastes a bearer token or a JWT.
const TOKEN_MODE: &str = r#"<meta name="calldesk-auth" content="token">"#;

/// An asset ready to send: its bytes (the page's with the sign-in mode set) and strong ETag.
struct Served {
    asset: &'static Asset,
    bytes: bytes::Bytes,
    etag: HeaderValue,
}

/// The assets as served without and with `--auth-tokens` or `--jwt-jwks`.
static SERVED: LazyLock<[Vec<Served>; 2]> = LazyLock::new(|| [served(false), served(true)]);

fn served(tokens: bool) -> Vec<Served> {
    ASSETS
        .iter()
        .map(|asset| {
            let bytes = if tokens && asset.path == "/" {
                String::from_utf8_lossy(asset.bytes)
                    .replace(DEVELOPMENT_MODE, TOKEN_MODE)
                    .into_bytes()
                    .into()
            } else {
                bytes::Bytes::from_static(asset.bytes)
            };
            let digest = Sha256::digest(&bytes);
            let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
            let etag = HeaderValue::from_str(&format!("\"{hex}\""))
                .unwrap_or(HeaderValue::from_static("\"\""));
            Served { asset, bytes, etag }
        })
        .collect()
}

/// Serves the console's files; see the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConsoleLayer {
    /// Whether the server authenticates (`--auth-tokens`, `--jwt-jwks`): the page then asks
    /// for a token.
    tokens: bool,
}

impl ConsoleLayer {
    /// The console for a server that authenticates (`tokens`) or not.
    pub fn new(tokens: bool) -> Self {
        ConsoleLayer { tokens }
    }
}

impl<S> Layer<S> for ConsoleLayer {
    type Service = ConsoleService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ConsoleService {
            inner,
            tokens: self.tokens,
        }
    }
}

/// See [`ConsoleLayer`].
#[derive(Debug, Clone)]
pub struct ConsoleService<S> {
    inner: S,
    /// See [`ConsoleLayer`].
    tokens: bool,
}

/// The answer to a `GET`/`HEAD` of `served`.
fn answer(served: &Served, method: &Method, headers: &HeaderMap) -> Response<Body> {
    let asset = served.asset;
    let etag = served.etag.clone();
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|tags| tags.as_bytes() == etag.as_bytes());
    let mut response = Response::new(if fresh || method == Method::HEAD {
        Body::empty()
    } else {
        Body::new(OneChunk(Some(served.bytes.clone())))
    });
    if fresh {
        *response.status_mut() = StatusCode::NOT_MODIFIED;
    }
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    if !fresh {
        h.insert(
            header::CONTENT_LENGTH,
            HeaderValue::from(served.bytes.len()),
        );
    }
    h.insert(header::ETAG, etag);
    // Revalidate on every load: a new binary serves a new console at once.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

/// A response body of one chunk.
struct OneChunk(Option<bytes::Bytes>);

impl http_body::Body for OneChunk {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Poll::Ready(
            self.get_mut()
                .0
                .take()
                .map(|b| Ok(http_body::Frame::data(b))),
        )
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_none()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.0.as_ref().map_or(0, |b| b.len() as u64))
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`ConsoleService`].
    pub struct ConsoleFuture<F> {
        // The inner service's future; None when the console answered.
        #[pin]
        inner: Option<F>,
        // The console's answer, taken when polled.
        answer: Option<Response<Body>>,
    }
}

impl<F, R, E> Future for ConsoleFuture<F>
where
    F: Future<Output = Result<Response<R>, E>>,
    R: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    R::Error: Into<tonic::codegen::StdError>,
{
    type Output = Result<Response<Body>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.inner.as_pin_mut() {
            Some(inner) => inner.poll(cx).map_ok(|r| r.map(Body::new)),
            None => match this.answer.take() {
                Some(answer) => Poll::Ready(Ok(answer)),
                None => Poll::Pending,
            },
        }
    }
}

impl<S, B, R> Service<Request<B>> for ConsoleService<S>
where
    S: Service<Request<B>, Response = Response<R>>,
    R: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    R::Error: Into<tonic::codegen::StdError>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = ConsoleFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let method = request.method();
        if method == Method::GET || method == Method::HEAD {
            let path = request.uri().path();
            let path = if path == "/index.html" { "/" } else { path };
            let served = &SERVED[usize::from(self.tokens)];
            if let Some(found) = served.iter().find(|s| s.asset.path == path) {
                return ConsoleFuture {
                    inner: None,
                    answer: Some(answer(found, method, request.headers())),
                };
            }
        }
        ConsoleFuture {
            inner: Some(self.inner.call(request)),
            answer: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_what_is_embedded() {
        let page = std::str::from_utf8(ASSETS[0].bytes).unwrap();
        for asset in &ASSETS[1..] {
            assert!(page.contains(asset.path), "index.html loads {}", asset.path);
        }
        assert!(page.contains(DEVELOPMENT_MODE), "the page's sign-in mode");
        let with_tokens = &SERVED[1][0];
        assert!(String::from_utf8_lossy(&with_tokens.bytes).contains(TOKEN_MODE));
        assert_ne!(with_tokens.etag, SERVED[0][0].etag);
    }
}
