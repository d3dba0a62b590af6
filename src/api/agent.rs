//! Who is calling.
//!
//! Development mode (no `--auth-tokens`): the `x-agent-id` metadata names the agent, else the
//! agent is `default`. With authentication, a layer in front of the service resolves the token
//! and puts the [`Agent`] in the request's extensions, which then wins over any metadata.

use std::{future::Future, pin::Pin, sync::Arc};

use tokio_stream::StreamExt;
use tonic::{Request, Status};

use super::{validate::bad_field, watch::EventStream};

/// The agent a request acts for, as put in the request's extensions by authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agent(pub String);

/// Put in a request's extensions when another replica forwarded it (authenticated by the
/// peer secret, `server/peers.rs`): it is carried out here or refused, never forwarded again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forwarded;

/// Resolves once the credential that named the request's agent is no longer accepted (its
/// token was removed from the token file, and the file reloaded; a JWT's key left the JWKS, or
/// the JWT expired). Authentication puts it in the request's extensions beside [`Agent`]; watch
/// streams end with UNAUTHENTICATED on it.
#[derive(Clone)]
pub struct Revocation(Arc<dyn Fn() -> RevokedFuture + Send + Sync>);

/// What [`Revocation::revoked`] returns: it resolves to the message the stream ends with.
pub type RevokedFuture = Pin<Box<dyn Future<Output = &'static str> + Send>>;

impl Revocation {
    /// `revoked` makes a future that resolves once the credential is no longer accepted.
    pub fn new(revoked: impl Fn() -> RevokedFuture + Send + Sync + 'static) -> Self {
        Self(Arc::new(revoked))
    }

    /// Resolves once the credential is no longer accepted (at once if it already is not), to
    /// the message its watch streams end with.
    pub fn revoked(&self) -> RevokedFuture {
        (self.0)()
    }
}

impl std::fmt::Debug for Revocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Revocation")
    }
}

/// `stream`, ended with UNAUTHENTICATED as soon as the request's credential is revoked (the
/// stream itself, and what it holds, is dropped then). Without a [`Revocation`] (development
/// mode) it is `stream` unchanged.
pub fn end_when_revoked(stream: EventStream, revocation: Option<Revocation>) -> EventStream {
    let Some(revocation) = revocation else {
        return stream;
    };
    Box::pin(async_stream::stream! {
        let mut stream = stream;
        let mut revoked = revocation.revoked();
        loop {
            tokio::select! {
                biased;
                why = &mut revoked => {
                    drop(stream);
                    yield Err(Status::unauthenticated(why));
                    return;
                }
                item = stream.next() => match item {
                    Some(item) => yield item,
                    None => return,
                },
            }
        }
    })
}

/// The metadata that names the agent in development mode.
pub const AGENT_HEADER: &str = "x-agent-id";
/// The agent of requests that name none, in development mode.
pub const DEFAULT_AGENT: &str = "default";
const MAX_AGENT_ID: usize = 128;
/// What an agent id is, in refusals.
pub const VALID_ID_RULE: &str = "1 to 128 printable ASCII characters without spaces";

/// Whether `id` may be an agent id (the `x-agent-id` rule; a transfer's `agent:<id>` too).
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_AGENT_ID && id.bytes().all(|b| b.is_ascii_graphic())
}

/// The calling agent's id.
pub fn caller<T>(request: &Request<T>) -> Result<String, Status> {
    if let Some(Agent(id)) = request.extensions().get::<Agent>() {
        return Ok(id.clone());
    }
    let Some(value) = request.metadata().get(AGENT_HEADER) else {
        return Ok(DEFAULT_AGENT.to_owned());
    };
    let id = value
        .to_str()
        .ok()
        .filter(|id| is_valid_id(id))
        .ok_or_else(|| bad_field(AGENT_HEADER, format!("must be {VALID_ID_RULE}")))?;
    Ok(id.to_owned())
}
