//! Subtasks: a successful attempt's submission joins its job, and a task's dependents wait for
//! its whole subtree.
//!
//! A task that submitted subtasks keeps a count of them not done yet (`open_children`); a
//! task is *done* when it succeeded and that count is 0. A done subtask lowers its parent's
//! count by one, and a parent whose count reaches 0 is done in turn, up the tree. Only a done
//! task releases its dependents. The work is one statement per level of nesting per batch,
//! whatever the job's size, and adding N subtasks writes N task rows, their edges and the job's
//! counters: the rest of the job is not rewritten.
//!
//! Crash safety: the parent's success, its subtasks and the counters are written in the
//! transaction that applies the report (and records its event id), so a scheduler killed at
//! any point has applied all of it or none; a redelivered report finds its attempt settled and
//! adds nothing. A failed attempt's submission is never sent, so it never appears.

use std::collections::HashMap;

use ferry_event::kind;
use ferry_event::payload::{Outcome, PlannedTask, TaskAttempts, TaskFinished, TaskStatus};
use sqlx::Row;

use super::{CHUNK, Cx, task_state};
use crate::Result;
use crate::store::JobRow;
use ferry_runtime::db::{placeholders, sized};

/// The longest task id a launcher accepts (it names directories and compute).
const MAX_TASK_ID: usize = 200;

/// Problems listed in full in the error of an invalid submission; more are counted.
const PROBLEMS_SHOWN: usize = 10;

impl Cx<'_> {
    /// A successful attempt that submitted subtasks: checked against the flow rules and the
    /// limits; if they pass, the task succeeds and they join the job, else the attempt fails
    /// with the reason (the task's fault: it counts against its retries).
    pub(super) async fn on_submitted(&mut self, mut p: TaskFinished) -> Result<()> {
        let Some(job) = self.lock_job(&p.job_id).await? else {
            tracing::warn!(job_id = %p.job_id, "report for an unknown job ignored");
            return Ok(());
        };
        // Only the task's current, open attempt adds anything; any other report is settled as
        // a plain success, which ignores it or records its attempt alone.
        let current = match self.attempt(&p.attempt_id).await? {
            Some(a) if a.job_id == p.job_id && matches!(a.state.as_str(), "dispatched" | "running") => {
                self.task(&a.job_id, &a.task_id).await?.filter(|t| {
                    t.attempt_id.as_deref() == Some(p.attempt_id.as_str())
                        && matches!(t.state.as_str(), "dispatched" | "running")
                })
            }
            _ => None,
        };
        let Some(task) = current else {
            p.subtasks.clear();
            return self.on_succeeded_plain(vec![p]).await;
        };
        let planned = match self.check_submission(&job, &task.task_id, &p) {
            Ok(planned) => planned,
            Err(reason) => {
                tracing::info!(job_id = %p.job_id, task_id = %task.task_id, attempt_id = %p.attempt_id,
                    %reason, "submission refused; the attempt fails");
                p.outcome = Outcome::Failed;
                p.error = Some(reason);
                p.subtasks.clear();
                return self.on_unsuccessful(p, false).await;
            }
        };
        let n = planned.len() as i64;
        sqlx::query(
            "UPDATE attempts SET state = 'succeeded', finished_at = $1, exit_code = $2, error = $3
             WHERE attempt_id = $4 AND job_id = $5 AND state IN ('dispatched', 'running')",
        )
        .bind(p.finished_at_ms)
        .bind(p.exit_code.map(i64::from))
        .bind(p.error.clone())
        .bind(p.attempt_id.clone())
        .bind(p.job_id.clone())
        .execute(&mut *self.tx)
        .await?;
        sqlx::query(
            "UPDATE tasks SET state = 'succeeded', outputs = $1, output_files = $2, finished_at = $3,
                    lease_until = NULL, deadline = NULL, error = NULL, open_children = $4
             WHERE job_id = $5 AND task_id = $6",
        )
        .bind(serde_json::to_string(&p.outputs).unwrap_or_else(|_| "{}".into()))
        .bind(serde_json::to_string(&p.output_files).unwrap_or_else(|_| "[]".into()))
        .bind(p.finished_at_ms)
        .bind(n)
        .bind(p.job_id.clone())
        .bind(task.task_id.clone())
        .execute(&mut *self.tx)
        .await?;
        // In a job being failed or cancelled the subtasks join cancelled: a retry of the job
        // runs them, and the parent's dependents still wait for them.
        let ending = job.ending.is_some().then(|| {
            job.reason
                .clone()
                .unwrap_or_else(|| "the job is ending".to_string())
        });
        let ids: Vec<String> = planned.iter().map(|t| t.id.clone()).collect();
        let backends: Vec<String> = planned.iter().map(|t| t.runner.route().into_owned()).collect();
        let ready = self
            .insert_task_rows(
                &p.job_id,
                Some(&task.task_id),
                job.total,
                ending.as_deref(),
                planned.into_iter().map(Ok),
            )
            .await?;
        self.flush(&p.job_id).await?;
        sqlx::query("UPDATE jobs SET total = total + $1, updated_at = $2 WHERE job_id = $3")
            .bind(n)
            .bind(self.now)
            .bind(p.job_id.clone())
            .execute(&mut *self.tx)
            .await?;
        self.changed_job(&p.job_id);
        let joined = if ending.is_some() { 0 } else { n };
        self.count(&p.job_id, |d| {
            d.active -= 1;
            d.unfinished += joined - 1;
        });
        self.add_ready(&p.job_id, ready);
        self.touched.insert(p.job_id.clone());
        tracing::info!(job_id = %p.job_id, task_id = %task.task_id, attempt_id = %p.attempt_id,
            subtasks = n, "attempt succeeded; its subtasks joined the job");
        let mut s = task_state(
            &p.job_id,
            &task.task_id,
            TaskStatus::Succeeded,
            task.attempts,
            Some(p.attempt_id.clone()),
            None,
        );
        s.outputs = p.outputs;
        s.output_files = p.output_files;
        s.started_at_ms = task.started_at;
        s.finished_at_ms = Some(p.finished_at_ms);
        s.subtasks = ids.clone();
        s.subtask_backends = backends;
        self.emit_task(kind::TASK_SUCCEEDED, s);
        if let Some(reason) = ending {
            let cancelled: Vec<TaskAttempts> = ids
                .into_iter()
                .map(|task_id| TaskAttempts { task_id, attempts: 0 })
                .collect();
            self.emit_tasks(
                kind::TASKS_CANCELLED,
                &p.job_id,
                TaskStatus::Cancelled,
                &cancelled,
                Some(&reason),
            );
        }
        Ok(())
    }

    /// The subtasks of `p`, submitted by `task_id`, planned as tasks of the job; or why they
    /// are refused: over a limit, or not valid as a flow's tasks (every problem, located).
    fn check_submission(
        &self,
        job: &JobRow,
        task_id: &str,
        p: &TaskFinished,
    ) -> std::result::Result<Vec<PlannedTask>, String> {
        let cfg = self.cfg;
        let n = p.subtasks.len();
        if n > cfg.max_subtasks_per_attempt {
            return Err(format!(
                "subtasks: the attempt submitted {n} subtasks; at most {} are accepted from one attempt \
                 (the scheduler's --max-subtasks-per-attempt): submit fewer, or let subtasks submit the rest",
                cfg.max_subtasks_per_attempt
            ));
        }
        let depth = ferry_flow::subtask_depth(task_id) + 1;
        if depth > cfg.max_subtask_depth {
            return Err(format!(
                "subtasks: task {task_id} is {} deep in subtasks, and subtasks may nest at most {} deep \
                 (the scheduler's --max-subtask-depth): submit them from a task higher up",
                depth - 1,
                cfg.max_subtask_depth
            ));
        }
        let total = usize::try_from(job.total).unwrap_or(0) + n;
        if total > cfg.max_tasks_per_job {
            return Err(format!(
                "subtasks: the {n} subtasks would grow job {} to {total} tasks; a job may have at most {} \
                 (the scheduler's --max-tasks-per-job)",
                job.job_id, cfg.max_tasks_per_job
            ));
        }
        let planned = ferry_flow::plan_subtasks(task_id, &p.subtasks).map_err(|problems| {
            let mut lines: Vec<String> = problems
                .iter()
                .take(PROBLEMS_SHOWN)
                .map(ToString::to_string)
                .collect();
            if problems.len() > PROBLEMS_SHOWN {
                lines.push(format!("and {} more", problems.len() - PROBLEMS_SHOWN));
            }
            format!("subtasks: the submission is not valid: {}", lines.join("; "))
        })?;
        if let Some((i, t)) = planned.iter().enumerate().find(|(_, t)| t.id.len() > MAX_TASK_ID) {
            return Err(format!(
                "subtasks[{i}].id: the subtask's id in the job, {}…, is {} bytes long; at most {MAX_TASK_ID} \
                 are accepted: use shorter ids or nest less deeply",
                &t.id[..40],
                t.id.len()
            ));
        }
        Ok(planned)
    }

    /// Subtasks done (succeeded, with all they submitted done too), by job and parent: each
    /// closes one of its parent's open subtasks. A parent left with none is done in turn: its
    /// dependents are released (in jobs not ending) and it closes one of its own parent's. One
    /// statement per level of nesting.
    pub(super) async fn close_parents(&mut self, mut done: Vec<(String, String)>) -> Result<()> {
        while !done.is_empty() {
            let mut counts: HashMap<(String, String), i64> = HashMap::new();
            for key in done.drain(..) {
                *counts.entry(key).or_default() += 1;
            }
            let counts: Vec<((String, String), i64)> = counts.into_iter().collect();
            let mut closed: Vec<(String, String, Option<String>)> = Vec::new();
            for chunk in counts.chunks(CHUNK) {
                let sql = format!(
                    "WITH c (job_id, task_id, n) AS (VALUES {})
                     UPDATE tasks SET open_children = open_children - c.n
                     FROM c WHERE tasks.job_id = c.job_id AND tasks.task_id = c.task_id
                     RETURNING tasks.job_id, tasks.task_id, tasks.open_children, tasks.parent",
                    placeholders(self.dialect, chunk.len(), 3)
                );
                let mut q = sized(&sql, chunk.len());
                for ((job_id, task_id), n) in chunk {
                    q = q.bind(job_id.clone()).bind(task_id.clone()).bind(*n);
                }
                for r in q.fetch_all(&mut *self.tx).await? {
                    if r.try_get::<i64, _>("open_children")? == 0 {
                        closed.push((r.try_get("job_id")?, r.try_get("task_id")?, r.try_get("parent")?));
                    }
                }
            }
            let mut release: Vec<(&str, &str)> = Vec::with_capacity(closed.len());
            for (job_id, task_id, parent) in &closed {
                let ending = self.lock_job(job_id).await?.is_none_or(|j| j.ending.is_some());
                if !ending {
                    release.push((job_id.as_str(), task_id.as_str()));
                }
                if let Some(parent) = parent {
                    done.push((job_id.clone(), parent.clone()));
                }
            }
            self.release_all(&release).await?;
        }
        Ok(())
    }
}
