//! Which backends a launcher serves: `launcher.presence`, `task.accepted`, and tasks whose
//! backend no launcher serves (but agent tasks: they wait for an agent).

use std::time::Duration;

use ferry_event::payload::{JobStatus, LauncherPresence, TaskAccepted, TaskStatus};
use sqlx::Row;

use super::Cx;
use crate::{PRESENCE_GONE, Result};

impl Cx<'_> {
    /// A launcher announced itself (or its leaving): recorded with the time it was heard, so
    /// that launchers' clocks do not matter.
    /// An agent serves several backends (one per task version): a row for each.
    pub(super) async fn on_presence(&mut self, p: LauncherPresence) -> Result<()> {
        for backend in p.served() {
            sqlx::query(
                "INSERT INTO launchers (backend, instance, capacity, running, seen_at, leaving)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (backend, instance) DO UPDATE SET capacity = excluded.capacity,
                    running = excluded.running, seen_at = excluded.seen_at, leaving = excluded.leaving",
            )
            .bind(backend)
            .bind(p.instance.clone())
            .bind(i64::from(p.capacity))
            .bind(i64::from(p.running))
            .bind(self.now)
            .bind(i64::from(p.leaving))
            .execute(&mut *self.tx)
            .await?;
        }
        Ok(())
    }

    /// The attempt's compute exists and may wait on its platform: it holds a lease from now
    /// (renewed by heartbeats); its timeout starts when it starts. An attempt the scheduler
    /// gave up on meanwhile is cancelled, so that it does not run beside its successor.
    pub(super) async fn on_accepted(&mut self, p: TaskAccepted) -> Result<()> {
        let Some(attempt) = self.attempt(&p.attempt_id).await? else {
            tracing::debug!(attempt_id = %p.attempt_id, "acceptance of an unknown attempt ignored");
            return Ok(());
        };
        let Some(task) = self.task(&p.job_id, &p.task_id).await? else {
            return Ok(());
        };
        let current = task.attempt_id.as_deref() == Some(p.attempt_id.as_str());
        if !current || !matches!(attempt.state.as_str(), "dispatched" | "running") {
            self.emit_cancel(
                &p.job_id,
                &p.task_id,
                &p.attempt_id,
                &task.backend,
                "superseded attempt",
            );
            return Ok(());
        }
        sqlx::query(
            "UPDATE tasks SET lease_until = $1
             WHERE job_id = $2 AND task_id = $3 AND attempt_id = $4 AND state = 'dispatched'",
        )
        .bind(self.now + self.cfg.lease.as_millis() as i64)
        .bind(p.job_id.clone())
        .bind(p.task_id.clone())
        .bind(p.attempt_id.clone())
        .execute(&mut *self.tx)
        .await?;
        if attempt.cancel_requested {
            // The cancel may have reached launchers before this attempt's did: ask again.
            self.emit_cancel(&p.job_id, &p.task_id, &p.attempt_id, &task.backend, "cancelled");
        }
        Ok(())
    }

    /// Fails each task dispatched more than `after` ago, not yet taken up by any launcher, whose
    /// backend no launcher serves: none announced itself, all that did said they leave, or all
    /// have been silent for [`PRESENCE_GONE`]. Waiting longer cannot help, and a task that waits
    /// for ever hides the mistake (a backend not deployed, a runner type misspelt). Its dispatch is cancelled, so that a launcher that comes up
    /// later does not run it.
    pub(super) async fn fail_unserved(&mut self, after: Duration) -> Result<()> {
        let waiting: Vec<String> = sqlx::query(
            "SELECT DISTINCT backend FROM tasks WHERE state = 'dispatched' AND lease_until IS NULL",
        )
        .fetch_all(&mut *self.tx)
        .await?
        .iter()
        .map(|r| r.try_get("backend"))
        .collect::<std::result::Result<_, _>>()?;
        let gone = PRESENCE_GONE.as_millis() as i64;
        for backend in waiting {
            // An agent task waits, queued in the broker, until an agent of its cluster that
            // serves it starts: agents come and go, and the api says what it waits for.
            if ferry_event::agent::parse_backend(&backend).is_some() {
                continue;
            }
            let served = sqlx::query(
                "SELECT instance FROM launchers WHERE backend = $1 AND leaving = 0 AND seen_at >= $2 LIMIT 1",
            )
            .bind(backend.clone())
            .bind(self.now - gone)
            .fetch_optional(&mut *self.tx)
            .await?
            .is_some();
            if served {
                continue;
            }
            let mut rows = sqlx::query(
                "SELECT t.job_id, t.task_id, t.attempt_id FROM tasks t
                 JOIN attempts a ON a.attempt_id = t.attempt_id
                 WHERE t.backend = $1 AND t.state = 'dispatched' AND t.lease_until IS NULL
                   AND a.state = 'dispatched' AND a.dispatched_at <= $2
                 LIMIT 1000",
            )
            .bind(backend.clone())
            .bind(self.now - after.as_millis() as i64)
            .fetch_all(&mut *self.tx)
            .await?
            .iter()
            .map(|r| {
                Ok((
                    r.try_get::<String, _>("job_id")?,
                    r.try_get::<String, _>("task_id")?,
                    r.try_get::<String, _>("attempt_id")?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
            rows.sort();
            let error = format!(
                "no launcher for backend `{backend}` is running: none has announced itself in the last {} \
                 minutes without leaving again, and the task waited {}s; start one (`ferry service \
                 launcher --backend {backend}`, or `ferry up`), or run the task on another runner \
                 (`ferry run FLOW --runner docker` runs container tasks on local Docker)",
                PRESENCE_GONE.as_secs() / 60,
                after.as_secs()
            );
            for (job_id, task_id, attempt_id) in rows {
                self.lock_job_if_shared(&job_id).await?;
                let settled = sqlx::query(
                    "UPDATE attempts SET state = 'failed', finished_at = $1, error = $2
                     WHERE attempt_id = $3 AND state = 'dispatched'",
                )
                .bind(self.now)
                .bind(error.clone())
                .bind(attempt_id.clone())
                .execute(&mut *self.tx)
                .await?
                .rows_affected();
                if settled == 0 {
                    continue;
                }
                tracing::warn!(%job_id, %task_id, %attempt_id, %backend, "no launcher serves the task's backend; failing it");
                self.count(&job_id, |d| d.active -= 1);
                self.touched.insert(job_id.clone());
                self.emit_cancel(&job_id, &task_id, &attempt_id, &backend, &error);
                let Some(task) = self.task(&job_id, &task_id).await? else {
                    continue;
                };
                self.task_terminal(&task, TaskStatus::Failed, Some(error.clone()), self.now)
                    .await?;
                let msg = format!("task {task_id} failed: {error}");
                self.begin_ending(&job_id, JobStatus::Failed, &msg).await?;
            }
        }
        Ok(())
    }
}
