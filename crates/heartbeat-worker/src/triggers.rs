//! The trigger phase: read the `triggers` cursor's new events (and the retry
//! set: an event that fails to evaluate is retried on later ticks and
//! quarantined after `quarantine_after_failures` attempts; the cursor still
//! advances past every examined event), evaluate — in a rotating order — the
//! enabled rules a new event could affect, the time-driven ones, and those
//! whose facts held last time without firing. Window facts are counted by the
//! database (index range on `created_at`, filters pushed down, only the newest
//! matching row read), so a tick costs what is new, not what is stored.
//!
//! Firing is exactly once per (rule, fact window), in one transaction: lock
//! the rule row and compare its cooldown, check the fire ledger, submit the
//! proposal through the single entry point ([`workflow::submit_proposal_in`],
//! dedupe key from rule + window), write the ledger row, move the cooldown
//! and write the `trigger.fired` event. A gate rejection records a
//! `rejected` ledger row and a `trigger.rejected` event in that transaction
//! and leaves the window free and the cooldown untouched.

use std::collections::HashSet;
use std::collections::hash_map::Entry;

use chrono::{DateTime, Duration, Utc};
use opsloop_core::domain::input::ProposalSource;
use opsloop_core::domain::status::ProposalStatus;
use opsloop_core::store::entities::{events, missions, trigger_rules};
use opsloop_core::workflow::{self, WorkflowError, db_now};
use sea_orm::{ConnectionTrait, DatabaseConnection, EntityTrait};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::db::{self, begin_write, for_update, stmt};
use crate::heartbeat::{Heartbeat, HeartbeatError, emit_in};
use crate::matching::{EventView, event_var, lookup};
use crate::rules::{
    Condition, Facts, Firing, KnownFacts, cooldown_passed, rotated, trigger_dedupe_key,
};
use crate::template::build_proposal;

/// The trigger phase's event cursor.
pub const CONSUMER: &str = "triggers";

/// Flag rows (in `cooldowns`) of rules whose facts held without firing.
const PENDING_PREFIX: &str = "trigger.pending:";

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
    let settings = hb.settings();
    let examined = db::examine(
        db,
        CONSUMER,
        settings.event_batch,
        settings.quarantine_after_failures,
        now,
    )
    .await?;
    let new_events: Vec<EventView> = examined.views().cloned().collect();
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
    // Every window question of the woken rules, each asked once.
    let mut known = KnownFacts::default();
    for (_, condition) in &parsed {
        for query in condition.window_queries() {
            if let Entry::Vacant(slot) = known.0.entry(query.key()) {
                slot.insert(db::window_fact(db, &query, now).await?);
            }
        }
    }
    let running = if parsed.iter().any(|(_, c)| c.needs_missions()) {
        running_missions(db).await?
    } else {
        Vec::new()
    };
    let facts = Facts {
        now,
        windows: &known,
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
    // Parsing is all the evaluation an event gets on its own (rules read
    // window facts from the database): a retried event that parses and has
    // woken its rules is done.
    for event in &examined.retried {
        db::clear_failure(db, CONSUMER, event.seq).await?;
    }
    if let Some(last) = examined.last_seq() {
        db::advance_cursor(db, CONSUMER, last, now).await?;
    }
    Ok(
        json!({"new_events": examined.new.len(), "retried": examined.retried.len(),
              "failed": examined.failed, "quarantined": examined.quarantined,
              "rules": total_rules, "evaluated": parsed.len(), "window_queries": known.0.len(),
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

/// Fires `rule` for `firing` at most once (see the module doc): one write
/// transaction holds the rule row's lock (PostgreSQL; SQLite's `BEGIN
/// IMMEDIATE` excludes every other writer) from the cooldown check to the
/// commit, so racing heartbeats serialize on it.
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

    let tx = begin_write(db).await?;
    let backend = tx.get_database_backend();
    // Compare: the rule as it is now, locked until commit.
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
    // The ledger: this fact window fired already?
    let seen = tx
        .query_one_raw(stmt(
            backend,
            "SELECT id FROM trigger_fires WHERE rule_id = $1 AND window_key = $2",
            vec![rule.id.into(), firing.window_key.clone().into()],
        ))
        .await?;
    if seen.is_some() {
        tx.rollback().await?;
        return Ok(FireOutcome::AlreadyFired);
    }

    let submitted = workflow::submit_proposal_in(&tx, proposal, now).await?;
    let status = submitted.proposal.status()?;
    let proposal_id = submitted.proposal.proposal.id;
    let rejected = status == ProposalStatus::Rejected;
    let fire_id = Uuid::now_v7();
    // A rejection is recorded under its own key: the window stays free.
    let (window_key, outcome) = if rejected {
        (
            format!("{}#rejected:{fire_id}", firing.window_key),
            "rejected",
        )
    } else {
        (firing.window_key.clone(), "fired")
    };
    let inserted = tx
        .execute_raw(stmt(
            backend,
            "INSERT INTO trigger_fires (id, rule_id, window_key, outcome, proposal_id, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (rule_id, window_key) DO NOTHING",
            vec![
                fire_id.into(),
                rule.id.into(),
                window_key.into(),
                outcome.into(),
                proposal_id.into(),
                now.into(),
            ],
        ))
        .await?
        .rows_affected();
    if inserted == 0 {
        // Unreachable while the rule row is locked; never fire twice anyway.
        tx.rollback().await?;
        return Ok(FireOutcome::AlreadyFired);
    }
    if !rejected {
        // Set: the cooldown starts with an accepted proposal only.
        tx.execute_raw(stmt(
            backend,
            "UPDATE trigger_rules SET last_fired_at = $2, fire_count = fire_count + 1 WHERE id = $1",
            vec![rule.id.into(), now.into()],
        ))
        .await?;
    }
    let kind = if rejected {
        "trigger.rejected"
    } else {
        "trigger.fired"
    };
    emit_in(
        &tx,
        kind,
        json!({"rule_id": rule.id, "rule": rule.name, "window_key": firing.window_key,
               "fire_id": fire_id, "proposal_status": status.as_str(),
               "rejection_reason": submitted.proposal.proposal.rejection_reason,
               "detail": firing.detail}),
        Some(proposal_id),
        now,
    )
    .await?;
    tx.commit().await?;

    metrics::counter!("opsloop_heartbeat_trigger_firings_total", "outcome" => outcome).increment(1);
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
