//! `calldesk bench`: a load generator that measures calldesk beside the ceiling of its own
//! stack.
//!
//! - `unary`: StartCall on the busy number (every call runs its whole life and completes by
//!   itself when the server has a short `--wrap-up-timeout`), alternated with the same load on
//!   `grpc.health.v1.Health/Check` on the same server — tonic's own trivial unary RPC — so
//!   that both see the same machine. Prints requests/s, latency percentiles, errors by code,
//!   the ratio, and the server's RSS and CPU when `--server-pid` is given.
//! - `watch`: W concurrent WatchInteraction streams on one connected call, then the time from
//!   EndCall until every watcher has the WRAP_UP event, and the server's RSS per stream.

use std::{
    collections::BTreeMap,
    sync::Arc,
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
    /// The server's URL.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    pub server: String,
    /// HTTP/2 connections to spread the load over.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Requests in flight at once (unary).
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// How long each unary run lasts.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Unary: how many baseline/StartCall pairs to alternate.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Distinct agents StartCall rotates through (each has `--max-active-calls`).
    #[arg(long, default_value_t = 256)]
    pub agents: usize,
    /// Watch: concurrent WatchInteraction streams.
    #[arg(long, default_value_t = 1000)]
    pub watchers: usize,
    /// The server's process id, to report its RSS and CPU time (Linux).
    #[arg(long)]
    pub server_pid: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchMode {
    Unary,
    Watch,
}

/// Runs the benchmark and prints its figures.
pub async fn run(args: BenchArgs) -> Result<(), String> {
    let channels = connect(&args).await?;
    match args.mode {
        BenchMode::Unary => unary(&args, &channels).await,
        BenchMode::Watch => watch(&args, &channels).await,
    }
}

async fn connect(args: &BenchArgs) -> Result<Vec<Channel>, String> {
    let endpoint = Endpoint::from_shared(args.server.clone())
        .map_err(|e| format!("--server {}: {e}", args.server))?
        .tcp_nodelay(true);
    let mut channels = Vec::new();
    for _ in 0..args.connections.max(1) {
        channels.push(
            endpoint
                .connect()
                .await
                .map_err(|e| format!("cannot connect to {}: {e}", args.server))?,
        );
    }
    Ok(channels)
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
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let i = ((self.latencies.len() as f64 * p).ceil() as usize).clamp(1, self.latencies.len());
        self.latencies[i - 1]
    }
}

#[derive(Clone, Copy)]
enum Rpc {
    HealthCheck,
    StartCall,
}

async fn unary(args: &BenchArgs, channels: &[Channel]) -> Result<(), String> {
    println!(
        "unary: {} connections x {} in flight, {:?} per run, {} rounds; StartCall on the busy number vs grpc.health.v1.Health/Check",
        channels.len(),
        args.concurrency,
        args.duration,
        args.rounds
    );
    let mut pairs = Vec::new();
    for round in 1..=args.rounds {
        let before = ServerUsage::read(args.server_pid);
        let baseline = load(args, channels, Rpc::HealthCheck).await;
        let mid = ServerUsage::read(args.server_pid);
        let calls = load(args, channels, Rpc::StartCall).await;
        let after = ServerUsage::read(args.server_pid);
        print_run(round, "Health/Check", &baseline, before.zip(mid));
        print_run(round, "StartCall", &calls, mid.zip(after));
        pairs.push((
            baseline.rate(),
            calls.rate(),
            baseline.percentile(0.99),
            calls.percentile(0.99),
        ));
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let throughput = median(pairs.iter().map(|p| p.1 / p.0).collect());
    let p99 = median(
        pairs
            .iter()
            .map(|p| p.3.as_secs_f64() / p.2.as_secs_f64().max(1e-9))
            .collect(),
    );
    println!("median ratios: StartCall/Health throughput {throughput:.2}, StartCall/Health p99 latency {p99:.2}");
    Ok(())
}

fn print_run(
    round: usize,
    name: &str,
    stats: &RunStats,
    usage: Option<(ServerUsage, ServerUsage)>,
) {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let mut line = format!(
        "round {round} {name:>12}: {:>8.0} req/s  p50 {:>6.2} ms  p99 {:>6.2} ms  p99.9 {:>6.2} ms",
        stats.rate(),
        ms(stats.percentile(0.5)),
        ms(stats.percentile(0.99)),
        ms(stats.percentile(0.999)),
    );
    if !stats.errors.is_empty() {
        line.push_str(&format!("  errors {:?}", stats.errors));
    }
    if let Some((a, b)) = usage {
        let cpu = (b.cpu_seconds - a.cpu_seconds) / stats.elapsed.as_secs_f64();
        line.push_str(&format!(
            "  server CPU {:.0}%  RSS {:.1} MiB",
            cpu * 100.0,
            b.rss_kib as f64 / 1024.0
        ));
    }
    println!("{line}");
}

async fn load(args: &BenchArgs, channels: &[Channel], rpc: Rpc) -> RunStats {
    let deadline = Instant::now() + args.duration;
    let start = Instant::now();
    let errors = Arc::new(Mutex::new(BTreeMap::<String, usize>::new()));
    let mut tasks = Vec::new();
    for worker in 0..args.concurrency.max(1) {
        let channel = channels[worker % channels.len()].clone();
        let errors = errors.clone();
        let agents = args.agents.max(1);
        let workers = args.concurrency.max(1);
        tasks.push(tokio::spawn(async move {
            let mut health = HealthClient::new(channel.clone());
            let mut calls = InteractionServiceClient::new(channel);
            let mut latencies = Vec::new();
            let mut n = worker;
            while Instant::now() < deadline {
                let sent = Instant::now();
                let outcome = match rpc {
                    Rpc::HealthCheck => health
                        .check(HealthCheckRequest {
                            service: String::new(),
                        })
                        .await
                        .map(|_| ()),
                    Rpc::StartCall => {
                        let mut request = Request::new(StartCallRequest {
                            phone_number: "+12025550101".into(),
                            ..Default::default()
                        });
                        let agent = format!("bench-{}", n % agents);
                        if let Ok(value) = MetadataValue::try_from(agent.as_str()) {
                            request.metadata_mut().insert("x-agent-id", value);
                        }
                        calls.start_call(request).await.map(|_| ())
                    }
                };
                // Workers interleave, so that each agent sees one call per `agents` calls.
                n += workers;
                match outcome {
                    Ok(()) => latencies.push(sent.elapsed()),
                    Err(status) => {
                        *errors
                            .lock()
                            .await
                            .entry(format!("{:?}", status.code()))
                            .or_default() += 1;
                    }
                }
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        if let Ok(mut l) = task.await {
            latencies.append(&mut l);
        }
    }
    let elapsed = start.elapsed();
    latencies.sort_unstable();
    let errors = errors.lock().await.clone();
    RunStats {
        latencies,
        errors,
        elapsed,
    }
}

async fn watch(args: &BenchArgs, channels: &[Channel]) -> Result<(), String> {
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
    let rss_before = ServerUsage::read(args.server_pid);

    // Open the watchers and read each up to CONNECTED, so that only EndCall's event is left.
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(args.watchers.max(1));
    let (go_tx, _) = tokio::sync::broadcast::channel::<Instant>(1);
    let mut tasks = Vec::new();
    for w in 0..args.watchers {
        let mut client = InteractionServiceClient::new(channels[w % channels.len()].clone());
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
    let rss_open = ServerUsage::read(args.server_pid);
    let sent = Instant::now();
    let _ = go_tx.send(sent);
    client
        .end_call(with_agent(EndCallRequest {
            interaction_id: id.clone(),
        }))
        .await
        .map_err(|s| format!("EndCall: {s}"))?;
    let mut latencies = Vec::new();
    for task in tasks {
        if let Ok(Some(l)) = task.await {
            latencies.push(l);
        }
    }
    latencies.sort_unstable();
    let stats = RunStats {
        elapsed: latencies.last().copied().unwrap_or_default(),
        latencies,
        errors: BTreeMap::new(),
    };
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "watch: {} watchers ready of {}, {} notified; EndCall → WRAP_UP at every watcher: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        ready,
        args.watchers,
        stats.latencies.len(),
        ms(stats.percentile(0.5)),
        ms(stats.percentile(0.99)),
        ms(stats.elapsed),
    );
    if let (Some(before), Some(open)) = (rss_before, rss_open) {
        let growth = open.rss_kib.saturating_sub(before.rss_kib);
        println!(
            "server RSS: {:.1} MiB before, {:.1} MiB with {} streams open: {:.2} KiB per stream",
            before.rss_kib as f64 / 1024.0,
            open.rss_kib as f64 / 1024.0,
            ready,
            growth as f64 / ready.max(1) as f64
        );
    }
    Ok(())
}

/// The request, as the watch benchmark's agent.
fn with_agent<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("x-agent-id", MetadataValue::from_static("bench-watch"));
    request
}

/// A server process's resident memory and CPU time, from /proc.
#[derive(Debug, Clone, Copy)]
struct ServerUsage {
    rss_kib: u64,
    cpu_seconds: f64,
}

impl ServerUsage {
    fn read(pid: Option<u32>) -> Option<Self> {
        let pid = pid?;
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
