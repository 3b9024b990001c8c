//! `task.heartbeat`: renewing the lease of an attempt whose compute exists (running, or
//! accepted and waiting on its platform).

use ferry_event::payload::TaskHeartbeat;

use super::Cx;
use crate::Result;

impl Cx<'_> {
    pub(super) async fn on_heartbeat(&mut self, p: TaskHeartbeat) -> Result<()> {
        sqlx::query(
            "UPDATE tasks SET lease_until = $1
             WHERE job_id = $2 AND task_id = $3 AND attempt_id = $4
               AND (state = 'running' OR (state = 'dispatched' AND lease_until IS NOT NULL))",
        )
        .bind(self.now + self.cfg.lease.as_millis() as i64)
        .bind(p.job_id)
        .bind(p.task_id)
        .bind(p.attempt_id)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }
}
