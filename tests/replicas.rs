//! Several replicas on one PostgreSQL store (docs/api.md §11), as real `calldesk serve`
//! processes on loopback ports, against a throw-away PostgreSQL cluster of Debian's package.
//!
//! Nothing is mocked: the replicas forward to each other over gRPC, watch each other's events
//! through LISTEN/NOTIFY, take over a replica killed with SIGKILL, fence one paused with
//! SIGSTOP, and ride out a restart of PostgreSQL itself.

mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use calldesk::proto::{
    CallProgress, EndReason, InteractionEvent, InteractionState, Origination, TransferCallRequest,
};
use support::{
    pki,
    postgres::{self, PgCluster},
    process::{self, ServerProcess, BIN},
    sipp::Sipp,
    webhook_receiver::{assert_delivered, hook, write_hooks, Receiver, DELIVERY_WAIT},
    *,
};
use tonic::Code;

/// The lease of the replicas under test: a takeover happens within it plus a renewal period.
const LEASE: &str = "2s";
/// How long a takeover may take at most here: the lease, a third of it, and slack for a
/// loaded CI machine.
const TAKEOVER_WAIT: Duration = Duration::from_secs(15);

/// How long a client of the load waits before it retries (and the poll interval of the test's
/// own bounded polling).
const RETRY_BACKOFF: Duration = Duration::from_millis(50);

/// One deployment: a database, a peer secret, and a directory per replica.
struct Deployment {
    url: String,
    token: std::path::PathBuf,
    dir: tempfile::TempDir,
    started: usize,
}

impl Deployment {
    fn new(cluster: &PgCluster) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let token = postgres::write_peer_token(dir.path());
        Self {
            url: cluster.database(),
            token,
            dir,
            started: 0,
        }
    }

    /// Starts one more replica with the fast simulated switch and `extra` flags.
    async fn replica(&mut self, extra: &[&str]) -> ServerProcess {
        self.started += 1;
        let data_dir = self.dir.path().join(format!("replica-{}", self.started));
        let mut flags = vec![
            "--database-url",
            &self.url,
            "--peer-token-file",
            self.token.to_str().expect("utf-8 path"),
            "--lease-duration",
            LEASE,
        ];
        // NUM_NO_ANSWER rings for a minute, unless a test says otherwise.
        if !extra.contains(&"--sim-no-answer") {
            flags.extend_from_slice(&["--sim-no-answer", "60s"]);
        }
        flags.extend_from_slice(extra);
        let args = process::serve_args_for(
            Store::Sqlite,
            "127.0.0.1:0",
            &data_dir,
            &process::fast_flags(&flags),
        );
        ServerProcess::start_command(BIN.into(), args).await
    }

    /// Starts one more replica with the SIP switch (`sip`: its flags), no simulated-switch
    /// flag.
    async fn sip_replica(&mut self, sip: &[String]) -> ServerProcess {
        self.started += 1;
        let data_dir = self.dir.path().join(format!("replica-{}", self.started));
        let mut flags = vec![
            "--database-url",
            &self.url,
            "--peer-token-file",
            self.token.to_str().expect("utf-8 path"),
            "--lease-duration",
            LEASE,
        ];
        flags.extend(sip.iter().map(String::as_str));
        let args = process::serve_args_for(Store::Sqlite, "127.0.0.1:0", &data_dir, &flags);
        ServerProcess::start_command(BIN.into(), args).await
    }

    async fn replicas(&mut self, n: usize, extra: &[&str]) -> Vec<ServerProcess> {
        let mut replicas = Vec::new();
        for _ in 0..n {
            replicas.push(self.replica(extra).await);
        }
        replicas
    }
}

/// Events from a stream until `pred`, within the takeover bound.
async fn until(
    stream: &mut tonic::Streaming<InteractionEvent>,
    pred: impl FnMut(&InteractionEvent) -> bool,
) -> Vec<InteractionEvent> {
    wait_for(stream, TAKEOVER_WAIT, pred).await
}

fn sequences(events: &[InteractionEvent]) -> Vec<u64> {
    events.iter().map(|e| e.sequence).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_started_on_a_is_watched_on_b_ended_on_c_and_completed_on_a() {
    let mut deployment = Deployment::new(PgCluster::shared());
    let replicas = deployment.replicas(3, &[]).await;
    let (mut a, mut b, mut c) = (
        replicas[0].client("alice"),
        replicas[1].client("alice"),
        replicas[2].client("alice"),
    );
    let mut all_on_c = watch_all(&mut c).await;
    let id = start_call(&mut a, NUM_OK).await;
    let mut on_b = watch(&mut b, &id, 0).await;
    let seen = wait_for_state(&mut on_b, InteractionState::Delivered).await;
    assert_eq!(
        sequences(&seen),
        (1..=seen.len() as u64).collect::<Vec<_>>()
    );

    // C does not own it: EndCall is forwarded to A, and answered as A answers.
    let ended = end(&mut c, &id).await.expect("EndCall on C");
    assert_eq!(ended.state, InteractionState::WrapUp as i32);
    // Another agent gets NOT_FOUND from a replica that does not own it, as from its owner.
    let status = end(&mut replicas[2].client("bob"), &id)
        .await
        .expect_err("bob may not end alice's call");
    assert_eq!(status.code(), Code::NotFound);
    // Completed on A, the owner.
    let done = complete(&mut a, &id, "sale", "")
        .await
        .expect("CompleteInteraction on A");
    assert_eq!(done.state, InteractionState::Completed as i32);

    let rest = collect_until_completed(&mut on_b, WAIT).await;
    let mut all: Vec<_> = seen.into_iter().chain(rest).collect();
    assert_eq!(
        sequences(&all),
        (1..=all.len() as u64).collect::<Vec<_>>(),
        "B's watch is gapless and in order: {all:#?}"
    );
    let last = all.pop().expect("events");
    assert_eq!(last.state, InteractionState::Completed as i32);
    assert_eq!(last.sequence, done.sequence);

    // C's WatchInteractions saw the same events, live, from another replica's commits.
    let on_c = wait_for(&mut all_on_c, WAIT, |e| {
        e.interaction_id == id && e.state == InteractionState::Completed as i32
    })
    .await;
    let on_c: Vec<u64> = on_c
        .iter()
        .filter(|e| e.interaction_id == id)
        .map(|e| e.sequence)
        .collect();
    assert_eq!(on_c, (1..=done.sequence).collect::<Vec<_>>());
    // And a resumed watch on C from the middle gets exactly the rest.
    let mut resumed = watch(&mut c, &id, 2).await;
    let rest = collect_until_completed(&mut resumed, WAIT).await;
    assert_eq!(sequences(&rest), (3..=done.sequence).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_asked_of_another_replica_is_done_by_the_owner_and_seen_everywhere() {
    let mut deployment = Deployment::new(PgCluster::shared());
    let replicas = deployment.replicas(2, &[]).await;
    let (mut a, mut b) = (replicas[0].client("alice"), replicas[1].client("alice"));
    let mut bob_on_b = replicas[1].client("bob");
    let mut bobs_feed_on_b = watch_all(&mut bob_on_b).await;
    let id = start_call(&mut a, NUM_OK).await;
    let mut on_a = watch(&mut a, &id, 0).await;
    wait_for_state(&mut on_a, InteractionState::Delivered).await;

    // B does not own the call: the transfer is forwarded to A, which does the moves.
    let request = TransferCallRequest {
        interaction_id: id.clone(),
        target: "agent:bob".into(),
        request_id: "r1".into(),
    };
    let reply = unary("TransferCall on B", b.transfer_call(request))
        .await
        .expect("TransferCall on B");
    assert_eq!(reply.progress, CallProgress::Transferring as i32);
    let events = wait_for_state(&mut on_a, InteractionState::WrapUp).await;
    let ended = events.last().and_then(|e| e.interaction.clone()).unwrap();
    assert_eq!(ended.end_reason, EndReason::Transferred as i32);

    // Bob's new interaction, made by A, reaches his watch on B, is readable there, and Bob
    // ends it from B (forwarded to A, its owner).
    let seen = until(&mut bobs_feed_on_b, |e| {
        e.interaction
            .as_ref()
            .is_some_and(|i| i.transferred_from == id)
    })
    .await;
    let new_id = seen.last().map(|e| e.interaction_id.clone()).unwrap();
    let got = get(&mut bob_on_b, &new_id)
        .await
        .expect("Bob reads it on B");
    assert_eq!(got.origination, Origination::Transfer as i32);
    assert_eq!(got.state, InteractionState::Delivered as i32);
    let hung_up = end(&mut bob_on_b, &new_id).await.expect("EndCall on B");
    assert_eq!(hung_up.end_reason, EndReason::AgentHangup as i32);

    // The key outlives its replica: once B has taken A's interactions over (kill -9), B answers
    // the retry from the keys A stored with the events (store::TransferKeyRecord).
    let mut replicas = replicas;
    replicas[0].kill9();
    let deadline = tokio::time::Instant::now() + TAKEOVER_WAIT;
    let again = loop {
        let retry = TransferCallRequest {
            interaction_id: id.clone(),
            target: "agent:bob".into(),
            request_id: "r1".into(),
        };
        match unary("TransferCall retried on B", b.transfer_call(retry)).await {
            Err(status) if status.code() == Code::Unavailable => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "B did not take over within {TAKEOVER_WAIT:?}: {status:?}"
                );
                tokio::time::sleep(RETRY_BACKOFF).await;
            }
            answer => break answer.expect("the retry after the takeover"),
        }
    };
    assert_eq!(again, ended, "the retry answers the interaction as it is");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_request_id_on_two_replicas_dials_once() {
    let mut deployment = Deployment::new(PgCluster::shared());
    let replicas = deployment.replicas(2, &[]).await;
    // At once: both StartCalls race on A and B.
    for round in 0..5 {
        let key = format!("at-once-{round}");
        let (mut a, mut b) = (replicas[0].client("carol"), replicas[1].client("carol"));
        let (on_a, on_b) = tokio::join!(
            start_ok(&mut a, start_req_id(NUM_NO_ANSWER, &key)),
            start_ok(&mut b, start_req_id(NUM_NO_ANSWER, &key)),
        );
        assert_eq!(on_a, on_b, "both get the first call's response");
        // One after the other: B replays what A answered.
        let again = start_ok(&mut b, start_req_id(NUM_NO_ANSWER, &key)).await;
        assert_eq!(again, on_a);
        let id = on_a.interaction_id.clone().expect("an interaction");
        end(&mut a, &id).await.expect("end");
    }
    // A different request under a used key is refused on the other replica too.
    let status = start_err(
        &mut replicas[1].client("carol"),
        start_req_id(NUM_OK, "at-once-0"),
    )
    .await;
    assert_eq!(status.code(), Code::InvalidArgument);
    let all = list_all(
        &mut replicas[0].client("carol"),
        InteractionState::Unspecified,
    )
    .await;
    assert_eq!(all.len(), 5, "five keys dialed five calls: {all:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_active_calls_holds_across_replicas_under_concurrent_starts() {
    let mut deployment = Deployment::new(PgCluster::shared());
    let replicas = deployment.replicas(3, &["--max-active-calls", "2"]).await;
    let mut starts = Vec::new();
    for _ in 0..3 {
        for replica in &replicas {
            let mut client = replica.client("dave");
            starts.push(tokio::spawn(async move {
                try_start(&mut client, start_req(NUM_NO_ANSWER)).await
            }));
        }
    }
    let mut started = 0;
    let mut refused = 0;
    for start in starts {
        match start.await.expect("task") {
            Ok(_) => started += 1,
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                refused += 1;
            }
        }
    }
    assert_eq!(
        (started, refused),
        (2, 7),
        "two live calls for dave, in all"
    );
    let live = list_all(
        &mut replicas[1].client("dave"),
        InteractionState::DeliveryPending,
    )
    .await;
    assert_eq!(live.len(), 2);
    // A place freed on one replica is free on all of them.
    end(&mut replicas[2].client("dave"), &live[0].id)
        .await
        .expect("end (forwarded if not owned)");
    start_call(&mut replicas[2].client("dave"), NUM_NO_ANSWER).await;
    let status = try_start(&mut replicas[0].client("dave"), start_req(NUM_NO_ANSWER))
        .await
        .expect_err("at the limit again");
    assert_eq!(status.code(), Code::ResourceExhausted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_with_sigkill_is_taken_over_and_its_calls_end_with_server_restart() {
    let mut deployment = Deployment::new(PgCluster::shared());
    let mut replicas = deployment.replicas(3, &[]).await;
    let mut on_a = replicas[0].client("erin");
    let ringing = start_call(&mut on_a, NUM_NO_ANSWER).await;
    let connected = start_call(&mut on_a, NUM_OK).await;
    let mut watch_b = watch(&mut replicas[1].client("erin"), &connected, 0).await;
    wait_for_state(&mut watch_b, InteractionState::Delivered).await;
    let mut all_on_c = watch_all(&mut replicas[2].client("erin")).await;

    let killed = std::time::Instant::now();
    replicas[0].kill9();
    let ended = until(&mut watch_b, |e| e.state == InteractionState::WrapUp as i32).await;
    let last = ended.last().expect("an event");
    let took = killed.elapsed();
    eprintln!(
        "takeover: the call ended with SERVER_RESTART {took:?} after kill -9 (lease {LEASE})"
    );
    let snapshot = last.interaction.as_ref().expect("snapshot");
    assert_eq!(snapshot.end_reason, EndReason::ServerRestart as i32);
    assert!(
        snapshot.end_detail.contains("another took it over"),
        "{snapshot:?}"
    );
    // C's WatchInteractions saw both calls end.
    let mut ended_ids = BTreeSet::new();
    until(&mut all_on_c, |e| {
        if e.state == InteractionState::WrapUp as i32 {
            ended_ids.insert(e.interaction_id.clone());
        }
        ended_ids.len() == 2
    })
    .await;
    assert_eq!(
        ended_ids,
        BTreeSet::from([ringing.clone(), connected.clone()])
    );
    // The survivors own them now: completing works from either.
    for (id, replica) in [(&ringing, 1), (&connected, 2)] {
        let done = complete(&mut replicas[replica].client("erin"), id, "lost", "")
            .await
            .expect("complete on a survivor");
        assert_eq!(done.state, InteractionState::Completed as i32);
    }
}

/// How the replica holding the call goes away.
enum Gone {
    /// kill -9.
    Killed,
    /// SIGTERM with `--drain-calls-for 1s`: the drain runs out, the call is handed over.
    Drained,
}

/// The replica that holds a connected SIP call goes (`gone`): the survivor recovers it (an
/// event marked `recovered`, docs/api.md §8.3) and its EndCall sends BYE on both legs from the
/// stored dialogs (SIPp passes only if each phone got its BYE in its dialog, and none before).
async fn a_survivor_recovers_the_connected_sip_call(gone: Gone) {
    let mut deployment = Deployment::new(PgCluster::shared());
    let agent = Sipp::uas("agent_answer.xml").start();
    let customer = Sipp::uas("customer_answer.xml").start();
    let sip: Vec<String> = [
        "--telephony",
        "sip",
        "--sip-listen",
        "127.0.0.1:0",
        "--sip-agent-uri",
        &agent.uri("{agent}"),
        "--sip-trunk",
        &format!("sip:{}", customer.uri_host()),
        "--sip-keepalive-interval",
        "off",
        "--drain-calls-for",
        "1s",
    ]
    .iter()
    .map(|f| f.to_string())
    .collect();
    let mut a = deployment.sip_replica(&sip).await;
    let b = deployment.sip_replica(&sip).await;
    let (id, _, _) = call_until(
        &mut a.client("alice"),
        "+12025550100",
        InteractionState::Delivered,
    )
    .await;
    let mut on_b = watch(&mut b.client("alice"), &id, 0).await;
    wait_for_state(&mut on_b, InteractionState::Delivered).await;

    match gone {
        Gone::Killed => a.kill9(),
        Gone::Drained => {
            let status = a.sigterm().await;
            assert!(status.success(), "{status:?}\n{}", a.stderr_text());
            assert!(
                a.stderr_text()
                    .contains("calls still live after --drain-calls-for; handing them over"),
                "{}",
                a.stderr_text()
            );
        }
    }
    let events = until(&mut on_b, |e| e.recovered).await;
    let recovered = events.last().expect("the recovered event");
    assert_eq!(
        recovered.state,
        InteractionState::Delivered as i32,
        "{events:#?}"
    );
    let ended = end(&mut b.client("alice"), &id)
        .await
        .expect("EndCall on the survivor");
    assert_eq!(ended.end_reason, EndReason::AgentHangup as i32);
    // Each phone got one BYE, and from the survivor's SIP port: the replica that went did not
    // hang up.
    let survivor = format!("SIP/2.0/UDP 127.0.0.1:{}", sip_port(&b));
    for phone in [agent, customer] {
        let verdict = phone.finish_async(Duration::from_secs(15)).await;
        verdict.assert_passed(1);
        let byes: Vec<&String> = verdict
            .received
            .iter()
            .filter(|m| m.starts_with("BYE "))
            .collect();
        assert_eq!(byes.len(), 1, "{byes:#?}");
        assert!(
            byes[0].contains(&survivor),
            "not from {survivor}: {}",
            byes[0]
        );
    }
}

/// The SIP port a server's log says it listens on.
fn sip_port(server: &ServerProcess) -> String {
    let log = server.stderr_text();
    let marker = "SIP switch listening local=127.0.0.1:";
    let at = log.find(marker).expect("the SIP listen line") + marker.len();
    log[at..].chars().take_while(char::is_ascii_digit).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_survivor_recovers_a_killed_replicas_connected_sip_call_and_ends_it() {
    a_survivor_recovers_the_connected_sip_call(Gone::Killed).await;
}

/// A deploy's SIGTERM whose drain runs out hands the call over (no BYE) instead of hanging up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_that_runs_out_hands_the_connected_sip_call_to_a_survivor() {
    a_survivor_recovers_the_connected_sip_call(Gone::Drained).await;
}

/// Live SIP calls of the rolling-restart test: as many as the issue asks for (docs/api.md
/// §8.3). Spread over three replicas, each restarted once.
const ROLLING_CALLS: usize = 50;

/// The open interactions of the replica listening on `addr`, read from PostgreSQL: which calls
/// its drain must hand over.
async fn owned_by(db: &tokio_postgres::Client, addr: &str) -> BTreeSet<String> {
    db.query(
        "SELECT i.id FROM interactions i JOIN replicas r ON r.node_id = i.owner
         WHERE r.address = $1 AND i.state <> 5",
        &[&addr],
    )
    .await
    .expect("the replica's interactions")
    .iter()
    .map(|row| row.get(0))
    .collect()
}

/// A Kubernetes rolling update of three replicas under 50 connected SIP calls: each replica in
/// turn gets SIGTERM with a short `--drain-calls-for`, its calls are handed over and recovered
/// by a survivor (the `recovered` event of each, docs/api.md §8.3), and it is started again (a
/// new process, as a new pod) before the next one goes. No call ends on the way; at the end
/// each is still DELIVERED, EndCall hangs each up, and both SIPp phones report every call
/// complete (each leg got its one BYE, none before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_three_replicas_under_50_live_sip_calls_drops_none() {
    let began = std::time::Instant::now();
    let mut deployment = Deployment::new(PgCluster::shared());
    let db = postgres::connect(&deployment.url).await;
    // The calls wait for calldesk's BYE through the whole rolling update.
    let agent = Sipp::uas("agent_answer.xml")
        .calls(ROLLING_CALLS as u64)
        .timeout(Duration::from_secs(60))
        .start();
    let customer = Sipp::uas("customer_answer.xml")
        .calls(ROLLING_CALLS as u64)
        .timeout(Duration::from_secs(60))
        .start();
    let max_calls = ROLLING_CALLS.to_string();
    let sip: Vec<String> = [
        "--telephony",
        "sip",
        "--sip-listen",
        "127.0.0.1:0",
        "--sip-agent-uri",
        &agent.uri("{agent}"),
        "--sip-trunk",
        &format!("sip:{}", customer.uri_host()),
        "--sip-keepalive-interval",
        "off",
        "--max-active-calls",
        &max_calls,
        "--drain-calls-for",
        "200ms",
    ]
    .iter()
    .map(|f| f.to_string())
    .collect();
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(deployment.sip_replica(&sip).await);
    }

    // ROLLING_CALLS calls, started at once, round-robin over the replicas, all connected.
    let mut all = watch_all(&mut replicas[0].client("alice")).await;
    let mut starts = tokio::task::JoinSet::new();
    for n in 0..ROLLING_CALLS {
        let mut client = replicas[n % 3].client("alice");
        starts.spawn(async move { start_call(&mut client, NUM_OK).await });
    }
    let mut ids = BTreeSet::new();
    while let Some(id) = starts.join_next().await {
        ids.insert(id.expect("a StartCall task"));
    }
    let mut connected = BTreeSet::new();
    // 50 set-ups of two legs each: 7 s here with the machine loaded (load average 10).
    wait_for(&mut all, Duration::from_secs(30), |e| {
        assert_ne!(e.state, InteractionState::WrapUp as i32, "{e:#?}");
        if e.state == InteractionState::Delivered as i32 {
            connected.insert(e.interaction_id.clone());
        }
        connected.len() == ROLLING_CALLS
    })
    .await;
    assert_eq!(connected, ids);
    eprintln!(
        "rolling restart: {ROLLING_CALLS} calls connected after {:?}",
        began.elapsed()
    );

    for n in 0..3 {
        let addr = replicas[n].addr().to_owned();
        let held = owned_by(&db, &addr).await;
        assert!(!held.is_empty(), "replica {n} holds none of the calls");
        // Watched on a replica that stays up this round.
        let mut on_survivor = watch_all(&mut replicas[(n + 1) % 3].client("alice")).await;
        let status = replicas[n].sigterm().await;
        assert!(
            status.success(),
            "{status:?}\n{}",
            replicas[n].stderr_text()
        );
        let mut recovered = BTreeSet::new();
        wait_for(&mut on_survivor, TAKEOVER_WAIT, |e| {
            assert_ne!(
                e.state,
                InteractionState::WrapUp as i32,
                "a call ended: {e:#?}"
            );
            if e.recovered {
                assert_eq!(e.state, InteractionState::Delivered as i32, "{e:#?}");
                recovered.insert(e.interaction_id.clone());
            }
            recovered.is_superset(&held)
        })
        .await;
        assert_eq!(
            recovered, held,
            "only the drained replica's calls are recovered"
        );
        eprintln!(
            "rolling restart: replica {n}'s {} calls recovered by {:?}",
            held.len(),
            began.elapsed()
        );
        replicas[n] = deployment.sip_replica(&sip).await;
    }

    let live = list_all(
        &mut replicas[0].client("alice"),
        InteractionState::Delivered,
    )
    .await;
    let live: BTreeSet<String> = live.into_iter().map(|i| i.id).collect();
    assert_eq!(live, ids, "every call is still live");
    let mut ends = tokio::task::JoinSet::new();
    for (n, id) in ids.iter().enumerate() {
        let mut client = replicas[n % 3].client("alice");
        let id = id.clone();
        ends.spawn(async move { end(&mut client, &id).await });
    }
    while let Some(ended) = ends.join_next().await {
        let ended = ended.expect("an EndCall task").expect("EndCall");
        assert_eq!(ended.end_reason, EndReason::AgentHangup as i32);
    }
    // Each call's phones got exactly one BYE, EndCall's: no replica hung up as it went. (A
    // BYE is told by its Call-ID and CSeq: a retransmission on a loaded machine is the same.)
    for phone in [agent, customer] {
        let verdict = phone.finish_async(Duration::from_secs(15)).await;
        verdict.assert_passed(ROLLING_CALLS as u64);
        let byes = verdict
            .received
            .iter()
            .filter(|m| m.starts_with("BYE "))
            .map(|m| (header(m, "Call-ID"), header(m, "CSeq")))
            .collect::<BTreeSet<_>>()
            .len();
        assert_eq!(byes, ROLLING_CALLS, "{} got {byes} BYEs", verdict.scenario);
    }
    eprintln!("rolling restart: done in {:?}", began.elapsed());
}

/// A SIP message's header `name` (case-insensitive, compact forms aside), trimmed.
fn header<'m>(message: &'m str, name: &str) -> Option<&'m str> {
    message.lines().find_map(|line| {
        let (n, value) = line.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_paused_past_its_lease_is_fenced_and_writes_nothing() {
    /// A's no-answer timer: due while A is paused, after B has taken A's call over.
    const NO_ANSWER: Duration = Duration::from_secs(3);
    let mut deployment = Deployment::new(PgCluster::shared());
    // A's call rings for 3 s, then A's switch reports NO_ANSWER: a write A must not make once
    // it has been taken over.
    let mut a = deployment.replica(&["--sim-no-answer", "3s"]).await;
    let b = deployment.replica(&[]).await;
    let mut on_a = a.client("frank");
    let dialed = tokio::time::Instant::now();
    let id = start_call(&mut on_a, NUM_NO_ANSWER).await;
    let mut on_b = watch(&mut b.client("frank"), &id, 0).await;
    wait_for_state(&mut on_b, InteractionState::DeliveryPending).await;

    process::send_signal(a.pid(), "-STOP");
    wait_until_stopped(a.pid()).await;
    // A StartCall sent to A while it is paused: A reads it when it comes back.
    let mut paused = on_a.clone();
    let queued = tokio::spawn(async move { try_start(&mut paused, start_req(NUM_OK)).await });
    let taken = until(&mut on_b, |e| e.state == InteractionState::WrapUp as i32).await;
    let restart = taken.last().expect("an event").clone();
    assert_eq!(
        restart.interaction.as_ref().map(|i| i.end_reason),
        Some(EndReason::ServerRestart as i32)
    );
    // A stays paused until its no-answer timer is due (A cannot be asked: it is stopped), so
    // that, back, it has both a NO_ANSWER and the queued StartCall to write at once.
    tokio::time::sleep_until(dialed + NO_ANSWER + Duration::from_millis(500)).await;
    process::send_signal(a.pid(), "-CONT");
    let status = a.wait_exit(TAKEOVER_WAIT).await;
    assert!(
        !status.success(),
        "a fenced replica exits with an error: {status:?}"
    );
    let stderr = a.stderr_text();
    assert!(stderr.contains("fenced"), "{stderr}");
    // The StartCall A took after it came back: refused with the reason, nothing created.
    let refused = tokio::time::timeout(WAIT, queued)
        .await
        .expect("the queued StartCall is answered")
        .expect("its task")
        .expect_err("a fenced replica acknowledges nothing");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert_error_info(&refused, "STORE_FENCED");
    let all = list_all(&mut b.client("frank"), InteractionState::Unspecified).await;
    assert_eq!(
        all.len(),
        1,
        "A created nothing after its takeover: {all:#?}"
    );

    // Everything after the takeover is B's: complete it there, and the history shows no
    // NO_ANSWER and no event between SERVER_RESTART and COMPLETED.
    let done = complete(&mut b.client("frank"), &id, "", "")
        .await
        .expect("complete on B");
    assert_eq!(done.sequence, restart.sequence + 1);
    let mut history = watch(&mut b.client("frank"), &id, 0).await;
    let events = collect_until_completed(&mut history, WAIT).await;
    assert_eq!(sequences(&events), (1..=done.sequence).collect::<Vec<_>>());
    assert!(
        events.iter().all(|e| e
            .interaction
            .as_ref()
            .is_none_or(|i| i.end_reason != EndReason::NoAnswer as i32)),
        "the fenced replica wrote nothing: {events:#?}"
    );
}

/// A write as the call manager submits it: event `sequence` of `id` (agent "fenced").
fn write_of(id: &str, sequence: u64, token: u32) -> calldesk::store::Write<u32> {
    use calldesk::proto::{CallProgress, Interaction};
    use prost::Message;
    let state = if sequence == 1 {
        InteractionState::DeliveryPending
    } else {
        InteractionState::WrapUp
    };
    let event = calldesk::proto::InteractionEvent {
        interaction_id: id.into(),
        sequence,
        state: state as i32,
        previous_state: if sequence == 1 {
            InteractionState::Unspecified as i32
        } else {
            InteractionState::DeliveryPending as i32
        },
        progress: CallProgress::Dialing as i32,
        time: None,
        interaction: Some(Interaction {
            id: id.into(),
            agent_id: "fenced".into(),
            state: state as i32,
            sequence,
            ..Default::default()
        }),
        recovered: false,
    };
    let payload = bytes::Bytes::from(event.encode_to_vec());
    let event = std::sync::Arc::new(event);
    let op = if sequence == 1 {
        calldesk::store::WriteOp::Create {
            event,
            payload,
            idempotency: None,
            clear_dialpad: None,
            reservation: None,
        }
    } else {
        calldesk::store::WriteOp::Append {
            event,
            payload,
            transfer_key: None,
        }
    };
    calldesk::store::Write {
        token,
        op,
        span: tracing::Span::none(),
    }
}

/// The store itself, below the process: once this replica's lease row is gone (another
/// replica took it over), its writer commits nothing, a new interaction or an event, however
/// long before its own lease keeper would notice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writer_commits_nothing_once_its_lease_row_is_gone() {
    use calldesk::store::{self, postgres::Settings, StoreFault};
    let url = PgCluster::shared().database();
    let (store, writer_conn, _recovered, replica) = store::open_postgres(Settings {
        url: url.clone(),
        advertise_address: "127.0.0.1:9".into(),
        // The keeper renews at once, then not for 20 s: only the writer can notice in time.
        lease: Duration::from_secs(60),
        retention: Duration::from_secs(86_400),
    })
    .await
    .expect("open the store");
    let (completions_tx, mut completions) = tokio::sync::mpsc::channel(16);
    let writer = store::start_writer(writer_conn, 16, store::MAX_BATCH, completions_tx);
    let mut commit = async |write| {
        writer.submit(write).expect("the writer takes it");
        tokio::time::timeout(WAIT, completions.recv())
            .await
            .expect("a completion")
            .expect("the writer runs")
            .result
    };
    commit(write_of("fence-1", 1, 1))
        .await
        .expect("a write while the lease is held");

    let db = postgres::connect(&url).await;
    let deleted = db
        .execute(
            "DELETE FROM replicas WHERE node_id = $1",
            &[&replica.node_id()],
        )
        .await
        .expect("delete the replica's row");
    assert_eq!(deleted, 1);
    for (what, write) in [
        ("an event", write_of("fence-1", 2, 2)),
        ("a new interaction", write_of("fence-2", 1, 3)),
    ] {
        let refused = commit(write)
            .await
            .expect_err(&format!("{what} written after the lease row is gone"));
        assert_eq!(
            refused.fault,
            Some(StoreFault::Fenced),
            "{what}: {refused:?}"
        );
        assert!(refused.message.contains("has no lease"), "{refused:?}");
    }
    assert!(store.faults().has(StoreFault::Fenced));
    let events: i64 = db
        .query_one(
            "SELECT count(*) FROM events WHERE interaction_id IN ('fence-1', 'fence-2')",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(events, 1, "only the write made under the lease");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_mid_load_loses_no_acknowledged_call_or_event() {
    let cluster = PgCluster::start();
    let mut deployment = Deployment::new(&cluster);
    // One agent's calls, all connected at once: no active-call limit in the way.
    let replicas = deployment
        .replicas(2, &["--max-active-calls", "1000"])
        .await;
    let addrs: Vec<String> = replicas.iter().map(|r| r.addr().to_owned()).collect();

    // Four clients, 30 StartCalls each with its own request_id, retried on UNAVAILABLE with
    // the same request_id (bounded: 200 tries, 20 s), alternating replicas.
    let mut load = Vec::new();
    for worker in 0..4 {
        let addrs = addrs.clone();
        load.push(tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            let mut unavailable = 0;
            for n in 0..30 {
                let key = format!("load-{worker}-{n}");
                let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
                for attempt in 0..200 {
                    let mut c = client(&addrs[(n + attempt) % addrs.len()], "grace");
                    match try_start(&mut c, start_req_id(NUM_OK, &key)).await {
                        Ok(response) => {
                            acknowledged.push(response);
                            break;
                        }
                        Err(s) if s.code() == Code::Unavailable => {
                            unavailable += 1;
                            assert!(tokio::time::Instant::now() < deadline, "{key}: {s:?}");
                            // A client's backoff before it retries with the same request_id.
                            tokio::time::sleep(RETRY_BACKOFF).await;
                        }
                        Err(s) => panic!("{key}: {s:?}"),
                    }
                }
            }
            (acknowledged, unavailable)
        }));
    }
    // Mid-load: PostgreSQL stops (fast shutdown, as a restart does) and starts again.
    let mut first = client(&addrs[0], "grace");
    wait_for_interactions(&mut first, 10).await;
    cluster.stop_fast().await;
    let refused = try_start(&mut first, start_req(NUM_OK))
        .await
        .expect_err("no StartCall is acknowledged while PostgreSQL is down");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert_error_info(&refused, "STORE_UNREACHABLE");
    cluster.start_again().await;

    let mut acknowledged = Vec::new();
    let mut unavailable = 0;
    for worker in load {
        let (acks, refusals) = worker.await.expect("load worker");
        acknowledged.extend(acks);
        unavailable += refusals;
    }
    eprintln!(
        "PostgreSQL restart: {} StartCalls acknowledged, {unavailable} UNAVAILABLE answers retried",
        acknowledged.len()
    );
    assert_eq!(acknowledged.len(), 120);
    for addr in &addrs {
        wait_for_health(
            addr,
            "",
            tonic_health::pb::health_check_response::ServingStatus::Serving,
            TAKEOVER_WAIT,
        )
        .await;
    }
    // Every acknowledged call is there, on both replicas, with every event it had.
    let ids: BTreeSet<String> = acknowledged
        .iter()
        .map(|r| r.interaction_id.clone().expect("an interaction"))
        .collect();
    assert_eq!(ids.len(), 120, "one interaction per request_id");
    for addr in &addrs {
        let listed = list_all(&mut client(addr, "grace"), InteractionState::Unspecified).await;
        let listed: BTreeSet<String> = listed.into_iter().map(|i| i.id).collect();
        assert!(
            ids.is_subset(&listed),
            "an acknowledged call is missing on {addr}"
        );
    }
    for response in acknowledged.iter().take(20) {
        let id = response.interaction_id.clone().expect("id");
        let acked = response.interaction.as_ref().expect("snapshot").sequence;
        let stored = get(&mut client(&addrs[1], "grace"), &id)
            .await
            .expect("get");
        assert!(stored.sequence >= acked);
    }
}

/// Waits until the agent has at least `n` interactions (the load is under way).
async fn wait_for_interactions(client: &mut Client, n: usize) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let listed = list_all(client, InteractionState::Unspecified).await;
        if listed.len() >= n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the load did not start"
        );
        tokio::time::sleep(RETRY_BACKOFF).await;
    }
}

/// `calldesk serve` on `url` with a peer token, run to its exit: for refusals at start-up.
fn serve_to_exit(url: &str, dir: &std::path::Path) -> process::Finished {
    std::fs::create_dir_all(dir).expect("a dir for the refused server");
    let token = postgres::write_peer_token(dir);
    let args = process::serve_args_for(
        Store::Sqlite,
        "127.0.0.1:0",
        &dir.join("data"),
        &[
            "--database-url",
            url,
            "--peer-token-file",
            token.to_str().expect("utf-8 path"),
        ],
    );
    process::run_to_exit(args, WAIT)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schema_is_made_once_by_replicas_starting_at_once_and_a_newer_one_is_refused() {
    let cluster = PgCluster::shared();
    // Three replicas on an empty database at once: one creates the schema, none fails.
    let deployment = Deployment::new(cluster);
    let (a, b, c) = tokio::join!(
        deployment_replica(&deployment, 1),
        deployment_replica(&deployment, 2),
        deployment_replica(&deployment, 3)
    );
    let id = start_call(&mut a.client("hank"), NUM_OK).await;
    get(&mut c.client("hank"), &id).await.expect("one store");
    drop((a, b, c));

    // A schema newer than this calldesk: refused, untouched.
    let db = postgres::connect(&deployment.url).await;
    db.batch_execute("UPDATE calldesk_schema SET version = 99")
        .await
        .expect("a newer schema");
    let dir = tempfile::tempdir().expect("temp dir");
    let url = deployment.url.clone();
    let path = dir.path().to_owned();
    let refused = tokio::task::spawn_blocking(move || serve_to_exit(&url, &path))
        .await
        .expect("serve");
    assert!(!refused.status.success());
    assert!(
        refused
            .stderr
            .contains("written by a newer calldesk (schema version 99"),
        "{}",
        refused.stderr
    );
    let version: i32 = db
        .query_one("SELECT version FROM calldesk_schema", &[])
        .await
        .expect("version")
        .get(0);
    assert_eq!(version, 99, "left as it was");

    // A database with tables named like calldesk's but no calldesk_schema: not calldesk's.
    let foreign = cluster.database();
    postgres::connect(&foreign)
        .await
        .batch_execute("CREATE TABLE interactions (id INTEGER)")
        .await
        .expect("a foreign table");
    let path = dir.path().join("foreign");
    let refused = tokio::task::spawn_blocking(move || serve_to_exit(&foreign, &path))
        .await
        .expect("serve");
    assert!(!refused.status.success());
    assert!(
        refused.stderr.contains("it is not a calldesk store"),
        "{}",
        refused.stderr
    );
}

/// Replica `n` of `deployment`, started beside others (the deployment is only read).
async fn deployment_replica(deployment: &Deployment, n: usize) -> ServerProcess {
    let data_dir = deployment.dir.path().join(format!("replica-{n}"));
    let flags = [
        "--database-url",
        &deployment.url,
        "--peer-token-file",
        deployment.token.to_str().expect("utf-8 path"),
        "--lease-duration",
        LEASE,
    ];
    let args = process::serve_args_for(
        Store::Sqlite,
        "127.0.0.1:0",
        &data_dir,
        &process::fast_flags(&flags),
    );
    ServerProcess::start_command(BIN.into(), args).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dial_staged_retried_on_another_replica_gets_the_first_response() {
    use calldesk::proto::{DialStagedRequest, StartCallOutcome};
    let dial = |request_id: &str| DialStagedRequest {
        request_id: request_id.into(),
    };
    let mut deployment = Deployment::new(PgCluster::shared());
    let replicas = deployment.replicas(2, &["--deferred-dial"]).await;
    let (mut a, mut b) = (replicas[0].client("ivy"), replicas[1].client("ivy"));
    let staged = start_ok(&mut a, start_req(NUM_NO_ANSWER)).await;
    assert_eq!(staged.outcome, StartCallOutcome::Deferred as i32);
    let first = a
        .dial_staged(dial("dial-1"))
        .await
        .expect("DialStaged on A")
        .into_inner();
    assert_eq!(first.outcome, StartCallOutcome::Started as i32);
    // The dialpad is clear now; B replays A's response for the same key, and dials nothing.
    let again = b
        .dial_staged(dial("dial-1"))
        .await
        .expect("DialStaged retried on B")
        .into_inner();
    assert_eq!(again, first);
    let status = b.dial_staged(dial("")).await.expect_err("nothing staged");
    assert_eq!(status.code(), Code::FailedPrecondition);
    let all = list_all(&mut b, InteractionState::Unspecified).await;
    assert_eq!(all.len(), 1, "one call: {all:#?}");
}

/// Issue 22: a replica whose LISTEN connection breaks keeps serving, and says so: its
/// WatchInteractions streams end with UNAVAILABLE naming the lost link (not "shutting down"),
/// with the hint to watch again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_notification_link_ends_agent_watches_saying_what_happened() {
    let mut deployment = Deployment::new(PgCluster::shared());
    let replica = deployment.replica(&[]).await;
    let mut client = replica.client("alice");
    let mut watch = watch_all(&mut client).await;
    let id = start_call(&mut client, NUM_OK).await;
    wait_for(&mut watch, WAIT, |e| e.interaction_id == id).await;

    let db = postgres::connect(&deployment.url).await;
    let cut = db
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = current_database() AND query LIKE 'LISTEN %'",
            &[],
        )
        .await
        .expect("terminate the replica's listening connection");
    assert_eq!(cut, 1, "the replica listens on one connection");
    let status = loop {
        match tokio::time::timeout(WAIT, watch.message()).await {
            Ok(Ok(Some(_))) => {}
            Ok(Err(status)) => break status,
            other => panic!("the watch should end with a status: {other:?}"),
        }
    };
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let message = status.message();
    assert!(
        !message.contains("shutting down") && message.contains("notification"),
        "the message says what happened: {message:?}"
    );
    assert!(message.contains("watch again"), "{message:?}");
    // The replica serves on.
    get(&mut client, &id)
        .await
        .expect("GetInteraction after the link broke");
}

/// WatchInteractions has no history even while the replica's notifications lag behind the
/// store: events committed before the stream opened, whose notifications had not reached the
/// replica yet, never arrive on it. The lag is made certain by stopping the PostgreSQL backend
/// that delivers the replica's notifications while a call is written and read from the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_opened_while_notifications_lag_gets_nothing_committed_before_it() {
    let mut deployment = Deployment::new(PgCluster::shared());
    let replica = deployment.replica(&[]).await;
    let mut client = replica.client("alice");
    let db = postgres::connect(&deployment.url).await;
    let listener: i32 = db
        .query_one(
            "SELECT pid FROM pg_stat_activity
             WHERE datname = current_database() AND query LIKE 'LISTEN %'",
            &[],
        )
        .await
        .expect("the replica's listening backend")
        .get(0);
    let listener = listener as u32;
    /// Lets the backend go on whatever happens, or it would hold its notifications for ever.
    struct Resume(u32);
    impl Drop for Resume {
        fn drop(&mut self) {
            process::send_signal(self.0, "-CONT");
        }
    }
    // What the replica will be notified of, seen as it commits.
    let (_db_listening, mut notified) = postgres::listen(&deployment.url, "calldesk_events").await;
    process::send_signal(listener, "-STOP");
    let resume = Resume(listener);
    wait_until_stopped(listener).await;

    // Committed and read back from the store (GetInteraction: a watch would wait for the
    // notifications); its notifications wait in the stopped backend.
    let before = start_call(&mut client, NUM_BUSY).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while get(&mut client, &before)
        .await
        .expect("GetInteraction")
        .state
        != InteractionState::WrapUp as i32
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{before} never reached WRAP_UP"
        );
        tokio::time::sleep(RETRY_BACKOFF).await;
    }
    let mut opening = {
        let mut client = client.clone();
        tokio::spawn(async move { watch_all(&mut client).await })
    };
    // The backend goes on once the stream is open, or once the replica has committed something
    // else than the call's events (what it may need to open the stream).
    let opened = tokio::time::timeout(WAIT, async {
        loop {
            tokio::select! {
                opened = &mut opening => break Some(opened.expect("WatchInteractions opens")),
                payload = notified.recv() => {
                    let payload = payload.expect("the test's LISTEN connection");
                    if !payload.contains(&before) {
                        break None;
                    }
                }
            }
        }
    })
    .await
    .expect("WatchInteractions neither opened nor notified anything");
    drop(resume);
    let mut all = match opened {
        Some(all) => all,
        None => opening.await.expect("WatchInteractions opens"),
    };
    let after = start_call(&mut client, NUM_BUSY).await;
    let events = wait_for(&mut all, WAIT, |e| e.interaction_id == after).await;
    let ids: Vec<&str> = events.iter().map(|e| e.interaction_id.as_str()).collect();
    assert_eq!(
        ids,
        [after.as_str()],
        "nothing of {before}, committed before WatchInteractions opened"
    );
}

/// Waits (bounded) until every thread of `pid` is stopped (state `T` in /proc): a SIGSTOP is
/// delivered to each thread as it is next scheduled, and a busy machine may run one a little
/// after kill(1) has returned.
async fn wait_until_stopped(pid: u32) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("/proc/PID/task");
        let running = tasks.filter_map(|t| t.ok()).any(|t| {
            std::fs::read_to_string(t.path().join("stat")).is_ok_and(|stat| {
                let state = stat
                    .rsplit_once(") ")
                    .and_then(|(_, rest)| rest.chars().next());
                !matches!(state, Some('T' | 't'))
            })
        });
        if !running {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{pid} not stopped within {WAIT:?}"
        );
        tokio::time::sleep(RETRY_BACKOFF).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operation_on_a_paused_owner_is_owner_unavailable_and_never_carried_out() {
    let mut deployment = Deployment::new(PgCluster::shared());
    let mut a = deployment.replica(&[]).await;
    let b = deployment.replica(&[]).await;
    let id = start_call(&mut a.client("gina"), NUM_OK).await;
    let mut on_b = b.client("gina");
    let mut watching = watch(&mut on_b, &id, 0).await;
    let connected = wait_for_state(&mut watching, InteractionState::Delivered).await;

    // A stops answering; an EndCall through B waits for it, until A is taken over.
    process::send_signal(a.pid(), "-STOP");
    wait_until_stopped(a.pid()).await;
    let asked = std::time::Instant::now();
    let refused = tokio::time::timeout(
        TAKEOVER_WAIT,
        on_b.end_call(calldesk::proto::EndCallRequest {
            interaction_id: id.clone(),
        }),
    )
    .await
    .expect("EndCall through B answers within the takeover")
    .expect_err("the owner never answered");
    eprintln!(
        "EndCall through B, owner paused: {:?} after {:?}",
        refused.code(),
        asked.elapsed()
    );
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert_error_info(&refused, "OWNER_UNAVAILABLE");

    // Back, A reads the forwarded EndCall, and carries nothing out: it was fenced.
    process::send_signal(a.pid(), "-CONT");
    let status = a.wait_exit(TAKEOVER_WAIT).await;
    assert!(!status.success(), "A was fenced: {status:?}");
    let events = wait_for(&mut watching, WAIT, |e| {
        e.state == InteractionState::WrapUp as i32
    })
    .await;
    let ended = events.last().expect("the takeover's event").clone();
    let snapshot = ended.interaction.expect("snapshot");
    assert_eq!(
        snapshot.end_reason,
        EndReason::ServerRestart as i32,
        "{snapshot:?}"
    );
    let now = get(&mut on_b, &id).await.expect("GetInteraction");
    assert_eq!(
        (now.sequence, now.end_reason),
        (ended.sequence, EndReason::ServerRestart as i32),
        "nothing after the takeover: the EndCall was not carried out ({connected:?})"
    );
}

/// Adds the given metadata to every request (a client posing as a replica, or as an agent).
#[derive(Clone)]
struct Metadata(Vec<(&'static str, String)>);

impl tonic::service::Interceptor for Metadata {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        for (name, value) in &self.0 {
            request
                .metadata_mut()
                .insert(*name, value.parse().expect("an ASCII value"));
        }
        Ok(request)
    }
}

type RawClient = calldesk::proto::interaction_service_client::InteractionServiceClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Metadata>,
>;

/// A metadata entry: its name and value.
type Header<'a> = (&'static str, &'a str);

fn with_metadata(addr: &str, metadata: &[Header]) -> RawClient {
    calldesk::proto::interaction_service_client::InteractionServiceClient::with_interceptor(
        endpoint(addr).connect_lazy(),
        Metadata(metadata.iter().map(|(n, v)| (*n, v.to_string())).collect()),
    )
}

/// The hop between replicas (docs/api.md §11): only the deployment's peer secret in
/// `x-calldesk-peer` makes `x-agent-id` name the agent; anything else there is UNAUTHENTICATED
/// and creates nothing, and a server without `--peer-token-file` takes no forwarded request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_peer_secret_lets_x_agent_id_name_the_agent() {
    use sha2::{Digest, Sha256};
    let mut deployment = Deployment::new(PgCluster::shared());
    let token = "alices-bearer-token-of-the-peer-hop-test";
    let hash: String = Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let tokens = deployment.dir.path().join("tokens");
    std::fs::write(&tokens, format!("alice {hash}\n")).expect("the token file");
    let replica = deployment
        .replica(&["--auth-tokens", tokens.to_str().expect("utf-8")])
        .await;
    let addr = replica.addr().to_owned();
    let secret = std::fs::read_to_string(&deployment.token).expect("the peer secret");
    let secret = secret.trim();
    let bearer = format!("Bearer {token}");

    // What each request carries, and the words of its refusal.
    let forged: [(&str, Vec<Header>, &str); 4] = [
        (
            "x-agent-id alone",
            vec![("x-agent-id", "mallory")],
            "bearer token",
        ),
        (
            "a wrong secret",
            vec![
                ("x-calldesk-peer", "not-the-secret"),
                ("x-agent-id", "mallory"),
            ],
            "x-calldesk-peer is not this deployment's peer secret",
        ),
        (
            "an empty secret",
            vec![("x-calldesk-peer", ""), ("x-agent-id", "mallory")],
            "x-calldesk-peer is not this deployment's peer secret",
        ),
        (
            "a wrong secret beside a valid bearer token",
            vec![
                ("authorization", &bearer),
                ("x-calldesk-peer", "not-the-secret"),
                ("x-agent-id", "mallory"),
            ],
            "x-calldesk-peer is not this deployment's peer secret",
        ),
    ];
    for (what, metadata, message) in forged {
        let status = with_metadata(&addr, &metadata)
            .start_call(start_req(NUM_OK))
            .await
            .expect_err(what);
        assert_eq!(status.code(), Code::Unauthenticated, "{what}: {status:?}");
        assert!(status.message().contains(message), "{what}: {status:?}");
    }
    // Nothing was created, for mallory or for alice.
    let as_peer = |agent: &'static str| {
        with_metadata(&addr, &[("x-calldesk-peer", secret), ("x-agent-id", agent)])
    };
    let listed = |mut client: RawClient| async move {
        client
            .list_interactions(calldesk::proto::ListInteractionsRequest::default())
            .await
            .expect("ListInteractions")
            .into_inner()
            .interactions
    };
    assert!(listed(as_peer("mallory")).await.is_empty());
    assert!(listed(with_metadata(&addr, &[("authorization", &bearer)]))
        .await
        .is_empty());
    // The secret itself does name the agent (how the replicas forward): the same request with
    // it creates the call, so the refusals above were the secret's doing.
    as_peer("mallory")
        .start_call(start_req(NUM_OK))
        .await
        .expect("a request with the peer secret");
    assert_eq!(listed(as_peer("mallory")).await.len(), 1);

    // A server without --peer-token-file (SQLite, development mode) takes no forwarded request,
    // whatever secret it carries.
    let dir = tempfile::tempdir().expect("temp dir");
    let single = ServerProcess::start_command(
        BIN.into(),
        process::serve_args_for(Store::Sqlite, "127.0.0.1:0", dir.path(), &process::FAST_SIM),
    )
    .await;
    let status = with_metadata(
        single.addr(),
        &[("x-calldesk-peer", secret), ("x-agent-id", "bob")],
    )
    .start_call(start_req(NUM_OK))
    .await
    .expect_err("a forwarded request to a server without peers");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(
        status
            .message()
            .contains("this server takes no forwarded requests"),
        "{status:?}"
    );
    assert!(
        list_all(&mut single.client("bob"), InteractionState::Unspecified)
            .await
            .is_empty()
    );
}

/// A TLS client of a replica serving `--tls-cert` with mutual TLS: trusts `ca` and presents a
/// certificate it signed.
fn tls_client(addr: &str, ca: &pki::Ca, identity: &pki::Leaf, agent: &str) -> Client {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca.pem()))
        .identity(Identity::from_pem(&identity.cert, &identity.key));
    let channel = Endpoint::from_shared(format!("https://{addr}"))
        .expect("endpoint")
        .connect_timeout(WAIT)
        .tls_config(tls)
        .expect("client TLS")
        .connect_lazy();
    client_on(channel, Some(agent))
}

/// Issue 33: replicas serving TLS (mutual TLS here) on a PostgreSQL reached over TLS forward to
/// each other over TLS, presenting their own certificates; one that does not trust the others'
/// CA (`--peer-ca`) cannot forward, and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_serving_tls_forward_over_tls_and_a_wrong_peer_ca_cannot() {
    let mut deployment = Deployment::new(PgCluster::shared_tls());
    let dir = deployment.dir.path().to_owned();
    let ca = pki::Ca::new("calldesk replicas CA");
    let (cert, key) = ca
        .leaf("localhost", &["localhost", "127.0.0.1"])
        .write(&dir, "replica");
    let ca_file = pki::write(&dir, "replicas-ca.pem", ca.pem());
    let agent_cert = ca.leaf("agent-desktop", &["agent-desktop"]);
    let path = |p: &std::path::Path| p.to_str().expect("utf-8 path").to_owned();
    let (cert, key, ca_file) = (path(&cert), path(&key), path(&ca_file));
    let tls_flags = [
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--tls-client-ca",
        &ca_file,
    ];
    let replicas = deployment.replicas(3, &tls_flags).await;
    let on = |n: usize| tls_client(replicas[n].addr(), &ca, &agent_cert, "uma");
    let (mut a, mut b, mut c) = (on(0), on(1), on(2));
    let id = start_call(&mut a, NUM_OK).await;
    let mut on_b = watch(&mut b, &id, 0).await;
    wait_for_state(&mut on_b, InteractionState::Delivered).await;
    // A owns it: each of these is forwarded to A over TLS.
    let held = hold(&mut c, &id).await.expect("HoldCall on C");
    assert_eq!(held.state, InteractionState::Hold as i32);
    let ended = end(&mut b, &id).await.expect("EndCall on B");
    assert_eq!(ended.state, InteractionState::WrapUp as i32);
    let done = complete(&mut c, &id, "sale", "")
        .await
        .expect("CompleteInteraction on C");
    assert_eq!(done.state, InteractionState::Completed as i32);

    // D trusts another CA for its peers: it serves, but cannot reach A.
    let other_ca = pki::write(&dir, "other-ca.pem", pki::Ca::new("another CA").pem());
    let other_ca = path(&other_ca);
    let mut flags = tls_flags.to_vec();
    flags.extend(["--peer-ca", other_ca.as_str()]);
    let d = deployment.replica(&flags).await;
    let id = start_call(&mut a, NUM_OK).await;
    let mut on_d = tls_client(d.addr(), &ca, &agent_cert, "uma");
    let status = end(&mut on_d, &id).await.expect_err("D cannot reach A");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_error_info(&status, "OWNER_UNAVAILABLE");
    assert!(
        status.message().contains(replicas[0].addr())
            && status.message().contains("unknown CA: check --peer-ca"),
        "the detail names the owner and what failed: {:?}",
        status.message()
    );
    // Nothing changed, and A still ends it.
    let now = get(&mut on_d, &id).await.expect("GetInteraction on D");
    assert_ne!(now.state, InteractionState::WrapUp as i32);
    end(&mut a, &id).await.expect("EndCall on A");
}

/// Webhooks (docs/api.md §12), to a real receiver (support/webhook_receiver.rs): each event is
/// delivered by one replica; the one killed with
/// requests in flight is taken over, and a survivor delivers its backlog from the stored
/// cursors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_deliver_each_event_once_and_a_killed_replicas_backlog_is_taken_over() {
    let receiver = Receiver::start().await;
    let mut deployment = Deployment::new(PgCluster::shared());
    let hooks = deployment.dir.path().join("webhooks");
    write_hooks(&hooks, &[hook("crm", "*", &receiver.url("/crm"))]);
    let hooks = hooks.to_str().expect("utf-8").to_owned();
    let replicas = deployment
        .replicas(
            3,
            &[
                "--webhooks",
                &hooks,
                "--webhook-allow-private",
                // Held requests must not time out and be sent again: only a kill may
                // duplicate one.
                "--webhook-timeout",
                "60s",
                "--wrap-up-timeout",
                "200ms",
            ],
        )
        .await;
    let mut replicas = replicas;
    let mut ids = Vec::new();
    // Calls on each replica; every request is held, so each has a backlog.
    receiver.hold(true);
    let mut on_first = Vec::new();
    for (n, replica) in replicas.iter().enumerate() {
        let mut client = replica.client(&format!("agent-{n}"));
        let (live, _, _) = call_until(&mut client, NUM_OK, InteractionState::Delivered).await;
        let busy = start_call(&mut client, NUM_BUSY).await;
        if n == 0 {
            on_first = vec![live.clone(), busy.clone()];
        }
        ids.push(live);
        ids.push(busy);
    }
    receiver
        .wait_until(
            "a request in flight from the first replica",
            DELIVERY_WAIT,
            |s| {
                s.requests
                    .iter()
                    .any(|r| on_first.contains(&r.interaction_id))
            },
        )
        .await;
    replicas[0].kill9();
    receiver
        .wait_until("requests in flight from the others", DELIVERY_WAIT, |s| {
            ids.iter()
                .filter(|id| !on_first.contains(id))
                .all(|id| s.requests.iter().any(|r| &r.interaction_id == id))
        })
        .await;
    let in_flight: BTreeSet<String> = receiver.state(|s| {
        s.requests
            .iter()
            .filter(|r| r.answered == 0 && on_first.contains(&r.interaction_id))
            .map(|r| r.webhook_id.clone())
            .collect()
    });
    receiver.hold(false);
    // The survivors end the live calls they own; the killed replica's live call ends by its
    // takeover (SERVER_RESTART), and everything completes by the wrap-up timeout.
    for (n, replica) in replicas.iter().enumerate().skip(1) {
        let mut client = replica.client(&format!("agent-{n}"));
        end(&mut client, &ids[2 * n]).await.expect("EndCall");
    }
    receiver
        .wait_until(
            "every interaction completed",
            Duration::from_secs(60),
            |s| ids.iter().all(|id| s.completed("/crm", id)),
        )
        .await;

    let mut expected = BTreeMap::new();
    for pair in ids.chunks(2) {
        // Connected: dialing, ringing, connected, wrap-up (EndCall, or SERVER_RESTART for
        // the killed replica's), completed. Busy: dialing, wrap-up, completed.
        expected.insert(pair[0].clone(), vec![1, 2, 3, 4, 5]);
        expected.insert(pair[1].clone(), vec![1, 2, 3]);
    }
    assert_delivered(&receiver, "/crm", &expected, &in_flight);
    let restarted = receiver.state(|s| {
        s.requests
            .iter()
            .any(|r| r.interaction_id == on_first[0] && r.sequence == 4)
    });
    assert!(
        restarted,
        "the taken-over call's SERVER_RESTART event is delivered"
    );
}
