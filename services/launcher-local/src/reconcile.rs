//! Start-up: attempts a previous run of this launcher left behind.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use ferry_event::payload::{Outcome, TaskFinished};
use serde_json::Map;
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::attempt::{publish_report, settle_pending};
use crate::state::{self, AttemptDir, Record, RunningRecord, remove_dir_if_exists, remove_file_if_exists};
use crate::{Error, Result, Shared, process};

/// Looks at every attempt in progress on disk: processes that ran under a launcher that died
/// are stopped (if they are still ours) and reported lost; reports written but not confirmed
/// are published; working directories, outputs files and half-written records of attempts that
/// never started are removed. Attempts of the earlier layout are moved into the current one
/// first. Returns how many attempts were reported.
pub(crate) async fn reconcile(shared: &Arc<Shared>) -> Result<usize> {
    let data_dir = &shared.config.data_dir;
    migrate_legacy(data_dir);
    for_each_entry(&state::tmp_dir(data_dir), |name, path| {
        let _ = std::fs::remove_file(path);
        tracing::debug!(entry = ?name, "removed a record left half-written");
    })?;

    let mut reports = JoinSet::new();
    let mut in_progress = HashSet::new();
    for_each_entry(&state::records_dir(data_dir), |name, _| {
        let Some(id) = name.to_str().filter(|id| state::check_id(id).is_ok()) else {
            tracing::warn!(entry = ?name, "ignoring an entry that is not an attempt");
            return;
        };
        let dir = AttemptDir::new(data_dir, id);
        match dir.read_record() {
            Err(e) => {
                tracing::warn!(attempt_id = id, error = %e, "cannot read the attempt's state; leaving it as it is");
                in_progress.insert(id.to_string());
            }
            Ok(None) | Ok(Some(Record::Cancelled { .. })) => {}
            Ok(Some(Record::Reported(report))) => {
                tracing::info!(attempt_id = id, "publishing a report left unconfirmed");
                in_progress.insert(id.to_string());
                reports.spawn(settle_pending(shared.clone(), *report, None));
            }
            Ok(Some(Record::Running(record))) => {
                let span = tracing::info_span!(
                    "attempt",
                    job_id = %record.job_id,
                    task_id = %record.task_id,
                    attempt_id = %record.attempt_id
                );
                in_progress.insert(id.to_string());
                reports.spawn(recover(shared.clone(), dir, record).instrument(span));
            }
        }
    })?;

    // What attempts not in progress left behind.
    let stale = |name: &std::ffi::OsStr, suffix: &str| {
        name.to_str()
            .and_then(|n| n.strip_suffix(suffix))
            .is_some_and(|id| !in_progress.contains(id))
    };
    for_each_entry(&state::work_dir(data_dir), |name, path| {
        if stale(name, "")
            && let Err(e) = remove_dir_if_exists(path)
        {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove a working directory left behind");
        }
    })?;
    for_each_entry(&state::outputs_dir(data_dir), |name, path| {
        if stale(name, ".json") {
            let _ = remove_file_if_exists(path);
        }
    })?;

    let mut n = 0;
    while reports.join_next().await.is_some() {
        n += 1;
    }
    Ok(n)
}

/// Calls `f` with the name and path of every entry of `dir`.
fn for_each_entry(dir: &Path, mut f: impl FnMut(&std::ffi::OsStr, &Path)) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|source| Error::Io {
        what: format!("cannot list {}", dir.display()),
        source,
    })?;
    for entry in entries.flatten() {
        f(&entry.file_name(), &entry.path());
    }
    Ok(())
}

/// Moves the attempts of the earlier layout (`<data_dir>/attempts/<id>/`) into the current one.
fn migrate_legacy(data_dir: &Path) {
    let root = state::legacy::attempts_dir(data_dir);
    let Ok(entries) = std::fs::read_dir(&root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(id) = name.to_str().filter(|id| state::check_id(id).is_ok()) else {
            tracing::warn!(entry = ?name, "ignoring an entry that is not an attempt");
            continue;
        };
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let dir = AttemptDir::new(data_dir, id);
        match state::legacy::migrate(&entry.path(), &dir) {
            Ok(_) => tracing::debug!(attempt_id = id, "moved an attempt to the current layout"),
            Err(e) => {
                tracing::warn!(attempt_id = id, error = %e, "cannot move the attempt to the current layout; leaving it as it is")
            }
        }
    }
    // Gone once empty.
    let _ = std::fs::remove_dir(&root);
}

/// An attempt whose process ran under a launcher that died: stop what is left of it, report it
/// lost.
async fn recover(shared: Arc<Shared>, dir: AttemptDir, record: RunningRecord) {
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
        started_at_ms: Some(record.started_at_ms),
        finished_at_ms: ferry_event::now_ms(),
    };
    publish_report(&shared, &dir, report).await;
}
