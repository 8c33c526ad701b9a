//! `MissionService`: reads, cancel, and the worker protocol (claim, renew,
//! complete, fail).

use opsloop_core::domain::governance::{ResourceUsage, validate_usage};
use opsloop_core::domain::input::{JsonDocument, Limits, StepKind, check_cost};
use opsloop_core::domain::status::MissionStatus;
use opsloop_core::proto::v1 as pb;
use opsloop_core::proto::v1::mission_service_server::MissionService;
use std::time::Duration;

use opsloop_core::workflow::notify::Wake;
use opsloop_core::workflow::{self, MissionFilter};
use tonic::{Request, Response, Status};

use super::{Api, actor, invalid, required, respond};
use crate::convert;

/// Longest long poll of a `ClaimStep`, in seconds.
pub(super) const MAX_CLAIM_WAIT_SECONDS: u32 = 30;

/// Most steps one `ClaimStep` hands out: 32 payloads of at most 64 KiB
/// stay well within the 4 MiB message limit.
pub(super) const MAX_CLAIM_STEPS: u32 = 32;

fn lease(seconds: u32) -> Option<u32> {
    (seconds > 0).then_some(seconds)
}

fn worker(value: &str) -> Result<String, Status> {
    required("worker_id", value, 128)
}

fn cost(value: Option<f64>) -> Result<Option<f64>, Status> {
    value
        .map(|c| check_cost("cost_usd", c))
        .transpose()
        .map_err(invalid)
}

fn rate_limited(limit: &workflow::RateLimit) -> pb::RateLimited {
    pb::RateLimited {
        resource: limit.resource.clone(),
        retry_after_ms: u32::try_from(limit.retry_after.as_millis())
            .unwrap_or(u32::MAX)
            .max(1),
        reason: format!(
            "resource {} is at its rate limit; claim again later",
            limit.resource
        ),
    }
}

/// The usage report of a `CompleteStep`/`FailStep`, validated (negative or
/// absurd values name the entry and field).
fn usage(report: &[pb::ResourceUsage]) -> Result<Vec<ResourceUsage>, Status> {
    let usage: Vec<ResourceUsage> = report
        .iter()
        .map(|u| ResourceUsage {
            resource: u.resource.clone(),
            calls: u.calls,
            latency_p50_ms: u.latency_p50_ms,
            latency_max_ms: u.latency_max_ms,
            status_2xx: u.status_2xx,
            status_4xx: u.status_4xx,
            status_429: u.status_429,
            status_5xx: u.status_5xx,
            unreachable: u.unreachable,
            units: u.units,
        })
        .collect();
    validate_usage("usage", &usage).map_err(invalid)?;
    Ok(usage)
}

fn to_pb_status(status: MissionStatus) -> i32 {
    convert::mission_status(status.as_str()) as i32
}

#[tonic::async_trait]
impl MissionService for Api {
    async fn get_mission(
        &self,
        request: Request<pb::GetMissionRequest>,
    ) -> Result<Response<pb::GetMissionResponse>, Status> {
        respond(async {
            let id = convert::uuid("id", &request.get_ref().id)?;
            let view = workflow::get_mission(&self.db, id).await?;
            Ok(pb::GetMissionResponse {
                mission: Some(convert::mission(&view)),
            })
        })
        .await
    }

    async fn list_missions(
        &self,
        request: Request<pb::ListMissionsRequest>,
    ) -> Result<Response<pb::ListMissionsResponse>, Status> {
        respond(async {
            let req = request.into_inner();
            let status = match convert::enum_field::<pb::MissionStatus>("status", req.status)? {
                pb::MissionStatus::Unspecified => None,
                pb::MissionStatus::Running => Some(MissionStatus::Running),
                pb::MissionStatus::Succeeded => Some(MissionStatus::Succeeded),
                pb::MissionStatus::Failed => Some(MissionStatus::Failed),
                pb::MissionStatus::Cancelled => Some(MissionStatus::Cancelled),
            };
            let limit = workflow::page_size(req.page_size);
            let filter = MissionFilter {
                status,
                proposal_id: convert::opt_uuid("proposal_id", req.proposal_id.as_ref())?,
                created_after: req
                    .created_after
                    .as_ref()
                    .map(|t| convert::from_ts("created_after", t))
                    .transpose()?,
                created_before: req
                    .created_before
                    .as_ref()
                    .map(|t| convert::from_ts("created_before", t))
                    .transpose()?,
                after: convert::parse_time_cursor(&req.page_token)?,
                limit,
            };
            let views = workflow::list_missions(&self.db, &filter).await?;
            let next_page_token = match views.last() {
                Some(last) if views.len() as u64 == limit => {
                    convert::time_cursor(last.mission.created_at, last.mission.id)
                }
                _ => String::new(),
            };
            Ok(pb::ListMissionsResponse {
                missions: views.iter().map(convert::mission).collect(),
                next_page_token,
            })
        })
        .await
    }

    async fn cancel_mission(
        &self,
        request: Request<pb::CancelMissionRequest>,
    ) -> Result<Response<pb::CancelMissionResponse>, Status> {
        respond(async {
            let req = request.into_inner();
            let id = convert::uuid("id", &req.id)?;
            let actor = actor(&req.actor, "admin")?;
            let reason = required("reason", &req.reason, 1000)?;
            let view =
                workflow::cancel_mission(&self.db, id, &actor, &reason, self.audit(), self.now())
                    .await?;
            Ok(pb::CancelMissionResponse {
                mission: Some(convert::mission(&view)),
            })
        })
        .await
    }

    async fn list_dead_letters(
        &self,
        request: Request<pb::ListDeadLettersRequest>,
    ) -> Result<Response<pb::ListDeadLettersResponse>, Status> {
        respond(async {
            let req = request.into_inner();
            let kind = req
                .kind
                .as_deref()
                .map(|k| StepKind::parse("kind", k).map(|k| k.as_str().to_owned()))
                .transpose()
                .map_err(invalid)?;
            let filter = workflow::DeadLetterFilter {
                kind,
                include_retried: req.include_retried,
                limit: workflow::page_size(req.page_size),
            };
            let rows = workflow::list_dead_letters(&self.db, &filter).await?;
            Ok(pb::ListDeadLettersResponse {
                dead_letters: rows.iter().map(convert::dead_letter).collect(),
            })
        })
        .await
    }

    async fn get_dead_letter(
        &self,
        request: Request<pb::GetDeadLetterRequest>,
    ) -> Result<Response<pb::GetDeadLetterResponse>, Status> {
        respond(async {
            let id = convert::uuid("id", &request.get_ref().id)?;
            let row = workflow::get_dead_letter(&self.db, id).await?;
            Ok(pb::GetDeadLetterResponse {
                dead_letter: Some(convert::dead_letter(&row)),
            })
        })
        .await
    }

    async fn retry_dead_letter(
        &self,
        request: Request<pb::RetryDeadLetterRequest>,
    ) -> Result<Response<pb::RetryDeadLetterResponse>, Status> {
        respond(async {
            let req = request.into_inner();
            let id = convert::uuid("id", &req.id)?;
            let actor = actor(&req.actor, "admin")?;
            let outcome =
                workflow::retry_dead_letter(&self.db, id, &actor, self.audit(), self.now()).await?;
            self.wake_new_mission(&outcome.submitted.proposal);
            Ok(pb::RetryDeadLetterResponse {
                dead_letter: Some(convert::dead_letter(&outcome.dead_letter)),
                proposal: Some(convert::proposal(&outcome.submitted.proposal)),
            })
        })
        .await
    }

    async fn claim_step(
        &self,
        request: Request<pb::ClaimStepRequest>,
    ) -> Result<Response<pb::ClaimStepResponse>, Status> {
        respond(async {
            let req = request.into_inner();
            let worker = worker(&req.worker_id)?;
            if req.kinds.is_empty() || req.kinds.len() > 64 {
                return Err(convert::invalid("kinds", "give 1 to 64 step kinds"));
            }
            let kinds = req
                .kinds
                .iter()
                .enumerate()
                .map(|(i, k)| StepKind::parse(&format!("kinds[{i}]"), k))
                .collect::<Result<Vec<_>, _>>()
                .map_err(invalid)?;
            let wait = req.wait_seconds.min(MAX_CLAIM_WAIT_SECONDS);
            let max_steps = req.max_steps.clamp(1, MAX_CLAIM_STEPS) as usize;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(u64::from(wait));
            let names: Vec<&str> = kinds.iter().map(StepKind::as_str).collect();
            loop {
                // Taken before the claim, so news that arrives between the
                // claim and the wait is not missed.
                let stamp = self.steps.stamp(&names);
                let batch = workflow::claim_steps_governed(
                    &self.db,
                    &self.policy,
                    &worker,
                    &kinds,
                    lease(req.lease_seconds),
                    max_steps,
                    self.now(),
                )
                .await?;
                let stop = batch.emergency_stop;
                // A rate limit answers at once (with when to ask again):
                // waiting for news would not make a token come sooner.
                if !batch.steps.is_empty() || stop || batch.rate_limited.is_some() || wait == 0 {
                    let steps: Vec<pb::Step> = batch.steps.iter().map(convert::step).collect();
                    return Ok(pb::ClaimStepResponse {
                        found: !steps.is_empty(),
                        step: steps.first().cloned(),
                        emergency_stop: stop && steps.is_empty(),
                        steps,
                        rate_limited: batch.rate_limited.as_ref().map(rate_limited),
                    });
                }
                match self.steps.wait(&names, stamp, deadline).await {
                    Wake::Notified => continue,
                    Wake::TimedOut | Wake::Closed => {
                        return Ok(pb::ClaimStepResponse::default());
                    }
                }
            }
        })
        .await
    }

    async fn renew_lease(
        &self,
        request: Request<pb::RenewLeaseRequest>,
    ) -> Result<Response<pb::RenewLeaseResponse>, Status> {
        respond(async {
            let req = request.into_inner();
            let step_id = convert::uuid("step_id", &req.step_id)?;
            let worker = worker(&req.worker_id)?;
            let expires = workflow::renew_lease(
                &self.db,
                step_id,
                &worker,
                req.attempt,
                lease(req.lease_seconds),
                self.now(),
            )
            .await?;
            Ok(pb::RenewLeaseResponse {
                lease_expires_at: Some(convert::ts(expires)),
            })
        })
        .await
    }

    async fn complete_step(
        &self,
        request: Request<pb::CompleteStepRequest>,
    ) -> Result<Response<pb::CompleteStepResponse>, Status> {
        respond(async {
            let req = request.into_inner();
            let step_id = convert::uuid("step_id", &req.step_id)?;
            let worker = worker(&req.worker_id)?;
            // Results may be larger than inputs.
            let limits = Limits {
                max_payload_bytes: self.limits.max_payload_bytes * 4,
                ..self.limits
            };
            let result = JsonDocument::parse("result_json", &req.result_json, &limits)
                .map_err(invalid)?
                .into_value();
            let cost = cost(req.cost_usd)?;
            let usage = usage(&req.usage)?;
            let (step, status) = workflow::complete_step_with_usage(
                &self.db,
                step_id,
                &worker,
                req.attempt,
                result,
                cost,
                &usage,
                self.now(),
            )
            .await?;
            if status == MissionStatus::Running {
                // The next step of a sequential mission (of any kind).
                self.wake_any();
            }
            Ok(pb::CompleteStepResponse {
                step: Some(convert::step(&step)),
                mission_status: to_pb_status(status),
            })
        })
        .await
    }

    async fn fail_step(
        &self,
        request: Request<pb::FailStepRequest>,
    ) -> Result<Response<pb::FailStepResponse>, Status> {
        respond(async {
            let req = request.into_inner();
            let step_id = convert::uuid("step_id", &req.step_id)?;
            let worker = worker(&req.worker_id)?;
            let error = required("error", &req.error, self.limits.max_text_chars)?;
            let cost = cost(req.cost_usd)?;
            let usage = usage(&req.usage)?;
            let (step, requeued, status) = workflow::fail_step_with_usage(
                &self.db,
                step_id,
                &worker,
                req.attempt,
                &error,
                req.retryable,
                cost,
                &usage,
                self.now(),
            )
            .await?;
            if requeued {
                self.wake([step.kind.as_str()]);
            }
            Ok(pb::FailStepResponse {
                step: Some(convert::step(&step)),
                requeued,
                mission_status: to_pb_status(status),
            })
        })
        .await
    }
}
