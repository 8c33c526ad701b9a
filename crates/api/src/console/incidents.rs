//! The console's incidents, read from and acted on at the alerter's gRPC
//! `IncidentService` (list, show with its timeline, acknowledge, resolve,
//! add a note, draft the postmortem) — the alerter owns the incident state
//! machine and the escalation, the api keeps no copy. The address is
//! `[api.console] alerter_grpc_url` (else the alerter's `grpc_addr` in the
//! same configuration); the bearer token the `console_alerter_token` secret
//! (the `admin` role). Each action names the signed-in person as its actor:
//! the alerter records `<person> via <console token>`.

use std::path::Path;
use std::time::Duration as StdDuration;

use chrono::{DateTime, Utc};
use opsloop_core::proto::v1 as pb;
use pb::incident_service_client::IncidentServiceClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint};

/// How long connecting to the alerter may take.
const CONNECT_TIMEOUT: StdDuration = StdDuration::from_secs(3);
/// How long one call may take.
const CALL_TIMEOUT: StdDuration = StdDuration::from_secs(10);

/// Most characters of an acknowledge/resolve reason the console sends.
pub const MAX_REASON: usize = 1000;
/// Most characters of a note (the alerter's own bound).
pub const MAX_NOTE: usize = 4000;

/// Why a call to the alerter's incident service failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IncidentCallError {
    #[error(
        "incidents are not configured for the console: set [api.console] alerter_grpc_url (or alerter.grpc_addr)"
    )]
    NotConfigured,
    #[error("the alerter's gRPC port at {0} is not reachable: {1}")]
    Unavailable(String, String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("not possible now: {0}")]
    NotPossible(String),
    #[error(
        "the alerter refused the console's token (secret console_alerter_token, role admin): {0}"
    )]
    Refused(String),
}

impl IncidentCallError {
    fn from_status(target: &str, status: tonic::Status) -> Self {
        use tonic::Code;
        let message = status.message().to_owned();
        match status.code() {
            Code::NotFound => Self::NotFound(message),
            Code::InvalidArgument => Self::Invalid(message),
            Code::FailedPrecondition | Code::Aborted | Code::AlreadyExists => {
                Self::NotPossible(message)
            }
            Code::Unauthenticated | Code::PermissionDenied => Self::Refused(message),
            _ => Self::Unavailable(target.to_owned(), format!("{:?}: {message}", status.code())),
        }
    }
}

/// A client of the alerter's `IncidentService`; connects on first use.
#[derive(Clone)]
pub struct IncidentClient {
    channel: Option<Channel>,
    target: String,
    token: Option<MetadataValue<Ascii>>,
}

impl std::fmt::Debug for IncidentClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IncidentClient")
            .field("target", &self.target)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .finish()
    }
}

/// An incident with its timeline, as `GetIncident` answers.
#[derive(Debug, Clone)]
pub struct IncidentDetail {
    pub incident: pb::Incident,
    pub timeline: Vec<pb::IncidentTimelineEntry>,
}

impl IncidentClient {
    /// No alerter: every call answers [`IncidentCallError::NotConfigured`].
    pub fn disabled() -> Self {
        Self {
            channel: None,
            target: String::new(),
            token: None,
        }
    }

    /// A lazily connected client of `url` (`http://` or `https://`, the
    /// latter trusting the system roots plus `ca_file`).
    pub fn new(
        url: &str,
        token: Option<&str>,
        ca_file: Option<&Path>,
    ) -> Result<Self, ClientSetupError> {
        let url = url.trim().trim_end_matches('/');
        let https = url.starts_with("https://");
        if !https && !url.starts_with("http://") {
            return Err(ClientSetupError(format!(
                "api.console.alerter_grpc_url {url:?}: use http://HOST:PORT or https://HOST:PORT"
            )));
        }
        let mut endpoint = Endpoint::from_shared(url.to_owned())
            .map_err(|e| ClientSetupError(format!("api.console.alerter_grpc_url {url:?}: {e}")))?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(CALL_TIMEOUT);
        if https {
            let tls = opsloop_core::tls::tonic_client_tls(ca_file, None)
                .map_err(|e| ClientSetupError(format!("api.console: TLS to the alerter: {e}")))?;
            endpoint = endpoint.tls_config(tls).map_err(|e| {
                ClientSetupError(format!("api.console.alerter_grpc_url {url:?}: {e}"))
            })?;
        }
        let token = match token.map(str::trim).filter(|t| !t.is_empty()) {
            Some(t) => Some(format!("Bearer {t}").parse().map_err(|_| {
                ClientSetupError(
                    "the console_alerter_token secret is not a valid header value (printable ASCII only)"
                        .into(),
                )
            })?),
            None => None,
        };
        Ok(Self {
            channel: Some(endpoint.connect_lazy()),
            target: url.to_owned(),
            token,
        })
    }

    /// The incident service's address (empty when not configured).
    pub fn target(&self) -> &str {
        &self.target
    }

    fn client(&self) -> Result<IncidentServiceClient<Channel>, IncidentCallError> {
        self.channel
            .clone()
            .map(IncidentServiceClient::new)
            .ok_or(IncidentCallError::NotConfigured)
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(token) = &self.token {
            request
                .metadata_mut()
                .insert("authorization", token.clone());
        }
        request
    }

    fn failed(&self, status: tonic::Status) -> IncidentCallError {
        IncidentCallError::from_status(&self.target, status)
    }

    /// Newest opened first; open ones only when `open_only`.
    pub async fn list(&self, open_only: bool) -> Result<Vec<pb::Incident>, IncidentCallError> {
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
    pub async fn get(&self, id: &str) -> Result<IncidentDetail, IncidentCallError> {
        let response = self
            .client()?
            .get_incident(self.request(pb::GetIncidentRequest { id: id.to_owned() }))
            .await
            .map_err(|s| self.failed(s))?
            .into_inner();
        let incident = response.incident.ok_or_else(|| {
            IncidentCallError::Unavailable(self.target.clone(), "answer without incident".into())
        })?;
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
    ) -> Result<(), IncidentCallError> {
        let mut client = self.client()?;
        let (id, actor, text) = (id.to_owned(), actor.to_owned(), text.to_owned());
        let result = match action {
            IncidentAction::Acknowledge => client
                .acknowledge_incident(self.request(pb::AcknowledgeIncidentRequest {
                    id,
                    actor,
                    reason: text,
                }))
                .await
                .map(drop),
            IncidentAction::Resolve => client
                .resolve_incident(self.request(pb::ResolveIncidentRequest {
                    id,
                    actor,
                    reason: text,
                }))
                .await
                .map(drop),
            IncidentAction::Note => client
                .add_incident_note(self.request(pb::AddIncidentNoteRequest { id, text, actor }))
                .await
                .map(drop),
        };
        result.map_err(|s| self.failed(s))
    }

    /// The postmortem draft (Markdown), drafted by `actor`.
    pub async fn postmortem(&self, id: &str, actor: &str) -> Result<String, IncidentCallError> {
        let response = self
            .client()?
            .draft_postmortem(self.request(pb::DraftPostmortemRequest {
                id: id.to_owned(),
                actor: actor.to_owned(),
            }))
            .await
            .map_err(|s| self.failed(s))?;
        Ok(response.into_inner().markdown)
    }
}

/// The client could not be set up from the configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ClientSetupError(pub String);

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

    #[test]
    fn statuses_map_to_what_the_page_says() {
        let map = |s| IncidentCallError::from_status("http://alerter:50053", s);
        assert!(matches!(
            map(tonic::Status::not_found("incident x not found")),
            IncidentCallError::NotFound(m) if m.contains("not found")
        ));
        assert!(matches!(
            map(tonic::Status::failed_precondition("already resolved")),
            IncidentCallError::NotPossible(_)
        ));
        assert!(matches!(
            map(tonic::Status::permission_denied("needs admin")),
            IncidentCallError::Refused(_)
        ));
        let down = map(tonic::Status::unavailable("connection refused"));
        assert!(down.to_string().contains("http://alerter:50053"), "{down}");
        assert!(
            IncidentCallError::NotConfigured
                .to_string()
                .contains("alerter_grpc_url")
        );
    }

    #[tokio::test]
    async fn setup_refuses_a_url_without_a_scheme_and_a_disabled_client_says_so() {
        let bad = IncidentClient::new("alerter:50053", None, None).unwrap_err();
        assert!(bad.0.contains("http://"), "{bad}");
        let client = IncidentClient::disabled();
        assert_eq!(
            client.list(true).await.unwrap_err(),
            IncidentCallError::NotConfigured
        );
        let lazy = IncidentClient::new("http://127.0.0.1:9", Some("t"), None).unwrap();
        assert_eq!(lazy.target(), "http://127.0.0.1:9");
        assert!(matches!(
            lazy.list(false).await.unwrap_err(),
            IncidentCallError::Unavailable(..)
        ));
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
