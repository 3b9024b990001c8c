//! ferry's bus on RabbitMQ (AMQP 0-9-1), on `lapin`.
//!
//! [`AmqpBus`] implements [`ferry_bus::Bus`] in the namespace `NS` a bus URL names
//! (`?namespace=NS`, default `ferry`):
//!
//! - [`topology`]: a durable topic exchange `NS` (routing key = [`ferry_event::Topic::name`]), one durable
//!   quorum queue `NS.<group>` per consumer group bound with the group's topics, dead-lettering
//!   to `NS.dead` after [`topology::DELIVERY_LIMIT`] deliveries. Everything is declared
//!   idempotently on connect, on every reconnect, and by `declare`/`subscribe`.
//! - Publishing: persistent messages, publisher confirms, pipelined: a batch is sent whole,
//!   then its confirms are awaited together. Callers publishing at the same time share a
//!   group: while one group is confirmed the next collects. On the topics only ferry's services
//!   consume (`control`, `dispatch.*`, `cancel.*`, `logs`) the events of a group travel as
//!   batch messages of several events (`outbound`); `lifecycle` and `intake` events one per
//!   message. A nack, a returned message or a missing connection is
//!   [`ferry_bus::Error::Unavailable`]: the caller keeps the events and retries.
//! - Consuming: a channel per subscription with manual acks; the prefetch counts events, each
//!   holding a place until it is settled, and the channel's `basic.qos` is set from it. The
//!   events of a batch message are handed out one by one (`settle`): the message is acked when
//!   all are, several messages with one `basic.ack` where their tags allow. A delivery dropped
//!   unsettled is given back; dropping the subscription closes its channel so everything it
//!   held is delivered again.
//! - [`link`]: a supervisor reconnects with bounded, jittered exponential backoff, declares the
//!   topology again, and every live subscription consumes again.
//! - [`mapping`]: the CloudEvents mapping (binary mode and batch messages out; binary,
//!   structured or batch in). A message that is not a readable CloudEvent is dead-lettered
//!   with its reason, never yielded; so is an unreadable event of a batch, alone.
//!
//! The mapping is documented for other publishers and consumers in `docs/amqp-binding.md`.

pub mod error;
pub mod link;
pub mod mapping;
pub mod topology;

mod consumer;
mod outbound;
mod settle;

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ferry_bus::{Subscribe, Subscription};
use ferry_event::{AttributesReader, Event, route};
use lapin::options::BasicPublishOptions;
use lapin::{Confirmation, PublisherConfirm};
use tokio::sync::oneshot;

pub use error::Error;
use link::Shared;

/// Longest wait for a batch to be sent and confirmed.
pub const PUBLISH_TIMEOUT: Duration = Duration::from_secs(30);
/// Most messages of one batch awaiting their confirm at once.
pub const CONFIRM_WINDOW: usize = 4096;

/// The bus on a RabbitMQ virtual host. Cloning shares the connection.
#[derive(Clone)]
pub struct AmqpBus {
    shared: Arc<Shared>,
    life: Arc<Life>,
    outgoing: Arc<Outgoing>,
}

/// Publishers waiting for their events to be sent, and the turn to send them.
#[derive(Default)]
struct Outgoing {
    waiting: std::sync::Mutex<Vec<Waiting>>,
    turn: tokio::sync::Mutex<()>,
}

struct Waiting {
    events: Vec<Event>,
    done: oneshot::Sender<ferry_bus::Result<()>>,
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl std::fmt::Debug for AmqpBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpBus")
            .field("endpoint", &self.shared.endpoint)
            .field("namespace", &self.shared.names.exchange())
            .finish()
    }
}

/// Held by the bus and its subscriptions; when the last one goes the connection is closed.
pub(crate) struct Life {
    shared: Arc<Shared>,
}

impl Drop for Life {
    fn drop(&mut self) {
        self.shared.stop.cancel();
    }
}

impl AmqpBus {
    /// Connects to `amqp://USER:PASS@HOST:PORT/VHOST[?namespace=NAME]`, declares the
    /// namespace's topology and the standard groups' queues (planner, scheduler,
    /// log-collector, launcher-local), and keeps the connection up from then on.
    ///
    /// A broker that cannot be reached now is [`ferry_bus::Error::Unavailable`]; a URL,
    /// credentials or vhost that can never work is [`ferry_bus::Error::Config`].
    pub async fn connect(url: &str) -> ferry_bus::Result<AmqpBus> {
        let ns = ferry_bus::namespace_of(url)?;
        let shared = Arc::new(Shared::new(url, &ns)?);
        let live = shared.establish(1).await?;
        shared.live.send_replace(Some(live.clone()));
        tokio::spawn(link::supervise(shared.clone(), live));
        tracing::debug!(endpoint = %shared.endpoint, namespace = %ns, "connected to RabbitMQ");
        Ok(AmqpBus {
            life: Arc::new(Life {
                shared: shared.clone(),
            }),
            shared,
            outgoing: Arc::default(),
        })
    }

    /// Whether the bus is connected right now (it reconnects by itself when not).
    pub fn is_connected(&self) -> bool {
        self.shared.current().is_some()
    }

    /// The broker-side names of this bus's namespace.
    pub fn names(&self) -> &topology::Names {
        &self.shared.names
    }

    /// Deletes the namespace from the broker: the queues of every group this process declared
    /// or consumed (the standard ones included), the dead-letter and unrouted queues, and the
    /// namespace's exchanges, with whatever they hold. For tearing down a test or a deployment;
    /// queues of groups only other processes used are left.
    pub async fn delete_namespace(&self) -> ferry_bus::Result<()> {
        use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
        let live = self.shared.require()?;
        let ch = self
            .shared
            .channel(&live, "a channel to delete the namespace")
            .await?;
        let names = &self.shared.names;
        let endpoint = &self.shared.endpoint;
        let mut queues: Vec<String> = self
            .shared
            .groups()
            .iter()
            .map(|g| names.queue(&g.group))
            .collect();
        queues.push(names.dead_queue());
        queues.push(names.unrouted_queue());
        for q in queues {
            ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                .await
                .map_err(|e| Error::from_lapin(endpoint, format!("deleting queue {q}"), e))?;
        }
        for x in [names.exchange(), names.dead(), names.unrouted()] {
            ch.exchange_delete(x.as_str().into(), ExchangeDeleteOptions::default())
                .await
                .map_err(|e| Error::from_lapin(endpoint, format!("deleting exchange {x}"), e))?;
        }
        link::close_quietly(&ch).await;
        Ok(())
    }

    async fn publish_batch(&self, events: &[Event]) -> error::Result<()> {
        let messages = outbound::messages(events)?;
        // The largest message, named if the broker refuses one as too large.
        let largest = messages
            .iter()
            .max_by_key(|m| m.message.body.len())
            .map(|m| (m.first, m.message.body.len()));
        let endpoint = &self.shared.endpoint;
        // A message over the broker's limit would close the publishing channel, and fail the
        // confirms of every other publisher's messages on it: refused here, nothing is sent.
        let known_limit = self.shared.max_message_size.load(Ordering::Relaxed);
        if let Some((i, size)) = largest
            && size > known_limit
        {
            return Err(Error::TooLarge {
                endpoint: endpoint.clone(),
                event_id: events[i].id().to_string(),
                size,
                limit: Some(known_limit),
                reason: "larger than the broker's max_message_size (ferry refused it before sending; \
                         a bus URL's ?max_message_size=BYTES tells ferry a larger one)"
                    .into(),
            });
        }
        let live = self.shared.require()?;
        let exchange = self.shared.names.exchange();
        let channel = live.publisher(endpoint).await?;
        let state = channel.clone();
        let broken = |e| {
            let e = Error::from_lapin(endpoint, "publishing", e);
            if let (Error::Topology { reason, .. }, Some((i, size))) = (&e, largest)
                && let Some(limit) = error::too_large_limit(reason)
            {
                // The broker closed the publishing channel; the next batch opens another on
                // the same connection.
                if let Some(limit) = limit {
                    self.shared.max_message_size.fetch_min(limit, Ordering::Relaxed);
                }
                return Error::TooLarge {
                    endpoint: endpoint.clone(),
                    event_id: events[i].id().to_string(),
                    size,
                    limit,
                    reason: reason.clone(),
                };
            }
            // Another refusal that closed the channel (an exchange deleted under it): connect
            // again, declaring everything again.
            if !state.status().connected() {
                live.mark_broken();
            }
            self.shared.trouble.notify_one();
            e
        };
        let mut pending: VecDeque<(usize, PublisherConfirm)> = VecDeque::new();
        {
            for m in messages {
                if pending.len() >= CONFIRM_WINDOW
                    && let Some((j, confirm)) = pending.pop_front()
                {
                    self.check(events, j, confirm.await.map_err(broken)?)?;
                }
                let confirm = channel
                    .basic_publish(
                        exchange.as_str().into(),
                        m.key,
                        BasicPublishOptions {
                            mandatory: true,
                            ..BasicPublishOptions::default()
                        },
                        &m.message.body,
                        m.message.properties,
                    )
                    .await
                    .map_err(broken)?;
                pending.push_back((m.first, confirm));
            }
        }
        // Everything is sent; the next batch may go out while these confirms arrive together.
        drop(channel);
        for (i, confirm) in pending {
            self.check(events, i, confirm.await.map_err(broken)?)?;
        }
        Ok(())
    }

    /// Publishes `events` together with whatever other callers are publishing meanwhile: while
    /// one group is sent and confirmed, the next collects, so that under load many events
    /// share few messages and confirms, and alone an event goes out at once.
    async fn publish_grouped(&self, events: &[Event]) -> ferry_bus::Result<()> {
        if let Ok(_turn) = self.outgoing.turn.try_lock() {
            return self.publish_timed(events).await;
        }
        let (done, mut result) = oneshot::channel();
        lock(&self.outgoing.waiting).push(Waiting {
            events: events.to_vec(),
            done,
        });
        let _turn = self.outgoing.turn.lock().await;
        match result.try_recv() {
            Ok(r) => return r, // sent with the group before
            // Taken by a group whose publisher gave up (its future was dropped): send them now.
            Err(oneshot::error::TryRecvError::Closed) => return self.publish_timed(events).await,
            Err(oneshot::error::TryRecvError::Empty) => {}
        }
        let group = std::mem::take(&mut *lock(&self.outgoing.waiting));
        let all: Vec<Event> = group.iter().flat_map(|w| w.events.iter().cloned()).collect();
        match self.publish_timed(&all).await {
            Err(ferry_bus::Error::TooLarge { .. }) if group.len() > 1 => {
                // Each caller learns about its own events.
                for w in group {
                    let _ = w.done.send(self.publish_timed(&w.events).await);
                }
            }
            r => {
                for w in group {
                    let _ = w.done.send(r.clone());
                }
            }
        }
        match result.try_recv() {
            Ok(r) => r,
            Err(_) => unreachable!("this caller's events were in the group just sent"),
        }
    }

    async fn publish_timed(&self, events: &[Event]) -> ferry_bus::Result<()> {
        match tokio::time::timeout(PUBLISH_TIMEOUT, self.publish_batch(events)).await {
            Ok(r) => Ok(r?),
            Err(_) => {
                self.shared.trouble.notify_one();
                Err(ferry_bus::Error::Unavailable(format!(
                    "RabbitMQ at {} did not confirm {} events within {PUBLISH_TIMEOUT:?}",
                    self.shared.endpoint,
                    events.len()
                )))
            }
        }
    }

    fn check(&self, events: &[Event], i: usize, c: Confirmation) -> error::Result<()> {
        let reason = match c {
            Confirmation::Ack(None) => return Ok(()),
            Confirmation::Ack(Some(r)) => format!("returned: {} {}", r.reply_code, r.reply_text),
            Confirmation::Nack(_) => "the broker nacked it".to_string(),
            Confirmation::NotRequested => "publisher confirms are off".to_string(),
        };
        let event = &events[i];
        Err(Error::NotConfirmed {
            event_id: event.id().to_string(),
            routing_key: route(event).name(),
            reason,
        })
    }
}

#[async_trait::async_trait]
impl ferry_bus::Bus for AmqpBus {
    async fn publish(&self, events: &[Event]) -> ferry_bus::Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        self.publish_grouped(events).await
    }

    async fn subscribe(&self, spec: Subscribe) -> ferry_bus::Result<Subscription> {
        let consumer = consumer::subscribe(self.shared.clone(), self.life.clone(), spec).await?;
        Ok(Subscription::new(Box::new(consumer)))
    }

    fn max_event_bytes(&self) -> Option<usize> {
        Some(self.shared.max_message_size.load(Ordering::Relaxed))
    }

    async fn check(&self) -> ferry_bus::Result<()> {
        match self.is_connected() {
            true => Ok(()),
            false => Err(ferry_bus::Error::Unavailable(format!(
                "not connected to RabbitMQ at {}; reconnecting",
                self.shared.endpoint
            ))),
        }
    }

    async fn declare(&self, spec: &Subscribe) -> ferry_bus::Result<()> {
        if spec.ephemeral {
            // Its queue exists only while it is consumed.
            return Ok(());
        }
        self.shared.remember(spec);
        let live = self.shared.require()?;
        Ok(self.shared.declare_group(&live, spec).await?)
    }
}
