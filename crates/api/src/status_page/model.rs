//! The status page as plain data: components with their state and one
//! bar per day, uptime ratios, incidents with their public updates and the
//! maintenance windows — built from rows, rendered by [`super::render`].
//! No I/O here.

use chrono::{DateTime, Duration, NaiveDate, Utc};
use serde::Serialize;
use uuid::Uuid;

/// Days of uptime bars per component.
pub const DAYS: usize = 90;

/// A component's state now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ComponentState {
    Operational,
    Down,
    Maintenance,
    /// Never checked yet (or not reachable from the api).
    Unknown,
}

impl ComponentState {
    pub fn as_str(self) -> &'static str {
        match self {
            ComponentState::Operational => "operational",
            ComponentState::Down => "down",
            ComponentState::Maintenance => "maintenance",
            ComponentState::Unknown => "unknown",
        }
    }

    /// What people read.
    pub fn label(self) -> &'static str {
        match self {
            ComponentState::Operational => "Operational",
            ComponentState::Down => "Down",
            ComponentState::Maintenance => "Maintenance",
            ComponentState::Unknown => "No data",
        }
    }
}

/// Which heading a component is listed under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Group {
    /// The daemons, the database and the bus.
    Opsloop,
    /// The uptime probes.
    Probes,
}

/// One day's checks of a component.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DayBar {
    pub day: NaiveDate,
    pub checks: i64,
    pub up_checks: i64,
}

impl DayBar {
    /// The share of checks that passed; `None` without checks.
    pub fn ratio(&self) -> Option<f64> {
        (self.checks > 0).then(|| self.up_checks as f64 / self.checks as f64)
    }

    /// `2026-12-07: 99.93 % up (1439 of 1440 checks)` or `… no data`.
    pub fn describe(&self) -> String {
        match self.ratio() {
            Some(ratio) => format!(
                "{}: {} up ({} of {} checks)",
                self.day,
                percent(ratio),
                self.up_checks,
                self.checks
            ),
            None => format!("{}: no data", self.day),
        }
    }
}

/// `99.93 %`: two decimals, never rounded up to 100 unless it is.
pub fn percent(ratio: f64) -> String {
    let hundredths = (ratio * 10_000.0).floor() / 100.0;
    format!("{hundredths:.2} %")
}

/// The uptime ratios of a component: the last 24 hours, and the last 7, 30
/// and 90 UTC days including today.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Uptime {
    #[serde(rename = "1d")]
    pub d1: Option<f64>,
    #[serde(rename = "7d")]
    pub d7: Option<f64>,
    #[serde(rename = "30d")]
    pub d30: Option<f64>,
    #[serde(rename = "90d")]
    pub d90: Option<f64>,
}

impl Uptime {
    /// Windows and their ratios, for the gauge's `window` label.
    pub fn windows(&self) -> [(&'static str, Option<f64>); 4] {
        [
            ("1d", self.d1),
            ("7d", self.d7),
            ("30d", self.d30),
            ("90d", self.d90),
        ]
    }
}

/// The [`DAYS`] bars ending with `today`, oldest first; days without rows
/// have no checks.
pub fn bars(today: NaiveDate, rows: &[(NaiveDate, i64, i64)]) -> Vec<DayBar> {
    (0..DAYS)
        .rev()
        .map(|back| {
            let day = today - Duration::days(back as i64);
            let (checks, up_checks) = rows
                .iter()
                .filter(|(d, _, _)| *d == day)
                .fold((0, 0), |(c, u), (_, checks, up)| (c + checks, u + up));
            DayBar {
                day,
                checks,
                up_checks,
            }
        })
        .collect()
}

/// The ratios of `days` (oldest first, today last) and of the last 24
/// hours' `(checks, up_checks)`.
pub fn uptime(days: &[DayBar], last_24h: (i64, i64)) -> Uptime {
    let window = |n: usize| {
        let (checks, up) = days
            .iter()
            .rev()
            .take(n)
            .fold((0, 0), |(c, u), d| (c + d.checks, u + d.up_checks));
        (checks > 0).then(|| up as f64 / checks as f64)
    };
    Uptime {
        d1: (last_24h.0 > 0).then(|| last_24h.1 as f64 / last_24h.0 as f64),
        d7: window(7),
        d30: window(30),
        d90: window(90),
    }
}

/// A component of the page.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Component {
    /// Stable id: `api`, `heartbeat-worker`, `alerter`, `backup-agent`,
    /// `database`, `bus`, or `probe-<name>`.
    pub id: String,
    pub name: String,
    pub group: Group,
    pub state: ComponentState,
    /// Why it is not operational, when known.
    pub detail: Option<String>,
    /// Since when it is in its state, when known.
    pub since: Option<DateTime<Utc>>,
    pub uptime: Uptime,
    /// [`DAYS`] bars, oldest first.
    pub days: Vec<DayBar>,
}

/// The headline over every component.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Overall {
    AllOperational,
    Maintenance,
    Outage,
}

impl Overall {
    pub fn of(components: &[Component]) -> Overall {
        if components.iter().any(|c| c.state == ComponentState::Down) {
            Overall::Outage
        } else if components
            .iter()
            .any(|c| c.state == ComponentState::Maintenance)
        {
            Overall::Maintenance
        } else {
            Overall::AllOperational
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Overall::AllOperational => "All systems operational",
            Overall::Maintenance => "Maintenance in progress",
            Overall::Outage => "Some systems are down",
        }
    }
}

/// One public update of an incident.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IncidentUpdate {
    pub at: DateTime<Utc>,
    pub kind: String,
    pub text: String,
}

/// The public text of an `incident_log` entry; `None` for internal ones
/// (pages, escalation steps, alerts joining), which stay off the page.
pub fn public_update(kind: &str, detail: &serde_json::Value) -> Option<String> {
    let reason = detail
        .get("reason")
        .and_then(|r| r.as_str())
        .filter(|r| !r.is_empty());
    let with_reason = |text: &str| match reason {
        Some(reason) => format!("{text}: {reason}"),
        None => text.to_owned(),
    };
    match kind {
        "opened" => Some("Incident opened; we are looking into it".to_owned()),
        "acknowledged" => Some(with_reason("Acknowledged; the team is working on it")),
        "resolved" => Some(with_reason("Resolved")),
        "reopened" => Some(with_reason("Reopened")),
        "alerts_resolved" => Some("Every alert of the incident has cleared".to_owned()),
        "note" => detail
            .get("text")
            .and_then(|t| t.as_str())
            .map(str::to_owned),
        _ => None,
    }
}

/// An incident as the page shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Incident {
    pub id: Uuid,
    pub title: String,
    /// `P0` … `P3`.
    pub level: String,
    /// `triggered`, `acknowledged`, `resolved` or `reopened`.
    pub state: String,
    pub opened_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub resolved_at: Option<DateTime<Utc>>,
    /// Newest first.
    pub updates: Vec<IncidentUpdate>,
}

impl Incident {
    pub fn is_open(&self) -> bool {
        self.state != "resolved"
    }
}

/// A maintenance window from `[[heartbeat.maintenance]]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Maintenance {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub reason: String,
    /// The probes it covers; empty: every probe.
    pub probes: Vec<String>,
}

impl Maintenance {
    pub fn active(&self, now: DateTime<Utc>) -> bool {
        self.start <= now && now < self.end
    }

    pub fn covers(&self, probe: &str) -> bool {
        self.probes.is_empty() || self.probes.iter().any(|p| p == probe)
    }
}

/// Everything the page, the JSON, the feed and the badges show.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Snapshot {
    pub title: String,
    pub generated_at: DateTime<Utc>,
    pub overall: Overall,
    pub components: Vec<Component>,
    /// Open incidents and those resolved in the last
    /// [`RECENT_INCIDENT_DAYS`] days, newest first.
    pub incidents: Vec<Incident>,
    /// Windows not over yet, soonest first.
    pub maintenance: Vec<Maintenance>,
}

/// How far back resolved incidents are listed (page and feed).
pub const RECENT_INCIDENT_DAYS: i64 = 14;

#[cfg(test)]
mod tests {
    use super::*;

    fn day(s: &str) -> NaiveDate {
        s.parse().expect("date")
    }

    #[test]
    fn ninety_bars_oldest_first_with_gaps_empty() {
        let today = day("2026-12-07");
        let rows = [(day("2026-12-07"), 10, 9), (day("2026-12-01"), 4, 4)];
        let bars = bars(today, &rows);
        assert_eq!(bars.len(), DAYS);
        assert_eq!(bars[0].day, day("2026-09-09"));
        assert_eq!(bars[DAYS - 1].ratio(), Some(0.9));
        assert_eq!(bars[DAYS - 7].ratio(), Some(1.0));
        assert_eq!(bars[DAYS - 2].ratio(), None);
        assert_eq!(bars[DAYS - 2].describe(), "2026-12-06: no data");
        assert_eq!(
            bars[DAYS - 1].describe(),
            "2026-12-07: 90.00 % up (9 of 10 checks)"
        );
    }

    #[test]
    fn uptime_windows() {
        let today = day("2026-12-07");
        let rows = [
            (day("2026-12-07"), 100, 100),
            (day("2026-12-01"), 100, 0),
            (day("2026-10-01"), 200, 200),
        ];
        let u = uptime(&bars(today, &rows), (0, 0));
        assert_eq!(u.d1, None);
        assert_eq!(u.d7, Some(0.5));
        assert_eq!(u.d30, Some(0.5));
        assert_eq!(u.d90, Some(0.75));
        assert_eq!(uptime(&[], (4, 3)).d1, Some(0.75));
    }

    #[test]
    fn percent_never_rounds_up_to_full() {
        assert_eq!(percent(0.99999), "99.99 %");
        assert_eq!(percent(1.0), "100.00 %");
        assert_eq!(percent(0.0), "0.00 %");
    }

    #[test]
    fn internal_log_entries_stay_off_the_page() {
        let none = serde_json::json!({});
        assert!(public_update("paged", &none).is_none());
        assert!(public_update("escalate_requested", &none).is_none());
        assert!(public_update("alerts_joined", &none).is_none());
        assert_eq!(
            public_update("note", &serde_json::json!({"text": "rolling back"})).as_deref(),
            Some("rolling back")
        );
        assert_eq!(
            public_update("resolved", &serde_json::json!({"reason": "fixed"})).as_deref(),
            Some("Resolved: fixed")
        );
    }
}
