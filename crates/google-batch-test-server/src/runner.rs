//! Each job's life, as Batch and the VM it would get drive it: QUEUED, SCHEDULED, RUNNING
//! (its container on the Docker engine), then SUCCEEDED or FAILED by the exit code; or
//! CANCELLED, or gone when deleted.
//!
//! One runner task per job alone creates, stops and removes the job's container and GCS
//! volume copies, so a cancel or delete racing a start never leaves one behind: the API marks
//! the job and tells the runner ([`Runner::request`]), which stops the container within the
//! grace, writes the volumes back, and records the end. The container is removed when the job
//! ends (its output is already in the log store), as Batch deletes the VM.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bollard::models::{ContainerCreateBody, HostConfig, HostConfigLogConfig};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, KillContainerOptionsBuilder, RemoveContainerOptionsBuilder,
    StopContainerOptionsBuilder, WaitContainerOptionsBuilder,
};
use futures::StreamExt;
use tokio::time::Instant;

use crate::gcs::Mounted;
use crate::jobs::{JobKey, JobRecord, Plan, Runner, State, Stop, ZONE};
use crate::logs::{self, TaskLog};
use crate::time::format_duration;
use crate::{CONTAINER_LABEL, Shared};

/// The exit code Batch reports for a task killed for running longer than its
/// `maxRunDuration`.
pub const EXIT_MAX_RUN_DURATION: i64 = 50005;

/// How long the log of a container that has ended may take to be read to its end (a task
/// that wrote 200,000 lines takes seconds on a loaded machine).
const LOG_DRAIN: Duration = Duration::from_secs(30);

/// The Docker container running the task of the job with this uid.
pub fn container_name(server: &str, uid: &str) -> String {
    format!("gbts-{server}-{uid}")
}

/// How a job's run ended, before it is recorded.
enum End {
    /// Stopped by a cancel, a delete or the server's shutdown, before or while it ran.
    Stopped { ran: Option<Duration> },
    /// The task could not start; `why` completes "Task state is updated from ASSIGNED to
    /// FAILED on …".
    NotRun { why: String },
    Exited {
        code: i64,
        ran: Duration,
        timed_out: bool,
        /// Writing the GCS volumes back failed: the task fails whatever its code.
        sync_error: Option<String>,
    },
}

/// Starts the runner of a job just stored.
pub fn start(s: &Arc<Shared>, key: JobKey, plan: Plan, task_log: TaskLog, runner: Runner) {
    let s2 = s.clone();
    s.tasks.spawn(async move {
        let mut run = Run {
            s: s2,
            key,
            plan,
            task_log,
            runner,
            container: None,
        };
        let end = run.drive().await;
        run.finish(end).await;
    });
}

struct Run {
    s: Arc<Shared>,
    key: JobKey,
    plan: Plan,
    task_log: TaskLog,
    runner: Runner,
    /// The container, once made.
    container: Option<String>,
}

impl Run {
    /// Changes the job, if it is still there and is not being cancelled or deleted (whose
    /// states the runner's own steps must not overwrite).
    fn advance(&self, change: impl FnOnce(&mut JobRecord)) {
        let mut store = self.s.store.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(record) = store.of(&self.key)
            && !matches!(
                record.status.state,
                State::CancellationInProgress | State::DeletionInProgress
            )
        {
            change(record);
        }
    }

    /// Waits `start_delay`; false when the job is stopped meanwhile.
    async fn pause(&self) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(self.s.start_delay) => !self.runner.stop.is_cancelled(),
            _ = self.runner.stop.cancelled() => false,
        }
    }

    async fn drive(&mut self) -> End {
        if let Some(gpus) = &self.plan.gpus {
            let description = format!(
                "Job {} cannot be scheduled: it asks for {gpus}, and the test server's zone {ZONE} has no GPUs. \
                 It stays QUEUED until it is cancelled or deleted.",
                self.key.name()
            );
            self.advance(|r| r.note("RESOURCE_UNAVAILABLE", description));
            self.runner.stop.cancelled().await;
            return End::Stopped { ran: None };
        }
        if !self.pause().await {
            return End::Stopped { ran: None };
        }
        self.advance(|r| {
            r.set_state(State::Scheduled, None);
            r.set_task("PENDING");
        });
        // The VM boots.
        if !self.pause().await {
            return End::Stopped { ran: None };
        }
        self.advance(|r| r.set_task("ASSIGNED"));
        let image = self.plan.image.clone();
        if let Err(e) = self.s.docker.inspect_image(&image).await {
            return End::NotRun {
                why: format!(
                    "because the image \"{image}\" cannot be pulled: the test server's Docker engine does not have it and never pulls ({e})"
                ),
            };
        }
        let mut mounted = Vec::with_capacity(self.plan.gcs.len());
        if let Some(gcs) = &self.s.gcs {
            for v in &self.plan.gcs {
                match gcs.download(v).await {
                    Ok(m) => mounted.push(m),
                    Err(e) => {
                        return End::NotRun {
                            why: format!(
                                "because the GCS volume gs://{}/{} could not be mounted at {}: {e}",
                                v.bucket, v.prefix, v.mount_path
                            ),
                        };
                    }
                }
            }
        }
        if self.runner.stop.is_cancelled() {
            return End::Stopped { ran: None };
        }
        let name = container_name(&self.s.id, &self.key.uid);
        let options = CreateContainerOptionsBuilder::default().name(&name).build();
        let body = self.create_body(&mounted);
        if let Err(e) = self.s.docker.create_container(Some(options), body).await {
            return End::NotRun {
                why: format!("because its container could not be created: {e}"),
            };
        }
        self.container = Some(name.clone());
        if self.runner.stop.is_cancelled() {
            return End::Stopped { ran: None };
        }
        if let Err(e) = self.s.docker.start_container(&name, None).await {
            return End::NotRun {
                why: format!("because its container could not be started: {e}"),
            };
        }
        let started = Instant::now();
        let follower = self
            .s
            .tasks
            .spawn(logs::follow(self.s.clone(), name.clone(), self.task_log.clone()));
        self.advance(|r| {
            r.set_state(State::Running, None);
            r.set_task("RUNNING");
        });
        let (stopping, timed_out) = self.wait(&name).await;
        let ran = started.elapsed();
        let code = self.exit_code(&name, stopping || timed_out).await;
        // Every line is stored before the job is seen to end.
        if tokio::time::timeout(LOG_DRAIN, follower).await.is_err() {
            tracing::warn!(
                container = name,
                "the container's log did not end after it exited"
            );
        }
        let mut sync_error = None;
        if self.runner.reason() != Some(Stop::Shutdown)
            && !self.s.shutdown.is_cancelled()
            && let Some(gcs) = &self.s.gcs
        {
            for m in &mounted {
                if let Err(e) = gcs.sync_back(m).await {
                    let v = &m.volume;
                    sync_error = Some(format!(
                        "because its GCS volume at {} could not be written back to gs://{}/{}: {e}",
                        v.mount_path, v.bucket, v.prefix
                    ));
                    break;
                }
            }
        }
        drop(mounted);
        if stopping {
            return End::Stopped { ran: Some(ran) };
        }
        End::Exited {
            code,
            ran,
            timed_out,
            sync_error,
        }
    }

    /// Waits for the container to end: stops it within the grace when the job is cancelled or
    /// deleted, kills it when it outlives `maxRunDuration` or the server shuts down. Returns
    /// (stopped on request, timed out).
    async fn wait(&self, name: &str) -> (bool, bool) {
        let options = WaitContainerOptionsBuilder::default()
            .condition("not-running")
            .build();
        let mut wait = self.s.docker.wait_container(name, Some(options));
        let deadline = self.plan.max_run_duration.map(|d| Instant::now() + d);
        let (mut stopping, mut timed_out, mut killed) = (false, false, false);
        loop {
            tokio::select! {
                _ = wait.next() => break,
                _ = self.runner.stop.cancelled(), if !stopping => {
                    stopping = true;
                    let grace = self.s.stop_grace;
                    let secs = grace.as_secs() + u64::from(grace.subsec_nanos() > 0);
                    let options = StopContainerOptionsBuilder::default()
                        .t(i32::try_from(secs).unwrap_or(i32::MAX))
                        .build();
                    let (docker, name) = (self.s.docker.clone(), name.to_string());
                    tokio::spawn(async move { let _ = docker.stop_container(&name, Some(options)).await; });
                }
                _ = self.s.shutdown.cancelled(), if !killed => {
                    killed = true;
                    self.kill(name);
                }
                _ = sleep_until(deadline), if !timed_out && !stopping => {
                    timed_out = true;
                    killed = true;
                    self.kill(name);
                }
            }
        }
        (stopping, timed_out)
    }

    fn kill(&self, name: &str) {
        let options = KillContainerOptionsBuilder::default().signal("SIGKILL").build();
        let (docker, name) = (self.s.docker.clone(), name.to_string());
        tokio::spawn(async move {
            let _ = docker.kill_container(&name, Some(options)).await;
        });
    }

    /// The container's exit code, 137 for a kill. The engine records an OOM kill when
    /// containerd's event arrives, which can be after the exit it caused on a busy machine,
    /// so a SIGKILL nobody here sent to a container with a memory limit is given a few seconds
    /// to show as one.
    async fn exit_code(&self, name: &str, killed_here: bool) -> i64 {
        let state = async || {
            let inspected = self.s.docker.inspect_container(name, None).await.ok();
            inspected.and_then(|i| i.state).unwrap_or_default()
        };
        let mut st = state().await;
        let deadline = Instant::now() + Duration::from_secs(5);
        while !killed_here
            && self.plan.memory_mib.is_some()
            && st.exit_code == Some(137)
            && st.oom_killed != Some(true)
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
            st = state().await;
        }
        st.exit_code.unwrap_or(137)
    }

    fn create_body(&self, mounted: &[Mounted]) -> ContainerCreateBody {
        let plan = &self.plan;
        let uid = &self.key.uid;
        let mut env: Vec<String> = plan.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        for (k, v) in [
            ("BATCH_TASK_INDEX", "0".to_string()),
            ("BATCH_TASK_COUNT", "1".to_string()),
            ("BATCH_TASK_RETRY_ATTEMPT", "0".to_string()),
            ("BATCH_JOB_UID", uid.clone()),
            ("BATCH_TASK_ID", self.key.task_id()),
        ] {
            env.push(format!("{k}={v}"));
        }
        // Where each volume's copy is on the host, by its mount path.
        let copies: Vec<(&str, String)> = mounted
            .iter()
            .map(|m| (m.volume.mount_path.as_str(), m.dir.path().display().to_string()))
            .collect();
        let binds: Vec<String> = if plan.binds.is_empty() {
            copies
                .iter()
                .map(|(mount, dir)| format!("{dir}:{mount}"))
                .collect()
        } else {
            plan.binds
                .iter()
                .map(|b| {
                    // A host path in a volume is that volume's copy.
                    let host = copies
                        .iter()
                        .find_map(|(mount, dir)| {
                            let rest = b.host.strip_prefix(mount)?;
                            (rest.is_empty() || rest.starts_with('/')).then(|| format!("{dir}{rest}"))
                        })
                        .unwrap_or_else(|| b.host.clone());
                    match &b.mode {
                        Some(m) => format!("{host}:{}:{m}", b.container),
                        None => format!("{host}:{}", b.container),
                    }
                })
                .collect()
        };
        let memory = plan.memory_mib.map(|m| m.saturating_mul(1024 * 1024));
        let labels = HashMap::from([
            (CONTAINER_LABEL.to_string(), self.s.id.clone()),
            (format!("{CONTAINER_LABEL}.job"), self.key.name()),
        ]);
        ContainerCreateBody {
            image: Some(plan.image.clone()),
            // As `docker run --entrypoint`: the image's command goes with its entrypoint.
            entrypoint: plan.entrypoint.clone().map(|e| vec![e]),
            cmd: if plan.commands.is_empty() && plan.entrypoint.is_none() {
                None
            } else {
                Some(plan.commands.clone())
            },
            env: Some(env),
            labels: Some(labels),
            tty: Some(false),
            host_config: Some(HostConfig {
                // As on a Batch VM: tasks reach the host's servers on 127.0.0.1.
                network_mode: Some("host".into()),
                binds: (!binds.is_empty()).then_some(binds),
                memory,
                memory_swap: memory,
                nano_cpus: plan.cpu_milli.map(nano_cpus),
                log_config: Some(HostConfigLogConfig {
                    typ: Some("json-file".into()),
                    config: Some(HashMap::new()),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// Removes the container and records how the job ended; a job being deleted goes.
    async fn finish(self, end: End) {
        if let Some(name) = &self.container {
            let options = RemoveContainerOptionsBuilder::default()
                .force(true)
                .v(true)
                .build();
            if let Err(e) = self.s.docker.remove_container(name, Some(options)).await {
                tracing::warn!(container = name, error = %e, "could not remove a job's container");
            }
        }
        let mut store = self.s.store.lock().unwrap_or_else(|e| e.into_inner());
        store.runners.remove(&self.key.uid);
        let Some(record) = store.of(&self.key) else {
            return;
        };
        let quote = |task: &str| {
            format!(
                "Job failed due to task failure. Specifically, task with index 0 failed due to the following task event: \"{task}\""
            )
        };
        match (record.status.state, end) {
            (State::DeletionInProgress, _) => store.remove(&self.key),
            (State::CancellationInProgress, end) => {
                let ran = match end {
                    End::Stopped { ran } => ran,
                    End::Exited { ran, .. } => Some(ran),
                    End::NotRun { .. } => None,
                };
                if let Some(ran) = ran {
                    record.status.run_duration = Some(format_duration(ran));
                    record.set_task("FAILED");
                }
                record.set_state(State::Cancelled, None);
            }
            // The server is shutting down: nobody is left to see the job.
            (_, End::Stopped { .. }) => {}
            (_, End::NotRun { why }) => {
                let task = record.task_event("ASSIGNED", "FAILED", None, Some(&why));
                record.set_task("FAILED");
                record.set_state(State::Failed, Some(&quote(&task)));
            }
            (
                _,
                End::Exited {
                    code,
                    ran,
                    timed_out,
                    sync_error,
                },
            ) => {
                record.status.run_duration = Some(format_duration(ran));
                let (exit, why) = if timed_out {
                    let limit = self
                        .plan
                        .max_run_duration
                        .map(format_duration)
                        .unwrap_or_default();
                    (
                        Some(EXIT_MAX_RUN_DURATION),
                        Some(format!("because the task exceeded max run duration {limit}")),
                    )
                } else if let Some(e) = sync_error {
                    (None, Some(e))
                } else {
                    (Some(code), None)
                };
                if exit == Some(0) {
                    record.task_event("RUNNING", "SUCCEEDED", Some(0), None);
                    record.set_task("SUCCEEDED");
                    record.set_state(State::Succeeded, None);
                } else {
                    let task = record.task_event("RUNNING", "FAILED", exit, why.as_deref());
                    record.set_task("FAILED");
                    record.set_state(State::Failed, Some(&quote(&task)));
                }
            }
        }
    }
}

/// `cpuMilli` as the engine's CPU limit, at most the machine's CPUs: Batch would pick a
/// machine with enough of them, where the engine refuses a limit above what it has.
fn nano_cpus(cpu_milli: i64) -> i64 {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let most = i64::try_from(cpus).unwrap_or(1).saturating_mul(1_000_000_000);
    cpu_milli.saturating_mul(1_000_000).min(most)
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
