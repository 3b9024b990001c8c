//! Consuming: one librdkafka consumer per [`Subscription`], driven by a task that hands
//! deliveries over a bounded channel and commits offsets in order.
//!
//! Each partition keeps the offsets it delivered, in order, with whether they were acked. The
//! group's committed offset for a partition is the one after the longest acked prefix, so a
//! commit never passes an unacked message. A nack rewinds the partition to the nacked offset
//! (librdkafka `seek`): the in-flight record is cut there and the partition's state gets a new
//! epoch, so later deliveries of that partition still held or buffered become stale (their acks
//! are ignored, buffered ones are never handed out) and everything from the nacked message on
//! is delivered again, in order. A revoked partition's state is committed as far as it is acked
//! and then forgotten; the new owner receives the rest.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use ferry_bus::{Consumer, Delivery, Settle, Subscribe, Subscription};
use ferry_event::{Event, Topic};
use futures::StreamExt;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer as _, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaResult;
use rdkafka::message::{BorrowedMessage, Header, Headers, Message as _, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use crate::binding::{self, Message};
use crate::{Config, Error, KafkaBus};

/// How often acknowledged offsets are committed (they are also committed on revocation and
/// when the subscription ends).
const COMMIT_INTERVAL: Duration = Duration::from_millis(100);
/// The header of a dead letter that says why it was dead-lettered.
pub const DEAD_REASON: &str = "ferry_dead_reason";
/// Headers of a dead letter naming where it came from.
pub const DEAD_TOPIC: &str = "ferry_dead_topic";
pub const DEAD_PARTITION: &str = "ferry_dead_partition";
pub const DEAD_OFFSET: &str = "ferry_dead_offset";
pub const DEAD_GROUP: &str = "ferry_dead_group";
/// Consumer group session timeout: how soon a member that vanished without leaving is
/// replaced by the others.
const SESSION_TIMEOUT: Duration = Duration::from_secs(6);
/// Longest wait for partition metadata and offsets when an ephemeral group starts.
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

type Partition = (String, i32);

/// Per-partition delivery state.
#[derive(Debug)]
struct PartState {
    /// Changes whenever deliveries made so far stop counting (nack, reassignment).
    epoch: u64,
    /// Offsets delivered and not yet committed, ascending, with whether each was acked.
    inflight: VecDeque<(i64, bool)>,
    /// Highest offset handed to the consumer: a lower one handed out again is a redelivery.
    max_seen: i64,
    /// An offset the partition must be rewound to; until it arrives nothing else is accepted.
    rewind: Option<i64>,
    /// Whether a rewind still has to be asked of librdkafka.
    seek_pending: bool,
    /// Position to commit (the offset after the acked prefix), if it moved since the last commit.
    commit: Option<i64>,
}

/// Delivery state of every partition this consumer owns, shared with the rebalance callback
/// and with the deliveries' settlers.
#[derive(Debug, Default)]
pub(crate) struct Tracker {
    parts: HashMap<Partition, PartState>,
    next_epoch: u64,
    /// The consumer ended: settling does nothing any more.
    closed: bool,
}

impl Tracker {
    fn part(&mut self, p: &Partition) -> &mut PartState {
        if !self.parts.contains_key(p) {
            self.next_epoch += 1;
            self.parts.insert(
                p.clone(),
                PartState {
                    epoch: self.next_epoch,
                    inflight: VecDeque::new(),
                    max_seen: -1,
                    rewind: None,
                    seek_pending: false,
                    commit: None,
                },
            );
        }
        self.parts.get_mut(p).expect("inserted above")
    }

    /// Records a received message. `None`: it must be skipped (it was fetched before a rewind
    /// took effect, or is out of order); otherwise its epoch.
    fn received(&mut self, p: &Partition, offset: i64) -> Option<u64> {
        let part = self.part(p);
        match part.rewind {
            Some(to) if offset != to => return None,
            Some(_) => part.rewind = None,
            None => {}
        }
        if part.inflight.back().is_some_and(|(last, _)| *last >= offset) {
            return None;
        }
        part.inflight.push_back((offset, false));
        Some(part.epoch)
    }

    /// Records that a delivery is handed to the consumer; returns whether an earlier one of the
    /// same message was, or `None` if a rewind or revocation made it stale.
    fn hand_out(&mut self, p: &Partition, offset: i64, epoch: u64) -> Option<bool> {
        let part = self.parts.get_mut(p).filter(|s| s.epoch == epoch)?;
        let redelivered = offset <= part.max_seen;
        part.max_seen = part.max_seen.max(offset);
        Some(redelivered)
    }

    fn is_current(&self, p: &Partition, epoch: u64) -> bool {
        self.parts.get(p).is_some_and(|s| s.epoch == epoch)
    }

    /// Marks a delivery acked; returns whether the commit position moved.
    fn ack(&mut self, p: &Partition, offset: i64, epoch: u64) -> bool {
        let Some(part) = self.parts.get_mut(p).filter(|s| s.epoch == epoch) else {
            return false;
        };
        let Ok(i) = part.inflight.binary_search_by_key(&offset, |(o, _)| *o) else {
            return false;
        };
        part.inflight[i].1 = true;
        let mut moved = false;
        while let Some((o, true)) = part.inflight.front().copied() {
            part.inflight.pop_front();
            part.commit = Some(o + 1);
            moved = true;
        }
        moved
    }

    /// Gives a delivery back: the partition is rewound to it. Returns whether a seek is due.
    fn nack(&mut self, p: &Partition, offset: i64, epoch: u64) -> bool {
        if !self.is_current(p, epoch) {
            return false;
        }
        self.next_epoch += 1;
        let epoch = self.next_epoch;
        let part = self.parts.get_mut(p).expect("checked above");
        part.inflight.retain(|(o, _)| *o < offset);
        part.epoch = epoch;
        part.rewind = Some(offset);
        part.seek_pending = true;
        true
    }

    fn pending_seeks(&mut self) -> Vec<(Partition, i64)> {
        self.parts
            .iter_mut()
            .filter(|(_, s)| s.seek_pending)
            .filter_map(|(p, s)| {
                s.seek_pending = false;
                s.rewind.map(|o| (p.clone(), o))
            })
            .collect()
    }

    fn retry_seek(&mut self, p: &Partition) {
        if let Some(s) = self.parts.get_mut(p) {
            s.seek_pending = true;
        }
    }

    /// Positions to commit, taken.
    fn take_commits(&mut self) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), s) in &mut self.parts {
            if let Some(pos) = s.commit.take() {
                // Adding a partition with a valid offset cannot fail.
                let _ = tpl.add_partition_offset(topic, *partition, Offset::Offset(pos));
            }
        }
        tpl
    }

    /// Forgets revoked partitions, returning their positions still to commit.
    fn revoke(&mut self, revoked: &TopicPartitionList) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for e in revoked.elements() {
            let p = (e.topic().to_string(), e.partition());
            if let Some(s) = self.parts.remove(&p)
                && let Some(pos) = s.commit
            {
                let _ = tpl.add_partition_offset(&p.0, p.1, Offset::Offset(pos));
            }
        }
        tpl
    }
}

fn lock(t: &Mutex<Tracker>) -> MutexGuard<'_, Tracker> {
    // The tracker's invariants hold between statements; a panic elsewhere does not break them.
    t.lock().unwrap_or_else(|p| p.into_inner())
}

/// Rebalance and commit callbacks.
struct Context {
    tracker: Arc<Mutex<Tracker>>,
    group: String,
}

impl ClientContext for Context {}

impl ConsumerContext for Context {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                let commits = lock(&self.tracker).revoke(tpl);
                tracing::info!(group = %self.group, partitions = tpl.count(), "partitions revoked");
                if commits.count() > 0
                    && let Err(e) = consumer.commit(&commits, CommitMode::Sync)
                {
                    tracing::warn!(group = %self.group, error = %e,
                        "committing revoked partitions failed: their acked messages will be delivered again");
                }
            }
            Rebalance::Assign(tpl) => {
                tracing::info!(group = %self.group, partitions = tpl.count(), "partitions assigned");
            }
            Rebalance::Error(e) => {
                tracing::warn!(group = %self.group, error = %e, "consumer group rebalance failed");
            }
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        if let Err(e) = result {
            tracing::warn!(group = %self.group, error = %e, partitions = offsets.count(),
                "committing offsets failed; they are committed again with the next acknowledgement");
        }
    }
}

/// Produces dead letters to `NS.dead`.
#[derive(Clone)]
pub(crate) struct DeadLetters {
    producer: FutureProducer,
    topic: String,
    group: String,
}

impl DeadLetters {
    /// Produces the message (key, headers, value) with the reason and origin added, and waits
    /// for the broker's acknowledgement.
    async fn send(&self, msg: &Message, from: &Partition, offset: i64, reason: &str) -> Result<(), String> {
        let mut headers = OwnedHeaders::new_with_capacity(msg.headers.len() + 5);
        for (key, value) in &msg.headers {
            headers = headers.insert(Header {
                key,
                value: value.as_deref(),
            });
        }
        let (partition, offset) = (from.1.to_string(), offset.to_string());
        for (key, value) in [
            (DEAD_REASON, reason),
            (DEAD_TOPIC, from.0.as_str()),
            (DEAD_PARTITION, partition.as_str()),
            (DEAD_OFFSET, offset.as_str()),
            (DEAD_GROUP, self.group.as_str()),
        ] {
            headers = headers.insert(Header {
                key,
                value: Some(value),
            });
        }
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&self.topic).headers(headers);
        if let Some(k) = &msg.key {
            record = record.key(k.as_slice());
        }
        if let Some(v) = &msg.value {
            record = record.payload(v.as_slice());
        }
        self.producer
            .send(record, crate::QUEUE_FULL_WAIT)
            .await
            .map(drop)
            .map_err(|(e, _)| format!("producing the dead letter to {} failed: {e}", self.topic))
    }
}

/// A message ready to be handed out.
struct Ready {
    event: Event,
    topic: Topic,
    settle: KafkaSettle,
}

pub(crate) async fn subscribe(bus: &KafkaBus, spec: &Subscribe) -> Result<Subscription, Error> {
    let config: &Config = &bus.inner.config;
    let group = if spec.ephemeral {
        format!("{}.{}", config.group(&spec.group), uuid::Uuid::new_v4().simple())
    } else {
        config.group(&spec.group)
    };
    let tracker = Arc::new(Mutex::new(Tracker::default()));
    let context = Context {
        tracker: tracker.clone(),
        group: group.clone(),
    };
    let consumer: StreamConsumer<Context> = ClientConfig::new()
        .set("bootstrap.servers", &config.brokers)
        .set("group.id", &group)
        .set("client.id", format!("ferry-{group}"))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("session.timeout.ms", SESSION_TIMEOUT.as_millis().to_string())
        .set("heartbeat.interval.ms", "500")
        .set("topic.metadata.refresh.interval.ms", "5000")
        // Hand a message over as soon as it is there: dispatch latency matters more than
        // fetch efficiency (see `DEFAULT_FETCH_WAIT_MS`).
        .set("fetch.wait.max.ms", config.fetch_wait_ms.to_string())
        .set("fetch.min.bytes", "1")
        .create_with_context(context)
        .map_err(|e| Error::Client(Box::new(e)))?;
    let topics: Vec<String> = spec.topics.iter().map(|t| config.topic(t)).collect();
    let unavailable = |doing: String, source| Error::Unavailable {
        brokers: config.brokers.clone(),
        doing,
        source: Box::new(source),
    };
    let consumer = if spec.ephemeral {
        // An ephemeral group hears what is published from now on: it is assigned every
        // partition at its current end, resolved before returning so that nothing published
        // after `subscribe` returns is missed. It never joins a group nor commits.
        let topics = topics.clone();
        tokio::task::spawn_blocking(move || {
            let mut at_end = TopicPartitionList::new();
            for topic in &topics {
                let meta = consumer
                    .fetch_metadata(Some(topic), METADATA_TIMEOUT)
                    .map_err(|e| (format!("reading the partitions of {topic}"), e))?;
                for t in meta.topics() {
                    for p in t.partitions() {
                        let (_, high) = consumer
                            .fetch_watermarks(topic, p.id(), METADATA_TIMEOUT)
                            .map_err(|e| (format!("reading the end of {topic}/{}", p.id()), e))?;
                        // Adding a partition with a valid offset cannot fail.
                        let _ = at_end.add_partition_offset(topic, p.id(), Offset::Offset(high));
                    }
                }
            }
            consumer
                .assign(&at_end)
                .map_err(|e| ("assigning partitions".to_string(), e))?;
            Ok(consumer)
        })
        .await
        .map_err(|_| Error::Client(Box::new(rdkafka::error::KafkaError::Canceled)))?
        .map_err(|(doing, e)| unavailable(doing, e))?
    } else {
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&names)
            .map_err(|e| unavailable(format!("subscribing group {group} to {}", topics.join(", ")), e))?;
        consumer
    };
    let prefetch = spec.prefetch.max(1);
    let (tx, rx) = mpsc::channel(prefetch);
    let wake = Arc::new(Notify::new());
    let (left_tx, left) = oneshot::channel();
    let driver = Driver {
        consumer: Arc::new(consumer),
        config: config.clone(),
        tracker: tracker.clone(),
        wake: wake.clone(),
        window: Arc::new(Semaphore::new(prefetch)),
        dead: DeadLetters {
            producer: bus.inner.producer.clone(),
            topic: config.dead_topic(),
            group: group.clone(),
        },
        commits: !spec.ephemeral,
        group,
        out: tx,
        left: left_tx,
    };
    tokio::spawn(driver.run());
    Ok(Subscription::new(Box::new(KafkaConsumer { rx, tracker, left })))
}

/// The task behind a subscription.
struct Driver {
    consumer: Arc<StreamConsumer<Context>>,
    config: Config,
    tracker: Arc<Mutex<Tracker>>,
    wake: Arc<Notify>,
    window: Arc<Semaphore>,
    dead: DeadLetters,
    /// Whether acknowledged offsets are committed (not for ephemeral groups).
    commits: bool,
    group: String,
    out: mpsc::Sender<Ready>,
    /// Told once the final commit is done and the consumer has left its group.
    left: oneshot::Sender<()>,
}

impl Driver {
    async fn run(self) {
        let consumer = self.consumer.clone();
        let mut stream = consumer.stream();
        let mut permit: Option<OwnedSemaphorePermit> = None;
        let mut tick = tokio::time::interval(COMMIT_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = self.out.closed() => break,
                _ = self.wake.notified() => self.seek_rewinds(),
                _ = tick.tick() => {
                    self.seek_rewinds();
                    self.commit(CommitMode::Async);
                }
                p = self.window.clone().acquire_owned(), if permit.is_none() => permit = p.ok(),
                m = stream.next(), if permit.is_some() => {
                    let Some(m) = m else { break };
                    let received = match m {
                        Ok(m) => self.receive(&m),
                        Err(e) => {
                            tracing::warn!(group = %self.group, error = %e, "Kafka consumer error");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    };
                    match received {
                        Received::Skip => {}
                        Received::Event(r) => {
                            let Some(p) = permit.take() else { continue };
                            let mut r = *r;
                            r.settle.permit = Some(p);
                            if self.out.send(r).await.is_err() {
                                break;
                            }
                        }
                        Received::Malformed { msg, from, offset, epoch, reason } => {
                            self.dead_letter_malformed(&msg, &from, offset, epoch, &reason).await;
                        }
                    }
                }
            }
        }
        drop(stream);
        drop(consumer);
        self.close();
    }

    /// Decodes a received message and records it as delivered.
    fn receive(&self, m: &BorrowedMessage<'_>) -> Received {
        let from = (m.topic().to_string(), m.partition());
        let offset = m.offset();
        let Some(epoch) = lock(&self.tracker).received(&from, offset) else {
            return Received::Skip;
        };
        let msg = Message {
            key: m.key().map(<[u8]>::to_vec),
            headers: m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                        .collect()
                })
                .unwrap_or_default(),
            value: m.payload().map(<[u8]>::to_vec),
        };
        let topic = self.config.logical(&from.0);
        let decoded = binding::decode(&msg).map_err(|e| e.to_string());
        match (topic, decoded) {
            (Some(topic), Ok(event)) => Received::Event(Box::new(Ready {
                event,
                topic,
                settle: KafkaSettle {
                    tracker: self.tracker.clone(),
                    wake: self.wake.clone(),
                    dead: self.dead.clone(),
                    from,
                    offset,
                    epoch,
                    msg,
                    settled: false,
                    permit: None,
                },
            })),
            (None, _) => Received::Malformed {
                reason: format!(
                    "topic {} is not one of namespace {}",
                    from.0, self.config.namespace
                ),
                msg,
                from,
                offset,
                epoch,
            },
            (_, Err(reason)) => Received::Malformed {
                msg,
                from,
                offset,
                epoch,
                reason,
            },
        }
    }

    /// A message that is not a CloudEvent goes to the dead-letter topic, never to the consumer.
    async fn dead_letter_malformed(
        &self,
        msg: &Message,
        from: &Partition,
        offset: i64,
        epoch: u64,
        reason: &str,
    ) {
        tracing::warn!(group = %self.group, topic = %from.0, partition = from.1, offset, reason,
            "dead-lettering a message that is not a readable CloudEvent");
        match self.dead.send(msg, from, offset, reason).await {
            Ok(()) => {
                lock(&self.tracker).ack(from, offset, epoch);
            }
            Err(e) => {
                tracing::error!(group = %self.group, error = %e, "dead-lettering failed; the message will be read again");
                lock(&self.tracker).nack(from, offset, epoch);
                tokio::time::sleep(Duration::from_secs(1)).await;
                self.seek_rewinds();
            }
        }
    }

    /// Asks librdkafka to rewind partitions that were nacked.
    fn seek_rewinds(&self) {
        let seeks = lock(&self.tracker).pending_seeks();
        for ((topic, partition), offset) in seeks {
            if let Err(e) = self
                .consumer
                .seek(&topic, partition, Offset::Offset(offset), Duration::ZERO)
            {
                tracing::debug!(group = %self.group, topic, partition, offset, error = %e,
                    "rewinding the partition failed; trying again");
                lock(&self.tracker).retry_seek(&(topic, partition));
            }
        }
    }

    fn commit(&self, mode: CommitMode) {
        let tpl = lock(&self.tracker).take_commits();
        if tpl.count() == 0 || !self.commits {
            return;
        }
        if let Err(e) = self.consumer.commit(&tpl, mode) {
            tracing::warn!(group = %self.group, error = %e,
                "committing offsets failed: acknowledged messages may be delivered again");
        }
    }

    /// Commits what is acked and closes the consumer (leaving the group), off the async threads.
    fn close(self) {
        let Driver {
            consumer,
            tracker,
            group,
            commits,
            left,
            ..
        } = self;
        let finish = move || {
            let tpl = {
                let mut t = lock(&tracker);
                t.closed = true;
                t.take_commits()
            };
            if commits
                && tpl.count() > 0
                && let Err(e) = consumer.commit(&tpl, CommitMode::Sync)
            {
                tracing::warn!(group = %group, error = %e,
                    "final commit failed: acknowledged messages may be delivered again");
            }
            // Dropping the last handle closes the consumer: it leaves the group.
            drop(consumer);
            let _ = left.send(());
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn_blocking(finish)),
            Err(_) => finish(),
        }
    }
}

enum Received {
    Skip,
    Event(Box<Ready>),
    Malformed {
        msg: Message,
        from: Partition,
        offset: i64,
        epoch: u64,
        reason: String,
    },
}

/// The consumer side of a subscription.
struct KafkaConsumer {
    rx: mpsc::Receiver<Ready>,
    tracker: Arc<Mutex<Tracker>>,
    left: oneshot::Receiver<()>,
}

impl KafkaConsumer {
    /// A ready message as a delivery, unless a rewind or revocation made it stale.
    fn accept(&self, r: Ready) -> Option<Delivery> {
        let s = &r.settle;
        let redelivered = lock(&self.tracker).hand_out(&s.from, s.offset, s.epoch)?;
        Some(Delivery::new(r.event, r.topic, redelivered, Box::new(r.settle)))
    }
}

#[async_trait]
impl Consumer for KafkaConsumer {
    async fn recv(&mut self) -> Option<ferry_bus::Result<Delivery>> {
        loop {
            let r = self.rx.recv().await?;
            if let Some(d) = self.accept(r) {
                return Some(Ok(d));
            }
        }
    }

    fn try_recv(&mut self) -> Option<Delivery> {
        loop {
            let r = self.rx.try_recv().ok()?;
            if let Some(d) = self.accept(r) {
                return Some(d);
            }
        }
    }

    async fn close(self: Box<Self>) {
        let KafkaConsumer { rx, left, .. } = *self;
        // Closing the channel stops the driver, which commits, leaves the group and says so.
        drop(rx);
        // Leaving asks the group coordinator; if it cannot be reached, the session timeout
        // removes the member anyway.
        let _ = tokio::time::timeout(SESSION_TIMEOUT + METADATA_TIMEOUT, left).await;
    }
}

/// Settles one delivery; holds its place in the prefetch window until then.
struct KafkaSettle {
    tracker: Arc<Mutex<Tracker>>,
    wake: Arc<Notify>,
    dead: DeadLetters,
    from: Partition,
    offset: i64,
    epoch: u64,
    msg: Message,
    settled: bool,
    permit: Option<OwnedSemaphorePermit>,
}

impl KafkaSettle {
    fn give_back(&mut self) {
        self.settled = true;
        if lock(&self.tracker).nack(&self.from, self.offset, self.epoch) {
            self.wake.notify_one();
        }
    }

    fn closed(&self) -> ferry_bus::Result<()> {
        if lock(&self.tracker).closed {
            Err(ferry_bus::Error::Closed)
        } else {
            Ok(())
        }
    }
}

impl Drop for KafkaSettle {
    fn drop(&mut self) {
        if !self.settled {
            self.give_back();
        }
    }
}

#[async_trait]
impl Settle for KafkaSettle {
    async fn ack(mut self: Box<Self>) -> ferry_bus::Result<()> {
        self.settled = true;
        self.closed()?;
        lock(&self.tracker).ack(&self.from, self.offset, self.epoch);
        Ok(())
    }

    async fn nack(mut self: Box<Self>) -> ferry_bus::Result<()> {
        self.closed()?;
        self.give_back();
        Ok(())
    }

    async fn dead_letter(mut self: Box<Self>, reason: &str) -> ferry_bus::Result<()> {
        self.closed()?;
        self.dead
            .send(&self.msg, &self.from, self.offset, reason)
            .await
            .map_err(ferry_bus::Error::Unavailable)?;
        self.settled = true;
        lock(&self.tracker).ack(&self.from, self.offset, self.epoch);
        Ok(())
    }

    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any + Send> {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> Partition {
        ("ns.control".to_string(), 0)
    }

    fn committed(t: &mut Tracker) -> Option<i64> {
        let tpl = t.take_commits();
        tpl.elements().first().and_then(|e| match e.offset() {
            Offset::Offset(o) => Some(o),
            _ => None,
        })
    }

    #[test]
    fn commits_stop_at_the_first_unacked_offset() {
        let mut t = Tracker::default();
        let e = t.received(&p(), 10).unwrap();
        t.received(&p(), 11).unwrap();
        t.received(&p(), 13).unwrap(); // offsets may have gaps
        assert!(!t.ack(&p(), 11, e));
        assert!(!t.ack(&p(), 13, e));
        assert_eq!(committed(&mut t), None, "10 is not acked");
        assert!(t.ack(&p(), 10, e));
        assert_eq!(committed(&mut t), Some(14));
        assert_eq!(committed(&mut t), None, "taken once");
    }

    #[test]
    fn a_nack_rewinds_and_makes_later_deliveries_stale() {
        let mut t = Tracker::default();
        let e = t.received(&p(), 0).unwrap();
        assert_eq!(t.hand_out(&p(), 0, e), Some(false));
        t.received(&p(), 1).unwrap();
        assert_eq!(t.hand_out(&p(), 1, e), Some(false));
        t.received(&p(), 2).unwrap(); // fetched, never handed out
        t.ack(&p(), 0, e);
        assert!(t.nack(&p(), 1, e));
        assert!(!t.is_current(&p(), e));
        assert!(!t.ack(&p(), 2, e), "a stale ack does not count");
        assert_eq!(t.pending_seeks(), vec![(p(), 1)]);
        assert_eq!(t.received(&p(), 3), None, "fetched before the rewind took effect");
        assert_eq!(t.hand_out(&p(), 2, e), None, "buffered before the rewind: stale");
        let e2 = t.received(&p(), 1).unwrap();
        assert_eq!(
            t.hand_out(&p(), 1, e2),
            Some(true),
            "handed out before: a redelivery"
        );
        t.received(&p(), 2).unwrap();
        assert_eq!(t.hand_out(&p(), 2, e2), Some(false), "never handed out before");
        assert!(t.ack(&p(), 1, e2));
        assert_eq!(committed(&mut t), Some(2));
        assert!(!t.nack(&p(), 2, e), "a stale nack does nothing");
    }

    #[test]
    fn revocation_hands_over_acked_positions_and_forgets_the_rest() {
        let mut t = Tracker::default();
        let e = t.received(&p(), 5).unwrap();
        t.received(&p(), 6).unwrap();
        t.ack(&p(), 5, e);
        let mut revoked = TopicPartitionList::new();
        revoked.add_partition(&p().0, p().1);
        let tpl = t.revoke(&revoked);
        assert_eq!(tpl.elements()[0].offset(), Offset::Offset(6));
        assert!(!t.is_current(&p(), e));
        assert!(!t.ack(&p(), 6, e));
    }
}
