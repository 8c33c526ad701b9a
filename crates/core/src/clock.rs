//! The one time source of the daemons: [`Clock`] (now, sleep for a while,
//! sleep until an instant), [`SystemClock`] for production, and — with the
//! `testing` feature — [`ManualClock`], which every crate's tests move by hand
//! so that cooldowns, leases, schedules and retries are tested without waiting.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

/// Wall-clock time and sleeping, injectable.
#[async_trait]
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> DateTime<Utc>;
    /// Sleeps for `duration`.
    async fn sleep(&self, duration: Duration);
    /// Returns once `now() >= deadline`.
    async fn sleep_until(&self, deadline: DateTime<Utc>);
}

/// A clock shared by the parts of a daemon.
pub type SharedClock = Arc<dyn Clock>;

/// The system clock.
pub struct SystemClock;

impl SystemClock {
    /// The system clock, shared.
    pub fn shared() -> SharedClock {
        Arc::new(Self)
    }
}

#[async_trait]
impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    async fn sleep(&self, duration: Duration) {
        tokio::time::sleep(duration).await;
    }

    /// Sleeps in bounded steps, so a wall-clock jump (NTP, suspend) delays
    /// the wake-up by at most a minute.
    async fn sleep_until(&self, deadline: DateTime<Utc>) {
        const STEP: Duration = Duration::from_secs(60);
        loop {
            let Ok(left) = (deadline - Utc::now()).to_std() else {
                return;
            };
            if left.is_zero() {
                return;
            }
            tokio::time::sleep(left.min(STEP)).await;
        }
    }
}

#[cfg(any(test, feature = "testing"))]
pub use manual::ManualClock;

#[cfg(any(test, feature = "testing"))]
mod manual {
    use std::sync::Mutex;
    use std::time::Duration;

    use async_trait::async_trait;
    use chrono::{DateTime, Utc};
    use tokio::sync::watch;

    use super::Clock;

    /// A clock tests move by hand.
    ///
    /// - [`Clock::sleep`] moves it forward at once by the duration and records
    ///   the duration ([`ManualClock::slept`]): a retry loop runs through its
    ///   backoff without waiting, and the test reads the delays it chose.
    /// - [`Clock::sleep_until`] waits until the test moves the clock to the
    ///   deadline ([`ManualClock::set`], [`ManualClock::advance`]);
    ///   [`ManualClock::sleeping_until`] tells the test what a sleeper waits for.
    pub struct ManualClock {
        now: watch::Sender<DateTime<Utc>>,
        sleeper: watch::Sender<Option<DateTime<Utc>>>,
        slept: Mutex<Vec<Duration>>,
    }

    impl ManualClock {
        pub fn new(start: DateTime<Utc>) -> Self {
            Self {
                now: watch::Sender::new(start),
                sleeper: watch::Sender::new(None),
                slept: Mutex::new(Vec::new()),
            }
        }

        /// Moves the clock to `t`, waking sleepers whose deadline passed.
        pub fn set(&self, t: DateTime<Utc>) {
            self.now.send_replace(t);
        }

        /// Moves the clock forward by `by`.
        pub fn advance(&self, by: Duration) {
            let by = chrono::Duration::from_std(by).unwrap_or(chrono::Duration::MAX);
            self.now.send_modify(|now| {
                *now = now
                    .checked_add_signed(by)
                    .unwrap_or(DateTime::<Utc>::MAX_UTC);
            });
        }

        /// Every [`Clock::sleep`] so far.
        pub fn slept(&self) -> Vec<Duration> {
            self.slept.lock().unwrap_or_else(|p| p.into_inner()).clone()
        }

        /// Waits until someone sleeps on this clock for a deadline still
        /// ahead of it, and returns that deadline.
        pub async fn sleeping_until(&self) -> DateTime<Utc> {
            let mut rx = self.sleeper.subscribe();
            loop {
                let sleeping = *rx.borrow_and_update();
                if let Some(deadline) = sleeping
                    && deadline > self.now()
                {
                    return deadline;
                }
                if rx.changed().await.is_err() {
                    return DateTime::<Utc>::MAX_UTC;
                }
            }
        }
    }

    #[async_trait]
    impl Clock for ManualClock {
        fn now(&self) -> DateTime<Utc> {
            *self.now.borrow()
        }

        async fn sleep(&self, duration: Duration) {
            self.slept
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(duration);
            self.advance(duration);
            tokio::task::yield_now().await;
        }

        async fn sleep_until(&self, deadline: DateTime<Utc>) {
            /// Clears the sleeper however the sleep ends, cancellation included.
            struct Awake<'a>(&'a watch::Sender<Option<DateTime<Utc>>>);
            impl Drop for Awake<'_> {
                fn drop(&mut self) {
                    self.0.send_replace(None);
                }
            }
            let mut rx = self.now.subscribe();
            self.sleeper.send_replace(Some(deadline));
            let _awake = Awake(&self.sleeper);
            loop {
                if *rx.borrow_and_update() >= deadline {
                    break;
                }
                if rx.changed().await.is_err() {
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use chrono::TimeZone;

    use super::*;

    fn start() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 8, 3, 0, 0)
            .single()
            .expect("valid")
    }

    #[tokio::test]
    async fn a_sleep_moves_the_manual_clock_and_is_recorded() {
        let clock = ManualClock::new(start());
        clock.sleep(Duration::from_secs(5)).await;
        clock.sleep(Duration::from_secs(7)).await;
        assert_eq!(clock.now(), start() + chrono::Duration::seconds(12));
        assert_eq!(
            clock.slept(),
            [Duration::from_secs(5), Duration::from_secs(7)]
        );
    }

    #[tokio::test]
    async fn sleep_until_waits_for_the_test_to_move_the_clock() {
        let clock = Arc::new(ManualClock::new(start()));
        let deadline = start() + chrono::Duration::minutes(30);
        let sleeper = tokio::spawn({
            let clock = clock.clone();
            async move { clock.sleep_until(deadline).await }
        });
        assert_eq!(clock.sleeping_until().await, deadline);
        clock.advance(Duration::from_secs(29 * 60));
        assert!(!sleeper.is_finished());
        clock.set(deadline);
        sleeper.await.expect("sleeper wakes");
    }

    #[tokio::test]
    async fn the_system_clock_returns_at_once_for_a_past_deadline() {
        SystemClock
            .sleep_until(Utc::now() - chrono::Duration::seconds(1))
            .await;
    }
}
