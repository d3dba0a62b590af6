//! Concurrency: many StartCalls at once, many watchers of one interaction, and a watcher that
//! never reads.

mod support;

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use calldesk::proto::{InteractionState as S, StartCallOutcome};
use support::{in_process::TestServer, *};
use tokio::task::JoinSet;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_concurrent_start_calls_across_fifty_agents() {
    let server = TestServer::start().await;
    let clients: Vec<(String, Client)> = (0..50)
        .map(|n| {
            let agent = format!("agent-{n:02}");
            let client = server.client(&agent);
            (agent, client)
        })
        .collect();

    let mut set = JoinSet::new();
    for (agent, client) in &clients {
        for k in 0..4 {
            let mut client = client.clone();
            let agent = agent.clone();
            set.spawn(async move {
                let resp = client
                    .start_call(start_req(if k % 2 == 0 { NUM_OK } else { NUM_OK2 }))
                    .await
                    .map(|r| r.into_inner());
                (agent, resp)
            });
        }
    }
    let mut ids = HashSet::new();
    let mut per_agent: HashMap<String, HashSet<String>> = HashMap::new();
    let results = tokio::time::timeout(Duration::from_secs(30), async {
        let mut out = Vec::new();
        while let Some(r) = set.join_next().await {
            out.push(r.expect("task"));
        }
        out
    })
    .await
    .expect("all StartCalls answer within 30s");
    assert_eq!(results.len(), 200);
    for (agent, resp) in results {
        let resp = resp.unwrap_or_else(|s| panic!("StartCall for {agent} failed: {s:?}"));
        assert_eq!(resp.outcome, StartCallOutcome::Started as i32);
        let id = resp.interaction_id.expect("interaction_id");
        assert_eq!(resp.interaction.as_ref().unwrap().agent_id, agent);
        assert!(ids.insert(id.clone()), "duplicate interaction id {id}");
        per_agent.entry(agent).or_default().insert(id);
    }
    assert_eq!(ids.len(), 200);

    // Each agent lists exactly its own four.
    for (agent, mut client) in clients {
        let listed: HashSet<String> = list_all(&mut client, S::Unspecified)
            .await
            .into_iter()
            .map(|i| i.id)
            .collect();
        assert_eq!(Some(&listed), per_agent.get(&agent), "{agent}'s list");
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hundred_watchers_see_the_identical_sequence() {
    let server = TestServer::start().await;
    let mut c = server.client("alice");
    let id = start_call(&mut c, NUM_OK).await;

    // 100 watchers on 10 connections, all from sequence 0, all open while the call is live.
    let mut set = JoinSet::new();
    let mut opened = Vec::new();
    for n in 0..100 {
        if n % 10 == 0 {
            opened.push(server.client("alice"));
        }
        let mut client = opened.last().unwrap().clone();
        let id = id.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        set.spawn(async move {
            let mut w = watch(&mut client, &id, 0).await;
            let _ = tx.send(());
            let (events, end) = collect_to_end(&mut w, Duration::from_secs(20)).await;
            (n, events, end)
        });
        opened_wait(rx).await;
    }

    // Drive: answer, hold, resume, end, complete.
    let (_w, _) = watch_until(&mut c, &id, S::Delivered).await;
    hold(&mut c, &id).await.expect("HoldCall");
    resume(&mut c, &id).await.expect("ResumeCall");
    end(&mut c, &id).await.expect("EndCall");
    complete(&mut c, &id, "done", "").await.expect("Complete");

    let mut reference: Option<Vec<_>> = None;
    let mut count = 0;
    while let Some(r) = set.join_next().await {
        let (n, events, end) = r.expect("watcher task");
        end.unwrap_or_else(|s| panic!("watcher {n} ended with {s:?}"));
        assert_eq!(
            seqs(&events),
            (1..=7).collect::<Vec<_>>(),
            "watcher {n}'s sequences"
        );
        assert_well_formed(&events);
        let s = summary(&events);
        match &reference {
            None => reference = Some(s),
            Some(r) => assert_eq!(&s, r, "watcher {n} saw different events"),
        }
        count += 1;
    }
    assert_eq!(count, 100);
    server.shutdown().await;
}

async fn opened_wait(rx: tokio::sync::oneshot::Receiver<()>) {
    tokio::time::timeout(WAIT, rx)
        .await
        .expect("watch opens")
        .expect("watcher task alive");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watcher_that_never_reads_stalls_nothing() {
    const CALLS: usize = 700; // three events each: 2,100 events
    const IN_FLIGHT: usize = 32;
    let server = TestServer::start_with(|c| {
        c.wrap_up_timeout = Some(Duration::from_millis(10));
        c.max_active_calls = 10_000;
    })
    .await;

    // The stuck watcher: opened, never polled, on a connection with small windows.
    let mut stuck_client = server.small_window_client("flood");
    let stuck = watch_all(&mut stuck_client).await;

    // The reading watcher, on a connection of its own.
    let mut reader_client = server.client("flood");
    let mut reader = watch_all(&mut reader_client).await;
    let reading = tokio::spawn(async move {
        let mut completed = HashSet::new();
        let mut events = 0usize;
        let mut last_seq: HashMap<String, u64> = HashMap::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
        while completed.len() < CALLS {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, reader.message()).await {
                Err(_) => {
                    return Err(format!(
                        "reader got {} of {CALLS} COMPLETED ({events} events) before the timeout",
                        completed.len()
                    ))
                }
                Ok(Err(status)) => {
                    return Err(format!(
                        "reader ended with {status:?} after {events} events"
                    ))
                }
                Ok(Ok(None)) => return Err(format!("reader ended after {events} events")),
                Ok(Ok(Some(e))) => {
                    events += 1;
                    let prev = last_seq.insert(e.interaction_id.clone(), e.sequence);
                    if prev.unwrap_or(0) + 1 != e.sequence {
                        return Err(format!(
                            "reader: {} went from {prev:?} to {}",
                            e.interaction_id, e.sequence
                        ));
                    }
                    if e.state == S::Completed as i32 {
                        completed.insert(e.interaction_id);
                    }
                }
            }
        }
        Ok(events)
    });

    // Fire the calls, a bounded number at a time; each must answer promptly.
    let caller = server.client("flood");
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut set = JoinSet::new();
    let mut ids = HashSet::new();
    for n in 0..CALLS {
        if set.len() >= IN_FLIGHT {
            let (id, took) = set.join_next().await.unwrap().expect("task");
            slowest = slowest.max(took);
            ids.insert(id);
        }
        let mut c = caller.clone();
        set.spawn(async move {
            let t = Instant::now();
            let resp =
                tokio::time::timeout(Duration::from_secs(5), c.start_call(start_req(NUM_BUSY)))
                    .await
                    .unwrap_or_else(|_| panic!("StartCall #{n} stalled for 5s"))
                    .unwrap_or_else(|s| panic!("StartCall #{n} failed: {s:?}"))
                    .into_inner();
            (resp.interaction_id.expect("interaction_id"), t.elapsed())
        });
    }
    while let Some(r) = set.join_next().await {
        let (id, took) = r.expect("task");
        slowest = slowest.max(took);
        ids.insert(id);
    }
    assert_eq!(ids.len(), CALLS);
    let all_started = started.elapsed();

    let events = reading
        .await
        .expect("reader task")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(events, CALLS * 3, "the reader saw every event exactly once");

    // StartCall still works while the stuck stream is open (another agent's: the flood's
    // events are all committed now, and no more come).
    let id = start_call(&mut server.client("other"), NUM_BUSY).await;
    assert!(!id.is_empty());
    eprintln!(
        "{CALLS} StartCalls in {all_started:?}, slowest {slowest:?}; reader got {events} events"
    );

    // The stuck watcher fell far behind the 1,024 events its feed buffers (docs/api.md §4):
    // reading it now gives the events it was sent, in order, then UNAVAILABLE naming how many
    // it missed: every other event committed, so that the two add up to all of them.
    let mut stuck = stuck;
    let mut got = 0usize;
    let mut last_seq: HashMap<String, u64> = HashMap::new();
    let status = loop {
        match tokio::time::timeout(WAIT, stuck.message()).await {
            Err(_) => panic!("stuck watcher: silently stopped after {got} events"),
            Ok(Ok(None)) => panic!("stuck watcher: ended with OK after {got} events"),
            Ok(Err(status)) => break status,
            Ok(Ok(Some(e))) => {
                got += 1;
                let prev = last_seq.insert(e.interaction_id.clone(), e.sequence);
                assert_eq!(
                    prev.unwrap_or(0) + 1,
                    e.sequence,
                    "stuck watcher lost an event of {}",
                    e.interaction_id
                );
            }
        }
    };
    eprintln!("stuck watcher ended after {got} events: {status:?}");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    let missed: usize = status
        .message()
        .strip_prefix("this watcher fell ")
        .and_then(|m| m.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no \"fell N events behind\" in {status:?}"));
    assert!(missed > 1024, "ended {missed} events behind: {status:?}");
    assert_eq!(
        got + missed,
        CALLS * 3,
        "received {got} and missed {missed} of the {} events committed",
        CALLS * 3
    );
    server.shutdown().await;
}
