//! Request logs and traces: one `tracing` span per RPC.
//!
//! [`TraceLayer`] opens the span `rpc` with the request's `method` (its path, e.g.
//! `/calldesk.v1.InteractionService/StartCall`), the `agent` it acts for (calldesk.v1 methods
//! only), its `trace_id`, and an empty `interaction_id` that handlers may fill in with
//! `tracing::Span::current().record("interaction_id", ..)`: the inner service, and so the
//! handler, runs inside the span, and every log line of the request names the span's fields.
//!
//! The W3C trace context of the request (`traceparent`, `tracestate`: metadata of gRPC and
//! gRPC-Web alike) is the span's parent: with `--otlp-endpoint` the span is exported as a server
//! span of the caller's trace, named after the method, and the call manager's work, the store
//! commit and each SIP transaction are its children (their spans cross the actor as the
//! command's `tracing::Span`, never as an await). `trace_id` is the exported span's trace id,
//! or, without an exporter, the caller's (none when the caller sent no `traceparent`). A response that carries a non-OK `grpc-status` in its headers
//! (a trailers-only error, which is how tonic answers a handler's `Err(Status)` and its own
//! refusals) is logged at WARN as `refused` with the `code` and the `reason` (the decoded
//! `grpc-message`); every response is logged at DEBUG as `completed` with its latency (for a
//! stream: until its response headers, not its end).
//!
//! What is never logged here: request and response bodies, and every metadata value other
//! than the agent id (in particular never `authorization`).
//!
//! The layer sits after authentication, which puts the token's
//! [`Agent`] in the request's extensions; without authentication the
//! agent is the one `x-agent-id` names (else `default`), as the handlers read it.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Instant,
};

use http::{HeaderMap, Request, Response};
use opentelemetry::{
    propagation::{Extractor, TextMapPropagator},
    trace::{Status, TraceContextExt, TraceId},
};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tower::{Layer, Service};
use tracing::{field::Empty, Instrument, Span};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::metrics::CODE_NAMES;
use crate::api::agent::{Agent, AGENT_HEADER, DEFAULT_AGENT};

/// Paths of the methods that act for an agent.
const CALLDESK_PREFIX: &str = "/calldesk.v1.";
/// The longest agent id worth logging (the handlers refuse longer ones).
const MAX_AGENT_ID: usize = 128;
/// The longest `reason` logged; a longer `grpc-message` is cut there.
const MAX_REASON: usize = 1024;

/// A tower layer that runs every request inside a span of its own; see the module docs.
/// Made with `TraceLayer::default()`.
#[derive(Debug, Clone, Copy, Default)]
pub struct TraceLayer {
    /// Room for settings without breaking `TraceLayer::default()`.
    _private: (),
}

impl<S> Layer<S> for TraceLayer {
    type Service = TraceService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TraceService { inner }
    }
}

/// See [`TraceLayer`].
#[derive(Debug, Clone)]
pub struct TraceService<S> {
    inner: S,
}

impl<S, B, R> Service<Request<B>> for TraceService<S>
where
    S: Service<Request<B>, Response = Response<R>>,
    S::Future: Send + 'static,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<R>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let path = request.uri().path();
        let span = rpc_span(path, request.headers());
        if path.starts_with(CALLDESK_PREFIX) {
            if let Some(agent) = agent_of(&request) {
                span.record("agent", agent);
            }
        }
        let started = Instant::now();
        let response = span.in_scope(|| self.inner.call(request));
        Box::pin(
            async move {
                let outcome = response.await;
                let latency_ms = started.elapsed().as_secs_f64() * 1e3;
                match &outcome {
                    Ok(response) => {
                        if let Some((code, reason)) = refusal(response.headers()) {
                            tracing::warn!(code, reason = %reason, "refused");
                            Span::current().set_status(Status::error(code));
                        }
                        tracing::debug!(latency_ms, "completed");
                    }
                    Err(_) => tracing::warn!(latency_ms, "failed without a response"),
                }
                outcome
            }
            .instrument(span),
        )
    }
}

/// The span `rpc` of a request to `path`, a child of the trace context its `headers` carry.
fn rpc_span(path: &str, headers: &HeaderMap) -> Span {
    let span = if crate::domain::spans::exporting() {
        // What a collector shows: `calldesk.v1.InteractionService/StartCall`, a server span
        // (OpenTelemetry's conventions for RPC spans).
        let name = path.strip_prefix('/').unwrap_or(path);
        tracing::info_span!(
            "rpc",
            method = %path,
            agent = Empty,
            interaction_id = Empty,
            trace_id = Empty,
            otel.name = %name,
            otel.kind = "server",
            rpc.system = "grpc",
        )
    } else {
        tracing::info_span!(
            "rpc",
            method = %path,
            agent = Empty,
            interaction_id = Empty,
            trace_id = Empty,
        )
    };
    if span.is_disabled() {
        return span;
    }
    let caller = if headers.contains_key(TRACEPARENT) {
        TraceContextPropagator::new().extract(&Metadata(headers))
    } else {
        opentelemetry::Context::new()
    };
    let callers_trace = caller.span().span_context().trace_id();
    if callers_trace != TraceId::INVALID {
        // Without the exporter's layer there is nothing to parent: the error says so.
        let _ = span.set_parent(caller);
    }
    let exported = span.context().span().span_context().trace_id();
    let trace_id = if exported != TraceId::INVALID {
        exported
    } else {
        callers_trace
    };
    if trace_id != TraceId::INVALID {
        span.record("trace_id", tracing::field::display(trace_id));
    }
    span
}

/// The W3C trace context's metadata.
const TRACEPARENT: &str = "traceparent";

/// A request's metadata as OpenTelemetry's propagator reads it.
struct Metadata<'a>(&'a HeaderMap);

impl Extractor for Metadata<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|name| name.as_str()).collect()
    }
}

/// The agent a calldesk.v1 request acts for: authentication's [`Agent`], else a well-formed
/// `x-agent-id`, else `default`. `None` for a malformed `x-agent-id` (which the handler
/// refuses), so that nothing unprintable reaches the logs.
fn agent_of<B>(request: &Request<B>) -> Option<&str> {
    if let Some(Agent(id)) = request.extensions().get::<Agent>() {
        return Some(id);
    }
    match request.headers().get(AGENT_HEADER) {
        None => Some(DEFAULT_AGENT),
        Some(value) => value.to_str().ok().filter(|id| {
            !id.is_empty() && id.len() <= MAX_AGENT_ID && id.bytes().all(|b| b.is_ascii_graphic())
        }),
    }
}

/// The code name and decoded message of a non-OK `grpc-status` in `headers`.
fn refusal(headers: &HeaderMap) -> Option<(&'static str, String)> {
    let status = headers.get("grpc-status")?;
    let code = std::str::from_utf8(status.as_bytes())
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok());
    let name = match code {
        Some(0) => return None,
        Some(n) => CODE_NAMES.get(n).copied().unwrap_or("UNKNOWN"),
        None => "UNKNOWN",
    };
    let reason = headers
        .get("grpc-message")
        .map(|m| percent_decode(m.as_bytes()))
        .unwrap_or_default();
    Some((name, reason))
}

/// Decodes gRPC's percent-encoding of `grpc-message` (malformed escapes are kept as they
/// are), then UTF-8 (lossily), cut to [`MAX_REASON`] characters.
pub(crate) fn percent_decode(bytes: &[u8]) -> String {
    let hex = |b: u8| char::from(b).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(hi), Some(lo)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push(hi << 4 | lo);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    let text = String::from_utf8_lossy(&out);
    if text.chars().count() > MAX_REASON {
        text.chars().take(MAX_REASON).collect()
    } else {
        text.into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_grpc_message() {
        assert_eq!(
            percent_decode(b"phone_number%3A%20is%20required"),
            "phone_number: is required"
        );
        assert_eq!(percent_decode(b"100%"), "100%");
        assert_eq!(percent_decode(b"a%zzb%4"), "a%zzb%4");
        assert_eq!(percent_decode("caf%C3%A9".as_bytes()), "café");
    }

    #[test]
    fn refusal_names_the_code() {
        let mut headers = HeaderMap::new();
        assert_eq!(refusal(&headers), None);
        headers.insert("grpc-status", "0".parse().unwrap());
        assert_eq!(refusal(&headers), None);
        headers.insert("grpc-status", "3".parse().unwrap());
        headers.insert("grpc-message", "bad%20number".parse().unwrap());
        assert_eq!(
            refusal(&headers),
            Some(("INVALID_ARGUMENT", "bad number".to_owned()))
        );
        headers.insert("grpc-status", "99".parse().unwrap());
        assert_eq!(refusal(&headers).unwrap().0, "UNKNOWN");
    }

    #[test]
    fn agent_only_when_well_formed() {
        let request = |agent: Option<&str>| {
            let mut builder = Request::builder();
            if let Some(agent) = agent {
                builder = builder.header(AGENT_HEADER, agent);
            }
            builder.body(()).unwrap()
        };
        assert_eq!(agent_of(&request(None)), Some(DEFAULT_AGENT));
        assert_eq!(agent_of(&request(Some("agent-7"))), Some("agent-7"));
        assert_eq!(agent_of(&request(Some("a b"))), None);
        let mut authenticated = request(Some("spoofed"));
        authenticated
            .extensions_mut()
            .insert(Agent("agent-9".to_owned()));
        assert_eq!(agent_of(&authenticated), Some("agent-9"));
    }
}
