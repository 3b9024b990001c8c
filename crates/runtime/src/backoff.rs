//! Waits that grow while something keeps failing: one type for every retry loop of ferry.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Waits between tries: `first`, then twice as long each time, up to `max`; [`reset`] after a
/// success starts again from `first`.
///
/// [`jittered`](Backoff::jittered) draws each wait from the upper half of that value, so that
/// many clients that failed together (every consumer of a restarted broker) do not all come
/// back at the same instant.
///
/// [`reset`]: Backoff::reset
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
    jitter: bool,
}

impl Backoff {
    /// `first`, doubling up to `max` (at least `first`).
    pub fn new(first: Duration, max: Duration) -> Self {
        Backoff {
            first,
            max: max.max(first),
            next: first,
            jitter: false,
        }
    }

    /// Each wait is drawn from the upper half of the unjittered one.
    pub fn jittered(mut self) -> Self {
        self.jitter = true;
        self
    }

    /// The wait before the next try; the one after it will be twice as long, up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        let wait = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        if self.jitter {
            let half = wait / 2;
            half + half.mul_f64(rand::random::<f64>())
        } else {
            wait
        }
    }

    /// After a success: the next wait is `first` again.
    pub fn reset(&mut self) {
        self.next = self.first;
    }

    /// Sleeps for [`next_delay`](Backoff::next_delay); false when `stop` was cancelled first.
    pub async fn wait(&mut self, stop: &CancellationToken) -> bool {
        let delay = self.next_delay();
        tokio::select! {
            biased;
            _ = stop.cancelled() => false,
            _ = tokio::time::sleep(delay) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn waits_double_up_to_the_cap_and_start_again_after_a_reset() {
        let mut b = Backoff::new(ms(100), ms(350));
        let seen: Vec<_> = (0..4).map(|_| b.next_delay()).collect();
        assert_eq!(seen, [ms(100), ms(200), ms(350), ms(350)]);
        b.reset();
        assert_eq!(b.next_delay(), ms(100));
        // A cap below the first wait is the first wait.
        let mut b = Backoff::new(ms(100), ms(10));
        assert_eq!([b.next_delay(), b.next_delay()], [ms(100), ms(100)]);
    }

    #[test]
    fn jittered_waits_stay_in_the_upper_half_and_reach_the_cap() {
        let mut b = Backoff::new(ms(100), Duration::from_secs(2)).jittered();
        let first = b.next_delay();
        assert!(first >= ms(50) && first <= ms(100), "{first:?}");
        let mut last = first;
        for _ in 0..20 {
            last = b.next_delay();
            assert!(last <= Duration::from_secs(2), "{last:?}");
        }
        assert!(last >= Duration::from_secs(1), "{last:?}");
        b.reset();
        assert!(b.next_delay() <= ms(100));
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_ends_early_when_stopped() {
        let stop = CancellationToken::new();
        let mut b = Backoff::new(Duration::from_secs(60), Duration::from_secs(60));
        let started = tokio::time::Instant::now();
        assert!(b.wait(&stop).await, "an uninterrupted wait reports it waited");
        assert_eq!(started.elapsed(), Duration::from_secs(60));
        stop.cancel();
        let started = tokio::time::Instant::now();
        assert!(!b.wait(&stop).await);
        assert_eq!(started.elapsed(), Duration::ZERO);
    }
}
