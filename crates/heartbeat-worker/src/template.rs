//! Proposal templates of trigger actions and reaction patterns (written as
//! core's [`ProposalTemplate`]), rendered with the firing's variables and
//! parsed into the single entry point's [`NewProposal`].

use opsloop_core::domain::input::{
    DedupeKey, Limits, NewProposal, ProposalSource, StepKind, StepSpec,
};
use opsloop_core::domain::rule_spec::{ProposalTemplate, parse_json};
use serde_json::Value;

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
    let written: ProposalTemplate = parse_json("template", &rendered)?;
    let steps = written
        .steps
        .into_iter()
        .enumerate()
        .map(|(i, step)| {
            let kind = StepKind::parse(&format!("template.steps[{i}].kind"), &step.kind)?;
            Ok(StepSpec {
                kind,
                payload: step.payload,
                max_attempts: step.max_attempts,
            })
        })
        .collect::<Result<Vec<_>, SpecError>>()?;
    let mut meta = written.metadata.unwrap_or_default();
    if let Value::Object(extra) = metadata {
        meta.extend(extra);
    }
    let dedupe = DedupeKey::parse("dedupe_key", dedupe_key)?;
    NewProposal {
        title: written.title,
        source,
        agent: written.agent.unwrap_or_else(|| default_agent.to_owned()),
        dedupe_key: Some(dedupe),
        steps,
        parallel: written.parallel,
        metadata: Value::Object(meta),
        trace_id: None,
    }
    .validate(&Limits::DEFAULT)
    .map_err(|e| SpecError::new(format!("template.{}", e.field), e.reason))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

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
