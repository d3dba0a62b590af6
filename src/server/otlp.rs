//! `--otlp-endpoint`: calldesk's `tracing` spans exported as OpenTelemetry traces over OTLP/gRPC.
//!
//! [`Exporter::start`] builds the tracer: tracing-opentelemetry turns calldesk's spans (the
//! RPC's, the call manager's, the store commit's, each SIP transaction's; see `trace.rs`) into
//! OpenTelemetry spans, sampled as the caller's `traceparent` says (a root is always sampled),
//! and the SDK's batch processor sends them from a thread of its own, 512 at a time, at least
//! every 5 s (`OTEL_BSP_SCHEDULE_DELAY`, `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`). Nothing on a
//! request's path waits for the collector: a finished span goes into a queue of
//! [`QUEUE_CAPACITY`] or, when the queue is full, is dropped. A collector that is down,
//! slow or refusing costs `calldesk_trace_spans_dropped_total` (every span that was not
//! delivered, counted once) and one log line when exports start failing, one when they work
//! again.
//!
//! Only calldesk's own spans and events are exported (never rsipstack's, which carry whole SIP
//! messages), with the fields the logs have: never a token, SDP, or a body.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::{
    error::OTelSdkResult,
    trace::{
        BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider, SpanData, SpanExporter,
        SpanProcessor,
    },
    Resource,
};
use tracing::{Level, Subscriber};
use tracing_subscriber::{filter::filter_fn, registry::LookupSpan, Layer};

/// Spans waiting for export at most; past it they are dropped (and counted).
pub const QUEUE_CAPACITY: usize = 2048;
/// How long one export may take before it counts as failed.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the last export may take when the server stops.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(1);
/// The counter of spans that never reached the collector.
pub const DROPPED_METRIC: &str = "calldesk_trace_spans_dropped_total";

/// The tracer provider behind the layer; [`Exporter::shutdown`] sends what is queued.
pub struct Exporter {
    provider: SdkTracerProvider,
}

impl Exporter {
    /// Builds the exporter for `endpoint` (`http://host:4317` or `https://…`). Call it inside a
    /// tokio runtime: the gRPC channel (which connects lazily, in the background) lives there.
    pub fn start(endpoint: &str) -> Result<Self, String> {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(|e| format!("--otlp-endpoint {endpoint}: {e}"))?;
        let queued = Arc::new(AtomicUsize::new(0));
        let batches = BatchSpanProcessor::builder(Counted {
            inner: exporter,
            queued: queued.clone(),
            failing: AtomicBool::new(false),
        })
        .with_batch_config(
            BatchConfigBuilder::default()
                .with_max_queue_size(QUEUE_CAPACITY)
                .build(),
        )
        .build();
        // The SDK's detectors read OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME; without the
        // latter the service is `calldesk`.
        let mut resource = Resource::builder().with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ));
        if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
            resource = resource.with_service_name("calldesk");
        }
        let provider = SdkTracerProvider::builder()
            .with_span_processor(Bounded {
                inner: batches,
                queued,
            })
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)))
            .with_resource(resource.build())
            .build();
        crate::domain::spans::set_exporting();
        tracing::info!(endpoint, "exporting traces with OTLP");
        Ok(Self { provider })
    }

    /// The `tracing` layer that makes OpenTelemetry spans of calldesk's spans: calldesk's spans
    /// down to DEBUG (the call manager's, the store's and SIP's are DEBUG, so that the logs do
    /// not pay for them), and its events down to INFO as span events.
    pub fn layer<S>(&self) -> impl Layer<S> + Send + Sync + 'static
    where
        S: Subscriber + for<'span> LookupSpan<'span> + Send + Sync,
    {
        tracing_opentelemetry::layer()
            .with_tracer(self.provider.tracer("calldesk"))
            .with_filter(filter_fn(|metadata| {
                let ours = metadata.target().starts_with("calldesk");
                let deepest = if metadata.is_span() {
                    Level::DEBUG
                } else {
                    Level::INFO
                };
                ours && *metadata.level() <= deepest
            }))
    }

    /// Sends what is queued (for at most a second) and stops.
    pub fn shutdown(self) {
        let _ = self.provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT);
    }
}

/// The batch processor, with a bound kept here: a span past [`QUEUE_CAPACITY`] is dropped and
/// counted instead of being handed on (where it would be dropped uncounted). `queued` counts
/// the spans handed on and not yet through an export, which the processor's own queue never
/// holds more of.
#[derive(Debug)]
struct Bounded {
    inner: BatchSpanProcessor,
    queued: Arc<AtomicUsize>,
}

impl SpanProcessor for Bounded {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &opentelemetry::Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if self.queued.fetch_add(1, Ordering::Relaxed) >= QUEUE_CAPACITY {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            metrics::counter!(DROPPED_METRIC).increment(1);
            return;
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The OTLP exporter, counting the spans of failed exports as dropped and saying once when
/// exports start failing and once when they work again.
#[derive(Debug)]
struct Counted<E> {
    inner: E,
    /// Shared with [`Bounded`]: a batch leaves the count once its export is over.
    queued: Arc<AtomicUsize>,
    /// Whether the last export failed.
    failing: AtomicBool,
}

impl<E: SpanExporter> SpanExporter for Counted<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len();
        let result = self.inner.export(batch).await;
        self.queued.fetch_sub(spans, Ordering::Relaxed);
        match &result {
            Ok(()) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!("OTLP export works again");
                }
            }
            Err(e) => {
                metrics::counter!(DROPPED_METRIC).increment(spans as u64);
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e, spans, "OTLP export failed; spans are dropped (and counted in {DROPPED_METRIC}) until it works again");
                }
            }
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}
