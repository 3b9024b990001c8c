//! Where the scheduler reads the time.
//!
//! Leases, retry backoff, timeouts and the grace given to a cancel are all deadlines in
//! milliseconds since the Unix epoch, compared with the clock's reading once per transaction.
//! The scheduler reads it only through [`Config::clock`](crate::Config::clock): the system clock
//! in service, a [`ManualClock`] in tests, which then move time on instead of sleeping through
//! it.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

/// A source of the current time.
pub trait Clock: Send + Sync + fmt::Debug {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> i64;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        ferry_event::now_ms()
    }
}

/// A clock that moves only when told to. Clones share the time.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    /// A clock reading `start_ms`.
    pub fn new(start_ms: i64) -> Self {
        ManualClock(Arc::new(AtomicI64::new(start_ms)))
    }

    /// Moves the time on by `by`.
    pub fn advance(&self, by: Duration) {
        let ms = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        self.0.fetch_add(ms, Ordering::SeqCst);
    }

    /// Sets the time to `ms`, which must not be earlier than now: the scheduler's deadlines
    /// assume a clock that does not go back.
    pub fn set(&self, ms: i64) {
        self.0.fetch_max(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_forward_and_only_when_told() {
        let clock = ManualClock::new(1_000);
        let shared = clock.clone();
        assert_eq!(shared.now_ms(), 1_000);
        clock.advance(Duration::from_secs(30));
        assert_eq!(shared.now_ms(), 31_000);
        clock.set(5_000);
        assert_eq!(shared.now_ms(), 31_000, "set never takes the time back");
        clock.set(40_000);
        assert_eq!(shared.now_ms(), 40_000);
    }
}
