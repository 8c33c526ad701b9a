//! When the heartbeat ticks (a fixed interval or a cron expression); cron
//! schedules themselves (the daily summary at 06:00 UTC by default, the weekly
//! report) are `opsloop_core::schedule`.

use chrono::{DateTime, Duration, Utc};

pub use opsloop_core::schedule::{CronSchedule, ScheduleError};

/// The tick cadence.
#[derive(Debug, Clone)]
pub enum TickSchedule {
    Every(Duration),
    Cron(Box<CronSchedule>),
}

impl TickSchedule {
    /// The next tick strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> DateTime<Utc> {
        match self {
            Self::Every(interval) => t + *interval,
            Self::Cron(cron) => cron.next_after(t).unwrap_or(t + Duration::hours(1)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, 0)
            .single()
            .expect("valid")
    }

    #[test]
    fn tick_cadence() {
        let t = utc(2026, 11, 23, 10, 0);
        assert_eq!(
            TickSchedule::Every(Duration::seconds(300)).next_after(t),
            utc(2026, 11, 23, 10, 5)
        );
        let cron = CronSchedule::parse("*/10 * * * *", "UTC").expect("parses");
        assert_eq!(
            TickSchedule::Cron(Box::new(cron)).next_after(t),
            utc(2026, 11, 23, 10, 10)
        );
    }
}
