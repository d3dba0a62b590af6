//! Status callbacks (`--webhooks`, docs/api.md §12) to a real HTTP receiver
//! (support/webhook_receiver.rs: a hyper server on 127.0.0.1 in the test, which checks every
//! request's Standard Webhooks signature with the hmac crate and the order per interaction). It
//! fails the first attempts, goes away for a while and comes back, and holds requests in flight
//! while the server is killed. At the end nothing is missing, nothing is out of order, and the
//! only duplicates are requests that were in flight at a kill, with the same `webhook-id`.
//!
//! `calldesk serve` runs as a child process (kill -9, SIGHUP) on the store `CALLDESK_TEST_STORE`
//! names: SQLite, or PostgreSQL, where the restarted server is a new replica that claims the
//! killed one's cursors. Three replicas: tests/replicas.rs.

mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use calldesk::proto::InteractionState;
use support::{
    pki, postgres,
    process::{self, ServerProcess},
    webhook_receiver::{assert_delivered, hook, write_hooks, Receiver, DELIVERY_WAIT},
    *,
};

/// Signed and in order; a subscription added on SIGHUP starts from now; the first
/// attempts fail; the receiver goes away and comes back; the server is killed with requests
/// in flight and resumes from its cursors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_arrives_signed_in_order_through_failures_an_outage_and_a_kill_9() {
    let mut receiver = Receiver::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let hooks = dir.path().join("webhooks");
    write_hooks(&hooks, &[hook("alices", "alice", &receiver.url("/alices"))]);
    let hooks_arg = hooks.to_str().expect("utf-8").to_owned();
    let data = dir.path().join("data");
    let flags = [
        "--webhooks",
        &hooks_arg,
        "--webhook-allow-private",
        "--wrap-up-timeout",
        "100ms",
    ];
    let mut server = ServerProcess::start(&data, &process::fast_flags(&flags)).await;
    let (mut alice, mut bob) = (server.client("alice"), server.client("bob"));

    // Bob's call is connected before "all" exists: "all" gets only what follows.
    let (bobs, _, _) = call_until(&mut bob, NUM_OK, InteractionState::Delivered).await;
    write_hooks(
        &hooks,
        &[
            hook("alices", "alice", &receiver.url("/alices")),
            hook("all", "*", &receiver.url("/all")),
        ],
    );
    process::send_signal(server.pid(), "-HUP");
    let deadline = tokio::time::Instant::now() + WAIT;
    while !server
        .stderr_text()
        .contains("webhooks: delivering subscription=all")
    {
        assert!(tokio::time::Instant::now() < deadline, "no reload");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    end(&mut bob, &bobs).await.expect("EndCall");

    // The first attempts fail.
    receiver.fail_next(3);
    let mut alices = Vec::new();
    for _ in 0..3 {
        alices.push(start_call(&mut alice, NUM_BUSY).await);
    }
    receiver
        .wait_until("the first calls", DELIVERY_WAIT, |s| {
            alices
                .iter()
                .all(|id| s.completed("/alices", id) && s.completed("/all", id))
        })
        .await;
    assert!(receiver.state(|s| s.requests.iter().any(|r| r.answered == 500)));

    // The receiver goes away while calls go on, and comes back.
    receiver.go_away();
    let during: Vec<String> = {
        let mut ids = Vec::new();
        for _ in 0..3 {
            ids.push(start_call(&mut alice, NUM_BUSY).await);
        }
        ids
    };
    for id in &during {
        let mut stream = watch(&mut alice, id, 0).await;
        collect_until_completed(&mut stream, WAIT).await;
    }
    receiver.come_back().await;
    alices.extend(during);
    receiver
        .wait_until("the backlog of the outage", DELIVERY_WAIT, |s| {
            alices
                .iter()
                .all(|id| s.completed("/alices", id) && s.completed("/all", id))
        })
        .await;

    // Killed with requests in flight: they are sent again, and nothing else is.
    receiver.hold(true);
    let killed_during = start_call(&mut alice, NUM_BUSY).await;
    receiver
        .wait_until("a request in flight", DELIVERY_WAIT, |s| {
            s.requests.iter().any(|r| r.interaction_id == killed_during)
        })
        .await;
    server.kill9();
    let in_flight: BTreeSet<String> = receiver.state(|s| {
        s.requests
            .iter()
            .filter(|r| r.answered == 0)
            .map(|r| r.webhook_id.clone())
            .collect()
    });
    // Also in flight for the server: each (subscription, interaction)'s last event answered 2xx
    // with nothing after it requested yet, whose cursor move may not have been durable at the
    // kill (the next event goes only after it is). Such an event may be sent again too.
    let may_come_again: BTreeSet<String> = receiver.state(|s| {
        let mut last: std::collections::BTreeMap<
            (&str, &str),
            &support::webhook_receiver::Received,
        > = Default::default();
        for r in &s.requests {
            let at = last
                .entry((r.path.as_str(), r.interaction_id.as_str()))
                .or_insert(r);
            if r.sequence > at.sequence {
                *at = r;
            }
        }
        last.values()
            .filter(|r| r.answered == 204)
            .map(|r| r.webhook_id.clone())
            .chain(in_flight.iter().cloned())
            .collect()
    });
    receiver.hold(false);
    let server = ServerProcess::start(&data, &process::fast_flags(&flags)).await;
    alices.push(killed_during);
    receiver
        .wait_until("the deliveries after the restart", DELIVERY_WAIT, |s| {
            alices
                .iter()
                .all(|id| s.completed("/alices", id) && s.completed("/all", id))
        })
        .await;
    assert!(
        receiver.state(|s| {
            in_flight
                .iter()
                .all(|id| s.requests.iter().filter(|r| &r.webhook_id == id).count() >= 2)
        }),
        "the requests in flight at the kill ({in_flight:?}) are sent again"
    );

    let mut expected: BTreeMap<String, Vec<u64>> = alices
        .iter()
        .map(|id| (id.clone(), vec![1, 2, 3]))
        .collect();
    assert_delivered(&receiver, "/alices", &expected, &may_come_again);
    // "all" started after bob's third event, and covers alice too.
    expected.insert(bobs.clone(), vec![4, 5]);
    assert_delivered(&receiver, "/all", &expected, &may_come_again);
    drop(server);
}

/// An event still failing `--webhook-retry-for` after it happened is dropped with its
/// interaction's backlog (ERROR log, metric); the metrics exist from the start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_failing_past_retry_for_is_dropped_with_an_error_and_a_metric() {
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let hooks = dir.path().join("webhooks");
    write_hooks(&hooks, &[hook("crm", "*", &receiver.url("/crm"))]);
    let metrics_addr = free_addr();
    let metrics_arg = metrics_addr.to_string();
    let server = ServerProcess::start(
        &dir.path().join("data"),
        &process::fast_flags(&[
            "--webhooks",
            hooks.to_str().expect("utf-8"),
            "--webhook-allow-private",
            "--webhook-retry-for",
            "1s",
            "--metrics-listen",
            &metrics_arg,
        ]),
    )
    .await;
    let metrics = String::from_utf8(get_metrics(metrics_addr, WAIT).await).expect("utf-8");
    for name in ["delivered_total", "retried_total", "dropped_total"] {
        assert!(
            metrics.contains(&format!(
                "calldesk_webhook_{name}{{subscription=\"crm\"}} 0"
            )),
            "{name} at zero from the start:\n{metrics}"
        );
    }
    assert!(metrics.contains("calldesk_webhook_lag_seconds{subscription=\"crm\"} 0"));

    receiver.fail_next(usize::MAX);
    let mut alice = server.client("alice");
    let (dropped, _, _) = call_until(&mut alice, NUM_OK, InteractionState::Delivered).await;
    let deadline = tokio::time::Instant::now() + DELIVERY_WAIT;
    while !server
        .stderr_text()
        .contains("dropping this interaction's undelivered events")
    {
        assert!(tokio::time::Instant::now() < deadline, "nothing dropped");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = server.stderr_text();
    assert!(log.contains("ERROR") && log.contains(&dropped), "{log}");
    assert!(!log.contains("MfKQ9r8G"), "the secret is never logged");
    // Counted once the cursor's move past them is durable: dialing, ringing, connected.
    loop {
        let metrics = String::from_utf8(get_metrics(metrics_addr, WAIT).await).expect("utf-8");
        let dropped_count = metrics
            .lines()
            .find_map(|l| l.strip_prefix("calldesk_webhook_dropped_total{subscription=\"crm\"} "))
            .and_then(|v| v.trim().parse::<f64>().ok());
        if dropped_count == Some(3.0) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline && dropped_count == Some(0.0),
            "{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The receiver recovers: the interaction's next events are delivered again.
    receiver.fail_next(0);
    end(&mut alice, &dropped).await.expect("EndCall");
    receiver
        .wait_until("the events after the drop", DELIVERY_WAIT, |s| {
            s.requests
                .iter()
                .any(|r| r.interaction_id == dropped && r.sequence == 4 && r.answered == 204)
        })
        .await;
    let problems = receiver.state(|s| s.problems.clone());
    assert!(problems.is_empty(), "{problems:#?}");
}

/// A receiver that is down is probed by one request at a time, however many interactions
/// wait (docs/api.md §12): 40 interactions' events during an outage cost a few attempts per
/// backoff, not an attempt per interaction; once it answers, every backlog is delivered in
/// order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_is_probed_by_one_request_not_one_per_waiting_interaction() {
    const WAITING: usize = 40;
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let hooks = dir.path().join("webhooks");
    write_hooks(&hooks, &[hook("crm", "*", &receiver.url("/crm"))]);
    let server = ServerProcess::start(
        &dir.path().join("data"),
        &process::fast_flags(&[
            "--webhooks",
            hooks.to_str().expect("utf-8"),
            "--webhook-allow-private",
            "--wrap-up-timeout",
            "10ms",
        ]),
    )
    .await;
    receiver.answer("/crm", Some(503));
    // An agent each (an agent's active calls are limited).
    let mut ids = Vec::new();
    for n in 0..WAITING {
        let mut agent = server.client(&format!("agent-{n}"));
        let id = start_call(&mut agent, NUM_BUSY).await;
        let mut stream = watch(&mut agent, &id, 0).await;
        collect_until_completed(&mut stream, WAIT).await;
        ids.push(id);
    }
    let refused = || receiver.state(|s| s.requests.iter().filter(|r| r.answered == 503).count());
    receiver
        .wait_until("the outage's first refusals", DELIVERY_WAIT, |s| {
            s.requests.iter().any(|r| r.answered == 503)
        })
        .await;
    // A window of the outage (not a synchronisation): each interaction retrying on its own
    // would make an attempt per interaction in it (their backoffs are below 2 s by then).
    let before = refused();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let attempts = refused() - before;
    assert!(
        attempts < WAITING / 4,
        "{attempts} attempts in 2 s of an outage with {WAITING} interactions waiting"
    );

    receiver.answer("/crm", None);
    receiver
        .wait_until("the backlog after the outage", DELIVERY_WAIT, |s| {
            ids.iter().all(|id| s.completed("/crm", id))
        })
        .await;
    let expected: BTreeMap<String, Vec<u64>> =
        ids.iter().map(|id| (id.clone(), vec![1, 2, 3])).collect();
    assert_delivered(&receiver, "/crm", &expected, &BTreeSet::new());
    drop(server);
}

/// Independence (docs/api.md §12): a dead endpoint (500s), one that redirects (307, never
/// followed) and a slow interaction (held past `--webhook-timeout`, sent again with the same
/// `webhook-id`) hold up nothing else: another subscription, and the slow one's other
/// interactions, get every event meanwhile; each gets its backlog once it recovers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_endpoint_a_redirect_and_a_slow_interaction_hold_up_nothing_else() {
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let hooks = dir.path().join("webhooks");
    let paths = ["/live", "/dead", "/moved"];
    let lines: Vec<String> = paths
        .iter()
        .map(|p| hook(p.trim_start_matches('/'), "*", &receiver.url(p)))
        .collect();
    write_hooks(&hooks, &lines);
    let server = ServerProcess::start(
        &dir.path().join("data"),
        &process::fast_flags(&[
            "--webhooks",
            hooks.to_str().expect("utf-8"),
            "--webhook-allow-private",
            "--webhook-timeout",
            "500ms",
            "--wrap-up-timeout",
            "100ms",
        ]),
    )
    .await;
    receiver.answer("/dead", Some(500));
    receiver.answer("/moved", Some(307));
    receiver.hold_agent(Some(("/live", "slow")));
    let slow = start_call(&mut server.client("slow"), NUM_BUSY).await;
    let mut alice = server.client("alice");
    let fast = [
        start_call(&mut alice, NUM_BUSY).await,
        start_call(&mut alice, NUM_BUSY).await,
    ];
    receiver
        .wait_until(
            "alice's calls on /live, while the rest fails or waits",
            DELIVERY_WAIT,
            |s| {
                let attempts = |path: &str, id: &str| {
                    s.requests
                        .iter()
                        .filter(|r| r.path == path && r.interaction_id == id)
                        .count()
                };
                fast.iter().all(|id| s.completed("/live", id))
                    && attempts("/live", &slow) >= 2
                    && attempts("/dead", &fast[1]) >= 2
                    && attempts("/moved", &fast[1]) >= 2
            },
        )
        .await;
    receiver.state(|s| {
        let on_live: Vec<&support::webhook_receiver::Received> = s
            .requests
            .iter()
            .filter(|r| r.path == "/live" && r.interaction_id == slow)
            .collect();
        assert!(
            on_live.iter().all(|r| r.sequence == 1 && r.answered == 0),
            "the slow interaction's event 2 waits for event 1's 2xx: {on_live:#?}"
        );
        assert!(
            !s.requests.iter().any(|r| r.path == "/redirected"),
            "a redirect is never followed"
        );
    });

    // They recover: every backlog is delivered, in order, once (but the slow interaction's
    // first event, sent again after each timeout).
    receiver.answer("/dead", None);
    receiver.answer("/moved", None);
    receiver.hold_agent(None);
    let ids = [slow.clone(), fast[0].clone(), fast[1].clone()];
    receiver
        .wait_until("every backlog", DELIVERY_WAIT, |s| {
            paths
                .iter()
                .all(|p| ids.iter().all(|id| s.completed(p, id)))
        })
        .await;
    let expected: BTreeMap<String, Vec<u64>> =
        ids.iter().map(|id| (id.clone(), vec![1, 2, 3])).collect();
    let timed_out = BTreeSet::from([format!("{slow}:1")]);
    for path in paths {
        assert_delivered(&receiver, path, &expected, &timed_out);
    }
    assert!(receiver.state(|s| !s.requests.iter().any(|r| r.path == "/redirected")));
    drop(server);
}

/// The subscriptions are registered before the server listens, so a call placed as soon as it
/// listens is delivered. (A server that listened first took calls whose interactions got no
/// cursor, and so never a callback: a CI run saw it.) On PostgreSQL the test holds the advisory
/// lock that registrations take: while the server's registration waits for it, the server
/// does not say it listens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_placed_as_soon_as_the_server_listens_is_delivered() {
    /// The lock `webhook_subscribe` takes ("CDKW", src/store/postgres/webhooks.rs).
    const SUBSCRIBE_LOCK: i64 = 0x4344_4B57;
    /// How long the server is watched not listening while its registration waits.
    const NOT_LISTENING_FOR: Duration = Duration::from_secs(1);
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let hooks = dir.path().join("webhooks");
    write_hooks(&hooks, &[hook("crm", "*", &receiver.url("/crm"))]);
    let data = dir.path().join("data");
    let flags: Vec<String> = process::fast_flags(&[
        "--webhooks",
        hooks.to_str().expect("utf-8"),
        "--webhook-allow-private",
        "--wrap-up-timeout",
        "100ms",
    ])
    .into_iter()
    .map(str::to_owned)
    .collect();
    let start = {
        let (data, flags) = (data.clone(), flags.clone());
        move || {
            tokio::spawn(async move {
                let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
                ServerProcess::start(&data, &flags).await
            })
        }
    };
    let server = if Store::from_env() == Store::Postgres {
        let store = process::store_flags(Store::Postgres, &data);
        let url = store[1].to_str().expect("utf-8").to_owned();
        let holder = postgres::connect(&url).await;
        holder
            .execute("SELECT pg_advisory_lock($1)", &[&SUBSCRIBE_LOCK])
            .await
            .expect("take the registrations' lock");
        let mut starting = start();
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let waiting: i64 = holder
                .query_one(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted",
                    &[],
                )
                .await
                .expect("pg_locks")
                .get(0);
            if waiting > 0 {
                break;
            }
            assert!(
                !starting.is_finished(),
                "the server listened before it registered the subscriptions"
            );
            assert!(
                tokio::time::Instant::now() < deadline,
                "the server never asked for the registrations' lock"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let listened = tokio::time::timeout(NOT_LISTENING_FOR, &mut starting).await;
        assert!(
            listened.is_err(),
            "the server listened while its registration waited for the lock"
        );
        holder
            .execute("SELECT pg_advisory_unlock($1)", &[&SUBSCRIBE_LOCK])
            .await
            .expect("release the registrations' lock");
        starting.await.expect("the server's start")
    } else {
        start().await.expect("the server's start")
    };
    let id = start_call(&mut server.client("alice"), NUM_BUSY).await;
    receiver
        .wait_until("the first call's events", DELIVERY_WAIT, |s| {
            s.completed("/crm", &id)
        })
        .await;
    let expected = BTreeMap::from([(id, vec![1, 2, 3])]);
    assert_delivered(&receiver, "/crm", &expected, &BTreeSet::new());
}

/// https is verified against the system's roots: a receiver whose certificate a test CA signed
/// gets every event from a server whose roots hold that CA (`SSL_CERT_FILE`, which
/// rustls-native-certs reads in place of the system's store), and nothing from one whose roots
/// do not: its attempts fail with the reason in the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_callbacks_are_verified_against_the_system_roots() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = pki::Ca::new("webhook receivers' CA");
    let ca_file = pki::write(dir.path(), "ca.pem", ca.pem());
    let receiver = Receiver::start_tls(&ca.leaf("receiver", &["127.0.0.1"])).await;
    let hooks = dir.path().join("webhooks");
    write_hooks(&hooks, &[hook("crm", "*", &receiver.url("/crm"))]);
    let start = |name: &str, roots: Option<&std::path::Path>| {
        let mut args: Vec<std::ffi::OsString> = Vec::new();
        if let Some(roots) = roots {
            args.push(format!("SSL_CERT_FILE={}", roots.display()).into());
        }
        args.push(process::BIN.into());
        args.extend(process::serve_args(
            &dir.path().join(name),
            &process::fast_flags(&[
                "--webhooks",
                hooks.to_str().expect("utf-8"),
                "--webhook-allow-private",
                "--wrap-up-timeout",
                "100ms",
            ]),
        ));
        ServerProcess::start_command("env".into(), args)
    };
    let trusting = start("trusting", Some(&ca_file)).await;
    let trusted = start_call(&mut trusting.client("alice"), NUM_BUSY).await;
    receiver
        .wait_until("the events over https", DELIVERY_WAIT, |s| {
            s.completed("/crm", &trusted)
        })
        .await;
    let expected = BTreeMap::from([(trusted.clone(), vec![1, 2, 3])]);
    assert_delivered(&receiver, "/crm", &expected, &BTreeSet::new());

    let system_only = start("system-only", None).await;
    let refused = start_call(&mut system_only.client("bob"), NUM_BUSY).await;
    let deadline = tokio::time::Instant::now() + DELIVERY_WAIT;
    while !system_only.stderr_text().contains("UnknownIssuer") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no certificate failure logged:\n{}",
            system_only.stderr_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(receiver.state(|s| !s.requests.iter().any(|r| r.interaction_id == refused)));
}
