//! gRPC `IncidentService`: lists, shows, opens and acts on incidents and
//! answers who is on call, over the [`IncidentManager`]. Actions are taken
//! as the caller's token name (the request's `actor` only in a daemon
//! without tokens). [`IncidentError`] maps to status codes in one place.
//! Who may call what is `opsloop_core::access::TABLE`, checked before these
//! handlers run.

use std::sync::Arc;

use chrono::{DateTime, Duration, NaiveDate, Utc};
use opsloop_core::grpc::{from_timestamp, timestamp};
use opsloop_core::proto::v1 as pb;
use pb::incident_service_server::{IncidentService, IncidentServiceServer};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::incident::{Action, Level};
use crate::incidents::{Incident, IncidentError, IncidentManager, TimelineEntry};
use crate::oncall::Person;

/// Incidents listed when the request names no limit.
const DEFAULT_LIMIT: u32 = 100;
/// Most days `OnCallWeek` answers for.
const MAX_DAYS: u32 = 31;
/// How far ahead `OnCallNow` looks for the next change.
const LOOKAHEAD_DAYS: i64 = 8;
/// `GetIncidentStats`' window when the request names no `since`.
const STATS_DAYS: i64 = 7;

pub struct IncidentGrpc {
    /// None when `alerter.incidents.enabled` is off: every call says so.
    manager: Option<Arc<IncidentManager>>,
}

pub fn server(manager: Option<Arc<IncidentManager>>) -> IncidentServiceServer<IncidentGrpc> {
    IncidentServiceServer::new(IncidentGrpc { manager })
        .max_decoding_message_size(opsloop_core::grpc::MAX_DECODING_MESSAGE_SIZE)
}

impl From<IncidentError> for Status {
    fn from(e: IncidentError) -> Self {
        match &e {
            IncidentError::NotFound(_) => Status::not_found(e.to_string()),
            IncidentError::Transition(_) | IncidentError::Precondition { .. } => {
                Status::failed_precondition(e.to_string())
            }
            IncidentError::Invalid(_) => Status::invalid_argument(e.to_string()),
            IncidentError::Link { .. } => Status::permission_denied(e.to_string()),
            IncidentError::Conflict => Status::aborted(e.to_string()),
            IncidentError::Db(inner) => {
                tracing::error!(error = %inner, "incident call failed on the store");
                Status::unavailable("the alerter's database is unavailable")
            }
            IncidentError::Corrupt(inner) => {
                tracing::error!(error = %inner, "stored incident is unreadable");
                Status::internal(e.to_string())
            }
        }
    }
}

impl IncidentGrpc {
    fn manager(&self) -> Result<&IncidentManager, Status> {
        self.manager.as_deref().ok_or_else(|| {
            Status::failed_precondition(
                "incidents are off in this alerter (alerter.incidents.enabled = false); turn them on to use IncidentService",
            )
        })
    }
}

use opsloop_core::auth::ON_BEHALF_OF;

/// The person a request says it acts for (the [`ON_BEHALF_OF`] metadata).
fn acting_for<T>(request: &Request<T>) -> Option<String> {
    request
        .metadata()
        .get(ON_BEHALF_OF)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// Who the timeline, events and audit name. With tokens: the caller's
/// token name; an `admin` token acting for a person (the api's console,
/// [`ON_BEHALF_OF`]) is recorded as `<person> via <token>` so both stay on
/// record. In an open (dev-mode) alerter the request's actor, else `grpc`.
fn actor(requested: &str, acting_for: Option<&str>) -> Result<String, Status> {
    let requested = requested.trim();
    if requested.chars().count() > 128 || acting_for.is_some_and(|p| p.chars().count() > 128) {
        return Err(Status::invalid_argument("actor: at most 128 characters"));
    }
    Ok(delegated_actor(
        opsloop_core::auth::caller().as_ref(),
        requested,
        acting_for,
    ))
}

/// [`actor`]'s rule, given the caller, the (trimmed) requested actor and
/// the person the call is made for.
fn delegated_actor(
    caller: Option<&opsloop_core::auth::Principal>,
    requested: &str,
    acting_for: Option<&str>,
) -> String {
    match (caller, acting_for) {
        (Some(caller), Some(person))
            if caller.role == opsloop_core::access::Role::Admin && person != caller.name =>
        {
            format!("{person} via {}", caller.name)
        }
        (Some(caller), _) => caller.name.clone(),
        (None, _) if requested.is_empty() => "grpc".to_owned(),
        (None, _) => requested.to_owned(),
    }
}

fn incident_id(text: &str) -> Result<Uuid, Status> {
    if text.trim().is_empty() {
        return Err(Status::invalid_argument("id: required"));
    }
    Uuid::parse_str(text.trim())
        .map_err(|_| Status::invalid_argument(format!("id: {text:?} is not an incident id (UUID)")))
}

fn level(text: &str) -> Result<Level, Status> {
    Level::parse(text.trim()).ok_or_else(|| {
        Status::invalid_argument(format!(
            "level: {text:?} is not a level (P0, P1, P2, P3, or critical, high, warning, info)"
        ))
    })
}

fn reason(text: String) -> Option<String> {
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

fn incident_pb(manager: &IncidentManager, i: &Incident) -> pb::Incident {
    let response = manager.levels().get(i.level).response;
    pb::Incident {
        id: i.id.to_string(),
        title: i.title.clone(),
        level: i.level.as_str().to_owned(),
        state: i.state.as_str().to_owned(),
        labels: i.labels.clone().into_iter().collect(),
        group_key: i.group_key.clone(),
        alerts_firing: i.alerts_firing,
        alerts_resolved: i.alerts_resolved,
        opened_by: i.opened_by.clone(),
        opened_at: Some(timestamp(i.opened_at)),
        response_due_at: Some(timestamp(response.deadline(i.opened_at))),
        acknowledged_at: i.acknowledged_at.map(timestamp),
        acknowledged_by: i.acknowledged_by.clone(),
        resolved_at: i.resolved_at.map(timestamp),
        resolved_by: i.resolved_by.clone(),
        escalation_step: i.escalation_step,
        next_escalation_at: i.next_escalation_at.map(timestamp),
    }
}

fn timeline_pb(e: &TimelineEntry) -> pb::IncidentTimelineEntry {
    pb::IncidentTimelineEntry {
        at: Some(timestamp(e.at)),
        kind: e.kind.clone(),
        actor: e.actor.clone(),
        detail_json: e.detail.to_string(),
    }
}

fn person_pb(p: &Person) -> pb::OnCallPerson {
    pb::OnCallPerson {
        name: p.name.clone(),
        slack: p.slack.clone().unwrap_or_default(),
        discord: p.discord.clone().unwrap_or_default(),
        pagerduty: p.pagerduty.clone().unwrap_or_default(),
        email: p.email.clone().unwrap_or_default(),
    }
}

/// `OnCallWeek`'s first day: the request's date, else today in `tz` at
/// `now`.
fn first_day(text: &str, tz: chrono_tz::Tz, now: DateTime<Utc>) -> Result<NaiveDate, Status> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(now.with_timezone(&tz).date_naive());
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .map_err(|_| Status::invalid_argument(format!("from: {text:?} is not a date (YYYY-MM-DD)")))
}

fn days(requested: u32) -> Result<u32, Status> {
    match requested {
        0 => Ok(7),
        n if n <= MAX_DAYS => Ok(n),
        n => Err(Status::invalid_argument(format!(
            "days: {n} is more than {MAX_DAYS}"
        ))),
    }
}

#[tonic::async_trait]
impl IncidentService for IncidentGrpc {
    async fn list_incidents(
        &self,
        request: Request<pb::ListIncidentsRequest>,
    ) -> Result<Response<pb::ListIncidentsResponse>, Status> {
        let manager = self.manager()?;
        let r = request.into_inner();
        let level = match r.level.trim() {
            "" => None,
            text => Some(level(text)?),
        };
        let limit = match r.limit {
            0 => DEFAULT_LIMIT,
            n => n.min(1000),
        };
        let incidents = manager
            .list_at(r.open_only, level, u64::from(limit))
            .await?;
        Ok(Response::new(pb::ListIncidentsResponse {
            incidents: incidents.iter().map(|i| incident_pb(manager, i)).collect(),
        }))
    }

    async fn get_incident(
        &self,
        request: Request<pb::GetIncidentRequest>,
    ) -> Result<Response<pb::GetIncidentResponse>, Status> {
        let manager = self.manager()?;
        let id = incident_id(&request.into_inner().id)?;
        let incident = manager.get(id).await?;
        let timeline = manager.timeline(id).await?;
        Ok(Response::new(pb::GetIncidentResponse {
            incident: Some(incident_pb(manager, &incident)),
            timeline: timeline.iter().map(timeline_pb).collect(),
        }))
    }

    async fn open_incident(
        &self,
        request: Request<pb::OpenIncidentRequest>,
    ) -> Result<Response<pb::OpenIncidentResponse>, Status> {
        let manager = self.manager()?;
        let acting_for = acting_for(&request);
        let r = request.into_inner();
        let actor = actor(&r.actor, acting_for.as_deref())?;
        let level = level(&r.level)?;
        let incident = manager
            .open_labelled(level, &r.title, r.labels.into_iter().collect(), &actor)
            .await?;
        Ok(Response::new(pb::OpenIncidentResponse {
            incident: Some(incident_pb(manager, &incident)),
        }))
    }

    async fn acknowledge_incident(
        &self,
        request: Request<pb::AcknowledgeIncidentRequest>,
    ) -> Result<Response<pb::AcknowledgeIncidentResponse>, Status> {
        let manager = self.manager()?;
        let acting_for = acting_for(&request);
        let r = request.into_inner();
        let actor = actor(&r.actor, acting_for.as_deref())?;
        let id = incident_id(&r.id)?;
        let incident = manager
            .transition(id, Action::Acknowledge, &actor, reason(r.reason))
            .await?;
        Ok(Response::new(pb::AcknowledgeIncidentResponse {
            incident: Some(incident_pb(manager, &incident)),
        }))
    }

    async fn resolve_incident(
        &self,
        request: Request<pb::ResolveIncidentRequest>,
    ) -> Result<Response<pb::ResolveIncidentResponse>, Status> {
        let manager = self.manager()?;
        let acting_for = acting_for(&request);
        let r = request.into_inner();
        let actor = actor(&r.actor, acting_for.as_deref())?;
        let id = incident_id(&r.id)?;
        let incident = manager
            .transition(id, Action::Resolve, &actor, reason(r.reason))
            .await?;
        Ok(Response::new(pb::ResolveIncidentResponse {
            incident: Some(incident_pb(manager, &incident)),
        }))
    }

    async fn add_incident_note(
        &self,
        request: Request<pb::AddIncidentNoteRequest>,
    ) -> Result<Response<pb::AddIncidentNoteResponse>, Status> {
        let manager = self.manager()?;
        let acting_for = acting_for(&request);
        let r = request.into_inner();
        let actor = actor(&r.actor, acting_for.as_deref())?;
        let id = incident_id(&r.id)?;
        manager.note(id, &actor, &r.text).await?;
        let incident = manager.get(id).await?;
        Ok(Response::new(pb::AddIncidentNoteResponse {
            incident: Some(incident_pb(manager, &incident)),
        }))
    }

    async fn escalate_incident(
        &self,
        request: Request<pb::EscalateIncidentRequest>,
    ) -> Result<Response<pb::EscalateIncidentResponse>, Status> {
        let manager = self.manager()?;
        let acting_for = acting_for(&request);
        let r = request.into_inner();
        let actor = actor(&r.actor, acting_for.as_deref())?;
        let id = incident_id(&r.id)?;
        let incident = manager.escalate(id, &actor).await?;
        Ok(Response::new(pb::EscalateIncidentResponse {
            incident: Some(incident_pb(manager, &incident)),
        }))
    }

    async fn on_call_now(
        &self,
        request: Request<pb::OnCallNowRequest>,
    ) -> Result<Response<pb::OnCallNowResponse>, Status> {
        let manager = self.manager()?;
        let r = request.into_inner();
        let at = match &r.at {
            Some(t) => from_timestamp("at", t)?,
            None => manager.now(),
        };
        let schedule = manager.schedule();
        let who = schedule.on_call(at);
        let shifts = schedule.shifts(at, at + Duration::days(LOOKAHEAD_DAYS));
        let until = (shifts.len() > 1)
            .then(|| shifts.first().map(|s| timestamp(s.end)))
            .flatten();
        Ok(Response::new(pb::OnCallNowResponse {
            at: Some(timestamp(at)),
            primary: who.primary.map(person_pb),
            secondary: who.secondary.map(person_pb),
            until,
            time_zone: schedule.time_zone().name().to_owned(),
        }))
    }

    async fn on_call_week(
        &self,
        request: Request<pb::OnCallWeekRequest>,
    ) -> Result<Response<pb::OnCallWeekResponse>, Status> {
        let manager = self.manager()?;
        let r = request.into_inner();
        let schedule = manager.schedule();
        let tz = schedule.time_zone();
        let from = first_day(&r.from, tz, manager.now())?;
        let (shifts, days) = schedule.days(from, days(r.days)?);
        Ok(Response::new(pb::OnCallWeekResponse {
            time_zone: tz.name().to_owned(),
            from: from.to_string(),
            shifts: shifts
                .iter()
                .map(|s| pb::OnCallShift {
                    start: Some(timestamp(s.start)),
                    end: Some(timestamp(s.end)),
                    primary: s.primary.clone().unwrap_or_default(),
                    secondary: s.secondary.clone().unwrap_or_default(),
                })
                .collect(),
            days: days
                .into_iter()
                .map(|d| pb::OnCallDay {
                    date: d.date.to_string(),
                    primary: d.primary,
                    secondary: d.secondary,
                })
                .collect(),
        }))
    }

    async fn draft_postmortem(
        &self,
        request: Request<pb::DraftPostmortemRequest>,
    ) -> Result<Response<pb::DraftPostmortemResponse>, Status> {
        let manager = self.manager()?;
        let acting_for = acting_for(&request);
        let r = request.into_inner();
        let actor = actor(&r.actor, acting_for.as_deref())?;
        let id = incident_id(&r.id)?;
        let markdown = manager.postmortem_draft(id, &actor, manager.now()).await?;
        Ok(Response::new(pb::DraftPostmortemResponse { markdown }))
    }

    async fn get_incident_stats(
        &self,
        request: Request<pb::GetIncidentStatsRequest>,
    ) -> Result<Response<pb::GetIncidentStatsResponse>, Status> {
        let manager = self.manager()?;
        let r = request.into_inner();
        let until = match &r.until {
            Some(t) => from_timestamp("until", t)?,
            None => manager.now(),
        };
        let since = match &r.since {
            Some(t) => from_timestamp("since", t)?,
            None => until - Duration::days(STATS_DAYS),
        };
        if since >= until {
            return Err(Status::invalid_argument(format!(
                "since: {since} is not before until ({until})"
            )));
        }
        let stats = manager.stats(since, until).await?;
        let seconds = |d: Option<Duration>| d.map(|d| d.num_milliseconds() as f64 / 1000.0);
        Ok(Response::new(pb::GetIncidentStatsResponse {
            since: Some(timestamp(stats.since)),
            until: Some(timestamp(stats.until)),
            levels: stats
                .levels
                .iter()
                .map(|l| pb::IncidentLevelStats {
                    level: l.level.as_str().to_owned(),
                    opened: l.opened,
                    acknowledged: l.acknowledged,
                    resolved: l.resolved,
                    mtta_seconds: seconds(l.mtta),
                    mttr_seconds: seconds(l.mttr),
                    breaches: l.breaches,
                })
                .collect(),
            pages: stats.pages.into_iter().collect(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::incident::{State, TransitionError};

    #[test]
    fn errors_map_to_status_codes() {
        let table = [
            (IncidentError::NotFound(Uuid::nil()), tonic::Code::NotFound),
            (
                IncidentError::Transition(TransitionError {
                    state: State::Resolved,
                    action: Action::Acknowledge,
                }),
                tonic::Code::FailedPrecondition,
            ),
            (
                IncidentError::Invalid("title".into()),
                tonic::Code::InvalidArgument,
            ),
            (IncidentError::Conflict, tonic::Code::Aborted),
            (IncidentError::Db("down".into()), tonic::Code::Unavailable),
        ];
        for (error, code) in table {
            assert_eq!(Status::from(error).code(), code);
        }
        let refused = Status::from(IncidentError::Transition(TransitionError {
            state: State::Resolved,
            action: Action::Acknowledge,
        }));
        assert_eq!(
            refused.message(),
            "the incident is resolved: cannot acknowledge it"
        );
    }

    #[test]
    fn request_fields_are_parsed_or_refused_naming_the_field() {
        assert_eq!(level("P1").expect("P1"), Level::P1);
        assert_eq!(level("critical").expect("critical"), Level::P0);
        let bad = level("P7").expect_err("P7");
        assert_eq!(bad.code(), tonic::Code::InvalidArgument);
        assert!(
            bad.message().starts_with("level: \"P7\""),
            "{}",
            bad.message()
        );
        assert_eq!(
            incident_id("nope").expect_err("id").code(),
            tonic::Code::InvalidArgument
        );
        assert_eq!(days(0).expect("default"), 7);
        assert_eq!(days(31).expect("max"), 31);
        assert!(days(32).is_err());
        let now = DateTime::parse_from_rfc3339("2026-12-06T16:00:00Z")
            .expect("t")
            .to_utc();
        // 01:00 on the 7th in Tokyo.
        assert_eq!(
            first_day("", chrono_tz::Asia::Tokyo, now)
                .expect("today")
                .to_string(),
            "2026-12-07"
        );
        assert!(first_day("7 Dec", chrono_tz::UTC, now).is_err());
        assert_eq!(actor(" ", None).expect("default"), "grpc");
        assert_eq!(actor("aiko", None).expect("given"), "aiko");
    }

    #[test]
    fn an_admin_token_may_name_the_person_it_acts_for() {
        use opsloop_core::access::Role;
        use opsloop_core::auth::Principal;
        let console = Principal {
            name: "console".into(),
            role: Role::Admin,
        };
        assert_eq!(
            delegated_actor(Some(&console), "", Some("aiko")),
            "aiko via console"
        );
        assert_eq!(
            delegated_actor(Some(&console), "someone-else", None),
            "console",
            "the request's actor is ignored with tokens"
        );
        assert_eq!(
            delegated_actor(Some(&console), "", Some("console")),
            "console"
        );
        let agent = Principal {
            name: "worker".into(),
            role: Role::Agent,
        };
        assert_eq!(
            delegated_actor(Some(&agent), "", Some("aiko")),
            "worker",
            "only admin tokens act for someone"
        );
        assert_eq!(delegated_actor(None, "aiko", None), "aiko");
        let mut request = Request::new(());
        request
            .metadata_mut()
            .insert(ON_BEHALF_OF, " aiko ".parse().expect("ascii"));
        assert_eq!(acting_for(&request).as_deref(), Some("aiko"));
        assert_eq!(acting_for(&Request::new(())), None);
    }
}
