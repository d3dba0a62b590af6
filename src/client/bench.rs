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
//! - `sip`: whole click-to-call calls against a server running `--telephony sip` (both phones
//!   being SIPp UAS instances, see `scripts/bench sip`): StartCall → CONNECTED → EndCall →
//!   WRAP_UP, closed loop (`--concurrency` calls in flight) or open loop (`--rate` calls/s).
//!   Prints completed calls/s, failures by gRPC code and by end reason, and the latency from
//!   StartCall to the CONNECTED event (minus `--scenario-delay`).
//! - `sip-hold`: `--calls` concurrent connected calls, then the server's RSS per live call,
//!   then EndCall for all of them.
//!
//! The SIP modes learn of CONNECTED and WRAP_UP through one WatchInteractions stream per agent
//! (opened before the first StartCall), which costs the server one stream per agent rather than
//! one per call; the client stamps each event as it reads it.

mod numbers;

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use tokio::sync::Mutex;
use tonic::{
    metadata::MetadataValue,
    transport::{Channel, Endpoint},
    Request,
};
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

use crate::proto::{
    interaction_service_client::InteractionServiceClient, EndCallRequest, InteractionState,
    StartCallRequest, WatchInteractionRequest,
};

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
    /// Watch: concurrent WatchInteraction streams.
    #[arg(long, default_value_t = 1000)]
    pub watchers: usize,
    /// SIP: calls started per second (open loop, at most `--concurrency` in flight); 0 = closed
    /// loop, `--concurrency` calls in flight back to back.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
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
    /// SIP: write `INTERACTION_ID MICROSECONDS` (StartCall → CONNECTED, minus
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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchMode {
    Unary,
    StartCalls,
    Watch,
    Sip,
    SipHold,
    Takeover,
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
    if args.mode == BenchMode::Takeover {
        // Before connecting: a wrong --kill-pid is refused whether or not a server answers.
        takeover_target(&args)?;
    }
    let channels = connect(&args.server, args.connections).await?;
    match args.mode {
        BenchMode::Unary => unary(&args, &channels).await,
        BenchMode::StartCalls => start_calls(&args, &channels).await,
        BenchMode::Watch => watch(&args, &channels).await,
        BenchMode::Sip => sip::calls(&args, &channels).await,
        BenchMode::SipHold => sip::hold(&args, &channels).await,
        BenchMode::Takeover => takeover(&args, &channels).await,
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

/// One run's outcome.
struct RunStats {
    latencies: Vec<Duration>,
    errors: BTreeMap<String, usize>,
    elapsed: Duration,
}

impl RunStats {
    fn rate(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile(&self, p: f64) -> Duration {
        percentile(&self.latencies, p)
    }
}

/// What one unary run sends.
#[derive(Clone, Copy)]
enum Rpc {
    HealthCheck,
    StartCall(Numbers),
}

/// The busy number of the simulated switch (docs/api.md §8.1): its calls end by themselves.
const BUSY_NUMBER: &str = "+12025550101";

/// Where StartCall's numbers come from during one bench process.
struct Dialing {
    /// The number `Numbers::Repeated` dials.
    repeated: String,
    /// The next index in the pool of distinct numbers, shared by all workers.
    next: AtomicUsize,
}

impl Dialing {
    fn number(&self, numbers: Numbers) -> String {
        match numbers {
            Numbers::Repeated => self.repeated.clone(),
            Numbers::Distinct => numbers::pool_number(self.next.fetch_add(1, Ordering::Relaxed)),
        }
    }
}

async fn unary(args: &BenchArgs, channels: &[Channel]) -> Result<(), String> {
    let workloads = workloads(args);
    let rounds = args.rounds.unwrap_or(3);
    println!(
        "unary: {} connections to {} x {} in flight, {:?} per run, {} rounds; Health/Check vs StartCall on {}",
        channels.len(),
        match args.server.len() {
            1 => "1 server".to_owned(),
            n => format!("{n} servers (in turn)"),
        },
        args.concurrency,
        args.duration,
        rounds,
        workloads
            .iter()
            .map(|w| match w {
                Numbers::Repeated => format!("one number repeated ({BUSY_NUMBER}, busy)"),
                Numbers::Distinct => format!(
                    "distinct numbers (pool of {}, from index {})",
                    numbers::POOL,
                    args.pool_start
                ),
            })
            .collect::<Vec<_>>()
            .join(" and ")
    );
    let dialing = Arc::new(Dialing {
        repeated: BUSY_NUMBER.to_owned(),
        next: AtomicUsize::new(args.pool_start),
    });
    // Per workload, by round.
    let mut pairs: BTreeMap<&str, Vec<RoundFigures>> = BTreeMap::new();
    let mut failed = 0;
    for round in 1..=rounds {
        let before = Usage::read(args);
        let (baseline, _) = load(args, channels, Rpc::HealthCheck, &dialing, None).await;
        let mut mid = Usage::read(args);
        print_run(round, "Health/Check", &baseline, &before, &mid);
        failed += baseline.errors.values().sum::<usize>();
        for &numbers in &workloads {
            let first = dialing.next.load(Ordering::Relaxed);
            let (calls, started) =
                load(args, channels, Rpc::StartCall(numbers), &dialing, None).await;
            let after = Usage::read(args);
            let name = format!("StartCall {}", numbers.name());
            let cpu = print_run(round, &name, &calls, &mid, &after);
            failed += calls.errors.values().sum::<usize>();
            if numbers == Numbers::Distinct {
                let last = dialing.next.load(Ordering::Relaxed);
                // The simulator answers these calls; end them (untimed) so that every round
                // starts with the same live calls: none.
                let ended = end_calls(channels, args.concurrency, started).await;
                println!(
                    "        pool numbers {first}..{last} dialed; {} calls ended after the run, {} EndCall errors",
                    ended.0, ended.1
                );
                failed += ended.1;
            }
            mid = Usage::read(args);
            pairs.entry(numbers.name()).or_default().push(RoundFigures {
                health_rate: baseline.rate(),
                call_rate: calls.rate(),
                health_p99: baseline.percentile(0.99).as_secs_f64(),
                call_p50: calls.percentile(0.5).as_secs_f64(),
                call_p99: calls.percentile(0.99).as_secs_f64(),
                cpu,
            });
        }
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let mut throughput_of = BTreeMap::new();
    for name in workloads.iter().map(|w| w.name()) {
        let Some(runs) = pairs.get(name) else {
            continue;
        };
        let of = |f: fn(&RoundFigures) -> f64| median(runs.iter().map(f).collect());
        let throughput = of(|r| r.call_rate / r.health_rate);
        let p99 = of(|r| r.call_p99 / r.health_p99.max(1e-9));
        throughput_of.insert(name, of(|r| r.call_rate));
        println!("median ratios, StartCall {name}: StartCall/Health throughput {throughput:.2}, StartCall/Health p99 latency {p99:.2}");
        let mut cpu = String::new();
        if runs.iter().all(|r| r.cpu.server.is_some()) {
            let server = of(|r| r.cpu.server.unwrap_or_default());
            cpu.push_str(&format!("; CPU per StartCall: server {server:.0} µs"));
            if runs.iter().all(|r| r.cpu.store.is_some()) {
                let store = of(|r| r.cpu.store.unwrap_or_default());
                cpu.push_str(&format!(
                    ", PostgreSQL {store:.0} µs, both {:.0} µs",
                    of(|r| r.cpu.server.unwrap_or_default() + r.cpu.store.unwrap_or_default())
                ));
            }
        }
        println!(
            "median StartCall {name}: {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms; Health/Check {:.0} req/s{cpu}",
            of(|r| r.call_rate),
            of(|r| r.call_p50) * 1000.0,
            of(|r| r.call_p99) * 1000.0,
            of(|r| r.health_rate),
        );
    }
    if let (Some(repeated), Some(distinct)) =
        (throughput_of.get("repeated"), throughput_of.get("distinct"))
    {
        println!(
            "median StartCall req/s: repeated {repeated:.0}, distinct {distinct:.0} (distinct/repeated {:.2})",
            distinct / repeated.max(1e-9)
        );
    }
    match failed {
        0 => Ok(()),
        n => Err(format!("{n} requests failed")),
    }
}

/// One unary round's figures for one workload (rates in req/s, latencies in seconds).
struct RoundFigures {
    health_rate: f64,
    call_rate: f64,
    health_p99: f64,
    call_p50: f64,
    call_p99: f64,
    cpu: CpuPerRequest,
}

/// CPU time per answered request in one run, in microseconds: the servers' (`--server-pid`)
/// and PostgreSQL's (`--store-pid`), when given.
#[derive(Default)]
struct CpuPerRequest {
    server: Option<f64>,
    store: Option<f64>,
}

/// The workloads asked for, each once, in the order given.
fn workloads(args: &BenchArgs) -> Vec<Numbers> {
    let mut workloads = Vec::new();
    for &n in &args.numbers {
        if !workloads.contains(&n) {
            workloads.push(n);
        }
    }
    workloads
}

/// `calldesk bench start-calls`: exactly `--requests` StartCalls of one workload, as fast as
/// `--concurrency` allows; the calls are left as they are.
async fn start_calls(args: &BenchArgs, channels: &[Channel]) -> Result<(), String> {
    let [numbers] = workloads(args)[..] else {
        return Err("start-calls dials one workload: --numbers repeated or distinct".into());
    };
    let dialing = Arc::new(Dialing {
        repeated: args.phone_number.clone(),
        next: AtomicUsize::new(args.pool_start),
    });
    let (stats, _) = load(
        args,
        channels,
        Rpc::StartCall(numbers),
        &dialing,
        Some(args.requests),
    )
    .await;
    let failed: usize = stats.errors.values().sum();
    println!(
        "start-calls {}: {} answered, {failed} failed {:?}, in {:.2} s",
        numbers.name(),
        stats.latencies.len(),
        stats.errors,
        stats.elapsed.as_secs_f64()
    );
    match failed {
        0 => Ok(()),
        n => Err(format!("{n} StartCalls failed")),
    }
}

/// Ends the calls a run started (each as its agent), `in_flight` at a time: (ended, errors).
async fn end_calls(
    channels: &[Channel],
    in_flight: usize,
    calls: Vec<(String, String)>,
) -> (usize, usize) {
    let queue = Arc::new(std::sync::Mutex::new(calls));
    let mut tasks = Vec::new();
    for worker in 0..in_flight.max(1) {
        let mut client = InteractionServiceClient::new(channels[worker % channels.len()].clone());
        let queue = queue.clone();
        tasks.push(tokio::spawn(async move {
            let (mut ended, mut errors) = (0, 0);
            loop {
                let next = queue.lock().ok().and_then(|mut q| q.pop());
                let Some((agent, interaction_id)) = next else {
                    break;
                };
                let mut request = Request::new(EndCallRequest { interaction_id });
                if let Ok(value) = MetadataValue::try_from(agent.as_str()) {
                    request.metadata_mut().insert("x-agent-id", value);
                }
                match client.end_call(request).await {
                    Ok(_) => ended += 1,
                    Err(_) => errors += 1,
                }
            }
            (ended, errors)
        }));
    }
    let mut total = (0, 0);
    for task in tasks {
        match task.await {
            Ok((ended, errors)) => {
                total.0 += ended;
                total.1 += errors;
            }
            Err(_) => total.1 += 1,
        }
    }
    total
}

/// Prints one run's line; returns its CPU time per answered request.
fn print_run(
    round: usize,
    name: &str,
    stats: &RunStats,
    before: &Usage,
    after: &Usage,
) -> CpuPerRequest {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let mut line = format!(
        "round {round} {name:>18}: {:>8.0} req/s  p50 {:>6.2} ms  p99 {:>6.2} ms  p99.9 {:>6.2} ms",
        stats.rate(),
        ms(stats.percentile(0.5)),
        ms(stats.percentile(0.99)),
        ms(stats.percentile(0.999)),
    );
    if !stats.errors.is_empty() {
        line.push_str(&format!("  errors {:?}", stats.errors));
    }
    let answered = stats.latencies.len().max(1) as f64;
    let used = |a: &ServerUsage, b: &ServerUsage| b.cpu_seconds - a.cpu_seconds;
    let mut cpu = CpuPerRequest::default();
    if let (Some(a), Some(b)) = (&before.server, &after.server) {
        let per = used(a, b) / answered * 1e6;
        cpu.server = Some(per);
        line.push_str(&format!(
            "  server CPU {:.0}% ({per:.0} µs/req)  RSS {:.1} MiB",
            used(a, b) / stats.elapsed.as_secs_f64() * 100.0,
            b.rss_kib as f64 / 1024.0
        ));
    }
    if let (Some(a), Some(b)) = (&before.store, &after.store) {
        let per = used(a, b) / answered * 1e6;
        cpu.store = Some(per);
        line.push_str(&format!(
            "  PostgreSQL CPU {:.0}% ({per:.0} µs/req)",
            used(a, b) / stats.elapsed.as_secs_f64() * 100.0
        ));
    }
    println!("{line}");
    cpu
}

/// One run: `rpc` from `--concurrency` workers for `--duration`, or until `count` requests
/// were sent. Returns its figures and, for StartCalls of distinct numbers, the (agent,
/// interaction) of every call started.
async fn load(
    args: &BenchArgs,
    channels: &[Channel],
    rpc: Rpc,
    dialing: &Arc<Dialing>,
    count: Option<usize>,
) -> (RunStats, Vec<(String, String)>) {
    let deadline = Instant::now() + args.duration;
    let start = Instant::now();
    let errors = Arc::new(Mutex::new(BTreeMap::<String, usize>::new()));
    let sent = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for worker in 0..args.concurrency.max(1) {
        let channel = channels[worker % channels.len()].clone();
        let errors = errors.clone();
        let agents = args.agents.max(1);
        let workers = args.concurrency.max(1);
        let (dialing, sent) = (dialing.clone(), sent.clone());
        tasks.push(tokio::spawn(async move {
            let mut health = HealthClient::new(channel.clone());
            let mut calls = InteractionServiceClient::new(channel);
            let mut latencies = Vec::new();
            let mut started = Vec::new();
            let mut n = worker;
            loop {
                match count {
                    Some(count) => {
                        if sent.fetch_add(1, Ordering::Relaxed) >= count {
                            break;
                        }
                    }
                    None => {
                        if Instant::now() >= deadline {
                            break;
                        }
                    }
                }
                let sent_at = Instant::now();
                let outcome = match rpc {
                    Rpc::HealthCheck => health
                        .check(HealthCheckRequest {
                            service: String::new(),
                        })
                        .await
                        .map(|_| ()),
                    Rpc::StartCall(numbers) => {
                        let mut request = Request::new(StartCallRequest {
                            phone_number: dialing.number(numbers),
                            ..Default::default()
                        });
                        let agent = format!("bench-{}", n % agents);
                        if let Ok(value) = MetadataValue::try_from(agent.as_str()) {
                            request.metadata_mut().insert("x-agent-id", value);
                        }
                        calls.start_call(request).await.map(|reply| {
                            if numbers == Numbers::Distinct && count.is_none() {
                                if let Some(id) = reply.into_inner().interaction_id {
                                    started.push((agent, id));
                                }
                            }
                        })
                    }
                };
                // Workers interleave, so that each agent sees one call per `agents` calls.
                n += workers;
                match outcome {
                    Ok(()) => latencies.push(sent_at.elapsed()),
                    Err(status) => {
                        *errors
                            .lock()
                            .await
                            .entry(format!("{:?}", status.code()))
                            .or_default() += 1;
                    }
                }
            }
            (latencies, started)
        }));
    }
    let mut latencies = Vec::new();
    let mut started = Vec::new();
    for task in tasks {
        if let Ok((mut l, mut s)) = task.await {
            latencies.append(&mut l);
            started.append(&mut s);
        }
    }
    let elapsed = start.elapsed();
    latencies.sort_unstable();
    let errors = errors.lock().await.clone();
    (
        RunStats {
            latencies,
            errors,
            elapsed,
        },
        started,
    )
}

async fn watch(args: &BenchArgs, channels: &[Channel]) -> Result<(), String> {
    let watchers = watch_channels(args, channels).await?;
    let rounds = args.rounds.unwrap_or(1).max(1);
    let place = match &args.watch_server {
        Some(server) => format!("the calls on {}, the watchers on {server}", args.server[0]),
        None => format!("the calls and the watchers on {}", args.server[0]),
    };
    println!(
        "watch: {} watchers over {} connections, {rounds} round{}; {place}",
        args.watchers,
        watchers.len(),
        if rounds == 1 { "" } else { "s" }
    );
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let mut all = Vec::new();
    let mut end_calls = Vec::new();
    let mut short = Vec::new();
    for round in 1..=rounds {
        let rss_before = ServerUsage::read(&args.server_pid);
        let outcome = watch_round(args, channels, &watchers).await?;
        let notified = outcome.latencies.len();
        let last = outcome.latencies.last().copied().unwrap_or_default();
        // Many rounds (of few watchers, usually): the summary alone.
        if rounds <= 10 {
            println!(
            "watch{}: {} watchers ready of {}, {} notified; EndCall → WRAP_UP at every watcher: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; EndCall answered in {:.2} ms",
            if rounds == 1 { String::new() } else { format!(" round {round}") },
            outcome.ready,
            args.watchers,
            notified,
            ms(percentile(&outcome.latencies, 0.5)),
            ms(percentile(&outcome.latencies, 0.99)),
            ms(last),
            ms(outcome.end_call),
        );
        }
        // Memory per stream from the first round only (later rounds reuse what the first
        // round's streams freed), and with enough streams to rise above the allocator's noise.
        if let (1, true, Some(before), Some(open)) =
            (round, outcome.ready >= 100, rss_before, outcome.rss_open)
        {
            let growth = open.rss_kib.saturating_sub(before.rss_kib);
            println!(
                "server RSS: {:.1} MiB before, {:.1} MiB with {} streams open: {:.2} KiB per stream",
                before.rss_kib as f64 / 1024.0,
                open.rss_kib as f64 / 1024.0,
                outcome.ready,
                growth as f64 / outcome.ready.max(1) as f64
            );
        }
        if outcome.ready < args.watchers || notified < args.watchers {
            short.push(format!(
                "round {round}: {} of {} watchers got ready, {notified} were notified",
                outcome.ready, args.watchers
            ));
        }
        all.extend(outcome.latencies);
        end_calls.push(outcome.end_call);
    }
    all.sort_unstable();
    end_calls.sort_unstable();
    println!(
        "watch summary: {} watchers x {rounds} rounds, {place}: EndCall → WRAP_UP at the watchers ({} in all) p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; EndCall answered p50 {:.2} ms, max {:.2} ms",
        args.watchers,
        all.len(),
        ms(percentile(&all, 0.5)),
        ms(percentile(&all, 0.99)),
        ms(all.last().copied().unwrap_or_default()),
        ms(percentile(&end_calls, 0.5)),
        ms(end_calls.last().copied().unwrap_or_default()),
    );
    match short.is_empty() {
        true => Ok(()),
        false => Err(short.join("; ")),
    }
}

/// What one watch round measured.
struct WatchRound {
    /// Watchers that read the call up to DELIVERED.
    ready: usize,
    /// EndCall sent → the WRAP_UP event read, one per notified watcher, sorted.
    latencies: Vec<Duration>,
    /// EndCall sent → its response.
    end_call: Duration,
    /// The servers' usage once every watcher was ready.
    rss_open: Option<ServerUsage>,
}

/// One call started (and ended) through `channels`, watched by `--watchers` streams over
/// `watchers`.
async fn watch_round(
    args: &BenchArgs,
    channels: &[Channel],
    watchers: &[Channel],
) -> Result<WatchRound, String> {
    let mut client = InteractionServiceClient::new(channels[0].clone());
    let started = client
        .start_call(with_agent(StartCallRequest {
            phone_number: "+12025550100".into(),
            ..Default::default()
        }))
        .await
        .map_err(|s| format!("StartCall: {s}"))?
        .into_inner();
    let id = started
        .interaction_id
        .ok_or("StartCall returned no interaction")?;

    // Open the watchers and read each up to CONNECTED, so that only EndCall's event is left.
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(args.watchers.max(1));
    let (go_tx, _) = tokio::sync::broadcast::channel::<Instant>(1);
    let mut tasks = Vec::new();
    for w in 0..args.watchers {
        let mut client = InteractionServiceClient::new(watchers[w % watchers.len()].clone());
        let request = with_agent(WatchInteractionRequest {
            interaction_id: id.clone(),
            after_sequence: 0,
        });
        let ready = ready_tx.clone();
        let mut go = go_tx.subscribe();
        tasks.push(tokio::spawn(async move {
            let mut stream = client.watch_interaction(request).await.ok()?.into_inner();
            let mut signalled = false;
            loop {
                let event = stream.message().await.ok()??;
                let state = InteractionState::try_from(event.state).ok()?;
                if state == InteractionState::Delivered && !signalled {
                    signalled = true;
                    let _ = ready.send(()).await;
                }
                if state == InteractionState::WrapUp {
                    let sent = go.recv().await.ok()?;
                    return Some(sent.elapsed());
                }
            }
        }));
    }
    drop(ready_tx);
    let mut ready = 0;
    while ready < args.watchers {
        match tokio::time::timeout(Duration::from_secs(60), ready_rx.recv()).await {
            Ok(Some(())) => ready += 1,
            _ => break,
        }
    }
    let rss_open = ServerUsage::read(&args.server_pid);
    let sent = Instant::now();
    let _ = go_tx.send(sent);
    client
        .end_call(with_agent(EndCallRequest {
            interaction_id: id.clone(),
        }))
        .await
        .map_err(|s| format!("EndCall: {s}"))?;
    let end_call = sent.elapsed();
    let mut latencies = Vec::new();
    // A watcher that is not told within a minute counts as not notified.
    let give_up = tokio::time::Instant::now() + Duration::from_secs(60);
    for task in tasks {
        if let Ok(Ok(Some(l))) = tokio::time::timeout_at(give_up, task).await {
            latencies.push(l);
        }
    }
    latencies.sort_unstable();
    Ok(WatchRound {
        ready,
        latencies,
        end_call,
        rss_open,
    })
}

/// `calldesk bench takeover`: one connected call on the replica `--server`, watched on the
/// replica `--watch-server`; SIGKILL to `--kill-pid` (the first replica), then the time until
/// the watcher reads the call's WRAP_UP, which must end SERVER_RESTART.
async fn takeover(args: &BenchArgs, channels: &[Channel]) -> Result<(), String> {
    let (pid, watch_server) = takeover_target(args)?;
    let watchers = watch_channels(args, channels).await?;
    let mut client = InteractionServiceClient::new(channels[0].clone());
    let id = client
        .start_call(with_agent(StartCallRequest {
            phone_number: args.phone_number.clone(),
            ..Default::default()
        }))
        .await
        .map_err(|s| format!("StartCall on {}: {s}", args.server[0]))?
        .into_inner()
        .interaction_id
        .ok_or("StartCall returned no interaction")?;
    let mut watcher = InteractionServiceClient::new(watchers[0].clone());
    let mut stream = watcher
        .watch_interaction(with_agent(WatchInteractionRequest {
            interaction_id: id.clone(),
            after_sequence: 0,
        }))
        .await
        .map_err(|s| format!("WatchInteraction on {watch_server}: {s}"))?
        .into_inner();
    // The next event in the given state or later, within --call-timeout.
    let deadline = tokio::time::Instant::now() + args.call_timeout;
    let delivered = next_in_state(&mut stream, deadline, InteractionState::Delivered).await?;
    if delivered.state != InteractionState::Delivered as i32 {
        return Err(format!(
            "the call ended before the kill: {:?}",
            delivered.interaction.map(|i| i.end_reason)
        ));
    }
    tokio::time::sleep(args.kill_after).await;
    // Once more just before the kill: the process may have exited meanwhile.
    takeover_target(args)?;
    let killed_wall = std::time::SystemTime::now();
    let killed = Instant::now();
    // SAFETY: kill(2) has no memory-safety preconditions; the pid was just checked to be a
    // `calldesk serve` process.
    if unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) } != 0 {
        return Err(format!(
            "kill -9 {pid}: {}",
            std::io::Error::last_os_error()
        ));
    }
    let deadline = tokio::time::Instant::now() + args.call_timeout;
    let ended = next_in_state(&mut stream, deadline, InteractionState::WrapUp).await?;
    let seen = killed.elapsed();
    let reason = ended
        .interaction
        .as_ref()
        .and_then(|i| crate::proto::EndReason::try_from(i.end_reason).ok())
        .map_or("none", |r| {
            r.as_str_name().trim_start_matches("END_REASON_")
        });
    // The event's own time is the survivor's clock at the takeover: the same machine's.
    let written = ended.time.as_ref().and_then(|t| {
        crate::domain::system_time(t)
            .duration_since(killed_wall)
            .ok()
    });
    println!(
        "takeover: kill -9 of {} → WRAP_UP {reason} at the watcher on {watch_server} after {:.3} s{}",
        args.server[0],
        seen.as_secs_f64(),
        written.map_or(String::new(), |w| format!(
            " (the event's time: {:.3} s after the kill; then {:.1} ms to the watcher)",
            w.as_secs_f64(),
            (seen.as_secs_f64() - w.as_secs_f64()) * 1000.0
        )),
    );
    if reason != "SERVER_RESTART" {
        return Err(format!("the call ended {reason}, not SERVER_RESTART"));
    }
    Ok(())
}

/// The process `takeover` kills and the server its watcher is on, checked: `--kill-pid` must
/// be a `calldesk serve` process, and `--watch-server` must be given.
fn takeover_target(args: &BenchArgs) -> Result<(u32, &str), String> {
    let Some(pid) = args.kill_pid else {
        return Err(
            "takeover needs --kill-pid: the process id of the replica --server names".into(),
        );
    };
    let Some(watch_server) = &args.watch_server else {
        return Err(
            "takeover needs --watch-server: another replica, whose watcher sees the takeover"
                .into(),
        );
    };
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
        .map_err(|e| format!("--kill-pid {pid}: {e}"))?;
    let argv: Vec<String> = cmdline
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    if !is_calldesk_serve(&argv) {
        return Err(format!(
            "--kill-pid {pid} is not a `calldesk serve` process: {}",
            argv.join(" ")
        ));
    }
    Ok((pid, watch_server))
}

/// Whether a process's command line is `…/calldesk serve …`.
fn is_calldesk_serve(argv: &[String]) -> bool {
    argv.first().is_some_and(|a| {
        std::path::Path::new(a).file_name() == Some(std::ffi::OsStr::new("calldesk"))
    }) && argv.get(1).is_some_and(|a| a == "serve")
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

/// A server process's resident memory and CPU time, from /proc; summed over several.
#[derive(Debug, Clone, Copy, Default)]
struct ServerUsage {
    rss_kib: u64,
    cpu_seconds: f64,
}

impl ServerUsage {
    /// The sum over `pids`; None if there are none or one cannot be read.
    fn read(pids: &[u32]) -> Option<Self> {
        if pids.is_empty() {
            return None;
        }
        let mut sum = Self::default();
        for &pid in pids {
            let one = Self::read_one(pid)?;
            sum.rss_kib += one.rss_kib;
            sum.cpu_seconds += one.cpu_seconds;
        }
        Some(sum)
    }

    /// `pid` and its children (a postmaster and its backends). The CPU of children that
    /// exited meanwhile is not counted; PostgreSQL's backends live as long as their pooled
    /// connections.
    fn read_tree(pid: Option<u32>) -> Option<Self> {
        let pid = pid?;
        let mut pids = vec![pid];
        for entry in std::fs::read_dir("/proc").ok()?.flatten() {
            let Some(child) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
                continue;
            };
            let parent = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            if parent == Some(pid) {
                pids.push(child);
            }
        }
        // A child may exit between the listing and the read: count those that are left.
        let mut sum = Self::read_one(pid)?;
        for &child in &pids[1..] {
            if let Some(one) = Self::read_one(child) {
                sum.rss_kib += one.rss_kib;
                sum.cpu_seconds += one.cpu_seconds;
            }
        }
        Some(sum)
    }

    fn read_one(pid: u32) -> Option<Self> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let rss_kib = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the command name (which may hold spaces) start after the last ')'.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let ticks: f64 =
            fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
        // USER_HZ is 100 on Linux.
        Some(Self {
            rss_kib,
            cpu_seconds: ticks / 100.0,
        })
    }
}

/// The servers' usage (`--server-pid`) and PostgreSQL's (`--store-pid`) at one moment.
struct Usage {
    server: Option<ServerUsage>,
    store: Option<ServerUsage>,
}

impl Usage {
    fn read(args: &BenchArgs) -> Self {
        Self {
            server: ServerUsage::read(&args.server_pid),
            store: ServerUsage::read_tree(args.store_pid),
        }
    }
}

/// `calldesk bench sip` and `sip-hold`: whole calls through the SIP switch.
mod sip {
    use std::{
        collections::{BTreeMap, HashMap},
        sync::{
            atomic::{AtomicUsize, Ordering},
            Arc, Mutex,
        },
        time::{Duration, Instant},
    };

    use tokio::{
        sync::{oneshot, Semaphore},
        task::JoinSet,
    };
    use tonic::{metadata::MetadataValue, transport::Channel, Request};

    use super::{BenchArgs, ServerUsage};
    use crate::proto::{
        interaction_service_client::InteractionServiceClient, CallProgress, EndCallRequest,
        EndReason, InteractionEvent, InteractionState, StartCallRequest, WatchInteractionsRequest,
    };

    /// Complete calls run before the idle RSS of `sip-hold` is read, so that one-time
    /// allocations (the store's page cache, the SIP stack's first dialogs) are not counted
    /// as per-call memory.
    const HOLD_WARM_UP: usize = 200;

    /// What one agent's WatchInteractions stream has said about each call, until the call is
    /// forgotten.
    #[derive(Default)]
    struct Slot {
        /// When the client read the event with progress CONNECTED.
        connected: Option<Instant>,
        /// The end reason of the WRAP_UP event.
        ended: Option<i32>,
        waiter: Option<oneshot::Sender<()>>,
    }

    #[derive(Default)]
    struct FeedState {
        slots: HashMap<String, Slot>,
        /// Why the stream ended; every wait fails from then on.
        closed: Option<String>,
    }

    /// One agent: its id and the calls its stream reports.
    struct Agent {
        id: MetadataValue<tonic::metadata::Ascii>,
        feed: Mutex<FeedState>,
    }

    #[derive(Debug)]
    enum WaitError {
        Timeout,
        Closed(String),
    }

    impl Agent {
        fn on_event(&self, event: &InteractionEvent) {
            let connected = event.progress == CallProgress::Connected as i32;
            let wrap_up = event.state == InteractionState::WrapUp as i32;
            if !connected && !wrap_up {
                return;
            }
            let now = Instant::now();
            let mut feed = self.feed.lock().unwrap();
            let slot = feed.slots.entry(event.interaction_id.clone()).or_default();
            if connected && slot.connected.is_none() {
                slot.connected = Some(now);
            }
            if wrap_up {
                slot.ended = Some(event.interaction.as_ref().map_or(0, |i| i.end_reason));
            }
            if let Some(waiter) = slot.waiter.take() {
                let _ = waiter.send(());
            }
        }

        fn close(&self, why: String) {
            let mut feed = self.feed.lock().unwrap();
            feed.closed.get_or_insert(why);
            for slot in feed.slots.values_mut() {
                slot.waiter.take();
            }
        }

        /// Waits until `done` holds for the call's slot; returns (connected, ended).
        async fn wait(
            &self,
            id: &str,
            timeout: Duration,
            done: impl Fn(&Slot) -> bool,
        ) -> Result<(Option<Instant>, Option<i32>), WaitError> {
            let deadline = tokio::time::Instant::now() + timeout;
            loop {
                let woken = {
                    let mut feed = self.feed.lock().unwrap();
                    if let Some(why) = &feed.closed {
                        return Err(WaitError::Closed(why.clone()));
                    }
                    let slot = feed.slots.entry(id.to_owned()).or_default();
                    if done(slot) {
                        return Ok((slot.connected, slot.ended));
                    }
                    let (tx, rx) = oneshot::channel();
                    slot.waiter = Some(tx);
                    rx
                };
                if tokio::time::timeout_at(deadline, woken).await.is_err() {
                    return Err(WaitError::Timeout);
                }
            }
        }

        fn forget(&self, id: &str) {
            self.feed.lock().unwrap().slots.remove(id);
        }

        fn request<T>(&self, message: T) -> Request<T> {
            let mut request = Request::new(message);
            request.metadata_mut().insert("x-agent-id", self.id.clone());
            request
        }
    }

    /// Opens one WatchInteractions stream per agent and a task reading each.
    async fn open_agents(
        args: &BenchArgs,
        channels: &[Channel],
    ) -> Result<(Vec<Arc<Agent>>, JoinSet<()>), String> {
        let mut agents = Vec::new();
        let mut readers = JoinSet::new();
        for a in 0..args.agents.max(1) {
            let name = format!("sip-bench-{a}");
            let agent = Arc::new(Agent {
                id: MetadataValue::try_from(name.as_str()).map_err(|e| e.to_string())?,
                feed: Mutex::new(FeedState::default()),
            });
            let mut client = InteractionServiceClient::new(channels[a % channels.len()].clone());
            // The stream is subscribed once the response headers are back: no event of a
            // later StartCall can be missed.
            let mut stream = client
                .watch_interactions(agent.request(WatchInteractionsRequest {}))
                .await
                .map_err(|s| format!("WatchInteractions as {name}: {s}"))?
                .into_inner();
            let reader = agent.clone();
            readers.spawn(async move {
                let why = loop {
                    match stream.message().await {
                        Ok(Some(event)) => reader.on_event(&event),
                        Ok(None) => break "the watch stream ended".to_owned(),
                        Err(status) => {
                            break format!("the watch stream failed: {:?}", status.code())
                        }
                    }
                };
                reader.close(why);
            });
            agents.push(agent);
        }
        Ok((agents, readers))
    }

    /// How one call went.
    #[derive(Default)]
    struct Outcome {
        /// StartCall → CONNECTED, minus the scenarios' delays.
        latency: Option<Duration>,
        /// The interaction, once StartCall returned it.
        id: Option<String>,
        /// Set when the call reached WRAP_UP.
        end_reason: Option<i32>,
        /// Why the call does not count as a complete call.
        failure: Option<String>,
        /// The interaction, when the call is held connected (`sip-hold`).
        held: Option<String>,
    }

    /// The per-call steps: StartCall, wait for CONNECTED; then, unless `hold`, EndCall and
    /// wait for WRAP_UP.
    async fn one_call(
        client: &mut InteractionServiceClient<Channel>,
        agent: &Agent,
        args: &BenchArgs,
        hold: bool,
    ) -> Outcome {
        let mut outcome = Outcome::default();
        let sent = Instant::now();
        let response = client
            .start_call(agent.request(StartCallRequest {
                phone_number: args.phone_number.clone(),
                ..Default::default()
            }))
            .await;
        let id = match response {
            Ok(response) => match response.into_inner().interaction_id {
                Some(id) => id,
                None => {
                    outcome.failure = Some("StartCall: no interaction (deferred dial?)".into());
                    return outcome;
                }
            },
            Err(status) => {
                outcome.failure = Some(format!("StartCall: {:?}", status.code()));
                return outcome;
            }
        };
        let waited = agent
            .wait(&id, args.call_timeout, |s| {
                s.connected.is_some() || s.ended.is_some()
            })
            .await;
        match waited {
            Ok((Some(connected), _)) => {
                outcome.id = Some(id.clone());
                outcome.latency = Some(
                    connected
                        .saturating_duration_since(sent)
                        .saturating_sub(args.scenario_delay),
                );
            }
            Ok((None, ended)) => {
                outcome.end_reason = ended;
                outcome.failure = Some("ended before CONNECTED".into());
                agent.forget(&id);
                return outcome;
            }
            Err(e) => {
                outcome.failure = Some(match e {
                    WaitError::Timeout => "no CONNECTED in time (EndCall sent)".into(),
                    WaitError::Closed(why) => why,
                });
                let _ = client
                    .end_call(agent.request(EndCallRequest {
                        interaction_id: id.clone(),
                    }))
                    .await;
                agent.forget(&id);
                return outcome;
            }
        }
        if hold {
            outcome.held = Some(id);
            return outcome;
        }
        end_call(client, agent, args, &id, &mut outcome).await;
        outcome
    }

    /// EndCall on a connected call, then wait for its WRAP_UP: a complete call ends
    /// AGENT_HANGUP.
    async fn end_call(
        client: &mut InteractionServiceClient<Channel>,
        agent: &Agent,
        args: &BenchArgs,
        id: &str,
        outcome: &mut Outcome,
    ) {
        if let Err(status) = client
            .end_call(agent.request(EndCallRequest {
                interaction_id: id.to_owned(),
            }))
            .await
        {
            outcome.failure = Some(format!("EndCall: {:?}", status.code()));
        }
        match agent
            .wait(id, args.call_timeout, |s| s.ended.is_some())
            .await
        {
            Ok((_, ended)) => {
                outcome.end_reason = ended;
                if ended != Some(EndReason::AgentHangup as i32) && outcome.failure.is_none() {
                    outcome.failure = Some("ended, but not AGENT_HANGUP".into());
                }
            }
            Err(WaitError::Timeout) => {
                outcome
                    .failure
                    .get_or_insert("no WRAP_UP in time after EndCall".into());
            }
            Err(WaitError::Closed(why)) => {
                outcome.failure.get_or_insert(why);
            }
        }
        agent.forget(id);
    }

    /// The figures of a run.
    #[derive(Default)]
    struct Tally {
        started: usize,
        completed: usize,
        latencies: Vec<Duration>,
        /// (interaction, latency) of every connected call, for `--latency-file`.
        connected: Vec<(String, Duration)>,
        failures: BTreeMap<String, usize>,
        end_reasons: BTreeMap<String, usize>,
        held: Vec<(usize, String)>,
    }

    impl Tally {
        fn add(&mut self, agent: usize, outcome: Outcome) {
            self.started += 1;
            if let Some(latency) = outcome.latency {
                self.latencies.push(latency);
                if let Some(id) = &outcome.id {
                    self.connected.push((id.clone(), latency));
                }
            }
            if let Some(reason) = outcome.end_reason {
                let name = EndReason::try_from(reason)
                    .map(|r| r.as_str_name().trim_start_matches("END_REASON_").to_owned())
                    .unwrap_or_else(|_| format!("{reason}"));
                *self.end_reasons.entry(name).or_default() += 1;
            }
            match (outcome.failure, outcome.held) {
                (Some(failure), _) => *self.failures.entry(failure).or_default() += 1,
                (None, Some(id)) => self.held.push((agent, id)),
                (None, None) => self.completed += 1,
            }
        }

        fn not_started(&mut self, why: &str) {
            *self.failures.entry(why.to_owned()).or_default() += 1;
        }

        fn print(&mut self, what: &str, elapsed: Duration) {
            let ms = |d: Duration| d.as_secs_f64() * 1000.0;
            self.latencies.sort_unstable();
            let pct = |p: f64| {
                if self.latencies.is_empty() {
                    return Duration::ZERO;
                }
                let n = self.latencies.len();
                self.latencies[((n as f64 * p).ceil() as usize).clamp(1, n) - 1]
            };
            println!(
                "{what}: {} started, {} {} in {:.2} s: {:.1} calls/s",
                self.started,
                if self.held.is_empty() {
                    self.completed
                } else {
                    self.held.len()
                },
                if self.held.is_empty() {
                    "completed (CONNECTED, then EndCall → WRAP_UP AGENT_HANGUP)"
                } else {
                    "held connected"
                },
                elapsed.as_secs_f64(),
                if self.held.is_empty() {
                    self.completed
                } else {
                    self.held.len()
                } as f64
                    / elapsed.as_secs_f64().max(1e-9),
            );
            if self.failures.is_empty() {
                println!("  failures: 0");
            } else {
                let total: usize = self.failures.values().sum();
                println!("  failures: {total} {:?}", self.failures);
            }
            println!("  end reasons: {:?}", self.end_reasons);
            println!(
                "  StartCall → CONNECTED ({} calls): p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
                self.latencies.len(),
                ms(pct(0.5)),
                ms(pct(0.9)),
                ms(pct(0.99)),
                ms(pct(1.0)),
            );
        }
    }

    fn usage_line(
        before: Option<ServerUsage>,
        after: Option<ServerUsage>,
        elapsed: Duration,
    ) -> Option<String> {
        let (a, b) = (before?, after?);
        Some(format!(
            "  server CPU {:.0}% of one core, RSS {:.1} MiB",
            (b.cpu_seconds - a.cpu_seconds) / elapsed.as_secs_f64().max(1e-9) * 100.0,
            b.rss_kib as f64 / 1024.0
        ))
    }

    /// `calldesk bench sip`: whole calls for `--duration`, closed or open loop.
    pub async fn calls(args: &BenchArgs, channels: &[Channel]) -> Result<(), String> {
        let (agents, mut readers) = open_agents(args, channels).await?;
        let tally = Arc::new(Mutex::new(Tally::default()));
        let before = ServerUsage::read(&args.server_pid);
        let start = Instant::now();
        let deadline = start + args.duration;
        let in_flight = args.concurrency.max(1);
        let what = if args.rate > 0.0 {
            format!(
                "sip: open loop at {} calls/s (at most {in_flight} in flight), {} agents, {:?}",
                args.rate,
                agents.len(),
                args.duration
            )
        } else {
            format!(
                "sip: closed loop, {in_flight} calls in flight, {} agents, {:?}",
                agents.len(),
                args.duration
            )
        };
        println!(
            "{what}; scenario delays subtracted: {:?}",
            args.scenario_delay
        );
        let mut tasks = JoinSet::new();
        if args.rate > 0.0 {
            let slots = Arc::new(Semaphore::new(in_flight));
            let mut ticks =
                tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate.min(1e6)));
            let mut n = 0usize;
            loop {
                ticks.tick().await;
                if Instant::now() >= deadline {
                    break;
                }
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    tally
                        .lock()
                        .unwrap()
                        .not_started("not started: --concurrency calls already in flight");
                    continue;
                };
                let a = n % agents.len();
                let agent = agents[a].clone();
                let mut client =
                    InteractionServiceClient::new(channels[n % channels.len()].clone());
                let (args, tally) = (args.clone(), tally.clone());
                tasks.spawn(async move {
                    let outcome = one_call(&mut client, &agent, &args, false).await;
                    tally.lock().unwrap().add(a, outcome);
                    drop(permit);
                });
                n += 1;
            }
        } else {
            for worker in 0..in_flight {
                let mut client =
                    InteractionServiceClient::new(channels[worker % channels.len()].clone());
                let (args, tally, agents) = (args.clone(), tally.clone(), agents.clone());
                tasks.spawn(async move {
                    // Workers interleave over the agents.
                    let mut n = worker;
                    while Instant::now() < deadline {
                        let a = n % agents.len();
                        let outcome = one_call(&mut client, &agents[a], &args, false).await;
                        tally.lock().unwrap().add(a, outcome);
                        n += in_flight;
                    }
                });
            }
        }
        while tasks.join_next().await.is_some() {}
        let elapsed = start.elapsed();
        let after = ServerUsage::read(&args.server_pid);
        readers.abort_all();
        let mut tally = tally.lock().unwrap();
        tally.print("sip", elapsed);
        if let Some(path) = &args.latency_file {
            let lines: String = tally
                .connected
                .iter()
                .map(|(id, l)| format!("{id} {}\n", l.as_micros()))
                .collect();
            std::fs::write(path, lines).map_err(|e| format!("{}: {e}", path.display()))?;
        }
        if let Some(line) = usage_line(before, after, elapsed) {
            println!("{line}");
        }
        failed(tally.failures.values().sum())
    }

    /// Runs `count` calls with `in_flight` workers; `hold` keeps them connected.
    async fn run_calls(
        args: &BenchArgs,
        channels: &[Channel],
        agents: &[Arc<Agent>],
        count: usize,
        hold: bool,
    ) -> Tally {
        let tally = Arc::new(Mutex::new(Tally::default()));
        let next = Arc::new(AtomicUsize::new(0));
        let mut tasks = JoinSet::new();
        for worker in 0..args.concurrency.max(1) {
            let mut client =
                InteractionServiceClient::new(channels[worker % channels.len()].clone());
            let (args, tally, next) = (args.clone(), tally.clone(), next.clone());
            let agents = agents.to_vec();
            tasks.spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= count {
                        break;
                    }
                    let a = n % agents.len();
                    let outcome = one_call(&mut client, &agents[a], &args, hold).await;
                    tally.lock().unwrap().add(a, outcome);
                }
            });
        }
        while tasks.join_next().await.is_some() {}
        Arc::try_unwrap(tally)
            .ok()
            .map(|m| m.into_inner().unwrap())
            .unwrap_or_default()
    }

    /// `calldesk bench sip-hold`: `--calls` connected calls at once, the server's RSS per
    /// call, then EndCall for every one.
    pub async fn hold(args: &BenchArgs, channels: &[Channel]) -> Result<(), String> {
        let (agents, mut readers) = open_agents(args, channels).await?;
        println!(
            "sip-hold: {} connected calls over {} agents, {} StartCalls in flight",
            args.calls,
            agents.len(),
            args.concurrency
        );
        let warm_up = HOLD_WARM_UP.min(args.calls);
        let warm = run_calls(args, channels, &agents, warm_up, false).await;
        if !warm.failures.is_empty() {
            println!(
                "  warm-up ({warm_up} complete calls) failures: {:?}",
                warm.failures
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let idle = ServerUsage::read(&args.server_pid);

        let start = Instant::now();
        let mut ramp = run_calls(args, channels, &agents, args.calls, true).await;
        let ramp_time = start.elapsed();
        ramp.print("ramp-up", ramp_time);
        // Sampled every second while the calls are held; the figure is the last sample.
        let held = ramp.held.len();
        let held_from = Instant::now();
        let mut samples = Vec::new();
        loop {
            samples.extend(ServerUsage::read(&args.server_pid).map(|u| u.rss_kib));
            if held_from.elapsed() >= args.hold_for {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1).min(args.hold_for)).await;
        }
        if let (Some(idle), Some(&last)) = (idle, samples.last()) {
            let mib = |kib: u64| kib as f64 / 1024.0;
            let series: Vec<String> = samples.iter().map(|&k| format!("{:.0}", mib(k))).collect();
            println!(
                "  server RSS: {:.1} MiB idle (after {warm_up} warm-up calls), {:.1} MiB with {held} connected calls held {:?}: {:.2} KiB per call (RSS each second while held, MiB: {})",
                mib(idle.rss_kib),
                mib(last),
                args.hold_for,
                last.saturating_sub(idle.rss_kib) as f64 / held.max(1) as f64,
                series.join(" ")
            );
        }

        // Hang every call up, as many at once as the ramp had in flight.
        let start = Instant::now();
        let queue = Arc::new(Mutex::new(std::mem::take(&mut ramp.held)));
        let tally = Arc::new(Mutex::new(Tally::default()));
        let mut tasks = JoinSet::new();
        for worker in 0..args.concurrency.max(1) {
            let mut client =
                InteractionServiceClient::new(channels[worker % channels.len()].clone());
            let (args, tally, queue) = (args.clone(), tally.clone(), queue.clone());
            let agents = agents.clone();
            tasks.spawn(async move {
                loop {
                    let Some((a, id)) = queue.lock().unwrap().pop() else {
                        break;
                    };
                    let mut outcome = Outcome::default();
                    end_call(&mut client, &agents[a], &args, &id, &mut outcome).await;
                    tally.lock().unwrap().add(a, outcome);
                }
            });
        }
        while tasks.join_next().await.is_some() {}
        let elapsed = start.elapsed();
        readers.abort_all();
        let tally = tally.lock().unwrap();
        let total: usize = tally.failures.values().sum();
        println!(
            "hang-up: {} EndCall → WRAP_UP AGENT_HANGUP of {held} in {:.2} s ({:.0} calls/s); failures: {total} {:?}; end reasons {:?}",
            tally.completed,
            elapsed.as_secs_f64(),
            tally.completed as f64 / elapsed.as_secs_f64().max(1e-9),
            tally.failures,
            tally.end_reasons,
        );
        failed(ramp.failures.values().sum::<usize>() + total)
    }

    /// An error (a non-zero exit, for scripts and CI) when any call failed.
    fn failed(failures: usize) -> Result<(), String> {
        match failures {
            0 => Ok(()),
            n => Err(format!("{n} calls failed")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(args: &[&str]) -> Vec<String> {
        args.iter().map(|a| a.to_string()).collect()
    }

    #[test]
    fn takeover_kills_only_a_calldesk_server() {
        assert!(is_calldesk_serve(&argv(&[
            "target/release/calldesk",
            "serve",
            "--listen",
            "127.0.0.1:0"
        ])));
        assert!(is_calldesk_serve(&argv(&["calldesk", "serve"])));
        for other in [
            &["calldesk", "bench", "takeover"][..],
            &["/usr/bin/sleep", "100"],
            &["calldesk-other", "serve"],
            &["postgres", "serve"],
            &[],
        ] {
            assert!(!is_calldesk_serve(&argv(other)), "{other:?}");
        }
    }

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
