//! Logging: the global subscriber (human-readable text or JSON lines,
//! filtered by level), and the OTLP span export when it is configured.
//! The line per request is written by [`crate::middleware::request_log`].

use std::io::IsTerminal;

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

/// PostgreSQL's NOTICEs reach the log at INFO through sqlx; the only ones
/// conduit causes are harmless (`relation "_sqlx_migrations" already
/// exists, skipping` at every start), so they are logged only from WARN up
/// unless the filter names their target (`sqlx::postgres::notice=info`).
fn quiet_notices(filter: &str) -> String {
    const TARGET: &str = "sqlx::postgres::notice";
    if filter.contains(TARGET) { filter.to_owned() } else { format!("{filter},{TARGET}=warn") }
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

    let filter = EnvFilter::try_new(quiet_notices(filter)).map_err(|e| format!("LOG_LEVEL is invalid: {e}"))?;
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
        crate::observability::observe::set_tracer(opentelemetry::trace::TracerProvider::tracer(&provider, "conduit"));
        guard.provider = Some(provider);
    }
    tracing_subscriber::registry()
        .with(lines.with_filter(filter))
        .with(
            crate::observability::observe::DatabaseObserver
                .with_filter(crate::observability::observe::DatabaseObserver::targets()),
        )
        .try_init()
        .map_err(|e| format!("cannot install the logger: {e}"))?;
    Ok(guard)
}
