//! Timers: retries coming due, lapsed leases, missed deadlines.

use ferry_event::payload::{Outcome, TaskFinished};
use sqlx::Row;

use super::Cx;
use crate::Result;

impl Cx<'_> {
    pub(super) async fn timers(&mut self) -> Result<()> {
        // Retries that are due become ready.
        let mut due = sqlx::query(
            "SELECT job_id, task_id FROM tasks WHERE state = 'retrying' AND ready_at <= $1 LIMIT 1000",
        )
        .bind(self.now)
        .fetch_all(&mut *self.tx)
        .await?
        .into_iter()
        .map(|r| {
            Ok((
                r.try_get::<String, _>("job_id")?,
                r.try_get::<String, _>("task_id")?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
        due.sort();
        for (job_id, task_id) in due {
            self.lock_job_if_shared(&job_id).await?;
            let promoted = sqlx::query(
                "UPDATE tasks SET state = 'ready' WHERE job_id = $1 AND task_id = $2 AND state = 'retrying'",
            )
            .bind(job_id.clone())
            .bind(task_id)
            .execute(&mut *self.tx)
            .await?
            .rows_affected();
            self.add_ready(&job_id, promoted as i64);
        }
        // Lapsed leases and missed deadlines end the attempt.
        let mut rows = sqlx::query(
            "SELECT t.job_id, t.task_id, t.attempt_id, t.backend, t.attempts, t.lease_until, t.deadline,
                    a.cancel_requested
             FROM tasks t JOIN attempts a ON a.attempt_id = t.attempt_id
             WHERE t.state IN ('dispatched', 'running')
               AND ((t.lease_until IS NOT NULL AND t.lease_until < $1) OR (t.deadline IS NOT NULL AND t.deadline < $1))
             LIMIT 1000",
        )
        .bind(self.now)
        .fetch_all(&mut *self.tx)
        .await?;
        rows.sort_by_key(|r| r.try_get::<String, _>("job_id").unwrap_or_default());
        for row in rows {
            let job_id: String = row.try_get("job_id")?;
            let task_id: String = row.try_get("task_id")?;
            let attempt_id: String = row.try_get("attempt_id")?;
            let backend: String = row.try_get("backend")?;
            let attempts: i64 = row.try_get("attempts")?;
            let cancel_requested: i64 = row.try_get("cancel_requested")?;
            let lease_until: Option<i64> = row.try_get("lease_until")?;
            // Another instance may have settled it meanwhile.
            self.lock_job_if_shared(&job_id).await?;
            let settled = self
                .attempt(&attempt_id)
                .await?
                .is_none_or(|a| !matches!(a.state.as_str(), "dispatched" | "running"));
            if settled {
                continue;
            }
            let (outcome, error) = if cancel_requested != 0 {
                (
                    Outcome::Cancelled,
                    "the launcher did not confirm the cancellation in time".to_string(),
                )
            } else if lease_until.is_some_and(|l| l < self.now) {
                self.lapsed.push(backend.clone());
                (
                    Outcome::Lost,
                    format!(
                        "no heartbeat from the launcher for {}s: attempt presumed lost",
                        self.cfg.lease.as_secs()
                    ),
                )
            } else {
                (
                    Outcome::TimedOut,
                    "timed out and the launcher did not report it".to_string(),
                )
            };
            tracing::warn!(%job_id, %task_id, %attempt_id, outcome = outcome.as_str(), %error, "ending attempt by timer");
            self.emit_cancel(&job_id, &task_id, &attempt_id, &backend, &error);
            let report = TaskFinished::unreported(
                job_id,
                task_id,
                attempt_id,
                attempts as u32,
                outcome,
                error,
                self.now,
            );
            self.on_finished(report, true).await?;
        }
        Ok(())
    }
}
