//! The in-process bus: one queue per consumer group, bound to the group's topics, with broker
//! semantics (confirmed publish, explicit ack, prefetch, redelivery of what was not acked).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use ferry_event::{Event, Topic, route};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use crate::{Bus, Consumer, Delivery, Error, Result, Settle, Subscribe, Subscription};

/// An event moved to the dead-letter list, with the reason.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub group: String,
    pub event: Event,
    pub reason: String,
}

/// The in-process bus. Cloning shares it.
#[derive(Clone, Default)]
pub struct MemoryBus {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for MemoryBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MemoryBus")
    }
}

#[derive(Default)]
struct Inner {
    state: Mutex<State>,
    dead: Mutex<Vec<DeadLetter>>,
    /// The largest event it carries, if limited ([`MemoryBus::with_max_event_bytes`]).
    max_event_bytes: Option<usize>,
}

#[derive(Default)]
struct State {
    closed: bool,
    queues: HashMap<String, Arc<Queue>>,
    bindings: HashMap<Topic, HashSet<String>>,
}

struct Queue {
    group: String,
    /// Waiting messages, in publish order (`seq`), redeliveries back in their place.
    ready: Mutex<VecDeque<Message>>,
    next_seq: std::sync::atomic::AtomicU64,
    notify: Notify,
}

#[derive(Clone)]
struct Message {
    seq: u64,
    event: Event,
    topic: Topic,
    redelivered: bool,
}

impl MemoryBus {
    pub fn new() -> Self {
        Self::default()
    }

    /// A bus that refuses events larger than `n` bytes ([`crate::encoded_size`]) with
    /// [`Error::TooLarge`], publishing nothing of their batch, as a broker with a message size
    /// limit does.
    pub fn with_max_event_bytes(n: usize) -> Self {
        MemoryBus {
            inner: Arc::new(Inner {
                max_event_bytes: Some(n),
                ..Inner::default()
            }),
        }
    }

    /// Events moved to the dead-letter list so far.
    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        self.inner.dead.lock().unwrap().clone()
    }

    /// Events waiting (not yet delivered) in a group's queue.
    pub fn depth(&self, group: &str) -> usize {
        let state = self.inner.state.lock().unwrap();
        state
            .queues
            .get(group)
            .map(|q| q.ready.lock().unwrap().len())
            .unwrap_or(0)
    }

    /// Consumer groups bound to a topic: lets an embedder or a test wait until a service has
    /// subscribed.
    pub fn groups_on(&self, topic: &Topic) -> usize {
        let state = self.inner.state.lock().unwrap();
        state.bindings.get(topic).map(|g| g.len()).unwrap_or(0)
    }

    /// Stops the bus: consumers receive `None`, publishing fails.
    pub fn close(&self) {
        let mut state = self.inner.state.lock().unwrap();
        state.closed = true;
        for q in state.queues.values() {
            q.notify.notify_waiters();
        }
    }

    fn is_closed(&self) -> bool {
        self.inner.state.lock().unwrap().closed
    }
}

#[async_trait]
impl Bus for MemoryBus {
    async fn publish(&self, events: &[Event]) -> Result<()> {
        if let Some(limit) = self.inner.max_event_bytes
            && let Some(big) = events.iter().find(|e| crate::encoded_size(e) > limit)
        {
            return Err(Error::TooLarge {
                event_id: ferry_event::AttributesReader::id(big).to_string(),
                size: crate::encoded_size(big),
                limit: Some(limit),
            });
        }
        let state = self.inner.state.lock().unwrap();
        if state.closed {
            return Err(Error::Closed);
        }
        for event in events {
            let topic = route(event);
            let Some(groups) = state.bindings.get(&topic) else {
                continue;
            };
            for g in groups {
                let q = &state.queues[g];
                let seq = q.next_seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                q.ready.lock().unwrap().push_back(Message {
                    seq,
                    event: event.clone(),
                    topic: topic.clone(),
                    redelivered: false,
                });
                q.notify.notify_one();
            }
        }
        Ok(())
    }

    async fn subscribe(&self, spec: Subscribe) -> Result<Subscription> {
        let mut state = self.inner.state.lock().unwrap();
        if state.closed {
            return Err(Error::Closed);
        }
        let queue = state
            .queues
            .entry(spec.group.clone())
            .or_insert_with(|| {
                Arc::new(Queue {
                    group: spec.group.clone(),
                    ready: Mutex::new(VecDeque::new()),
                    next_seq: Default::default(),
                    notify: Notify::new(),
                })
            })
            .clone();
        for t in &spec.topics {
            state
                .bindings
                .entry(t.clone())
                .or_default()
                .insert(spec.group.clone());
        }
        Ok(Subscription::new(Box::new(MemoryConsumer {
            bus: self.clone(),
            queue,
            window: Arc::new(Semaphore::new(spec.prefetch.max(1))),
            ephemeral: spec.ephemeral,
        })))
    }

    fn max_event_bytes(&self) -> Option<usize> {
        self.inner.max_event_bytes
    }

    async fn check(&self) -> Result<()> {
        match self.is_closed() {
            true => Err(Error::Closed),
            false => Ok(()),
        }
    }
}

struct MemoryConsumer {
    bus: MemoryBus,
    queue: Arc<Queue>,
    window: Arc<Semaphore>,
    ephemeral: bool,
}

impl Drop for MemoryConsumer {
    /// An ephemeral group's queue goes with its consumer.
    fn drop(&mut self) {
        if self.ephemeral {
            let mut state = self.bus.inner.state.lock().unwrap();
            state.queues.remove(&self.queue.group);
            for groups in state.bindings.values_mut() {
                groups.remove(&self.queue.group);
            }
        }
    }
}

impl MemoryConsumer {
    fn take(&self, permit: OwnedSemaphorePermit) -> std::result::Result<Delivery, OwnedSemaphorePermit> {
        let msg = self.queue.ready.lock().unwrap().pop_front();
        match msg {
            Some(msg) => {
                // Another member may be waiting for what is left.
                if !self.queue.ready.lock().unwrap().is_empty() {
                    self.queue.notify.notify_one();
                }
                let settle = MemorySettle {
                    bus: self.bus.clone(),
                    queue: self.queue.clone(),
                    msg: Some(msg.clone()),
                    _permit: permit,
                };
                Ok(Delivery::new(
                    msg.event,
                    msg.topic,
                    msg.redelivered,
                    Box::new(settle),
                ))
            }
            None => Err(permit),
        }
    }
}

#[async_trait]
impl Consumer for MemoryConsumer {
    async fn recv(&mut self) -> Option<Result<Delivery>> {
        let mut permit = self.window.clone().acquire_owned().await.ok()?;
        loop {
            let notified = self.queue.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.bus.is_closed() {
                return None;
            }
            match self.take(permit) {
                Ok(d) => return Some(Ok(d)),
                Err(p) => permit = p,
            }
            notified.await;
        }
    }

    fn try_recv(&mut self) -> Option<Delivery> {
        let permit = self.window.clone().try_acquire_owned().ok()?;
        if self.bus.is_closed() {
            return None;
        }
        self.take(permit).ok()
    }
}

struct MemorySettle {
    bus: MemoryBus,
    queue: Arc<Queue>,
    msg: Option<Message>,
    _permit: OwnedSemaphorePermit,
}

impl MemorySettle {
    fn requeue(&mut self) {
        if let Some(mut msg) = self.msg.take() {
            msg.redelivered = true;
            let mut ready = self.queue.ready.lock().unwrap();
            let at = ready.partition_point(|m| m.seq < msg.seq);
            ready.insert(at, msg);
            self.queue.notify.notify_one();
        }
    }
}

impl Drop for MemorySettle {
    fn drop(&mut self) {
        self.requeue();
    }
}

#[async_trait]
impl Settle for MemorySettle {
    async fn ack(mut self: Box<Self>) -> Result<()> {
        self.msg = None;
        Ok(())
    }

    async fn nack(mut self: Box<Self>) -> Result<()> {
        self.requeue();
        Ok(())
    }

    async fn dead_letter(mut self: Box<Self>, reason: &str) -> Result<()> {
        if let Some(msg) = self.msg.take() {
            self.bus.inner.dead.lock().unwrap().push(DeadLetter {
                group: self.queue.group.clone(),
                event: msg.event,
                reason: reason.to_string(),
            });
        }
        Ok(())
    }

    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any + Send> {
        self
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use ferry_event::{AttributesReader, EventBuilder, kind};

    use super::*;

    fn ev(n: u32) -> Event {
        EventBuilder::new("test").job(
            kind::JOB_CANCEL,
            &format!("job-{n}"),
            &serde_json::json!({"n": n}),
        )
    }

    fn n_of(d: &Delivery) -> u64 {
        let v: serde_json::Value = ferry_event::decode(&d.event).unwrap();
        v["n"].as_u64().unwrap()
    }

    #[tokio::test]
    async fn each_group_gets_every_event_and_members_share_them() {
        let bus = MemoryBus::new();
        let mut a1 = bus
            .subscribe(Subscribe::new("a", [Topic::Control]))
            .await
            .unwrap();
        let mut a2 = bus
            .subscribe(Subscribe::new("a", [Topic::Control]))
            .await
            .unwrap();
        let mut b = bus
            .subscribe(Subscribe::new("b", [Topic::Control]))
            .await
            .unwrap();
        bus.publish(&[ev(1), ev(2)]).await.unwrap();
        let x = a1.next().await.unwrap().unwrap();
        let y = a2.next().await.unwrap().unwrap();
        let mut got = [n_of(&x), n_of(&y)];
        got.sort();
        assert_eq!(got, [1, 2]);
        let first = b.next().await.unwrap().unwrap();
        assert_eq!(n_of(&first), 1);
        first.ack().await.unwrap();
        assert_eq!(n_of(&b.next().await.unwrap().unwrap()), 2);
    }

    #[tokio::test]
    async fn unacked_deliveries_come_back_in_order_and_marked() {
        let bus = MemoryBus::new();
        let mut s = bus
            .subscribe(Subscribe::new("g", [Topic::Control]))
            .await
            .unwrap();
        bus.publish(&[ev(1), ev(2), ev(3)]).await.unwrap();
        let d1 = s.next().await.unwrap().unwrap();
        let d2 = s.next().await.unwrap().unwrap();
        d1.ack().await.unwrap();
        drop(d2); // the consumer crashed while processing it
        let again = s.next().await.unwrap().unwrap();
        assert_eq!(n_of(&again), 2);
        assert!(again.redelivered);
        again.nack().await.unwrap();
        let again = s.next().await.unwrap().unwrap();
        assert_eq!(n_of(&again), 2);
        again.ack().await.unwrap();
        assert_eq!(n_of(&s.next().await.unwrap().unwrap()), 3);
    }

    #[tokio::test]
    async fn deliveries_given_back_together_return_in_publish_order() {
        let bus = MemoryBus::new();
        let mut s = bus
            .subscribe(Subscribe::new("g", [Topic::Control]))
            .await
            .unwrap();
        bus.publish(&(0..5).map(ev).collect::<Vec<_>>()).await.unwrap();
        let batch = s.next_batch(3).await.unwrap().unwrap();
        drop(batch); // a consumer crashed holding three deliveries
        let again = s.next_batch(5).await.unwrap().unwrap();
        assert_eq!(again.iter().map(n_of).collect::<Vec<_>>(), [0, 1, 2, 3, 4]);
        assert!(again[..3].iter().all(|d| d.redelivered) && !again[3].redelivered);
    }

    #[tokio::test]
    async fn a_dropped_subscription_hands_its_deliveries_to_the_next_member() {
        let bus = MemoryBus::new();
        let mut s = bus
            .subscribe(Subscribe::new("g", [Topic::Control]))
            .await
            .unwrap();
        bus.publish(&[ev(1)]).await.unwrap();
        let d = s.next().await.unwrap().unwrap();
        drop(s);
        drop(d);
        let mut s2 = bus
            .subscribe(Subscribe::new("g", [Topic::Control]))
            .await
            .unwrap();
        assert_eq!(n_of(&s2.next().await.unwrap().unwrap()), 1);
    }

    #[tokio::test]
    async fn prefetch_bounds_unacked_deliveries() {
        let bus = MemoryBus::new();
        let mut s = bus
            .subscribe(Subscribe::new("g", [Topic::Control]).prefetch(2))
            .await
            .unwrap();
        bus.publish(&[ev(1), ev(2), ev(3)]).await.unwrap();
        let d1 = s.next().await.unwrap().unwrap();
        let _d2 = s.next().await.unwrap().unwrap();
        assert!(s.try_next().is_none());
        let blocked = tokio::time::timeout(Duration::from_millis(50), s.next()).await;
        assert!(blocked.is_err(), "a third delivery exceeded the prefetch window");
        d1.ack().await.unwrap();
        assert_eq!(n_of(&s.next().await.unwrap().unwrap()), 3);
    }

    #[tokio::test]
    async fn batches_take_what_is_available() {
        let bus = MemoryBus::new();
        let mut s = bus
            .subscribe(Subscribe::new("g", [Topic::Control]))
            .await
            .unwrap();
        bus.publish(&(0..10).map(ev).collect::<Vec<_>>()).await.unwrap();
        let batch = s.next_batch(4).await.unwrap().unwrap();
        assert_eq!(batch.iter().map(n_of).collect::<Vec<_>>(), [0, 1, 2, 3]);
    }

    #[tokio::test]
    async fn dead_letters_keep_the_event_and_reason() {
        let bus = MemoryBus::new();
        let mut s = bus
            .subscribe(Subscribe::new("g", [Topic::Control]))
            .await
            .unwrap();
        bus.publish(&[ev(7)]).await.unwrap();
        let d = s.next().await.unwrap().unwrap();
        let id = d.event.id().to_string();
        d.dead_letter("payload is not a job").await.unwrap();
        let dead = bus.dead_letters();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].event.id(), id);
        assert_eq!(dead[0].reason, "payload is not a job");
        assert_eq!(bus.depth("g"), 0);
    }

    #[tokio::test]
    async fn routing_keeps_topics_apart_and_close_ends_consumers() {
        let bus = MemoryBus::new();
        let mut logs = bus
            .subscribe(Subscribe::new("logs", [Topic::Logs]))
            .await
            .unwrap();
        bus.publish(&[ev(1)]).await.unwrap(); // control traffic
        assert!(logs.try_next().is_none());
        bus.close();
        assert!(logs.next().await.is_none());
        assert!(matches!(bus.publish(&[ev(2)]).await, Err(Error::Closed)));
    }
}
