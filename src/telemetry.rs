//! Logging: the global subscriber (human-readable text or JSON lines,
//! filtered by level) and one structured line per request.
//!
//! Never logged: request or response bodies, headers other than the request
//! id, and so no password, token or `authorization` value.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::body::Body;
use futures_util::future::BoxFuture;
use http::{HeaderValue, Request, Response};
use tracing_subscriber::EnvFilter;

/// What must be flushed when the process stops.
#[derive(Debug, Default)]
pub struct TelemetryGuard {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl TelemetryGuard {
    /// Sends the spans still buffered and stops the exporter.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(e) = provider.shutdown()
        {
            tracing::warn!(error = %e, "cannot flush the last spans");
        }
    }
}

/// Whether the standard OpenTelemetry variables ask for a trace export.
fn otlp_configured() -> bool {
    let set = |name: &str| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.trim().eq_ignore_ascii_case("true"))
        || std::env::var("OTEL_TRACES_EXPORTER").is_ok_and(|v| v.trim() == "none");
    !disabled && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

/// Installs the global subscriber — `filter` is an env-filter directive,
/// `format` is `text`, `json` or `auto` (JSON unless stderr is a terminal)
/// — and, when `OTEL_EXPORTER_OTLP_ENDPOINT` (or its traces variant) is
/// set, the OTLP/gRPC span export configured by the standard `OTEL_*`
/// variables (service name, sampler, headers, timeout). Call it inside
/// the Tokio runtime: the exporter's channel lives there.
pub fn init(filter: &str, format: &str) -> Result<TelemetryGuard, String> {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    let filter = EnvFilter::try_new(filter).map_err(|e| format!("LOG_LEVEL is invalid: {e}"))?;
    let json = match format {
        "json" => true,
        "text" => false,
        _ => !std::io::stderr().is_terminal(),
    };
    type Boxed = Box<dyn Layer<tracing_subscriber::Registry> + Send + Sync>;
    let lines: Boxed = if json {
        Box::new(tracing_subscriber::fmt::layer().json().with_writer(std::io::stderr))
    } else {
        Box::new(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
    };
    let mut guard = TelemetryGuard::default();
    if otlp_configured() {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()
            .map_err(|e| format!("cannot set up the OTLP trace export: {e}"))?;
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(opentelemetry_sdk::Resource::builder().build())
            .build();
        crate::observe::set_tracer(opentelemetry::trace::TracerProvider::tracer(&provider, "conduit"));
        guard.provider = Some(provider);
    }
    tracing_subscriber::registry()
        .with(lines.with_filter(filter))
        .with(crate::observe::DatabaseObserver.with_filter(crate::observe::DatabaseObserver::targets()))
        .try_init()
        .map_err(|e| format!("cannot install the logger: {e}"))?;
    Ok(guard)
}

/// Where the authentication layer leaves the caller's id for the request
/// log (the log wraps it, so it would not see the request's extensions).
#[derive(Debug, Clone, Default)]
pub struct UserSlot(pub Arc<OnceLock<i64>>);

/// The request id header, accepted from the client or generated, and echoed.
pub const REQUEST_ID: &str = "x-request-id";

/// A request id the client may send: 1 to 128 visible ASCII characters.
fn acceptable(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty() && bytes.len() <= 128 && bytes.iter().all(|b| b.is_ascii_graphic())
}

/// A new request id: unique within the process and across restarts.
fn generate() -> HeaderValue {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    static START: OnceLock<u64> = OnceLock::new();
    let start = *START.get_or_init(|| {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos());
        (nanos.unwrap_or_default() as u64) ^ u64::from(std::process::id()).rotate_left(32)
    });
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    HeaderValue::from_str(&format!("{start:016x}{n:08x}")).expect("hex digits are a valid header value")
}

/// Logs one line per request, after its answer starts (used as
/// `gateway::AroundLayer::new(RequestLog)`): method, RPC or route template,
/// protocol, HTTP status (and gRPC status when the answer carries it in its
/// headers), latency, request id and user id.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestLog;

/// What the log line needs from the request.
pub struct Logged {
    started: Instant,
    id: HeaderValue,
    user: UserSlot,
    method: http::Method,
    protocol: &'static str,
    rpc: Option<&'static str>,
    route: Option<&'static str>,
    trace: Option<crate::observe::TraceId>,
}

impl gateway::Around for RequestLog {
    type State = Logged;

    fn before(&self, req: &mut Request<Body>) -> Logged {
        let id = match req.headers().get(REQUEST_ID) {
            Some(value) if acceptable(value) => value.clone(),
            _ => generate(),
        };
        req.headers_mut().insert(REQUEST_ID, id.clone());
        let user = UserSlot::default();
        req.extensions_mut().insert(user.clone());
        Logged {
            started: Instant::now(),
            id,
            user,
            method: req.method().clone(),
            protocol: req.extensions().get::<gateway::Protocol>().map_or("unknown", |p| p.as_str()),
            rpc: req.extensions().get::<gateway::RpcMethod>().map(|r| r.0),
            route: req.extensions().get::<gateway::RouteTemplate>().map(|r| r.0),
            trace: req.extensions().get::<crate::observe::TraceId>().copied(),
        }
    }

    fn after(logged: Logged, mut response: Response<Body>) -> BoxFuture<'static, Response<Body>> {
        let grpc_status = response.headers().get("grpc-status").and_then(|v| v.to_str().ok()).map(str::to_owned);
        tracing::info!(
            target: "conduit::request",
            method = %logged.method,
            rpc = logged.rpc.unwrap_or("-"),
            route = logged.route.unwrap_or("-"),
            protocol = logged.protocol,
            status = response.status().as_u16(),
            grpc_status = grpc_status.as_deref().unwrap_or("-"),
            latency_ms = logged.started.elapsed().as_secs_f64() * 1000.0,
            request_id = logged.id.to_str().unwrap_or_default(),
            trace_id = logged.trace.map(|t| tracing::field::display(t.0)),
            user_id = logged.user.0.get().copied(),
            "request"
        );
        response.headers_mut().insert(REQUEST_ID, logged.id);
        Box::pin(std::future::ready(response))
    }
}
