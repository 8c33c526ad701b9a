//! `RolloutService`: create (a spec, or the default template), read with a
//! fresh report, advance (forced only with a reason), roll back — each one
//! call into `opsloop_core::workflow::rollouts`.

use opsloop_core::domain::input::JsonDocument;
use opsloop_core::domain::rollout::{GoNoGoReport, RolloutSpec, default_template};
use opsloop_core::proto::v1 as pb;
use opsloop_core::proto::v1::rollout_service_server::RolloutService;
use opsloop_core::workflow::WorkflowError;
use opsloop_core::workflow::rollouts::{self, RolloutMove, RolloutView};
use tonic::{Request, Response, Status};

use super::{Api, actor, invalid, optional, respond};
use crate::convert;

fn report(r: &GoNoGoReport) -> pb::RolloutReport {
    let word = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
    pb::RolloutReport {
        phase: r.phase.clone(),
        elapsed_secs: r.elapsed_secs,
        min_duration_secs: r.min_duration_secs,
        criteria: r
            .criteria
            .iter()
            .map(|c| pb::RolloutCriterion {
                criterion: c.criterion.clone(),
                measured: c.measured.clone(),
                state: word(&serde_json::to_value(c.state).unwrap_or_default()),
            })
            .collect(),
        verdict: r.verdict.as_str().to_owned(),
    }
}

fn rollout(view: &RolloutView) -> pb::Rollout {
    let row = &view.row;
    pb::Rollout {
        id: row.id.to_string(),
        name: row.name.clone(),
        status: row.status.clone(),
        phases: view.spec.phases.iter().map(|p| p.name.clone()).collect(),
        phase_index: u32::try_from(row.phase_index).unwrap_or(0),
        phase_started_at: Some(convert::ts(row.phase_started_at)),
        auto_advance: view.spec.auto_advance,
        spec_json: row.spec.to_string(),
        report: view.report.as_ref().map(report),
        created_by: row.created_by.clone(),
        created_at: Some(convert::ts(row.created_at)),
    }
}

fn moved(
    m: &RolloutMove,
) -> (
    Option<pb::Rollout>,
    Option<pb::RolloutReport>,
    String,
    String,
) {
    (
        Some(rollout(&m.view)),
        Some(report(&m.report)),
        m.from_phase.clone(),
        m.to_phase.clone().unwrap_or_default(),
    )
}

#[tonic::async_trait]
impl RolloutService for Api {
    async fn create_rollout(
        &self,
        request: Request<pb::CreateRolloutRequest>,
    ) -> Result<Response<pb::CreateRolloutResponse>, Status> {
        respond(async {
            let req = request.into_inner();
            let spec = if req.spec_json.trim().is_empty() {
                let name = optional("name", &req.name, 100)?.unwrap_or_else(|| "rollout".into());
                let mut spec = default_template(&name);
                spec.auto_advance = req.auto_advance;
                spec
            } else {
                let value = JsonDocument::parse("spec_json", &req.spec_json, &self.limits)
                    .map_err(invalid)?
                    .into_value();
                serde_json::from_value::<RolloutSpec>(value)
                    .map_err(|e| convert::invalid("spec_json", &e.to_string()))?
            };
            let actor = actor(&req.actor, "admin")?;
            let view =
                rollouts::create_rollout(&self.db, spec, &actor, self.audit(), self.now()).await?;
            Ok(pb::CreateRolloutResponse {
                rollout: Some(rollout(&view)),
            })
        })
        .await
    }

    async fn get_rollout(
        &self,
        _request: Request<pb::GetRolloutRequest>,
    ) -> Result<Response<pb::GetRolloutResponse>, Status> {
        respond(async {
            let view = rollouts::current_rollout(&self.db, self.now())
                .await?
                .ok_or(WorkflowError::NotFound {
                    entity: "rollout",
                    id: "(none was ever created)".into(),
                })?;
            Ok(pb::GetRolloutResponse {
                rollout: Some(rollout(&view)),
            })
        })
        .await
    }

    async fn advance_rollout(
        &self,
        request: Request<pb::AdvanceRolloutRequest>,
    ) -> Result<Response<pb::AdvanceRolloutResponse>, Status> {
        respond(async {
            let req = request.into_inner();
            let reason = optional("reason", &req.reason, 1000)?;
            let force = match (req.force, reason.as_deref()) {
                (true, None) => {
                    return Err(convert::invalid(
                        "reason",
                        "a forced advance needs a reason",
                    ));
                }
                (true, Some(reason)) => Some(reason),
                (false, _) => None,
            };
            let actor = actor(&req.actor, "admin")?;
            let m = rollouts::advance_rollout(&self.db, &actor, force, self.audit(), self.now())
                .await?;
            let (rollout, report, from_phase, to_phase) = moved(&m);
            Ok(pb::AdvanceRolloutResponse {
                rollout,
                report,
                from_phase,
                to_phase,
            })
        })
        .await
    }

    async fn rollback_rollout(
        &self,
        request: Request<pb::RollbackRolloutRequest>,
    ) -> Result<Response<pb::RollbackRolloutResponse>, Status> {
        respond(async {
            let req = request.into_inner();
            let Some(reason) = optional("reason", &req.reason, 1000)? else {
                return Err(convert::invalid("reason", "a rollback needs a reason"));
            };
            let actor = actor(&req.actor, "admin")?;
            let m = rollouts::rollback_rollout(&self.db, &actor, &reason, self.audit(), self.now())
                .await?;
            let (rollout, report, from_phase, to_phase) = moved(&m);
            Ok(pb::RollbackRolloutResponse {
                rollout,
                report,
                from_phase,
                to_phase,
            })
        })
        .await
    }
}
