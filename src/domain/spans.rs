//! Spans that follow a request across tasks: the call manager's actor, the store's writer and
//! a SIP call do a request's work elsewhere than the request's task, under a span of their own
//! whose parent is the request's (`server/trace.rs` opens it). The request's span travels with
//! the work (a command's field, a write's, `Span::current()` when a backend is called), never
//! by awaiting anything.
//!
//! Those spans are DEBUG: the OTLP exporter records them, the logs at INFO do not pay for them.
//! Work that outlives its request (a SIP call lasts minutes, a hang-up's BYE ends after the
//! EndCall's answer) is parented in the exported trace only ([`continue_from`]): in `tracing`'s
//! tree a child keeps its parent open, and the request's span would end with the call.

use std::sync::atomic::{AtomicBool, Ordering};

use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Whether an OTLP exporter records spans in this process (`--otlp-endpoint`).
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Whether an OTLP exporter records spans in this process.
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// Says that an OTLP exporter records spans from now on (`server/otlp.rs`).
pub fn set_exporting() {
    EXPORTING.store(true, Ordering::Relaxed);
}

/// `child` when someone records it (the OTLP exporter, or a DEBUG log), else `parent`, so that
/// the log lines written during the work still carry the request's fields (its trace id among
/// them).
pub fn child_or_parent(child: Span, parent: &Span) -> Span {
    if child.is_disabled() {
        parent.clone()
    } else {
        child
    }
}

/// Makes `span`, created without a `tracing` parent (`parent: None`), a child of `parent` in
/// the exported trace, and records its `trace_id` field (if it has one) for the logs. Nothing
/// without an exporter.
pub fn continue_from(span: &Span, parent: &Span) {
    if span.is_disabled() || !exporting() {
        return;
    }
    let context = parent.context();
    let _ = span.set_parent(context);
    use opentelemetry::trace::TraceContextExt;
    let trace_id = span.context().span().span_context().trace_id();
    if trace_id != opentelemetry::trace::TraceId::INVALID {
        span.record("trace_id", tracing::field::display(trace_id));
    }
}
