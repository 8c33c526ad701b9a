//! Inputs parsed at the boundary ("parse, don't validate"): step kinds,
//! dedupe keys, JSON documents with size and depth limits, whole proposals and
//! events. A value of these types is valid by construction; the gRPC layer
//! maps [`ValidationError`] to `INVALID_ARGUMENT` naming the field.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A rejected input: which field, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct ValidationError {
    pub field: String,
    pub reason: String,
}

impl ValidationError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Size limits on everything a client sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_steps: usize,
    pub max_payload_bytes: usize,
    pub max_json_depth: usize,
    pub max_title_chars: usize,
    pub max_name_chars: usize,
    pub max_dedupe_key_chars: usize,
    pub max_kind_chars: usize,
    pub max_tags: usize,
    pub max_tag_chars: usize,
    pub max_text_chars: usize,
    pub max_attempts: u32,
}

impl Limits {
    pub const DEFAULT: Limits = Limits {
        max_steps: 50,
        max_payload_bytes: 64 * 1024,
        max_json_depth: 16,
        max_title_chars: 200,
        max_name_chars: 128,
        max_dedupe_key_chars: 200,
        max_kind_chars: 64,
        max_tags: 32,
        max_tag_chars: 128,
        max_text_chars: 4096,
        max_attempts: 20,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// A required, trimmed-nonempty string of at most `max` characters.
pub fn text(field: &str, value: &str, max: usize) -> Result<String, ValidationError> {
    if value.trim().is_empty() {
        return Err(ValidationError::new(field, "must not be empty"));
    }
    bounded(field, value, max)
}

/// A possibly empty string of at most `max` characters.
pub fn bounded(field: &str, value: &str, max: usize) -> Result<String, ValidationError> {
    if value.chars().count() > max {
        return Err(ValidationError::new(
            field,
            format!("longer than {max} characters"),
        ));
    }
    if value
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err(ValidationError::new(field, "contains control characters"));
    }
    Ok(value.to_owned())
}

/// Lowercase word: `[a-z][a-z0-9_.:-]*`, at most `max` characters.
fn identifier(field: &str, value: &str, max: usize) -> Result<String, ValidationError> {
    if value.is_empty() {
        return Err(ValidationError::new(field, "must not be empty"));
    }
    if value.len() > max {
        return Err(ValidationError::new(
            field,
            format!("longer than {max} characters"),
        ));
    }
    let mut bytes = value.bytes();
    let first_ok = bytes.next().is_some_and(|b| b.is_ascii_lowercase());
    let rest_ok = bytes.all(|b| {
        b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b':' | b'-')
    });
    if !(first_ok && rest_ok) {
        return Err(ValidationError::new(
            field,
            "must start with a lowercase letter and use only a-z, 0-9, '_', '.', ':', '-'",
        ));
    }
    Ok(value.to_owned())
}

/// A step kind: selects workers and gates.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct StepKind(String);

impl TryFrom<String> for StepKind {
    type Error = ValidationError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse("kind", &value)
    }
}

impl From<StepKind> for String {
    fn from(kind: StepKind) -> Self {
        kind.0
    }
}

#[cfg(feature = "schema")]
impl schemars::JsonSchema for StepKind {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "StepKind".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "A step kind: a lowercase letter, then a-z, 0-9, '_', '.', ':' or '-' (at most 64).",
            "pattern": "^[a-z][a-z0-9_.:-]{0,63}$"
        })
    }
}

impl StepKind {
    pub fn parse(field: &str, value: &str) -> Result<Self, ValidationError> {
        identifier(field, value, Limits::DEFAULT.max_kind_chars).map(Self)
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for StepKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<&str> for StepKind {
    type Error = ValidationError;
    fn try_from(value: &str) -> Result<Self, Self::Error> {
        Self::parse("kind", value)
    }
}

/// An event kind, e.g. `step.failed` or `engagement:high`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventKind(String);

impl EventKind {
    pub fn parse(field: &str, value: &str) -> Result<Self, ValidationError> {
        identifier(field, value, 128).map(Self)
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A client's idempotency key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DedupeKey(String);

impl DedupeKey {
    pub fn parse(field: &str, value: &str) -> Result<Self, ValidationError> {
        if value.is_empty() {
            return Err(ValidationError::new(field, "must not be empty when given"));
        }
        if value.chars().count() > Limits::DEFAULT.max_dedupe_key_chars {
            return Err(ValidationError::new(
                field,
                format!(
                    "longer than {} characters",
                    Limits::DEFAULT.max_dedupe_key_chars
                ),
            ));
        }
        if value.chars().any(char::is_control) {
            return Err(ValidationError::new(field, "contains control characters"));
        }
        Ok(Self(value.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A JSON document within the size and depth limits. Empty text means `{}`.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonDocument(serde_json::Value);

impl JsonDocument {
    pub fn parse(field: &str, text: &str, limits: &Limits) -> Result<Self, ValidationError> {
        if text.trim().is_empty() {
            return Ok(Self(serde_json::json!({})));
        }
        if text.len() > limits.max_payload_bytes {
            return Err(ValidationError::new(
                field,
                format!("larger than {} bytes", limits.max_payload_bytes),
            ));
        }
        let value: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| ValidationError::new(field, format!("not valid JSON: {e}")))?;
        Self::from_value(field, value, limits)
    }

    pub fn from_value(
        field: &str,
        value: serde_json::Value,
        limits: &Limits,
    ) -> Result<Self, ValidationError> {
        let depth = json_depth(&value);
        if depth > limits.max_json_depth {
            return Err(ValidationError::new(
                field,
                format!("nested {depth} deep, more than {}", limits.max_json_depth),
            ));
        }
        Ok(Self(value))
    }

    pub fn value(&self) -> &serde_json::Value {
        &self.0
    }

    pub fn into_value(self) -> serde_json::Value {
        self.0
    }
}

/// Nesting depth: a scalar is 0, `[]` or `{}` is 1.
pub fn json_depth(value: &serde_json::Value) -> usize {
    match value {
        serde_json::Value::Array(items) => 1 + items.iter().map(json_depth).max().unwrap_or(0),
        serde_json::Value::Object(map) => 1 + map.values().map(json_depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// Where a proposal came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProposalSource {
    Api,
    Trigger,
    Reaction,
    Manual,
}

impl ProposalSource {
    pub fn as_str(self) -> &'static str {
        match self {
            ProposalSource::Api => "api",
            ProposalSource::Trigger => "trigger",
            ProposalSource::Reaction => "reaction",
            ProposalSource::Manual => "manual",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "api" => Some(Self::Api),
            "trigger" => Some(Self::Trigger),
            "reaction" => Some(Self::Reaction),
            "manual" => Some(Self::Manual),
            _ => None,
        }
    }
}

/// One step a proposal asks for, as stored in `proposals.steps`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepSpec {
    pub kind: StepKind,
    pub payload: serde_json::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
}

impl StepSpec {
    /// Parses step `index` of a request (fields named `steps[i].…`).
    pub fn parse(
        index: usize,
        kind: &str,
        payload_json: &str,
        max_attempts: Option<u32>,
        limits: &Limits,
    ) -> Result<Self, ValidationError> {
        let kind = StepKind::parse(&format!("steps[{index}].kind"), kind)?;
        let payload = JsonDocument::parse(
            &format!("steps[{index}].payload_json"),
            payload_json,
            limits,
        )?;
        if let Some(n) = max_attempts
            && (n == 0 || n > limits.max_attempts)
        {
            return Err(ValidationError::new(
                format!("steps[{index}].max_attempts"),
                format!("must be between 1 and {}", limits.max_attempts),
            ));
        }
        Ok(Self {
            kind,
            payload: payload.into_value(),
            max_attempts,
        })
    }
}

/// A proposal as the one entry point accepts it.
#[derive(Debug, Clone, PartialEq)]
pub struct NewProposal {
    pub title: String,
    pub source: ProposalSource,
    pub agent: String,
    pub dedupe_key: Option<DedupeKey>,
    pub steps: Vec<StepSpec>,
    pub parallel: bool,
    pub metadata: serde_json::Value,
    pub trace_id: Option<String>,
}

impl NewProposal {
    /// Checks the whole-proposal limits (title, agent, step count, metadata);
    /// steps are parsed one by one with [`StepSpec::parse`] before.
    pub fn validate(mut self, limits: &Limits) -> Result<Self, ValidationError> {
        self.title = text("title", &self.title, limits.max_title_chars)?;
        self.agent = text("agent", &self.agent, limits.max_name_chars)?;
        if self.steps.is_empty() {
            return Err(ValidationError::new(
                "steps",
                "at least one step is required",
            ));
        }
        if self.steps.len() > limits.max_steps {
            return Err(ValidationError::new(
                "steps",
                format!("more than {} steps", limits.max_steps),
            ));
        }
        self.metadata =
            JsonDocument::from_value("metadata_json", self.metadata, limits)?.into_value();
        if !self.metadata.is_object() {
            return Err(ValidationError::new(
                "metadata_json",
                "must be a JSON object",
            ));
        }
        Ok(self)
    }
}

/// An event as EmitEvent (and the workflow) append it.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub kind: EventKind,
    pub source: String,
    pub payload: serde_json::Value,
    pub tags: Vec<String>,
    pub cost_usd: Option<f64>,
    pub proposal_id: Option<uuid::Uuid>,
    pub mission_id: Option<uuid::Uuid>,
    pub step_id: Option<uuid::Uuid>,
}

impl NewEvent {
    /// Parses the client-given parts of an event.
    pub fn parse(
        kind: &str,
        source: &str,
        payload_json: &str,
        tags: &[String],
        cost_usd: Option<f64>,
        limits: &Limits,
    ) -> Result<Self, ValidationError> {
        let kind = EventKind::parse("kind", kind)?;
        let source = text("source", source, limits.max_name_chars)?;
        let payload = JsonDocument::parse("payload_json", payload_json, limits)?.into_value();
        if tags.len() > limits.max_tags {
            return Err(ValidationError::new(
                "tags",
                format!("more than {} tags", limits.max_tags),
            ));
        }
        for (i, tag) in tags.iter().enumerate() {
            text(&format!("tags[{i}]"), tag, limits.max_tag_chars)?;
        }
        if let Some(cost) = cost_usd {
            check_cost("cost_usd", cost)?;
        }
        Ok(Self {
            kind,
            source,
            payload,
            tags: tags.to_vec(),
            cost_usd,
            proposal_id: None,
            mission_id: None,
            step_id: None,
        })
    }
}

/// A cost must be a finite, non-negative number of dollars.
pub fn check_cost(field: &str, cost: f64) -> Result<f64, ValidationError> {
    if !cost.is_finite() || cost < 0.0 {
        return Err(ValidationError::new(
            field,
            "must be a finite, non-negative amount",
        ));
    }
    Ok(cost)
}

/// Parses a UUID field.
pub fn uuid_field(field: &str, value: &str) -> Result<uuid::Uuid, ValidationError> {
    uuid::Uuid::parse_str(value).map_err(|_| ValidationError::new(field, "not a UUID"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_kinds() {
        let table = [
            ("post_x", true),
            ("engagement:high", true),
            ("a", true),
            ("a.b-c_d:9", true),
            ("", false),
            ("Post", false),
            ("9lives", false),
            ("has space", false),
            ("emoji😀", false),
            (&"k".repeat(64), true),
            (&"k".repeat(65), false),
        ];
        for (value, ok) in table {
            assert_eq!(StepKind::parse("kind", value).is_ok(), ok, "{value:?}");
        }
        let err = StepKind::parse("steps[2].kind", "Bad").expect_err("bad");
        assert_eq!(err.field, "steps[2].kind");
    }

    #[test]
    fn dedupe_keys() {
        assert!(DedupeKey::parse("dedupe_key", "abc-123").is_ok());
        assert!(DedupeKey::parse("dedupe_key", "").is_err());
        assert!(DedupeKey::parse("dedupe_key", &"x".repeat(200)).is_ok());
        assert!(DedupeKey::parse("dedupe_key", &"x".repeat(201)).is_err());
        assert!(DedupeKey::parse("dedupe_key", "a\u{0}b").is_err());
    }

    #[test]
    fn json_limits() {
        let limits = Limits {
            max_payload_bytes: 32,
            max_json_depth: 3,
            ..Limits::DEFAULT
        };
        let table = [
            ("", true),
            ("{}", true),
            ("{\"a\":[[1]]}", true),
            ("{\"a\":[[[1]]]}", false),
            ("{not json", false),
            (&format!("\"{}\"", "x".repeat(40)), false),
        ];
        for (text, ok) in table {
            assert_eq!(
                JsonDocument::parse("payload_json", text, &limits).is_ok(),
                ok,
                "{text}"
            );
        }
        assert_eq!(
            JsonDocument::parse("p", "", &limits)
                .expect("empty")
                .value(),
            &serde_json::json!({})
        );
        assert_eq!(json_depth(&serde_json::json!(1)), 0);
        assert_eq!(json_depth(&serde_json::json!({"a": {"b": []}})), 3);
    }

    #[test]
    fn proposal_limits() {
        let limits = Limits {
            max_steps: 2,
            ..Limits::DEFAULT
        };
        let step = |i| StepSpec::parse(i, "echo", "{}", None, &limits).expect("step");
        let proposal = |title: &str, agent: &str, steps: Vec<StepSpec>, metadata| NewProposal {
            title: title.into(),
            source: ProposalSource::Api,
            agent: agent.into(),
            dedupe_key: None,
            steps,
            parallel: false,
            metadata,
            trace_id: None,
        };
        assert!(
            proposal("t", "agent", vec![step(0), step(1)], serde_json::json!({}))
                .validate(&limits)
                .is_ok()
        );
        let cases: Vec<(&str, &str, Vec<StepSpec>, serde_json::Value, &str)> = vec![
            ("", "a", vec![step(0)], serde_json::json!({}), "title"),
            ("t", "", vec![step(0)], serde_json::json!({}), "agent"),
            ("t", "a", vec![], serde_json::json!({}), "steps"),
            (
                "t",
                "a",
                vec![step(0), step(1), step(2)],
                serde_json::json!({}),
                "steps",
            ),
            (
                "t",
                "a",
                vec![step(0)],
                serde_json::json!([1]),
                "metadata_json",
            ),
        ];
        for (title, agent, steps, metadata, field) in cases {
            let err = proposal(title, agent, steps, metadata)
                .validate(&limits)
                .expect_err("must fail");
            assert_eq!(err.field, field);
        }
        let err = StepSpec::parse(3, "echo", "{}", Some(0), &limits).expect_err("zero attempts");
        assert_eq!(err.field, "steps[3].max_attempts");
    }

    #[test]
    fn events() {
        let limits = Limits::DEFAULT;
        assert!(NewEvent::parse("engagement:high", "agent", "{}", &[], Some(1.5), &limits).is_ok());
        let err = NewEvent::parse("x", "agent", "{}", &[], Some(-1.0), &limits).expect_err("cost");
        assert_eq!(err.field, "cost_usd");
        let err = NewEvent::parse("x", "", "{}", &[], None, &limits).expect_err("source");
        assert_eq!(err.field, "source");
        let tags = vec![String::new()];
        let err = NewEvent::parse("x", "a", "{}", &tags, None, &limits).expect_err("tag");
        assert_eq!(err.field, "tags[0]");
    }
}
