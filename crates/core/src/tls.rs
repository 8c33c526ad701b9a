//! TLS on every listener and for every client, on one rustls stack (ring, no
//! OpenSSL): the server certificate comes from `[tls]` files or the secrets
//! `tls_cert`/`tls_key` and is re-read on SIGHUP and on change without
//! dropping open connections; client certificates are checked when
//! `tls.client_ca_file` is set (mutual TLS); clients trust the system roots
//! plus an optional CA file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

use crate::config::TlsSettings;
use crate::secrets::SecretStore;

/// How long a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{what}: cannot read {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Secret(#[from] crate::secrets::SecretError),
}

/// The crypto provider of every TLS connection opsloop makes or accepts.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Where the server certificate and key come from.
#[derive(Debug, Clone)]
enum Source {
    Files { cert: PathBuf, key: PathBuf },
    Secrets(SecretStore),
}

impl Source {
    /// The PEM certificate chain and key, as bytes.
    fn read(&self) -> Result<(Vec<u8>, Vec<u8>), TlsError> {
        match self {
            Source::Files { cert, key } => Ok((
                read_file("tls.cert_file", cert)?,
                read_file("tls.key_file", key)?,
            )),
            Source::Secrets(store) => {
                let cert = store.get("tls_cert")?.ok_or_else(|| {
                    TlsError::Invalid("secret tls_cert: not set (it goes with tls_key)".into())
                })?;
                let key = store.get("tls_key")?.ok_or_else(|| {
                    TlsError::Invalid("secret tls_key: not set (it goes with tls_cert)".into())
                })?;
                Ok((
                    cert.expose().as_bytes().to_vec(),
                    key.expose().as_bytes().to_vec(),
                ))
            }
        }
    }
}

fn read_file(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// PEM certificates from `pem`; an error names `what` when there are none.
pub fn parse_certificates(
    what: &str,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Invalid(format!("{what}: not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(TlsError::Invalid(format!(
            "{what}: no certificate found (expected -----BEGIN CERTIFICATE-----)"
        )));
    }
    Ok(certs)
}

/// A certificate chain and its key, checked to belong together. Key parse
/// errors never quote the key.
fn certified_key(cert_pem: &[u8], key_pem: &[u8]) -> Result<CertifiedKey, TlsError> {
    let chain = parse_certificates("TLS certificate", cert_pem)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|_| {
        TlsError::Invalid(
            "TLS key: no PEM private key found (PKCS#8, PKCS#1 or SEC1 expected)".into(),
        )
    })?;
    let key = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| TlsError::Invalid(format!("TLS key: unusable: {e}")))?;
    let certified = CertifiedKey::new(chain, key);
    certified
        .keys_match()
        .map_err(|e| TlsError::Invalid(format!("TLS key does not match the certificate: {e}")))?;
    Ok(certified)
}

/// The current certificate, swapped in place on reload.
#[derive(Debug)]
struct Resolver {
    current: RwLock<(Arc<CertifiedKey>, [u8; 32])>,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|guard| guard.0.clone())
    }
}

fn fingerprint(cert: &[u8], key: &[u8]) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update(cert);
    hash.update([0u8]);
    hash.update(key);
    hash.finalize().into()
}

/// A daemon's server-side TLS: an acceptor whose certificate can be reloaded.
#[derive(Clone)]
pub struct ServerTls {
    source: Source,
    resolver: Arc<Resolver>,
    config: Arc<rustls::ServerConfig>,
    reload_interval: Duration,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls").finish_non_exhaustive()
    }
}

impl ServerTls {
    /// The daemon's TLS from `[tls]` (files) or the secrets `tls_cert` and
    /// `tls_key`; `None` when neither gives a certificate (plain listeners).
    pub fn from_settings(
        settings: &TlsSettings,
        secrets: &SecretStore,
    ) -> Result<Option<Self>, TlsError> {
        let source = match (&settings.cert_file, &settings.key_file) {
            (Some(cert), Some(key)) => Source::Files {
                cert: cert.clone(),
                key: key.clone(),
            },
            (None, None) => match (secrets.get("tls_cert")?, secrets.get("tls_key")?) {
                (None, None) => {
                    if settings.client_ca_file.is_some() {
                        return Err(TlsError::Invalid(
                            "tls.client_ca_file needs a server certificate (tls.cert_file and tls.key_file, or the secrets tls_cert and tls_key)".into(),
                        ));
                    }
                    return Ok(None);
                }
                _ => Source::Secrets(secrets.clone()),
            },
            _ => {
                return Err(TlsError::Invalid(
                    "tls.cert_file and tls.key_file go together: set both or neither".into(),
                ));
            }
        };
        let client_ca = match &settings.client_ca_file {
            Some(path) => Some(read_file("tls.client_ca_file", path)?),
            None => None,
        };
        Self::build(
            source,
            client_ca.as_deref(),
            Duration::from_millis(settings.reload_interval_ms.max(1)),
        )
        .map(Some)
    }

    /// TLS from PEM files, for tests and tools.
    pub fn from_files(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<Self, TlsError> {
        let client_ca = match client_ca {
            Some(path) => Some(read_file("tls.client_ca_file", path)?),
            None => None,
        };
        Self::build(
            Source::Files {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
            },
            client_ca.as_deref(),
            Duration::from_secs(10),
        )
    }

    fn build(
        source: Source,
        client_ca_pem: Option<&[u8]>,
        reload_interval: Duration,
    ) -> Result<Self, TlsError> {
        let (cert, key) = source.read()?;
        let certified = certified_key(&cert, &key)?;
        let resolver = Arc::new(Resolver {
            current: RwLock::new((Arc::new(certified), fingerprint(&cert, &key))),
        });
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Invalid(format!("TLS: {e}")))?;
        let builder = match client_ca_pem {
            Some(pem) => {
                let mut roots = RootCertStore::empty();
                for cert in parse_certificates("tls.client_ca_file", pem)? {
                    roots.add(cert).map_err(|e| {
                        TlsError::Invalid(format!("tls.client_ca_file: unusable CA: {e}"))
                    })?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                        .build()
                        .map_err(|e| TlsError::Invalid(format!("tls.client_ca_file: {e}")))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let config = builder.with_cert_resolver(resolver.clone());
        Ok(Self {
            source,
            resolver,
            config: Arc::new(config),
            reload_interval,
        })
    }

    /// Re-reads the certificate and key; swaps them in when they changed and
    /// are valid (`Ok(true)`). On error the current certificate stays.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let (cert, key) = self.source.read()?;
        let print = fingerprint(&cert, &key);
        let unchanged = self
            .resolver
            .current
            .read()
            .map(|guard| guard.1 == print)
            .unwrap_or(false);
        if unchanged {
            return Ok(false);
        }
        let certified = certified_key(&cert, &key)?;
        if let Ok(mut guard) = self.resolver.current.write() {
            *guard = (Arc::new(certified), print);
        }
        Ok(true)
    }

    /// Reloads on SIGHUP and every `tls.reload_interval_ms` until `shutdown`.
    pub fn spawn_reloader(&self, shutdown: CancellationToken) {
        let tls = self.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let mut hangup = signal(SignalKind::hangup()).ok();
            let mut ticker = tokio::time::interval(tls.reload_interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticker.tick().await;
            loop {
                let why = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = ticker.tick() => "change",
                    Some(()) = async {
                        match hangup.as_mut() {
                            Some(s) => s.recv().await,
                            None => std::future::pending().await,
                        }
                    } => "SIGHUP",
                };
                match tls.reload() {
                    Ok(true) => tracing::info!(trigger = why, "TLS certificate reloaded"),
                    Ok(false) => {
                        if why == "SIGHUP" {
                            tracing::info!("SIGHUP: TLS certificate unchanged");
                        }
                    }
                    Err(error) => tracing::error!(
                        %error,
                        trigger = why,
                        "cannot reload the TLS certificate; keeping the current one"
                    ),
                }
            }
        });
    }

    /// The acceptor of a gRPC listener (ALPN `h2`).
    pub fn grpc_acceptor(&self) -> TlsAcceptor {
        self.acceptor(&[b"h2"])
    }

    /// The acceptor of an HTTP/1.1 listener.
    pub fn http_acceptor(&self) -> TlsAcceptor {
        self.acceptor(&[b"http/1.1"])
    }

    pub(crate) fn acceptor(&self, alpn: &[&[u8]]) -> TlsAcceptor {
        let mut config = (*self.config).clone();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        TlsAcceptor::from(Arc::new(config))
    }
}

/// Accepted TLS connections of one listener: TCP accepts and handshakes run
/// in a background task (a slow or failing handshake never blocks the next
/// accept); a failed handshake is logged at debug level and counted.
pub struct TlsIncoming {
    streams: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsIncoming {
    /// Starts accepting on `listener` until `shutdown`.
    pub fn new(
        listener: TcpListener,
        acceptor: TlsAcceptor,
        listener_name: &'static str,
        shutdown: CancellationToken,
    ) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let (tx, streams) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    accepted = listener.accept() => accepted,
                };
                let (tcp, peer) = match accepted {
                    Ok(pair) => pair,
                    Err(error) => {
                        tracing::warn!(%error, listener = listener_name, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = tx.send((stream, peer)).await;
                        }
                        Ok(Err(error)) => {
                            metrics::counter!("opsloop_tls_handshake_failures_total", "listener" => listener_name).increment(1);
                            tracing::debug!(%error, %peer, listener = listener_name, "TLS handshake failed");
                        }
                        Err(_) => {
                            metrics::counter!("opsloop_tls_handshake_failures_total", "listener" => listener_name).increment(1);
                            tracing::debug!(%peer, listener = listener_name, "TLS handshake timed out");
                        }
                    }
                });
            }
        });
        Ok(Self { streams, local })
    }

    /// The stream of accepted connections, for tonic's
    /// `serve_with_incoming_shutdown`.
    pub fn into_stream(
        self,
    ) -> impl futures::Stream<Item = Result<TlsStream<TcpStream>, std::io::Error>> {
        futures::stream::unfold(self.streams, |mut rx| async move {
            rx.recv().await.map(|(stream, _)| (Ok(stream), rx))
        })
    }
}

impl axum::serve::Listener for TlsIncoming {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.streams.recv().await {
            Some(pair) => pair,
            // The accept task ended (shutdown): no more connections; the
            // server stops through its graceful-shutdown signal.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// The roots a client trusts: the system's, plus every certificate of
/// `ca_file` when given. An unreadable or empty CA file is an error.
pub fn client_roots(ca_file: Option<&Path>) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        let _ = roots.add(cert);
    }
    if let Some(path) = ca_file {
        let pem = read_file("CA file", path)?;
        for cert in parse_certificates(&format!("CA file {}", path.display()), &pem)? {
            roots.add(cert).map_err(|e| {
                TlsError::Invalid(format!("CA file {}: unusable CA: {e}", path.display()))
            })?;
        }
    }
    Ok(roots)
}

/// A rustls client configuration trusting [`client_roots`].
pub fn client_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, TlsError> {
    let roots = client_roots(ca_file)?;
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Invalid(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// tonic's client TLS for an `https://` endpoint: the system roots plus
/// `ca_file`, and a client certificate for mutual TLS when given.
pub fn tonic_client_tls(
    ca_file: Option<&Path>,
    identity: Option<(&Path, &Path)>,
) -> Result<tonic::transport::ClientTlsConfig, TlsError> {
    let mut tls = tonic::transport::ClientTlsConfig::new().with_native_roots();
    if let Some(path) = ca_file {
        let pem = read_file("CA file", path)?;
        parse_certificates(&format!("CA file {}", path.display()), &pem)?;
        tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(pem));
    }
    if let Some((cert, key)) = identity {
        let cert = read_file("client certificate", cert)?;
        let key = read_file("client key", key)?;
        tls = tls.identity(tonic::transport::Identity::from_pem(cert, key));
    }
    Ok(tls)
}

/// Certificates for tests: a CA and leaves it signs, generated in-process.
#[cfg(test)]
pub(crate) mod test_pki {
    use std::path::{Path, PathBuf};

    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, date_time_ymd,
    };

    /// A CA whose PEM is written to `<dir>/<name>-ca.pem`.
    pub(crate) struct Ca {
        issuer: CertifiedIssuer<'static, KeyPair>,
        pub pem_path: PathBuf,
    }

    impl Ca {
        pub(crate) fn new(dir: &Path, name: &str) -> Self {
            let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params
                .distinguished_name
                .push(DnType::CommonName, format!("opsloop test CA {name}"));
            let key = KeyPair::generate().expect("CA key");
            let issuer = CertifiedIssuer::self_signed(params, key).expect("CA cert");
            let pem_path = dir.join(format!("{name}-ca.pem"));
            std::fs::write(&pem_path, issuer.pem()).expect("write CA");
            Self { issuer, pem_path }
        }

        /// A leaf for `localhost`/127.0.0.1, as (certificate PEM, key PEM).
        pub(crate) fn leaf(&self, common_name: &str, expired: bool) -> (String, String) {
            let mut params =
                CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                    .expect("params");
            params
                .distinguished_name
                .push(DnType::CommonName, common_name);
            if expired {
                params.not_before = date_time_ymd(2000, 1, 1);
                params.not_after = date_time_ymd(2001, 1, 1);
            }
            let key = KeyPair::generate().expect("leaf key");
            let cert = params.signed_by(&key, &self.issuer).expect("sign leaf");
            (cert.pem(), key.serialize_pem())
        }

        /// A leaf written to `<dir>/<name>.pem` and `<dir>/<name>.key`.
        pub(crate) fn leaf_files(
            &self,
            dir: &Path,
            name: &str,
            expired: bool,
        ) -> (PathBuf, PathBuf) {
            let (cert, key) = self.leaf(name, expired);
            let cert_path = dir.join(format!("{name}.pem"));
            let key_path = dir.join(format!("{name}.key"));
            std::fs::write(&cert_path, cert).expect("write cert");
            std::fs::write(&key_path, key).expect("write key");
            (cert_path, key_path)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_pki::Ca;
    use super::*;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;

    struct Server {
        addr: SocketAddr,
        stop: CancellationToken,
    }

    async fn grpc_server(tls: &ServerTls) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (routes, _health) = crate::grpc::standard_routes().expect("routes");
        let stop = CancellationToken::new();
        let tls = tls.clone();
        let shutdown = stop.clone();
        tokio::spawn(async move {
            crate::grpc::serve_tls(listener, routes, Some(&tls), async move {
                shutdown.cancelled().await
            })
            .await
        });
        Server { addr, stop }
    }

    async fn health_check(
        addr: SocketAddr,
        ca: Option<&Path>,
        identity: Option<(&Path, &Path)>,
    ) -> Result<HealthClient<tonic::transport::Channel>, String> {
        let channel =
            tonic::transport::Endpoint::from_shared(format!("https://localhost:{}", addr.port()))
                .expect("endpoint")
                .tls_config(tonic_client_tls(ca, identity).expect("client tls"))
                .expect("tls config")
                .connect_timeout(Duration::from_secs(5))
                .timeout(Duration::from_secs(5))
                .connect()
                .await
                .map_err(|e| format!("{e:?}"))?;
        let mut client = HealthClient::new(channel);
        client
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .map_err(|e| format!("{e:?}"))?;
        Ok(client)
    }

    /// The certificate a fresh TLS connection is served, as DER.
    async fn served_certificate(addr: SocketAddr, ca: &Path) -> Vec<u8> {
        let config = client_config(Some(ca)).expect("client config");
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
        let stream = connector.connect(name, tcp).await.expect("handshake");
        stream.get_ref().1.peer_certificates().expect("peer certs")[0].to_vec()
    }

    #[tokio::test]
    async fn grpc_over_tls_works_and_bad_clients_fail_clearly() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Ca::new(dir.path(), "good");
        let other = Ca::new(dir.path(), "other");
        let (cert, key) = ca.leaf_files(dir.path(), "server", false);
        let tls = ServerTls::from_files(&cert, &key, None).expect("server tls");
        let server = grpc_server(&tls).await;

        health_check(server.addr, Some(&ca.pem_path), None)
            .await
            .expect("TLS client with the right CA");

        let err = health_check(server.addr, Some(&other.pem_path), None)
            .await
            .expect_err("a CA that did not sign the server's certificate");
        assert!(
            err.contains("UnknownIssuer") || err.contains("invalid peer certificate"),
            "{err}"
        );

        // A plaintext client on the TLS port gets no answer it can use.
        let plain = tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr))
            .expect("endpoint")
            .timeout(Duration::from_secs(3))
            .connect_timeout(Duration::from_secs(3));
        let outcome = match plain.connect().await {
            Ok(channel) => HealthClient::new(channel)
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .map(|_| ())
                .map_err(|e| e.code()),
            Err(_) => Err(tonic::Code::Unavailable),
        };
        assert!(
            matches!(
                outcome,
                Err(tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Internal)
            ),
            "plaintext on a TLS port must fail: {outcome:?}"
        );
        server.stop.cancel();
    }

    #[tokio::test]
    async fn an_expired_server_certificate_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Ca::new(dir.path(), "ca");
        let (cert, key) = ca.leaf_files(dir.path(), "expired", true);
        let tls = ServerTls::from_files(&cert, &key, None).expect("an expired cert still loads");
        let server = grpc_server(&tls).await;
        let err = health_check(server.addr, Some(&ca.pem_path), None)
            .await
            .expect_err("expired");
        assert!(err.contains("Expired"), "{err}");
        server.stop.cancel();
    }

    #[tokio::test]
    async fn mutual_tls_refuses_a_client_without_a_certificate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Ca::new(dir.path(), "ca");
        let clients = Ca::new(dir.path(), "clients");
        let (cert, key) = ca.leaf_files(dir.path(), "server", false);
        let tls = ServerTls::from_files(&cert, &key, Some(&clients.pem_path)).expect("mtls");
        let server = grpc_server(&tls).await;

        let err = health_check(server.addr, Some(&ca.pem_path), None)
            .await
            .expect_err("no client certificate");
        assert!(!err.is_empty());
        let (agent_cert, agent_key) = clients.leaf_files(dir.path(), "agent-1", false);
        health_check(
            server.addr,
            Some(&ca.pem_path),
            Some((&agent_cert, &agent_key)),
        )
        .await
        .expect("a client certificate the client CA signed");
        // A certificate from another CA is refused too.
        let (rogue_cert, rogue_key) = ca.leaf_files(dir.path(), "rogue", false);
        health_check(
            server.addr,
            Some(&ca.pem_path),
            Some((&rogue_cert, &rogue_key)),
        )
        .await
        .expect_err("a client certificate the client CA did not sign");
        server.stop.cancel();
    }

    #[tokio::test]
    async fn reload_serves_the_new_certificate_and_keeps_open_connections() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Ca::new(dir.path(), "ca");
        let (cert, key) = ca.leaf_files(dir.path(), "server", false);
        let tls = ServerTls::from_files(&cert, &key, None).expect("server tls");
        let server = grpc_server(&tls).await;

        let before = served_certificate(server.addr, &ca.pem_path).await;
        let mut open = health_check(server.addr, Some(&ca.pem_path), None)
            .await
            .expect("open connection");

        assert!(
            !tls.reload().expect("reload unchanged"),
            "nothing changed yet"
        );
        // A broken replacement is refused; the current certificate stays.
        std::fs::write(&key, "not a key").expect("write");
        let err = tls.reload().expect_err("broken key");
        assert!(
            !err.to_string().contains("not a key"),
            "never quotes the key: {err}"
        );
        assert_eq!(served_certificate(server.addr, &ca.pem_path).await, before);

        let (new_cert, new_key) = ca.leaf("server-renewed", false);
        std::fs::write(&cert, new_cert).expect("write cert");
        std::fs::write(&key, new_key).expect("write key");
        assert!(tls.reload().expect("reload"), "the new pair is taken");

        let after = served_certificate(server.addr, &ca.pem_path).await;
        assert_ne!(after, before, "a new connection sees the new certificate");
        open.check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("the connection opened before the reload keeps working");
        server.stop.cancel();
    }

    #[tokio::test]
    async fn http_over_tls_and_secrets_as_the_source() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Ca::new(dir.path(), "ca");
        let (cert, key) = ca.leaf("from-secrets", false);
        let secrets_dir = dir.path().join("creds");
        std::fs::create_dir(&secrets_dir).expect("mkdir");
        std::fs::write(secrets_dir.join("tls_cert"), cert).expect("write");
        std::fs::write(secrets_dir.join("tls_key"), key).expect("write");
        let store = SecretStore::with_sources(Some(&secrets_dir), dir.path(), Vec::new());
        let tls = ServerTls::from_settings(&TlsSettings::default(), &store)
            .expect("tls from secrets")
            .expect("configured");
        assert!(
            ServerTls::from_settings(
                &TlsSettings::default(),
                &SecretStore::with_sources(None, dir.path(), Vec::new())
            )
            .expect("no tls")
            .is_none()
        );

        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let stop = CancellationToken::new();
        let router = axum::Router::new().route("/healthz", axum::routing::get(|| async { "ok" }));
        {
            let stop = stop.clone();
            tokio::spawn(async move {
                crate::http::serve_tls(listener, router, Some(&tls), stop).await
            });
        }
        let config = client_config(Some(&ca.pem_path)).expect("client");
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
        let mut stream = connector.connect(name, tcp).await.expect("handshake");
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
            .await
            .expect("write");
        let mut response = String::new();
        stream.read_to_string(&mut response).await.expect("read");
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(response.ends_with("ok"), "{response}");
        stop.cancel();
    }
}
