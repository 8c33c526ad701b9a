//! When backups run: a cron expression in a time zone, core's injectable
//! [`Clock`], and [`run_schedule`], the loop that catches up a missed run
//! once at start and then waits for each next occurrence.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

pub use opsloop_core::schedule::{CronSchedule as Schedule, ScheduleError};

pub use opsloop_core::clock::{Clock, SystemClock};

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
    use std::sync::{Arc, Mutex};

    use opsloop_core::clock::ManualClock;

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
        let clock = Arc::new(ManualClock::new(start));
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
        let clock = Arc::new(ManualClock::new(at("2026-11-23T10:00:00Z")));
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
