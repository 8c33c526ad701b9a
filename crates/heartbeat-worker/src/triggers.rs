//! The trigger phase: advance the `triggers` cursor past every new event
//! (quarantining malformed ones), evaluate — in a rotating order — the
//! enabled rules a new event could affect, the time-driven ones, and those
//! whose facts held last time without firing (so a tick costs what is new,
//! not what is stored), and fire exactly once per (rule, fact
//! window): a transaction claims the fire ledger row and compare-and-sets
//! the rule's cooldown; the proposal goes through the single entry point
//! with a dedupe key from rule + window; a gate rejection is recorded, frees
//! the window and gives the cooldown back.

use std::collections::HashSet;

use chrono::{DateTime, Duration, Utc};
use opsloop_core::domain::input::ProposalSource;
use opsloop_core::domain::status::ProposalStatus;
use opsloop_core::store::entities::{events, missions, trigger_rules};
use opsloop_core::workflow::{self, WorkflowError, db_now};
use sea_orm::{ConnectionTrait, DatabaseConnection, EntityTrait};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::db::{self, begin_write, for_update, stmt};
use crate::heartbeat::{Heartbeat, HeartbeatError, emit};
use crate::matching::{EventView, event_var, lookup};
use crate::rules::{Condition, Facts, Firing, cooldown_passed, rotated, trigger_dedupe_key};
use crate::template::build_proposal;

/// The trigger phase's event cursor.
pub const CONSUMER: &str = "triggers";

/// A ledger row still `claimed` this long after its claim belongs to a
/// heartbeat that died between claim and submit: the next one resumes it
/// (the dedupe key makes the resubmission safe).
const CLAIM_TIMEOUT_SECS: i64 = 300;

/// Flag rows (in `cooldowns`) of rules whose facts held without firing.
const PENDING_PREFIX: &str = "trigger.pending:";

/// Most events of the longest window read per tick.
const WINDOW_EVENT_LIMIT: u64 = 50_000;

/// What firing one rule did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FireOutcome {
    Fired,
    Rejected,
    AlreadyFired,
    CoolingDown,
}

pub async fn run(
    hb: &Heartbeat,
    now: DateTime<Utc>,
    tick_no: u64,
) -> Result<Value, HeartbeatError> {
    let db = hb.db();
    let now = db_now(now);
    let cursor = db::read_cursor(db, CONSUMER).await?;
    let rows = db::events_after(db, cursor, hb.settings().event_batch).await?;
    let mut quarantined = 0;
    let mut new_events = Vec::with_capacity(rows.len());
    for row in &rows {
        match db::to_view(row) {
            Ok(view) => new_events.push(view),
            Err(reason) => {
                db::quarantine(db, CONSUMER, row.seq, &reason, now).await?;
                quarantined += 1;
            }
        }
    }
    // Rules whose facts held last time without firing (cooling down or
    // rejected by the gates) are looked at again until they resolve.
    let pending: HashSet<Uuid> = db::flags_with_prefix(db, PENDING_PREFIX)
        .await?
        .iter()
        .filter_map(|name| name.strip_prefix(PENDING_PREFIX))
        .filter_map(|id| Uuid::parse_str(id).ok())
        .collect();

    let rules = workflow::triggers::list_triggers(db, Some(true), None, 1000).await?;
    let mut parsed: Vec<(trigger_rules::Model, Condition)> = Vec::new();
    let mut invalid = 0;
    for rule in rules {
        match Condition::parse("condition", &rule.condition) {
            Ok(condition) => parsed.push((rule, condition)),
            Err(error) => {
                invalid += 1;
                tracing::warn!(rule = %rule.name, %error, "trigger rule has an invalid condition");
            }
        }
    }
    let total_rules = parsed.len();
    parsed.retain(|(rule, c)| c.wakes_on(&new_events) || pending.contains(&rule.id));
    let max_window = parsed
        .iter()
        .map(|(_, c)| c.max_window())
        .max()
        .unwrap_or_else(Duration::zero);
    let window_events = if max_window > Duration::zero() {
        db::events_between(db, now - max_window, now, WINDOW_EVENT_LIMIT).await?
    } else {
        Vec::new()
    };
    let running = if parsed.iter().any(|(_, c)| c.needs_missions()) {
        running_missions(db).await?
    } else {
        Vec::new()
    };
    let facts = Facts {
        now,
        events: &window_events,
        running_missions: &running,
    };

    let (mut fired, mut rejected, mut duplicate, mut cooling, mut bad_actions) = (0, 0, 0, 0, 0);
    for (rule, condition) in rotated(&parsed, tick_no) {
        let unresolved = match condition.evaluate(&facts) {
            None => false,
            Some(_)
                if !cooldown_passed(
                    rule.last_fired_at,
                    Duration::seconds(rule.cooldown_seconds),
                    now,
                ) =>
            {
                cooling += 1;
                true
            }
            Some(firing) => match fire(db, &rule, &firing, now).await {
                Ok(FireOutcome::Fired) => {
                    fired += 1;
                    false
                }
                Ok(FireOutcome::Rejected) => {
                    rejected += 1;
                    true
                }
                Ok(FireOutcome::AlreadyFired) => {
                    duplicate += 1;
                    false
                }
                Ok(FireOutcome::CoolingDown) => {
                    cooling += 1;
                    true
                }
                Err(HeartbeatError::Spec(error)) => {
                    bad_actions += 1;
                    tracing::warn!(rule = %rule.name, %error, "trigger action does not render to a valid proposal");
                    false
                }
                Err(error) => return Err(error),
            },
        };
        if unresolved != pending.contains(&rule.id) {
            db::set_flag(db, &format!("{PENDING_PREFIX}{}", rule.id), unresolved, now).await?;
        }
    }
    if let Some(last) = rows.last() {
        db::advance_cursor(db, CONSUMER, last.seq, now).await?;
    }
    Ok(
        json!({"new_events": rows.len(), "quarantined": quarantined, "rules": total_rules,
              "evaluated": parsed.len(),
              "invalid_rules": invalid, "fired": fired, "rejected": rejected,
              "already_fired": duplicate, "cooling_down": cooling, "invalid_actions": bad_actions}),
    )
}

/// Running missions with their last activity (latest event, else creation).
async fn running_missions(
    db: &DatabaseConnection,
) -> Result<Vec<(Uuid, DateTime<Utc>)>, HeartbeatError> {
    let backend = db.get_database_backend();
    let rows = missions::Entity::find()
        .from_raw_sql(stmt(
            backend,
            "SELECT * FROM missions WHERE status = 'running' ORDER BY created_at LIMIT 1000",
            vec![],
        ))
        .all(db)
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for mission in rows {
        let latest = events::Entity::find()
            .from_raw_sql(stmt(
                backend,
                "SELECT * FROM events WHERE mission_id = $1 ORDER BY seq DESC LIMIT 1",
                vec![mission.id.into()],
            ))
            .one(db)
            .await?;
        let last = latest
            .map(|e| e.created_at)
            .unwrap_or(mission.created_at)
            .max(mission.updated_at);
        out.push((mission.id, last));
    }
    Ok(out)
}

fn vars<'a>(
    rule: &'a trigger_rules::Model,
    firing: &'a Firing,
) -> impl Fn(&str) -> Option<Value> + 'a {
    move |name: &str| match name {
        "rule.id" => Some(json!(rule.id)),
        "rule.name" => Some(json!(rule.name)),
        "window" => Some(json!(firing.window_key)),
        other => match other.strip_prefix("detail.") {
            Some(path) => lookup(&firing.detail, path).cloned(),
            None => firing
                .event
                .as_ref()
                .and_then(|e: &EventView| event_var(e, other)),
        },
    }
}

/// Fires `rule` for `firing` at most once (see the module doc).
pub async fn fire(
    db: &DatabaseConnection,
    rule: &trigger_rules::Model,
    firing: &Firing,
    now: DateTime<Utc>,
) -> Result<FireOutcome, HeartbeatError> {
    let now = db_now(now);
    let dedupe = trigger_dedupe_key(rule.id, &firing.window_key);
    let proposal = build_proposal(
        &rule.action,
        &vars(rule, firing),
        ProposalSource::Trigger,
        "heartbeat",
        &dedupe,
        json!({"trigger": {"rule_id": rule.id, "rule": rule.name,
                           "window_key": firing.window_key, "detail": firing.detail}}),
    )?;

    // Claim: the ledger row and the cooldown, in one transaction.
    let tx = begin_write(db).await?;
    let backend = tx.get_database_backend();
    let existing = tx
        .query_one_raw(stmt(
            backend,
            &format!(
                "SELECT id, outcome, created_at FROM trigger_fires WHERE rule_id = $1 AND window_key = $2{}",
                for_update(backend)
            ),
            vec![rule.id.into(), firing.window_key.clone().into()],
        ))
        .await?;
    let (fire_id, previous_fired_at) = match existing {
        Some(row) => {
            let outcome: String = row.try_get("", "outcome")?;
            let created: DateTime<Utc> = row.try_get("", "created_at")?;
            if outcome != "claimed" || created > now - Duration::seconds(CLAIM_TIMEOUT_SECS) {
                tx.rollback().await?;
                return Ok(FireOutcome::AlreadyFired);
            }
            let id: Uuid = row.try_get("", "id")?;
            tx.execute_raw(stmt(
                backend,
                "UPDATE trigger_fires SET created_at = $2 WHERE id = $1",
                vec![id.into(), now.into()],
            ))
            .await?;
            tracing::warn!(rule = %rule.name, fire_id = %id, "resuming an abandoned trigger firing");
            (id, None)
        }
        None => {
            let current = tx
                .query_one_raw(stmt(
                    backend,
                    &format!(
                        "SELECT enabled, cooldown_seconds, last_fired_at FROM trigger_rules WHERE id = $1{}",
                        for_update(backend)
                    ),
                    vec![rule.id.into()],
                ))
                .await?;
            let Some(current) = current else {
                tx.rollback().await?;
                return Ok(FireOutcome::AlreadyFired);
            };
            let enabled: bool = current.try_get("", "enabled")?;
            let cooldown: i64 = current.try_get("", "cooldown_seconds")?;
            let last: Option<DateTime<Utc>> = current.try_get("", "last_fired_at")?;
            if !enabled || !cooldown_passed(last, Duration::seconds(cooldown), now) {
                tx.rollback().await?;
                return Ok(FireOutcome::CoolingDown);
            }
            let id = Uuid::now_v7();
            let inserted = tx
                .execute_raw(stmt(
                    backend,
                    "INSERT INTO trigger_fires (id, rule_id, window_key, outcome, proposal_id, created_at) \
                     VALUES ($1, $2, $3, 'claimed', NULL, $4) ON CONFLICT (rule_id, window_key) DO NOTHING",
                    vec![id.into(), rule.id.into(), firing.window_key.clone().into(), now.into()],
                ))
                .await?
                .rows_affected();
            if inserted == 0 {
                tx.rollback().await?;
                return Ok(FireOutcome::AlreadyFired);
            }
            tx.execute_raw(stmt(
                backend,
                "UPDATE trigger_rules SET last_fired_at = $2 WHERE id = $1",
                vec![rule.id.into(), now.into()],
            ))
            .await?;
            (id, Some(last))
        }
    };
    tx.commit().await?;

    let submitted = workflow::submit_proposal(db, proposal, now).await?;
    let status = submitted.proposal.status()?;
    let proposal_id = submitted.proposal.proposal.id;
    let rejected = status == ProposalStatus::Rejected;

    let tx = begin_write(db).await?;
    if rejected {
        // Recorded, not counted: the window is free again and the cooldown
        // goes back to what it was (unless someone moved it meanwhile).
        tx.execute_raw(stmt(
            backend,
            "UPDATE trigger_fires SET outcome = 'rejected', proposal_id = $2, \
             window_key = window_key || $3 WHERE id = $1",
            vec![
                fire_id.into(),
                proposal_id.into(),
                format!("#rejected:{fire_id}").into(),
            ],
        ))
        .await?;
        if let Some(previous) = previous_fired_at {
            tx.execute_raw(stmt(
                backend,
                "UPDATE trigger_rules SET last_fired_at = $2 WHERE id = $1 AND last_fired_at = $3",
                vec![rule.id.into(), previous.into(), now.into()],
            ))
            .await?;
        }
    } else {
        tx.execute_raw(stmt(
            backend,
            "UPDATE trigger_fires SET outcome = 'fired', proposal_id = $2 WHERE id = $1",
            vec![fire_id.into(), proposal_id.into()],
        ))
        .await?;
        tx.execute_raw(stmt(
            backend,
            "UPDATE trigger_rules SET fire_count = fire_count + 1 WHERE id = $1",
            vec![rule.id.into()],
        ))
        .await?;
    }
    tx.commit().await?;

    let kind = if rejected {
        "trigger.rejected"
    } else {
        "trigger.fired"
    };
    emit(
        db,
        kind,
        json!({"rule_id": rule.id, "rule": rule.name, "window_key": firing.window_key,
               "fire_id": fire_id, "proposal_status": status.as_str(),
               "rejection_reason": submitted.proposal.proposal.rejection_reason,
               "detail": firing.detail}),
        Some(proposal_id),
        now,
    )
    .await?;
    metrics::counter!("opsloop_heartbeat_trigger_firings_total",
        "outcome" => if rejected { "rejected" } else { "fired" })
    .increment(1);
    tracing::info!(rule = %rule.name, %proposal_id, status = status.as_str(),
        window_key = %firing.window_key, "trigger fired");
    Ok(if rejected {
        FireOutcome::Rejected
    } else {
        FireOutcome::Fired
    })
}

impl From<opsloop_core::domain::input::ValidationError> for HeartbeatError {
    fn from(error: opsloop_core::domain::input::ValidationError) -> Self {
        Self::Workflow(WorkflowError::from(error))
    }
}
