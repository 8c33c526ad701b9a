//! Rate governance of upstream resources, pure and without I/O: the
//! `resources` policy (each upstream API a fleet of workers calls, its rate
//! limits, the AIMD controller's thresholds and steps, its window, the
//! guards' thresholds and the step kinds that use it), the `pricing` policy
//! (cost per call), the usage a worker reports for one step, and the
//! controller's decision for one window ([`next_rate`]).
//!
//! The token bucket itself lives in the claim statement
//! (`workflow::missions`) and the controller's loop in the heartbeat.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::input::{StepKind, ValidationError};

/// Longest latency a usage report may claim: one hour, in milliseconds.
pub const MAX_LATENCY_MS: f64 = 3_600_000.0;
/// Most upstream calls one step may report.
pub const MAX_CALLS_PER_STEP: i64 = 1_000_000;
/// Most resources one usage report may name.
pub const MAX_USAGE_ENTRIES: usize = 16;

fn default_initial() -> f64 {
    150.0
}
fn default_min() -> f64 {
    100.0
}
fn default_max() -> f64 {
    200.0
}
fn default_high_ms() -> f64 {
    700.0
}
fn default_low_ms() -> f64 {
    400.0
}
fn default_decrease() -> f64 {
    10.0
}
fn default_increase() -> f64 {
    5.0
}
fn default_window() -> f64 {
    10.0
}
fn default_violation() -> f64 {
    210.0
}
fn default_burst_seconds() -> f64 {
    1.0
}
fn default_throttle_burst() -> i64 {
    3
}
fn default_error_rate() -> f64 {
    0.10
}
fn default_slow_ms() -> f64 {
    1000.0
}
fn default_failures_alert() -> u32 {
    3
}
fn default_failures_trip() -> u32 {
    5
}
fn default_pause_seconds() -> u32 {
    300
}
fn default_outage_min_calls() -> i64 {
    5
}

/// Longest probe name (the heartbeat's `[[heartbeat.probes]]` rule).
const MAX_PROBE_NAME: usize = 64;

/// What a tripped guard (limit violation, consecutive failures) does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum TripAction {
    /// Engage the emergency stop (nothing is handed out to anyone).
    #[default]
    EmergencyStop,
    /// Pause only the kinds that use the resource (`step_kind_pauses`,
    /// source `resource:<name>`) for `pause_seconds`.
    PauseKinds,
}

/// One entry of the `resources` policy: an upstream resource's limits.
/// Every field but `kinds` has the ops plan's default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ResourceLimits {
    /// Step kinds that call this resource (at least one).
    pub kinds: Vec<StepKind>,
    /// Calls per second when the controller starts.
    #[serde(default = "default_initial")]
    pub initial_rate: f64,
    /// The controller never goes below this.
    #[serde(default = "default_min")]
    pub min_rate: f64,
    /// The provider's limit: never above this.
    #[serde(default = "default_max")]
    pub max_rate: f64,
    /// Window latency above this lowers the rate by `decrease_step`.
    #[serde(default = "default_high_ms")]
    pub latency_high_ms: f64,
    /// Window latency below this raises the rate by `increase_step`.
    #[serde(default = "default_low_ms")]
    pub latency_low_ms: f64,
    /// Calls per second taken off the rate when a window is slow.
    #[serde(default = "default_decrease")]
    pub decrease_step: f64,
    /// Calls per second added to the rate when a window is fast.
    #[serde(default = "default_increase")]
    pub increase_step: f64,
    /// The controller's window in seconds (at least 1).
    #[serde(default = "default_window")]
    pub window_seconds: f64,
    /// Observed calls per second above this are a limit violation.
    #[serde(default = "default_violation")]
    pub violation_rate: f64,
    /// Bucket size in seconds of the current rate (the burst a fleet may
    /// take at once after an idle spell).
    #[serde(default = "default_burst_seconds")]
    pub burst_seconds: f64,
    /// 429 answers in one window that halve the rate whatever the latency.
    #[serde(default = "default_throttle_burst")]
    pub throttle_burst: i64,
    /// Share of non-2xx answers in a window that raises an alert.
    #[serde(default = "default_error_rate")]
    pub error_rate_alert: f64,
    /// Window latency (ms) that raises a slow-response alert.
    #[serde(default = "default_slow_ms")]
    pub slow_response_ms: f64,
    /// Consecutive failed steps of the resource's kinds that alert.
    #[serde(default = "default_failures_alert")]
    pub failures_alert: u32,
    /// Consecutive failed steps that trip `on_trip`.
    #[serde(default = "default_failures_trip")]
    pub failures_trip: u32,
    /// An upstream outage is declared in a window with at least this many
    /// calls that failed as unavailable (5xx or unreachable) and no other
    /// answer (2xx, 4xx, 429).
    #[serde(default = "default_outage_min_calls")]
    pub outage_min_calls: i64,
    /// A heartbeat probe watching the provider: while it is down the
    /// resource is in an outage (evidence independent of the workers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outage_probe: Option<String>,
    /// What a limit violation, `failures_trip` failures or an upstream
    /// outage do.
    #[serde(default)]
    pub on_trip: TripAction,
    /// How long `pause_kinds` pauses the kinds.
    #[serde(default = "default_pause_seconds")]
    pub pause_seconds: u32,
}

impl ResourceLimits {
    /// Limits with every default and the given kinds.
    pub fn with_kinds(kinds: Vec<StepKind>) -> Self {
        Self {
            kinds,
            initial_rate: default_initial(),
            min_rate: default_min(),
            max_rate: default_max(),
            latency_high_ms: default_high_ms(),
            latency_low_ms: default_low_ms(),
            decrease_step: default_decrease(),
            increase_step: default_increase(),
            window_seconds: default_window(),
            violation_rate: default_violation(),
            burst_seconds: default_burst_seconds(),
            throttle_burst: default_throttle_burst(),
            error_rate_alert: default_error_rate(),
            slow_response_ms: default_slow_ms(),
            failures_alert: default_failures_alert(),
            failures_trip: default_failures_trip(),
            outage_min_calls: default_outage_min_calls(),
            outage_probe: None,
            on_trip: TripAction::EmergencyStop,
            pause_seconds: default_pause_seconds(),
        }
    }

    /// `rate` clamped to `[min_rate, max_rate]`.
    pub fn clamp(&self, rate: f64) -> f64 {
        rate.max(self.min_rate).min(self.max_rate)
    }
}

/// The `resources` policy: resource name → limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(transparent)]
pub struct Resources(pub BTreeMap<String, ResourceLimits>);

impl Resources {
    /// The resources `kind` uses, by name.
    pub fn of_kind<'a>(
        &'a self,
        kind: &'a str,
    ) -> impl Iterator<Item = (&'a str, &'a ResourceLimits)> {
        self.0
            .iter()
            .filter(move |(_, r)| r.kinds.iter().any(|k| k.as_str() == kind))
            .map(|(name, r)| (name.as_str(), r))
    }

    /// `(kind, resource)` pairs for the given kinds, in kind then resource
    /// order (the claim statement's `need` list).
    pub fn needs(&self, kinds: &[StepKind]) -> Vec<(String, String, f64)> {
        let mut out: Vec<(String, String, f64)> = Vec::new();
        for kind in kinds {
            for (name, r) in self.of_kind(kind.as_str()) {
                // A kind asked twice needs its tokens once.
                if !out.iter().any(|(k, n, _)| k == kind.as_str() && n == name) {
                    out.push((kind.as_str().to_owned(), name.to_owned(), r.burst_seconds));
                }
            }
        }
        out
    }

    /// Every kind some resource governs.
    pub fn governed_kinds(&self) -> BTreeSet<&str> {
        self.0
            .values()
            .flat_map(|r| r.kinds.iter().map(StepKind::as_str))
            .collect()
    }

    /// Validates every entry, naming the failing field (`<prefix>.<name>.<field>`).
    pub fn validate(&self, prefix: &str) -> Result<(), ValidationError> {
        for (name, r) in &self.0 {
            let at = |f: &str| format!("{prefix}.{name}.{f}");
            StepKind::parse(&format!("{prefix}.{name}"), name)?;
            if r.kinds.is_empty() {
                return Err(ValidationError::new(
                    at("kinds"),
                    "a resource must be used by at least one step kind",
                ));
            }
            let positive = |f: &str, v: f64, max: f64| {
                if !v.is_finite() || v <= 0.0 || v > max {
                    Err(ValidationError::new(
                        at(f),
                        format!("must be above 0 and at most {max}"),
                    ))
                } else {
                    Ok(())
                }
            };
            positive("min_rate", r.min_rate, 1e6)?;
            positive("max_rate", r.max_rate, 1e6)?;
            positive("initial_rate", r.initial_rate, 1e6)?;
            positive("violation_rate", r.violation_rate, 1e7)?;
            positive("latency_high_ms", r.latency_high_ms, MAX_LATENCY_MS)?;
            positive("latency_low_ms", r.latency_low_ms, MAX_LATENCY_MS)?;
            positive("slow_response_ms", r.slow_response_ms, MAX_LATENCY_MS)?;
            positive("burst_seconds", r.burst_seconds, 3600.0)?;
            if r.min_rate > r.max_rate {
                return Err(ValidationError::new(
                    at("min_rate"),
                    format!("min_rate {} is above max_rate {}", r.min_rate, r.max_rate),
                ));
            }
            if r.initial_rate < r.min_rate || r.initial_rate > r.max_rate {
                return Err(ValidationError::new(
                    at("initial_rate"),
                    "must be between min_rate and max_rate",
                ));
            }
            if r.latency_low_ms > r.latency_high_ms {
                return Err(ValidationError::new(
                    at("latency_low_ms"),
                    "must not be above latency_high_ms",
                ));
            }
            if !r.window_seconds.is_finite()
                || r.window_seconds < 1.0
                || r.window_seconds > 86_400.0
            {
                return Err(ValidationError::new(
                    at("window_seconds"),
                    "must be between 1 and 86400 seconds",
                ));
            }
            for (f, v) in [
                ("decrease_step", r.decrease_step),
                ("increase_step", r.increase_step),
            ] {
                if !v.is_finite() || !(0.0..=1e6).contains(&v) {
                    return Err(ValidationError::new(at(f), "must be between 0 and 1000000"));
                }
            }
            if !(0.0..=1.0).contains(&r.error_rate_alert) {
                return Err(ValidationError::new(
                    at("error_rate_alert"),
                    "must be between 0 and 1",
                ));
            }
            if r.throttle_burst < 1 {
                return Err(ValidationError::new(
                    at("throttle_burst"),
                    "must be at least 1",
                ));
            }
            if r.failures_trip < 1 || r.failures_alert < 1 {
                let f = if r.failures_trip < 1 {
                    "failures_trip"
                } else {
                    "failures_alert"
                };
                return Err(ValidationError::new(at(f), "must be at least 1"));
            }
            if !(1..=MAX_CALLS_PER_STEP).contains(&r.outage_min_calls) {
                return Err(ValidationError::new(
                    at("outage_min_calls"),
                    format!("must be between 1 and {MAX_CALLS_PER_STEP}"),
                ));
            }
            if let Some(probe) = &r.outage_probe
                && !is_probe_name(probe)
            {
                return Err(ValidationError::new(
                    at("outage_probe"),
                    format!(
                        "{probe:?} is not a probe name (1-{MAX_PROBE_NAME} letters, digits, '_', '-' or '.')"
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// A name `[[heartbeat.probes]]` accepts: 1-64 letters, digits, `_`, `-`, `.`.
fn is_probe_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_PROBE_NAME
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// One entry of the `pricing` policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Price {
    /// US dollars per upstream call.
    pub cost_per_call_usd: f64,
    /// US dollars per reported unit (e.g. tokens), when the resource bills so.
    #[serde(default)]
    pub cost_per_unit_usd: Option<f64>,
}

/// The `pricing` policy: resource name → price.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(transparent)]
pub struct Pricing(pub BTreeMap<String, Price>);

impl Pricing {
    pub fn validate(&self, prefix: &str) -> Result<(), ValidationError> {
        for (name, price) in &self.0 {
            StepKind::parse(&format!("{prefix}.{name}"), name)?;
            let ok = |v: f64| v.is_finite() && (0.0..=1e6).contains(&v);
            if !ok(price.cost_per_call_usd) {
                return Err(ValidationError::new(
                    format!("{prefix}.{name}.cost_per_call_usd"),
                    "must be between 0 and 1000000",
                ));
            }
            if price.cost_per_unit_usd.is_some_and(|v| !ok(v)) {
                return Err(ValidationError::new(
                    format!("{prefix}.{name}.cost_per_unit_usd"),
                    "must be between 0 and 1000000",
                ));
            }
        }
        Ok(())
    }

    /// The cost of `usage` at these prices (resources without a price cost 0).
    pub fn cost_of(&self, usage: &[ResourceUsage]) -> f64 {
        usage.iter().map(|u| self.cost_of_one(u)).sum()
    }

    /// The cost of one resource's usage.
    pub fn cost_of_one(&self, u: &ResourceUsage) -> f64 {
        self.0.get(&u.resource).map_or(0.0, |p| {
            p.cost_per_call_usd * u.calls as f64 + p.cost_per_unit_usd.unwrap_or(0.0) * u.units
        })
    }
}

/// What a worker reports a step did to one upstream resource.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ResourceUsage {
    pub resource: String,
    #[serde(default)]
    pub calls: i64,
    #[serde(default)]
    pub latency_p50_ms: f64,
    #[serde(default)]
    pub latency_max_ms: f64,
    #[serde(default)]
    pub status_2xx: i64,
    #[serde(default)]
    pub status_4xx: i64,
    #[serde(default)]
    pub status_429: i64,
    #[serde(default)]
    pub status_5xx: i64,
    /// Calls that got no answer: connection refused, DNS failure, timeout.
    #[serde(default)]
    pub unreachable: i64,
    /// Billed units (tokens, bytes…) for `cost_per_unit_usd`.
    #[serde(default)]
    pub units: f64,
}

/// Validates a usage report (`field` names the list, e.g. `usage`):
/// negative or absurd numbers are refused naming the entry and field.
pub fn validate_usage(field: &str, usage: &[ResourceUsage]) -> Result<(), ValidationError> {
    if usage.len() > MAX_USAGE_ENTRIES {
        return Err(ValidationError::new(
            field,
            format!("at most {MAX_USAGE_ENTRIES} resources per report"),
        ));
    }
    let mut seen = BTreeSet::new();
    for (i, u) in usage.iter().enumerate() {
        let at = |f: &str| format!("{field}[{i}].{f}");
        StepKind::parse(&at("resource"), &u.resource)?;
        if !seen.insert(u.resource.as_str()) {
            return Err(ValidationError::new(
                at("resource"),
                "named twice in one report",
            ));
        }
        for (f, v) in [
            ("calls", u.calls),
            ("status_2xx", u.status_2xx),
            ("status_4xx", u.status_4xx),
            ("status_429", u.status_429),
            ("status_5xx", u.status_5xx),
            ("unreachable", u.unreachable),
        ] {
            if !(0..=MAX_CALLS_PER_STEP).contains(&v) {
                return Err(ValidationError::new(
                    at(f),
                    format!("must be between 0 and {MAX_CALLS_PER_STEP} for one step"),
                ));
            }
        }
        for (f, v) in [
            ("latency_p50_ms", u.latency_p50_ms),
            ("latency_max_ms", u.latency_max_ms),
        ] {
            if !v.is_finite() || !(0.0..=MAX_LATENCY_MS).contains(&v) {
                return Err(ValidationError::new(
                    at(f),
                    "must be between 0 and 3600000 ms (one hour)",
                ));
            }
        }
        if u.latency_p50_ms > u.latency_max_ms {
            return Err(ValidationError::new(
                at("latency_p50_ms"),
                "must not be above latency_max_ms",
            ));
        }
        if !u.units.is_finite() || !(0.0..=1e12).contains(&u.units) {
            return Err(ValidationError::new(
                at("units"),
                "must be between 0 and 1e12",
            ));
        }
    }
    Ok(())
}

/// One controller window's aggregated usage of a resource.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct WindowStats {
    pub calls: i64,
    /// The calls-weighted mean of the reported p50 latencies.
    pub latency_ms: f64,
    pub latency_max_ms: f64,
    pub status_2xx: i64,
    pub status_4xx: i64,
    pub status_429: i64,
    pub status_5xx: i64,
    pub unreachable: i64,
}

impl WindowStats {
    /// Share of classified calls that were not 2xx (unreachable calls count
    /// as errors; 0 without classified calls).
    pub fn error_rate(&self) -> f64 {
        let classified = self.status_2xx + self.errors();
        if classified <= 0 {
            return 0.0;
        }
        self.errors() as f64 / classified as f64
    }

    /// Calls that were answered with an error or not answered at all.
    pub fn errors(&self) -> i64 {
        self.status_4xx + self.status_429 + self.status_5xx + self.unreachable
    }

    /// Calls that failed because the upstream was unavailable (5xx or no
    /// answer).
    pub fn unavailable(&self) -> i64 {
        self.status_5xx + self.unreachable
    }

    /// Calls the upstream answered with anything but a 5xx: proof it is up.
    pub fn answered_otherwise(&self) -> i64 {
        self.status_2xx + self.status_4xx + self.status_429
    }

    /// An upstream outage in this window: at least `min_calls` calls failed
    /// as unavailable and the upstream answered none otherwise.
    pub fn is_outage(&self, min_calls: i64) -> bool {
        self.unavailable() >= min_calls.max(1) && self.answered_otherwise() == 0
    }
}

/// Why the controller moved (or kept) the rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RateReason {
    /// No calls in the window: no evidence, no change.
    Idle,
    /// Enough 429 answers: multiplicative decrease (halved).
    Throttled,
    /// Latency above the high threshold: additive decrease.
    Slow,
    /// Latency below the low threshold: additive increase.
    Fast,
    /// Latency between the thresholds.
    Steady,
}

impl RateReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Throttled => "throttled",
            Self::Slow => "slow",
            Self::Fast => "fast",
            Self::Steady => "steady",
        }
    }
}

/// The AIMD controller's decision for one window: a 429 burst halves the
/// rate whatever the latency; else latency above `latency_high_ms` lowers
/// it by `decrease_step`, below `latency_low_ms` raises it by
/// `increase_step`; always clamped to `[min_rate, max_rate]`.
pub fn next_rate(limits: &ResourceLimits, rate: f64, window: &WindowStats) -> (f64, RateReason) {
    let (raw, reason) = if window.calls <= 0 && window.status_429 <= 0 {
        (rate, RateReason::Idle)
    } else if window.status_429 >= limits.throttle_burst {
        (rate / 2.0, RateReason::Throttled)
    } else if window.latency_ms > limits.latency_high_ms {
        (rate - limits.decrease_step, RateReason::Slow)
    } else if window.latency_ms < limits.latency_low_ms {
        (rate + limits.increase_step, RateReason::Fast)
    } else {
        (rate, RateReason::Steady)
    };
    (limits.clamp(raw), reason)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn limits() -> ResourceLimits {
        ResourceLimits::with_kinds(vec![StepKind::parse("kind", "post_x").expect("kind")])
    }

    fn window(latency_ms: f64, s429: i64) -> WindowStats {
        WindowStats {
            calls: 100,
            latency_ms,
            latency_max_ms: latency_ms,
            status_2xx: 100 - s429,
            status_429: s429,
            ..WindowStats::default()
        }
    }

    #[test]
    fn aimd_table_latency_series_to_rate_series() {
        // (window latency ms, 429s) → rate after the window, from 150.
        let series: Vec<(f64, i64, f64, RateReason)> = vec![
            (300.0, 0, 155.0, RateReason::Fast),
            (300.0, 0, 160.0, RateReason::Fast),
            (500.0, 0, 160.0, RateReason::Steady),
            (800.0, 0, 150.0, RateReason::Slow),
            // The ceiling: 150 + 5 × n stops at 200.
            (100.0, 0, 155.0, RateReason::Fast),
            (100.0, 0, 160.0, RateReason::Fast),
            (100.0, 0, 165.0, RateReason::Fast),
            (100.0, 0, 170.0, RateReason::Fast),
            (100.0, 0, 175.0, RateReason::Fast),
            (100.0, 0, 180.0, RateReason::Fast),
            (100.0, 0, 185.0, RateReason::Fast),
            (100.0, 0, 190.0, RateReason::Fast),
            (100.0, 0, 195.0, RateReason::Fast),
            (100.0, 0, 200.0, RateReason::Fast),
            (100.0, 0, 200.0, RateReason::Fast),
            // A 429 burst halves whatever the latency: 200 → 100 (the floor).
            (100.0, 3, 100.0, RateReason::Throttled),
            // Two 429s are not a burst.
            (100.0, 2, 105.0, RateReason::Fast),
            // The floor: slow windows stop at 100.
            (900.0, 0, 100.0, RateReason::Slow),
            (900.0, 0, 100.0, RateReason::Slow),
            (700.0, 0, 100.0, RateReason::Steady),
            (399.0, 0, 105.0, RateReason::Fast),
        ];
        let l = limits();
        let mut rate = 150.0;
        for (i, (latency, s429, want, reason)) in series.into_iter().enumerate() {
            let (next, why) = next_rate(&l, rate, &window(latency, s429));
            assert_eq!(
                (next, why),
                (want, reason),
                "window {i}: {latency} ms, {s429}×429"
            );
            rate = next;
        }
        // No calls: no change.
        assert_eq!(
            next_rate(&l, rate, &WindowStats::default()),
            (rate, RateReason::Idle)
        );
        // Halving from above the floor: 200 → 100, 180 with a higher max → 90 clamped.
        let mut wide = limits();
        wide.min_rate = 10.0;
        assert_eq!(next_rate(&wide, 180.0, &window(100.0, 5)).0, 90.0);
    }

    #[test]
    fn resources_parse_with_defaults() {
        let r: Resources =
            serde_json::from_value(json!({"twitterapi": {"kinds": ["post_x"]}})).expect("parse");
        let t = &r.0["twitterapi"];
        assert_eq!(
            (
                t.initial_rate,
                t.min_rate,
                t.max_rate,
                t.window_seconds,
                t.violation_rate
            ),
            (150.0, 100.0, 200.0, 10.0, 210.0)
        );
        assert_eq!(t.on_trip, TripAction::EmergencyStop);
        r.validate("value_json").expect("valid");
        let post_x = StepKind::parse("k", "post_x").expect("kind");
        let needs = r.needs(&[post_x.clone(), post_x]);
        assert_eq!(needs, vec![("post_x".into(), "twitterapi".into(), 1.0)]);
        assert!(r.governed_kinds().contains("post_x"));
    }

    #[test]
    fn bad_resources_name_the_field() {
        let table = vec![
            (json!({"api": {"kinds": []}}), "value_json.api.kinds"),
            (
                json!({"api": {"kinds": ["a"], "min_rate": 300, "max_rate": 200, "initial_rate": 250}}),
                "value_json.api.min_rate",
            ),
            (
                json!({"api": {"kinds": ["a"], "window_seconds": 0.5}}),
                "value_json.api.window_seconds",
            ),
            (
                json!({"api": {"kinds": ["a"], "initial_rate": 500}}),
                "value_json.api.initial_rate",
            ),
            (
                json!({"api": {"kinds": ["a"], "latency_low_ms": 900}}),
                "value_json.api.latency_low_ms",
            ),
            (json!({"Bad Name": {"kinds": ["a"]}}), "value_json.Bad Name"),
            (
                json!({"api": {"kinds": ["a"], "error_rate_alert": 2}}),
                "value_json.api.error_rate_alert",
            ),
            (
                json!({"api": {"kinds": ["a"], "failures_trip": 0}}),
                "value_json.api.failures_trip",
            ),
            (
                json!({"api": {"kinds": ["a"], "throttle_burst": 0}}),
                "value_json.api.throttle_burst",
            ),
            (
                json!({"api": {"kinds": ["a"], "increase_step": -1}}),
                "value_json.api.increase_step",
            ),
            (
                json!({"api": {"kinds": ["a"], "outage_min_calls": 0}}),
                "value_json.api.outage_min_calls",
            ),
            (
                json!({"api": {"kinds": ["a"], "outage_probe": "no spaces"}}),
                "value_json.api.outage_probe",
            ),
            (
                json!({"api": {"kinds": ["a"], "outage_probe": ""}}),
                "value_json.api.outage_probe",
            ),
        ];
        for (value, field) in table {
            let r: Resources = serde_json::from_value(value.clone()).expect("shape");
            let e = r.validate("value_json").expect_err("invalid");
            assert_eq!(e.field, field, "{value}");
        }
    }

    fn usage(resource: &str, calls: i64) -> ResourceUsage {
        ResourceUsage {
            resource: resource.into(),
            calls,
            latency_p50_ms: 100.0,
            latency_max_ms: 200.0,
            status_2xx: calls,
            ..ResourceUsage::default()
        }
    }

    #[test]
    fn usage_validation_table() {
        validate_usage("usage", &[usage("api", 3)]).expect("valid");
        let mut slow = usage("api", 1);
        slow.latency_max_ms = MAX_LATENCY_MS + 1.0;
        let mut negative = usage("api", 1);
        negative.latency_p50_ms = -1.0;
        let mut inverted = usage("api", 1);
        inverted.latency_p50_ms = 300.0;
        let mut s5 = usage("api", 1);
        s5.status_5xx = -2;
        let mut units = usage("api", 1);
        units.units = f64::NAN;
        let mut unreachable = usage("api", 1);
        unreachable.unreachable = -1;
        let table = vec![
            (vec![usage("api", -1)], "usage[0].calls"),
            (vec![usage("api", MAX_CALLS_PER_STEP + 1)], "usage[0].calls"),
            (vec![usage("ok", 1), slow], "usage[1].latency_max_ms"),
            (vec![negative], "usage[0].latency_p50_ms"),
            (vec![inverted], "usage[0].latency_p50_ms"),
            (vec![s5], "usage[0].status_5xx"),
            (vec![units], "usage[0].units"),
            (vec![unreachable], "usage[0].unreachable"),
            (vec![usage("", 1)], "usage[0].resource"),
            (vec![usage("a", 1), usage("a", 1)], "usage[1].resource"),
            (vec![usage("a", 1); MAX_USAGE_ENTRIES + 1], "usage"),
        ];
        for (report, field) in table {
            let e = validate_usage("usage", &report).expect_err("invalid");
            assert_eq!(e.field, field, "{report:?}");
        }
    }

    #[test]
    fn pricing_turns_calls_into_cost() {
        let p: Pricing = serde_json::from_value(json!({
            "twitterapi": {"cost_per_call_usd": 0.00015},
            "llm": {"cost_per_call_usd": 0.0, "cost_per_unit_usd": 0.000002},
        }))
        .expect("parse");
        p.validate("value_json").expect("valid");
        let mut llm = usage("llm", 1);
        llm.units = 1000.0;
        let cost = p.cost_of(&[usage("twitterapi", 10), llm, usage("free", 5)]);
        assert!((cost - (0.0015 + 0.002)).abs() < 1e-12, "{cost}");
        let bad: Pricing =
            serde_json::from_value(json!({"x": {"cost_per_call_usd": -1}})).expect("shape");
        assert_eq!(
            bad.validate("value_json").expect_err("bad").field,
            "value_json.x.cost_per_call_usd"
        );
    }

    #[test]
    fn window_error_rate() {
        let w = WindowStats {
            calls: 10,
            status_2xx: 8,
            status_5xx: 1,
            status_429: 1,
            ..WindowStats::default()
        };
        assert!((w.error_rate() - 0.2).abs() < 1e-12);
        assert_eq!(WindowStats::default().error_rate(), 0.0);
        // Calls that got no answer are errors too.
        let w = WindowStats {
            unreachable: 2,
            ..w
        };
        assert!((w.error_rate() - 4.0 / 12.0).abs() < 1e-12);
    }

    #[test]
    fn outage_table() {
        let w = |s2: i64, s4: i64, s429: i64, s5: i64, unreachable: i64| WindowStats {
            calls: s2 + s4 + s429 + s5 + unreachable,
            status_2xx: s2,
            status_4xx: s4,
            status_429: s429,
            status_5xx: s5,
            unreachable,
            ..WindowStats::default()
        };
        // (window, min calls, outage?)
        let table = [
            (w(0, 0, 0, 5, 0), 5, true),
            (w(0, 0, 0, 0, 5), 5, true),
            (w(0, 0, 0, 3, 2), 5, true),
            (w(0, 0, 0, 4, 0), 5, false),
            // One success, a 4xx or a 429: the upstream answers.
            (w(1, 0, 0, 9, 0), 5, false),
            (w(0, 1, 0, 9, 0), 5, false),
            (w(0, 0, 1, 9, 0), 5, false),
            (WindowStats::default(), 5, false),
            (WindowStats::default(), 0, false),
            (w(0, 0, 0, 1, 0), 1, true),
        ];
        for (i, (window, min, want)) in table.into_iter().enumerate() {
            assert_eq!(window.is_outage(min), want, "row {i}: {window:?}");
        }
        let defaults = limits();
        assert_eq!(
            (defaults.outage_min_calls, defaults.outage_probe),
            (5, None)
        );
    }
}
