//! The console's incidents, read from and acted on at the alerter's gRPC
//! `IncidentService` (list, show with its timeline, acknowledge, resolve,
//! add a note, draft the postmortem) — the alerter owns the incident state
//! machine and the escalation, the api keeps no copy. The address is
//! `[api.console] alerter_grpc_url` (else the alerter's `grpc_addr` in the
//! same configuration); the bearer token the `console_alerter_token` secret
//! (the `admin` role). Each action names the signed-in person in the
//! `x-opsloop-on-behalf-of` metadata: the alerter records `<person> via
//! <console token>`.

use std::time::Duration as StdDuration;

use chrono::{DateTime, Utc};
use opsloop_core::proto::v1 as pb;
use pb::incident_service_client::IncidentServiceClient;
use tonic::transport::Channel;

use super::peer::{GrpcPeer, PeerCallError, PeerKind};

/// How long one call may take.
const CALL_TIMEOUT: StdDuration = StdDuration::from_secs(10);

/// Most characters of an acknowledge/resolve reason the console sends.
pub const MAX_REASON: usize = 1000;
/// Most characters of a note (the alerter's own bound).
pub const MAX_NOTE: usize = 4000;

/// The alerter, as the console's incidents pages call it.
pub const ALERTER: PeerKind = PeerKind {
    daemon: "alerter",
    setting: "alerter_grpc_url",
    secret: "console_alerter_token",
};

/// A client of the alerter's `IncidentService`; connects on first use.
#[derive(Debug, Clone)]
pub struct IncidentClient {
    peer: GrpcPeer,
}

/// An incident with its timeline, as `GetIncident` answers.
#[derive(Debug, Clone)]
pub struct IncidentDetail {
    pub incident: pb::Incident,
    pub timeline: Vec<pb::IncidentTimelineEntry>,
}

impl IncidentClient {
    pub fn new(peer: GrpcPeer) -> Self {
        Self { peer }
    }

    /// No alerter: every call says how to configure one.
    pub fn disabled() -> Self {
        Self::new(GrpcPeer::disabled(ALERTER))
    }

    fn client(&self) -> Result<IncidentServiceClient<Channel>, PeerCallError> {
        self.peer.channel().map(IncidentServiceClient::new)
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        self.peer.request(message, CALL_TIMEOUT)
    }

    /// A request made for `person` (the signed-in token's name), which the
    /// alerter records as `<person> via <console token>`.
    fn request_for<T>(&self, message: T, person: &str) -> tonic::Request<T> {
        let mut request = self.request(message);
        if let Ok(value) = person.parse() {
            request
                .metadata_mut()
                .insert(opsloop_core::auth::ON_BEHALF_OF, value);
        }
        request
    }

    fn failed(&self, status: tonic::Status) -> PeerCallError {
        self.peer.failed(status)
    }

    /// Newest opened first; open ones only when `open_only`.
    pub async fn list(&self, open_only: bool) -> Result<Vec<pb::Incident>, PeerCallError> {
        let response = self
            .client()?
            .list_incidents(self.request(pb::ListIncidentsRequest {
                open_only,
                level: String::new(),
                limit: 200,
            }))
            .await
            .map_err(|s| self.failed(s))?;
        Ok(response.into_inner().incidents)
    }

    /// One incident and its timeline.
    pub async fn get(&self, id: &str) -> Result<IncidentDetail, PeerCallError> {
        let response = self
            .client()?
            .get_incident(self.request(pb::GetIncidentRequest { id: id.to_owned() }))
            .await
            .map_err(|s| self.failed(s))?
            .into_inner();
        let incident = response
            .incident
            .ok_or_else(|| self.failed(tonic::Status::internal("answer without incident")))?;
        Ok(IncidentDetail {
            incident,
            timeline: response.timeline,
        })
    }

    /// Acknowledges, resolves or adds a note, as `actor`.
    pub async fn act(
        &self,
        id: &str,
        action: IncidentAction,
        actor: &str,
        text: &str,
    ) -> Result<(), PeerCallError> {
        let mut client = self.client()?;
        let (id, actor, text) = (id.to_owned(), actor.to_owned(), text.to_owned());
        let result = match action {
            IncidentAction::Acknowledge => client
                .acknowledge_incident(self.request_for(
                    pb::AcknowledgeIncidentRequest {
                        id,
                        actor: actor.clone(),
                        reason: text,
                    },
                    &actor,
                ))
                .await
                .map(drop),
            IncidentAction::Resolve => client
                .resolve_incident(self.request_for(
                    pb::ResolveIncidentRequest {
                        id,
                        actor: actor.clone(),
                        reason: text,
                    },
                    &actor,
                ))
                .await
                .map(drop),
            IncidentAction::Note => client
                .add_incident_note(self.request_for(
                    pb::AddIncidentNoteRequest {
                        id,
                        text,
                        actor: actor.clone(),
                    },
                    &actor,
                ))
                .await
                .map(drop),
        };
        result.map_err(|s| self.failed(s))
    }

    /// The postmortem draft (Markdown), drafted by `actor`.
    pub async fn postmortem(&self, id: &str, actor: &str) -> Result<String, PeerCallError> {
        let response = self
            .client()?
            .draft_postmortem(self.request_for(
                pb::DraftPostmortemRequest {
                    id: id.to_owned(),
                    actor: actor.to_owned(),
                },
                actor,
            ))
            .await
            .map_err(|s| self.failed(s))?;
        Ok(response.into_inner().markdown)
    }
}

/// What a console form does to an incident.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncidentAction {
    Acknowledge,
    Resolve,
    Note,
}

impl IncidentAction {
    /// The audit action and the `done` code of the redirect.
    pub fn names(self) -> (&'static str, &'static str) {
        match self {
            Self::Acknowledge => ("incident.acknowledge", "acknowledged"),
            Self::Resolve => ("incident.resolve", "resolved"),
            Self::Note => ("incident.note", "noted"),
        }
    }

    /// The form's text, checked: a note needs 1–4000 characters, a reason
    /// may be empty (at most 1000).
    pub fn text(self, raw: Option<&str>) -> Result<String, opsloop_core::domain::ValidationError> {
        let text = raw.unwrap_or("").trim();
        let (field, max) = match self {
            Self::Note => ("comment", MAX_NOTE),
            _ => ("reason", MAX_REASON),
        };
        if self == Self::Note && text.is_empty() {
            return Err(opsloop_core::domain::ValidationError::new(
                field,
                "write the note's text",
            ));
        }
        if text.chars().count() > max {
            return Err(opsloop_core::domain::ValidationError::new(
                field,
                format!("at most {max} characters"),
            ));
        }
        Ok(text.to_owned())
    }
}

/// A protobuf timestamp as UTC (None when absent or out of range).
pub fn at(t: Option<&prost_types::Timestamp>) -> Option<DateTime<Utc>> {
    t.and_then(|t| DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_check_their_text() {
        assert_eq!(
            IncidentAction::Note.text(Some("  looking  ")).unwrap(),
            "looking"
        );
        let empty = IncidentAction::Note.text(Some("   ")).unwrap_err();
        assert_eq!(empty.field, "comment");
        assert_eq!(IncidentAction::Acknowledge.text(None).unwrap(), "");
        let long = "x".repeat(MAX_REASON + 1);
        assert_eq!(
            IncidentAction::Resolve.text(Some(&long)).unwrap_err().field,
            "reason"
        );
        assert_eq!(
            IncidentAction::Resolve.names(),
            ("incident.resolve", "resolved")
        );
    }

    #[tokio::test]
    async fn a_disabled_client_says_how_to_configure_it() {
        let err = IncidentClient::disabled().list(true).await.unwrap_err();
        assert!(err.to_string().contains("alerter_grpc_url"), "{err}");
    }

    #[test]
    fn timestamps_convert() {
        let t = prost_types::Timestamp {
            seconds: 1_700_000_000,
            nanos: 0,
        };
        assert_eq!(at(Some(&t)).unwrap().timestamp(), 1_700_000_000);
        assert_eq!(at(None), None);
    }
}
