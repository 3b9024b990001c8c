//! `job.planned`: the job, its tasks and their edges.

use ferry_event::kind;
use ferry_event::payload::{JobStatus, PlannedTask};

use super::planned::{PlannedHead, PlannedJson, check_dag};
use super::{CHUNK, Cx};
use crate::store::JobRow;
use crate::{Error, Result};
use ferry_runtime::db::{placeholders, sized};

impl Cx<'_> {
    pub(super) async fn on_planned(&mut self, planned: PlannedJson) -> Result<()> {
        let p = planned.head()?;
        if self.lock_job(&p.job_id).await?.is_some() {
            tracing::debug!(job_id = %p.job_id, "job already known; planned event ignored");
            return Ok(());
        }
        let total = p.tasks.len() as i64;
        let (invalid, ready) = match check_dag(&p.tasks) {
            Ok(ready) => (None, ready as i64),
            Err(reason) => (Some(reason), 0),
        };
        let (state, unfinished) = match &invalid {
            Some(_) => (JobStatus::Failed, 0),
            None => (JobStatus::Running, total),
        };
        let inserted = sqlx::query(
            "INSERT INTO jobs (job_id, flow_id, namespace, state, ending, reason, concurrency, active, ready,
                               total, unfinished, created_at, updated_at)
             VALUES ($1, $2, $3, $4, NULL, $5, $6, 0, $7, $8, $9, $10, $10)
             ON CONFLICT DO NOTHING",
        )
        .bind(p.job_id.clone())
        .bind(p.flow_id.clone())
        .bind(p.namespace.clone())
        .bind(state.as_str())
        .bind(invalid.clone())
        .bind(p.concurrency.map(i64::from))
        .bind(ready)
        .bind(total)
        .bind(unfinished)
        .bind(self.now)
        .execute(&mut *self.tx)
        .await?;
        if inserted.rows_affected() == 0 {
            // Another instance created it since the lookup above.
            return Ok(());
        }
        let job = JobRow {
            job_id: p.job_id.clone(),
            flow_id: p.flow_id.clone(),
            state: state.as_str().into(),
            ending: None,
            reason: invalid.clone(),
            concurrency: p.concurrency.map(i64::from),
            active: 0,
            ready: 0,
            total,
            unfinished,
        };
        if let Some(reason) = invalid {
            tracing::warn!(job_id = %p.job_id, %reason, "planned job is not a valid DAG");
            self.emit_job(kind::JOB_FAILED, &job, JobStatus::Failed, Some(reason));
            return Ok(());
        }
        self.insert_tasks(&p).await?;
        tracing::info!(job_id = %p.job_id, flow_id = %p.flow_id, tasks = total, "job started");
        self.emit_job(kind::JOB_STARTED, &job, JobStatus::Running, None);
        self.touched.insert(p.job_id.clone());
        if let Some(reason) = self.take_early_cancel(&p.job_id).await? {
            // Cancelled before it was planned: nothing of it is dispatched.
            self.begin_ending(&p.job_id, JobStatus::Cancelled, &reason)
                .await?;
        }
        Ok(())
    }

    /// Inserts the tasks and their edges, decoding a chunk of tasks at a time: what is held at
    /// once does not grow with the job.
    async fn insert_tasks(&mut self, p: &PlannedHead<'_>) -> Result<()> {
        let job_id = p.job_id.as_str();
        let tasks = p.tasks.iter().map(|raw| {
            serde_json::from_str::<PlannedTask>(raw.get())
                .map_err(|e| Error::Corrupt(format!("a task of job {job_id} does not decode: {e}")))
        });
        self.insert_task_rows(job_id, None, 0, None, tasks).await?;
        Ok(())
    }

    /// Inserts tasks of a job and the edges between them, a chunk at a time: ready if they
    /// depend on nothing, waiting otherwise, or all `cancelled` with `cancelled`'s reason (the
    /// subtasks of a job that is ending). `parent` is the task that submitted them, `first_ord`
    /// the place of the first in the job's order. Returns how many are ready.
    pub(super) async fn insert_task_rows(
        &mut self,
        job_id: &str,
        parent: Option<&str>,
        first_ord: i64,
        cancelled: Option<&str>,
        mut tasks: impl Iterator<Item = Result<PlannedTask>>,
    ) -> Result<i64> {
        const COLS: usize = 19;
        let mut edges: Vec<(String, String)> = Vec::with_capacity(CHUNK);
        let mut ord = first_ord;
        let mut ready = 0;
        loop {
            let chunk: Vec<PlannedTask> = tasks.by_ref().take(CHUNK / 2).collect::<Result<_>>()?;
            if chunk.is_empty() {
                break;
            }
            let sql = format!(
                "INSERT INTO tasks (job_id, task_id, ord, state, priority, deps_left, attempts, failures, lost,
                                    ready_at, backend, timeout_ms, retry_attempts, spec, started_at, parent,
                                    open_children, finished_at, error)
                 VALUES {}",
                placeholders(self.dialect, chunk.len(), COLS)
            );
            let mut q = sized(&sql, chunk.len());
            for t in chunk {
                let deps = t.depends_on.len() as i64;
                let spec = serde_json::to_string(&t)
                    .map_err(|e| Error::Corrupt(format!("task {} does not serialize: {e}", t.id)))?;
                let state = match cancelled {
                    Some(_) => "cancelled",
                    None if deps == 0 => "ready",
                    None => "waiting",
                };
                if state == "ready" {
                    ready += 1;
                }
                q = q
                    .bind(job_id.to_string())
                    .bind(t.id.clone())
                    .bind(ord)
                    .bind(state)
                    .bind(i64::from(t.priority))
                    .bind(deps)
                    .bind(0i64)
                    .bind(0i64)
                    .bind(0i64)
                    .bind((state == "ready").then_some(self.now))
                    .bind(t.runner.route().into_owned())
                    .bind(t.timeout_ms.map(|v| v as i64))
                    .bind(i64::from(t.retry.attempts.max(1)))
                    .bind(spec)
                    .bind(None::<i64>)
                    .bind(parent.map(str::to_string))
                    .bind(0i64)
                    .bind(cancelled.map(|_| self.now))
                    .bind(cancelled.map(str::to_string));
                ord += 1;
                edges.extend(t.depends_on.into_iter().map(|up| (up, t.id.clone())));
            }
            q.execute(&mut *self.tx).await?;
            while edges.len() >= CHUNK {
                let rest = edges.split_off(CHUNK);
                self.insert_edges(job_id, &edges).await?;
                edges = rest;
            }
        }
        self.insert_edges(job_id, &edges).await?;
        Ok(ready)
    }

    async fn insert_edges(&mut self, job_id: &str, edges: &[(String, String)]) -> Result<()> {
        if edges.is_empty() {
            return Ok(());
        }
        let sql = format!(
            "INSERT INTO edges (job_id, task_id, dependent) VALUES {} ON CONFLICT DO NOTHING",
            placeholders(self.dialect, edges.len(), 3)
        );
        let mut q = sized(&sql, edges.len());
        for (up, down) in edges {
            q = q.bind(job_id.to_string()).bind(up.clone()).bind(down.clone());
        }
        q.execute(&mut *self.tx).await?;
        Ok(())
    }
}
