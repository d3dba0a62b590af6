//! Status callbacks (`--webhooks`, docs/api.md §12) to a real HTTP receiver: a hyper server
//! on 127.0.0.1 in the test, which checks every request's Standard Webhooks signature (with
//! the hmac crate, not calldesk's code) and the order per interaction, fails the first
//! attempts, goes away for a while and comes back, and holds requests in flight while the
//! server is killed. At the end nothing is missing, nothing is out of order, and the only
//! duplicates are requests that were in flight at a kill, with the same `webhook-id`.
//!
//! `calldesk serve` runs as a child process (kill -9, SIGHUP): on SQLite, and as three
//! replicas on a throw-away PostgreSQL cluster.

mod support;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use base64::{engine::general_purpose::STANDARD, Engine};
use bytes::Bytes;
use calldesk::proto::InteractionState;
use hmac::{KeyInit, Mac};
use http_body_util::{BodyExt, Full};
use support::{
    postgres::{self, PgCluster},
    process::{self, ServerProcess, BIN},
    *,
};
use tokio::{net::TcpListener, sync::watch, task::JoinSet};

/// The Standard Webhooks specification's example secret.
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// How long deliveries may take here at most: retries after an outage (the backoff doubles
/// from 250 ms), a restart, a takeover, on a loaded CI machine.
const DELIVERY_WAIT: Duration = Duration::from_secs(30);

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Received {
    /// The subscription's URL path.
    path: String,
    webhook_id: String,
    interaction_id: String,
    sequence: u64,
    state: String,
    /// The status answered; 0 while held (or never: the sender went away).
    answered: u16,
}

#[derive(Default)]
struct State {
    requests: Vec<Received>,
    /// Anything wrong: a bad signature, an event sent before the one before it got a 2xx.
    problems: Vec<String>,
    /// The next this many requests get a 500.
    fail_next: usize,
    /// Per (path, interaction): the highest sequence answered 2xx.
    acked: HashMap<(String, String), u64>,
}

impl State {
    /// The sequences received per interaction for `path`, in arrival order (duplicates kept).
    fn sequences(&self, path: &str) -> BTreeMap<String, Vec<u64>> {
        let mut seen: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for r in self.requests.iter().filter(|r| r.path == path) {
            seen.entry(r.interaction_id.clone())
                .or_default()
                .push(r.sequence);
        }
        seen
    }

    /// Whether `interaction` has its COMPLETED event answered 2xx on `path`.
    fn completed(&self, path: &str, interaction: &str) -> bool {
        self.requests.iter().any(|r| {
            r.path == path
                && r.interaction_id == interaction
                && r.state == "INTERACTION_STATE_COMPLETED"
                && r.answered == 204
        })
    }
}

struct Shared {
    key: Vec<u8>,
    state: Mutex<State>,
    /// Told of every request.
    arrived: tokio::sync::Notify,
    /// While true, requests are held unanswered.
    held: watch::Sender<bool>,
}

/// The receiver: an HTTP/1.1 server on a loopback port, which can go away and come back on
/// the same port.
struct Receiver {
    addr: SocketAddr,
    shared: Arc<Shared>,
    serving: Option<tokio::task::JoinHandle<()>>,
}

impl Receiver {
    async fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let key = STANDARD
            .decode(SECRET.trim_start_matches("whsec_"))
            .expect("base64");
        let shared = Arc::new(Shared {
            key,
            state: Mutex::new(State::default()),
            arrived: tokio::sync::Notify::new(),
            held: watch::channel(false).0,
        });
        let mut receiver = Receiver {
            addr: listener.local_addr().expect("addr"),
            shared,
            serving: None,
        };
        receiver.serve(listener);
        receiver
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn serve(&mut self, listener: TcpListener) {
        let shared = self.shared.clone();
        self.serving = Some(tokio::spawn(async move {
            // Dropped with this task: going away closes every connection too.
            let mut connections = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let shared = shared.clone();
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let shared = shared.clone();
                        async move { Ok::<_, Infallible>(handle(&shared, request).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        }));
    }

    /// Goes away: the port refuses connections and open ones are closed.
    fn go_away(&mut self) {
        if let Some(serving) = self.serving.take() {
            serving.abort();
        }
    }

    /// Comes back on the same port.
    async fn come_back(&mut self) {
        let listener = TcpListener::bind(self.addr).await.expect("rebind");
        self.serve(listener);
    }

    fn fail_next(&self, n: usize) {
        self.shared.state.lock().unwrap().fail_next = n;
    }

    fn hold(&self, held: bool) {
        self.shared.held.send_replace(held);
    }

    fn state<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        f(&self.shared.state.lock().unwrap())
    }

    /// Waits until `done` holds of what was received, within `timeout`.
    async fn wait_until(&self, what: &str, timeout: Duration, done: impl Fn(&State) -> bool) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let arrived = self.shared.arrived.notified();
            if self.state(&done) {
                return;
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                let requests = self.state(|s| s.requests.clone());
                panic!("{what}: not within {timeout:?}; received {requests:#?}");
            }
        }
    }
}

/// Checks one request, records it, answers it (204, or 500 while told to fail).
async fn handle(
    shared: &Shared,
    request: http::Request<hyper::body::Incoming>,
) -> http::Response<Full<Bytes>> {
    let path = request.uri().path().to_owned();
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
    let content_type = header("content-type");
    let body = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let mut problems = Vec::new();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&shared.key).expect("key");
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(&body);
    let expected = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
    if signature != expected {
        problems.push(format!(
            "{id}: signature {signature:?}, expected {expected:?}"
        ));
    }
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    if timestamp
        .parse::<u64>()
        .map_or(true, |t| t.abs_diff(now) > 300)
    {
        problems.push(format!("{id}: webhook-timestamp {timestamp:?} is not now"));
    }
    if content_type != "application/json" {
        problems.push(format!("{id}: content-type {content_type:?}"));
    }
    let event: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let interaction_id = event["interactionId"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let sequence: u64 = event["sequence"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    if id != format!("{interaction_id}:{sequence}") || sequence == 0 {
        problems.push(format!(
            "{id}: the body is event {interaction_id}:{sequence}"
        ));
    }
    // The same shape as WatchInteraction's events.
    let decoded: Result<calldesk::proto::InteractionEvent, _> = serde_json::from_slice(&body);
    if decoded.is_err() {
        problems.push(format!("{id}: not an InteractionEvent in proto3 JSON"));
    }
    let index = {
        let mut state = shared.state.lock().unwrap();
        let key = (path.clone(), interaction_id.clone());
        // Event n + 1 only after event n got a 2xx (the first one seen may be any: a
        // subscription starts from "now").
        if let Some(acked) = state.acked.get(&key) {
            if sequence > acked + 1 {
                problems.push(format!("{path} {id}: sent before {} got a 2xx", acked + 1));
            }
        }
        state.problems.extend(problems);
        state.requests.push(Received {
            path,
            webhook_id: id,
            interaction_id,
            sequence,
            state: event["state"].as_str().unwrap_or_default().to_owned(),
            answered: 0,
        });
        state.requests.len() - 1
    };
    shared.arrived.notify_waiters();
    let _ = shared.held.subscribe().wait_for(|held| !held).await;
    let status = {
        let mut state = shared.state.lock().unwrap();
        let status = if state.fail_next > 0 {
            state.fail_next -= 1;
            500
        } else {
            204
        };
        let r = &mut state.requests[index];
        r.answered = status;
        if status == 204 {
            let key = (r.path.clone(), r.interaction_id.clone());
            let sequence = r.sequence;
            let acked = state.acked.entry(key).or_default();
            *acked = (*acked).max(sequence);
        }
        status
    };
    shared.arrived.notify_waiters();
    http::Response::builder()
        .status(status)
        .body(Full::new(Bytes::new()))
        .expect("response")
}

/// Writes the webhooks file.
fn write_hooks(path: &std::path::Path, lines: &[String]) {
    std::fs::write(path, lines.join("\n") + "\n").expect("write webhooks file");
}

fn hook(name: &str, agents: &str, url: &str) -> String {
    format!("{name} agents={agents} url={url} secret={SECRET}")
}

/// Asserts that on `path` each interaction of `expected` got exactly the sequences given, in
/// order, each once, but for `in_flight` webhook-ids (sent again after a kill).
fn assert_delivered(
    receiver: &Receiver,
    path: &str,
    expected: &BTreeMap<String, Vec<u64>>,
    in_flight: &BTreeSet<String>,
) {
    let (problems, seen, requests) =
        receiver.state(|s| (s.problems.clone(), s.sequences(path), s.requests.clone()));
    assert!(problems.is_empty(), "the receiver found: {problems:#?}");
    let answered: Vec<&Received> = requests
        .iter()
        .filter(|r| r.path == path && r.answered == 204)
        .collect();
    for (interaction, sequences) in expected {
        let got: Vec<u64> = answered
            .iter()
            .filter(|r| &r.interaction_id == interaction)
            .map(|r| r.sequence)
            .collect();
        let mut deduplicated = got.clone();
        deduplicated.dedup();
        assert_eq!(
            &deduplicated,
            sequences,
            "{path}: {interaction} got {:?} (all attempts: {:?})",
            got,
            seen.get(interaction)
        );
        for r in answered.iter().filter(|r| &r.interaction_id == interaction) {
            let times = answered
                .iter()
                .filter(|o| o.webhook_id == r.webhook_id)
                .count();
            assert!(
                times == 1 || in_flight.contains(&r.webhook_id),
                "{path}: {} answered 2xx {times} times but was not in flight at a kill",
                r.webhook_id
            );
        }
    }
    let unexpected: Vec<&String> = seen.keys().filter(|i| !expected.contains_key(*i)).collect();
    assert!(
        unexpected.is_empty(),
        "{path}: unexpected interactions {unexpected:?}"
    );
}

/// On SQLite: signed and in order; a subscription added on SIGHUP starts from now; the first
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
    let mut server = ServerProcess::start_sqlite(&data, &process::fast_flags(&flags)).await;
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
    receiver.hold(false);
    let server = ServerProcess::start_sqlite(&data, &process::fast_flags(&flags)).await;
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
    assert_delivered(&receiver, "/alices", &expected, &in_flight);
    // "all" started after bob's third event, and covers alice too.
    expected.insert(bobs.clone(), vec![4, 5]);
    assert_delivered(&receiver, "/all", &expected, &in_flight);
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
    let server = ServerProcess::start_sqlite(
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

/// Three replicas on PostgreSQL: each event is delivered by one of them; the one killed with
/// requests in flight is taken over, and a survivor delivers its backlog from the stored
/// cursors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_deliver_each_event_once_and_a_killed_ones_backlog_is_taken_over() {
    let receiver = Receiver::start().await;
    let cluster = PgCluster::shared();
    let dir = tempfile::tempdir().expect("temp dir");
    let hooks = dir.path().join("webhooks");
    write_hooks(&hooks, &[hook("crm", "*", &receiver.url("/crm"))]);
    let token = postgres::write_peer_token(dir.path());
    let url = cluster.database();
    let mut replicas = Vec::new();
    for n in 0..3 {
        let flags = [
            "--database-url",
            &url,
            "--peer-token-file",
            token.to_str().expect("utf-8"),
            "--lease-duration",
            "2s",
            "--webhooks",
            hooks.to_str().expect("utf-8"),
            "--webhook-allow-private",
            // Held requests must not time out and be sent again: only a kill may duplicate.
            "--webhook-timeout",
            "60s",
            "--wrap-up-timeout",
            "200ms",
        ];
        let args = process::serve_args_for(
            Store::Sqlite,
            "127.0.0.1:0",
            &dir.path().join(format!("replica-{n}")),
            &process::fast_flags(&flags),
        );
        replicas.push(ServerProcess::start_command(BIN.into(), args).await);
    }
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
