//! Durability and restart: nothing acknowledged is lost when the process is killed under load,
//! history and resumption survive restarts, watches opened at any moment see every event once,
//! foreign or newer store files are refused untouched, an uncreatable data dir is reported, and
//! failing writes at run time are UNAVAILABLE until the disk recovers.
//!
//! Sections 1 to 3 (kill -9, restarts, watches) run on the store CALLDESK_TEST_STORE names (a
//! restart on the same data dir finds the same PostgreSQL database); 4 to 6 are about the SQLite
//! file and its disk, and pin SQLite.
//!
//! Everything that must die runs as the real `calldesk serve` binary in a child process.

mod support;

use std::{
    collections::{HashMap, HashSet},
    fs,
    path::Path,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use calldesk::proto::{Interaction, InteractionEvent, InteractionState as S, StartCallResponse};
use support::{
    process::{fast_flags, run_to_exit, serve_args_sqlite, ServerProcess},
    *,
};
use tokio::{
    sync::{Notify, Semaphore},
    task::JoinSet,
};
use tonic::{Code, Status};

fn is_live(state: i32) -> bool {
    state == S::DeliveryPending as i32 || state == S::Delivered as i32 || state == S::Hold as i32
}

fn snapshot(event: &InteractionEvent) -> &Interaction {
    event.interaction.as_ref().expect("event snapshot")
}

// ---------------------------------------------------------------------------------------------
// 1. kill -9 under load

const AGENTS: [&str; 4] = ["k9-ann", "k9-bob", "k9-cyd", "k9-dan"];
const LOAD_TASKS: usize = 8;
const MAX_CALLS_PER_TASK: usize = 150;
/// Kill once this many StartCalls were acknowledged, or after LOAD_TIME, whichever is first
/// (well below LOAD_TASKS * MAX_CALLS_PER_TASK, so that calls are still in flight).
const KILL_AT: usize = 500;
const LOAD_TIME: Duration = Duration::from_millis(1500);
const MIN_CALLS: usize = 60;

#[derive(Debug, Clone)]
struct Sent {
    agent: &'static str,
    request_id: String,
    phone: &'static str,
    /// The interaction_id StartCall returned; None when it failed (in flight at the kill).
    id: Option<String>,
    /// The whole response, when it succeeded.
    response: Option<StartCallResponse>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill9_under_load_loses_nothing_acknowledged() {
    kill9_under_load("full", LOAD_TIME).await;
}

/// `--durability normal` promises to survive a crash of the process (not of the machine).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill9_under_load_loses_nothing_acknowledged_with_durability_normal() {
    kill9_under_load("normal", LOAD_TIME / 2).await;
}

async fn kill9_under_load(durability: &'static str, load_time: Duration) {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let flags = fast_flags(&["--max-active-calls", "1000", "--durability", durability]);
    let mut server = ServerProcess::start(&data, &flags).await;
    // The first StartCall of a process is slow (phone number metadata is loaded lazily): make
    // it before the load, with an agent of its own.
    let mut warm_up = server.client("k9-warm-up");
    start_call_id(&mut warm_up, NUM_BUSY, "warm-up")
        .await
        .expect("the first StartCall");

    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(AtomicUsize::new(0));
    let progress = Arc::new(Notify::new());
    let mut tasks = JoinSet::new();
    for t in 0..LOAD_TASKS {
        let agent = AGENTS[t % AGENTS.len()];
        let mut c = server.client(agent);
        let (stop, acknowledged, progress) = (stop.clone(), acknowledged.clone(), progress.clone());
        tasks.spawn(async move {
            let mut sent = Vec::new();
            let mut unexpected = Vec::new();
            for i in 0..MAX_CALLS_PER_TASK {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let phone = if i % 3 == 2 { NUM_BUSY } else { NUM_OK };
                let request_id = format!("kill9-{t}-{i}");
                let result = c.start_call(start_req_id(phone, &request_id)).await;
                let killed = stop.load(Ordering::SeqCst);
                match result {
                    Ok(resp) => {
                        let response = resp.into_inner();
                        let id = response.interaction_id.clone();
                        assert!(id.is_some(), "StartCall({request_id}) returned no id");
                        sent.push(Sent {
                            agent,
                            request_id,
                            phone,
                            id,
                            response: Some(response),
                        });
                        acknowledged.fetch_add(1, Ordering::SeqCst);
                        progress.notify_one();
                    }
                    Err(status) => {
                        if !killed {
                            unexpected.push(format!("{request_id}: {status:?}"));
                        }
                        sent.push(Sent {
                            agent,
                            request_id,
                            phone,
                            id: None,
                            response: None,
                        });
                        break;
                    }
                }
            }
            (sent, unexpected)
        });
    }

    let wait_for = |n: usize| {
        let (acknowledged, progress) = (acknowledged.clone(), progress.clone());
        async move {
            while acknowledged.load(Ordering::SeqCst) < n {
                progress.notified().await;
            }
        }
    };
    let _ = tokio::time::timeout(load_time, wait_for(KILL_AT)).await;
    tokio::time::timeout(WAIT, wait_for(MIN_CALLS))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "only {} StartCalls acknowledged under load",
                acknowledged.load(Ordering::SeqCst)
            )
        });
    stop.store(true, Ordering::SeqCst);
    server.kill9();

    let mut sent: Vec<Sent> = Vec::new();
    let mut unexpected = Vec::new();
    tokio::time::timeout(WAIT * 2, async {
        while let Some(joined) = tasks.join_next().await {
            let (s, u) = joined.expect("load task");
            sent.extend(s);
            unexpected.extend(u);
        }
    })
    .await
    .expect("the load tasks end once the server is dead");
    assert!(
        unexpected.is_empty(),
        "StartCalls failed before the kill: {unexpected:#?}"
    );
    let acked: Vec<&Sent> = sent.iter().filter(|s| s.id.is_some()).collect();
    let in_flight: Vec<&Sent> = sent.iter().filter(|s| s.id.is_none()).collect();

    // Restart on the same data dir.
    let server = ServerProcess::start(&data, &flags).await;

    // Everything acknowledged is there, for the same agent, as it was asked for.
    let mut stored: HashMap<String, (&'static str, Interaction)> = HashMap::new();
    let mut counts: HashMap<&'static str, usize> = HashMap::new();
    let mut sent_ids: HashMap<(&'static str, &str), &Sent> = HashMap::new();
    for s in &sent {
        sent_ids.insert((s.agent, s.request_id.as_str()), s);
    }
    for agent in AGENTS {
        let mut c = server.client(agent);
        let listed = list_all(&mut c, S::Unspecified).await;
        counts.insert(agent, listed.len());
        let mut request_ids = HashSet::new();
        for i in listed {
            assert_eq!(i.agent_id, agent, "ListInteractions of {agent}: {i:#?}");
            assert!(
                request_ids.insert(i.request_id.clone()),
                "two interactions of {agent} carry request_id {:?}",
                i.request_id
            );
            assert!(
                sent_ids.contains_key(&(agent, i.request_id.as_str())),
                "an interaction nobody asked for: {i:#?}"
            );
            stored.insert(i.id.clone(), (agent, i));
        }
    }
    for s in &acked {
        let id = s.id.as_deref().unwrap();
        let mut c = server.client(s.agent);
        let got = get(&mut c, id).await.unwrap_or_else(|status| {
            panic!(
                "acknowledged interaction {id} ({}) is lost after kill -9: {status:?}",
                s.request_id
            )
        });
        assert_eq!(got.agent_id, s.agent);
        assert_eq!(got.phone_number, s.phone);
        assert_eq!(got.request_id, s.request_id);
        assert!(
            stored.contains_key(id),
            "{id} is gettable but not listed for {}",
            s.agent
        );
    }

    // Every stored interaction: gapless history from 1, and none is left live: the live ones
    // end with SERVER_RESTART.
    let limit = Arc::new(Semaphore::new(32));
    let mut watchers = JoinSet::new();
    for (agent, i) in stored.values() {
        let mut c = server.client(agent);
        let id = i.id.clone();
        let limit = limit.clone();
        watchers.spawn(async move {
            let _permit = limit.acquire_owned().await.expect("semaphore");
            let (_w, events) = watch_until(&mut c, &id, S::WrapUp).await;
            let after = get(&mut c, &id).await.expect("GetInteraction");
            (events, after)
        });
    }
    let mut restart_ended = 0;
    tokio::time::timeout(WAIT * 2, async {
        while let Some(joined) = watchers.join_next().await {
            let (events, after) = joined.expect("watcher task");
            let id = &events[0].interaction_id;
            assert_contiguous(&events, 1, id);
            let last = events.last().unwrap();
            let phone = &stored[id].1.phone_number;
            let reason = snapshot(last).end_reason;
            match reason_name(reason) {
                "END_REASON_SERVER_RESTART" => {
                    assert!(is_live(last.previous_state));
                    restart_ended += 1;
                }
                "END_REASON_BUSY" if phone == NUM_BUSY => {}
                other => panic!(
                    "{id} ({phone}) ended with {other}; expected SERVER_RESTART (or BUSY for \
                     {NUM_BUSY}): {:?}",
                    state_names(&events)
                ),
            }
            assert_eq!(
                after.sequence, last.sequence,
                "{id}: events after WRAP_UP without a wrap-up timeout"
            );
        }
    })
    .await
    .expect("the watches after the restart finish");
    let connected_calls = stored
        .values()
        .filter(|(_, i)| i.phone_number == NUM_OK)
        .count();
    assert!(
        restart_ended >= connected_calls,
        "{connected_calls} calls on {NUM_OK} never end by themselves, but only {restart_ended} \
         ended with SERVER_RESTART"
    );

    // Retries with recorded request_ids return the same interaction and create nothing: a
    // sample of the acknowledged ones, and every one in flight at the kill that was committed.
    let step = (acked.len() / 60).max(1);
    let mut retries: Vec<(&Sent, String)> = acked
        .iter()
        .step_by(step)
        .map(|s| (*s, s.id.clone().unwrap()))
        .collect();
    let mut committed_in_flight = 0;
    for s in &in_flight {
        if let Some((id, _)) = stored
            .iter()
            .find(|(_, (agent, i))| *agent == s.agent && i.request_id == s.request_id)
        {
            retries.push((s, id.clone()));
            committed_in_flight += 1;
        }
    }
    for (s, expected) in &retries {
        let mut c = server.client(s.agent);
        let response = try_start(&mut c, start_req_id(s.phone, &s.request_id))
            .await
            .unwrap_or_else(|status| panic!("retry of {} failed: {status:?}", s.request_id));
        assert_eq!(
            response.interaction_id.as_ref(),
            Some(expected),
            "a retry of {} after the restart returned another interaction",
            s.request_id
        );
        if let Some(first) = &s.response {
            assert_eq!(
                &response, first,
                "a retry of {} after the restart: not the first call's response",
                s.request_id
            );
        }
    }
    // The same key with a different request is still refused after the restart.
    let s = acked[0];
    let other = if s.phone == NUM_OK { NUM_BUSY } else { NUM_OK };
    let status = start_call_id(&mut server.client(s.agent), other, &s.request_id)
        .await
        .expect_err("a request_id reused with another number after the restart");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    for agent in AGENTS {
        let mut c = server.client(agent);
        assert_eq!(
            list_all(&mut c, S::Unspecified).await.len(),
            counts[agent],
            "retries created interactions for {agent}"
        );
    }
    eprintln!(
        "kill -9 (durability {durability}): {} acknowledged, {} in flight at the kill ({committed_in_flight} of them \
         committed), {} stored, {restart_ended} ended with SERVER_RESTART, {} retries",
        acked.len(),
        in_flight.len(),
        stored.len(),
        retries.len()
    );
}

// ---------------------------------------------------------------------------------------------
// 2. History and resume across a clean restart

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_and_resume_survive_a_clean_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let flags = fast_flags(&[]);
    let mut server = ServerProcess::start(&data, &flags).await;
    let mut c = server.client("hist");

    // A: the whole life.
    let (a, mut wa, mut history_a) = call_id_until(&mut c, NUM_OK, "hist-a", S::Delivered).await;
    end(&mut c, &a).await.expect("EndCall A");
    complete(&mut c, &a, "sale", &format!("notes of {a}"))
        .await
        .expect("CompleteInteraction A");
    let (rest, end) = collect_to_end(&mut wa, WAIT).await;
    end.expect("A's watch ends with OK after COMPLETED");
    history_a.extend(rest);
    assert_contiguous(&history_a, 1, "A before the restart");
    assert_eq!(
        state_name(history_a.last().unwrap().state),
        "INTERACTION_STATE_COMPLETED"
    );
    let last_a = history_a.last().unwrap().sequence;

    // B: busy, left in WRAP_UP.
    let (b, wb, history_b) = call_id_until(&mut c, NUM_BUSY, "hist-b", S::WrapUp).await;
    drop(wb);

    // C: connected when the server stops.
    let (cc, mut wc, history_c) = call_id_until(&mut c, NUM_OK, "hist-c", S::Delivered).await;

    // Another agent at its limit of live calls (the default, 4) when the server stops.
    let mut limited = server.client("hist-limit");
    let mut live = Vec::new();
    for n in 0..4 {
        let (id, _w, _) = call_id_until(
            &mut limited,
            NUM_OK,
            &format!("hist-limit-{n}"),
            S::Delivered,
        )
        .await;
        live.push(id);
    }
    let status = start_call_id(&mut limited, NUM_OK, "hist-limit-over")
        .await
        .expect_err("a fifth live call");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");

    let status = server.sigterm().await;
    assert!(
        status.success(),
        "SIGTERM: calldesk serve exited with {status}"
    );
    match tokio::time::timeout(WAIT, wc.message()).await {
        Ok(Err(status)) => assert_eq!(
            status.code(),
            Code::Unavailable,
            "an open watch at shutdown: {status:?}"
        ),
        other => panic!("an open watch should end with UNAVAILABLE at shutdown, got {other:?}"),
    }

    let server = ServerProcess::start(&data, &flags).await;
    let mut c = server.client("hist");

    // A: the same history, from 0 and from 2, and nothing after its end.
    let mut w = watch(&mut c, &a, 0).await;
    let (events, end) = collect_to_end(&mut w, WAIT).await;
    end.expect("A's watch from 0 ends with OK");
    assert_eq!(
        events,
        history_a,
        "A's history after the restart differs: {:?} vs {:?}",
        state_names(&events),
        state_names(&history_a)
    );
    let mut w = watch(&mut c, &a, 2).await;
    let (events, end) = collect_to_end(&mut w, WAIT).await;
    end.expect("A's watch from 2 ends with OK");
    assert_eq!(seqs(&events), (3..=last_a).collect::<Vec<_>>());
    assert_eq!(events, history_a[2..].to_vec());
    let mut w = watch(&mut c, &a, last_a).await;
    let (events, end) = collect_to_end(&mut w, WAIT).await;
    end.expect("A's watch from its last sequence ends with OK");
    assert!(
        events.is_empty(),
        "events after COMPLETED: {:?}",
        state_names(&events)
    );
    let got = get(&mut c, &a).await.expect("GetInteraction A");
    assert_eq!(Some(&got), history_a.last().unwrap().interaction.as_ref());

    // B: untouched by the restart, and it can still be completed.
    let got = get(&mut c, &b).await.expect("GetInteraction B");
    assert_eq!(Some(&got), history_b.last().unwrap().interaction.as_ref());
    assert_eq!(reason_name(got.end_reason), "END_REASON_BUSY");
    let (mut w, events) = watch_until(&mut c, &b, S::WrapUp).await;
    assert_eq!(events, history_b);
    // With PostgreSQL, B belongs to the stopped replica until the restarted one has taken its
    // released lease over (at its first lease tick, beside serving): until then the answer is
    // UNAVAILABLE OWNER_UNAVAILABLE "try again shortly", which a client retries (docs/api.md).
    let deadline = tokio::time::Instant::now() + WAIT;
    let done = loop {
        match complete(&mut c, &b, "busy", &format!("notes of {b}")).await {
            Err(s)
                if s.code() == Code::Unavailable
                    && s.message().contains("try again")
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            other => break other.expect("CompleteInteraction B after restart"),
        }
    };
    assert_eq!(state_name(done.state), "INTERACTION_STATE_COMPLETED");
    assert_eq!(done.disposition, "busy");
    let (events, end) = collect_to_end(&mut w, WAIT).await;
    end.expect("B's watch ends with OK after COMPLETED");
    assert_eq!(seqs(&events), vec![got.sequence + 1]);
    assert_eq!(events[0].interaction.as_ref(), Some(&done));

    // C: it was live when the process stopped: WRAP_UP / SERVER_RESTART, then completable.
    let n = history_c.len() as u64;
    let mut w = watch(&mut c, &cc, n).await;
    let events = wait_for_state(&mut w, S::WrapUp).await;
    assert_eq!(
        seqs(&events),
        vec![n + 1],
        "C after the restart: {:?}",
        state_names(&events)
    );
    assert_eq!(events[0].previous_state, S::Delivered as i32);
    assert_eq!(
        reason_name(snapshot(&events[0]).end_reason),
        "END_REASON_SERVER_RESTART"
    );
    complete(&mut c, &cc, "lost", &format!("notes of {cc}"))
        .await
        .expect("CompleteInteraction C after restart");
    let (events, end) = collect_to_end(&mut w, WAIT).await;
    end.expect("C's watch ends with OK after COMPLETED");
    assert_eq!(
        state_names(&events),
        vec![(n + 2, "INTERACTION_STATE_COMPLETED")]
    );

    // The list still shows all three, newest first.
    let listed: Vec<String> = list_all(&mut c, S::Unspecified)
        .await
        .into_iter()
        .map(|i| i.id)
        .collect();
    assert_eq!(listed, vec![cc.clone(), b.clone(), a.clone()]);

    // The calls that died with the process no longer count against the agent's limit.
    let mut limited = server.client("hist-limit");
    for id in &live {
        let (_w, events) = watch_until(&mut limited, id, S::WrapUp).await;
        assert_eq!(
            reason_name(snapshot(events.last().unwrap()).end_reason),
            "END_REASON_SERVER_RESTART"
        );
    }
    for n in 0..4 {
        start_call_id(&mut limited, NUM_OK, &format!("hist-limit-after-{n}"))
            .await
            .unwrap_or_else(|status| {
                panic!(
                    "StartCall {n} after the restart, when none of the agent's calls is live \
                     any more: {status:?}"
                )
            });
    }
}

/// WRAP_UP interactions found at start-up, and calls ended by the restart, are completed by
/// the (new) wrap-up timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wrap_up_timeout_applies_after_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let mut server = ServerProcess::start(&data, &fast_flags(&["--wrap-up-timeout", "1h"])).await;
    let mut c = server.client("wrap");
    let (busy, _w, _) = call_id_until(&mut c, NUM_BUSY, "wrap-busy", S::WrapUp).await;
    let (connected, _w, _) = call_id_until(&mut c, NUM_OK, "wrap-ok", S::Delivered).await;
    server.kill9();

    let server = ServerProcess::start(&data, &fast_flags(&["--wrap-up-timeout", "50ms"])).await;
    let mut c = server.client("wrap");
    for (id, reason) in [
        (&busy, "END_REASON_BUSY"),
        (&connected, "END_REASON_SERVER_RESTART"),
    ] {
        let mut w = watch(&mut c, id, 0).await;
        let (events, end) = collect_to_end(&mut w, WAIT).await;
        end.expect("the watch ends with OK after COMPLETED");
        assert_contiguous(&events, 1, id);
        let last = events.last().expect("events");
        assert_eq!(
            (state_name(last.state), state_name(last.previous_state)),
            ("INTERACTION_STATE_COMPLETED", "INTERACTION_STATE_WRAP_UP"),
            "{id}: {:?}",
            state_names(&events)
        );
        assert_eq!(reason_name(snapshot(last).end_reason), reason);
    }
}

/// Keys answered before a restart replay after it once the server has scanned the stored keys
/// into its filter (its log says so): the filter lets a new key skip the store's look-up only
/// when that key is certainly not stored. A key never seen still dials. On SQLite: the filter
/// is SQLite's (with PostgreSQL another replica may store a key at any time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_answered_before_a_restart_replay_once_the_key_filter_is_ready() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let mut server = ServerProcess::start_sqlite(&data, &fast_flags(&[])).await;
    let mut c = server.client("keys");
    let mut firsts = Vec::new();
    for n in 0..3 {
        let request = start_req_id(NUM_BUSY, &format!("filter-{n}"));
        firsts.push(try_start(&mut c, request).await.expect("StartCall"));
    }
    server.kill9();

    let server = ServerProcess::start_sqlite(&data, &fast_flags(&[])).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while !server
        .stderr_text()
        .contains("stored idempotency keys scanned")
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stored keys were not scanned within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        server.stderr_text().contains("keys=3"),
        "{}",
        server.stderr_text()
    );
    let mut c = server.client("keys");
    for (n, first) in firsts.iter().enumerate() {
        let again = try_start(&mut c, start_req_id(NUM_BUSY, &format!("filter-{n}")))
            .await
            .expect("retry");
        assert_eq!(&again, first, "the retry of filter-{n} after the restart");
    }
    try_start(&mut c, start_req_id(NUM_BUSY, "filter-new"))
        .await
        .expect("a new key");
    assert_eq!(
        list_all(&mut c, S::Unspecified).await.len(),
        4,
        "the three retries replayed, the new key dialed"
    );
}

// ---------------------------------------------------------------------------------------------
// 3. The seam between stored and live events

const SEAM_CALLS: usize = 50;

type WatchResult = (u64, Vec<InteractionEvent>, Result<(), Status>);

fn spawn_watcher(set: &mut JoinSet<WatchResult>, c: &Client, id: &str, after: u64) {
    let mut c = c.clone();
    let id = id.to_string();
    set.spawn(async move {
        let mut w = watch(&mut c, &id, after).await;
        let (events, end) = collect_to_end(&mut w, WAIT).await;
        (after, events, end)
    });
}

/// One call on NUM_REMOTE_HANGUP, watched from 0 and by watchers opened right after StartCall,
/// at each event the first watcher sees, and after COMPLETED, with varied after_sequence.
/// Returns how many watchers were checked.
async fn seam_call(c: Client, i: usize) -> usize {
    let mut c = c;
    let id = start_call_id(&mut c, NUM_REMOTE_HANGUP, &format!("seam-{i}"))
        .await
        .expect("StartCall");
    let mut others = JoinSet::new();
    // At most sequence 1, the one StartCall answered with: a later one is OUT_OF_RANGE.
    spawn_watcher(&mut others, &c, &id, (i % 2) as u64);
    spawn_watcher(&mut others, &c, &id, 1);

    let mut primary = watch(&mut c, &id, 0).await;
    let mut history = Vec::new();
    loop {
        match tokio::time::timeout(WAIT, primary.message()).await {
            Err(_) => panic!(
                "{id}: no COMPLETED within {WAIT:?}: {:?}",
                state_names(&history)
            ),
            Ok(Err(status)) => panic!("{id}: watch from 0 failed: {status:?}"),
            Ok(Ok(None)) => break,
            Ok(Ok(Some(event))) => {
                let s = event.sequence;
                history.push(event);
                spawn_watcher(&mut others, &c, &id, s);
                // Never past the latest sequence (s at least): that is OUT_OF_RANGE.
                spawn_watcher(&mut others, &c, &id, (s + i as u64) % (s + 1));
            }
        }
    }
    assert_contiguous(&history, 1, &id);
    let last = history.last().expect("events");
    assert_eq!(
        state_name(last.state),
        "INTERACTION_STATE_COMPLETED",
        "{id}: the watch from 0 ended before COMPLETED: {:?}",
        state_names(&history)
    );
    assert_eq!(
        reason_name(snapshot(last).end_reason),
        "END_REASON_REMOTE_HANGUP"
    );
    let final_seq = last.sequence;
    for after in [0, 2, final_seq - 1, final_seq] {
        spawn_watcher(&mut others, &c, &id, after);
    }

    let mut checked = 0;
    while let Some(joined) = others.join_next().await {
        let (after, events, end) = joined.expect("watcher task");
        if let Err(status) = end {
            panic!(
                "{id}: the watch from {after} ended with {status:?} after {:?}",
                state_names(&events)
            );
        }
        let expected: Vec<InteractionEvent> = history
            .iter()
            .filter(|e| e.sequence > after)
            .cloned()
            .collect();
        assert_eq!(
            seqs(&events),
            seqs(&expected),
            "{id}: the watch from after_sequence {after} saw the wrong sequences \
             (final sequence {final_seq})"
        );
        assert_eq!(
            events, expected,
            "{id}: the watch from {after} saw other events"
        );
        checked += 1;
    }
    checked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watches_opened_at_any_moment_see_every_event_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let flags = fast_flags(&[
        "--sim-talk",
        "100ms",
        "--wrap-up-timeout",
        "50ms",
        "--max-watch-streams-per-agent",
        "4096",
        "--max-active-calls",
        "1000",
    ]);
    let server = ServerProcess::start(&data, &flags).await;
    let clients: Vec<Client> = (0..5).map(|_| server.client("seam")).collect();
    let mut calls = JoinSet::new();
    for i in 0..SEAM_CALLS {
        calls.spawn(seam_call(clients[i % clients.len()].clone(), i));
    }
    let mut watchers = 0;
    tokio::time::timeout(WAIT * 2, async {
        while let Some(joined) = calls.join_next().await {
            watchers += joined.expect("call task");
        }
    })
    .await
    .expect("all calls complete and all watches end");
    eprintln!("seam: {SEAM_CALLS} calls, {watchers} watches checked");
}

// ---------------------------------------------------------------------------------------------
// 4. Foreign and newer store files

const REFUSE_TIMEOUT: Duration = Duration::from_secs(15);

/// Runs `calldesk serve --data-dir data` expecting a refusal that names `db`, and checks that
/// the file's bytes did not change. Returns stderr.
fn assert_refused_untouched(data: &Path, db: &Path) -> String {
    let before = fs::read(db).expect("read the store file");
    let files_before = dir_listing(data);
    let out = run_to_exit(serve_args_sqlite(data, &[]), REFUSE_TIMEOUT);
    assert!(
        !out.status.success(),
        "calldesk serve accepted {} (exit {}); stderr:\n{}",
        db.display(),
        out.status,
        out.stderr
    );
    assert!(
        out.stderr.contains(&db.display().to_string()),
        "stderr does not name {}:\n{}",
        db.display(),
        out.stderr
    );
    assert!(
        !out.stdout.contains("listening"),
        "it listened anyway: {}",
        out.stdout
    );
    let after = fs::read(db).expect("read the store file");
    assert!(
        before == after,
        "calldesk changed the bytes of the file it refused ({} bytes before, {} after)",
        before.len(),
        after.len()
    );
    assert_eq!(
        dir_listing(data),
        files_before,
        "files appeared or vanished next to the refused store"
    );
    out.stderr
}

fn dir_listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

#[test]
fn a_file_that_is_not_sqlite_is_refused_untouched() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    fs::create_dir_all(&data).expect("mkdir");
    let db = data.join("calldesk.db");
    fs::write(
        &db,
        b"These are somebody's notes, not a database.\n".repeat(200),
    )
    .expect("write");
    assert_refused_untouched(&data, &db);
}

#[test]
fn an_sqlite_database_of_another_application_is_refused_untouched() {
    let dir = tempfile::tempdir().expect("tempdir");

    // Tables of its own, no application_id.
    let data = dir.path().join("tables");
    fs::create_dir_all(&data).expect("mkdir");
    let db = data.join("calldesk.db");
    {
        let conn = rusqlite::Connection::open(&db).expect("create sqlite");
        conn.execute_batch("CREATE TABLE t (x INTEGER); INSERT INTO t VALUES (42);")
            .expect("create t");
    }
    let stderr = assert_refused_untouched(&data, &db);
    assert!(stderr.contains("another application"), "stderr:\n{stderr}");
    let conn = rusqlite::Connection::open(&db).expect("reopen");
    let x: i64 = conn
        .query_row("SELECT x FROM t", [], |r| r.get(0))
        .expect("t is still there");
    assert_eq!(x, 42);

    // Another application's id, no tables.
    let data = dir.path().join("app-id");
    fs::create_dir_all(&data).expect("mkdir");
    let db = data.join("calldesk.db");
    {
        let conn = rusqlite::Connection::open(&db).expect("create sqlite");
        conn.pragma_update(None, "application_id", 0x1234_5678)
            .expect("application_id");
    }
    assert_refused_untouched(&data, &db);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_with_a_newer_schema_is_refused_untouched() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let mut server = ServerProcess::start_sqlite(&data, &fast_flags(&[])).await;
    let mut c = server.client("newer");
    start_call_id(&mut c, NUM_OK, "newer-1")
        .await
        .expect("StartCall");
    drop(c);
    let status = server.sigterm().await;
    assert!(status.success(), "SIGTERM: exited with {status}");

    let db = data.join("calldesk.db");
    {
        let conn = rusqlite::Connection::open(&db).expect("open the store");
        let version: i32 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .expect("user_version");
        assert_eq!(version, 6, "the schema version calldesk writes");
        conn.pragma_update(None, "user_version", 99)
            .expect("user_version = 99");
    }
    let stderr = tokio::task::spawn_blocking(move || assert_refused_untouched(&data, &db))
        .await
        .expect("refusal check");
    assert!(
        stderr.contains("newer"),
        "the refusal should say the schema is newer:\n{stderr}"
    );
}

// ---------------------------------------------------------------------------------------------
// 5. A data dir that cannot be created

#[test]
fn a_data_dir_that_cannot_be_created_is_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("file");
    fs::write(&file, b"a regular file").expect("write");
    let data = file.join("sub");
    let out = run_to_exit(serve_args_sqlite(&data, &[]), REFUSE_TIMEOUT);
    assert!(
        !out.status.success(),
        "calldesk serve started with data dir {} beneath a file; stderr:\n{}",
        data.display(),
        out.stderr
    );
    assert!(
        out.stderr.contains(&data.display().to_string()),
        "stderr does not name {}:\n{}",
        data.display(),
        out.stderr
    );
    assert_eq!(fs::read(&file).expect("read"), b"a regular file");
}

// ---------------------------------------------------------------------------------------------
// 6. Failing writes at run time

fn prlimit_path() -> Option<&'static str> {
    ["/usr/bin/prlimit", "/bin/prlimit", "/usr/sbin/prlimit"]
        .into_iter()
        .find(|p| Path::new(p).exists())
}

fn prlimit_fsize(prlimit: &str, pid: u32, value: &str) {
    let out = std::process::Command::new(prlimit)
        .args(["--pid", &pid.to_string(), &format!("--fsize={value}")])
        .output()
        .expect("run prlimit");
    assert!(
        out.status.success(),
        "prlimit --fsize={value} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_writes_are_unavailable_and_the_server_recovers() {
    let Some(prlimit) = prlimit_path() else {
        skip(
            "failing_writes_are_unavailable_and_the_server_recovers",
            "util-linux `prlimit` is not installed",
        );
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    // Started as an operator starts it: SIGXFSZ at its default action (which kills), unless
    // the server makes it harmless itself.
    let server =
        ServerProcess::start_sqlite(&data, &fast_flags(&["--max-active-calls", "1000"])).await;
    let pid = server.pid();
    let sig_ign = fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("/proc/PID/status")
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:").map(|v| v.trim().to_string()))
        .expect("SigIgn");
    let ignored = u64::from_str_radix(&sig_ign, 16).expect("SigIgn hex");
    assert!(
        ignored & (1 << (25 - 1)) != 0,
        "calldesk serve does not ignore SIGXFSZ (SigIgn {sig_ign}): a file-size limit kills it"
    );

    // Some calls, settled (no write of theirs pending).
    let mut c = server.client("fsize");
    let mut earlier = Vec::new();
    for n in 0..4 {
        let (id, _w, _) =
            call_id_until(&mut c, NUM_OK, &format!("fsize-ok-{n}"), S::Delivered).await;
        earlier.push(id);
    }
    let (busy, w, _) = call_id_until(&mut c, NUM_BUSY, "fsize-busy", S::WrapUp).await;
    earlier.push(busy);
    drop(w);

    // Cap the file size at the current size of the WAL (or of the database without one).
    let wal = file_len(&data.join("calldesk.db-wal"));
    let db = file_len(&data.join("calldesk.db"));
    let cap = if wal > 0 { wal } else { db };
    assert!(cap > 0, "no store file under {}", data.display());
    // Only the soft limit: raising it again needs no privilege (the hard one would).
    prlimit_fsize(prlimit, pid, &format!("{cap}:"));

    let mut failed = Vec::new();
    for n in 0..200 {
        let request_id = format!("fsize-capped-{n}");
        match start_call_id(&mut c, NUM_OK, &request_id).await {
            Ok(id) => {
                // Possible only while the write fitted under the cap.
                eprintln!("StartCall {request_id} still succeeded under the cap: {id}");
                earlier.push(id);
            }
            Err(status) => {
                assert_eq!(
                    status.code(),
                    Code::Unavailable,
                    "a StartCall whose write fails: {status:?}"
                );
                assert_error_info(&status, "STORE_WRITE_FAILED");
                failed.push(request_id);
                break;
            }
        }
    }
    assert!(
        !failed.is_empty(),
        "200 StartCalls succeeded with the file size capped at {cap} bytes (wal {wal}, db {db})"
    );
    for n in 0..3 {
        let request_id = format!("fsize-still-capped-{n}");
        let status = start_call_id(&mut c, NUM_OK, &request_id)
            .await
            .expect_err("StartCall while writes fail");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert_error_info(&status, "STORE_WRITE_FAILED");
        failed.push(request_id);
    }
    // A change that cannot be written is UNAVAILABLE and leaves the interaction as it was.
    let before = get(&mut c, &earlier[0]).await.expect("GetInteraction");
    let status = end(&mut c, &earlier[0])
        .await
        .expect_err("EndCall while writes fail");
    assert_eq!(status.code(), Code::Unavailable, "EndCall: {status:?}");
    assert_error_info(&status, "STORE_WRITE_FAILED");

    // Reads still work, and show nothing that failed.
    for id in &earlier {
        get(&mut c, id)
            .await
            .unwrap_or_else(|s| panic!("GetInteraction({id}) while writes fail: {s:?}"));
    }
    assert_eq!(get(&mut c, &earlier[0]).await.expect("Get"), before);
    let listed = list_all(&mut c, S::Unspecified).await;
    let listed_ids: HashSet<String> = listed.iter().map(|i| i.id.clone()).collect();
    assert_eq!(listed_ids, earlier.iter().cloned().collect::<HashSet<_>>());

    // The disk recovers; so does the server, by itself.
    prlimit_fsize(prlimit, pid, "unlimited:");
    let retried = tokio::time::timeout(WAIT, async {
        loop {
            match start_call_id(&mut c, NUM_OK, &failed[0]).await {
                Ok(id) => return id,
                Err(status) => {
                    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    })
    .await
    .expect("StartCall succeeds again once writes can succeed");
    assert!(!earlier.contains(&retried));
    let fresh = start_call_id(&mut c, NUM_OK, "fsize-after")
        .await
        .expect("StartCall after recovery");

    let listed = list_all(&mut c, S::Unspecified).await;
    let mut expected: HashSet<String> = earlier.iter().cloned().collect();
    expected.extend([retried.clone(), fresh.clone()]);
    assert_eq!(
        listed.iter().map(|i| i.id.clone()).collect::<HashSet<_>>(),
        expected,
        "after recovery the store holds exactly the acknowledged calls"
    );
    for i in &listed {
        assert!(
            !failed[1..].contains(&i.request_id),
            "a failed StartCall appeared: {i:#?}"
        );
    }

    // Changes work again, and the failed EndCall left no trace.
    let ended = end(&mut c, &earlier[0])
        .await
        .expect("EndCall after recovery");
    assert_eq!(state_name(ended.state), "INTERACTION_STATE_WRAP_UP");
    assert_eq!(reason_name(ended.end_reason), "END_REASON_AGENT_HANGUP");
    let (_w, events) = watch_until(&mut c, &earlier[0], S::WrapUp).await;
    assert_contiguous(&events, 1, &earlier[0]);
    assert_eq!(events.len() as u64, before.sequence + 1);
}
