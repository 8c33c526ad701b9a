//! Putting failed work back, by hand: dead-lettered steps (listed, shown,
//! and retried) and quarantined events (listed and returned to the retry
//! set). What `opsloop deadletter`, `opsloop quarantine` and the console
//! call instead of the runbook's SQL.
//!
//! A retry never reopens the failed mission (a mission's end is final, as
//! the state machine says): it submits a new proposal through the one entry
//! point, with the failed step and the steps the failure cancelled, so the
//! gates judge it again (emergency stop, toggles, daily caps, auto-approve).
//! The dead letter records the proposal, who asked and when, in the same
//! transaction; a second retry of the same dead letter is refused, and a
//! retry the gates reject writes nothing.

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect, Set,
};
use serde_json::json;
use uuid::Uuid;

use super::proposals::{SubmitOutcome, audit_file, audit_row, submit_proposal_in};
use super::{Result, WorkflowError, begin_write, db_now, stmt};
use crate::audit::{AuditLog, AuditRecord};
use crate::domain::input::{DedupeKey, NewProposal, ProposalSource, StepKind, StepSpec};
use crate::domain::status::{ProposalStatus, StepStatus};
use crate::store::entities::{
    event_quarantine, mission_steps, missions, proposals, step_dead_letters,
};

/// Filters of [`list_dead_letters`].
#[derive(Debug, Clone, Default)]
pub struct DeadLetterFilter {
    /// Only this step kind.
    pub kind: Option<String>,
    /// Also those already retried (default: only those waiting).
    pub include_retried: bool,
    pub limit: u64,
}

/// Dead letters newest first.
pub async fn list_dead_letters(
    db: &impl ConnectionTrait,
    filter: &DeadLetterFilter,
) -> Result<Vec<step_dead_letters::Model>> {
    let mut query = step_dead_letters::Entity::find();
    if let Some(kind) = &filter.kind {
        query = query.filter(step_dead_letters::Column::Kind.eq(kind.as_str()));
    }
    if !filter.include_retried {
        query = query.filter(step_dead_letters::Column::RetriedProposalId.is_null());
    }
    Ok(query
        .order_by_desc(step_dead_letters::Column::CreatedAt)
        .order_by_desc(step_dead_letters::Column::Id)
        .limit(filter.limit.clamp(1, 1000))
        .all(db)
        .await?)
}

/// One dead letter by its id.
pub async fn get_dead_letter(
    db: &impl ConnectionTrait,
    id: Uuid,
) -> Result<step_dead_letters::Model> {
    step_dead_letters::Entity::find_by_id(id)
        .one(db)
        .await?
        .ok_or_else(|| WorkflowError::not_found("dead letter", id))
}

/// What [`retry_dead_letter`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryOutcome {
    pub dead_letter: step_dead_letters::Model,
    /// The new proposal, as the gates judged it (pending, approved with its
    /// mission, or rejected with the gate's reason).
    pub submitted: SubmitOutcome,
}

/// Retries a dead-lettered step as a new proposal (see the module doc):
/// the failed step, then the steps of its mission that the failure
/// cancelled, in their order, with their payloads and attempt limits. The
/// proposal keeps the mission's agent and ordering, its source is `manual`,
/// its metadata names the dead letter and the failed mission, and its dedupe
/// key is `retry:<dead letter id>`. Refused (`FAILED_PRECONDITION`, nothing
/// written) when the dead letter was retried before, or when the gates
/// reject the new proposal (emergency stop, a toggle off, a daily cap): the
/// dead letter then stays waiting.
pub async fn retry_dead_letter(
    db: &DatabaseConnection,
    id: Uuid,
    actor: &str,
    audit: Option<&AuditLog>,
    now: DateTime<Utc>,
) -> Result<RetryOutcome> {
    let now = db_now(now);
    let tx = begin_write(db).await?;
    let dead = get_dead_letter(&tx, id).await?;
    if let Some(proposal_id) = dead.retried_proposal_id {
        return Err(WorkflowError::Conflict(format!(
            "dead letter {id} was retried by {} as proposal {proposal_id}; \
             look at that proposal (opsloop proposal get {proposal_id})",
            dead.retried_by.as_deref().unwrap_or("someone"),
        )));
    }
    let mission = missions::Entity::find_by_id(dead.mission_id)
        .one(&tx)
        .await?
        .ok_or_else(|| WorkflowError::not_found("mission", dead.mission_id))?;
    let proposal = proposals::Entity::find_by_id(mission.proposal_id)
        .one(&tx)
        .await?
        .ok_or_else(|| WorkflowError::not_found("proposal", mission.proposal_id))?;
    let failed_seq = mission_steps::Entity::find_by_id(dead.step_id)
        .one(&tx)
        .await?
        .ok_or_else(|| WorkflowError::not_found("step", dead.step_id))?
        .seq;
    let rest = mission_steps::Entity::find()
        .filter(mission_steps::Column::MissionId.eq(dead.mission_id))
        .filter(mission_steps::Column::Seq.gt(failed_seq))
        .filter(mission_steps::Column::Status.eq(StepStatus::Cancelled.as_str()))
        .order_by_asc(mission_steps::Column::Seq)
        .all(&tx)
        .await?;
    let mut steps = vec![step_spec(&dead.kind, dead.payload.clone(), None)?];
    for step in &rest {
        steps.push(step_spec(
            &step.kind,
            step.payload.clone(),
            u32::try_from(step.max_attempts).ok(),
        )?);
    }
    let new = NewProposal {
        title: retry_title(&mission.title),
        source: ProposalSource::Manual,
        agent: proposal.agent.clone().unwrap_or_else(|| actor.to_owned()),
        dedupe_key: Some(DedupeKey::parse("dedupe_key", &format!("retry:{id}"))?),
        steps,
        parallel: proposal.parallel,
        metadata: json!({
            "retry_of": {"dead_letter_id": id, "mission_id": dead.mission_id,
                         "step_id": dead.step_id, "error": dead.error},
            "requested_by": actor,
        }),
        trace_id: super::events::current_trace_id(),
    };
    let submitted = submit_proposal_in(&tx, new, now).await?;
    if submitted.proposal.status()? == ProposalStatus::Rejected {
        // Dropping the transaction writes nothing: the dead letter stays
        // waiting for a retry once the gate allows it.
        let p = &submitted.proposal.proposal;
        return Err(WorkflowError::Conflict(format!(
            "the gates refused the retry of dead letter {id}: {}{}; nothing was written, \
             retry again once the gate allows it",
            p.rejection_reason.as_deref().unwrap_or("rejected"),
            p.rejection_detail
                .as_deref()
                .map(|d| format!(" ({d})"))
                .unwrap_or_default(),
        )));
    }
    // Conditional: of two concurrent retries, one marks the dead letter and
    // the other rolls back.
    let marked = tx
        .execute_raw(stmt(
            tx.get_database_backend(),
            "UPDATE step_dead_letters SET retried_proposal_id = $2, retried_by = $3, \
             retried_at = $4 WHERE id = $1 AND retried_proposal_id IS NULL",
            vec![
                id.into(),
                submitted.proposal.proposal.id.into(),
                actor.into(),
                now.into(),
            ],
        ))
        .await?
        .rows_affected();
    if marked != 1 {
        return Err(WorkflowError::Conflict(format!(
            "dead letter {id} was retried meanwhile by someone else; see opsloop deadletter show {id}"
        )));
    }
    let dead = get_dead_letter(&tx, id).await?;
    let record = AuditRecord {
        at: now,
        actor: actor.to_owned(),
        action: "dead_letter.retry".into(),
        subject: format!("dead_letter:{id}"),
        reason: None,
        before: Some(
            json!({"mission_id": dead.mission_id, "step_id": dead.step_id,
                            "kind": dead.kind, "error": dead.error}),
        ),
        after: Some(json!({"proposal_id": submitted.proposal.proposal.id,
                           "status": submitted.proposal.proposal.status,
                           "mission_id": submitted.proposal.mission_id})),
    };
    audit_row(&tx, &record).await?;
    tx.commit().await?;
    audit_file(audit, &record);
    metrics::counter!("opsloop_dead_letters_retried_total", "kind" => dead.kind.clone())
        .increment(1);
    tracing::info!(dead_letter_id = %id, proposal_id = %submitted.proposal.proposal.id,
        status = %submitted.proposal.proposal.status, actor, "dead letter retried");
    Ok(RetryOutcome {
        dead_letter: dead,
        submitted,
    })
}

fn step_spec(
    kind: &str,
    payload: serde_json::Value,
    max_attempts: Option<u32>,
) -> Result<StepSpec> {
    Ok(StepSpec {
        kind: StepKind::parse("steps[].kind", kind)?,
        payload,
        max_attempts,
    })
}

/// "retry: <title>", cut to the title limit on a character boundary.
fn retry_title(title: &str) -> String {
    let limit = crate::domain::input::Limits::DEFAULT.max_title_chars;
    let full = format!("retry: {title}");
    full.chars().take(limit).collect()
}

/// Quarantined events, newest change first; `consumer` narrows to one
/// consumer (`triggers`, `reactions`, …).
pub async fn list_quarantined_events(
    db: &impl ConnectionTrait,
    consumer: Option<&str>,
    limit: u64,
) -> Result<Vec<event_quarantine::Model>> {
    let mut query = event_quarantine::Entity::find();
    if let Some(consumer) = consumer {
        query = query.filter(event_quarantine::Column::Consumer.eq(consumer));
    }
    Ok(query
        .order_by_desc(event_quarantine::Column::UpdatedAt)
        .order_by_desc(event_quarantine::Column::EventSeq)
        .limit(limit.clamp(1, 1000))
        .all(db)
        .await?)
}

/// Puts a quarantined event back in its consumer's retry set (failures to
/// 0): the next heartbeat tick evaluates it again. A trigger's fire ledger
/// and a reaction's dedupe key keep it from firing twice. Audited.
pub async fn retry_quarantined_event(
    db: &DatabaseConnection,
    consumer: &str,
    event_seq: i64,
    actor: &str,
    audit: Option<&AuditLog>,
    now: DateTime<Utc>,
) -> Result<event_quarantine::Model> {
    let now = db_now(now);
    let tx = begin_write(db).await?;
    let row = event_quarantine::Entity::find()
        .filter(event_quarantine::Column::Consumer.eq(consumer))
        .filter(event_quarantine::Column::EventSeq.eq(event_seq))
        .one(&tx)
        .await?
        .ok_or_else(|| {
            WorkflowError::not_found("quarantined event", format!("{consumer}/{event_seq}"))
        })?;
    let before = row.failures;
    let mut active: event_quarantine::ActiveModel = row.into();
    active.failures = Set(0);
    active.updated_at = Set(now);
    let row = active.update(&tx).await?;
    let record = AuditRecord {
        at: now,
        actor: actor.to_owned(),
        action: "quarantine.retry".into(),
        subject: format!("event_quarantine:{consumer}/{event_seq}"),
        reason: None,
        before: Some(json!({"failures": before, "last_error": row.last_error})),
        after: Some(json!({"failures": 0})),
    };
    audit_row(&tx, &record).await?;
    tx.commit().await?;
    audit_file(audit, &record);
    tracing::info!(
        consumer,
        event_seq,
        actor,
        "quarantined event returned to the retry set"
    );
    Ok(row)
}
