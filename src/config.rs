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
}

impl Default for Config {
    fn default() -> Self {
        Config::parse_from(["serve"])
    }
}
