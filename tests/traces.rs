//! Traces: a caller's W3C trace context continues through calldesk. The binary runs with
//! `--otlp-endpoint` pointed at a real OTLP receiver (a tonic server implementing OTLP's
//! `TraceService`, the one a collector serves: no collector is installable here), places a real
//! SIP call (SIPp as the agent's phone and the customer) for a client that sent `traceparent`,
//! and the exported spans must form the caller's trace: the RPC's server span under the
//! caller's span, the call manager's work under it, the store commit and the SIP transactions
//! under that. The JSON logs name the trace; a collector that is down costs a counter, not a
//! call.

mod support;

use std::{
    ffi::OsString,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use calldesk::proto::{InteractionState as S, StartCallRequest};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        trace_service_server::{TraceService, TraceServiceServer},
        ExportTraceServiceRequest, ExportTraceServiceResponse,
    },
    trace::v1::{span::SpanKind, Span},
};
use support::{
    process::{serve_args, ServerProcess, BIN},
    sipp::Sipp,
    *,
};
use tokio::sync::Notify;
use tonic::{metadata::MetadataValue, Code, Request, Response, Status};

/// How long exported spans may take to arrive (the batch delay is set to 50 ms).
const EXPORT_WAIT: Duration = Duration::from_secs(15);
const AGENT: &str = "agent-7";
const CUSTOMER: &str = "+12025550100";

/// The spans an OTLP receiver got, and a wake-up for each export.
#[derive(Default, Clone)]
struct Received {
    spans: Arc<Mutex<Vec<Span>>>,
    exported: Arc<Notify>,
}

#[tonic::async_trait]
impl TraceService for Received {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let spans = request
            .into_inner()
            .resource_spans
            .into_iter()
            .flat_map(|r| r.scope_spans)
            .flat_map(|s| s.spans);
        self.spans.lock().unwrap().extend(spans);
        self.exported.notify_waiters();
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

impl Received {
    /// Starts an OTLP/gRPC receiver on a free loopback port.
    async fn start() -> (Received, SocketAddr) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the OTLP receiver");
        let addr = listener.local_addr().expect("receiver address");
        let received = Received::default();
        let service = TraceServiceServer::new(received.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        (received, addr)
    }

    /// Waits until the spans received satisfy `done`; returns them.
    async fn until(&self, what: &str, done: impl Fn(&[Span]) -> bool) -> Vec<Span> {
        let deadline = tokio::time::Instant::now() + EXPORT_WAIT;
        loop {
            let notified = self.exported.notified();
            {
                let spans = self.spans.lock().unwrap();
                if done(&spans) {
                    return spans.clone();
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let spans = self.spans.lock().unwrap();
                let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
                panic!("{what}: not exported within {EXPORT_WAIT:?}; got {names:?}");
            }
        }
    }
}

/// A caller's trace context: `traceparent` for a new trace id and span id, sampled.
struct Caller {
    trace_id: [u8; 16],
    span_id: [u8; 8],
}

impl Caller {
    fn new(seed: u8) -> Self {
        let mut trace_id = [0u8; 16];
        for (i, b) in trace_id.iter_mut().enumerate() {
            *b = seed.wrapping_mul(31).wrapping_add(i as u8 * 7 + 1);
        }
        Caller {
            trace_id,
            span_id: [seed, 2, 3, 4, 5, 6, 7, 8],
        }
    }

    fn trace_hex(&self) -> String {
        hex(&self.trace_id)
    }

    fn traceparent(&self) -> String {
        format!("00-{}-{}-01", self.trace_hex(), hex(&self.span_id))
    }

    /// `message` as a request carrying this trace context.
    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        let metadata = request.metadata_mut();
        metadata.insert(
            "traceparent",
            MetadataValue::try_from(self.traceparent()).unwrap(),
        );
        metadata.insert("tracestate", MetadataValue::from_static("vendor=opaque"));
        request
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The one span named `name` of the trace `trace_id`.
fn one<'a>(spans: &'a [Span], trace_id: &[u8], name: &str) -> &'a Span {
    let found: Vec<&Span> = spans
        .iter()
        .filter(|s| s.trace_id == trace_id && s.name == name)
        .collect();
    match found[..] {
        [span] => span,
        _ => panic!(
            "expected one span {name:?} in the trace, found {}: {:#?}",
            found.len(),
            names(spans)
        ),
    }
}

/// Every span named `name` of the trace `trace_id`.
fn all<'a>(spans: &'a [Span], trace_id: &[u8], name: &str) -> Vec<&'a Span> {
    spans
        .iter()
        .filter(|s| s.trace_id == trace_id && s.name == name)
        .collect()
}

fn names(spans: &[Span]) -> Vec<(String, String)> {
    spans
        .iter()
        .map(|s| (s.name.clone(), hex(&s.trace_id)))
        .collect()
}

fn has(spans: &[Span], trace_id: &[u8], name: &str) -> bool {
    spans
        .iter()
        .any(|s| s.trace_id == trace_id && s.name == name)
}

/// The string attribute `key` of `span`.
fn attribute(span: &Span, key: &str) -> Option<String> {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    span.attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.as_ref()?.value.as_ref())
        .and_then(|v| match v {
            Value::StringValue(s) => Some(s.clone()),
            _ => None,
        })
}

/// `calldesk serve` with `extra` flags, the batch delay at 50 ms and JSON logs.
async fn serve_traced(data_dir: &std::path::Path, extra: &[&str]) -> ServerProcess {
    let mut flags = vec!["--log-format", "json"];
    flags.extend_from_slice(extra);
    let mut args: Vec<OsString> = vec!["OTEL_BSP_SCHEDULE_DELAY=50".into(), BIN.into()];
    args.extend(serve_args(data_dir, &flags));
    ServerProcess::start_command("env".into(), args).await
}

/// The JSON log lines of `stderr` that name `trace_id`.
fn lines_of_trace(stderr: &str, trace_id: &str) -> Vec<serde_json::Value> {
    stderr
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|line| {
            line.to_string()
                .contains(&format!("\"trace_id\":\"{trace_id}\""))
        })
        .collect()
}

#[tokio::test]
async fn a_callers_trace_continues_through_the_rpc_the_call_manager_the_store_and_sip() {
    let (received, receiver) = Received::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let agent = Sipp::uas("agent_answer.xml").start();
    let customer = Sipp::uas("customer_answer.xml").start();
    let endpoint = format!("http://{receiver}");
    let template = agent.uri("{agent}");
    let trunk = format!("sip:{}", customer.uri_host());
    let server = serve_traced(
        dir.path(),
        &[
            "--otlp-endpoint",
            &endpoint,
            "--telephony",
            "sip",
            "--sip-listen",
            "127.0.0.1:0",
            "--sip-agent-uri",
            &template,
            "--sip-trunk",
            &trunk,
            "--sip-keepalive-interval",
            "off",
        ],
    )
    .await;
    let mut client = server.client(AGENT);

    // StartCall in the caller's trace, answered by both phones; EndCall in another trace.
    let start = Caller::new(1);
    let id = client
        .start_call(start.request(StartCallRequest {
            phone_number: CUSTOMER.into(),
            ..Default::default()
        }))
        .await
        .expect("StartCall")
        .into_inner()
        .interaction_id
        .expect("an interaction id");
    watch_until(&mut client, &id, S::Delivered).await;
    let end = Caller::new(2);
    client
        .end_call(end.request(calldesk::proto::EndCallRequest {
            interaction_id: id.clone(),
        }))
        .await
        .expect("EndCall");
    agent
        .finish_async(Duration::from_secs(15))
        .await
        .assert_passed(1);
    customer
        .finish_async(Duration::from_secs(15))
        .await
        .assert_passed(1);

    let (t1, t2) = (start.trace_id, end.trace_id);
    let spans = received
        .until("the StartCall's and the EndCall's SIP work", |spans| {
            all(spans, &t1, "sip.invite").len() == 2
                && has(spans, &t1, "sip.call")
                && has(spans, &t2, "sip.bye")
                && has(spans, &t2, "store.commit")
        })
        .await;

    // The RPC: a server span named after the method, whose parent is the caller's span.
    let rpc = one(&spans, &t1, "calldesk.v1.InteractionService/StartCall");
    assert_eq!(
        rpc.parent_span_id, start.span_id,
        "the caller's span is the parent"
    );
    assert_eq!(rpc.kind, SpanKind::Server as i32);
    assert_eq!(attribute(rpc, "rpc.system").as_deref(), Some("grpc"));
    assert_eq!(attribute(rpc, "agent").as_deref(), Some(AGENT));
    // The call manager's work under it, the store commit and the SIP call under that, the
    // INVITE of each leg (and their ACKs) under the call.
    let work = one(&spans, &t1, "manager.start_call");
    assert_eq!(work.parent_span_id, rpc.span_id);
    let commit = one(&spans, &t1, "store.commit");
    assert_eq!(commit.parent_span_id, work.span_id);
    let call = one(&spans, &t1, "sip.call");
    assert_eq!(call.parent_span_id, work.span_id);
    let invites = all(&spans, &t1, "sip.invite");
    let legs: Vec<Option<String>> = invites.iter().map(|s| attribute(s, "leg")).collect();
    assert_eq!(
        legs,
        [
            Some("agent's phone".to_owned()),
            Some("customer".to_owned())
        ]
    );
    for span in invites
        .iter()
        .chain(&all(&spans, &t1, "sip.ack"))
        .chain(&all(&spans, &t1, "sip.reinvite"))
    {
        assert_eq!(span.parent_span_id, call.span_id, "{}", span.name);
    }
    assert!(
        rpc.end_time_unix_nano < call.end_time_unix_nano,
        "the RPC's span ends with its answer, not with the call"
    );

    // EndCall: its own trace, its work, the commit and the BYE of each leg under it.
    let rpc = one(&spans, &t2, "calldesk.v1.InteractionService/EndCall");
    assert_eq!(rpc.parent_span_id, end.span_id);
    let work = one(&spans, &t2, "manager.change");
    assert_eq!(work.parent_span_id, rpc.span_id);
    assert_eq!(
        one(&spans, &t2, "store.commit").parent_span_id,
        work.span_id
    );
    let hangup = one(&spans, &t2, "sip.hangup");
    assert_eq!(hangup.parent_span_id, work.span_id);
    let byes = all(&spans, &t2, "sip.bye");
    assert_eq!(byes.len(), 2, "a BYE to each leg");
    assert!(byes.iter().all(|bye| bye.parent_span_id == hangup.span_id));

    // The logs name the trace: the SIP call's lines carry the StartCall's trace id.
    let stderr = server.stderr_text();
    let lines = lines_of_trace(&stderr, &start.trace_hex());
    assert!(
        lines
            .iter()
            .any(|l| l["fields"]["message"] == "calling the agent's phone"),
        "{lines:#?}\n{stderr}"
    );
}

#[tokio::test]
async fn every_log_line_of_a_request_names_its_trace_with_or_without_an_exporter() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_received, receiver) = Received::start().await;
    let endpoint = format!("http://{receiver}");
    for extra in [vec![], vec!["--otlp-endpoint", endpoint.as_str()]] {
        let server = serve_traced(dir.path(), &extra).await;
        let mut client = server.client(AGENT);
        let caller = Caller::new(3);
        let refused = client
            .start_call(caller.request(StartCallRequest {
                phone_number: "not a number".into(),
                ..Default::default()
            }))
            .await
            .expect_err("an invalid number is refused");
        assert_eq!(refused.code(), Code::InvalidArgument);
        let trace_id = caller.trace_hex();
        let lines = eventually_lines(&server, &trace_id, "refused").await;
        let line = &lines[0];
        assert_eq!(line["level"], "WARN");
        assert_eq!(line["span"]["trace_id"], trace_id.as_str(), "{line}");
        assert_eq!(line["span"]["agent"], AGENT, "{line}");
        drop(server);
    }
}

/// The JSON log lines of `server` naming `trace_id` with `message`, once there is one.
async fn eventually_lines(
    server: &ServerProcess,
    trace_id: &str,
    message: &str,
) -> Vec<serde_json::Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let lines: Vec<serde_json::Value> = lines_of_trace(&server.stderr_text(), trace_id)
            .into_iter()
            .filter(|l| l["fields"]["message"] == message)
            .collect();
        if !lines.is_empty() {
            return lines;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {message:?} line with trace_id {trace_id}:\n{}",
            server.stderr_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_dead_collector_costs_a_counter_not_a_call() {
    let dir = tempfile::tempdir().expect("temp dir");
    // A port where nothing listens: every export is refused.
    let dead = free_addr();
    let metrics = free_addr();
    let endpoint = format!("http://{dead}");
    let metrics_flag = metrics.to_string();
    let server = serve_traced(
        dir.path(),
        &process::fast_flags(&[
            "--otlp-endpoint",
            &endpoint,
            "--metrics-listen",
            &metrics_flag,
            "--max-active-calls",
            "8",
        ]),
    )
    .await;
    let mut client = server.client(AGENT);
    let mut ids = Vec::new();
    for n in 0..5u8 {
        let caller = Caller::new(10 + n);
        let id = tokio::time::timeout(
            Duration::from_secs(5),
            client.start_call(caller.request(start_req(CUSTOMER))),
        )
        .await
        .expect("StartCall answers without waiting for the collector")
        .expect("StartCall");
        ids.push(id.into_inner().interaction_id.expect("an interaction id"));
    }
    assert_eq!(ids.len(), 5);
    let deadline = tokio::time::Instant::now() + EXPORT_WAIT;
    loop {
        let scrape = String::from_utf8_lossy(&get_metrics(metrics, Duration::from_secs(5)).await)
            .into_owned();
        let dropped = scrape
            .lines()
            .find_map(|l| l.strip_prefix("calldesk_trace_spans_dropped_total "))
            .and_then(|v| v.trim().parse::<f64>().ok());
        if dropped.is_some_and(|d| d >= 5.0) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the spans the dead collector never got are not counted: {dropped:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stderr = server.stderr_text();
    assert_eq!(
        stderr.matches("OTLP export failed").count(),
        1,
        "one line when exports start failing, not one per export:\n{stderr}"
    );
}
