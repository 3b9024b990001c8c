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
//!   then its confirms are awaited together. A nack, a returned message or a missing connection
//!   is [`ferry_bus::Error::Unavailable`]: the caller keeps the events and retries.
//! - Consuming: a channel per subscription with `basic.qos(prefetch)` and manual acks; a
//!   delivery dropped unsettled is nacked (requeued), and dropping the subscription closes its
//!   channel so everything it held is delivered again.
//! - [`link`]: a supervisor reconnects with bounded, jittered exponential backoff, declares the
//!   topology again, and every live subscription consumes again.
//! - [`mapping`]: the CloudEvents mapping (binary mode out; binary or structured mode in). A
//!   message that is not a readable CloudEvent is dead-lettered with its reason, never yielded.
//!
//! The mapping is documented for other publishers and consumers in `docs/amqp-binding.md`.

pub mod error;
pub mod link;
pub mod mapping;
pub mod topology;

mod consumer;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use ferry_bus::{Subscribe, Subscription};
use ferry_event::{AttributesReader, Event, route};
use lapin::options::BasicPublishOptions;
use lapin::{Confirmation, PublisherConfirm};

pub use error::Error;
use link::Shared;
use topology::short;

/// Longest wait for a batch to be sent and confirmed.
pub const PUBLISH_TIMEOUT: Duration = Duration::from_secs(30);
/// Most messages of one batch awaiting their confirm at once.
pub const CONFIRM_WINDOW: usize = 4096;

/// The bus on a RabbitMQ virtual host. Cloning shares the connection.
#[derive(Clone)]
pub struct AmqpBus {
    shared: Arc<Shared>,
    life: Arc<Life>,
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
        let mut messages = Vec::with_capacity(events.len());
        for event in events {
            let topic = route(event);
            let key = short("a routing key", topic.name())?;
            messages.push((key, mapping::to_amqp(event)?));
        }
        // The largest message, named if the broker refuses one as too large.
        let largest = messages
            .iter()
            .enumerate()
            .max_by_key(|(_, (_, m))| m.body.len())
            .map(|(i, (_, m))| (i, m.body.len()));
        let live = self.shared.require()?;
        let exchange = self.shared.names.exchange();
        let endpoint = &self.shared.endpoint;
        let broken = |e| {
            self.shared.trouble.notify_one();
            let e = Error::from_lapin(endpoint, "publishing", e);
            if let (Error::Topology { reason, .. }, Some((i, size))) = (&e, largest)
                && let Some(limit) = error::too_large_limit(reason)
            {
                return Error::TooLarge {
                    endpoint: endpoint.clone(),
                    event_id: events[i].id().to_string(),
                    size,
                    limit,
                    reason: reason.clone(),
                };
            }
            e
        };
        let mut pending: VecDeque<(usize, PublisherConfirm)> = VecDeque::new();
        {
            let channel = live.publisher.lock().await;
            for (i, (key, msg)) in messages.into_iter().enumerate() {
                if pending.len() >= CONFIRM_WINDOW
                    && let Some((j, confirm)) = pending.pop_front()
                {
                    self.check(events, j, confirm.await.map_err(broken)?)?;
                }
                let confirm = channel
                    .basic_publish(
                        exchange.as_str().into(),
                        key,
                        BasicPublishOptions {
                            mandatory: true,
                            ..BasicPublishOptions::default()
                        },
                        &msg.body,
                        msg.properties,
                    )
                    .await
                    .map_err(broken)?;
                pending.push_back((i, confirm));
            }
        }
        // Everything is sent; the confirms arrive together.
        for (i, confirm) in pending {
            self.check(events, i, confirm.await.map_err(broken)?)?;
        }
        Ok(())
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

    async fn subscribe(&self, spec: Subscribe) -> ferry_bus::Result<Subscription> {
        let consumer = consumer::subscribe(self.shared.clone(), self.life.clone(), spec).await?;
        Ok(Subscription::new(Box::new(consumer)))
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
