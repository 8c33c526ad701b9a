//! Reactions: events matched against the reaction matrix become queued
//! reactions (one per (event, pattern), the roll recorded, the cooldown per
//! pattern and target claimed in the same transaction), and the queue is
//! drained into proposals with `source=reaction` through the single entry
//! point. Matching happens as events arrive on the bus ([`consume`]) and in
//! the tick as a catch-up behind the `reactions` cursor; both are idempotent
//! on the event id. An event the catch-up fails on (unparseable, or its
//! reactions cannot be recorded) is retried on later ticks and quarantined
//! after `quarantine_after_failures` attempts; each drained reaction becomes
//! its proposal and its new status in one transaction.

use std::sync::Arc;
use std::time::Duration as StdDuration;

use chrono::{DateTime, Utc};
use opsloop_core::bus::{Bus, QueueSpec};
use opsloop_core::domain::input::ProposalSource;
use opsloop_core::domain::status::ProposalStatus;
use opsloop_core::store::entities::reactions;
use opsloop_core::workflow::{self, WorkflowError, db_now};
use sea_orm::{ConnectionTrait, DatabaseConnection, EntityTrait};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::db::{self, begin_write, stmt};
use crate::heartbeat::{Heartbeat, HeartbeatError};
use crate::matching::{EventView, event_var, render};
use crate::reaction_matrix::{ReactionPattern, match_event, reaction_dedupe_key};
use crate::template::build_proposal;

/// The catch-up cursor.
pub const CONSUMER: &str = "reactions";

/// Most queued reactions drained per tick.
const DRAIN_BATCH: u64 = 200;

/// The matrix as stored; a bad pattern is logged and skipped.
pub async fn load_patterns(
    db: &impl ConnectionTrait,
) -> Result<Vec<ReactionPattern>, HeartbeatError> {
    let value = match workflow::get_policy(db, "reaction_matrix").await {
        Ok(row) => row.value,
        Err(WorkflowError::NotFound { .. }) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let (good, bad) = ReactionPattern::parse_matrix(&value);
    for error in bad {
        tracing::warn!(%error, "reaction pattern skipped");
    }
    Ok(good)
}

/// What matching one event did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Enqueued {
    pub queued: u32,
    pub skipped: u32,
    pub cooling_down: u32,
    pub duplicates: u32,
}

/// Matches `event` against `patterns` and records one reaction per match.
pub async fn enqueue(
    db: &DatabaseConnection,
    patterns: &[ReactionPattern],
    event: &EventView,
    now: DateTime<Utc>,
) -> Result<Enqueued, HeartbeatError> {
    let now = db_now(now);
    let mut counts = Enqueued::default();
    for m in match_event(patterns, event) {
        let tx = begin_write(db).await?;
        let backend = tx.get_database_backend();
        let seen = tx
            .query_one_raw(stmt(
                backend,
                "SELECT id FROM reactions WHERE event_id = $1 AND pattern_id = $2",
                vec![event.id.into(), m.pattern.id.clone().into()],
            ))
            .await?;
        if seen.is_some() {
            tx.rollback().await?;
            counts.duplicates += 1;
            continue;
        }
        let mut status = if m.selected { "queued" } else { "skipped" };
        if m.selected
            && m.pattern.cooldown > chrono::Duration::zero()
            && !db::claim_cooldown(
                &tx,
                &m.pattern.cooldown_name(),
                now + m.pattern.cooldown,
                now,
            )
            .await?
        {
            status = "cooldown";
        }
        let mut template = render(&m.pattern.template, &|name| event_var(event, name));
        if let Value::Object(map) = &mut template {
            map.entry("agent")
                .or_insert_with(|| json!(m.pattern.target));
        }
        let inserted = tx
            .execute_raw(stmt(
                backend,
                "INSERT INTO reactions (id, event_id, pattern_id, target, status, probability, roll, \
                 template, proposal_id, created_at, processed_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL, $9, NULL) \
                 ON CONFLICT (event_id, pattern_id) DO NOTHING",
                vec![
                    Uuid::now_v7().into(),
                    event.id.into(),
                    m.pattern.id.clone().into(),
                    m.pattern.target.clone().into(),
                    status.into(),
                    m.pattern.probability.into(),
                    m.roll.into(),
                    template.into(),
                    now.into(),
                ],
            ))
            .await?
            .rows_affected();
        if inserted == 0 {
            // A racing consumer recorded it first; undo our cooldown claim.
            tx.rollback().await?;
            counts.duplicates += 1;
            continue;
        }
        tx.commit().await?;
        match status {
            "queued" => counts.queued += 1,
            "skipped" => counts.skipped += 1,
            _ => counts.cooling_down += 1,
        }
        metrics::counter!("opsloop_heartbeat_reactions_total", "status" => status).increment(1);
        tracing::debug!(event_id = %event.id, pattern = %m.pattern.id, roll = m.roll,
            probability = m.pattern.probability, status, "reaction recorded");
    }
    Ok(counts)
}

/// The tick's reaction phase: catch up behind the cursor (and the retry
/// set of events that failed to evaluate), then drain.
pub async fn run(hb: &Heartbeat, now: DateTime<Utc>) -> Result<Value, HeartbeatError> {
    let db = hb.db();
    let now = db_now(now);
    let settings = hb.settings();
    let patterns = load_patterns(db).await?;
    let examined = db::examine(
        db,
        CONSUMER,
        settings.event_batch,
        settings.quarantine_after_failures,
        now,
    )
    .await?;
    let max_failures = settings.quarantine_after_failures;
    let (mut total, mut failed, mut quarantined) =
        (Enqueued::default(), examined.failed, examined.quarantined);
    // Matching one event; a failure counts as an attempt at that event
    // (retried on later ticks, quarantined after `max_failures`). When even
    // recording the attempt fails (database down), the phase fails.
    let mut attempt = async |event: &EventView, retried: bool| -> Result<(), HeartbeatError> {
        if patterns.is_empty() {
            if retried {
                db::clear_failure(db, CONSUMER, event.seq).await?;
            }
            return Ok(());
        }
        match enqueue(db, &patterns, event, now).await {
            Ok(c) => {
                total.queued += c.queued;
                total.skipped += c.skipped;
                total.cooling_down += c.cooling_down;
                total.duplicates += c.duplicates;
                if retried {
                    db::clear_failure(db, CONSUMER, event.seq).await?;
                }
            }
            Err(error) => {
                let reason = format!("reactions: {error}");
                if db::record_failure(db, CONSUMER, event.seq, &reason, max_failures, now).await? {
                    quarantined += 1;
                } else {
                    failed += 1;
                }
            }
        }
        Ok(())
    };
    for event in &examined.retried {
        attempt(event, true).await?;
    }
    for (seq, event) in &examined.new {
        if let Some(event) = event {
            attempt(event, false).await?;
        }
        // Advance per event, so a timeout keeps what was done.
        db::advance_cursor(db, CONSUMER, *seq, now).await?;
    }
    let drained = drain(db, now).await?;
    Ok(
        json!({"new_events": examined.new.len(), "retried": examined.retried.len(),
              "failed": failed, "quarantined": quarantined,
              "queued": total.queued,
              "skipped": total.skipped, "cooling_down": total.cooling_down,
              "duplicates": total.duplicates, "proposed": drained.0, "rejected": drained.1,
              "invalid": drained.2}),
    )
}

/// Turns queued reactions into proposals, oldest first. Returns (proposed,
/// rejected, invalid).
pub async fn drain(
    db: &DatabaseConnection,
    now: DateTime<Utc>,
) -> Result<(u32, u32, u32), HeartbeatError> {
    let backend = db.get_database_backend();
    let queued = reactions::Entity::find()
        .from_raw_sql(stmt(
            backend,
            &format!(
                "SELECT * FROM reactions WHERE status = 'queued' ORDER BY created_at, id LIMIT {DRAIN_BATCH}"
            ),
            vec![],
        ))
        .all(db)
        .await?;
    let (mut proposed, mut rejected, mut invalid) = (0, 0, 0);
    for reaction in queued {
        let dedupe = reaction_dedupe_key(reaction.event_id, &reaction.pattern_id);
        // The template was rendered from the event when it was queued.
        let built = build_proposal(
            &reaction.template,
            &|_| None,
            ProposalSource::Reaction,
            &reaction.target,
            &dedupe,
            json!({"reaction": {"event_id": reaction.event_id, "pattern_id": reaction.pattern_id,
                                "roll": reaction.roll, "probability": reaction.probability}}),
        );
        // One transaction: the proposal and the reaction's new status commit
        // together; a racing drainer that got there first leaves nothing.
        let tx = begin_write(db).await?;
        let (status, proposal_id) = match built {
            Err(error) => {
                tracing::warn!(reaction_id = %reaction.id, %error, "reaction template is invalid");
                ("invalid", None)
            }
            Ok(proposal) => {
                let outcome = workflow::submit_proposal_in(&tx, proposal, now).await?;
                if outcome.proposal.status()? == ProposalStatus::Rejected {
                    ("rejected", Some(outcome.proposal.proposal.id))
                } else {
                    ("proposed", Some(outcome.proposal.proposal.id))
                }
            }
        };
        let changed = tx
            .execute_raw(stmt(
                backend,
                "UPDATE reactions SET status = $2, proposal_id = $3, processed_at = $4 \
                 WHERE id = $1 AND status = 'queued'",
                vec![
                    reaction.id.into(),
                    status.into(),
                    proposal_id.into(),
                    db_now(now).into(),
                ],
            ))
            .await?
            .rows_affected();
        if changed == 0 {
            tx.rollback().await?;
            continue;
        }
        tx.commit().await?;
        match status {
            "invalid" => invalid += 1,
            "rejected" => rejected += 1,
            _ => proposed += 1,
        }
    }
    Ok((proposed, rejected, invalid))
}

/// An `event.#` message body (the workflow's event JSON) as an event.
pub fn parse_event_message(payload: &[u8]) -> Result<EventView, String> {
    let v: Value = serde_json::from_slice(payload).map_err(|e| format!("not JSON: {e}"))?;
    let field = |k: &str| v.get(k).ok_or_else(|| format!("missing {k}"));
    let text = |k: &str| -> Result<String, String> {
        field(k)?
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("{k} must be a string"))
    };
    let id = Uuid::parse_str(&text("id")?).map_err(|_| "id must be a UUID".to_owned())?;
    let created_at = DateTime::parse_from_rfc3339(&text("created_at")?)
        .map_err(|_| "created_at must be RFC 3339".to_owned())?
        .with_timezone(&Utc);
    let tags = match v.get("tags") {
        Some(Value::Array(items)) => items
            .iter()
            .map(|t| {
                t.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| "tags must be strings".to_owned())
            })
            .collect::<Result<Vec<_>, _>>()?,
        _ => Vec::new(),
    };
    Ok(EventView {
        seq: v.get("seq").and_then(Value::as_i64).unwrap_or(0),
        id,
        kind: text("kind")?,
        source: text("source")?,
        tags,
        payload: v.get("payload").cloned().unwrap_or(Value::Null),
        mission_id: v
            .get("mission_id")
            .and_then(Value::as_str)
            .and_then(|s| Uuid::parse_str(s).ok()),
        created_at,
    })
}

/// Consumes `event.#` and records reactions as events arrive, until
/// `shutdown`. A malformed message is dead-lettered; a failure hands the
/// message back for one more try, a second one leaves the event to the
/// tick's catch-up (which sees every event, retries and quarantines).
pub async fn consume(
    db: DatabaseConnection,
    bus: Arc<dyn Bus>,
    queue: String,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut subscription = bus
        .subscribe(QueueSpec::new(queue.clone(), &["event.#"]))
        .await?;
    tracing::info!(%queue, "consuming events for reactions");
    loop {
        let delivery = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            next = subscription.next() => match next {
                Some(delivery) => delivery,
                None => return Ok(()),
            },
        };
        let event = match parse_event_message(&delivery.message.payload) {
            Ok(event) => event,
            Err(error) => {
                tracing::error!(message_id = %delivery.message.id, %error, "malformed event message dead-lettered");
                if let Err(error) = delivery.nack(false).await {
                    tracing::warn!(%error, "cannot settle event message");
                }
                continue;
            }
        };
        let handled = async {
            let patterns = load_patterns(&db).await?;
            enqueue(&db, &patterns, &event, Utc::now()).await
        }
        .await;
        let settled = match handled {
            Ok(_) => delivery.ack().await,
            Err(error) if delivery.redelivered => {
                // Failed twice: the tick's catch-up (behind its cursor, with
                // bounded retries and quarantine) takes it from here, so a
                // poison event never circles the queue forever.
                tracing::warn!(event_id = %event.id, %error,
                    "cannot record reactions again; left to the tick's catch-up");
                delivery.ack().await
            }
            Err(error) => {
                tracing::warn!(event_id = %event.id, %error, "cannot record reactions; requeueing");
                tokio::time::sleep(StdDuration::from_millis(500)).await;
                delivery.nack(true).await
            }
        };
        if let Err(error) = settled {
            tracing::warn!(%error, "cannot settle event message");
        }
    }
}
