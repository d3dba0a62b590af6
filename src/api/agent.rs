//! Who is calling.
//!
//! Development mode (no `--auth-tokens`): the `x-agent-id` metadata names the agent, else the
//! agent is `default`. With authentication, a layer in front of the service resolves the token
//! and puts the [`Agent`] in the request's extensions, which then wins over any metadata.

use tonic::{Request, Status};

use super::validate::bad_field;

/// The agent a request acts for, as put in the request's extensions by authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agent(pub String);

/// The metadata that names the agent in development mode.
pub const AGENT_HEADER: &str = "x-agent-id";
/// The agent of requests that name none, in development mode.
pub const DEFAULT_AGENT: &str = "default";
const MAX_AGENT_ID: usize = 128;

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
        .filter(|id| {
            !id.is_empty() && id.len() <= MAX_AGENT_ID && id.bytes().all(|b| b.is_ascii_graphic())
        })
        .ok_or_else(|| {
            bad_field(
                AGENT_HEADER,
                format!("must be 1 to {MAX_AGENT_ID} printable ASCII characters without spaces"),
            )
        })?;
    Ok(id.to_owned())
}
