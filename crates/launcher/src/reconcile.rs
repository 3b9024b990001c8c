//! Start-up: attempts a previous run of this launcher left behind.

use std::collections::HashSet;
use std::sync::Arc;

use ferry_event::payload::{Outcome, TaskFinished};
use serde_json::Map;
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::attempt::{conclude, publish_report, release, retrying, settle_pending, stop};
use crate::backend::{Compute, ComputeState, ShutdownPolicy, Task};
use crate::journal::{Open, RunningRecord, Status};
use crate::logs::{self, Ids, Tail};
use crate::runtime::Runtime;

/// Looks at every attempt the journal holds unfinished and at the compute the backend says it
/// owns. Compute that ran under a launcher that died is adopted: under
/// [`ShutdownPolicy::Detach`], followed to its true end; else stopped, its output published to
/// the end and the attempt reported lost. Reports written but not confirmed are published.
/// Compute the journal does not know is stopped and released. Returns how many attempts were
/// reported.
pub(crate) async fn reconcile(rt: &Arc<Runtime>) -> usize {
    let mut reports = JoinSet::new();
    let mut known = HashSet::new();
    for (id, open) in rt.journal.unfinished() {
        match open.status {
            Status::Fresh | Status::Finished | Status::Tombstone(_) => {}
            Status::ResultPending(report) => {
                tracing::info!(attempt_id = id, "publishing a report left unconfirmed");
                reports.spawn(settle_pending(rt.clone(), *report, None));
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
    let mut n = 0;
    while reports.join_next().await.is_some() {
        n += 1;
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
    n
}

/// An attempt whose compute ran under a launcher that died.
async fn recover(rt: Arc<Runtime>, record: RunningRecord, open: Open) {
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
            let c = &compute;
            let ended = backend.wait(c).await;
            return finish(&rt, record.clone(), compute.clone(), &open, ended.ok()).await;
        }
        if let Some(ComputeState::Exited(_)) = &state {
            return finish(&rt, record.clone(), compute.clone(), &open, state).await;
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
            return finish(&rt, record.clone(), compute.clone(), &open, state).await;
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
    let Some(lines) = drain_logs(&rt, &record, &compute, &open).await else {
        return;
    };
    let report = TaskFinished {
        log_lines: lines,
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
    publish_report(&rt, report).await;
    release(&rt, &compute).await;
}

/// Publishes the rest of an attempt's output, from where the journal says the previous run
/// was. `None` when the launcher stops before it is done: its next start goes on.
async fn drain_logs(
    rt: &Arc<Runtime>,
    record: &RunningRecord,
    compute: &Compute,
    open: &Open,
) -> Option<u64> {
    let ids = Ids {
        job_id: record.job_id.clone(),
        task_id: record.task_id.clone(),
        attempt_id: record.attempt_id.clone(),
    };
    let mut tail = Tail::new(
        rt.backend.clone(),
        compute.clone(),
        open.published.clone(),
        rt.masker.clone(),
    );
    let logs = logs::finish_recovered(rt, &ids, &mut tail, &open.numbered).await;
    if !logs.complete && rt.stop.is_cancelled() {
        tracing::warn!("stopping before the attempt's output was published; the next start goes on");
        return None;
    }
    Some(logs.lines)
}

/// An adopted attempt whose compute ended (`state`): its output to the end, its outputs, its
/// true outcome.
async fn finish(
    rt: &Arc<Runtime>,
    record: RunningRecord,
    compute: Compute,
    open: &Open,
    state: Option<ComputeState>,
) {
    stop(rt, &compute).await;
    let Some(lines) = drain_logs(rt, &record, &compute, open).await else {
        return;
    };
    let (outcome, exit_code, error) = match state {
        Some(ComputeState::Exited(exit)) if exit.succeeded() => (Outcome::Succeeded, exit.code, None),
        Some(ComputeState::Exited(exit)) => (Outcome::Failed, exit.code, exit.error),
        Some(ComputeState::Vanished(why)) => (Outcome::Lost, None, Some(why)),
        _ => (
            Outcome::Lost,
            None,
            Some("the launcher restarted while the attempt ran; its end could not be read".into()),
        ),
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
        started_at_ms: Some(record.started_at_ms),
        finished_at_ms: 0,
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
