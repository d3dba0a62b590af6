//! Trunk pacing (`--sip-max-calls`, `--sip-pacing-wait`) on the simulated switch, which honours
//! it as SIP does: a call over the limit waits in line and goes when a place frees, or fails
//! TRUNK_BUSY with RetryInfo past the wait; and with three replicas on PostgreSQL, the limit is
//! the deployment's, shared among the live replicas and shared again when one is taken over.
//! A real trunk (SIPp) pushing back with 503 and Retry-After pauses the dials and lowers the rate.

mod support;

use std::time::Duration;

use calldesk::proto::{EndReason, InteractionState, ListInteractionsRequest};
use support::{
    in_process::TestServer,
    postgres::{self, PgCluster},
    process::{self, ServerProcess, BIN},
    sipp::Sipp,
    *,
};
use tonic::Code;
use tonic_types::StatusExt;

fn assert_trunk_busy(status: &tonic::Status) {
    assert_code(status, Code::ResourceExhausted);
    assert_error_info(status, "TRUNK_BUSY");
    let retry = status
        .get_details_retry_info()
        .and_then(|r| r.retry_delay)
        .unwrap_or_else(|| panic!("no RetryInfo in {status:?}"));
    assert!(retry >= Duration::from_secs(1), "{retry:?}");
}

#[tokio::test]
async fn a_call_over_the_limit_waits_for_a_place_or_fails_trunk_busy() {
    let metrics = free_addr();
    let server = TestServer::start_with(|c| {
        c.metrics_listen = Some(metrics);
        c.sip_max_calls = Some(1);
        c.sip_pacing_wait = Duration::from_millis(600);
    })
    .await;
    let mut ann = server.client("ann");
    let first = start_call(&mut ann, NUM_OK).await;

    // Bob's call waits in line while Ann's is connected…
    let mut bob = server.client("bob");
    let waiting = tokio::spawn(async move { try_start(&mut bob, start_req(NUM_OK)).await });
    wait_for_metric(metrics, "calldesk_pacing_waiting 1", WAIT).await;
    assert!(!waiting.is_finished());
    // …and is dialed when Ann hangs up.
    end(&mut ann, &first).await.expect("end");
    let started = waiting.await.unwrap().expect("dialed once the place freed");
    let snapshot = started.interaction.expect("snapshot");
    assert_eq!(snapshot.state, InteractionState::DeliveryPending as i32);

    // Carol's waits the whole --sip-pacing-wait behind Bob's call, then gives up: nothing
    // exists for it.
    let mut carol = server.client("carol");
    let asked = tokio::time::Instant::now();
    let status = try_start(&mut carol, start_req(NUM_OK))
        .await
        .expect_err("no place within the wait");
    assert!(asked.elapsed() >= Duration::from_millis(600));
    assert_trunk_busy(&status);
    let carols = carol
        .list_interactions(ListInteractionsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .interactions;
    assert!(carols.is_empty(), "{carols:?}");
    wait_for_metric(
        metrics,
        "calldesk_pacing_refusals_total{why=\"waited_too_long\"} 1",
        WAIT,
    )
    .await;
}

/// Starts a replica of a deployment on `url` with trunk pacing and its own metrics port.
async fn replica(
    url: &str,
    token: &std::path::Path,
    dir: &std::path::Path,
    metrics: &str,
) -> ServerProcess {
    let flags = [
        "--database-url",
        url,
        "--peer-token-file",
        token.to_str().unwrap(),
        "--lease-duration",
        "2s",
        "--sim-no-answer",
        "60s",
        "--sip-max-calls",
        "3",
        "--sip-pacing-wait",
        "300ms",
        "--metrics-listen",
        metrics,
    ];
    let args = process::serve_args_for(
        Store::Sqlite,
        "127.0.0.1:0",
        dir,
        &process::fast_flags(&flags),
    );
    ServerProcess::start_command(BIN.into(), args).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_share_the_deployments_limit_and_reshare_after_a_takeover() {
    let dir = tempfile::tempdir().unwrap();
    let url = PgCluster::shared().database();
    let token = postgres::write_peer_token(dir.path());
    let metrics: Vec<std::net::SocketAddr> = (0..3).map(|_| free_addr()).collect();
    let mut replicas = Vec::new();
    for (i, m) in metrics.iter().enumerate() {
        let data = dir.path().join(format!("replica-{i}"));
        replicas.push(replica(&url, &token, &data, &m.to_string()).await);
    }
    // Each sees three live replicas: one call of the deployment's three each.
    for m in &metrics {
        wait_for_metric(*m, "calldesk_pacing_max_calls 1", Duration::from_secs(15)).await;
    }
    for (i, r) in replicas.iter().enumerate() {
        start_call(&mut r.client(&format!("agent{i}")), NUM_NO_ANSWER).await;
    }
    // A fourth call, on any replica, finds the deployment at its limit.
    let status = try_start(&mut replicas[1].client("late"), start_req(NUM_NO_ANSWER))
        .await
        .expect_err("the deployment's three calls are ringing");
    assert_trunk_busy(&status);

    // The first replica dies with its call; the survivors share the three places again
    // (2 + 1), and the one with two places dials one more.
    replicas[0].kill9();
    let mut with_two = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while with_two.is_none() {
        assert!(tokio::time::Instant::now() < deadline, "no reshare");
        for (i, addr) in metrics.iter().enumerate().skip(1) {
            let scrape = String::from_utf8_lossy(&get_metrics(*addr, WAIT).await).into_owned();
            if scrape.lines().any(|l| l == "calldesk_pacing_max_calls 2") {
                with_two = Some(i);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let i = with_two.unwrap();
    start_call(&mut replicas[i].client("after"), NUM_NO_ANSWER).await;
    let other = 3 - i;
    assert_trunk_busy(
        &try_start(
            &mut replicas[other].client("after2"),
            start_req(NUM_NO_ANSWER),
        )
        .await
        .expect_err("the other survivor's one place is taken"),
    );
}

#[tokio::test]
async fn a_trunk_answering_503_with_retry_after_pauses_the_dials_and_halves_the_rate() {
    let agent = Sipp::uas("agent_answer.xml").calls(2).start();
    let trunk = Sipp::uas("customer_pushback.xml").calls(2).start();
    // A process of its own: the metrics recorder is global to a process, and the other test
    // of this file has one in this one.
    let metrics = free_addr();
    let (template, trunk_uri) = (agent.uri("{agent}"), format!("sip:{}", trunk.uri_host()));
    let dir = tempfile::tempdir().unwrap();
    let metrics_flag = metrics.to_string();
    let server = ServerProcess::start(
        &dir.path().join("data"),
        &[
            "--telephony",
            "sip",
            "--sip-listen",
            "127.0.0.1:0",
            "--sip-agent-uri",
            &template,
            "--sip-trunk",
            &trunk_uri,
            "--sip-keepalive-interval",
            "off",
            "--metrics-listen",
            &metrics_flag,
            "--sip-max-cps",
            "10",
        ],
    )
    .await;
    let mut client = server.client("agent-7");

    // The first call meets the 503: it fails, and the trunk asked for 2 s of quiet.
    let first = start_call(&mut client, NUM_OK).await;
    let mut stream = watch(&mut client, &first, 0).await;
    let events = wait_for_state(&mut stream, InteractionState::WrapUp).await;
    let pushed_back = tokio::time::Instant::now();
    let ended = events.last().and_then(|e| e.interaction.clone()).unwrap();
    assert_eq!(ended.end_reason, EndReason::Failed as i32);
    assert!(ended.end_detail.contains("503"), "{ended:?}");
    wait_for_metric(metrics, "calldesk_pacing_rate 5", WAIT).await;
    wait_for_metric(metrics, "calldesk_trunk_pushbacks_total 1", WAIT).await;

    // The next dial waits out the Retry-After before the agent's phone is called (the
    // switch acknowledges at the phone's first answer): at least most of the 2 s.
    start_call(&mut client, NUM_OK).await;
    let waited = pushed_back.elapsed();
    assert!(
        waited >= Duration::from_millis(1500),
        "dialed after {waited:?}"
    );
    agent
        .finish_async(Duration::from_secs(15))
        .await
        .assert_passed(2);
    trunk
        .finish_async(Duration::from_secs(15))
        .await
        .assert_passed(2);
}
