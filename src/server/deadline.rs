//! Every call's deadline covers reading its request.
//!
//! tonic reads the request message of a unary or server-streaming call, to the end of the
//! body, before the handler runs; the handlers' own deadline
//! ([`crate::api::limits::deadline`]) starts only then. A client that sends a body and never
//! ends it (an HTTP/2 stream without END_STREAM, a chunked HTTP/1.1 body that stops) would
//! otherwise hold its stream for ever: the only bound was connections × streams (issue 22).
//!
//! [`Deadlines`] stamps each request's [`Arrival`] and bounds its whole response: the
//! response (for a unary call, its message; for a watch, the start of its stream) must be
//! ready by the call's deadline counted from the arrival — `--request-timeout`, or the
//! client's `grpc-timeout` less 5 ms if that is sooner. Past it the call is answered
//! DEADLINE_EXCEEDED, in gRPC-Web's form for a gRPC-Web request, and the rest of it is
//! dropped, its request body with it: h2 resets the stream, HTTP/1.1 closes the connection
//! (the body's unread rest cannot be skipped). A unary handler counts the same deadline from
//! the same arrival, so both answer alike. A watch has no deadline once it streams; the
//! bidirectional reflection stream reads its requests while streaming and is not bounded here.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use http::{Request, Response};
use tower::{Layer, Service};

use crate::api::limits::{budget, Arrival};

/// The layer; see the module docs.
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    /// `--request-timeout`: the deadline of a call whose client sets none (or a later one).
    pub request_timeout: Duration,
}

impl<S> Layer<S> for Deadlines {
    type Service = DeadlinesService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        DeadlinesService {
            inner,
            request_timeout: self.request_timeout,
        }
    }
}

/// See [`Deadlines`].
#[derive(Debug, Clone)]
pub struct DeadlinesService<S> {
    inner: S,
    request_timeout: Duration,
}

impl<S, B, R> Service<Request<B>> for DeadlinesService<S>
where
    S: Service<Request<B>, Response = Response<R>>,
    R: Default,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = DeadlineFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let arrival = tokio::time::Instant::now();
        request.extensions_mut().insert(Arrival(arrival));
        let client = request
            .headers()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok());
        let deadline = arrival + budget(client, self.request_timeout);
        let grpc_web = super::shape::is_grpc_web(request.headers());
        DeadlineFuture {
            inner: self.inner.call(request),
            sleep: tokio::time::sleep_until(deadline),
            grpc_web,
        }
    }
}

pin_project_lite::pin_project! {
    /// The inner response, or DEADLINE_EXCEEDED once the deadline has passed.
    pub struct DeadlineFuture<F> {
        #[pin]
        inner: F,
        #[pin]
        sleep: tokio::time::Sleep,
        // Whether to answer in gRPC-Web's form.
        grpc_web: bool,
    }
}

impl<F, R, E> Future for DeadlineFuture<F>
where
    F: Future<Output = Result<Response<R>, E>>,
    R: Default,
{
    type Output = Result<Response<R>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(response) = this.inner.poll(cx) {
            return Poll::Ready(response);
        }
        if this.sleep.poll(cx).is_ready() {
            let status = tonic::Status::deadline_exceeded(crate::api::limits::DEADLINE_PASSED);
            return Poll::Ready(Ok(super::shape::status_response_in(status, *this.grpc_web)));
        }
        Poll::Pending
    }
}
