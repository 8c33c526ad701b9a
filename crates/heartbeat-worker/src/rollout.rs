//! The rollout phase: each tick the leader judges the active staged
//! rollout's phase from opsloop's own records (`workflow::rollouts`). A
//! failed criterion rolls the rollout back to the previous phase (its
//! toggles and caps written again) and raises `OpsRolloutRolledBack`, in
//! one transaction; a `go` verdict advances it when the rollout is set to
//! advance by itself; anything else waits, the report kept on the rollout
//! (and a `rollout.evaluated` event when the verdict changed).

use chrono::{DateTime, Utc};
use opsloop_core::domain::rollout::{CriterionState, Verdict};
use opsloop_core::workflow::rollouts::{self, RolloutTick};
use opsloop_core::workflow::{self, WorkflowError, db_now};
use serde_json::{Value, json};

use crate::alerts::{self, Severity, enqueue_alert};
use crate::db::begin_write;
use crate::heartbeat::{Heartbeat, HeartbeatError};
use crate::ops::ACTOR;

pub async fn run(hb: &Heartbeat, now: DateTime<Utc>) -> Result<Value, HeartbeatError> {
    let db = hb.db();
    let now = db_now(now);
    let audit = hb.inner.audit.as_deref();
    let (report, changed, auto_advance, name) = match rollouts::evaluate_active(db, now).await? {
        RolloutTick::Idle => return Ok(json!({"active": false})),
        RolloutTick::Evaluated {
            report,
            changed,
            auto_advance,
            name,
        } => (report, changed, auto_advance, name),
    };
    match report.verdict {
        Verdict::NoGo => {
            let failed: Vec<String> = report
                .criteria
                .iter()
                .filter(|c| c.state == CriterionState::Failed)
                .map(|c| format!("{} — measured {}", c.criterion, c.measured))
                .collect();
            let reason = format!(
                "criterion failed in phase {}: {}",
                report.phase,
                failed.join("; ")
            );
            let tx = begin_write(db).await?;
            let (moved, records) = match rollouts::rollback_rollout_in(
                &tx,
                ACTOR,
                &reason,
                Some(report.phase_index),
                now,
            )
            .await
            {
                Ok(done) => done,
                // A human moved it since the report: judged again next tick.
                Err(
                    WorkflowError::Conflict(why) | WorkflowError::NotFound { entity: _, id: why },
                ) => {
                    return Ok(json!({"active": true, "verdict": "no_go", "skipped": why}));
                }
                Err(other) => return Err(other.into()),
            };
            let target = moved.to_phase.clone().map_or_else(
                || "ended (it was the first phase)".to_owned(),
                |p| format!("back to phase {p}"),
            );
            let alert = alerts::alert(
                "OpsRolloutRolledBack",
                Severity::Warning,
                format!("rollout {name:?} rolled {target}: a criterion failed in phase {}", report.phase),
                format!(
                    "{reason}. The previous phase's toggles and caps are in force again; \
                     `opsloop rollout status` shows the report, `opsloop rollout advance` moves on when it says go."
                ),
            )
            .label("rollout", &name)
            .label("phase", &report.phase)
            .annotation("report", serde_json::to_string(&report).unwrap_or_default())
            .annotation("command", "opsloop rollout status");
            enqueue_alert(&tx, &alert, now).await?;
            tx.commit().await?;
            for record in &records {
                workflow::audit_file(audit, record);
            }
            Ok(json!({"active": true, "verdict": "no_go", "rolled_back_to": moved.to_phase}))
        }
        Verdict::Go if auto_advance => {
            match rollouts::advance_rollout(db, ACTOR, None, audit, now).await {
                Ok(moved) => {
                    Ok(json!({"active": true, "verdict": "go", "advanced_to": moved.to_phase}))
                }
                Err(WorkflowError::Conflict(why)) => {
                    Ok(json!({"active": true, "verdict": "go", "skipped": why}))
                }
                Err(other) => Err(other.into()),
            }
        }
        verdict => Ok(json!({"active": true, "verdict": verdict.as_str(), "changed": changed})),
    }
}
