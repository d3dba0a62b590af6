//! Authentication: `--auth-tokens FILE` names agents by bearer token.
//!
//! STUB: the interface is fixed; the implementation is being written.

use std::{
    path::Path,
    task::{Context, Poll},
};

use http::Request;
use tower::{Layer, Service};

/// The tokens the server accepts, re-read from their file on SIGHUP.
#[derive(Clone)]
pub struct TokenSource {}

impl TokenSource {
    /// Loads the token file (failing start-up with a message naming the path if it is
    /// unreadable or malformed) and re-reads it on every SIGHUP: a bad file then keeps the
    /// previous tokens and logs why.
    pub fn from_file(_path: &Path) -> Result<Self, String> {
        Ok(Self {})
    }
}

/// A tower layer: with a token source, requests to calldesk.v1 must carry
/// `authorization: Bearer <token>` of a known token (else UNAUTHENTICATED), and the agent it
/// names is put in the request's extensions as [`crate::api::agent::Agent`]. Health and
/// reflection pass untouched. Without a source, everything passes (development mode).
#[derive(Clone, Default)]
pub struct AuthLayer {
    _tokens: Option<TokenSource>,
}

impl AuthLayer {
    pub fn new(tokens: Option<TokenSource>) -> Self {
        Self { _tokens: tokens }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AuthService { inner }
    }
}

/// See [`AuthLayer`].
#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for AuthService<S>
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
