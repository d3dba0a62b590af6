//! `calldesk bench sip` and `sip-hold`: whole calls through the SIP switch.

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

use super::{usage::ServerUsage, BenchArgs};
use crate::proto::{
    interaction_service_client::InteractionServiceClient, CallProgress, EndCallRequest, EndReason,
    InteractionEvent, InteractionState, StartCallRequest, WatchInteractionsRequest,
};

/// Complete calls run before the idle RSS of `sip-hold` is read, so that one-time
/// allocations (the store's page cache, the SIP stack's first dialogs) are not counted
/// as per-call memory.
pub(super) const HOLD_WARM_UP: usize = 200;

/// What one agent's WatchInteractions stream has said about each call, until the call is
/// forgotten.
#[derive(Default)]
pub(super) struct Slot {
    /// When the client read the event with progress CONNECTED.
    connected: Option<Instant>,
    /// The end reason of the WRAP_UP event.
    ended: Option<i32>,
    waiter: Option<oneshot::Sender<()>>,
}

#[derive(Default)]
pub(super) struct FeedState {
    slots: HashMap<String, Slot>,
    /// Why the stream ended; every wait fails from then on.
    closed: Option<String>,
}

/// One agent: its id and the calls its stream reports.
pub(super) struct Agent {
    id: MetadataValue<tonic::metadata::Ascii>,
    feed: Mutex<FeedState>,
}

#[derive(Debug)]
pub(super) enum WaitError {
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
pub(super) async fn open_agents(
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
                    Err(status) => break format!("the watch stream failed: {:?}", status.code()),
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
pub(super) struct Outcome {
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
pub(super) async fn one_call(
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
pub(super) async fn end_call(
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
pub(super) struct Tally {
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

pub(super) fn usage_line(
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
pub(super) async fn calls(args: &BenchArgs, channels: &[Channel]) -> Result<(), String> {
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
        let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate.min(1e6)));
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
            let mut client = InteractionServiceClient::new(channels[n % channels.len()].clone());
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
pub(super) async fn run_calls(
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
        let mut client = InteractionServiceClient::new(channels[worker % channels.len()].clone());
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
pub(super) async fn hold(args: &BenchArgs, channels: &[Channel]) -> Result<(), String> {
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
        let mut client = InteractionServiceClient::new(channels[worker % channels.len()].clone());
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
pub(super) fn failed(failures: usize) -> Result<(), String> {
    match failures {
        0 => Ok(()),
        n => Err(format!("{n} calls failed")),
    }
}
