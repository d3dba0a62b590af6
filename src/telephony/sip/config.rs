//! What the SIP switch needs to know: where it listens, where the agents' phones and the
//! trunk are, and its timers.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Looks up the SIP URI of an agent's own phone (`sip:agent7@10.0.0.7:5060`).
pub trait AgentDirectory: Send + Sync + 'static {
    fn uri_for(&self, agent_id: &str) -> Option<String>;
}

/// A fixed agent id -> SIP URI table.
#[derive(Debug, Clone, Default)]
pub struct StaticAgents {
    uris: HashMap<String, String>,
}

impl StaticAgents {
    pub fn new(uris: impl IntoIterator<Item = (String, String)>) -> Self {
        Self {
            uris: uris.into_iter().collect(),
        }
    }
}

impl AgentDirectory for StaticAgents {
    fn uri_for(&self, agent_id: &str) -> Option<String> {
        self.uris.get(agent_id).cloned()
    }
}

/// Digest credentials for the trunk (401 and 407 challenges).
#[derive(Clone, PartialEq, Eq)]
pub struct SipCredential {
    pub user: String,
    pub password: String,
}

impl fmt::Debug for SipCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SipCredential")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// The transport of every request the switch sends. It listens on both, at `listen`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SipTransport {
    #[default]
    Udp,
    Tcp,
}

#[derive(Clone)]
pub struct SipConfig {
    /// Local address of the UDP socket and the TCP listener.
    pub listen: SocketAddr,
    pub transport: SipTransport,
    pub agents: Arc<dyn AgentDirectory>,
    /// The trunk, as a SIP URI (`sip:trunk.example.net:5060`). The customer's Request-URI
    /// is `sip:{E.164}@host[:port]` with the trunk's parameters.
    pub trunk: String,
    /// The user part of the From header on the customer leg; `calldesk` when unset.
    pub caller_id: Option<String>,
    pub credential: Option<SipCredential>,
    /// The agent's phone must answer within this, or the call fails (and is cancelled).
    pub agent_answer_timeout: Duration,
    /// The customer must answer within this, or the call is cancelled as NoAnswer.
    pub no_answer_timeout: Duration,
    /// A connected call is hung up (BYE on both legs) after this long, and reported as
    /// `AgentHangup` with detail "max call duration reached".
    pub max_call_duration: Option<Duration>,
    /// OPTIONS to the trunk this often; `None` turns the keepalive off.
    pub keepalive_interval: Option<Duration>,
    /// The User-Agent header of every request.
    pub user_agent: String,
}

impl SipConfig {
    /// Defaults: 127.0.0.1:5060, UDP, trunk `sip:127.0.0.1:5070`, 20 s for the agent,
    /// 30 s for the customer, no call duration limit, no keepalive.
    pub fn new(agents: Arc<dyn AgentDirectory>) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 5060)),
            transport: SipTransport::Udp,
            agents,
            trunk: "sip:127.0.0.1:5070".to_owned(),
            caller_id: None,
            credential: None,
            agent_answer_timeout: Duration::from_secs(20),
            no_answer_timeout: Duration::from_secs(30),
            max_call_duration: None,
            keepalive_interval: None,
            user_agent: concat!("calldesk/", env!("CARGO_PKG_VERSION")).to_owned(),
        }
    }
}

impl fmt::Debug for SipConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SipConfig")
            .field("listen", &self.listen)
            .field("transport", &self.transport)
            .field("trunk", &self.trunk)
            .field("caller_id", &self.caller_id)
            .field("credential", &self.credential)
            .field("agent_answer_timeout", &self.agent_answer_timeout)
            .field("no_answer_timeout", &self.no_answer_timeout)
            .field("max_call_duration", &self.max_call_duration)
            .field("keepalive_interval", &self.keepalive_interval)
            .field("user_agent", &self.user_agent)
            .finish_non_exhaustive()
    }
}

/// "20s", "1500ms": for details like "did not answer within 20s".
pub(super) fn short_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// True for a user part made only of characters that are safe in a SIP URI without
/// escaping: digits, `+`, `*`, `#`, letters, `-`, `.`, `_`.
pub(super) fn is_plain_user(user: &str) -> bool {
    !user.is_empty()
        && user.len() <= 64
        && user
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '*' | '-' | '.' | '_'))
}
