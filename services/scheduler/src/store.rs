//! The scheduler's durable state: SQLite (one file, embedded) or PostgreSQL, through sqlx's `Any`
//! driver so that one set of portable SQL statements serves both.

use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, ConnectOptions, Executor};

use crate::{Error, Result};

/// Which SQL dialect the store speaks, where the portable subset is not enough.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

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
    "CREATE TABLE IF NOT EXISTS inbox (
        event_id TEXT PRIMARY KEY,
        applied_at BIGINT NOT NULL
    )",
    "CREATE INDEX IF NOT EXISTS inbox_applied ON inbox (applied_at)",
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
    /// Opens (creating if needed) the database at `url`: `sqlite://PATH`, `sqlite::memory:` or
    /// `postgres://…`.
    pub async fn open(url: &str) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let dialect = if url.starts_with("sqlite:") {
            Dialect::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Dialect::Postgres
        } else {
            return Err(Error::Config(format!(
                "unsupported database URL {url:?}: expected sqlite://PATH or postgres://…"
            )));
        };
        let pool = match dialect {
            Dialect::Sqlite => {
                let url = sqlite_url(url);
                let opts = AnyConnectOptions::from_str(&url)
                    .map_err(|e| Error::Config(format!("database URL {url:?}: {e}")))?
                    .disable_statement_logging();
                // One writer: SQLite serializes writes anyway, and a single connection never
                // meets SQLITE_BUSY from itself.
                AnyPoolOptions::new()
                    .max_connections(1)
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            conn.execute("PRAGMA journal_mode = WAL").await?;
                            conn.execute("PRAGMA synchronous = FULL").await?;
                            conn.execute("PRAGMA busy_timeout = 5000").await?;
                            Ok(())
                        })
                    })
                    .connect_with(opts)
                    .await?
            }
            Dialect::Postgres => {
                let opts = AnyConnectOptions::from_str(url)
                    .map_err(|e| Error::Config(format!("database URL: {e}")))?
                    .disable_statement_logging();
                AnyPoolOptions::new()
                    .max_connections(8)
                    .acquire_timeout(Duration::from_secs(10))
                    .connect_with(opts)
                    .await?
            }
        };
        let store = Store { pool, dialect };
        store.migrate().await?;
        Ok(store)
    }

    async fn migrate(&self) -> Result<()> {
        for stmt in SCHEMA {
            sqlx::query(stmt).execute(&self.pool).await?;
        }
        let outbox = match self.dialect {
            Dialect::Sqlite => OUTBOX_SQLITE,
            Dialect::Postgres => OUTBOX_POSTGRES,
        };
        sqlx::query(outbox).execute(&self.pool).await?;
        sqlx::query("CREATE INDEX IF NOT EXISTS outbox_event ON outbox (event_id)")
            .execute(&self.pool)
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

/// `sqlite://relative/path` and `sqlite:///abs/path` both name files; make sure the file is
/// created if missing.
fn sqlite_url(url: &str) -> String {
    if url.contains(":memory:") || url.contains("mode=") {
        return url.to_string();
    }
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}mode=rwc")
}
