//! ferry's Ray launcher backend: each attempt runs as one Ray job on an existing cluster,
//! submitted through the Jobs REST API of its head node's dashboard.
//!
//! - [`api`]: the Jobs API client (submit under a submission id, details, log, stop, delete,
//!   list), its failures typed by whose fault they are;
//! - [`backend`]: the [`Backend`](ferry_launcher::Backend) over it: submission id from the
//!   attempt id (a second submit of it is adopted, never run twice), entrypoint resources and
//!   runtime environment, status polled, the job's log copied by offset, stop, outputs through
//!   the attempt's directory and the artifact store;
//! - [`run`]: the launcher as a service.

pub mod api;
pub mod backend;
mod service;

pub use backend::{BACKEND, Handle, Ray, Settings};
pub use service::{Config, backend, run};
