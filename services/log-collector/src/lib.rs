//! ferry's log collector: every `dev.ferry.task.log` event into a durable log store, and the
//! queries that read it back.
//!
//! - [`LogStore`] keeps one row per line, unique on `(attempt_id, seq)`, so a line is stored
//!   exactly once however often its event is delivered. It answers [`LogStore::query`] (a page of
//!   a job, a task or an attempt) and [`LogStore::follow`] (like `tail -f`). SQLite today
//!   (`sqlite:///path/logs.db`, `sqlite::memory:`); the SQL it runs on data is portable to
//!   PostgreSQL.
//! - [`run`] is the service: it consumes the logs topic in batches, stores each batch in one
//!   transaction and acks the deliveries only after the commit. Undecodable events are
//!   dead-lettered with the reason; a failing store makes it give the batch back and retry.
//!   With a retention ([`Config::retention`]) it also deletes lines older than it, a bounded
//!   batch per transaction ([`LogStore::expire`]), and remembers whose ([`LogStore::expired`]).
//!
//! Ordering: within one attempt, lines are returned by `seq`. Across a task or a job, lines are
//! returned in arrival order (the [`Cursor`]), which is each attempt's `seq` order whenever its
//! batches arrive in order, the normal case as launchers publish them in order on the job's
//! partition.

mod error;
mod flags;
mod service;
mod store;

pub use error::{Error, Result};
pub use flags::{Flags, LogDb, ProcessFlags};
pub use service::{
    Config, DEFAULT_BATCH_MAX, DEFAULT_GROUP, DEFAULT_RETENTION_BATCH, DEFAULT_RETENTION_EVERY, LogCollector,
    run, sweep_retention,
};
pub use store::{
    Appended, Cursor, DEFAULT_FOLLOW_POLL, LogQuery, LogQuotas, LogRecord, LogStore, quota_marker, validate,
};
