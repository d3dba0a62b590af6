//! A webhook receiver for the tests of `--webhooks` (tests/webhooks.rs, tests/replicas.rs): a
//! hyper server on a loopback port that checks every request's Standard Webhooks signature
//! (with the hmac crate, not calldesk's code), its timestamp and body, and that an interaction's
//! event n + 1 never arrives before event n got a 2xx; it can fail requests, hold them
//! unanswered, go away (port closed, connections cut) and come back on the same port.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use base64::{engine::general_purpose::STANDARD, Engine};
use bytes::Bytes;
use hmac::{KeyInit, Mac};
use http_body_util::{BodyExt, Full};
use tokio::{net::TcpListener, sync::watch, task::JoinSet};
use tokio_rustls::{
    rustls::{
        self,
        pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
    },
    TlsAcceptor,
};

use super::pki;

/// The Standard Webhooks specification's example secret.
pub const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// How long deliveries may take here at most: retries after an outage (the backoff doubles
/// from 250 ms), a restart, a takeover, on a loaded CI machine.
pub const DELIVERY_WAIT: Duration = Duration::from_secs(30);

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    /// The subscription's URL path.
    pub path: String,
    pub webhook_id: String,
    pub interaction_id: String,
    pub sequence: u64,
    pub state: String,
    /// The status answered; 0 while held (or never: the sender went away).
    pub answered: u16,
}

#[derive(Default)]
pub struct State {
    pub requests: Vec<Received>,
    /// Anything wrong: a bad signature, an event sent before the one before it got a 2xx.
    pub problems: Vec<String>,
    /// The next this many requests get a 500.
    pub fail_next: usize,
    /// Per (path, interaction): the highest sequence answered 2xx.
    pub acked: HashMap<(String, String), u64>,
    /// Per path, the status answered instead of 204 (a dead endpoint's 500; a 307, sent with
    /// a `location` of `/redirected`, which a sender must not follow).
    pub answers: HashMap<String, u16>,
}

impl State {
    /// The sequences received per interaction for `path`, in arrival order (duplicates kept).
    pub fn sequences(&self, path: &str) -> BTreeMap<String, Vec<u64>> {
        let mut seen: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for r in self.requests.iter().filter(|r| r.path == path) {
            seen.entry(r.interaction_id.clone())
                .or_default()
                .push(r.sequence);
        }
        seen
    }

    /// Whether `interaction` has its COMPLETED event answered 2xx on `path`.
    pub fn completed(&self, path: &str, interaction: &str) -> bool {
        self.requests.iter().any(|r| {
            r.path == path
                && r.interaction_id == interaction
                && r.state == "INTERACTION_STATE_COMPLETED"
                && r.answered == 204
        })
    }
}

pub struct Shared {
    key: Vec<u8>,
    state: Mutex<State>,
    /// Told of every request.
    arrived: tokio::sync::Notify,
    /// While true, requests are held unanswered.
    held: watch::Sender<bool>,
    /// Requests on this path about this agent's interactions are held unanswered: a slow
    /// interaction.
    held_agent: watch::Sender<Option<(String, String)>>,
}

/// The receiver: an HTTP/1.1 server on a loopback port, which can go away and come back on
/// the same port.
pub struct Receiver {
    addr: SocketAddr,
    shared: Arc<Shared>,
    /// With `start_tls`: https with this certificate.
    tls: Option<TlsAcceptor>,
    serving: Option<tokio::task::JoinHandle<()>>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        Self::start_with(None).await
    }

    /// An https receiver presenting `leaf` (its URLs are `https://127.0.0.1:PORT/…`).
    pub async fn start_tls(leaf: &pki::Leaf) -> Receiver {
        let cert = CertificateDer::from_pem_slice(leaf.cert.as_bytes()).expect("cert PEM");
        let key = PrivateKeyDer::from_pem_slice(leaf.key.as_bytes()).expect("key PEM");
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .expect("TLS config");
        Self::start_with(Some(TlsAcceptor::from(Arc::new(config)))).await
    }

    async fn start_with(tls: Option<TlsAcceptor>) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let key = STANDARD
            .decode(SECRET.trim_start_matches("whsec_"))
            .expect("base64");
        let shared = Arc::new(Shared {
            key,
            state: Mutex::new(State::default()),
            arrived: tokio::sync::Notify::new(),
            held: watch::channel(false).0,
            held_agent: watch::channel(None).0,
        });
        let mut receiver = Receiver {
            addr: listener.local_addr().expect("addr"),
            shared,
            tls,
            serving: None,
        };
        receiver.serve(listener);
        receiver
    }

    pub fn url(&self, path: &str) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}{path}", self.addr)
    }

    fn serve(&mut self, listener: TcpListener) {
        let shared = self.shared.clone();
        let tls = self.tls.clone();
        self.serving = Some(tokio::spawn(async move {
            // Dropped with this task: going away closes every connection too.
            let mut connections = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let shared = shared.clone();
                let tls = tls.clone();
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let shared = shared.clone();
                        async move { Ok::<_, Infallible>(handle(&shared, request).await) }
                    });
                    let http = hyper::server::conn::http1::Builder::new();
                    match tls {
                        None => {
                            let io = hyper_util::rt::TokioIo::new(stream);
                            let _ = http.serve_connection(io, service).await;
                        }
                        Some(tls) => {
                            // A handshake the sender refuses (an unknown CA) ends here.
                            let Ok(stream) = tls.accept(stream).await else {
                                return;
                            };
                            let io = hyper_util::rt::TokioIo::new(stream);
                            let _ = http.serve_connection(io, service).await;
                        }
                    }
                });
            }
        }));
    }

    /// Goes away: the port refuses connections and open ones are closed.
    pub fn go_away(&mut self) {
        if let Some(serving) = self.serving.take() {
            serving.abort();
        }
    }

    /// Comes back on the same port.
    pub async fn come_back(&mut self) {
        let listener = TcpListener::bind(self.addr).await.expect("rebind");
        self.serve(listener);
    }

    pub fn fail_next(&self, n: usize) {
        self.shared.state.lock().unwrap().fail_next = n;
    }

    pub fn hold(&self, held: bool) {
        self.shared.held.send_replace(held);
    }

    /// Holds the requests on `path` about `agent`'s interactions (or none).
    pub fn hold_agent(&self, held: Option<(&str, &str)>) {
        self.shared
            .held_agent
            .send_replace(held.map(|(path, agent)| (path.to_owned(), agent.to_owned())));
    }

    /// Answers `status` to every request on `path` (204 again with `None`).
    pub fn answer(&self, path: &str, status: Option<u16>) {
        let mut state = self.shared.state.lock().unwrap();
        match status {
            Some(status) => state.answers.insert(path.to_owned(), status),
            None => state.answers.remove(path),
        };
    }

    pub fn state<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        f(&self.shared.state.lock().unwrap())
    }

    /// Waits until `done` holds of what was received, within `timeout`.
    pub async fn wait_until(&self, what: &str, timeout: Duration, done: impl Fn(&State) -> bool) {
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
    let agent = event["interaction"]["agentId"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
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
            path: path.clone(),
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
    let _ = shared
        .held_agent
        .subscribe()
        .wait_for(|held| held.as_ref() != Some(&(path.clone(), agent.clone())))
        .await;
    let status = {
        let mut state = shared.state.lock().unwrap();
        let status = if state.fail_next > 0 {
            state.fail_next -= 1;
            500
        } else {
            state.answers.get(&path).copied().unwrap_or(204)
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
    let mut response = http::Response::builder().status(status);
    if (300..400).contains(&status) {
        response = response.header(http::header::LOCATION, "/redirected");
    }
    response.body(Full::new(Bytes::new())).expect("response")
}

/// Writes the webhooks file.
pub fn write_hooks(path: &std::path::Path, lines: &[String]) {
    std::fs::write(path, lines.join("\n") + "\n").expect("write webhooks file");
}

pub fn hook(name: &str, agents: &str, url: &str) -> String {
    format!("{name} agents={agents} url={url} secret={SECRET}")
}

/// Asserts that on `path` each interaction of `expected` got exactly the sequences given, in
/// order, each once, but for `in_flight` webhook-ids (sent again after a kill).
pub fn assert_delivered(
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
