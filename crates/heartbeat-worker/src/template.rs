//! Proposal templates of trigger actions and reaction patterns: `{title,
//! steps: [{kind, payload, max_attempts?}], agent?, parallel?, metadata?}`,
//! rendered with the firing's variables and parsed into the single entry
//! point's [`NewProposal`].

use opsloop_core::domain::input::{
    DedupeKey, Limits, NewProposal, ProposalSource, StepKind, StepSpec,
};
use serde_json::{Value, json};

use crate::matching::{SpecError, render};

/// Renders `template` and builds the proposal; `metadata` is merged into
/// the template's own.
pub fn build_proposal(
    template: &Value,
    vars: &dyn Fn(&str) -> Option<Value>,
    source: ProposalSource,
    default_agent: &str,
    dedupe_key: &str,
    metadata: Value,
) -> Result<NewProposal, SpecError> {
    let rendered = render(template, vars);
    let title = rendered
        .get("title")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let steps = rendered
        .get("steps")
        .and_then(Value::as_array)
        .ok_or_else(|| SpecError::new("template.steps", "must be an array"))?
        .iter()
        .enumerate()
        .map(|(i, step)| {
            let kind = step.get("kind").and_then(Value::as_str).unwrap_or_default();
            let kind = StepKind::parse(&format!("template.steps[{i}].kind"), kind)
                .map_err(|e| SpecError::new(e.field, e.reason))?;
            let max_attempts = step
                .get("max_attempts")
                .and_then(Value::as_u64)
                .and_then(|n| u32::try_from(n).ok());
            Ok(StepSpec {
                kind,
                payload: step.get("payload").cloned().unwrap_or_else(|| json!({})),
                max_attempts,
            })
        })
        .collect::<Result<Vec<_>, SpecError>>()?;
    let mut meta = match rendered.get("metadata") {
        Some(Value::Object(map)) => map.clone(),
        _ => serde_json::Map::new(),
    };
    if let Value::Object(extra) = metadata {
        meta.extend(extra);
    }
    let dedupe = DedupeKey::parse("dedupe_key", dedupe_key)
        .map_err(|e| SpecError::new(e.field, e.reason))?;
    NewProposal {
        title,
        source,
        agent: rendered
            .get("agent")
            .and_then(Value::as_str)
            .unwrap_or(default_agent)
            .to_owned(),
        dedupe_key: Some(dedupe),
        steps,
        parallel: rendered
            .get("parallel")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        metadata: Value::Object(meta),
        trace_id: None,
    }
    .validate(&Limits::DEFAULT)
    .map_err(|e| SpecError::new(format!("template.{}", e.field), e.reason))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_a_valid_proposal_or_names_the_field() {
        let t = json!({"title": "Check {{event.kind}}", "steps": [{"kind": "analyze", "payload": {"k": "{{event.kind}}"}}]});
        let vars = |name: &str| (name == "event.kind").then(|| json!("post.x"));
        let p = build_proposal(
            &t,
            &vars,
            ProposalSource::Trigger,
            "heartbeat",
            "trigger:1:a",
            json!({"rule": "r"}),
        )
        .expect("valid");
        assert_eq!(p.title, "Check post.x");
        assert_eq!(p.agent, "heartbeat");
        assert_eq!(p.steps[0].payload["k"], "post.x");
        assert_eq!(p.metadata["rule"], "r");
        let bad = json!({"title": "t", "steps": [{"kind": "Bad Kind"}]});
        let err = build_proposal(&bad, &vars, ProposalSource::Trigger, "h", "k", json!({}))
            .expect_err("bad");
        assert_eq!(err.field, "template.steps[0].kind");
        let empty = json!({"title": "", "steps": [{"kind": "echo"}]});
        let err = build_proposal(&empty, &vars, ProposalSource::Trigger, "h", "k", json!({}))
            .expect_err("bad");
        assert_eq!(err.field, "template.title");
    }
}
