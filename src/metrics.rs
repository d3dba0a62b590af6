//! Prometheus metrics at `--metrics-listen`.
//!
//! STUB: the interface is fixed; the implementation is being written. Metric names used
//! elsewhere in the crate (with the `metrics` crate's macros):
//! - `calldesk_store_commit_seconds` (histogram), `calldesk_store_batch_size` (histogram):
//!   the store writer.
//! - `calldesk_interactions{state}` (gauge): the call manager, interactions it holds by state.
//! - `calldesk_watch_streams{kind}` (gauge): open watch streams, kind `interaction` or `agent`.

use std::{
    net::SocketAddr,
    task::{Context, Poll},
};

use http::Request;
use tower::{Layer, Service};

/// Installs the global recorder and serves `/metrics` on `addr`. Call once per process.
pub fn install(_addr: SocketAddr) -> Result<(), String> {
    Ok(())
}

/// A tower layer recording, per RPC, `calldesk_rpc_requests_total{method,code}` and
/// `calldesk_rpc_duration_seconds{method}`.
#[derive(Clone, Copy, Default)]
pub struct MetricsLayer;

impl<S> Layer<S> for MetricsLayer {
    type Service = MetricsService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        MetricsService { inner }
    }
}

/// See [`MetricsLayer`].
#[derive(Clone)]
pub struct MetricsService<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for MetricsService<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        self.inner.call(request)
    }
}
