//! The server's settings: the flags of `calldesk serve`, with the contract's defaults.
//!
//! The clap definition is the one place the defaults live; `Config::default()` parses an
//! empty command line, so tests and embedders start from exactly what the binary does.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::Parser;

use crate::store::Durability;

/// The headings of `calldesk serve --help`, shown in the order of their first flag below.
/// docs/guide/serve.md has a table under each, which tests/cli.rs holds to `serve --help`.
pub mod heading {
    pub const NETWORK: &str = "Network";
    pub const STORE: &str = "Store";
    pub const REPLICAS: &str = "Replicas";
    pub const CALLS: &str = "Calls";
    pub const COMPLIANCE: &str = "Calling hours and do-not-call";
    pub const PACING: &str = "Trunk pacing";
    pub const SIM: &str = "Simulated switch";
    pub const SIP: &str = "SIP";
    pub const LIMITS: &str = "Limits";
    pub const BROWSER: &str = "Browser";
    pub const WEBHOOKS: &str = "Webhooks";
    pub const OBSERVABILITY: &str = "Observability";
}

/// Settings of one calldesk server.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "serve",
    about = "Run the calldesk gRPC server",
    // At most 100 columns, or the terminal's width if it is narrower (clap's wrap_help).
    max_term_width = 100,
    after_help = "Durations are written 250ms, 5s, 30days. \
                  Every flag, with more words: docs/guide/serve.md"
)]
pub struct Config {
    /// Address to listen on for gRPC (h2c). Port 0 picks a free port.
    #[arg(help_heading = heading::NETWORK, long, default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,

    /// Directory of the store (created if missing).
    #[arg(help_heading = heading::STORE, long, default_value = "./calldesk-data")]
    pub data_dir: PathBuf,

    /// PostgreSQL instead of SQLite in --data-dir: the store that several replicas share
    /// (`postgres://user:password@host:port/db`). Never logged: it may hold a password.
    #[arg(
        help_heading = heading::STORE,
        long,
        env = "CALLDESK_DATABASE_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub database_url: Option<String>,

    /// With --database-url: where the other replicas reach this one's gRPC listener
    /// (`host:port`, e.g. the pod IP and the --listen port). Default: --listen, when it is not
    /// a wildcard address.
    #[arg(
        help_heading = heading::REPLICAS,
        long,
        env = "CALLDESK_ADVERTISE_ADDRESS",
        value_name = "HOST:PORT",
        hide_env_values = true,
    )]
    pub advertise_address: Option<String>,

    /// With --database-url: a file whose first line is the secret replicas share to forward
    /// requests to each other (required there; refused on hops without it).
    #[arg(
        help_heading = heading::REPLICAS,
        long,
        env = "CALLDESK_PEER_TOKEN_FILE",
        value_name = "FILE",
        hide_env_values = true,
    )]
    pub peer_token_file: Option<PathBuf>,

    /// With --database-url: how long a replica's lease lasts without renewal (it renews every
    /// third of it). A replica silent this long is taken over by another.
    #[arg(
        help_heading = heading::REPLICAS,
        long,
        default_value = "10s",
        value_parser = humantime::parse_duration,
    )]
    pub lease_duration: Duration,

    /// With --database-url and --tls-cert: PEM CA certificates that the other replicas'
    /// certificates must chain to when this one forwards to them over TLS. Default:
    /// --tls-client-ca if given, else the system's roots.
    #[arg(
        help_heading = heading::REPLICAS,
        long,
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub peer_ca: Option<PathBuf>,

    /// With --database-url and --tls-cert: the name the other replicas' certificates must hold
    /// (e.g. the Service's DNS name when every pod has the same certificate). Default: the
    /// host of the address each one advertises.
    #[arg(
        help_heading = heading::REPLICAS,
        long,
        value_name = "NAME",
        requires = "tls_cert"
    )]
    pub peer_server_name: Option<String>,

    /// Deferred Dial: StartCall only stages the number in the agent's dialpad.
    #[arg(help_heading = heading::CALLS, long)]
    pub deferred_dial: bool,

    /// Region (ISO 3166 code, e.g. US) in which national numbers without `+` are read.
    #[arg(help_heading = heading::CALLS, long)]
    pub default_region: Option<String>,

    /// How long the switch has to acknowledge a dial before StartCall fails with "Timeout error".
    #[arg(
        help_heading = heading::CALLS,
        long,
        default_value = "5s",
        value_parser = humantime::parse_duration,
    )]
    pub originate_timeout: Duration,

    /// Complete interactions left in WRAP_UP this long; without it they wait for
    /// CompleteInteraction.
    #[arg(help_heading = heading::CALLS, long, value_parser = humantime::parse_duration)]
    pub wrap_up_timeout: Option<Duration>,

    /// How many live calls (DELIVERY_PENDING, DELIVERED, HOLD) one agent may have.
    #[arg(help_heading = heading::CALLS, long, default_value_t = 4)]
    pub max_active_calls: u32,

    /// How many answered StartCall request_ids are kept in memory (the most recently used,
    /// ~1 KB each); the others are read from the store when a retry comes.
    #[arg(
        help_heading = heading::CALLS,
        long,
        value_name = "N",
        default_value_t = 10_000,
        value_parser = clap::value_parser!(u32).range(1..),
    )]
    pub idempotency_cache_keys: u32,

    /// What places the calls: `sim`, the simulated switch (demos and tests), or `sip`, real
    /// calls through a PBX or SIP trunk (the `--sip-*` flags).
    #[arg(help_heading = heading::CALLS, long, value_enum, default_value = "sim")]
    pub telephony: TelephonyKind,

    /// Calls longer than this are hung up (both legs); without it calls last until a party
    /// hangs up.
    #[arg(help_heading = heading::CALLS, long, value_parser = humantime::parse_duration)]
    pub max_call_duration: Option<Duration>,

    /// The numbers each agent may present to customers: `AGENT_ID NUMBER [NUMBER…]` lines
    /// (E.164, the first is the default; `*` for agents without a line). Without it everyone
    /// presents --sip-caller-id. Re-read on SIGHUP.
    #[arg(help_heading = heading::CALLS, long, value_name = "FILE")]
    pub caller_ids: Option<PathBuf>,

    /// When numbers may be called, in the called party's local time: `REGION DAYS WINDOWS`
    /// lines (`US Mon-Sun 08:00-21:00`). Re-read on SIGHUP.
    #[arg(help_heading = heading::COMPLIANCE, long, value_name = "FILE")]
    pub calling_hours: Option<PathBuf>,

    /// A do-not-call list: one E.164 number per line, a line ending in `*` a prefix
    /// (repeatable). Re-read on SIGHUP.
    #[arg(help_heading = heading::COMPLIANCE, long, value_name = "FILE")]
    pub dnc: Vec<PathBuf>,

    /// Customer calls started per second, at most (a token bucket; the deployment's, shared
    /// among replicas). A call over it waits in line.
    #[arg(help_heading = heading::PACING, long, value_name = "N", value_parser = parse_rate)]
    pub sip_max_cps: Option<f64>,

    /// Customer calls in progress (dialing, ringing or connected) at once, at most (the
    /// deployment's, shared among replicas). A call over it waits in line.
    #[arg(help_heading = heading::PACING, long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub sip_max_calls: Option<u32>,

    /// How long a call may wait in line for the trunk before StartCall fails with TRUNK_BUSY.
    #[arg(
        help_heading = heading::PACING,
        long,
        default_value = "10s",
        value_parser = humantime::parse_duration,
    )]
    pub sip_pacing_wait: Duration,

    /// Simulated switch: delay from dial to ringing (and to busy or failure).
    #[arg(
        help_heading = heading::SIM,
        long,
        default_value = "500ms",
        value_parser = humantime::parse_duration,
    )]
    pub sim_ring: Duration,

    /// Simulated switch: delay from ringing to answer.
    #[arg(
        help_heading = heading::SIM,
        long,
        default_value = "1s",
        value_parser = humantime::parse_duration,
    )]
    pub sim_answer: Duration,

    /// Simulated switch: how long +12025550102 rings before NO_ANSWER.
    #[arg(
        help_heading = heading::SIM,
        long,
        default_value = "20s",
        value_parser = humantime::parse_duration,
    )]
    pub sim_no_answer: Duration,

    /// Simulated switch: how long +12025550105 talks before the remote party hangs up.
    #[arg(
        help_heading = heading::SIM,
        long,
        default_value = "3s",
        value_parser = humantime::parse_duration,
    )]
    pub sim_talk: Duration,

    #[command(flatten)]
    pub sip: SipArgs,

    /// `full`: every acknowledged change survives power loss (SQLite synchronous=FULL).
    /// `normal`: it survives a crash of the process, not of the machine.
    #[arg(help_heading = heading::STORE, long, value_enum, default_value = "full")]
    pub durability: Durability,

    /// COMPLETED interactions (and their events) older than this are deleted.
    #[arg(
        help_heading = heading::STORE,
        long,
        default_value = "30days",
        value_parser = humantime::parse_duration,
    )]
    pub retention: Duration,

    /// On SIGTERM, how long the live phone calls may go on (new calls are refused) before the
    /// server hangs up what is left and stops; 0 hangs up at once. A second SIGTERM, or SIGINT,
    /// ends the wait.
    #[arg(
        help_heading = heading::LIMITS,
        long,
        default_value = "1h",
        value_parser = humantime::parse_duration,
    )]
    pub drain_calls_for: Duration,

    /// On SIGTERM/SIGINT, once the live calls are done, how long in-flight requests may take
    /// to finish before the server stops; the process exits by the end of it, whatever its
    /// clients do.
    #[arg(
        help_heading = heading::LIMITS,
        long,
        default_value = "10s",
        value_parser = humantime::parse_duration,
    )]
    pub shutdown_grace: Duration,

    /// Token file: one `AGENT_ID SHA256_HEX_OF_TOKEN` line per token (`#` starts a comment).
    /// Requests must then carry `authorization: Bearer <token>`. Re-read on SIGHUP.
    #[arg(help_heading = heading::NETWORK, long)]
    pub auth_tokens: Option<PathBuf>,

    /// An identity provider's public keys (JWKS): a file, re-read on SIGHUP, or an https:// URL,
    /// fetched again every 10 minutes and on SIGHUP. Requests may then carry `authorization:
    /// Bearer <JWT>` signed by one of them (RS256, ES256, EdDSA); beside --auth-tokens, either
    /// admits. Needs --jwt-issuer and --jwt-audience.
    #[arg(
        help_heading = heading::NETWORK,
        long,
        value_name = "FILE|URL",
        requires_all = ["jwt_issuer", "jwt_audience"],
    )]
    pub jwt_jwks: Option<String>,

    /// With --jwt-jwks: the only `iss` accepted (the identity provider's issuer URL).
    #[arg(help_heading = heading::NETWORK, long, value_name = "ISSUER", requires = "jwt_jwks")]
    pub jwt_issuer: Option<String>,

    /// With --jwt-jwks: a value the JWT's `aud` must hold (calldesk's client id or audience at
    /// the provider).
    #[arg(help_heading = heading::NETWORK, long, value_name = "AUDIENCE", requires = "jwt_jwks")]
    pub jwt_audience: Option<String>,

    /// With --jwt-jwks: the claim whose value is the agent id.
    #[arg(help_heading = heading::NETWORK, long, value_name = "CLAIM", default_value = "sub")]
    pub jwt_agent_claim: String,

    /// Allow a non-loopback --listen without --auth-tokens or --jwt-jwks (anyone may then act as
    /// any agent).
    #[arg(help_heading = heading::NETWORK, long)]
    pub insecure: bool,

    /// PEM certificate chain: serve gRPC over TLS (with --tls-key).
    #[arg(help_heading = heading::NETWORK, long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(help_heading = heading::NETWORK, long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA certificates: require client certificates signed by them (mutual TLS).
    #[arg(help_heading = heading::NETWORK, long, requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,

    /// A web origin (`https://crm.example.com`) whose pages may call calldesk with gRPC-Web
    /// (CORS). Repeatable; without it calldesk sends no CORS headers.
    #[arg(
        help_heading = heading::BROWSER,
        long = "cors-allow-origin",
        value_name = "ORIGIN",
        value_parser = parse_origin,
    )]
    pub cors_allow_origins: Vec<http::HeaderValue>,

    /// Status callbacks: one subscription per line, `NAME agents=*|ID,… url=URL
    /// secret=whsec_…|secret-file=FILE [events=STATE,…]`; every event of those agents'
    /// interactions is POSTed to URL, signed. Re-read on SIGHUP. See docs/guide/webhooks.md.
    #[arg(help_heading = heading::WEBHOOKS, long, value_name = "FILE")]
    pub webhooks: Option<PathBuf>,

    /// How long after an event happened its delivery is retried; then that interaction's
    /// undelivered events are dropped for that subscription (an ERROR log, a metric).
    #[arg(
        help_heading = heading::WEBHOOKS,
        long,
        default_value = "24h",
        value_parser = humantime::parse_duration,
    )]
    pub webhook_retry_for: Duration,

    /// Each delivery attempt's deadline (connecting, sending, the answer).
    #[arg(
        help_heading = heading::WEBHOOKS,
        long,
        default_value = "10s",
        value_parser = humantime::parse_duration,
    )]
    pub webhook_timeout: Duration,

    /// Allow callbacks to private, loopback and link-local addresses (refused by default:
    /// server-side request forgery).
    #[arg(help_heading = heading::WEBHOOKS, long)]
    pub webhook_allow_private: bool,

    /// Allow plain http callbacks to hosts that are not loopback (https is required
    /// otherwise).
    #[arg(help_heading = heading::WEBHOOKS, long)]
    pub webhook_allow_http: bool,

    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(help_heading = heading::OBSERVABILITY, long)]
    pub metrics_listen: Option<SocketAddr>,

    /// Log format on stderr; the level comes from RUST_LOG (default info).
    #[arg(help_heading = heading::OBSERVABILITY, long, value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Export traces with OTLP over gRPC to this collector (`http://otel-collector:4317`, or
    /// https://); batched in the background, a call never waits for it. Off without it.
    #[arg(help_heading = heading::OBSERVABILITY, long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,

    /// Open watch streams (both kinds) the server allows in all.
    #[arg(help_heading = heading::LIMITS, long, default_value_t = 16384)]
    pub max_watch_streams: usize,

    /// Open watch streams (both kinds) one agent may have.
    #[arg(help_heading = heading::LIMITS, long, default_value_t = 256)]
    pub max_watch_streams_per_agent: usize,

    /// Server-side deadline of unary calls, reading the request included, and of a watch's
    /// start (a shorter client deadline wins); over it a call ends with DEADLINE_EXCEEDED.
    #[arg(
        help_heading = heading::LIMITS,
        long,
        default_value = "30s",
        value_parser = humantime::parse_duration,
    )]
    pub request_timeout: Duration,

    /// Connections that have not sent the whole HTTP/2 preface and their first SETTINGS this
    /// long after connecting are closed (with TLS: the TLS handshake and a first byte).
    #[arg(
        help_heading = heading::LIMITS,
        long,
        default_value = "10s",
        value_parser = humantime::parse_duration,
    )]
    pub idle_connection_timeout: Duration,

    /// Connections open at once; past it new connections are closed as soon as they are
    /// accepted. Keep it below the process's file descriptor limit (`ulimit -n`).
    #[arg(
        help_heading = heading::LIMITS,
        long,
        default_value_t = 10_000,
        value_parser = clap::value_parser!(u32).range(1..),
    )]
    pub max_connections: u32,

    /// Response bytes one HTTP/2 stream may have queued in the server for a client that does
    /// not read them, whatever flow-control window the client advertises (`16KiB`, `1MiB` or
    /// bytes). A watch stream at it waits; see docs/api.md §4.
    #[arg(
        help_heading = heading::LIMITS,
        long,
        default_value = "16KiB",
        value_parser = parse_stream_send_buffer,
    )]
    pub max_stream_send_buffer: usize,

    /// The `--sim-*` flags given on the command line or in the environment (not defaulted), so
    /// that `--telephony sip` can refuse them. Filled by [`Config::from_matches`].
    #[arg(skip)]
    pub sim_flags_given: Vec<String>,
}

/// The `--sip-*` flags: how calldesk reaches agents' phones and the trunk (`--telephony sip`).
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = heading::SIP)]
pub struct SipArgs {
    /// SIP: the local address for UDP and TCP, and for TLS (on the TCP port, told apart by
    /// its first byte) with --sip-tls-cert.
    #[arg(long, default_value = "127.0.0.1:5060")]
    pub sip_listen: SocketAddr,

    /// SIP: the transport of requests to `sip:` URIs without a `;transport=` parameter
    /// (`sips:` URIs always go over TLS).
    #[arg(long, value_enum, default_value = "udp")]
    pub sip_transport: SipTransportKind,

    /// SIP: how to reach an agent's phone; `{agent}` is replaced by the agent id, e.g.
    /// `sip:{agent}@pbx.example.com`.
    #[arg(long, value_name = "TEMPLATE")]
    pub sip_agent_uri: Option<String>,

    /// SIP: per-agent phones, one `AGENT_ID SIP_URI` line each (`#` starts a comment);
    /// overrides --sip-agent-uri. Re-read on SIGHUP.
    #[arg(long, value_name = "FILE")]
    pub sip_agents: Option<PathBuf>,

    /// SIP: where customer calls go, e.g. `sip:trunk.example.com:5060`; the customer's
    /// Request-URI is `sip:{E.164 number}@host[:port]`.
    #[arg(long, value_name = "URI")]
    pub sip_trunk: Option<String>,

    /// SIP: the From user of the customer leg (the caller id the customer sees) when
    /// --caller-ids gives the agent none.
    #[arg(long, value_name = "USER")]
    pub sip_caller_id: Option<String>,

    /// A conference room on the PBX for ConferenceCall, `{interaction}` replaced by the
    /// interaction's id, e.g. `sip:conf-{interaction}@pbx.example.com`. Without it
    /// ConferenceCall is refused (FAILED_PRECONDITION, CONFERENCE_NOT_CONFIGURED).
    #[arg(long, value_name = "TEMPLATE")]
    pub sip_conference_uri: Option<String>,

    /// SIP: the display name of the customer leg's From and P-Asserted-Identity (the caller
    /// ID's name, e.g. `Acme Support`); without it they carry the number alone.
    #[arg(long, value_name = "NAME")]
    pub sip_caller_name: Option<String>,

    /// SIP: ask the agent's phone to answer by itself (Call-Info `answer-after=0` and
    /// Alert-Info `auto answer` on the agent leg's INVITE).
    #[arg(long)]
    pub sip_agent_auto_answer: bool,

    /// SIP: send the initial object's id and type to both legs in a User-to-User header (RFC
    /// 7433, hex), for the PBX's screen pop.
    #[arg(long)]
    pub sip_send_uui: bool,

    /// SIP: digest user for the trunk's 401/407 challenges. The password comes from
    /// --sip-auth-password-file or CALLDESK_SIP_PASSWORD, never from a flag.
    #[arg(long, value_name = "USER")]
    pub sip_auth_user: Option<String>,

    /// SIP: file holding the digest password (its first line).
    #[arg(long, value_name = "FILE")]
    pub sip_auth_password_file: Option<PathBuf>,

    /// SIP: how long the agent's phone may ring before the call fails.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    pub sip_agent_answer_timeout: Duration,

    /// SIP: how long the customer may ring before calldesk cancels (NO_ANSWER).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub sip_no_answer_timeout: Duration,

    /// SIP: how often OPTIONS is sent to --sip-trunk; while it goes unanswered, health reports
    /// NOT_SERVING. `off` (or 0s) disables it.
    #[arg(long, default_value = "30s", value_parser = parse_interval)]
    pub sip_keepalive_interval: Duration,

    /// SIP over TLS: calldesk's certificate chain (PEM), presented on its TLS listener.
    /// Needed with --sip-transport tls; with --sip-tls-key.
    #[arg(long, value_name = "FILE", requires = "sip_tls_key")]
    pub sip_tls_cert: Option<PathBuf>,

    /// SIP over TLS: the private key of --sip-tls-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "sip_tls_cert")]
    pub sip_tls_key: Option<PathBuf>,

    /// SIP over TLS: CA certificates (PEM) that the trunk's and the phones' certificates must
    /// chain to; default: the system's trust anchors.
    #[arg(long, value_name = "FILE")]
    pub sip_tls_ca: Option<PathBuf>,

    /// SIP: who may send to calldesk's SIP port besides its peers (the addresses the trunk
    /// and the agents' phones resolve to, always allowed), as a CIDR range (`203.0.113.0/24`,
    /// `2001:db8::/32`, a bare address). Repeatable. Anything else is dropped unanswered.
    #[arg(long, value_name = "CIDR", value_parser = parse_cidr)]
    pub sip_allow_from: Vec<ipnet::IpNet>,

    /// SIP: TCP and TLS connections open at once; past it new ones are closed as soon as
    /// they are accepted.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    pub sip_max_connections: u32,

    /// SIP: how long a new TCP or TLS connection has to send its first complete SIP message
    /// (the TLS handshake included); closed otherwise.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub sip_first_message_timeout: Duration,

    /// SIP: a TCP or TLS connection that carries no live call's dialog is closed after this
    /// long without a SIP message.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub sip_idle_connection_timeout: Duration,
}

/// Which telephony backend places the calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TelephonyKind {
    /// The deterministic simulated switch.
    Sim,
    /// Real calls over SIP, with third-party call control.
    Sip,
}

/// The SIP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SipTransportKind {
    Udp,
    Tcp,
    Tls,
}

/// A `--sip-allow-from`: a CIDR range, or a bare address (a range of one).
fn parse_cidr(text: &str) -> Result<ipnet::IpNet, String> {
    if let Ok(net) = text.parse::<ipnet::IpNet>() {
        if net != net.trunc() {
            return Err(format!(
                "{text:?} has host bits set: did you mean {}?",
                net.trunc()
            ));
        }
        return Ok(net);
    }
    text.parse::<std::net::IpAddr>()
        .map(ipnet::IpNet::from)
        .map_err(|_| format!("{text:?} is not a CIDR range (203.0.113.0/24) nor an address"))
}

/// A positive number of calls per second (`0.5`, `30`).
fn parse_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 && rate <= 100_000.0 => Ok(rate),
        _ => Err(format!(
            "{text:?}: expected calls per second, above 0 (e.g. 5 or 0.5)"
        )),
    }
}

/// A humantime duration, or `off` (zero).
fn parse_interval(s: &str) -> Result<Duration, String> {
    if s == "off" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(s).map_err(|e| format!("{e} (or `off`)"))
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    Text,
    /// One JSON object per line.
    Json,
}

impl Default for Config {
    fn default() -> Self {
        Config::parse_from(["serve"])
    }
}

impl Config {
    /// The settings of parsed `serve` arguments, noting which `--sim-*` flags were given.
    pub fn from_matches(matches: &clap::ArgMatches) -> Result<Self, clap::Error> {
        use clap::FromArgMatches;
        let mut config = Config::from_arg_matches(matches)?;
        config.sim_flags_given = ["sim_ring", "sim_answer", "sim_no_answer", "sim_talk"]
            .into_iter()
            .filter(|id| {
                matches
                    .value_source(id)
                    .is_some_and(|source| source != clap::parser::ValueSource::DefaultValue)
            })
            .map(|id| format!("--{}", id.replace('_', "-")))
            .collect();
        Ok(config)
    }
}

/// A `--cors-allow-origin`: `scheme://host[:port]`, as a browser sends it in `Origin` (no path,
/// no trailing slash, no wildcard: calldesk never allows an origin it was not given).
fn parse_origin(text: &str) -> Result<http::HeaderValue, String> {
    let bad = |why: &str| {
        format!("{text:?} is not an origin ({why}); expected scheme://host[:port], e.g. https://crm.example.com")
    };
    let (scheme, rest) = text.split_once("://").ok_or_else(|| bad("no scheme://"))?;
    if !matches!(scheme, "http" | "https") {
        return Err(bad("the scheme must be http or https"));
    }
    if rest.is_empty()
        || rest.contains(['/', '?', '#', '*', '@'])
        || rest.contains(char::is_whitespace)
    {
        return Err(bad(
            "only a host and an optional port may follow the scheme",
        ));
    }
    if text.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(bad("browsers send origins in lower case"));
    }
    let authority: http::uri::Authority = rest.parse().map_err(|_| bad("not a host[:port]"))?;
    if authority.host().is_empty() {
        return Err(bad("no host"));
    }
    http::HeaderValue::from_str(text).map_err(|_| bad("not a header value"))
}

/// The smallest and the largest `--max-stream-send-buffer`: one HTTP/2 frame's worth at least,
/// and a bound that still means something.
const MIN_STREAM_SEND_BUFFER: usize = 1024;
const MAX_STREAM_SEND_BUFFER: usize = 16 * 1024 * 1024;

/// A `--max-stream-send-buffer`: bytes, or a whole number of KiB or MiB (`16KiB`, `1MiB`).
fn parse_stream_send_buffer(text: &str) -> Result<usize, String> {
    let (digits, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, ""),
    };
    let multiplier = match unit {
        "" => 1,
        "KiB" => 1024,
        "MiB" => 1024 * 1024,
        _ => {
            return Err(format!(
                "{text:?}: expected bytes, or a number of KiB or MiB (16KiB)"
            ))
        }
    };
    let bytes = digits
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(multiplier))
        .ok_or_else(|| format!("{text:?}: expected bytes, or a number of KiB or MiB (16KiB)"))?;
    if !(MIN_STREAM_SEND_BUFFER..=MAX_STREAM_SEND_BUFFER).contains(&bytes) {
        return Err(format!("{text:?}: must be between 1KiB and 16MiB"));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_send_buffers_parse_in_bytes_kib_and_mib() {
        assert_eq!(parse_stream_send_buffer("16KiB"), Ok(16 * 1024));
        assert_eq!(parse_stream_send_buffer("1MiB"), Ok(1024 * 1024));
        assert_eq!(parse_stream_send_buffer("4096"), Ok(4096));
        for bad in [
            "",
            "16k",
            "16 KiB",
            "-1",
            "1023",
            "17MiB",
            "KiB",
            "99999999999999999999",
        ] {
            assert!(parse_stream_send_buffer(bad).is_err(), "{bad:?}");
        }
        assert_eq!(Config::default().max_stream_send_buffer, 16 * 1024);
    }

    #[test]
    fn sip_allow_from_takes_ranges_and_bare_addresses() {
        assert_eq!(
            parse_cidr("203.0.113.0/24").map(|n| n.to_string()),
            Ok("203.0.113.0/24".to_owned())
        );
        assert_eq!(
            parse_cidr("2001:db8::1").map(|n| n.to_string()),
            Ok("2001:db8::1/128".to_owned())
        );
        assert!(
            parse_cidr("203.0.113.7/24").is_err_and(|e| e.contains("did you mean 203.0.113.0/24"))
        );
        for bad in ["", "pbx.example.com", "10.0.0.0/33", "10.0.0"] {
            assert!(parse_cidr(bad).is_err(), "{bad:?}");
        }
    }
}
