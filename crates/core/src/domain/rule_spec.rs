//! The written shapes of what operators author for the heartbeat: trigger
//! conditions, proposal templates (trigger actions and reaction templates)
//! and reaction patterns. One typed parse, naming the offending path, serves
//! the api (refusing a bad rule or policy before it is stored) and the
//! heartbeat (turning the spec into its evaluable form). These types are also
//! the source of `docs/reference/` (JSON Schema via the `schema` feature), so
//! the reference cannot drift from what is accepted.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::input::{StepKind, ValidationError, json_depth};

/// Longest window or cooldown a spec may name: one year, in seconds.
pub const MAX_SPEC_SECONDS: u64 = 366 * 86_400;

/// Deepest JSON a condition may nest (`all`/`any` inside each other).
const MAX_CONDITION_DEPTH: usize = 12;

/// Deserialises `value` as `T`, naming the path of the first problem below
/// `field` (a missing field is named itself, with reason "required").
pub fn parse_json<T: DeserializeOwned>(field: &str, value: &Value) -> Result<T, ValidationError> {
    serde_path_to_error::deserialize(value).map_err(|error| {
        let inner = error.path().to_string();
        let path = match inner.as_str() {
            "." => field.to_owned(),
            p if p.starts_with('[') => format!("{field}{p}"),
            p => format!("{field}.{p}"),
        };
        let reason = error.into_inner().to_string();
        match reason
            .strip_prefix("missing field `")
            .and_then(|rest| rest.split('`').next())
        {
            Some(name) => ValidationError::new(format!("{path}.{name}"), "required"),
            None => ValidationError::new(path, reason),
        }
    })
}

/// Which events a condition counts or a reaction pattern answers. Every
/// given part must match; an empty filter matches every event.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct EventFilter {
    /// Glob on the event kind (`*` matches any run of characters), e.g.
    /// `step.failed` or `post.*`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Glob on the event source (`api`, `heartbeat`, `worker:<name>`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Tags the event must all carry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Payload path (`a.b`, `items.0.id`) → the exact JSON value expected there.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub payload: BTreeMap<String, Value>,
}

fn default_failure_kind() -> String {
    "step.failed".into()
}

fn default_success_kind() -> String {
    "step.succeeded".into()
}

fn one() -> u64 {
    1
}

/// A trigger condition (`condition_json` of a trigger rule), selected by
/// `type`. Event windows count events whose `created_at` is within the last
/// `window_seconds`; a rule fires once per fact window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ConditionSpec {
    /// At least `min_count` matching events within the window.
    EventCount {
        #[serde(flatten)]
        events: EventFilter,
        /// The window, in seconds (1 to one year).
        window_seconds: u64,
        /// Matching events needed (at least 1).
        min_count: u64,
    },
    /// failures ÷ (failures + successes) within the window reaches
    /// `threshold`, once at least `min_events` outcomes were seen.
    FailureRate {
        /// Glob on the kind of failure events.
        #[serde(default = "default_failure_kind")]
        failure_kind: String,
        /// Glob on the kind of success events.
        #[serde(default = "default_success_kind")]
        success_kind: String,
        /// The window, in seconds (1 to one year).
        window_seconds: u64,
        /// The failure ratio that fires, in (0, 1].
        threshold: f64,
        /// Outcomes needed before the ratio counts (at least 1).
        #[serde(default = "one")]
        min_events: u64,
    },
    /// No matching event within the window: a dead man's switch.
    Absence {
        #[serde(flatten)]
        events: EventFilter,
        /// The window, in seconds (1 to one year).
        window_seconds: u64,
    },
    /// At least `min_count` running missions with no activity for
    /// `older_than_seconds`.
    StalledMissions {
        /// Idle time that makes a running mission stalled, in seconds.
        older_than_seconds: u64,
        /// Stalled missions needed (at least 1).
        #[serde(default = "one")]
        min_count: u64,
    },
    /// Every listed condition holds.
    All {
        /// One or more conditions.
        conditions: Vec<ConditionSpec>,
    },
    /// At least one listed condition holds.
    Any {
        /// One or more conditions.
        conditions: Vec<ConditionSpec>,
    },
}

/// The names of [`ConditionSpec`]'s types, as written in `type`.
pub const CONDITION_TYPES: &[&str] = &[
    "event_count",
    "failure_rate",
    "absence",
    "stalled_missions",
    "all",
    "any",
];

fn seconds(field: &str, key: &str, value: u64) -> Result<(), ValidationError> {
    if value == 0 || value > MAX_SPEC_SECONDS {
        return Err(ValidationError::new(
            format!("{field}.{key}"),
            "must be a positive number of seconds (at most a year)",
        ));
    }
    Ok(())
}

fn positive(field: &str, key: &str, value: u64) -> Result<(), ValidationError> {
    if value == 0 {
        return Err(ValidationError::new(
            format!("{field}.{key}"),
            "must be a positive whole number",
        ));
    }
    Ok(())
}

impl ConditionSpec {
    /// Parses and validates a stored or submitted condition, naming the
    /// offending path below `field`.
    pub fn parse(field: &str, value: &Value) -> Result<Self, ValidationError> {
        if json_depth(value) > MAX_CONDITION_DEPTH {
            return Err(ValidationError::new(field, "nested too deep"));
        }
        match value.get("type").and_then(Value::as_str) {
            None => {
                return Err(ValidationError::new(
                    format!("{field}.type"),
                    format!("required, one of {}", CONDITION_TYPES.join(", ")),
                ));
            }
            Some(kind) if !CONDITION_TYPES.contains(&kind) => {
                return Err(ValidationError::new(
                    format!("{field}.type"),
                    format!(
                        "unknown condition type {kind:?} (one of {})",
                        CONDITION_TYPES.join(", ")
                    ),
                ));
            }
            // Parsed item by item, so an error names its index (serde's
            // buffering of tagged enums loses the path below the tag).
            Some(kind @ ("all" | "any")) => {
                let conditions = value
                    .get("conditions")
                    .and_then(Value::as_array)
                    .filter(|items| !items.is_empty())
                    .ok_or_else(|| {
                        ValidationError::new(
                            format!("{field}.conditions"),
                            "must be a non-empty array",
                        )
                    })?
                    .iter()
                    .enumerate()
                    .map(|(i, c)| Self::parse(&format!("{field}.conditions[{i}]"), c))
                    .collect::<Result<Vec<_>, _>>()?;
                return Ok(if kind == "all" {
                    Self::All { conditions }
                } else {
                    Self::Any { conditions }
                });
            }
            Some(_) => {}
        }
        let spec: Self = parse_json(field, value)?;
        spec.validate(field)?;
        Ok(spec)
    }

    fn validate(&self, field: &str) -> Result<(), ValidationError> {
        match self {
            Self::EventCount {
                window_seconds,
                min_count,
                ..
            } => {
                seconds(field, "window_seconds", *window_seconds)?;
                positive(field, "min_count", *min_count)
            }
            Self::FailureRate {
                window_seconds,
                threshold,
                min_events,
                ..
            } => {
                seconds(field, "window_seconds", *window_seconds)?;
                if !(*threshold > 0.0 && *threshold <= 1.0) {
                    return Err(ValidationError::new(
                        format!("{field}.threshold"),
                        "must be in (0, 1]",
                    ));
                }
                positive(field, "min_events", *min_events)
            }
            Self::Absence { window_seconds, .. } => {
                seconds(field, "window_seconds", *window_seconds)
            }
            Self::StalledMissions {
                older_than_seconds,
                min_count,
            } => {
                seconds(field, "older_than_seconds", *older_than_seconds)?;
                positive(field, "min_count", *min_count)
            }
            Self::All { conditions } | Self::Any { conditions } => {
                if conditions.is_empty() {
                    return Err(ValidationError::new(
                        format!("{field}.conditions"),
                        "must be a non-empty array",
                    ));
                }
                conditions
                    .iter()
                    .enumerate()
                    .try_for_each(|(i, c)| c.validate(&format!("{field}.conditions[{i}]")))
            }
        }
    }
}

/// One step of a [`ProposalTemplate`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct TemplateStep {
    /// The step kind (`[a-z0-9_.-]`, e.g. `post_x`); selects workers and gates.
    pub kind: String,
    /// The step's input, handed to the worker; placeholders are rendered.
    #[serde(default = "empty_object")]
    pub payload: Value,
    /// Attempts before the step is dead-lettered; the policy's
    /// `worker_policy.max_attempts` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
}

fn empty_object() -> Value {
    Value::Object(serde_json::Map::new())
}

/// The proposal a trigger (its `action_json`) or a reaction pattern (its
/// `template`) submits through the single entry point, gated like any
/// other. Every string may hold `{{name}}` placeholders, rendered when it
/// fires: the event's `{{event.id}}`, `{{event.kind}}`, `{{event.source}}`,
/// `{{event.seq}}`, `{{event.tags}}`, `{{event.payload}}` and
/// `{{event.payload.PATH}}` (reactions, and triggers fired by an event);
/// `{{rule.id}}`, `{{rule.name}}`, `{{window}}` and `{{detail.PATH}}`
/// (triggers). Unknown names render empty. A string that is exactly one
/// placeholder takes the variable's JSON value, so numbers stay numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ProposalTemplate {
    /// The proposal's title (required, not blank).
    pub title: String,
    /// One or more steps, run in order unless `parallel`.
    pub steps: Vec<TemplateStep>,
    /// The agent the proposal is for; the trigger's or pattern's target when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// Run the steps in parallel instead of in order.
    #[serde(default)]
    pub parallel: bool,
    /// Extra metadata stored with the proposal (an object); the firing adds its own keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Map<String, Value>>,
}

impl ProposalTemplate {
    /// Parses a template as written (before rendering), naming the
    /// offending path. Step kinds must be valid kinds unless they are
    /// placeholders rendered at firing time.
    pub fn parse(field: &str, value: &Value) -> Result<Self, ValidationError> {
        if !value.is_object() {
            return Err(ValidationError::new(field, "must be a JSON object"));
        }
        let template: Self = parse_json(field, value)?;
        if template.title.trim().is_empty() {
            return Err(ValidationError::new(format!("{field}.title"), "required"));
        }
        if template.steps.is_empty() {
            return Err(ValidationError::new(
                format!("{field}.steps"),
                "must be a non-empty array",
            ));
        }
        for (i, step) in template.steps.iter().enumerate() {
            if !step.kind.contains("{{") {
                StepKind::parse(&format!("{field}.steps[{i}].kind"), &step.kind)?;
            }
        }
        Ok(template)
    }
}

fn full_probability() -> f64 {
    1.0
}

/// One pattern of the `reaction_matrix` policy: an event matching it may
/// cause a proposal for `target`, with `probability`, at most once per
/// `cooldown_seconds` per (pattern, target).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ReactionPatternSpec {
    /// Stable name of the pattern (its cooldown and audit key).
    pub id: String,
    #[serde(flatten)]
    pub events: EventFilter,
    /// The agent the proposal is for.
    pub target: String,
    /// Chance in [0, 1] that a matching event reacts; decided from (event
    /// id, pattern id), so a replay decides the same.
    #[serde(default = "full_probability")]
    pub probability: f64,
    /// Least time between two reactions of this pattern for this target.
    #[serde(default)]
    pub cooldown_seconds: u64,
    /// The proposal to submit.
    pub template: ProposalTemplate,
}

impl ReactionPatternSpec {
    /// Parses and validates one pattern, naming the offending path.
    pub fn parse(field: &str, value: &Value) -> Result<Self, ValidationError> {
        let spec: Self = parse_json(field, value)?;
        for (key, text) in [("id", &spec.id), ("target", &spec.target)] {
            if text.trim().is_empty() {
                return Err(ValidationError::new(format!("{field}.{key}"), "required"));
            }
        }
        if !(0.0..=1.0).contains(&spec.probability) {
            return Err(ValidationError::new(
                format!("{field}.probability"),
                "must be in [0, 1]",
            ));
        }
        if spec.cooldown_seconds > MAX_SPEC_SECONDS {
            return Err(ValidationError::new(
                format!("{field}.cooldown_seconds"),
                "must be at most a year",
            ));
        }
        ProposalTemplate::parse(&format!("{field}.template"), &value["template"])?;
        Ok(spec)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn conditions_parse_with_defaults_and_name_the_bad_path() {
        let rate = ConditionSpec::parse(
            "c",
            &json!({"type": "failure_rate", "window_seconds": 60, "threshold": 0.5}),
        )
        .expect("parses");
        assert_eq!(
            rate,
            ConditionSpec::FailureRate {
                failure_kind: "step.failed".into(),
                success_kind: "step.succeeded".into(),
                window_seconds: 60,
                threshold: 0.5,
                min_events: 1,
            }
        );
        let count = ConditionSpec::parse(
            "c",
            &json!({"type": "event_count", "kind": "post.*", "tags": ["x"],
                    "payload": {"a.b": 1}, "window_seconds": 60, "min_count": 2}),
        )
        .expect("parses");
        let ConditionSpec::EventCount { events, .. } = count else {
            panic!("event_count")
        };
        assert_eq!(events.kind.as_deref(), Some("post.*"));
        assert_eq!(events.payload.get("a.b"), Some(&json!(1)));

        let table: Vec<(Value, &str)> = vec![
            (json!({}), "c.type"),
            (json!({"type": "sometimes"}), "c.type"),
            (
                json!({"type": "any", "conditions": [{"type": "absence"}]}),
                "c.conditions[0].window_seconds",
            ),
            (json!({"type": "all", "conditions": []}), "c.conditions"),
            (
                json!({"type": "absence", "window_seconds": 0}),
                "c.window_seconds",
            ),
            (
                json!({"type": "absence", "window_seconds": MAX_SPEC_SECONDS + 1}),
                "c.window_seconds",
            ),
            (
                json!({"type": "failure_rate", "window_seconds": 60, "threshold": 1.5}),
                "c.threshold",
            ),
            (
                json!({"type": "event_count", "window_seconds": 60, "min_count": 0}),
                "c.min_count",
            ),
            (
                json!({"type": "all", "conditions": [{"type": "absence", "window_seconds": 5},
                      {"type": "stalled_missions", "older_than_seconds": 0}]}),
                "c.conditions[1].older_than_seconds",
            ),
        ];
        for (spec, path) in table {
            let err = ConditionSpec::parse("c", &spec).expect_err("bad");
            assert_eq!(err.field, path, "{spec}: {err}");
        }
        let wrong_type = ConditionSpec::parse(
            "c",
            &json!({"type": "absence", "kind": 3, "window_seconds": 5}),
        )
        .expect_err("bad");
        assert!(wrong_type.reason.contains("invalid type"), "{wrong_type}");
    }

    #[test]
    fn templates_and_patterns_name_the_bad_path() {
        let ok = json!({"id": "p", "kind": "post.failed", "target": "ops",
                        "template": {"title": "look at {{event.kind}}", "steps": [{"kind": "analyze"}]}});
        let pattern = ReactionPatternSpec::parse("patterns[0]", &ok).expect("parses");
        assert_eq!(pattern.probability, 1.0);
        assert_eq!(pattern.template.steps[0].payload, json!({}));

        let table: Vec<(Value, &str)> = vec![
            (json!({"id": "p", "target": "t"}), "patterns[0].template"),
            (
                json!({"id": " ", "target": "t", "template": ok["template"]}),
                "patterns[0].id",
            ),
            (
                json!({"id": "p", "target": "t", "probability": 2, "template": ok["template"]}),
                "patterns[0].probability",
            ),
            (
                json!({"id": "p", "target": "t", "template": {"title": "x", "steps": []}}),
                "patterns[0].template.steps",
            ),
            (
                json!({"id": "p", "target": "t",
                       "template": {"title": "x", "steps": [{"kind": "Bad Kind"}]}}),
                "patterns[0].template.steps[0].kind",
            ),
            (
                json!({"id": "p", "target": "t", "template": {"title": "", "steps": [{"kind": "a"}]}}),
                "patterns[0].template.title",
            ),
        ];
        for (spec, path) in table {
            let err = ReactionPatternSpec::parse("patterns[0]", &spec).expect_err("bad");
            assert_eq!(err.field, path, "{spec}: {err}");
        }
        // A placeholder kind is rendered at firing time, so it is not judged here.
        ProposalTemplate::parse(
            "action",
            &json!({"title": "t", "steps": [{"kind": "{{event.payload.kind}}"}]}),
        )
        .expect("placeholder kind");
    }
}
