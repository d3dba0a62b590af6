//! `calldesk bench webhooks`: the server's status callbacks (`--webhooks`) to a receiver in
//! this process, an HTTP/1.1 server on `--receiver` that verifies each request's signature and
//! answers 204 (503 during an outage). The server's webhooks file must point at it with
//! `--webhook-secret`'s secret; the calls dial the busy number, so that each makes three events
//! (DIALING, WRAP_UP, COMPLETED with a short `--wrap-up-timeout`).
//!
//! - `throughput`: StartCalls back to back (`--concurrency` in flight) for `--duration`; then
//!   the events delivered per second, from the first StartCall until the receiver has every
//!   call's COMPLETED event.
//! - `latency`: StartCalls at `--rate` events per second (open loop) for `--duration`; the
//!   time from each event (its `time`, set when calldesk made it) to its arrival here.
//! - `outage`: the receiver answers 503 for `--outage` while calls go on at `--rate`; then how
//!   long the backlog takes to drain once it answers again.
//!
//! Exits non-zero if a StartCall fails, a signature does not verify, or an interaction's
//! events arrive out of order.

use std::{
    collections::{HashMap, HashSet},
    convert::Infallible,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant, SystemTime},
};

use base64::{engine::general_purpose::STANDARD, Engine};
use bytes::Bytes;
use hmac::{Hmac, KeyInit, Mac};
use http_body_util::{BodyExt, Full};
use sha2::Sha256;
use tokio::{net::TcpListener, task::JoinSet};
use tonic::{metadata::MetadataValue, transport::Channel, Request};

use super::{percentile, usage::ServerUsage, BenchArgs};
use crate::proto::{
    interaction_service_client::InteractionServiceClient, InteractionEvent, InteractionState,
    StartCallRequest,
};

/// The busy number: DIALING, then WRAP_UP after `--sim-ring`, COMPLETED after
/// `--wrap-up-timeout`.
const BUSY: &str = "+12025550101";
/// Events one busy call makes.
const EVENTS_PER_CALL: u64 = 3;
/// How long the receiver may take to get every call's COMPLETED event after the load ends.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(600);
/// How often `drain` looks (the drain times it measures are this precise).
const DRAIN_CHECK: Duration = Duration::from_millis(20);

/// What the receiver saw.
#[derive(Default)]
struct Seen {
    /// Events received and answered 204.
    delivered: u64,
    /// Requests answered 503 (the outage).
    refused: u64,
    /// Event → arrival, of the events delivered while `measuring`, with their sequence.
    latencies: Vec<(u64, Duration)>,
    /// Per interaction, the highest sequence delivered.
    highest: HashMap<String, u64>,
    /// Interactions whose COMPLETED event was delivered.
    completed: HashSet<String>,
    /// Problems: a bad signature, an event out of order.
    problems: Vec<String>,
}

struct Receiver {
    key: Vec<u8>,
    seen: Mutex<Seen>,
    /// Answer 503 while set.
    down: AtomicBool,
    /// Record latencies while set.
    measuring: AtomicBool,
}

/// Runs the phases and prints their figures.
pub async fn webhooks(args: &BenchArgs, channels: &[Channel]) -> Result<(), String> {
    let Some(addr) = args.receiver else {
        return Err("webhooks: give --receiver ADDR (the address the webhooks file names)".into());
    };
    let key = STANDARD
        .decode(
            args.webhook_secret
                .trim()
                .strip_prefix("whsec_")
                .ok_or("--webhook-secret: expected whsec_ and base64")?,
        )
        .map_err(|e| format!("--webhook-secret: {e}"))?;
    let receiver = Arc::new(Receiver {
        key,
        seen: Mutex::new(Seen::default()),
        down: AtomicBool::new(false),
        measuring: AtomicBool::new(false),
    });
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("--receiver {addr}: {e}"))?;
    let serving = tokio::spawn(serve(listener, receiver.clone()));
    let rate = if args.rate > 0.0 { args.rate } else { 1000.0 };
    println!(
        "## webhooks ({} cores; the server, this receiver and the load share them)",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    // Throughput: as fast as StartCall goes.
    let usage = ServerUsage::read(&args.server_pid);
    let started = Instant::now();
    let ids = load(args, channels, None, args.duration).await?;
    let produced = started.elapsed();
    drain(&receiver, &ids).await?;
    let all = started.elapsed();
    let events = ids.len() as u64 * EVENTS_PER_CALL;
    println!(
        "throughput: {} calls, {events} events made in {:.1} s ({:.0} events/s); all delivered \
         after {:.1} s: {:.0} events/s delivered",
        ids.len(),
        produced.as_secs_f64(),
        events as f64 / produced.as_secs_f64(),
        all.as_secs_f64(),
        events as f64 / all.as_secs_f64()
    );
    if let (Some(before), Some(after)) = (usage, ServerUsage::read(&args.server_pid)) {
        println!(
            "  server CPU {:.0}% of a core, RSS {} MiB",
            100.0 * (after.cpu_seconds - before.cpu_seconds) / all.as_secs_f64(),
            after.rss_kib / 1024
        );
    }

    // Latency at a fixed rate.
    receiver.measuring.store(true, Ordering::SeqCst);
    let ids = load(args, channels, Some(rate), args.duration).await?;
    drain(&receiver, &ids).await?;
    receiver.measuring.store(false, Ordering::SeqCst);
    let measured = std::mem::take(
        &mut receiver
            .seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .latencies,
    );
    let sorted = |sequence: Option<u64>| {
        let mut latencies: Vec<Duration> = measured
            .iter()
            .filter(|(s, _)| sequence.is_none_or(|want| *s == want))
            .map(|(_, l)| *l)
            .collect();
        latencies.sort_unstable();
        latencies
    };
    let latencies = sorted(None);
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "latency at {rate:.0} events/s: {} events, event → delivery p50 {:.1} ms, p99 {:.1} ms, \
         max {:.1} ms",
        latencies.len(),
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.99)),
        ms(latencies.last().copied().unwrap_or_default()),
    );
    // An interaction's first event waits for nothing; each later one for the cursor move of
    // the one before it.
    let by_sequence: Vec<String> = (1..=EVENTS_PER_CALL)
        .map(|n| {
            let l = sorted(Some(n));
            format!(
                "{n}: p50 {:.1} p99 {:.1}",
                ms(percentile(&l, 0.5)),
                ms(percentile(&l, 0.99))
            )
        })
        .collect();
    println!("  by sequence (ms): {}", by_sequence.join(", "));

    // An outage, then the drain.
    if !args.outage.is_zero() {
        receiver.down.store(true, Ordering::SeqCst);
        let refused_before = receiver
            .seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .refused;
        let ids = load(args, channels, Some(rate), args.outage).await?;
        let refused = receiver
            .seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .refused
            - refused_before;
        let rss_down = ServerUsage::read(&args.server_pid).map_or(0, |u| u.rss_kib / 1024);
        receiver.down.store(false, Ordering::SeqCst);
        let back = Instant::now();
        drain(&receiver, &ids).await?;
        let drained = back.elapsed();
        let rss_drained = ServerUsage::read(&args.server_pid).map_or(0, |u| u.rss_kib / 1024);
        let backlog = ids.len() as u64 * EVENTS_PER_CALL;
        println!(
            "outage of {:?} at {rate:.0} events/s: {backlog} events held back ({refused} \
             attempts refused with 503); drained {:.1} s after the receiver came back \
             ({:.0} events/s); server RSS {rss_down} MiB at the outage's end, {rss_drained} \
             MiB drained",
            args.outage,
            drained.as_secs_f64(),
            backlog as f64 / drained.as_secs_f64()
        );
    }
    serving.abort();
    let problems = std::mem::take(
        &mut receiver
            .seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .problems,
    );
    if !problems.is_empty() {
        return Err(format!(
            "the receiver found {} problems, e.g. {}",
            problems.len(),
            problems[0]
        ));
    }
    Ok(())
}

/// StartCalls of the busy number for `duration`: at `rate` events per second (open loop, at
/// most `--concurrency` in flight), or back to back. The interactions made.
async fn load(
    args: &BenchArgs,
    channels: &[Channel],
    rate: Option<f64>,
    duration: Duration,
) -> Result<Vec<String>, String> {
    let ids = Arc::new(Mutex::new(Vec::new()));
    let failed = Arc::new(Mutex::new(None::<String>));
    let permits = Arc::new(tokio::sync::Semaphore::new(args.concurrency.max(1)));
    let mut calls = JoinSet::new();
    let start = Instant::now();
    let mut n: u64 = 0;
    while start.elapsed() < duration {
        if let Some(rate) = rate {
            let due = start + Duration::from_secs_f64(n as f64 * EVENTS_PER_CALL as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
            if start.elapsed() >= duration {
                break;
            }
        }
        let permit = permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| e.to_string())?;
        let mut client =
            InteractionServiceClient::new(channels[n as usize % channels.len()].clone());
        let agent = format!("bench-webhooks-{}", n as usize % args.agents.max(1));
        let (ids, failed) = (ids.clone(), failed.clone());
        calls.spawn(async move {
            let mut request = Request::new(StartCallRequest {
                phone_number: BUSY.into(),
                ..Default::default()
            });
            if let Ok(agent) = MetadataValue::try_from(agent.as_str()) {
                request.metadata_mut().insert("x-agent-id", agent);
            }
            match client.start_call(request).await {
                Ok(response) => {
                    let id = response
                        .into_inner()
                        .interaction
                        .map(|i| i.id)
                        .unwrap_or_default();
                    ids.lock().unwrap_or_else(|e| e.into_inner()).push(id);
                }
                Err(status) => {
                    failed
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get_or_insert(format!("StartCall failed: {status}"));
                }
            }
            drop(permit);
        });
        n += 1;
        while calls.try_join_next().is_some() {}
    }
    while calls.join_next().await.is_some() {}
    if let Some(failure) = failed.lock().unwrap_or_else(|e| e.into_inner()).take() {
        return Err(failure);
    }
    let ids = std::mem::take(&mut *ids.lock().unwrap_or_else(|e| e.into_inner()));
    Ok(ids)
}

/// Waits until every interaction's COMPLETED event was delivered. Looks at most every
/// [`DRAIN_CHECK`], at the interactions still missing only: a look holds the receiver's lock,
/// and looking at all of a 10-minute outage's 200,000 interactions at every arrival made this
/// loop, not the server, the drain's bottleneck (and the receiver's requests wait for it).
async fn drain(receiver: &Receiver, ids: &[String]) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
    let mut missing: Vec<&String> = ids.iter().collect();
    loop {
        {
            let seen = receiver.seen.lock().unwrap_or_else(|e| e.into_inner());
            missing.retain(|id| !seen.completed.contains(*id));
        }
        if missing.is_empty() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "{} interactions' COMPLETED events not delivered within {DRAIN_TIMEOUT:?}",
                missing.len()
            ));
        }
        tokio::time::sleep(DRAIN_CHECK).await;
    }
}

async fn serve(listener: TcpListener, receiver: Arc<Receiver>) {
    let mut connections = JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let _ = stream.set_nodelay(true);
        let receiver = receiver.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let receiver = receiver.clone();
                async move { Ok::<_, Infallible>(receive(&receiver, request).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
        while connections.try_join_next().is_some() {}
    }
}

async fn receive(
    receiver: &Receiver,
    request: http::Request<hyper::body::Incoming>,
) -> http::Response<Full<Bytes>> {
    let answer = |status: u16| {
        let mut response = http::Response::new(Full::new(Bytes::new()));
        *response.status_mut() = http::StatusCode::from_u16(status).unwrap_or_default();
        response
    };
    if receiver.down.load(Ordering::SeqCst) {
        receiver
            .seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .refused += 1;
        return answer(503);
    }
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let (id, timestamp, signature) = (
        header("webhook-id"),
        header("webhook-timestamp"),
        header("webhook-signature"),
    );
    let Ok(body) = request.into_body().collect().await.map(|b| b.to_bytes()) else {
        return answer(400);
    };
    let arrived = SystemTime::now();
    let mut problem = None;
    match <Hmac<Sha256> as KeyInit>::new_from_slice(&receiver.key) {
        Ok(mut mac) => {
            mac.update(format!("{id}.{timestamp}.").as_bytes());
            mac.update(&body);
            if signature != format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes())) {
                problem = Some(format!("{id}: the signature does not verify"));
            }
        }
        Err(e) => problem = Some(e.to_string()),
    }
    let event: InteractionEvent = match serde_json::from_slice(&body) {
        Ok(event) => event,
        Err(e) => {
            let mut seen = receiver.seen.lock().unwrap_or_else(|e| e.into_inner());
            seen.problems
                .push(format!("{id}: not an InteractionEvent: {e}"));
            return answer(400);
        }
    };
    let made = event.time.as_ref().map(|t| {
        SystemTime::UNIX_EPOCH + Duration::new(t.seconds.max(0) as u64, t.nanos.max(0) as u32)
    });
    {
        let mut seen = receiver.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.problems.extend(problem);
        let highest = seen
            .highest
            .entry(event.interaction_id.clone())
            .or_default();
        if event.sequence > *highest + 1 {
            let previous = *highest;
            seen.problems
                .push(format!("{id}: arrived after sequence {previous}"));
        } else {
            *highest = (*highest).max(event.sequence);
        }
        seen.delivered += 1;
        if receiver.measuring.load(Ordering::SeqCst) {
            if let Some(latency) = made.and_then(|t| arrived.duration_since(t).ok()) {
                seen.latencies.push((event.sequence, latency));
            }
        }
        if event.state == InteractionState::Completed as i32 {
            seen.completed.insert(event.interaction_id);
        }
    }
    answer(204)
}

/// The address `--receiver` names.
pub fn parse_receiver(text: &str) -> Result<SocketAddr, String> {
    text.parse()
        .map_err(|e| format!("{text:?}: {e} (expected 127.0.0.1:PORT)"))
}
