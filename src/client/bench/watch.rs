//! `watch`: one call watched by many streams; the time from EndCall to every watcher's WRAP_UP.

use std::time::{Duration, Instant};

use tonic::transport::Channel;

use crate::proto::{
    interaction_service_client::InteractionServiceClient, EndCallRequest, InteractionState,
    StartCallRequest, WatchInteractionRequest,
};

use super::{
    peek, percentile,
    usage::{cpu_time, ServerUsage},
    watch_channels, with_agent, BenchArgs,
};

/// A watcher's stream: decoded events, or only their state peeked at (`--no-decode`).
enum Events {
    Decoded(tonic::Streaming<crate::proto::InteractionEvent>),
    Peeked(tonic::Streaming<peek::Peeked>),
}

impl Events {
    /// The next event's state; None when the stream ends or fails.
    async fn next_state(&mut self) -> Option<InteractionState> {
        let state = match self {
            Events::Decoded(s) => s.message().await.ok()??.state,
            Events::Peeked(s) => s.message().await.ok()??.state,
        };
        InteractionState::try_from(state).ok()
    }
}

/// How long this client takes to decode the call's last event `n` times: the decoding a
/// decoding watcher adds, measured apart from the fan-out (`--no-decode` leaves it out).
async fn decoding_cost(channels: &[Channel], id: &str, n: usize) -> Option<(Duration, usize)> {
    use prost::Message;
    let mut client = InteractionServiceClient::new(channels[0].clone());
    let mut stream = client
        .watch_interaction(with_agent(WatchInteractionRequest {
            interaction_id: id.to_owned(),
            after_sequence: 0,
        }))
        .await
        .ok()?
        .into_inner();
    let mut last = None;
    while let Ok(Ok(Some(event))) =
        tokio::time::timeout(Duration::from_millis(200), stream.message()).await
    {
        last = Some(event);
    }
    let bytes = last?.encode_to_vec();
    let started = Instant::now();
    for _ in 0..n {
        let event = crate::proto::InteractionEvent::decode(bytes.as_slice()).ok()?;
        std::hint::black_box(event);
    }
    Some((started.elapsed(), bytes.len()))
}

pub(super) async fn watch(args: &BenchArgs, channels: &[Channel]) -> Result<(), String> {
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
            if let (Some(server), Some(client)) = (outcome.server_cpu, outcome.client_cpu) {
                println!(
                    "CPU from EndCall to the last watcher notified: server {:.2} ms ({:.2} µs a watcher), this client {:.2} ms ({:.2} µs a watcher)",
                    ms(server),
                    server.as_secs_f64() * 1e6 / notified.max(1) as f64,
                    ms(client),
                    client.as_secs_f64() * 1e6 / notified.max(1) as f64,
                );
            }
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
        if round == 1 {
            if let Some((took, size)) =
                decoding_cost(channels, &outcome.id, args.watchers.max(1)).await
            {
                println!(
                    "client decoding, measured apart: {} events of {size} bytes in {:.2} ms on one core ({:.2} µs each){}",
                    args.watchers,
                    ms(took),
                    took.as_secs_f64() * 1e6 / args.watchers.max(1) as f64,
                    if args.no_decode { "; the watchers above did not decode (--no-decode)" } else { "; included in the figures above" },
                );
            }
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
pub(super) struct WatchRound {
    /// Watchers that read the call up to DELIVERED.
    ready: usize,
    /// EndCall sent → the WRAP_UP event read, one per notified watcher, sorted.
    latencies: Vec<Duration>,
    /// EndCall sent → its response.
    end_call: Duration,
    /// The servers' usage once every watcher was ready.
    rss_open: Option<ServerUsage>,
    /// The watched interaction.
    id: String,
    /// The servers' CPU time from EndCall to the last watcher notified: the fan-out's cost,
    /// apart from this client's.
    server_cpu: Option<Duration>,
    /// This process's CPU time over the same span: the watchers' reading.
    client_cpu: Option<Duration>,
}

/// One call started (and ended) through `channels`, watched by `--watchers` streams over
/// `watchers`.
pub(super) async fn watch_round(
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
        let channel = watchers[w % watchers.len()].clone();
        let no_decode = args.no_decode;
        tasks.push(tokio::spawn(async move {
            let mut stream = match no_decode {
                true => Events::Peeked(peek::watch_interaction(channel, request).await.ok()?),
                false => {
                    Events::Decoded(client.watch_interaction(request).await.ok()?.into_inner())
                }
            };
            let mut signalled = false;
            loop {
                let state = stream.next_state().await?;
                if state == InteractionState::Delivered && !signalled {
                    signalled = true;
                    let _ = ready.send(()).await;
                }
                if state == InteractionState::WrapUp {
                    let sent = go.recv().await.ok()?;
                    // The stream stays open until the round ends, as a watcher's would (it
                    // waits for COMPLETED): cancelling it here made the server tear streams
                    // down in the middle of the fan-out it was timing.
                    return Some((sent.elapsed(), stream));
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
    let cpu_before = (cpu_time(&args.server_pid), cpu_time(&[std::process::id()]));
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
    let mut streams = Vec::new();
    // A watcher that is not told within a minute counts as not notified.
    let give_up = tokio::time::Instant::now() + Duration::from_secs(60);
    for task in tasks {
        if let Ok(Ok(Some((latency, stream)))) = tokio::time::timeout_at(give_up, task).await {
            latencies.push(latency);
            streams.push(stream);
        }
    }
    let spent =
        |before: Option<Duration>, after: Option<Duration>| Some(after?.saturating_sub(before?));
    let server_cpu = spent(cpu_before.0, cpu_time(&args.server_pid));
    let client_cpu = spent(cpu_before.1, cpu_time(&[std::process::id()]));
    drop(streams);
    latencies.sort_unstable();
    Ok(WatchRound {
        ready,
        latencies,
        end_call,
        rss_open,
        id,
        server_cpu,
        client_cpu,
    })
}
