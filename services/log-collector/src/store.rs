//! The log store: one row per line in SQL.
//!
//! Rows are unique on `(attempt_id, seq)` and inserted with `ON CONFLICT DO NOTHING`, so storing
//! a batch again stores nothing new. Each row gets an increasing id in commit order: that id is
//! the arrival position a [`Cursor`] carries. SQLite serialises writers, so a row committed later
//! always has a larger id than every row a reader has already seen; [`LogStore::follow`] relies
//! on that to never skip a line. (A PostgreSQL backend must keep that property, e.g. by taking a
//! lock around appends, because sequence values there can commit out of order.)

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use ferry_event::payload::{LogLine, Stream, TaskLog};
use ferry_runtime::db;
use sqlx::sqlite::{SqlitePoolOptions, SqliteRow};
use sqlx::{QueryBuilder, Row, Sqlite, SqlitePool};
use tokio::sync::watch;

use crate::error::{Error, Result};

/// How often [`LogStore::follow`] looks for lines written by another process (lines appended
/// through the same [`LogStore`] wake it at once).
pub const DEFAULT_FOLLOW_POLL: Duration = Duration::from_secs(1);

/// Rows read per query while following.
const FOLLOW_PAGE: usize = 512;

/// Rows per `INSERT` statement: 7 parameters each stays well under SQLite's and PostgreSQL's
/// parameter limits.
const INSERT_CHUNK: usize = 1000;

/// How long a statement waits for another writer before failing.
pub(crate) const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

struct Migration {
    version: i64,
    description: &'static str,
    statements: &'static [&'static str],
}

/// The schema, in order. Statements are idempotent so that a half-applied database (or two
/// processes opening a new file at once) converges.
const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "log lines",
        statements: &[
            "CREATE TABLE IF NOT EXISTS log_lines (
            id         INTEGER PRIMARY KEY AUTOINCREMENT,
            job_id     TEXT    NOT NULL,
            task_id    TEXT    NOT NULL,
            attempt_id TEXT    NOT NULL,
            seq        BIGINT  NOT NULL,
            stream     TEXT    NOT NULL,
            time_ms    BIGINT  NOT NULL,
            text       TEXT    NOT NULL,
            UNIQUE (attempt_id, seq)
        )",
            "CREATE INDEX IF NOT EXISTS log_lines_job ON log_lines (job_id, id)",
            "CREATE INDEX IF NOT EXISTS log_lines_task ON log_lines (job_id, task_id, id)",
        ],
    },
    Migration {
        version: 2,
        description: "log retention",
        statements: &[
            // Retention deletes the oldest lines first, a bounded batch at a time: without this
            // index each batch would scan the table.
            "CREATE INDEX IF NOT EXISTS log_lines_time ON log_lines (time_ms)",
            // The jobs retention took lines of, so that reading them says "expired" rather than
            // answering an empty log. One small row per job, against the many lines it replaces.
            "CREATE TABLE IF NOT EXISTS log_expired (
            job_id        TEXT   PRIMARY KEY,
            expired_at_ms BIGINT NOT NULL
        )",
        ],
    },
    Migration {
        version: 3,
        description: "log quotas",
        statements: &[
            // The namespace each line counts against ('' for quota markers, which count against
            // none). Lines stored before count against `default`.
            "ALTER TABLE log_lines ADD COLUMN namespace TEXT NOT NULL DEFAULT 'default'",
            // Bytes of line text stored per namespace: kept by appends and retention, so that a
            // quota is checked without summing the lines.
            "CREATE TABLE IF NOT EXISTS log_namespaces (
            namespace TEXT   PRIMARY KEY,
            bytes     BIGINT NOT NULL
        )",
            "INSERT INTO log_namespaces (namespace, bytes)
            SELECT 'default', COALESCE(SUM(LENGTH(CAST(text AS BLOB))), 0) FROM log_lines WHERE true
            ON CONFLICT (namespace) DO NOTHING",
            // Attempts whose lines a quota dropped: how many, and up to which seq (so that a
            // redelivered batch is not counted twice).
            "CREATE TABLE IF NOT EXISTS log_quota_drops (
            attempt_id  TEXT   PRIMARY KEY,
            namespace   TEXT   NOT NULL,
            dropped     BIGINT NOT NULL,
            through_seq BIGINT NOT NULL
        )",
        ],
    },
];

/// Bytes of log text each namespace may store (see [`LogStore::append_within`]).
pub type LogQuotas = ferry_runtime::NamespaceLimits;

/// What [`LogStore::append_within`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Appended {
    /// Lines newly stored (quota markers included).
    pub stored: u64,
    /// Lines not stored because their namespace was at its quota.
    pub dropped: u64,
}

/// The line that stands, once per attempt, for the lines a quota dropped.
pub fn quota_marker(namespace: &str, quota: u64) -> String {
    format!("log quota of namespace {namespace} ({quota} bytes) reached: further lines dropped")
}

/// A position in the log store, returned with every [`LogRecord`].
///
/// It holds the line's arrival position and its `seq`; a query resumes after it in the query's
/// own order (by `seq` within an attempt, by arrival otherwise). Its text form (`ID.SEQ`, from
/// `Display`, read back by `FromStr`) is what an API hands to clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cursor {
    id: i64,
    seq: u64,
}

impl Cursor {
    /// The line's arrival position: larger for lines stored later.
    pub fn id(&self) -> i64 {
        self.id
    }

    /// The line's number within its attempt.
    pub fn seq(&self) -> u64 {
        self.seq
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.id, self.seq)
    }
}

impl FromStr for Cursor {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let invalid = || Error::InvalidCursor(s.to_string());
        let (id, seq) = s.split_once('.').ok_or_else(invalid)?;
        Ok(Cursor {
            id: id.parse().map_err(|_| invalid())?,
            seq: seq.parse().map_err(|_| invalid())?,
        })
    }
}

/// Which lines to read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogQuery {
    pub job_id: String,
    /// Only this task's lines.
    pub task_id: Option<String>,
    /// Only this attempt's lines, in `seq` order.
    pub attempt_id: Option<String>,
    /// Only lines after this one, in the query's order.
    pub after: Option<Cursor>,
    /// At most this many lines (for [`LogStore::follow`]: end the stream after this many).
    pub limit: Option<usize>,
}

impl LogQuery {
    /// Every line of a job.
    pub fn job(job_id: impl Into<String>) -> Self {
        LogQuery {
            job_id: job_id.into(),
            ..LogQuery::default()
        }
    }

    pub fn task(mut self, task_id: impl Into<String>) -> Self {
        self.task_id = Some(task_id.into());
        self
    }

    pub fn attempt(mut self, attempt_id: impl Into<String>) -> Self {
        self.attempt_id = Some(attempt_id.into());
        self
    }

    pub fn after(mut self, cursor: Cursor) -> Self {
        self.after = Some(cursor);
        self
    }

    pub fn limit(mut self, n: usize) -> Self {
        self.limit = Some(n);
        self
    }

    fn order(&self) -> Order {
        if self.attempt_id.is_some() {
            Order::Seq
        } else {
            Order::Arrival
        }
    }
}

/// One stored line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    pub cursor: Cursor,
    pub job_id: String,
    pub task_id: String,
    pub attempt_id: String,
    pub seq: u64,
    pub stream: Stream,
    pub time_ms: i64,
    pub text: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Order {
    Seq,
    Arrival,
}

#[derive(Debug, Clone, Copy)]
enum After {
    Id(i64),
    Seq(i64),
}

/// The durable log store. Cloning shares the connection pool and the append notifications.
#[derive(Clone)]
pub struct LogStore {
    pool: SqlitePool,
    /// Bumped after every commit that stored lines; wakes followers.
    appended: Arc<watch::Sender<u64>>,
    follow_poll: Duration,
}

impl fmt::Debug for LogStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogStore")
            .field("follow_poll", &self.follow_poll)
            .finish_non_exhaustive()
    }
}

impl LogStore {
    /// Registers the store's readiness check ([`ferry_runtime::health`]) while the returned
    /// value is kept.
    pub fn readiness(&self) -> ferry_runtime::health::Registered {
        ferry_runtime::db::readiness("log store", &self.pool)
    }

    /// Opens the store at `url` (`sqlite:///path/to/logs.db`, `sqlite://relative.db`,
    /// `sqlite::memory:`), creating the file, its directory and the schema as needed. Opening an
    /// existing store applies only the migrations it lacks.
    pub async fn open(url: &str) -> Result<Self> {
        if !url.starts_with("sqlite:") {
            return Err(Error::UnsupportedUrl { url: url.to_string() });
        }
        let open_err = |source| Error::Open {
            url: url.to_string(),
            source,
        };
        let memory = url.contains(":memory:") || url.contains("mode=memory");
        let options = db::sqlite_options(url, BUSY_TIMEOUT).map_err(open_err)?;
        let pool = if memory {
            // The database lives as long as one connection does: keep exactly one, forever.
            db::single_connection::<Sqlite>()
        } else {
            if let Some(dir) = options
                .get_filename()
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
            {
                create_dir(dir).map_err(|e| open_err(sqlx::Error::Io(e)))?;
            }
            db::create_private_file(options.get_filename());
            SqlitePoolOptions::new().max_connections(4)
        };
        // Turning a new file to WAL mode takes a lock SQLite does not wait for (busy_timeout does
        // not apply): a process opening the store while another one does is told it is locked.
        let deadline = tokio::time::Instant::now() + BUSY_TIMEOUT;
        let mut pause = ferry_runtime::Backoff::new(Duration::from_millis(10), Duration::from_millis(200));
        let pool = loop {
            match pool.clone().connect_with(options.clone()).await {
                Ok(pool) => break pool,
                Err(e) if is_busy(&e) && tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(pause.next_delay()).await;
                }
                Err(e) => return Err(open_err(e)),
            }
        };
        migrate(&pool).await?;
        let (appended, _) = watch::channel(0);
        Ok(LogStore {
            pool,
            appended: Arc::new(appended),
            follow_poll: DEFAULT_FOLLOW_POLL,
        })
    }

    /// Sets how often followers look for lines written by other processes.
    pub fn with_follow_poll(mut self, every: Duration) -> Self {
        self.follow_poll = every;
        self
    }

    /// Stores the lines of `batches` in one transaction and returns how many were not stored
    /// before. Lines already stored (same attempt and seq) are left as they are, so storing a
    /// batch twice, or batches that overlap, stores each line once. Within the transaction each
    /// attempt's lines are written in `seq` order, whatever order the batches came in.
    ///
    /// Fails without storing anything if any batch is invalid (see [`validate`]).
    pub async fn append(&self, batches: &[TaskLog]) -> Result<u64> {
        Ok(self.append_within(batches, &LogQuotas::default()).await?.stored)
    }

    /// [`LogStore::append`], where a namespace that has stored `quotas.of(namespace)` bytes of
    /// text or more stores no further line: the first line of an attempt dropped so is
    /// replaced, once per attempt, by a [`quota_marker`] line (stderr), and the lines dropped
    /// are counted ([`Appended::dropped`], and in [`LogStore::lines_stored`]). A line counts
    /// against its batch's `namespace`, else the one its attempt's earlier lines counted
    /// against, else `default`. A line is stored while its namespace holds less than its
    /// quota, so the last one stored may pass it by its own length.
    pub async fn append_within(&self, batches: &[TaskLog], quotas: &LogQuotas) -> Result<Appended> {
        for b in batches {
            validate(b)?;
        }
        let rows = ordered_rows(batches);
        if rows.is_empty() {
            return Ok(Appended::default());
        }
        let began = std::time::Instant::now();
        let mut tx = self.pool.begin().await?;
        // The namespace of each attempt, and the bytes each namespace holds.
        let mut namespaces: HashMap<&str, String> = HashMap::new();
        let mut held: HashMap<String, i64> = HashMap::new();
        for log in batches {
            if namespaces.contains_key(log.attempt_id.as_str()) {
                continue;
            }
            let ns = match log.namespace.as_deref().filter(|n| !n.is_empty()) {
                Some(ns) => ns.to_string(),
                None => sqlx::query_scalar::<_, String>(
                    "SELECT namespace FROM log_lines WHERE attempt_id = $1 AND namespace <> '' LIMIT 1",
                )
                .bind(log.attempt_id.as_str())
                .fetch_optional(&mut *tx)
                .await?
                .unwrap_or_else(|| ferry_event::payload::DEFAULT_NAMESPACE.to_string()),
            };
            if !held.contains_key(&ns) {
                let bytes: Option<i64> =
                    sqlx::query_scalar("SELECT bytes FROM log_namespaces WHERE namespace = $1")
                        .bind(ns.as_str())
                        .fetch_optional(&mut *tx)
                        .await?;
                held.insert(ns.clone(), bytes.unwrap_or(0));
            }
            namespaces.insert(log.attempt_id.as_str(), ns);
        }
        // Which lines fit; the others are dropped, by attempt: (first seq, its time, count,
        // last seq).
        let mut keep = Vec::with_capacity(rows.len());
        let mut drops: HashMap<&str, (i64, i64, u64, i64)> = HashMap::new();
        for r in rows {
            let ns = &namespaces[r.log.attempt_id.as_str()];
            let bytes = held.entry(ns.clone()).or_default();
            match quotas.of(ns) {
                Some(q) if *bytes >= i64::try_from(q).unwrap_or(i64::MAX) => {
                    let d =
                        drops
                            .entry(r.log.attempt_id.as_str())
                            .or_insert((r.seq, r.line.time_ms, 0, r.seq));
                    d.2 += 1;
                    d.3 = d.3.max(r.seq);
                }
                _ => {
                    *bytes = bytes.saturating_add(r.line.text.len() as i64);
                    keep.push(r);
                }
            }
        }
        let mut stored = 0;
        let mut added: HashMap<String, i64> = HashMap::new();
        for chunk in keep.chunks(INSERT_CHUNK) {
            let mut qb = QueryBuilder::<Sqlite>::new(
                "INSERT INTO log_lines (job_id, task_id, attempt_id, seq, stream, time_ms, text, namespace) ",
            );
            qb.push_values(chunk, |mut b, r| {
                b.push_bind(r.log.job_id.as_str())
                    .push_bind(r.log.task_id.as_str())
                    .push_bind(r.log.attempt_id.as_str())
                    .push_bind(r.seq)
                    .push_bind(stream_name(r.line.stream))
                    .push_bind(r.line.time_ms)
                    .push_bind(r.line.text.as_str())
                    .push_bind(namespaces[r.log.attempt_id.as_str()].as_str());
            });
            qb.push(
                " ON CONFLICT (attempt_id, seq) DO NOTHING RETURNING namespace, LENGTH(CAST(text AS BLOB))",
            );
            let inserted: Vec<(String, i64)> = qb.build_query_as().fetch_all(&mut *tx).await?;
            stored += inserted.len() as u64;
            for (ns, bytes) in inserted {
                *added.entry(ns).or_default() += bytes;
            }
        }
        for (ns, bytes) in &added {
            sqlx::query(
                "INSERT INTO log_namespaces (namespace, bytes) VALUES ($1, $2) \
                 ON CONFLICT (namespace) DO UPDATE SET bytes = log_namespaces.bytes + excluded.bytes",
            )
            .bind(ns.as_str())
            .bind(bytes)
            .execute(&mut *tx)
            .await?;
        }
        let mut dropped = 0;
        for (attempt, (first, time_ms, count, last)) in drops {
            let ns = namespaces[attempt].as_str();
            let known: Option<i64> =
                sqlx::query_scalar("SELECT through_seq FROM log_quota_drops WHERE attempt_id = $1")
                    .bind(attempt)
                    .fetch_optional(&mut *tx)
                    .await?;
            match known {
                None => {
                    let Some(log) = batches.iter().find(|b| b.attempt_id == attempt) else {
                        continue;
                    };
                    let quota = quotas.of(ns).unwrap_or(0);
                    let marked = sqlx::query(
                        "INSERT INTO log_lines (job_id, task_id, attempt_id, seq, stream, time_ms, text, namespace) \
                         VALUES ($1, $2, $3, $4, 'stderr', $5, $6, '') ON CONFLICT (attempt_id, seq) DO NOTHING",
                    )
                    .bind(log.job_id.as_str())
                    .bind(log.task_id.as_str())
                    .bind(attempt)
                    .bind(first)
                    .bind(time_ms)
                    .bind(quota_marker(ns, quota))
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    if marked == 0 {
                        // That seq was stored before: this batch was a redelivery.
                        continue;
                    }
                    stored += 1;
                    dropped += count;
                    sqlx::query(
                        "INSERT INTO log_quota_drops (attempt_id, namespace, dropped, through_seq) \
                         VALUES ($1, $2, $3, $4)",
                    )
                    .bind(attempt)
                    .bind(ns)
                    .bind(i64::try_from(count).unwrap_or(i64::MAX))
                    .bind(last)
                    .execute(&mut *tx)
                    .await?;
                }
                Some(through) if last > through => {
                    // Each counted once: only seqs past those counted before.
                    let new = count.min(u64::try_from(last - through).unwrap_or(0));
                    dropped += new;
                    sqlx::query(
                        "UPDATE log_quota_drops SET dropped = dropped + $1, through_seq = $2 \
                         WHERE attempt_id = $3",
                    )
                    .bind(i64::try_from(new).unwrap_or(i64::MAX))
                    .bind(last)
                    .bind(attempt)
                    .execute(&mut *tx)
                    .await?;
                }
                Some(_) => {}
            }
        }
        tx.commit().await?;
        ferry_runtime::metrics::db_transaction("logs", began.elapsed());
        let bytes: i64 = added.values().sum();
        ferry_runtime::metrics::logs_stored(stored, u64::try_from(bytes).unwrap_or(0));
        ferry_runtime::metrics::logs_dropped(dropped);
        if stored > 0 {
            self.appended.send_modify(|n| *n = n.wrapping_add(stored));
        }
        Ok(Appended { stored, dropped })
    }

    /// The lines `q` selects: an attempt's by `seq`, a task's or a job's in arrival order.
    pub async fn query(&self, q: &LogQuery) -> Result<Vec<LogRecord>> {
        let order = q.order();
        let after = q.after.map(|c| match order {
            Order::Seq => After::Seq(seq_bound(c.seq)),
            Order::Arrival => After::Id(c.id),
        });
        self.select(q, after, None, order, q.limit).await
    }

    /// Like `tail -f`: the lines `q` selects that are stored now (in the order
    /// [`LogStore::query`] gives), then each line stored later, in arrival order, until the
    /// consumer drops the stream (or `q.limit` lines were yielded). No line is yielded twice and
    /// none is skipped. Appends through this store (or a clone) wake it at once; lines written by
    /// another process are found by polling (see [`LogStore::with_follow_poll`]).
    ///
    /// A database error is yielded once and ends the stream; resume with `after` set to the last
    /// record's cursor.
    pub fn follow(
        &self,
        q: LogQuery,
    ) -> impl futures::Stream<Item = Result<LogRecord>> + Send + 'static + use<> {
        let follower = Follower {
            store: self.clone(),
            changes: self.appended.subscribe(),
            remaining: q.limit,
            phase: Phase::Start,
            buf: VecDeque::new(),
            done: false,
            q,
        };
        futures::stream::unfold(follower, |mut f| async move {
            let item = f.next().await?;
            Some((item, f))
        })
    }

    /// How many lines of an attempt are stored. Once it equals the `logLines` of the attempt's
    /// `task.finished`, its log is complete.
    pub async fn lines_stored(&self, attempt_id: &str) -> Result<u64> {
        // Lines a quota dropped count as stored (the marker stands in for the first of them),
        // so that a log cut by a quota is complete too.
        let n: i64 = sqlx::query_scalar(
            "SELECT (SELECT COUNT(*) FROM log_lines WHERE attempt_id = $1) + \
             COALESCE((SELECT dropped - 1 FROM log_quota_drops WHERE attempt_id = $1), 0)",
        )
        .bind(attempt_id)
        .fetch_one(&self.pool)
        .await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Bytes of line text `namespace` holds in the store: what its quota is checked against.
    pub async fn namespace_bytes(&self, namespace: &str) -> Result<u64> {
        let n: Option<i64> = sqlx::query_scalar("SELECT bytes FROM log_namespaces WHERE namespace = $1")
            .bind(namespace)
            .fetch_optional(&self.pool)
            .await?;
        Ok(n.and_then(|n| u64::try_from(n).ok()).unwrap_or(0))
    }

    /// Deletes up to `max_rows` of the lines stamped before `before_ms` (ms since the epoch),
    /// oldest first, in one short transaction, and records their jobs as expired (see
    /// [`LogStore::expired`]). Returns how many lines it deleted: fewer than `max_rows` means
    /// none older is left. Callers delete in such batches, never all at once, so that a large
    /// backlog never holds the write lock (and so the appends) for long.
    pub async fn expire(&self, before_ms: i64, max_rows: usize) -> Result<u64> {
        let limit = i64::try_from(max_rows).unwrap_or(i64::MAX);
        let mut tx = self.pool.begin().await?;
        let gone: Vec<(String, String, i64)> = sqlx::query_as(
            "DELETE FROM log_lines WHERE id IN \
             (SELECT id FROM log_lines WHERE time_ms < $1 ORDER BY time_ms LIMIT $2) \
             RETURNING job_id, namespace, LENGTH(CAST(text AS BLOB))",
        )
        .bind(before_ms)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        let deleted = gone.len() as u64;
        let mut freed: HashMap<&str, i64> = HashMap::new();
        for (_, ns, bytes) in &gone {
            if !ns.is_empty() {
                *freed.entry(ns.as_str()).or_default() += bytes;
            }
        }
        for (ns, bytes) in freed {
            sqlx::query("UPDATE log_namespaces SET bytes = MAX(bytes - $1, 0) WHERE namespace = $2")
                .bind(bytes)
                .bind(ns)
                .execute(&mut *tx)
                .await?;
        }
        let jobs: Vec<String> = gone.into_iter().map(|(job, _, _)| job).collect();
        let jobs: std::collections::BTreeSet<&str> = jobs.iter().map(String::as_str).collect();
        let now = ferry_event::now_ms();
        for chunk in jobs.into_iter().collect::<Vec<_>>().chunks(INSERT_CHUNK) {
            let mut qb = QueryBuilder::<Sqlite>::new("INSERT INTO log_expired (job_id, expired_at_ms) ");
            qb.push_values(chunk, |mut b, job| {
                b.push_bind(*job).push_bind(now);
            });
            qb.push(" ON CONFLICT (job_id) DO NOTHING");
            qb.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(deleted)
    }

    /// Whether retention has deleted lines of `job_id` ([`LogStore::expire`]): an empty answer
    /// for such a job means its log expired, not that it wrote nothing.
    pub async fn expired(&self, job_id: &str) -> Result<bool> {
        let found: Option<i64> = sqlx::query_scalar("SELECT 1 FROM log_expired WHERE job_id = $1")
            .bind(job_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(found.is_some())
    }

    /// Closes the connections; clones stop working.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    async fn select(
        &self,
        q: &LogQuery,
        after: Option<After>,
        up_to_id: Option<i64>,
        order: Order,
        limit: Option<usize>,
    ) -> Result<Vec<LogRecord>> {
        let mut qb = QueryBuilder::<Sqlite>::new(
            "SELECT id, job_id, task_id, attempt_id, seq, stream, time_ms, text \
             FROM log_lines WHERE job_id = ",
        );
        qb.push_bind(q.job_id.as_str());
        if let Some(t) = &q.task_id {
            qb.push(" AND task_id = ").push_bind(t.as_str());
        }
        if let Some(a) = &q.attempt_id {
            qb.push(" AND attempt_id = ").push_bind(a.as_str());
        }
        match after {
            Some(After::Id(id)) => {
                qb.push(" AND id > ").push_bind(id);
            }
            Some(After::Seq(seq)) => {
                qb.push(" AND seq > ").push_bind(seq);
            }
            None => {}
        }
        if let Some(id) = up_to_id {
            qb.push(" AND id <= ").push_bind(id);
        }
        qb.push(match order {
            Order::Seq => " ORDER BY seq",
            Order::Arrival => " ORDER BY id",
        });
        if let Some(n) = limit {
            qb.push(" LIMIT ").push_bind(i64::try_from(n).unwrap_or(i64::MAX));
        }
        let rows = qb.build().fetch_all(&self.pool).await?;
        rows.iter().map(record).collect()
    }

    /// The largest arrival position stored so far (0 when empty).
    async fn high_water(&self) -> Result<i64> {
        let id: Option<i64> = sqlx::query_scalar("SELECT MAX(id) FROM log_lines")
            .fetch_one(&self.pool)
            .await?;
        Ok(id.unwrap_or(0))
    }
}

/// Checks that a `task.log` payload can be stored: ids present, seq numbers in range.
pub fn validate(log: &TaskLog) -> Result<()> {
    let invalid = |reason: String| Error::InvalidBatch {
        job_id: log.job_id.clone(),
        attempt_id: log.attempt_id.clone(),
        seq: log.seq,
        reason,
    };
    for (field, value) in [
        ("jobId", &log.job_id),
        ("taskId", &log.task_id),
        ("attemptId", &log.attempt_id),
    ] {
        if value.trim().is_empty() {
            return Err(invalid(format!("{field} is empty")));
        }
    }
    let count = log.lines.len() as u64;
    let fits = log
        .seq
        .checked_add(count)
        .is_some_and(|end| end <= i64::MAX as u64);
    if !fits {
        return Err(invalid(format!(
            "seq {} plus {count} lines goes past the largest storable seq {}",
            log.seq,
            i64::MAX
        )));
    }
    Ok(())
}

fn create_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)
}

/// Whether SQLite said the database is locked by another connection (`SQLITE_BUSY`, extended
/// codes included).
fn is_busy(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db
            .code()
            .and_then(|c| c.parse::<i32>().ok())
            .is_some_and(|c| c & 0xff == 5),
        _ => false,
    }
}

async fn migrate(pool: &SqlitePool) -> Result<()> {
    let known = MIGRATIONS.last().map(|m| m.version).unwrap_or(0);
    let bookkeeping = |source| Error::Migrate {
        version: 0,
        description: "migration bookkeeping",
        source,
    };
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS log_store_migrations (
            version       BIGINT PRIMARY KEY,
            description   TEXT   NOT NULL,
            applied_at_ms BIGINT NOT NULL
        )",
    )
    .execute(pool)
    .await
    .map_err(bookkeeping)?;
    // IMMEDIATE takes the write lock up front, so two processes opening a new store migrate
    // one after the other instead of failing on a lock upgrade.
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.map_err(bookkeeping)?;
    let applied: Vec<i64> = sqlx::query_scalar("SELECT version FROM log_store_migrations")
        .fetch_all(&mut *tx)
        .await
        .map_err(bookkeeping)?;
    if let Some(&found) = applied.iter().max().filter(|v| **v > known) {
        return Err(Error::SchemaTooNew { found, known });
    }
    for m in MIGRATIONS.iter().filter(|m| !applied.contains(&m.version)) {
        let failed = |source| Error::Migrate {
            version: m.version,
            description: m.description,
            source,
        };
        for statement in m.statements {
            sqlx::query(statement).execute(&mut *tx).await.map_err(failed)?;
        }
        sqlx::query(
            "INSERT INTO log_store_migrations (version, description, applied_at_ms) \
             VALUES ($1, $2, $3) ON CONFLICT (version) DO NOTHING",
        )
        .bind(m.version)
        .bind(m.description)
        .bind(ferry_event::now_ms())
        .execute(&mut *tx)
        .await
        .map_err(failed)?;
        tracing::info!(
            version = m.version,
            description = m.description,
            "log store schema migrated"
        );
    }
    tx.commit().await.map_err(bookkeeping)?;
    Ok(())
}

struct InsertRow<'a> {
    log: &'a TaskLog,
    attempt: usize,
    seq: i64,
    line: &'a LogLine,
}

/// The lines of validated batches, grouped by attempt (in order of first appearance), by `seq`
/// within an attempt, without repeats (the first copy of a line wins).
fn ordered_rows(batches: &[TaskLog]) -> Vec<InsertRow<'_>> {
    let mut attempts: HashMap<&str, usize> = HashMap::new();
    let mut rows = Vec::with_capacity(batches.iter().map(|b| b.lines.len()).sum());
    for log in batches {
        let next = attempts.len();
        let attempt = *attempts.entry(log.attempt_id.as_str()).or_insert(next);
        for (i, line) in log.lines.iter().enumerate() {
            rows.push(InsertRow {
                log,
                attempt,
                // In range: validate() checked seq + lines.len() <= i64::MAX.
                seq: seq_bound(log.seq.saturating_add(i as u64)),
                line,
            });
        }
    }
    rows.sort_by_key(|r| (r.attempt, r.seq));
    rows.dedup_by_key(|r| (r.attempt, r.seq));
    rows
}

fn seq_bound(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

fn stream_name(s: Stream) -> &'static str {
    match s {
        Stream::Stdout => "stdout",
        Stream::Stderr => "stderr",
    }
}

fn record(row: &SqliteRow) -> Result<LogRecord> {
    let id: i64 = row.try_get("id")?;
    let corrupt = |reason: String| Error::Corrupt { id, reason };
    let seq: i64 = row.try_get("seq")?;
    let seq = u64::try_from(seq).map_err(|_| corrupt(format!("negative seq {seq}")))?;
    let stream = match row.try_get::<&str, _>("stream")? {
        "stdout" => Stream::Stdout,
        "stderr" => Stream::Stderr,
        other => return Err(corrupt(format!("unknown stream {other:?}"))),
    };
    Ok(LogRecord {
        cursor: Cursor { id, seq },
        job_id: row.try_get("job_id")?,
        task_id: row.try_get("task_id")?,
        attempt_id: row.try_get("attempt_id")?,
        seq,
        stream,
        time_ms: row.try_get("time_ms")?,
        text: row.try_get("text")?,
    })
}

enum Phase {
    Start,
    /// Reading what an attempt had stored when following began (rows up to `high`), by seq.
    Snapshot {
        high: i64,
        after_seq: Option<i64>,
    },
    /// Reading rows stored after `after_id`, in arrival order.
    Tail {
        after_id: i64,
    },
}

struct Follower {
    store: LogStore,
    q: LogQuery,
    changes: watch::Receiver<u64>,
    remaining: Option<usize>,
    phase: Phase,
    buf: VecDeque<LogRecord>,
    done: bool,
}

impl Follower {
    async fn next(&mut self) -> Option<Result<LogRecord>> {
        loop {
            if self.done || self.remaining == Some(0) {
                return None;
            }
            if let Some(r) = self.buf.pop_front() {
                if let Some(n) = &mut self.remaining {
                    *n -= 1;
                }
                return Some(Ok(r));
            }
            match self.fill().await {
                Ok(true) => {}
                Ok(false) => self.wait().await,
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
    }

    /// Reads the next page into `buf`; false when there is nothing new yet.
    async fn fill(&mut self) -> Result<bool> {
        loop {
            match self.phase {
                Phase::Start => {
                    self.phase = match self.q.order() {
                        Order::Seq => Phase::Snapshot {
                            high: self.store.high_water().await?,
                            after_seq: self.q.after.map(|c| seq_bound(c.seq)),
                        },
                        Order::Arrival => Phase::Tail {
                            after_id: self.q.after.map_or(0, |c| c.id),
                        },
                    };
                }
                Phase::Snapshot { high, after_seq } => {
                    let page = self
                        .store
                        .select(
                            &self.q,
                            after_seq.map(After::Seq),
                            Some(high),
                            Order::Seq,
                            Some(FOLLOW_PAGE),
                        )
                        .await?;
                    if page.len() < FOLLOW_PAGE {
                        let after_id = self.q.after.map_or(high, |c| c.id.max(high));
                        self.phase = Phase::Tail { after_id };
                    } else if let Some(last) = page.last() {
                        self.phase = Phase::Snapshot {
                            high,
                            after_seq: Some(seq_bound(last.seq)),
                        };
                    }
                    if !page.is_empty() {
                        self.buf.extend(page);
                        return Ok(true);
                    }
                }
                Phase::Tail { after_id } => {
                    // Mark the notifications seen before reading: an append that commits after
                    // this read still wakes wait().
                    self.changes.borrow_and_update();
                    let mut page = self
                        .store
                        .select(
                            &self.q,
                            Some(After::Id(after_id)),
                            None,
                            Order::Arrival,
                            Some(FOLLOW_PAGE),
                        )
                        .await?;
                    let Some(last_id) = page.iter().map(|r| r.cursor.id).max() else {
                        return Ok(false);
                    };
                    self.phase = Phase::Tail { after_id: last_id };
                    if self.q.order() == Order::Seq {
                        page.sort_by_key(|r| r.seq);
                    }
                    self.buf.extend(page);
                    return Ok(true);
                }
            }
        }
    }

    /// Waits for an append through this store, or for the poll interval to pass.
    async fn wait(&mut self) {
        let poll = self.store.follow_poll;
        tokio::select! {
            changed = self.changes.changed() => {
                if changed.is_err() {
                    tokio::time::sleep(poll).await;
                }
            }
            _ = tokio::time::sleep(poll) => {}
        }
    }
}
