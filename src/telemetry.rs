//! Logging set-up: human-readable text or JSON lines, filtered by level.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber; `filter` is an env-filter directive.
pub fn init(filter: &str, json: bool) -> Result<(), String> {
    let filter = EnvFilter::try_new(filter).map_err(|e| format!("LOG_LEVEL is invalid: {e}"))?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let result = if json { builder.json().try_init() } else { builder.try_init() };
    result.map_err(|e| format!("cannot install the logger: {e}"))
}
