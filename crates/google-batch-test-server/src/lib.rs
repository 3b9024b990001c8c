//! A Google Cloud Batch server for tests, where Google offers no emulator: it speaks the Batch
//! v1 REST API for jobs and Cloud Logging v2's `entries.list`, and runs each job's container
//! for real on a Docker engine, so that exit codes, OOM kills, logs, timeouts and cancels are
//! real.
//!
//! What it serves (plain HTTP on 127.0.0.1, [`TestServer::url`]; errors in Google's shape,
//! `{"error": {"code", "message", "status"}}`):
//!
//! - `projects/P/locations/L/jobs`: create (with `jobId`; `409 ALREADY_EXISTS`, or the job
//!   back when retried with the same `requestId`), get (`404 NOT_FOUND`), list with a filter
//!   of `labels.KEY`, `name` and `status.state` terms joined by `AND` and pages, `:cancel`
//!   and delete (each answering with a finished long-running operation, the job's own state
//!   showing the progress); the job is stored as sent, with `name`, `uid`, `createTime`,
//!   `updateTime` and `status` added;
//! - a runner per job: QUEUED, SCHEDULED, RUNNING, then SUCCEEDED or FAILED by the
//!   container's exit code, with Batch's `statusEvents` (the task's exit code in
//!   `taskExecution`), `taskGroups` counts and `runDuration`; `maxRunDuration` enforced (exit
//!   code [`EXIT_MAX_RUN_DURATION`]); CANCELLATION_IN_PROGRESS then CANCELLED, and
//!   DELETION_IN_PROGRESS then gone, the container stopped with SIGTERM and killed after
//!   [`Options::stop_grace`] (as on a Batch VM the command is PID 1 of its container, so one
//!   that does not handle SIGTERM takes the whole grace); a job whose image is not on the
//!   engine fails, one that asks for a GPU stays QUEUED;
//! - the container as Batch's agent makes it: `imageUri`, `entrypoint`, `commands`,
//!   `volumes`, the task's and the runnable's `environment.variables` and Batch's
//!   `BATCH_TASK_INDEX`, `BATCH_TASK_COUNT`, `BATCH_TASK_RETRY_ATTEMPT`, `BATCH_JOB_UID`,
//!   `BATCH_TASK_ID`; host networking, so a task reaches servers on 127.0.0.1;
//!   `computeResource` as the container's CPU and memory limits (so an over-limit task is
//!   OOM-killed, exit code 137), where Batch would only size the VM by it;
//! - GCS volumes, against a GCS server's JSON API ([`Options::gcs_endpoint`]), as a copy in
//!   before the task and out after it rather than a live gcsfuse mount (see `gcs.rs`);
//! - `POST /v2/entries:list`: each line a task writes is an entry of
//!   `projects/P/logs/batch_task_logs` ([`TASK_LOG`]) as soon as it is written, with Batch's
//!   labels (`job_uid`, `task_id`, `task_group_name` and the job's own) and severity `INFO`
//!   (stdout) or `ERROR` (stderr); filtered by `logName`, labels, `resource.labels`,
//!   `severity`, `timestamp` and `insertId` (terms joined by `AND` and by `OR` in parentheses,
//!   as one read of many jobs' logs asks), ordered by timestamp, in pages; entries outlive
//!   their job, and every line is stored before the job is seen to end;
//! - Pub/Sub notifications: a job's `notifications` of type `JOB_STATE_CHANGED` are published
//!   on their topic at each change of the job's state, with Batch's attributes (`JobName`,
//!   `JobUID`, `Type`, `NewJobState`), to a Pub/Sub REST API ([`Options::pubsub_endpoint`],
//!   gcloud's emulator);
//! - a count of requests by collection and method ([`TestServer::counts`]) for benchmarks.
//!
//! What it does not do: authentication, more than one task group, task or runnable (no
//! `taskCount` above 1, scripts, barriers, background runnables), retries
//! (`maxRetryCount`, `lifecyclePolicies`), Secret Manager and KMS variables, NFS and
//! persistent-disk volumes, live GCS mounts, pulling images (there is no registry), operations
//! to poll (`…/operations/…`), task-level Pub/Sub notifications, `logsPolicy` `PATH` (logs go to the log
//! store whatever the destination), and the jobs list's `orderBy`.

mod api;
mod error;
mod filter;
mod gcs;
mod jobs;
mod logs;
mod pubsub;
mod runner;
mod time;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::Docker;
use bollard::query_parameters::{ListContainersOptionsBuilder, RemoveContainerOptionsBuilder};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::jobs::{Stop, Store};

pub use crate::logs::TASK_LOG;
pub use crate::runner::EXIT_MAX_RUN_DURATION;

/// Every container the server runs carries this label, with the server's id as value.
pub const CONTAINER_LABEL: &str = "dev.ferry.google-batch-test-server";

/// Requests served, by `(collection, method)`: `("jobs", "create")`, `("jobs", "get")`,
/// `("jobs", "list")`, `("jobs", "cancel")`, `("jobs", "delete")`, `("entries", "list")`.
pub type Counts = BTreeMap<(String, String), u64>;

/// What the server's parts share.
pub(crate) struct Shared {
    /// The jobs and the runners of those not ended.
    pub store: Mutex<Store>,
    pub logs: Mutex<logs::LogStore>,
    pub docker: Docker,
    /// This server's id: its containers' label, and part of their names.
    pub id: String,
    pub gcs: Option<gcs::Gcs>,
    /// Where jobs' state changes are published, when the server has a Pub/Sub.
    pub pubsub: Option<pubsub::Outbox>,
    /// See [`Options::start_delay`].
    pub start_delay: Duration,
    /// See [`Options::stop_grace`].
    pub stop_grace: Duration,
    pub counts: Mutex<Counts>,
    pub shutdown: CancellationToken,
    pub tasks: TaskTracker,
}

impl Shared {
    pub fn count(&self, collection: &str, method: &str) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        *counts
            .entry((collection.to_string(), method.to_string()))
            .or_default() += 1;
    }
}

/// How to start a [`TestServer`].
#[derive(Debug, Clone)]
pub struct Options {
    /// The engine to run jobs on; `None` (the default) for the one `DOCKER_HOST` names (else
    /// the local socket).
    pub docker: Option<Docker>,
    /// The port of 127.0.0.1 to serve on; 0 (the default) for a free one.
    pub port: u16,
    /// The GCS JSON API that GCS volumes live in (`http://127.0.0.1:PORT`, a fake-gcs-server).
    /// Without it a job with a GCS volume is refused at create.
    pub gcs_endpoint: Option<String>,
    /// The Pub/Sub REST API (`http://127.0.0.1:PORT`, gcloud's emulator) that jobs' state
    /// changes are published to, as Batch does for a job's `notifications` of type
    /// `JOB_STATE_CHANGED`. Without it a job asking for them is refused at create.
    pub pubsub_endpoint: Option<String>,
    /// How long a job stays QUEUED, and then SCHEDULED, before its container is made: time
    /// for tests to see those states. A cancel or delete meanwhile ends the wait. None by
    /// default.
    pub start_delay: Duration,
    /// How long a cancelled or deleted job's container has, after SIGTERM, before it is
    /// killed. 10 s by default; whole seconds, rounded up.
    pub stop_grace: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            docker: None,
            port: 0,
            gcs_endpoint: None,
            pubsub_endpoint: None,
            start_delay: Duration::ZERO,
            stop_grace: Duration::from_secs(10),
        }
    }
}

/// A running test Batch server. [`TestServer::shutdown`] stops serving and removes every
/// container it started; dropping it does the same as well as it can without waiting.
pub struct TestServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shut_down: AtomicBool,
}

impl std::fmt::Debug for TestServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestServer")
            .field("addr", &self.addr)
            .field("id", &self.shared.id)
            .finish()
    }
}

impl TestServer {
    /// Starts a server on 127.0.0.1 running jobs on [`Options::docker`].
    pub async fn start(options: Options) -> std::io::Result<TestServer> {
        let docker = match options.docker {
            Some(docker) => docker,
            None => connect_from_env()
                .map_err(std::io::Error::other)?
                .negotiate_version()
                .await
                .map_err(std::io::Error::other)?,
        };
        let id = uuid::Uuid::new_v4().simple().to_string()[..10].to_string();
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let pubsub = options
            .pubsub_endpoint
            .as_deref()
            .map(|ep| pubsub::Outbox::start(ep, shutdown.clone(), &tasks));
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::default()),
            logs: Mutex::new(logs::LogStore::default()),
            docker,
            id,
            gcs: options.gcs_endpoint.as_deref().map(gcs::Gcs::new),
            pubsub,
            start_delay: options.start_delay,
            stop_grace: options.stop_grace,
            counts: Mutex::new(Counts::new()),
            shutdown,
            tasks,
        });
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", options.port)).await?;
        let addr = listener.local_addr()?;
        let app = api::router(shared.clone());
        let stop = shared.shutdown.clone();
        tokio::spawn(async move {
            let serve =
                axum::serve(listener, app).with_graceful_shutdown(async move { stop.cancelled().await });
            if let Err(e) = serve.await {
                tracing::warn!(error = %e, "the test Batch server stopped");
            }
        });
        Ok(TestServer {
            addr,
            shared,
            shut_down: AtomicBool::new(false),
        })
    }

    /// `http://127.0.0.1:PORT`: the Batch endpoint (`/v1/…`) and the Logging one (`/v2/…`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// This server's id, the value of [`CONTAINER_LABEL`] on its containers.
    pub fn id(&self) -> &str {
        &self.shared.id
    }

    /// Requests served so far, by collection and method.
    pub fn counts(&self) -> Counts {
        self.shared
            .counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn reset_counts(&self) {
        self.shared
            .counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// The Docker container that runs (or ran) the task of the job with this uid.
    pub fn container_name(&self, job_uid: &str) -> String {
        runner::container_name(&self.shared.id, job_uid)
    }

    /// The names of the engine's containers this server made that are still there.
    pub async fn containers(&self) -> Result<Vec<String>, bollard::errors::Error> {
        containers_of(&self.shared.docker, &self.shared.id).await
    }

    /// Stops serving, stops every job's container at once (no grace, no GCS sync back),
    /// removes them, and waits for it.
    pub async fn shutdown(self) {
        self.shut_down.store(true, Ordering::SeqCst);
        self.stop_runners();
        self.shared.shutdown.cancel();
        self.shared.tasks.close();
        self.shared.tasks.wait().await;
    }

    fn stop_runners(&self) {
        let store = self.shared.store.lock().unwrap_or_else(|e| e.into_inner());
        for runner in store.runners.values() {
            runner.request(Stop::Shutdown);
        }
    }
}

impl Drop for TestServer {
    /// Tells the runners to stop, then removes the server's containers from a thread of its
    /// own (the runtime the runners need may be ending with the test that drops the server).
    fn drop(&mut self) {
        if self.shut_down.load(Ordering::SeqCst) {
            return;
        }
        self.stop_runners();
        self.shared.shutdown.cancel();
        let id = self.shared.id.clone();
        let (done, wait) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
            if let Ok(runtime) = runtime {
                runtime.block_on(async {
                    // A connection of its own: the server's belongs to the other runtime.
                    let Ok(docker) = connect_from_env() else { return };
                    let names = containers_of(&docker, &id).await.unwrap_or_default();
                    let options = RemoveContainerOptionsBuilder::default()
                        .force(true)
                        .v(true)
                        .build();
                    for name in names {
                        let _ = docker.remove_container(&name, Some(options.clone())).await;
                    }
                });
            }
            let _ = done.send(());
        });
        let _ = wait.recv_timeout(Duration::from_secs(20));
    }
}

fn connect_from_env() -> Result<Docker, bollard::errors::Error> {
    let host = std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into());
    Docker::connect_with_host(&host)
}

async fn containers_of(docker: &Docker, id: &str) -> Result<Vec<String>, bollard::errors::Error> {
    let filters = HashMap::from([("label", vec![format!("{CONTAINER_LABEL}={id}")])]);
    let options = ListContainersOptionsBuilder::default()
        .all(true)
        .filters(&filters)
        .build();
    let found = docker.list_containers(Some(options)).await?;
    Ok(found
        .into_iter()
        .flat_map(|c| c.names.unwrap_or_default())
        .map(|n| n.trim_start_matches('/').to_string())
        .collect())
}
