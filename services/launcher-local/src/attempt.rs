//! One attempt, from its dispatch to its report.

use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use ferry_bus::Delivery;
use ferry_event::kind;
use ferry_event::payload::{Outcome, TaskDispatched, TaskFinished, TaskHeartbeat, TaskStarted};
use ferry_runtime::metrics;
use serde_json::Map;
use tokio::process::Child;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::Shared;
use crate::logs::{self, Ids, Tail};
use crate::state::{Entry, LogMark, RunningRecord};
use ferry_launcher::collect;

use crate::{prepare, process};

/// How long the leader of a stopped group gets to be reaped.
const REAP: Duration = Duration::from_secs(2);

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
    if publish_report(&shared, report).await {
        ack(delivery).await;
    }
}

/// Publishes a report recorded earlier (by a run that stopped before it was confirmed), then
/// acks the dispatch if there is one.
pub(crate) async fn settle_pending(shared: Arc<Shared>, report: TaskFinished, delivery: Option<Delivery>) {
    if publish_recorded(&shared, &report).await
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
        tail: Tail,
    },
    /// Nothing started (the slot is back); the attempt ends with this.
    NotStarted(Outcome, String),
    /// Nothing started after the attempt was recorded as starting: its report is recorded (so
    /// the journal no longer points at the slot) and the slot is back.
    Recorded(Box<TaskFinished>),
    /// The process started but could not be recorded: it is stopped, and the attempt fails.
    Unrecorded { child: Child, pid: i32, error: String },
    /// The launcher is stopping (the slot is back): the dispatch goes back to the broker
    /// unacked.
    ShuttingDown,
}

/// Empties a slot and makes it available again.
pub(crate) fn release(shared: &Shared, slot: u32) {
    release_after(shared, slot, true, true);
}

/// [`release`], knowing whether the task printed anything and may have left an outputs file.
fn release_after(shared: &Shared, slot: u32, printed: bool, outputs_file: bool) {
    match shared.slots.dir(slot).clean_after(printed, outputs_file) {
        Ok(()) => shared.slots.give_back(slot),
        Err(e) => tracing::warn!(
            slot = %shared.slots.dir(slot).root().display(),
            error = %e,
            "cannot empty the attempt's slot; it is not used again"
        ),
    }
}

/// Everything from the dispatch to a recorded process, in one blocking call: resolve the
/// dispatch, prepare the slot and the input files, start the process (the spawn waits for the
/// exec) and record it.
fn launch(
    shared: &Shared,
    d: &TaskDispatched,
    slot: u32,
    cancel: &watch::Receiver<Option<String>>,
) -> Launch {
    let not_started = |outcome, error| {
        release(shared, slot);
        Launch::NotStarted(outcome, error)
    };
    let dir = shared.slots.dir(slot);
    let work = dir.work();
    let work_str = work.to_string_lossy();
    let outputs_str = dir.outputs().to_string_lossy().into_owned();
    let base_env = shared.base_env.iter().cloned();
    let prepared = match prepare::prepare(d, &work_str, &outputs_str, &shared.config.secrets, base_env) {
        Ok(p) => p,
        Err(error) => return not_started(Outcome::Failed, error),
    };
    let (out, err) = match dir.prepare() {
        Ok(files) => files,
        Err(e) => {
            let error = format!("cannot prepare the working directory {}: {e}", work.display());
            return not_started(Outcome::Failed, error);
        }
    };
    let owner = shared.run_as.as_ref().map(|r| r.owner);
    if let Err(error) = prepare::write_inputs(&work, &prepared.inputs, owner) {
        return not_started(Outcome::Failed, error);
    }
    // A bare name is looked up on the task's PATH here, so that the spawn gets a path (see
    // `resolve`). Not found is the task's fault, like a program that does not exist.
    let task_path = prepared
        .env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.as_os_str());
    let program = match shared.resolver.resolve(&prepared.program, task_path, &work) {
        Ok(p) => p,
        Err(error) => return not_started(Outcome::Failed, error),
    };
    if shared.stop.is_cancelled() {
        release(shared, slot);
        return Launch::ShuttingDown;
    }
    if let Some(error) = cancel.borrow().clone() {
        return not_started(Outcome::Cancelled, error);
    }
    let stdio = |f: &std::fs::File| f.try_clone().map(Stdio::from);
    let (child_out, child_err) = match (stdio(&out), stdio(&err)) {
        (Ok(o), Ok(e)) => (o, e),
        (Err(e), _) | (_, Err(e)) => {
            return not_started(Outcome::Failed, format!("cannot open the output files: {e}"));
        }
    };

    // Record the start before it happens: a launcher killed between the spawn and the record
    // below would otherwise leave a process nobody knows of, and a redelivered dispatch would
    // run the same attempt a second time. A record without a pid tells the next run to look for
    // the attempt's processes by their FERRY_ATTEMPT_ID.
    let mut record = RunningRecord {
        job_id: d.job_id.clone(),
        task_id: d.task_id.clone(),
        attempt_id: d.attempt_id.clone(),
        attempt: d.attempt,
        slot,
        pid: 0,
        start_time: 0,
        started_at_ms: 0,
    };
    if let Err(e) = shared
        .journal
        .record(&d.attempt_id, Entry::Running(record.clone()))
    {
        let error = format!(
            "cannot record the attempt in {}: {e}",
            shared.journal.path().display()
        );
        return not_started(Outcome::Failed, error);
    }
    // From here the journal names the slot: it is given back only once the report is recorded,
    // or a crash in between would leave two attempts recorded on one slot.
    let not_started = |outcome, error| {
        let mut report = unstarted(d, outcome, error);
        report.error = report.error.map(|e| shared.masker.mask(&e));
        record_report(shared, &report);
        release(shared, slot);
        Launch::Recorded(Box::new(report))
    };

    // Nothing here forces fork+exec (no pre_exec hook, a program given by its path), so the
    // standard library starts the process with posix_spawn: a vfork-like clone, then exec. A
    // uid/gid change (run-as) does force fork+exec.
    let mut cmd = tokio::process::Command::new(&program);
    cmd.arg0(&prepared.program)
        .args(&prepared.args)
        .env_clear()
        .envs(prepared.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&work)
        .stdin(Stdio::null())
        .stdout(child_out)
        .stderr(child_err)
        .process_group(0)
        .kill_on_drop(true);
    if let Some(owner) = owner {
        // The standard library drops the supplementary groups too when it changes the uid.
        cmd.uid(owner.uid).gid(owner.gid);
    }
    let (spawned, in_cgroup) = shared.contain.spawn_in(slot, || cmd.spawn());
    let child = match spawned {
        Ok(c) => c,
        Err(e) => {
            let error = format!("cannot start {:?}: {e}", prepared.program);
            return not_started(Outcome::Failed, error);
        }
    };
    drop(cmd);
    let Some(pid) = child.id().map(|p| p as i32) else {
        let error = "the process ended before its id could be read".to_string();
        return not_started(Outcome::Failed, error);
    };
    if !in_cgroup && let Err(e) = shared.contain.adopt(slot, pid) {
        tracing::warn!(pid, error = %e, "cannot move the task into its slot's cgroup; processes that leave its group may outlive it");
    }
    let started = Instant::now();
    let started_at_ms = ferry_event::now_ms();
    record.pid = pid;
    record.start_time = process::start_time(pid).unwrap_or(0);
    record.started_at_ms = started_at_ms;
    if let Err(e) = shared.journal.record(&d.attempt_id, Entry::Running(record)) {
        let error = format!(
            "cannot record the attempt's process in {}: {e}",
            shared.journal.path().display()
        );
        return Launch::Unrecorded { child, pid, error };
    }
    Launch::Started {
        child,
        pid,
        started,
        started_at_ms,
        tail: Tail::new(out, err, LogMark::default(), shared.masker.clone()),
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
    let slot = shared.slots.take();
    let launched = {
        let (shared, d, cancel) = (shared.clone(), d.clone(), cancel.clone());
        tokio::task::spawn_blocking(move || launch(&shared, &d, slot, &cancel))
            .await
            .unwrap_or_else(|e| {
                Launch::NotStarted(Outcome::Failed, format!("preparing the attempt failed: {e}"))
            })
    };
    let (mut child, pid, started, started_at_ms, tail) = match launched {
        Launch::Started {
            child,
            pid,
            started,
            started_at_ms,
            tail,
        } => (child, pid, started, started_at_ms, tail),
        Launch::NotStarted(outcome, error) => {
            return settle_unstarted(shared.clone(), unstarted(&d, outcome, error), delivery).await;
        }
        Launch::Recorded(report) => {
            return settle_pending(shared.clone(), *report, Some(delivery)).await;
        }
        Launch::Unrecorded {
            mut child,
            pid,
            error,
        } => {
            let grace = shared.config.kill_grace;
            shared
                .contain
                .stop(slot, &d.attempt_id, Some(pid), grace, Some(&mut child))
                .await;
            let mut report = unstarted(&d, Outcome::Failed, error);
            report.error = report.error.map(|e| shared.masker.mask(&e));
            let (s, r) = (shared.clone(), report.clone());
            let _ = tokio::task::spawn_blocking(move || {
                record_report(&s, &r);
                release(&s, slot);
            })
            .await;
            return settle_pending(shared.clone(), report, Some(delivery)).await;
        }
        Launch::ShuttingDown => return,
    };

    let ids = Ids {
        job_id: d.job_id.clone(),
        task_id: d.task_id.clone(),
        attempt_id: d.attempt_id.clone(),
    };
    let (ended_tx, ended_rx) = watch::channel(false);
    let follower = tokio::spawn(logs::follow(shared.clone(), ids.clone(), tail, ended_rx));
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
    // Whatever ended the wait, nothing of the task outlives it: not its process group, nor
    // what left the group. Only then is its slot wiped and reused.
    let grace = shared.config.kill_grace;
    shared
        .contain
        .stop(slot, &d.attempt_id, Some(pid), grace, Some(&mut child))
        .await;
    let _ = tokio::time::timeout(REAP, child.wait()).await;
    let _ = ended_tx.send(true);
    beat_stop.cancel();
    let _ = beats.await;
    let logs = follower.await.unwrap_or(logs::LogSummary {
        lines: 0,
        complete: false,
    });
    tracing::info!(
        metric = metrics::COMPUTE_SECONDS,
        value = started.elapsed().as_secs_f64(),
        "attempt released its process"
    );
    if !logs.complete && shared.stop.is_cancelled() {
        tracing::warn!(
            published = logs.lines,
            "the launcher stopped before the attempt's output was published; its next start publishes the rest and reports the attempt"
        );
        return;
    }

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
    // Collect, record the report and free the slot in one blocking call.
    let report = {
        let (shared, patterns) = (shared.clone(), d.output_files.clone());
        let printed = logs.lines > 0;
        tokio::task::spawn_blocking(move || conclude(&shared, slot, &patterns, printed, report))
            .await
            .unwrap_or_else(|e| unstarted(&d, Outcome::Failed, format!("collecting outputs failed: {e}")))
    };
    publish_recorded(&shared, &report).await;
}

/// Collects the outputs and output files of a successful attempt, records the report, masked,
/// and frees the slot (`printed` says whether the task's output files hold anything). Returns
/// the report.
fn conclude(
    shared: &Shared,
    slot: u32,
    patterns: &[String],
    printed: bool,
    mut report: TaskFinished,
) -> TaskFinished {
    let dir = shared.slots.dir(slot);
    let mut outputs_file = true;
    if report.outcome == Outcome::Succeeded {
        let dest: PathBuf = shared
            .artifact_dir
            .join(&report.job_id)
            .join(&report.task_id)
            .join(&report.attempt_id);
        let collected = collect::read_outputs(&dir.outputs()).and_then(|(outputs, found)| {
            outputs_file = found;
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
    record_report(shared, &report);
    release_after(shared, slot, printed, outputs_file);
    report
}

fn record_report(shared: &Shared, report: &TaskFinished) {
    let entry = Entry::Reported {
        report: Box::new(report.clone()),
    };
    if let Err(e) = shared.journal.record(&report.attempt_id, entry) {
        tracing::warn!(error = %e, "cannot record the attempt's report before publishing it");
    }
}

/// Records the report, publishes it and marks the attempt finished. Secret values are masked
/// in the error first. Returns whether the broker confirmed it; if not, the report stays in
/// the journal and the next start of the launcher publishes it.
pub(crate) async fn publish_report(shared: &Shared, mut report: TaskFinished) -> bool {
    report.error = report.error.map(|e| shared.masker.mask(&e));
    record_report(shared, &report);
    publish_recorded(shared, &report).await
}

/// Publishes a recorded report and, once the broker confirmed it, marks the attempt finished.
async fn publish_recorded(shared: &Shared, report: &TaskFinished) -> bool {
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
            if let Err(e) = shared.journal.record(&report.attempt_id, Entry::Done) {
                tracing::warn!(error = %e, "cannot mark the attempt finished");
            }
            true
        }
        Err(e) => {
            tracing::error!(
                error = %e,
                outcome = report.outcome.as_str(),
                "cannot publish the attempt's report; it is kept in the journal and published when the launcher starts again"
            );
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
