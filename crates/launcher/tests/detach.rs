//! A backend whose compute lives elsewhere and outlives the launcher, on the in-memory bus: the
//! runtime leaves it running when it stops (`ShutdownPolicy::Detach`) and the next start adopts
//! it with its true outcome, its whole output once and its outputs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use async_trait::async_trait;
use ferry_bus::{Bus, MemoryBus, Subscribe, Subscription};
use ferry_event::payload::{Outcome, Stream, TaskDispatched, TaskFinished, TaskLog};
use ferry_event::template::Template;
use ferry_event::{AttributesReader, EventBuilder, Topic, kind};
use ferry_launcher::backend::{
    AttemptError, Backend, BackendResult, Collected, Compute, ComputeState, Exit, LogPosition, LogRead,
    ShutdownPolicy, Task,
};
use ferry_launcher::journal::{Journal, Status};
use ferry_launcher::{Config, Secrets};
use tokio_util::sync::CancellationToken;

const BACKEND: &str = "remote";
const WAIT: Duration = Duration::from_secs(20);

/// One container of the platform.
#[derive(Debug, Default)]
struct Container {
    stdout: Vec<u8>,
    exit: Option<i32>,
    stopped: bool,
}

/// A platform that keeps its compute whatever happens to the launcher, reached by name.
#[derive(Debug, Default)]
struct Platform {
    containers: Mutex<HashMap<String, Container>>,
    released: Mutex<Vec<String>>,
}

impl Platform {
    fn with<T>(&self, name: &str, f: impl FnOnce(&mut Container) -> T) -> BackendResult<T> {
        let mut all = self.containers.lock().unwrap();
        let c = all
            .get_mut(name)
            .ok_or_else(|| AttemptError::Platform(format!("no container {name}")))?;
        Ok(f(c))
    }
}

/// The backend: a handle is the container's name again, as a remote API would give an id.
struct Remote(Arc<Platform>);

#[async_trait]
impl Backend for Remote {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn shutdown_policy(&self) -> ShutdownPolicy {
        ShutdownPolicy::Detach
    }

    fn check(&self, _: &TaskDispatched) -> BackendResult<()> {
        Ok(())
    }

    async fn create(&self, _: Task<'_>, reserved: Compute) -> BackendResult<Compute> {
        let mut all = self.0.containers.lock().unwrap();
        // Look before create: what exists is adopted.
        all.entry(reserved.name.clone()).or_default();
        Compute::with_handle(reserved.name.clone(), &serde_json::json!({"id": reserved.name}))
    }

    async fn find(&self, reserved: &Compute) -> BackendResult<Option<Compute>> {
        let exists = self.0.containers.lock().unwrap().contains_key(&reserved.name);
        Ok(exists.then(|| reserved.clone()))
    }

    async fn status(&self, compute: &Compute) -> BackendResult<ComputeState> {
        self.0.with(&compute.name, |c| match c.exit {
            None => ComputeState::Running,
            Some(code) => ComputeState::Exited(Exit {
                code: Some(code),
                error: (code != 0).then(|| format!("exited with status {code}")),
                reason: None,
            }),
        })
    }

    async fn wait(&self, compute: &Compute) -> BackendResult<ComputeState> {
        loop {
            match self.status(compute).await? {
                ComputeState::Running => tokio::time::sleep(Duration::from_millis(10)).await,
                ended => return Ok(ended),
            }
        }
    }

    async fn read_logs(
        &self,
        compute: &Compute,
        stream: Stream,
        from: &LogPosition,
        max_bytes: usize,
    ) -> BackendResult<LogRead> {
        self.0.with(&compute.name, |c| {
            let all: &[u8] = match stream {
                Stream::Stdout => &c.stdout,
                Stream::Stderr => &[],
            };
            let at = match stream {
                Stream::Stdout => from.stdout as usize,
                Stream::Stderr => from.stderr as usize,
            }
            .min(all.len());
            let bytes: Vec<u8> = all[at..].iter().take(max_bytes).copied().collect();
            LogRead {
                complete: c.exit.is_some() && at + bytes.len() == all.len(),
                cursor: serde_json::json!({"since": at + bytes.len()}),
                bytes,
            }
        })
    }

    async fn stop(&self, compute: &Compute, _: Duration) -> BackendResult<()> {
        self.0.with(&compute.name, |c| {
            c.stopped = true;
            c.exit.get_or_insert(143);
        })
    }

    async fn collect(&self, _: &Compute, _: Task<'_>) -> BackendResult<Collected> {
        Ok(Collected {
            outputs: Some(br#"{"rows": 2}"#.to_vec()),
            files: Vec::new(),
        })
    }

    async fn release(&self, compute: &Compute) -> BackendResult<()> {
        self.0.containers.lock().unwrap().remove(&compute.name);
        self.0.released.lock().unwrap().push(compute.name.clone());
        Ok(())
    }

    async fn list_owned(&self) -> BackendResult<Vec<Compute>> {
        let all = self.0.containers.lock().unwrap();
        Ok(all.keys().map(|n| Compute::named(n.clone())).collect())
    }
}

fn config() -> Config {
    Config {
        max_parallel: 4,
        kill_grace: Duration::from_secs(1),
        log_batch_lines: 256,
        log_batch_interval: Duration::from_millis(5),
        secrets: Secrets::new(),
        source: "ferry/launcher-remote/test".into(),
        group: "launcher-remote".into(),
    }
}

fn dispatch(attempt: &str) -> TaskDispatched {
    TaskDispatched {
        job_id: "job-1".into(),
        task_id: "extract".into(),
        attempt_id: attempt.into(),
        attempt: 1,
        runner: Default::default(),
        command: vec![Template::text("run")],
        env: Default::default(),
        input_files: Default::default(),
        output_files: Vec::new(),
        resources: Default::default(),
        timeout_ms: None,
        lease_ms: 30_000,
        ready_at_ms: 1,
        flow_id: None,
        namespace: None,
        priority: 0,
    }
}

/// Starts a launcher of `platform` on `data_dir`.
fn start(
    bus: &MemoryBus,
    platform: &Arc<Platform>,
    data_dir: &std::path::Path,
) -> Result<(
    CancellationToken,
    tokio::task::JoinHandle<ferry_launcher::Result<()>>,
)> {
    let journal = Journal::open(data_dir)?;
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(ferry_launcher::run(
        config(),
        journal,
        Arc::new(Remote(platform.clone())),
        Arc::new(bus.clone()),
        shutdown.clone(),
    ));
    Ok((shutdown, handle))
}

/// The next control event of `ty` for `attempt`.
async fn next(control: &mut Subscription, ty: &str, attempt: &str) -> Result<ferry_event::Event> {
    tokio::time::timeout(WAIT, async {
        loop {
            let delivery = control.next().await.context("bus closed")??;
            let event = delivery.event.clone();
            delivery.ack().await?;
            let id = event
                .extension("ferryattempt")
                .map(|v| v.to_string())
                .unwrap_or_default();
            if event.ty() == ty && id == attempt {
                return Ok(event);
            }
        }
    })
    .await
    .context(format!("no {ty} for {attempt}"))?
}

#[tokio::test]
async fn detached_compute_runs_on_and_is_adopted_with_its_true_outcome() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let bus = MemoryBus::new();
    let mut control = bus
        .subscribe(Subscribe::new("observer", [Topic::Control]))
        .await?;
    let mut logs = bus
        .subscribe(Subscribe::new("observer-logs", [Topic::Logs]))
        .await?;
    drop(
        bus.subscribe(Subscribe::new(
            "launcher-remote",
            [Topic::Dispatch(BACKEND.into())],
        ))
        .await?,
    );
    let platform = Arc::new(Platform::default());
    let (shutdown, first) = start(&bus, &platform, tmp.path())?;
    let d = dispatch("a-remote");
    let event = EventBuilder::new("ferry/scheduler/test").dispatch(
        kind::TASK_DISPATCHED,
        &d.job_id,
        &d.task_id,
        &d.attempt_id,
        BACKEND,
        &d,
    );
    bus.publish(&[event]).await?;
    next(&mut control, kind::TASK_STARTED, "a-remote").await?;
    platform.with("ferry-a-remote", |c| c.stdout.extend(b"one\n"))?;
    // The first line is published while the first launcher runs.
    let delivery = tokio::time::timeout(WAIT, logs.next())
        .await?
        .context("bus closed")??;
    let mut batches: Vec<TaskLog> = vec![ferry_event::decode(&delivery.event)?];
    delivery.ack().await?;

    shutdown.cancel();
    first.await??;
    platform.with("ferry-a-remote", |c| {
        assert!(
            !c.stopped && c.exit.is_none(),
            "detached compute was stopped: {c:?}"
        );
        c.stdout.extend(b"two\n");
        c.exit = Some(0);
    })?;
    assert!(matches!(
        Journal::open(tmp.path())?.status("a-remote"),
        Status::Running(r) if r.created
    ));

    let (shutdown, second) = start(&bus, &platform, tmp.path())?;
    let finished = next(&mut control, kind::TASK_FINISHED, "a-remote").await?;
    let f: TaskFinished = ferry_event::decode(&finished)?;
    assert_eq!(
        (f.outcome, f.exit_code, f.log_lines),
        (Outcome::Succeeded, Some(0), 2),
        "{f:?}"
    );
    assert_eq!(f.outputs["rows"], 2);
    while let Some(delivery) = logs.try_next() {
        batches.push(ferry_event::decode(&delivery.event)?);
        delivery.ack().await?;
    }
    let mut lines = Vec::new();
    for batch in &batches {
        lines.extend(
            batch
                .lines
                .iter()
                .enumerate()
                .map(|(i, l)| (batch.seq + i as u64, l.text.clone())),
        );
    }
    lines.sort();
    lines.dedup();
    assert_eq!(lines, [(0, "one".to_string()), (1, "two".to_string())]);
    ensure!(
        *platform.released.lock().unwrap() == ["ferry-a-remote"],
        "the adopted compute was not released once"
    );
    shutdown.cancel();
    second.await??;
    assert_eq!(Journal::open(tmp.path())?.status("a-remote"), Status::Finished);
    Ok(())
}
