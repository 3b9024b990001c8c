//! The log collector service on the in-memory bus and a temporary SQLite file.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use ferry_bus::{Bus, MemoryBus, Subscribe};
use ferry_event::payload::{LogLine, Stream, TaskLog};
use ferry_event::{AttributesReader, Event, EventBuilder, Topic, kind};
use ferry_log_collector::{Config, DEFAULT_GROUP, LogCollector, LogQuery, LogRecord, LogStore};
use ferry_runtime::CancellationToken;
use futures::StreamExt;
use tokio::task::JoinHandle;

const WAIT: Duration = Duration::from_secs(10);

fn batch(job: &str, attempt: &str, seq: u64, n: u64) -> TaskLog {
    TaskLog {
        job_id: job.into(),
        task_id: "t".into(),
        attempt_id: attempt.into(),
        namespace: None,
        seq,
        lines: (seq..seq + n)
            .map(|s| LogLine {
                stream: Stream::Stdout,
                time_ms: s as i64,
                text: format!("{attempt} line {s}"),
            })
            .collect(),
    }
}

fn event(log: &TaskLog) -> Event {
    EventBuilder::new("ferry/launcher-local/test").task(
        kind::TASK_LOG,
        &log.job_id,
        &log.task_id,
        Some(&log.attempt_id),
        log,
    )
}

struct Harness {
    _dir: tempfile::TempDir,
    bus: MemoryBus,
    store: LogStore,
}

impl Harness {
    async fn new() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let url = format!("sqlite://{}", dir.path().join("logs.db").display());
        let store = LogStore::open(&url)
            .await?
            .with_follow_poll(Duration::from_secs(3600));
        Ok(Harness {
            _dir: dir,
            bus: MemoryBus::new(),
            store,
        })
    }

    fn bus(&self) -> Arc<dyn Bus> {
        Arc::new(self.bus.clone())
    }

    /// A subscribed collector: events published from now on reach it.
    async fn collector(&self) -> Result<LogCollector> {
        Ok(LogCollector::subscribe(Config::new(self.store.clone()), self.bus()).await?)
    }

    fn spawn(
        &self,
        collector: LogCollector,
    ) -> (CancellationToken, JoinHandle<ferry_log_collector::Result<()>>) {
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(collector.run(shutdown.clone()));
        (shutdown, handle)
    }

    /// Follows the job's lines until one of `attempt` arrives; returns all lines seen.
    async fn lines_until(&self, job: &str, attempt: &str) -> Result<Vec<LogRecord>> {
        let mut follow = Box::pin(self.store.follow(LogQuery::job(job)));
        let mut seen = Vec::new();
        loop {
            let next = tokio::time::timeout(WAIT, follow.next())
                .await
                .with_context(|| format!("no line of {attempt} stored within {WAIT:?}"))?
                .ok_or_else(|| anyhow!("follow ended"))??;
            let done = next.attempt_id == attempt;
            seen.push(next);
            if done {
                return Ok(seen);
            }
        }
    }

    /// Stops the service and checks that it acked everything it took.
    async fn stop(
        &self,
        shutdown: CancellationToken,
        handle: JoinHandle<ferry_log_collector::Result<()>>,
    ) -> Result<()> {
        shutdown.cancel();
        tokio::time::timeout(WAIT, handle)
            .await
            .context("the service did not stop on shutdown")???;
        assert_eq!(self.bus.depth(DEFAULT_GROUP), 0, "deliveries left unacked");
        Ok(())
    }
}

fn seqs_of(lines: &[LogRecord], attempt: &str) -> Vec<u64> {
    lines
        .iter()
        .filter(|r| r.attempt_id == attempt)
        .map(|r| r.seq)
        .collect()
}

#[tokio::test]
async fn published_lines_are_stored_in_order_and_acked() -> Result<()> {
    let h = Harness::new().await?;
    let (shutdown, handle) = h.spawn(h.collector().await?);
    h.bus
        .publish(&[
            event(&batch("j", "a", 0, 3)),
            event(&batch("j", "b", 0, 2)),
            event(&batch("j", "a", 3, 3)),
            event(&batch("other", "c", 0, 1)),
            event(&batch("j", "end", 0, 1)),
        ])
        .await?;
    // Events are stored in the order they were published: once the last is stored, all are.
    h.lines_until("j", "end").await?;
    let all = h.store.query(&LogQuery::job("j")).await?;
    assert_eq!(seqs_of(&all, "a"), [0, 1, 2, 3, 4, 5]);
    assert_eq!(seqs_of(&all, "b"), [0, 1]);
    assert_eq!(seqs_of(&all, "c"), [] as [u64; 0]);
    let attempt = h.store.query(&LogQuery::job("j").attempt("a")).await?;
    assert_eq!(attempt[5].text, "a line 5");
    assert_eq!(h.store.query(&LogQuery::job("other")).await?.len(), 1);
    h.stop(shutdown, handle).await?;

    // Nothing comes back to the group: every delivery was acked.
    let mut again = h
        .bus
        .subscribe(Subscribe::new(DEFAULT_GROUP, [Topic::Logs]))
        .await?;
    assert!(again.try_next().is_none());
    Ok(())
}

#[tokio::test]
async fn duplicated_and_overlapping_events_store_each_line_once() -> Result<()> {
    let h = Harness::new().await?;
    let collector = h.collector().await?;
    let first = event(&batch("j", "a", 0, 10));
    h.bus
        .publish(&[
            first.clone(),
            first, // the same event twice, as a broker may deliver it
            event(&batch("j", "a", 5, 10)),
            event(&batch("j", "end", 0, 1)),
        ])
        .await?;
    let (shutdown, handle) = h.spawn(collector);
    let seen = h.lines_until("j", "end").await?;
    assert_eq!(seqs_of(&seen, "a"), (0..15).collect::<Vec<_>>());
    assert_eq!(h.store.lines_stored("a").await?, 15);
    h.stop(shutdown, handle).await
}

#[tokio::test]
async fn a_malformed_event_is_dead_lettered_and_the_rest_of_its_batch_stored() -> Result<()> {
    let h = Harness::new().await?;
    let collector = h.collector().await?;
    let builder = EventBuilder::new("test");
    let malformed = builder.task(kind::TASK_LOG, "j", "t", None, &serde_json::json!({"jobId": 7}));
    let no_attempt = event(&batch("j", "", 0, 1));
    // Published before the service runs, so one batch holds them all.
    h.bus
        .publish(&[
            event(&batch("j", "a", 0, 2)),
            malformed.clone(),
            no_attempt.clone(),
            event(&batch("j", "b", 0, 1)),
        ])
        .await?;
    let (shutdown, handle) = h.spawn(collector);
    let seen = h.lines_until("j", "b").await?;
    assert_eq!(seqs_of(&seen, "a"), [0, 1]);

    let dead = h.bus.dead_letters();
    assert_eq!(dead.len(), 2, "{dead:?}");
    assert_eq!(dead[0].event.id(), malformed.id());
    assert!(dead[0].reason.contains(malformed.id()), "{}", dead[0].reason);
    assert!(dead[0].reason.contains("not valid"), "{}", dead[0].reason);
    assert_eq!(dead[1].event.id(), no_attempt.id());
    assert!(
        dead[1].reason.contains("attemptId is empty"),
        "{}",
        dead[1].reason
    );
    assert!(dead.iter().all(|d| d.group == DEFAULT_GROUP));
    h.stop(shutdown, handle).await
}

#[tokio::test]
async fn a_crash_between_commit_and_ack_stores_no_line_twice() -> Result<()> {
    let h = Harness::new().await?;
    // A first collector instance takes a batch, commits it, and dies before acking.
    let mut crashed = h
        .bus
        .subscribe(Subscribe::new(DEFAULT_GROUP, [Topic::Logs]))
        .await?;
    h.bus
        .publish(&[event(&batch("j", "a", 0, 4)), event(&batch("j", "a", 4, 4))])
        .await?;
    let deliveries = crashed
        .next_batch(16)
        .await
        .ok_or_else(|| anyhow!("bus closed"))??;
    assert_eq!(deliveries.len(), 2);
    let logs: Vec<TaskLog> = deliveries
        .iter()
        .map(|d| ferry_event::decode(&d.event))
        .collect::<Result<_, _>>()?;
    assert_eq!(h.store.append(&logs).await?, 8);
    drop(deliveries);
    drop(crashed);

    // The restarted service gets the same events again, then new ones.
    let (shutdown, handle) = h.spawn(h.collector().await?);
    h.bus
        .publish(&[event(&batch("j", "a", 8, 2)), event(&batch("j", "end", 0, 1))])
        .await?;
    let seen = h.lines_until("j", "end").await?;
    assert_eq!(seqs_of(&seen, "a"), (0..10).collect::<Vec<_>>());
    assert_eq!(h.store.lines_stored("a").await?, 10);
    h.stop(shutdown, handle).await
}

#[tokio::test]
async fn the_service_stops_when_the_bus_closes() -> Result<()> {
    let h = Harness::new().await?;
    let (_shutdown, handle) = h.spawn(h.collector().await?);
    h.bus.close();
    tokio::time::timeout(WAIT, handle)
        .await
        .context("the service did not stop when the bus closed")???;
    Ok(())
}

#[tokio::test]
async fn run_stores_what_reaches_its_group_and_stops_on_shutdown() -> Result<()> {
    let h = Harness::new().await?;
    // Bind the group first, as an embedding process does before publishing.
    drop(
        h.bus
            .subscribe(Subscribe::new(DEFAULT_GROUP, [Topic::Logs]))
            .await?,
    );
    h.bus.publish(&[event(&batch("j", "a", 0, 2))]).await?;
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(ferry_log_collector::run(
        Config::new(h.store.clone()),
        h.bus(),
        shutdown.clone(),
    ));
    let seen = h.lines_until("j", "a").await?;
    assert_eq!(seen[0].text, "a line 0");
    h.stop(shutdown, handle).await
}

#[tokio::test]
async fn with_a_retention_old_lines_are_deleted_in_batches_and_recent_ones_kept() -> Result<()> {
    let h = Harness::new().await?;
    let config = Config {
        retention: Some(Duration::from_secs(3600)),
        retention_every: Duration::from_millis(20),
        // Ten old lines take four batches.
        retention_batch: 3,
        ..Config::new(h.store.clone())
    };
    let collector = LogCollector::subscribe(config, h.bus()).await?;
    let mut recent = batch("new", "b", 0, 2);
    for line in &mut recent.lines {
        line.time_ms = ferry_event::now_ms();
    }
    // Lines stamped in 1970, older than any retention.
    h.bus
        .publish(&[event(&batch("old", "a", 0, 10)), event(&recent)])
        .await?;
    let (shutdown, handle) = h.spawn(collector);
    assert_eq!(seqs_of(&h.lines_until("new", "b").await?, "b"), [0]);
    let deadline = tokio::time::Instant::now() + WAIT;
    while !h.store.expired("old").await? || !h.store.query(&LogQuery::job("old")).await?.is_empty() {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "old lines still stored after {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(seqs_of(&h.store.query(&LogQuery::job("new")).await?, "b"), [0, 1]);
    assert!(!h.store.expired("new").await?);
    h.stop(shutdown, handle).await
}

#[tokio::test]
async fn without_a_retention_nothing_is_deleted() -> Result<()> {
    let h = Harness::new().await?;
    let config = Config {
        retention_every: Duration::from_millis(10),
        ..Config::new(h.store.clone())
    };
    let collector = LogCollector::subscribe(config, h.bus()).await?;
    h.bus.publish(&[event(&batch("old", "a", 0, 3))]).await?;
    let (shutdown, handle) = h.spawn(collector);
    h.lines_until("old", "a").await?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(h.store.lines_stored("a").await?, 3);
    assert!(!h.store.expired("old").await?);
    h.stop(shutdown, handle).await
}
