//! ferry's Google Batch launcher backend: each attempt runs as one Google Batch job, its files
//! through Cloud Storage, its output read from Cloud Logging.
//!
//! - [`google`]: the REST calls to Batch v1, Cloud Logging v2, Cloud Storage's JSON API and
//!   Pub/Sub,
//!   with their failures typed by whose fault they are;
//! - [`names`]: job ids, labels and request ids as Batch accepts them, resources in its units;
//! - [`poller`]: the one poller that reads the state of every job in flight with a listing
//!   per location;
//! - [`events`]: Batch's job state changes, from Pub/Sub, as hints to the poller;
//! - [`logs`]: a job's log entries as bytes, with the cursor the journal keeps;
//! - [`stage`]: input files, secrets, outputs and output files under a prefix per attempt,
//!   mounted into the job as a Cloud Storage volume;
//! - [`backend`]: the [`Backend`](ferry_launcher::Backend) over them;
//! - [`run`]: the launcher as a service.

pub mod backend;
pub mod events;
pub mod google;
pub mod logs;
pub mod names;
pub mod poller;
mod service;
pub mod stage;

pub use backend::{BACKEND, GoogleBatch, Handle, Notifications, Settings};
pub use service::{Config, backend, run};
