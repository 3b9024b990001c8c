//! Consuming a group's queue: one channel per subscription, `basic.qos`, manual acks, and a
//! task that consumes again after a reconnect.
//!
//! A subscription's prefetch counts events: each delivery holds a place in a window of that
//! many until it is settled. A batch message carries several events, so the channel's `qos`
//! (which counts messages) is the prefetch divided by the most events a message of the
//! group's topics carries, with a floor ([`qos`]).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ferry_bus::Settle;
use ferry_bus::{Consumer, Delivery, Subscribe};
use ferry_event::{Topic, route};
use futures::StreamExt;
use lapin::Channel;
use lapin::options::{BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions};
use lapin::types::FieldTable;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};

use crate::error::{Error, Result};
use crate::link::{self, Live, Shared};
use crate::mapping;
use crate::outbound::events_per_message;
use crate::settle::{AmqpSettle, Batch, PartSettle, Tags, dead_letter_part};

/// Longest wait for declaring the group's queue and consuming from it again.
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait, when a subscription ends, for deliveries it dropped to be given back before
/// its channel closes.
const GIVE_BACK_TIMEOUT: Duration = Duration::from_secs(10);

/// A consumer channel with its consumer.
struct Open {
    channel: Channel,
    consumer: lapin::Consumer,
    /// The connection's generation.
    generation: u64,
    tags: Arc<Tags>,
}

/// Messages a consumer takes at least, however many events they carry (up to its prefetch).
const QOS_FLOOR: usize = 16;

/// The channel's `basic.qos`: as many messages as hold `prefetch` events when full, so that a
/// consumer does not keep more work from the other members of its group than it can take; but
/// at least [`QOS_FLOOR`] (or the prefetch, if smaller), so that a consumer can hold that many
/// deliveries when each event travels alone.
fn qos(spec: &Subscribe) -> u16 {
    let prefetch = spec.prefetch.max(1);
    let per_message = spec.topics.iter().map(events_per_message).max().unwrap_or(1);
    let messages = prefetch.div_ceil(per_message).max(prefetch.min(QOS_FLOOR));
    u16::try_from(messages).unwrap_or(u16::MAX)
}

/// Opens a confirm-mode channel with the group's qos and starts consuming the group's queue.
async fn open(shared: &Shared, live: &Live, spec: &Subscribe) -> Result<Open> {
    let channel = shared.channel(live, "a consumer channel").await?;
    let queue = shared.names.queue(&spec.group);
    let fail = |what: &str| {
        let what = format!("{what} on queue {queue}");
        move |e| {
            shared.trouble.notify_one();
            Error::from_lapin(&shared.endpoint, what, e)
        }
    };
    channel
        .basic_qos(qos(spec), BasicQosOptions::default())
        .await
        .map_err(fail("basic.qos"))?;
    // Dead letters and events given back are published on this channel and confirmed before
    // the original is acked.
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(fail("confirm.select"))?;
    let consumer = channel
        .basic_consume(
            queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(fail("basic.consume"))?;
    Ok(Open {
        tags: Arc::new(Tags::new(channel.clone(), shared.names.dead(), queue.clone())),
        channel,
        consumer,
        generation: live.generation,
    })
}

/// Declares the group's queue and starts consuming it, within [`OPEN_TIMEOUT`]: a broker that
/// never answers (a queue process stuck in RabbitMQ was seen to) is an error to retry, not a
/// wait for good.
async fn declare_and_open(shared: &Shared, live: &Live, spec: &Subscribe) -> Result<Open> {
    let declared = async {
        shared.declare_group(live, spec).await?;
        open(shared, live, spec).await
    };
    match tokio::time::timeout(OPEN_TIMEOUT, declared).await {
        Ok(r) => r,
        Err(_) => {
            shared.trouble.notify_one();
            Err(Error::TimedOut {
                endpoint: shared.endpoint.clone(),
                what: format!(
                    "declaring and consuming queue {}",
                    shared.names.queue(&spec.group)
                ),
                after: OPEN_TIMEOUT,
            })
        }
    }
}

/// Declares the group, starts consuming and returns the receiving end; the task behind it
/// consumes again after every reconnect until the receiver is dropped.
pub(crate) async fn subscribe(
    shared: Arc<Shared>,
    life: Arc<crate::Life>,
    mut spec: Subscribe,
) -> Result<AmqpConsumer> {
    if spec.ephemeral {
        // A queue of its own, whatever other instances subscribe with the same group name.
        spec.group = format!("{}.{:016x}", spec.group, rand::random::<u64>());
    } else {
        shared.remember(&spec);
    }
    let live = shared.require()?;
    let first = declare_and_open(&shared, &live, &spec).await?;
    let window = spec.prefetch.clamp(1, Semaphore::MAX_PERMITS);
    let (tx, rx) = mpsc::channel(window);
    let window = Arc::new(Semaphore::new(window));
    tokio::spawn(consume(shared, life, spec, first, tx, window));
    Ok(AmqpConsumer { rx, pending: None })
}

enum End {
    /// The subscription was dropped.
    Gone,
    /// The channel or connection broke.
    Broken(String),
}

async fn consume(
    shared: Arc<Shared>,
    _life: Arc<crate::Life>,
    spec: Subscribe,
    first: Open,
    tx: mpsc::Sender<ferry_bus::Result<Delivery>>,
    window: Arc<Semaphore>,
) {
    let queue = shared.names.queue(&spec.group);
    let mut current = Some(first);
    let mut backoff = link::reconnect_backoff();
    loop {
        if let Some(open) = current.take() {
            let end = pump(&shared, &queue, &open, &tx, &window).await;
            if matches!(end, End::Gone) {
                // Deliveries dropped with the subscription are given back first.
                open.tags.quiet(GIVE_BACK_TIMEOUT).await;
            }
            link::close_quietly(&open.channel).await;
            match end {
                End::Gone => return,
                End::Broken(why) => {
                    tracing::warn!(%queue, reason = %why, "consumer interrupted; consuming again when RabbitMQ is back");
                }
            }
        }
        let delay = backoff.next_delay();
        tokio::select! {
            _ = tx.closed() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        let Some(live) = wait_live(&shared, &tx).await else {
            return;
        };
        // The group is declared again in case the broker lost it: an ephemeral group's queue
        // went with the old connection.
        match declare_and_open(&shared, &live, &spec).await {
            Ok(o) => {
                tracing::info!(%queue, "consuming again");
                backoff.reset();
                current = Some(o);
            }
            Err(e) if e.is_transient() => {
                tracing::warn!(%queue, error = %e, "consuming again failed; retrying");
            }
            Err(e) => {
                tracing::error!(%queue, error = %e, "cannot consume");
                let _ = tx.send(Err(e.into())).await;
                return;
            }
        }
    }
}

/// Waits for a usable connection; `None` if the subscription is dropped meanwhile.
async fn wait_live(shared: &Shared, tx: &mpsc::Sender<ferry_bus::Result<Delivery>>) -> Option<Arc<Live>> {
    let mut rx = shared.live.subscribe();
    loop {
        if let Some(live) = shared.current() {
            return Some(live);
        }
        tokio::select! {
            _ = tx.closed() => return None,
            changed = rx.changed() => if changed.is_err() { return None },
            // A connection can become usable without `live` changing (it is set before use).
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

async fn pump(
    shared: &Arc<Shared>,
    queue: &str,
    open: &Open,
    tx: &mpsc::Sender<ferry_bus::Result<Delivery>>,
    window: &Arc<Semaphore>,
) -> End {
    let mut consumer = open.consumer.clone();
    let mut live = shared.live.subscribe();
    loop {
        let item = tokio::select! {
            _ = tx.closed() => return End::Gone,
            item = consumer.next() => item,
            // The stream normally ends with its connection, but does not have to.
            _ = left_behind(&mut live, open.generation) => {
                return End::Broken("the connection it consumed on is gone".into());
            }
        };
        let d = match item {
            None => return End::Broken("the broker ended the consumer".into()),
            Some(Err(e)) => return End::Broken(e.to_string()),
            Some(Ok(d)) => d,
        };
        open.tags.delivered(d.delivery_tag).await;
        let redelivered = d.redelivered;
        let batch = mapping::is_batch(&d.properties);
        let Some(permit) = place(window, tx).await else {
            return End::Gone; // dropping the message gives it back
        };
        let message = Box::new(AmqpSettle::new(d, open.tags.clone(), Some(permit)));
        let handed = if batch {
            split(queue, window, tx, message, redelivered).await
        } else {
            single(queue, tx, message, redelivered).await
        };
        if let Err(end) = handed {
            return end;
        }
    }
}

/// Hands a delivery to the subscriber. A dropped subscription hands it back, and dropping it
/// gives it back.
async fn hand(tx: &mpsc::Sender<ferry_bus::Result<Delivery>>, delivery: Delivery) -> Result<(), End> {
    tx.send(Ok(delivery)).await.map_err(|_| End::Gone)
}

/// A place in the prefetch window; `None` once the subscription is dropped.
async fn place(
    window: &Arc<Semaphore>,
    tx: &mpsc::Sender<ferry_bus::Result<Delivery>>,
) -> Option<OwnedSemaphorePermit> {
    tokio::select! {
        permit = window.clone().acquire_owned() => permit.ok(),
        _ = tx.closed() => None,
    }
}

/// Hands out the event of a message in binary or structured mode, or dead-letters the message
/// when it is not a CloudEvent.
async fn single(
    queue: &str,
    tx: &mpsc::Sender<ferry_bus::Result<Delivery>>,
    message: Box<AmqpSettle>,
    redelivered: bool,
) -> Result<(), End> {
    match mapping::from_amqp(&message.properties, &message.body) {
        Ok(event) => {
            let topic = Topic::parse(message.routing_key.as_str()).unwrap_or_else(|| route(&event));
            hand(tx, Delivery::new(event, topic, redelivered, message)).await
        }
        Err(reason) => {
            let reason = reason.to_string();
            unreadable(queue, &message, &reason);
            dead(message.dead_letter(&reason).await)
        }
    }
}

/// What a failed dead letter means for the consumer: its channel is in trouble.
fn dead(result: ferry_bus::Result<()>) -> Result<(), End> {
    result.map_err(|e| End::Broken(format!("dead-lettering failed: {e}")))
}

/// Hands out the events of a batch message one by one, each holding a place in the window. An
/// event that is not readable is dead-lettered alone, with its reason.
async fn split(
    queue: &str,
    window: &Arc<Semaphore>,
    tx: &mpsc::Sender<ferry_bus::Result<Delivery>>,
    message: Box<AmqpSettle>,
    redelivered: bool,
) -> Result<(), End> {
    let items = match mapping::from_amqp_batch(&message.body) {
        Ok(items) => items,
        Err(reason) => {
            let reason = reason.to_string();
            unreadable(queue, &message, &reason);
            return dead(message.dead_letter(&reason).await);
        }
    };
    let topic = Topic::parse(message.routing_key.as_str());
    let mut good = Vec::with_capacity(items.len());
    for (range, item) in items {
        match item {
            Ok(event) => good.push((range, event)),
            Err(reason) => {
                let reason = reason.to_string();
                unreadable(queue, &message, &reason);
                let json = &message.body[range];
                if let Err(why) = dead_letter_part(&message.tags, &message.routing_key, json, &reason).await {
                    // Nothing of the message is handed out: it comes again whole.
                    return Err(End::Broken(format!("dead-lettering failed: {why}")));
                }
            }
        }
    }
    if good.is_empty() {
        return message
            .ack()
            .await
            .map_err(|e| End::Broken(format!("acking failed: {e}")));
    }
    let (batch, mut permit) = Batch::new(message, good.len());
    let mut parts = good
        .into_iter()
        .map(|(range, event)| (PartSettle::new(batch.clone(), range), event));
    while let Some((mut part, event)) = parts.next() {
        // The message's own place goes to its first event; the others wait for theirs.
        let held = match permit.take() {
            Some(p) => Some(p),
            None => place(window, tx).await,
        };
        let Some(held) = held else {
            // Gone: the events not handed out are given back as they are dropped.
            parts.for_each(drop);
            return Err(End::Gone);
        };
        part.hold(held);
        let topic = topic.clone().unwrap_or_else(|| route(&event));
        if let Err(end) = hand(tx, Delivery::new(event, topic, redelivered, Box::new(part))).await {
            parts.for_each(drop);
            return Err(end);
        }
    }
    Ok(())
}

fn unreadable(queue: &str, message: &AmqpSettle, reason: &str) {
    tracing::warn!(
        %queue,
        routing_key = %message.routing_key,
        message_id = ?message.properties.message_id(),
        %reason,
        "dead-lettering a message that is not a CloudEvent ferry can read"
    );
}

/// Returns once the bus no longer holds the connection of `generation`.
async fn left_behind(live: &mut watch::Receiver<Option<Arc<Live>>>, generation: u64) {
    loop {
        if live.borrow_and_update().as_ref().map(|l| l.generation) != Some(generation) {
            return;
        }
        if live.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

/// The receiving end of a subscription.
pub(crate) struct AmqpConsumer {
    rx: mpsc::Receiver<ferry_bus::Result<Delivery>>,
    /// An error seen by `try_recv`, handed out by the next `recv`.
    pending: Option<ferry_bus::Error>,
}

#[async_trait]
impl Consumer for AmqpConsumer {
    async fn recv(&mut self) -> Option<ferry_bus::Result<Delivery>> {
        if let Some(e) = self.pending.take() {
            return Some(Err(e));
        }
        self.rx.recv().await
    }

    fn try_recv(&mut self) -> Option<Delivery> {
        if self.pending.is_some() {
            return None;
        }
        match self.rx.try_recv() {
            Ok(Ok(d)) => Some(d),
            Ok(Err(e)) => {
                self.pending = Some(e);
                None
            }
            Err(_) => None,
        }
    }
}
