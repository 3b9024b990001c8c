//! ferry's AWS Batch launcher backend: each attempt runs as one AWS Batch job, its output read
//! from CloudWatch Logs.
//!
//! - [`names`]: job, job definition and queue names and tag values as Batch accepts them, and
//!   the vCPU and memory sizes a platform gives (Fargate's combinations checked before submit);
//! - [`aws`]: the clients of each region attempts run in, failures typed by whose fault they
//!   are, and the poller per region that reads the state of every job in flight there with
//!   batched DescribeJobs calls;
//! - [`logs`]: a job's log stream as bytes, paged with forward tokens, with the cursor the
//!   journal keeps;
//! - [`events`]: Batch's job state changes, from EventBridge through SQS, as hints to the
//!   poller;
//! - [`backend`]: the [`Backend`](ferry_launcher::Backend) over them: a job definition per
//!   image and resources registered once, a job per attempt named from the attempt id and
//!   adopted after a crash, TerminateJob on cancel and timeout, a pending deadline;
//! - [`run`]: the launcher as a service.

pub mod aws;
pub mod backend;
pub mod events;
pub mod logs;
pub mod names;
mod service;
pub mod stage;
mod state;

pub use backend::{AwsBatch, BACKEND, Handle, Settings};
pub use service::{Config, backend, run, sdk_config};
