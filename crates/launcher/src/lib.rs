//! ferry's launcher runtime: what every launcher does, whatever its compute.
//!
//! A launcher turns `task.dispatched` into compute and reports `task.started`, `task.heartbeat`,
//! `task.log` and `task.finished`. Most of that does not depend on the kind of compute, and lives
//! here so that every backend (local processes, containers, Kubernetes Jobs, cloud batch jobs)
//! shares one implementation of it:
//!
//! - [`backend`]: the trait a kind of compute implements, with the failure typing and the
//!   shutdown policies;
//! - [`journal`]: the record of what happened to each attempt, which makes a launcher
//!   idempotent per attempt id and lets it reconcile after a crash;
//! - [`logs`]: output bytes cut into masked lines, the same way however they are read;
//! - [`secrets`]: the values behind `{{ secret('NAME') }}`, and their masking as `****` in
//!   everything a launcher sends; [`template`]: filling them, and the working directory, into
//!   a dispatch's templates;
//! - [`collect`]: the outputs object a task writes and its limits, and output files copied to
//!   the artifact store;
//! - [`batch`]: what the cloud batch backends share: a task's command and environment with its
//!   secrets set apart for the staging bucket, the files staged there, a log read by position,
//!   and the one poller that reads every job's state in rounds;
//! - [`publish`]: publishing with retries until the broker confirms;
//! - [`retention`]: the periodic sweep that removes expired output files from the artifact
//!   directory (`--artifact-retention`);
//! - [`run`]: the service: reconcile what the journal holds, then dispatch and cancel intake,
//!   the in-flight window and each attempt's life, from its dispatch to its report, driving
//!   the backend through [`Backend`].
//!
//! [`conformance`] (feature `conformance`) is the test suite every backend passes, expanded
//! per backend by [`launcher_conformance!`]; [`testing`] (feature `testing`, which it implies)
//! is a backend on an in-memory platform: the runtime's test double, and with scripted compute
//! the launcher other services' tests run.

pub mod archive;
mod attempt;
pub mod backend;
pub mod batch;
pub mod collect;
#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
mod intake;
pub mod journal;
pub mod logs;
pub mod publish;
pub mod quota;
mod reconcile;
pub mod retention;
mod runtime;
pub mod secrets;
pub mod service;
pub mod template;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

use std::path::PathBuf;

pub use backend::{AttemptError, Backend, Compute, ComputeState, ShutdownPolicy};
pub use quota::ArtifactQuotas;
pub use retention::ArtifactRetention;
pub use runtime::{Config, run};
pub use secrets::{MIN_SECRET_BYTES, Masker, Secrets};
pub use service::{Prepared, Service};

pub(crate) use runtime::Runtime;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a launcher could not start or had to stop. Problems of one attempt are never errors
/// here: they are reported on that attempt's `task.finished`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration can never work.
    #[error("invalid launcher configuration: {0}")]
    Config(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("secrets file {}: {message}", path.display())]
    SecretsFile { path: PathBuf, message: String },
    #[error(transparent)]
    Bus(#[from] ferry_bus::Error),
}
