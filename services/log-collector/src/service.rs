//! The service: the logs topic into the [`LogStore`], a batch per transaction.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use ferry_bus::{Bus, Delivery, Subscribe, Subscription};
use ferry_event::payload::TaskLog;
use ferry_event::{AttributesReader, Topic, kind};
use ferry_runtime::db::Waits;
use ferry_runtime::{Backoff, CancellationToken};
use tracing::Instrument;

use crate::error::{Error, Result};
use crate::store::{Appended, LogQuotas, LogStore, validate};

/// The consumer group the collectors share: each `task.log` event is stored by one of them.
pub const DEFAULT_GROUP: &str = "log-collector";
/// Most events stored in one transaction.
pub const DEFAULT_BATCH_MAX: usize = 512;

/// What the service needs.
#[derive(Debug, Clone)]
pub struct Config {
    pub store: LogStore,
    /// Consumer group on the logs topic.
    pub group: String,
    /// Most events stored in one transaction; the subscription prefetches twice as many.
    pub batch_max: usize,
    /// Wait after the first failed commit; doubled after each further failure.
    pub retry_initial: Duration,
    /// Longest wait between retries of a failing commit.
    pub retry_max: Duration,
    /// Lines stamped longer ago than this are deleted; `None` keeps them for ever.
    pub retention: Option<Duration>,
    /// How often the retention sweep looks for lines to delete.
    pub retention_every: Duration,
    /// Most lines one retention transaction deletes.
    pub retention_batch: usize,
    /// Bytes of log text each namespace may store; lines past it are dropped.
    pub quotas: LogQuotas,
}

impl Config {
    pub fn new(store: LogStore) -> Self {
        Config {
            store,
            group: DEFAULT_GROUP.to_string(),
            batch_max: DEFAULT_BATCH_MAX,
            retry_initial: Duration::from_millis(200),
            retry_max: Duration::from_secs(10),
            retention: None,
            retention_every: DEFAULT_RETENTION_EVERY,
            retention_batch: DEFAULT_RETENTION_BATCH,
            quotas: LogQuotas::default(),
        }
    }
}

/// How often the retention sweep runs.
pub const DEFAULT_RETENTION_EVERY: Duration = Duration::from_secs(60);
/// Lines deleted per retention transaction: small enough that appends wait for it a few
/// milliseconds at most.
pub const DEFAULT_RETENTION_BATCH: usize = 2000;
/// The pause between two full retention batches, so that appends get the write lock between.
const RETENTION_PAUSE: Duration = Duration::from_millis(50);

/// Deletes the lines older than `retention` every `every`, `batch` lines per transaction, until
/// `shutdown`. A failing delete is logged and tried again at the next sweep: retention is
/// housekeeping, it never stops the collector.
pub async fn sweep_retention(
    store: LogStore,
    retention: Duration,
    every: Duration,
    batch: usize,
    shutdown: CancellationToken,
) {
    let batch = batch.max(1);
    let retention_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
    loop {
        let before_ms = ferry_event::now_ms().saturating_sub(retention_ms);
        let mut total = 0u64;
        loop {
            match store.expire(before_ms, batch).await {
                Ok(n) => {
                    total += n;
                    if n < batch as u64 {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "deleting expired log lines failed; trying again at the next sweep");
                    break;
                }
            }
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(RETENTION_PAUSE) => {}
            }
        }
        if total > 0 {
            ferry_runtime::metrics::logs_expired(total);
            tracing::info!(expired = total, before_ms, "expired log lines deleted");
        }
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// Subscribes to the logs topic and stores what arrives until `shutdown` is cancelled or the bus
/// closes. Equivalent to [`LogCollector::subscribe`] then [`LogCollector::run`].
pub async fn run(config: Config, bus: Arc<dyn Bus>, shutdown: CancellationToken) -> Result<()> {
    LogCollector::subscribe(config, bus).await?.run(shutdown).await
}

/// A subscribed log collector. Subscribing before running lets an embedding process make sure
/// the group exists (and so collects events) before anything publishes logs.
#[derive(Debug)]
pub struct LogCollector {
    config: Config,
    sub: Subscription,
}

impl LogCollector {
    /// Joins `config.group` on the logs topic.
    pub async fn subscribe(config: Config, bus: Arc<dyn Bus>) -> Result<Self> {
        let batch_max = config.batch_max.max(1);
        let sub = bus
            .subscribe(
                Subscribe::new(config.group.clone(), [Topic::Logs]).prefetch(batch_max.saturating_mul(2)),
            )
            .await?;
        Ok(LogCollector {
            config: Config { batch_max, ..config },
            sub,
        })
    }

    /// Waits while the log store is out of reach: the retry settings of the bus's.
    fn waits(&self) -> Waits {
        Waits {
            first: self.config.retry_initial,
            max: self.config.retry_max,
        }
    }

    /// Stores batches until `shutdown` is cancelled (a commit in progress is finished and acked
    /// first) or the bus closes. A failing store never loses a line: while it is out of reach
    /// the batch is held and stored again after a backoff; a batch it refuses otherwise is given
    /// back to the bus and taken again after a backoff.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<()> {
        tracing::info!(group = %self.config.group, "log collector started");
        let _ready = self.config.store.readiness();
        let sweeper = self.config.retention.map(|retention| {
            tokio::spawn(sweep_retention(
                self.config.store.clone(),
                retention,
                self.config.retention_every,
                self.config.retention_batch,
                shutdown.child_token(),
            ))
        });
        let result = self.collect(&shutdown).await;
        if let Some(sweeper) = sweeper {
            // The sweep ends with the shutdown; when the bus closed first, stop it here.
            sweeper.abort();
            let _ = sweeper.await;
        }
        tracing::info!("log collector stopped");
        result
    }

    async fn collect(&mut self, shutdown: &CancellationToken) -> Result<()> {
        let mut backoff = Backoff::new(self.config.retry_initial, self.config.retry_max);
        loop {
            let next = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                next = self.sub.next_batch(self.config.batch_max) => next,
            };
            let delay = match next {
                None => {
                    tracing::info!("bus closed; log collector stopping");
                    break;
                }
                Some(Ok(batch)) => {
                    match handle_batch(
                        &self.config.store,
                        &self.config.quotas,
                        batch,
                        self.waits(),
                        shutdown,
                    )
                    .await
                    {
                        Ok(_) => {
                            backoff.reset();
                            continue;
                        }
                        Err(e) => {
                            let delay = backoff.next_delay();
                            tracing::error!(
                                error = %e,
                                retry_in_ms = delay.as_millis() as u64,
                                "storing log lines failed; the batch was given back to the bus"
                            );
                            delay
                        }
                    }
                }
                Some(Err(e)) if e.is_transient() => {
                    let delay = backoff.next_delay();
                    tracing::warn!(
                        error = %e,
                        retry_in_ms = delay.as_millis() as u64,
                        "receiving from the bus failed"
                    );
                    delay
                }
                Some(Err(e)) => return Err(e.into()),
            };
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(delay) => {}
            }
        }
        Ok(())
    }
}

/// Stores the valid events of a batch in one transaction, then acks them; dead-letters the
/// events that can never be stored. While the store is out of reach
/// ([`ferry_runtime::db::is_outage`]) the batch is held and stored again after `waits`, until
/// it is stored or `shutdown` comes; when the store fails otherwise, the valid events are
/// nacked (so the bus delivers them again) and the error is returned. Returns the lines newly
/// stored.
pub(crate) async fn handle_batch(
    store: &LogStore,
    quotas: &LogQuotas,
    batch: Vec<Delivery>,
    waits: Waits,
    shutdown: &CancellationToken,
) -> Result<u64> {
    let mut logs = Vec::with_capacity(batch.len());
    let mut good = Vec::with_capacity(batch.len());
    let mut spans = Vec::new();
    for d in batch {
        match read(&d) {
            Ok(log) => {
                spans.extend(ferry_runtime::trace::event_span(&d.event));
                logs.push(log);
                good.push(d);
            }
            Err(reason) => {
                if let Err(e) = d.dead_letter(&reason).await {
                    tracing::warn!(error = %e, "dead-lettering failed; the event will come back");
                }
            }
        }
    }
    if logs.is_empty() {
        return Ok(0);
    }
    let jobs: BTreeSet<&str> = logs.iter().map(|l| l.job_id.as_str()).collect();
    let job_id = jobs.into_iter().collect::<Vec<_>>().join(",");
    let lines: usize = logs.iter().map(|l| l.lines.len()).sum();
    let span = tracing::info_span!(
        "store_logs",
        job_id = %job_id,
        events = logs.len(),
        lines,
        stored = tracing::field::Empty,
    );
    ferry_runtime::trace::batch(&span, &spans);
    async {
        for log in &logs {
            tracing::debug!(
                job_id = %log.job_id,
                task_id = %log.task_id,
                attempt_id = %log.attempt_id,
                seq = log.seq,
                lines = log.lines.len(),
                "task.log"
            );
        }
        let appended = ferry_runtime::db::through_outages(
            "the log store",
            "logs",
            waits,
            shutdown,
            |e| match e {
                Error::Database(e) => Some(e),
                _ => None,
            },
            || store.append_within(&logs, quotas),
        )
        .await;
        match appended {
            Ok(Appended { stored, dropped }) => {
                tracing::Span::current().record("stored", stored);
                tracing::debug!(stored, "log lines committed");
                if dropped > 0 {
                    tracing::info!(
                        dropped,
                        "log lines dropped: their namespace is at its log quota"
                    );
                }
                // Acked only now that the lines are durable. A crash before the acks means a
                // redelivery, which stores nothing twice.
                if let Err(e) = ferry_bus::ack_all(good).await {
                    tracing::warn!(error = %e, "ack failed; the events will be stored again as a no-op");
                }
                Ok(stored)
            }
            Err(e) => {
                // Back to the bus, last first: brokers that put a returned event at the head of
                // the queue then keep the original order.
                for d in good.into_iter().rev() {
                    if let Err(e) = d.nack().await {
                        tracing::warn!(error = %e, "nack failed; the event comes back when its delivery lapses");
                    }
                }
                Err(e)
            }
        }
    }
    .instrument(span)
    .await
}

/// The payload of a delivery, or why it can never be stored.
fn read(d: &Delivery) -> std::result::Result<TaskLog, String> {
    let ty = d.event.ty();
    if ty != kind::TASK_LOG {
        return Err(format!(
            "event {} has type {ty}; the log collector stores only {} events",
            d.event.id(),
            kind::TASK_LOG
        ));
    }
    let log: TaskLog = ferry_event::decode(&d.event).map_err(|e| e.to_string())?;
    validate(&log).map_err(|e| format!("event {}: {e}", d.event.id()))?;
    Ok(log)
}

#[cfg(test)]
mod tests {
    use ferry_bus::MemoryBus;
    use ferry_event::EventBuilder;
    use ferry_event::payload::{LogLine, Stream};

    use super::*;
    use crate::LogQuery;
    use crate::store::BUSY_TIMEOUT;

    fn log_event(seq: u64) -> ferry_event::Event {
        let log = TaskLog {
            job_id: "j".into(),
            task_id: "t".into(),
            attempt_id: "a".into(),
            namespace: None,
            seq,
            lines: vec![LogLine {
                stream: Stream::Stdout,
                time_ms: 0,
                text: format!("line {seq}"),
            }],
        };
        EventBuilder::new("test").task(kind::TASK_LOG, "j", "t", Some("a"), &log)
    }

    async fn sql(url: &str, statement: &str) -> anyhow::Result<()> {
        let pool = sqlx::SqlitePool::connect(url).await?;
        sqlx::query(statement).execute(&pool).await?;
        pool.close().await;
        Ok(())
    }

    #[tokio::test]
    async fn a_failing_store_gives_the_batch_back_in_order_and_a_retry_stores_it() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let url = format!("sqlite://{}", dir.path().join("logs.db").display());
        let store = LogStore::open(&url).await?;
        let bus = MemoryBus::new();
        let mut sub = bus.subscribe(Subscribe::new("g", [Topic::Logs])).await?;
        bus.publish(&[log_event(0), log_event(1), log_event(2)]).await?;

        // The table disappears: every insert fails.
        sql(&url, "ALTER TABLE log_lines RENAME TO log_lines_away").await?;
        let batch = sub
            .next_batch(8)
            .await
            .ok_or_else(|| anyhow::anyhow!("closed"))??;
        let ids: Vec<String> = batch.iter().map(|d| d.event.id().to_string()).collect();
        let waits = Waits {
            first: Duration::ZERO,
            max: Duration::ZERO,
        };
        let shutdown = CancellationToken::new();
        let err = handle_batch(&store, &LogQuotas::default(), batch, waits, &shutdown)
            .await
            .unwrap_err();
        assert!(err.is_transient(), "{err}");

        // The events are back on the bus, in their order, and nothing was dead-lettered.
        let again = sub
            .next_batch(8)
            .await
            .ok_or_else(|| anyhow::anyhow!("closed"))??;
        let again_ids: Vec<String> = again.iter().map(|d| d.event.id().to_string()).collect();
        assert_eq!(again_ids, ids);
        assert!(again.iter().all(|d| d.redelivered));
        assert!(bus.dead_letters().is_empty());

        sql(&url, "ALTER TABLE log_lines_away RENAME TO log_lines").await?;
        assert_eq!(
            handle_batch(&store, &LogQuotas::default(), again, waits, &shutdown).await?,
            3
        );
        let lines = store.query(&LogQuery::job("j")).await?;
        assert_eq!(lines.iter().map(|r| r.seq).collect::<Vec<_>>(), [0, 1, 2]);
        assert!(sub.try_next().is_none(), "acked after the commit");
        Ok(())
    }

    /// While another process holds the store's write lock for longer than the busy timeout (an
    /// outage), the batch is held and stored once the lock goes, not given back to the bus,
    /// where each return counts towards the broker's delivery limit.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_is_held_through_a_store_outage_not_given_back() -> anyhow::Result<()> {
        use sqlx::{Connection, Executor};
        let dir = tempfile::tempdir()?;
        let url = format!("sqlite://{}", dir.path().join("logs.db").display());
        let store = LogStore::open(&url).await?;
        let bus = MemoryBus::new();
        let mut sub = bus.subscribe(Subscribe::new("g", [Topic::Logs])).await?;
        bus.publish(&[log_event(0), log_event(1)]).await?;
        let batch = sub
            .next_batch(8)
            .await
            .ok_or_else(|| anyhow::anyhow!("closed"))??;

        let mut locker = sqlx::SqliteConnection::connect(&url).await?;
        locker.execute("BEGIN EXCLUSIVE").await?;
        let release = async {
            tokio::time::sleep(BUSY_TIMEOUT + Duration::from_secs(2)).await;
            locker.execute("COMMIT").await.map(drop)
        };
        let waits = Waits {
            first: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        let shutdown = CancellationToken::new();
        let quotas = LogQuotas::default();
        let (stored, released) =
            tokio::join!(handle_batch(&store, &quotas, batch, waits, &shutdown), release);
        released?;
        assert_eq!(stored?, 2);
        assert!(sub.try_next().is_none(), "the events were given back to the bus");
        let lines = store.query(&LogQuery::job("j")).await?;
        assert_eq!(lines.iter().map(|r| r.seq).collect::<Vec<_>>(), [0, 1]);
        Ok(())
    }
}
