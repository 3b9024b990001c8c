//! The state machine: how each event changes jobs and tasks, inside one transaction.
//!
//! Task states in the store: `waiting` (dependencies not yet succeeded), `ready`, `dispatched`,
//! `running`, `retrying` (a retry is due at `ready_at`), and the terminal `succeeded`, `failed`,
//! `cancelled`. A job is `running` until no task is unfinished; `ending` records that it is
//! being failed or cancelled while its running attempts are being stopped.
//!
//! This module holds the transaction ([`Cx`]: the inbox, the job rows and counters, what is
//! emitted) and the two ways into it, [`apply`] for a batch of events and [`tick`] for timers.
//! What each event does is in a module of its own: [`input`] decodes them; `job.planned` is
//! [`on_planned`] (its JSON and the DAG check in [`planned`]), `job.cancel` and fail-fast
//! [`on_cancel`], `job.retry` [`on_retry`], `task.started` [`on_started`], `task.heartbeat`
//! [`on_heartbeat`], `task.finished` [`on_finished`] (and a success that submitted subtasks
//! [`on_submitted`]); [`timers`] ends attempts whose lease or
//! deadline passed and readies retries that are due; [`dispatch`] sends ready tasks with their
//! templates filled in.

mod dispatch;
mod fence;
mod input;
mod on_cancel;
mod on_finished;
mod on_heartbeat;
mod on_planned;
mod on_retry;
mod on_started;
mod on_submitted;
mod planned;
mod presence;
mod timers;

use std::collections::{HashMap, HashSet};

use ferry_event::payload::{
    JobState, JobStatus, Outcome, TaskAttempts, TaskCancel, TaskFinished, TaskStarted, TaskState, TaskStatus,
    TasksState,
};
use ferry_event::{AttributesReader, Event, EventBuilder, kind};
use serde_json::Map;
use sqlx::{Any, Transaction};
use tracing::Instrument;

use ferry_runtime::db::{Dialect, placeholders, sized};

use crate::store::{ATTEMPT_SELECT, AttemptRow, JOB_SELECT, JobRow, Store, TASK_SELECT, TaskRow};
use crate::{Config, Error, Result};
pub(crate) use input::Input;

/// The span of the last event of each job in a batch (when traces are exported): what the
/// batch emits for a job is built in it, so that the job's trace goes on from that event.
pub(crate) type Spans = HashMap<String, tracing::Span>;

/// One transaction's worth of work: the transaction, the clock reading, and what it emits.
struct Cx<'a> {
    spans: Option<&'a Spans>,
    tx: Transaction<'static, Any>,
    dialect: Dialect,
    cfg: &'a Config,
    events: &'a EventBuilder,
    now: i64,
    out: Vec<Event>,
    /// When the transaction began, for its time in the metrics.
    began: std::time::Instant,
    /// The backends of attempts whose lease lapsed, counted once committed.
    lapsed: Vec<String>,
    /// Jobs whose completion must be checked before commit.
    touched: HashSet<String>,
    /// Changes to jobs' counters not written yet: one statement per job instead of one per
    /// change. Written before the job's row is read, before dispatching and before commit.
    deltas: HashMap<String, Delta>,
    /// Job rows read (and, on PostgreSQL, locked) in this transaction, with their counters'
    /// pending changes applied: read once per batch, not once per event.
    jobs: HashMap<String, JobRow>,
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
    spans: &Spans,
) -> Result<Vec<Event>> {
    let mut cx = Cx::begin(store, cfg, events, now).await?;
    cx.spans = Some(spans);
    cx.delete_confirmed(&confirmed).await?;
    // Several instances on one database: take every job's row lock up front, in one order, so
    // that two batches touching the same jobs wait for each other instead of deadlocking.
    let mut jobs: Vec<&str> = inputs.iter().filter_map(|(_, i)| i.job_id()).collect();
    jobs.sort_unstable();
    jobs.dedup();
    if cx.dialect == Dialect::Postgres {
        for job in jobs {
            cx.lock_job(job).await?;
        }
    }
    // Heartbeats and presence are idempotent and frequent: they skip the inbox.
    let recorded: Vec<&str> = inputs
        .iter()
        .filter(|(_, i)| !i.idempotent())
        .map(|(id, _)| id.as_str())
        .collect();
    let mut fresh = cx.record_inbox(&recorded).await?;
    // Fencing: each attempt's launcher, as far as known, for the launchers' words in the batch.
    let mut owners = cx.owners(&inputs).await?;
    let mut claims: Vec<(String, String)> = Vec::new();
    // Starts and successes between two other events are applied together, starts first: each
    // changes only its own attempt and task, the job's counters, and a success its task's
    // dependents, which have no attempt yet. A start that came after its attempt's success
    // is applied before it, which only fills in the start time the success would lack.
    let mut starts: Vec<TaskStarted> = Vec::new();
    let mut successes: Vec<TaskFinished> = Vec::new();
    for (event_id, input) in inputs {
        // An id applies once, even when the batch holds it twice.
        if !input.idempotent() && !fresh.remove(&event_id) {
            tracing::debug!(event_id, "already applied; skipping");
            continue;
        }
        if let Some((attempt, launcher)) = input.launcher_word() {
            let claims_it = matches!(input, Input::Accepted(_) | Input::Started(_));
            match owners.get(attempt) {
                Some(Some(owner)) if owner != launcher => {
                    cx.fence(&input, launcher, owner).await?;
                    continue;
                }
                Some(None) if claims_it => {
                    let (attempt, launcher) = (attempt.to_string(), launcher.to_string());
                    owners.insert(attempt.clone(), Some(launcher.clone()));
                    claims.push((attempt, launcher));
                }
                _ => {}
            }
        }
        match input {
            Input::Started(s) => starts.push(s.p),
            Input::Finished(s) if s.p.outcome == Outcome::Succeeded => successes.push(s.p),
            input => {
                cx.on_started(std::mem::take(&mut starts)).await?;
                cx.on_succeeded(std::mem::take(&mut successes)).await?;
                let span = tracing::debug_span!("apply", job_id = input.job_id().unwrap_or(""), event_id);
                cx.apply_one(input).instrument(span).await?;
            }
        }
    }
    cx.on_started(starts).await?;
    cx.on_succeeded(successes).await?;
    cx.claim(&claims).await?;
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
            Input::Accepted(s) => cx.on_accepted(s.p).await?,
            Input::Started(s) => cx.on_started(vec![s.p]).await?,
            Input::Heartbeat(s) => cx.on_heartbeat(s.p).await?,
            Input::Finished(s) => cx.on_finished(s.p, false).await?,
            Input::Presence(p) => cx.on_presence(p).await?,
        }
        Ok(())
    }
}

/// Dispatched tasks whose backend no launcher serves: each fails once it has waited `after`.
/// Returns the events emitted.
pub(crate) async fn unserved(
    store: &Store,
    cfg: &Config,
    events: &EventBuilder,
    now: i64,
    after: std::time::Duration,
) -> Result<Vec<Event>> {
    let mut cx = Cx::begin(store, cfg, events, now).await?;
    cx.fail_unserved(after).await?;
    cx.finish().await
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

pub(crate) const CHUNK: usize = 400;

/// Records a committed transaction in the metrics: its time, the jobs and tasks its events
/// start, end or retry, and the leases it found lapsed.
fn measure(out: &[Event], lapsed: &[String], took: std::time::Duration) {
    use ferry_runtime::metrics;
    metrics::db_transaction("scheduler", took);
    for backend in lapsed {
        metrics::lease_lapsed(backend);
    }
    for e in out {
        match e.ty() {
            kind::JOB_STARTED => metrics::job_started(),
            kind::JOB_SUCCEEDED => metrics::job_ended("succeeded"),
            kind::JOB_FAILED => metrics::job_ended("failed"),
            kind::JOB_CANCELLED => metrics::job_ended("cancelled"),
            kind::TASK_SUCCEEDED => metrics::task_ended("succeeded"),
            kind::TASK_FAILED => metrics::task_ended("failed"),
            kind::TASK_CANCELLED => metrics::task_ended("cancelled"),
            kind::TASK_RETRYING => metrics::task_retried(),
            kind::TASKS_CANCELLED | kind::TASKS_RETRYING => {
                let n = ferry_event::decode::<TasksState>(e).map_or(0, |s| s.tasks.len() as u64);
                if e.ty() == kind::TASKS_CANCELLED {
                    metrics::tasks_ended("cancelled", n);
                } else {
                    metrics::tasks_retried(n);
                }
            }
            _ => {}
        }
    }
}

impl<'a> Cx<'a> {
    async fn begin(store: &Store, cfg: &'a Config, events: &'a EventBuilder, now: i64) -> Result<Cx<'a>> {
        let began = std::time::Instant::now();
        let tx = store.pool.begin().await?;
        Ok(Cx {
            spans: None,
            tx,
            dialect: store.dialect,
            cfg,
            events,
            now,
            out: Vec::new(),
            began,
            lapsed: Vec::new(),
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
        measure(&self.out, &self.lapsed, self.began.elapsed());
        Ok(self.out)
    }

    async fn delete_confirmed(&mut self, ids: &[String]) -> Result<()> {
        crate::store::delete_outbox(&mut self.tx, self.dialect, ids).await
    }

    /// Records event ids in the inbox; returns those not applied before.
    async fn record_inbox(&mut self, event_ids: &[&str]) -> Result<HashSet<String>> {
        Ok(ferry_runtime::db::record_inbox(&mut self.tx, self.dialect, event_ids, self.now).await?)
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

    /// Builds an event of `job` in the span of the job's event in this batch, if there is one.
    fn in_job<T>(&self, job: &str, build: impl FnOnce() -> T) -> T {
        match self.spans.and_then(|s| s.get(job)) {
            Some(span) => span.in_scope(build),
            None => build(),
        }
    }

    fn emit_job(&mut self, ty: &str, job: &JobRow, state: JobStatus, reason: Option<String>) {
        let data = JobState {
            job_id: job.job_id.clone(),
            flow_id: job.flow_id.clone(),
            state,
            reason,
            tasks: job.total as u64,
        };
        let e = self.in_job(&job.job_id, || self.events.job(ty, &job.job_id, &data));
        self.out.push(e);
    }

    /// Reports tasks of one job changing state together (`tasks.cancelled`, `tasks.retrying`),
    /// in events of at most [`TasksState::MAX_TASKS`] tasks each.
    fn emit_tasks(
        &mut self,
        ty: &str,
        job_id: &str,
        state: TaskStatus,
        tasks: &[TaskAttempts],
        error: Option<&str>,
    ) {
        for chunk in tasks.chunks(TasksState::MAX_TASKS) {
            let data = TasksState {
                job_id: job_id.into(),
                state,
                tasks: chunk.to_vec(),
                error: error.map(str::to_string),
                at_ms: self.now,
            };
            let e = self.in_job(job_id, || self.events.job(ty, job_id, &data));
            self.out.push(e);
        }
    }

    fn emit_task(&mut self, ty: &str, data: TaskState) {
        let e = self.in_job(&data.job_id, || {
            self.events
                .task(ty, &data.job_id, &data.task_id, data.attempt_id.as_deref(), &data)
        });
        self.out.push(e);
    }

    fn emit_cancel(&mut self, job_id: &str, task_id: &str, attempt_id: &str, backend: &str, reason: &str) {
        let data = TaskCancel {
            job_id: job_id.into(),
            task_id: task_id.into(),
            attempt_id: attempt_id.into(),
            reason: Some(reason.into()),
        };
        let e = self.in_job(job_id, || {
            self.events
                .dispatch(kind::TASK_CANCEL, job_id, task_id, attempt_id, backend, &data)
        });
        self.out.push(e);
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

    fn add_ready(&mut self, job_id: &str, n: i64) {
        if n != 0 {
            self.count(job_id, |d| d.ready += n);
        }
    }

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

/// Rows of `task_id` and `attempts`, as the tasks of a `tasks.*` event.
fn task_attempts(rows: &[sqlx::any::AnyRow]) -> Result<Vec<TaskAttempts>> {
    use sqlx::Row;
    rows.iter()
        .map(|row| {
            Ok(TaskAttempts {
                task_id: row.try_get("task_id")?,
                attempts: u32::try_from(row.try_get::<i64, _>("attempts")?).unwrap_or(u32::MAX),
            })
        })
        .collect()
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
        subtasks: Vec::new(),
        subtask_backends: Vec::new(),
    }
}
