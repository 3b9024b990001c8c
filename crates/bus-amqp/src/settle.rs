//! Settling deliveries: acks, nacks, rejects and dead letters on the channel a message came
//! from.
//!
//! - [`Tags`]: the channel's unsettled delivery tags. Every settlement is sent while holding
//!   them, so that a `multiple` ack never covers a message settled otherwise (RabbitMQ closes
//!   the channel for a tag it no longer knows).
//! - [`AmqpSettle`]: one message. [`ack_together`] acks many with one `basic.ack` (`multiple`)
//!   per run of tags that starts at the lowest unsettled one.
//! - [`PartSettle`]: one event of a batch message ([`Batch`]). The message is acked once every
//!   event of it is acked or dead-lettered. Events given back (nacked, or dropped unsettled)
//!   while others were acked are published again as a message of their own, straight to the
//!   group's queue, and the original is acked; when none was acked the message itself is given
//!   back. So, as on every bus, an acked event does not come again while its consumer lives; if
//!   the consumer dies first, RabbitMQ delivers the unacked message whole, acked events with it.

use std::any::Any;
use std::collections::BTreeSet;
use std::future::Future;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use ferry_bus::Settle;
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicPublishOptions, BasicRejectOptions};
use lapin::types::ShortString;
use lapin::{Acker, BasicProperties, Channel, Confirmation};
use tokio::sync::{Mutex, Notify, OwnedSemaphorePermit};

use crate::mapping::{self, PERSISTENT};
use crate::topology::{DEAD_REASON_HEADER, ROUTING_KEY_HEADER};

/// Longest wait for the broker to confirm a message published while settling (a dead letter,
/// events given back).
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for the connection to take an ack, nack or reject. Settling normally takes
/// well under a millisecond, but lapin's promise for it can stay pending for good when the
/// connection breaks at that very moment; the delivery comes again either way.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);

const REQUEUE: BasicNackOptions = BasicNackOptions {
    multiple: false,
    requeue: true,
};

/// What settling needs of one consumer channel.
pub(crate) struct Tags {
    channel: Channel,
    /// The namespace's dead-letter exchange.
    dead_exchange: String,
    /// The group's queue, where events given back from a batch message go.
    queue: String,
    unsettled: Mutex<BTreeSet<u64>>,
    /// Settlements under way in tasks of their own (of deliveries dropped unsettled): the
    /// channel is closed only once they are done.
    busy: AtomicUsize,
    idle: Notify,
}

impl Tags {
    pub(crate) fn new(channel: Channel, dead_exchange: String, queue: String) -> Tags {
        Tags {
            channel,
            dead_exchange,
            queue,
            unsettled: Mutex::default(),
            busy: AtomicUsize::new(0),
            idle: Notify::new(),
        }
    }

    /// Records a delivery as unsettled.
    pub(crate) async fn delivered(&self, tag: u64) {
        self.unsettled.lock().await.insert(tag);
    }

    /// Waits (at most `limit`) until no settlement runs in a task of its own.
    pub(crate) async fn quiet(&self, limit: Duration) {
        let wait = async {
            loop {
                let idle = self.idle.notified();
                if self.busy.load(Ordering::SeqCst) == 0 {
                    return;
                }
                idle.await;
            }
        };
        let _ = tokio::time::timeout(limit, wait).await;
    }

    /// Runs `settle` in a task of its own, counted as busy until it is done.
    fn spawn(self: &Arc<Self>, settle: impl Future<Output = ()> + Send + 'static) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return; // no runtime left: the channel's end gives the message back
        };
        self.busy.fetch_add(1, Ordering::SeqCst);
        let tags = self.clone();
        rt.spawn(async move {
            settle.await;
            if tags.busy.fetch_sub(1, Ordering::SeqCst) == 1 {
                tags.idle.notify_waiters();
            }
        });
    }

    /// Publishes on the channel (in confirm mode) and waits for the broker's confirm.
    async fn publish(
        &self,
        exchange: &str,
        routing_key: ShortString,
        properties: BasicProperties,
        body: &[u8],
    ) -> Result<(), String> {
        // Publishing itself can stay pending when the connection breaks meanwhile, so the
        // limit covers it as well as the confirm.
        let published = async {
            self.channel
                .basic_publish(
                    exchange.into(),
                    routing_key,
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    body,
                    properties.with_delivery_mode(PERSISTENT),
                )
                .await?
                .await
        };
        match tokio::time::timeout(CONFIRM_TIMEOUT, published).await {
            Ok(Ok(Confirmation::Ack(None))) => Ok(()),
            Ok(Ok(Confirmation::Ack(Some(r)))) => Err(format!("returned: {} {}", r.reply_code, r.reply_text)),
            Ok(Ok(other)) => Err(format!("not confirmed: {other:?}")),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no confirm within {CONFIRM_TIMEOUT:?}")),
        }
    }

    /// Moves a message body to the dead letters, with its reason and original routing key.
    async fn dead_letter(
        &self,
        routing_key: &ShortString,
        properties: BasicProperties,
        body: &[u8],
        reason: &str,
    ) -> Result<(), String> {
        let properties = mapping::with_string_header(properties, DEAD_REASON_HEADER, reason.as_bytes());
        self.publish(&self.dead_exchange, routing_key.clone(), properties, body)
            .await
            .map_err(|e| format!("the dead-letter exchange did not take it: {e}"))
    }
}

fn settle_error(e: lapin::Error) -> ferry_bus::Error {
    ferry_bus::Error::Unavailable(format!("settling a delivery with RabbitMQ failed: {e}"))
}

/// Waits (at most [`SETTLE_TIMEOUT`]) for an ack, nack or reject to be taken.
async fn settled(what: &str, op: impl Future<Output = lapin::Result<bool>>) -> ferry_bus::Result<()> {
    match tokio::time::timeout(SETTLE_TIMEOUT, op).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(settle_error(e)),
        Err(_) => Err(ferry_bus::Error::Unavailable(format!(
            "RabbitMQ did not take a {what} within {SETTLE_TIMEOUT:?}; the message will be delivered again"
        ))),
    }
}

/// Settles one message on the channel it came from. A channel that died meanwhile makes
/// settling a no-op: the broker delivers the message again.
pub(crate) struct AmqpSettle {
    acker: Option<Acker>,
    tag: u64,
    pub(crate) tags: Arc<Tags>,
    /// The topic's routing key it was published with.
    pub(crate) routing_key: ShortString,
    pub(crate) properties: BasicProperties,
    pub(crate) body: Vec<u8>,
    /// Its place in the subscription's prefetch window (a batch message's events hold theirs).
    permit: Option<OwnedSemaphorePermit>,
}

impl AmqpSettle {
    pub(crate) fn new(
        delivery: lapin::message::Delivery,
        tags: Arc<Tags>,
        permit: Option<OwnedSemaphorePermit>,
    ) -> AmqpSettle {
        // A message given back from a batch went straight to the queue; it names its topic.
        let routing_key = mapping::string_header(&delivery.properties, ROUTING_KEY_HEADER)
            .and_then(|k| ShortString::try_new(k).ok())
            .unwrap_or(delivery.routing_key);
        AmqpSettle {
            acker: Some(delivery.acker),
            tag: delivery.delivery_tag,
            tags,
            routing_key,
            properties: delivery.properties,
            body: delivery.data,
            permit,
        }
    }
}

#[async_trait]
impl Settle for AmqpSettle {
    async fn ack(mut self: Box<Self>) -> ferry_bus::Result<()> {
        if let Some(acker) = self.acker.take() {
            let mut unsettled = self.tags.unsettled.lock().await;
            unsettled.remove(&self.tag);
            settled("basic.ack", acker.ack(BasicAckOptions::default())).await?;
        }
        Ok(())
    }

    async fn nack(mut self: Box<Self>) -> ferry_bus::Result<()> {
        if let Some(acker) = self.acker.take() {
            let mut unsettled = self.tags.unsettled.lock().await;
            unsettled.remove(&self.tag);
            settled("basic.nack", acker.nack(REQUEUE)).await?;
        }
        Ok(())
    }

    async fn dead_letter(mut self: Box<Self>, reason: &str) -> ferry_bus::Result<()> {
        let Some(acker) = self.acker.take() else {
            return Ok(());
        };
        let published = self
            .tags
            .dead_letter(&self.routing_key, self.properties.clone(), &self.body, reason)
            .await;
        let mut unsettled = self.tags.unsettled.lock().await;
        unsettled.remove(&self.tag);
        match published {
            Ok(()) => settled("basic.ack", acker.ack(BasicAckOptions::default())).await,
            Err(why) if acker.usable() => {
                // The queue's own dead-letter exchange is the same `NS.dead`: rejecting moves
                // the message there (without ferry's reason header, which is logged instead).
                tracing::warn!(reason, error = %why, "publishing the dead letter failed; rejecting it to the queue's dead-letter exchange");
                settled(
                    "basic.reject",
                    acker.reject(BasicRejectOptions { requeue: false }),
                )
                .await
            }
            Err(why) => Err(ferry_bus::Error::Unavailable(format!(
                "dead-lettering failed ({why}); the broker will deliver the message again"
            ))),
        }
    }

    async fn ack_many(self: Box<Self>, others: Vec<Box<dyn Settle>>) -> ferry_bus::Result<()> {
        ack_together(self, others).await
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any + Send> {
        self
    }
}

impl Drop for AmqpSettle {
    fn drop(&mut self) {
        // Dropped unsettled: give it back now rather than when the channel closes.
        if let Some(acker) = self.acker.take()
            && acker.usable()
        {
            let tags = self.tags.clone();
            let tag = self.tag;
            self.tags.clone().spawn(async move {
                let mut unsettled = tags.unsettled.lock().await;
                unsettled.remove(&tag);
                let _ = settled("basic.nack", acker.nack(REQUEUE)).await;
            });
        }
    }
}

/// A batch message whose events are handed out one by one.
pub(crate) struct Batch {
    whole: std::sync::Mutex<Option<Box<AmqpSettle>>>,
    /// Events not settled yet.
    left: AtomicUsize,
    /// Events in all.
    events: usize,
    /// Where in the body the events given back are.
    given_back: std::sync::Mutex<Vec<Range<usize>>>,
    tags: Arc<Tags>,
}

/// What settling the last event of a batch message leaves to do with the message.
enum Whole {
    Ack(Box<AmqpSettle>),
    GiveBack(Box<AmqpSettle>),
    /// Some events acked, these given back.
    Split(Box<AmqpSettle>, Vec<Range<usize>>),
}

impl Batch {
    /// Holds a batch message whose `events` events are handed out; returns the message's place
    /// in the prefetch window, for one of them (each holds one).
    pub(crate) fn new(
        mut whole: Box<AmqpSettle>,
        events: usize,
    ) -> (Arc<Batch>, Option<OwnedSemaphorePermit>) {
        let permit = whole.permit.take();
        let batch = Arc::new(Batch {
            tags: whole.tags.clone(),
            whole: std::sync::Mutex::new(Some(whole)),
            left: AtomicUsize::new(events),
            events,
            given_back: std::sync::Mutex::default(),
        });
        (batch, permit)
    }

    /// One event is settled, given back if `back` names where it is; the message, once that
    /// was the last.
    fn done(&self, back: Option<Range<usize>>) -> Option<Whole> {
        if let Some(range) = back {
            lock(&self.given_back).push(range);
        }
        if self.left.fetch_sub(1, Ordering::AcqRel) != 1 {
            return None;
        }
        let whole = lock(&self.whole).take()?;
        let mut back = std::mem::take(&mut *lock(&self.given_back));
        Some(if back.is_empty() {
            Whole::Ack(whole)
        } else if back.len() == self.events {
            Whole::GiveBack(whole)
        } else {
            back.sort_by_key(|r| r.start);
            Whole::Split(whole, back)
        })
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Whole {
    async fn finish(self) -> ferry_bus::Result<()> {
        match self {
            Whole::Ack(w) => w.ack().await,
            Whole::GiveBack(w) => w.nack().await,
            Whole::Split(w, back) => {
                let message = mapping::to_amqp_batch(None, back.iter().map(|r| &w.body[r.clone()]));
                let properties = mapping::with_string_header(
                    message.properties,
                    ROUTING_KEY_HEADER,
                    w.routing_key.as_str().as_bytes(),
                );
                let queue = ShortString::from(w.tags.queue.clone());
                match w.tags.publish("", queue, properties, &message.body).await {
                    Ok(()) => w.ack().await,
                    Err(why) => {
                        tracing::warn!(error = %why, "cannot give back part of a batch message; giving back all of it");
                        w.nack().await
                    }
                }
            }
        }
    }
}

/// One event of a batch message.
pub(crate) struct PartSettle {
    batch: Arc<Batch>,
    /// Where its JSON is in the message's body.
    range: Range<usize>,
    settled: bool,
    /// Its place in the subscription's prefetch window, once handed out.
    permit: Option<OwnedSemaphorePermit>,
}

impl PartSettle {
    pub(crate) fn new(batch: Arc<Batch>, range: Range<usize>) -> PartSettle {
        PartSettle {
            batch,
            range,
            settled: false,
            permit: None,
        }
    }

    pub(crate) fn hold(&mut self, permit: OwnedSemaphorePermit) {
        self.permit = Some(permit);
    }

    fn done(&mut self, given_back: bool) -> Option<Whole> {
        self.settled = true;
        self.batch.done(given_back.then(|| self.range.clone()))
    }
}

async fn finish(whole: Option<Whole>) -> ferry_bus::Result<()> {
    match whole {
        Some(w) => w.finish().await,
        None => Ok(()),
    }
}

#[async_trait]
impl Settle for PartSettle {
    async fn ack(mut self: Box<Self>) -> ferry_bus::Result<()> {
        finish(self.done(false)).await
    }

    async fn nack(mut self: Box<Self>) -> ferry_bus::Result<()> {
        finish(self.done(true)).await
    }

    async fn dead_letter(mut self: Box<Self>, reason: &str) -> ferry_bus::Result<()> {
        // Only this event goes to the dead letters, in the JSON format. The message is still
        // held: this event is not settled yet.
        let held = lock(&self.batch.whole)
            .as_ref()
            .map(|w| (w.body[self.range.clone()].to_vec(), w.routing_key.clone()));
        let Some((json, routing_key)) = held else {
            return Ok(());
        };
        let published = self
            .batch
            .tags
            .dead_letter(&routing_key, structured(), &json, reason)
            .await;
        match published {
            Ok(()) => finish(self.done(false)).await,
            Err(why) => {
                // Given back with the rest of the message.
                finish(self.done(true)).await?;
                Err(ferry_bus::Error::Unavailable(format!(
                    "dead-lettering failed ({why}); the event will be delivered again"
                )))
            }
        }
    }

    async fn ack_many(self: Box<Self>, others: Vec<Box<dyn Settle>>) -> ferry_bus::Result<()> {
        ack_together(self, others).await
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any + Send> {
        self
    }
}

impl Drop for PartSettle {
    fn drop(&mut self) {
        if !self.settled
            && let Some(whole) = self.batch.done(Some(self.range.clone()))
        {
            self.batch.tags.spawn(async move {
                if let Err(e) = whole.finish().await {
                    tracing::debug!(error = %e, "giving back a batch message failed; the broker delivers it again");
                }
            });
        }
    }
}

/// Properties of a message holding one event in the JSON format.
pub(crate) fn structured() -> BasicProperties {
    BasicProperties::default().with_content_type(mapping::STRUCTURED_CONTENT_TYPE.into())
}

/// Dead-letters an event of a batch message that could not be read, before the others are
/// handed out.
pub(crate) async fn dead_letter_part(
    tags: &Tags,
    routing_key: &ShortString,
    json: &[u8],
    reason: &str,
) -> Result<(), String> {
    tags.dead_letter(routing_key, structured(), json, reason).await
}

/// Acks deliveries of this bus: an event of a batch message counts towards its message; the
/// messages are acked by channel, a run of tags that starts at the lowest unsettled one with one
/// `basic.ack` (`multiple`), the rest one by one.
async fn ack_together(first: Box<dyn Settle>, others: Vec<Box<dyn Settle>>) -> ferry_bus::Result<()> {
    let mut messages: Vec<Box<AmqpSettle>> = Vec::with_capacity(others.len() + 1);
    let mut result = Ok(());
    for s in std::iter::once(first).chain(others) {
        let s = match s.into_any().downcast::<AmqpSettle>() {
            Ok(m) => {
                messages.push(m);
                continue;
            }
            Err(s) => s,
        };
        let Ok(mut part) = s.downcast::<PartSettle>() else {
            unreachable!("a delivery of another bus acked together with RabbitMQ's")
        };
        match part.done(false) {
            None => {}
            Some(Whole::Ack(m)) => messages.push(m),
            Some(other) => {
                if let Err(e) = other.finish().await {
                    result = Err(e);
                }
            }
        }
    }
    // By channel (a batch of deliveries can straddle a reconnect), each in tag order.
    messages.sort_by_key(|m| (Arc::as_ptr(&m.tags) as usize, m.tag));
    for same in messages.chunk_by_mut(|a, b| Arc::ptr_eq(&a.tags, &b.tags)) {
        if let Err(e) = ack_run(same).await {
            result = Err(e);
        }
    }
    result
}

/// Acks messages of one channel, sorted by tag.
async fn ack_run(run: &mut [Box<AmqpSettle>]) -> ferry_bus::Result<()> {
    let Some(tags) = run.first().map(|m| m.tags.clone()) else {
        return Ok(());
    };
    let mut unsettled = tags.unsettled.lock().await;
    // The longest run of these tags that starts at the lowest unsettled tag: every message a
    // `multiple` ack up to its last tag covers is one of them.
    let covered = unsettled
        .iter()
        .zip(run.iter())
        .take_while(|(tag, m)| **tag == m.tag)
        .count();
    for m in run.iter() {
        unsettled.remove(&m.tag);
    }
    let mut result = Ok(());
    let mut singles = 0;
    if covered > 1 {
        for m in &mut run[..covered - 1] {
            m.acker = None;
        }
        if let Some(acker) = run[covered - 1].acker.take() {
            result = settled("basic.ack", acker.ack(BasicAckOptions { multiple: true })).await;
        }
        singles = covered;
    }
    for m in &mut run[singles..] {
        if let Some(acker) = m.acker.take()
            && let Err(e) = settled("basic.ack", acker.ack(BasicAckOptions::default())).await
        {
            result = Err(e);
        }
    }
    result
}
