//! Exponential backoff with full jitter, capped: the delay before the next reconnect
//! attempt or the next probe of a better transport. Pure: no clock, no I/O.

use std::time::Duration;

/// Exponential backoff with full jitter: attempt `n` waits a uniformly random time in
/// `[0, min(cap, base * 2^n)]`. [`Backoff::reset`] after a success starts over.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
    rng: fastrand::Rng,
}

impl Backoff {
    /// Starts at `base`, doubles per attempt, never waits more than `cap`.
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self { base, cap: cap.max(base), attempt: 0, rng: fastrand::Rng::new() }
    }

    /// The same, with a seeded random source (for reproducible tests).
    pub fn with_seed(base: Duration, cap: Duration, seed: u64) -> Self {
        Self { rng: fastrand::Rng::with_seed(seed), ..Self::new(base, cap) }
    }

    /// The upper bound of the next delay: `min(cap, base * 2^attempt)`.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.base.checked_mul(factor).map_or(self.cap, |d| d.min(self.cap))
    }

    /// The delay to wait before the next attempt; each call counts one attempt.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(self.rng.u64(0..=nanos))
    }

    /// How many delays were handed out since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// Starts over from `base` (after a successful attempt).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: Duration = Duration::from_millis(100);
    const CAP: Duration = Duration::from_secs(5);

    #[tokio::test(start_paused = true)]
    async fn backoff_grows_exponentially_and_is_capped() {
        let mut b = Backoff::with_seed(BASE, CAP, 7);
        let ceilings: Vec<u64> = (0..10)
            .map(|_| {
                let c = b.ceiling().as_millis() as u64;
                b.next_delay();
                c
            })
            .collect();
        assert_eq!(ceilings, [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000, 5000]);
        // Paused time: each sleep advances the clock by exactly the delay.
        let mut b = Backoff::with_seed(BASE, CAP, 11);
        for _ in 0..40 {
            let ceiling = b.ceiling();
            let delay = b.next_delay();
            let start = tokio::time::Instant::now();
            tokio::time::sleep(delay).await;
            let waited = start.elapsed();
            assert!(waited >= delay && waited <= ceiling, "{waited:?} not within (0, {ceiling:?}]");
        }
        assert_eq!(b.attempts(), 40);
    }

    #[tokio::test(start_paused = true)]
    async fn total_wait_of_many_attempts_is_bounded_by_the_cap() {
        let mut b = Backoff::with_seed(BASE, CAP, 3);
        let start = tokio::time::Instant::now();
        for _ in 0..100 {
            tokio::time::sleep(b.next_delay()).await;
        }
        assert!(start.elapsed() <= CAP * 100);
        // Full jitter spreads the delays: they are not all at the ceiling.
        let delays: Vec<Duration> = (0..50).map(|_| b.next_delay()).collect();
        assert!(delays.iter().any(|d| *d < CAP / 2), "{delays:?}");
        assert!(delays.iter().all(|d| *d <= CAP));
    }

    #[test]
    fn reset_starts_over_from_the_base() {
        let mut b = Backoff::with_seed(BASE, CAP, 1);
        for _ in 0..8 {
            b.next_delay();
        }
        assert_eq!(b.ceiling(), CAP);
        b.reset();
        assert_eq!((b.ceiling(), b.attempts()), (BASE, 0));
        assert!(b.next_delay() <= BASE);
    }

    #[test]
    fn huge_attempt_counts_do_not_overflow() {
        let mut b = Backoff::with_seed(Duration::from_secs(1), Duration::from_secs(30), 5);
        for _ in 0..200 {
            assert!(b.next_delay() <= Duration::from_secs(30));
        }
    }
}
