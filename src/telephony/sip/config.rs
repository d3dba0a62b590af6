//! What the SIP switch needs to know: where it listens, where the agents' phones and the
//! trunk are, and its timers.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use rsipstack::sip::{Auth, Scheme, Uri};
use tokio::sync::watch;

/// Looks up where an agent's own phone is (`sip:agent7@10.0.0.7:5060`).
pub trait AgentDirectory: Send + Sync + 'static {
    fn phone_for(&self, agent_id: &str) -> Option<AgentPhone>;

    /// Every URI an agent's phone may be reached at (a template's placeholder filled with any
    /// user): their hosts are calldesk's peers, allowed to send to its SIP port.
    fn peer_uris(&self) -> Vec<String>;

    /// Changes each time the URIs may have changed (a file re-read on SIGHUP); None when they
    /// never change.
    fn changes(&self) -> Option<watch::Receiver<()>> {
        None
    }
}

/// Where one agent's phone is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentPhone {
    /// The phone's SIP URI.
    pub uri: String,
    /// The user part to put in `uri` instead of its own, as is (e.g. a template filled with the
    /// agent id): it is %-escaped when the URI is written (RFC 3261 §25.1), and never read
    /// back as URI text, so that nothing in it can become the host, a port or a parameter.
    pub user: Option<String>,
}

impl AgentPhone {
    /// The URI to call: `uri` with `user` as its user part.
    pub(super) fn to_uri(&self) -> Result<Uri, &'static str> {
        let mut uri = Uri::try_from(self.uri.as_str())
            .ok()
            .filter(|uri| matches!(uri.scheme, Some(Scheme::Sip | Scheme::Sips)))
            .ok_or("invalid SIP URI for agent")?;
        if let Some(user) = &self.user {
            uri.auth = Some(Auth {
                user: user.clone(),
                password: None,
            });
        }
        Ok(uri)
    }
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
    fn phone_for(&self, agent_id: &str) -> Option<AgentPhone> {
        self.uris.get(agent_id).map(|uri| AgentPhone {
            uri: uri.clone(),
            user: None,
        })
    }

    fn peer_uris(&self) -> Vec<String> {
        self.uris.values().cloned().collect()
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

/// The transport of requests to `sip:` URIs that name none (`sips:` URIs go over TLS). The
/// switch listens on UDP and TCP at `listen`, and for TLS on the TCP port with a
/// [`SipConfig::tls_identity`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SipTransport {
    #[default]
    Udp,
    Tcp,
    Tls,
}

/// calldesk's own certificate chain and key (PEM), for its TLS listener.
#[derive(Clone)]
pub struct TlsIdentity {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

impl fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsIdentity").finish_non_exhaustive()
    }
}

#[derive(Clone)]
pub struct SipConfig {
    /// Local address of the UDP socket and the TCP (and TLS) listener.
    pub listen: SocketAddr,
    pub transport: SipTransport,
    /// Sources allowed besides the peers (the hosts of `trunk` and of the agents' URIs).
    pub allow_from: Vec<IpNet>,
    /// TCP and TLS connections open at once; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// How long a new connection has to send its first complete message (TLS handshake
    /// included).
    pub first_message_timeout: Duration,
    /// A connection without a live dialog is closed after this long without a message.
    pub idle_connection_timeout: Duration,
    /// The TLS listener's certificate and key; None: no TLS listener.
    pub tls_identity: Option<TlsIdentity>,
    /// CA certificates (PEM) the peers' TLS certificates must chain to; None: the system's
    /// trust anchors.
    pub tls_ca_pem: Option<Vec<u8>>,
    pub agents: Arc<dyn AgentDirectory>,
    /// The trunk, as a SIP URI (`sip:trunk.example.net:5060`). The customer's Request-URI
    /// is `sip:{E.164}@host[:port]` with the trunk's parameters.
    pub trunk: String,
    /// The user part of the From header on the customer leg when the call has no caller ID
    /// of its own; `calldesk` when unset.
    pub caller_id: Option<String>,
    /// `--sip-caller-name`: the display name of the customer leg's From and
    /// P-Asserted-Identity.
    pub caller_name: Option<String>,
    /// `--sip-agent-auto-answer`: the agent's INVITE asks the phone to answer by itself.
    pub agent_auto_answer: bool,
    /// `--sip-send-uui`: both INVITEs carry User-to-User with the CRM record's id and type.
    pub send_uui: bool,
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
    /// Defaults: 127.0.0.1:5060, UDP, trunk `sip:127.0.0.1:5070`, only the peers allowed,
    /// 256 connections, 10 s for a connection's first message, 60 s idle, no TLS listener,
    /// the system's trust anchors, 20 s for the agent, 30 s for the customer, no call duration
    /// limit, no keepalive.
    pub fn new(agents: Arc<dyn AgentDirectory>) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 5060)),
            transport: SipTransport::Udp,
            allow_from: Vec::new(),
            max_connections: 256,
            first_message_timeout: Duration::from_secs(10),
            idle_connection_timeout: Duration::from_secs(60),
            tls_identity: None,
            tls_ca_pem: None,
            agents,
            trunk: "sip:127.0.0.1:5070".to_owned(),
            caller_id: None,
            caller_name: None,
            agent_auto_answer: false,
            send_uui: false,
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
            .field("allow_from", &self.allow_from)
            .field("max_connections", &self.max_connections)
            .field("first_message_timeout", &self.first_message_timeout)
            .field("idle_connection_timeout", &self.idle_connection_timeout)
            .field("tls_identity", &self.tls_identity)
            .field("trunk", &self.trunk)
            .field("caller_id", &self.caller_id)
            .field("caller_name", &self.caller_name)
            .field("agent_auto_answer", &self.agent_auto_answer)
            .field("send_uui", &self.send_uui)
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
/// escaping: digits, `+`, `*`, letters, `-`, `.`, `_`.
pub(super) fn is_plain_user(user: &str) -> bool {
    !user.is_empty()
        && user.len() <= 64
        && user
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '*' | '-' | '.' | '_'))
}

/// True for a value that may stand in a header's quoted string or token as is: printable
/// ASCII without spaces, quotes or backslashes (a digest user name, say).
pub(super) fn is_header_token(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 128
        && value
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 21: with `sip:{agent}@pbx`, the agent id `127.0.0.2;x=y` made the INVITE go to
    /// 127.0.0.2. Whatever the user part holds, the URI keeps its host, and the user part is
    /// written %-escaped where the grammar requires it.
    #[test]
    fn no_user_part_can_name_the_host_a_call_goes_to() {
        for hostile in [
            "127.0.0.2;x=y",
            "127.0.0.2",
            "a@127.0.0.2",
            "a@127.0.0.2:5060;",
            "a?x=y@h",
            "a:pw@127.0.0.2",
            "a%40127.0.0.2",
            "a>b<c",
            "[::1]",
            "a b\r\nVia: x",
            "é",
        ] {
            let phone = AgentPhone {
                uri: "sip:agent@pbx.example.com:5060;transport=tcp".to_owned(),
                user: Some(hostile.to_owned()),
            };
            let uri = phone.to_uri().expect("a URI");
            assert_eq!(
                uri.host_with_port.to_string(),
                "pbx.example.com:5060",
                "{hostile:?}"
            );
            let written = uri.to_string();
            assert!(
                written
                    .to_ascii_lowercase()
                    .ends_with("@pbx.example.com:5060;transport=tcp"),
                "{hostile:?} → {written}"
            );
            assert!(
                !written.contains(['\r', '\n', ' ', '<', '>', '"']),
                "{written}"
            );
        }
        let phone = AgentPhone {
            uri: "sip:agent@pbx.example.com".to_owned(),
            user: Some("ann@corp.example:1%".to_owned()),
        };
        assert_eq!(
            phone.to_uri().map(|u| u.to_string()),
            Ok("sip:ann%40corp.example%3A1%25@pbx.example.com".to_owned())
        );
        let bad = AgentPhone {
            uri: "http://pbx.example.com".to_owned(),
            user: None,
        };
        assert!(bad.to_uri().is_err());
    }
}
