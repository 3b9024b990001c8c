//! ferry's Docker launcher backend: each attempt runs as one container on a Docker engine,
//! reached over its API with bollard (`DOCKER_HOST`, or the local socket).
//!
//! This crate holds what the backend asks of the engine, per attempt:
//!
//! - [`Engine`] ([`engine`]): connect, create or adopt a container named from the attempt id and
//!   labelled with its job, task, attempt and owning launcher ([`spec`]), start, inspect (exit
//!   code, OOM kill, times), stop with a grace, remove; list the containers a launcher owns and
//!   follow the engine's events about them;
//! - [`logs`]: stdout and stderr with timestamps, from a [`LogCursor`] that resumes with nothing
//!   lost or repeated;
//! - [`files`]: input files into the working directory before start, the outputs file and the
//!   output files out of it after exit, with hostile names and links refused and sizes capped.
//!
//! Errors say whose fault they are ([`Error::is_task_fault`]): a missing image or a refused
//! request fails the attempt, an engine that cannot be reached loses it.

pub mod backend;
pub mod engine;
pub mod error;
pub mod files;
pub mod logs;
mod service;
pub mod spec;

pub use backend::{BACKEND, Docker, Handle};
pub use engine::{ContainerEvent, ContainerStatus, Created, DEFAULT_HOST, Engine, Owned, State};
pub use error::{Error, Result};
pub use files::{Collected, CollectedFile, InputFile, Limits, Skipped};
pub use logs::{LogCursor, LogEntry, LogStream};
pub use service::{Config, connect, launcher_id, run};
pub use spec::{Attempt, ContainerSpec, Gpus, Mount, PullPolicy, container_name};
