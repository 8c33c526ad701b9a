//! Conversions between stored models and the `opsloop.v1` messages, and the
//! parsing of request fields into domain values (errors name the field).

use chrono::{DateTime, Utc};
use opsloop_core::domain::input::{StepSpec, ValidationError, uuid_field};
use opsloop_core::domain::policy::PolicyKey;
use opsloop_core::proto::v1 as pb;
use opsloop_core::store::entities::{
    event_quarantine, events, mission_steps, policy, policy_history, proposals, step_dead_letters,
    trigger_rules,
};
use opsloop_core::workflow::{MissionView, ProposalView, WorkflowError};
use tonic::Status;

pub use opsloop_core::grpc::{from_timestamp as from_ts, timestamp as ts};

pub fn invalid(field: &str, reason: &str) -> Status {
    Status::from(WorkflowError::Invalid(ValidationError::new(field, reason)))
}

pub fn uuid(field: &str, value: &str) -> Result<uuid::Uuid, Status> {
    uuid_field(field, value).map_err(|e| Status::from(WorkflowError::Invalid(e)))
}

pub fn opt_uuid(field: &str, value: Option<&String>) -> Result<Option<uuid::Uuid>, Status> {
    value.map(|v| uuid(field, v)).transpose()
}

fn json_text(value: &serde_json::Value) -> String {
    value.to_string()
}

/// Parses a proto enum field; unknown values are INVALID_ARGUMENT.
pub fn enum_field<E: TryFrom<i32>>(field: &str, value: i32) -> Result<E, Status> {
    E::try_from(value).map_err(|_| invalid(field, &format!("unknown enum value {value}")))
}

pub fn proposal_status(s: &str) -> pb::ProposalStatus {
    match s {
        "pending" => pb::ProposalStatus::Pending,
        "approved" => pb::ProposalStatus::Approved,
        "rejected" => pb::ProposalStatus::Rejected,
        "expired" => pb::ProposalStatus::Expired,
        _ => pb::ProposalStatus::Unspecified,
    }
}

pub fn mission_status(s: &str) -> pb::MissionStatus {
    match s {
        "running" => pb::MissionStatus::Running,
        "succeeded" => pb::MissionStatus::Succeeded,
        "failed" => pb::MissionStatus::Failed,
        "cancelled" => pb::MissionStatus::Cancelled,
        _ => pb::MissionStatus::Unspecified,
    }
}

pub fn step_status(s: &str) -> pb::StepStatus {
    match s {
        "queued" => pb::StepStatus::Queued,
        "running" => pb::StepStatus::Running,
        "succeeded" => pb::StepStatus::Succeeded,
        "failed" => pb::StepStatus::Failed,
        "cancelled" => pb::StepStatus::Cancelled,
        _ => pb::StepStatus::Unspecified,
    }
}

fn source(s: &str) -> pb::ProposalSource {
    match s {
        "api" => pb::ProposalSource::Api,
        "trigger" => pb::ProposalSource::Trigger,
        "reaction" => pb::ProposalSource::Reaction,
        "manual" => pb::ProposalSource::Manual,
        _ => pb::ProposalSource::Unspecified,
    }
}

pub fn proposal(view: &ProposalView) -> pb::Proposal {
    let p: &proposals::Model = &view.proposal;
    let steps: Vec<StepSpec> = serde_json::from_value(p.steps.clone()).unwrap_or_default();
    pb::Proposal {
        id: p.id.to_string(),
        title: p.title.clone(),
        source: source(&p.source) as i32,
        agent: p.agent.clone().unwrap_or_default(),
        dedupe_key: p.dedupe_key.clone(),
        steps: steps
            .into_iter()
            .map(|s| pb::StepSpec {
                kind: s.kind.to_string(),
                payload_json: json_text(&s.payload),
                max_attempts: s.max_attempts,
            })
            .collect(),
        parallel: p.parallel,
        metadata_json: json_text(&p.metadata),
        status: proposal_status(&p.status) as i32,
        rejection_reason: p.rejection_reason.clone(),
        rejection_detail: p.rejection_detail.clone(),
        policy_version: p.policy_version,
        mission_id: view.mission_id.map(|m| m.to_string()),
        decided_by: p.decided_by.clone(),
        created_at: Some(ts(p.created_at)),
        decided_at: p.decided_at.map(ts),
        updated_at: Some(ts(p.updated_at)),
    }
}

fn u32_of(v: i32) -> u32 {
    u32::try_from(v).unwrap_or(0)
}

pub fn step(s: &mission_steps::Model) -> pb::Step {
    pb::Step {
        id: s.id.to_string(),
        mission_id: s.mission_id.to_string(),
        seq: u32_of(s.seq),
        kind: s.kind.clone(),
        payload_json: json_text(&s.payload),
        status: step_status(&s.status) as i32,
        attempt: u32_of(s.attempt),
        max_attempts: u32_of(s.max_attempts),
        lease_holder: s.lease_holder.clone(),
        lease_expires_at: s.lease_expires_at.map(ts),
        next_attempt_at: s.next_attempt_at.map(ts),
        result_json: s.result.as_ref().map(json_text),
        error: s.error.clone(),
        cost_usd: s.cost_usd,
        created_at: Some(ts(s.created_at)),
        started_at: s.started_at.map(ts),
        finished_at: s.finished_at.map(ts),
    }
}

pub fn mission(view: &MissionView) -> pb::Mission {
    let m = &view.mission;
    pb::Mission {
        id: m.id.to_string(),
        proposal_id: m.proposal_id.to_string(),
        title: m.title.clone(),
        status: mission_status(&m.status) as i32,
        parallel: m.parallel,
        steps: view.steps.iter().map(step).collect(),
        step_count: view.step_count,
        outcome_detail: view.outcome_detail.clone(),
        cost_usd: view.cost_usd,
        created_at: Some(ts(m.created_at)),
        finished_at: m.finished_at.map(ts),
        updated_at: Some(ts(m.updated_at)),
    }
}

pub fn dead_letter(d: &step_dead_letters::Model) -> pb::DeadLetter {
    pb::DeadLetter {
        id: d.id.to_string(),
        step_id: d.step_id.to_string(),
        mission_id: d.mission_id.to_string(),
        kind: d.kind.clone(),
        attempt: u32_of(d.attempt),
        error: d.error.clone(),
        payload_json: json_text(&d.payload),
        created_at: Some(ts(d.created_at)),
        retried_proposal_id: d.retried_proposal_id.map(|p| p.to_string()),
        retried_by: d.retried_by.clone(),
        retried_at: d.retried_at.map(ts),
    }
}

pub fn quarantined_event(q: &event_quarantine::Model) -> pb::QuarantinedEvent {
    pb::QuarantinedEvent {
        consumer: q.consumer.clone(),
        event_seq: q.event_seq,
        failures: q.failures,
        last_error: q.last_error.clone(),
        created_at: Some(ts(q.created_at)),
        updated_at: Some(ts(q.updated_at)),
    }
}

pub fn policy_change(h: &policy_history::Model) -> pb::PolicyChange {
    pb::PolicyChange {
        version: h.id,
        key: h.key.clone(),
        old_value_json: h.old_value.as_ref().map(json_text),
        new_value_json: json_text(&h.new_value),
        actor: h.actor.clone(),
        reason: h.reason.clone(),
        changed_at: Some(ts(h.created_at)),
    }
}

pub fn event(e: &events::Model) -> pb::Event {
    pb::Event {
        id: e.id.to_string(),
        seq: e.seq,
        kind: e.kind.clone(),
        source: e.source.clone(),
        payload_json: json_text(&e.payload),
        tags: serde_json::from_value(e.tags.clone()).unwrap_or_default(),
        cost_usd: e.cost_usd,
        mission_id: e.mission_id.map(|m| m.to_string()),
        step_id: e.step_id.map(|m| m.to_string()),
        proposal_id: e.proposal_id.map(|m| m.to_string()),
        trace_id: e.trace_id.clone().unwrap_or_default(),
        created_at: Some(ts(e.created_at)),
    }
}

pub fn policy(p: &policy::Model) -> pb::Policy {
    pb::Policy {
        key: p.key.clone(),
        value_json: json_text(&p.value),
        version: p.version,
        description: PolicyKey::parse(&p.key)
            .map(|k| k.description().to_owned())
            .unwrap_or_default(),
        updated_by: p.updated_by.clone(),
        updated_at: Some(ts(p.updated_at)),
    }
}

pub fn trigger(t: &trigger_rules::Model) -> pb::Trigger {
    pb::Trigger {
        id: t.id.to_string(),
        name: t.name.clone(),
        description: t
            .action
            .get("description")
            .and_then(|d| d.as_str())
            .unwrap_or_default()
            .to_owned(),
        enabled: t.enabled,
        condition_json: json_text(&t.condition),
        action_json: json_text(&t.action),
        cooldown_seconds: u64::try_from(t.cooldown_seconds).unwrap_or(0),
        last_fired_at: t.last_fired_at.map(ts),
        fire_count: u64::try_from(t.fire_count).unwrap_or(0),
        version: opsloop_core::workflow::triggers::trigger_version(t),
        created_by: String::new(),
        created_at: Some(ts(t.created_at)),
        updated_at: Some(ts(t.updated_at)),
    }
}

/// `created_at|id` cursors of newest-first lists.
pub fn time_cursor(t: DateTime<Utc>, id: uuid::Uuid) -> String {
    format!("{}|{id}", t.timestamp_micros())
}

pub fn parse_time_cursor(token: &str) -> Result<Option<(DateTime<Utc>, uuid::Uuid)>, Status> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || invalid("page_token", "not a token from a previous response");
    let (micros, id) = token.split_once('|').ok_or_else(bad)?;
    let micros: i64 = micros.parse().map_err(|_| bad())?;
    let t = DateTime::<Utc>::from_timestamp_micros(micros).ok_or_else(bad)?;
    let id = uuid::Uuid::parse_str(id).map_err(|_| bad())?;
    Ok(Some((t, id)))
}
