//! ferry's Kubernetes launcher backend: each attempt runs as one Job (one pod, `backoffLimit:
//! 0`, `restartPolicy: Never`) in a namespace of a cluster reached with kube-rs, from a
//! kubeconfig or from inside the cluster.
//!
//! - [`names`]: the Job's name from the attempt id (DNS-1123, at most 63 characters), its labels
//!   and annotations;
//! - [`spec`]: the Job and the Secret it owns (the task's env and input files), resources,
//!   scheduling and the server-side backstops; outputs come back as the pod's termination
//!   message;
//! - [`stage`]: output files, taken out of the pod's stage container with `tar` over
//!   `pods/exec` once the task has ended;
//! - [`cache`]: one pod watch per namespace, which `status` reads, so that no attempt is polled;
//! - [`logs`]: the pod's log, followed with timestamps from a cursor that survives a broken
//!   stream or a restart;
//! - [`backend`]: the [`Backend`](ferry_launcher::Backend) over all of it; [`run`]: the
//!   launcher as a service.

pub mod backend;
pub mod cache;
pub mod error;
pub mod logs;
pub mod names;
mod service;
pub mod spec;
pub mod stage;

pub use backend::{BACKEND, DEFAULT_STAGE_IMAGE, Handle, Kubernetes, Settings};
pub use service::{Config, backend, connect, launcher_id, run};
