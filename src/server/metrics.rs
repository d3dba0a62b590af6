//! Prometheus metrics at `--metrics-listen`.
//!
//! [`install`] installs the process-wide recorder of the `metrics` crate and serves the text
//! exposition format at `http://ADDR/metrics`. Everything else records with the `metrics`
//! macros, which are no-ops until a recorder is installed. The metrics:
//!
//! - `calldesk_rpc_requests_total{method,code}` (counter) and
//!   `calldesk_rpc_duration_seconds{method}` (histogram): every gRPC request, recorded by
//!   [`MetricsLayer`] when its response ends (a stream's end for streaming RPCs). `method` is
//!   the request path, e.g. `/calldesk.v1.InteractionService/StartCall`; `code` the gRPC code
//!   name, e.g. `OK`, `NOT_FOUND`, and `CANCELLED` when the client went away first. gRPC-Web
//!   calls count the same: their status is read from the trailers frame at the end of the body.
//! - `calldesk_store_commit_seconds` and `calldesk_store_batch_size` (histograms),
//!   `calldesk_store_commit_failures_total` (counter): the store writer, per transaction.
//! - `calldesk_replica_takeovers_total` (counter): PostgreSQL: expired replicas this one took
//!   over.
//! - `calldesk_interactions{state}` (gauge): the interactions the call manager holds, by state
//!   (`DELIVERY_PENDING`, `DELIVERED`, `HOLD`, `WRAP_UP`); see [`crate::manager::labels::state_label`].
//! - `calldesk_start_calls_total{outcome}` (counter): StartCalls the call manager answered, by
//!   outcome; see [`crate::manager::labels`].
//! - `calldesk_watch_streams{kind}` (gauge): open watch streams, kind `interaction` or `agent`.
//! - `calldesk_sip_dropped_total{transport,reason}`, `calldesk_sip_stateless_responses_total{status}`
//!   (counters) and `calldesk_sip_connections{transport}` (gauge): the SIP port's edge (see
//!   `telephony::sip::edge`).
//! - `calldesk_trace_spans_dropped_total` (counter): spans `--otlp-endpoint` never delivered
//!   (its queue was full, or the export failed); see [`super::otlp`].
//! - `calldesk_webhook_delivered_total`, `_retried_total`, `_dropped_total` (counters) and
//!   `calldesk_webhook_lag_seconds` (gauge), per `subscription`: the webhooks' deliveries
//!   (`crate::webhooks::delivery`), at zero from the start.
//! - `process_resident_memory_bytes` (gauge): resident memory, sampled every 5 s (Linux).

use std::{
    collections::HashSet,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{LazyLock, Mutex, PoisonError, RwLock},
    task::{ready, Context, Poll},
    time::{Duration, Instant},
};

use ::metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Unit,
};
use http::{HeaderName, HeaderValue, Request, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use tower::{Layer, Service};

/// Bucket bounds of the `_seconds` histograms: RPC and commit latencies, 0.5 ms to 10 s.
const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Bucket bounds of `calldesk_store_batch_size`: writes per transaction, 1 to 1024.
const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];
/// How often `process_resident_memory_bytes` is sampled.
const RSS_INTERVAL: Duration = Duration::from_secs(5);

/// The address the exporter serves, once installed.
static INSTALLED: Mutex<Option<SocketAddr>> = Mutex::new(None);

/// Installs the global recorder and serves `/metrics` on `addr`.
///
/// Once per process: a later call (tests start many servers in one process) returns Ok and
/// keeps the first exporter, with a warning if it asks for another address. A failure (the
/// address is taken, say) installs nothing, so a later call may try again.
///
/// The exporter runs on a small runtime of its own, on a dedicated thread, so that it outlives
/// the runtime of whoever installed it. This waits (briefly, at start-up) for it to bind.
pub fn install(addr: SocketAddr) -> Result<(), String> {
    let mut installed = INSTALLED.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(first) = *installed {
        if first != addr {
            tracing::warn!(
                %first, asked = %addr,
                "metrics are already served on {first} in this process; ignoring {addr}"
            );
        }
        return Ok(());
    }
    let builder = PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full("calldesk_store_batch_size".into()),
                BATCH_BUCKETS,
            )
        })
        .map_err(|e| format!("metrics: {e}"))?;
    let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel::<Result<(), String>>(1);
    std::thread::Builder::new()
        .name("calldesk-metrics".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("metrics runtime: {e}")));
                    return;
                }
            };
            runtime.block_on(async move {
                // Inside this runtime, so that the exporter and its upkeep are spawned here.
                if let Err(e) = builder.install() {
                    let _ = ready_tx.send(Err(format!("cannot serve metrics on {addr}: {e}")));
                    return;
                }
                // The first sample before the server goes on: the gauge is there from start.
                record_resident_memory();
                let _ = ready_tx.send(Ok(()));
                sample_resident_memory().await;
            });
        })
        .map_err(|e| format!("metrics thread: {e}"))?;
    ready_rx
        .recv()
        .map_err(|_| "metrics thread ended before it was ready".to_string())??;
    describe();
    *installed = Some(addr);
    tracing::info!(%addr, "serving metrics at /metrics");
    Ok(())
}

fn describe() {
    describe_counter!(
        "calldesk_rpc_requests_total",
        "gRPC requests finished, by method (request path) and gRPC status code"
    );
    describe_histogram!(
        "calldesk_rpc_duration_seconds",
        Unit::Seconds,
        "Time from a gRPC request to the end of its response (the stream's end for streams)"
    );
    describe_histogram!(
        "calldesk_store_commit_seconds",
        Unit::Seconds,
        "Duration of each store transaction (group commit)"
    );
    describe_histogram!(
        "calldesk_store_batch_size",
        Unit::Count,
        "Writes per store transaction"
    );
    describe_counter!(
        "calldesk_store_commit_failures_total",
        "Store transactions that failed (their writes were not acknowledged)"
    );
    describe_counter!(
        "calldesk_replica_takeovers_total",
        "Replicas whose lease expired that this replica took over (PostgreSQL store)"
    );
    describe_gauge!(
        "calldesk_interactions",
        "Interactions the call manager holds (not COMPLETED), by state"
    );
    describe_counter!(
        "calldesk_start_calls_total",
        "StartCalls answered by the call manager, by outcome"
    );
    describe_gauge!(
        "calldesk_watch_streams",
        "Open watch streams, by kind (interaction or agent)"
    );
    describe_counter!(
        "calldesk_compliance_refusals_total",
        "Calls refused by --dnc or --calling-hours, by reason"
    );
    describe_gauge!(
        "calldesk_pacing_waiting",
        "Dials waiting for the trunk (trunk pacing's line)"
    );
    describe_histogram!(
        "calldesk_pacing_wait_seconds",
        Unit::Seconds,
        "How long the dials that waited for the trunk waited"
    );
    describe_counter!(
        "calldesk_pacing_refusals_total",
        "TRUNK_BUSY answers, by why (waited_too_long, line_full)"
    );
    describe_gauge!(
        "calldesk_pacing_calls",
        "Customer calls in progress, as trunk pacing counts them"
    );
    describe_gauge!(
        "calldesk_pacing_rate",
        "Calls a second the trunk pacing allows now (0: no limit)"
    );
    describe_gauge!(
        "calldesk_pacing_max_calls",
        "This replica's share of --sip-max-calls (0: no limit)"
    );
    describe_counter!(
        "calldesk_trunk_pushbacks_total",
        "503 answers from the trunk (pushback)"
    );
    describe_counter!(
        "calldesk_sip_dropped_total",
        "SIP: datagrams, messages and connections the SIP port dropped unanswered or closed, by \
         transport and reason"
    );
    describe_counter!(
        "calldesk_sip_stateless_responses_total",
        "SIP: requests outside calldesk's calls answered statelessly, by status"
    );
    describe_gauge!(
        "calldesk_sip_connections",
        "SIP: TCP and TLS connections open to the SIP port, by transport"
    );
    describe_counter!(
        super::otlp::DROPPED_METRIC,
        "Trace spans never delivered to the --otlp-endpoint collector (queue full, or the export failed)"
    );
    // Shown from the start, at zero: a dashboard tells "none dropped" from "not exported".
    counter!(super::otlp::DROPPED_METRIC).increment(0);
    describe_counter!(
        "calldesk_webhook_delivered_total",
        "Webhook events answered 2xx, per subscription"
    );
    describe_counter!(
        "calldesk_webhook_retried_total",
        "Failed webhook attempts that will be tried again, per subscription"
    );
    describe_counter!(
        "calldesk_webhook_dropped_total",
        "Webhook events dropped after failing for --webhook-retry-for, per subscription"
    );
    describe_gauge!(
        "calldesk_webhook_lag_seconds",
        Unit::Seconds,
        "Age of the oldest webhook event not yet delivered, per subscription"
    );
    describe_gauge!(
        "process_resident_memory_bytes",
        Unit::Bytes,
        "Resident memory of the process"
    );
}

/// The methods of `calldesk.v1.InteractionService` (a unit test holds this list to the proto):
/// each is exposed with every code at zero from the start.
const METHOD_NAMES: [&str; 17] = [
    "StartCall",
    "WatchInteraction",
    "WatchInteractions",
    "GetInteraction",
    "ListInteractions",
    "EndCall",
    "HoldCall",
    "ResumeCall",
    "CompleteInteraction",
    "GetDialpad",
    "DialStaged",
    "ListCallerIds",
    "TransferCall",
    "ConsultCall",
    "CompleteTransfer",
    "CancelConsult",
    "ConferenceCall",
];

/// The `code` labels: every gRPC status code's name, by number (the trace layer names codes
/// with it too).
pub(super) const CODE_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// Registers every counter and gauge at zero (what was recorded already keeps its value), so
/// that a healthy server's `/metrics` has them all and `rate()` or `increase()` sees the
/// first event of each: the calldesk.v1 methods with every code, each StartCall outcome, each
/// state the call manager holds, both kinds of watch stream, the compliance and trunk pacing
/// refusals, pushbacks and gauges; with the PostgreSQL store (`shared_store`) the takeovers
/// too. Histograms appear with their first observation.
pub fn expose_at_zero(shared_store: bool) {
    use crate::manager::labels;
    for name in METHOD_NAMES {
        let path = format!("/calldesk.v1.InteractionService/{name}");
        let method = Method::of(&path).label("OK");
        for code in CODE_NAMES {
            counter!("calldesk_rpc_requests_total", "method" => method, "code" => code)
                .increment(0);
        }
    }
    counter!("calldesk_store_commit_failures_total").increment(0);
    if shared_store {
        counter!("calldesk_replica_takeovers_total").increment(0);
    }
    for state in labels::HELD_STATES {
        gauge!("calldesk_interactions", "state" => labels::state_label(state)).increment(0.0);
    }
    for outcome in labels::START_OUTCOMES {
        counter!("calldesk_start_calls_total", "outcome" => outcome).increment(0);
    }
    for kind in ["interaction", "agent"] {
        gauge!("calldesk_watch_streams", "kind" => kind).increment(0.0);
    }
    for reason in labels::COMPLIANCE_REFUSALS {
        counter!("calldesk_compliance_refusals_total", "reason" => reason).increment(0);
    }
    for why in crate::telephony::pacing::REFUSAL_WHYS {
        counter!("calldesk_pacing_refusals_total", "why" => why).increment(0);
    }
    counter!("calldesk_trunk_pushbacks_total").increment(0);
    // Trunk pacing sets these as it starts (after this); until then, zero.
    for name in [
        "calldesk_pacing_waiting",
        "calldesk_pacing_calls",
        "calldesk_pacing_rate",
        "calldesk_pacing_max_calls",
    ] {
        gauge!(name).increment(0.0);
    }
}

/// Sets `process_resident_memory_bytes` from `/proc/self/status` (Linux only).
fn record_resident_memory() {
    #[cfg(target_os = "linux")]
    if let Some(bytes) = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| vm_rss_bytes(&status))
    {
        gauge!("process_resident_memory_bytes").set(bytes as f64);
    }
}

/// Sets `process_resident_memory_bytes` every [`RSS_INTERVAL`], forever (Linux only).
async fn sample_resident_memory() {
    #[cfg(target_os = "linux")]
    {
        let mut ticks = tokio::time::interval(RSS_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            record_resident_memory();
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = RSS_INTERVAL;
        std::future::pending::<()>().await;
    }
}

/// `VmRSS` of `/proc/self/status` (`VmRSS:   12345 kB`), in bytes.
fn vm_rss_bytes(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut fields = line["VmRSS:".len()..].split_whitespace();
    let value: u64 = fields.next()?.parse().ok()?;
    let unit = match fields.next() {
        Some("kB") | Some("KB") => 1024,
        Some("mB") | Some("MB") => 1024 * 1024,
        _ => 1,
    };
    Some(value * unit)
}

// ---------------------------------------------------------------------------------------------
// Per-RPC metrics

const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// Distinct request paths given a `method` label of their own; further ones are `other`, so
/// that clients sending made-up paths cannot grow the label set (or memory) without bound.
const MAX_METHODS: usize = 256;
/// Longer request paths are `other`.
const MAX_METHOD_LEN: usize = 128;

/// Request paths seen so far, leaked once each so that labels are `&'static str`.
static METHODS: LazyLock<RwLock<HashSet<&'static str>>> =
    LazyLock::new(|| RwLock::new(HashSet::new()));

/// The gRPC status code's name, as the `code` label.
fn code_name(status: &HeaderValue) -> &'static str {
    match status.as_bytes() {
        b"0" => "OK",
        b"1" => "CANCELLED",
        b"2" => "UNKNOWN",
        b"3" => "INVALID_ARGUMENT",
        b"4" => "DEADLINE_EXCEEDED",
        b"5" => "NOT_FOUND",
        b"6" => "ALREADY_EXISTS",
        b"7" => "PERMISSION_DENIED",
        b"8" => "RESOURCE_EXHAUSTED",
        b"9" => "FAILED_PRECONDITION",
        b"10" => "ABORTED",
        b"11" => "OUT_OF_RANGE",
        b"12" => "UNIMPLEMENTED",
        b"13" => "INTERNAL",
        b"14" => "UNAVAILABLE",
        b"15" => "DATA_LOSS",
        b"16" => "UNAUTHENTICATED",
        _ => "UNKNOWN",
    }
}

/// The label of a request path, or what to intern once the request's outcome is known.
enum Method {
    Label(&'static str),
    /// A path not seen before (rare: the first request of each method).
    New(Box<str>),
}

impl Method {
    fn of(path: &str) -> Method {
        if path.len() > MAX_METHOD_LEN {
            return Method::Label("other");
        }
        let known = METHODS
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(path)
            .copied();
        match known {
            Some(label) => Method::Label(label),
            None => Method::New(path.into()),
        }
    }

    /// The label; interns a new path unless the server did not know it (UNIMPLEMENTED).
    fn label(&self, code: &'static str) -> &'static str {
        match self {
            Method::Label(label) => label,
            Method::New(_) if code == "UNIMPLEMENTED" => "unknown",
            Method::New(path) => {
                let mut methods = METHODS.write().unwrap_or_else(PoisonError::into_inner);
                if let Some(label) = methods.get(&**path) {
                    return label;
                }
                if methods.len() >= MAX_METHODS {
                    return "other";
                }
                let label: &'static str = Box::leak(path.clone());
                methods.insert(label);
                label
            }
        }
    }
}

/// One RPC being measured; records exactly once, when finished or else when dropped
/// (`CANCELLED`: the client went away, or the server dropped the response).
struct Call {
    method: Method,
    start: Instant,
    finished: bool,
}

impl Call {
    fn finish(&mut self, code: &'static str) {
        if self.finished {
            return;
        }
        self.finished = true;
        let method = self.method.label(code);
        counter!("calldesk_rpc_requests_total", "method" => method, "code" => code).increment(1);
        histogram!("calldesk_rpc_duration_seconds", "method" => method)
            .record(self.start.elapsed().as_secs_f64());
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.finish("CANCELLED");
    }
}

/// A tower layer recording, per RPC, `calldesk_rpc_requests_total{method,code}` and
/// `calldesk_rpc_duration_seconds{method}`.
///
/// The status is read from the response headers when the response is trailers-only (how
/// errors are sent), else from the `grpc-status` trailer at the end of the body (successful
/// unary calls and every stream), so a stream is recorded when it ends. A gRPC-Web response
/// has no HTTP trailers: its trailers travel as the last message-like frame of the body (flag
/// 0x80), where [`WebTrailers`] finds them.
#[derive(Clone, Copy, Default)]
pub struct MetricsLayer;

impl<S> Layer<S> for MetricsLayer {
    type Service = MetricsService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        MetricsService { inner }
    }
}

/// See [`MetricsLayer`].
#[derive(Clone)]
pub struct MetricsService<S> {
    inner: S,
}

impl<S, B, R> Service<Request<B>> for MetricsService<S>
where
    S: Service<Request<B>, Response = Response<R>>,
{
    type Response = Response<MetricsBody<R>>;
    type Error = S::Error;
    type Future = MetricsFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let call = Call {
            method: Method::of(request.uri().path()),
            start: Instant::now(),
            finished: false,
        };
        MetricsFuture {
            inner: self.inner.call(request),
            call: Some(call),
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`MetricsService`].
    pub struct MetricsFuture<F> {
        // The inner service's response future.
        #[pin]
        inner: F,
        // The request's record, taken when the response arrives.
        call: Option<Call>,
    }
}

impl<F, R, E> Future for MetricsFuture<F>
where
    F: Future<Output = Result<Response<R>, E>>,
{
    type Output = Result<Response<MetricsBody<R>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let mut call = this.call.take();
        Poll::Ready(match result {
            Ok(response) => {
                let (parts, body) = response.into_parts();
                if let (Some(c), Some(status)) = (call.as_mut(), parts.headers.get(GRPC_STATUS)) {
                    // Trailers-only: the status is final, the body carries no other.
                    c.finish(code_name(status));
                    call = None;
                }
                let web = call
                    .is_some()
                    .then(|| parts.headers.get(http::header::CONTENT_TYPE))
                    .flatten()
                    .filter(|t| t.as_bytes().starts_with(b"application/grpc-web"))
                    .map(|_| WebTrailers::default());
                Ok(Response::from_parts(
                    parts,
                    MetricsBody {
                        inner: body,
                        call,
                        web,
                    },
                ))
            }
            Err(e) => {
                if let Some(c) = call.as_mut() {
                    c.finish("INTERNAL");
                }
                Err(e)
            }
        })
    }
}

/// The response body of [`MetricsService`]: the inner body, recording the RPC at its
/// `grpc-status` trailer (or its end, or its drop).
pub struct MetricsBody<B> {
    inner: B,
    /// None once recorded.
    call: Option<Call>,
    /// For a gRPC-Web response (until recorded): where its status is in the body.
    web: Option<WebTrailers>,
}

/// The largest gRPC-Web trailers frame read for its status (tonic's are a few dozen bytes
/// plus the message; a longer one is counted by its first bytes).
const MAX_WEB_TRAILERS: usize = 16 * 1024;

/// Follows the frames of a gRPC-Web response body (5-byte header: flag, big-endian length;
/// then that many bytes) across data chunks, skipping messages and collecting the trailers
/// frame (flag bit 0x80), `grpc-status:0\r\ngrpc-message:...\r\n`.
#[derive(Default)]
struct WebTrailers {
    /// The current frame's header bytes read so far (5 once complete).
    header: [u8; 5],
    header_len: usize,
    /// Bytes of the current frame's payload still to come.
    remaining: usize,
    /// Whether the current frame is the trailers frame.
    trailers: bool,
    /// The trailers frame's payload so far (up to [`MAX_WEB_TRAILERS`]).
    text: Vec<u8>,
}

impl WebTrailers {
    /// Reads `chunk`; the status code's name once the trailers frame is complete.
    fn feed(&mut self, mut chunk: &[u8]) -> Option<&'static str> {
        while !chunk.is_empty() {
            if self.header_len < self.header.len() {
                let take = (self.header.len() - self.header_len).min(chunk.len());
                self.header[self.header_len..self.header_len + take]
                    .copy_from_slice(&chunk[..take]);
                self.header_len += take;
                chunk = &chunk[take..];
                if self.header_len < self.header.len() {
                    return None;
                }
                let [flag, a, b, c, d] = self.header;
                self.remaining = u32::from_be_bytes([a, b, c, d]) as usize;
                self.trailers = flag & 0x80 != 0;
                if self.trailers && self.remaining == 0 {
                    return Some(Self::status(&[]));
                }
                continue;
            }
            let take = self.remaining.min(chunk.len());
            if self.trailers {
                let room = MAX_WEB_TRAILERS.saturating_sub(self.text.len());
                self.text.extend_from_slice(&chunk[..take.min(room)]);
            }
            self.remaining -= take;
            chunk = &chunk[take..];
            if self.remaining == 0 {
                if self.trailers {
                    return Some(Self::status(&self.text));
                }
                self.header_len = 0;
            }
        }
        None
    }

    /// The code name of the `grpc-status` line of a trailers frame (UNKNOWN without one).
    fn status(text: &[u8]) -> &'static str {
        text.split(|&b| b == b'\n')
            .filter_map(|line| {
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                let colon = line.iter().position(|&b| b == b':')?;
                let (name, value) = line.split_at(colon);
                name.eq_ignore_ascii_case(b"grpc-status")
                    .then(|| HeaderValue::from_bytes(value[1..].trim_ascii()).ok())
                    .flatten()
            })
            .next()
            .map_or("UNKNOWN", |value| code_name(&value))
    }
}

impl<B> http_body::Body for MetricsBody<B>
where
    B: http_body::Body + Unpin,
    B::Data: AsRef<[u8]>,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Some(call) = this.call.as_mut() {
            let code = match &polled {
                Poll::Pending => None,
                Poll::Ready(Some(Ok(frame))) => match (frame.data_ref(), this.web.as_mut()) {
                    (Some(data), Some(web)) => web.feed(data.as_ref()),
                    _ => frame
                        .trailers_ref()
                        .map(|t| t.get(GRPC_STATUS).map_or("UNKNOWN", code_name)),
                },
                // The stream is reset; the client sees INTERNAL.
                Poll::Ready(Some(Err(_))) => Some("INTERNAL"),
                // Ended without a status.
                Poll::Ready(None) => Some("UNKNOWN"),
            };
            if let Some(code) = code {
                call.finish(code);
                this.call = None;
                this.web = None;
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_names_are_the_services_methods() {
        let proto = include_str!("../../proto/calldesk/v1/calldesk.proto");
        let rpcs: Vec<&str> = proto
            .lines()
            .filter_map(|l| l.trim().strip_prefix("rpc "))
            .filter_map(|l| l.split('(').next())
            .map(str::trim)
            .collect();
        assert_eq!(rpcs, METHOD_NAMES);
    }

    #[test]
    fn code_names_are_every_code() {
        for (n, name) in CODE_NAMES.iter().enumerate() {
            assert_eq!(code_name(&HeaderValue::from(n)), *name);
        }
    }

    #[test]
    fn reads_vm_rss() {
        let status = "Name:\tcalldesk\nVmPeak:\t  2000 kB\nVmRSS:\t    1234 kB\nThreads:\t4\n";
        assert_eq!(vm_rss_bytes(status), Some(1234 * 1024));
        assert_eq!(vm_rss_bytes("Name:\tx\n"), None);
    }

    #[test]
    fn names_codes() {
        assert_eq!(code_name(&HeaderValue::from_static("0")), "OK");
        assert_eq!(code_name(&HeaderValue::from_static("5")), "NOT_FOUND");
        assert_eq!(
            code_name(&HeaderValue::from_static("16")),
            "UNAUTHENTICATED"
        );
        assert_eq!(code_name(&HeaderValue::from_static("99")), "UNKNOWN");
    }

    #[test]
    fn finds_the_grpc_web_status_across_chunks() {
        let frame = |flag: u8, payload: &[u8]| {
            let mut f = vec![flag];
            f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
            f.extend_from_slice(payload);
            f
        };
        let mut body = frame(0, b"\x80grpc-status:0 looks like trailers but is a message");
        body.extend(frame(0, b""));
        body.extend(frame(
            0x80,
            b"grpc-status:5\r\ngrpc-message:not%20found\r\n",
        ));
        for chunk_size in [1, 2, 5, 7, body.len()] {
            let mut web = WebTrailers::default();
            let found: Vec<_> = body
                .chunks(chunk_size)
                .filter_map(|c| web.feed(c))
                .collect();
            assert_eq!(found, ["NOT_FOUND"], "chunks of {chunk_size}");
        }
        let mut web = WebTrailers::default();
        assert_eq!(
            web.feed(&frame(0x80, b"Grpc-Status: 14\r\n")),
            Some("UNAVAILABLE")
        );
        let mut web = WebTrailers::default();
        assert_eq!(
            web.feed(&frame(0x80, b"grpc-message:x\r\n")),
            Some("UNKNOWN")
        );
    }

    #[test]
    fn bounds_method_labels() {
        assert!(matches!(
            Method::of(&"/x".repeat(100)),
            Method::Label("other")
        ));
        let m = Method::of("/test.Service/Unknown");
        assert_eq!(m.label("UNIMPLEMENTED"), "unknown");
        assert_eq!(m.label("OK"), "/test.Service/Unknown");
        assert!(matches!(
            Method::of("/test.Service/Unknown"),
            Method::Label("/test.Service/Unknown")
        ));
    }
}
