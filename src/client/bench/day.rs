//! `day`: a contact center's day on one box. `--agents` agents each hold a console-like
//! WatchInteractions stream; calls are started across them at `--rate` calls/s for
//! `--duration`, each living its whole life on the simulated switch (the server's `--sim-ring`
//! and `--sim-answer`), with a WatchInteraction on it from StartCall to COMPLETED: CONNECTED,
//! `--talk-for`, EndCall, WRAP_UP, `--wrap-up-for`, CompleteInteraction, COMPLETED.
//!
//! The same run works over SIP (`scripts/bench day-sip`: the server's `--telephony sip`, phones
//! that answer): the set-up is then StartCall → CONNECTED, which this also prints.
//!
//! Prints the event → the owning agent's console latency (from the event's `time`, which the
//! server sets when it applies the change, before the write's commit: so the figure holds the
//! commit's wait and fsync too; both clocks are this machine's), StartCall's latency, the
//! server's CPU per call and RSS, and whether every event reached both its watchers exactly
//! once, in order. Fails if one did not, or if a call failed.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use tokio::task::JoinSet;
use tonic::{
    metadata::{Ascii, MetadataValue},
    transport::Channel,
    Request,
};

use super::{numbers, percentile, usage::ServerUsage, BenchArgs};
use crate::proto::{
    interaction_service_client::InteractionServiceClient, CallProgress, CompleteInteractionRequest,
    EndCallRequest, InteractionEvent, InteractionState, StartCallRequest, WatchInteractionRequest,
    WatchInteractionsRequest,
};

/// What the two watchers of one interaction have read of it.
#[derive(Default)]
struct Seen {
    /// The agent whose console read its first event.
    agent: Option<usize>,
    /// The last sequence the owning agent's console read (0: none).
    console: u64,
    /// The last sequence the call's own WatchInteraction read.
    call: u64,
    console_completed: bool,
    call_completed: bool,
}

/// Everything the run's watchers have read, checked as it arrives.
#[derive(Default)]
struct Ledger {
    seen: HashMap<String, Seen>,
    /// Event `time` → read by the owning agent's console.
    console_latencies: Vec<Duration>,
    /// Events not read exactly once in order, by kind (the first few described).
    violations: BTreeMap<&'static str, usize>,
    examples: Vec<String>,
}

impl Ledger {
    fn violation(&mut self, kind: &'static str, detail: String) {
        *self.violations.entry(kind).or_default() += 1;
        if self.examples.len() < 5 {
            self.examples.push(format!("{kind}: {detail}"));
        }
    }

    /// One event read by agent `agent`'s console (`None`: by the call's own watch).
    fn read(&mut self, event: &InteractionEvent, console: Option<usize>) {
        let now = SystemTime::now();
        let seen = self.seen.entry(event.interaction_id.clone()).or_default();
        let completed = event.state == InteractionState::Completed as i32;
        let (last, done) = match console {
            Some(agent) => {
                if *seen.agent.get_or_insert(agent) != agent {
                    let id = event.interaction_id.clone();
                    self.violation("read by another agent's console", id);
                    return;
                }
                (&mut seen.console, &mut seen.console_completed)
            }
            None => (&mut seen.call, &mut seen.call_completed),
        };
        let expected = *last + 1;
        if event.sequence != expected || *done {
            let detail = format!(
                "{} sequence {} where {expected} was due",
                event.interaction_id, event.sequence
            );
            let kind = match (*done, event.sequence < expected) {
                (true, _) => "event after COMPLETED",
                (false, true) => "duplicate or out of order",
                (false, false) => "gap",
            };
            *last = (*last).max(event.sequence);
            self.violation(kind, detail);
            return;
        }
        *last = event.sequence;
        *done = completed;
        if console.is_some() {
            if let Some(time) = &event.time {
                let at = SystemTime::UNIX_EPOCH
                    + Duration::new(time.seconds.max(0) as u64, time.nanos.max(0) as u32);
                self.console_latencies
                    .push(now.duration_since(at).unwrap_or_default());
            }
        }
    }
}

/// One agent: its id and the connection its console and calls use.
struct Agent {
    id: MetadataValue<Ascii>,
    channel: Channel,
}

impl Agent {
    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request.metadata_mut().insert("x-agent-id", self.id.clone());
        request
    }
}

/// How the calls went.
#[derive(Default)]
struct Calls {
    started: usize,
    completed: usize,
    start_call: Vec<Duration>,
    /// StartCall sent → CONNECTED read on the call's own watch, by interaction: the set-up
    /// (over SIP, with the phones' own time in it; `--latency-file` writes it out).
    connected: Vec<(String, Duration)>,
    failures: BTreeMap<String, usize>,
}

pub(super) async fn day(args: &BenchArgs, channels: &[Channel]) -> Result<(), String> {
    if args.rate <= 0.0 {
        return Err("day: give --rate (calls per second)".into());
    }
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let opened = Instant::now();
    let rss_empty = ServerUsage::read(&args.server_pid);
    let mut agents = Vec::new();
    let mut consoles = JoinSet::new();
    let console_failures = Arc::new(Mutex::new(BTreeMap::<String, usize>::new()));
    for a in 0..args.agents.max(1) {
        let name = format!("day-{a}");
        let agent = Arc::new(Agent {
            id: MetadataValue::try_from(name.as_str()).map_err(|e| e.to_string())?,
            channel: channels[a % channels.len()].clone(),
        });
        let mut client = InteractionServiceClient::new(agent.channel.clone());
        // Subscribed once the response headers are back: no later call's event is missed.
        let mut stream = client
            .watch_interactions(agent.request(WatchInteractionsRequest {}))
            .await
            .map_err(|s| format!("WatchInteractions as {name}: {s}"))?
            .into_inner();
        let (ledger, failures) = (ledger.clone(), console_failures.clone());
        consoles.spawn(async move {
            let why = loop {
                match stream.message().await {
                    Ok(Some(event)) => ledger.lock().unwrap().read(&event, Some(a)),
                    Ok(None) => break "a console's stream ended".to_owned(),
                    Err(status) => break format!("a console's stream failed: {:?}", status.code()),
                }
            };
            *failures.lock().unwrap().entry(why).or_default() += 1;
        });
        agents.push(agent);
    }
    let rss_consoles = ServerUsage::read(&args.server_pid);
    println!(
        "day: {} agents' consoles open over {} connections in {:.1} s; calls at {} calls/s for {:?}, each: StartCall, its WatchInteraction, CONNECTED, {:?} talk, EndCall, WRAP_UP, {:?} wrap-up, CompleteInteraction",
        agents.len(),
        channels.len(),
        opened.elapsed().as_secs_f64(),
        args.rate,
        args.duration,
        args.talk_for,
        args.wrap_up_for,
    );

    // RSS sampled every 100 ms for the peak.
    let peak = Arc::new(Mutex::new(0u64));
    let sampler = {
        let (pids, peak) = (args.server_pid.clone(), peak.clone());
        tokio::spawn(async move {
            loop {
                if let Some(u) = ServerUsage::read(&pids) {
                    let mut p = peak.lock().unwrap();
                    *p = (*p).max(u.rss_kib);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    let calls = Arc::new(Mutex::new(Calls::default()));
    let before = ServerUsage::read(&args.server_pid);
    let start = tokio::time::Instant::now();
    let total = (args.rate * args.duration.as_secs_f64()).round() as usize;
    let mut tasks = JoinSet::new();
    for k in 0..total {
        tokio::time::sleep_until(start + Duration::from_secs_f64(k as f64 / args.rate)).await;
        let agent = agents[k % agents.len()].clone();
        let number = numbers::pool_number(args.pool_start + k);
        let (args, calls, ledger) = (args.clone(), calls.clone(), ledger.clone());
        tasks.spawn(async move {
            let outcome = one_call(&agent, number, &args, &calls, &ledger).await;
            let mut calls = calls.lock().unwrap();
            calls.started += 1;
            match outcome {
                Ok(()) => calls.completed += 1,
                Err(why) => *calls.failures.entry(why).or_default() += 1,
            }
        });
    }
    let started_for = start.elapsed();
    while tasks.join_next().await.is_some() {}
    let lived = start.elapsed();
    let after = ServerUsage::read(&args.server_pid);
    // The consoles' last events (COMPLETED) may trail the calls' own watches by a little.
    let settle = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokio::time::Instant::now() < settle {
        let pending = {
            let ledger = ledger.lock().unwrap();
            ledger
                .seen
                .values()
                .filter(|s| s.call_completed && !s.console_completed)
                .count()
        };
        if pending == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sampler.abort();
    consoles.abort_all();

    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let mut calls = calls.lock().unwrap();
    let mut ledger = ledger.lock().unwrap();
    let mut incomplete = 0;
    let mut events = 0;
    for seen in ledger.seen.values() {
        events += seen.console;
        if !(seen.console_completed && seen.call_completed && seen.console == seen.call) {
            incomplete += 1;
        }
    }
    if incomplete > 0 {
        ledger.violation(
            "an interaction whose watchers did not both read it to COMPLETED",
            format!("{incomplete} interactions"),
        );
    }
    calls.start_call.sort_unstable();
    let mut connected: Vec<Duration> = calls.connected.iter().map(|(_, d)| *d).collect();
    connected.sort_unstable();
    if let Some(path) = &args.latency_file {
        let lines: String = calls
            .connected
            .iter()
            .map(|(id, d)| format!("{id} {}\n", d.as_micros()))
            .collect();
        std::fs::write(path, lines).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    ledger.console_latencies.sort_unstable();
    let l = &ledger.console_latencies;
    println!(
        "day at {} calls/s: {} calls started in {:.2} s, {} completed, all lived in {:.2} s; failures: {}",
        args.rate,
        calls.started,
        started_for.as_secs_f64(),
        calls.completed,
        lived.as_secs_f64(),
        if calls.failures.is_empty() {
            "0".to_owned()
        } else {
            format!("{:?}", calls.failures)
        },
    );
    println!(
        "  event → the owning agent's console ({} events): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        l.len(),
        ms(percentile(l, 0.5)),
        ms(percentile(l, 0.99)),
        ms(l.last().copied().unwrap_or_default()),
    );
    let s = &calls.start_call;
    println!(
        "  StartCall ({}): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        s.len(),
        ms(percentile(s, 0.5)),
        ms(percentile(s, 0.99)),
        ms(s.last().copied().unwrap_or_default()),
    );
    let c = &connected;
    println!(
        "  StartCall → CONNECTED ({}): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        c.len(),
        ms(percentile(c, 0.5)),
        ms(percentile(c, 0.99)),
        ms(c.last().copied().unwrap_or_default()),
    );
    if let (Some(b), Some(a)) = (before, after) {
        let cpu = a.cpu_seconds - b.cpu_seconds;
        println!(
            "  server CPU {:.2} s over the calls' {:.1} s ({:.0}% of one core): {:.0} µs per call; RSS {:.1} MiB empty, {:.1} MiB with the consoles, peak {:.1} MiB, {:.1} MiB after",
            cpu,
            lived.as_secs_f64(),
            cpu / lived.as_secs_f64() * 100.0,
            cpu * 1e6 / calls.started.max(1) as f64,
            rss_empty.map_or(0.0, |u| u.rss_kib as f64 / 1024.0),
            rss_consoles.map_or(0.0, |u| u.rss_kib as f64 / 1024.0),
            *peak.lock().unwrap() as f64 / 1024.0,
            a.rss_kib as f64 / 1024.0,
        );
    }
    let console_failures = console_failures.lock().unwrap();
    let violations: usize = ledger.violations.values().sum();
    println!(
        "  exactly once, in order: {} interactions, {events} events on the consoles and as many on the calls' watches; {}",
        ledger.seen.len(),
        if violations == 0 {
            "no violation".to_owned()
        } else {
            format!("VIOLATIONS {:?}, e.g. {:?}", ledger.violations, ledger.examples)
        }
    );
    if !console_failures.is_empty() {
        println!("  consoles lost: {:?}", *console_failures);
    }
    let failed: usize = calls.failures.values().sum();
    let lost: usize = console_failures.values().sum();
    match (failed, violations, lost) {
        (0, 0, 0) => Ok(()),
        _ => Err(format!(
            "day: {failed} calls failed, {violations} events not read exactly once in order, {lost} consoles lost"
        )),
    }
}

/// One call's whole life, watched by its own WatchInteraction from StartCall to COMPLETED.
async fn one_call(
    agent: &Agent,
    phone_number: String,
    args: &BenchArgs,
    calls: &Mutex<Calls>,
    ledger: &Mutex<Ledger>,
) -> Result<(), String> {
    let mut client = InteractionServiceClient::new(agent.channel.clone());
    let sent = Instant::now();
    let response = client
        .start_call(agent.request(StartCallRequest {
            phone_number,
            ..Default::default()
        }))
        .await
        .map_err(|s| format!("StartCall: {:?}", s.code()))?;
    calls.lock().unwrap().start_call.push(sent.elapsed());
    let id = response
        .into_inner()
        .interaction_id
        .ok_or("StartCall: no interaction")?;
    let mut stream = client
        .watch_interaction(agent.request(WatchInteractionRequest {
            interaction_id: id.clone(),
            after_sequence: 0,
        }))
        .await
        .map_err(|s| format!("WatchInteraction: {:?}", s.code()))?
        .into_inner();
    let (mut ended, mut wrapped) = (false, false);
    loop {
        let event = match tokio::time::timeout(args.call_timeout, stream.message()).await {
            Err(_) => return Err("no event in --call-timeout".into()),
            Ok(Err(status)) => return Err(format!("WatchInteraction: {:?}", status.code())),
            Ok(Ok(None)) => return Err("the call's watch ended before COMPLETED".into()),
            Ok(Ok(Some(event))) => event,
        };
        ledger.lock().unwrap().read(&event, None);
        let state = InteractionState::try_from(event.state).ok();
        if event.progress == CallProgress::Connected as i32 && !ended {
            ended = true;
            calls
                .lock()
                .unwrap()
                .connected
                .push((id.clone(), sent.elapsed()));
            tokio::time::sleep(args.talk_for).await;
            client
                .end_call(agent.request(EndCallRequest {
                    interaction_id: id.clone(),
                }))
                .await
                .map_err(|s| format!("EndCall: {:?}", s.code()))?;
        } else if state == Some(InteractionState::WrapUp) && !wrapped {
            if !ended {
                return Err("ended before CONNECTED".into());
            }
            wrapped = true;
            tokio::time::sleep(args.wrap_up_for).await;
            client
                .complete_interaction(agent.request(CompleteInteractionRequest {
                    interaction_id: id.clone(),
                    ..Default::default()
                }))
                .await
                .map_err(|s| format!("CompleteInteraction: {:?}", s.code()))?;
        } else if state == Some(InteractionState::Completed) {
            // The contract: the stream ends right after COMPLETED.
            return match tokio::time::timeout(args.call_timeout, stream.message()).await {
                Ok(Ok(None)) => Ok(()),
                Ok(Ok(Some(_))) => Err("an event after COMPLETED".into()),
                Ok(Err(status)) => Err(format!("WatchInteraction: {:?}", status.code())),
                Err(_) => Err("the watch did not end after COMPLETED".into()),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(sequence: u64, state: InteractionState) -> InteractionEvent {
        InteractionEvent {
            interaction_id: "i".into(),
            sequence,
            state: state as i32,
            time: Some(crate::domain::timestamp(SystemTime::now())),
            ..Default::default()
        }
    }

    #[test]
    fn the_ledger_names_duplicates_gaps_late_events_and_the_wrong_console() {
        use InteractionState::*;
        let mut ledger = Ledger::default();
        // The call's own watch, in order: nothing to say.
        for (sequence, state) in [(1, DeliveryPending), (2, Delivered), (3, Completed)] {
            ledger.read(&event(sequence, state), None);
        }
        assert!(ledger.violations.is_empty());
        ledger.read(&event(1, DeliveryPending), Some(7));
        ledger.read(&event(1, DeliveryPending), Some(7));
        ledger.read(&event(3, WrapUp), Some(7));
        ledger.read(&event(4, Completed), Some(7));
        ledger.read(&event(5, Completed), Some(7));
        ledger.read(&event(6, Completed), Some(8));
        let count = |kind| ledger.violations.get(kind).copied().unwrap_or(0);
        assert_eq!(count("duplicate or out of order"), 1);
        assert_eq!(count("gap"), 1);
        assert_eq!(count("event after COMPLETED"), 1);
        assert_eq!(count("read by another agent's console"), 1);
        // Only the console's events read in order are timed: sequences 1 and 4.
        assert_eq!(ledger.console_latencies.len(), 2);
    }
}
