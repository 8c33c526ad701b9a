//! Reaching the daemons: which endpoint and token a command uses, one gRPC
//! channel carrying `authorization: Bearer …`, and every gRPC error turned into
//! one line naming the status code and what to do about it.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, anyhow};
use opsloop_core::proto::v1::alert_service_client::AlertServiceClient;
use opsloop_core::proto::v1::backup_service_client::BackupServiceClient;
use opsloop_core::proto::v1::event_service_client::EventServiceClient;
use opsloop_core::proto::v1::incident_service_client::IncidentServiceClient;
use opsloop_core::proto::v1::mission_service_client::MissionServiceClient;
use opsloop_core::proto::v1::ops_service_client::OpsServiceClient;
use opsloop_core::proto::v1::policy_service_client::PolicyServiceClient;
use opsloop_core::proto::v1::proposal_service_client::ProposalServiceClient;
use opsloop_core::proto::v1::rollout_service_client::RolloutServiceClient;
use opsloop_core::proto::v1::token_service_client::TokenServiceClient;
use opsloop_core::proto::v1::trigger_service_client::TriggerServiceClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::output::OutputFormat;

/// How long connecting to a daemon may take before the command gives up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The flags every command shares, as given on the command line.
#[derive(Debug, Clone)]
pub struct Globals {
    /// `--endpoint`: overrides the daemon's default endpoint.
    pub endpoint: Option<String>,
    /// `--token`: the bearer token itself.
    pub token: Option<String>,
    /// `--token-file`: a file holding the bearer token.
    pub token_file: Option<PathBuf>,
    /// `--output`.
    pub output: OutputFormat,
    /// `--actor`: who is acting, for audit fields.
    pub actor: String,
}

impl Globals {
    /// The bearer token: `--token`, else `--token-file`, else `$OPSLOOP_TOKEN`.
    /// `None` when none is given (daemons without tokens are open).
    pub fn token(&self) -> anyhow::Result<Option<String>> {
        if let Some(token) = self.token.as_deref().map(str::trim) {
            if token.is_empty() {
                anyhow::bail!("--token is empty");
            }
            return Ok(Some(token.to_owned()));
        }
        if let Some(path) = &self.token_file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("--token-file {}: cannot read it", path.display()))?;
            let token = text.trim();
            if token.is_empty() {
                anyhow::bail!("--token-file {}: the file is empty", path.display());
            }
            return Ok(Some(token.to_owned()));
        }
        Ok(std::env::var("OPSLOOP_TOKEN")
            .ok()
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty()))
    }

    /// The endpoint for `daemon`: `--endpoint`, else the daemon's environment
    /// variable, else its default port on 127.0.0.1. A bare `host:port` gets
    /// `http://` in front.
    pub fn endpoint(&self, daemon: Daemon) -> String {
        let raw = self
            .endpoint
            .clone()
            .or_else(|| {
                std::env::var(daemon.env_var())
                    .ok()
                    .filter(|v| !v.is_empty())
            })
            .unwrap_or_else(|| daemon.default_endpoint().to_owned());
        if raw.contains("://") {
            raw
        } else {
            format!("http://{raw}")
        }
    }
}

/// The daemons the CLI talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Daemon {
    /// The api (proposals, missions, events, policy, triggers, ops).
    Api,
    /// The alerter (alerts, silences, receiver tests, incidents, on-call).
    Alerter,
    /// The backup-agent.
    BackupAgent,
    /// The heartbeat-worker's HTTP port (`POST /run`).
    Heartbeat,
}

impl Daemon {
    /// The daemon's name in messages.
    pub fn name(self) -> &'static str {
        match self {
            Daemon::Api => "api",
            Daemon::Alerter => "alerter",
            Daemon::BackupAgent => "backup-agent",
            Daemon::Heartbeat => "heartbeat-worker",
        }
    }

    /// The default endpoint (DESIGN.md's default ports).
    pub fn default_endpoint(self) -> &'static str {
        match self {
            Daemon::Api => "http://127.0.0.1:50051",
            Daemon::Alerter => "http://127.0.0.1:50052",
            Daemon::BackupAgent => "http://127.0.0.1:50053",
            Daemon::Heartbeat => "http://127.0.0.1:9755",
        }
    }

    /// The environment variable naming the daemon's endpoint.
    pub fn env_var(self) -> &'static str {
        match self {
            Daemon::Api => "OPSLOOP_ENDPOINT",
            Daemon::Alerter => "OPSLOOP_ALERTER_ENDPOINT",
            Daemon::BackupAgent => "OPSLOOP_BACKUP_ENDPOINT",
            Daemon::Heartbeat => "OPSLOOP_HEARTBEAT_ENDPOINT",
        }
    }
}

/// Adds `authorization: Bearer <token>` to every request when a token is set.
#[derive(Clone)]
pub struct Auth(Option<MetadataValue<Ascii>>);

impl Auth {
    /// An interceptor sending `token`, or nothing when `None`.
    pub fn new(token: Option<&str>) -> anyhow::Result<Self> {
        match token {
            None => Ok(Self(None)),
            Some(token) => {
                let value = format!("Bearer {token}")
                    .parse::<MetadataValue<Ascii>>()
                    .map_err(|_| {
                        anyhow!(
                            "the token has characters a header cannot carry (printable ASCII only)"
                        )
                    })?;
                Ok(Self(Some(value)))
            }
        }
    }
}

impl Interceptor for Auth {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// A channel with the bearer token attached.
pub type AuthChannel = InterceptedService<Channel, Auth>;

/// An open connection to one daemon.
#[derive(Clone)]
pub struct Connection {
    channel: Channel,
    auth: Auth,
    daemon: Daemon,
    endpoint: String,
}

impl Connection {
    /// Connects to `daemon` at the endpoint and with the token of `globals`.
    pub async fn open(globals: &Globals, daemon: Daemon) -> anyhow::Result<Self> {
        let token = globals.token()?;
        Self::connect(&globals.endpoint(daemon), token.as_deref(), daemon).await
    }

    /// Connects to `daemon` at `endpoint`, eagerly, so an unreachable daemon
    /// is reported before anything else happens.
    pub async fn connect(
        endpoint: &str,
        token: Option<&str>,
        daemon: Daemon,
    ) -> anyhow::Result<Self> {
        let https = endpoint.starts_with("https://");
        if !https && !endpoint.starts_with("http://") {
            anyhow::bail!(
                "INVALID_ARGUMENT: endpoint {endpoint:?}: use http:// or https:// — fix --endpoint or ${}",
                daemon.env_var()
            );
        }
        let auth = Auth::new(token)?;
        let mut builder = Endpoint::from_shared(endpoint.to_owned())
            .map_err(|_| {
                anyhow!("INVALID_ARGUMENT: endpoint {endpoint:?} is not a URL like {} — fix --endpoint or ${}", daemon.default_endpoint(), daemon.env_var())
            })?
            .connect_timeout(CONNECT_TIMEOUT);
        if https {
            let ca_file = ca_file();
            let tls = opsloop_core::tls::tonic_client_tls(ca_file.as_deref(), None)
                .map_err(|e| anyhow!("INVALID_ARGUMENT: --ca-file: {e}"))?;
            builder = builder
                .tls_config(tls)
                .map_err(|e| anyhow!("INVALID_ARGUMENT: endpoint {endpoint:?}: {e}"))?;
        }
        let channel = builder.connect().await.map_err(|error| {
            let cause = error_chain(&error);
            if https && looks_like_tls(&cause) {
                anyhow!(
                    "UNAVAILABLE: TLS to {} at {endpoint} failed: {cause} — the daemon's certificate must be signed by a system root or by --ca-file / $OPSLOOP_CA_FILE, for the host name in the endpoint",
                    daemon.name()
                )
            } else {
                unreachable(daemon, endpoint)
            }
        })?;
        Ok(Self {
            channel,
            auth,
            daemon,
            endpoint: endpoint.to_owned(),
        })
    }

    /// The endpoint this connection goes to.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    fn intercepted(&self) -> AuthChannel {
        InterceptedService::new(self.channel.clone(), self.auth.clone())
    }

    /// `ProposalService` client.
    pub fn proposals(&self) -> ProposalServiceClient<AuthChannel> {
        ProposalServiceClient::new(self.intercepted())
    }

    /// `MissionService` client.
    pub fn missions(&self) -> MissionServiceClient<AuthChannel> {
        MissionServiceClient::new(self.intercepted())
    }

    /// `EventService` client.
    pub fn events(&self) -> EventServiceClient<AuthChannel> {
        EventServiceClient::new(self.intercepted())
    }

    /// `PolicyService` client.
    pub fn policies(&self) -> PolicyServiceClient<AuthChannel> {
        PolicyServiceClient::new(self.intercepted())
    }

    /// `RolloutService` client.
    pub fn rollouts(&self) -> RolloutServiceClient<AuthChannel> {
        RolloutServiceClient::new(self.intercepted())
    }

    /// `TriggerService` client.
    pub fn triggers(&self) -> TriggerServiceClient<AuthChannel> {
        TriggerServiceClient::new(self.intercepted())
    }

    /// `OpsService` client.
    pub fn ops(&self) -> OpsServiceClient<AuthChannel> {
        OpsServiceClient::new(self.intercepted())
    }

    /// `AlertService` client.
    pub fn alerts(&self) -> AlertServiceClient<AuthChannel> {
        AlertServiceClient::new(self.intercepted())
    }

    /// `IncidentService` client (alerter).
    pub fn incidents(&self) -> IncidentServiceClient<AuthChannel> {
        IncidentServiceClient::new(self.intercepted())
    }

    /// `TokenService` client.
    pub fn tokens(&self) -> TokenServiceClient<AuthChannel> {
        TokenServiceClient::new(self.intercepted())
    }

    /// `BackupService` client.
    pub fn backups(&self) -> BackupServiceClient<AuthChannel> {
        BackupServiceClient::new(self.intercepted())
    }

    /// Turns a failed call into the one-line error the user sees.
    /// The error carries the status code, which decides the exit status
    /// ([`crate::exit::for_code`]).
    pub fn error(&self, status: Status) -> anyhow::Error {
        crate::exit::status(
            status.code(),
            status_line(self.daemon, &self.endpoint, &status),
        )
    }
}

/// The CA bundle `https://` endpoints are checked against, besides the
/// system roots: `--ca-file`, else `$OPSLOOP_CA_FILE`.
static CA_FILE: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();

/// Sets the CA bundle from `--ca-file` (once, at start).
pub fn set_ca_file(path: Option<PathBuf>) {
    let _ = CA_FILE.set(path);
}

fn ca_file() -> Option<PathBuf> {
    CA_FILE.get().cloned().flatten().or_else(|| {
        std::env::var_os("OPSLOOP_CA_FILE")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    })
}

fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![error.to_string()];
    let mut source = error.source();
    while let Some(e) = source {
        parts.push(e.to_string());
        source = e.source();
    }
    parts.join(": ")
}

fn looks_like_tls(cause: &str) -> bool {
    let lower = cause.to_ascii_lowercase();
    lower.contains("certificate") || lower.contains("tls") || lower.contains("handshake")
}

/// The one-line error for a daemon that cannot be reached (exit status 6).
pub fn unreachable(daemon: Daemon, endpoint: &str) -> anyhow::Error {
    crate::exit::status(
        Code::Unavailable,
        format!(
            "UNAVAILABLE: cannot reach {} at {endpoint} — is it running? (opsloop dev; or set --endpoint / ${})",
            daemon.name(),
            daemon.env_var()
        ),
    )
}

/// True when the api answered UNAVAILABLE because its database is down
/// (the api is up), as opposed to a connection that never reached it.
pub fn database_unavailable(status: &Status) -> bool {
    status.code() == Code::Unavailable
        && (status
            .metadata()
            .get(opsloop_core::workflow::UNAVAILABLE_CAUSE_HEADER)
            .is_some_and(|v| v == "database")
            || status
                .message()
                .starts_with(opsloop_core::workflow::DATABASE_UNAVAILABLE))
}

/// `CODE: message — what to do`, on one line.
pub fn status_line(daemon: Daemon, endpoint: &str, status: &Status) -> String {
    let name = daemon.name();
    let message = crate::output::one_line(status.message());
    let hint = match status.code() {
        Code::Unavailable if database_unavailable(status) => {
            return format!(
                "UNAVAILABLE: the {name} at {endpoint} is up but its database is unavailable — check the database; the {name} reconnects on its own"
            );
        }
        Code::Unavailable => {
            return format!(
                "UNAVAILABLE: cannot reach {name} at {endpoint} — is it running? (opsloop dev){}",
                if message.is_empty() {
                    String::new()
                } else {
                    format!(" [{message}]")
                }
            );
        }
        Code::InvalidArgument => "fix the named field and retry".to_owned(),
        Code::NotFound => "check the id or name (the list commands show them)".to_owned(),
        Code::AlreadyExists => "pick another name, or change the existing one".to_owned(),
        Code::FailedPrecondition => {
            "its current state does not allow this; look at it with the show/list commands"
                .to_owned()
        }
        // The server's message already names the call and the role it
        // needs (one sentence); nothing to add to it.
        Code::PermissionDenied if !message.is_empty() => {
            return format!("PERMISSION_DENIED: {message}");
        }
        Code::PermissionDenied => {
            "the token's role may not make this call; use a token with the role it needs (opsloop token list)".to_owned()
        }
        Code::Unauthenticated => {
            "give a token with --token, --token-file or $OPSLOOP_TOKEN".to_owned()
        }
        Code::ResourceExhausted => {
            "the request is too large or too frequent; shrink it or retry later".to_owned()
        }
        Code::DeadlineExceeded => format!("the {name} did not answer in time; retry"),
        Code::Unimplemented => format!(
            "the server at {endpoint} does not serve this call — is it the {name}, and as new as this CLI?"
        ),
        Code::Aborted => "a concurrent change won; retry".to_owned(),
        Code::Cancelled => "the call was cancelled".to_owned(),
        Code::OutOfRange => "the value is out of range; adjust it and retry".to_owned(),
        // A plaintext client on a TLS port: the TLS alert bytes are not
        // HTTP/2, so the call fails below gRPC with a protocol error.
        Code::Internal
            if endpoint.starts_with("http://") && message.contains("h2 protocol error") =>
        {
            format!(
                "the {name} at {endpoint} does not speak plaintext gRPC; if its port serves TLS, use https://{} (with --ca-file for a private CA)",
                endpoint.trim_start_matches("http://")
            )
        }
        Code::Ok | Code::Unknown | Code::Internal | Code::DataLoss => {
            format!("the {name} failed; see its logs")
        }
    };
    if message.is_empty() {
        format!("{}: {hint}", code_name(status.code()))
    } else {
        format!("{}: {message} — {hint}", code_name(status.code()))
    }
}

/// The canonical gRPC name of a status code, e.g. `FAILED_PRECONDITION`.
pub use opsloop_core::grpc::code_name;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_name_the_code_and_a_remedy() {
        let line = status_line(
            Daemon::Api,
            "http://127.0.0.1:50051",
            &Status::unavailable("tcp connect error"),
        );
        assert!(line.starts_with("UNAVAILABLE: cannot reach api at http://127.0.0.1:50051 — is it running? (opsloop dev)"), "{line}");
        let line = status_line(
            Daemon::Api,
            "http://x",
            &Status::invalid_argument("steps[0].kind: must match [a-z0-9_.:-]+\nmore"),
        );
        assert_eq!(
            line,
            "INVALID_ARGUMENT: steps[0].kind: must match [a-z0-9_.:-]+ more — fix the named field and retry"
        );
        let line = status_line(Daemon::Alerter, "http://x", &Status::permission_denied(""));
        assert!(
            line.starts_with("PERMISSION_DENIED: the token's role may not make this call"),
            "{line}"
        );
        let denied = opsloop_core::auth::Denied::WrongRole {
            name: "ci".into(),
            role: opsloop_core::auth::Role::Agent,
            target: "/opsloop.v1.PolicyService/SetPolicy".into(),
            needs: vec!["admin"],
        };
        assert_eq!(
            status_line(Daemon::Api, "http://x", &denied.to_status()),
            "PERMISSION_DENIED: /opsloop.v1.PolicyService/SetPolicy needs the admin role, and token ci has the agent role"
        );
    }

    #[test]
    fn a_plaintext_call_to_a_tls_port_says_to_use_https() {
        let line = status_line(
            Daemon::Api,
            "http://127.0.0.1:50051",
            &Status::internal("h2 protocol error: http2 error"),
        );
        assert!(
            line.contains("does not speak plaintext gRPC")
                && line.contains("use https://127.0.0.1:50051"),
            "{line}"
        );
    }

    #[test]
    fn bare_host_port_endpoints_get_a_scheme() {
        let globals = Globals {
            endpoint: Some("127.0.0.1:9".into()),
            token: None,
            token_file: None,
            output: OutputFormat::Table,
            actor: "me".into(),
        };
        assert_eq!(globals.endpoint(Daemon::Api), "http://127.0.0.1:9");
    }
}
