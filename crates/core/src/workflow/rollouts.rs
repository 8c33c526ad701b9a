//! Staged rollouts on the database: create one (at most one active), read
//! it with a fresh go/no-go report, advance (refused on anything but `go`
//! unless forced with a reason), roll back, and the heartbeat's evaluation
//! ([`evaluate_active`]). Entering a phase writes its toggles and daily
//! caps through the same policy write as `SetPolicy` (history, event,
//! audit), in the transaction that moves the rollout, so a rollout and the
//! policy it set never disagree. The evidence comes from opsloop's own
//! records: missions, incidents, events, proposals and cost.

use chrono::{DateTime, Duration, TimeZone, Utc};
use chrono_tz::Tz;
use sea_orm::{
    ActiveModelTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction, EntityTrait, Set,
};
use serde_json::json;
use uuid::Uuid;

use super::events::{EventRecord, glob_to_like, write_event};
use super::policy::write_policy_in;
use super::proposals::{audit_file, audit_row};
use super::{PolicyChange, Result, WorkflowError, begin_write, db_now, for_update, stmt};
use crate::audit::{AuditLog, AuditRecord};
use crate::domain::policy::{PolicyKey, PolicyValue, Toggle};
use crate::domain::rollout::{
    Criterion, Evidence, GoNoGoReport, PhaseSpec, RolloutSpec, Verdict, judge, levels_at_or_above,
    validate,
};
use crate::store::entities::rollouts;

/// Rollout statuses.
pub const ACTIVE: &str = "active";
pub const COMPLETED: &str = "completed";
pub const ROLLED_BACK: &str = "rolled_back";

/// A rollout with its parsed phases and, when active, a fresh report.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutView {
    pub row: rollouts::Model,
    pub spec: RolloutSpec,
    pub report: Option<GoNoGoReport>,
}

impl RolloutView {
    /// The current phase.
    pub fn phase(&self) -> &PhaseSpec {
        let i = usize::try_from(self.row.phase_index).unwrap_or(0);
        &self.spec.phases[i.min(self.spec.phases.len() - 1)]
    }
}

fn parse_spec(row: &rollouts::Model) -> Result<RolloutSpec> {
    let spec: RolloutSpec = serde_json::from_value(row.spec.clone())
        .map_err(|e| WorkflowError::Corrupt(format!("rollout {}: {e}", row.id)))?;
    if spec.phases.is_empty() {
        return Err(WorkflowError::Corrupt(format!(
            "rollout {}: no phases",
            row.id
        )));
    }
    Ok(spec)
}

/// Starts `spec` at its first phase (whose toggles and caps are written).
/// Refused when another rollout is active.
pub async fn create_rollout(
    db: &DatabaseConnection,
    spec: RolloutSpec,
    actor: &str,
    audit: Option<&AuditLog>,
    now: DateTime<Utc>,
) -> Result<RolloutView> {
    validate(&spec)?;
    let now = db_now(now);
    let tx = begin_write(db).await?;
    if let Some(active) = active_row(&tx, true).await? {
        return Err(WorkflowError::AlreadyExists(format!(
            "rollout {:?} ({}) is active: advance it to the end or roll it back first",
            active.name, active.id
        )));
    }
    let row = rollouts::ActiveModel {
        id: Set(Uuid::now_v7()),
        name: Set(spec.name.clone()),
        spec: Set(serde_json::to_value(&spec).map_err(|e| WorkflowError::Corrupt(e.to_string()))?),
        status: Set(ACTIVE.into()),
        phase_index: Set(0),
        phase_started_at: Set(now),
        active_slot: Set(Some(ACTIVE.into())),
        last_verdict: Set(None),
        last_report: Set(None),
        created_by: Set(actor.to_owned()),
        created_at: Set(now),
        updated_at: Set(now),
    }
    .insert(&tx)
    .await
    .map_err(|e| {
        let text = e.to_string().to_lowercase();
        if text.contains("ux_rollouts_active_slot") || text.contains("unique") {
            WorkflowError::AlreadyExists("another rollout became active at the same time".into())
        } else {
            WorkflowError::Db(e)
        }
    })?;
    let reason = format!(
        "rollout {:?} entered phase {}",
        spec.name, spec.phases[0].name
    );
    let mut records = enter_phase(&tx, &spec.phases[0], actor, &reason, now).await?;
    write_event(
        &tx,
        EventRecord::api(
            "rollout.started",
            json!({"rollout_id": row.id, "name": spec.name, "phase": spec.phases[0].name,
                   "phases": spec.phases.iter().map(|p| &p.name).collect::<Vec<_>>(),
                   "auto_advance": spec.auto_advance, "actor": actor}),
        ),
        now,
    )
    .await?;
    records.push(record(
        actor,
        "rollout.create",
        &row,
        None,
        Some(&spec.phases[0].name),
        now,
    ));
    audit_row(&tx, records.last().expect("just pushed")).await?;
    tx.commit().await?;
    for r in &records {
        audit_file(audit, r);
    }
    Ok(RolloutView {
        row,
        spec,
        report: None,
    })
}

/// The active rollout with a fresh report, or else the newest one (no
/// report); `None` when no rollout was ever created.
pub async fn current_rollout(
    db: &impl ConnectionTrait,
    now: DateTime<Utc>,
) -> Result<Option<RolloutView>> {
    if let Some(row) = active_row(db, false).await? {
        let spec = parse_spec(&row)?;
        let report = evaluate(db, &row, &spec, now).await?;
        return Ok(Some(RolloutView {
            row,
            spec,
            report: Some(report),
        }));
    }
    let newest = rollouts::Entity::find()
        .from_raw_sql(stmt(
            db.get_database_backend(),
            "SELECT * FROM rollouts ORDER BY created_at DESC, id DESC LIMIT 1",
            vec![],
        ))
        .one(db)
        .await?;
    match newest {
        Some(row) => Ok(Some(RolloutView {
            spec: parse_spec(&row)?,
            row,
            report: None,
        })),
        None => Ok(None),
    }
}

async fn active_row(db: &impl ConnectionTrait, lock: bool) -> Result<Option<rollouts::Model>> {
    let backend = db.get_database_backend();
    Ok(rollouts::Entity::find()
        .from_raw_sql(stmt(
            backend,
            &format!(
                "SELECT * FROM rollouts WHERE active_slot = 'active'{}",
                if lock { for_update(backend) } else { "" }
            ),
            vec![],
        ))
        .one(db)
        .await?)
}

/// The go/no-go report of `row`'s current phase at `now`.
pub async fn evaluate(
    db: &impl ConnectionTrait,
    row: &rollouts::Model,
    spec: &RolloutSpec,
    now: DateTime<Utc>,
) -> Result<GoNoGoReport> {
    let now = db_now(now);
    let index = usize::try_from(row.phase_index)
        .unwrap_or(0)
        .min(spec.phases.len() - 1);
    let phase = &spec.phases[index];
    let since = row.phase_started_at;
    let mut evidence = Vec::with_capacity(phase.criteria.len());
    for criterion in &phase.criteria {
        evidence.push(gather(db, criterion, since, now).await?);
    }
    let elapsed = u64::try_from((now - since).num_seconds()).unwrap_or(0);
    Ok(judge(spec, index, elapsed, &evidence))
}

async fn count(db: &impl ConnectionTrait, sql: &str, values: Vec<sea_orm::Value>) -> Result<u64> {
    Ok(u64::try_from(super::ops::scalar(db, sql, values).await?).unwrap_or(0))
}

/// `$first, $first+1, …` for `n` values.
fn placeholders(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

async fn gather(
    db: &impl ConnectionTrait,
    criterion: &Criterion,
    since: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<Evidence> {
    Ok(match criterion {
        Criterion::MissionSuccessRate { kinds, .. } => {
            let mut filter = String::new();
            let mut values: Vec<sea_orm::Value> = vec![since.into(), now.into()];
            if !kinds.is_empty() {
                filter = format!(
                    " AND id IN (SELECT mission_id FROM mission_steps WHERE kind IN ({}))",
                    placeholders(3, kinds.len())
                );
                values.extend(kinds.iter().map(|k| k.as_str().into()));
            }
            let mut outcomes = [0u64; 2];
            for (slot, status) in outcomes.iter_mut().zip(["succeeded", "failed"]) {
                let mut values = values.clone();
                values.push(status.into());
                let sql = format!(
                    "SELECT COUNT(*) AS n FROM missions WHERE finished_at >= $1 AND finished_at <= $2 \
                     AND status = ${}{filter}",
                    values.len()
                );
                *slot = count(db, &sql, values).await?;
            }
            Evidence::Missions {
                succeeded: outcomes[0],
                failed: outcomes[1],
            }
        }
        Criterion::Incidents { level, .. } => {
            let levels = levels_at_or_above(level);
            let mut values: Vec<sea_orm::Value> = vec![since.into(), now.into()];
            values.extend(levels.iter().map(|l| (*l).into()));
            let sql = format!(
                "SELECT COUNT(*) AS n FROM incidents WHERE opened_at >= $1 AND opened_at <= $2 \
                 AND level IN ({})",
                placeholders(3, levels.len())
            );
            Evidence::Incidents {
                opened: count(db, &sql, values).await?,
            }
        }
        Criterion::EventSeen { kind, .. } => {
            let like = glob_to_like(kind)?;
            Evidence::Events {
                seen: count(
                    db,
                    "SELECT COUNT(*) AS n FROM events WHERE created_at >= $1 AND created_at <= $2 \
                     AND kind LIKE $3 ESCAPE '\\'",
                    vec![since.into(), now.into(), like.into()],
                )
                .await?,
            }
        }
        Criterion::TriggerChain { .. } => Evidence::Chains {
            completed: count(
                db,
                "SELECT COUNT(*) AS n FROM missions m JOIN proposals p ON p.id = m.proposal_id \
                 WHERE m.status = 'succeeded' AND m.finished_at >= $1 AND m.finished_at <= $2 \
                 AND p.source IN ('trigger', 'reaction')",
                vec![since.into(), now.into()],
            )
            .await?,
        },
        Criterion::CostWithinBudget => {
            let row = super::get_policy(db, "cost_budget").await?;
            let budget = match PolicyValue::parse(&PolicyKey::CostBudget, &row.value) {
                Ok(PolicyValue::CostBudget(b)) => b,
                _ => return Err(WorkflowError::Corrupt("cost_budget".into())),
            };
            let tz: Tz = budget.timezone.parse().unwrap_or(chrono_tz::UTC);
            let local = now.with_timezone(&tz).date_naive();
            let day_start = tz
                .from_local_datetime(&local.and_hms_opt(0, 0, 0).unwrap_or_default())
                .earliest()
                .map(|t| t.with_timezone(&Utc))
                .unwrap_or(now - Duration::days(1));
            Evidence::Cost {
                spent_today_usd: super::ops::sum_cost(db, day_start).await?,
                daily_budget_usd: budget.daily_usd,
            }
        }
    })
}

/// Writes `phase`'s toggles and daily caps where they differ from the
/// stored policy, through the audited policy write; returns the audit
/// records for the file.
async fn enter_phase(
    tx: &DatabaseTransaction,
    phase: &PhaseSpec,
    actor: &str,
    reason: &str,
    now: DateTime<Utc>,
) -> Result<Vec<AuditRecord>> {
    let mut records = Vec::new();
    for (key, on) in &phase.toggles {
        let wanted = serde_json::to_value(Toggle { enabled: *on })
            .map_err(|e| WorkflowError::Corrupt(e.to_string()))?;
        let current = super::get_policy(tx, key).await.ok().map(|row| row.value);
        if current.as_ref() == Some(&wanted) {
            continue;
        }
        let record =
            write_as_rollout(tx, &PolicyKey::parse(key)?, wanted, actor, reason, now).await?;
        records.push(record);
    }
    if !phase.caps.is_empty() {
        let row = super::get_policy(tx, "step_gates").await?;
        let mut gates = match PolicyValue::parse(&PolicyKey::StepGates, &row.value) {
            Ok(PolicyValue::StepGates(g)) => g,
            _ => return Err(WorkflowError::Corrupt("step_gates".into())),
        };
        for (kind, cap) in &phase.caps {
            gates.kinds.entry(kind.clone()).or_default().daily_cap = Some(*cap);
        }
        let wanted =
            serde_json::to_value(&gates).map_err(|e| WorkflowError::Corrupt(e.to_string()))?;
        if wanted != row.value {
            let record =
                write_as_rollout(tx, &PolicyKey::StepGates, wanted, actor, reason, now).await?;
            records.push(record);
        }
    }
    Ok(records)
}

/// One policy value written by a rollout move (`policy.set`, with the move's
/// reason), inside its transaction.
async fn write_as_rollout(
    tx: &DatabaseTransaction,
    key: &PolicyKey,
    value: serde_json::Value,
    actor: &str,
    reason: &str,
    now: DateTime<Utc>,
) -> Result<AuditRecord> {
    let change = PolicyChange {
        key: key.as_str(),
        value,
        actor,
        reason: Some(reason),
        expected_version: None,
    };
    let (_, _, record) = write_policy_in(tx, key, change, "policy.set", now).await?;
    Ok(record)
}

/// The row's update after judging it: the verdict and report recorded; the
/// report as JSON for the event.
fn judged(
    row: &rollouts::Model,
    report: &GoNoGoReport,
    now: DateTime<Utc>,
) -> Result<(rollouts::ActiveModel, serde_json::Value)> {
    let report_json =
        serde_json::to_value(report).map_err(|e| WorkflowError::Corrupt(e.to_string()))?;
    let mut model: rollouts::ActiveModel = row.clone().into();
    model.last_verdict = Set(Some(report.verdict.as_str().into()));
    model.last_report = Set(Some(report_json.clone()));
    model.updated_at = Set(now);
    Ok((model, report_json))
}

fn record(
    actor: &str,
    action: &str,
    row: &rollouts::Model,
    from: Option<&str>,
    to: Option<&str>,
    now: DateTime<Utc>,
) -> AuditRecord {
    AuditRecord {
        at: now,
        actor: actor.to_owned(),
        action: action.to_owned(),
        subject: format!("rollout/{}", row.id),
        reason: None,
        before: from.map(|p| json!({"phase": p})),
        after: to.map(|p| json!({"phase": p})),
    }
}

/// What moving a rollout did.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutMove {
    pub view: RolloutView,
    /// The report the move was decided on.
    pub report: GoNoGoReport,
    pub from_phase: String,
    /// `None` when the rollout ended (completed, or rolled back from its
    /// first phase).
    pub to_phase: Option<String>,
}

/// Advances the active rollout to its next phase (or completes it after
/// the last). Refused unless the report says `go`, except with `force`
/// (the reason, required) — the report is attached to the event either way.
pub async fn advance_rollout(
    db: &DatabaseConnection,
    actor: &str,
    force: Option<&str>,
    audit: Option<&AuditLog>,
    now: DateTime<Utc>,
) -> Result<RolloutMove> {
    if force.is_some_and(|r| r.trim().is_empty()) {
        return Err(crate::domain::ValidationError::new(
            "reason",
            "a forced advance needs a reason",
        )
        .into());
    }
    let now = db_now(now);
    let tx = begin_write(db).await?;
    let row = active_row(&tx, true)
        .await?
        .ok_or_else(|| WorkflowError::not_found("rollout", "active"))?;
    let spec = parse_spec(&row)?;
    let report = evaluate(&tx, &row, &spec, now).await?;
    if report.verdict != Verdict::Go && force.is_none() {
        let open: Vec<String> = report
            .criteria
            .iter()
            .filter(|c| c.state != crate::domain::rollout::CriterionState::Met)
            .map(|c| format!("{} ({}: {:?})", c.criterion, c.measured, c.state))
            .collect();
        let timing = if report.elapsed_secs < report.min_duration_secs {
            format!(
                "; minimum duration {} s, {} s elapsed",
                report.min_duration_secs, report.elapsed_secs
            )
        } else {
            String::new()
        };
        return Err(WorkflowError::Conflict(format!(
            "phase {} is {}: {}{timing}; advance with --force and a reason to override",
            report.phase,
            report.verdict.as_str(),
            if open.is_empty() {
                "criteria not met".into()
            } else {
                open.join("; ")
            }
        )));
    }
    let index = report.phase_index;
    let from = spec.phases[index].name.clone();
    let next = spec.phases.get(index + 1);
    let (mut model, report_json) = judged(&row, &report, now)?;
    let mut records = Vec::new();
    match next {
        Some(phase) => {
            model.phase_index = Set(row.phase_index + 1);
            model.phase_started_at = Set(now);
            let reason = format!("rollout {:?} advanced to phase {}", spec.name, phase.name);
            records.extend(enter_phase(&tx, phase, actor, &reason, now).await?);
        }
        None => {
            model.status = Set(COMPLETED.into());
            model.active_slot = Set(None);
        }
    }
    let updated = model.update(&tx).await?;
    let to = next.map(|p| p.name.clone());
    write_event(
        &tx,
        EventRecord::api(
            if to.is_some() {
                "rollout.advanced"
            } else {
                "rollout.completed"
            },
            json!({"rollout_id": row.id, "name": spec.name, "from": from, "to": to,
                   "actor": actor, "forced": force.is_some(), "reason": force,
                   "report": report_json}),
        ),
        now,
    )
    .await?;
    let mut audit_record = record(
        actor,
        "rollout.advance",
        &row,
        Some(&from),
        to.as_deref(),
        now,
    );
    audit_record.reason = force.map(str::to_owned);
    audit_row(&tx, &audit_record).await?;
    records.push(audit_record);
    tx.commit().await?;
    for r in &records {
        audit_file(audit, r);
    }
    Ok(RolloutMove {
        view: RolloutView {
            row: updated,
            spec,
            report: None,
        },
        report,
        from_phase: from,
        to_phase: to,
    })
}

/// Rolls the active rollout back to its previous phase (whose toggles and
/// caps are written again), or ends it as `rolled_back` from the first
/// phase, in `tx`; the caller commits (the heartbeat adds its alert to the
/// same transaction) and writes the returned records to the audit file.
/// With `expected_phase`, refused (`Conflict`) when the rollout has moved
/// off that phase meanwhile (the heartbeat judged a phase a human has since
/// left).
pub async fn rollback_rollout_in(
    tx: &DatabaseTransaction,
    actor: &str,
    reason: &str,
    expected_phase: Option<usize>,
    now: DateTime<Utc>,
) -> Result<(RolloutMove, Vec<AuditRecord>)> {
    if reason.trim().is_empty() {
        return Err(
            crate::domain::ValidationError::new("reason", "a rollback needs a reason").into(),
        );
    }
    let now = db_now(now);
    let row = active_row(tx, true)
        .await?
        .ok_or_else(|| WorkflowError::not_found("rollout", "active"))?;
    let spec = parse_spec(&row)?;
    let report = evaluate(tx, &row, &spec, now).await?;
    let index = report.phase_index;
    if expected_phase.is_some_and(|expected| expected != index) {
        return Err(WorkflowError::Conflict(format!(
            "rollout {:?} moved to phase {} meanwhile",
            spec.name, spec.phases[index].name
        )));
    }
    let from = spec.phases[index].name.clone();
    let (mut model, report_json) = judged(&row, &report, now)?;
    let mut records = Vec::new();
    let to = if index == 0 {
        model.status = Set(ROLLED_BACK.into());
        model.active_slot = Set(None);
        None
    } else {
        let previous = &spec.phases[index - 1];
        model.phase_index = Set(row.phase_index - 1);
        model.phase_started_at = Set(now);
        let why = format!(
            "rollout {:?} rolled back to phase {}: {reason}",
            spec.name, previous.name
        );
        records.extend(enter_phase(tx, previous, actor, &why, now).await?);
        Some(previous.name.clone())
    };
    let updated = model.update(tx).await?;
    write_event(
        tx,
        EventRecord::api(
            "rollout.rolled_back",
            json!({"rollout_id": row.id, "name": spec.name, "from": from, "to": to,
                   "actor": actor, "reason": reason, "report": report_json}),
        ),
        now,
    )
    .await?;
    let mut audit_record = record(
        actor,
        "rollout.rollback",
        &row,
        Some(&from),
        to.as_deref(),
        now,
    );
    audit_record.reason = Some(reason.to_owned());
    audit_row(tx, &audit_record).await?;
    records.push(audit_record);
    Ok((
        RolloutMove {
            view: RolloutView {
                row: updated,
                spec,
                report: None,
            },
            report,
            from_phase: from,
            to_phase: to,
        },
        records,
    ))
}

/// [`rollback_rollout_in`] in its own transaction.
pub async fn rollback_rollout(
    db: &DatabaseConnection,
    actor: &str,
    reason: &str,
    audit: Option<&AuditLog>,
    now: DateTime<Utc>,
) -> Result<RolloutMove> {
    let tx = begin_write(db).await?;
    let (moved, records) = rollback_rollout_in(&tx, actor, reason, None, now).await?;
    tx.commit().await?;
    for r in &records {
        audit_file(audit, r);
    }
    Ok(moved)
}

/// What the heartbeat's evaluation of the active rollout found.
#[derive(Debug, Clone, PartialEq)]
pub enum RolloutTick {
    /// No rollout is active.
    Idle,
    /// Evaluated; `changed` when the verdict differs from the last one
    /// recorded (then a `rollout.evaluated` event carries the report).
    Evaluated {
        report: GoNoGoReport,
        changed: bool,
        /// The rollout advances by itself on `go`.
        auto_advance: bool,
        name: String,
    },
}

/// Evaluates the active rollout and records the report on its row; a
/// changed verdict also becomes a `rollout.evaluated` event with the
/// report. Acting on the verdict (advance, roll back) is the caller's.
pub async fn evaluate_active(db: &DatabaseConnection, now: DateTime<Utc>) -> Result<RolloutTick> {
    let now = db_now(now);
    let Some(row) = active_row(db, false).await? else {
        return Ok(RolloutTick::Idle);
    };
    let spec = parse_spec(&row)?;
    let report = evaluate(db, &row, &spec, now).await?;
    let verdict = report.verdict.as_str();
    let changed = row.last_verdict.as_deref() != Some(verdict);
    let report_json =
        serde_json::to_value(&report).map_err(|e| WorkflowError::Corrupt(e.to_string()))?;
    let tx = begin_write(db).await?;
    // Only while the row is still in the phase that was judged.
    let updated = tx
        .execute_raw(stmt(
            tx.get_database_backend(),
            "UPDATE rollouts SET last_verdict = $1, last_report = $2, updated_at = $3 \
             WHERE id = $4 AND phase_index = $5 AND status = 'active'",
            vec![
                verdict.into(),
                report_json.clone().into(),
                now.into(),
                row.id.into(),
                row.phase_index.into(),
            ],
        ))
        .await?
        .rows_affected();
    if updated == 1 && changed {
        write_event(
            &tx,
            EventRecord::api(
                "rollout.evaluated",
                json!({"rollout_id": row.id, "name": spec.name, "phase": report.phase,
                       "verdict": verdict, "report": report_json}),
            ),
            now,
        )
        .await?;
    }
    tx.commit().await?;
    Ok(RolloutTick::Evaluated {
        report,
        changed: updated == 1 && changed,
        auto_advance: spec.auto_advance,
        name: spec.name,
    })
}
