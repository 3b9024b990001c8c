//! Start-up: attempts a previous run of this launcher left behind.

use std::collections::HashSet;
use std::sync::Arc;

use ferry_event::payload::{Outcome, TaskFinished};
use serde_json::Map;
use tokio::task::JoinSet;
use tracing::Instrument;

use std::time::Duration;

use tokio::sync::watch;

use crate::attempt::{
    Ended, Queued, cancelled, conclude, heartbeat, publish_report_released, release, release_reported,
    report_started, retrying, settle_pending, sleep_until_or_never, stop, until_running,
};
use crate::backend::{Compute, ComputeState, ShutdownPolicy, Task};
use crate::journal::{Entry, Open, RunningRecord, Status};
use crate::logs::{self, Ids, Tail};
use crate::runtime::Runtime;

/// Looks at every attempt the journal holds unfinished and at the compute the backend says it
/// owns. Compute that ran under a launcher that died is adopted: under
/// [`ShutdownPolicy::Detach`], followed to its true end; else stopped, its output published to
/// the end and the attempt reported lost. Reports written but not confirmed are published, the
/// compute they left unreleased released first.
/// Compute the journal does not know is stopped and released. Returns how many attempts were
/// reported.
pub(crate) async fn reconcile(rt: &Arc<Runtime>) -> (usize, Vec<Adopted>) {
    let mut reports = JoinSet::new();
    let mut known = HashSet::new();
    for (id, open) in rt.journal.unfinished() {
        match open.status {
            Status::Fresh | Status::Finished | Status::Tombstone(_) => {}
            Status::ResultPending(report) => {
                tracing::info!(attempt_id = id, "publishing a report left unconfirmed");
                // Its compute, when the launcher died before releasing it (a job's staged
                // files, a container): released first, as the report's attempt would have.
                let release = open.release.clone();
                if let Some(compute) = &release {
                    known.insert(compute.name.clone());
                }
                let rt = rt.clone();
                reports.spawn(async move {
                    if let Some(compute) = release {
                        release_reported(&rt, &id, &compute).await;
                    }
                    settle_pending(rt, *report, None).await;
                    None
                });
            }
            Status::Running(ref record) => {
                let span = tracing::info_span!(
                    "attempt",
                    job_id = %record.job_id,
                    task_id = %record.task_id,
                    attempt_id = %record.attempt_id
                );
                known.insert(record.compute.name.clone());
                let record = record.clone();
                reports.spawn(recover(rt.clone(), record, open).instrument(span));
            }
        }
    }
    let (mut n, mut adopted) = (0, Vec::new());
    while let Some(done) = reports.join_next().await {
        match done {
            Ok(Some(a)) => adopted.push(a),
            _ => n += 1,
        }
    }
    let backend = &*rt.backend;
    match retrying(&rt.stop, "listing the compute this launcher owns", move || {
        backend.list_owned()
    })
    .await
    {
        Ok(owned) => {
            for compute in owned.into_iter().filter(|c| !known.contains(&c.name)) {
                tracing::warn!(compute = %compute.name, "stopping compute the journal does not know (a previous run died before recording it)");
                stop(rt, &compute).await;
                release(rt, &compute).await;
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot list the compute this launcher owns; compute a previous run did not record may be left")
        }
    }
    (n, adopted)
}

/// Compute of a previous run that runs on, adopted under [`ShutdownPolicy::Detach`]: the
/// intake follows it like an attempt of its own ([`follow_adopted`]), so that the launcher
/// serves new dispatches meanwhile.
pub(crate) struct Adopted {
    pub(crate) record: RunningRecord,
    compute: Compute,
    open: Open,
}

/// Follows adopted compute to its end, as an attempt of this run: heartbeats while it runs,
/// its timeout, a cancel; then its output, outputs and true outcome. When the launcher stops,
/// it is left running again.
pub(crate) async fn follow_adopted(
    rt: Arc<Runtime>,
    adopted: Adopted,
    mut cancel: watch::Receiver<Option<String>>,
) {
    let Adopted {
        mut record,
        compute,
        open,
    } = adopted;
    let ids = Ids {
        job_id: record.job_id.clone(),
        task_id: record.task_id.clone(),
        attempt_id: record.attempt_id.clone(),
        namespace: None,
    };
    let beat_stop = tokio_util::sync::CancellationToken::new();
    let beats = tokio::spawn(
        heartbeat(
            rt.clone(),
            ids.clone(),
            compute.clone(),
            record.lease_ms.unwrap_or(ADOPTED_LEASE_MS),
            beat_stop.clone(),
        )
        .in_current_span(),
    );
    if record.started_at_ms == 0 {
        // Accepted by the previous run and not running yet: started once it runs.
        let never = tokio_util::sync::CancellationToken::new();
        let end = match until_running(&rt, &compute, &mut cancel, &never).await {
            Queued::Running => {
                record.started_at_ms = ferry_event::now_ms();
                if let Err(e) = rt
                    .journal
                    .record(&record.attempt_id, Entry::Running(record.clone()))
                {
                    tracing::warn!(error = %e, "cannot record the attempt's start");
                }
                let started = report_started(
                    &rt,
                    &ids,
                    record.attempt,
                    record.ready_at_ms,
                    record.started_at_ms,
                    &compute,
                )
                .await;
                started
                    .err()
                    .map(|e| End::Stopped(Outcome::Lost, format!("cannot report the attempt's start: {e}")))
            }
            Queued::Ended(Ended::Cancelled(error)) => Some(End::Stopped(Outcome::Cancelled, error)),
            Queued::Ended(Ended::Compute(state)) => Some(End::State(Some(state))),
            Queued::Ended(_) => Some(End::State(None)),
            Queued::Stopping => {
                beat_stop.cancel();
                let _ = beats.await;
                tracing::info!(compute = %compute.name, "the launcher is stopping; leaving the adopted compute queued");
                return;
            }
        };
        if let Some(end) = end {
            beat_stop.cancel();
            let _ = beats.await;
            return finish(&rt, record, compute, &open, end).await;
        }
    }
    let timeout = record.timeout_ms.map(Duration::from_millis);
    let deadline = timeout.map(|t| {
        let ran = Duration::from_millis((ferry_event::now_ms() - record.started_at_ms).max(0) as u64);
        tokio::time::Instant::now() + t.saturating_sub(ran)
    });
    let ended = tokio::select! {
        state = rt.backend.wait(&compute) => End::State(state.ok()),
        limit = sleep_until_or_never(deadline, timeout) => End::Stopped(Outcome::TimedOut, format!("timed out after {limit:?}")),
        error = cancelled(&mut cancel) => End::Stopped(Outcome::Cancelled, error),
        _ = rt.stop.cancelled() => {
            beat_stop.cancel();
            let _ = beats.await;
            tracing::info!(compute = %compute.name, "the launcher is stopping; leaving the adopted compute running");
            return;
        }
    };
    beat_stop.cancel();
    let _ = beats.await;
    finish(&rt, record, compute, &open, ended).await
}

/// The lease of adopted compute whose record does not say (written before it was kept).
const ADOPTED_LEASE_MS: u64 = 30_000;

/// How an attempt of a previous run ended.
enum End {
    /// On its own (or as far as can be told: `None`).
    State(Option<ComputeState>),
    /// Stopped by this run: timed out or cancelled, with the error.
    Stopped(Outcome, String),
}

/// An attempt whose compute ran under a launcher that died.
/// Returns the compute to follow on when it is adopted; else the attempt is settled here.
async fn recover(rt: Arc<Runtime>, record: RunningRecord, open: Open) -> Option<Adopted> {
    let backend = &*rt.backend;
    let reserved = &record.compute;
    let found = retrying(&rt.stop, "looking for the compute", move || {
        backend.find(reserved)
    })
    .await;
    let (compute, state) = match found {
        Ok(Some(compute)) => {
            let c = &compute;
            let state = retrying(&rt.stop, "reading the compute's status", move || {
                backend.status(c)
            })
            .await;
            (compute, state.ok())
        }
        Ok(None) => (record.compute.clone(), None),
        Err(e) => {
            tracing::warn!(error = %e, "cannot look for the attempt's compute");
            (record.compute.clone(), None)
        }
    };
    let started = record.created;
    if started && rt.backend.shutdown_policy() == ShutdownPolicy::Detach {
        if let Some(state @ (ComputeState::Pending | ComputeState::Running)) = &state {
            tracing::info!(compute = %compute.name, ?state, "adopting the compute of an attempt a previous run started");
            return Some(Adopted {
                record,
                compute,
                open,
            });
        }
        if let Some(ComputeState::Exited(_)) = &state {
            finish(&rt, record.clone(), compute.clone(), &open, End::State(state)).await;
            return None;
        }
    }
    let error = match &state {
        _ if !started => {
            // Killed while creating it: whatever the create had done yet is stopped.
            stop(&rt, &compute).await;
            "the launcher stopped while starting the attempt; what it started was stopped".to_string()
        }
        Some(ComputeState::Pending | ComputeState::Running) => {
            tracing::warn!(compute = %compute.name, "stopping the compute of an attempt from a previous run");
            stop(&rt, &compute).await;
            "the launcher restarted while the attempt ran; its processes were stopped".to_string()
        }
        Some(ComputeState::Exited(_)) => {
            finish(&rt, record.clone(), compute.clone(), &open, End::State(state)).await;
            return None;
        }
        Some(ComputeState::Vanished(why)) => {
            // What is left of it (what left its process group, say) goes too.
            stop(&rt, &compute).await;
            format!("the launcher restarted while the attempt ran; {why}")
        }
        None => {
            stop(&rt, &compute).await;
            "the launcher restarted while the attempt ran; its compute is gone".to_string()
        }
    };
    let logs = drain_logs(&rt, &record, &compute, &open).await?;
    let error = logs.failure.unwrap_or(error);
    let report = TaskFinished {
        log_lines: logs.lines,
        started_at_ms: (record.started_at_ms != 0).then_some(record.started_at_ms),
        ..TaskFinished::unreported(
            record.job_id,
            record.task_id,
            record.attempt_id,
            record.attempt,
            Outcome::Lost,
            error,
            ferry_event::now_ms(),
        )
    };
    publish_report_released(&rt, report, &compute).await;
    None
}

/// Publishes the rest of an attempt's output, from where the journal says the previous run
/// was. `None` when the launcher stops before it is done: its next start goes on.
async fn drain_logs(
    rt: &Arc<Runtime>,
    record: &RunningRecord,
    compute: &Compute,
    open: &Open,
) -> Option<logs::LogSummary> {
    let ids = Ids {
        job_id: record.job_id.clone(),
        task_id: record.task_id.clone(),
        attempt_id: record.attempt_id.clone(),
        namespace: None,
    };
    let mut tail = Tail::new(
        rt.backend.clone(),
        compute.clone(),
        open.published.clone(),
        rt.masker.clone(),
    );
    let logs = logs::finish_recovered(rt, &ids, &mut tail, &open.numbered).await;
    if !logs.complete && logs.failure.is_none() && rt.stop.is_cancelled() {
        tracing::warn!("stopping before the attempt's output was published; the next start goes on");
        return None;
    }
    Some(logs)
}

/// An adopted attempt that ended (`end`): its output to the end, its outputs, its true
/// outcome.
async fn finish(rt: &Arc<Runtime>, record: RunningRecord, compute: Compute, open: &Open, end: End) {
    stop(rt, &compute).await;
    let Some(logs) = drain_logs(rt, &record, &compute, open).await else {
        return;
    };
    let lines = logs.lines;
    let (outcome, exit_code, error) = match end {
        End::Stopped(outcome, error) => (outcome, None, Some(error)),
        End::State(Some(ComputeState::Exited(exit))) if exit.succeeded() => {
            (Outcome::Succeeded, exit.code, None)
        }
        End::State(Some(ComputeState::Exited(exit))) => (Outcome::Failed, exit.code, exit.error),
        End::State(Some(ComputeState::Vanished(why))) => (Outcome::Lost, None, Some(why)),
        _ => (
            Outcome::Lost,
            None,
            Some("the launcher restarted while the attempt ran; its end could not be read".into()),
        ),
    };
    let (outcome, error) = match logs.failure {
        Some(failure) => (Outcome::Lost, Some(failure)),
        None => (outcome, error),
    };
    let report = TaskFinished {
        job_id: record.job_id.clone(),
        task_id: record.task_id.clone(),
        attempt_id: record.attempt_id.clone(),
        attempt: record.attempt,
        outcome,
        exit_code,
        error,
        outputs: Map::new(),
        output_files: Vec::new(),
        log_lines: lines,
        started_at_ms: (record.started_at_ms != 0).then_some(record.started_at_ms),
        finished_at_ms: 0,
        reason: None,
        compute_ms: None,
        subtasks: Vec::new(),
    };
    // The dispatch itself is not kept: outputs are collected for what the journal kept of it.
    let dispatch = ferry_event::payload::TaskDispatched {
        job_id: record.job_id,
        task_id: record.task_id,
        attempt_id: record.attempt_id,
        attempt: record.attempt,
        runner: Default::default(),
        command: Vec::new(),
        env: Default::default(),
        input_files: Default::default(),
        output_files: record.output_files,
        resources: Default::default(),
        timeout_ms: None,
        lease_ms: 0,
        ready_at_ms: 0,
        flow_id: None,
        namespace: None,
        priority: 0,
    };
    let report = conclude(rt, &compute, Task::new(&dispatch, &rt.config.secrets), report).await;
    super::attempt::settle_pending(rt.clone(), report, None).await;
}
