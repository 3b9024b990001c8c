//! `job.cancel` and fail-fast: ending a job.

use ferry_event::kind;
use ferry_event::payload::{JobStatus, TaskStatus};
use sqlx::Row;

use super::{Cx, task_attempts};
use crate::Result;

impl Cx<'_> {
    /// Ends a job as failed or cancelled: pending tasks are cancelled at once (reported together
    /// in `tasks.cancelled` events, a few for the biggest job), running attempts are asked to
    /// stop; the job reaches its final state when the last of them reports.
    pub(super) async fn begin_ending(&mut self, job_id: &str, ending: JobStatus, reason: &str) -> Result<()> {
        let Some(job) = self.lock_job(job_id).await? else {
            if ending == JobStatus::Cancelled {
                return self.cancel_early(job_id, reason).await;
            }
            tracing::warn!(job_id, "ending an unknown job ignored");
            return Ok(());
        };
        if job.state != "running" || job.ending.is_some() {
            tracing::debug!(job_id, state = %job.state, "job already ending or finished");
            return Ok(());
        }
        tracing::info!(job_id, ending = ending.as_str(), reason, "job ending");
        self.flush(job_id).await?;
        sqlx::query("UPDATE jobs SET ending = $1, reason = $2, updated_at = $3 WHERE job_id = $4")
            .bind(ending.as_str())
            .bind(reason.to_string())
            .bind(self.now)
            .bind(job_id.to_string())
            .execute(&mut *self.tx)
            .await?;
        self.changed_job(job_id);
        let pending = sqlx::query(
            "SELECT task_id, attempts FROM tasks WHERE job_id = $1 AND state IN ('waiting', 'ready', 'retrying')",
        )
        .bind(job_id.to_string())
        .fetch_all(&mut *self.tx)
        .await?;
        if !pending.is_empty() {
            sqlx::query(
                "UPDATE tasks SET state = 'cancelled', finished_at = $1, ready_at = NULL, error = $2
                 WHERE job_id = $3 AND state IN ('waiting', 'ready', 'retrying')",
            )
            .bind(self.now)
            .bind(reason.to_string())
            .bind(job_id.to_string())
            .execute(&mut *self.tx)
            .await?;
            sqlx::query("UPDATE jobs SET unfinished = unfinished - $1, ready = 0 WHERE job_id = $2")
                .bind(pending.len() as i64)
                .bind(job_id.to_string())
                .execute(&mut *self.tx)
                .await?;
            let tasks = task_attempts(&pending)?;
            self.emit_tasks(
                kind::TASKS_CANCELLED,
                job_id,
                TaskStatus::Cancelled,
                &tasks,
                Some(reason),
            );
        }
        let active = sqlx::query(
            "SELECT task_id, attempt_id, backend FROM tasks
             WHERE job_id = $1 AND state IN ('dispatched', 'running')",
        )
        .bind(job_id.to_string())
        .fetch_all(&mut *self.tx)
        .await?;
        for row in &active {
            let task_id: String = row.try_get("task_id")?;
            let attempt_id: String = row.try_get("attempt_id")?;
            let backend: String = row.try_get("backend")?;
            self.request_cancel(job_id, &task_id, &attempt_id, &backend, reason)
                .await?;
        }
        self.touched.insert(job_id.to_string());
        Ok(())
    }

    /// A cancel of a job not planned yet: kept, so that the job ends cancelled as soon as its
    /// plan arrives ([`Cx::take_early_cancel`]) instead of running as if never cancelled.
    async fn cancel_early(&mut self, job_id: &str, reason: &str) -> Result<()> {
        tracing::info!(
            job_id,
            reason,
            "cancel of a job not planned yet; it ends when planned"
        );
        sqlx::query(
            "INSERT INTO early_cancels (job_id, reason, at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        )
        .bind(job_id.to_string())
        .bind(reason.to_string())
        .bind(self.now)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// The reason of a cancel that came before the job's plan, taken (the row goes).
    pub(super) async fn take_early_cancel(&mut self, job_id: &str) -> Result<Option<String>> {
        Ok(
            sqlx::query_scalar("DELETE FROM early_cancels WHERE job_id = $1 RETURNING reason")
                .bind(job_id.to_string())
                .fetch_optional(&mut *self.tx)
                .await?,
        )
    }

    /// Asks the attempt's launcher to stop it; if it does not confirm within the grace period the
    /// attempt is given up on (see [`Cx::timers`]).
    async fn request_cancel(
        &mut self,
        job_id: &str,
        task_id: &str,
        attempt_id: &str,
        backend: &str,
        reason: &str,
    ) -> Result<()> {
        sqlx::query("UPDATE attempts SET cancel_requested = 1 WHERE attempt_id = $1")
            .bind(attempt_id.to_string())
            .execute(&mut *self.tx)
            .await?;
        sqlx::query("UPDATE tasks SET deadline = $1 WHERE job_id = $2 AND task_id = $3")
            .bind(self.now + self.cfg.grace.as_millis() as i64)
            .bind(job_id.to_string())
            .bind(task_id.to_string())
            .execute(&mut *self.tx)
            .await?;
        self.emit_cancel(job_id, task_id, attempt_id, backend, reason);
        Ok(())
    }
}
