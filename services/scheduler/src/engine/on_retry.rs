//! `job.retry`: re-queuing a failed or cancelled job's unfinished tasks.

use ferry_event::kind;
use ferry_event::payload::{JobStatus, TaskStatus};

use super::{Cx, task_attempts};
use crate::Result;
use crate::store::JobRow;

impl Cx<'_> {
    pub(super) async fn on_retry(&mut self, job_id: &str) -> Result<()> {
        let Some(job) = self.lock_job(job_id).await? else {
            tracing::warn!(job_id, "retry for an unknown job ignored");
            return Ok(());
        };
        if !matches!(job.state.as_str(), "failed" | "cancelled") {
            tracing::info!(job_id, state = %job.state, "retry ignored: only failed or cancelled jobs are retried");
            return Ok(());
        }
        if job.unfinished != 0 || job.total == 0 {
            return Ok(()); // rejected at planning: nothing to re-queue
        }
        let requeued = sqlx::query(
            "SELECT task_id, attempts FROM tasks WHERE job_id = $1 AND state IN ('failed', 'cancelled')",
        )
        .bind(job_id.to_string())
        .fetch_all(&mut *self.tx)
        .await?;
        sqlx::query(
            "UPDATE tasks SET state = 'waiting', failures = 0, lost = 0, attempt_id = NULL, error = NULL,
                    ready_at = NULL, lease_until = NULL, deadline = NULL, finished_at = NULL
             WHERE job_id = $1 AND state IN ('failed', 'cancelled')",
        )
        .bind(job_id.to_string())
        .execute(&mut *self.tx)
        .await?;
        // An upstream task is done when it succeeded and so did every subtask it submitted.
        sqlx::query(
            "UPDATE tasks SET deps_left = (
                 SELECT COUNT(*) FROM edges e JOIN tasks u ON u.job_id = e.job_id AND u.task_id = e.task_id
                 WHERE e.job_id = tasks.job_id AND e.dependent = tasks.task_id
                   AND (u.state <> 'succeeded' OR u.open_children > 0))
             WHERE job_id = $1 AND state = 'waiting'",
        )
        .bind(job_id.to_string())
        .execute(&mut *self.tx)
        .await?;
        let ready = sqlx::query(
            "UPDATE tasks SET state = 'ready', ready_at = $1 WHERE job_id = $2 AND state = 'waiting' AND deps_left = 0",
        )
        .bind(self.now)
        .bind(job_id.to_string())
        .execute(&mut *self.tx)
        .await?
        .rows_affected();
        // The counters are set outright: changes still pending would be added on top later.
        self.flush(job_id).await?;
        sqlx::query(
            "UPDATE jobs SET state = 'running', ending = NULL, reason = NULL, unfinished = $1, ready = $2,
                    updated_at = $3
             WHERE job_id = $4",
        )
        .bind(requeued.len() as i64)
        .bind(ready as i64)
        .bind(self.now)
        .bind(job_id.to_string())
        .execute(&mut *self.tx)
        .await?;
        self.changed_job(job_id);
        tracing::info!(job_id, tasks = requeued.len(), "job retried");
        let job = JobRow {
            state: "running".into(),
            ending: None,
            ..job
        };
        self.emit_job(
            kind::JOB_STARTED,
            &job,
            JobStatus::Running,
            Some("retried".into()),
        );
        let tasks = task_attempts(&requeued)?;
        self.emit_tasks(kind::TASKS_RETRYING, job_id, TaskStatus::Pending, &tasks, None);
        self.touched.insert(job_id.to_string());
        Ok(())
    }
}
