//! Missions and the worker protocol: claim (oldest claimable step, SKIP
//! LOCKED on PostgreSQL), lease renewal, completion and failure fenced by
//! (holder, attempt), retry with backoff, dead letters, stale-lease recovery,
//! cancellation, and the one finalizer that ends a mission and emits its
//! event exactly once.

use chrono::{DateTime, Duration, Utc};
use sea_orm::{
    ActiveModelTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend,
    EntityTrait, Set,
};
use serde_json::json;
use uuid::Uuid;

use super::events::{EventRecord, write_event};
use super::proposals::{audit_file, audit_row};
use super::{Result, WorkflowError, begin_write, db_now, load_policy, lock_mission, stmt};
use crate::audit::{AuditLog, AuditRecord};
use crate::domain::backoff::{Backoff, random_jitter, retry_delay};
use crate::domain::input::StepKind;
use crate::domain::policy::MAX_LEASE_SECONDS;
use crate::domain::status::{MissionStatus, StepStatus, mission_outcome};
use crate::store::entities::{mission_steps, missions, step_dead_letters};

/// A mission with its steps in seq order.
#[derive(Debug, Clone, PartialEq)]
pub struct MissionView {
    pub mission: missions::Model,
    pub steps: Vec<mission_steps::Model>,
    pub step_count: u32,
    pub cost_usd: f64,
    /// Why it ended when it did not succeed.
    pub outcome_detail: Option<String>,
}

/// What ClaimStep handed out.
#[derive(Debug, Clone, PartialEq)]
pub enum ClaimOutcome {
    Claimed(Box<mission_steps::Model>),
    Nothing,
    /// The emergency stop is engaged: nothing is handed out.
    EmergencyStop,
}

fn parse_step_status(step: &mission_steps::Model) -> Result<StepStatus> {
    step.status
        .parse()
        .map_err(|e| WorkflowError::Corrupt(format!("{e}")))
}

/// The lease length: the request's, else `worker_policy`'s, capped.
fn lease_length(requested: Option<u32>, default: u32) -> Duration {
    let seconds = requested.filter(|s| *s > 0).unwrap_or(default);
    Duration::seconds(i64::from(seconds.clamp(1, MAX_LEASE_SECONDS)))
}

/// Hands `worker_id` the oldest claimable step of one of `kinds`: queued, of
/// a running mission, past its backoff, and (unless the mission is
/// parallel) with every earlier step succeeded.
pub async fn claim_step(
    db: &DatabaseConnection,
    worker_id: &str,
    kinds: &[StepKind],
    lease_seconds: Option<u32>,
    now: DateTime<Utc>,
) -> Result<ClaimOutcome> {
    let now = db_now(now);
    let policy = load_policy(db).await?;
    if policy.emergency_stop.engaged {
        return Ok(ClaimOutcome::EmergencyStop);
    }
    if kinds.is_empty() {
        return Ok(ClaimOutcome::Nothing);
    }
    let lease = lease_length(lease_seconds, policy.worker.lease_seconds);
    let tx = begin_write(db).await?;
    let backend = tx.get_database_backend();
    let mut values: Vec<sea_orm::Value> = vec![now.into()];
    let mut placeholders = Vec::with_capacity(kinds.len());
    for kind in kinds {
        values.push(kind.as_str().into());
        placeholders.push(format!("${}", values.len()));
    }
    let lock = if backend == DbBackend::Postgres {
        " FOR UPDATE OF s SKIP LOCKED"
    } else {
        ""
    };
    let sql = format!(
        "SELECT s.id FROM mission_steps s JOIN missions m ON m.id = s.mission_id \
         WHERE s.status = 'queued' AND s.kind IN ({}) AND m.status = 'running' \
         AND (s.next_attempt_at IS NULL OR s.next_attempt_at <= $1) \
         AND (m.parallel OR NOT EXISTS (SELECT 1 FROM mission_steps p \
              WHERE p.mission_id = s.mission_id AND p.seq < s.seq AND p.status <> 'succeeded')) \
         ORDER BY s.created_at, s.mission_id, s.seq LIMIT 1{lock}",
        placeholders.join(", ")
    );
    let Some(row) = tx.query_one_raw(stmt(backend, &sql, values)).await? else {
        tx.commit().await?;
        return Ok(ClaimOutcome::Nothing);
    };
    let step_id: Uuid = row.try_get("", "id")?;
    let expires = now + lease;
    let changed = tx
        .execute_raw(stmt(
            backend,
            "UPDATE mission_steps SET status = 'running', attempt = attempt + 1, lease_holder = $2, \
             lease_expires_at = $3, started_at = $4, updated_at = $4, next_attempt_at = NULL \
             WHERE id = $1 AND status = 'queued'",
            vec![step_id.into(), worker_id.into(), expires.into(), now.into()],
        ))
        .await?
        .rows_affected();
    if changed == 0 {
        // Only possible if another writer got there between our read and
        // write, which the row lock / immediate transaction exclude.
        tx.rollback().await?;
        return Ok(ClaimOutcome::Nothing);
    }
    let step = mission_steps::Entity::find_by_id(step_id)
        .one(&tx)
        .await?
        .ok_or_else(|| WorkflowError::not_found("step", step_id))?;
    write_event(
        &tx,
        EventRecord::api(
            "step.started",
            json!({"kind": step.kind, "seq": step.seq, "attempt": step.attempt,
                   "worker_id": worker_id, "lease_expires_at": expires}),
        )
        .mission(step.mission_id)
        .step(step.id),
        now,
    )
    .await?;
    tx.commit().await?;
    metrics::counter!("opsloop_steps_total", "kind" => step.kind.clone(), "status" => "running")
        .increment(1);
    tracing::info!(step_id = %step.id, mission_id = %step.mission_id, kind = %step.kind,
        attempt = step.attempt, worker_id, "step claimed");
    Ok(ClaimOutcome::Claimed(Box::new(step)))
}

/// Loads a step and checks the caller holds its current lease.
async fn fenced_step(
    tx: &DatabaseTransaction,
    step_id: Uuid,
    worker_id: &str,
    attempt: u32,
) -> Result<mission_steps::Model> {
    let step = mission_steps::Entity::find_by_id(step_id)
        .one(tx)
        .await?
        .ok_or_else(|| WorkflowError::not_found("step", step_id))?;
    let status = parse_step_status(&step)?;
    let lost = |reason: String| WorkflowError::LeaseLost {
        step_id: step_id.to_string(),
        reason,
    };
    if status != StepStatus::Running {
        return Err(lost(format!("step is {status}, not running")));
    }
    if step.lease_holder.as_deref() != Some(worker_id) {
        return Err(lost(format!(
            "lease is held by another worker (attempt {})",
            step.attempt
        )));
    }
    if i64::from(step.attempt) != i64::from(attempt) {
        return Err(lost(format!(
            "attempt {attempt} is not the current attempt {}",
            step.attempt
        )));
    }
    Ok(step)
}

/// The mission a step belongs to, locked (mission first, then step).
async fn lock_mission_of_step(tx: &DatabaseTransaction, step_id: Uuid) -> Result<Uuid> {
    let row = tx
        .query_one_raw(stmt(
            tx.get_database_backend(),
            "SELECT mission_id FROM mission_steps WHERE id = $1",
            vec![step_id.into()],
        ))
        .await?
        .ok_or_else(|| WorkflowError::not_found("step", step_id))?;
    let mission_id: Uuid = row.try_get("", "mission_id")?;
    lock_mission(tx, mission_id).await?;
    Ok(mission_id)
}

/// Extends the lease of a step the caller holds. Returns the new expiry.
pub async fn renew_lease(
    db: &DatabaseConnection,
    step_id: Uuid,
    worker_id: &str,
    attempt: u32,
    lease_seconds: Option<u32>,
    now: DateTime<Utc>,
) -> Result<DateTime<Utc>> {
    let now = db_now(now);
    let policy = load_policy(db).await?;
    let expires = now + lease_length(lease_seconds, policy.worker.lease_seconds);
    let tx = begin_write(db).await?;
    let changed = tx
        .execute_raw(stmt(
            tx.get_database_backend(),
            "UPDATE mission_steps SET lease_expires_at = $4, updated_at = $5 \
             WHERE id = $1 AND status = 'running' AND lease_holder = $2 AND attempt = $3",
            vec![
                step_id.into(),
                worker_id.into(),
                i64::from(attempt).into(),
                expires.into(),
                now.into(),
            ],
        ))
        .await?
        .rows_affected();
    if changed == 0 {
        // Say why: unknown step, or a lost lease.
        fenced_step(&tx, step_id, worker_id, attempt).await?;
        return Err(WorkflowError::Conflict("lease renewal lost a race".into()));
    }
    tx.commit().await?;
    Ok(expires)
}

/// Records a step's success; may finish the mission.
pub async fn complete_step(
    db: &DatabaseConnection,
    step_id: Uuid,
    worker_id: &str,
    attempt: u32,
    result: serde_json::Value,
    cost_usd: Option<f64>,
    now: DateTime<Utc>,
) -> Result<(mission_steps::Model, MissionStatus)> {
    let now = db_now(now);
    let tx = begin_write(db).await?;
    let mission_id = lock_mission_of_step(&tx, step_id).await?;
    let step = fenced_step(&tx, step_id, worker_id, attempt).await?;
    let mut active: mission_steps::ActiveModel = step.into();
    active.status = Set(StepStatus::Succeeded.as_str().to_owned());
    active.result = Set(Some(result));
    active.cost_usd = Set(cost_usd);
    active.lease_holder = Set(None);
    active.lease_expires_at = Set(None);
    active.finished_at = Set(Some(now));
    active.updated_at = Set(now);
    let step = active.update(&tx).await?;
    write_event(
        &tx,
        EventRecord::api(
            "step.succeeded",
            json!({"kind": step.kind, "seq": step.seq, "attempt": step.attempt, "worker_id": worker_id}),
        )
        .mission(mission_id)
        .step(step.id)
        .cost(cost_usd),
        now,
    )
    .await?;
    let status = finalize_mission(&tx, mission_id, now).await?;
    tx.commit().await?;
    metrics::counter!("opsloop_steps_total", "kind" => step.kind.clone(), "status" => "succeeded")
        .increment(1);
    tracing::info!(step_id = %step.id, %mission_id, kind = %step.kind, "step succeeded");
    Ok((step, status))
}

/// Records a failure: requeued with backoff when retryable and attempts
/// remain, else failed terminally with a dead-letter record (failing the
/// mission). Returns the step, whether it was requeued, and the mission's
/// status.
#[allow(clippy::too_many_arguments)]
pub async fn fail_step(
    db: &DatabaseConnection,
    step_id: Uuid,
    worker_id: &str,
    attempt: u32,
    error: &str,
    retryable: bool,
    cost_usd: Option<f64>,
    now: DateTime<Utc>,
) -> Result<(mission_steps::Model, bool, MissionStatus)> {
    let now = db_now(now);
    let policy = load_policy(db).await?;
    let tx = begin_write(db).await?;
    let mission_id = lock_mission_of_step(&tx, step_id).await?;
    let step = fenced_step(&tx, step_id, worker_id, attempt).await?;
    let cost = match (step.cost_usd, cost_usd) {
        (Some(a), Some(b)) => Some(a + b),
        (a, b) => a.or(b),
    };
    let (step, requeued) = fail_or_requeue(
        &tx,
        step,
        error,
        retryable,
        cost,
        Backoff::from(&policy.worker),
        now,
    )
    .await?;
    let status = finalize_mission(&tx, mission_id, now).await?;
    tx.commit().await?;
    Ok((step, requeued, status))
}

async fn fail_or_requeue(
    tx: &DatabaseTransaction,
    step: mission_steps::Model,
    error: &str,
    retryable: bool,
    cost: Option<f64>,
    backoff: Backoff,
    now: DateTime<Utc>,
) -> Result<(mission_steps::Model, bool)> {
    let attempts_left = step.attempt < step.max_attempts;
    let mission_id = step.mission_id;
    let mut active: mission_steps::ActiveModel = step.clone().into();
    active.error = Set(Some(error.to_owned()));
    active.cost_usd = Set(cost);
    active.lease_holder = Set(None);
    active.lease_expires_at = Set(None);
    active.updated_at = Set(now);
    if retryable && attempts_left {
        let attempt = u32::try_from(step.attempt).unwrap_or(1);
        let delay = retry_delay(backoff, attempt, random_jitter());
        let next = db_now(now + Duration::from_std(delay).unwrap_or(Duration::zero()));
        active.status = Set(StepStatus::Queued.as_str().to_owned());
        active.next_attempt_at = Set(Some(next));
        let step = active.update(tx).await?;
        write_event(
            tx,
            EventRecord::api(
                "step.retrying",
                json!({"kind": step.kind, "seq": step.seq, "attempt": step.attempt,
                       "error": error, "next_attempt_at": next}),
            )
            .mission(mission_id)
            .step(step.id),
            now,
        )
        .await?;
        metrics::counter!("opsloop_steps_total", "kind" => step.kind.clone(), "status" => "retrying")
            .increment(1);
        tracing::warn!(step_id = %step.id, %mission_id, attempt = step.attempt, error,
            "step failed, requeued");
        return Ok((step, true));
    }
    active.status = Set(StepStatus::Failed.as_str().to_owned());
    active.finished_at = Set(Some(now));
    let step = active.update(tx).await?;
    step_dead_letters::ActiveModel {
        id: Set(Uuid::now_v7()),
        step_id: Set(step.id),
        mission_id: Set(mission_id),
        kind: Set(step.kind.clone()),
        attempt: Set(step.attempt),
        error: Set(error.to_owned()),
        payload: Set(step.payload.clone()),
        created_at: Set(now),
    }
    .insert(tx)
    .await?;
    write_event(
        tx,
        EventRecord::api(
            "step.failed",
            json!({"kind": step.kind, "seq": step.seq, "attempt": step.attempt,
                   "error": error, "retryable": retryable}),
        )
        .mission(mission_id)
        .step(step.id),
        now,
    )
    .await?;
    metrics::counter!("opsloop_steps_total", "kind" => step.kind.clone(), "status" => "failed")
        .increment(1);
    tracing::warn!(step_id = %step.id, %mission_id, attempt = step.attempt, error, "step failed");
    Ok((step, false))
}

/// The one finalizer: ends a running mission when its steps say so (all
/// succeeded → succeeded; one failed → the rest cancelled, failed). The
/// conditional update makes the mission event happen exactly once. The
/// mission row must already be locked by the caller.
async fn finalize_mission(
    tx: &DatabaseTransaction,
    mission_id: Uuid,
    now: DateTime<Utc>,
) -> Result<MissionStatus> {
    let backend = tx.get_database_backend();
    let steps = steps_of(tx, mission_id).await?;
    let statuses: Vec<StepStatus> = steps.iter().map(parse_step_status).collect::<Result<_>>()?;
    let mission = missions::Entity::find_by_id(mission_id)
        .one(tx)
        .await?
        .ok_or_else(|| WorkflowError::not_found("mission", mission_id))?;
    let current: MissionStatus = mission
        .status
        .parse()
        .map_err(|e| WorkflowError::Corrupt(format!("{e}")))?;
    let Some(outcome) = mission_outcome(&statuses) else {
        return Ok(current);
    };
    if current.is_final() {
        return Ok(current);
    }
    if outcome == MissionStatus::Failed {
        cancel_open_steps(tx, &steps, now, "mission failed").await?;
    }
    let changed = tx
        .execute_raw(stmt(
            backend,
            "UPDATE missions SET status = $2, finished_at = $3, updated_at = $3 \
             WHERE id = $1 AND status = 'running'",
            vec![mission_id.into(), outcome.as_str().into(), now.into()],
        ))
        .await?
        .rows_affected();
    if changed == 1 {
        let failed_error = steps
            .iter()
            .zip(&statuses)
            .find(|(_, s)| **s == StepStatus::Failed)
            .and_then(|(step, _)| step.error.clone());
        write_event(
            tx,
            EventRecord::api(
                &format!("mission.{}", outcome.as_str()),
                json!({"title": mission.title, "step_count": steps.len(), "error": failed_error}),
            )
            .proposal(mission.proposal_id)
            .mission(mission_id),
            now,
        )
        .await?;
        metrics::counter!("opsloop_missions_total", "status" => outcome.as_str()).increment(1);
        tracing::info!(%mission_id, status = outcome.as_str(), "mission finished");
    }
    Ok(outcome)
}

async fn steps_of(
    tx: &impl ConnectionTrait,
    mission_id: Uuid,
) -> Result<Vec<mission_steps::Model>> {
    Ok(mission_steps::Entity::find()
        .from_raw_sql(stmt(
            tx.get_database_backend(),
            "SELECT * FROM mission_steps WHERE mission_id = $1 ORDER BY seq",
            vec![mission_id.into()],
        ))
        .all(tx)
        .await?)
}

async fn cancel_open_steps(
    tx: &DatabaseTransaction,
    steps: &[mission_steps::Model],
    now: DateTime<Utc>,
    why: &str,
) -> Result<usize> {
    let mut cancelled = 0;
    for step in steps {
        let status = parse_step_status(step)?;
        if !status.can_become(StepStatus::Cancelled) {
            continue;
        }
        let changed = tx
            .execute_raw(stmt(
                tx.get_database_backend(),
                "UPDATE mission_steps SET status = 'cancelled', lease_holder = NULL, \
                 lease_expires_at = NULL, finished_at = $2, updated_at = $2 \
                 WHERE id = $1 AND status IN ('queued', 'running')",
                vec![step.id.into(), now.into()],
            ))
            .await?
            .rows_affected();
        if changed == 1 {
            cancelled += 1;
            write_event(
                tx,
                EventRecord::api(
                    "step.cancelled",
                    json!({"kind": step.kind, "seq": step.seq, "reason": why}),
                )
                .mission(step.mission_id)
                .step(step.id),
                now,
            )
            .await?;
        }
    }
    Ok(cancelled)
}

/// CancelMission: running → cancelled with its queued and running steps.
pub async fn cancel_mission(
    db: &DatabaseConnection,
    mission_id: Uuid,
    actor: &str,
    reason: &str,
    audit: Option<&AuditLog>,
    now: DateTime<Utc>,
) -> Result<MissionView> {
    let now = db_now(now);
    let tx = begin_write(db).await?;
    let status = lock_mission(&tx, mission_id)
        .await?
        .ok_or_else(|| WorkflowError::not_found("mission", mission_id))?;
    let current: MissionStatus = status
        .parse()
        .map_err(|e| WorkflowError::Corrupt(format!("{e}")))?;
    current.transition(MissionStatus::Cancelled)?;
    let steps = steps_of(&tx, mission_id).await?;
    let cancelled = cancel_open_steps(&tx, &steps, now, reason).await?;
    let changed = tx
        .execute_raw(stmt(
            tx.get_database_backend(),
            "UPDATE missions SET status = 'cancelled', finished_at = $2, updated_at = $2 \
             WHERE id = $1 AND status = 'running'",
            vec![mission_id.into(), now.into()],
        ))
        .await?
        .rows_affected();
    if changed == 0 {
        // Excluded by the mission lock; kept as a typed error, not a panic.
        return Err(WorkflowError::Conflict(format!(
            "mission {mission_id} changed while being cancelled"
        )));
    }
    write_event(
        &tx,
        EventRecord::api(
            "mission.cancelled",
            json!({"actor": actor, "reason": reason, "cancelled_steps": cancelled}),
        )
        .mission(mission_id),
        now,
    )
    .await?;
    let record = AuditRecord {
        at: now,
        actor: actor.to_owned(),
        action: "mission.cancel".into(),
        subject: format!("mission/{mission_id}"),
        reason: Some(reason.to_owned()),
        before: Some(json!({"status": "running"})),
        after: Some(json!({"status": "cancelled", "cancelled_steps": cancelled})),
    };
    audit_row(&tx, &record).await?;
    tx.commit().await?;
    audit_file(audit, &record);
    metrics::counter!("opsloop_missions_total", "status" => "cancelled").increment(1);
    tracing::info!(%mission_id, actor, cancelled_steps = cancelled, "mission cancelled");
    get_mission(db, mission_id).await
}

/// What [`recover_stale_steps`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Steps whose lease expired and that went back to the queue.
    pub requeued: Vec<Uuid>,
    /// Steps whose lease expired on their last attempt: failed.
    pub failed: Vec<Uuid>,
}

/// Running steps whose lease expired before `now`: back to queued while
/// attempts remain (`running → queued`), else failed with `lease_expired`
/// (dead letter, mission failed). The heartbeat calls it every tick.
pub async fn recover_stale_steps(
    db: &DatabaseConnection,
    now: DateTime<Utc>,
) -> Result<RecoveryReport> {
    let now = db_now(now);
    let policy = load_policy(db).await?;
    let stale = mission_steps::Entity::find()
        .from_raw_sql(stmt(
            db.get_database_backend(),
            "SELECT * FROM mission_steps WHERE status = 'running' AND lease_expires_at < $1 \
             ORDER BY lease_expires_at LIMIT 500",
            vec![now.into()],
        ))
        .all(db)
        .await?;
    let mut report = RecoveryReport::default();
    for candidate in stale {
        let tx = begin_write(db).await?;
        lock_mission(&tx, candidate.mission_id).await?;
        // Re-read under the lock: the worker may have finished meanwhile.
        let step = mission_steps::Entity::find_by_id(candidate.id)
            .one(&tx)
            .await?;
        let Some(step) = step.filter(|s| {
            s.status == "running"
                && s.attempt == candidate.attempt
                && s.lease_expires_at.is_some_and(|t| t < now)
        }) else {
            tx.rollback().await?;
            continue;
        };
        let step_id = step.id;
        let mission_id = step.mission_id;
        if step.attempt < step.max_attempts {
            let changed = tx
                .execute_raw(stmt(
                    tx.get_database_backend(),
                    "UPDATE mission_steps SET status = 'queued', lease_holder = NULL, \
                     lease_expires_at = NULL, error = 'lease_expired', updated_at = $2 \
                     WHERE id = $1 AND status = 'running'",
                    vec![step_id.into(), now.into()],
                ))
                .await?
                .rows_affected();
            if changed == 1 {
                write_event(
                    &tx,
                    EventRecord::api(
                        "step.lease_expired",
                        json!({"kind": step.kind, "seq": step.seq, "attempt": step.attempt,
                               "worker_id": step.lease_holder, "requeued": true}),
                    )
                    .mission(mission_id)
                    .step(step_id),
                    now,
                )
                .await?;
                report.requeued.push(step_id);
            }
        } else {
            fail_or_requeue(
                &tx,
                step,
                "lease_expired",
                false,
                None,
                Backoff::from(&policy.worker),
                now,
            )
            .await?;
            finalize_mission(&tx, mission_id, now).await?;
            report.failed.push(step_id);
        }
        tx.commit().await?;
    }
    if !report.requeued.is_empty() || !report.failed.is_empty() {
        tracing::warn!(
            requeued = report.requeued.len(),
            failed = report.failed.len(),
            "recovered steps with expired leases"
        );
    }
    Ok(report)
}

/// One mission with its steps.
pub async fn get_mission(db: &impl ConnectionTrait, mission_id: Uuid) -> Result<MissionView> {
    let mission = missions::Entity::find_by_id(mission_id)
        .one(db)
        .await?
        .ok_or_else(|| WorkflowError::not_found("mission", mission_id))?;
    let steps = steps_of(db, mission_id).await?;
    let mut view = summarize(mission, &steps);
    view.outcome_detail = outcome_detail(db, &view).await?;
    view.steps = steps;
    Ok(view)
}

fn summarize(mission: missions::Model, steps: &[mission_steps::Model]) -> MissionView {
    MissionView {
        mission,
        steps: Vec::new(),
        step_count: u32::try_from(steps.len()).unwrap_or(u32::MAX),
        cost_usd: steps.iter().filter_map(|s| s.cost_usd).sum(),
        outcome_detail: None,
    }
}

async fn outcome_detail(db: &impl ConnectionTrait, view: &MissionView) -> Result<Option<String>> {
    let kind = match view.mission.status.as_str() {
        "failed" => "mission.failed",
        "cancelled" => "mission.cancelled",
        _ => return Ok(None),
    };
    let row = db
        .query_one_raw(stmt(
            db.get_database_backend(),
            "SELECT payload FROM events WHERE mission_id = $1 AND kind = $2 ORDER BY seq DESC LIMIT 1",
            vec![view.mission.id.into(), kind.into()],
        ))
        .await?;
    let Some(row) = row else { return Ok(None) };
    let payload: serde_json::Value = row.try_get("", "payload")?;
    let field = if kind == "mission.failed" {
        "error"
    } else {
        "reason"
    };
    Ok(payload
        .get(field)
        .and_then(|v| v.as_str())
        .map(str::to_owned))
}

/// Filters of ListMissions.
#[derive(Debug, Clone, Default)]
pub struct MissionFilter {
    pub status: Option<MissionStatus>,
    pub proposal_id: Option<Uuid>,
    pub created_after: Option<DateTime<Utc>>,
    pub created_before: Option<DateTime<Utc>>,
    pub after: Option<(DateTime<Utc>, Uuid)>,
    pub limit: u64,
}

/// Missions newest first, without their steps (but with count and cost).
pub async fn list_missions(
    db: &DatabaseConnection,
    filter: &MissionFilter,
) -> Result<Vec<MissionView>> {
    let mut sql = String::from("SELECT * FROM missions WHERE 1=1");
    let mut values: Vec<sea_orm::Value> = Vec::new();
    let mut add = |cond: &str, v: Vec<sea_orm::Value>, sql: &mut String| {
        let mut cond = cond.to_owned();
        for value in v {
            values.push(value);
            cond = cond.replacen("$?", &format!("${}", values.len()), 1);
        }
        sql.push_str(&cond);
    };
    if let Some(status) = filter.status {
        add(" AND status = $?", vec![status.as_str().into()], &mut sql);
    }
    if let Some(p) = filter.proposal_id {
        add(" AND proposal_id = $?", vec![p.into()], &mut sql);
    }
    if let Some(t) = filter.created_after {
        add(" AND created_at >= $?", vec![t.into()], &mut sql);
    }
    if let Some(t) = filter.created_before {
        add(" AND created_at < $?", vec![t.into()], &mut sql);
    }
    if let Some((t, id)) = filter.after {
        add(
            " AND (created_at < $? OR (created_at = $? AND id < $?))",
            vec![t.into(), t.into(), id.into()],
            &mut sql,
        );
    }
    sql.push_str(&format!(
        " ORDER BY created_at DESC, id DESC LIMIT {}",
        filter.limit.clamp(1, 1000)
    ));
    let rows = missions::Entity::find()
        .from_raw_sql(stmt(db.get_database_backend(), &sql, values))
        .all(db)
        .await?;
    let mut views = Vec::with_capacity(rows.len());
    for mission in rows {
        let steps = steps_of(db, mission.id).await?;
        let mut view = summarize(mission, &steps);
        view.outcome_detail = outcome_detail(db, &view).await?;
        views.push(view);
    }
    Ok(views)
}
