//! [`Metered`] wraps any [`Bus`] to record what goes through it in ferry's metrics
//! ([`ferry_runtime::metrics`]): how long publishes take and how many events of each topic
//! they carry, failed publishes, deliveries, redeliveries, and how old an event is when it is
//! delivered. Dead letters are counted where a delivery is dead-lettered
//! ([`Delivery::dead_letter`]), whichever bus it came from.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use ferry_event::cloudevents::AttributesReader;
use ferry_event::{Event, Topic};
use ferry_runtime::metrics;

use crate::{Bus, Consumer, Delivery, Result, Subscribe, Subscription};

/// A topic's kind, the `topic` label of the bus metrics: per-backend topics count together.
pub fn topic_kind(topic: &Topic) -> &'static str {
    match topic {
        Topic::Intake => "intake",
        Topic::Control => "control",
        Topic::Lifecycle => "lifecycle",
        Topic::Dispatch(_) => "dispatch",
        Topic::Cancel(_) => "cancel",
        Topic::Logs => "logs",
    }
}

/// A bus whose traffic is counted.
pub struct Metered {
    inner: Arc<dyn Bus>,
}

impl Metered {
    pub fn new(inner: Arc<dyn Bus>) -> Metered {
        Metered { inner }
    }
}

#[async_trait]
impl Bus for Metered {
    async fn publish(&self, events: &[Event]) -> Result<()> {
        let started = Instant::now();
        let published = self.inner.publish(events).await;
        let topics = events.iter().map(|e| topic_kind(&ferry_event::route(e)));
        metrics::bus_published(started.elapsed(), published.is_ok(), topics);
        published
    }

    async fn subscribe(&self, spec: Subscribe) -> Result<Subscription> {
        let inner = self.inner.subscribe(spec).await?;
        Ok(Subscription::new(Box::new(Counted { inner })))
    }

    async fn declare(&self, spec: &Subscribe) -> Result<()> {
        self.inner.declare(spec).await
    }

    fn max_event_bytes(&self) -> Option<usize> {
        self.inner.max_event_bytes()
    }

    async fn check(&self) -> Result<()> {
        self.inner.check().await
    }
}

/// The consumer of a [`Metered`] bus.
struct Counted {
    inner: Subscription,
}

fn count(d: &Delivery) {
    let time = d.event.time().copied();
    let lag = time.and_then(|t| (chrono::Utc::now() - t).to_std().ok());
    metrics::bus_delivered(topic_kind(&d.topic), lag, d.redelivered);
}

#[async_trait]
impl Consumer for Counted {
    async fn recv(&mut self) -> Option<Result<Delivery>> {
        let next = self.inner.next().await;
        if let Some(Ok(d)) = &next {
            count(d);
        }
        next
    }

    fn try_recv(&mut self) -> Option<Delivery> {
        let next = self.inner.try_next();
        if let Some(d) = &next {
            count(d);
        }
        next
    }

    async fn close(self: Box<Self>) {
        self.inner.close().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryBus;

    fn event(n: u32) -> Event {
        ferry_event::EventBuilder::new("test").job(
            ferry_event::kind::JOB_CANCEL,
            &format!("job-{n}"),
            &serde_json::json!({ "n": n }),
        )
    }

    fn sample(text: &str, line: &str) -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(line)?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    #[tokio::test]
    async fn publishes_deliveries_and_dead_letters_are_counted() {
        let bus = Metered::new(Arc::new(MemoryBus::new()));
        let mut sub = bus
            .subscribe(Subscribe::new("metered-test", [Topic::Control]))
            .await
            .unwrap();
        let before = metrics::encode();
        bus.publish(&[event(1), event(2)]).await.unwrap();
        let a = sub.next().await.unwrap().unwrap();
        a.ack().await.unwrap();
        let b = sub.next().await.unwrap().unwrap();
        b.dead_letter("test").await.unwrap();
        let after = metrics::encode();
        for (line, more) in [
            ("ferry_bus_published_total{topic=\"control\"}", 2.0),
            ("ferry_bus_deliveries_total{topic=\"control\"}", 2.0),
            ("ferry_bus_dead_letters_total{topic=\"control\"}", 1.0),
        ] {
            assert!(
                sample(&after, line) - sample(&before, line) >= more,
                "{line}\n{after}"
            );
        }
        assert!(sample(&after, "ferry_bus_publish_seconds_count") >= 1.0);
        assert!(sample(&after, "ferry_bus_consume_lag_seconds_count{topic=\"control\"}") >= 2.0);
    }
}
