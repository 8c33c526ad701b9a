//! Backoff, the one way: [`retry_delay`] for failed steps (exponential in the
//! attempt number, capped, with jitter so that steps failing together do not
//! retry together), and [`Doubling`], the delay of a loop that retries
//! something unavailable (reconnects, the outbox relay, long-poll listeners,
//! waiting for the database at start).

use std::time::Duration;

use super::policy::WorkerPolicy;

/// The backoff parameters of `worker_policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl From<&WorkerPolicy> for Backoff {
    fn from(p: &WorkerPolicy) -> Self {
        Self {
            base: Duration::from_secs(p.backoff_base_seconds.into()),
            max: Duration::from_secs(p.backoff_max_seconds.into()),
        }
    }
}

/// Delay before attempt `attempt + 1`, after `attempt` (≥ 1) failed attempts:
/// `min(max, base · 2^(attempt-1))`, of which the upper half is jittered by
/// `jitter` ∈ [0, 1) ("equal jitter"): never less than half the exponential
/// delay, never more than it.
pub fn retry_delay(backoff: Backoff, attempt: u32, jitter: f64) -> Duration {
    let exponent = attempt.saturating_sub(1).min(32);
    let exponential = backoff
        .base
        .checked_mul(1u32 << exponent.min(31))
        .unwrap_or(backoff.max)
        .min(backoff.max);
    let half = exponential / 2;
    let jitter = if jitter.is_finite() {
        jitter.clamp(0.0, 1.0)
    } else {
        0.0
    };
    half + half.mul_f64(jitter)
}

/// A delay that doubles after each failed try up to a cap, and starts over
/// after a success.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Doubling {
    start: Duration,
    max: Duration,
    current: Duration,
}

impl Doubling {
    /// Starts at `start` (at least 1 ms) and never exceeds `max` (at least `start`).
    pub fn new(start: Duration, max: Duration) -> Self {
        let start = start.max(Duration::from_millis(1));
        Self {
            start,
            max: max.max(start),
            current: start,
        }
    }

    /// The delay to wait now; the next one is twice as long (capped).
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.current;
        self.current = self.current.saturating_mul(2).min(self.max);
        delay
    }

    /// [`Doubling::next_delay`] plus up to half of it again as jitter
    /// (`jitter` in [0, 1]), capped, so that peers recovering together do
    /// not retry in lockstep.
    pub fn next_jittered(&mut self, jitter: f64) -> Duration {
        let delay = self.next_delay();
        let jitter = if jitter.is_finite() {
            jitter.clamp(0.0, 1.0)
        } else {
            0.0
        };
        (delay + delay.mul_f64(jitter * 0.5)).min(self.max)
    }

    /// The delay [`Doubling::next_delay`] will return.
    pub fn peek(&self) -> Duration {
        self.current
    }

    /// Back to the start, after a success.
    pub fn reset(&mut self) {
        self.current = self.start;
    }
}

/// A jitter value from the thread's random generator.
pub fn random_jitter() -> f64 {
    rand::random::<f64>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubling_doubles_to_its_cap_and_starts_over() {
        let mut d = Doubling::new(Duration::from_millis(100), Duration::from_millis(500));
        let delays: Vec<u128> = (0..5).map(|_| d.next_delay().as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 500, 500]);
        d.reset();
        assert_eq!(d.peek(), Duration::from_millis(100));
        let mut jittered = Doubling::new(Duration::from_millis(100), Duration::from_millis(250));
        assert_eq!(jittered.next_jittered(1.0), Duration::from_millis(150));
        assert_eq!(jittered.next_jittered(1.0), Duration::from_millis(250));
        assert_eq!(jittered.next_jittered(f64::NAN), Duration::from_millis(250));
        let mut odd = Doubling::new(Duration::ZERO, Duration::ZERO);
        assert_eq!(odd.next_delay(), Duration::from_millis(1));
    }

    #[test]
    fn exponential_capped_and_jittered() {
        let b = Backoff {
            base: Duration::from_secs(5),
            max: Duration::from_secs(60),
        };
        let table = [
            (1, 0.0, 2_500),
            (1, 1.0, 5_000),
            (2, 0.0, 5_000),
            (3, 0.5, 15_000),
            (4, 1.0, 40_000),
            (5, 1.0, 60_000),
            (40, 0.0, 30_000),
            (0, 0.0, 2_500),
        ];
        for (attempt, jitter, ms) in table {
            assert_eq!(
                retry_delay(b, attempt, jitter),
                Duration::from_millis(ms),
                "attempt {attempt} jitter {jitter}"
            );
        }
        for _ in 0..100 {
            let d = retry_delay(b, 3, random_jitter());
            assert!(d >= Duration::from_secs(10) && d <= Duration::from_secs(20));
        }
    }
}
