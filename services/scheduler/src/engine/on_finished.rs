//! `task.finished`: settling an attempt, then succeeding, retrying or failing its task.

use std::collections::{HashMap, HashSet};

use ferry_event::kind;
use ferry_event::payload::{JobStatus, Outcome, TaskFinished, TaskStatus};
use sqlx::Row;

use super::{Cx, task_state};
use crate::Result;
use ferry_runtime::db::{placeholders, sized};

/// An attempt just settled by a report.
struct Settled {
    job_id: String,
    task_id: String,
    cancel_requested: bool,
}

impl Cx<'_> {
    /// An attempt ended (reported by its launcher, or decided by a timer when `synthetic`).
    pub(super) async fn on_finished(&mut self, p: TaskFinished, synthetic: bool) -> Result<()> {
        if p.outcome == Outcome::Succeeded {
            return self.on_succeeded(vec![p]).await;
        }
        self.on_unsuccessful(p, synthetic).await
    }

    /// An attempt that did not succeed: its task is retried, or fails, or is cancelled with
    /// its ending job.
    pub(super) async fn on_unsuccessful(&mut self, p: TaskFinished, synthetic: bool) -> Result<()> {
        let Some(job) = self.lock_job(&p.job_id).await? else {
            tracing::warn!(job_id = %p.job_id, "report for an unknown job ignored");
            return Ok(());
        };
        // Settles the attempt if it was still open; an unknown, settled or other job's attempt
        // (a duplicate or a late report) changes nothing.
        let Some(row) = sqlx::query(
            "UPDATE attempts SET state = $1, finished_at = $2, exit_code = $3, error = $4
             WHERE attempt_id = $5 AND job_id = $6 AND state IN ('dispatched', 'running')
             RETURNING task_id, cancel_requested",
        )
        .bind(p.outcome.as_str())
        .bind(p.finished_at_ms)
        .bind(p.exit_code.map(i64::from))
        .bind(p.error.clone())
        .bind(p.attempt_id.clone())
        .bind(p.job_id.clone())
        .fetch_optional(&mut *self.tx)
        .await?
        else {
            tracing::debug!(attempt_id = %p.attempt_id, "report of an attempt not open ignored");
            return Ok(());
        };
        let a = Settled {
            job_id: p.job_id.clone(),
            task_id: row.try_get("task_id")?,
            cancel_requested: row.try_get::<i64, _>("cancel_requested")? != 0,
        };
        self.count(&p.job_id, |d| d.active -= 1);
        self.touched.insert(p.job_id.clone());
        let Some(task) = self.task(&a.job_id, &a.task_id).await? else {
            return Ok(());
        };
        if task.attempt_id.as_deref() != Some(p.attempt_id.as_str())
            || !matches!(task.state.as_str(), "dispatched" | "running")
        {
            return Ok(()); // a superseded attempt
        }
        tracing::debug!(job_id = %p.job_id, task_id = %a.task_id, attempt_id = %p.attempt_id,
            outcome = p.outcome.as_str(), synthetic, "attempt finished");
        let ending = job.ending.as_deref().and_then(JobStatus::parse);
        let error = p.error.clone().unwrap_or_else(|| p.outcome.as_str().to_string());
        match p.outcome {
            Outcome::Succeeded => unreachable!("successes are settled by on_succeeded"),
            _ if a.cancel_requested || ending.is_some() => {
                let reason = job.reason.clone().unwrap_or(error);
                self.task_terminal(&task, TaskStatus::Cancelled, Some(reason), p.finished_at_ms)
                    .await
            }
            Outcome::Lost if task.lost < i64::from(self.cfg.max_lost) => {
                sqlx::query(
                    "UPDATE tasks SET state = 'ready', lost = lost + 1, ready_at = $1, lease_until = NULL,
                            deadline = NULL, error = $2 WHERE job_id = $3 AND task_id = $4",
                )
                .bind(self.now)
                .bind(error.clone())
                .bind(task.job_id.clone())
                .bind(task.task_id.clone())
                .execute(&mut *self.tx)
                .await?;
                self.add_ready(&task.job_id, 1);
                let mut s = task_state(
                    &task.job_id,
                    &task.task_id,
                    TaskStatus::Retrying,
                    task.attempts,
                    Some(p.attempt_id.clone()),
                    Some(error),
                );
                s.retry_at_ms = Some(self.now);
                self.emit_task(kind::TASK_RETRYING, s);
                Ok(())
            }
            _ => {
                let failures = task.failures + 1;
                if p.outcome != Outcome::Lost && failures < task.retry_attempts {
                    let spec = task.spec()?;
                    let at = self.now + spec.retry.delay_ms(failures as u32 + 1) as i64;
                    sqlx::query(
                        "UPDATE tasks SET state = 'retrying', failures = $1, ready_at = $2, lease_until = NULL,
                                deadline = NULL, error = $3 WHERE job_id = $4 AND task_id = $5",
                    )
                    .bind(failures)
                    .bind(at)
                    .bind(error.clone())
                    .bind(task.job_id.clone())
                    .bind(task.task_id.clone())
                    .execute(&mut *self.tx)
                    .await?;
                    tracing::info!(retry_at_ms = at, failures, "attempt failed; retrying");
                    let mut s = task_state(
                        &task.job_id,
                        &task.task_id,
                        TaskStatus::Retrying,
                        task.attempts,
                        Some(p.attempt_id.clone()),
                        Some(error),
                    );
                    s.retry_at_ms = Some(at);
                    self.emit_task(kind::TASK_RETRYING, s);
                    Ok(())
                } else {
                    sqlx::query("UPDATE tasks SET failures = $1 WHERE job_id = $2 AND task_id = $3")
                        .bind(failures)
                        .bind(task.job_id.clone())
                        .bind(task.task_id.clone())
                        .execute(&mut *self.tx)
                        .await?;
                    let msg = format!("task {} failed: {error}", task.task_id);
                    self.task_terminal(&task, TaskStatus::Failed, Some(error), p.finished_at_ms)
                        .await?;
                    self.begin_ending(&task.job_id, JobStatus::Failed, &msg).await
                }
            }
        }
    }

    /// Successful attempts: those without subtasks settled together, then each that submitted
    /// subtasks on its own ([`Cx::on_submitted`]: it grows its job).
    pub(super) async fn on_succeeded(&mut self, reports: Vec<TaskFinished>) -> Result<()> {
        let (submitted, reports): (Vec<_>, Vec<_>) =
            reports.into_iter().partition(|p| !p.subtasks.is_empty());
        self.on_succeeded_plain(reports).await?;
        for p in submitted {
            self.on_submitted(p).await?;
        }
        Ok(())
    }

    /// Successful attempts without subtasks, settled together: their attempts, then their
    /// tasks where the attempt is still the task's current one, then the dependents of those
    /// tasks (in jobs not ending), and for subtasks their parents ([`Cx::close_parents`]).
    /// Three statements per chunk of reports, however many, and one more per level of nesting
    /// for subtasks.
    pub(super) async fn on_succeeded_plain(&mut self, mut reports: Vec<TaskFinished>) -> Result<()> {
        const ROWS: usize = 100;
        if reports.is_empty() {
            return Ok(());
        }
        // Reports of unknown jobs change nothing.
        let mut jobs: Vec<String> = reports.iter().map(|p| p.job_id.clone()).collect();
        jobs.sort_unstable();
        jobs.dedup();
        let mut ending: HashMap<String, bool> = HashMap::with_capacity(jobs.len());
        for job_id in jobs {
            match self.lock_job(&job_id).await? {
                Some(job) => {
                    ending.insert(job_id, job.ending.is_some());
                }
                None => tracing::warn!(%job_id, "report for an unknown job ignored"),
            }
        }
        reports.retain(|p| ending.contains_key(&p.job_id));
        let mut seen = HashSet::with_capacity(reports.len());
        reports.retain(|p| seen.insert(p.attempt_id.clone()));
        for chunk in reports.chunks(ROWS) {
            // The attempts still open.
            let sql = format!(
                "WITH f (attempt_id, job_id, finished_at, exit_code, error) AS (VALUES {})
                 UPDATE attempts SET state = 'succeeded', finished_at = f.finished_at,
                        exit_code = f.exit_code, error = f.error
                 FROM f WHERE attempts.attempt_id = f.attempt_id AND attempts.job_id = f.job_id
                   AND attempts.state IN ('dispatched', 'running')
                 RETURNING attempts.attempt_id, attempts.task_id",
                placeholders(self.dialect, chunk.len(), 5)
            );
            let mut q = sized(&sql, chunk.len());
            for p in chunk {
                q = q
                    .bind(p.attempt_id.clone())
                    .bind(p.job_id.clone())
                    .bind(p.finished_at_ms)
                    .bind(p.exit_code.map(i64::from))
                    .bind(p.error.clone());
            }
            let mut settled: HashMap<String, String> = HashMap::with_capacity(chunk.len());
            for r in q.fetch_all(&mut *self.tx).await? {
                settled.insert(r.try_get("attempt_id")?, r.try_get("task_id")?);
            }
            let open: Vec<(&TaskFinished, String)> = chunk
                .iter()
                .filter_map(|p| settled.remove(&p.attempt_id).map(|task_id| (p, task_id)))
                .collect();
            if open.len() < chunk.len() {
                tracing::debug!(
                    ignored = chunk.len() - open.len(),
                    "reports of attempts not open ignored"
                );
            }
            if open.is_empty() {
                continue;
            }
            for (p, _) in &open {
                self.count(&p.job_id, |d| d.active -= 1);
                self.touched.insert(p.job_id.clone());
            }
            // Their tasks, unless a newer attempt superseded them.
            let sql = format!(
                "WITH f (job_id, task_id, attempt_id, outputs, output_files, finished_at) AS (VALUES {})
                 UPDATE tasks SET state = 'succeeded', outputs = f.outputs, output_files = f.output_files,
                        finished_at = f.finished_at, lease_until = NULL, deadline = NULL, error = NULL
                 FROM f WHERE tasks.job_id = f.job_id AND tasks.task_id = f.task_id
                   AND tasks.attempt_id = f.attempt_id AND tasks.state IN ('dispatched', 'running')
                 RETURNING tasks.attempt_id, tasks.attempts, tasks.started_at, tasks.parent",
                placeholders(self.dialect, open.len(), 6)
            );
            let mut q = sized(&sql, open.len());
            for (p, task_id) in &open {
                q = q
                    .bind(p.job_id.clone())
                    .bind(task_id.clone())
                    .bind(p.attempt_id.clone())
                    .bind(serde_json::to_string(&p.outputs).unwrap_or_else(|_| "{}".into()))
                    .bind(serde_json::to_string(&p.output_files).unwrap_or_else(|_| "[]".into()))
                    .bind(p.finished_at_ms);
            }
            let mut succeeded: HashMap<String, (i64, Option<i64>, Option<String>)> =
                HashMap::with_capacity(open.len());
            for r in q.fetch_all(&mut *self.tx).await? {
                succeeded.insert(
                    r.try_get("attempt_id")?,
                    (
                        r.try_get("attempts")?,
                        r.try_get("started_at")?,
                        r.try_get("parent")?,
                    ),
                );
            }
            let mut release: Vec<(&str, &str)> = Vec::with_capacity(succeeded.len());
            let mut parents: Vec<(String, String)> = Vec::new();
            for (p, task_id) in &open {
                let Some((attempts, started_at, parent)) = succeeded.get(&p.attempt_id) else {
                    continue; // a superseded attempt
                };
                let (attempts, started_at) = (*attempts, *started_at);
                if let Some(parent) = parent {
                    parents.push((p.job_id.clone(), parent.clone()));
                }
                tracing::debug!(job_id = %p.job_id, %task_id, attempt_id = %p.attempt_id,
                    outcome = p.outcome.as_str(), "attempt finished");
                self.count(&p.job_id, |d| d.unfinished -= 1);
                let mut s = task_state(
                    &p.job_id,
                    task_id,
                    TaskStatus::Succeeded,
                    attempts,
                    Some(p.attempt_id.clone()),
                    None,
                );
                s.outputs = p.outputs.clone();
                s.output_files = p.output_files.clone();
                s.started_at_ms = started_at;
                s.finished_at_ms = Some(p.finished_at_ms);
                self.emit_task(kind::TASK_SUCCEEDED, s);
                // Succeeds even when the job is ending; only then are its dependents left
                // waiting.
                if ending.get(&p.job_id) == Some(&false) {
                    release.push((&p.job_id, task_id));
                }
            }
            self.release_all(&release).await?;
            self.close_parents(parents).await?;
        }
        Ok(())
    }

    /// One dependency of each dependent of these tasks has succeeded per task: dependents
    /// left with none become ready. One statement (`SET` expressions read the row as it was).
    pub(super) async fn release_all(&mut self, done: &[(&str, &str)]) -> Result<()> {
        if done.is_empty() {
            return Ok(());
        }
        let sql = format!(
            "WITH done (job_id, task_id, at) AS (VALUES {}),
                  c AS (SELECT e.job_id, e.dependent, COUNT(*) AS n, MAX(done.at) AS at
                        FROM edges e JOIN done ON e.job_id = done.job_id AND e.task_id = done.task_id
                        GROUP BY e.job_id, e.dependent)
             UPDATE tasks SET deps_left = deps_left - c.n,
                    state = CASE WHEN state = 'waiting' AND deps_left = c.n THEN 'ready' ELSE state END,
                    ready_at = CASE WHEN state = 'waiting' AND deps_left = c.n THEN c.at ELSE ready_at END
             FROM c WHERE tasks.job_id = c.job_id AND tasks.task_id = c.dependent
             RETURNING tasks.job_id, tasks.state, tasks.deps_left",
            placeholders(self.dialect, done.len(), 3)
        );
        let mut q = sized(&sql, done.len());
        for (job_id, task_id) in done {
            q = q
                .bind(job_id.to_string())
                .bind(task_id.to_string())
                .bind(self.now);
        }
        let mut released: HashMap<String, i64> = HashMap::new();
        for r in q.fetch_all(&mut *self.tx).await? {
            // Ready with no dependency left now means ready from now: a task ready before
            // had none left already, and is below zero now.
            if r.try_get::<String, _>("state")? == "ready" && r.try_get::<i64, _>("deps_left")? == 0 {
                *released.entry(r.try_get("job_id")?).or_default() += 1;
            }
        }
        for (job_id, n) in released {
            self.add_ready(&job_id, n);
        }
        Ok(())
    }
}
