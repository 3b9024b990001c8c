//! Metric names, in one place. Services record them as `tracing` fields today; an exporter maps
//! them to instruments.

/// Milliseconds from a task becoming ready to its process starting.
pub const DISPATCH_LATENCY_MS: &str = "ferry.dispatch.latency_ms";
/// Attempts dispatched and not yet finished.
pub const ATTEMPTS_IN_FLIGHT: &str = "ferry.attempts.in_flight";
/// Events applied by the scheduler in one transaction.
pub const SCHEDULER_BATCH_SIZE: &str = "ferry.scheduler.batch_size";
/// Seconds of compute an attempt held, from start to release.
pub const COMPUTE_SECONDS: &str = "ferry.compute.seconds";
/// Log lines stored by the log collector.
pub const LOG_LINES_STORED: &str = "ferry.logs.lines_stored";
/// Log lines deleted by the log collector's retention.
pub const LOG_LINES_EXPIRED: &str = "ferry.logs.lines_expired";
/// Log lines the log collector did not store: their namespace was at its log quota.
pub const LOG_LINES_DROPPED: &str = "ferry.logs.lines_dropped";
