//! The server's settings: the flags of `calldesk serve`, with the contract's defaults.
//!
//! The clap definition is the one place the defaults live; `Config::default()` parses an
//! empty command line, so tests and embedders start from exactly what the binary does.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::Parser;

use crate::store::Durability;

/// Settings of one calldesk server.
#[derive(Debug, Clone, Parser)]
#[command(name = "serve", about = "Run the calldesk gRPC server")]
pub struct Config {
    /// Address to listen on for gRPC (h2c). Port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,

    /// Directory of the store (created if missing).
    #[arg(long, default_value = "./calldesk-data")]
    pub data_dir: PathBuf,

    /// Deferred Dial: StartCall only stages the number in the agent's dialpad.
    #[arg(long)]
    pub deferred_dial: bool,

    /// Region (ISO 3166 code, e.g. US) in which national numbers without `+` are read.
    #[arg(long)]
    pub default_region: Option<String>,

    /// How long the switch has to acknowledge a dial before StartCall fails with "Timeout error".
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub originate_timeout: Duration,

    /// Complete interactions left in WRAP_UP this long; without it they wait for
    /// CompleteInteraction.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub wrap_up_timeout: Option<Duration>,

    /// How many live calls (DELIVERY_PENDING, DELIVERED, HOLD) one agent may have.
    #[arg(long, default_value_t = 4)]
    pub max_active_calls: u32,

    /// Simulated switch: delay from dial to ringing (and to busy or failure).
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    pub sim_ring: Duration,

    /// Simulated switch: delay from ringing to answer.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub sim_answer: Duration,

    /// Simulated switch: how long +12025550102 rings before NO_ANSWER.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    pub sim_no_answer: Duration,

    /// Simulated switch: how long +12025550105 talks before the remote party hangs up.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub sim_talk: Duration,

    /// `full`: every acknowledged change survives power loss (SQLite synchronous=FULL).
    /// `normal`: it survives a crash of the process, not of the machine.
    #[arg(long, value_enum, default_value = "full")]
    pub durability: Durability,

    /// COMPLETED interactions (and their events) older than this are deleted.
    #[arg(long, default_value = "30days", value_parser = humantime::parse_duration)]
    pub retention: Duration,

    /// On SIGTERM/SIGINT, how long in-flight calls may take to finish before the server stops.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,

    /// Token file: one `AGENT_ID SHA256_HEX_OF_TOKEN` line per token (`#` starts a comment).
    /// Requests must then carry `authorization: Bearer <token>`. Re-read on SIGHUP.
    #[arg(long)]
    pub auth_tokens: Option<PathBuf>,

    /// Allow a non-loopback --listen without --auth-tokens (anyone may then act as any agent).
    #[arg(long)]
    pub insecure: bool,

    /// PEM certificate chain: serve gRPC over TLS (with --tls-key).
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA certificates: require client certificates signed by them (mutual TLS).
    #[arg(long, requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,

    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long)]
    pub metrics_listen: Option<SocketAddr>,

    /// Log format on stderr; the level comes from RUST_LOG (default info).
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Open watch streams (both kinds) the server allows in all.
    #[arg(long, default_value_t = 16384)]
    pub max_watch_streams: usize,

    /// Open watch streams (both kinds) one agent may have.
    #[arg(long, default_value_t = 256)]
    pub max_watch_streams_per_agent: usize,

    /// Server-side deadline of unary calls (a shorter client deadline wins); over it a call
    /// ends with DEADLINE_EXCEEDED.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,

    /// Connections that send nothing for this long after connecting are closed.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub idle_connection_timeout: Duration,
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
