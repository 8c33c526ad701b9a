//! Cron expressions bound to a time zone: when the heartbeat's reports and
//! the backup-agent's runs are due. Pure functions of an injected `now`.

use chrono::{DateTime, Duration, Utc};
use chrono_tz::Tz;

/// A cron expression or time zone that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("invalid schedule {expression:?}: {reason}")]
pub struct ScheduleError {
    pub expression: String,
    pub reason: String,
}

/// A cron expression bound to a time zone.
#[derive(Debug, Clone)]
pub struct CronSchedule {
    cron: croner::Cron,
    tz: Tz,
    expression: String,
}

impl CronSchedule {
    /// Parses `expression` (five or six fields) in the zone named
    /// `timezone` (an IANA name such as `Asia/Tokyo`).
    pub fn parse(expression: &str, timezone: &str) -> Result<Self, ScheduleError> {
        let tz: Tz = timezone.parse().map_err(|_| ScheduleError {
            expression: expression.to_owned(),
            reason: format!("unknown time zone {timezone:?}"),
        })?;
        Self::parse_in(expression, tz)
    }

    /// Parses `expression` in the zone `tz`.
    pub fn parse_in(expression: &str, tz: Tz) -> Result<Self, ScheduleError> {
        let cron: croner::Cron =
            expression
                .parse()
                .map_err(|e: croner::errors::CronError| ScheduleError {
                    expression: expression.to_owned(),
                    reason: e.to_string(),
                })?;
        Ok(Self {
            cron,
            tz,
            expression: expression.to_owned(),
        })
    }

    pub fn expression(&self) -> &str {
        &self.expression
    }

    /// The first occurrence strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_next_occurrence(&t.with_timezone(&self.tz), false)
            .ok()
            .map(|next| next.with_timezone(&Utc))
    }

    /// The latest occurrence at or before `now`.
    pub fn latest_at_or_before(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_previous_occurrence(&now.with_timezone(&self.tz), true)
            .ok()
            .map(|prev| prev.with_timezone(&Utc))
    }

    /// The occurrence that is due at `now`, if it is later than the last one
    /// handled and not older than `catch_up` (a long outage sends the latest
    /// report once, not a backlog).
    pub fn due(
        &self,
        last_handled: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
        catch_up: Duration,
    ) -> Option<DateTime<Utc>> {
        let latest = self.latest_at_or_before(now)?;
        if now - latest > catch_up {
            return None;
        }
        match last_handled {
            Some(last) if last >= latest => None,
            _ => Some(latest),
        }
    }

    /// True when an occurrence fell between the last run's start and `now`
    /// (or nothing ran yet): a run was missed.
    pub fn missed(&self, last_started: Option<DateTime<Utc>>, now: DateTime<Utc>) -> bool {
        match last_started {
            None => true,
            Some(last) => self.next_after(last).is_some_and(|next| next <= now),
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
    fn daily_summary_is_six_in_the_morning_in_tokyo() {
        let s = CronSchedule::parse("0 6 * * *", "Asia/Tokyo").expect("parses");
        // 06:00 JST = 21:00 UTC the day before.
        let table = [
            (
                utc(2026, 11, 22, 20, 59),
                None,
                Some(utc(2026, 11, 21, 21, 0)),
            ),
            (
                utc(2026, 11, 22, 21, 0),
                None,
                Some(utc(2026, 11, 22, 21, 0)),
            ),
            (
                utc(2026, 11, 22, 21, 5),
                Some(utc(2026, 11, 22, 21, 0)),
                None,
            ),
            (
                utc(2026, 11, 23, 21, 0),
                Some(utc(2026, 11, 22, 21, 0)),
                Some(utc(2026, 11, 23, 21, 0)),
            ),
        ];
        for (now, last, expected) in table {
            assert_eq!(s.due(last, now, Duration::hours(25)), expected, "now {now}");
        }
        // Too old to catch up.
        assert_eq!(
            s.due(None, utc(2026, 11, 22, 20, 59), Duration::hours(1)),
            None
        );
        assert_eq!(
            s.next_after(utc(2026, 11, 22, 21, 0)),
            Some(utc(2026, 11, 23, 21, 0))
        );
    }

    #[test]
    fn bad_expressions_are_rejected() {
        assert!(CronSchedule::parse("not cron", "UTC").is_err());
        assert!(CronSchedule::parse("0 6 * * *", "Mars/Base").is_err());
    }
}
