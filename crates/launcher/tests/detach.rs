//! A backend whose compute lives elsewhere and outlives the launcher, on the in-memory bus: the
//! runtime leaves it running when it stops (`ShutdownPolicy::Detach`) and the next start adopts
//! it with its true outcome, its whole output once and its outputs.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use ferry_bus::{Bus, MemoryBus, Subscribe, Subscription};
use ferry_event::payload::{Outcome, TaskDispatched, TaskFinished, TaskLog};
use ferry_event::template::Template;
use ferry_event::{AttributesReader, EventBuilder, Topic, kind};
use ferry_launcher::journal::{Journal, Status};
use ferry_launcher::testing::{BACKEND, Platform, Remote};
use ferry_launcher::{Config, Secrets};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(20);

fn config() -> Config {
    Config {
        max_parallel: 4,
        kill_grace: Duration::from_secs(1),
        log_batch_lines: 256,
        log_batch_interval: Duration::from_millis(5),
        secrets: Secrets::new(),
        source: "ferry/launcher-remote/test".into(),
        group: "launcher-remote".into(),
        artifact_retention: None,
        artifact_quotas: None,
        artifact_store: None,
    }
}

/// The first attempt of a task of its own (a launcher runs one attempt of a task at a time).
fn dispatch(attempt: &str) -> TaskDispatched {
    TaskDispatched {
        job_id: "job-1".into(),
        task_id: format!("task-{attempt}"),
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
        namespace: Some("analytics".into()),
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
        Arc::new(Remote::detached(platform.clone())),
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
    // The job's namespace travels with its lines, for the log collector's quotas.
    ensure!(
        batches[0].namespace.as_deref() == Some("analytics"),
        "task.log without the dispatch's namespace: {:?}",
        batches[0]
    );
    delivery.ack().await?;

    shutdown.cancel();
    first.await??;
    platform.with("ferry-a-remote", |c| {
        assert!(
            !c.stopped && c.exit.is_none(),
            "detached compute was stopped: {c:?}"
        );
        c.stdout.extend(b"two\n");
        c.outputs = Some(br#"{"rows": 2}"#.to_vec());
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

/// With an artifact retention the launcher sweeps its artifact directory while it runs: old
/// output files go, new ones stay, and the sweep ends with the launcher.
#[tokio::test]
async fn a_running_launcher_removes_expired_artifacts() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let artifacts = tmp.path().join("artifacts");
    let (old, new) = (artifacts.join("j/t/a1/old.csv"), artifacts.join("j/t/a2/new.csv"));
    for f in [&old, &new] {
        std::fs::create_dir_all(f.parent().context("a parent")?)?;
        std::fs::write(f, b"rows")?;
    }
    let week_ago = std::time::SystemTime::now() - Duration::from_secs(7 * 24 * 3600);
    std::fs::File::open(&old)?.set_modified(week_ago)?;
    std::fs::File::open(old.parent().context("a parent")?)?.set_modified(week_ago)?;

    std::fs::create_dir_all(tmp.path().join("data"))?;
    let bus = MemoryBus::new();
    let mut config = config();
    config.artifact_retention = Some(ferry_launcher::ArtifactRetention {
        every: Duration::from_millis(20),
        ..ferry_launcher::ArtifactRetention::new(&artifacts, Duration::from_secs(24 * 3600))
    });
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(ferry_launcher::run(
        config,
        Journal::open(&tmp.path().join("data"))?,
        Arc::new(Remote::detached(Arc::new(Platform::default()))),
        Arc::new(bus.clone()),
        shutdown.clone(),
    ));
    let deadline = tokio::time::Instant::now() + WAIT;
    while old.parent().context("a parent")?.exists() {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "{} was not removed",
            old.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ensure!(new.exists(), "a new artifact was removed");
    shutdown.cancel();
    tokio::time::timeout(WAIT, handle).await???;
    Ok(())
}
