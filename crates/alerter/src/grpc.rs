//! gRPC `AlertService`: ListAlerts, CreateSilence, ListSilences,
//! ExpireSilence, TestReceiver over the same [`Alerter`] as the HTTP API.
//! Domain errors map to status codes in one place. Who may call what is
//! `opsloop_core::access::TABLE`, checked before these handlers run.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use opsloop_core::proto::v1 as pb;
use pb::alert_service_server::{AlertService, AlertServiceServer};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::dispatch::{AlertFilter, AlertView};
use crate::matchers::{MatchOp, Matcher};
use crate::model::Severity;
use crate::service::{Alerter, AlerterError};
use crate::silence::{NewSilence, Silence, SilenceState};

const DEFAULT_PAGE_SIZE: usize = 100;
const MAX_PAGE_SIZE: usize = 1000;

pub struct AlertGrpc {
    alerter: Arc<Alerter>,
}

pub fn server(alerter: Arc<Alerter>) -> AlertServiceServer<AlertGrpc> {
    AlertServiceServer::new(AlertGrpc { alerter })
        .max_decoding_message_size(opsloop_core::grpc::MAX_DECODING_MESSAGE_SIZE)
}

impl From<AlerterError> for Status {
    fn from(e: AlerterError) -> Self {
        match &e {
            AlerterError::InvalidAlert { .. } | AlerterError::InvalidSilence(_) => {
                Status::invalid_argument(e.to_string())
            }
            AlerterError::SilenceNotFound(_) | AlerterError::UnknownReceiver(_) => {
                Status::not_found(e.to_string())
            }
            AlerterError::SilenceExpired(_) => Status::failed_precondition(e.to_string()),
            AlerterError::Store(inner) => {
                tracing::error!(error = %inner, "gRPC call failed on the store");
                Status::unavailable("the alerter's database is unavailable")
            }
            AlerterError::Busy { .. } => Status::unavailable(e.to_string()),
        }
    }
}

use opsloop_core::grpc::timestamp;

use opsloop_core::grpc::from_timestamp;

fn severity_pb(s: Option<Severity>) -> pb::Severity {
    match s {
        Some(Severity::Critical) => pb::Severity::Critical,
        Some(Severity::High) => pb::Severity::High,
        Some(Severity::Warning) => pb::Severity::Warning,
        Some(Severity::Info) => pb::Severity::Info,
        None => pb::Severity::Unspecified,
    }
}

fn matcher_from_pb(field: &str, m: &pb::Matcher) -> Result<Matcher, Status> {
    Matcher::new(
        &m.name,
        MatchOp::from_flags(m.is_regex, m.is_equal.unwrap_or(true)),
        &m.value,
    )
    .map_err(|e| Status::invalid_argument(format!("{field}: {e}")))
}

fn matcher_pb(m: &Matcher) -> pb::Matcher {
    pb::Matcher {
        name: m.name.clone(),
        value: m.value.clone(),
        is_regex: m.op.is_regex(),
        is_equal: Some(m.op.is_equal()),
    }
}

fn silence_state_pb(s: SilenceState) -> pb::SilenceState {
    match s {
        SilenceState::Pending => pb::SilenceState::Pending,
        SilenceState::Active => pb::SilenceState::Active,
        SilenceState::Expired => pb::SilenceState::Expired,
    }
}

fn silence_pb(s: &Silence, now: DateTime<Utc>) -> pb::Silence {
    pb::Silence {
        id: s.id.to_string(),
        matchers: s.matchers.iter().map(matcher_pb).collect(),
        starts_at: Some(timestamp(s.starts_at)),
        ends_at: Some(timestamp(s.ends_at)),
        created_by: s.created_by.clone(),
        comment: s.comment.clone(),
        status: silence_state_pb(s.state(now)) as i32,
        updated_at: Some(timestamp(s.updated_at)),
    }
}

fn alert_pb(v: &AlertView, now: DateTime<Utc>) -> pb::Alert {
    let a = &v.alert;
    let suppressed = !v.silenced_by.is_empty() || !v.inhibited_by.is_empty();
    pb::Alert {
        fingerprint: a.fingerprint().to_string(),
        labels: a.labels.clone().into_iter().collect(),
        annotations: a.annotations.clone().into_iter().collect(),
        starts_at: Some(timestamp(a.starts_at)),
        ends_at: a.ends_at.map(timestamp),
        generator_url: a.generator_url.clone().unwrap_or_default(),
        status: if a.is_resolved(now) {
            pb::AlertStatus::Resolved
        } else {
            pb::AlertStatus::Firing
        } as i32,
        state: if suppressed {
            pb::AlertState::Suppressed
        } else {
            pb::AlertState::Active
        } as i32,
        severity: severity_pb(a.severity()) as i32,
        receivers: v.receivers.clone(),
        silenced_by: v.silenced_by.iter().map(ToString::to_string).collect(),
        inhibited_by: v.inhibited_by.iter().map(ToString::to_string).collect(),
        updated_at: Some(timestamp(a.updated_at)),
    }
}

/// `(offset, size)` from a page token and size.
fn page(token: &str, size: u32) -> Result<(usize, usize), Status> {
    let offset = if token.is_empty() {
        0
    } else {
        token.parse().map_err(|_| {
            Status::invalid_argument("page_token: not a token from a previous response")
        })?
    };
    let size = match size as usize {
        0 => DEFAULT_PAGE_SIZE,
        n => n.min(MAX_PAGE_SIZE),
    };
    Ok((offset, size))
}

fn next_token(offset: usize, size: usize, total: usize) -> String {
    if offset + size < total {
        (offset + size).to_string()
    } else {
        String::new()
    }
}

#[tonic::async_trait]
impl AlertService for AlertGrpc {
    async fn list_alerts(
        &self,
        request: Request<pb::ListAlertsRequest>,
    ) -> Result<Response<pb::ListAlertsResponse>, Status> {
        let r = request.into_inner();
        let receiver = match &r.receiver {
            Some(re) => Some(
                regex::Regex::new(&format!("^(?:{re})$"))
                    .map_err(|e| Status::invalid_argument(format!("receiver: {e}")))?,
            ),
            None => None,
        };
        let filter = AlertFilter {
            active: r.active.unwrap_or(true),
            silenced: r.silenced.unwrap_or(true),
            inhibited: r.inhibited.unwrap_or(true),
            include_resolved: r.include_resolved,
            matchers: r
                .filter
                .iter()
                .enumerate()
                .map(|(i, m)| matcher_from_pb(&format!("filter[{i}]"), m))
                .collect::<Result<_, _>>()?,
            receiver,
        };
        let (offset, size) = page(&r.page_token, r.page_size)?;
        let now = self.alerter.now();
        let mut views: Vec<AlertView> = self
            .alerter
            .alerts()
            .await
            .into_iter()
            .filter(|v| filter.keep(v, now))
            .collect();
        views.sort_by(|a, b| {
            b.alert
                .starts_at
                .cmp(&a.alert.starts_at)
                .then(a.alert.fingerprint().cmp(&b.alert.fingerprint()))
        });
        let total = views.len();
        let alerts = views
            .iter()
            .skip(offset)
            .take(size)
            .map(|v| alert_pb(v, now))
            .collect();
        Ok(Response::new(pb::ListAlertsResponse {
            alerts,
            next_page_token: next_token(offset, size, total),
        }))
    }

    async fn create_silence(
        &self,
        request: Request<pb::CreateSilenceRequest>,
    ) -> Result<Response<pb::CreateSilenceResponse>, Status> {
        let r = request.into_inner();
        let id = match r.id.as_deref().filter(|s| !s.is_empty()) {
            Some(text) => Some(
                Uuid::parse_str(text).map_err(|_| Status::invalid_argument("id: not a UUID"))?,
            ),
            None => None,
        };
        let ends_at = r
            .ends_at
            .as_ref()
            .ok_or_else(|| Status::invalid_argument("ends_at: required"))
            .and_then(|t| from_timestamp("ends_at", t))?;
        let starts_at = r
            .starts_at
            .as_ref()
            .map(|t| from_timestamp("starts_at", t))
            .transpose()?;
        let matchers = r
            .matchers
            .iter()
            .enumerate()
            .map(|(i, m)| matcher_from_pb(&format!("matchers[{i}]"), m))
            .collect::<Result<Vec<_>, _>>()?;
        let silence = self
            .alerter
            .create_silence(
                NewSilence {
                    matchers,
                    starts_at,
                    ends_at,
                    created_by: r.created_by,
                    comment: r.comment,
                },
                id,
            )
            .await?;
        Ok(Response::new(pb::CreateSilenceResponse {
            silence: Some(silence_pb(&silence, self.alerter.now())),
        }))
    }

    async fn list_silences(
        &self,
        request: Request<pb::ListSilencesRequest>,
    ) -> Result<Response<pb::ListSilencesResponse>, Status> {
        let r = request.into_inner();
        let state = pb::SilenceState::try_from(r.state)
            .map_err(|_| Status::invalid_argument("state: unknown value"))?;
        let filter = r
            .filter
            .iter()
            .enumerate()
            .map(|(i, m)| matcher_from_pb(&format!("filter[{i}]"), m))
            .collect::<Result<Vec<_>, _>>()?;
        let (offset, size) = page(&r.page_token, r.page_size)?;
        let now = self.alerter.now();
        let mut silences: Vec<Silence> = self
            .alerter
            .silences()
            .await
            .into_iter()
            .filter(|s| {
                state == pb::SilenceState::Unspecified || silence_state_pb(s.state(now)) == state
            })
            .filter(|s| filter.iter().all(|m| s.matchers.contains(m)))
            .collect();
        let rank = |s: &Silence| match s.state(now) {
            SilenceState::Active => 0,
            SilenceState::Pending => 1,
            SilenceState::Expired => 2,
        };
        silences.sort_by(|a, b| rank(a).cmp(&rank(b)).then(b.updated_at.cmp(&a.updated_at)));
        let total = silences.len();
        Ok(Response::new(pb::ListSilencesResponse {
            silences: silences
                .iter()
                .skip(offset)
                .take(size)
                .map(|s| silence_pb(s, now))
                .collect(),
            next_page_token: next_token(offset, size, total),
        }))
    }

    async fn expire_silence(
        &self,
        request: Request<pb::ExpireSilenceRequest>,
    ) -> Result<Response<pb::ExpireSilenceResponse>, Status> {
        let r = request.into_inner();
        let id = Uuid::parse_str(&r.id).map_err(|_| Status::invalid_argument("id: not a UUID"))?;
        let actor = if r.actor.is_empty() { "grpc" } else { &r.actor };
        let silence = self.alerter.expire_silence(id, actor).await?;
        Ok(Response::new(pb::ExpireSilenceResponse {
            silence: Some(silence_pb(&silence, self.alerter.now())),
        }))
    }

    async fn test_receiver(
        &self,
        request: Request<pb::TestReceiverRequest>,
    ) -> Result<Response<pb::TestReceiverResponse>, Status> {
        let r = request.into_inner();
        let severity = match pb::Severity::try_from(r.severity)
            .map_err(|_| Status::invalid_argument("severity: unknown value"))?
        {
            pb::Severity::Unspecified | pb::Severity::Info => Severity::Info,
            pb::Severity::Critical => Severity::Critical,
            pb::Severity::High => Severity::High,
            pb::Severity::Warning => Severity::Warning,
        };
        if r.receiver.is_empty() {
            return Err(Status::invalid_argument("receiver: required"));
        }
        let outcome = self
            .alerter
            .test_receiver(&r.receiver, severity, r.message)
            .await?;
        Ok(Response::new(pb::TestReceiverResponse {
            delivered: outcome.delivered,
            attempts: outcome.attempts,
            http_status: outcome.http_status.map(u32::from),
            latency_ms: outcome.latency.as_millis() as u64,
            detail: outcome.detail,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paging_tokens() {
        assert_eq!(page("", 0).expect("p"), (0, DEFAULT_PAGE_SIZE));
        assert_eq!(page("20", 5000).expect("p"), (20, MAX_PAGE_SIZE));
        assert!(page("abc", 1).is_err());
        assert_eq!(next_token(0, 10, 25), "10");
        assert_eq!(next_token(20, 10, 25), "");
    }

    #[test]
    fn errors_map_to_status_codes() {
        let table = [
            (
                AlerterError::SilenceNotFound(Uuid::nil()),
                tonic::Code::NotFound,
            ),
            (
                AlerterError::SilenceExpired(Uuid::nil()),
                tonic::Code::FailedPrecondition,
            ),
            (
                AlerterError::UnknownReceiver("x".into()),
                tonic::Code::NotFound,
            ),
            (
                AlerterError::InvalidSilence(crate::silence::SilenceError::NoMatchers),
                tonic::Code::InvalidArgument,
            ),
        ];
        for (error, code) in table {
            assert_eq!(Status::from(error).code(), code);
        }
    }
}
