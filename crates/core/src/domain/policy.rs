//! Policy values and their schemas. Every key has a typed value; `SetPolicy`
//! parses the new JSON into it (unknown fields and out-of-range numbers are
//! rejected, naming the path) before anything is written.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub use super::governance::{Pricing, Resources};
use super::input::{StepKind, ValidationError};
use super::rule_spec::ReactionPatternSpec;

/// A policy key the api knows. Toggles are any key ending in `_autopost`
/// (e.g. `x_autopost`), so a staged rollout of a new kind needs no code.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PolicyKey {
    AutoApprove,
    StepGates,
    WorkerPolicy,
    ReactionMatrix,
    OpsHealth,
    CostBudget,
    InsightPromotion,
    EmergencyStop,
    Resources,
    Pricing,
    Toggle(String),
}

impl PolicyKey {
    pub fn parse(key: &str) -> Result<Self, ValidationError> {
        Ok(match key {
            "auto_approve" => Self::AutoApprove,
            "step_gates" => Self::StepGates,
            "worker_policy" => Self::WorkerPolicy,
            "reaction_matrix" => Self::ReactionMatrix,
            "ops_health" => Self::OpsHealth,
            "cost_budget" => Self::CostBudget,
            "insight_promotion" => Self::InsightPromotion,
            "emergency_stop" => Self::EmergencyStop,
            "resources" => Self::Resources,
            "pricing" => Self::Pricing,
            toggle if is_toggle_key(toggle) => Self::Toggle(toggle.to_owned()),
            other => {
                return Err(ValidationError::new(
                    "key",
                    format!("unknown policy key {other:?}"),
                ));
            }
        })
    }

    pub fn as_str(&self) -> &str {
        match self {
            Self::AutoApprove => "auto_approve",
            Self::StepGates => "step_gates",
            Self::WorkerPolicy => "worker_policy",
            Self::ReactionMatrix => "reaction_matrix",
            Self::OpsHealth => "ops_health",
            Self::CostBudget => "cost_budget",
            Self::InsightPromotion => "insight_promotion",
            Self::EmergencyStop => "emergency_stop",
            Self::Resources => "resources",
            Self::Pricing => "pricing",
            Self::Toggle(key) => key,
        }
    }

    /// One line for `Policy.description`.
    pub fn description(&self) -> &'static str {
        match self {
            Self::AutoApprove => "approve proposals at once when every step kind is allowed",
            Self::StepGates => "per step kind: the toggle that must be on and the daily cap",
            Self::WorkerPolicy => "lease length, attempts and retry backoff of steps",
            Self::ReactionMatrix => "events that cause proposals (pattern, probability, cooldown)",
            Self::OpsHealth => "failed steps per window that raise an alert, and its cooldown",
            Self::CostBudget => "daily and monthly budgets, warnings and the hard stop",
            Self::InsightPromotion => "when cited events become a stored insight",
            Self::EmergencyStop => "while engaged, nothing is approved or handed to workers",
            Self::Resources => {
                "upstream resources: rate limits, AIMD controller, guards and the kinds using each"
            }
            Self::Pricing => "cost per upstream call (and unit) of each resource",
            Self::Toggle(_) => "staged-rollout toggle of a step kind",
        }
    }
}

fn is_toggle_key(key: &str) -> bool {
    key.len() <= 64
        && key.ends_with("_autopost")
        && key
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// `auto_approve`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct AutoApprove {
    /// Approve at once a proposal whose every step kind is in `allowed_kinds`;
    /// anything else waits for a human (`opsloop proposal approve`).
    pub enabled: bool,
    /// Step kinds that may be approved without a human.
    pub allowed_kinds: Vec<StepKind>,
}

/// One entry of `step_gates.kinds`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct KindGateConfig {
    /// The toggle policy key that must be enabled for this kind.
    #[serde(default)]
    pub toggle: Option<String>,
    /// Steps of this kind per day (in the gates' time zone).
    #[serde(default)]
    pub daily_cap: Option<u32>,
}

/// `step_gates`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct StepGates {
    /// IANA time zone of the daily caps' day (e.g. `UTC`, `Europe/Berlin`).
    pub timezone: String,
    /// Step kind → its toggle and daily cap.
    #[serde(default)]
    pub kinds: BTreeMap<StepKind, KindGateConfig>,
}

impl StepGates {
    /// The time zone; validated on parse, so the fallback never applies to a
    /// stored value.
    pub fn tz(&self) -> chrono_tz::Tz {
        self.timezone.parse().unwrap_or(chrono_tz::UTC)
    }
}

/// A toggle such as `x_autopost`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Toggle {
    /// While false, proposals with a step of the kinds gated by this toggle are rejected.
    pub enabled: bool,
}

/// `worker_policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct WorkerPolicy {
    /// How long a claimed step is a worker's before others may claim it (1 s to 24 h).
    pub lease_seconds: u32,
    /// Attempts before a step is dead-lettered (1 to 20).
    pub max_attempts: u32,
    /// First retry delay; doubles per attempt, with jitter.
    pub backoff_base_seconds: u32,
    /// Longest retry delay (at least `backoff_base_seconds`, at most a day).
    pub backoff_max_seconds: u32,
}

impl Default for WorkerPolicy {
    fn default() -> Self {
        Self {
            lease_seconds: 300,
            max_attempts: 3,
            backoff_base_seconds: 5,
            backoff_max_seconds: 300,
        }
    }
}

/// Longest lease a worker may ask for.
pub const MAX_LEASE_SECONDS: u32 = 24 * 3600;

/// `reaction_matrix`: events that cause proposals. Each pattern is checked
/// as a [`ReactionPatternSpec`] when the policy is set and kept as written
/// (the heartbeat renders its template per event).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ReactionMatrix {
    /// The patterns, each matched against every event the heartbeat reads.
    #[cfg_attr(feature = "schema", schemars(with = "Vec<ReactionPatternSpec>"))]
    pub patterns: Vec<serde_json::Map<String, serde_json::Value>>,
}

/// `ops_health`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct OpsHealth {
    /// Failed steps within `window_seconds` that raise the failure-spike alert.
    pub failure_threshold: u32,
    /// The window, in seconds (1 s to 7 days).
    pub window_seconds: u32,
    /// Least time between two failure-spike alerts.
    pub cooldown_seconds: u32,
}

impl Default for OpsHealth {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            window_seconds: 3600,
            cooldown_seconds: 3600,
        }
    }
}

/// `cost_budget`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct CostBudget {
    /// IANA time zone of the budget's day and month.
    pub timezone: String,
    /// Daily budget in US dollars (the step costs workers report).
    pub daily_usd: f64,
    /// Monthly budget in US dollars.
    pub monthly_usd: f64,
    /// Share of `daily_usd` spent that raises a warning, in [0, 1].
    pub daily_warn_ratio: f64,
    /// Share of `monthly_usd` spent that raises a warning, in [0, 1].
    pub monthly_warn_ratio: f64,
    /// Spend in a day that engages the emergency stop.
    pub hard_daily_usd: f64,
    /// Consecutive failed steps that engage the emergency stop.
    pub max_consecutive_failures: u32,
}

/// `insight_promotion`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct InsightPromotion {
    /// Tag of the events that cite an insight.
    pub tag: String,
    /// Citations within the window that promote it to a stored insight.
    pub min_citations: u32,
    /// The window, in days (1 to 3650).
    pub window_days: u32,
}

/// `emergency_stop`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct EmergencyStop {
    /// While true, nothing is approved or handed to workers.
    pub engaged: bool,
    /// Why it was engaged (shown in `opsloop status` and the console).
    pub reason: Option<String>,
    /// Who engaged it (a token name, `heartbeat` or `alerter`).
    pub actor: Option<String>,
    /// When it was engaged.
    pub engaged_at: Option<DateTime<Utc>>,
}

/// A parsed, valid policy value.
#[derive(Debug, Clone, PartialEq)]
pub enum PolicyValue {
    AutoApprove(AutoApprove),
    StepGates(StepGates),
    WorkerPolicy(WorkerPolicy),
    ReactionMatrix(ReactionMatrix),
    OpsHealth(OpsHealth),
    CostBudget(CostBudget),
    InsightPromotion(InsightPromotion),
    EmergencyStop(EmergencyStop),
    Resources(Resources),
    Pricing(Pricing),
    Toggle(Toggle),
}

const FIELD: &str = "value_json";

fn field(path: &str) -> String {
    format!("{FIELD}.{path}")
}

fn typed<T: DeserializeOwned>(value: &serde_json::Value) -> Result<T, ValidationError> {
    serde_json::from_value(value.clone()).map_err(|e| ValidationError::new(FIELD, e.to_string()))
}

fn range(path: &str, value: f64, min: f64, max: f64) -> Result<(), ValidationError> {
    if !value.is_finite() || value < min || value > max {
        return Err(ValidationError::new(
            field(path),
            format!("must be between {min} and {max}"),
        ));
    }
    Ok(())
}

fn timezone(path: &str, tz: &str) -> Result<(), ValidationError> {
    tz.parse::<chrono_tz::Tz>()
        .map(|_| ())
        .map_err(|_| ValidationError::new(field(path), format!("unknown time zone {tz:?}")))
}

impl PolicyValue {
    /// Parses and validates `value` against `key`'s schema.
    pub fn parse(key: &PolicyKey, value: &serde_json::Value) -> Result<Self, ValidationError> {
        Ok(match key {
            PolicyKey::AutoApprove => Self::AutoApprove(typed(value)?),
            PolicyKey::StepGates => {
                let gates: StepGates = typed(value)?;
                timezone("timezone", &gates.timezone)?;
                for (kind, gate) in &gates.kinds {
                    if let Some(toggle) = &gate.toggle
                        && !is_toggle_key(toggle)
                    {
                        return Err(ValidationError::new(
                            field(&format!("kinds.{kind}.toggle")),
                            "must name a toggle key ending in _autopost",
                        ));
                    }
                }
                Self::StepGates(gates)
            }
            PolicyKey::WorkerPolicy => {
                let p: WorkerPolicy = typed(value)?;
                range(
                    "lease_seconds",
                    p.lease_seconds.into(),
                    1.0,
                    MAX_LEASE_SECONDS.into(),
                )?;
                range("max_attempts", p.max_attempts.into(), 1.0, 20.0)?;
                range(
                    "backoff_max_seconds",
                    p.backoff_max_seconds.into(),
                    p.backoff_base_seconds.into(),
                    86_400.0,
                )?;
                Self::WorkerPolicy(p)
            }
            PolicyKey::ReactionMatrix => {
                let matrix: ReactionMatrix = typed(value)?;
                for (i, pattern) in matrix.patterns.iter().enumerate() {
                    ReactionPatternSpec::parse(
                        &field(&format!("patterns[{i}]")),
                        &serde_json::Value::Object(pattern.clone()),
                    )?;
                }
                Self::ReactionMatrix(matrix)
            }
            PolicyKey::OpsHealth => {
                let p: OpsHealth = typed(value)?;
                range("failure_threshold", p.failure_threshold.into(), 1.0, 1e6)?;
                range(
                    "window_seconds",
                    p.window_seconds.into(),
                    1.0,
                    7.0 * 86_400.0,
                )?;
                Self::OpsHealth(p)
            }
            PolicyKey::CostBudget => {
                let p: CostBudget = typed(value)?;
                timezone("timezone", &p.timezone)?;
                range("daily_usd", p.daily_usd, 0.0, 1e9)?;
                range("monthly_usd", p.monthly_usd, 0.0, 1e9)?;
                range("daily_warn_ratio", p.daily_warn_ratio, 0.0, 1.0)?;
                range("monthly_warn_ratio", p.monthly_warn_ratio, 0.0, 1.0)?;
                range("hard_daily_usd", p.hard_daily_usd, 0.0, 1e9)?;
                Self::CostBudget(p)
            }
            PolicyKey::InsightPromotion => {
                let p: InsightPromotion = typed(value)?;
                range("min_citations", p.min_citations.into(), 1.0, 1e6)?;
                range("window_days", p.window_days.into(), 1.0, 3650.0)?;
                Self::InsightPromotion(p)
            }
            PolicyKey::EmergencyStop => Self::EmergencyStop(typed(value)?),
            PolicyKey::Resources => {
                let r: Resources = typed(value)?;
                r.validate(FIELD)?;
                Self::Resources(r)
            }
            PolicyKey::Pricing => {
                let p: Pricing = typed(value)?;
                p.validate(FIELD)?;
                Self::Pricing(p)
            }
            PolicyKey::Toggle(_) => Self::Toggle(typed(value)?),
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn seeded_values_are_valid() {
        for (key, value) in opsloop_migrations::seed_policies() {
            let key = PolicyKey::parse(key).expect("known key");
            PolicyValue::parse(&key, &value).unwrap_or_else(|e| panic!("{key:?}: {e}"));
        }
    }

    #[test]
    fn set_validates_against_the_key_schema() {
        let table: Vec<(&str, serde_json::Value, Option<&str>)> = vec![
            ("x_autopost", json!({"enabled": true}), None),
            ("x_autopost", json!({"enabled": "yes"}), Some("value_json")),
            (
                "x_autopost",
                json!({"enabled": true, "extra": 1}),
                Some("value_json"),
            ),
            ("new_kind_autopost", json!({"enabled": false}), None),
            (
                "auto_approve",
                json!({"enabled": true, "allowed_kinds": ["Bad Kind"]}),
                Some("value_json"),
            ),
            (
                "step_gates",
                json!({"timezone": "Mars/Olympus", "kinds": {}}),
                Some("value_json.timezone"),
            ),
            (
                "step_gates",
                json!({"timezone": "UTC", "kinds": {"post_x": {"toggle": "auto_approve"}}}),
                Some("value_json.kinds.post_x.toggle"),
            ),
            (
                "worker_policy",
                json!({"lease_seconds": 0, "max_attempts": 3, "backoff_base_seconds": 1, "backoff_max_seconds": 2}),
                Some("value_json.lease_seconds"),
            ),
            (
                "worker_policy",
                json!({"lease_seconds": 10, "max_attempts": 3, "backoff_base_seconds": 10, "backoff_max_seconds": 2}),
                Some("value_json.backoff_max_seconds"),
            ),
            (
                "ops_health",
                json!({"failure_threshold": 0, "window_seconds": 1, "cooldown_seconds": 0}),
                Some("value_json.failure_threshold"),
            ),
            (
                "reaction_matrix",
                json!({"patterns": [1]}),
                Some("value_json"),
            ),
            (
                "emergency_stop",
                json!({"engaged": true, "reason": "x", "actor": "a", "engaged_at": null}),
                None,
            ),
            ("resources", json!({"api": {"kinds": ["post_x"]}}), None),
            (
                "resources",
                json!({"api": {"kinds": []}}),
                Some("value_json.api.kinds"),
            ),
            (
                "resources",
                json!({"api": {"kinds": ["a"], "min_rate": 5, "max_rate": 1, "initial_rate": 1}}),
                Some("value_json.api.min_rate"),
            ),
            (
                "resources",
                json!({"api": {"kinds": ["a"], "window_seconds": 0}}),
                Some("value_json.api.window_seconds"),
            ),
            (
                "resources",
                json!({"api": {"kinds": ["a"], "rate": 5}}),
                Some("value_json"),
            ),
            (
                "pricing",
                json!({"api": {"cost_per_call_usd": 0.00015}}),
                None,
            ),
            (
                "pricing",
                json!({"api": {"cost_per_call_usd": -0.1}}),
                Some("value_json.api.cost_per_call_usd"),
            ),
        ];
        for (key, value, failing_field) in table {
            let key = PolicyKey::parse(key).expect("key");
            match (PolicyValue::parse(&key, &value), failing_field) {
                (Ok(_), None) => {}
                (Err(e), Some(field)) => assert_eq!(e.field, field, "{key:?} {value}"),
                (other, expected) => panic!("{key:?} {value}: {other:?}, expected {expected:?}"),
            }
        }
        assert!(PolicyKey::parse("nope").is_err());
    }
}
