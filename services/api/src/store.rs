//! The read model: jobs, tasks, attempts and each job's state changes, in SQL.
//!
//! SQLite (one file, or in memory) or PostgreSQL, through sqlx's `Any` driver so that one set
//! of portable statements serves both. Every event is applied in a transaction that also records
//! its id in `inbox`, so a redelivered event changes nothing.
//!
//! Events arrive on two topics (control and lifecycle) whose relative order is not kept by every
//! broker, so no update may move a job or task backwards. Each row carries the ordering key of
//! the state it shows and an update applies only when its key is newer:
//!
//! - a job's `phase`: submitted 0, planned 1, running 2, finished 3 (succeeded, failed,
//!   cancelled, rejected); `job.started` with reason `retried` is the one way back from
//!   failed or cancelled to running;
//! - a task's `(attempt_no, phase)`: attempt `n` accepted or started `(n, 1)` (a start replaces
//!   an acceptance of the same attempt, never the other way), retrying after attempt `n`
//!   `(n, 2)`, finished after `n` attempts `(n, 3)`, re-queued by a job retry after `n` attempts
//!   `(n, 4)`; never dispatched `(0, 0)`. A late `task.started` of attempt 2 after `task.succeeded`
//!   with 2 attempts is `(2, 1) < (2, 3)` and changes nothing.

use std::collections::{BTreeMap, HashMap, HashSet};

use ferry_event::payload::{
    FlowDeployed, FlowUndeployed, JobPlanned, JobRejected, JobState, JobStatus, LauncherPresence, OutputFile,
    Problem, TaskAccepted, TaskFinished, TaskStarted, TaskState, TaskStatus, TasksState,
};
use ferry_event::{AttributesReader, Event, kind};
pub use ferry_runtime::db::Dialect;
use ferry_runtime::db::{self, param, placeholders, placeholders_with, sized};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sqlx::any::AnyRow;
use sqlx::{Any, AnyPool, Row, Transaction};

use crate::error::{Error, Result};

/// Job states shown by the read model.
pub const JOB_STATES: &[&str] = &[
    "submitted",
    "planned",
    "running",
    "succeeded",
    "failed",
    "cancelled",
    "rejected",
];

/// Task states shown by the read model. A dispatched task that has not started shows `pending`:
/// `task.dispatched` travels on the dispatch topics, which the api does not read. `accepted`:
/// its compute exists and waits on its platform (a pod Pending, a batch job RUNNABLE).
pub const TASK_STATES: &[&str] = &[
    "pending",
    "accepted",
    "running",
    "retrying",
    "succeeded",
    "failed",
    "cancelled",
];

/// Whether a job state is final (until a `job.retry`).
pub fn job_state_is_terminal(state: &str) -> bool {
    matches!(state, "succeeded" | "failed" | "cancelled" | "rejected")
}

/// Rows per multi-row `INSERT` of tasks (at most 5 parameters each).
const INSERT_CHUNK: usize = 500;

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS jobs (
        job_id TEXT PRIMARY KEY,
        flow_id TEXT,
        state TEXT NOT NULL,
        phase BIGINT NOT NULL,
        reason TEXT,
        problems TEXT,
        total BIGINT,
        changes BIGINT NOT NULL,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL
    )",
    "CREATE INDEX IF NOT EXISTS jobs_created ON jobs (created_at, job_id)",
    "CREATE TABLE IF NOT EXISTS tasks (
        job_id TEXT NOT NULL,
        task_id TEXT NOT NULL,
        ord BIGINT,
        state TEXT NOT NULL,
        attempt_no BIGINT NOT NULL,
        phase BIGINT NOT NULL,
        attempts BIGINT NOT NULL,
        attempt_id TEXT,
        started_at BIGINT,
        finished_at BIGINT,
        error TEXT,
        outputs TEXT,
        output_files TEXT,
        PRIMARY KEY (job_id, task_id)
    )",
    "CREATE TABLE IF NOT EXISTS attempts (
        attempt_id TEXT PRIMARY KEY,
        job_id TEXT NOT NULL,
        task_id TEXT NOT NULL,
        number BIGINT NOT NULL,
        started_at BIGINT,
        finished_at BIGINT,
        outcome TEXT,
        exit_code BIGINT,
        error TEXT,
        log_lines BIGINT
    )",
    "CREATE INDEX IF NOT EXISTS attempts_task ON attempts (job_id, task_id)",
    "CREATE TABLE IF NOT EXISTS changes (
        job_id TEXT NOT NULL,
        seq BIGINT NOT NULL,
        ty TEXT NOT NULL,
        task_id TEXT,
        state TEXT NOT NULL,
        detail TEXT NOT NULL,
        time_ms BIGINT NOT NULL,
        PRIMARY KEY (job_id, seq)
    )",
    // What each job id was submitted as (see `digest`), and the job's namespace.
    "CREATE TABLE IF NOT EXISTS submissions (
        job_id TEXT PRIMARY KEY,
        digest TEXT NOT NULL,
        namespace TEXT NOT NULL,
        at BIGINT NOT NULL
    )",
    "CREATE INDEX IF NOT EXISTS submissions_namespace ON submissions (namespace, job_id)",
    // Launchers as they last announced themselves (`launcher.presence`), by when the api heard.
    "CREATE TABLE IF NOT EXISTS launchers (
        backend TEXT NOT NULL,
        instance TEXT NOT NULL,
        capacity BIGINT NOT NULL,
        running BIGINT NOT NULL,
        seen_at BIGINT NOT NULL,
        leaving BIGINT NOT NULL,
        PRIMARY KEY (backend, instance)
    )",
    // Agents as they last announced themselves: their cluster and registered tasks (a JSON list
    // of `NAME@MAJOR.MINOR`). Each also has a row in `launchers`, as backend `agent`.
    "CREATE TABLE IF NOT EXISTS agents (
        instance TEXT PRIMARY KEY,
        cluster TEXT NOT NULL,
        tasks TEXT NOT NULL,
        capacity BIGINT NOT NULL,
        running BIGINT NOT NULL,
        seen_at BIGINT NOT NULL,
        leaving BIGINT NOT NULL
    )",
    // The planner's registry of deployed flows, as `flow.deployed` and `flow.undeployed` told
    // it: the last version heard of each flow (namespace `''` for none) and whether it is
    // deployed. An update applies only to a newer version (an undeploy to its own version too),
    // so a late or redelivered event never brings back what changed after it.
    "CREATE TABLE IF NOT EXISTS flows (
        namespace TEXT NOT NULL,
        flow_id TEXT NOT NULL,
        version BIGINT NOT NULL,
        deployed BIGINT NOT NULL,
        triggers TEXT NOT NULL,
        changed_at BIGINT NOT NULL,
        PRIMARY KEY (namespace, flow_id)
    )",
];

/// Columns added to tables after they were first made: added to a database that lacks them.
const ADDED_COLUMNS: &[(&str, &str, &str)] = &[
    // The task's backend from its plan (its runner type; for an agent task, the request it
    // routes to, `agent.CLUSTER.TASK.MAJOR.MINOR`): what a waiting task waits for.
    ("tasks", "backend", "TEXT"),
    // The compute of its current attempt, as `task.accepted`/`task.started` name it.
    ("tasks", "compute", "TEXT"),
    // How long the attempt held compute, from its `task.finished`.
    ("attempts", "compute_ms", "BIGINT"),
    // The task that submitted it, for a subtask (from the parent's `task.succeeded`).
    ("tasks", "parent", "TEXT"),
];

/// A deployed flow, as the planner's registry last announced it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FlowView {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub flow_id: String,
    pub version: u64,
    /// The flow's triggers, as written.
    pub triggers: Vec<Value>,
    pub deployed_at_ms: i64,
}

/// A launcher is taken to be running while its last announcement is younger than this.
const PRESENCE_TTL_MS: i64 = 3 * ferry_event::payload::PRESENCE_INTERVAL_MS;

/// A launcher as it last announced itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LauncherView {
    pub backend: String,
    pub instance: String,
    pub capacity: u32,
    pub running: u32,
    pub seen_at_ms: i64,
    /// It said it is stopping.
    pub leaving: bool,
    /// Heard from recently and not leaving: it takes work.
    pub live: bool,
}

/// An agent as it last announced itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentView {
    pub instance: String,
    pub cluster: String,
    /// The tasks it registered, `NAME@MAJOR.MINOR`.
    pub tasks: Vec<String>,
    pub capacity: u32,
    pub running: u32,
    pub seen_at_ms: i64,
    /// It said it is stopping.
    pub leaving: bool,
    /// Heard from recently and not leaving: it takes work.
    pub live: bool,
}

/// What [`ReadModel::reserve_submission`] found for a job id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reservation {
    /// The id was free and is now this submission's.
    New,
    /// The id is this same submission's already; `recorded` once it was published.
    Same { recorded: bool },
    /// The id is another submission's.
    Taken,
}

/// A job as the read model shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobView {
    pub job_id: String,
    /// Known once the job is planned (or from the submission the api accepted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow_id: Option<String>,
    /// One of [`JOB_STATES`].
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Why a rejected job was rejected.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<Problem>,
    /// Tasks in the job, and how many are in each of [`TASK_STATES`].
    pub counts: BTreeMap<String, u64>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

impl JobView {
    pub fn is_terminal(&self) -> bool {
        job_state_is_terminal(&self.state)
    }
}

/// A task of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskView {
    pub task_id: String,
    /// One of [`TASK_STATES`].
    pub state: String,
    /// Attempts made so far.
    pub attempts: u64,
    /// The current (or last) attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub outputs: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub output_files: Vec<OutputFile>,
    /// Its runner type (absent for tasks of jobs planned by older versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// The compute of its current attempt, as the platform names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compute: Option<String>,
    /// Why a task that has not started waits, when it is something other than its turn: no
    /// launcher of its backend is running, or its compute waits on its platform.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
    /// Milliseconds of compute its finished attempts held, all of them (what its platform
    /// bills); absent until one reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compute_ms: Option<u64>,
    /// For a subtask: the task that submitted it. Subtasks come after the job's other tasks,
    /// in the order they joined.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
}

/// A job with its tasks, in flow order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobDetail {
    #[serde(flatten)]
    pub job: JobView,
    /// Milliseconds of compute the job's finished attempts held, summed over its tasks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compute_ms: Option<u64>,
    pub tasks: Vec<TaskView>,
}

/// One state change of a job or of one of its tasks, numbered per job from 1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Change {
    pub seq: u64,
    /// The event type that made the change, e.g. `dev.ferry.task.succeeded`.
    #[serde(rename = "type")]
    pub ty: String,
    pub job_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    /// The job's state, or the task's when `taskId` is set.
    pub state: String,
    pub time_ms: i64,
    /// `attempts`, `attemptId`, `error`, `reason`, where the event carried them.
    #[serde(flatten)]
    pub detail: Map<String, Value>,
}

/// An attempt whose `task.finished` was seen, with the number of lines it logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinishedAttempt {
    pub attempt_id: String,
    pub task_id: String,
    pub log_lines: u64,
}

/// What applying one event did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Applied {
    /// Applied, or already applied before (a duplicate), or not an event the read model keeps.
    Done,
    /// The event's data cannot be read; it can never be applied.
    Invalid(String),
}

/// The read model's database.
#[derive(Debug, Clone)]
pub struct ReadModel {
    /// Where events are applied and submissions recorded.
    pool: AnyPool,
    /// Where reads go: on a SQLite file, connections of their own that do not wait for a
    /// transaction of [`pool`](Self::pool) to end (see [`db::open_readers`]).
    reads: AnyPool,
    dialect: Dialect,
}

/// Connections reading a SQLite read model at once: requests beyond them wait for one.
const READERS: u32 = 4;

impl ReadModel {
    /// Registers the read model's readiness check ([`ferry_runtime::health`]) while the
    /// returned value is kept.
    pub fn readiness(&self) -> ferry_runtime::health::Registered {
        ferry_runtime::db::readiness("read model database", &self.pool)
    }

    /// Opens (creating if needed) the database at `url`: `sqlite://PATH`, `sqlite::memory:` or
    /// `postgres://…`.
    pub async fn open(url: &str) -> Result<ReadModel> {
        let db::Db { pool, dialect } = db::open(url, "read model database")
            .await
            .map_err(|e| e.into_error(Error::Config, Error::Db))?;
        for stmt in SCHEMA.iter().chain(db::INBOX_SCHEMA) {
            db::create_if_missing(&pool, stmt).await?;
        }
        for (table, column, ty) in ADDED_COLUMNS {
            db::add_column(&pool, table, column, ty).await?;
        }
        let reads = db::open_readers(
            url,
            &db::Db {
                pool: pool.clone(),
                dialect,
            },
            READERS,
            "read model database",
        )
        .await
        .map_err(|e| e.into_error(Error::Config, Error::Db))?;
        Ok(ReadModel { pool, reads, dialect })
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    pub async fn close(&self) {
        self.reads.close().await;
        self.pool.close().await;
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    // ------------------------------------------------------------------------------------------
    // Writing
    // ------------------------------------------------------------------------------------------

    /// Records a submission the api published, so that the job is known (state `submitted`)
    /// before the planner has planned it. A job known already is left as it is.
    pub async fn record_submitted(&self, job_id: &str, flow_id: &str, at_ms: i64) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        ensure_job(&mut tx, job_id, at_ms).await?;
        sqlx::query("UPDATE jobs SET flow_id = $1 WHERE job_id = $2 AND flow_id IS NULL")
            .bind(flow_id.to_string())
            .bind(job_id.to_string())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Claims `job_id` for a submission whose planned job has `digest`, before it is published:
    /// a job id means one job.
    pub async fn reserve_submission(
        &self,
        job_id: &str,
        digest: &str,
        namespace: &str,
        at_ms: i64,
    ) -> Result<Reservation> {
        let mut tx = self.pool.begin().await?;
        let claimed = claim_submission(&mut tx, job_id, digest, namespace, at_ms).await?;
        let recorded: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM jobs WHERE job_id = $1")
            .bind(job_id.to_string())
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(match claimed {
            Claim::New => Reservation::New,
            Claim::Same => Reservation::Same {
                recorded: recorded > 0,
            },
            Claim::Taken => Reservation::Taken,
        })
    }

    /// Gives back a job id reserved for a submission that was not published, unless the job
    /// became known meanwhile.
    pub async fn release_submission(&self, job_id: &str, digest: &str) -> Result<()> {
        sqlx::query(
            "DELETE FROM submissions WHERE job_id = $1 AND digest = $2
             AND NOT EXISTS (SELECT 1 FROM jobs WHERE jobs.job_id = $1)",
        )
        .bind(job_id.to_string())
        .bind(digest.to_string())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The job's namespace, once its submission or plan is known.
    pub async fn namespace_of(&self, job_id: &str) -> Result<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT namespace FROM submissions WHERE job_id = $1")
                .bind(job_id.to_string())
                .fetch_optional(&self.reads)
                .await?,
        )
    }

    /// Applies a batch of events in one transaction: each one not applied before (by event id)
    /// changes the model and is recorded in the inbox. Returns what became of each event, in
    /// order. Fails (applying nothing) when the database does.
    pub(crate) async fn apply(&self, events: &[&Event]) -> Result<Vec<Applied>> {
        let now = ferry_event::now_ms();
        let decoded: Vec<_> = events.iter().map(|e| decode(e)).collect();
        let began = std::time::Instant::now();
        let mut tx = self.pool.begin().await?;
        // The batch's event ids go into the inbox together; those not there before apply.
        let ids: Vec<String> = events
            .iter()
            .zip(&decoded)
            // Presence is idempotent and frequent: it skips the inbox.
            .filter(|(_, d)| matches!(d, Ok(Some(i)) if !matches!(i, Input::Presence(_))))
            .map(|(e, _)| e.id().to_string())
            .collect();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        let mut fresh = db::record_inbox(&mut tx, self.dialect, &ids, now).await?;
        let mut known = Known::new(self.dialect);
        let mut out = Vec::with_capacity(events.len());
        for (event, input) in events.iter().zip(decoded) {
            let applied = match input {
                Ok(None) => Applied::Done,
                Err(reason) => Applied::Invalid(reason),
                Ok(Some(input @ Input::Presence(_))) => {
                    apply_input(&mut tx, &mut known, event, input, now).await?;
                    Applied::Done
                }
                Ok(Some(_)) if !fresh.remove(event.id()) => {
                    tracing::debug!(event_id = %event.id(), "event applied before; skipped");
                    Applied::Done
                }
                Ok(Some(input)) => {
                    apply_input(&mut tx, &mut known, event, input, now).await?;
                    Applied::Done
                }
            };
            out.push(applied);
        }
        write_changes(&mut tx, &mut known).await?;
        tx.commit().await?;
        ferry_runtime::metrics::db_transaction("read-model", began.elapsed());
        Ok(out)
    }

    /// Forgets inbox entries older than `older_than_ms` (ms since the epoch): redeliveries come
    /// within minutes, not days.
    pub async fn prune_inbox(&self, older_than_ms: i64) -> Result<u64> {
        Ok(db::prune_inbox(&self.pool, older_than_ms).await?)
    }

    // ------------------------------------------------------------------------------------------
    // Reading
    // ------------------------------------------------------------------------------------------

    /// Whether the job is known.
    pub async fn job_exists(&self, job_id: &str) -> Result<bool> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM jobs WHERE job_id = $1")
            .bind(job_id.to_string())
            .fetch_one(&self.reads)
            .await?;
        Ok(n > 0)
    }

    /// The output files of task `task_id` of the job (its last succeeded attempt's), `None`
    /// when the job has no such task.
    pub async fn output_files(&self, job_id: &str, task_id: &str) -> Result<Option<Vec<OutputFile>>> {
        let row: Option<Option<String>> =
            sqlx::query_scalar("SELECT output_files FROM tasks WHERE job_id = $1 AND task_id = $2")
                .bind(job_id.to_string())
                .bind(task_id.to_string())
                .fetch_optional(&self.reads)
                .await?;
        row.map(|files| match files {
            Some(f) => serde_json::from_str(&f)
                .map_err(|e| Error::Corrupt(format!("output files of task {task_id}: {e}"))),
            None => Ok(Vec::new()),
        })
        .transpose()
    }

    /// A transaction that sees one snapshot of the database, so that a job read with its
    /// tasks is consistent even while the read model commits (PostgreSQL's default isolation
    /// gives each statement its own snapshot).
    async fn snapshot(&self) -> Result<Tx> {
        let mut tx = self.reads.begin().await?;
        if self.dialect == Dialect::Postgres {
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
                .execute(&mut *tx)
                .await?;
        }
        Ok(tx)
    }

    /// The job, without its tasks.
    pub async fn job(&self, job_id: &str) -> Result<Option<JobView>> {
        let mut tx = self.snapshot().await?;
        let job = job_in(&mut tx, job_id).await?;
        tx.rollback().await?;
        Ok(job)
    }

    /// The newest `limit` jobs, newest first.
    pub async fn jobs(&self, limit: u32) -> Result<Vec<JobView>> {
        self.jobs_in(limit, None).await
    }

    /// The newest `limit` jobs of the given namespaces (of every one with `None`), newest first.
    pub async fn jobs_in(&self, limit: u32, namespaces: Option<&[String]>) -> Result<Vec<JobView>> {
        let mut tx = self.snapshot().await?;
        let filter = match namespaces {
            None => String::new(),
            Some(ns) => format!(
                "WHERE job_id IN (SELECT job_id FROM submissions WHERE namespace IN ({}))",
                (0..ns.len().max(1))
                    .map(|i| format!("${}", i + 2))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        let sql = format!("{JOB_SELECT} {filter} ORDER BY created_at DESC, job_id DESC LIMIT $1");
        let mut q = sqlx::query(&sql).bind(i64::from(limit));
        match namespaces {
            Some([]) => q = q.bind(String::new()),
            Some(ns) => {
                for n in ns {
                    q = q.bind(n.clone());
                }
            }
            None => {}
        }
        let rows = q.fetch_all(&mut *tx).await?;
        let mut jobs = rows.iter().map(job_view).collect::<Result<Vec<_>>>()?;
        let mut counts = counts_of(&mut tx, self.dialect, &jobs).await?;
        for job in &mut jobs {
            job.counts = counts.remove(&job.job_id).unwrap_or_else(|| tally(&[]));
        }
        tx.rollback().await?;
        Ok(jobs)
    }

    /// The job and its tasks in flow order (tasks seen before the job was planned last).
    pub async fn job_detail(&self, job_id: &str) -> Result<Option<JobDetail>> {
        let mut tx = self.snapshot().await?;
        let Some(job) = job_in(&mut tx, job_id).await? else {
            return Ok(None);
        };
        let rows = sqlx::query(
            "SELECT task_id, state, attempts, attempt_id, started_at, finished_at, error, outputs, output_files,
                    backend, compute, parent
             FROM tasks WHERE job_id = $1
             ORDER BY CASE WHEN ord IS NULL THEN 1 ELSE 0 END, ord, task_id",
        )
        .bind(job_id.to_string())
        .fetch_all(&mut *tx)
        .await?;
        let held = sqlx::query(
            "SELECT task_id, CAST(SUM(compute_ms) AS BIGINT) AS held FROM attempts
             WHERE job_id = $1 AND compute_ms IS NOT NULL GROUP BY task_id",
        )
        .bind(job_id.to_string())
        .fetch_all(&mut *tx)
        .await?;
        let live = live_backends(&mut tx).await?;
        tx.rollback().await?;
        let mut held = held
            .iter()
            .map(|r| Ok((r.try_get::<String, _>("task_id")?, r.try_get::<i64, _>("held")?)))
            .collect::<Result<HashMap<_, _>>>()?;
        let mut tasks = rows.iter().map(task_view).collect::<Result<Vec<_>>>()?;
        let mut compute_ms = None;
        for t in &mut tasks {
            t.waiting = waiting(t, &live);
            t.compute_ms = held.remove(&t.task_id).map(|ms| u64::try_from(ms).unwrap_or(0));
            if let Some(ms) = t.compute_ms {
                compute_ms = Some(compute_ms.unwrap_or(0) + ms);
            }
        }
        Ok(Some(JobDetail {
            job,
            compute_ms,
            tasks,
        }))
    }

    /// Every launcher heard from in the last day, live ones first, by backend.
    pub async fn launchers(&self) -> Result<Vec<LauncherView>> {
        let now = ferry_event::now_ms();
        let rows = sqlx::query(
            "SELECT backend, instance, capacity, running, seen_at, leaving FROM launchers
             WHERE seen_at >= $1 ORDER BY backend, instance",
        )
        .bind(now - 24 * 3600 * 1000)
        .fetch_all(&self.reads)
        .await?;
        let mut out = rows
            .iter()
            .map(|r| {
                let seen_at_ms: i64 = r.try_get("seen_at")?;
                let leaving = r.try_get::<i64, _>("leaving")? != 0;
                Ok(LauncherView {
                    backend: r.try_get("backend")?,
                    instance: r.try_get("instance")?,
                    capacity: u32::try_from(r.try_get::<i64, _>("capacity")?).unwrap_or(0),
                    running: u32::try_from(r.try_get::<i64, _>("running")?).unwrap_or(0),
                    seen_at_ms,
                    leaving,
                    live: !leaving && seen_at_ms >= now - PRESENCE_TTL_MS,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        out.sort_by_key(|l| !l.live);
        Ok(out)
    }

    /// Every agent heard from in the last day, live ones first, by cluster.
    pub async fn agents(&self) -> Result<Vec<AgentView>> {
        let now = ferry_event::now_ms();
        let rows = sqlx::query(
            "SELECT instance, cluster, tasks, capacity, running, seen_at, leaving FROM agents
             WHERE seen_at >= $1 ORDER BY cluster, instance",
        )
        .bind(now - 24 * 3600 * 1000)
        .fetch_all(&self.reads)
        .await?;
        let mut out = rows
            .iter()
            .map(|r| {
                let instance: String = r.try_get("instance")?;
                let tasks: String = r.try_get("tasks")?;
                let seen_at_ms: i64 = r.try_get("seen_at")?;
                let leaving = r.try_get::<i64, _>("leaving")? != 0;
                Ok(AgentView {
                    tasks: serde_json::from_str(&tasks)
                        .map_err(|e| Error::Corrupt(format!("tasks of agent {instance}: {e}")))?,
                    cluster: r.try_get("cluster")?,
                    capacity: u32::try_from(r.try_get::<i64, _>("capacity")?).unwrap_or(0),
                    running: u32::try_from(r.try_get::<i64, _>("running")?).unwrap_or(0),
                    seen_at_ms,
                    leaving,
                    live: !leaving && seen_at_ms >= now - PRESENCE_TTL_MS,
                    instance,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        out.sort_by_key(|a| !a.live);
        Ok(out)
    }

    /// The deployed flows, by namespace and id; only those of `namespaces` when given (a flow
    /// without a namespace is in `default`).
    pub async fn flows(&self, namespaces: Option<&[String]>) -> Result<Vec<FlowView>> {
        let rows = sqlx::query(
            "SELECT namespace, flow_id, version, triggers, changed_at FROM flows
             WHERE deployed = 1 ORDER BY namespace, flow_id",
        )
        .fetch_all(&self.reads)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let namespace: String = r.try_get("namespace")?;
            let visible = namespaces.is_none_or(|allowed| {
                let ns = if namespace.is_empty() {
                    "default"
                } else {
                    namespace.as_str()
                };
                allowed.iter().any(|a| a == ns)
            });
            if !visible {
                continue;
            }
            let triggers: String = r.try_get("triggers")?;
            let flow_id: String = r.try_get("flow_id")?;
            let triggers = serde_json::from_str(&triggers)
                .map_err(|e| Error::Corrupt(format!("triggers of flow {flow_id}: {e}")))?;
            out.push(FlowView {
                namespace: (!namespace.is_empty()).then_some(namespace),
                flow_id,
                version: u64::try_from(r.try_get::<i64, _>("version")?).unwrap_or(0),
                triggers,
                deployed_at_ms: r.try_get("changed_at")?,
            });
        }
        Ok(out)
    }

    /// The job's changes after `after` (a [`Change::seq`]), oldest first, at most `limit`.
    pub async fn changes(&self, job_id: &str, after: u64, limit: u32) -> Result<Vec<Change>> {
        let rows = sqlx::query(
            "SELECT seq, ty, task_id, state, detail, time_ms FROM changes
             WHERE job_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .bind(job_id.to_string())
        .bind(i64::try_from(after).unwrap_or(i64::MAX))
        .bind(i64::from(limit))
        .fetch_all(&self.reads)
        .await?;
        rows.iter()
            .map(|r| {
                let detail: String = r.try_get("detail")?;
                let detail = match serde_json::from_str(&detail) {
                    Ok(Value::Object(m)) => m,
                    _ => {
                        return Err(Error::Corrupt(format!(
                            "change detail of job {job_id}: {detail:?}"
                        )));
                    }
                };
                Ok(Change {
                    seq: u64::try_from(r.try_get::<i64, _>("seq")?).unwrap_or(0),
                    ty: r.try_get("ty")?,
                    job_id: job_id.to_string(),
                    task_id: r.try_get("task_id")?,
                    state: r.try_get("state")?,
                    time_ms: r.try_get("time_ms")?,
                    detail,
                })
            })
            .collect()
    }

    /// The attempts of the job (or of one task) whose `task.finished` was seen.
    pub async fn finished_attempts(
        &self,
        job_id: &str,
        task_id: Option<&str>,
    ) -> Result<Vec<FinishedAttempt>> {
        let mut sql = "SELECT attempt_id, task_id, log_lines FROM attempts
             WHERE job_id = $1 AND log_lines IS NOT NULL"
            .to_string();
        if task_id.is_some() {
            sql.push_str(" AND task_id = $2");
        }
        let mut q = sqlx::query(&sql).bind(job_id.to_string());
        if let Some(t) = task_id {
            q = q.bind(t.to_string());
        }
        let rows = q.fetch_all(&self.reads).await?;
        rows.iter()
            .map(|r| {
                Ok(FinishedAttempt {
                    attempt_id: r.try_get("attempt_id")?,
                    task_id: r.try_get("task_id")?,
                    log_lines: u64::try_from(r.try_get::<i64, _>("log_lines")?).unwrap_or(0),
                })
            })
            .collect()
    }

    /// Tasks of the job (or the one task) that succeeded or failed on an attempt whose
    /// `task.finished` has not been seen yet: their line counts are still to come.
    pub async fn unreported_attempts(&self, job_id: &str, task_id: Option<&str>) -> Result<u64> {
        let mut sql = "SELECT COUNT(*) FROM tasks t
             WHERE t.job_id = $1 AND t.state IN ('succeeded', 'failed') AND t.attempt_id IS NOT NULL
               AND NOT EXISTS (SELECT 1 FROM attempts a
                               WHERE a.attempt_id = t.attempt_id AND a.log_lines IS NOT NULL)"
            .to_string();
        if task_id.is_some() {
            sql.push_str(" AND t.task_id = $2");
        }
        let mut q = sqlx::query_scalar::<_, i64>(&sql).bind(job_id.to_string());
        if let Some(t) = task_id {
            q = q.bind(t.to_string());
        }
        Ok(u64::try_from(q.fetch_one(&self.reads).await?).unwrap_or(0))
    }
}

const JOB_SELECT: &str = "SELECT job_id, flow_id, state, reason, problems, created_at, updated_at FROM jobs";

async fn job_in(tx: &mut Tx, job_id: &str) -> Result<Option<JobView>> {
    let row = sqlx::query(&format!("{JOB_SELECT} WHERE job_id = $1"))
        .bind(job_id.to_string())
        .fetch_optional(&mut **tx)
        .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let mut job = job_view(&row)?;
    job.counts = counts_in(tx, job_id).await?;
    Ok(Some(job))
}

/// How many of the job's tasks are in each state, and `total`.
async fn counts_in(tx: &mut Tx, job_id: &str) -> Result<BTreeMap<String, u64>> {
    let rows = sqlx::query("SELECT state, COUNT(*) AS n FROM tasks WHERE job_id = $1 GROUP BY state")
        .bind(job_id.to_string())
        .fetch_all(&mut **tx)
        .await?;
    let mut pairs = Vec::with_capacity(rows.len());
    for r in &rows {
        pairs.push((r.try_get("state")?, r.try_get::<i64, _>("n")?));
    }
    Ok(tally(&pairs))
}

/// The task counts of each of `jobs`, in one statement (a listing is one round trip to the
/// database, not one per job).
async fn counts_of(
    tx: &mut Tx,
    dialect: Dialect,
    jobs: &[JobView],
) -> Result<std::collections::HashMap<String, BTreeMap<String, u64>>> {
    let mut out = std::collections::HashMap::with_capacity(jobs.len());
    if jobs.is_empty() {
        return Ok(out);
    }
    let sql = format!(
        "SELECT job_id, state, COUNT(*) AS n FROM tasks WHERE job_id IN ({}) GROUP BY job_id, state",
        db::in_list(dialect, jobs.len())
    );
    let mut q = sized(&sql, jobs.len());
    for j in jobs {
        q = q.bind(j.job_id.clone());
    }
    let mut pairs: std::collections::HashMap<String, Vec<(String, i64)>> = std::collections::HashMap::new();
    for r in q.fetch_all(&mut **tx).await? {
        pairs
            .entry(r.try_get("job_id")?)
            .or_default()
            .push((r.try_get("state")?, r.try_get("n")?));
    }
    for (job, p) in pairs {
        out.insert(job, tally(&p));
    }
    Ok(out)
}

/// Counts by state (every state present, zero where none) and their total.
fn tally(pairs: &[(String, i64)]) -> BTreeMap<String, u64> {
    let mut counts: BTreeMap<String, u64> = TASK_STATES.iter().map(|s| (s.to_string(), 0)).collect();
    let mut total = 0;
    for (state, n) in pairs {
        let n = u64::try_from(*n).unwrap_or(0);
        total += n;
        *counts.entry(state.clone()).or_default() += n;
    }
    counts.insert("total".into(), total);
    counts
}

fn job_view(r: &AnyRow) -> Result<JobView> {
    let job_id: String = r.try_get("job_id")?;
    let problems: Option<String> = r.try_get("problems")?;
    let problems = match problems {
        Some(p) => {
            serde_json::from_str(&p).map_err(|e| Error::Corrupt(format!("problems of job {job_id}: {e}")))?
        }
        None => Vec::new(),
    };
    Ok(JobView {
        flow_id: r.try_get("flow_id")?,
        state: r.try_get("state")?,
        reason: r.try_get("reason")?,
        problems,
        counts: BTreeMap::new(),
        created_at_ms: r.try_get("created_at")?,
        updated_at_ms: r.try_get("updated_at")?,
        job_id,
    })
}

/// The backends at least one running launcher serves: agents serve one per task version.
async fn live_backends(tx: &mut Tx) -> Result<HashSet<String>> {
    let since = ferry_event::now_ms() - PRESENCE_TTL_MS;
    let rows = sqlx::query("SELECT DISTINCT backend FROM launchers WHERE leaving = 0 AND seen_at >= $1")
        .bind(since)
        .fetch_all(&mut **tx)
        .await?;
    let mut live: HashSet<String> = rows
        .iter()
        .map(|r| Ok(r.try_get("backend")?))
        .collect::<Result<_>>()?;
    let agents = sqlx::query("SELECT cluster, tasks FROM agents WHERE leaving = 0 AND seen_at >= $1")
        .bind(since)
        .fetch_all(&mut **tx)
        .await?;
    for r in agents {
        let cluster: String = r.try_get("cluster")?;
        let tasks: String = r.try_get("tasks")?;
        let tasks: Vec<String> = serde_json::from_str(&tasks).unwrap_or_default();
        for task in tasks
            .iter()
            .filter_map(|t| t.parse::<ferry_event::agent::TaskRef>().ok())
        {
            live.extend(ferry_event::agent::served(&cluster, &task));
        }
    }
    Ok(live)
}

/// Why `task` waits, if it is for something other than its turn.
fn waiting(task: &TaskView, live: &HashSet<String>) -> Option<String> {
    match task.state.as_str() {
        "accepted" => Some(match &task.compute {
            Some(c) => format!("its compute {c} waits on its platform to run"),
            None => "its compute waits on its platform to run".into(),
        }),
        "pending" | "retrying" => {
            let backend = task.backend.as_deref()?;
            if live.contains(backend) {
                return None;
            }
            if let Some(waits) = ferry_event::agent::waits_for(backend) {
                return Some(format!(
                    "{waits}: none is running (none announced itself in the last {}s); queued until one starts",
                    PRESENCE_TTL_MS / 1000
                ));
            }
            Some(format!(
                "no launcher for backend `{backend}` is running (none announced itself in the last {}s)",
                PRESENCE_TTL_MS / 1000
            ))
        }
        _ => None,
    }
}

fn task_view(r: &AnyRow) -> Result<TaskView> {
    let task_id: String = r.try_get("task_id")?;
    let outputs: Option<String> = r.try_get("outputs")?;
    let files: Option<String> = r.try_get("output_files")?;
    let corrupt = |what: &str, e: serde_json::Error| Error::Corrupt(format!("{what} of task {task_id}: {e}"));
    Ok(TaskView {
        backend: r.try_get("backend")?,
        compute: r.try_get("compute")?,
        waiting: None,
        compute_ms: None,
        parent: r.try_get("parent")?,
        state: r.try_get("state")?,
        attempts: u64::try_from(r.try_get::<i64, _>("attempts")?).unwrap_or(0),
        attempt_id: r.try_get("attempt_id")?,
        started_at_ms: r.try_get("started_at")?,
        finished_at_ms: r.try_get("finished_at")?,
        error: r.try_get("error")?,
        outputs: match outputs {
            Some(o) => serde_json::from_str(&o).map_err(|e| corrupt("outputs", e))?,
            None => Map::new(),
        },
        output_files: match files {
            Some(f) => serde_json::from_str(&f).map_err(|e| corrupt("output files", e))?,
            None => Vec::new(),
        },
        task_id: task_id.clone(),
    })
}

// ----------------------------------------------------------------------------------------------
// Applying events
// ----------------------------------------------------------------------------------------------

type Tx = Transaction<'static, Any>;

/// The payload an event carries, for the types the read model keeps.
enum Input {
    Planned(Box<JobPlanned>),
    Rejected(JobRejected),
    Job(JobState),
    Accepted(TaskAccepted),
    Started(TaskStarted),
    Finished(Box<TaskFinished>),
    Task(Box<TaskState>),
    Tasks(TasksState),
    Presence(LauncherPresence),
    Deployed(FlowDeployed),
    Undeployed(FlowUndeployed),
}

fn decode(event: &Event) -> std::result::Result<Option<Input>, String> {
    let d = |e: ferry_event::DecodeError| e.to_string();
    Ok(Some(match event.ty() {
        kind::JOB_PLANNED => Input::Planned(Box::new(ferry_event::decode(event).map_err(d)?)),
        kind::JOB_REJECTED => Input::Rejected(ferry_event::decode(event).map_err(d)?),
        kind::JOB_STARTED | kind::JOB_SUCCEEDED | kind::JOB_FAILED | kind::JOB_CANCELLED => {
            Input::Job(ferry_event::decode(event).map_err(d)?)
        }
        kind::TASK_ACCEPTED => Input::Accepted(ferry_event::decode(event).map_err(d)?),
        kind::LAUNCHER_PRESENCE => Input::Presence(ferry_event::decode(event).map_err(d)?),
        kind::FLOW_DEPLOYED => Input::Deployed(ferry_event::decode(event).map_err(d)?),
        kind::FLOW_UNDEPLOYED => Input::Undeployed(ferry_event::decode(event).map_err(d)?),
        kind::TASK_STARTED => Input::Started(ferry_event::decode(event).map_err(d)?),
        kind::TASK_FINISHED => Input::Finished(Box::new(ferry_event::decode(event).map_err(d)?)),
        kind::TASK_RETRYING | kind::TASK_SUCCEEDED | kind::TASK_FAILED | kind::TASK_CANCELLED => {
            Input::Task(Box::new(ferry_event::decode(event).map_err(d)?))
        }
        kind::TASKS_CANCELLED | kind::TASKS_RETRYING => Input::Tasks(ferry_event::decode(event).map_err(d)?),
        _ => return Ok(None),
    }))
}

/// What one transaction has made sure of or has yet to write.
struct Known {
    /// The placeholders multi-row statements use.
    dialect: Dialect,
    /// Jobs that have a row.
    jobs: HashSet<String>,
    /// Each job's change counter, as numbered in this transaction.
    counters: std::collections::HashMap<String, Counter>,
    /// Changes not written yet.
    changes: Vec<NewChange>,
}

impl Known {
    fn new(dialect: Dialect) -> Known {
        Known {
            dialect,
            jobs: HashSet::new(),
            counters: std::collections::HashMap::new(),
            changes: Vec::new(),
        }
    }
}

struct Counter {
    seq: i64,
    updated_at: i64,
    /// Numbered past what the job's row says.
    moved: bool,
}

/// A row of `changes`, to be written.
struct NewChange {
    job_id: String,
    seq: i64,
    ty: String,
    task_id: Option<String>,
    state: String,
    detail: String,
    time_ms: i64,
}

async fn apply_input(tx: &mut Tx, known: &mut Known, event: &Event, input: Input, now: i64) -> Result<()> {
    let at = event.time().map(|t| t.timestamp_millis()).unwrap_or(now);
    let ty = event.ty();
    match input {
        Input::Planned(p) => on_planned(tx, known, ty, &p, at).await,
        Input::Rejected(r) => on_rejected(tx, known, ty, &r, at).await,
        Input::Job(s) => on_job_state(tx, known, ty, &s, at).await,
        Input::Accepted(a) => on_task_accepted(tx, known, ty, &a, at).await,
        Input::Started(s) => on_task_started(tx, known, ty, &s, at).await,
        Input::Finished(f) => on_task_finished(tx, &f, at).await,
        Input::Task(s) => on_task_state(tx, known, ty, &s, at).await,
        Input::Tasks(s) => on_tasks_state(tx, known, ty, &s, at).await,
        // Timed by when it was heard: launchers' clocks do not matter.
        Input::Presence(p) => on_presence(tx, &p, now).await,
        Input::Deployed(d) => on_deployed(tx, &d).await,
        Input::Undeployed(u) => on_undeployed(tx, &u).await,
    }
}

async fn on_deployed(tx: &mut Tx, d: &FlowDeployed) -> Result<()> {
    let triggers = serde_json::to_string(&d.triggers).unwrap_or_else(|_| "[]".into());
    sqlx::query(
        "INSERT INTO flows (namespace, flow_id, version, deployed, triggers, changed_at)
         VALUES ($1, $2, $3, 1, $4, $5)
         ON CONFLICT (namespace, flow_id) DO UPDATE SET version = excluded.version, deployed = 1,
            triggers = excluded.triggers, changed_at = excluded.changed_at
         WHERE flows.version < excluded.version",
    )
    .bind(d.namespace.clone().unwrap_or_default())
    .bind(d.flow_id.clone())
    .bind(i64::try_from(d.version).unwrap_or(i64::MAX))
    .bind(triggers)
    .bind(d.deployed_at_ms)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn on_undeployed(tx: &mut Tx, u: &FlowUndeployed) -> Result<()> {
    sqlx::query(
        "INSERT INTO flows (namespace, flow_id, version, deployed, triggers, changed_at)
         VALUES ($1, $2, $3, 0, '[]', $4)
         ON CONFLICT (namespace, flow_id) DO UPDATE SET version = excluded.version, deployed = 0,
            changed_at = excluded.changed_at
         WHERE flows.version <= excluded.version",
    )
    .bind(u.namespace.clone().unwrap_or_default())
    .bind(u.flow_id.clone())
    .bind(i64::try_from(u.version).unwrap_or(i64::MAX))
    .bind(u.undeployed_at_ms)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn on_presence(tx: &mut Tx, p: &LauncherPresence, now: i64) -> Result<()> {
    sqlx::query(
        "INSERT INTO launchers (backend, instance, capacity, running, seen_at, leaving)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (backend, instance) DO UPDATE SET capacity = excluded.capacity,
            running = excluded.running, seen_at = excluded.seen_at, leaving = excluded.leaving",
    )
    .bind(p.backend.clone())
    .bind(p.instance.clone())
    .bind(i64::from(p.capacity))
    .bind(i64::from(p.running))
    .bind(now)
    .bind(i64::from(p.leaving))
    .execute(&mut **tx)
    .await?;
    sqlx::query("DELETE FROM launchers WHERE seen_at < $1")
        .bind(now - 24 * 3600 * 1000)
        .execute(&mut **tx)
        .await?;
    if let Some(cluster) = &p.cluster {
        sqlx::query(
            "INSERT INTO agents (instance, cluster, tasks, capacity, running, seen_at, leaving)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (instance) DO UPDATE SET cluster = excluded.cluster, tasks = excluded.tasks,
                capacity = excluded.capacity, running = excluded.running, seen_at = excluded.seen_at,
                leaving = excluded.leaving",
        )
        .bind(p.instance.clone())
        .bind(cluster.clone())
        .bind(serde_json::to_string(&p.tasks).unwrap_or_else(|_| "[]".into()))
        .bind(i64::from(p.capacity))
        .bind(i64::from(p.running))
        .bind(now)
        .bind(i64::from(p.leaving))
        .execute(&mut **tx)
        .await?;
        sqlx::query("DELETE FROM agents WHERE seen_at < $1")
            .bind(now - 24 * 3600 * 1000)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// [`ensure_job`], once per job and transaction.
async fn ensure_known_job(tx: &mut Tx, known: &mut Known, job_id: &str, at: i64) -> Result<()> {
    if !known.jobs.contains(job_id) {
        ensure_job(tx, job_id, at).await?;
        known.jobs.insert(job_id.to_string());
    }
    Ok(())
}

/// Gives a task (and its job) a row when it has none: for an event that arrived before its job's
/// plan (they travel on different topics). Planned tasks have their rows already, so the
/// handlers update first and call this only when no row matched. True when it inserted one.
async fn insert_task(tx: &mut Tx, known: &mut Known, job_id: &str, task_id: &str, at: i64) -> Result<bool> {
    ensure_known_job(tx, known, job_id, at).await?;
    let inserted = sqlx::query(
        "INSERT INTO tasks (job_id, task_id, state, attempt_no, phase, attempts)
         VALUES ($1, $2, 'pending', 0, 0, 0) ON CONFLICT DO NOTHING",
    )
    .bind(job_id.to_string())
    .bind(task_id.to_string())
    .execute(&mut **tx)
    .await?
    .rows_affected();
    Ok(inserted > 0)
}

async fn ensure_job(tx: &mut Tx, job_id: &str, at: i64) -> Result<()> {
    sqlx::query(
        "INSERT INTO jobs (job_id, state, phase, changes, created_at, updated_at)
         VALUES ($1, 'submitted', 0, 0, $2, $2) ON CONFLICT DO NOTHING",
    )
    .bind(job_id.to_string())
    .bind(at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Appends a change to the job's list; the job row's counter numbers it. The first change of
/// a job in a transaction moves the counter (and, on PostgreSQL, locks the row so that a job's
/// changes commit in their order); later ones are numbered from it and everything is written by
/// [`write_changes`].
#[allow(clippy::too_many_arguments)]
async fn record_change(
    tx: &mut Tx,
    known: &mut Known,
    job_id: &str,
    ty: &str,
    task_id: Option<&str>,
    state: &str,
    detail: Map<String, Value>,
    at: i64,
) -> Result<()> {
    let seq = match known.counters.get_mut(job_id) {
        Some(c) => {
            c.seq += 1;
            c.updated_at = c.updated_at.max(at);
            c.moved = true;
            c.seq
        }
        None => {
            let seq: i64 = sqlx::query_scalar(
                "UPDATE jobs SET changes = changes + 1, updated_at = $1 WHERE job_id = $2 RETURNING changes",
            )
            .bind(at)
            .bind(job_id.to_string())
            .fetch_one(&mut **tx)
            .await?;
            let counter = Counter {
                seq,
                updated_at: at,
                moved: false,
            };
            known.counters.insert(job_id.to_string(), counter);
            seq
        }
    };
    known.changes.push(NewChange {
        job_id: job_id.to_string(),
        seq,
        ty: ty.to_string(),
        task_id: task_id.map(str::to_string),
        state: state.to_string(),
        detail: Value::Object(detail).to_string(),
        time_ms: at,
    });
    if known.changes.len() >= CHANGE_ROWS {
        write_changes(tx, known).await?;
    }
    Ok(())
}

/// Changes per multi-row `INSERT`.
const CHANGE_ROWS: usize = 100;

/// Writes the changes recorded so far and the counters numbered past their row.
async fn write_changes(tx: &mut Tx, known: &mut Known) -> Result<()> {
    for chunk in known.changes.chunks(CHANGE_ROWS) {
        let values = placeholders(known.dialect, chunk.len(), 7);
        let sql =
            format!("INSERT INTO changes (job_id, seq, ty, task_id, state, detail, time_ms) VALUES {values}");
        let mut q = sized(&sql, chunk.len());
        for c in chunk {
            q = q
                .bind(c.job_id.clone())
                .bind(c.seq)
                .bind(c.ty.clone())
                .bind(c.task_id.clone())
                .bind(c.state.clone())
                .bind(c.detail.clone())
                .bind(c.time_ms);
        }
        q.execute(&mut **tx).await?;
    }
    known.changes.clear();
    for (job_id, c) in known.counters.iter_mut().filter(|(_, c)| c.moved) {
        sqlx::query("UPDATE jobs SET changes = $1, updated_at = $2 WHERE job_id = $3")
            .bind(c.seq)
            .bind(c.updated_at)
            .bind(job_id.clone())
            .execute(&mut **tx)
            .await?;
        c.moved = false;
    }
    Ok(())
}

fn detail(pairs: impl IntoIterator<Item = (&'static str, Option<Value>)>) -> Map<String, Value> {
    pairs
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k.to_string(), v)))
        .collect()
}

/// What claiming a job id for a submission found.
enum Claim {
    New,
    Same,
    Taken,
}

async fn claim_submission(
    tx: &mut Tx,
    job_id: &str,
    digest: &str,
    namespace: &str,
    at: i64,
) -> Result<Claim> {
    let inserted = sqlx::query(
        "INSERT INTO submissions (job_id, digest, namespace, at) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
    )
    .bind(job_id.to_string())
    .bind(digest.to_string())
    .bind(namespace.to_string())
    .bind(at)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if inserted > 0 {
        return Ok(Claim::New);
    }
    let held: Option<String> = sqlx::query_scalar("SELECT digest FROM submissions WHERE job_id = $1")
        .bind(job_id.to_string())
        .fetch_optional(&mut **tx)
        .await?;
    Ok(match held {
        Some(d) if d == digest => Claim::Same,
        _ => Claim::Taken,
    })
}

async fn on_planned(tx: &mut Tx, known: &mut Known, ty: &str, p: &JobPlanned, at: i64) -> Result<()> {
    // A job id means one job: the plan of another submission under a taken id changes nothing.
    let digest = crate::digest::of_plan(p);
    let namespace = crate::digest::namespace_of(p);
    if let Claim::Taken = claim_submission(tx, &p.job_id, &digest, namespace, at).await? {
        tracing::warn!(
            job_id = %p.job_id,
            flow_id = %p.flow_id,
            "job.planned of another submission under a job id already in use; ignored"
        );
        return Ok(());
    }
    ensure_known_job(tx, known, &p.job_id, at).await?;
    sqlx::query("UPDATE jobs SET flow_id = $1, total = $2 WHERE job_id = $3")
        .bind(p.flow_id.clone())
        .bind(i64::try_from(p.tasks.len()).unwrap_or(i64::MAX))
        .bind(p.job_id.clone())
        .execute(&mut **tx)
        .await?;
    let moved = sqlx::query("UPDATE jobs SET state = 'planned', phase = 1 WHERE job_id = $1 AND phase < 1")
        .bind(p.job_id.clone())
        .execute(&mut **tx)
        .await?
        .rows_affected();
    for (ci, chunk) in p.tasks.chunks(INSERT_CHUNK).enumerate() {
        let values = placeholders_with(known.dialect, chunk.len(), 4, "'pending', 0, 0, 0");
        let sql = format!(
            "INSERT INTO tasks (job_id, task_id, ord, backend, state, attempt_no, phase, attempts) VALUES {values}
             ON CONFLICT (job_id, task_id) DO UPDATE SET ord = excluded.ord, backend = excluded.backend"
        );
        let mut q = sized(&sql, chunk.len());
        for (i, t) in chunk.iter().enumerate() {
            let ord = i64::try_from(ci * INSERT_CHUNK + i).unwrap_or(i64::MAX);
            q = q
                .bind(p.job_id.clone())
                .bind(t.id.clone())
                .bind(ord)
                .bind(t.runner.route().into_owned());
        }
        q.execute(&mut **tx).await?;
    }
    if moved > 0 {
        let d = detail([("tasks", Some(Value::from(p.tasks.len())))]);
        record_change(tx, known, &p.job_id, ty, None, "planned", d, at).await?;
    }
    Ok(())
}

async fn on_rejected(tx: &mut Tx, known: &mut Known, ty: &str, r: &JobRejected, at: i64) -> Result<()> {
    ensure_known_job(tx, known, &r.job_id, at).await?;
    let reason = match r.problems.as_slice() {
        [] => "rejected".to_string(),
        [one] => one.to_string(),
        [first, rest @ ..] => format!("{first} (and {} more problems)", rest.len()),
    };
    let problems = serde_json::to_string(&r.problems).unwrap_or_else(|_| "[]".into());
    let moved = sqlx::query(
        // Only a job not planned yet: a planned job was accepted, and a rejection under its id
        // is of another submission.
        "UPDATE jobs SET state = 'rejected', phase = 3, reason = $1, problems = $2 WHERE job_id = $3 AND phase < 1",
    )
    .bind(reason.clone())
    .bind(problems)
    .bind(r.job_id.clone())
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if moved > 0 {
        let d = detail([("reason", Some(Value::from(reason)))]);
        record_change(tx, known, &r.job_id, ty, None, "rejected", d, at).await?;
    }
    Ok(())
}

async fn on_job_state(tx: &mut Tx, known: &mut Known, ty: &str, s: &JobState, at: i64) -> Result<()> {
    ensure_known_job(tx, known, &s.job_id, at).await?;
    sqlx::query(
        "UPDATE jobs SET flow_id = COALESCE(flow_id, $1), total = COALESCE(total, $2) WHERE job_id = $3",
    )
    .bind(s.flow_id.clone())
    .bind(i64::try_from(s.tasks).unwrap_or(i64::MAX))
    .bind(s.job_id.clone())
    .execute(&mut **tx)
    .await?;
    let retried = s.state == JobStatus::Running && s.reason.as_deref() == Some("retried");
    let sql = match (s.state.is_terminal(), retried) {
        (true, _) => "UPDATE jobs SET state = $1, phase = 3, reason = $2 WHERE job_id = $3 AND phase < 3",
        (false, false) => {
            "UPDATE jobs SET state = $1, phase = 2, reason = $2 WHERE job_id = $3 AND phase < 2"
        }
        (false, true) => {
            "UPDATE jobs SET state = $1, phase = 2, reason = $2
             WHERE job_id = $3 AND (phase < 2 OR state IN ('failed', 'cancelled'))"
        }
    };
    let moved = sqlx::query(sql)
        .bind(s.state.as_str())
        .bind(s.reason.clone())
        .bind(s.job_id.clone())
        .execute(&mut **tx)
        .await?
        .rows_affected();
    if moved > 0 {
        let d = detail([("reason", s.reason.clone().map(Value::from))]);
        record_change(tx, known, &s.job_id, ty, None, s.state.as_str(), d, at).await?;
    }
    Ok(())
}

async fn on_task_accepted(tx: &mut Tx, known: &mut Known, ty: &str, a: &TaskAccepted, at: i64) -> Result<()> {
    let n = i64::from(a.attempt);
    let update = || {
        sqlx::query(
            "UPDATE tasks SET state = 'accepted', attempt_no = $1, phase = 1, attempts = $1, attempt_id = $2,
                    finished_at = NULL, error = NULL, compute = $3
             WHERE job_id = $4 AND task_id = $5 AND (attempt_no < $1 OR (attempt_no = $1 AND phase < 1))",
        )
        .bind(n)
        .bind(a.attempt_id.clone())
        .bind(a.compute.clone())
        .bind(a.job_id.clone())
        .bind(a.task_id.clone())
    };
    let mut moved = update().execute(&mut **tx).await?.rows_affected();
    if moved == 0 && insert_task(tx, known, &a.job_id, &a.task_id, at).await? {
        moved = update().execute(&mut **tx).await?.rows_affected();
    }
    if moved > 0 {
        let d = detail([
            ("attempts", Some(Value::from(a.attempt))),
            ("attemptId", Some(Value::from(a.attempt_id.clone()))),
            ("compute", a.compute.clone().map(Value::from)),
        ]);
        record_change(tx, known, &a.job_id, ty, Some(&a.task_id), "accepted", d, at).await?;
    }
    Ok(())
}

async fn on_task_started(tx: &mut Tx, known: &mut Known, ty: &str, s: &TaskStarted, at: i64) -> Result<()> {
    sqlx::query(
        "INSERT INTO attempts (attempt_id, job_id, task_id, number, started_at) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (attempt_id) DO UPDATE SET started_at = excluded.started_at",
    )
    .bind(s.attempt_id.clone())
    .bind(s.job_id.clone())
    .bind(s.task_id.clone())
    .bind(i64::from(s.attempt))
    .bind(s.started_at_ms)
    .execute(&mut **tx)
    .await?;
    let n = i64::from(s.attempt);
    let update = || {
        sqlx::query(
            "UPDATE tasks SET state = 'running', attempt_no = $1, phase = 1, attempts = $1, attempt_id = $2,
                    started_at = $3, finished_at = NULL, error = NULL, compute = $4
             WHERE job_id = $5 AND task_id = $6
               AND (attempt_no < $1 OR (attempt_no = $1 AND (phase < 1 OR (phase = 1 AND state = 'accepted'))))",
        )
        .bind(n)
        .bind(s.attempt_id.clone())
        .bind(s.started_at_ms)
        .bind(s.compute.clone())
        .bind(s.job_id.clone())
        .bind(s.task_id.clone())
    };
    let mut moved = update().execute(&mut **tx).await?.rows_affected();
    if moved == 0 && insert_task(tx, known, &s.job_id, &s.task_id, at).await? {
        moved = update().execute(&mut **tx).await?.rows_affected();
    }
    if moved > 0 {
        let d = detail([
            ("attempts", Some(Value::from(s.attempt))),
            ("attemptId", Some(Value::from(s.attempt_id.clone()))),
            ("compute", s.compute.clone().map(Value::from)),
        ]);
        record_change(tx, known, &s.job_id, ty, Some(&s.task_id), "running", d, at).await?;
    }
    Ok(())
}

async fn on_task_finished(tx: &mut Tx, f: &TaskFinished, _at: i64) -> Result<()> {
    sqlx::query(
        "INSERT INTO attempts (attempt_id, job_id, task_id, number, started_at, finished_at, outcome, exit_code,
                               error, log_lines, compute_ms)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
         ON CONFLICT (attempt_id) DO UPDATE SET
             started_at = COALESCE(attempts.started_at, excluded.started_at),
             finished_at = excluded.finished_at, outcome = excluded.outcome, exit_code = excluded.exit_code,
             error = excluded.error, log_lines = excluded.log_lines, compute_ms = excluded.compute_ms",
    )
    .bind(f.attempt_id.clone())
    .bind(f.job_id.clone())
    .bind(f.task_id.clone())
    .bind(i64::from(f.attempt))
    .bind(f.started_at_ms)
    .bind(f.finished_at_ms)
    .bind(f.outcome.as_str())
    .bind(f.exit_code.map(i64::from))
    .bind(f.error.clone())
    .bind(i64::try_from(f.log_lines).unwrap_or(i64::MAX))
    .bind(f.compute_ms.map(|ms| i64::try_from(ms).unwrap_or(i64::MAX)))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn on_task_state(tx: &mut Tx, known: &mut Known, ty: &str, s: &TaskState, at: i64) -> Result<()> {
    let n = i64::from(s.attempts);
    // A job retry re-queues a finished task: `task.retrying` in state `pending`.
    let requeued = ty == kind::TASK_RETRYING && s.state == TaskStatus::Pending;
    let (state, phase) = if requeued {
        ("pending", 4)
    } else if ty == kind::TASK_RETRYING {
        ("retrying", 2)
    } else {
        (s.state.as_str(), 3)
    };
    let outputs = (!s.outputs.is_empty()).then(|| Value::Object(s.outputs.clone()).to_string());
    let files = (!s.output_files.is_empty())
        .then(|| serde_json::to_string(&s.output_files).unwrap_or_else(|_| "[]".into()));
    let update = || {
        if requeued {
            sqlx::query(
                "UPDATE tasks SET state = $1, attempt_no = $2, phase = $3, attempts = $2, attempt_id = NULL,
                        started_at = NULL, finished_at = NULL, error = NULL, outputs = NULL, output_files = NULL
                 WHERE job_id = $4 AND task_id = $5 AND (attempt_no < $2 OR (attempt_no = $2 AND phase < $3))",
            )
            .bind(state)
            .bind(n)
            .bind(phase)
            .bind(s.job_id.clone())
            .bind(s.task_id.clone())
        } else {
            sqlx::query(
                "UPDATE tasks SET state = $1, attempt_no = $2, phase = $3, attempts = $2,
                        attempt_id = COALESCE($4, attempt_id), error = $5, outputs = $6, output_files = $7,
                        started_at = COALESCE($8, started_at), finished_at = $9
                 WHERE job_id = $10 AND task_id = $11 AND (attempt_no < $2 OR (attempt_no = $2 AND phase < $3))",
            )
            .bind(state)
            .bind(n)
            .bind(phase)
            .bind(s.attempt_id.clone())
            .bind(s.error.clone())
            .bind(outputs.clone())
            .bind(files.clone())
            .bind(s.started_at_ms)
            .bind(s.finished_at_ms)
            .bind(s.job_id.clone())
            .bind(s.task_id.clone())
        }
    };
    let mut moved = update().execute(&mut **tx).await?.rows_affected();
    if moved == 0 && insert_task(tx, known, &s.job_id, &s.task_id, at).await? {
        moved = update().execute(&mut **tx).await?.rows_affected();
    }
    if moved > 0 {
        let d = detail([
            ("attempts", Some(Value::from(s.attempts))),
            ("attemptId", s.attempt_id.clone().map(Value::from)),
            ("error", s.error.clone().map(Value::from)),
            ("retryAtMs", s.retry_at_ms.map(Value::from)),
        ]);
        record_change(tx, known, &s.job_id, ty, Some(&s.task_id), state, d, at).await?;
        if ty == kind::TASK_SUCCEEDED && !s.subtasks.is_empty() {
            insert_subtasks(tx, known.dialect, s).await?;
        }
    }
    Ok(())
}

/// Task ids per statement of [`on_tasks_state`].
const TASK_IDS: usize = 500;

/// `tasks.cancelled` and `tasks.retrying`: many tasks of a job changing state together, applied
/// set-wise (a statement per few hundred tasks of the same attempt count) and recorded as one
/// change with the number of tasks, so that cancelling or retrying a big job costs the read model
/// a few statements rather than one change per task. Each task moves only if this is news to it,
/// as in [`on_task_state`].
async fn on_tasks_state(tx: &mut Tx, known: &mut Known, ty: &str, s: &TasksState, at: i64) -> Result<()> {
    let requeued = ty == kind::TASKS_RETRYING;
    let (state, phase): (&'static str, i64) = if requeued {
        ("pending", 4)
    } else {
        (s.state.as_str(), 3)
    };
    let mut by_attempts: BTreeMap<u32, Vec<&str>> = BTreeMap::new();
    for t in &s.tasks {
        by_attempts.entry(t.attempts).or_default().push(&t.task_id);
    }
    let dialect = known.dialect;
    let mut moved = 0u64;
    for (attempts, ids) in by_attempts {
        let n = i64::from(attempts);
        for chunk in ids.chunks(TASK_IDS) {
            let update = || {
                let mut sql = String::with_capacity(300 + chunk.len() * 6);
                let mut k = 0;
                let mut p = |sql: &mut String| {
                    k += 1;
                    param(dialect, k, sql);
                };
                sql.push_str("UPDATE tasks SET state = ");
                p(&mut sql);
                sql.push_str(", attempt_no = ");
                p(&mut sql);
                sql.push_str(", phase = ");
                p(&mut sql);
                sql.push_str(", attempts = ");
                p(&mut sql);
                if requeued {
                    sql.push_str(
                        ", attempt_id = NULL, started_at = NULL, finished_at = NULL, error = NULL,
                         outputs = NULL, output_files = NULL",
                    );
                } else {
                    sql.push_str(", error = ");
                    p(&mut sql);
                    sql.push_str(", finished_at = ");
                    p(&mut sql);
                }
                sql.push_str(" WHERE job_id = ");
                p(&mut sql);
                sql.push_str(" AND (attempt_no < ");
                p(&mut sql);
                sql.push_str(" OR (attempt_no = ");
                p(&mut sql);
                sql.push_str(" AND phase < ");
                p(&mut sql);
                sql.push_str(")) AND task_id IN (");
                for i in 0..chunk.len() {
                    if i > 0 {
                        sql.push(',');
                    }
                    p(&mut sql);
                }
                sql.push(')');
                sql
            };
            let sql = update();
            let run = || bulk_update(&sql, s, chunk, state, n, phase, requeued);
            let mut rows = run().execute(&mut **tx).await?.rows_affected();
            if rows < chunk.len() as u64 {
                // Some tasks have no row yet: their job's plan has not arrived (another topic).
                ensure_known_job(tx, known, &s.job_id, at).await?;
                let values = placeholders_with(dialect, chunk.len(), 2, "'pending', 0, 0, 0");
                let insert = format!(
                    "INSERT INTO tasks (job_id, task_id, state, attempt_no, phase, attempts)
                     VALUES {values} ON CONFLICT DO NOTHING"
                );
                let mut q = sized(&insert, chunk.len());
                for id in chunk {
                    q = q.bind(s.job_id.clone()).bind(id.to_string());
                }
                if q.execute(&mut **tx).await?.rows_affected() > 0 {
                    rows += run().execute(&mut **tx).await?.rows_affected();
                }
            }
            moved += rows;
        }
    }
    if moved > 0 {
        let d = detail([
            ("tasks", Some(Value::from(moved))),
            ("error", s.error.clone().map(Value::from)),
        ]);
        record_change(tx, known, &s.job_id, ty, None, state, d, at).await?;
    }
    Ok(())
}

/// The statement of [`on_tasks_state`] with its parameters bound.
fn bulk_update<'q>(
    sql: &'q str,
    s: &TasksState,
    ids: &[&str],
    state: &'static str,
    attempts: i64,
    phase: i64,
    requeued: bool,
) -> sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>> {
    let mut q = sized(sql, ids.len())
        .bind(state)
        .bind(attempts)
        .bind(phase)
        .bind(attempts);
    if !requeued {
        q = q.bind(s.error.clone()).bind(s.at_ms);
    }
    q = q.bind(s.job_id.clone()).bind(attempts).bind(attempts).bind(phase);
    for id in ids {
        q = q.bind(id.to_string());
    }
    q
}

/// The subtasks a task's success added to its job, pending, after the job's other tasks.
async fn insert_subtasks(tx: &mut Tx, dialect: Dialect, s: &TaskState) -> Result<()> {
    let total: Option<i64> = sqlx::query_scalar("SELECT total FROM jobs WHERE job_id = $1")
        .bind(s.job_id.clone())
        .fetch_optional(&mut **tx)
        .await?
        .flatten();
    let first = total.unwrap_or(0);
    // Each one's backend, when the event names them (events of older versions do not).
    let backends = (s.subtask_backends.len() == s.subtasks.len()).then_some(&s.subtask_backends);
    for (ci, chunk) in s.subtasks.chunks(INSERT_CHUNK).enumerate() {
        let values = placeholders_with(dialect, chunk.len(), 5, "'pending', 0, 0, 0");
        let sql = format!(
            "INSERT INTO tasks (job_id, task_id, ord, parent, backend, state, attempt_no, phase, attempts) VALUES {values}
             ON CONFLICT (job_id, task_id) DO UPDATE SET ord = excluded.ord, parent = excluded.parent,
                    backend = excluded.backend"
        );
        let mut q = sized(&sql, chunk.len());
        for (i, id) in chunk.iter().enumerate() {
            let n = ci * INSERT_CHUNK + i;
            let ord = first + i64::try_from(n).unwrap_or(i64::MAX - first);
            q = q
                .bind(s.job_id.clone())
                .bind(id.clone())
                .bind(ord)
                .bind(s.task_id.clone())
                .bind(backends.map(|b| b[n].clone()));
        }
        q.execute(&mut **tx).await?;
    }
    sqlx::query("UPDATE jobs SET total = COALESCE(total, 0) + $1 WHERE job_id = $2")
        .bind(i64::try_from(s.subtasks.len()).unwrap_or(i64::MAX))
        .bind(s.job_id.clone())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use ferry_event::payload::{Outcome, PlannedTask, TaskFinished, TaskStarted, TaskStatus};
    use ferry_event::{EventBuilder, kind};
    use serde_json::{Map, json};

    use super::*;

    /// A job of `n` tasks `u*` feeding one `sink`.
    fn fan_in(n: usize) -> JobPlanned {
        let up: Vec<String> = (0..n).map(|i| format!("u{i}")).collect();
        let mut tasks: Vec<PlannedTask> = up
            .iter()
            .map(|u| {
                serde_json::from_value(json!({"id": u, "runner": {"type": "local"}, "command": ["true"]}))
                    .unwrap()
            })
            .collect();
        tasks.push(
            serde_json::from_value(
                json!({"id": "sink", "runner": {"type": "local"}, "command": ["true"], "dependsOn": up}),
            )
            .unwrap(),
        );
        JobPlanned {
            job_id: "j".into(),
            flow_id: "f".into(),
            namespace: None,
            concurrency: None,
            inputs: Map::new(),
            tasks,
        }
    }

    async fn rows(model: &ReadModel) -> i64 {
        sqlx::query_scalar("SELECT total_changes()")
            .fetch_one(&model.pool)
            .await
            .unwrap()
    }

    /// Applies one event; the rows it wrote.
    async fn apply(model: &ReadModel, e: Event) -> i64 {
        let before = rows(model).await;
        model.apply(&[&e]).await.unwrap();
        rows(model).await - before
    }

    /// Rows written by a task's start, its report and its success, in that order.
    async fn run(model: &ReadModel, b: &EventBuilder, task_id: &str) -> [i64; 3] {
        let attempt_id = format!("{task_id}-1");
        let started = TaskStarted {
            job_id: "j".into(),
            task_id: task_id.into(),
            attempt_id: attempt_id.clone(),
            attempt: 1,
            started_at_ms: 1_000,
            ready_at_ms: 900,
            launcher: "test".into(),
            compute: None,
        };
        let finished = TaskFinished {
            job_id: "j".into(),
            task_id: task_id.into(),
            attempt_id: attempt_id.clone(),
            attempt: 1,
            outcome: Outcome::Succeeded,
            exit_code: Some(0),
            error: None,
            outputs: Map::new(),
            output_files: Vec::new(),
            log_lines: 2,
            started_at_ms: Some(1_000),
            finished_at_ms: 2_000,
            reason: None,
            compute_ms: None,
            subtasks: Vec::new(),
        };
        let state = TaskState {
            job_id: "j".into(),
            task_id: task_id.into(),
            state: TaskStatus::Succeeded,
            attempts: 1,
            attempt_id: Some(attempt_id.clone()),
            error: None,
            outputs: Map::new(),
            output_files: Vec::new(),
            retry_at_ms: None,
            started_at_ms: Some(1_000),
            finished_at_ms: Some(2_000),
            subtasks: Vec::new(),
            subtask_backends: Vec::new(),
        };
        let at = Some(attempt_id.as_str());
        [
            apply(model, b.task(kind::TASK_STARTED, "j", task_id, at, &started)).await,
            apply(model, b.task(kind::TASK_FINISHED, "j", task_id, at, &finished)).await,
            apply(model, b.task(kind::TASK_SUCCEEDED, "j", task_id, at, &state)).await,
        ]
    }

    /// The read model's work per task event does not grow with the job: a task of a 400-task
    /// fan-in writes the rows one of a 4-task fan-in does, and so does the task they feed.
    #[tokio::test]
    async fn a_task_event_costs_the_same_in_a_small_and_a_big_job() {
        let b = EventBuilder::new("ferry/test");
        let mut costs = Vec::new();
        for n in [4, 400] {
            let dir = tempfile::tempdir().unwrap();
            let model = ReadModel::open(&format!("sqlite://{}", dir.path().join("api.db").display()))
                .await
                .unwrap();
            model
                .apply(&[&b.job(kind::JOB_PLANNED, "j", &fan_in(n))])
                .await
                .unwrap();
            let first = run(&model, &b, "u0").await;
            let second = run(&model, &b, "u1").await;
            assert_eq!(first, second, "job of {n}: two tasks cost alike");
            for i in 2..n {
                run(&model, &b, &format!("u{i}")).await;
            }
            let sink = run(&model, &b, "sink").await;
            costs.push((first, sink));
            model.close().await;
        }
        assert_eq!(costs[0], costs[1], "rows per task event, job of 4 and of 400");
    }

    /// A task's success that added subtasks lists them, pending, after the job's other tasks,
    /// each with its parent, and counts them; a redelivered success adds nothing.
    #[tokio::test]
    async fn subtasks_join_the_job_under_their_parent() {
        let b = EventBuilder::new("ferry/test");
        let dir = tempfile::tempdir().unwrap();
        let model = ReadModel::open(&format!("sqlite://{}", dir.path().join("api.db").display()))
            .await
            .unwrap();
        model
            .apply(&[&b.job(kind::JOB_PLANNED, "j", &fan_in(1))])
            .await
            .unwrap();
        let state = TaskState {
            subtasks: vec!["u0.a".into(), "u0.b".into()],
            subtask_backends: vec!["docker".into(), "agent.gpu.train.2.1".into()],
            ..task_state_of("u0")
        };
        let e = b.task(kind::TASK_SUCCEEDED, "j", "u0", Some("u0-1"), &state);
        model.apply(&[&e]).await.unwrap();
        model.apply(&[&e]).await.unwrap();
        let detail = model.job_detail("j").await.unwrap().expect("the job");
        let tasks: Vec<(&str, &str, Option<&str>)> = detail
            .tasks
            .iter()
            .map(|t| (t.task_id.as_str(), t.state.as_str(), t.parent.as_deref()))
            .collect();
        assert_eq!(
            tasks,
            [
                ("u0", "succeeded", None),
                ("sink", "pending", None),
                ("u0.a", "pending", Some("u0")),
                ("u0.b", "pending", Some("u0")),
            ]
        );
        assert_eq!(
            (detail.job.counts["total"], detail.job.counts["pending"]),
            (4, 3),
            "{:?}",
            detail.job
        );
        // What each waits for is known: its backend came with the parent's success.
        let backends: Vec<Option<&str>> = detail.tasks[2..].iter().map(|t| t.backend.as_deref()).collect();
        assert_eq!(backends, [Some("docker"), Some("agent.gpu.train.2.1")]);
        let shown = serde_json::to_value(&detail).unwrap();
        assert_eq!(shown["tasks"][2]["parent"], "u0", "{shown}");
        assert!(shown["tasks"][0].get("parent").is_none(), "{shown}");
        model.close().await;
    }

    fn task_state_of(task_id: &str) -> TaskState {
        TaskState {
            job_id: "j".into(),
            task_id: task_id.into(),
            state: TaskStatus::Succeeded,
            attempts: 1,
            attempt_id: Some(format!("{task_id}-1")),
            error: None,
            outputs: Map::new(),
            output_files: Vec::new(),
            retry_at_ms: None,
            started_at_ms: Some(1_000),
            finished_at_ms: Some(2_000),
            subtasks: Vec::new(),
            subtask_backends: Vec::new(),
        }
    }

    /// The compute every attempt held adds up per task, retries included, and per job; a task
    /// none of whose attempts held compute shows none.
    #[tokio::test]
    async fn compute_time_adds_up_per_task_and_per_job() {
        let b = EventBuilder::new("ferry/test");
        let dir = tempfile::tempdir().unwrap();
        let model = ReadModel::open(&format!("sqlite://{}", dir.path().join("api.db").display()))
            .await
            .unwrap();
        model
            .apply(&[&b.job(kind::JOB_PLANNED, "j", &fan_in(2))])
            .await
            .unwrap();
        for (task_id, attempt, outcome, held) in [
            ("u0", 1, Outcome::Failed, Some(1_500)),
            ("u0", 2, Outcome::Succeeded, Some(500)),
            ("u1", 1, Outcome::Succeeded, Some(250)),
            ("sink", 1, Outcome::Cancelled, None),
        ] {
            let attempt_id = format!("{task_id}-{attempt}");
            let finished = TaskFinished {
                compute_ms: held,
                ..TaskFinished::unreported("j", task_id, &attempt_id, attempt, outcome, "", 2_000)
            };
            let at = Some(attempt_id.as_str());
            model
                .apply(&[&b.task(kind::TASK_FINISHED, "j", task_id, at, &finished)])
                .await
                .unwrap();
        }
        let detail = model.job_detail("j").await.unwrap().expect("the job");
        let held: Vec<(&str, Option<u64>)> = detail
            .tasks
            .iter()
            .map(|t| (t.task_id.as_str(), t.compute_ms))
            .collect();
        assert_eq!(held, [("u0", Some(2_000)), ("u1", Some(250)), ("sink", None)]);
        assert_eq!(detail.compute_ms, Some(2_250));
        let shown = serde_json::to_value(&detail).unwrap();
        assert_eq!(shown["computeMs"], 2_250, "{shown}");
        model.close().await;
    }
}
