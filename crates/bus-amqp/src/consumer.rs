//! Consuming a group's queue: one channel per subscription, `basic.qos(prefetch)`, manual acks,
//! and a task that consumes again after a reconnect.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ferry_bus::{Consumer, Delivery, Settle, Subscribe};
use ferry_event::{Topic, route};
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    BasicRejectOptions, ConfirmSelectOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{Acker, BasicProperties, Channel, Confirmation};
use tokio::sync::{mpsc, watch};

use crate::error::{Error, Result};
use crate::link::{self, Live, Shared};
use crate::mapping::{self, PERSISTENT};
use crate::topology::DEAD_REASON_HEADER;

/// Longest wait for the broker to confirm a dead letter.
const DEAD_LETTER_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for the connection to take an ack, nack or reject. Settling normally takes
/// well under a millisecond, but lapin's promise for it can stay pending for good when the
/// connection breaks at that very moment; the delivery comes again either way.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for declaring the group's queue and consuming from it again.
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);

/// A consumer channel with its consumer.
struct Open {
    channel: Channel,
    consumer: lapin::Consumer,
    /// The connection's generation.
    generation: u64,
}

/// Opens a confirm-mode channel with the group's prefetch and starts consuming the group's queue.
async fn open(shared: &Shared, live: &Live, spec: &Subscribe) -> Result<Open> {
    let channel = shared.channel(live, "a consumer channel").await?;
    let fail = |what: &str| {
        let what = format!("{what} on queue {}", shared.names.queue(&spec.group));
        move |e| {
            shared.trouble.notify_one();
            Error::from_lapin(&shared.endpoint, what, e)
        }
    };
    let prefetch = u16::try_from(spec.prefetch.max(1)).unwrap_or(u16::MAX);
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await
        .map_err(fail("basic.qos"))?;
    // Dead letters are published on this channel and confirmed before the original is acked.
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(fail("confirm.select"))?;
    let consumer = channel
        .basic_consume(
            shared.names.queue(&spec.group).as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(fail("basic.consume"))?;
    Ok(Open {
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
    let (tx, rx) = mpsc::channel(spec.prefetch.clamp(1, usize::from(u16::MAX)));
    tokio::spawn(consume(shared, life, spec, first, tx));
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
) {
    let queue = shared.names.queue(&spec.group);
    let mut current = Some(first);
    let mut backoff = link::reconnect_backoff();
    loop {
        if let Some(open) = current.take() {
            let end = pump(&shared, &queue, &open, &tx).await;
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
        match mapping::from_amqp(&d.properties, &d.data) {
            Ok(event) => {
                let topic = Topic::parse(d.routing_key.as_str()).unwrap_or_else(|| route(&event));
                let settle = AmqpSettle {
                    acker: Some(d.acker),
                    channel: open.channel.clone(),
                    dead_exchange: shared.names.dead(),
                    routing_key: d.routing_key,
                    properties: d.properties,
                    body: d.data,
                };
                let delivery = Delivery::new(event, topic, d.redelivered, Box::new(settle));
                // Waits while the subscriber's buffer is full; a dropped subscription hands the
                // delivery back, and dropping it nacks it.
                if tx.send(Ok(delivery)).await.is_err() {
                    return End::Gone;
                }
            }
            Err(reason) => {
                let reason = reason.to_string();
                tracing::warn!(
                    %queue,
                    routing_key = %d.routing_key,
                    message_id = ?d.properties.message_id(),
                    %reason,
                    "dead-lettering a message that is not a CloudEvent ferry can read"
                );
                let settle = AmqpSettle {
                    acker: Some(d.acker),
                    channel: open.channel.clone(),
                    dead_exchange: shared.names.dead(),
                    routing_key: d.routing_key,
                    properties: d.properties,
                    body: d.data,
                };
                if let Err(e) = Box::new(settle).dead_letter(&reason).await {
                    return End::Broken(format!("dead-lettering failed: {e}"));
                }
            }
        }
    }
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

/// Settles one delivery on the channel it came from. A channel that died meanwhile makes
/// settling a no-op: the broker delivers the message again.
struct AmqpSettle {
    acker: Option<Acker>,
    channel: Channel,
    dead_exchange: String,
    routing_key: ShortString,
    properties: BasicProperties,
    body: Vec<u8>,
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

impl AmqpSettle {
    async fn publish_dead(&self, reason: &str) -> std::result::Result<(), String> {
        let properties =
            mapping::with_string_header(self.properties.clone(), DEAD_REASON_HEADER, reason.as_bytes())
                .with_delivery_mode(PERSISTENT);
        // Publishing itself can stay pending when the connection breaks meanwhile, so the
        // limit covers it as well as the confirm.
        let published = async {
            self.channel
                .basic_publish(
                    self.dead_exchange.as_str().into(),
                    self.routing_key.clone(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    &self.body,
                    properties,
                )
                .await?
                .await
        };
        match tokio::time::timeout(DEAD_LETTER_TIMEOUT, published).await {
            Ok(Ok(Confirmation::Ack(None))) => Ok(()),
            Ok(Ok(Confirmation::Ack(Some(r)))) => Err(format!(
                "the dead-letter exchange returned it: {} {}",
                r.reply_code, r.reply_text
            )),
            Ok(Ok(other)) => Err(format!("not confirmed: {other:?}")),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no confirm within {DEAD_LETTER_TIMEOUT:?}")),
        }
    }
}

#[async_trait]
impl Settle for AmqpSettle {
    async fn ack(mut self: Box<Self>) -> ferry_bus::Result<()> {
        if let Some(acker) = self.acker.take() {
            settled("basic.ack", acker.ack(BasicAckOptions::default())).await?;
        }
        Ok(())
    }

    async fn nack(mut self: Box<Self>) -> ferry_bus::Result<()> {
        if let Some(acker) = self.acker.take() {
            let requeue = BasicNackOptions {
                requeue: true,
                ..BasicNackOptions::default()
            };
            settled("basic.nack", acker.nack(requeue)).await?;
        }
        Ok(())
    }

    async fn dead_letter(mut self: Box<Self>, reason: &str) -> ferry_bus::Result<()> {
        let Some(acker) = self.acker.take() else {
            return Ok(());
        };
        match self.publish_dead(reason).await {
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

    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any + Send> {
        self
    }
}

impl Drop for AmqpSettle {
    fn drop(&mut self) {
        // Dropped unsettled: give it back now rather than when the channel closes.
        if let Some(acker) = self.acker.take()
            && acker.usable()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(async move {
                let requeue = BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                };
                let _ = settled("basic.nack", acker.nack(requeue)).await;
            });
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
