//! Test support, shared by every tests/*.rs file (each declares `mod support;`): constants of
//! the simulated switch, generated clients that name their agent with `x-agent-id`, request
//! builders, one helper per RPC, and helpers that read event streams with timeouts (never
//! sleeps). A server to talk to comes from one of the submodules:
//!
//! - `in_process`: `TestServer`, `calldesk::server::start` inside the test process;
//! - `process`: `ServerProcess`, the `calldesk` binary as a child process (signals, kill -9,
//!   restarts, logs), and `run_to_exit` for commands that end by themselves.
//!
//! Both run on the store that `CALLDESK_TEST_STORE` names ([`Store::from_env`]): SQLite in the
//! server's temp dir (the default), or `postgres`: a fresh database of the test binary's
//! PostgreSQL cluster (`postgres`: a throw-away cluster of Debian's PostgreSQL) per server. Tests
//! of what only SQLite has (its file, its disk) pin SQLite (`TestServer::start_sqlite_with`,
//! `ServerProcess::start_sqlite`, `process::serve_args_sqlite`).
//!
//! `grpc_web` speaks gRPC-Web (HTTP/1.1 or HTTP/2, raw frames) to either, as a browser does.
//!
//! Beside them, the real SIP peers of the SIP backend's tests: `sipp` (SIPp playing the agent's
//! phone or the customer, with the scenarios of `tests/sip/`), `baresip` and `linphone`
//! (softphones), and `kamailio` (a record-routing proxy with digest authentication).
#![allow(dead_code)]

pub mod baresip;
pub mod grpc_web;
pub mod in_process;
pub mod kamailio;
pub mod linphone;
pub mod pki;
pub mod postgres;
pub mod process;
pub mod sipp;
pub mod webhook_receiver;

use std::{collections::HashMap, fmt::Display, net::SocketAddr, time::Duration};

use calldesk::proto::{
    interaction_service_client::InteractionServiceClient, AssociatedObject, CallProgress,
    CancelConsultRequest, CompleteInteractionRequest, CompleteTransferRequest,
    ConferenceCallRequest, ConsultCallRequest, EndCallRequest, EndReason, GetInteractionRequest,
    HoldCallRequest, Interaction, InteractionEvent, InteractionState, ListInteractionsRequest,
    ResumeCallRequest, StartCallRequest, StartCallResponse, TransferCallRequest,
    WatchInteractionRequest, WatchInteractionsRequest,
};
use tonic::{
    metadata::{Ascii, MetadataValue},
    service::{interceptor::InterceptedService, Interceptor},
    transport::{Channel, Endpoint},
    Code, Request, Status, Streaming,
};
use tonic_types::StatusExt;

/// A generous bound for anything the fast simulated switch should do.
pub const WAIT: Duration = Duration::from_secs(10);

/// A plain number that dials, rings, answers and stays connected.
pub const NUM_OK: &str = "+12025550100";
/// Another plain number.
pub const NUM_OK2: &str = "+12025550110";
/// Busy: WRAP_UP / BUSY after sim_ring, no RINGING.
pub const NUM_BUSY: &str = "+12025550101";
/// Rings, then NO_ANSWER after sim_no_answer.
pub const NUM_NO_ANSWER: &str = "+12025550102";
/// Network failure: WRAP_UP / FAILED after sim_ring.
pub const NUM_FAILED: &str = "+12025550103";
/// The switch never acknowledges: StartCall fails with DEADLINE_EXCEEDED.
pub const NUM_NO_ACK: &str = "+12025550104";
/// Answers, then the remote party hangs up after sim_talk.
pub const NUM_REMOTE_HANGUP: &str = "+12025550105";

/// Adds `x-agent-id` (when given) to every request.
#[derive(Clone)]
pub struct AgentHeader(Option<MetadataValue<Ascii>>);

impl Interceptor for AgentHeader {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(agent) = &self.0 {
            req.metadata_mut().insert("x-agent-id", agent.clone());
        }
        Ok(req)
    }
}

/// A generated client bound to one agent.
pub type Client = InteractionServiceClient<InterceptedService<Channel, AgentHeader>>;

/// A plaintext endpoint for the server at `addr` (`HOST:PORT`).
pub fn endpoint(addr: impl Display) -> Endpoint {
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
}

/// A client on `channel` that names `agent` (or no agent: the agent `default`).
pub fn client_on(channel: Channel, agent: Option<&str>) -> Client {
    let header = agent.map(|a| a.parse().expect("ascii agent id"));
    InteractionServiceClient::with_interceptor(channel, AgentHeader(header))
}

/// A client for `agent` of the server at `addr`, on a connection of its own.
pub fn client(addr: impl Display, agent: &str) -> Client {
    client_on(endpoint(addr).connect_lazy(), Some(agent))
}

/// The whole HTTP/1.1 response to `GET /metrics` (with `Connection: close`) from the metrics
/// listener at `addr`; connecting and reading each within `timeout`.
pub async fn get_metrics(addr: SocketAddr, timeout: Duration) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr))
        .await
        .expect("connect to the metrics listener in time")
        .expect("connect to the metrics listener");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("send the scrape request");
    let mut response = Vec::new();
    tokio::time::timeout(timeout, stream.read_to_end(&mut response))
        .await
        .expect("scrape answered in time")
        .expect("read the scrape");
    response
}

/// Scrapes the metrics listener at `addr` until its text has `line` (a series and its value),
/// within `within`.
pub async fn wait_for_metric(addr: SocketAddr, line: &str, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let scrape = String::from_utf8_lossy(&get_metrics(addr, WAIT).await).into_owned();
        if scrape.lines().any(|l| l == line) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {line:?} in\n{scrape}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A free loopback address, e.g. for `--metrics-listen` (the exporter cannot report the port
/// it got for port 0). Below the ephemeral range ([`chosen_port`]).
pub fn free_addr() -> SocketAddr {
    let port = chosen_port(|port| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok());
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A port free on 127.0.0.1 for both UDP and TCP, for `--sip-listen` (calldesk's SIP port is
/// both). Below the ephemeral range ([`chosen_port`]).
pub fn free_sip_port() -> u16 {
    chosen_port(|port| {
        std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok()
            && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
    })
}

/// A port that `is_free` says is free now, for a server started on it afterwards (a restart
/// must find its port again), picked at random below the kernel's ephemeral range: a port the
/// kernel handed out for port 0 could be given again, meanwhile, as the local port of any
/// connection a test running beside opens, and the server could not bind it (a CI run failed
/// so: "Address already in use"). Below that range, only another test's choice can take it.
pub fn chosen_port(is_free: impl Fn(u16) -> bool) -> u16 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static STATE: AtomicU64 = AtomicU64::new(0);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    const LOWEST: u16 = 10_000;
    let span = u64::from(ephemeral_low.saturating_sub(LOWEST));
    if span < 1_000 {
        // An unusual range: ports for port 0, as before.
        for _ in 0..100 {
            let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind UDP");
            let port = udp.local_addr().expect("addr").port();
            drop(udp);
            if is_free(port) {
                return port;
            }
        }
        panic!("no free port");
    }
    // A xorshift seeded by the time and the process: tests of one binary and binaries running
    // side by side pick apart.
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        ^ (u64::from(std::process::id()) << 32);
    let mut x = (STATE.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed) ^ seed).max(1);
    for _ in 0..1_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let port = LOWEST + (x % span) as u16;
        if is_free(port) {
            return port;
        }
    }
    panic!("no free port below {ephemeral_low}");
}

/// The store of the servers the harness starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    /// `--data-dir`: SQLite in the server's temp dir.
    Sqlite,
    /// `--database-url`: a database of its own in the binary's shared PostgreSQL cluster, with
    /// a `--peer-token-file` of its own.
    Postgres,
}

impl Store {
    /// What `CALLDESK_TEST_STORE` names: `sqlite` (also when unset or empty) or `postgres`.
    pub fn from_env() -> Store {
        static STORE: std::sync::OnceLock<Store> = std::sync::OnceLock::new();
        *STORE.get_or_init(|| match std::env::var("CALLDESK_TEST_STORE").as_deref() {
            Err(std::env::VarError::NotPresent) | Ok("" | "sqlite") => Store::Sqlite,
            Ok("postgres") => Store::Postgres,
            other => panic!("CALLDESK_TEST_STORE={other:?}: expected sqlite or postgres"),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Requests

pub fn start_req(phone: &str) -> StartCallRequest {
    StartCallRequest {
        phone_number: phone.to_string(),
        ..Default::default()
    }
}

pub fn start_req_id(phone: &str, request_id: &str) -> StartCallRequest {
    StartCallRequest {
        phone_number: phone.to_string(),
        request_id: request_id.to_string(),
        ..Default::default()
    }
}

/// A StartCall request for `phone` with `object` as its initial associated object.
pub fn start_req_object(phone: &str, object: AssociatedObject) -> StartCallRequest {
    StartCallRequest {
        phone_number: phone.to_string(),
        initial_object: Some(object),
        ..Default::default()
    }
}

/// A contact with every field set.
pub fn object(id: &str) -> AssociatedObject {
    AssociatedObject {
        id: id.to_string(),
        r#type: "contact".to_string(),
        display_name: "Ada Lovelace".to_string(),
        display_type: "Contact".to_string(),
        custom_fields: HashMap::from([
            ("crm".to_string(), "salesforce".to_string()),
            ("tier".to_string(), "gold".to_string()),
        ]),
    }
}

/// A unary call (or a stream's opening) that must answer within `WAIT`: the reply, or the
/// status; `what` names the call in the panic.
pub async fn unary<T>(
    what: &str,
    call: impl std::future::Future<Output = Result<tonic::Response<T>, Status>>,
) -> Result<T, Status> {
    tokio::time::timeout(WAIT, call)
        .await
        .unwrap_or_else(|_| panic!("{what} did not answer within {WAIT:?}"))
        .map(|r| r.into_inner())
}

/// StartCall within `WAIT`: the whole response, or the status.
pub async fn try_start(
    client: &mut Client,
    req: StartCallRequest,
) -> Result<StartCallResponse, Status> {
    let what = format!("StartCall({:?}, {:?})", req.phone_number, req.request_id);
    unary(&what, client.start_call(req)).await
}

/// StartCall that must succeed with an interaction; returns the whole response.
pub async fn start_ok(client: &mut Client, req: StartCallRequest) -> StartCallResponse {
    let phone = req.phone_number.clone();
    try_start(client, req)
        .await
        .unwrap_or_else(|s| panic!("StartCall({phone:?}) failed: {s:?}"))
}

/// StartCall that must succeed; returns the interaction id.
pub async fn start_call(client: &mut Client, phone: &str) -> String {
    let resp = start_ok(client, start_req(phone)).await;
    match resp.interaction_id {
        Some(id) => id,
        None => panic!(
            "StartCall({phone:?}) returned no interaction_id: {:?}",
            resp.interaction
        ),
    }
}

/// StartCall with a request_id; the interaction id, or the status.
pub async fn start_call_id(
    client: &mut Client,
    phone: &str,
    request_id: &str,
) -> Result<String, Status> {
    let resp = try_start(client, start_req_id(phone, request_id)).await?;
    Ok(resp
        .interaction_id
        .unwrap_or_else(|| panic!("StartCall({phone}, {request_id}) returned no interaction_id")))
}

/// StartCall that must fail; returns the status.
pub async fn start_err(client: &mut Client, req: StartCallRequest) -> Status {
    let phone = req.phone_number.clone();
    match try_start(client, req).await {
        Ok(resp) => panic!("StartCall({phone:?}) should have failed, got {resp:?}"),
        Err(status) => status,
    }
}

pub async fn get(client: &mut Client, id: &str) -> Result<Interaction, Status> {
    let req = GetInteractionRequest {
        interaction_id: id.to_string(),
    };
    unary(
        &format!("GetInteraction({id})"),
        client.get_interaction(req),
    )
    .await
}

pub async fn end(client: &mut Client, id: &str) -> Result<Interaction, Status> {
    let req = EndCallRequest {
        interaction_id: id.to_string(),
    };
    unary(&format!("EndCall({id})"), client.end_call(req)).await
}

pub async fn hold(client: &mut Client, id: &str) -> Result<Interaction, Status> {
    let req = HoldCallRequest {
        interaction_id: id.to_string(),
    };
    unary(&format!("HoldCall({id})"), client.hold_call(req)).await
}

pub async fn resume(client: &mut Client, id: &str) -> Result<Interaction, Status> {
    let req = ResumeCallRequest {
        interaction_id: id.to_string(),
    };
    unary(&format!("ResumeCall({id})"), client.resume_call(req)).await
}

pub async fn transfer(
    c: &mut Client,
    id: &str,
    target: &str,
    request_id: &str,
) -> Result<Interaction, Status> {
    let req = TransferCallRequest {
        interaction_id: id.into(),
        target: target.into(),
        request_id: request_id.into(),
    };
    unary("TransferCall", c.transfer_call(req)).await
}

pub async fn consult(c: &mut Client, id: &str, target: &str) -> Result<Interaction, Status> {
    let req = ConsultCallRequest {
        interaction_id: id.into(),
        target: target.into(),
        request_id: String::new(),
    };
    unary("ConsultCall", c.consult_call(req)).await
}

pub async fn complete_transfer(c: &mut Client, id: &str) -> Result<Interaction, Status> {
    let req = CompleteTransferRequest {
        interaction_id: id.into(),
        request_id: String::new(),
    };
    unary("CompleteTransfer", c.complete_transfer(req)).await
}

pub async fn cancel_consult(c: &mut Client, id: &str) -> Result<Interaction, Status> {
    let req = CancelConsultRequest {
        interaction_id: id.into(),
        request_id: String::new(),
    };
    unary("CancelConsult", c.cancel_consult(req)).await
}

pub async fn conference(c: &mut Client, id: &str, target: &str) -> Result<Interaction, Status> {
    let req = ConferenceCallRequest {
        interaction_id: id.into(),
        target: target.into(),
        request_id: String::new(),
    };
    unary("ConferenceCall", c.conference_call(req)).await
}

/// Events until one with `progress` (included).
pub async fn until_progress(
    w: &mut Streaming<InteractionEvent>,
    progress: CallProgress,
) -> Vec<InteractionEvent> {
    wait_for(w, WAIT, |e| e.progress == progress as i32).await
}

/// Each event's (state, progress).
pub fn steps(events: &[InteractionEvent]) -> Vec<(InteractionState, CallProgress)> {
    events
        .iter()
        .map(|e| (state_of(e.state), progress_of(e.progress)))
        .collect()
}

pub async fn complete(
    client: &mut Client,
    id: &str,
    disposition: &str,
    notes: &str,
) -> Result<Interaction, Status> {
    let req = CompleteInteractionRequest {
        interaction_id: id.to_string(),
        disposition: disposition.to_string(),
        notes: notes.to_string(),
    };
    let what = format!("CompleteInteraction({id})");
    unary(&what, client.complete_interaction(req)).await
}

/// All of the caller's interactions, newest first, following next_page_token (optionally only
/// one state).
pub async fn list_all(client: &mut Client, state: InteractionState) -> Vec<Interaction> {
    let mut out = Vec::new();
    let mut token = String::new();
    for _ in 0..1000 {
        let req = ListInteractionsRequest {
            page_size: 1000,
            page_token: token.clone(),
            state: state as i32,
        };
        let page = unary("ListInteractions", client.list_interactions(req))
            .await
            .expect("ListInteractions");
        out.extend(page.interactions);
        if page.next_page_token.is_empty() {
            return out;
        }
        token = page.next_page_token;
    }
    panic!("ListInteractions never returned an empty next_page_token");
}

// ---------------------------------------------------------------------------------------------
// Streams

/// Opens WatchInteraction within `WAIT`; panics if it fails.
pub async fn watch(client: &mut Client, id: &str, after: u64) -> Streaming<InteractionEvent> {
    let req = WatchInteractionRequest {
        interaction_id: id.to_string(),
        after_sequence: after,
    };
    let what = format!("WatchInteraction({id}, {after})");
    unary(&what, client.watch_interaction(req))
        .await
        .unwrap_or_else(|s| panic!("{what} failed: {s:?}"))
}

/// Opens WatchInteractions (live events of all the caller's interactions) within `WAIT`;
/// panics if it fails.
pub async fn watch_all(client: &mut Client) -> Streaming<InteractionEvent> {
    unary(
        "WatchInteractions",
        client.watch_interactions(WatchInteractionsRequest {}),
    )
    .await
    .unwrap_or_else(|s| panic!("WatchInteractions failed: {s:?}"))
}

/// Watches `id` from sequence 0 until it reaches `state`: the stream, and the events so far.
pub async fn watch_until(
    client: &mut Client,
    id: &str,
    state: InteractionState,
) -> (Streaming<InteractionEvent>, Vec<InteractionEvent>) {
    let mut stream = watch(client, id, 0).await;
    let events = wait_for_state(&mut stream, state).await;
    (stream, events)
}

/// Starts a call on `phone` (which must succeed) and watches it until it reaches `state`: its
/// id, the stream, and the events so far.
pub async fn call_until(
    client: &mut Client,
    phone: &str,
    state: InteractionState,
) -> (String, Streaming<InteractionEvent>, Vec<InteractionEvent>) {
    call_id_until(client, phone, "", state).await
}

/// Like `call_until`, with a request_id.
pub async fn call_id_until(
    client: &mut Client,
    phone: &str,
    request_id: &str,
    state: InteractionState,
) -> (String, Streaming<InteractionEvent>, Vec<InteractionEvent>) {
    let id = start_call_id(client, phone, request_id)
        .await
        .unwrap_or_else(|s| panic!("StartCall({phone:?}, {request_id:?}) failed: {s:?}"));
    let (stream, events) = watch_until(client, &id, state).await;
    (id, stream, events)
}

/// Opens WatchInteraction expecting an error, either at once or as the stream's first item.
pub async fn watch_err(client: &mut Client, id: &str, after: u64) -> Status {
    let fut = client.watch_interaction(WatchInteractionRequest {
        interaction_id: id.to_string(),
        after_sequence: after,
    });
    match tokio::time::timeout(WAIT, fut)
        .await
        .expect("watch answers")
    {
        Err(status) => status,
        Ok(resp) => {
            let mut stream = resp.into_inner();
            match tokio::time::timeout(WAIT, stream.message())
                .await
                .expect("watch answers")
            {
                Err(status) => status,
                Ok(item) => panic!("WatchInteraction({id}) should have failed, got {item:?}"),
            }
        }
    }
}

/// The next event; panics on error, end of stream or timeout.
pub async fn next_event(
    stream: &mut Streaming<InteractionEvent>,
    timeout: Duration,
) -> InteractionEvent {
    match tokio::time::timeout(timeout, stream.message()).await {
        Err(_) => panic!("no event within {timeout:?}"),
        Ok(Err(status)) => panic!("stream failed while waiting for an event: {status:?}"),
        Ok(Ok(None)) => panic!("stream ended while waiting for an event"),
        Ok(Ok(Some(event))) => event,
    }
}

/// Events until one satisfies `pred` (included); panics on error, end or timeout.
pub async fn wait_for(
    stream: &mut Streaming<InteractionEvent>,
    timeout: Duration,
    mut pred: impl FnMut(&InteractionEvent) -> bool,
) -> Vec<InteractionEvent> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut events = Vec::new();
    loop {
        let event = match tokio::time::timeout_at(deadline, stream.message()).await {
            Err(_) => panic!("condition not met within {timeout:?}; events so far: {events:#?}"),
            Ok(Err(status)) => panic!("stream failed: {status:?}; events so far: {events:#?}"),
            Ok(Ok(None)) => panic!("stream ended; events so far: {events:#?}"),
            Ok(Ok(Some(event))) => event,
        };
        let done = pred(&event);
        events.push(event);
        if done {
            return events;
        }
    }
}

/// Events until the state `state` is reached (that event included).
pub async fn wait_for_state(
    stream: &mut Streaming<InteractionEvent>,
    state: InteractionState,
) -> Vec<InteractionEvent> {
    wait_for(stream, WAIT, |e| e.state == state as i32).await
}

/// Events until the COMPLETED event (included) or the end of the stream.
pub async fn collect_until_completed(
    stream: &mut Streaming<InteractionEvent>,
    timeout: Duration,
) -> Vec<InteractionEvent> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut events = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, stream.message()).await {
            Err(_) => panic!("not COMPLETED within {timeout:?}; events so far: {events:#?}"),
            Ok(Err(status)) => panic!("stream failed: {status:?}; events so far: {events:#?}"),
            Ok(Ok(None)) => return events,
            Ok(Ok(Some(event))) => {
                let done = event.state == InteractionState::Completed as i32;
                events.push(event);
                if done {
                    return events;
                }
            }
        }
    }
}

/// Every event until the stream ends, and how it ended (Ok for a clean end).
pub async fn collect_to_end(
    stream: &mut Streaming<InteractionEvent>,
    timeout: Duration,
) -> (Vec<InteractionEvent>, Result<(), Status>) {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut events = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, stream.message()).await {
            Err(_) => panic!("stream did not end within {timeout:?}; events so far: {events:#?}"),
            Ok(Err(status)) => return (events, Err(status)),
            Ok(Ok(None)) => return (events, Ok(())),
            Ok(Ok(Some(event))) => events.push(event),
        }
    }
}

/// Asserts that the stream ends cleanly (OK) without any further event.
pub async fn assert_ends_ok(stream: &mut Streaming<InteractionEvent>) {
    match tokio::time::timeout(WAIT, stream.message()).await {
        Err(_) => panic!("stream did not end within {WAIT:?}"),
        Ok(Err(status)) => panic!("stream should end with OK, ended with {status:?}"),
        Ok(Ok(Some(event))) => panic!("stream should have ended, got another event {event:#?}"),
        Ok(Ok(None)) => {}
    }
}

pub fn seqs(events: &[InteractionEvent]) -> Vec<u64> {
    events.iter().map(|e| e.sequence).collect()
}

/// (sequence, state, progress) of each event, with the enums by name.
pub fn summary(events: &[InteractionEvent]) -> Vec<(u64, InteractionState, CallProgress)> {
    events
        .iter()
        .map(|e| (e.sequence, state_of(e.state), progress_of(e.progress)))
        .collect()
}

/// Asserts the per-interaction invariants of a complete list of events from sequence 1.
pub fn assert_well_formed(events: &[InteractionEvent]) {
    assert!(!events.is_empty(), "no events");
    let id = &events[0].interaction_id;
    let mut previous = InteractionState::Unspecified as i32;
    for (i, e) in events.iter().enumerate() {
        assert_eq!(
            &e.interaction_id, id,
            "event of another interaction: {e:#?}"
        );
        assert_eq!(
            e.sequence,
            i as u64 + 1,
            "sequences must start at 1 and grow by 1: {:?}",
            seqs(events)
        );
        assert_eq!(
            e.previous_state, previous,
            "previous_state of event {} is wrong",
            e.sequence
        );
        assert!(e.time.is_some(), "event {} has no time", e.sequence);
        let snapshot = e
            .interaction
            .as_ref()
            .unwrap_or_else(|| panic!("event {} has no interaction snapshot", e.sequence));
        assert_eq!(&snapshot.id, id);
        assert_eq!(
            snapshot.state, e.state,
            "snapshot state of event {}",
            e.sequence
        );
        assert_eq!(
            snapshot.progress, e.progress,
            "snapshot progress of event {}",
            e.sequence
        );
        assert_eq!(
            snapshot.sequence, e.sequence,
            "snapshot sequence of event {}",
            e.sequence
        );
        previous = e.state;
    }
}

/// (sequence, state name) of each event, for messages.
pub fn state_names(events: &[InteractionEvent]) -> Vec<(u64, &'static str)> {
    events
        .iter()
        .map(|e| (e.sequence, state_name(e.state)))
        .collect()
}

/// Asserts that `events` are `first..` of one interaction: sequences grow by exactly 1, each
/// previous_state is the state before, and each snapshot agrees with its event.
pub fn assert_contiguous(events: &[InteractionEvent], first: u64, what: &str) {
    let mut previous: Option<i32> = None;
    for (i, e) in events.iter().enumerate() {
        assert_eq!(
            e.sequence,
            first + i as u64,
            "{what}: sequences must be {first}, {}, ... without gap or duplicate: {:?}",
            first + 1,
            seqs(events)
        );
        if e.sequence == 1 {
            assert_eq!(
                e.previous_state,
                InteractionState::Unspecified as i32,
                "{what}: the first event has a previous_state"
            );
        }
        if let Some(p) = previous {
            assert_eq!(
                e.previous_state, p,
                "{what}: previous_state of event {}",
                e.sequence
            );
        }
        let snapshot = e
            .interaction
            .as_ref()
            .unwrap_or_else(|| panic!("{what}: event {} has no snapshot", e.sequence));
        assert_eq!(snapshot.id, e.interaction_id, "{what}: snapshot id");
        assert_eq!(snapshot.sequence, e.sequence, "{what}: snapshot sequence");
        assert_eq!(snapshot.state, e.state, "{what}: snapshot state");
        previous = Some(e.state);
    }
}

// ---------------------------------------------------------------------------------------------
// Enums and errors

pub fn state_of(v: i32) -> InteractionState {
    InteractionState::try_from(v).unwrap_or_else(|_| panic!("unknown InteractionState {v}"))
}

pub fn progress_of(v: i32) -> CallProgress {
    CallProgress::try_from(v).unwrap_or_else(|_| panic!("unknown CallProgress {v}"))
}

pub fn reason_of(v: i32) -> EndReason {
    EndReason::try_from(v).unwrap_or_else(|_| panic!("unknown EndReason {v}"))
}

/// The state's proto name (`INTERACTION_STATE_...`), `?` for an unknown value.
pub fn state_name(v: i32) -> &'static str {
    InteractionState::try_from(v).map_or("?", |s| s.as_str_name())
}

/// The variable that lets a CI run skip the tests whose prerequisites it lacks (root to mount
/// file systems, util-linux's `prlimit`): `CALLDESK_TEST_ALLOW_SKIP=1`. Without it, under `CI`,
/// such a test fails instead of passing without testing.
pub const ALLOW_SKIP: &str = "CALLDESK_TEST_ALLOW_SKIP";

/// A test that cannot run here (`why`): outside CI it prints `SKIPPED` and the caller returns;
/// under `CI` it panics, unless [`ALLOW_SKIP`] is set, so that a green CI run means the test
/// ran. `scripts/test` checks the prerequisites before `cargo test` for the same reason.
pub fn skip(test: &str, why: &str) {
    let set =
        |name: &str| std::env::var(name).is_ok_and(|v| !matches!(v.as_str(), "" | "0" | "false"));
    if set("CI") && !set(ALLOW_SKIP) {
        panic!(
            "{test} cannot run: {why}. Under CI a test does not skip itself; give it what it \
             needs, or set {ALLOW_SKIP}=1 to skip it knowingly"
        );
    }
    eprintln!("SKIPPED {test}: {why}");
}

/// The end reason's proto name (`END_REASON_...`), `?` for an unknown value.
pub fn reason_name(v: i32) -> &'static str {
    EndReason::try_from(v).map_or("?", |r| r.as_str_name())
}

pub fn assert_code(status: &Status, code: Code) {
    assert_eq!(
        status.code(),
        code,
        "expected {code:?}, got {:?}: {:?}",
        status.code(),
        status.message()
    );
}

/// Asserts an ErrorInfo with this reason and the domain "calldesk".
pub fn assert_error_info(status: &Status, reason: &str) {
    let info = status
        .get_details_error_info()
        .unwrap_or_else(|| panic!("no ErrorInfo in {status:?}"));
    assert_eq!(info.reason, reason, "ErrorInfo reason in {status:?}");
    assert_eq!(info.domain, "calldesk", "ErrorInfo domain in {status:?}");
}

/// Asserts INVALID_ARGUMENT with a BadRequest field violation whose field contains `field`.
pub fn assert_bad_field(status: &Status, field: &str) {
    assert_code(status, Code::InvalidArgument);
    let bad = status
        .get_details_bad_request()
        .unwrap_or_else(|| panic!("no BadRequest in {status:?}"));
    assert!(
        bad.field_violations.iter().any(|v| v.field.contains(field)),
        "no field violation naming {field:?} in {:?}",
        bad.field_violations
    );
}

/// Asserts FAILED_PRECONDITION with ErrorInfo INVALID_STATE.
pub fn assert_invalid_state(result: Result<Interaction, Status>, what: &str) {
    match result {
        Ok(i) => panic!("{what} should fail with FAILED_PRECONDITION, returned {i:#?}"),
        Err(status) => {
            assert_code(&status, Code::FailedPrecondition);
            assert_error_info(&status, "INVALID_STATE");
        }
    }
}

/// Asserts NOT_FOUND.
pub fn assert_not_found<T: std::fmt::Debug>(result: Result<T, Status>, what: &str) {
    match result {
        Ok(v) => panic!("{what} should fail with NOT_FOUND, returned {v:#?}"),
        Err(status) => assert_code(&status, Code::NotFound),
    }
}

pub fn ts_nanos(ts: &Option<pbjson_types::Timestamp>) -> Option<i128> {
    ts.as_ref()
        .map(|t| t.seconds as i128 * 1_000_000_000 + t.nanos as i128)
}

pub fn duration_of(d: &Option<pbjson_types::Duration>) -> Option<Duration> {
    d.as_ref().map(|d| {
        assert!(d.seconds >= 0 && d.nanos >= 0, "negative duration {d:?}");
        Duration::new(d.seconds as u64, d.nanos as u32)
    })
}

/// A `grpc-message` value (percent-encoded, as gRPC sends it) as text.
pub fn percent_decode(bytes: &[u8]) -> String {
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&String::from_utf8_lossy(&bytes[i + 1..i + 3]), 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Follows `grpc.health.v1.Health/Watch` for `service` (`""`: the whole server) until it
/// reports `want`, at most `timeout`; panics with what it saw otherwise.
pub async fn wait_for_health(
    addr: impl Display,
    service: &str,
    want: tonic_health::pb::health_check_response::ServingStatus,
    timeout: Duration,
) {
    use tonic_health::pb::{
        health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
    };
    let mut health = HealthClient::new(endpoint(addr).connect_lazy());
    let request = HealthCheckRequest {
        service: service.to_owned(),
    };
    let mut stream = unary("Health/Watch", health.watch(request))
        .await
        .unwrap_or_else(|s| panic!("Health/Watch({service:?}): {s:?}"));
    let deadline = tokio::time::Instant::now() + timeout;
    let mut seen = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, stream.message()).await {
            Err(_) => panic!("{service:?} did not turn {want:?} within {timeout:?}; saw {seen:?}"),
            Ok(Err(status)) => panic!("Health/Watch failed: {status:?}"),
            Ok(Ok(None)) => panic!("Health/Watch ended; saw {seen:?}"),
            Ok(Ok(Some(r))) => {
                let status = ServingStatus::try_from(r.status).unwrap_or(ServingStatus::Unknown);
                seen.push(status);
                if status == want {
                    return;
                }
            }
        }
    }
}
