//! `tracing` set-up shared by every binary.

use tracing_subscriber::EnvFilter;

/// How log records are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    #[default]
    Human,
    Json,
}

/// Installs a global subscriber writing to stderr. The filter comes from `FERRY_LOG` (then
/// `RUST_LOG`), falling back to `default_filter`; `FERRY_LOG_FORMAT=json` selects JSON lines.
/// Calling it twice is harmless.
pub fn init(default_filter: &str) {
    let filter = std::env::var("FERRY_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| default_filter.to_string());
    let format = match std::env::var("FERRY_LOG_FORMAT").as_deref() {
        Ok("json") => Format::Json,
        _ => Format::Human,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new(filter))
        .with_writer(std::io::stderr);
    let _ = match format {
        Format::Json => builder.json().try_init(),
        Format::Human => builder.with_target(false).try_init(),
    };
}
