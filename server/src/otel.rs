//! OpenTelemetry traces of the join flow, exported by OTLP/HTTP (protobuf)
//! when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (docs/tracing.md).
//!
//! The spans are ordinary `tracing` spans bridged by tracing-opentelemetry;
//! only the ones named in [`SPANS`] (and warnings and errors, as span
//! events) are exported. None of them is per message: a pose or a delta
//! costs nothing here. An incoming W3C `traceparent` header (on any HTTP
//! request, the WebSocket upgrade included) makes the request's span a child
//! of the caller's, so a client's sign-in and its socket land in one trace.
//!
//! Without the variable nothing is built and [`enabled`] is false.

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::sync::atomic::{AtomicBool, Ordering};
use tracing::Subscriber;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer;
use tracing_subscriber::registry::LookupSpan;

/// Where spans go (the OTLP/HTTP base URL; `/v1/traces` is added).
pub const ENDPOINT_ENV: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
/// `service.name` of the exported spans.
pub const SERVICE_NAME: &str = "plaza-server";

/// The exported spans (docs/tracing.md):
/// - `http.request`: every HTTP request (named `METHOD /route` in OTel);
///   `request_id`, `user_id` where known (sign-in), `http.response.status_code`.
/// - `ws.session`: one WebSocket, from upgrade to close, a child of the
///   upgrade request's span; `request_id`, `session_id`, `user_id`, `room_id`.
/// - `hello`: the hello handshake (token check).
/// - `join`: from `join` until the room has queued `joined`.
/// - `first_delta`: from `join` until the first delta is written to the
///   socket.
/// - `voice.signal`: one voice signaling message.
pub const SPANS: [&str; 6] = ["http.request", "ws.session", "hello", "join", "first_delta", "voice.signal"];

static ENABLED: AtomicBool = AtomicBool::new(false);

/// True once [`Otel::from_env`] has set up an exporter.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

#[derive(Debug, thiserror::Error)]
pub enum OtelError {
    /// Not a `source`: the message has it (a printed chain says it once).
    #[error("can't set up the OTLP trace exporter ({ENDPOINT_ENV}): {0}")]
    Exporter(opentelemetry_otlp::ExporterBuildError),
}

impl From<opentelemetry_otlp::ExporterBuildError> for OtelError {
    fn from(e: opentelemetry_otlp::ExporterBuildError) -> Self {
        OtelError::Exporter(e)
    }
}

/// The trace pipeline; [`Otel::shutdown`] (or dropping it) flushes what is
/// still queued.
#[derive(Debug)]
pub struct Otel {
    provider: SdkTracerProvider,
}

impl Otel {
    /// The pipeline, when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (and not
    /// empty). The exporter's other standard variables apply
    /// (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, `…_HEADERS`, `…_TIMEOUT`,
    /// `OTEL_BSP_SCHEDULE_DELAY`, …).
    pub fn from_env() -> Result<Option<Otel>, OtelError> {
        if std::env::var(ENDPOINT_ENV).map_or(true, |v| v.trim().is_empty()) {
            return Ok(None);
        }
        let exporter = opentelemetry_otlp::SpanExporter::builder().with_http().build()?;
        let resource = opentelemetry_sdk::Resource::builder().with_service_name(SERVICE_NAME).build();
        let provider = SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build();
        ENABLED.store(true, Ordering::Relaxed);
        Ok(Some(Otel { provider }))
    }

    /// The tracing layer that turns the [`SPANS`] into OTel spans.
    pub fn layer<S>(&self) -> impl Layer<S> + Send + Sync + 'static
    where
        S: Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
    {
        let tracer = self.provider.tracer(SERVICE_NAME);
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            // No work on every poll of an instrumented future (a socket's
            // task is polled once per message).
            .with_tracked_inactivity(false)
            .with_context_activation(false)
            .with_threads(false)
            .with_filter(tracing_subscriber::filter::filter_fn(|meta| {
                if meta.is_span() {
                    meta.target().starts_with("plaza_server") && SPANS.contains(&meta.name())
                } else {
                    *meta.level() <= tracing::Level::WARN
                }
            }))
    }

    /// Exports what is queued and stops the exporter (blocks until done).
    pub fn shutdown(self) {
        drop(self); // see Drop
    }
}

impl Drop for Otel {
    fn drop(&mut self) {
        ENABLED.store(false, Ordering::Relaxed);
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(cause = %e, "trace exporter shutdown failed; the last spans may be lost");
        }
    }
}

struct Headers<'a>(&'a axum::http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// Makes `span` a child of the caller's span when the request carries a
/// valid W3C `traceparent` (and `tracestate`). Does nothing when tracing
/// is off or the header is missing or malformed.
pub fn set_remote_parent(span: &tracing::Span, headers: &axum::http::HeaderMap) {
    if !enabled() || !headers.contains_key("traceparent") {
        return;
    }
    let cx = TraceContextPropagator::new().extract(&Headers(headers));
    use opentelemetry::trace::TraceContextExt;
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// The spans of one WebSocket session (`ws.session` and its children),
/// created once per socket, per hello and per join: never per message.
#[derive(Debug, Clone)]
pub struct SessionTrace {
    session: tracing::Span,
    first_delta: FirstDelta,
}

impl SessionTrace {
    /// `ws.session`, a child of the current span (the upgrade request's).
    pub fn new(request_id: &str) -> SessionTrace {
        let session = tracing::info_span!(
            "ws.session",
            request_id,
            session_id = tracing::field::Empty,
            user_id = tracing::field::Empty,
            room_id = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        SessionTrace { session, first_delta: FirstDelta::default() }
    }

    /// A session not traced (tests, bots).
    pub fn none() -> SessionTrace {
        SessionTrace { session: tracing::Span::none(), first_delta: FirstDelta::default() }
    }

    pub fn span(&self) -> &tracing::Span {
        &self.session
    }

    /// What the writer task needs to end `first_delta`.
    pub fn first_delta(&self) -> FirstDelta {
        self.first_delta.clone()
    }

    /// `hello`: the handshake, up to `welcome` queued.
    pub fn hello(&self) -> tracing::Span {
        tracing::info_span!(parent: &self.session, "hello", user_id = tracing::field::Empty, otel.status_code = tracing::field::Empty)
    }

    /// The hello passed: who this socket is.
    pub fn welcomed(&self, hello: &tracing::Span, user_id: &str, session_id: &str) {
        hello.record("user_id", user_id);
        self.session.record("user_id", user_id);
        self.session.record("session_id", session_id);
    }

    /// The hello failed: the socket closes with `code`.
    pub fn refused(&self, hello: &tracing::Span, code: u16) {
        hello.record("otel.status_code", "ERROR");
        self.session.record("otel.status_code", "ERROR");
        tracing::info!(parent: hello, code, "hello refused");
    }

    /// `join` (until `joined` is queued) and `first_delta` (until the
    /// writer sends this member its first delta) start now.
    pub fn join(&self, room: &str) -> Join {
        let join = tracing::info_span!(parent: &self.session, "join", room, room_id = tracing::field::Empty, otel.status_code = tracing::field::Empty);
        let first_delta = tracing::info_span!(parent: &self.session, "first_delta", room_id = tracing::field::Empty);
        Join { join, first_delta }
    }

    /// The room queued `joined`: `first_delta` waits for the writer now.
    pub fn joined(&self, join: Join, room_id: &str) {
        join.join.record("room_id", room_id);
        join.first_delta.record("room_id", room_id);
        self.session.record("room_id", room_id);
        self.first_delta.arm(join.first_delta);
    }

    /// `voice.signal`: one voice signaling message (`kind`: offer, answer,
    /// candidate or other).
    pub fn voice_signal(&self, kind: &str, room_id: Option<&str>) -> tracing::Span {
        let kind = match kind {
            "offer" | "answer" | "candidate" | "ice" => kind,
            _ => "other",
        };
        tracing::info_span!(parent: &self.session, "voice.signal", kind, room_id = room_id.unwrap_or(""))
    }
}

/// A join's spans; [`Join::span`] is the one to instrument the join with.
/// Dropped without [`SessionTrace::joined`] (the join failed), both end.
#[derive(Debug)]
pub struct Join {
    join: tracing::Span,
    first_delta: tracing::Span,
}

impl Join {
    pub fn span(&self) -> &tracing::Span {
        &self.join
    }

    /// The join failed: say so on the span.
    pub fn failed(&self, why: &str) {
        self.join.record("otel.status_code", "ERROR");
        tracing::info!(parent: &self.join, why, "join failed");
    }
}

/// Ends the `first_delta` span when the writer sends the first delta after
/// a join. The writer checks one atomic flag per delta; the lock is taken
/// once per join.
#[derive(Debug, Clone, Default)]
pub struct FirstDelta(std::sync::Arc<FirstDeltaSlot>);

#[derive(Debug, Default)]
pub struct FirstDeltaSlot {
    armed: AtomicBool,
    span: std::sync::Mutex<Option<tracing::Span>>,
}

impl FirstDelta {
    fn arm(&self, span: tracing::Span) {
        *self.0.span.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(span);
        self.0.armed.store(true, Ordering::Release);
    }

    /// A delta was just written to the socket.
    #[inline]
    pub fn written(&self) {
        if self.0.armed.load(Ordering::Relaxed) {
            self.end();
        }
    }

    #[cold]
    fn end(&self) {
        self.0.armed.store(false, Ordering::Relaxed);
        // Dropping the span ends it.
        drop(self.0.span.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take());
    }
}
