//! The console's gRPC connection to another daemon (the alerter's
//! `IncidentService`, the backup-agent's `BackupService`): a lazily
//! connected channel, the console's bearer token on every call, a timeout
//! per call, and one mapping of the answer's status to what the page says.

use std::path::Path;
use std::time::Duration as StdDuration;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint};

/// How long connecting to a daemon may take.
const CONNECT_TIMEOUT: StdDuration = StdDuration::from_secs(3);

/// Which daemon, and the setting and secret that configure the console's
/// calls to it (named in the errors).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerKind {
    pub daemon: &'static str,
    pub setting: &'static str,
    pub secret: &'static str,
}

/// Why a call to a daemon failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerCallError {
    #[error("the console does not call the {daemon}: set [api.console] {setting}")]
    NotConfigured {
        daemon: &'static str,
        setting: &'static str,
    },
    #[error("the {daemon}'s gRPC port at {target} is not reachable: {message}")]
    Unavailable {
        daemon: &'static str,
        target: String,
        message: String,
    },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("not possible now: {0}")]
    NotPossible(String),
    #[error("the {daemon} refused the console's token (secret {secret}, role admin): {message}")]
    Refused {
        daemon: &'static str,
        secret: &'static str,
        message: String,
    },
}

/// A client connection to one daemon's gRPC port.
#[derive(Clone)]
pub struct GrpcPeer {
    kind: PeerKind,
    channel: Option<Channel>,
    target: String,
    token: Option<MetadataValue<Ascii>>,
}

impl std::fmt::Debug for GrpcPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcPeer")
            .field("daemon", &self.kind.daemon)
            .field("target", &self.target)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .finish()
    }
}

/// The connection could not be set up from the configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PeerSetupError(pub String);

impl GrpcPeer {
    /// Not configured: every call answers [`PeerCallError::NotConfigured`].
    pub fn disabled(kind: PeerKind) -> Self {
        Self {
            kind,
            channel: None,
            target: String::new(),
            token: None,
        }
    }

    /// A lazily connected client of `url` (`http://` or `https://`, the
    /// latter trusting the system roots plus `ca_file`).
    pub fn new(
        kind: PeerKind,
        url: &str,
        token: Option<&str>,
        ca_file: Option<&Path>,
    ) -> Result<Self, PeerSetupError> {
        let setting = kind.setting;
        let url = url.trim().trim_end_matches('/');
        let https = url.starts_with("https://");
        if !https && !url.starts_with("http://") {
            return Err(PeerSetupError(format!(
                "api.console.{setting} {url:?}: use http://HOST:PORT or https://HOST:PORT"
            )));
        }
        let mut endpoint = Endpoint::from_shared(url.to_owned())
            .map_err(|e| PeerSetupError(format!("api.console.{setting} {url:?}: {e}")))?
            .connect_timeout(CONNECT_TIMEOUT);
        if https {
            let tls = opsloop_core::tls::tonic_client_tls(ca_file, None).map_err(|e| {
                PeerSetupError(format!("api.console: TLS to the {}: {e}", kind.daemon))
            })?;
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| PeerSetupError(format!("api.console.{setting} {url:?}: {e}")))?;
        }
        let token = match token.map(str::trim).filter(|t| !t.is_empty()) {
            Some(t) => Some(format!("Bearer {t}").parse().map_err(|_| {
                PeerSetupError(format!(
                    "the {} secret is not a valid header value (printable ASCII only)",
                    kind.secret
                ))
            })?),
            None => None,
        };
        Ok(Self {
            kind,
            channel: Some(endpoint.connect_lazy()),
            target: url.to_owned(),
            token,
        })
    }

    /// The daemon's address (empty when not configured).
    pub fn target(&self) -> &str {
        &self.target
    }

    /// The channel, or why there is none.
    pub fn channel(&self) -> Result<Channel, PeerCallError> {
        self.channel.clone().ok_or(PeerCallError::NotConfigured {
            daemon: self.kind.daemon,
            setting: self.kind.setting,
        })
    }

    /// `message` with the console's token, answered within `timeout`.
    pub fn request<T>(&self, message: T, timeout: StdDuration) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(timeout);
        if let Some(token) = &self.token {
            request
                .metadata_mut()
                .insert("authorization", token.clone());
        }
        request
    }

    /// What a failed call's status means for the page.
    pub fn failed(&self, status: tonic::Status) -> PeerCallError {
        use tonic::Code;
        let message = status.message().to_owned();
        match status.code() {
            Code::NotFound => PeerCallError::NotFound(message),
            Code::InvalidArgument => PeerCallError::Invalid(message),
            Code::FailedPrecondition | Code::Aborted | Code::AlreadyExists => {
                PeerCallError::NotPossible(message)
            }
            Code::Unauthenticated | Code::PermissionDenied => PeerCallError::Refused {
                daemon: self.kind.daemon,
                secret: self.kind.secret,
                message,
            },
            code => PeerCallError::Unavailable {
                daemon: self.kind.daemon,
                target: self.target.clone(),
                message: format!("{code:?}: {message}"),
            },
        }
    }
}

/// `scheme://addr` for a configured listen address, a wildcard replaced by
/// loopback; None for port 0 (known only once bound) or an empty address.
pub fn url_of(scheme: &str, addr: &str) -> Option<String> {
    let addr = addr
        .trim()
        .replacen("0.0.0.0:", "127.0.0.1:", 1)
        .replacen("[::]:", "[::1]:", 1);
    (!addr.is_empty() && !addr.ends_with(":0")).then(|| format!("{scheme}://{addr}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIND: PeerKind = PeerKind {
        daemon: "alerter",
        setting: "alerter_grpc_url",
        secret: "console_alerter_token",
    };

    #[tokio::test]
    async fn statuses_map_to_what_the_page_says() {
        let peer = GrpcPeer::new(KIND, "http://alerter:50052", None, None).expect("peer");
        let map = |s| peer.failed(s);
        assert!(matches!(
            map(tonic::Status::not_found("incident x not found")),
            PeerCallError::NotFound(m) if m.contains("not found")
        ));
        assert!(matches!(
            map(tonic::Status::failed_precondition("already resolved")),
            PeerCallError::NotPossible(_)
        ));
        let refused = map(tonic::Status::permission_denied("needs admin"));
        assert!(
            refused.to_string().contains("console_alerter_token"),
            "{refused}"
        );
        let down = map(tonic::Status::unavailable("connection refused"));
        assert!(down.to_string().contains("http://alerter:50052"), "{down}");
        let off = GrpcPeer::disabled(KIND).channel().unwrap_err();
        assert!(off.to_string().contains("alerter_grpc_url"), "{off}");
    }

    #[tokio::test]
    async fn setup_refuses_a_url_without_a_scheme() {
        let bad = GrpcPeer::new(KIND, "alerter:50052", None, None).unwrap_err();
        assert!(bad.0.contains("http://"), "{bad}");
        let peer = GrpcPeer::new(KIND, "http://127.0.0.1:9/", Some("t"), None).expect("peer");
        assert_eq!(peer.target(), "http://127.0.0.1:9");
        let request = peer.request((), StdDuration::from_secs(1));
        assert_eq!(
            request
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok()),
            Some("Bearer t")
        );
    }

    #[test]
    fn urls_of_listen_addresses() {
        assert_eq!(
            url_of("http", "0.0.0.0:50052").as_deref(),
            Some("http://127.0.0.1:50052")
        );
        assert_eq!(
            url_of("https", "[::]:50053").as_deref(),
            Some("https://[::1]:50053")
        );
        assert_eq!(url_of("http", "127.0.0.1:0"), None);
        assert_eq!(url_of("http", " "), None);
    }
}
