//! `task.started`: attempts moving to running, set-wise.

use std::collections::{HashMap, HashSet};

use ferry_event::payload::TaskStarted;
use sqlx::Row;

use super::Cx;
use crate::Result;
use ferry_runtime::db::{placeholders, sized};

/// An attempt moved to running by a start, before its task is.
struct Moved {
    job_id: String,
    task_id: String,
    attempt_id: String,
    cancel_requested: bool,
    started_at: i64,
}

impl Cx<'_> {
    /// Attempts that started: each moves to running if it was waiting to start, and its task
    /// with it if the attempt is still the task's current one. Two statements per chunk of
    /// starts, however many; no job row needed (on PostgreSQL [`super::apply`] took the job locks).
    pub(super) async fn on_started(&mut self, mut starts: Vec<TaskStarted>) -> Result<()> {
        const ROWS: usize = 100;
        // One start per attempt (two for one attempt carry distinct event ids).
        let mut seen = HashSet::with_capacity(starts.len());
        starts.retain(|p| seen.insert(p.attempt_id.clone()));
        for chunk in starts.chunks(ROWS) {
            let sql = format!(
                "WITH s (attempt_id, started_at) AS (VALUES {})
                 UPDATE attempts SET state = 'running', started_at = s.started_at
                 FROM s WHERE attempts.attempt_id = s.attempt_id AND attempts.state = 'dispatched'
                 RETURNING attempts.attempt_id, attempts.job_id, attempts.task_id, attempts.cancel_requested,
                           attempts.started_at",
                placeholders(self.dialect, chunk.len(), 2)
            );
            let mut q = sized(&sql, chunk.len());
            for p in chunk {
                q = q.bind(p.attempt_id.clone()).bind(p.started_at_ms);
            }
            let rows = q.fetch_all(&mut *self.tx).await?;
            if rows.len() < chunk.len() {
                tracing::debug!(
                    ignored = chunk.len() - rows.len(),
                    "starts of attempts not waiting to start ignored"
                );
            }
            let mut moved = Vec::with_capacity(rows.len());
            for r in &rows {
                moved.push(Moved {
                    job_id: r.try_get("job_id")?,
                    task_id: r.try_get("task_id")?,
                    attempt_id: r.try_get("attempt_id")?,
                    cancel_requested: r.try_get::<i64, _>("cancel_requested")? != 0,
                    started_at: r.try_get("started_at")?,
                });
            }
            if moved.is_empty() {
                continue;
            }
            // A cancelled attempt keeps the deadline its cancel set; otherwise the task's
            // timeout starts now.
            let sql = format!(
                "WITH s (job_id, task_id, attempt_id, started_at, cancelled, lease_until, timeout_from) AS (VALUES {})
                 UPDATE tasks SET state = 'running', started_at = s.started_at, lease_until = s.lease_until,
                        deadline = CASE WHEN s.cancelled = 1 THEN tasks.deadline ELSE tasks.timeout_ms + s.timeout_from END
                 FROM s WHERE tasks.job_id = s.job_id AND tasks.task_id = s.task_id
                   AND tasks.attempt_id = s.attempt_id AND tasks.state = 'dispatched'
                 RETURNING tasks.attempt_id, tasks.backend",
                placeholders(self.dialect, moved.len(), 7)
            );
            let mut q = sized(&sql, moved.len());
            for m in &moved {
                q = q
                    .bind(m.job_id.clone())
                    .bind(m.task_id.clone())
                    .bind(m.attempt_id.clone())
                    .bind(m.started_at)
                    .bind(i64::from(m.cancel_requested))
                    .bind(self.now + self.cfg.lease.as_millis() as i64)
                    .bind(self.now + self.cfg.grace.as_millis() as i64);
            }
            let mut running: HashMap<String, String> = HashMap::with_capacity(moved.len());
            for r in q.fetch_all(&mut *self.tx).await? {
                running.insert(r.try_get("attempt_id")?, r.try_get("backend")?);
            }
            for m in moved {
                match running.get(&m.attempt_id) {
                    Some(backend) if m.cancel_requested => {
                        // The cancel may have reached launchers before this attempt's did (or
                        // one that restarted since): ask again now that it is known to run.
                        let backend = backend.clone();
                        self.emit_cancel(&m.job_id, &m.task_id, &m.attempt_id, &backend, "cancelled");
                    }
                    Some(_) => {
                        tracing::debug!(job_id = %m.job_id, task_id = %m.task_id, attempt_id = %m.attempt_id,
                            "attempt running");
                    }
                    None => {
                        // An attempt the scheduler already gave up on: make sure it does not run
                        // beside its successor.
                        let backend = self
                            .task(&m.job_id, &m.task_id)
                            .await?
                            .map(|t| t.backend)
                            .unwrap_or_else(|| "local".into());
                        self.emit_cancel(
                            &m.job_id,
                            &m.task_id,
                            &m.attempt_id,
                            &backend,
                            "superseded attempt",
                        );
                    }
                }
            }
        }
        Ok(())
    }
}
