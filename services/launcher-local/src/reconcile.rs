//! Start-up: attempts a previous run of this launcher left behind.

use std::sync::Arc;

use ferry_event::payload::{Outcome, TaskFinished};
use serde_json::Map;
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::attempt::{publish_report, settle_pending};
use crate::state::{self, AttemptDir, RunningRecord, Status};
use crate::{Error, Result, Shared, process};

/// Looks at every attempt on disk: processes that ran under a launcher that died are stopped
/// (if they are still ours) and reported lost; reports written but not confirmed are
/// published; working directories of attempts that never started are removed. What earlier
/// versions recorded is rewritten in the current format first. Returns how many attempts were
/// reported.
pub(crate) async fn reconcile(shared: &Arc<Shared>) -> Result<usize> {
    let root = state::attempts_dir(&shared.config.data_dir);
    let entries = match std::fs::read_dir(&root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(source) => {
            return Err(Error::Io {
                what: format!("cannot list {}", root.display()),
                source,
            });
        }
    };
    let mut reports = JoinSet::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(id) = name.to_str().filter(|id| state::check_id(id).is_ok()) else {
            tracing::warn!(entry = ?name, "ignoring an entry that is not an attempt");
            continue;
        };
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let dir = AttemptDir::new(&shared.config.data_dir, id);
        let status = match dir.status() {
            Ok(Status::Fresh) => state::legacy::migrate(&dir),
            other => other,
        };
        let cleaned = match status {
            Err(e) => {
                tracing::warn!(attempt_id = id, error = %e, "cannot read the attempt's state; leaving it as it is");
                Ok(())
            }
            Ok(Status::Finished) | Ok(Status::Fresh) | Ok(Status::Tombstone(_)) => dir.remove_unstarted(),
            Ok(Status::ResultPending(report)) => {
                tracing::info!(attempt_id = id, "publishing a report left unconfirmed");
                reports.spawn(settle_pending(shared.clone(), *report, None));
                Ok(())
            }
            Ok(Status::Running(record)) => {
                let span = tracing::info_span!(
                    "attempt",
                    job_id = %record.job_id,
                    task_id = %record.task_id,
                    attempt_id = %record.attempt_id
                );
                reports.spawn(recover(shared.clone(), dir.clone(), record).instrument(span));
                Ok(())
            }
        };
        if let Err(e) = cleaned {
            tracing::warn!(attempt_id = id, error = %e, "cannot clean up the attempt's directory");
        }
    }
    let mut n = 0;
    while reports.join_next().await.is_some() {
        n += 1;
    }
    Ok(n)
}

/// An attempt whose process ran under a launcher that died: stop what is left of it, report it
/// lost.
async fn recover(shared: Arc<Shared>, dir: AttemptDir, record: RunningRecord) {
    if record.pid == 0 {
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
        let error = "the launcher stopped while starting the attempt; what it started was stopped";
        return report_lost(shared, dir, record, error).await;
    }
    // The pid is ours only if it still names the process we started: same start time.
    let ours = record.start_time != 0 && process::start_time(record.pid) == Some(record.start_time);
    let error = if ours {
        tracing::warn!(
            pid = record.pid,
            "stopping the process group of an attempt from a previous run"
        );
        process::stop_group(record.pid, shared.config.kill_grace, None).await;
        "the launcher restarted while the attempt ran; its processes were stopped"
    } else {
        "the launcher restarted while the attempt ran; its process had already ended"
    };
    report_lost(shared, dir, record, error).await
}

async fn report_lost(shared: Arc<Shared>, dir: AttemptDir, record: RunningRecord, error: &str) {
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
        log_lines: dir.read_log_lines(),
        started_at_ms: (record.started_at_ms != 0).then_some(record.started_at_ms),
        finished_at_ms: ferry_event::now_ms(),
    };
    publish_report(&shared, &dir, report).await;
}
