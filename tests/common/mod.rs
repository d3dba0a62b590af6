//! Test support: an in-process calldesk server on a free loopback port with a throw-away data
//! directory and fast simulated-switch timings, generated clients that name their agent with
//! `x-agent-id`, and helpers to read event streams with timeouts (never sleeps).
#![allow(dead_code)]

use std::{collections::HashMap, net::SocketAddr, time::Duration};

use calldesk::{
    proto::{
        interaction_service_client::InteractionServiceClient, AssociatedObject, CallProgress,
        CompleteInteractionRequest, EndCallRequest, EndReason, GetInteractionRequest,
        HoldCallRequest, Interaction, InteractionEvent, InteractionState, ListInteractionsRequest,
        ResumeCallRequest, StartCallRequest, StartCallResponse, WatchInteractionRequest,
    },
    server::config::Config,
    server::RunningServer,
};
use tempfile::TempDir;
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

/// The test defaults: the contract's defaults with fast simulated-switch timings.
pub fn fast_config() -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        sim_ring: Duration::from_millis(20),
        sim_answer: Duration::from_millis(20),
        sim_no_answer: Duration::from_millis(300),
        sim_talk: Duration::from_millis(150),
        originate_timeout: Duration::from_millis(300),
        ..Config::default()
    }
}

/// A calldesk server running in this process.
pub struct TestServer {
    server: Option<RunningServer>,
    addr: SocketAddr,
    pub config: Config,
    _dir: TempDir,
}

impl TestServer {
    /// Starts a server with the test defaults.
    pub async fn start() -> TestServer {
        TestServer::start_with(|_| {}).await
    }

    /// Starts a server with the test defaults changed by `change`.
    pub async fn start_with(change: impl FnOnce(&mut Config)) -> TestServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = fast_config();
        config.data_dir = dir.path().join("data");
        change(&mut config);
        let server = calldesk::server::start(config.clone())
            .await
            .expect("server starts");
        let addr = server.local_addr();
        TestServer {
            server: Some(server),
            addr,
            config,
            _dir: dir,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn endpoint(&self) -> Endpoint {
        Endpoint::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
    }

    fn make_client(channel: Channel, agent: Option<&str>) -> Client {
        let header = agent.map(|a| a.parse().expect("ascii agent id"));
        InteractionServiceClient::with_interceptor(channel, AgentHeader(header))
    }

    /// A client for `agent`, on a connection of its own.
    pub fn client(&self, agent: &str) -> Client {
        TestServer::make_client(self.endpoint().connect_lazy(), Some(agent))
    }

    /// A client that sends no `x-agent-id` (the agent `default`).
    pub fn anonymous_client(&self) -> Client {
        TestServer::make_client(self.endpoint().connect_lazy(), None)
    }

    /// A client whose connection has tiny HTTP/2 flow-control windows (64 KiB - 1), so that a
    /// stream nobody reads pushes back on the server quickly.
    pub fn small_window_client(&self, agent: &str) -> Client {
        let channel = self
            .endpoint()
            .initial_stream_window_size(65_535)
            .initial_connection_window_size(65_535)
            .connect_lazy();
        TestServer::make_client(channel, Some(agent))
    }

    /// Takes the running server out, e.g. to shut it down from another task.
    pub fn take_running(&mut self) -> RunningServer {
        self.server.take().expect("server still running")
    }

    /// Stops the server gracefully.
    pub async fn shutdown(mut self) {
        if let Some(server) = self.server.take() {
            tokio::time::timeout(WAIT, server.shutdown())
                .await
                .expect("shutdown within the timeout")
                .expect("clean shutdown");
        }
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

/// StartCall that must succeed with an interaction; returns the whole response.
pub async fn start_ok(client: &mut Client, req: StartCallRequest) -> StartCallResponse {
    let phone = req.phone_number.clone();
    client
        .start_call(req)
        .await
        .unwrap_or_else(|s| panic!("StartCall({phone:?}) failed: {s:?}"))
        .into_inner()
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

/// StartCall that must fail; returns the status.
pub async fn start_err(client: &mut Client, req: StartCallRequest) -> Status {
    match client.start_call(req.clone()).await {
        Ok(resp) => panic!(
            "StartCall({:?}) should have failed, got {:?}",
            req.phone_number,
            resp.into_inner()
        ),
        Err(status) => status,
    }
}

pub async fn get(client: &mut Client, id: &str) -> Result<Interaction, Status> {
    client
        .get_interaction(GetInteractionRequest {
            interaction_id: id.to_string(),
        })
        .await
        .map(|r| r.into_inner())
}

pub async fn end(client: &mut Client, id: &str) -> Result<Interaction, Status> {
    client
        .end_call(EndCallRequest {
            interaction_id: id.to_string(),
        })
        .await
        .map(|r| r.into_inner())
}

pub async fn hold(client: &mut Client, id: &str) -> Result<Interaction, Status> {
    client
        .hold_call(HoldCallRequest {
            interaction_id: id.to_string(),
        })
        .await
        .map(|r| r.into_inner())
}

pub async fn resume(client: &mut Client, id: &str) -> Result<Interaction, Status> {
    client
        .resume_call(ResumeCallRequest {
            interaction_id: id.to_string(),
        })
        .await
        .map(|r| r.into_inner())
}

pub async fn complete(
    client: &mut Client,
    id: &str,
    disposition: &str,
    notes: &str,
) -> Result<Interaction, Status> {
    client
        .complete_interaction(CompleteInteractionRequest {
            interaction_id: id.to_string(),
            disposition: disposition.to_string(),
            notes: notes.to_string(),
        })
        .await
        .map(|r| r.into_inner())
}

/// All of the caller's interactions, following next_page_token (optionally only one state).
pub async fn list_all(client: &mut Client, state: InteractionState) -> Vec<Interaction> {
    let mut out = Vec::new();
    let mut token = String::new();
    for _ in 0..1000 {
        let page = client
            .list_interactions(ListInteractionsRequest {
                page_size: 1000,
                page_token: token.clone(),
                state: state as i32,
            })
            .await
            .expect("ListInteractions")
            .into_inner();
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

/// Opens WatchInteraction; panics if it fails.
pub async fn watch(client: &mut Client, id: &str, after: u64) -> Streaming<InteractionEvent> {
    client
        .watch_interaction(WatchInteractionRequest {
            interaction_id: id.to_string(),
            after_sequence: after,
        })
        .await
        .unwrap_or_else(|s| panic!("WatchInteraction({id}, {after}) failed: {s:?}"))
        .into_inner()
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
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let event = match tokio::time::timeout(left, stream.message()).await {
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
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, stream.message()).await {
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
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, stream.message()).await {
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
