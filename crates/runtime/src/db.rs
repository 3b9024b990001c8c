//! The SQL plumbing every ferry store shares, written once:
//!
//! - [`open`]: a database from its URL (`sqlite://PATH`, `sqlite::memory:`, `postgres://…`)
//!   through sqlx's `Any` driver, with the [`Dialect`] it speaks; SQLite with the settings of
//!   [`sqlite_pragmas`] (also [`sqlite_options`] for a store on sqlx's SQLite driver);
//! - [`placeholders`], [`in_list`], [`param`]: parameter lists for multi-row statements, and
//!   [`sized`], which keeps the statements of one use out of the statement cache;
//! - [`create_if_missing`], [`add_column`]: schema changes that several processes opening one
//!   database at once can all make;
//! - [`INBOX_SCHEMA`], [`record_inbox`], [`prune_inbox`]: the ids of applied events, so that a
//!   redelivered event is recognised in the transaction that would apply it again;
//! - [`is_outage`], [`through_outages`]: what a database error means for the event it was
//!   applying, and holding a batch through an outage.

use std::borrow::Cow;
use std::collections::HashSet;
use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyArguments, AnyConnectOptions, AnyPoolOptions};
use sqlx::pool::PoolOptions;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{Any, AnyConnection, AnyPool, ConnectOptions, Database, Executor, Row};
use tokio_util::sync::CancellationToken;

/// Which SQL dialect a store speaks, where the portable subset is not enough.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    /// The dialect a database URL names, if it is one ferry supports.
    pub fn of_url(url: &str) -> Option<Dialect> {
        if url.starts_with("sqlite:") {
            Some(Dialect::Sqlite)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Some(Dialect::Postgres)
        } else {
            None
        }
    }
}

/// Why a database could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The URL can never work: an unsupported scheme or a malformed URL.
    #[error("{0}")]
    Config(String),
    /// The database did not answer or refused the connection.
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

impl OpenError {
    /// Into a store's own error type: `config` for a URL that can never work, `db` for a
    /// database that did not answer (which may come back).
    pub fn into_error<E>(self, config: impl FnOnce(String) -> E, db: impl FnOnce(sqlx::Error) -> E) -> E {
        match self {
            OpenError::Config(msg) => config(msg),
            OpenError::Db(e) => db(e),
        }
    }
}

/// How long a statement waits for another SQLite writer before it fails as busy.
pub const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// When a SQLite commit is on disk: the URL's `synchronous` parameter (`sqlite://PATH?synchronous=normal`),
/// ferry's own, applied as the pragma of that name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Synchronous {
    /// `full`, the default: every commit is synced to disk before it returns, so it survives a
    /// power cut.
    #[default]
    Full,
    /// `normal`: a commit is written to the log, which is synced at checkpoints. It survives the
    /// process being killed, but the last commits before a power cut or a kernel crash may be
    /// lost (the database stays consistent). For a store whose inputs do not survive a power
    /// cut either, like `ferry run`'s on its in-process bus.
    Normal,
}

impl Synchronous {
    fn pragma(self) -> &'static str {
        match self {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
        }
    }

    /// The URL's `synchronous` parameter taken out of it: the URL as the driver takes it, and
    /// the setting.
    pub fn split(url: &str) -> Result<(String, Synchronous), String> {
        let Some((base, query)) = url.split_once('?') else {
            return Ok((url.to_string(), Synchronous::default()));
        };
        let mut kept = Vec::new();
        let mut synchronous = Synchronous::default();
        for pair in query.split('&') {
            match pair.split_once('=') {
                Some(("synchronous", value)) => {
                    synchronous = match value.to_ascii_lowercase().as_str() {
                        "full" => Synchronous::Full,
                        "normal" => Synchronous::Normal,
                        other => {
                            return Err(format!(
                                "synchronous={other} is not a setting ferry takes: full (the default; every \
                                 commit survives a power cut) or normal (commits survive a killed process)"
                            ));
                        }
                    }
                }
                _ => kept.push(pair),
            }
        }
        let url = match kept.is_empty() {
            true => base.to_string(),
            false => format!("{base}?{}", kept.join("&")),
        };
        Ok((url, synchronous))
    }

    /// `url` with this setting: what [`Synchronous::split`] takes out again.
    pub fn on(self, url: &str) -> String {
        match self {
            Synchronous::Full => url.to_string(),
            Synchronous::Normal => {
                let sep = if url.contains('?') { '&' } else { '?' };
                format!("{url}{sep}synchronous=normal")
            }
        }
    }
}

/// The settings every ferry SQLite database is opened with: write-ahead logging (readers do not
/// block the writer), and the URL's [`Synchronous`] (by default a commit that survives a power
/// cut, since deliveries are acked once their effect is committed).
pub fn sqlite_pragmas(synchronous: Synchronous) -> [(&'static str, &'static str); 2] {
    [("journal_mode", "WAL"), ("synchronous", synchronous.pragma())]
}

/// A database opened by [`open`].
#[derive(Debug, Clone)]
pub struct Db {
    pub pool: AnyPool,
    pub dialect: Dialect,
}

/// Opens the database at `url` (`sqlite://PATH`, created if missing; `sqlite::memory:`;
/// `postgres://…`). `what` names it in errors ("read model database").
///
/// SQLite gets one connection, kept for good: SQLite serialises writers anyway, a single
/// connection never meets `SQLITE_BUSY` from itself, and an in-memory database lives exactly as
/// long as its connection. PostgreSQL gets a pool of 8.
pub async fn open(url: &str, what: &str) -> Result<Db, OpenError> {
    sqlx::any::install_default_drivers();
    let Some(dialect) = Dialect::of_url(url) else {
        return Err(OpenError::Config(format!(
            "unsupported {what} URL {url:?}: expected sqlite://PATH, sqlite::memory: or postgres://…"
        )));
    };
    let pool = match dialect {
        Dialect::Sqlite => {
            let (url, synchronous) =
                Synchronous::split(url).map_err(|e| OpenError::Config(format!("{what} URL {url:?}: {e}")))?;
            if !is_sqlite_memory(&url)
                && let Ok(opts) = SqliteConnectOptions::from_str(&url)
            {
                create_private_file(opts.get_filename());
            }
            let url = sqlite_url(&url);
            let opts = AnyConnectOptions::from_str(&url)
                .map_err(|e| OpenError::Config(format!("{what} URL {url:?}: {e}")))?
                .disable_statement_logging();
            single_connection::<Any>()
                .after_connect(move |conn, _| {
                    Box::pin(async move {
                        for (name, value) in sqlite_pragmas(synchronous) {
                            conn.execute(format!("PRAGMA {name} = {value}").as_str()).await?;
                        }
                        let busy = SQLITE_BUSY_TIMEOUT.as_millis();
                        conn.execute(format!("PRAGMA busy_timeout = {busy}").as_str())
                            .await?;
                        Ok(())
                    })
                })
                .connect_with(opts)
                .await?
        }
        Dialect::Postgres => {
            // The URL is left out of the message: it may hold a password.
            let opts = AnyConnectOptions::from_str(url)
                .map_err(|e| OpenError::Config(format!("{what} URL: {e}")))?
                .disable_statement_logging();
            AnyPoolOptions::new()
                .max_connections(8)
                .acquire_timeout(Duration::from_secs(10))
                .connect_with(opts)
                .await?
        }
    };
    Ok(Db { pool, dialect })
}

/// Connections for reading what [`open`] opened, so that reads do not queue behind writes.
///
/// A SQLite file gets its own pool of up to `max` read-only connections: under write-ahead
/// logging a reader sees the last commit and is never blocked by the writer, where on the
/// writer's single connection a read waits for the whole of a write transaction. An in-memory
/// SQLite database (one connection) and PostgreSQL (already a pool) read through `db` itself.
pub async fn open_readers(url: &str, db: &Db, max: u32, what: &str) -> Result<AnyPool, OpenError> {
    if db.dialect != Dialect::Sqlite || is_sqlite_memory(url) {
        return Ok(db.pool.clone());
    }
    let (url, _) =
        Synchronous::split(url).map_err(|e| OpenError::Config(format!("{what} URL {url:?}: {e}")))?;
    let url = sqlite_url(&url);
    let opts = AnyConnectOptions::from_str(&url)
        .map_err(|e| OpenError::Config(format!("{what} URL {url:?}: {e}")))?
        .disable_statement_logging();
    let pool = PoolOptions::<Any>::new()
        .max_connections(max.max(1))
        .min_connections(0)
        .acquire_timeout(Duration::from_secs(30))
        .after_connect(|conn, _| {
            Box::pin(async move {
                conn.execute("PRAGMA query_only = ON").await?;
                let busy = SQLITE_BUSY_TIMEOUT.as_millis();
                conn.execute(format!("PRAGMA busy_timeout = {busy}").as_str())
                    .await?;
                Ok(())
            })
        })
        .connect_with(opts)
        .await?;
    Ok(pool)
}

/// Registers a readiness check ([`crate::health`]) named `name` that takes a connection of
/// `pool` and pings it.
pub fn readiness<DB: Database>(name: &str, pool: &sqlx::Pool<DB>) -> crate::health::Registered {
    let pool = pool.clone();
    crate::health::register(name, move || {
        let pool = pool.clone();
        async move {
            use sqlx::Connection;
            let mut conn = pool.acquire().await.map_err(|e| e.to_string())?;
            conn.ping().await.map_err(|e| e.to_string())
        }
    })
}

/// Whether a SQLite URL names an in-memory database, which lives on one connection only.
fn is_sqlite_memory(url: &str) -> bool {
    url.contains(":memory:") || url.contains("mode=memory")
}

/// Creates the SQLite database file `path` if it is missing, empty and readable by its owner
/// only (0600) whatever the umask: SQLite itself would create it readable by all (0644 less the
/// umask), and it gives the `-wal` and `-shm` files beside it the database file's mode. An
/// existing file keeps its mode. An error is left to SQLite to report as it opens the file.
pub fn create_private_file(path: &std::path::Path) {
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path);
}

/// Options for a store on sqlx's own SQLite driver: the file created if missing, the settings
/// of [`sqlite_pragmas`] with the URL's [`Synchronous`], and `busy_timeout`.
pub fn sqlite_options(url: &str, busy_timeout: Duration) -> Result<SqliteConnectOptions, sqlx::Error> {
    let (url, synchronous) = Synchronous::split(url).map_err(|e| sqlx::Error::Configuration(e.into()))?;
    let mut opts = SqliteConnectOptions::from_str(&url)?
        .create_if_missing(true)
        .busy_timeout(busy_timeout);
    for (name, value) in sqlite_pragmas(synchronous) {
        opts = opts.pragma(name, value);
    }
    Ok(opts)
}

/// A pool of exactly one connection that is never closed for being idle or old (an in-memory
/// SQLite database lives as long as its connection).
pub fn single_connection<DB: Database>() -> PoolOptions<DB> {
    PoolOptions::new()
        .max_connections(1)
        .min_connections(1)
        .idle_timeout(None)
        .max_lifetime(None)
        .acquire_timeout(Duration::from_secs(30))
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

/// A statement whose text depends on how many rows it carries. Few rows: kept in the
/// connection's statement cache like any other (batches of a few events are the common case
/// when the load is light). Many: prepared for this one use, or each row count would take a place
/// in the cache (and memory) of its own and push out the statements used over and over.
pub fn sized(sql: &str, rows: usize) -> sqlx::query::Query<'_, Any, AnyArguments<'_>> {
    sqlx::query(sql).persistent(rows <= 8)
}

/// One placeholder for the `n`th parameter (from 1) of a statement whose parameters are all
/// numbered in order. SQLite gets anonymous `?`s, numbered in order too: finding a `$N`'s
/// number is a linear search in SQLite, which made binding a statement of thousands of
/// parameters quadratic.
pub fn param(dialect: Dialect, n: usize, s: &mut String) {
    use std::fmt::Write;
    match dialect {
        Dialect::Sqlite => s.push('?'),
        Dialect::Postgres => {
            let _ = write!(s, "${n}");
        }
    }
}

/// A placeholder list for `rows` rows of `cols` columns, the statement's only parameters:
/// `(?,?),(?,?)` on SQLite, `($1,$2),($3,$4)` on PostgreSQL.
pub fn placeholders(dialect: Dialect, rows: usize, cols: usize) -> String {
    placeholders_with(dialect, rows, cols, "")
}

/// Like [`placeholders`], each row ending with the same constant SQL `tail` (such as
/// `'pending', 0`) after its parameters.
pub fn placeholders_with(dialect: Dialect, rows: usize, cols: usize, tail: &str) -> String {
    let mut s = String::with_capacity(rows * (cols * 4 + tail.len() + 4));
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
        if !tail.is_empty() {
            s.push(',');
            s.push_str(tail);
        }
        s.push(')');
    }
    s
}

/// A placeholder list of `n` values, the statement's only parameters.
pub fn in_list(dialect: Dialect, n: usize) -> String {
    let mut s = String::with_capacity(n * 4);
    for i in 0..n {
        if i > 0 {
            s.push(',');
        }
        param(dialect, i + 1, &mut s);
    }
    s
}

/// The inbox: the ids of the events a store applied, and when.
pub const INBOX_SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS inbox (
        event_id TEXT PRIMARY KEY,
        applied_at BIGINT NOT NULL
    )",
    "CREATE INDEX IF NOT EXISTS inbox_applied ON inbox (applied_at)",
];

/// Event ids per inbox statement (two parameters each).
const INBOX_ROWS: usize = 400;

/// Records event ids in the inbox within the caller's transaction, a few hundred per
/// statement; returns those not there before, the ones to apply.
pub async fn record_inbox(
    conn: &mut AnyConnection,
    dialect: Dialect,
    event_ids: &[&str],
    now_ms: i64,
) -> Result<HashSet<String>, sqlx::Error> {
    let mut fresh = HashSet::with_capacity(event_ids.len());
    for chunk in event_ids.chunks(INBOX_ROWS) {
        let sql = format!(
            "INSERT INTO inbox (event_id, applied_at) VALUES {} ON CONFLICT DO NOTHING RETURNING event_id",
            placeholders(dialect, chunk.len(), 2)
        );
        let mut q = sized(&sql, chunk.len());
        for id in chunk {
            q = q.bind(id.to_string()).bind(now_ms);
        }
        for row in q.fetch_all(&mut *conn).await? {
            fresh.insert(row.try_get::<String, _>("event_id")?);
        }
    }
    Ok(fresh)
}

/// Runs a schema statement that creates what is missing (`CREATE … IF NOT EXISTS`). Several
/// processes opening one new PostgreSQL database at once (two schedulers started together) may
/// all find an object missing and create it side by side; PostgreSQL then fails all but one
/// (SQLSTATE 23505 on its catalog's unique index `pg_type_typname_nsp_index`, or 42P07 and
/// 42710, "already exists"), while the object the loser wanted exists as soon as the winner
/// commits. The loser runs the statement again, and finds it there.
pub async fn create_if_missing(pool: &AnyPool, stmt: &str) -> Result<(), sqlx::Error> {
    match sqlx::query(stmt).execute(pool).await {
        Err(sqlx::Error::Database(e)) if matches!(e.code().as_deref(), Some("23505" | "42P07" | "42710")) => {
            sqlx::query(stmt).execute(pool).await.map(drop)
        }
        done => done.map(drop),
    }
}

/// Adds `column` (of SQL type `ty`) to `table` in a database made before it existed. Several
/// processes opening one database at once may all find it missing: a loser of that race, whose
/// `ALTER` fails because the column is there now, has nothing to do.
pub async fn add_column(pool: &AnyPool, table: &str, column: &str, ty: &str) -> Result<(), sqlx::Error> {
    let present = || async {
        sqlx::query(&format!("SELECT {column} FROM {table} LIMIT 0"))
            .execute(pool)
            .await
            .is_ok()
    };
    if present().await {
        return Ok(());
    }
    match sqlx::query(&format!("ALTER TABLE {table} ADD COLUMN {column} {ty}"))
        .execute(pool)
        .await
    {
        Ok(_) => Ok(()),
        Err(_) if present().await => Ok(()),
        Err(e) => Err(e),
    }
}

/// Forgets inbox entries older than `older_than_ms` (ms since the epoch): redeliveries come
/// within minutes, not days. Returns how many went.
pub async fn prune_inbox(pool: &AnyPool, older_than_ms: i64) -> Result<u64, sqlx::Error> {
    let done = sqlx::query("DELETE FROM inbox WHERE applied_at < $1")
        .bind(older_than_ms)
        .execute(pool)
        .await?;
    Ok(done.rows_affected())
}

/// How long a consumer waits between tries while its database is out of reach: `first`, then
/// twice as long each time, up to `max`.
#[derive(Debug, Clone, Copy)]
pub struct Waits {
    pub first: Duration,
    pub max: Duration,
}

/// Runs `op` until it succeeds, fails with something other than an outage ([`is_outage`] of the
/// database error `db_error` finds in `E`), or `stop` is cancelled (then the outage's error is
/// returned). `what` names the database in the warning logged before each wait; each wait
/// counts in [`crate::metrics::name::DB_OUTAGE_HOLDS`] under `store`.
pub async fn through_outages<T, E, F>(
    what: &str,
    store: &'static str,
    waits: Waits,
    stop: &CancellationToken,
    db_error: impl Fn(&E) -> Option<&sqlx::Error>,
    mut op: impl FnMut() -> F,
) -> Result<T, E>
where
    F: Future<Output = Result<T, E>>,
{
    let mut wait = waits.first;
    loop {
        let done = op().await;
        let outage = match &done {
            Err(e) if !stop.is_cancelled() => db_error(e).filter(|e| is_outage(e)),
            _ => None,
        };
        let Some(e) = outage else { return done };
        tracing::warn!(error = %e, retry_in = ?wait, "{what} is out of reach; holding the batch and trying again");
        crate::metrics::db_outage_hold(store);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.cancelled() => {}
        }
        wait = (wait * 2).min(waits.max);
    }
}

/// Whether a database error is an outage (the server or file is out of reach, busy, out of
/// room, or a transaction lost a conflict) rather than something wrong with what was applied.
///
/// A consumer meeting an outage holds its deliveries and applies them again later: giving them
/// back to the broker would count as a failed delivery each time, and RabbitMQ dead-letters a
/// message after [a limit of them](https://www.rabbitmq.com/docs/quorum-queues#poison-message-handling),
/// so an outage of a minute would move accepted work to the dead letters. Anything else gives
/// the deliveries back, so that one that can never be applied ends in the dead letters instead
/// of stopping the consumer for good.
pub fn is_outage(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(d) => {
            let code = d.code().unwrap_or(Cow::Borrowed(""));
            if d.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
                sqlite_outage(&code)
            } else {
                sqlstate_outage(&code)
            }
        }
        _ => false,
    }
}

/// SQLite's (extended) result code, as a number: the primary code is its low byte.
fn sqlite_outage(code: &str) -> bool {
    const BUSY: u32 = 5;
    const LOCKED: u32 = 6;
    const NOMEM: u32 = 7;
    const IOERR: u32 = 10;
    const FULL: u32 = 13;
    const CANTOPEN: u32 = 14;
    code.parse::<u32>()
        .is_ok_and(|n| matches!(n & 0xff, BUSY | LOCKED | NOMEM | IOERR | FULL | CANTOPEN))
}

/// PostgreSQL's SQLSTATE: connection exceptions (08), serialization failures and deadlocks,
/// insufficient resources (53), a lock not available, the server shutting down or starting.
fn sqlstate_outage(code: &str) -> bool {
    code.starts_with("08")
        || code.starts_with("53")
        || matches!(code, "40001" | "40P01" | "55P03" | "57P01" | "57P02" | "57P03")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_anonymous_on_sqlite_and_numbered_on_postgres() {
        assert_eq!(placeholders(Dialect::Sqlite, 2, 2), "(?,?),(?,?)");
        assert_eq!(placeholders(Dialect::Postgres, 2, 2), "($1,$2),($3,$4)");
        assert_eq!(
            placeholders_with(Dialect::Postgres, 2, 1, "'x',0"),
            "($1,'x',0),($2,'x',0)"
        );
        assert_eq!(in_list(Dialect::Postgres, 3), "$1,$2,$3");
        assert_eq!(in_list(Dialect::Sqlite, 3), "?,?,?");
    }

    #[test]
    fn urls_name_their_dialect() {
        assert_eq!(Dialect::of_url("sqlite::memory:"), Some(Dialect::Sqlite));
        assert_eq!(Dialect::of_url("sqlite:///tmp/x.db"), Some(Dialect::Sqlite));
        assert_eq!(Dialect::of_url("postgresql://h/db"), Some(Dialect::Postgres));
        assert_eq!(Dialect::of_url("mysql://h/db"), None);
        assert_eq!(sqlite_url("sqlite://a.db"), "sqlite://a.db?mode=rwc");
        assert_eq!(
            sqlite_url("sqlite://a.db?cache=shared"),
            "sqlite://a.db?cache=shared&mode=rwc"
        );
        assert_eq!(sqlite_url("sqlite::memory:"), "sqlite::memory:");
    }

    #[test]
    fn synchronous_is_taken_out_of_the_url_and_checked() {
        fn split(url: &str) -> (String, Synchronous) {
            Synchronous::split(url).unwrap()
        }
        assert_eq!(
            split("sqlite://a.db"),
            ("sqlite://a.db".into(), Synchronous::Full)
        );
        assert_eq!(
            split("sqlite://a.db?synchronous=normal"),
            ("sqlite://a.db".into(), Synchronous::Normal)
        );
        assert_eq!(
            split("sqlite://a.db?cache=shared&synchronous=NORMAL&mode=rwc"),
            ("sqlite://a.db?cache=shared&mode=rwc".into(), Synchronous::Normal)
        );
        assert_eq!(
            split("sqlite://a.db?synchronous=full"),
            ("sqlite://a.db".into(), Synchronous::Full)
        );
        let e = Synchronous::split("sqlite://a.db?synchronous=off").unwrap_err();
        assert!(e.contains("synchronous=off") && e.contains("normal"), "{e}");
        assert_eq!(
            Synchronous::Normal.on("sqlite://a.db"),
            "sqlite://a.db?synchronous=normal"
        );
        assert_eq!(Synchronous::Full.on("sqlite://a.db"), "sqlite://a.db");
        for s in [Synchronous::Full, Synchronous::Normal] {
            assert_eq!(split(&s.on("sqlite://a.db?cache=shared")).1, s);
        }
    }

    /// What the URL says is what the connection runs with, on either driver.
    #[tokio::test]
    async fn a_store_opens_with_the_synchronous_setting_of_its_url() {
        use sqlx::Connection;
        let dir = std::env::temp_dir().join(format!("ferry-db-{:016x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        for (param, want) in [("", 2i64), ("?synchronous=normal", 1)] {
            let url = format!("sqlite://{}{param}", dir.join(format!("s{want}.db")).display());
            let db = open(&url, "test database").await.unwrap();
            let got: i64 = sqlx::query_scalar("PRAGMA synchronous")
                .fetch_one(&db.pool)
                .await
                .unwrap();
            assert_eq!(got, want, "{url}");
            let readers = open_readers(&url, &db, 1, "test database").await.unwrap();
            let _: i64 = sqlx::query_scalar("SELECT 1").fetch_one(&readers).await.unwrap();
            let mut conn = sqlite_options(&url, SQLITE_BUSY_TIMEOUT)
                .unwrap()
                .connect()
                .await
                .unwrap();
            let got: i64 = sqlx::query_scalar("PRAGMA synchronous")
                .fetch_one(&mut conn)
                .await
                .unwrap();
            assert_eq!(got, want, "{url} on the SQLite driver");
            conn.close().await.unwrap();
        }
        let e = open("sqlite:///x.db?synchronous=sometimes", "test database")
            .await
            .unwrap_err();
        assert!(matches!(e, OpenError::Config(_)), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A redelivered event id is told apart from a fresh one, within a batch and across them,
    /// with as many ids as several statements hold.
    #[tokio::test]
    async fn the_inbox_tells_fresh_ids_from_applied_ones() {
        let db = open("sqlite::memory:", "test database").await.unwrap();
        for stmt in INBOX_SCHEMA {
            sqlx::query(stmt).execute(&db.pool).await.unwrap();
        }
        let ids: Vec<String> = (0..1000).map(|i| format!("e{i}")).collect();
        let first: Vec<&str> = ids[..600].iter().map(String::as_str).collect();
        let mut conn = db.pool.acquire().await.unwrap();
        let fresh = record_inbox(&mut conn, db.dialect, &first, 1).await.unwrap();
        assert_eq!(fresh.len(), 600);
        let second: Vec<&str> = ids[500..].iter().map(String::as_str).collect();
        let fresh = record_inbox(&mut conn, db.dialect, &second, 2).await.unwrap();
        assert_eq!(fresh.len(), 400, "the 100 ids applied before are not fresh");
        assert!(!fresh.contains("e500") && fresh.contains("e600"));
        drop(conn);
        assert_eq!(prune_inbox(&db.pool, 2).await.unwrap(), 600);
    }

    #[tokio::test]
    async fn an_unsupported_url_says_what_is_accepted() {
        let e = open("mysql://h/db", "test database").await.unwrap_err();
        assert!(
            matches!(&e, OpenError::Config(m) if m.contains("test database") && m.contains("postgres://")),
            "{e}"
        );
    }

    #[test]
    fn outages_are_told_from_errors_in_what_was_applied() {
        assert!(is_outage(&sqlx::Error::PoolTimedOut));
        assert!(is_outage(&sqlx::Error::Io(std::io::Error::other("reset"))));
        assert!(!is_outage(&sqlx::Error::RowNotFound));
        for code in ["5", "517", "6", "10", "266", "13"] {
            assert!(sqlite_outage(code), "SQLite {code}");
        }
        for code in ["1", "19", "2067", "11"] {
            assert!(!sqlite_outage(code), "SQLite {code}");
        }
        for code in ["08006", "40001", "40P01", "57P01", "53300"] {
            assert!(sqlstate_outage(code), "SQLSTATE {code}");
        }
        for code in ["23505", "42P01", "22P02", "42501"] {
            assert!(!sqlstate_outage(code), "SQLSTATE {code}");
        }
    }
}
