//! GFS retention with restic's semantics (`keep_last`, `keep_daily`,
//! `keep_weekly`, `keep_monthly`, `keep_within`), plus the guarantees an
//! operator relies on: the newest verified backup and the last remaining one
//! are never removed, and nothing is pruned while the newest backup failed.
//! Pure: [`plan`] judges plain data and returns what to keep and remove, each
//! with its reasons; the caller deletes.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Datelike, Months, TimeZone, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// How many backups each rule keeps. Zero disables a rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionPolicy {
    /// The newest N backups.
    pub keep_last: u32,
    /// The newest backup of each of the last N days that have one.
    pub keep_daily: u32,
    /// The newest backup of each of the last N ISO weeks that have one.
    pub keep_weekly: u32,
    /// The newest backup of each of the last N months that have one.
    pub keep_monthly: u32,
    /// Every backup started within this span of the newest one (`7d`,
    /// `1y2m`, `36h`).
    pub keep_within: Option<Within>,
}

impl Default for RetentionPolicy {
    fn default() -> Self {
        Self {
            keep_last: 0,
            keep_daily: 7,
            keep_weekly: 4,
            keep_monthly: 12,
            keep_within: None,
        }
    }
}

/// A calendar span as restic writes it: years, months, days and hours, e.g.
/// `1y6m`, `7d`, `2d12h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Within {
    pub years: u32,
    pub months: u32,
    pub days: u32,
    pub hours: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: {reason} (write it like 7d, 1y6m or 36h)")]
pub struct WithinParseError {
    input: String,
    reason: &'static str,
}

impl FromStr for Within {
    type Err = WithinParseError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let error = |reason| WithinParseError {
            input: input.to_owned(),
            reason,
        };
        let mut within = Within::default();
        let mut digits = String::new();
        for c in input.trim().chars() {
            if c.is_ascii_digit() {
                digits.push(c);
                continue;
            }
            if digits.is_empty() {
                return Err(error("a unit must follow a number"));
            }
            let n: u32 = digits.parse().map_err(|_| error("number too large"))?;
            digits.clear();
            let slot = match c {
                'y' => &mut within.years,
                'm' => &mut within.months,
                'd' => &mut within.days,
                'h' => &mut within.hours,
                _ => return Err(error("units are y, m, d and h")),
            };
            *slot = slot.saturating_add(n);
        }
        if !digits.is_empty() {
            return Err(error("a number needs a unit"));
        }
        if within == Within::default() {
            return Err(error("must be longer than zero"));
        }
        Ok(within)
    }
}

impl fmt::Display for Within {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, unit) in [
            (self.years, 'y'),
            (self.months, 'm'),
            (self.days, 'd'),
            (self.hours, 'h'),
        ] {
            if n > 0 {
                write!(f, "{n}{unit}")?;
            }
        }
        Ok(())
    }
}

impl Serialize for Within {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Within {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl Within {
    /// `instant` minus this span, in calendar arithmetic (restic's `AddDate`
    /// then hours). Saturates at the earliest representable instant.
    fn before(&self, instant: DateTime<Utc>) -> DateTime<Utc> {
        let months = self.years.saturating_mul(12).saturating_add(self.months);
        instant
            .checked_sub_months(Months::new(months))
            .and_then(|t| t.checked_sub_days(chrono::Days::new(u64::from(self.days))))
            .and_then(|t| t.checked_sub_signed(chrono::TimeDelta::hours(i64::from(self.hours))))
            .unwrap_or(DateTime::<Utc>::MIN_UTC)
    }
}

/// Where a backup stands, as far as retention cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackupState {
    /// Being taken: never touched.
    Running,
    /// Taken and stored; `verified` when its last verification passed.
    Completed { verified: bool },
    /// Taking it failed: its leftovers are swept.
    Failed,
}

/// One backup judged by [`plan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub id: Uuid,
    /// The recorded start; buckets are computed from it, never from names.
    pub started_at: DateTime<Utc>,
    pub state: BackupState,
}

/// A backup and every reason it is kept or removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub id: Uuid,
    pub started_at: DateTime<Utc>,
    pub reasons: Vec<String>,
}

/// What retention keeps and removes, both newest first.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RetentionPlan {
    pub keep: Vec<Decision>,
    pub remove: Vec<Decision>,
    /// Set when pruning is refused; then `remove` is empty.
    pub refused: Option<String>,
}

/// Reason of a backup no rule selected.
pub const NOT_SELECTED: &str = "not selected by any rule";

/// Judges `backups` (one target's) against `policy`, with calendar buckets in
/// `tz`. `now` bounds the newest instant `keep_within` counts from (a backup
/// stamped in the future does not shift the window), as restic does.
pub fn plan(
    backups: &[Candidate],
    policy: &RetentionPolicy,
    tz: Tz,
    now: DateTime<Utc>,
) -> RetentionPlan {
    let mut sorted: Vec<&Candidate> = backups.iter().collect();
    // Newest first; ties broken by id so the outcome never depends on input order.
    sorted.sort_by(|a, b| b.started_at.cmp(&a.started_at).then(b.id.cmp(&a.id)));

    let completed: Vec<&Candidate> = sorted
        .iter()
        .copied()
        .filter(|c| matches!(c.state, BackupState::Completed { .. }))
        .collect();
    let latest = completed
        .iter()
        .map(|c| c.started_at)
        .filter(|t| *t <= now)
        .max();
    let window_start = policy.keep_within.zip(latest).map(|(w, l)| w.before(l));

    // restic's buckets: each remembers the last value it kept and how many
    // keeps it has left.
    struct Bucket {
        name: &'static str,
        left: u32,
        total: u32,
        last: Option<String>,
    }
    let mut buckets = [
        ("last", policy.keep_last),
        ("daily", policy.keep_daily),
        ("weekly", policy.keep_weekly),
        ("monthly", policy.keep_monthly),
    ]
    .map(|(name, n)| Bucket {
        name,
        left: n,
        total: n,
        last: None,
    });

    let mut kept: Vec<(Uuid, Vec<String>)> = Vec::new();
    let mut removed: Vec<(Uuid, Vec<String>)> = Vec::new();
    for (nr, backup) in completed.iter().enumerate() {
        let local = tz.from_utc_datetime(&backup.started_at.naive_utc());
        let oldest = nr + 1 == completed.len();
        let mut reasons = Vec::new();
        if let (Some(start), Some(within)) = (window_start, policy.keep_within)
            && backup.started_at > start
        {
            reasons.push(format!("within {within}"));
        }
        for bucket in &mut buckets {
            if bucket.left == 0 {
                continue;
            }
            let value = match bucket.name {
                "last" => format!("{}/{}", bucket.total - bucket.left + 1, bucket.total),
                "daily" => local.format("%Y-%m-%d").to_string(),
                "weekly" => {
                    let week = local.iso_week();
                    format!("{}-W{:02}", week.year(), week.week())
                }
                _ => local.format("%Y-%m").to_string(),
            };
            let new_bucket = bucket.last.as_deref() != Some(value.as_str());
            // restic also keeps the oldest backup while a rule has keeps
            // left, so a short history is kept as long as possible.
            if new_bucket || oldest {
                let prefix = if new_bucket { "" } else { "oldest " };
                reasons.push(format!("{prefix}{} {value}", bucket.name));
                bucket.last = Some(value);
                bucket.left -= 1;
            }
        }
        if reasons.is_empty() {
            removed.push((backup.id, vec![NOT_SELECTED.to_owned()]));
        } else {
            kept.push((backup.id, reasons));
        }
    }

    // Never remove the newest verified backup.
    if let Some(newest_verified) = completed
        .iter()
        .find(|c| c.state == BackupState::Completed { verified: true })
    {
        rescue(
            &mut kept,
            &mut removed,
            newest_verified.id,
            "newest verified",
        );
    }
    // Never remove the last remaining backup.
    if kept.is_empty()
        && let Some(newest) = completed.first()
    {
        rescue(&mut kept, &mut removed, newest.id, "last remaining");
    }

    for backup in &sorted {
        match backup.state {
            BackupState::Running => kept.push((backup.id, vec!["running".to_owned()])),
            BackupState::Failed => removed.push((backup.id, vec!["failed".to_owned()])),
            BackupState::Completed { .. } => {}
        }
    }

    let refused = sorted
        .iter()
        .find(|c| c.state != BackupState::Running)
        .filter(|c| c.state == BackupState::Failed)
        .map(|c| format!("the newest backup ({}) failed; fix it before pruning", c.id));
    if refused.is_some() {
        for (id, mut reasons) in removed.drain(..) {
            reasons.push("pruning refused".to_owned());
            kept.push((id, reasons));
        }
    }

    let started = |id: Uuid| {
        sorted
            .iter()
            .find(|c| c.id == id)
            .map(|c| c.started_at)
            .unwrap_or(DateTime::<Utc>::MIN_UTC)
    };
    let finish = |list: Vec<(Uuid, Vec<String>)>| {
        let mut decisions: Vec<Decision> = list
            .into_iter()
            .map(|(id, reasons)| Decision {
                id,
                started_at: started(id),
                reasons,
            })
            .collect();
        decisions.sort_by(|a, b| b.started_at.cmp(&a.started_at).then(b.id.cmp(&a.id)));
        decisions
    };
    RetentionPlan {
        keep: finish(kept),
        remove: finish(removed),
        refused,
    }
}

/// Moves `id` from `removed` to `kept` (or adds `reason` where it is kept).
fn rescue(
    kept: &mut Vec<(Uuid, Vec<String>)>,
    removed: &mut Vec<(Uuid, Vec<String>)>,
    id: Uuid,
    reason: &str,
) {
    if let Some((_, reasons)) = kept.iter_mut().find(|(k, _)| *k == id) {
        reasons.push(reason.to_owned());
    } else if let Some(at) = removed.iter().position(|(r, _)| *r == id) {
        removed.remove(at);
        kept.push((id, vec![reason.to_owned()]));
    }
}

#[cfg(test)]
#[path = "retention_tests.rs"]
mod tests;
