//! Event matching shared by trigger rules and the reaction matrix: the event
//! as the heartbeat sees it, kind/source globs, tag filters (every listed tag
//! must be present), payload filters (dot paths equal to values), and the
//! `{{event.…}}` template renderer. Pure, no I/O.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use opsloop_core::domain::ValidationError;
use opsloop_core::domain::rule_spec::EventFilter;
use serde_json::Value;
use uuid::Uuid;

/// One event, as trigger rules and reactions see it.
#[derive(Debug, Clone, PartialEq)]
pub struct EventView {
    pub seq: i64,
    pub id: Uuid,
    pub kind: String,
    pub source: String,
    pub tags: Vec<String>,
    pub payload: Value,
    pub mission_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
}

/// Glob match: `*` any run (also empty), `?` exactly one character.
pub fn glob_matches(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

/// A value at a dot path (`a.b.0.c`).
pub fn lookup<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(value, |v, part| match v {
        Value::Object(map) => map.get(part),
        Value::Array(items) => part.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => None,
    })
}

/// Which events a condition or pattern looks at.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventMatcher {
    pub kind: Option<String>,
    pub source: Option<String>,
    /// Every tag listed must be on the event.
    pub tags: Vec<String>,
    /// Dot path → the value it must equal.
    pub payload: BTreeMap<String, Value>,
}

/// A malformed condition, pattern or template.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct SpecError {
    pub field: String,
    pub reason: String,
}

impl SpecError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl From<ValidationError> for SpecError {
    fn from(e: ValidationError) -> Self {
        Self::new(e.field, e.reason)
    }
}

impl From<EventFilter> for EventMatcher {
    fn from(filter: EventFilter) -> Self {
        Self {
            kind: filter.kind,
            source: filter.source,
            tags: filter.tags,
            payload: filter.payload,
        }
    }
}

impl EventMatcher {
    /// A matcher on one kind glob only.
    pub fn kind(glob: &str) -> Self {
        Self {
            kind: Some(glob.to_owned()),
            ..Default::default()
        }
    }

    pub fn matches(&self, event: &EventView) -> bool {
        self.kind
            .as_deref()
            .is_none_or(|k| glob_matches(k, &event.kind))
            && self
                .source
                .as_deref()
                .is_none_or(|s| glob_matches(s, &event.source))
            && self.tags.iter().all(|t| event.tags.contains(t))
            && self
                .payload
                .iter()
                .all(|(path, want)| lookup(&event.payload, path) == Some(want))
    }
}

/// Replaces `{{name}}` placeholders in every string of `template` with
/// `vars(name)` (unknown names become empty). A string that is exactly one
/// placeholder takes the variable's JSON value, so numbers stay numbers.
pub fn render(template: &Value, vars: &dyn Fn(&str) -> Option<Value>) -> Value {
    match template {
        Value::String(s) => render_str(s, vars),
        Value::Array(items) => Value::Array(items.iter().map(|v| render(v, vars)).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), render(v, vars)))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn render_str(s: &str, vars: &dyn Fn(&str) -> Option<Value>) -> Value {
    let trimmed = s.trim();
    if trimmed.starts_with("{{")
        && trimmed.ends_with("}}")
        && trimmed[2..trimmed.len() - 2].find("{{").is_none()
    {
        let name = trimmed[2..trimmed.len() - 2].trim();
        return vars(name).unwrap_or(Value::String(String::new()));
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        match rest[start + 2..].find("}}") {
            Some(end) => {
                let name = rest[start + 2..start + 2 + end].trim();
                match vars(name) {
                    Some(Value::String(v)) => out.push_str(&v),
                    Some(Value::Null) | None => {}
                    Some(v) => out.push_str(&v.to_string()),
                }
                rest = &rest[start + 2 + end + 2..];
            }
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    Value::String(out)
}

/// The `event.*` variables of a template: `event.id`, `event.kind`,
/// `event.source`, `event.seq`, `event.tags`, `event.payload.<path>`.
pub fn event_var(event: &EventView, name: &str) -> Option<Value> {
    let rest = name.strip_prefix("event.")?;
    match rest {
        "id" => Some(Value::String(event.id.to_string())),
        "kind" => Some(Value::String(event.kind.clone())),
        "source" => Some(Value::String(event.source.clone())),
        "seq" => Some(Value::from(event.seq)),
        "tags" => Some(Value::from(event.tags.clone())),
        "payload" => Some(event.payload.clone()),
        other => other
            .strip_prefix("payload.")
            .and_then(|path| lookup(&event.payload, path))
            .cloned(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use opsloop_core::domain::rule_spec::parse_json;
    use serde_json::json;

    pub(crate) fn event(seq: i64, kind: &str, tags: &[&str], at: DateTime<Utc>) -> EventView {
        EventView {
            seq,
            id: Uuid::from_u128(seq as u128),
            kind: kind.to_owned(),
            source: "agent-1".to_owned(),
            tags: tags.iter().map(|t| (*t).to_owned()).collect(),
            payload: json!({"channel": "x", "n": seq, "deep": {"level": "high"}}),
            mission_id: None,
            created_at: at,
        }
    }

    #[test]
    fn globs() {
        let table = [
            ("step.*", "step.failed", true),
            ("step.*", "stepfailed", false),
            ("*", "", true),
            ("post.?", "post.x", true),
            ("post.?", "post.xy", false),
            ("*.failed", "step.failed", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("engagement:high", "engagement:high", true),
        ];
        for (p, t, want) in table {
            assert_eq!(glob_matches(p, t), want, "{p} vs {t}");
        }
    }

    #[test]
    fn matchers_need_every_tag_and_payload_value() {
        let e = event(1, "post.published", &["engagement:high", "x"], Utc::now());
        let table = [
            (json!({}), true),
            (json!({"kind": "post.*"}), true),
            (json!({"kind": "step.*"}), false),
            (json!({"source": "agent-*"}), true),
            (json!({"tags": ["engagement:high"]}), true),
            (json!({"tags": ["engagement:high", "x"]}), true),
            (json!({"tags": ["engagement:high", "y"]}), false),
            (json!({"payload": {"channel": "x"}}), true),
            (json!({"payload": {"deep.level": "high"}}), true),
            (json!({"payload": {"channel": "tiktok"}}), false),
            (json!({"payload": {"missing": 1}}), false),
        ];
        for (spec, want) in table {
            let m = EventMatcher::from(parse_json::<EventFilter>("c", &spec).expect("parses"));
            assert_eq!(m.matches(&e), want, "{spec}");
        }
        assert!(parse_json::<EventFilter>("c", &json!({"tags": "x"})).is_err());
        assert!(parse_json::<EventFilter>("c", &json!({"kind": 3})).is_err());
    }

    #[test]
    fn templates_render_event_fields() {
        let e = event(7, "post.published", &[], Utc::now());
        let t = json!({"title": "React to {{event.kind}} #{{event.seq}}",
                       "steps": [{"kind": "draft", "payload": {"channel": "{{event.payload.channel}}",
                                  "n": "{{event.payload.n}}", "none": "{{event.payload.nope}}"}}]});
        let out = render(&t, &|name| event_var(&e, name));
        assert_eq!(out["title"], "React to post.published #7");
        assert_eq!(out["steps"][0]["payload"]["channel"], "x");
        assert_eq!(out["steps"][0]["payload"]["n"], 7);
        assert_eq!(out["steps"][0]["payload"]["none"], "");
        assert_eq!(render(&json!("{{unclosed"), &|_| None), json!("{{unclosed"));
    }
}
