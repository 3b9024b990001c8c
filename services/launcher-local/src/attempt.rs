//! One attempt, from its dispatch to its report.

use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use ferry_bus::Delivery;
use ferry_event::kind;
use ferry_event::payload::{Outcome, Stream, TaskDispatched, TaskFinished, TaskHeartbeat, TaskStarted};
use ferry_runtime::metrics;
use serde_json::Map;
use tokio::process::Child;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::Shared;
use crate::logs::{self, Ids};
use crate::state::{AttemptDir, RunningRecord, remove_dir_fast};
use crate::{collect, prepare, process};

/// Lines read from the task and not yet batched; when full, the task blocks on its pipes.
const LOG_CHANNEL_LINES: usize = 1024;
/// How long output still open after the process group is gone is read (a process that left the
/// group may hold the pipe).
const DRAIN: Duration = Duration::from_secs(2);

/// Why the wait for the process ended.
enum Ended {
    Exited(ExitStatus),
    WaitFailed(String),
    TimedOut(Duration),
    Cancelled(String),
    Stopped(String),
}

/// The error an attempt cancelled with `reason` reports.
pub(crate) fn cancel_error(reason: Option<&str>) -> String {
    match reason {
        Some(r) if !r.is_empty() => format!("cancelled: {r}"),
        _ => "cancelled".to_string(),
    }
}

/// A report of an attempt that ended before its process started.
pub(crate) fn unstarted(d: &TaskDispatched, outcome: Outcome, error: String) -> TaskFinished {
    TaskFinished {
        job_id: d.job_id.clone(),
        task_id: d.task_id.clone(),
        attempt_id: d.attempt_id.clone(),
        attempt: d.attempt,
        outcome,
        exit_code: None,
        error: Some(error),
        outputs: Map::new(),
        output_files: Vec::new(),
        log_lines: 0,
        started_at_ms: None,
        finished_at_ms: ferry_event::now_ms(),
    }
}

/// Reports an attempt that never started, then acks its dispatch.
pub(crate) async fn settle_unstarted(shared: Arc<Shared>, report: TaskFinished, delivery: Delivery) {
    let dir = AttemptDir::new(&shared.config.data_dir, &report.attempt_id);
    if publish_report(&shared, &dir, report).await {
        ack(delivery).await;
    }
}

/// Publishes a report recorded earlier (by a run that stopped before it was confirmed), then
/// acks the dispatch if there is one.
pub(crate) async fn settle_pending(shared: Arc<Shared>, report: TaskFinished, delivery: Option<Delivery>) {
    let dir = AttemptDir::new(&shared.config.data_dir, &report.attempt_id);
    if publish_recorded(&shared, &dir, &report, true).await
        && let Some(d) = delivery
    {
        ack(d).await;
    }
}

async fn ack(delivery: Delivery) {
    if let Err(e) = delivery.ack().await {
        tracing::warn!(error = %e, "cannot ack the dispatch; it may be delivered again (and is then recognised as a duplicate)");
    }
}

/// How the step before the start ended.
enum Launch {
    /// The process runs and is recorded.
    Started {
        child: Child,
        pid: i32,
        started: Instant,
        started_at_ms: i64,
    },
    /// Nothing started; the attempt ends with this.
    NotStarted(Outcome, String),
    /// The process started but could not be recorded: it is stopped, and the attempt fails.
    Unrecorded { child: Child, pid: i32, error: String },
    /// The launcher is stopping: the dispatch goes back to the broker unacked.
    ShuttingDown,
}

/// Everything from the dispatch to a recorded process, in one blocking call: resolve the
/// dispatch, create the working directory and its input files, start the process (the spawn
/// waits for the exec) and record it.
fn launch(
    shared: &Shared,
    d: &TaskDispatched,
    dir: &AttemptDir,
    cancel: &watch::Receiver<Option<String>>,
) -> Launch {
    let work = dir.work();
    let work_str = work.to_string_lossy();
    let outputs_str = dir.outputs().to_string_lossy().into_owned();
    let base_env = shared.base_env.iter().cloned();
    let prepared = match prepare::prepare(d, &work_str, &outputs_str, &shared.config.secrets, base_env) {
        Ok(p) => p,
        Err(error) => return Launch::NotStarted(Outcome::Failed, error),
    };
    if let Err(e) = dir.create_work() {
        let error = format!("cannot create the working directory {}: {e}", work.display());
        return Launch::NotStarted(Outcome::Failed, error);
    }
    if let Err(error) = prepare::write_inputs(&work, &prepared.inputs) {
        return Launch::NotStarted(Outcome::Failed, error);
    }
    if shared.stop.is_cancelled() {
        let _ = dir.remove_unstarted();
        return Launch::ShuttingDown;
    }
    if let Some(error) = cancel.borrow().clone() {
        return Launch::NotStarted(Outcome::Cancelled, error);
    }

    // Record the start before it happens: a launcher killed between the spawn and the record
    // below would otherwise leave a process nobody knows of, and a redelivered dispatch would
    // run the same attempt a second time. A record without a pid tells the next run to look for
    // the attempt's processes by their FERRY_ATTEMPT_ID.
    let starting = RunningRecord {
        job_id: d.job_id.clone(),
        task_id: d.task_id.clone(),
        attempt_id: d.attempt_id.clone(),
        attempt: d.attempt,
        pid: 0,
        start_time: 0,
        started_at_ms: 0,
    };
    if let Err(e) = dir.write_running(&starting) {
        let error = format!(
            "cannot record the attempt in {}: {e}",
            dir.record_file().display()
        );
        return Launch::NotStarted(Outcome::Failed, error);
    }

    // Nothing here forces fork+exec (no pre_exec hook, no uid/gid change), so the standard
    // library starts the process with posix_spawn: a vfork-like clone, then exec.
    let mut cmd = tokio::process::Command::new(&prepared.program);
    cmd.args(&prepared.args)
        .env_clear()
        .envs(prepared.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&work)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let error = format!("cannot start {:?}: {e}", prepared.program);
            return Launch::NotStarted(Outcome::Failed, error);
        }
    };
    let Some(pid) = child.id().map(|p| p as i32) else {
        let error = "the process ended before its id could be read".to_string();
        return Launch::NotStarted(Outcome::Failed, error);
    };
    let started = Instant::now();
    let started_at_ms = ferry_event::now_ms();
    let record = RunningRecord {
        job_id: d.job_id.clone(),
        task_id: d.task_id.clone(),
        attempt_id: d.attempt_id.clone(),
        attempt: d.attempt,
        pid,
        start_time: process::start_time(pid).unwrap_or(0),
        started_at_ms,
    };
    if let Err(e) = dir.write_running(&record) {
        let error = format!(
            "cannot record the attempt's process in {}: {e}",
            dir.record_file().display()
        );
        return Launch::Unrecorded { child, pid, error };
    }
    Launch::Started {
        child,
        pid,
        started,
        started_at_ms,
    }
}

/// Runs one attempt to its end and reports it. The dispatch is acked once the start is
/// confirmed (or, for an attempt that cannot start, once that is reported).
pub(crate) async fn run(
    shared: Arc<Shared>,
    d: TaskDispatched,
    delivery: Delivery,
    mut cancel: watch::Receiver<Option<String>>,
) {
    let dir = AttemptDir::new(&shared.config.data_dir, &d.attempt_id);
    let launched = {
        let (shared, d, dir, cancel) = (shared.clone(), d.clone(), dir.clone(), cancel.clone());
        tokio::task::spawn_blocking(move || launch(&shared, &d, &dir, &cancel))
            .await
            .unwrap_or_else(|e| {
                Launch::NotStarted(Outcome::Failed, format!("preparing the attempt failed: {e}"))
            })
    };
    let (mut child, pid, started, started_at_ms) = match launched {
        Launch::Started {
            child,
            pid,
            started,
            started_at_ms,
        } => (child, pid, started, started_at_ms),
        Launch::NotStarted(outcome, error) => {
            return settle_unstarted(shared.clone(), unstarted(&d, outcome, error), delivery).await;
        }
        Launch::Unrecorded {
            mut child,
            pid,
            error,
        } => {
            process::stop_group(pid, shared.config.kill_grace, Some(&mut child)).await;
            return settle_unstarted(shared.clone(), unstarted(&d, Outcome::Failed, error), delivery).await;
        }
        Launch::ShuttingDown => return,
    };

    // Output is read from now on, so that the task never blocks on its pipes.
    let (tx, rx) = mpsc::channel(LOG_CHANNEL_LINES);
    let mut readers = JoinSet::new();
    if let Some(out) = child.stdout.take() {
        readers.spawn(logs::read_stream(
            out,
            Stream::Stdout,
            shared.masker.clone(),
            tx.clone(),
        ));
    }
    if let Some(err) = child.stderr.take() {
        readers.spawn(logs::read_stream(
            err,
            Stream::Stderr,
            shared.masker.clone(),
            tx.clone(),
        ));
    }
    drop(tx);

    let ids = Ids {
        job_id: d.job_id.clone(),
        task_id: d.task_id.clone(),
        attempt_id: d.attempt_id.clone(),
    };
    let started_event = shared.builder.task(
        kind::TASK_STARTED,
        &d.job_id,
        &d.task_id,
        Some(&d.attempt_id),
        &TaskStarted {
            job_id: d.job_id.clone(),
            task_id: d.task_id.clone(),
            attempt_id: d.attempt_id.clone(),
            attempt: d.attempt,
            started_at_ms,
            ready_at_ms: d.ready_at_ms,
            launcher: shared.builder.source().to_string(),
        },
    );
    let start_reported = match shared.publisher.publish(&[started_event]).await {
        Ok(()) => {
            ack(delivery).await;
            tracing::info!(
                pid,
                metric = metrics::DISPATCH_LATENCY_MS,
                value = started_at_ms - d.ready_at_ms,
                "attempt started"
            );
            Ok(())
        }
        Err(e) => {
            // Unacked, the dispatch returns to the broker; this run reports the attempt lost.
            drop(delivery);
            Err(format!("cannot report the attempt's start: {e}"))
        }
    };

    let batcher = tokio::spawn(logs::batch(shared.clone(), ids.clone(), dir.clone(), rx));
    let beat_stop = CancellationToken::new();
    let beats = tokio::spawn(heartbeat(shared.clone(), ids, d.lease_ms, beat_stop.clone()));

    let ended = match start_reported {
        Err(error) => Ended::Stopped(error),
        Ok(()) => {
            let timeout = d.timeout_ms.map(Duration::from_millis);
            tokio::select! {
                status = child.wait() => match status {
                    Ok(s) => Ended::Exited(s),
                    Err(e) => Ended::WaitFailed(format!("cannot wait for the process: {e}")),
                },
                limit = sleep_or_never(timeout) => Ended::TimedOut(limit),
                error = cancelled(&mut cancel) => Ended::Cancelled(error),
                _ = shared.stop.cancelled() => Ended::Stopped("launcher shut down".into()),
            }
        }
    };
    // Whatever ended the wait, nothing of the task outlives it.
    process::stop_group(pid, shared.config.kill_grace, Some(&mut child)).await;
    let _ = tokio::time::timeout(DRAIN, child.wait()).await;
    beat_stop.cancel();
    let _ = beats.await;
    if tokio::time::timeout(DRAIN, async { while readers.join_next().await.is_some() {} })
        .await
        .is_err()
    {
        tracing::warn!("output pipes are still open after the process group ended; closing them");
        readers.shutdown().await;
    }
    let logs = batcher.await.unwrap_or(logs::LogSummary {
        lines: 0,
        complete: false,
    });
    tracing::info!(
        metric = metrics::COMPUTE_SECONDS,
        value = started.elapsed().as_secs_f64(),
        "attempt released its process"
    );

    let (outcome, exit_code, error) = match ended {
        Ended::Exited(status) => {
            let (code, error) = process::describe_exit(status);
            let outcome = if error.is_none() {
                Outcome::Succeeded
            } else {
                Outcome::Failed
            };
            (outcome, code, error)
        }
        Ended::WaitFailed(e) => (Outcome::Failed, None, Some(e)),
        Ended::TimedOut(limit) => (
            Outcome::TimedOut,
            None,
            Some(format!("timed out after {limit:?}")),
        ),
        Ended::Cancelled(e) => (Outcome::Cancelled, None, Some(e)),
        Ended::Stopped(e) => (Outcome::Lost, None, Some(e)),
    };
    let report = TaskFinished {
        job_id: d.job_id.clone(),
        task_id: d.task_id.clone(),
        attempt_id: d.attempt_id.clone(),
        attempt: d.attempt,
        outcome,
        exit_code,
        error,
        outputs: Map::new(),
        output_files: Vec::new(),
        log_lines: logs.lines,
        started_at_ms: Some(started_at_ms),
        finished_at_ms: 0,
    };
    // Collect and record the report in one blocking call.
    let (report, written) = {
        let (shared, dir, patterns) = (shared.clone(), dir.clone(), d.output_files.clone());
        tokio::task::spawn_blocking(move || conclude(&shared, &dir, &patterns, report))
            .await
            .unwrap_or_else(|e| {
                let report = unstarted(&d, Outcome::Failed, format!("collecting outputs failed: {e}"));
                (report, Err(std::io::Error::other(e.to_string())))
            })
    };
    if let Err(e) = written {
        tracing::warn!(error = %e, "cannot record the attempt's report before publishing it");
    }
    publish_recorded(&shared, &dir, &report, logs.lines > 0).await;
}

/// Collects the outputs and output files of a successful attempt, then removes the working
/// directory and records the report, masked. Returns the report and whether it was recorded.
fn conclude(
    shared: &Shared,
    dir: &AttemptDir,
    patterns: &[String],
    mut report: TaskFinished,
) -> (TaskFinished, std::io::Result<()>) {
    let mut outputs_left = true;
    if report.outcome == Outcome::Succeeded {
        let dest: PathBuf = shared
            .artifact_dir
            .join(&report.job_id)
            .join(&report.task_id)
            .join(&report.attempt_id);
        let collected = collect::read_outputs(&dir.outputs()).and_then(|(outputs, found)| {
            outputs_left = found;
            let files = collect::collect_files(&dir.work(), patterns, &dest)?;
            Ok((outputs, files))
        });
        match collected {
            Ok((o, f)) => {
                report.outputs = match shared.masker.mask_json(serde_json::Value::Object(o)) {
                    serde_json::Value::Object(o) => o,
                    _ => Map::new(),
                };
                report.output_files = f;
            }
            Err(e) => {
                report.outcome = Outcome::Failed;
                report.error = Some(e);
            }
        }
    }
    report.error = report.error.map(|e| shared.masker.mask(&e));
    report.finished_at_ms = ferry_event::now_ms();
    let written = dir.write_result(&report, outputs_left);
    (report, written)
}

/// Removes the working directory, records the report, publishes it and marks the attempt
/// finished. Secret values are masked in the error first. Returns whether the broker confirmed
/// it; if not, the report stays on disk and the next start of the launcher publishes it.
pub(crate) async fn publish_report(shared: &Shared, dir: &AttemptDir, mut report: TaskFinished) -> bool {
    report.error = report.error.map(|e| shared.masker.mask(&e));
    let (dir2, report2) = (dir.clone(), report.clone());
    let written = tokio::task::spawn_blocking(move || dir2.write_result(&report2, true)).await;
    match written {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "cannot record the attempt's report before publishing it"),
        Err(e) => tracing::warn!(error = %e, "cannot record the attempt's report before publishing it"),
    }
    publish_recorded(shared, dir, &report, true).await
}

/// Publishes a recorded report and, once the broker confirmed it, marks the attempt finished
/// (a rename). `lines_recorded` says whether a log line count may be on disk.
async fn publish_recorded(
    shared: &Shared,
    dir: &AttemptDir,
    report: &TaskFinished,
    lines_recorded: bool,
) -> bool {
    let event = shared.builder.task(
        kind::TASK_FINISHED,
        &report.job_id,
        &report.task_id,
        Some(&report.attempt_id),
        report,
    );
    match shared.publisher.publish(&[event]).await {
        Ok(()) => {
            tracing::info!(
                outcome = report.outcome.as_str(),
                error = report.error.as_deref(),
                log_lines = report.log_lines,
                "attempt finished"
            );
            if let Err(e) = dir.mark_finished(report, lines_recorded) {
                tracing::warn!(error = %e, "cannot mark the attempt finished");
            }
            true
        }
        Err(e) => {
            tracing::error!(
                error = %e,
                outcome = report.outcome.as_str(),
                "cannot publish the attempt's report; it is kept on disk and published when the launcher starts again"
            );
            let _ = remove_dir_fast(&dir.work());
            false
        }
    }
}

async fn sleep_or_never(limit: Option<Duration>) -> Duration {
    match limit {
        Some(d) => {
            tokio::time::sleep(d).await;
            d
        }
        None => std::future::pending().await,
    }
}

/// Waits until a cancel arrives; returns the error to report.
async fn cancelled(rx: &mut watch::Receiver<Option<String>>) -> String {
    loop {
        if let Some(error) = rx.borrow_and_update().clone() {
            return error;
        }
        if rx.changed().await.is_err() {
            // No one can cancel any more: only the other branches can end the wait.
            return std::future::pending().await;
        }
    }
}

async fn heartbeat(shared: Arc<Shared>, ids: Ids, lease_ms: u64, stop: CancellationToken) {
    let period = Duration::from_millis((lease_ms / 3).max(10));
    let mut tick = tokio::time::interval_at(Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let event = shared.builder.task(
            kind::TASK_HEARTBEAT,
            &ids.job_id,
            &ids.task_id,
            Some(&ids.attempt_id),
            &TaskHeartbeat {
                job_id: ids.job_id.clone(),
                task_id: ids.task_id.clone(),
                attempt_id: ids.attempt_id.clone(),
            },
        );
        if let Err(e) = shared.publisher.publish_once(&[event]).await {
            tracing::warn!(error = %e, "cannot publish a heartbeat; trying again at the next one");
        }
    }
}
