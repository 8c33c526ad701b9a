//! Incidents as a pure domain: levels P0–P3 with their response targets, the
//! state machine `triggered → acknowledged → resolved` (a resolved incident
//! may be reopened), the escalation chain of notify/wait steps, and the
//! `[alerter.incidents]` config section. No I/O here: the manager
//! ([`crate::incidents`]) persists and drives what these types decide.
//!
//! ```toml
//! [alerter.incidents]
//! page_receivers = ["slack", "pagerduty"]
//! link_secret = "incident_link_secret"
//!
//! [alerter.incidents.levels.P2]
//! open = true              # P2 alert groups open incidents too
//! response = "2h"
//!
//! [alerter.incidents.levels.P0]
//! escalation = [{ notify = "primary" }, { wait = "5m" }, { notify = "everyone" }]
//! ```

use std::fmt;

use chrono::{DateTime, Datelike, Duration, Utc, Weekday};
use serde::{Deserialize, Serialize};

use crate::model::Severity;
use crate::oncall::{OverrideConfig, Person, RotationConfig};
use crate::route::parse_duration;

/// An incident's level (`P0` critical … `P3` low).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Level {
    P0,
    P1,
    P2,
    P3,
}

impl Level {
    pub const ALL: [Level; 4] = [Level::P0, Level::P1, Level::P2, Level::P3];

    pub fn as_str(self) -> &'static str {
        match self {
            Level::P0 => "P0",
            Level::P1 => "P1",
            Level::P2 => "P2",
            Level::P3 => "P3",
        }
    }

    /// `P0`…`P3` or a severity name (`critical`, `high`, `warning`, `info`).
    pub fn parse(value: &str) -> Option<Level> {
        Severity::parse(value).map(Level::of)
    }

    pub fn of(severity: Severity) -> Level {
        match severity {
            Severity::Critical => Level::P0,
            Severity::High => Level::P1,
            Severity::Warning => Level::P2,
            Severity::Info => Level::P3,
        }
    }

    pub fn severity(self) -> Severity {
        match self {
            Level::P0 => Severity::Critical,
            Level::P1 => Severity::High,
            Level::P2 => Severity::Warning,
            Level::P3 => Severity::Info,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where an incident stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    Triggered,
    Acknowledged,
    Resolved,
    /// Resolved, then opened again: pages and escalates like `triggered`.
    Reopened,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Triggered => "triggered",
            State::Acknowledged => "acknowledged",
            State::Resolved => "resolved",
            State::Reopened => "reopened",
        }
    }

    pub fn parse(value: &str) -> Option<State> {
        [
            State::Triggered,
            State::Acknowledged,
            State::Resolved,
            State::Reopened,
        ]
        .into_iter()
        .find(|s| s.as_str() == value)
    }

    /// Not resolved.
    pub fn is_open(self) -> bool {
        self != State::Resolved
    }

    /// Waiting for a person: the escalation chain runs.
    pub fn escalates(self) -> bool {
        matches!(self, State::Triggered | State::Reopened)
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a person (or auto-resolve) does to an incident.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Acknowledge,
    Resolve,
    Reopen,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Acknowledge => "acknowledge",
            Action::Resolve => "resolve",
            Action::Reopen => "reopen",
        }
    }

    pub fn parse(value: &str) -> Option<Action> {
        [Action::Acknowledge, Action::Resolve, Action::Reopen]
            .into_iter()
            .find(|a| a.as_str() == value)
    }

    /// The `incident.*` event kind of the transition.
    pub fn event_kind(self) -> &'static str {
        match self {
            Action::Acknowledge => "incident.acknowledged",
            Action::Resolve => "incident.resolved",
            Action::Reopen => "incident.reopened",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A transition the state machine refuses (FAILED_PRECONDITION).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the incident is {state}: cannot {action} it")]
pub struct TransitionError {
    pub state: State,
    pub action: Action,
}

/// The state machine: the state after `action`, or why not.
pub fn transition(state: State, action: Action) -> Result<State, TransitionError> {
    use Action::*;
    use State::*;
    match (state, action) {
        (Triggered | Reopened, Acknowledge) => Ok(Acknowledged),
        (Triggered | Reopened | Acknowledged, Resolve) => Ok(Resolved),
        (Resolved, Reopen) => Ok(Reopened),
        _ => Err(TransitionError { state, action }),
    }
}

/// How long the first response may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseTime {
    Within(Duration),
    /// Business days (Monday to Friday, UTC).
    BusinessDays(u32),
}

impl ResponseTime {
    /// `15m`, `1h`, `4h` … or `1bd` (business days).
    pub fn parse(value: &str) -> Result<ResponseTime, String> {
        if let Some(days) = value.trim().strip_suffix("bd") {
            let days: u32 = days
                .trim()
                .parse()
                .map_err(|_| format!("{value:?}: expected a number of business days (1bd)"))?;
            if days == 0 {
                return Err(format!("{value:?}: must be at least 1bd"));
            }
            return Ok(ResponseTime::BusinessDays(days));
        }
        let d = parse_duration(value).map_err(|e| e.to_string())?;
        if d <= Duration::zero() {
            return Err(format!("{value:?}: must be positive"));
        }
        Ok(ResponseTime::Within(d))
    }

    /// When a response to something started at `from` is due.
    pub fn deadline(self, from: DateTime<Utc>) -> DateTime<Utc> {
        match self {
            ResponseTime::Within(d) => from + d,
            ResponseTime::BusinessDays(n) => {
                // From a weekend, the clock starts on Monday 00:00.
                let mut at = from;
                while is_weekend(at.weekday()) {
                    at = (at + Duration::days(1))
                        .date_naive()
                        .and_hms_opt(0, 0, 0)
                        .map(|t| t.and_utc())
                        .unwrap_or(at + Duration::days(1));
                }
                let mut left = n;
                while left > 0 {
                    at += Duration::days(1);
                    if !is_weekend(at.weekday()) {
                        left -= 1;
                    }
                }
                at
            }
        }
    }

    /// In words, for messages and the runbook.
    pub fn describe(self) -> String {
        match self {
            ResponseTime::Within(d) if d.num_minutes() % 60 == 0 => {
                format!("{} h", d.num_hours())
            }
            ResponseTime::Within(d) => format!("{} min", d.num_minutes()),
            ResponseTime::BusinessDays(1) => "1 business day".into(),
            ResponseTime::BusinessDays(n) => format!("{n} business days"),
        }
    }
}

fn is_weekend(day: Weekday) -> bool {
    matches!(day, Weekday::Sat | Weekday::Sun)
}

/// Who a notify step pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NotifyTarget {
    Primary,
    Secondary,
    /// Every member of the rotation.
    Everyone,
}

impl NotifyTarget {
    pub fn as_str(self) -> &'static str {
        match self {
            NotifyTarget::Primary => "primary",
            NotifyTarget::Secondary => "secondary",
            NotifyTarget::Everyone => "everyone",
        }
    }
}

/// One configured step of an escalation chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
pub enum StepConfig {
    Notify {
        notify: NotifyTarget,
    },
    /// A duration (`10m`), or `response` for the level's response time.
    Wait {
        wait: String,
    },
}

/// A compiled step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Notify(NotifyTarget),
    Wait(ResponseTime),
}

/// The default chain: primary → wait → secondary → wait → everyone, each
/// wait the level's response time.
pub fn default_chain() -> Vec<StepConfig> {
    let response = || StepConfig::Wait {
        wait: "response".into(),
    };
    vec![
        StepConfig::Notify {
            notify: NotifyTarget::Primary,
        },
        response(),
        StepConfig::Notify {
            notify: NotifyTarget::Secondary,
        },
        response(),
        StepConfig::Notify {
            notify: NotifyTarget::Everyone,
        },
    ]
}

/// One level as configured; unset fields take the level's default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LevelConfig {
    /// First response target (`15m`, `1h`, `4h`, `1bd`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response: Option<String>,
    /// Whether an alert group of this level opens (or joins) an incident.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub open: Option<bool>,
    /// Resolve the incident when all its alerts resolve (default: no, a
    /// person resolves it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto_resolve: Option<bool>,
    /// The escalation chain (default [`default_chain`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub escalation: Option<Vec<StepConfig>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LevelsConfig {
    #[serde(rename = "P0")]
    pub p0: LevelConfig,
    #[serde(rename = "P1")]
    pub p1: LevelConfig,
    #[serde(rename = "P2")]
    pub p2: LevelConfig,
    #[serde(rename = "P3")]
    pub p3: LevelConfig,
}

/// The `[alerter.incidents]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IncidentSettings {
    /// Open incidents from alert groups and escalate them.
    pub enabled: bool,
    pub levels: LevelsConfig,
    /// Receivers pages go to (those enabled); the alert notifications keep
    /// following the routing tree.
    pub page_receivers: Vec<String>,
    /// The secret holding the key that signs acknowledge/resolve links
    /// (links are left out of pages while it is not set).
    pub link_secret: String,
    /// How long a link stays valid.
    pub link_ttl: String,
    pub people: Vec<Person>,
    pub rotation: Option<RotationConfig>,
    pub overrides: Vec<OverrideConfig>,
}

impl Default for IncidentSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            levels: LevelsConfig::default(),
            page_receivers: ["slack", "discord", "pagerduty", "webhook"]
                .map(String::from)
                .to_vec(),
            link_secret: "incident_link_secret".into(),
            link_ttl: "24h".into(),
            people: Vec::new(),
            rotation: None,
            overrides: Vec::new(),
        }
    }
}

/// A level, compiled.
#[derive(Debug, Clone, PartialEq)]
pub struct LevelPolicy {
    pub level: Level,
    pub response: ResponseTime,
    pub open: bool,
    pub auto_resolve: bool,
    pub chain: Vec<Step>,
}

/// The defaults of the operations strategy's table.
fn default_response(level: Level) -> &'static str {
    match level {
        Level::P0 => "15m",
        Level::P1 => "1h",
        Level::P2 => "4h",
        Level::P3 => "1bd",
    }
}

/// Every level, compiled; errors name the key.
#[derive(Debug, Clone, PartialEq)]
pub struct Levels([LevelPolicy; 4]);

impl Levels {
    pub fn compile(config: &LevelsConfig) -> Result<Levels, String> {
        let one = |level: Level, c: &LevelConfig| -> Result<LevelPolicy, String> {
            let key = format!("incidents.levels.{level}");
            let response = ResponseTime::parse(
                c.response
                    .as_deref()
                    .unwrap_or_else(|| default_response(level)),
            )
            .map_err(|e| format!("{key}.response: {e}"))?;
            let chain = c
                .escalation
                .clone()
                .unwrap_or_else(default_chain)
                .iter()
                .enumerate()
                .map(|(i, step)| match step {
                    StepConfig::Notify { notify } => Ok(Step::Notify(*notify)),
                    StepConfig::Wait { wait } if wait == "response" => Ok(Step::Wait(response)),
                    StepConfig::Wait { wait } => ResponseTime::parse(wait)
                        .map(Step::Wait)
                        .map_err(|e| format!("{key}.escalation[{i}].wait: {e}")),
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(LevelPolicy {
                level,
                response,
                open: c.open.unwrap_or(matches!(level, Level::P0 | Level::P1)),
                auto_resolve: c.auto_resolve.unwrap_or(false),
                chain,
            })
        };
        Ok(Levels([
            one(Level::P0, &config.p0)?,
            one(Level::P1, &config.p1)?,
            one(Level::P2, &config.p2)?,
            one(Level::P3, &config.p3)?,
        ]))
    }

    pub fn get(&self, level: Level) -> &LevelPolicy {
        &self.0[level.index()]
    }
}

/// The escalation cursor after running the chain from `step` at `due`:
/// the notify steps to run now, the next cursor and when it is due (None:
/// the chain is done). Runs up to and including the first wait.
pub fn advance(chain: &[Step], step: usize, due: DateTime<Utc>) -> Advance {
    let mut notify = Vec::new();
    let mut at = step;
    while let Some(s) = chain.get(at) {
        at += 1;
        match s {
            Step::Notify(target) => notify.push(*target),
            Step::Wait(wait) => {
                return Advance {
                    notify,
                    next_step: at,
                    next_at: Some(wait.deadline(due)),
                };
            }
        }
    }
    Advance {
        notify,
        next_step: at,
        next_at: None,
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advance {
    pub notify: Vec<NotifyTarget>,
    pub next_step: usize,
    pub next_at: Option<DateTime<Utc>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_machine_table() {
        use Action::*;
        use State::*;
        let table = [
            (Triggered, Acknowledge, Some(Acknowledged)),
            (Triggered, Resolve, Some(Resolved)),
            (Triggered, Reopen, None),
            (Acknowledged, Acknowledge, None),
            (Acknowledged, Resolve, Some(Resolved)),
            (Acknowledged, Reopen, None),
            (Resolved, Acknowledge, None),
            (Resolved, Resolve, None),
            (Resolved, Reopen, Some(Reopened)),
            (Reopened, Acknowledge, Some(Acknowledged)),
            (Reopened, Resolve, Some(Resolved)),
            (Reopened, Reopen, None),
        ];
        for (state, action, expected) in table {
            assert_eq!(
                transition(state, action).ok(),
                expected,
                "{state} + {action}"
            );
        }
        let refused = transition(Resolved, Acknowledge).expect_err("refused");
        assert_eq!(
            refused.to_string(),
            "the incident is resolved: cannot acknowledge it"
        );
        for s in [Triggered, Acknowledged, Resolved, Reopened] {
            assert_eq!(State::parse(s.as_str()), Some(s));
        }
    }

    #[test]
    fn levels_default_to_the_strategy_table() {
        let levels = Levels::compile(&LevelsConfig::default()).expect("defaults");
        let t0 = DateTime::parse_from_rfc3339("2026-12-04T16:00:00Z")
            .expect("t0")
            .to_utc(); // a Friday
        let deadline = |l: Level| levels.get(l).response.deadline(t0) - t0;
        assert_eq!(deadline(Level::P0), Duration::minutes(15));
        assert_eq!(deadline(Level::P1), Duration::hours(1));
        assert_eq!(deadline(Level::P2), Duration::hours(4));
        // One business day from Friday afternoon is Monday afternoon.
        assert_eq!(deadline(Level::P3), Duration::days(3));
        assert!(levels.get(Level::P0).open && levels.get(Level::P1).open);
        assert!(!levels.get(Level::P2).open && !levels.get(Level::P3).open);
        assert!(!levels.get(Level::P0).auto_resolve);
        assert_eq!(levels.get(Level::P3).response.describe(), "1 business day");
        assert_eq!(levels.get(Level::P0).response.describe(), "15 min");
    }

    #[test]
    fn configured_levels_override_and_bad_values_name_the_key() {
        let config: LevelsConfig = serde_json::from_value(serde_json::json!({
            "P2": {"open": true, "response": "2h", "auto_resolve": true},
            "P0": {"escalation": [{"notify": "primary"}, {"wait": "5m"}, {"notify": "everyone"}]}
        }))
        .expect("parse");
        let levels = Levels::compile(&config).expect("compile");
        assert!(levels.get(Level::P2).open && levels.get(Level::P2).auto_resolve);
        assert_eq!(
            levels.get(Level::P0).chain,
            vec![
                Step::Notify(NotifyTarget::Primary),
                Step::Wait(ResponseTime::Within(Duration::minutes(5))),
                Step::Notify(NotifyTarget::Everyone)
            ]
        );
        let bad: LevelsConfig =
            serde_json::from_value(serde_json::json!({"P1": {"response": "soon"}})).expect("p");
        let err = Levels::compile(&bad).expect_err("bad");
        assert!(err.starts_with("incidents.levels.P1.response"), "{err}");
        assert!(
            serde_json::from_value::<LevelsConfig>(serde_json::json!({"P4": {}})).is_err(),
            "unknown level"
        );
    }

    #[test]
    fn the_chain_advances_to_each_wait() {
        let levels = Levels::compile(&LevelsConfig::default()).expect("defaults");
        let chain = &levels.get(Level::P0).chain;
        let t0 = DateTime::from_timestamp(1_800_000_000, 0).expect("t0");
        let first = advance(chain, 0, t0);
        assert_eq!(first.notify, vec![NotifyTarget::Primary]);
        assert_eq!(first.next_at, Some(t0 + Duration::minutes(15)));
        let t1 = t0 + Duration::minutes(15);
        let second = advance(chain, first.next_step, t1);
        assert_eq!(second.notify, vec![NotifyTarget::Secondary]);
        assert_eq!(second.next_at, Some(t1 + Duration::minutes(15)));
        let last = advance(chain, second.next_step, t1 + Duration::minutes(15));
        assert_eq!(last.notify, vec![NotifyTarget::Everyone]);
        assert_eq!(last.next_at, None);
        assert_eq!(advance(chain, last.next_step, t1).notify, vec![]);
    }
}
