//! The state machine: how each event changes jobs and tasks, inside one transaction.
//!
//! Task states in the store: `waiting` (dependencies not yet succeeded), `ready`, `dispatched`,
//! `running`, `retrying` (a retry is due at `ready_at`), and the terminal `succeeded`, `failed`,
//! `cancelled`. A job is `running` until no task is unfinished; `ending` records that it is
//! being failed or cancelled while its running attempts are being stopped.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use ferry_event::cloudevents::Data;
use ferry_event::payload::{
    JobCancel, JobRetry, JobState, JobStatus, Outcome, OutputFile, PlannedTask, TaskCancel, TaskDispatched,
    TaskFinished, TaskHeartbeat, TaskStarted, TaskState, TaskStatus,
};
use ferry_event::template::{Part, Template};
use ferry_event::{AttributesReader, Event, EventBuilder, kind};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};
use tracing::Instrument;

use crate::store::{Dialect, Store};
use crate::{Config, Error, Result};

/// An event the scheduler acts on, decoded. Cloning is cheap: a planned job's JSON is shared.
#[derive(Clone)]
pub(crate) enum Input {
    Planned(PlannedJson),
    Cancel(JobCancel),
    Retry(JobRetry),
    Started(TaskStarted),
    Heartbeat(TaskHeartbeat),
    Finished(Box<TaskFinished>),
}

impl Input {
    /// `Ok(None)` for events that are not the scheduler's; `Err` with a reason for events that
    /// are, but cannot be read.
    ///
    /// A `job.planned` is checked whole here but kept as its JSON, taken out of the event: its
    /// tasks are decoded a chunk at a time as they are inserted (see [`PlannedJson`]).
    pub(crate) fn decode(event: &mut Event) -> std::result::Result<Option<Input>, String> {
        use ferry_event::decode;
        if event.ty() == kind::JOB_PLANNED {
            return PlannedJson::take(event).map(|p| Some(Input::Planned(p)));
        }
        let r = match event.ty() {
            kind::JOB_CANCEL => decode(event).map(Input::Cancel),
            kind::JOB_RETRY => decode(event).map(Input::Retry),
            kind::TASK_STARTED => decode(event).map(Input::Started),
            kind::TASK_HEARTBEAT => decode(event).map(Input::Heartbeat),
            kind::TASK_FINISHED => decode(event).map(|p| Input::Finished(Box::new(p))),
            _ => return Ok(None),
        };
        r.map(Some).map_err(|e| e.to_string())
    }

    fn job_id(&self) -> &str {
        match self {
            Input::Planned(p) => &p.job_id,
            Input::Cancel(p) => &p.job_id,
            Input::Retry(p) => &p.job_id,
            Input::Started(p) => &p.job_id,
            Input::Heartbeat(p) => &p.job_id,
            Input::Finished(p) => &p.job_id,
        }
    }
}

/// One transaction's worth of work: the transaction, the clock reading, and what it emits.
struct Cx<'a> {
    tx: Transaction<'static, Any>,
    dialect: Dialect,
    cfg: &'a Config,
    events: &'a EventBuilder,
    now: i64,
    out: Vec<Event>,
    /// Jobs whose completion must be checked before commit.
    touched: HashSet<String>,
    /// Changes to jobs' counters not written yet: one statement per job instead of one per
    /// change. Written before the job's row is read, before dispatching and before commit.
    deltas: HashMap<String, Delta>,
    /// Job rows read (and, on PostgreSQL, locked) in this transaction, with their counters'
    /// pending changes applied: read once per batch, not once per event.
    jobs: HashMap<String, JobRow>,
}

/// An attempt just settled by a report.
struct Settled {
    job_id: String,
    task_id: String,
    cancel_requested: bool,
}

/// An attempt moved to running by a start, before its task is.
struct Moved {
    job_id: String,
    task_id: String,
    attempt_id: String,
    cancel_requested: bool,
    started_at: i64,
}

/// An attempt dispatched in this pass, recorded by [`Cx::insert_attempts`].
struct NewAttempt {
    attempt_id: String,
    job_id: String,
    task_id: String,
    number: i64,
}

/// Pending changes to a job's `active`, `ready` and `unfinished` counters.
#[derive(Debug, Default, Clone, Copy)]
struct Delta {
    active: i64,
    ready: i64,
    unfinished: i64,
}

/// Applies decoded events (with their event ids) and dispatches what became ready. Returns the
/// events to publish, already written to the outbox.
pub(crate) async fn apply(
    store: &Store,
    cfg: &Config,
    events: &EventBuilder,
    now: i64,
    inputs: Vec<(String, Input)>,
    confirmed: Vec<String>,
) -> Result<Vec<Event>> {
    let mut cx = Cx::begin(store, cfg, events, now).await?;
    cx.delete_confirmed(&confirmed).await?;
    // Several instances on one database: take every job's row lock up front, in one order, so
    // that two batches touching the same jobs wait for each other instead of deadlocking.
    let mut jobs: Vec<&str> = inputs.iter().map(|(_, i)| i.job_id()).collect();
    jobs.sort_unstable();
    jobs.dedup();
    if cx.dialect == Dialect::Postgres {
        for job in jobs {
            cx.lock_job(job).await?;
        }
    }
    // Heartbeats are idempotent and frequent: they skip the inbox.
    let recorded: Vec<&str> = inputs
        .iter()
        .filter(|(_, i)| !matches!(i, Input::Heartbeat(_)))
        .map(|(id, _)| id.as_str())
        .collect();
    let mut fresh = cx.record_inbox(&recorded).await?;
    // Starts and successes between two other events are applied together, starts first: each
    // changes only its own attempt and task, the job's counters, and a success its task's
    // dependents, which have no attempt yet. A start that came after its attempt's success
    // is applied before it, which only fills in the start time the success would lack.
    let mut starts: Vec<TaskStarted> = Vec::new();
    let mut successes: Vec<TaskFinished> = Vec::new();
    for (event_id, input) in inputs {
        // An id applies once, even when the batch holds it twice.
        if !matches!(input, Input::Heartbeat(_)) && !fresh.remove(&event_id) {
            tracing::debug!(event_id, "already applied; skipping");
            continue;
        }
        match input {
            Input::Started(p) => starts.push(p),
            Input::Finished(p) if p.outcome == Outcome::Succeeded => successes.push(*p),
            input => {
                cx.on_started(std::mem::take(&mut starts)).await?;
                cx.on_succeeded(std::mem::take(&mut successes)).await?;
                let span = tracing::debug_span!("apply", job_id = input.job_id(), event_id);
                cx.apply_one(input).instrument(span).await?;
            }
        }
    }
    cx.on_started(starts).await?;
    cx.on_succeeded(successes).await?;
    cx.dispatch().await?;
    cx.finish().await
}

impl Cx<'_> {
    async fn apply_one(&mut self, input: Input) -> Result<()> {
        let cx = self;
        match input {
            Input::Planned(p) => cx.on_planned(p).await?,
            Input::Cancel(p) => {
                let reason = p.reason.unwrap_or_else(|| "cancelled on request".into());
                cx.begin_ending(&p.job_id, JobStatus::Cancelled, &reason).await?
            }
            Input::Retry(p) => cx.on_retry(&p.job_id).await?,
            Input::Started(p) => cx.on_started(vec![p]).await?,
            Input::Heartbeat(p) => cx.on_heartbeat(p).await?,
            Input::Finished(p) => cx.on_finished(*p, false).await?,
        }
        Ok(())
    }
}

/// Timers and dispatch. Returns the events emitted and whether more work is waiting.
pub(crate) async fn tick(
    store: &Store,
    cfg: &Config,
    events: &EventBuilder,
    now: i64,
    confirmed: Vec<String>,
) -> Result<(Vec<Event>, bool)> {
    let mut cx = Cx::begin(store, cfg, events, now).await?;
    cx.delete_confirmed(&confirmed).await?;
    cx.timers().await?;
    let more = cx.dispatch().await?;
    Ok((cx.finish().await?, more))
}

const CHUNK: usize = 400;

/// A statement whose text depends on how many rows it carries. Few rows: kept in the
/// connection's statement cache like any other (batches of a few events are the common case
/// when the load is light). Many: prepared for this one use, or each row count would take a place
/// in the cache (and memory) of its own and push out the statements used over and over.
fn sized(sql: &str, rows: usize) -> sqlx::query::Query<'_, Any, sqlx::any::AnyArguments<'_>> {
    sqlx::query(sql).persistent(rows <= 8)
}

/// One placeholder for the `n`th parameter (from 1) of a statement whose parameters are all
/// numbered in order. SQLite gets anonymous `?`s, numbered in order too: finding a `$N`'s
/// number is a linear search in SQLite, which made binding a statement of thousands of
/// parameters quadratic.
fn param(dialect: Dialect, n: usize, s: &mut String) {
    use std::fmt::Write;
    match dialect {
        Dialect::Sqlite => s.push('?'),
        Dialect::Postgres => {
            let _ = write!(s, "${n}");
        }
    }
}

/// A placeholder list for `rows` rows of `cols` columns, the statement's only parameters.
pub(crate) fn placeholders(dialect: Dialect, rows: usize, cols: usize) -> String {
    let mut s = String::with_capacity(rows * (cols * 4 + 3));
    for r in 0..rows {
        if r > 0 {
            s.push(',');
        }
        s.push('(');
        for c in 0..cols {
            if c > 0 {
                s.push(',');
            }
            param(dialect, r * cols + c + 1, &mut s);
        }
        s.push(')');
    }
    s
}

/// A placeholder list of `n` values, the statement's only parameters.
pub(crate) fn in_list(dialect: Dialect, n: usize) -> String {
    let mut s = String::with_capacity(n * 4);
    for i in 0..n {
        if i > 0 {
            s.push(',');
        }
        param(dialect, i + 1, &mut s);
    }
    s
}

impl<'a> Cx<'a> {
    async fn begin(store: &Store, cfg: &'a Config, events: &'a EventBuilder, now: i64) -> Result<Cx<'a>> {
        let tx = store.pool.begin().await?;
        Ok(Cx {
            tx,
            dialect: store.dialect,
            cfg,
            events,
            now,
            out: Vec::new(),
            touched: HashSet::new(),
            deltas: HashMap::new(),
            jobs: HashMap::new(),
        })
    }

    async fn finish(mut self) -> Result<Vec<Event>> {
        self.flush_all().await?;
        let touched: Vec<String> = self.touched.drain().collect();
        for job in touched {
            self.check_complete(&job).await?;
        }
        for chunk in self.out.chunks(CHUNK) {
            let sql = format!(
                "INSERT INTO outbox (event_id, event) VALUES {}",
                placeholders(self.dialect, chunk.len(), 2)
            );
            let mut q = sized(&sql, chunk.len());
            for e in chunk {
                let json = serde_json::to_string(e)
                    .map_err(|err| Error::Corrupt(format!("event {} does not serialize: {err}", e.id())))?;
                q = q.bind(e.id().to_string()).bind(json);
            }
            q.execute(&mut *self.tx).await?;
        }
        self.tx.commit().await?;
        Ok(self.out)
    }

    async fn delete_confirmed(&mut self, ids: &[String]) -> Result<()> {
        for chunk in ids.chunks(CHUNK) {
            let sql = format!(
                "DELETE FROM outbox WHERE event_id IN ({})",
                in_list(self.dialect, chunk.len())
            );
            let mut q = sized(&sql, chunk.len());
            for id in chunk {
                q = q.bind(id.clone());
            }
            q.execute(&mut *self.tx).await?;
        }
        Ok(())
    }

    /// Records event ids, in one statement per chunk; returns those not applied before.
    async fn record_inbox(&mut self, event_ids: &[&str]) -> Result<HashSet<String>> {
        let mut fresh = HashSet::with_capacity(event_ids.len());
        for chunk in event_ids.chunks(CHUNK) {
            let sql = format!(
                "INSERT INTO inbox (event_id, applied_at) VALUES {} ON CONFLICT DO NOTHING RETURNING event_id",
                placeholders(self.dialect, chunk.len(), 2)
            );
            let mut q = sized(&sql, chunk.len());
            for id in chunk {
                q = q.bind(id.to_string()).bind(self.now);
            }
            for row in q.fetch_all(&mut *self.tx).await? {
                fresh.insert(row.try_get::<String, _>("event_id")?);
            }
        }
        Ok(fresh)
    }

    /// Changes a job's counters (written by [`Self::flush`]), in its cached row too.
    fn count(&mut self, job_id: &str, f: impl FnOnce(&mut Delta)) {
        let mut change = Delta::default();
        f(&mut change);
        let d = self.deltas.entry(job_id.to_string()).or_default();
        d.active += change.active;
        d.ready += change.ready;
        d.unfinished += change.unfinished;
        if let Some(job) = self.jobs.get_mut(job_id) {
            job.active += change.active;
            job.ready += change.ready;
            job.unfinished += change.unfinished;
        }
    }

    /// Forgets a job's cached row after a statement that changed it.
    fn changed_job(&mut self, job_id: &str) {
        self.jobs.remove(job_id);
    }

    /// Writes a job's pending counter changes.
    async fn flush(&mut self, job_id: &str) -> Result<()> {
        let Some(d) = self.deltas.remove(job_id) else {
            return Ok(());
        };
        sqlx::query(
            "UPDATE jobs SET active = active + $1, ready = ready + $2, unfinished = unfinished + $3,
                    updated_at = $4
             WHERE job_id = $5",
        )
        .bind(d.active)
        .bind(d.ready)
        .bind(d.unfinished)
        .bind(self.now)
        .bind(job_id.to_string())
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    async fn flush_all(&mut self) -> Result<()> {
        let mut jobs: Vec<String> = self.deltas.keys().cloned().collect();
        jobs.sort_unstable();
        for job in jobs {
            self.flush(&job).await?;
        }
        Ok(())
    }

    /// The job's row, current as of this transaction; serializes a job's transitions across
    /// scheduler instances (PostgreSQL row lock, held until commit). Read from the database
    /// once per transaction unless a statement changed it since.
    async fn lock_job(&mut self, job_id: &str) -> Result<Option<JobRow>> {
        if let Some(job) = self.jobs.get(job_id) {
            return Ok(Some(job.clone()));
        }
        self.flush(job_id).await?;
        let sql = match self.dialect {
            Dialect::Sqlite => format!("{JOB_SELECT} WHERE job_id = $1"),
            Dialect::Postgres => format!("{JOB_SELECT} WHERE job_id = $1 FOR UPDATE"),
        };
        let row = sqlx::query(&sql)
            .bind(job_id.to_string())
            .fetch_optional(&mut *self.tx)
            .await?;
        let job = row.map(|r| JobRow::from_row(&r)).transpose()?;
        if let Some(job) = &job {
            self.jobs.insert(job_id.to_string(), job.clone());
        }
        Ok(job)
    }

    /// Takes the job's row lock when several instances share the database.
    async fn lock_job_if_shared(&mut self, job_id: &str) -> Result<()> {
        if self.dialect == Dialect::Postgres {
            self.lock_job(job_id).await?;
        }
        Ok(())
    }

    fn emit_job(&mut self, ty: &str, job: &JobRow, state: JobStatus, reason: Option<String>) {
        let data = JobState {
            job_id: job.job_id.clone(),
            flow_id: job.flow_id.clone(),
            state,
            reason,
            tasks: job.total as u64,
        };
        self.out.push(self.events.job(ty, &job.job_id, &data));
    }

    fn emit_task(&mut self, ty: &str, data: TaskState) {
        let e = self
            .events
            .task(ty, &data.job_id, &data.task_id, data.attempt_id.as_deref(), &data);
        self.out.push(e);
    }

    fn emit_cancel(&mut self, job_id: &str, task_id: &str, attempt_id: &str, backend: &str, reason: &str) {
        let data = TaskCancel {
            job_id: job_id.into(),
            task_id: task_id.into(),
            attempt_id: attempt_id.into(),
            reason: Some(reason.into()),
        };
        let e = self
            .events
            .dispatch(kind::TASK_CANCEL, job_id, task_id, attempt_id, backend, &data);
        self.out.push(e);
    }

    // ------------------------------------------------------------------------------------------
    // job.planned
    // ------------------------------------------------------------------------------------------

    async fn on_planned(&mut self, planned: PlannedJson) -> Result<()> {
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
        self.touched.insert(p.job_id);
        Ok(())
    }

    /// Inserts the tasks and their edges, decoding a chunk of tasks at a time: what is held at
    /// once does not grow with the job.
    async fn insert_tasks(&mut self, p: &PlannedHead<'_>) -> Result<()> {
        const COLS: usize = 15;
        let mut edges: Vec<(String, String)> = Vec::with_capacity(CHUNK);
        for (ci, chunk) in p.tasks.chunks(CHUNK / 2).enumerate() {
            let sql = format!(
                "INSERT INTO tasks (job_id, task_id, ord, state, priority, deps_left, attempts, failures, lost,
                                    ready_at, backend, timeout_ms, retry_attempts, spec, started_at)
                 VALUES {}",
                placeholders(self.dialect, chunk.len(), COLS)
            );
            let mut q = sized(&sql, chunk.len());
            for (i, raw) in chunk.iter().enumerate() {
                let t: PlannedTask = serde_json::from_str(raw.get()).map_err(|e| {
                    Error::Corrupt(format!("a task of job {} does not decode: {e}", p.job_id))
                })?;
                let deps = t.depends_on.len() as i64;
                let spec = serde_json::to_string(&t)
                    .map_err(|e| Error::Corrupt(format!("task {} does not serialize: {e}", t.id)))?;
                q = q
                    .bind(p.job_id.clone())
                    .bind(t.id.clone())
                    .bind((ci * (CHUNK / 2) + i) as i64)
                    .bind(if deps == 0 { "ready" } else { "waiting" })
                    .bind(i64::from(t.priority))
                    .bind(deps)
                    .bind(0i64)
                    .bind(0i64)
                    .bind(0i64)
                    .bind(if deps == 0 { Some(self.now) } else { None })
                    .bind(t.runner.backend())
                    .bind(t.timeout_ms.map(|v| v as i64))
                    .bind(i64::from(t.retry.attempts.max(1)))
                    .bind(spec)
                    .bind(None::<i64>);
                edges.extend(t.depends_on.into_iter().map(|up| (up, t.id.clone())));
            }
            q.execute(&mut *self.tx).await?;
            while edges.len() >= CHUNK {
                let rest = edges.split_off(CHUNK);
                self.insert_edges(&p.job_id, &edges).await?;
                edges = rest;
            }
        }
        self.insert_edges(&p.job_id, &edges).await
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

    // ------------------------------------------------------------------------------------------
    // job.cancel, fail-fast
    // ------------------------------------------------------------------------------------------

    /// Ends a job as failed or cancelled: pending tasks are cancelled at once, running attempts
    /// are asked to stop; the job reaches its final state when the last of them reports.
    async fn begin_ending(&mut self, job_id: &str, ending: JobStatus, reason: &str) -> Result<()> {
        let Some(job) = self.lock_job(job_id).await? else {
            tracing::warn!(job_id, "cancel for an unknown job ignored");
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
            for row in &pending {
                let task_id: String = row.try_get("task_id")?;
                let attempts: i64 = row.try_get("attempts")?;
                self.emit_task(
                    kind::TASK_CANCELLED,
                    task_state(
                        job_id,
                        &task_id,
                        TaskStatus::Cancelled,
                        attempts,
                        None,
                        Some(reason.into()),
                    ),
                );
            }
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

    // ------------------------------------------------------------------------------------------
    // job.retry
    // ------------------------------------------------------------------------------------------

    async fn on_retry(&mut self, job_id: &str) -> Result<()> {
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
        sqlx::query(
            "UPDATE tasks SET deps_left = (
                 SELECT COUNT(*) FROM edges e JOIN tasks u ON u.job_id = e.job_id AND u.task_id = e.task_id
                 WHERE e.job_id = tasks.job_id AND e.dependent = tasks.task_id AND u.state <> 'succeeded')
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
        for row in &requeued {
            let task_id: String = row.try_get("task_id")?;
            let attempts: i64 = row.try_get("attempts")?;
            let mut s = task_state(job_id, &task_id, TaskStatus::Pending, attempts, None, None);
            s.retry_at_ms = Some(self.now);
            self.emit_task(kind::TASK_RETRYING, s);
        }
        self.touched.insert(job_id.to_string());
        Ok(())
    }

    // ------------------------------------------------------------------------------------------
    // Attempt reports
    // ------------------------------------------------------------------------------------------

    /// Attempts that started: each moves to running if it was waiting to start, and its task
    /// with it if the attempt is still the task's current one. Two statements per chunk of
    /// starts, however many; no job row needed (on PostgreSQL [`apply`] took the job locks).
    async fn on_started(&mut self, mut starts: Vec<TaskStarted>) -> Result<()> {
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

    async fn on_heartbeat(&mut self, p: TaskHeartbeat) -> Result<()> {
        sqlx::query(
            "UPDATE tasks SET lease_until = $1
             WHERE job_id = $2 AND task_id = $3 AND attempt_id = $4 AND state = 'running'",
        )
        .bind(self.now + self.cfg.lease.as_millis() as i64)
        .bind(p.job_id)
        .bind(p.task_id)
        .bind(p.attempt_id)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// An attempt ended (reported by its launcher, or decided by a timer when `synthetic`).
    async fn on_finished(&mut self, p: TaskFinished, synthetic: bool) -> Result<()> {
        if p.outcome == Outcome::Succeeded {
            return self.on_succeeded(vec![p]).await;
        }
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

    /// Successful attempts, settled together: their attempts, then their tasks where the
    /// attempt is still the task's current one, then the dependents of those tasks (in jobs
    /// not ending). Three statements per chunk of reports, however many.
    async fn on_succeeded(&mut self, mut reports: Vec<TaskFinished>) -> Result<()> {
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
                 RETURNING tasks.attempt_id, tasks.attempts, tasks.started_at",
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
            let mut succeeded: HashMap<String, (i64, Option<i64>)> = HashMap::with_capacity(open.len());
            for r in q.fetch_all(&mut *self.tx).await? {
                succeeded.insert(
                    r.try_get("attempt_id")?,
                    (r.try_get("attempts")?, r.try_get("started_at")?),
                );
            }
            let mut release: Vec<(&str, &str)> = Vec::with_capacity(succeeded.len());
            for (p, task_id) in &open {
                let Some(&(attempts, started_at)) = succeeded.get(&p.attempt_id) else {
                    continue; // a superseded attempt
                };
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
        }
        Ok(())
    }

    /// One dependency of each dependent of these tasks has succeeded per task: dependents
    /// left with none become ready. One statement (`SET` expressions read the row as it was).
    async fn release_all(&mut self, done: &[(&str, &str)]) -> Result<()> {
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

    async fn task_terminal(
        &mut self,
        task: &TaskRow,
        state: TaskStatus,
        error: Option<String>,
        finished_at: i64,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE tasks SET state = $1, error = $2, finished_at = $3, lease_until = NULL, deadline = NULL,
                    ready_at = NULL
             WHERE job_id = $4 AND task_id = $5",
        )
        .bind(state.as_str())
        .bind(error.clone())
        .bind(finished_at)
        .bind(task.job_id.clone())
        .bind(task.task_id.clone())
        .execute(&mut *self.tx)
        .await?;
        self.count(&task.job_id, |d| d.unfinished -= 1);
        let ty = match state {
            TaskStatus::Failed => kind::TASK_FAILED,
            _ => kind::TASK_CANCELLED,
        };
        let mut s = task_state(
            &task.job_id,
            &task.task_id,
            state,
            task.attempts,
            task.attempt_id.clone(),
            error,
        );
        s.started_at_ms = task.started_at;
        s.finished_at_ms = Some(finished_at);
        self.emit_task(ty, s);
        self.touched.insert(task.job_id.clone());
        Ok(())
    }

    /// A job with no unfinished task reaches its final state.
    async fn check_complete(&mut self, job_id: &str) -> Result<()> {
        let Some(job) = self.lock_job(job_id).await? else {
            return Ok(());
        };
        if job.state != "running" || job.unfinished > 0 {
            return Ok(());
        }
        let state = job
            .ending
            .as_deref()
            .and_then(JobStatus::parse)
            .unwrap_or(JobStatus::Succeeded);
        sqlx::query("UPDATE jobs SET state = $1, updated_at = $2 WHERE job_id = $3")
            .bind(state.as_str())
            .bind(self.now)
            .bind(job_id.to_string())
            .execute(&mut *self.tx)
            .await?;
        self.changed_job(job_id);
        let ty = match state {
            JobStatus::Succeeded => kind::JOB_SUCCEEDED,
            JobStatus::Failed => kind::JOB_FAILED,
            _ => kind::JOB_CANCELLED,
        };
        tracing::info!(job_id, state = state.as_str(), "job finished");
        let reason = job.reason.clone();
        self.emit_job(ty, &job, state, reason);
        Ok(())
    }

    // ------------------------------------------------------------------------------------------
    // Timers
    // ------------------------------------------------------------------------------------------

    async fn timers(&mut self) -> Result<()> {
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
            let report = TaskFinished {
                job_id,
                task_id,
                attempt_id,
                attempt: attempts as u32,
                outcome,
                exit_code: None,
                error: Some(error),
                outputs: Map::new(),
                output_files: Vec::new(),
                log_lines: 0,
                started_at_ms: None,
                finished_at_ms: self.now,
            };
            self.on_finished(report, true).await?;
        }
        Ok(())
    }

    // ------------------------------------------------------------------------------------------
    // Dispatch
    // ------------------------------------------------------------------------------------------

    /// Dispatches ready tasks, higher priority first, within each job's concurrency. Returns true
    /// when it stopped at `dispatch_max` with more possibly waiting.
    async fn dispatch(&mut self) -> Result<bool> {
        self.flush_all().await?;
        let limit = self.cfg.dispatch_max;
        // Jobs with ready tasks and room under their concurrency; then each one's best ready
        // tasks, from an index. A job at its limit costs nothing however many tasks it has.
        // On PostgreSQL the jobs are locked, skipping those another instance is working on.
        let lock = match self.dialect {
            Dialect::Sqlite => "",
            Dialect::Postgres => "FOR UPDATE SKIP LOCKED",
        };
        let jobs = sqlx::query(&format!(
            "SELECT job_id, concurrency, active FROM jobs
             WHERE ready > 0 AND state = 'running' AND ending IS NULL
               AND (concurrency IS NULL OR active < concurrency)
             ORDER BY created_at
             LIMIT $1 {lock}"
        ))
        .bind(limit as i64)
        .fetch_all(&mut *self.tx)
        .await?;
        let mut rows = Vec::new();
        for job in &jobs {
            let job_id: String = job.try_get("job_id")?;
            let concurrency: Option<i64> = job.try_get("concurrency")?;
            let active: i64 = job.try_get("active")?;
            let room = concurrency.map_or(limit as i64, |c| (c - active).min(limit as i64));
            let tasks = sqlx::query(
                "SELECT job_id, task_id, attempts, ready_at, backend, spec, priority, ord FROM tasks
                 WHERE job_id = $1 AND state = 'ready'
                 ORDER BY priority DESC, ready_at, ord
                 LIMIT $2",
            )
            .bind(job_id)
            .bind(room)
            .fetch_all(&mut *self.tx)
            .await?;
            for t in tasks {
                let key = (
                    -t.try_get::<i64, _>("priority")?,
                    t.try_get::<Option<i64>, _>("ready_at")?,
                    t.try_get::<i64, _>("ord")?,
                );
                rows.push((key, concurrency, active, t));
            }
        }
        // Higher priority first across jobs too.
        rows.sort_by_key(|(key, ..)| *key);
        let full = rows.len() >= limit;
        rows.truncate(limit);
        let mut room: HashMap<String, Option<i64>> = HashMap::new();
        let mut dispatched: Vec<NewAttempt> = Vec::new();
        let mut total = 0;
        let mut outputs = OutputCache::default();
        // Dispatches each backend's launchers have not picked up yet.
        let mut waiting: HashMap<String, i64> = HashMap::new();
        if !rows.is_empty() {
            for r in sqlx::query(
                "SELECT backend, COUNT(*) AS n FROM tasks WHERE state = 'dispatched' GROUP BY backend",
            )
            .fetch_all(&mut *self.tx)
            .await?
            {
                waiting.insert(r.try_get("backend")?, r.try_get("n")?);
            }
        }
        let max_waiting = self.cfg.max_waiting as i64;
        for (_, concurrency, active, row) in rows {
            let job_id: String = row.try_get("job_id")?;
            let backend: String = row.try_get("backend")?;
            if waiting.get(&backend).copied().unwrap_or(0) >= max_waiting {
                continue;
            }
            let left = room
                .entry(job_id.clone())
                .or_insert(concurrency.map(|c| c - active));
            if *left == Some(0) {
                continue;
            }
            let task_id: String = row.try_get("task_id")?;
            let attempts: i64 = row.try_get("attempts")?;
            let ready_at: Option<i64> = row.try_get("ready_at")?;
            let spec: String = row.try_get("spec")?;
            let spec: PlannedTask = serde_json::from_str(&spec)
                .map_err(|e| Error::Corrupt(format!("task {job_id}/{task_id} spec: {e}")))?;
            let rendered = match render(&spec, &job_id, &mut outputs, &mut self.tx).await? {
                Ok(r) => r,
                Err(problem) => {
                    // The flow refers to an output the upstream task did not produce: retrying
                    // cannot help. Ending the job reads its tasks: record what was dispatched.
                    self.insert_attempts(&mut dispatched).await?;
                    let task = self.task(&job_id, &task_id).await?.expect("selected above");
                    self.add_ready(&job_id, -1);
                    let msg = format!("task {task_id} failed: {problem}");
                    self.task_terminal(&task, TaskStatus::Failed, Some(problem), self.now)
                        .await?;
                    self.begin_ending(&job_id, JobStatus::Failed, &msg).await?;
                    room.insert(job_id, Some(0));
                    continue;
                }
            };
            if let Some(l) = left.as_mut() {
                *l -= 1;
            }
            let attempt = attempts + 1;
            let attempt_id = ferry_event::new_id();
            dispatched.push(NewAttempt {
                attempt_id: attempt_id.clone(),
                job_id: job_id.clone(),
                task_id: task_id.clone(),
                number: attempt,
            });
            total += 1;
            self.count(&job_id, |d| {
                d.active += 1;
                d.ready -= 1;
            });
            *waiting.entry(backend.clone()).or_default() += 1;
            let data = TaskDispatched {
                job_id: job_id.clone(),
                task_id: task_id.clone(),
                attempt_id: attempt_id.clone(),
                attempt: attempt as u32,
                runner: spec.runner,
                command: rendered.command,
                env: rendered.env,
                input_files: rendered.input_files,
                output_files: spec.output_files,
                resources: spec.resources,
                timeout_ms: spec.timeout_ms,
                lease_ms: self.cfg.lease.as_millis() as u64,
                ready_at_ms: ready_at.unwrap_or(self.now),
            };
            tracing::debug!(%job_id, %task_id, %attempt_id, attempt, "dispatching");
            let e = self.events.dispatch(
                kind::TASK_DISPATCHED,
                &job_id,
                &task_id,
                &attempt_id,
                &backend,
                &data,
            );
            self.out.push(e);
        }
        self.insert_attempts(&mut dispatched).await?;
        // Go on only if this pass filled a whole batch; a pass held back by `max_waiting` waits
        // for the launchers instead.
        Ok(full && total >= limit)
    }

    /// Records new attempts and moves their tasks to `dispatched`: two statements per chunk
    /// of attempts, not two per attempt.
    async fn insert_attempts(&mut self, attempts: &mut Vec<NewAttempt>) -> Result<()> {
        const ROWS: usize = 100;
        for chunk in attempts.chunks(ROWS) {
            let sql = format!(
                "INSERT INTO attempts (attempt_id, job_id, task_id, number, state, cancel_requested, dispatched_at)
                 VALUES {}",
                placeholders(self.dialect, chunk.len(), 7)
            );
            let mut q = sized(&sql, chunk.len());
            for a in chunk {
                q = q
                    .bind(a.attempt_id.clone())
                    .bind(a.job_id.clone())
                    .bind(a.task_id.clone())
                    .bind(a.number)
                    .bind("dispatched")
                    .bind(0i64)
                    .bind(self.now);
            }
            q.execute(&mut *self.tx).await?;
            let sql = format!(
                "WITH d (job_id, task_id, attempts, attempt_id) AS (VALUES {})
                 UPDATE tasks SET state = 'dispatched', attempts = d.attempts, attempt_id = d.attempt_id,
                        lease_until = NULL, deadline = NULL, started_at = NULL
                 FROM d WHERE tasks.job_id = d.job_id AND tasks.task_id = d.task_id",
                placeholders(self.dialect, chunk.len(), 4)
            );
            let mut q = sized(&sql, chunk.len());
            for a in chunk {
                q = q
                    .bind(a.job_id.clone())
                    .bind(a.task_id.clone())
                    .bind(a.number)
                    .bind(a.attempt_id.clone());
            }
            q.execute(&mut *self.tx).await?;
        }
        attempts.clear();
        Ok(())
    }

    fn add_ready(&mut self, job_id: &str, n: i64) {
        if n != 0 {
            self.count(job_id, |d| d.ready += n);
        }
    }

    // ------------------------------------------------------------------------------------------
    // Reads
    // ------------------------------------------------------------------------------------------

    async fn attempt(&mut self, attempt_id: &str) -> Result<Option<AttemptRow>> {
        let row = sqlx::query(&format!("{ATTEMPT_SELECT} WHERE attempt_id = $1"))
            .bind(attempt_id.to_string())
            .fetch_optional(&mut *self.tx)
            .await?;
        row.map(|r| AttemptRow::from_row(&r)).transpose()
    }

    async fn task(&mut self, job_id: &str, task_id: &str) -> Result<Option<TaskRow>> {
        let row = sqlx::query(&format!("{TASK_SELECT} WHERE job_id = $1 AND task_id = $2"))
            .bind(job_id.to_string())
            .bind(task_id.to_string())
            .fetch_optional(&mut *self.tx)
            .await?;
        row.map(|r| TaskRow::from_row(&r)).transpose()
    }
}

fn task_state(
    job_id: &str,
    task_id: &str,
    state: TaskStatus,
    attempts: i64,
    attempt_id: Option<String>,
    error: Option<String>,
) -> TaskState {
    TaskState {
        job_id: job_id.into(),
        task_id: task_id.into(),
        state,
        attempts: attempts as u32,
        attempt_id,
        error,
        outputs: Map::new(),
        output_files: Vec::new(),
        retry_at_ms: None,
        started_at_ms: None,
        finished_at_ms: None,
    }
}

/// A `job.planned` event's JSON, taken out of the event once it was checked to decode. The
/// tasks stay JSON until they are inserted, a chunk at a time: the event is not held a second
/// time as decoded tasks.
#[derive(Clone)]
pub(crate) struct PlannedJson {
    job_id: String,
    json: Arc<Vec<u8>>,
}

/// A `job.planned` payload with its tasks left as JSON, borrowed from the event's data.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PlannedHead<'a> {
    job_id: String,
    flow_id: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    concurrency: Option<u32>,
    /// Read only to be checked, like the rest of a `JobPlanned`.
    #[serde(default)]
    #[allow(dead_code)]
    inputs: Map<String, Value>,
    #[serde(borrow)]
    tasks: Vec<&'a RawValue>,
}

/// What the DAG check reads of a task.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TaskEdges<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(default, borrow)]
    depends_on: Vec<Cow<'a, str>>,
}

impl PlannedJson {
    /// Checks that the event's data is a `JobPlanned`, every task included (one at a time),
    /// then takes the data out of the event.
    fn take(event: &mut Event) -> std::result::Result<PlannedJson, String> {
        let job_id = {
            let invalid = |e: &dyn std::fmt::Display| {
                format!(
                    "event {} ({}) has data that is not valid for its type: {e}",
                    event.id(),
                    event.ty()
                )
            };
            let json: std::borrow::Cow<'_, [u8]> = match event.data() {
                Some(Data::Binary(b)) => b.as_slice().into(),
                Some(Data::String(s)) => s.as_bytes().into(),
                Some(Data::Json(v)) => serde_json::to_vec(v).map_err(|e| invalid(&e))?.into(),
                None => return Err(format!("event {} ({}) has no data", event.id(), event.ty())),
            };
            let head: PlannedHead<'_> = serde_json::from_slice(&json).map_err(|e| invalid(&e))?;
            for t in &head.tasks {
                serde_json::from_str::<PlannedTask>(t.get()).map_err(|e| invalid(&e))?;
            }
            head.job_id
        };
        let json = match event.take_data().2 {
            Some(Data::Binary(b)) => b,
            Some(Data::String(s)) => s.into_bytes(),
            Some(Data::Json(v)) => serde_json::to_vec(&v).unwrap_or_default(),
            None => Vec::new(),
        };
        Ok(PlannedJson {
            job_id,
            json: Arc::new(json),
        })
    }

    fn head(&self) -> Result<PlannedHead<'_>> {
        serde_json::from_slice(&self.json)
            .map_err(|e| Error::Corrupt(format!("job.planned of {} no longer decodes: {e}", self.job_id)))
    }
}

/// Checks that every dependency names a task of the job and that there is no cycle (Kahn's
/// algorithm, linear in tasks + edges), and counts the tasks ready at once. The planner checks
/// this too; the scheduler does not trust its input, since any publisher can send
/// `job.planned`. Ids are borrowed from the event's JSON and edges kept as pairs of indexes.
fn check_dag<'a>(tasks: &[&'a RawValue]) -> std::result::Result<usize, String> {
    fn read<'a>(raw: &'a RawValue) -> std::result::Result<TaskEdges<'a>, String> {
        serde_json::from_str(raw.get()).map_err(|e| format!("invalid plan: {e}"))
    }
    let mut ids: Vec<Cow<'a, str>> = Vec::with_capacity(tasks.len());
    for raw in tasks {
        ids.push(read(raw)?.id);
    }
    let index: HashMap<&str, u32> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.as_ref(), i as u32))
        .collect();
    if index.len() != tasks.len() {
        return Err("invalid plan: duplicate task ids".into());
    }
    let mut indegree = vec![0u32; tasks.len()];
    let mut edges: Vec<(u32, u32)> = Vec::new();
    for (i, raw) in tasks.iter().enumerate() {
        for d in read(raw)?.depends_on {
            let Some(&u) = index.get(d.as_ref()) else {
                return Err(format!(
                    "invalid plan: task {} depends on unknown task {d}",
                    ids[i]
                ));
            };
            edges.push((u, i as u32));
            indegree[i] += 1;
        }
    }
    drop(index);
    // Each task's dependents, contiguous: edges sorted by upstream task, `start` indexing them.
    edges.sort_unstable();
    let mut start = vec![0usize; tasks.len() + 1];
    for &(u, _) in &edges {
        start[u as usize + 1] += 1;
    }
    for i in 0..tasks.len() {
        start[i + 1] += start[i];
    }
    let mut queue: Vec<usize> = (0..tasks.len()).filter(|&i| indegree[i] == 0).collect();
    let ready = queue.len();
    let mut seen = 0;
    while let Some(u) = queue.pop() {
        seen += 1;
        for &(_, v) in &edges[start[u]..start[u + 1]] {
            indegree[v as usize] -= 1;
            if indegree[v as usize] == 0 {
                queue.push(v as usize);
            }
        }
    }
    if seen != tasks.len() {
        let stuck: Vec<&str> = (0..tasks.len())
            .filter(|&i| indegree[i] > 0)
            .take(5)
            .map(|i| ids[i].as_ref())
            .collect();
        return Err(format!(
            "invalid plan: dependency cycle among {}",
            stuck.join(", ")
        ));
    }
    Ok(ready)
}

/// Upstream outputs read during one dispatch pass.
#[derive(Default)]
struct OutputCache(HashMap<(String, String), Option<Map<String, Value>>>);

struct Rendered {
    command: Vec<Template>,
    env: std::collections::BTreeMap<String, Template>,
    input_files: std::collections::BTreeMap<String, Template>,
}

/// Fills `{{ outputs.TASK.KEY }}` from the upstream tasks' stored outputs.
async fn render(
    spec: &PlannedTask,
    job_id: &str,
    cache: &mut OutputCache,
    tx: &mut Transaction<'static, Any>,
) -> Result<std::result::Result<Rendered, String>> {
    let all = spec
        .command
        .iter()
        .chain(spec.env.values())
        .chain(spec.input_files.values());
    let needed: HashSet<&str> = all.flat_map(|t| t.outputs().map(|(task, _)| task)).collect();
    for task in needed {
        let key = (job_id.to_string(), task.to_string());
        if cache.0.contains_key(&key) {
            continue;
        }
        let row = sqlx::query("SELECT outputs FROM tasks WHERE job_id = $1 AND task_id = $2")
            .bind(job_id.to_string())
            .bind(task.to_string())
            .fetch_optional(&mut **tx)
            .await?;
        let outputs = match row {
            Some(r) => {
                let text: Option<String> = r.try_get("outputs")?;
                text.and_then(|t| serde_json::from_str(&t).ok())
            }
            None => None,
        };
        cache.0.insert(key, outputs);
    }
    let fill = |t: &Template| {
        t.fill(|part| match part {
            Part::Output { task, key } => {
                let outputs = cache
                    .0
                    .get(&(job_id.to_string(), task.clone()))
                    .and_then(|o| o.as_ref());
                lookup(outputs, task, key).map(Some)
            }
            _ => Ok(None),
        })
    };
    let mut rendered = Rendered {
        command: Vec::new(),
        env: Default::default(),
        input_files: Default::default(),
    };
    for t in &spec.command {
        match fill(t) {
            Ok(t) => rendered.command.push(t),
            Err(e) => return Ok(Err(e)),
        }
    }
    for (k, t) in &spec.env {
        match fill(t) {
            Ok(t) => rendered.env.insert(k.clone(), t),
            Err(e) => return Ok(Err(e)),
        };
    }
    for (k, t) in &spec.input_files {
        match fill(t) {
            Ok(t) => rendered.input_files.insert(k.clone(), t),
            Err(e) => return Ok(Err(e)),
        };
    }
    Ok(Ok(rendered))
}

/// The text of `outputs.TASK.KEY` (KEY may be a dotted path). Strings are used as they are,
/// anything else as compact JSON.
fn lookup(
    outputs: Option<&Map<String, Value>>,
    task: &str,
    key: &str,
) -> std::result::Result<String, String> {
    let empty = Map::new();
    let outputs = outputs.unwrap_or(&empty);
    let mut parts = key.split('.');
    let first = parts.next().unwrap_or_default();
    let mut v = outputs.get(first);
    for p in parts {
        v = v.and_then(|v| match v {
            Value::Object(m) => m.get(p),
            Value::Array(a) => p.parse::<usize>().ok().and_then(|i| a.get(i)),
            _ => None,
        });
    }
    match v {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Ok(other.to_string()),
        None => {
            let have: Vec<&str> = outputs.keys().map(String::as_str).collect();
            let have = if have.is_empty() {
                "none".to_string()
            } else {
                have.join(", ")
            };
            Err(format!(
                "{{{{ outputs.{task}.{key} }}}}: task {task} produced no output {key:?} (its outputs: {have})"
            ))
        }
    }
}

// ----------------------------------------------------------------------------------------------
// Rows
// ----------------------------------------------------------------------------------------------

const JOB_SELECT: &str =
    "SELECT job_id, flow_id, state, ending, reason, concurrency, active, ready, total, unfinished FROM jobs";
const TASK_SELECT: &str =
    "SELECT job_id, task_id, state, attempts, failures, lost, attempt_id, backend, timeout_ms,
    retry_attempts, deadline, started_at, finished_at, spec, outputs, output_files, error FROM tasks";
const ATTEMPT_SELECT: &str =
    "SELECT attempt_id, job_id, task_id, number, state, cancel_requested, dispatched_at,
    started_at, finished_at, exit_code, error FROM attempts";

/// A job as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRow {
    pub job_id: String,
    pub flow_id: String,
    pub state: String,
    pub ending: Option<String>,
    pub reason: Option<String>,
    pub concurrency: Option<i64>,
    pub active: i64,
    /// Tasks ready to dispatch.
    pub ready: i64,
    pub total: i64,
    pub unfinished: i64,
}

impl JobRow {
    fn from_row(r: &AnyRow) -> Result<Self> {
        Ok(JobRow {
            job_id: r.try_get("job_id")?,
            flow_id: r.try_get("flow_id")?,
            state: r.try_get("state")?,
            ending: r.try_get("ending")?,
            reason: r.try_get("reason")?,
            concurrency: r.try_get("concurrency")?,
            active: r.try_get("active")?,
            ready: r.try_get("ready")?,
            total: r.try_get("total")?,
            unfinished: r.try_get("unfinished")?,
        })
    }
}

/// A task as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskRow {
    pub job_id: String,
    pub task_id: String,
    pub state: String,
    pub attempts: i64,
    pub failures: i64,
    pub lost: i64,
    pub attempt_id: Option<String>,
    pub backend: String,
    pub timeout_ms: Option<i64>,
    pub retry_attempts: i64,
    pub deadline: Option<i64>,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub spec: String,
    pub outputs: Option<String>,
    pub output_files: Option<String>,
    pub error: Option<String>,
}

impl TaskRow {
    fn from_row(r: &AnyRow) -> Result<Self> {
        Ok(TaskRow {
            job_id: r.try_get("job_id")?,
            task_id: r.try_get("task_id")?,
            state: r.try_get("state")?,
            attempts: r.try_get("attempts")?,
            failures: r.try_get("failures")?,
            lost: r.try_get("lost")?,
            attempt_id: r.try_get("attempt_id")?,
            backend: r.try_get("backend")?,
            timeout_ms: r.try_get("timeout_ms")?,
            retry_attempts: r.try_get("retry_attempts")?,
            deadline: r.try_get("deadline")?,
            started_at: r.try_get("started_at")?,
            finished_at: r.try_get("finished_at")?,
            spec: r.try_get("spec")?,
            outputs: r.try_get("outputs")?,
            output_files: r.try_get("output_files")?,
            error: r.try_get("error")?,
        })
    }

    pub fn spec(&self) -> Result<PlannedTask> {
        serde_json::from_str(&self.spec)
            .map_err(|e| Error::Corrupt(format!("task {}/{} spec: {e}", self.job_id, self.task_id)))
    }

    pub fn output_files(&self) -> Vec<OutputFile> {
        self.output_files
            .as_deref()
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or_default()
    }
}

/// An attempt as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptRow {
    pub attempt_id: String,
    pub job_id: String,
    pub task_id: String,
    pub number: i64,
    pub state: String,
    pub cancel_requested: bool,
    pub dispatched_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub exit_code: Option<i64>,
    pub error: Option<String>,
}

impl AttemptRow {
    fn from_row(r: &AnyRow) -> Result<Self> {
        Ok(AttemptRow {
            attempt_id: r.try_get("attempt_id")?,
            job_id: r.try_get("job_id")?,
            task_id: r.try_get("task_id")?,
            number: r.try_get("number")?,
            state: r.try_get("state")?,
            cancel_requested: r.try_get::<i64, _>("cancel_requested")? != 0,
            dispatched_at: r.try_get("dispatched_at")?,
            started_at: r.try_get("started_at")?,
            finished_at: r.try_get("finished_at")?,
            exit_code: r.try_get("exit_code")?,
            error: r.try_get("error")?,
        })
    }
}

impl Store {
    pub async fn job(&self, job_id: &str) -> Result<Option<JobRow>> {
        let row = sqlx::query(&format!("{JOB_SELECT} WHERE job_id = $1"))
            .bind(job_id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| JobRow::from_row(&r)).transpose()
    }

    pub async fn tasks(&self, job_id: &str) -> Result<Vec<TaskRow>> {
        let rows = sqlx::query(&format!("{TASK_SELECT} WHERE job_id = $1 ORDER BY ord"))
            .bind(job_id.to_string())
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(TaskRow::from_row).collect()
    }

    pub async fn attempts(&self, job_id: &str) -> Result<Vec<AttemptRow>> {
        let rows = sqlx::query(&format!(
            "{ATTEMPT_SELECT} WHERE job_id = $1 ORDER BY dispatched_at, number"
        ))
        .bind(job_id.to_string())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(AttemptRow::from_row).collect()
    }

    /// Deletes outbox rows whose events the bus confirmed.
    pub async fn delete_outbox(&self, ids: &[String]) -> Result<()> {
        for chunk in ids.chunks(CHUNK) {
            let sql = format!(
                "DELETE FROM outbox WHERE event_id IN ({})",
                in_list(self.dialect, chunk.len())
            );
            let mut q = sized(&sql, chunk.len());
            for id in chunk {
                q = q.bind(id.clone());
            }
            q.execute(&self.pool).await?;
        }
        Ok(())
    }

    /// Events committed to the outbox and not yet known to be published, in order.
    /// The oldest `limit` outbox rows: sequence number and event.
    pub async fn outbox_head(&self, limit: usize) -> Result<Vec<(i64, Event)>> {
        let rows = sqlx::query("SELECT seq, event FROM outbox ORDER BY seq LIMIT $1")
            .bind(limit as i64)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                let text: String = r.try_get("event")?;
                let event =
                    serde_json::from_str(&text).map_err(|e| Error::Corrupt(format!("outbox event: {e}")))?;
                Ok((r.try_get("seq")?, event))
            })
            .collect()
    }

    pub async fn outbox(&self) -> Result<Vec<Event>> {
        let rows = sqlx::query("SELECT event FROM outbox ORDER BY seq")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                let text: String = r.try_get("event")?;
                serde_json::from_str(&text).map_err(|e| Error::Corrupt(format!("outbox event: {e}")))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dag(tasks: &[(&str, &[&str])]) -> std::result::Result<usize, String> {
        let json: Vec<String> = tasks
            .iter()
            .map(|(id, deps)| {
                serde_json::json!({
                    "id": id, "runner": {"type": "local"}, "command": ["true"], "dependsOn": deps
                })
                .to_string()
            })
            .collect();
        let raw: Vec<&RawValue> = json.iter().map(|j| serde_json::from_str(j).unwrap()).collect();
        check_dag(&raw)
    }

    #[test]
    fn dag_checks_reject_unknown_deps_and_cycles() {
        assert_eq!(dag(&[("a", &[]), ("b", &["a"]), ("c", &[])]), Ok(2));
        let e = dag(&[("a", &["zz"])]).unwrap_err();
        assert!(e.contains("unknown task zz"), "{e}");
        let e = dag(&[("a", &["c"]), ("b", &["a"]), ("c", &["b"]), ("d", &[])]).unwrap_err();
        assert!(e.ends_with("cycle among a, b, c"), "{e}");
        let e = dag(&[("a", &[]), ("a", &[])]).unwrap_err();
        assert!(e.contains("duplicate task ids"), "{e}");
    }

    #[test]
    fn planned_events_are_checked_then_kept_as_json() {
        let b = EventBuilder::new("test");
        let ok = serde_json::json!({"jobId": "j", "flowId": "f", "tasks": [
            {"id": "a", "runner": {"type": "local"}, "command": ["true"]}
        ]});
        let mut e = b.job(kind::JOB_PLANNED, "j", &ok);
        let Ok(Some(Input::Planned(p))) = Input::decode(&mut e) else {
            panic!("a valid job.planned decodes");
        };
        assert!(e.data().is_none(), "the data is taken out of the event");
        let head = p.head().unwrap();
        assert_eq!((head.job_id.as_str(), head.tasks.len()), ("j", 1));
        let bad = serde_json::json!({"jobId": "j", "flowId": "f", "tasks": [
            {"id": "a", "runner": {"type": "nowhere"}, "command": ["true"]}
        ]});
        let mut e = b.job(kind::JOB_PLANNED, "j", &bad);
        let err = Input::decode(&mut e).err().expect("a bad task is refused");
        assert!(err.contains("not valid for its type"), "{err}");
        assert!(
            e.data().is_some(),
            "a refused event keeps its data for the dead letter"
        );
    }

    #[test]
    fn outputs_are_looked_up_by_dotted_path() {
        let outputs: Map<String, Value> = serde_json::from_value(
            serde_json::json!({"rows": 3, "name": "x", "deep": {"a": [1, {"b": "y"}]}}),
        )
        .unwrap();
        assert_eq!(lookup(Some(&outputs), "t", "rows").unwrap(), "3");
        assert_eq!(lookup(Some(&outputs), "t", "name").unwrap(), "x");
        assert_eq!(lookup(Some(&outputs), "t", "deep.a.1.b").unwrap(), "y");
        let e = lookup(Some(&outputs), "t", "rowz").unwrap_err();
        assert!(e.contains("no output \"rowz\"") && e.contains("rows"), "{e}");
    }
}
