//! Logging set-up: `tracing` with human-readable or JSON output, to stderr.

use serde::{Deserialize, Serialize};
use tracing_subscriber::EnvFilter;

/// `[log]` section.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `human` (default) or `json` (one object per line, for log shippers).
    pub format: LogFormat,
    /// A tracing filter such as `info` or `info,rdkafka=warn` (default `info`).
    /// `RUST_LOG`, when set, takes precedence.
    pub level: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Human,
    Json,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { format: LogFormat::Human, level: "info".into() }
    }
}

/// Installs the global subscriber. Call once, early in `main`; later calls are no-ops.
pub fn init(config: &LogConfig) -> Result<(), String> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(value) if !value.is_empty() => EnvFilter::try_new(value),
        _ => EnvFilter::try_new(&config.level),
    }
    .map_err(|e| format!("invalid log.level {:?}: {e}", config.level))?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let result = match config.format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).try_init(),
    };
    // Already installed (tests start several services in one process): keep the first.
    let _ = result;
    Ok(())
}
