//! Publishing with retries: transient broker failures are retried with backoff until the
//! launcher shuts down, then a few more times so that final reports still have a chance.

use std::sync::Arc;
use std::time::Duration;

use ferry_bus::Bus;
use ferry_event::Event;
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
        let mut delay = FIRST_DELAY;
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
                    }
                    tracing::warn!(error = %e, retry_in = ?delay, "publish failed; retrying");
                    if self.stop.is_cancelled() {
                        tokio::time::sleep(FIRST_DELAY).await;
                    } else {
                        tokio::select! {
                            _ = tokio::time::sleep(delay) => {}
                            _ = self.stop.cancelled() => {}
                        }
                    }
                    delay = (delay * 2).min(MAX_DELAY);
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
