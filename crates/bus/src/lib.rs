//! ferry's message bus.
//!
//! [`Bus`] is shaped after what RabbitMQ and Kafka give: publishing is confirmed by the broker
//! before it returns; a consumer group receives every event routed to its topics, spread over the
//! group's members; a delivery stays "in flight" until it is acked, nacked or dead-lettered, and
//! one that is dropped unacknowledged (its consumer crashed) is delivered again; each consumer
//! holds at most `prefetch` deliveries at once.
//!
//! [`memory::MemoryBus`] implements it in-process for the embedded mode and tests; RabbitMQ and
//! Kafka live in their own crates (`ferry-bus-amqp`, `ferry-bus-kafka`) and `ferry-connect`
//! picks one from a URL. [`signing::Signed`] wraps any of them so that services sign what they
//! publish and refuse forged events, [`metered::Metered`] counts what goes through a bus in
//! ferry's metrics, and [`traced::Traced`] makes each publish a span of the trace it happens
//! in. [`conformance`] (feature `conformance`) is the test suite
//! every implementation passes.

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
#[cfg(any(test, feature = "conformance"))]
pub mod conformance_signing;
pub mod memory;
pub mod metered;
pub mod signing;
pub mod traced;

use async_trait::async_trait;
use ferry_event::cloudevents::AttributesReader;
use ferry_event::{Event, Topic};

pub use memory::MemoryBus;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The broker cannot be reached or did not confirm; retrying later may succeed.
    #[error("bus unavailable: {0}")]
    Unavailable(String),
    /// The bus is configured in a way that can never work.
    #[error("bus configuration: {0}")]
    Config(String),
    /// The bus was shut down.
    #[error("bus closed")]
    Closed,
    /// An event is larger than the broker carries: publishing it again cannot succeed. Events
    /// of its batch before it may have been published.
    #[error("event {event_id} is too large for the bus: {size} bytes, {}", limit_text(*.limit))]
    TooLarge {
        event_id: String,
        size: usize,
        /// The most the bus carries, when it says.
        limit: Option<usize>,
    },
}

fn limit_text(limit: Option<usize>) -> String {
    match limit {
        Some(n) => format!("at most {n}"),
        None => "more than the broker allows".to_string(),
    }
}

impl Error {
    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Unavailable(_))
    }
}

/// What a consumer group wants to receive.
#[derive(Debug, Clone)]
pub struct Subscribe {
    /// Members of one group share the events (competing consumers); each group gets them all.
    pub group: String,
    pub topics: Vec<Topic>,
    /// Most deliveries this consumer holds unacknowledged at once. A bus that carries several
    /// events per message may hand out fewer at once while each travels alone (RabbitMQ: at
    /// least 16, or the prefetch if smaller): never wait for more deliveries than that before
    /// settling some.
    pub prefetch: usize,
    /// A group of one consumer that lives only as long as its subscription: it receives what is
    /// published from its subscription on, and its queue (RabbitMQ: exclusive, auto-deleted;
    /// Kafka: a fresh group starting at the latest offset) goes away with it. Used to hear every
    /// event of a topic, like `task.cancel`, in each instance.
    pub ephemeral: bool,
}

impl Subscribe {
    pub fn new(group: impl Into<String>, topics: impl IntoIterator<Item = Topic>) -> Self {
        Subscribe {
            group: group.into(),
            topics: topics.into_iter().collect(),
            prefetch: 256,
            ephemeral: false,
        }
    }

    /// Makes the subscription [`ephemeral`](Subscribe::ephemeral).
    pub fn ephemeral(mut self) -> Self {
        self.ephemeral = true;
        self
    }

    pub fn prefetch(mut self, n: usize) -> Self {
        self.prefetch = n.max(1);
        self
    }
}

/// A message broker.
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Publishes each event to the topic [`ferry_event::route`] gives it and returns once the
    /// broker has confirmed every one of them. Order is kept per topic.
    async fn publish(&self, events: &[Event]) -> Result<()>;

    /// Joins a consumer group. The group's queue exists (and collects events) from the first
    /// subscription on; events published before it are not delivered to it.
    async fn subscribe(&self, spec: Subscribe) -> Result<Subscription>;

    /// Makes sure the group's queue exists and collects events from now on, without consuming.
    /// Lets a client that starts services and then publishes be sure nothing is published
    /// before the consumers are bound.
    async fn declare(&self, spec: &Subscribe) -> Result<()> {
        self.subscribe(spec.clone()).await.map(drop)
    }

    /// The largest event the bus carries, as [`encoded_size`] counts it, when it knows: a
    /// publisher can refuse a larger event itself rather than have the broker refuse it.
    /// Publishing a larger one fails with [`Error::TooLarge`].
    fn max_event_bytes(&self) -> Option<usize> {
        None
    }

    /// Whether the broker can be reached now, for a service's readiness: `Err` says why not.
    /// Cheap enough to call on every readiness probe; a bus that cannot tell answers `Ok`.
    async fn check(&self) -> Result<()> {
        Ok(())
    }
}

/// About how many bytes an event takes on a bus: its data and its attributes' text. Bindings
/// add a little per attribute; [`Bus::max_event_bytes`] leaves room for that.
pub fn encoded_size(event: &Event) -> usize {
    use ferry_event::cloudevents::Data;
    let data = match event.data() {
        Some(Data::Binary(b)) => b.len(),
        Some(Data::String(s)) => s.len(),
        Some(Data::Json(v)) => serde_json::to_vec(v).map_or(0, |b| b.len()),
        None => 0,
    };
    let attributes: usize = event
        .iter()
        .map(|(name, value)| name.len() + value.to_string().len() + 8)
        .sum();
    data + attributes
}

/// At most `max` characters of `s`, for messages that quote what they were given.
pub(crate) fn truncated(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// A consumer: deliveries in order, bounded by the subscription's prefetch.
pub struct Subscription {
    inner: Box<dyn Consumer>,
    /// An error met while gathering a batch, handed out by the next call.
    pending: Option<Error>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Subscription")
    }
}

/// What a bus implementation provides behind a [`Subscription`].
#[async_trait]
pub trait Consumer: Send {
    /// The next delivery; waits while none is available or prefetch is exhausted. `None` once
    /// the bus is closed. Must be cancel-safe: a `recv` abandoned in `select!` loses nothing.
    async fn recv(&mut self) -> Option<Result<Delivery>>;
    /// A delivery if one is available right now.
    fn try_recv(&mut self) -> Option<Delivery>;
    /// Ends the subscription and returns once the broker knows: what was acked is committed
    /// and the consumer has left its group. Deliveries not yet settled come again.
    async fn close(self: Box<Self>) {}
}

impl Subscription {
    pub fn new(inner: Box<dyn Consumer>) -> Self {
        Subscription { inner, pending: None }
    }

    /// The next delivery. Cancel-safe: usable in `select!`.
    pub async fn next(&mut self) -> Option<Result<Delivery>> {
        if let Some(e) = self.pending.take() {
            return Some(Err(e));
        }
        self.inner.recv().await
    }

    /// A delivery if one is available right now.
    pub fn try_next(&mut self) -> Option<Delivery> {
        if self.pending.is_some() {
            return None;
        }
        self.inner.try_recv()
    }

    /// Waits for one delivery, then takes whatever else is available at once, up to `max`.
    pub async fn next_batch(&mut self, max: usize) -> Option<Result<Vec<Delivery>>> {
        self.next_batch_within(max, std::time::Duration::ZERO).await
    }

    /// Waits for one delivery, then takes what else comes within `linger` of it, up to `max`:
    /// fewer, larger batches for a consumer to whom a few milliseconds do not matter. With a
    /// `linger` of zero it is cancel-safe; otherwise a batch abandoned after its first delivery
    /// is given back, as deliveries dropped unsettled are.
    pub async fn next_batch_within(
        &mut self,
        max: usize,
        linger: std::time::Duration,
    ) -> Option<Result<Vec<Delivery>>> {
        let first = match self.next().await? {
            Ok(d) => d,
            Err(e) => return Some(Err(e)),
        };
        let deadline = tokio::time::Instant::now() + linger;
        let mut batch = vec![first];
        while batch.len() < max {
            if let Some(d) = self.inner.try_recv() {
                batch.push(d);
                continue;
            }
            if linger.is_zero() {
                break;
            }
            tokio::select! {
                next = self.inner.recv() => match next {
                    Some(Ok(d)) => batch.push(d),
                    Some(Err(e)) => {
                        self.pending = Some(e);
                        break;
                    }
                    None => break,
                },
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        Some(Ok(batch))
    }

    /// Ends the subscription and waits until the broker knows: acked deliveries are committed
    /// and the consumer has left its group, so another member takes over its share at once.
    /// Dropping a subscription does the same without waiting.
    pub async fn close(self) {
        self.inner.close().await
    }
}

/// How a delivery is settled with its broker.
#[async_trait]
pub trait Settle: Send + Sync + 'static {
    async fn ack(self: Box<Self>) -> Result<()>;
    /// Give the event back for redelivery.
    async fn nack(self: Box<Self>) -> Result<()>;
    /// Move the event to the dead-letter destination, recording why.
    async fn dead_letter(self: Box<Self>, reason: &str) -> Result<()>;

    /// Acks this delivery and `others` (deliveries of the same bus), in as few messages to the
    /// broker as it allows. By default each is acked in turn; the first error ends it, and what
    /// was not acked is delivered again.
    async fn ack_many(self: Box<Self>, others: Vec<Box<dyn Settle>>) -> Result<()> {
        self.ack().await?;
        for s in others {
            s.ack().await?;
        }
        Ok(())
    }

    /// The settle itself, for an [`ack_many`](Settle::ack_many) that handles its own kind
    /// together.
    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any + Send>;
}

/// One received event. Dropping it unsettled gives it back to the broker.
pub struct Delivery {
    pub event: Event,
    pub topic: Topic,
    /// True when the event was delivered before and not acknowledged.
    pub redelivered: bool,
    /// The key whose signature was checked, on a [`signing::Signed`] bus.
    signed_with: Option<std::sync::Arc<str>>,
    settle: Box<dyn Settle>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("topic", &self.topic)
            .field("redelivered", &self.redelivered)
            .field("signed_with", &self.signed_with)
            .field("event", &self.event)
            .finish()
    }
}

impl Delivery {
    pub fn new(event: Event, topic: Topic, redelivered: bool, settle: Box<dyn Settle>) -> Self {
        Delivery {
            event,
            topic,
            redelivered,
            signed_with: None,
            settle,
        }
    }

    /// The id of the key whose signature this delivery carried and a [`signing::Signed`] bus
    /// checked; `None` for an unsigned event (accepted only on intake) or an unsigned bus.
    pub fn signed_with(&self) -> Option<&str> {
        self.signed_with.as_deref()
    }

    /// The event's `source` when its signature was checked, so that it names the service that
    /// really published it; `None` otherwise.
    pub fn verified_source(&self) -> Option<&str> {
        self.signed_with.as_ref().map(|_| self.event.source().as_str())
    }

    pub async fn ack(self) -> Result<()> {
        self.settle.ack().await
    }

    pub async fn nack(self) -> Result<()> {
        self.settle.nack().await
    }

    pub async fn dead_letter(self, reason: &str) -> Result<()> {
        tracing::warn!(
            event_id = %AttributesReader::id(&self.event),
            event_type = %AttributesReader::ty(&self.event),
            topic = %self.topic,
            reason,
            "dead-lettering event"
        );
        ferry_runtime::metrics::bus_dead_lettered(metered::topic_kind(&self.topic));
        self.settle.dead_letter(reason).await
    }
}

/// Acks many deliveries of one bus together: on RabbitMQ a run of them is one `basic.ack`
/// with `multiple` set rather than one each. On an error some may be acked and the rest are
/// delivered again.
pub async fn ack_all(deliveries: impl IntoIterator<Item = Delivery>) -> Result<()> {
    let mut settles = deliveries.into_iter().map(|d| d.settle);
    match settles.next() {
        Some(first) => first.ack_many(settles.collect()).await,
        None => Ok(()),
    }
}

/// The namespace ferry's topics, exchanges and queues live in unless a bus URL names another
/// (`?namespace=NAME`): several deployments can share one broker.
pub const DEFAULT_NAMESPACE: &str = "ferry";

/// The `namespace` query parameter of a bus URL, or [`DEFAULT_NAMESPACE`]. Names are limited to
/// `[A-Za-z0-9_-]` so that they are valid in every broker's names.
pub fn namespace_of(url: &str) -> Result<String> {
    let query = url.split_once('?').map(|(_, q)| q).unwrap_or("");
    let ns = query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == "namespace")
        .map(|(_, v)| v.to_string())
        .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string());
    if ns.is_empty()
        || ns.len() > 64
        || !ns
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(Error::Config(format!(
            "bus namespace {ns:?} is not valid: use 1 to 64 letters, digits, `_` or `-`"
        )));
    }
    Ok(ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_come_from_the_url() {
        assert_eq!(namespace_of("amqp://h:5672/%2f").unwrap(), "ferry");
        assert_eq!(namespace_of("kafka://h:9092?namespace=t-1&x=y").unwrap(), "t-1");
        assert!(
            namespace_of("kafka://h?namespace=a.b")
                .unwrap_err()
                .to_string()
                .contains("not valid")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_lingers_for_what_comes_soon_after_its_first_delivery() {
        use std::time::Duration;
        let bus = std::sync::Arc::new(MemoryBus::new());
        let mut sub = bus
            .subscribe(Subscribe::new("g", [Topic::Control]))
            .await
            .unwrap();
        let b = ferry_event::EventBuilder::new("test");
        let ev = |n: u32| b.job(ferry_event::kind::JOB_CANCEL, "j", &serde_json::json!({ "n": n }));
        let late = |bus: std::sync::Arc<MemoryBus>, e: Event, after_ms: u64| {
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(after_ms)).await;
                bus.publish(&[e]).await.unwrap();
            })
        };
        bus.publish(&[ev(0)]).await.unwrap();
        late(bus.clone(), ev(1), 5);
        late(bus.clone(), ev(2), 30);
        let batch = sub
            .next_batch_within(10, Duration::from_millis(10))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(batch.len(), 2, "the second came 5 ms after the first");
        ack_all(batch).await.unwrap();
        let batch = sub
            .next_batch_within(10, Duration::from_millis(10))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(batch.len(), 1, "the third came 25 ms after the second");
        ack_all(batch).await.unwrap();

        bus.publish(&[ev(3), ev(4), ev(5)]).await.unwrap();
        let batch = sub
            .next_batch_within(2, Duration::from_secs(60))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(batch.len(), 2, "no more than max, without waiting for the linger");
    }

    crate::conformance_tests!(async { std::sync::Arc::new(MemoryBus::new()) });
    crate::signing_conformance_tests!(async { std::sync::Arc::new(MemoryBus::new()) });

    #[tokio::test]
    async fn forged_events_are_dead_lettered_with_their_reason() {
        let raw = MemoryBus::new();
        let expected = conformance_signing::forged_events_are_dead_lettered_never_delivered(
            std::sync::Arc::new(raw.clone()),
        )
        .await;
        let dead = raw.dead_letters();
        assert_eq!(dead.len(), expected.len(), "{dead:?}");
        for want in expected {
            let got = dead
                .iter()
                .find(|d| d.event.id() == want.event_id)
                .unwrap_or_else(|| panic!("{} was not dead-lettered", want.event_id));
            assert!(
                got.reason.contains(want.reason),
                "{}: {}",
                want.reason,
                got.reason
            );
            assert_eq!(got.group, "signed-scheduler");
        }
    }

    #[tokio::test]
    async fn a_bus_with_a_size_limit_refuses_larger_events_whole() {
        let bus = MemoryBus::with_max_event_bytes(4096);
        let mut sub = bus
            .subscribe(Subscribe::new("g", [Topic::Control]))
            .await
            .unwrap();
        let b = ferry_event::EventBuilder::new("test");
        let small = b.job(ferry_event::kind::JOB_CANCEL, "j", &serde_json::json!({"n": 1}));
        let big = b.job(
            ferry_event::kind::JOB_CANCEL,
            "j",
            &serde_json::json!({"pad": "x".repeat(5000)}),
        );
        let err = bus.publish(&[small.clone(), big.clone()]).await.unwrap_err();
        match err {
            Error::TooLarge {
                event_id,
                size,
                limit,
            } => {
                assert_eq!(event_id, big.id());
                assert!(size > 5000);
                assert_eq!(limit, Some(4096));
            }
            other => panic!("{other}"),
        }
        assert!(sub.try_next().is_none(), "nothing of the batch was published");
        assert_eq!(bus.max_event_bytes(), Some(4096));
        let signed = signing::Signed::new(std::sync::Arc::new(bus.clone()), signing::Keyring::generate());
        assert!(
            signed.max_event_bytes().unwrap() < 4096,
            "room is left for the signature"
        );
    }
}
