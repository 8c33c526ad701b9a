//! When backups run: a cron expression in a time zone, an injectable
//! [`Clock`], and [`run_schedule`], the loop that catches up a missed run
//! once at start and then waits for each next occurrence.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use opsloop_core::schedule::{CronSchedule as Schedule, ScheduleError};

/// Wall-clock time, injectable so schedules are tested without waiting.
#[async_trait]
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> DateTime<Utc>;
    /// Returns once `now() >= deadline`.
    async fn sleep_until(&self, deadline: DateTime<Utc>);
}

/// The system clock. Sleeps in bounded steps so a wall-clock jump (NTP,
/// suspend) delays a run by at most a minute.
pub struct SystemClock;

#[async_trait]
impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    async fn sleep_until(&self, deadline: DateTime<Utc>) {
        const STEP: std::time::Duration = std::time::Duration::from_secs(60);
        loop {
            let left = deadline - Utc::now();
            let Ok(left) = left.to_std() else { return };
            if left.is_zero() {
                return;
            }
            tokio::time::sleep(left.min(STEP)).await;
        }
    }
}

/// A clock tests move by hand. [`ManualClock::sleeping_until`] tells a test
/// what a sleeper waits for, so it can assert the next run without waiting.
pub struct ManualClock {
    now: watch::Sender<DateTime<Utc>>,
    sleeper: watch::Sender<Option<DateTime<Utc>>>,
}

impl ManualClock {
    pub fn new(start: DateTime<Utc>) -> Arc<Self> {
        Arc::new(Self {
            now: watch::Sender::new(start),
            sleeper: watch::Sender::new(None),
        })
    }

    /// Moves the clock to `t`, waking sleepers whose deadline passed.
    pub fn set(&self, t: DateTime<Utc>) {
        self.now.send_replace(t);
    }

    /// Waits until someone sleeps on this clock for a deadline still ahead
    /// of it, and returns that deadline.
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

/// A job the schedule runs.
#[async_trait]
pub trait ScheduledJob: Send + Sync {
    /// When the job last started (any outcome), to detect a missed run.
    async fn last_started(&self) -> Option<DateTime<Utc>>;
    /// Runs the job for the occurrence `due`. Failures are the job's to
    /// report; the schedule goes on.
    async fn run(&self, due: DateTime<Utc>);
}

/// Runs `job` on `schedule` until `shutdown`: first, when `catch_up` and a
/// run was missed (however many occurrences passed), once right away; then
/// at each next occurrence.
pub async fn run_schedule(
    schedule: &Schedule,
    clock: &dyn Clock,
    job: &dyn ScheduledJob,
    catch_up: bool,
    shutdown: CancellationToken,
) {
    let now = clock.now();
    if catch_up && schedule.missed(job.last_started().await, now) {
        tracing::info!(due = %now, "catching up a missed scheduled backup");
        job.run(now).await;
    }
    loop {
        let Some(next) = schedule.next_after(clock.now()) else {
            tracing::warn!(
                schedule = schedule.expression(),
                "schedule has no next occurrence"
            );
            return;
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = clock.sleep_until(next) => {}
        }
        if shutdown.is_cancelled() {
            return;
        }
        job.run(next).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .expect("valid instant")
            .with_timezone(&Utc)
    }

    #[test]
    fn next_occurrence_is_in_the_schedule_time_zone() {
        let tokyo = Schedule::parse_in("0 2 * * *", chrono_tz::Asia::Tokyo).expect("valid");
        let table = [
            // 02:00 JST is 17:00 UTC the day before.
            ("2026-11-23T10:00:00Z", "2026-11-23T17:00:00Z"),
            ("2026-11-23T17:00:00Z", "2026-11-24T17:00:00Z"),
            ("2026-11-23T16:59:59Z", "2026-11-23T17:00:00Z"),
        ];
        for (from, expected) in table {
            assert_eq!(
                tokyo.next_after(at(from)),
                Some(at(expected)),
                "after {from}"
            );
        }
        assert!(Schedule::parse_in("not cron", chrono_tz::UTC).is_err());
    }

    #[test]
    fn missed_runs() {
        let s = Schedule::parse_in("0 2 * * *", chrono_tz::Asia::Tokyo).expect("valid");
        let now = at("2026-11-23T10:00:00Z"); // 19:00 JST
        let table = [
            (None, true),
            (Some("2026-11-22T17:00:05Z"), false), // today's 02:00 JST run happened
            (Some("2026-11-22T16:00:00Z"), true),  // before today's 02:00 JST
            (Some("2026-11-20T17:00:00Z"), true),  // several missed
        ];
        for (last, expected) in table {
            assert_eq!(s.missed(last.map(at), now), expected, "{last:?}");
        }
    }

    struct CountingJob {
        last: Option<DateTime<Utc>>,
        runs: Mutex<Vec<DateTime<Utc>>>,
        ran: tokio::sync::mpsc::UnboundedSender<DateTime<Utc>>,
    }

    #[async_trait]
    impl ScheduledJob for CountingJob {
        async fn last_started(&self) -> Option<DateTime<Utc>> {
            self.last
        }
        async fn run(&self, due: DateTime<Utc>) {
            self.runs.lock().expect("lock").push(due);
            let _ = self.ran.send(due);
        }
    }

    #[tokio::test]
    async fn a_missed_run_is_caught_up_once_then_the_schedule_continues() {
        let schedule = Schedule::parse_in("0 2 * * *", chrono_tz::Asia::Tokyo).expect("valid");
        // The agent was down for three scheduled runs.
        let start = at("2026-11-23T10:00:00Z");
        let clock = ManualClock::new(start);
        let (ran, mut runs) = tokio::sync::mpsc::unbounded_channel();
        let job = Arc::new(CountingJob {
            last: Some(at("2026-11-19T17:00:00Z")),
            runs: Mutex::new(Vec::new()),
            ran,
        });
        let shutdown = CancellationToken::new();
        let task = {
            let (clock, job, shutdown) = (clock.clone(), job.clone(), shutdown.clone());
            tokio::spawn(async move {
                run_schedule(&schedule, clock.as_ref(), job.as_ref(), true, shutdown).await
            })
        };
        assert_eq!(runs.recv().await, Some(start), "caught up at start");
        // Next it sleeps until the next 02:00 JST: no second catch-up run.
        let next = clock.sleeping_until().await;
        assert_eq!(next, at("2026-11-23T17:00:00Z"));
        assert_eq!(job.runs.lock().expect("lock").len(), 1, "caught up once");

        clock.set(next);
        assert_eq!(runs.recv().await, Some(next), "scheduled run");
        assert_eq!(clock.sleeping_until().await, at("2026-11-24T17:00:00Z"));
        shutdown.cancel();
        task.await.expect("schedule loop stops");
        assert_eq!(job.runs.lock().expect("lock").len(), 2);
    }

    #[tokio::test]
    async fn no_catch_up_when_the_last_run_is_current() {
        let schedule = Schedule::parse_in("0 2 * * *", chrono_tz::Asia::Tokyo).expect("valid");
        let clock = ManualClock::new(at("2026-11-23T10:00:00Z"));
        let (ran, _runs) = tokio::sync::mpsc::unbounded_channel();
        let job = Arc::new(CountingJob {
            last: Some(at("2026-11-22T17:00:03Z")),
            runs: Mutex::new(Vec::new()),
            ran,
        });
        let shutdown = CancellationToken::new();
        let task = {
            let (clock, job, shutdown) = (clock.clone(), job.clone(), shutdown.clone());
            tokio::spawn(async move {
                run_schedule(&schedule, clock.as_ref(), job.as_ref(), true, shutdown).await
            })
        };
        assert_eq!(clock.sleeping_until().await, at("2026-11-23T17:00:00Z"));
        assert!(job.runs.lock().expect("lock").is_empty());
        shutdown.cancel();
        task.await.expect("schedule loop stops");
    }
}
