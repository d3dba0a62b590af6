//! The client subcommands and their flags (clap), and the parsers of the values that can be
//! checked before anything is sent.

use std::{fmt, path::PathBuf};

use clap::{Args, Subcommand};

use crate::proto::{AssociatedObject, InteractionState};

/// The server a client talks to unless told otherwise.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:50051";

/// Options shared by every client subcommand.
///
/// Each can also come from the environment (`CALLDESK_SERVER`, `CALLDESK_AGENT`,
/// `CALLDESK_TOKEN`, `CALLDESK_TLS`, `CALLDESK_CA_CERT`, `CALLDESK_CLIENT_CERT`,
/// `CALLDESK_CLIENT_KEY`); a flag wins. The environment is read after parsing
/// ([`ClientOptions::with_env`]) rather than by clap, so that a usage line never shows a
/// variable that is set as if it were a required flag.
#[derive(Clone, Args)]
pub struct ClientOptions {
    /// URL of the calldesk server (or CALLDESK_SERVER) [default: http://127.0.0.1:50051].
    /// `https://` speaks TLS.
    #[arg(long, value_name = "URL")]
    pub server: Option<String>,

    /// Agent to act as, sent as `x-agent-id`; honoured only by servers without --auth-tokens
    /// (or CALLDESK_AGENT).
    #[arg(long, value_name = "ID")]
    pub agent: Option<String>,

    /// Bearer token naming the agent, sent as `authorization: Bearer TOKEN` (or
    /// CALLDESK_TOKEN, which keeps it out of `ps`).
    #[arg(long, value_name = "TOKEN")]
    pub token: Option<String>,

    /// Speak TLS (as an `https://` URL does), trusting the system's CAs unless --ca-cert is
    /// given (or CALLDESK_TLS=1).
    #[arg(long)]
    pub tls: bool,

    /// PEM CA certificates to trust instead of the system's: implies --tls (or
    /// CALLDESK_CA_CERT).
    #[arg(long, value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,

    /// PEM client certificate for mutual TLS, with --client-key: implies --tls (or
    /// CALLDESK_CLIENT_CERT).
    #[arg(long, value_name = "FILE", requires = "client_key")]
    pub client_cert: Option<PathBuf>,

    /// PEM private key of --client-cert (or CALLDESK_CLIENT_KEY).
    #[arg(long, value_name = "FILE", requires = "client_cert")]
    pub client_key: Option<PathBuf>,

    /// Print one proto3-JSON object per line instead of human-readable lines.
    #[arg(long)]
    pub json: bool,
}

impl ClientOptions {
    /// Fills what no flag gave from the environment, then the defaults.
    pub fn with_env(self) -> Self {
        self.with_env_from(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
    }

    fn with_env_from(mut self, env: impl Fn(&str) -> Option<String>) -> Self {
        let path = |name: &str| env(name).map(PathBuf::from);
        self.server = self
            .server
            .or_else(|| env("CALLDESK_SERVER"))
            .or_else(|| Some(DEFAULT_SERVER.to_owned()));
        self.agent = self.agent.or_else(|| env("CALLDESK_AGENT"));
        self.token = self.token.or_else(|| env("CALLDESK_TOKEN"));
        self.tls = self.tls || env("CALLDESK_TLS").is_some_and(|v| v != "0" && v != "false");
        self.ca_cert = self.ca_cert.or_else(|| path("CALLDESK_CA_CERT"));
        self.client_cert = self.client_cert.or_else(|| path("CALLDESK_CLIENT_CERT"));
        self.client_key = self.client_key.or_else(|| path("CALLDESK_CLIENT_KEY"));
        self
    }

    /// The server's URL (after [`ClientOptions::with_env`]).
    pub fn server_url(&self) -> &str {
        self.server.as_deref().unwrap_or(DEFAULT_SERVER)
    }
}

impl fmt::Debug for ClientOptions {
    // Never shows the token.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientOptions")
            .field("server", &self.server)
            .field("agent", &self.agent)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.tls)
            .field("ca_cert", &self.ca_cert)
            .field("client_cert", &self.client_cert)
            .field("client_key", &self.client_key)
            .field("json", &self.json)
            .finish()
    }
}

/// The client subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Start an outbound call (prints the interaction id).
    Call(CallArgs),
    /// Follow one interaction: every event, in order, until it is COMPLETED; resumes by
    /// itself after a restart or a dropped connection.
    Watch(WatchArgs),
    /// Follow all of the agent's interactions live, until interrupted.
    WatchAll(OptionsOnly),
    /// Show one interaction.
    Get(IdArgs),
    /// List the agent's interactions, newest first.
    List(ListArgs),
    /// Hang up a call (before it is answered: cancel it).
    End(IdArgs),
    /// Put a connected call on hold.
    Hold(IdArgs),
    /// Take a held call back.
    Resume(IdArgs),
    /// Finish wrap-up with a disposition and notes.
    Complete(CompleteArgs),
    /// Show what Deferred Dial staged in the agent's dialpad.
    Dialpad(OptionsOnly),
    /// Dial what Deferred Dial staged in the agent's dialpad (prints the interaction id).
    Dial(DialArgs),
    /// List the caller IDs the agent may present (`call --caller-id`), the default first.
    CallerIds(OptionsOnly),
    /// Blind transfer: hand the customer to TARGET and hang up the agent's leg.
    Transfer(TargetArgs),
    /// Consult TARGET while the customer waits on hold (then complete-transfer or
    /// cancel-consult).
    Consult(TargetArgs),
    /// Join the customer and the consulted target, dropping the agent.
    CompleteTransfer(KeyedIdArgs),
    /// End the consultation and take the customer back.
    CancelConsult(KeyedIdArgs),
    /// Bring TARGET into the call through the PBX's conference room.
    Conference(TargetArgs),
}

impl Command {
    /// The connection options of this subcommand.
    pub fn options(&self) -> &ClientOptions {
        match self {
            Command::Call(a) => &a.options,
            Command::Watch(a) => &a.options,
            Command::WatchAll(a) | Command::Dialpad(a) | Command::CallerIds(a) => &a.options,
            Command::Dial(a) => &a.options,
            Command::Get(a) | Command::End(a) | Command::Hold(a) | Command::Resume(a) => &a.options,
            Command::List(a) => &a.options,
            Command::Complete(a) => &a.options,
            Command::Transfer(a) | Command::Consult(a) | Command::Conference(a) => &a.options,
            Command::CompleteTransfer(a) | Command::CancelConsult(a) => &a.options,
        }
    }
}

/// `calldesk call`.
#[derive(Debug, Clone, Args)]
pub struct CallArgs {
    /// The number to dial: +E.164, a national number (with a server default region) or an
    /// extension of 2 to 8 digits.
    #[arg(value_name = "NUMBER")]
    pub number: String,

    /// Object to associate with the call, in Bright Pattern's JSON shape:
    /// {"id":…,"type":…,"displayName":…,"displayType":…,"customFields":{…}}.
    #[arg(long, value_name = "JSON", value_parser = parse_object)]
    pub object: Option<AssociatedObject>,

    /// Idempotency key: retrying with the same key does not dial twice.
    #[arg(long, value_name = "ID")]
    pub request_id: Option<String>,

    /// The number the customer sees (E.164), one of `calldesk caller-ids`; without it the
    /// server picks the agent's closest to NUMBER, or its default.
    #[arg(long, value_name = "NUMBER")]
    pub caller_id: Option<String>,

    #[command(flatten)]
    pub options: ClientOptions,
}

/// `calldesk dial`.
#[derive(Debug, Clone, Args)]
pub struct DialArgs {
    /// Idempotency key: the same key again returns the first call and dials nothing.
    #[arg(long, value_name = "ID")]
    pub request_id: Option<String>,

    #[command(flatten)]
    pub options: ClientOptions,
}

/// `calldesk watch`.
#[derive(Debug, Clone, Args)]
pub struct WatchArgs {
    /// The interaction to follow.
    #[arg(value_name = "ID")]
    pub id: String,

    /// Only events with a sequence greater than N (0: from the first).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub after: u64,

    /// When the stream breaks (the server restarts, the connection drops, the server ends a
    /// slow watcher), reconnect with backoff for up to this long and resume after the last
    /// sequence printed: no event is shown twice or skipped.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = humantime::parse_duration)]
    pub reconnect_for: std::time::Duration,

    /// Stop after the first event at this call progress (DIALING, RINGING, CONNECTED, HELD,
    /// ENDED) or interaction state (DELIVERY_PENDING, DELIVERED, HOLD, WRAP_UP, COMPLETED), and
    /// exit 0; exit 1 at once if the interaction goes past it without reaching it (a busy call
    /// never CONNECTED). Without it, the watch ends after COMPLETED.
    #[arg(long, value_name = "VALUE", value_parser = super::until::parse_until)]
    pub until: Option<super::until::Until>,

    #[command(flatten)]
    pub options: ClientOptions,
}

/// Subcommands that name one interaction.
#[derive(Debug, Clone, Args)]
pub struct IdArgs {
    /// The interaction's id.
    #[arg(value_name = "ID")]
    pub id: String,

    #[command(flatten)]
    pub options: ClientOptions,
}

/// `calldesk transfer`, `consult`, `conference`.
#[derive(Debug, Clone, Args)]
pub struct TargetArgs {
    /// The interaction's id.
    #[arg(value_name = "ID")]
    pub id: String,

    /// Whom: +E.164 (through the trunk) or agent:<agent id>.
    #[arg(value_name = "TARGET")]
    pub target: String,

    /// Idempotency key: the same key again on this interaction does nothing more.
    #[arg(long, value_name = "ID")]
    pub request_id: Option<String>,

    #[command(flatten)]
    pub options: ClientOptions,
}

/// `calldesk complete-transfer`, `cancel-consult`.
#[derive(Debug, Clone, Args)]
pub struct KeyedIdArgs {
    /// The interaction's id.
    #[arg(value_name = "ID")]
    pub id: String,

    /// Idempotency key: the same key again on this interaction does nothing more.
    #[arg(long, value_name = "ID")]
    pub request_id: Option<String>,

    #[command(flatten)]
    pub options: ClientOptions,
}

/// Subcommands with nothing but the connection options.
#[derive(Debug, Clone, Args)]
pub struct OptionsOnly {
    #[command(flatten)]
    pub options: ClientOptions,
}

/// `calldesk list`.
#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    /// Only interactions in this state: DELIVERY_PENDING, DELIVERED, HOLD, WRAP_UP or
    /// COMPLETED (case-insensitive; the INTERACTION_STATE_ prefix is optional).
    #[arg(long, value_name = "STATE", value_parser = parse_state)]
    pub state: Option<InteractionState>,

    /// How many interactions per page (1 to 1000; the server's default is 50).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i32).range(1..=1000))]
    pub page_size: Option<i32>,

    /// The next_page_token printed by the previous page.
    #[arg(long, value_name = "T")]
    pub page_token: Option<String>,

    #[command(flatten)]
    pub options: ClientOptions,
}

/// `calldesk complete`.
#[derive(Debug, Clone, Args)]
pub struct CompleteArgs {
    /// The interaction's id.
    #[arg(value_name = "ID")]
    pub id: String,

    /// The outcome of the call, e.g. "sale".
    #[arg(long, value_name = "D")]
    pub disposition: String,

    /// Free-text notes on the call.
    #[arg(long, value_name = "N", default_value = "")]
    pub notes: String,

    #[command(flatten)]
    pub options: ClientOptions,
}

/// Parses `--object`: Bright Pattern's InteractionAssociatedObject as proto3 JSON.
pub fn parse_object(s: &str) -> Result<AssociatedObject, String> {
    serde_json::from_str::<AssociatedObject>(s).map_err(|e| {
        // serde_json's message ends with "at line L column C".
        format!(
            "not a valid object: {e}; expected \
             {{\"id\":…,\"type\":…,\"displayName\":…,\"displayType\":…,\"customFields\":{{…}}}}"
        )
    })
}

/// Parses `--state`: `DELIVERED`, `delivered`, `wrap-up` or `INTERACTION_STATE_DELIVERED`.
pub fn parse_state(s: &str) -> Result<InteractionState, String> {
    let upper = s.trim().to_ascii_uppercase().replace('-', "_");
    let full = if upper.starts_with("INTERACTION_STATE_") {
        upper
    } else {
        format!("INTERACTION_STATE_{upper}")
    };
    match InteractionState::from_str_name(&full) {
        Some(InteractionState::Unspecified) | None => Err(format!(
            "unknown state {s:?}; expected one of DELIVERY_PENDING, DELIVERED, HOLD, WRAP_UP, \
             COMPLETED"
        )),
        Some(state) => Ok(state),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_in_bright_pattern_shape_parses() {
        let object = parse_object(
            r#"{"id":"c1","type":"contact","displayName":"Ann","displayType":"Contact","customFields":{"k":"v"}}"#,
        );
        let object = object.unwrap_or_default();
        assert_eq!(object.id, "c1");
        assert_eq!(object.display_name, "Ann");
        assert_eq!(object.custom_fields.get("k").map(String::as_str), Some("v"));
    }

    #[test]
    fn malformed_object_names_line_and_column() {
        let err = parse_object(r#"{"id": "1", "type": }"#)
            .err()
            .unwrap_or_default();
        assert!(err.contains("line 1"), "{err}");
        assert!(err.contains("column"), "{err}");
    }

    #[test]
    fn states_parse_in_any_spelling() {
        assert_eq!(parse_state("delivered"), Ok(InteractionState::Delivered));
        assert_eq!(parse_state("wrap-up"), Ok(InteractionState::WrapUp));
        assert_eq!(
            parse_state("INTERACTION_STATE_COMPLETED"),
            Ok(InteractionState::Completed)
        );
        assert!(parse_state("UNSPECIFIED").is_err());
        assert!(parse_state("ringing").is_err());
    }

    #[test]
    fn token_is_not_in_debug_output() {
        let options = ClientOptions {
            server: None,
            agent: None,
            token: Some("s3cret".into()),
            tls: false,
            ca_cert: None,
            client_cert: None,
            client_key: None,
            json: false,
        };
        assert!(!format!("{options:?}").contains("s3cret"));
    }

    #[test]
    fn flags_win_over_the_environment_and_the_default_comes_last() {
        let env = |name: &str| match name {
            "CALLDESK_SERVER" => Some("https://calldesk.example:443".to_owned()),
            "CALLDESK_AGENT" => Some("from-env".to_owned()),
            "CALLDESK_TLS" => Some("1".to_owned()),
            _ => None,
        };
        let options = ClientOptions {
            server: None,
            agent: Some("from-flag".into()),
            token: None,
            tls: false,
            ca_cert: None,
            client_cert: None,
            client_key: None,
            json: false,
        };
        let filled = options.clone().with_env_from(env);
        assert_eq!(filled.server_url(), "https://calldesk.example:443");
        assert_eq!(filled.agent.as_deref(), Some("from-flag"));
        assert!(filled.tls);
        let defaulted = options.with_env_from(|_| None);
        assert_eq!(defaulted.server_url(), DEFAULT_SERVER);
        assert!(!defaulted.tls);
    }
}
