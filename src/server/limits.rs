//! Transport limits the contract words differently from tonic.
//!
//! tonic refuses a request message over `max_decoding_message_size` with OUT_OF_RANGE; the
//! contract (and gRPC's own status-code guide) says RESOURCE_EXHAUSTED. calldesk's handlers
//! never answer OUT_OF_RANGE, so this layer rewrites that status, which tonic sends in the
//! response headers (a trailers-only response) before any handler runs. It also stamps each
//! request's [`Arrival`], from which the handlers count deadlines.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use http::{HeaderValue, Request, Response};
use tower::{Layer, Service};

use crate::api::limits::Arrival;

/// The largest request message calldesk decodes.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// Rewrites tonic's OUT_OF_RANGE for oversized requests to RESOURCE_EXHAUSTED.
#[derive(Debug, Clone, Copy, Default)]
pub struct OversizeIsResourceExhausted;

impl<S> Layer<S> for OversizeIsResourceExhausted {
    type Service = OversizeService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        OversizeService { inner }
    }
}

/// See [`OversizeIsResourceExhausted`].
#[derive(Debug, Clone)]
pub struct OversizeService<S> {
    inner: S,
}

const OUT_OF_RANGE: &str = "11";
const RESOURCE_EXHAUSTED: &str = "8";

impl<S, B, R> Service<Request<B>> for OversizeService<S>
where
    S: Service<Request<B>, Response = Response<R>>,
    S::Future: Send + 'static,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<R>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        request
            .extensions_mut()
            .insert(Arrival(tokio::time::Instant::now()));
        let response = self.inner.call(request);
        Box::pin(async move {
            let mut response = response.await?;
            let headers = response.headers_mut();
            if headers.get("grpc-status").and_then(|v| v.to_str().ok()) == Some(OUT_OF_RANGE) {
                headers.insert("grpc-status", HeaderValue::from_static(RESOURCE_EXHAUSTED));
                headers.insert(
                    "grpc-message",
                    HeaderValue::from_static("request%20message%20over%20the%2064%20KiB%20limit"),
                );
            }
            Ok(response)
        })
    }
}
