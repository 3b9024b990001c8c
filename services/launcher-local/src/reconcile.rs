//! Start-up: attempts a previous run of this launcher left behind.

use std::sync::Arc;

use ferry_event::payload::{Outcome, TaskFinished};
use serde_json::Map;
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::attempt::{publish_report, release, settle_pending};
use crate::logs::{self, Ids, Tail};
use crate::state::{Open, RunningRecord, Status};
use crate::{Shared, process};

/// Looks at every attempt the journal holds unfinished: processes that ran under a launcher
/// that died are stopped (if they are still ours), the rest of their output is published and
/// they are reported lost; reports written but not confirmed are published. Returns how many
/// attempts were reported.
pub(crate) async fn reconcile(shared: &Arc<Shared>) -> usize {
    let mut reports = JoinSet::new();
    for (id, open) in shared.journal.unfinished() {
        match open.status {
            Status::Fresh | Status::Finished | Status::Tombstone(_) => {}
            Status::ResultPending(report) => {
                tracing::info!(attempt_id = id, "publishing a report left unconfirmed");
                reports.spawn(settle_pending(shared.clone(), *report, None));
            }
            Status::Running(ref record) => {
                let span = tracing::info_span!(
                    "attempt",
                    job_id = %record.job_id,
                    task_id = %record.task_id,
                    attempt_id = %record.attempt_id
                );
                let record = record.clone();
                reports.spawn(recover(shared.clone(), record, open).instrument(span));
            }
        }
    }
    let mut n = 0;
    while reports.join_next().await.is_some() {
        n += 1;
    }
    n
}

/// An attempt whose process ran under a launcher that died: stop what is left of it, publish
/// the rest of its output, report it lost.
async fn recover(shared: Arc<Shared>, record: RunningRecord, open: Open) {
    let error = if record.pid == 0 {
        // Killed while starting it: its processes, if the spawn happened, are found by the
        // attempt id in their environment.
        let pids = process::processes_with_env("FERRY_ATTEMPT_ID", &record.attempt_id);
        let mut groups: Vec<i32> = pids.iter().filter_map(|&p| process::group_of(p)).collect();
        groups.sort_unstable();
        groups.dedup();
        for pgid in &groups {
            tracing::warn!(
                pgid,
                "stopping the process group of an attempt started by a previous run"
            );
            process::stop_group(*pgid, shared.config.kill_grace, None).await;
        }
        "the launcher stopped while starting the attempt; what it started was stopped"
    } else if record.start_time != 0 && process::start_time(record.pid) == Some(record.start_time) {
        // The pid is ours only if it still names the process we started: same start time.
        tracing::warn!(
            pid = record.pid,
            "stopping the process group of an attempt from a previous run"
        );
        process::stop_group(record.pid, shared.config.kill_grace, None).await;
        "the launcher restarted while the attempt ran; its processes were stopped"
    } else {
        "the launcher restarted while the attempt ran; its process had already ended"
    };
    // Whatever left the attempt's process group: found in the slot's cgroup, or by the
    // attempt's id.
    shared
        .contain
        .stop(
            record.slot,
            &record.attempt_id,
            None,
            shared.config.kill_grace,
            None,
        )
        .await;

    let ids = Ids {
        job_id: record.job_id.clone(),
        task_id: record.task_id.clone(),
        attempt_id: record.attempt_id.clone(),
    };
    let dir = shared.slots.dir(record.slot);
    let lines = match dir.open_output() {
        Ok((out, err)) => {
            let mut tail = Tail::new(out, err, open.published, shared.masker.clone());
            let logs = logs::finish_recovered(&shared, &ids, &mut tail, open.numbered).await;
            if !logs.complete && shared.stop.is_cancelled() {
                tracing::warn!("stopping before the attempt's output was published; the next start goes on");
                return;
            }
            logs.lines
        }
        Err(e) => {
            tracing::warn!(slot = %dir.root().display(), error = %e, "cannot open the attempt's output files");
            open.published.seq
        }
    };
    let report = TaskFinished {
        job_id: record.job_id,
        task_id: record.task_id,
        attempt_id: record.attempt_id,
        attempt: record.attempt,
        outcome: Outcome::Lost,
        exit_code: None,
        error: Some(error.to_string()),
        outputs: Map::new(),
        output_files: Vec::new(),
        log_lines: lines,
        started_at_ms: (record.started_at_ms != 0).then_some(record.started_at_ms),
        finished_at_ms: ferry_event::now_ms(),
    };
    let slot = record.slot;
    publish_report(&shared, report).await;
    let s = shared.clone();
    let _ = tokio::task::spawn_blocking(move || release(&s, slot)).await;
}
