//! `unary` and `start-calls`: StartCall beside Health/Check, and counted StartCalls.

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use tokio::sync::Mutex;
use tonic::{metadata::MetadataValue, transport::Channel, Request};
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

use crate::proto::{
    interaction_service_client::InteractionServiceClient, EndCallRequest, StartCallRequest,
};

use super::{
    numbers, percentile,
    usage::{ServerUsage, Usage},
    BenchArgs, Numbers,
};

/// One run's outcome.
pub(super) struct RunStats {
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
pub(super) enum Rpc {
    HealthCheck,
    StartCall(Numbers),
}

/// The busy number of the simulated switch (docs/api.md §8.1): its calls end by themselves.
pub(super) const BUSY_NUMBER: &str = "+12025550101";

/// Where StartCall's numbers come from during one bench process.
pub(super) struct Dialing {
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

pub(super) async fn unary(args: &BenchArgs, channels: &[Channel]) -> Result<(), String> {
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
pub(super) struct RoundFigures {
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
pub(super) struct CpuPerRequest {
    server: Option<f64>,
    store: Option<f64>,
}

/// The workloads asked for, each once, in the order given.
pub(super) fn workloads(args: &BenchArgs) -> Vec<Numbers> {
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
pub(super) async fn start_calls(args: &BenchArgs, channels: &[Channel]) -> Result<(), String> {
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
pub(super) async fn end_calls(
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
pub(super) fn print_run(
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
pub(super) async fn load(
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
    // Keys of one run never collide with another's on the same server.
    let started_at_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let request_ids = args.request_ids;
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
                            request_id: if request_ids {
                                format!("bench-{}-{n}", started_at_ms)
                            } else {
                                String::new()
                            },
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
