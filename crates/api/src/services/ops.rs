//! `OpsService`: summary, health, the emergency stop, weekly reports.

use chrono::{DateTime, Utc};
use opsloop_core::domain::policy::EmergencyStop;
use opsloop_core::proto::v1 as pb;
use opsloop_core::proto::v1::ops_service_server::OpsService;
use opsloop_core::store::entities::reports;
use opsloop_core::workflow::{self, SummaryFigures, SummaryPeriod, WorkflowError};
use sea_orm::{EntityTrait, Statement};
use tonic::{Request, Response, Status};

use super::{Api, actor, required, respond};
use crate::convert;

fn stop_state(stop: &EmergencyStop, changed_at: Option<DateTime<Utc>>) -> pb::EmergencyStopState {
    pb::EmergencyStopState {
        engaged: stop.engaged,
        reason: stop.reason.clone(),
        actor: stop.actor.clone(),
        changed_at: changed_at.map(convert::ts),
    }
}

pub(super) fn summary_pb(s: &SummaryFigures) -> pb::Summary {
    pb::Summary {
        period: match s.period {
            SummaryPeriod::Daily => pb::SummaryPeriod::Daily,
            SummaryPeriod::Weekly => pb::SummaryPeriod::Weekly,
        } as i32,
        since: Some(convert::ts(s.since)),
        proposals: s.proposals.clone().into_iter().collect(),
        missions: s.missions.clone().into_iter().collect(),
        steps: s.steps.clone().into_iter().collect(),
        total_events: s.total_events,
        generated_at: Some(convert::ts(s.generated_at)),
    }
}

fn int(body: &serde_json::Value, pointer: &str) -> i64 {
    body.pointer(pointer)
        .and_then(serde_json::Value::as_i64)
        .unwrap_or(0)
}

fn float(body: &serde_json::Value, pointer: &str) -> f64 {
    body.pointer(pointer)
        .and_then(serde_json::Value::as_f64)
        .unwrap_or(0.0)
}

/// `{name: count}` at `pointer`, largest first.
fn named_counts(body: &serde_json::Value, pointer: &str) -> Vec<pb::NamedCount> {
    let mut counts: Vec<pb::NamedCount> = body
        .pointer(pointer)
        .and_then(serde_json::Value::as_object)
        .map(|map| {
            map.iter()
                .map(|(name, count)| pb::NamedCount {
                    name: name.clone(),
                    count: count.as_i64().unwrap_or(0),
                })
                .collect()
        })
        .unwrap_or_default();
    counts.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.name.cmp(&b.name)));
    counts
}

fn timestamp_at(body: &serde_json::Value, pointer: &str) -> Option<prost_types::Timestamp> {
    body.pointer(pointer)
        .and_then(serde_json::Value::as_str)
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .map(|t| convert::ts(t.with_timezone(&Utc)))
}

/// The stored weekly report (the body the heartbeat-worker's report phase
/// writes, see `opsloop_heartbeat_worker::report::weekly_body`) as the
/// contract's message; the body itself travels as `report_json` too.
fn weekly(report: &reports::Model) -> pb::WeeklyReport {
    let b = &report.body;
    let step_kinds = b
        .pointer("/stepsByKind")
        .and_then(serde_json::Value::as_object)
        .map(|kinds| {
            kinds
                .iter()
                .map(|(kind, stats)| {
                    let total = stats["finished"].as_i64().unwrap_or(0);
                    let succeeded = stats["succeeded"].as_i64().unwrap_or(0);
                    pb::StepKindStats {
                        kind: kind.clone(),
                        total,
                        succeeded,
                        failed: total - succeeded,
                        success_rate: stats["successRate"].as_f64().unwrap_or(0.0),
                        ..Default::default()
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    pb::WeeklyReport {
        id: report.id.to_string(),
        period_start: Some(convert::ts(report.period_start)),
        period_end: Some(convert::ts(report.period_end)),
        missions_total: int(b, "/missions/finished"),
        missions_succeeded: int(b, "/missions/byStatus/succeeded"),
        missions_failed: int(b, "/missions/byStatus/failed"),
        missions_cancelled: int(b, "/missions/byStatus/cancelled"),
        mission_success_rate: float(b, "/missions/successRate"),
        step_kinds,
        step_duration_p50_ms: int(b, "/stepDurationMs/p50"),
        step_duration_p95_ms: int(b, "/stepDurationMs/p95"),
        failures_by_reason: named_counts(b, "/failuresByReason"),
        alerts_fired: named_counts(b, "/alertsFired/byName"),
        cost_usd: float(b, "/cost/usd"),
        budget_usd: float(b, "/cost/budgetUsd"),
        last_backup_at: timestamp_at(b, "/backup/lastCompletedAt"),
        last_verified_backup_at: None,
        report_json: b.to_string(),
        generated_at: Some(convert::ts(report.created_at)),
    }
}

#[tonic::async_trait]
impl OpsService for Api {
    async fn get_summary(
        &self,
        request: Request<pb::GetSummaryRequest>,
    ) -> Result<Response<pb::GetSummaryResponse>, Status> {
        respond(async {
            let period =
                match convert::enum_field::<pb::SummaryPeriod>("period", request.get_ref().period)?
                {
                    pb::SummaryPeriod::Unspecified | pb::SummaryPeriod::Daily => {
                        SummaryPeriod::Daily
                    }
                    pb::SummaryPeriod::Weekly => SummaryPeriod::Weekly,
                };
            let figures = workflow::summary(&self.db, period, self.now()).await?;
            Ok(pb::GetSummaryResponse {
                summary: Some(summary_pb(&figures)),
            })
        })
        .await
    }

    async fn get_health(
        &self,
        _request: Request<pb::GetHealthRequest>,
    ) -> Result<Response<pb::GetHealthResponse>, Status> {
        respond(async {
            let now = self.now();
            let h = workflow::health(&self.db, now).await?;
            let leaders = workflow::leases(&self.db)
                .await?
                .into_iter()
                .map(|l| pb::Leader {
                    held: l.expires_at > now,
                    name: l.name,
                    holder: l.holder,
                    expires_at: Some(convert::ts(l.expires_at)),
                })
                .collect();
            Ok(pb::GetHealthResponse {
                leaders,
                health: Some(pb::OpsHealth {
                    step_failures_last_hour: h.step_failures_last_window,
                    failure_threshold: h.failure_threshold,
                    failure_spike: h.failure_spike,
                    pending_proposals: h.pending_proposals,
                    queued_steps: h.queued_steps,
                    running_steps: h.running_steps,
                    expired_leases: h.expired_leases,
                    emergency_stop: Some(stop_state(
                        &h.emergency_stop,
                        Some(h.emergency_stop_changed_at),
                    )),
                    alert_cooldown_until: h.alert_cooldown_until.map(convert::ts),
                    last_heartbeat_at: h.last_heartbeat_at.map(convert::ts),
                    cost_today_usd: h.cost_today_usd,
                    cost_month_usd: h.cost_month_usd,
                    generated_at: Some(convert::ts(h.generated_at)),
                    paused_kinds: h
                        .paused_kinds
                        .iter()
                        .map(|p| pb::PausedStepKind {
                            kind: p.kind.clone(),
                            source: p.source.clone(),
                            reason: p.reason.clone(),
                            since: Some(convert::ts(p.since)),
                        })
                        .collect(),
                }),
            })
        })
        .await
    }

    async fn engage_emergency_stop(
        &self,
        request: Request<pb::EngageEmergencyStopRequest>,
    ) -> Result<Response<pb::EngageEmergencyStopResponse>, Status> {
        respond(async {
            let req = request.into_inner();
            let reason = required("reason", &req.reason, 1000)?;
            let actor = actor(&req.actor, "admin")?;
            let change = workflow::engage_emergency_stop(
                &self.db,
                &actor,
                &reason,
                self.audit(),
                self.now(),
            )
            .await?;
            Ok(pb::EngageEmergencyStopResponse {
                state: Some(stop_state(&change.state, change.changed_at)),
                changed: change.changed,
            })
        })
        .await
    }

    async fn release_emergency_stop(
        &self,
        request: Request<pb::ReleaseEmergencyStopRequest>,
    ) -> Result<Response<pb::ReleaseEmergencyStopResponse>, Status> {
        respond(async {
            let req = request.into_inner();
            let reason = required("reason", &req.reason, 1000)?;
            let actor = actor(&req.actor, "admin")?;
            let change = workflow::release_emergency_stop(
                &self.db,
                &actor,
                &reason,
                self.audit(),
                self.now(),
            )
            .await?;
            Ok(pb::ReleaseEmergencyStopResponse {
                state: Some(stop_state(&change.state, change.changed_at)),
                changed: change.changed,
            })
        })
        .await
    }

    async fn list_quarantined_events(
        &self,
        request: Request<pb::ListQuarantinedEventsRequest>,
    ) -> Result<Response<pb::ListQuarantinedEventsResponse>, Status> {
        respond(async {
            let req = request.into_inner();
            let consumer = req
                .consumer
                .as_deref()
                .map(|c| required("consumer", c, 64))
                .transpose()?;
            let rows = workflow::list_quarantined_events(
                &self.db,
                consumer.as_deref(),
                workflow::page_size(req.page_size),
            )
            .await?;
            Ok(pb::ListQuarantinedEventsResponse {
                events: rows.iter().map(convert::quarantined_event).collect(),
            })
        })
        .await
    }

    async fn retry_quarantined_event(
        &self,
        request: Request<pb::RetryQuarantinedEventRequest>,
    ) -> Result<Response<pb::RetryQuarantinedEventResponse>, Status> {
        respond(async {
            let req = request.into_inner();
            let consumer = required("consumer", &req.consumer, 64)?;
            let actor = actor(&req.actor, "admin")?;
            let row = workflow::retry_quarantined_event(
                &self.db,
                &consumer,
                req.event_seq,
                &actor,
                self.audit(),
                self.now(),
            )
            .await?;
            Ok(pb::RetryQuarantinedEventResponse {
                event: Some(convert::quarantined_event(&row)),
            })
        })
        .await
    }

    async fn get_weekly_report(
        &self,
        request: Request<pb::GetWeeklyReportRequest>,
    ) -> Result<Response<pb::GetWeeklyReportResponse>, Status> {
        respond(async {
            let week_of = request
                .get_ref()
                .week_of
                .as_ref()
                .map(|t| convert::from_ts("week_of", t))
                .transpose()?;
            let backend = self.db.get_database_backend();
            let stmt = match week_of {
                Some(t) => Statement::from_sql_and_values(
                    backend,
                    "SELECT * FROM reports WHERE kind = 'weekly' AND period_start <= $1 \
                     AND period_end > $1 ORDER BY created_at DESC LIMIT 1",
                    vec![t.into()],
                ),
                None => Statement::from_string(
                    backend,
                    "SELECT * FROM reports WHERE kind = 'weekly' ORDER BY period_start DESC LIMIT 1",
                ),
            };
            let report = reports::Entity::find()
                .from_raw_sql(stmt)
                .one(&self.db)
                .await
                .map_err(WorkflowError::Db)?
                .ok_or_else(|| Status::not_found("no weekly report for that week"))?;
            Ok(pb::GetWeeklyReportResponse {
                report: Some(weekly(&report)),
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_heartbeat_report_body() {
        let body = serde_json::json!({
            "missions": {"finished": 10, "byStatus": {"succeeded": 8, "failed": 1, "cancelled": 1}, "successRate": 0.8},
            "stepsByKind": {"analyze": {"finished": 4, "succeeded": 3, "successRate": 0.75}},
            "stepDurationMs": {"p50": 120, "p95": 900, "samples": 4},
            "failuresByReason": {"timeout": 2, "oom": 5},
            "alertsFired": {"total": 3, "byName": {"OpsFailureSpike": 3}},
            "cost": {"usd": 12.5, "budgetUsd": 210.0, "ratio": 0.06},
            "backup": {"lastCompletedAt": "2026-11-22T17:00:00Z", "ageHours": 3.0},
        });
        let now = chrono::Utc::now();
        let report = reports::Model {
            id: uuid::Uuid::nil(),
            kind: "weekly".into(),
            period_start: now,
            period_end: now,
            body,
            created_at: now,
        };
        let w = weekly(&report);
        assert_eq!(
            (
                w.missions_total,
                w.missions_succeeded,
                w.missions_failed,
                w.missions_cancelled
            ),
            (10, 8, 1, 1)
        );
        assert_eq!(w.mission_success_rate, 0.8);
        assert_eq!(w.step_kinds.len(), 1);
        assert_eq!((w.step_kinds[0].total, w.step_kinds[0].failed), (4, 1));
        assert_eq!((w.step_duration_p50_ms, w.step_duration_p95_ms), (120, 900));
        assert_eq!(w.failures_by_reason[0].name, "oom");
        assert_eq!(w.alerts_fired[0].count, 3);
        assert_eq!((w.cost_usd, w.budget_usd), (12.5, 210.0));
        assert!(w.last_backup_at.is_some());
    }
}
