//! Publishing with retries: transient broker failures are retried with backoff until the
//! launcher shuts down, then a few more times so that final reports still have a chance.

use std::sync::Arc;
use std::time::Duration;

use ferry_bus::Bus;
use ferry_event::Event;
use ferry_runtime::Backoff;
use tokio_util::sync::CancellationToken;

const FIRST_DELAY: Duration = Duration::from_millis(50);
const MAX_DELAY: Duration = Duration::from_secs(5);
/// Tries left once the launcher is stopping.
const TRIES_WHEN_STOPPING: u32 = 3;

/// Publishes events, retrying what may succeed later.
#[derive(Clone)]
pub struct Publisher {
    bus: Arc<dyn Bus>,
    stop: CancellationToken,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Publisher")
    }
}

impl Publisher {
    pub fn new(bus: Arc<dyn Bus>, stop: CancellationToken) -> Self {
        Publisher { bus, stop }
    }

    /// Publishes `events` and returns once the broker confirmed them. Errors are the last
    /// failure once retrying stopped, or one that can never succeed.
    pub async fn publish(&self, events: &[Event]) -> Result<(), ferry_bus::Error> {
        let mut backoff = Backoff::new(FIRST_DELAY, MAX_DELAY);
        let mut tries_left = TRIES_WHEN_STOPPING;
        loop {
            match self.bus.publish(events).await {
                Ok(()) => return Ok(()),
                Err(e) if e.is_transient() => {
                    if self.stop.is_cancelled() {
                        tries_left -= 1;
                        if tries_left == 0 {
                            return Err(e);
                        }
                        tracing::warn!(error = %e, retry_in = ?FIRST_DELAY, "publish failed while stopping; retrying");
                        tokio::time::sleep(FIRST_DELAY).await;
                    } else {
                        tracing::warn!(error = %e, "publish failed; retrying");
                        // Cut short when the launcher stops: the tries left then come quickly.
                        backoff.wait(&self.stop).await;
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One try, for messages that are repeated anyway (heartbeats).
    pub async fn publish_once(&self, events: &[Event]) -> Result<(), ferry_bus::Error> {
        self.bus.publish(events).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use async_trait::async_trait;
    use ferry_bus::{MemoryBus, Subscribe, Subscription};
    use ferry_event::{EventBuilder, Topic, kind};

    use super::*;

    /// Fails the first `failures` publishes as the broker being unreachable.
    struct Flaky {
        inner: MemoryBus,
        failures: usize,
        calls: AtomicUsize,
    }

    #[async_trait]
    impl Bus for Flaky {
        async fn publish(&self, events: &[Event]) -> ferry_bus::Result<()> {
            if self.calls.fetch_add(1, Ordering::SeqCst) < self.failures {
                return Err(ferry_bus::Error::Unavailable("broker restarting".into()));
            }
            self.inner.publish(events).await
        }

        async fn subscribe(&self, spec: Subscribe) -> ferry_bus::Result<Subscription> {
            self.inner.subscribe(spec).await
        }
    }

    fn event() -> Event {
        EventBuilder::new("test").job(kind::JOB_CANCEL, "j", &serde_json::json!({"jobId": "j"}))
    }

    #[tokio::test(start_paused = true)]
    async fn transient_failures_are_retried_until_confirmed() {
        let inner = MemoryBus::new();
        let mut sub = inner
            .subscribe(Subscribe::new("g", [Topic::Control]))
            .await
            .unwrap();
        let bus = Arc::new(Flaky {
            inner,
            failures: 4,
            calls: AtomicUsize::new(0),
        });
        let p = Publisher::new(bus.clone(), CancellationToken::new());
        p.publish(&[event()]).await.unwrap();
        assert_eq!(bus.calls.load(Ordering::SeqCst), 5);
        assert!(sub.try_next().is_some(), "the event was not delivered");
    }

    #[tokio::test(start_paused = true)]
    async fn retrying_ends_soon_after_the_launcher_stops() {
        let bus = Arc::new(Flaky {
            inner: MemoryBus::new(),
            failures: usize::MAX,
            calls: AtomicUsize::new(0),
        });
        let stop = CancellationToken::new();
        let p = Publisher::new(bus.clone(), stop.clone());
        let publishing = tokio::spawn(async move { p.publish(&[event()]).await });
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(!publishing.is_finished(), "gave up while the launcher runs");
        stop.cancel();
        let result = tokio::time::timeout(Duration::from_secs(10), publishing)
            .await
            .expect("retrying did not end after stop")
            .unwrap();
        assert!(matches!(result, Err(ferry_bus::Error::Unavailable(_))));
    }

    #[tokio::test]
    async fn permanent_failures_are_not_retried() {
        let bus = MemoryBus::new();
        bus.close();
        let p = Publisher::new(Arc::new(bus), CancellationToken::new());
        assert!(matches!(
            p.publish(&[event()]).await,
            Err(ferry_bus::Error::Closed)
        ));
    }
}
