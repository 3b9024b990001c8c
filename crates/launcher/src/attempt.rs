//! One attempt, from its dispatch to its report, on any backend.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ferry_bus::Delivery;
use ferry_event::kind;
use ferry_event::payload::{
    Outcome, OutputFile, TaskAccepted, TaskDispatched, TaskFinished, TaskHeartbeat, TaskStarted,
};
use ferry_runtime::{Backoff, metrics};
use serde_json::Map;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::backend::{AttemptError, BackendResult, Compute, ComputeState, ShutdownPolicy, Task};
use crate::collect;
use crate::journal::{self, Entry, LogMark, RunningRecord, Status};
use crate::logs::{self, Ids, Tail};
use crate::runtime::Runtime;

/// How long a backend call that fails for want of the platform is tried again.
const RETRY_FOR: Duration = Duration::from_secs(60);

/// Why the wait for the compute ended.
pub(crate) enum Ended {
    /// The compute ended on its own ([`ComputeState::Exited`] or
    /// [`ComputeState::Vanished`]).
    Compute(ComputeState),
    WaitFailed(AttemptError),
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

/// A report of an attempt that ended before its compute started.
pub(crate) fn unstarted(d: &TaskDispatched, outcome: Outcome, error: impl Into<String>) -> TaskFinished {
    TaskFinished::unreported(
        d.job_id.clone(),
        d.task_id.clone(),
        d.attempt_id.clone(),
        d.attempt,
        outcome,
        error,
        ferry_event::now_ms(),
    )
}

/// Reports an attempt that never started, then acks its dispatch.
pub(crate) async fn settle_unstarted(rt: Arc<Runtime>, report: TaskFinished, delivery: Delivery) {
    if publish_report(&rt, report).await {
        ack(delivery).await;
    }
}

/// Publishes a report recorded earlier (by a run that stopped before it was confirmed), then
/// acks the dispatch if there is one.
pub(crate) async fn settle_pending(rt: Arc<Runtime>, report: TaskFinished, delivery: Option<Delivery>) {
    if publish_recorded(&rt, &report).await
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

/// Calls `call` again while it fails for want of the platform ([`AttemptError::Unavailable`]),
/// with growing waits, for up to [`RETRY_FOR`] or until `stop` is cancelled. Any other error,
/// and the last one, is returned as it is.
pub(crate) async fn retrying<T, F, Fut>(stop: &CancellationToken, what: &str, mut call: F) -> BackendResult<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = BackendResult<T>>,
{
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10)).jittered();
    let deadline = Instant::now() + RETRY_FOR;
    loop {
        match call().await {
            Err(e) if e.is_transient() && Instant::now() < deadline => {
                tracing::warn!(error = %e, "{what} failed; trying again");
                if !backoff.wait(stop).await {
                    return Err(e);
                }
            }
            other => return other,
        }
    }
}

/// Releases `compute`, logging what goes wrong: nothing more can be done about it then.
pub(crate) async fn release(rt: &Runtime, compute: &Compute) {
    let backend = &*rt.backend;
    let span = tracing::info_span!("compute.release", compute = %compute.name);
    if let Err(e) = retrying(&rt.stop, "releasing the compute", move || {
        backend.release(compute)
    })
    .instrument(span)
    .await
    {
        tracing::warn!(compute = %compute.name, error = %e, "cannot release the attempt's compute");
    }
}

/// Stops `compute` within the kill grace, logging what goes wrong.
pub(crate) async fn stop(rt: &Runtime, compute: &Compute) {
    let (backend, grace) = (&*rt.backend, rt.config.kill_grace);
    let span = tracing::info_span!("compute.stop", compute = %compute.name);
    if let Err(e) = retrying(&rt.stop, "stopping the compute", move || {
        backend.stop(compute, grace)
    })
    .instrument(span)
    .await
    {
        tracing::error!(compute = %compute.name, error = %e, "cannot stop the attempt's compute");
    }
}

/// Records the report of an attempt that ended before its compute started, masked, then frees
/// what was reserved for it: from the moment the journal named the reservation, it is freed
/// only once the report is recorded.
async fn abandon(rt: &Runtime, d: &TaskDispatched, reserved: &Compute, e: &AttemptError) -> TaskFinished {
    let mut report = unstarted(d, e.outcome(), e.message());
    record_and_release(rt, &mut report, reserved).await;
    report
}

/// Runs one attempt to its end and reports it. The dispatch is acked once the start is
/// confirmed (or, for an attempt that cannot start, once that is reported).
pub(crate) async fn run(
    rt: Arc<Runtime>,
    d: TaskDispatched,
    delivery: Delivery,
    mut cancel: watch::Receiver<Option<String>>,
) {
    let backend = rt.backend.clone();
    let task = Task::new(&d, &rt.config.secrets);
    // Refused before anything exists.
    if let Err(e) = backend.check(&d) {
        return settle_unstarted(rt.clone(), unstarted(&d, e.outcome(), e.message()), delivery).await;
    }
    let reserved = match backend.reserve(task).await {
        Ok(c) => c,
        Err(e) => {
            return settle_unstarted(rt.clone(), unstarted(&d, e.outcome(), e.message()), delivery).await;
        }
    };
    if rt.stop.is_cancelled() {
        // The dispatch goes back to the broker unacked.
        release(&rt, &reserved).await;
        return;
    }
    let cancelled_already = cancel.borrow().clone();
    if let Some(error) = cancelled_already {
        release(&rt, &reserved).await;
        return settle_unstarted(rt.clone(), unstarted(&d, Outcome::Cancelled, error), delivery).await;
    }
    if delivery.redelivered
        && let Some(error) = claim(&rt, &d, &reserved, &mut cancel).await
    {
        release(&rt, &reserved).await;
        return settle_unstarted(rt.clone(), unstarted(&d, Outcome::Cancelled, error), delivery).await;
    }

    // Record the reservation before creating: a launcher killed between the create and the
    // record below would otherwise leave compute nobody knows of, and a redelivered dispatch
    // would run the same attempt a second time. The next run finds it from the reservation.
    let mut record = RunningRecord::reserved(&d, reserved.clone(), ferry_event::now_ms());
    if let Err(e) = rt.journal.record(&d.attempt_id, Entry::Running(record.clone())) {
        release(&rt, &reserved).await;
        let error = format!(
            "cannot record the attempt in {}: {e}",
            rt.journal.path().display()
        );
        return settle_unstarted(rt.clone(), unstarted(&d, Outcome::Lost, error), delivery).await;
    }
    let span = tracing::info_span!("compute.create", compute = %reserved.name);
    let compute = match backend.create(task, reserved.clone()).instrument(span).await {
        Ok(c) => c,
        Err(e) => {
            let report = abandon(&rt, &d, &reserved, &e).await;
            return settle_pending(rt.clone(), report, Some(delivery)).await;
        }
    };
    // Compute that may wait on its platform is accepted now and started once it runs; other
    // compute runs from its creation.
    let queues = backend.may_queue();
    let mut started = Instant::now();
    let mut started_at_ms = if queues { 0 } else { ferry_event::now_ms() };
    record.compute = compute.clone();
    record.created = true;
    record.started_at_ms = started_at_ms;
    if let Err(e) = rt.journal.record(&d.attempt_id, Entry::Running(record.clone())) {
        // Unrecorded compute must not run: a restart would not know it.
        stop(&rt, &compute).await;
        let error = AttemptError::Platform(format!(
            "cannot record the attempt's compute in {}: {e}",
            rt.journal.path().display()
        ));
        let report = abandon(&rt, &d, &compute, &error).await;
        return settle_pending(rt.clone(), report, Some(delivery)).await;
    }

    let ids = Ids::of(&d);
    let (ended_tx, ended_rx) = watch::channel(false);
    let tail = Tail::new(
        backend.clone(),
        compute.clone(),
        LogMark::default(),
        rt.masker.clone(),
    );
    let logs_failed = CancellationToken::new();
    let follower = tokio::spawn(
        logs::follow(rt.clone(), ids.clone(), tail, ended_rx, logs_failed.clone()).in_current_span(),
    );
    let beat_stop = CancellationToken::new();
    let beats = tokio::spawn(
        heartbeat(
            rt.clone(),
            ids.clone(),
            compute.clone(),
            d.lease_ms,
            beat_stop.clone(),
        )
        .in_current_span(),
    );
    let ready_at_ms = d.ready_at_ms;
    let start = if queues {
        let accepted = report_accepted(&rt, &ids, d.attempt, ready_at_ms, &compute).await;
        if accepted.is_ok() {
            tracing::info!(compute = %compute.name, "attempt accepted; its compute waits to run");
        }
        match accepted {
            Err(e) => {
                // Unacked, the dispatch returns to the broker; this run reports the attempt lost.
                drop(delivery);
                Err(Ended::Stopped(format!(
                    "cannot report the attempt's acceptance: {e}"
                )))
            }
            Ok(()) => {
                ack(delivery).await;
                match until_running(&rt, &compute, &mut cancel, &logs_failed).await {
                    Queued::Running => {
                        started = Instant::now();
                        started_at_ms = ferry_event::now_ms();
                        record.started_at_ms = started_at_ms;
                        if let Err(e) = rt.journal.record(&d.attempt_id, Entry::Running(record)) {
                            tracing::warn!(error = %e, "cannot record the attempt's start; a restart would time it from its creation");
                        }
                        report_started(&rt, &ids, d.attempt, ready_at_ms, started_at_ms, &compute)
                            .await
                            .map_err(|e| Ended::Stopped(format!("cannot report the attempt's start: {e}")))
                    }
                    Queued::Ended(ended) => Err(ended),
                    Queued::Stopping => match backend.shutdown_policy() {
                        ShutdownPolicy::Detach => {
                            detach(&compute, beat_stop, beats, follower).await;
                            return;
                        }
                        _ => Err(Ended::Stopped(
                            "launcher shut down before the attempt started".into(),
                        )),
                    },
                }
            }
        }
    } else {
        match report_started(&rt, &ids, d.attempt, ready_at_ms, started_at_ms, &compute).await {
            Ok(()) => {
                ack(delivery).await;
                Ok(())
            }
            Err(e) => {
                // Unacked, the dispatch returns to the broker; this run reports the attempt lost.
                drop(delivery);
                Err(Ended::Stopped(format!("cannot report the attempt's start: {e}")))
            }
        }
    };

    let ended = match start {
        Err(ended) => ended,
        Ok(()) => {
            let timeout = d.timeout_ms.map(Duration::from_millis);
            let deadline = timeout.map(|t| started + t);
            let waited = tokio::select! {
                state = backend.wait(&compute) => Some(match state {
                    Ok(s) => Ended::Compute(s),
                    Err(e) => Ended::WaitFailed(e),
                }),
                limit = sleep_until_or_never(deadline, timeout) => Some(Ended::TimedOut(limit)),
                error = cancelled(&mut cancel) => Some(Ended::Cancelled(error)),
                // Its output cannot be kept: the follower says why, below.
                _ = logs_failed.cancelled() => Some(Ended::Stopped("its output could not be kept".into())),
                _ = rt.stop.cancelled() => None,
            };
            match waited {
                Some(ended) => ended,
                None => match backend.shutdown_policy() {
                    ShutdownPolicy::Kill => Ended::Stopped("launcher shut down".into()),
                    ShutdownPolicy::Drain(grace) => {
                        tracing::info!(?grace, "the launcher is stopping; letting the attempt finish");
                        let drained = tokio::select! {
                            state = backend.wait(&compute) => Some(match state {
                                Ok(s) => Ended::Compute(s),
                                Err(e) => Ended::WaitFailed(e),
                            }),
                            limit = sleep_until_or_never(deadline, timeout) => Some(Ended::TimedOut(limit)),
                            error = cancelled(&mut cancel) => Some(Ended::Cancelled(error)),
                            _ = tokio::time::sleep(grace) => None,
                        };
                        drained.unwrap_or_else(|| {
                            Ended::Stopped("launcher shut down before the attempt finished".into())
                        })
                    }
                    ShutdownPolicy::Detach => {
                        // The compute runs on; the journal keeps it, and the next start adopts
                        // it with its true outcome.
                        detach(&compute, beat_stop, beats, follower).await;
                        return;
                    }
                },
            }
        }
    };
    // Whatever ended the wait, nothing of the compute runs on; only then is its output read to
    // the end, its outputs collected and it released.
    stop(&rt, &compute).await;
    let _ = ended_tx.send(true);
    beat_stop.cancel();
    let _ = beats.await;
    let logs = follower.await.unwrap_or_default();
    tracing::info!("attempt's compute ended");
    if !logs.complete && logs.failure.is_none() && rt.stop.is_cancelled() {
        tracing::warn!(
            published = logs.lines,
            "the launcher stopped before the attempt's output was published; its next start publishes the rest and reports the attempt"
        );
        return;
    }
    let reason = match &ended {
        Ended::Compute(ComputeState::Exited(exit)) => exit.reason.clone(),
        _ => None,
    };
    let (outcome, exit_code, error) = match ended {
        Ended::Compute(ComputeState::Exited(exit)) => {
            let outcome = if exit.succeeded() {
                Outcome::Succeeded
            } else {
                Outcome::Failed
            };
            (outcome, exit.code, exit.error)
        }
        Ended::Compute(ComputeState::Vanished(why)) => (Outcome::Lost, None, Some(why)),
        Ended::Compute(ComputeState::Pending | ComputeState::Running) => (
            Outcome::Lost,
            None,
            Some("the compute was reported ended while it still ran".into()),
        ),
        Ended::WaitFailed(e) => (e.outcome(), None, Some(e.message().to_string())),
        Ended::TimedOut(limit) => (
            Outcome::TimedOut,
            None,
            Some(format!("timed out after {limit:?}")),
        ),
        Ended::Cancelled(e) => (Outcome::Cancelled, None, Some(e)),
        Ended::Stopped(e) => (Outcome::Lost, None, Some(e)),
    };
    // Whatever the compute did, an attempt whose output could not be kept is ferry's loss.
    let (outcome, exit_code, error) = match logs.failure {
        Some(failure) => (Outcome::Lost, exit_code, Some(failure)),
        None => (outcome, exit_code, error),
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
        started_at_ms: (started_at_ms != 0).then_some(started_at_ms),
        finished_at_ms: 0,
        reason,
        compute_ms: None,
        subtasks: Vec::new(),
    };
    let report = conclude(&rt, &compute, task, report).await;
    publish_recorded(&rt, &report).await;
}

/// Leaves an attempt's compute running as the launcher stops ([`ShutdownPolicy::Detach`]):
/// the journal keeps it, and the next start adopts it with its true outcome.
async fn detach(
    compute: &Compute,
    beat_stop: CancellationToken,
    beats: tokio::task::JoinHandle<()>,
    follower: tokio::task::JoinHandle<logs::LogSummary>,
) {
    beat_stop.cancel();
    let _ = beats.await;
    follower.abort();
    let _ = follower.await;
    tracing::info!(compute = %compute.name, "the launcher is stopping; leaving the attempt's compute running");
}

/// How the wait for queued compute to run ended.
pub(crate) enum Queued {
    /// It runs, or ran already: report it started.
    Running,
    /// It will never run: cancelled, gone, or its output cannot be kept.
    Ended(Ended),
    /// The launcher is stopping.
    Stopping,
}

/// Waits until compute that may wait on its platform (a pod Pending) runs, reading its status
/// at growing intervals (from 20 ms to 1 s; a backend answers from its watch's cache, so the
/// reads cost the platform nothing).
pub(crate) async fn until_running(
    rt: &Runtime,
    compute: &Compute,
    cancel: &mut watch::Receiver<Option<String>>,
    logs_failed: &CancellationToken,
) -> Queued {
    let poll = async {
        let mut wait = Duration::from_millis(20);
        loop {
            match rt.backend.status(compute).await {
                Ok(ComputeState::Pending) => {}
                Ok(ComputeState::Running | ComputeState::Exited(_)) => return Queued::Running,
                Ok(gone @ ComputeState::Vanished(_)) => return Queued::Ended(Ended::Compute(gone)),
                Err(e) if e.is_transient() => {
                    tracing::warn!(error = %e, "cannot read the queued compute's status; trying again");
                }
                Err(e) => return Queued::Ended(Ended::WaitFailed(e)),
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(1));
        }
    };
    tokio::select! {
        queued = poll => queued,
        error = cancelled(cancel) => Queued::Ended(Ended::Cancelled(error)),
        _ = logs_failed.cancelled() => Queued::Ended(Ended::Stopped("its output could not be kept".into())),
        _ = rt.stop.cancelled() => Queued::Stopping,
    }
}

/// Publishes `task.accepted` for compute created and maybe queued on its platform.
pub(crate) async fn report_accepted(
    rt: &Runtime,
    ids: &Ids,
    attempt: u32,
    ready_at_ms: i64,
    compute: &Compute,
) -> Result<(), ferry_bus::Error> {
    let accepted_at_ms = ferry_event::now_ms();
    let event = rt.builder.task(
        kind::TASK_ACCEPTED,
        &ids.job_id,
        &ids.task_id,
        Some(&ids.attempt_id),
        &TaskAccepted {
            job_id: ids.job_id.clone(),
            task_id: ids.task_id.clone(),
            attempt_id: ids.attempt_id.clone(),
            attempt,
            accepted_at_ms,
            ready_at_ms,
            launcher: rt.builder.source().to_string(),
            compute: Some(rt.backend.describe(compute)),
        },
    );
    rt.publisher.publish(&[event]).await
}

/// How long a redelivered dispatch waits, claimed, for the scheduler to say that another
/// launcher holds its attempt.
const CLAIM_WAIT: Duration = Duration::from_secs(2);

/// Claims the attempt of a dispatch the broker delivered again before starting it: another
/// launcher of the group may have started it and died before its broker message was
/// acknowledged (a message carries a batch of dispatches, acknowledged once all have started).
/// The claim (`task.accepted`) reaches the scheduler, which answers a claim of an attempt
/// another launcher holds with a cancel addressed to this one (fencing); waiting a moment for
/// that answer keeps the copy from ever starting. `Some(error)`: the attempt is another's, or
/// cancelled. A cancel that comes later still stops the copy, as before.
async fn claim(
    rt: &Runtime,
    d: &TaskDispatched,
    reserved: &Compute,
    cancel: &mut watch::Receiver<Option<String>>,
) -> Option<String> {
    let ids = Ids::of(d);
    if let Err(e) = report_accepted(rt, &ids, d.attempt, d.ready_at_ms, reserved).await {
        tracing::warn!(error = %e, "cannot claim a redelivered dispatch's attempt; starting it (a cancel still stops it if another launcher holds it)");
        return None;
    }
    tracing::info!(
        "a redelivered dispatch: claimed its attempt; starting it unless another launcher holds it"
    );
    let wait = tokio::time::timeout(CLAIM_WAIT, cancel.wait_for(Option::is_some)).await;
    match wait {
        Ok(Ok(error)) => error.clone(),
        _ => None,
    }
}

/// Publishes `task.started` for compute that runs.
pub(crate) async fn report_started(
    rt: &Runtime,
    ids: &Ids,
    attempt: u32,
    ready_at_ms: i64,
    started_at_ms: i64,
    compute: &Compute,
) -> Result<(), ferry_bus::Error> {
    let event = rt.builder.task(
        kind::TASK_STARTED,
        &ids.job_id,
        &ids.task_id,
        Some(&ids.attempt_id),
        &TaskStarted {
            job_id: ids.job_id.clone(),
            task_id: ids.task_id.clone(),
            attempt_id: ids.attempt_id.clone(),
            attempt,
            started_at_ms,
            ready_at_ms,
            launcher: rt.builder.source().to_string(),
            compute: Some(rt.backend.describe(compute)),
        },
    );
    rt.publisher.publish(&[event]).await?;
    let latency = u64::try_from(started_at_ms - ready_at_ms).unwrap_or(0);
    metrics::dispatch_latency(rt.backend.name(), Duration::from_millis(latency));
    tracing::info!(compute = %compute.name, latency_ms = latency, "attempt started");
    Ok(())
}

/// Collects the outputs and output files of a successful attempt, records the report, masked,
/// and releases the compute. Returns the report.
pub(crate) async fn conclude(
    rt: &Runtime,
    compute: &Compute,
    task: Task<'_>,
    mut report: TaskFinished,
) -> TaskFinished {
    if report.outcome == Outcome::Succeeded {
        let backend = &*rt.backend;
        let collected = retrying(&rt.stop, "collecting outputs", move || {
            backend.collect(compute, task)
        })
        .await
        .and_then(|c| {
            let outputs = match c.outputs {
                Some(bytes) => collect::parse_outputs(&bytes).map_err(AttemptError::Task)?,
                None => Map::new(),
            };
            let subtasks = match c.subtasks {
                Some(bytes) => collect::parse_subtasks(&bytes).map_err(AttemptError::Task)?,
                None => Vec::new(),
            };
            Ok((outputs, subtasks, c.files))
        });
        let masked =
            |o: Map<String, serde_json::Value>| match rt.masker.mask_json(serde_json::Value::Object(o)) {
                serde_json::Value::Object(o) => o,
                _ => Map::new(),
            };
        let kept = match collected {
            Ok((o, subtasks, f)) => match &rt.config.artifact_store {
                Some(store) => store_files(rt, store, task, f).await.map(|f| (o, subtasks, f)),
                None => match within_quota(rt, task, &f).await {
                    Ok(()) => Ok((o, subtasks, f)),
                    Err(over) => Err(AttemptError::Task(over.to_string())),
                },
            },
            Err(e) => Err(e),
        };
        match kept {
            Ok((o, subtasks, f)) => {
                report.outputs = masked(o);
                // Only a succeeded attempt's subtasks are sent: a failed one's never join.
                report.subtasks = subtasks.into_iter().map(masked).collect();
                report.output_files = f;
            }
            Err(e) => {
                report.outcome = e.outcome();
                report.error = Some(e.message().to_string());
            }
        }
    }
    report.finished_at_ms = ferry_event::now_ms();
    record_and_release(rt, &mut report, compute).await;
    report
}

/// Masks the report's error, records the report with `compute` still to release, and releases
/// it ([`release_reported`]).
async fn record_and_release(rt: &Runtime, report: &mut TaskFinished, compute: &Compute) {
    report.error = report.error.take().map(|e| rt.masker.mask(&e));
    record_report(rt, report, Some(compute));
    release_reported(rt, &report.attempt_id, compute).await;
}

/// Releases the compute of the recorded report of `attempt_id`, and records that it was: a
/// launcher killed before then releases it on its next start ([`crate::reconcile`]).
pub(crate) async fn release_reported(rt: &Runtime, attempt_id: &str, compute: &Compute) {
    release(rt, compute).await;
    if let Err(e) = rt.journal.record(attempt_id, Entry::Released) {
        tracing::warn!(error = %e, "cannot record that the attempt's compute was released");
    }
}

/// Stores the output files `files` the backend collected into the artifact directory in
/// `store`, and removes the attempt's directory of them once all are stored: the files as
/// reported name their place in the store. A file stored twice (the launcher stopped
/// between storing and reporting) is the same file. A backend that stored a file in the store
/// itself keeps its URI; a file anywhere else is refused.
async fn store_files(
    rt: &Runtime,
    store: &ferry_artifacts::Store,
    task: Task<'_>,
    files: Vec<OutputFile>,
) -> BackendResult<Vec<OutputFile>> {
    let d = task.dispatch;
    let attempt_dir = collect::attempt_artifacts(d);
    let mut local_dir = None;
    let mut stored = Vec::with_capacity(files.len());
    for file in files {
        if store.key_of(&file.uri).is_ok() {
            stored.push(file);
            continue;
        }
        let local = url::Url::parse(&file.uri)
            .ok()
            .filter(|u| u.scheme() == "file")
            .and_then(|u| u.to_file_path().ok())
            .ok_or_else(|| {
                AttemptError::Platform(format!(
                    "output file {:?} is at {}, neither in the artifact directory nor in the artifact store {}",
                    file.path,
                    file.uri,
                    store.url()
                ))
            })?;
        // The backend copied it to ARTIFACTS/JOB/TASK/ATTEMPT/PATH: that directory goes once
        // every file is stored.
        let depth = Path::new(&file.path).components().count();
        if let Some(dir) = local
            .ancestors()
            .nth(depth)
            .filter(|dir| dir.ends_with(&attempt_dir))
        {
            local_dir = Some(dir.to_path_buf());
        }
        let key = ferry_artifacts::attempt_key(&d.job_id, &d.task_id, &d.attempt_id, &file.path);
        let (key_ref, local_ref, shown) = (&key, &local, &file.path);
        retrying(&rt.stop, "storing an output file", move || async move {
            store.put_file(key_ref, local_ref).await.map_err(|e| {
                let message = format!("cannot store output file {shown:?}: {e}");
                if e.is_transient() {
                    AttemptError::Unavailable(message)
                } else {
                    AttemptError::Platform(message)
                }
            })
        })
        .await?;
        stored.push(OutputFile {
            uri: store.uri(&key),
            ..file
        });
    }
    if let Some(dir) = local_dir
        && let Err(e) = std::fs::remove_dir_all(&dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot remove output files once stored");
    }
    Ok(stored)
}

/// Counts the output files `files` the attempt kept against its namespace's quota, or, when
/// they would pass it, removes them (the attempt's whole artifact directory) and says why.
async fn within_quota(
    rt: &Runtime,
    task: Task<'_>,
    files: &[ferry_event::payload::OutputFile],
) -> Result<(), crate::quota::OverQuota> {
    let Some(quotas) = rt.config.artifact_quotas.clone() else {
        return Ok(());
    };
    if files.is_empty() {
        return Ok(());
    }
    let d = task.dispatch;
    let namespace = d
        .namespace
        .as_deref()
        .unwrap_or(ferry_event::payload::DEFAULT_NAMESPACE);
    let attempt_dir = collect::attempt_artifacts(d).to_string_lossy().into_owned();
    let bytes = files.iter().map(|f| f.size).sum();
    let Err(over) = quotas.admit(namespace, &attempt_dir, bytes) else {
        return Ok(());
    };
    // Only a directory named by plain ids is surely inside the artifact directory.
    if [&d.job_id, &d.task_id, &d.attempt_id]
        .iter()
        .any(|id| journal::check_id(id).is_err())
    {
        tracing::warn!(
            dir = attempt_dir,
            "not removing output files refused by a quota: their directory is not named by plain ids"
        );
        return Err(over);
    }
    let dir = quotas.dir().join(&attempt_dir);
    if let Err(e) = tokio::fs::remove_dir_all(&dir).await
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot remove output files refused by a quota");
    }
    Err(over)
}

/// Records the report in the journal, with the time its attempt held compute, before it is
/// published.
///
/// The time held counts in the compute-seconds metric here, once per attempt: a report
/// published again after a restart is not recorded again. `release` is the compute still to
/// release after it, kept until [`release_reported`] records that it was.
fn record_report(rt: &Runtime, report: &mut TaskFinished, release: Option<&Compute>) {
    if report.compute_ms.is_none() {
        let status = rt.journal.status(&report.attempt_id);
        report.compute_ms = held_ms(&status, report.finished_at_ms);
        if let (Some(ms), Status::Running(record)) = (report.compute_ms, &status) {
            metrics::compute(
                rt.backend.name(),
                record.namespace.as_deref(),
                record.flow_id.as_deref().unwrap_or("none"),
                Duration::from_millis(ms),
            );
        }
    }
    let entry = Entry::Reported {
        report: Box::new(report.clone()),
        release: release.cloned(),
    };
    if let Err(e) = rt.journal.record(&report.attempt_id, entry) {
        tracing::warn!(error = %e, "cannot record the attempt's report before publishing it");
    }
}

/// How long the attempt whose journal status is `status` held compute, up to `finished_at_ms`:
/// from its reservation (from its start in records older than that), once its compute was
/// created.
fn held_ms(status: &Status, finished_at_ms: i64) -> Option<u64> {
    let Status::Running(record) = status else {
        return None;
    };
    let since = match record.reserved_at_ms {
        0 => record.started_at_ms,
        at => at,
    };
    (record.created && since != 0).then(|| u64::try_from(finished_at_ms - since).unwrap_or(0))
}

/// Records the report, publishes it and marks the attempt finished. Secret values are masked
/// in the error first. Returns whether the broker confirmed it; if not, the report stays in
/// the journal and the next start of the launcher publishes it.
pub(crate) async fn publish_report(rt: &Runtime, mut report: TaskFinished) -> bool {
    report.error = report.error.map(|e| rt.masker.mask(&e));
    record_report(rt, &mut report, None);
    publish_recorded(rt, &report).await
}

/// [`publish_report`] of an attempt whose compute is released first: the record keeps the
/// compute until it is, so that a launcher killed in between releases it on its next start.
pub(crate) async fn publish_report_released(
    rt: &Runtime,
    mut report: TaskFinished,
    compute: &Compute,
) -> bool {
    record_and_release(rt, &mut report, compute).await;
    publish_recorded(rt, &report).await
}

/// Publishes a recorded report and, once the broker confirmed it, marks the attempt finished.
async fn publish_recorded(rt: &Runtime, report: &TaskFinished) -> bool {
    let event = rt.builder.task(
        kind::TASK_FINISHED,
        &report.job_id,
        &report.task_id,
        Some(&report.attempt_id),
        report,
    );
    match rt.publisher.publish(&[event]).await {
        Ok(()) => {
            tracing::info!(
                outcome = report.outcome.as_str(),
                error = report.error.as_deref(),
                log_lines = report.log_lines,
                "attempt finished"
            );
            if let Err(e) = rt.journal.record(&report.attempt_id, Entry::Done) {
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

/// Sleeps until `deadline` and returns `limit`; never returns without one.
pub(crate) async fn sleep_until_or_never(deadline: Option<Instant>, limit: Option<Duration>) -> Duration {
    match (deadline, limit) {
        (Some(at), Some(limit)) => {
            tokio::time::sleep_until(at).await;
            limit
        }
        _ => std::future::pending().await,
    }
}

/// Waits until a cancel arrives; returns the error to report.
pub(crate) async fn cancelled(rx: &mut watch::Receiver<Option<String>>) -> String {
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

/// Renews the attempt's lease while its compute is seen alive: each heartbeat follows a read of
/// the compute's status that found it pending or running, so a lapsed lease means the compute
/// was not seen, not only that the launcher was silent.
pub(crate) async fn heartbeat(
    rt: Arc<Runtime>,
    ids: Ids,
    compute: Compute,
    lease_ms: u64,
    stop: CancellationToken,
) {
    let period = Duration::from_millis((lease_ms / 3).max(10));
    let mut tick = tokio::time::interval_at(Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        match rt.backend.status(&compute).await {
            Ok(ComputeState::Pending | ComputeState::Running) => {}
            Ok(state) => {
                tracing::debug!(?state, "the compute has ended; no heartbeat");
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the compute's status; no heartbeat this time");
                continue;
            }
        }
        let event = rt.builder.task(
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
        if let Err(e) = rt.publisher.publish_once(&[event]).await {
            tracing::warn!(error = %e, "cannot publish a heartbeat; trying again at the next one");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    /// Fails with `error` the first `failures` calls, then answers `Ok(calls so far)`.
    async fn flaky(calls: &AtomicU32, failures: u32, error: &AttemptError) -> BackendResult<u32> {
        let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
        if n <= failures { Err(error.clone()) } else { Ok(n) }
    }

    #[tokio::test(start_paused = true)]
    async fn an_unavailable_platform_is_called_again_until_it_answers() {
        let (calls, stop) = (AtomicU32::new(0), CancellationToken::new());
        let busy = AttemptError::Unavailable("API timing out".into());
        let started = Instant::now();
        let answer = retrying(&stop, "creating", || flaky(&calls, 3, &busy)).await;
        assert_eq!(answer, Ok(4));
        assert!(started.elapsed() < RETRY_FOR, "{:?}", started.elapsed());
    }

    #[tokio::test(start_paused = true)]
    async fn other_faults_are_not_retried_and_unavailability_ends_in_time() {
        let (calls, stop) = (AtomicU32::new(0), CancellationToken::new());
        let full = AttemptError::Platform("no space left on device".into());
        assert_eq!(
            retrying(&stop, "creating", || flaky(&calls, 1, &full)).await,
            Err(full)
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        let calls = AtomicU32::new(0);
        let down = AttemptError::Unavailable("daemon restarting".into());
        let started = Instant::now();
        let answer = retrying(&stop, "creating", || flaky(&calls, u32::MAX, &down)).await;
        assert_eq!(answer.map_err(|e| e.outcome()), Err(Outcome::Lost));
        let waited = started.elapsed();
        assert!(
            waited >= RETRY_FOR && waited < RETRY_FOR + Duration::from_secs(11),
            "{waited:?}"
        );

        // A launcher that stops does not wait for the platform.
        let calls = AtomicU32::new(0);
        stop.cancel();
        let started = Instant::now();
        assert!(
            retrying(&stop, "creating", || flaky(&calls, u32::MAX, &down))
                .await
                .is_err()
        );
        assert_eq!(started.elapsed(), Duration::ZERO);
    }
}
