//! The scheduler's durable state: SQLite (one file, embedded) or PostgreSQL, through sqlx's `Any`
//! driver so that one set of portable SQL statements serves both.
//!
//! The schema, the rows as stored ([`JobRow`], [`TaskRow`], [`AttemptRow`]) and the reads of
//! them and of the outbox; the writes are the engine's, inside its transactions.

use ferry_event::Event;
use ferry_event::payload::{OutputFile, PlannedTask};
use ferry_runtime::db::{self, Dialect, in_list, sized};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, AnyPool, Row};

use crate::engine::CHUNK;
use crate::{Error, Result};

/// The scheduler's database.
#[derive(Debug, Clone)]
pub struct Store {
    pub(crate) pool: AnyPool,
    pub(crate) dialect: Dialect,
}

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS jobs (
        job_id TEXT PRIMARY KEY,
        flow_id TEXT NOT NULL,
        namespace TEXT,
        state TEXT NOT NULL,
        ending TEXT,
        reason TEXT,
        concurrency BIGINT,
        active BIGINT NOT NULL,
        ready BIGINT NOT NULL,
        total BIGINT NOT NULL,
        unfinished BIGINT NOT NULL,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL
    )",
    "CREATE TABLE IF NOT EXISTS tasks (
        job_id TEXT NOT NULL,
        task_id TEXT NOT NULL,
        ord BIGINT NOT NULL,
        state TEXT NOT NULL,
        priority BIGINT NOT NULL,
        deps_left BIGINT NOT NULL,
        attempts BIGINT NOT NULL,
        failures BIGINT NOT NULL,
        lost BIGINT NOT NULL,
        attempt_id TEXT,
        ready_at BIGINT,
        lease_until BIGINT,
        deadline BIGINT,
        started_at BIGINT,
        finished_at BIGINT,
        backend TEXT NOT NULL,
        timeout_ms BIGINT,
        retry_attempts BIGINT NOT NULL,
        spec TEXT NOT NULL,
        outputs TEXT,
        output_files TEXT,
        error TEXT,
        PRIMARY KEY (job_id, task_id)
    )",
    "CREATE INDEX IF NOT EXISTS tasks_ready ON tasks (job_id, priority DESC, ready_at, ord) WHERE state = 'ready'",
    "CREATE INDEX IF NOT EXISTS jobs_ready ON jobs (created_at) WHERE ready > 0",
    "CREATE INDEX IF NOT EXISTS jobs_active ON jobs (namespace) WHERE active > 0",
    "CREATE INDEX IF NOT EXISTS tasks_retrying ON tasks (ready_at) WHERE state = 'retrying'",
    "CREATE INDEX IF NOT EXISTS tasks_dispatched ON tasks (backend) WHERE state = 'dispatched'",
    "CREATE INDEX IF NOT EXISTS tasks_leased ON tasks (lease_until) WHERE lease_until IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS tasks_deadline ON tasks (deadline) WHERE deadline IS NOT NULL",
    "CREATE TABLE IF NOT EXISTS edges (
        job_id TEXT NOT NULL,
        task_id TEXT NOT NULL,
        dependent TEXT NOT NULL,
        PRIMARY KEY (job_id, task_id, dependent)
    )",
    "CREATE INDEX IF NOT EXISTS edges_dependent ON edges (job_id, dependent)",
    "CREATE TABLE IF NOT EXISTS attempts (
        attempt_id TEXT PRIMARY KEY,
        job_id TEXT NOT NULL,
        task_id TEXT NOT NULL,
        number BIGINT NOT NULL,
        state TEXT NOT NULL,
        cancel_requested BIGINT NOT NULL,
        dispatched_at BIGINT NOT NULL,
        started_at BIGINT,
        finished_at BIGINT,
        exit_code BIGINT,
        error TEXT
    )",
    "CREATE INDEX IF NOT EXISTS attempts_task ON attempts (job_id, task_id)",
    // Cancels of jobs not planned yet (a `job.cancel` can overtake its `job.planned`): the job
    // ends cancelled as soon as it is planned.
    // Launchers as they last announced themselves (`launcher.presence`): which backends have
    // one running. One row per instance, replaced at each announcement.
    "CREATE TABLE IF NOT EXISTS launchers (
        backend TEXT NOT NULL,
        instance TEXT NOT NULL,
        capacity BIGINT NOT NULL,
        running BIGINT NOT NULL,
        seen_at BIGINT NOT NULL,
        leaving BIGINT NOT NULL,
        PRIMARY KEY (backend, instance)
    )",
    "CREATE TABLE IF NOT EXISTS early_cancels (
        job_id TEXT PRIMARY KEY,
        reason TEXT NOT NULL,
        at BIGINT NOT NULL
    )",
];

/// Columns added to tables after they were first made: added to a database that lacks them.
const ADDED_COLUMNS: &[(&str, &str, &str)] = &[
    // The launcher that took the attempt up (fencing, see `engine::fence`).
    ("attempts", "launcher", "TEXT"),
    // The task that submitted this one, for a subtask.
    ("tasks", "parent", "TEXT"),
    // Subtasks this task submitted that are not done yet, with all they submitted in turn: its
    // dependents wait until it is 0.
    ("tasks", "open_children", "BIGINT NOT NULL DEFAULT 0"),
];

const OUTBOX_SQLITE: &str = "CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL,
    event TEXT NOT NULL
)";
const OUTBOX_POSTGRES: &str = "CREATE TABLE IF NOT EXISTS outbox (
    seq BIGSERIAL PRIMARY KEY,
    event_id TEXT NOT NULL,
    event TEXT NOT NULL
)";

impl Store {
    /// What the metrics show of the state (see [`ferry_runtime::metrics::SchedulerSample`]):
    /// jobs running, tasks ready or dispatched and not started by backend with how long the
    /// oldest dispatched one has waited since it became ready, at `now_ms`, and launchers heard since `live_since_ms` and not leaving.
    pub async fn sample(
        &self,
        now_ms: i64,
        live_since_ms: i64,
    ) -> Result<ferry_runtime::metrics::SchedulerSample> {
        let jobs_active: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM jobs WHERE state = 'running'")
            .fetch_one(&self.pool)
            .await?;
        let waiting = sqlx::query(
            "SELECT backend, COUNT(*) AS n, MIN(CASE WHEN state = 'dispatched' THEN ready_at END) AS oldest FROM tasks
             WHERE state IN ('ready', 'dispatched') GROUP BY backend",
        )
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(|r| {
            let oldest: Option<i64> = r.try_get("oldest")?;
            let waited = oldest.map_or(0.0, |t| (now_ms - t).max(0) as f64 / 1000.0);
            Ok((r.try_get("backend")?, r.try_get("n")?, waited))
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
        let launchers = sqlx::query(
            "SELECT backend, COUNT(*) AS n FROM launchers WHERE leaving = 0 AND seen_at >= $1 GROUP BY backend",
        )
        .bind(live_since_ms)
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(|r| Ok((r.try_get("backend")?, r.try_get("n")?)))
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
        Ok(ferry_runtime::metrics::SchedulerSample {
            jobs_active,
            waiting,
            launchers,
        })
    }

    /// Opens (creating if needed) the database at `url`: `sqlite://PATH`, `sqlite::memory:` or
    /// `postgres://…`.
    pub async fn open(url: &str) -> Result<Store> {
        let db::Db { pool, dialect } = db::open(url, "scheduler database")
            .await
            .map_err(|e| e.into_error(Error::Config, Error::Db))?;
        let store = Store { pool, dialect };
        store.migrate().await?;
        Ok(store)
    }

    async fn migrate(&self) -> Result<()> {
        for stmt in SCHEMA.iter().chain(db::INBOX_SCHEMA) {
            db::create_if_missing(&self.pool, stmt).await?;
        }
        for (table, column, ty) in ADDED_COLUMNS {
            db::add_column(&self.pool, table, column, ty).await?;
        }
        let outbox = match self.dialect {
            Dialect::Sqlite => OUTBOX_SQLITE,
            Dialect::Postgres => OUTBOX_POSTGRES,
        };
        db::create_if_missing(&self.pool, outbox).await?;
        db::create_if_missing(
            &self.pool,
            "CREATE INDEX IF NOT EXISTS outbox_event ON outbox (event_id)",
        )
        .await?;
        Ok(())
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

pub(crate) const JOB_SELECT: &str =
    "SELECT job_id, flow_id, state, ending, reason, concurrency, active, ready, total, unfinished FROM jobs";
pub(crate) const TASK_SELECT: &str =
    "SELECT job_id, task_id, state, attempts, failures, lost, attempt_id, backend, timeout_ms,
    retry_attempts, deadline, started_at, finished_at, spec, outputs, output_files, error FROM tasks";
pub(crate) const ATTEMPT_SELECT: &str =
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
    pub(crate) fn from_row(r: &AnyRow) -> Result<Self> {
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
    pub(crate) fn from_row(r: &AnyRow) -> Result<Self> {
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
    pub(crate) fn from_row(r: &AnyRow) -> Result<Self> {
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

    /// Forgets the ids of events applied before `older_than_ms`, cancels kept for jobs never
    /// planned since then, and launchers silent since then; returns how many rows went.
    pub async fn prune_inbox(&self, older_than_ms: i64) -> Result<u64> {
        let mut gone = 0;
        for sql in [
            "DELETE FROM early_cancels WHERE at < $1",
            "DELETE FROM launchers WHERE seen_at < $1",
        ] {
            gone += sqlx::query(sql)
                .bind(older_than_ms)
                .execute(&self.pool)
                .await?
                .rows_affected();
        }
        Ok(db::prune_inbox(&self.pool, older_than_ms).await? + gone)
    }

    /// The jobs cancelled before they were planned, whose cancel is kept for their plan.
    pub async fn early_cancels(&self) -> Result<Vec<String>> {
        Ok(
            sqlx::query_scalar("SELECT job_id FROM early_cancels ORDER BY job_id")
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// How many applied event ids the inbox holds.
    pub async fn inbox_len(&self) -> Result<i64> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM inbox")
            .fetch_one(&self.pool)
            .await?)
    }

    /// Rows inserted, updated or deleted through this store since it was opened, where the
    /// database tells (SQLite's `total_changes()`; `None` on PostgreSQL): what tests read to pin
    /// the work one event costs.
    pub async fn rows_written(&self) -> Result<Option<i64>> {
        if self.dialect != Dialect::Sqlite {
            return Ok(None);
        }
        Ok(Some(
            sqlx::query_scalar("SELECT total_changes()")
                .fetch_one(&self.pool)
                .await?,
        ))
    }

    pub async fn delete_outbox(&self, ids: &[String]) -> Result<()> {
        let mut conn = self.pool.acquire().await?;
        delete_outbox(&mut conn, self.dialect, ids).await
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

/// Deletes outbox rows whose events the bus confirmed, within the caller's transaction or on
/// a connection of its own.
pub(crate) async fn delete_outbox(conn: &mut AnyConnection, dialect: Dialect, ids: &[String]) -> Result<()> {
    for chunk in ids.chunks(CHUNK) {
        let sql = format!(
            "DELETE FROM outbox WHERE event_id IN ({})",
            in_list(dialect, chunk.len())
        );
        let mut q = sized(&sql, chunk.len());
        for id in chunk {
            q = q.bind(id.clone());
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}
