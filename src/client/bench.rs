//! `calldesk bench`: a load generator that measures calldesk beside the ceiling of its own
//! stack.
//!
//! - `unary`: StartCall alternated with the same load on `grpc.health.v1.Health/Check` on the
//!   same server — tonic's own trivial unary RPC — so that both see the same machine. Two
//!   workloads (`--numbers`): `repeated`, the busy number (every call runs its whole life and
//!   completes by itself when the server has a short `--wrap-up-timeout`), and `distinct`, a
//!   pool of 1,000,000 distinct valid numbers (`bench/numbers.rs`), which the simulator
//!   answers: the bench ends those calls after each run, untimed. Prints requests/s, latency
//!   percentiles, errors by code, the ratios, and the server's RSS and CPU when
//!   `--server-pid` is given. Exits non-zero if a request failed.
//! - `start-calls`: exactly `--requests` StartCalls of one workload, for counting the server's
//!   instructions per call (`scripts/bench instructions`); the calls are left as they are.
//! - `watch`: W concurrent WatchInteraction streams on one connected call, then the time from
//!   EndCall until every watcher has the WRAP_UP event, and the server's RSS per stream;
//!   `--rounds` calls in turn. With `--watch-server`, the watchers are on another replica
//!   than the call (PostgreSQL store): the cross-replica fan-out.
//! - `takeover`: a connected call on the replica `--server`, watched on the replica
//!   `--watch-server`; the bench kills the first (SIGKILL to `--kill-pid`, which must be a
//!   `calldesk serve` process) and times the kill → the watcher's WRAP_UP SERVER_RESTART,
//!   which a surviving replica writes once the dead one's lease has expired.
//!
//! `--server` takes several URLs (replicas of one deployment): the connections are spread
//! over them in turn, so the unary load is spread too. `--server-pid` takes the pid of each,
//! and their CPU and RSS are summed; `--store-pid` adds PostgreSQL's CPU (the postmaster and
//! its backends).
//! - `webhooks`: the server's status callbacks to a receiver in the bench (`bench/webhooks.rs`):
//!   delivered events/s, event → delivery latency at `--rate` events/s, and the drain of an
//!   `--outage`'s backlog.
//! - `sip`: whole click-to-call calls against a server running `--telephony sip` (both phones
//!   being SIPp UAS instances, see `scripts/bench sip`): StartCall → CONNECTED → EndCall →
//!   WRAP_UP, closed loop (`--concurrency` calls in flight) or open loop (`--rate` calls/s).
//!   Prints completed calls/s, failures by gRPC code and by end reason, and the latency from
//!   StartCall to the CONNECTED event (minus `--scenario-delay`).
//! - `sip-hold`: `--calls` concurrent connected calls, then the server's RSS per live call,
//!   then EndCall for all of them.
//!
//! - `day`: a contact center's day (`bench/day.rs`): `--agents` consoles (WatchInteractions),
//!   calls at `--rate` calls/s for `--duration` on the simulated switch, each with its own
//!   WatchInteraction and whole life (`--talk-for`, `--wrap-up-for`); event → console latency,
//!   StartCall latency, server CPU per call and RSS, and an exactly-once-in-order check.
//! - `sip-junk`: junk INVITEs at `--rate` datagrams/s to a calldesk SIP port
//!   (`--sip-target`), from `--junk-from` (loopback only), for `--duration`; with the server's
//!   RSS (see `scripts/bench sip-flood`, which runs it beside `sip`).
//!
//! The SIP modes learn of CONNECTED and WRAP_UP through one WatchInteractions stream per agent
//! (opened before the first StartCall), which costs the server one stream per agent rather than
//! one per call; the client stamps each event as it reads it.

mod day;
mod junk;
mod numbers;
mod peek;
mod sip;
mod takeover;
mod unary;
mod usage;
mod watch;
mod webhooks;

use std::time::Duration;

use tonic::{
    metadata::MetadataValue,
    transport::{Channel, Endpoint},
    Request,
};

use crate::proto::InteractionState;

/// Flags of `calldesk bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// What to measure.
    #[arg(value_enum)]
    pub mode: BenchMode,
    /// The server's URL; several, comma-separated (replicas sharing a PostgreSQL store): the
    /// connections go to each in turn.
    #[arg(
        long,
        value_delimiter = ',',
        num_args = 1..,
        default_value = "http://127.0.0.1:50051"
    )]
    pub server: Vec<String>,
    /// Watch and takeover: the server the watchers connect to, another replica than
    /// `--server` (whose first URL starts and ends the calls). Default: `--server`.
    #[arg(long)]
    pub watch_server: Option<String>,
    /// HTTP/2 connections to spread the load over (in all, over every `--server`; watch:
    /// the watchers' connections).
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Requests in flight at once (unary).
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// How long each unary run lasts.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Unary: how many baseline/StartCall pairs to alternate (default 3). Watch: how many
    /// calls to watch in turn, each with fresh watchers (default 1).
    #[arg(long)]
    pub rounds: Option<usize>,
    /// Distinct agents StartCall rotates through (each has `--max-active-calls`).
    #[arg(long, default_value_t = 256)]
    pub agents: usize,
    /// Unary and start-calls: what StartCall dials. `repeated`: one number (unary: the busy
    /// number; start-calls: `--phone-number`); `distinct`: the next numbers of a pool of
    /// 1,000,000 distinct valid US, GB and DE numbers, each dialed once. Unary runs each
    /// given workload in every round.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "repeated,distinct"
    )]
    pub numbers: Vec<Numbers>,
    /// The first index in the pool of distinct numbers (so that a second run dials numbers
    /// the server has not seen).
    #[arg(long, default_value_t = 0)]
    pub pool_start: usize,
    /// Start-calls: how many StartCalls to send.
    #[arg(long, default_value_t = 2000)]
    pub requests: usize,
    /// Unary and start-calls: give every StartCall a request_id of its own (an idempotency key
    /// the server must remember for 24 h).
    #[arg(long)]
    pub request_ids: bool,
    /// Watch: concurrent WatchInteraction streams.
    #[arg(long, default_value_t = 1000)]
    pub watchers: usize,
    /// Watch: the watchers read only each event's sequence and state, without decoding it
    /// (`bench/peek.rs`), so the figures leave out the client's decoding; the decoding of as
    /// many events is timed apart.
    #[arg(long)]
    pub no_decode: bool,
    /// SIP: calls started per second (open loop, at most `--concurrency` in flight); 0 = closed
    /// loop, `--concurrency` calls in flight back to back. SIP junk: datagrams per second.
    /// Webhooks: events per second of the latency and outage phases (0: 1000).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// SIP junk: calldesk's SIP address (`--sip-listen`), where the junk goes.
    #[arg(long)]
    pub sip_target: Option<std::net::SocketAddr>,
    /// SIP junk: the (loopback) address the junk comes from: one calldesk allows (127.0.0.1
    /// when its peers are there), or one it does not (127.0.0.2).
    #[arg(long, default_value = "127.0.0.1")]
    pub junk_from: std::net::IpAddr,
    /// SIP hold: connected calls to hold at once.
    #[arg(long, default_value_t = 10_000)]
    pub calls: usize,
    /// SIP and start-calls `--numbers repeated`: the number StartCall dials (the trunk's SIPp
    /// answers any; the simulator answers this one).
    #[arg(long, default_value = "+12025550100")]
    pub phone_number: String,
    /// SIP: the scenarios' own delays between StartCall and CONNECTED (SIPp `-d` pauses of the
    /// agent's and the customer's scenario), subtracted from the latency.
    #[arg(long, default_value = "0ms", value_parser = humantime::parse_duration)]
    pub scenario_delay: Duration,
    /// SIP: how long one call may wait for CONNECTED, or for WRAP_UP after EndCall, before it
    /// counts as failed.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub call_timeout: Duration,
    /// SIP and day: write `INTERACTION_ID MICROSECONDS` (StartCall → CONNECTED, minus
    /// `--scenario-delay`) for every connected call to this file, for matching against the
    /// phones' own traces.
    #[arg(long)]
    pub latency_file: Option<std::path::PathBuf>,
    /// SIP hold: how long to hold the connected calls before reading the RSS (sampled every
    /// second meanwhile). The SIP transactions of the set-up end 32 s after their final
    /// response (RFC 6026 Timer M/D over UDP): hold longer than that to see the calls alone.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub hold_for: Duration,
    /// The server's process id, to report its RSS and CPU time (Linux); several,
    /// comma-separated (one per replica), are summed.
    #[arg(long, value_delimiter = ',')]
    pub server_pid: Vec<u32>,
    /// The PostgreSQL postmaster's process id: the CPU time of it and its children (the
    /// backends) is reported beside the server's.
    #[arg(long)]
    pub store_pid: Option<u32>,
    /// Takeover: the process id of the replica `--server` names, which the bench kills with
    /// SIGKILL once the watcher on `--watch-server` has seen the call DELIVERED. It must be a
    /// `calldesk serve` process.
    #[arg(long)]
    pub kill_pid: Option<u32>,
    /// Takeover: how long to wait after DELIVERED before the kill (to place the kill at a
    /// chosen point of the replica's lease renewal period).
    #[arg(long, default_value = "0ms", value_parser = humantime::parse_duration)]
    pub kill_after: Duration,
    /// Webhooks: where the bench's receiver listens (the address the server's webhooks file
    /// names).
    #[arg(long, value_parser = webhooks::parse_receiver)]
    pub receiver: Option<std::net::SocketAddr>,
    /// Webhooks: the subscription's secret (`whsec_…`), to verify each request.
    #[arg(long, default_value = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")]
    pub webhook_secret: String,
    /// Webhooks: how long the receiver answers 503 while calls go on at `--rate`; 0s skips the
    /// outage.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub outage: Duration,
    /// Day: how long each call talks, from CONNECTED to the agent's EndCall.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub talk_for: Duration,
    /// Day: how long each call stays in WRAP_UP before the agent's CompleteInteraction.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub wrap_up_for: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchMode {
    Unary,
    StartCalls,
    Watch,
    Sip,
    SipHold,
    SipJunk,
    Takeover,
    Webhooks,
    Day,
}

/// What StartCall dials.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Numbers {
    /// One number, again and again: after the first call, the server has seen it.
    Repeated,
    /// Numbers the server has not seen: a pool of 1,000,000 distinct valid ones.
    Distinct,
}

impl Numbers {
    fn name(self) -> &'static str {
        match self {
            Numbers::Repeated => "repeated",
            Numbers::Distinct => "distinct",
        }
    }
}

/// Runs the benchmark and prints its figures.
pub async fn run(args: BenchArgs) -> Result<(), String> {
    if args.mode == BenchMode::SipJunk {
        // No gRPC: datagrams to the SIP port.
        return junk::junk(&args).await;
    }
    if args.mode == BenchMode::Takeover {
        // Before connecting: a wrong --kill-pid is refused whether or not a server answers.
        takeover::takeover_target(&args)?;
    }
    let channels = connect(&args.server, args.connections).await?;
    match args.mode {
        BenchMode::Unary => unary::unary(&args, &channels).await,
        BenchMode::StartCalls => unary::start_calls(&args, &channels).await,
        BenchMode::Watch => watch::watch(&args, &channels).await,
        BenchMode::Sip => sip::calls(&args, &channels).await,
        BenchMode::SipHold => sip::hold(&args, &channels).await,
        BenchMode::SipJunk => junk::junk(&args).await,
        BenchMode::Takeover => takeover::takeover(&args, &channels).await,
        BenchMode::Webhooks => webhooks::webhooks(&args, &channels).await,
        BenchMode::Day => day::day(&args, &channels).await,
    }
}

/// `connections` channels, to each of `servers` in turn.
async fn connect(servers: &[String], connections: usize) -> Result<Vec<Channel>, String> {
    if servers.is_empty() {
        return Err("--server: give at least one URL".into());
    }
    let mut endpoints = Vec::new();
    for server in servers {
        endpoints.push(
            Endpoint::from_shared(server.clone())
                .map_err(|e| format!("--server {server}: {e}"))?
                .tcp_nodelay(true),
        );
    }
    let mut channels = Vec::new();
    for i in 0..connections.max(1).max(servers.len()) {
        let endpoint = &endpoints[i % endpoints.len()];
        channels.push(
            endpoint
                .connect()
                .await
                .map_err(|e| format!("cannot connect to {}: {e}", servers[i % servers.len()]))?,
        );
    }
    Ok(channels)
}

/// The watchers' channels: `--watch-server`'s, or `channels` when there is none.
async fn watch_channels(args: &BenchArgs, channels: &[Channel]) -> Result<Vec<Channel>, String> {
    match &args.watch_server {
        Some(server) => connect(std::slice::from_ref(server), args.connections).await,
        None => Ok(channels.to_vec()),
    }
}

/// Reads `stream` until an event whose state is `state` or WRAP_UP (or later), by `deadline`.
async fn next_in_state(
    stream: &mut tonic::Streaming<crate::proto::InteractionEvent>,
    deadline: tokio::time::Instant,
    state: InteractionState,
) -> Result<crate::proto::InteractionEvent, String> {
    loop {
        let event = match tokio::time::timeout_at(deadline, stream.message()).await {
            Err(_) => return Err(format!("no {} event in time", state.as_str_name())),
            Ok(Err(status)) => return Err(format!("the watch failed: {status}")),
            Ok(Ok(None)) => return Err("the watch ended".into()),
            Ok(Ok(Some(event))) => event,
        };
        let now = InteractionState::try_from(event.state).ok();
        if now == Some(state)
            || matches!(
                now,
                Some(InteractionState::WrapUp | InteractionState::Completed)
            )
        {
            return Ok(event);
        }
    }
}

/// The `p` quantile of sorted durations (zero for none).
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len());
    sorted[i - 1]
}

/// The request, as the watch benchmark's agent.
fn with_agent<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("x-agent-id", MetadataValue::from_static("bench-watch"));
    request
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_sorted_durations() {
        let ms = |n: u64| Duration::from_millis(n);
        let sorted: Vec<Duration> = (1..=100).map(ms).collect();
        assert_eq!(percentile(&sorted, 0.5), ms(50));
        assert_eq!(percentile(&sorted, 0.99), ms(99));
        assert_eq!(percentile(&sorted, 1.0), ms(100));
        assert_eq!(percentile(&sorted[..1], 0.99), ms(1));
        assert_eq!(percentile(&[], 0.5), Duration::ZERO);
    }
}
