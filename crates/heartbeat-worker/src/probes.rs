//! Running the uptime probes on the heartbeat leader: each probe on its own
//! interval (not the tick), at most `probe_concurrency` checks at once, each
//! check bounded by its timeout so a hanging target never holds up another
//! probe. A check's result goes into `probe_state` and the per-minute
//! `probe_history` in one transaction with whatever it changed: `probe.down`
//! / `probe.up` events with a firing / resolved `ProbeDown` alert, and one
//! `ProbeCertificateExpiring` notice per threshold and certificate. In a
//! maintenance window the down alert is held back (the event still says
//! down), and sent if the probe is still down when the window ends. The
//! decisions themselves are in [`crate::probe_rules`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration as StdDuration, Instant};

use chrono::{DateTime, Duration, DurationRound, Utc};
use opsloop_core::alert::{Alert, Severity};
use opsloop_core::workflow::{self, OutboxMessage, WorkflowError, db_now};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sea_orm::{ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbErr, Value as DbValue};
use serde::Serialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::HeartbeatSettings;
use crate::db::{begin_write, for_update, stmt};
use crate::heartbeat::{Heartbeat, HeartbeatError, emit_in};
use crate::probe_config::{HttpCheck, Probe, ProbeKind, parse_maintenance, parse_probes};
use crate::probe_rules::{
    AlertAction, MaintenanceWindow, ProbeStatus, Status, Transition, alert_action,
    certificate_not_after, crossed_thresholds, in_maintenance, notice_due, observe,
};

/// 1 while a probe is up (or not yet down), 0 while down.
pub const PROBE_UP: &str = "opsloop_probe_up";
/// Duration of each check.
pub const PROBE_DURATION: &str = "opsloop_probe_duration_seconds";
/// Seconds until the certificate a TLS probe last saw expires.
pub const CERT_EXPIRY: &str = "opsloop_tls_certificate_expiry_seconds";
/// The alert a probe raises while down.
pub const DOWN_ALERT: &str = "ProbeDown";
/// The notice of a certificate crossing an expiry threshold.
pub const CERT_ALERT: &str = "ProbeCertificateExpiring";

/// How long a firing `ProbeDown` stays firing unless resolved: it is
/// resolved by the probe coming back, not by the alerter's timeout.
const DOWN_ALERT_HORIZON_DAYS: i64 = 3650;

/// What setting up the probes can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ProbeSetupError {
    #[error(transparent)]
    Settings(#[from] crate::config::SettingsError),
    #[error("heartbeat.probes[{probe}].ca_file: {reason}")]
    Tls { probe: String, reason: String },
}

/// A certificate a TLS check saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSeen {
    /// SHA-256 of the DER, hex.
    pub fingerprint: String,
    pub not_after: DateTime<Utc>,
}

/// One check's result, before it is recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckResult {
    pub ok: bool,
    pub latency: StdDuration,
    pub error: Option<String>,
    pub cert: Option<CertSeen>,
}

impl CheckResult {
    fn failed(latency: StdDuration, error: impl Into<String>) -> Self {
        Self {
            ok: false,
            latency,
            error: Some(error.into()),
            cert: None,
        }
    }
}

/// One check, recorded.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckReport {
    pub probe: String,
    pub ok: bool,
    pub latency_ms: u64,
    pub error: Option<String>,
    /// The state after the check: `unknown`, `up` or `down`.
    pub status: &'static str,
    /// `down`, `up` or none.
    pub transition: Option<&'static str>,
    /// The `ProbeDown` alert this check sent: `firing`, `resolved` or none.
    pub alert: Option<&'static str>,
    /// The probe was in a maintenance window.
    pub maintenance: bool,
    /// The certificate-expiry threshold (days) announced by this check.
    pub cert_notice_days: Option<u32>,
}

/// How a probe reaches its target, built once.
enum Client {
    Http(reqwest::Client),
    Tls(Arc<rustls::RootCertStore>),
    Grpc(Option<tonic::transport::ClientTlsConfig>),
    Plain,
}

struct ProbeTask {
    probe: Probe,
    client: Client,
}

struct Inner {
    db: DatabaseConnection,
    probes: Vec<Arc<ProbeTask>>,
    permits: Semaphore,
    in_flight: Mutex<HashSet<String>>,
    next_due: Mutex<HashMap<String, DateTime<Utc>>>,
    history: Duration,
    maintenance: Vec<MaintenanceWindow>,
}

/// The probes of one heartbeat-worker: cheap to clone.
#[derive(Clone)]
pub struct ProbeRunner {
    inner: Arc<Inner>,
}

fn build_client(probe: &Probe) -> Result<Client, ProbeSetupError> {
    let tls_error = |reason: String| ProbeSetupError::Tls {
        probe: probe.name.clone(),
        reason,
    };
    let ca = probe.ca_file.as_deref();
    Ok(match &probe.kind {
        ProbeKind::Http(_) => {
            // The check's own timeout bounds the whole request.
            let mut builder = reqwest::Client::builder()
                .connect_timeout(probe.timeout)
                .user_agent("opsloop-probe");
            if ca.is_some() {
                let config =
                    opsloop_core::tls::client_config(ca).map_err(|e| tls_error(e.to_string()))?;
                builder = builder.use_preconfigured_tls(config);
            }
            Client::Http(
                builder
                    .build()
                    .map_err(|e| tls_error(format!("cannot build the HTTP client: {e}")))?,
            )
        }
        ProbeKind::Tls { .. } => Client::Tls(Arc::new(
            opsloop_core::tls::client_roots(ca).map_err(|e| tls_error(e.to_string()))?,
        )),
        ProbeKind::GrpcHealth { endpoint, .. } => Client::Grpc(if endpoint.starts_with("https") {
            Some(
                opsloop_core::tls::tonic_client_tls(ca, None)
                    .map_err(|e| tls_error(e.to_string()))?,
            )
        } else {
            None
        }),
        _ => Client::Plain,
    })
}

impl ProbeRunner {
    /// The probes of `settings`, with their clients (reads CA files).
    pub fn new(
        db: DatabaseConnection,
        settings: &HeartbeatSettings,
    ) -> Result<Self, ProbeSetupError> {
        let parsed = parse_probes(&settings.probes)?;
        let maintenance = parse_maintenance(&settings.maintenance, &parsed)?;
        let probes = parsed
            .into_iter()
            .map(|probe| {
                Ok(Arc::new(ProbeTask {
                    client: build_client(&probe)?,
                    probe,
                }))
            })
            .collect::<Result<Vec<_>, ProbeSetupError>>()?;
        Ok(Self {
            inner: Arc::new(Inner {
                db,
                probes,
                permits: Semaphore::new(usize::try_from(settings.probe_concurrency).unwrap_or(16)),
                in_flight: Mutex::new(HashSet::new()),
                next_due: Mutex::new(HashMap::new()),
                history: Duration::days(i64::from(settings.probe_history_days)),
                maintenance,
            }),
        })
    }

    pub fn db(&self) -> &DatabaseConnection {
        &self.inner.db
    }

    pub fn is_empty(&self) -> bool {
        self.inner.probes.is_empty()
    }

    /// The configured probe named `name`.
    pub fn probe(&self, name: &str) -> Option<&Probe> {
        self.task(name).map(|t| &t.probe)
    }

    fn task(&self, name: &str) -> Option<&Arc<ProbeTask>> {
        self.inner.probes.iter().find(|t| t.probe.name == name)
    }

    /// Names of the probes with a check running now.
    pub fn in_flight(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .inner
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect();
        names.sort();
        names
    }

    /// Runs every probe due at `now` and not already running, concurrently
    /// (within the bound), each recorded as soon as it finishes; returns
    /// when all of them are done. A probe is next due one interval later.
    pub async fn run_due(&self, now: DateTime<Utc>) -> Vec<CheckReport> {
        let mut due = Vec::new();
        {
            let mut in_flight = self
                .inner
                .in_flight
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let mut next_due = self
                .inner
                .next_due
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            for task in &self.inner.probes {
                let name = &task.probe.name;
                if in_flight.contains(name) || next_due.get(name).is_some_and(|at| *at > now) {
                    continue;
                }
                in_flight.insert(name.clone());
                let interval = Duration::from_std(task.probe.interval).unwrap_or(Duration::MAX);
                next_due.insert(
                    name.clone(),
                    now.checked_add_signed(interval).unwrap_or(now),
                );
                due.push(task.clone());
            }
        }
        let mut checks = JoinSet::new();
        for task in due {
            let runner = self.clone();
            checks.spawn(async move {
                let report = runner.check_and_record(&task, now).await;
                runner
                    .inner
                    .in_flight
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&task.probe.name);
                report
            });
        }
        let mut reports = Vec::new();
        while let Some(joined) = checks.join_next().await {
            match joined {
                Ok(Some(report)) => reports.push(report),
                Ok(None) => {}
                Err(error) => tracing::error!(%error, "a probe check task failed"),
            }
        }
        reports.sort_by(|a, b| a.probe.cmp(&b.probe));
        reports
    }

    /// Checks `name` now, whatever its schedule (`None`: no such probe or
    /// the result could not be recorded).
    pub async fn check_now(&self, name: &str, now: DateTime<Utc>) -> Option<CheckReport> {
        let task = self.task(name)?.clone();
        self.check_and_record(&task, now).await
    }

    async fn check_and_record(&self, task: &ProbeTask, now: DateTime<Utc>) -> Option<CheckReport> {
        let probe = &task.probe;
        let result = {
            let _permit = self.inner.permits.acquire().await.ok()?;
            let started = Instant::now();
            match tokio::time::timeout(probe.timeout, self.check(task, now)).await {
                Ok(result) => result,
                Err(_) => CheckResult::failed(
                    started.elapsed(),
                    format!("timed out after {} ms", probe.timeout.as_millis()),
                ),
            }
        };
        metrics::histogram!(PROBE_DURATION, "probe" => probe.name.clone())
            .record(result.latency.as_secs_f64());
        if let Some(cert) = &result.cert {
            metrics::gauge!(CERT_EXPIRY, "probe" => probe.name.clone())
                .set((cert.not_after - now).num_seconds() as f64);
        }
        let maintenance = in_maintenance(&self.inner.maintenance, &probe.name, now);
        match record(&self.inner.db, probe, &result, maintenance, now).await {
            Ok(report) => {
                metrics::gauge!(PROBE_UP, "probe" => probe.name.clone()).set(
                    if report.status == Status::Down.as_str() {
                        0.0
                    } else {
                        1.0
                    },
                );
                if !report.ok {
                    tracing::info!(probe = %probe.name, error = ?report.error, status = report.status,
                        "probe check failed");
                }
                Some(report)
            }
            Err(error) => {
                tracing::error!(probe = %probe.name, %error, "cannot record a probe check");
                None
            }
        }
    }

    async fn check(&self, task: &ProbeTask, now: DateTime<Utc>) -> CheckResult {
        let started = Instant::now();
        let outcome = match (&task.probe.kind, &task.client) {
            (ProbeKind::Http(http), Client::Http(client)) => check_http(client, http).await,
            (ProbeKind::Tcp { host, port }, _) => TcpStream::connect((host.as_str(), *port))
                .await
                .map(|_| ())
                .map_err(|e| format!("cannot connect to {host}:{port}: {e}")),
            (ProbeKind::Tls { host, port, .. }, Client::Tls(roots)) => {
                return check_tls(host, *port, roots.clone(), now, started).await;
            }
            (ProbeKind::GrpcHealth { endpoint, service }, Client::Grpc(tls)) => {
                check_grpc(endpoint, service, tls.clone(), task.probe.timeout).await
            }
            (ProbeKind::Dns { host }, _) => match tokio::net::lookup_host((host.as_str(), 0)).await
            {
                Ok(mut addrs) => match addrs.next() {
                    Some(_) => Ok(()),
                    None => Err(format!("{host} resolves to no address")),
                },
                Err(e) => Err(format!("cannot resolve {host}: {e}")),
            },
            (ProbeKind::Heartbeat { absent }, _) => {
                check_heartbeat(&self.inner.db, &task.probe.name, *absent, now).await
            }
            _ => Err("no client for this probe kind".to_owned()),
        };
        let latency = started.elapsed();
        match outcome {
            Ok(_) => CheckResult {
                ok: true,
                latency,
                error: None,
                cert: None,
            },
            Err(error) => CheckResult::failed(latency, error),
        }
    }

    /// Deletes history older than the retention at `now`; the rows deleted.
    pub async fn purge_history(&self, now: DateTime<Utc>) -> Result<u64, DbErr> {
        let db = &self.inner.db;
        let cutoff = db_now(now - self.inner.history);
        Ok(db
            .execute_raw(stmt(
                db.get_database_backend(),
                "DELETE FROM probe_history WHERE minute < $1",
                vec![cutoff.into()],
            ))
            .await?
            .rows_affected())
    }

    /// While this instance leads: every second, starts the probes that are
    /// due (a round never waits for another round's slow probe), and purges
    /// old history once an hour. Until `shutdown`.
    pub async fn run_loop(self, hb: Heartbeat, shutdown: CancellationToken) {
        if self.is_empty() {
            shutdown.cancelled().await;
            return;
        }
        let mut rounds = JoinSet::new();
        let mut last_purge: Option<DateTime<Utc>> = None;
        loop {
            let now = Utc::now();
            match hb.is_leader(now).await {
                Ok(true) => {
                    let runner = self.clone();
                    rounds.spawn(async move {
                        runner.run_due(now).await;
                    });
                    if last_purge.is_none_or(|at| now - at >= Duration::hours(1)) {
                        match self.purge_history(now).await {
                            Ok(n) => {
                                last_purge = Some(now);
                                if n > 0 {
                                    tracing::info!(rows = n, "probe history purged");
                                }
                            }
                            Err(error) => tracing::warn!(%error, "cannot purge probe history"),
                        }
                    }
                }
                Ok(false) => {
                    // A new leader starts every probe afresh.
                    self.inner
                        .next_due
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .clear();
                }
                Err(error) => tracing::warn!(%error, "cannot read the leader lease for probes"),
            }
            while rounds.try_join_next().is_some() {}
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(StdDuration::from_secs(1)) => {}
            }
        }
        rounds.abort_all();
    }
}

async fn check_http(client: &reqwest::Client, http: &HttpCheck) -> Result<(), String> {
    let started = Instant::now();
    let mut response = client
        .request(http.method.clone(), http.url.clone())
        .send()
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    let status = response.status().as_u16();
    let mut body: Vec<u8> = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| format!("reading the body failed: {e}"))?
    {
        if body.len() + chunk.len() > http.max_body_bytes {
            return Err(format!(
                "body larger than {} bytes (max_body_bytes)",
                http.max_body_bytes
            ));
        }
        body.extend_from_slice(&chunk);
    }
    let elapsed = started.elapsed();
    let expected = if http.expected_status.is_empty() {
        (200..=299).contains(&status)
    } else {
        http.expected_status.contains(&status)
    };
    if !expected {
        return Err(format!("status {status} not expected"));
    }
    if let Some(needle) = &http.body_contains
        && !String::from_utf8_lossy(&body).contains(needle.as_str())
    {
        return Err(format!("body does not contain {needle:?}"));
    }
    if let Some(max) = http.max_response
        && elapsed > max
    {
        return Err(format!(
            "responded in {} ms, over max_response_ms {}",
            elapsed.as_millis(),
            max.as_millis()
        ));
    }
    Ok(())
}

/// Checks the server's chain against the roots like any client would, and
/// keeps the end-entity certificate it was shown either way, so an invalid
/// chain still reports when its certificate expires.
#[derive(Debug)]
struct CapturingVerifier {
    inner: Arc<WebPkiServerVerifier>,
    seen: Mutex<Option<Vec<u8>>>,
}

impl ServerCertVerifier for CapturingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(end_entity.to_vec());
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

async fn check_tls(
    host: &str,
    port: u16,
    roots: Arc<rustls::RootCertStore>,
    now: DateTime<Utc>,
    started: Instant,
) -> CheckResult {
    let provider = opsloop_core::tls::provider();
    let verifier =
        match WebPkiServerVerifier::builder_with_provider(roots, provider.clone()).build() {
            Ok(v) => Arc::new(CapturingVerifier {
                inner: v,
                seen: Mutex::new(None),
            }),
            Err(e) => return CheckResult::failed(started.elapsed(), format!("TLS roots: {e}")),
        };
    let config = match rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
    {
        Ok(b) => b
            .dangerous()
            .with_custom_certificate_verifier(verifier.clone())
            .with_no_client_auth(),
        Err(e) => return CheckResult::failed(started.elapsed(), format!("TLS: {e}")),
    };
    let server_name = match ServerName::try_from(host.to_owned()) {
        Ok(n) => n,
        Err(e) => {
            return CheckResult::failed(started.elapsed(), format!("server name {host}: {e}"));
        }
    };
    let tcp = match TcpStream::connect((host, port)).await {
        Ok(s) => s,
        Err(e) => {
            return CheckResult::failed(
                started.elapsed(),
                format!("cannot connect to {host}:{port}: {e}"),
            );
        }
    };
    let handshake = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(server_name, tcp)
        .await;
    let latency = started.elapsed();
    let seen = verifier
        .seen
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    let cert = seen.and_then(|der| {
        certificate_not_after(&der).map(|not_after| CertSeen {
            fingerprint: hex::encode(Sha256::digest(&der)),
            not_after,
        })
    });
    let error = match (&handshake, &cert) {
        (Err(e), _) => Some(format!("TLS handshake with {host}:{port} failed: {e}")),
        (Ok(_), None) => Some("the server's certificate could not be read".to_owned()),
        (Ok(_), Some(c)) if c.not_after <= now => {
            Some(format!("certificate expired at {}", c.not_after))
        }
        (Ok(_), Some(_)) => None,
    };
    CheckResult {
        ok: error.is_none(),
        latency,
        error,
        cert,
    }
}

async fn check_grpc(
    endpoint: &str,
    service: &str,
    tls: Option<tonic::transport::ClientTlsConfig>,
    timeout: StdDuration,
) -> Result<(), String> {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    let mut ep = tonic::transport::Endpoint::from_shared(endpoint.to_owned())
        .map_err(|e| format!("endpoint {endpoint}: {e}"))?
        .connect_timeout(timeout)
        .timeout(timeout);
    if let Some(tls) = tls {
        ep = ep
            .tls_config(tls)
            .map_err(|e| format!("endpoint {endpoint}: TLS: {e}"))?;
    }
    let channel = ep
        .connect()
        .await
        .map_err(|e| format!("cannot connect to {endpoint}: {e}"))?;
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .map_err(|e| format!("health check failed: {}: {}", e.code(), e.message()))?;
    match response.into_inner().status() {
        ServingStatus::Serving => Ok(()),
        other => Err(format!("status {}", other.as_str_name())),
    }
}

/// Up while the last ping (or, before any, the probe's first check) is
/// younger than `absent`.
async fn check_heartbeat(
    db: &DatabaseConnection,
    name: &str,
    absent: StdDuration,
    now: DateTime<Utc>,
) -> Result<(), String> {
    let row = db
        .query_one_raw(stmt(
            db.get_database_backend(),
            "SELECT last_ping_at, created_at FROM probe_state WHERE name = $1",
            vec![name.into()],
        ))
        .await
        .map_err(|e| format!("database: {e}"))?;
    let baseline = match row {
        Some(row) => {
            let ping: Option<DateTime<Utc>> = row
                .try_get("", "last_ping_at")
                .map_err(|e| format!("database: {e}"))?;
            let created: DateTime<Utc> = row
                .try_get("", "created_at")
                .map_err(|e| format!("database: {e}"))?;
            ping.unwrap_or(created)
        }
        None => now,
    };
    let absent = Duration::from_std(absent).unwrap_or(Duration::MAX);
    if now - baseline >= absent {
        Err(format!(
            "no ping since {baseline} ({} min allowed)",
            absent.num_minutes()
        ))
    } else {
        Ok(())
    }
}

/// Records a push-heartbeat ping for the probe `name` at `now`.
pub async fn record_ping(
    db: &DatabaseConnection,
    name: &str,
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
    let now = db_now(now);
    db.execute_raw(stmt(
        db.get_database_backend(),
        "INSERT INTO probe_state (name, status, consecutive_failures, since, last_ping_at, \
         alerted, created_at, updated_at) VALUES ($1, 'unknown', 0, $2, $2, $3, $2, $2) \
         ON CONFLICT (name) DO UPDATE SET last_ping_at = excluded.last_ping_at, \
         updated_at = excluded.updated_at",
        vec![name.into(), now.into(), false.into()],
    ))
    .await?;
    Ok(())
}

/// A probe's stored state, for operators and tests.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoredState {
    pub status: String,
    pub consecutive_failures: i64,
    pub since: DateTime<Utc>,
    pub last_error: Option<String>,
    pub cert_fingerprint: Option<String>,
}

/// The stored state of probe `name`.
pub async fn stored_state(
    db: &impl ConnectionTrait,
    name: &str,
) -> Result<Option<StoredState>, DbErr> {
    let row = db
        .query_one_raw(stmt(
            db.get_database_backend(),
            "SELECT status, consecutive_failures, since, last_error, cert_fingerprint \
             FROM probe_state WHERE name = $1",
            vec![name.into()],
        ))
        .await?;
    row.map(|row| {
        Ok(StoredState {
            status: row.try_get("", "status")?,
            consecutive_failures: row
                .try_get::<i32>("", "consecutive_failures")
                .map(i64::from)?,
            since: row.try_get("", "since")?,
            last_error: row.try_get("", "last_error")?,
            cert_fingerprint: row.try_get("", "cert_fingerprint")?,
        })
    })
    .transpose()
}

/// Writes a probe alert's outbox row: firing until `starts_at` + the
/// horizon (it is resolved by the probe recovering, not by a timeout), or
/// resolved now.
async fn enqueue_probe_alert(
    tx: &impl ConnectionTrait,
    alert: &Alert,
    starts_at: DateTime<Utc>,
    resolved: bool,
    now: DateTime<Utc>,
) -> Result<(), WorkflowError> {
    let starts_at = db_now(starts_at);
    let mut payload = alert.to_json(starts_at);
    if resolved {
        payload["status"] = json!("resolved");
    } else {
        payload["endsAt"] = json!(
            (starts_at + Duration::days(DOWN_ALERT_HORIZON_DAYS))
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        );
    }
    let id = Uuid::now_v7();
    workflow::enqueue_message(
        tx,
        OutboxMessage {
            message_id: id,
            routing_key: alert.routing_key(),
            aggregate_id: format!("alert:{}", alert.name),
            payload,
            headers: BTreeMap::new(),
        },
        db_now(now),
    )
    .await?;
    metrics::counter!("opsloop_heartbeat_alerts_total", "alertname" => alert.name.clone(),
        "severity" => alert.severity.as_str())
    .increment(1);
    tracing::info!(alertname = %alert.name, alert_id = %id, resolved, "probe alert enqueued");
    Ok(())
}

fn down_alert(probe: &Probe) -> Alert {
    crate::alerts::alert(
        DOWN_ALERT,
        probe.severity,
        format!("probe {} is down", probe.name),
        format!(
            "{} probe {} of {} failed {} checks in a row",
            probe.kind.as_str(),
            probe.name,
            probe.target,
            probe.retries
        ),
    )
    .label("probe", &probe.name)
    .label("kind", probe.kind.as_str())
}

/// Records one check at `now`: state, history, and the events and alerts
/// of a transition or a certificate notice, in one transaction.
async fn record(
    db: &DatabaseConnection,
    probe: &Probe,
    result: &CheckResult,
    maintenance: bool,
    now: DateTime<Utc>,
) -> Result<CheckReport, HeartbeatError> {
    let now = db_now(now);
    let tx = begin_write(db).await?;
    let backend = tx.get_database_backend();
    let row = tx
        .query_one_raw(stmt(
            backend,
            &format!(
                "SELECT status, consecutive_failures, since, alerted FROM probe_state \
                 WHERE name = $1{}",
                for_update(backend)
            ),
            vec![probe.name.as_str().into()],
        ))
        .await?;
    let (prev, alerted) = match row {
        Some(row) => (
            ProbeStatus {
                status: Status::parse(&row.try_get::<String>("", "status")?)
                    .unwrap_or(Status::Unknown),
                consecutive_failures: u32::try_from(
                    row.try_get::<i32>("", "consecutive_failures")?,
                )
                .unwrap_or(0),
                since: row.try_get("", "since")?,
            },
            row.try_get::<bool>("", "alerted")?,
        ),
        None => (ProbeStatus::new(now), false),
    };
    let (next, transition) = observe(prev, result.ok, probe.retries, now);
    let (action, alerted) = alert_action(transition, next.status, alerted, maintenance);
    let failures = i32::try_from(next.consecutive_failures).unwrap_or(i32::MAX);
    let latency_ms = i64::try_from(result.latency.as_millis()).unwrap_or(i64::MAX);
    tx.execute_raw(stmt(
        backend,
        "INSERT INTO probe_state (name, status, consecutive_failures, since, last_checked_at, \
         last_ok_at, last_error, cert_fingerprint, cert_not_after, alerted, created_at, \
         updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $5, $5) \
         ON CONFLICT (name) DO UPDATE SET status = excluded.status, \
         consecutive_failures = excluded.consecutive_failures, since = excluded.since, \
         last_checked_at = excluded.last_checked_at, \
         last_ok_at = COALESCE(excluded.last_ok_at, probe_state.last_ok_at), \
         last_error = excluded.last_error, alerted = excluded.alerted, \
         cert_fingerprint = COALESCE(excluded.cert_fingerprint, probe_state.cert_fingerprint), \
         cert_not_after = COALESCE(excluded.cert_not_after, probe_state.cert_not_after), \
         updated_at = excluded.updated_at",
        vec![
            probe.name.as_str().into(),
            next.status.as_str().into(),
            failures.into(),
            db_now(next.since).into(),
            now.into(),
            DbValue::from(result.ok.then_some(now)),
            DbValue::from(result.error.clone()),
            DbValue::from(result.cert.as_ref().map(|c| c.fingerprint.clone())),
            DbValue::from(result.cert.as_ref().map(|c| db_now(c.not_after))),
            alerted.into(),
        ],
    ))
    .await?;
    let minute = now.duration_trunc(Duration::minutes(1)).unwrap_or(now);
    tx.execute_raw(stmt(
        backend,
        "INSERT INTO probe_history (probe, minute, ok, latency_ms) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (probe, minute) DO UPDATE SET \
         ok = CASE WHEN probe_history.ok AND excluded.ok THEN excluded.ok ELSE $5 END, \
         latency_ms = CASE WHEN excluded.latency_ms > probe_history.latency_ms \
         THEN excluded.latency_ms ELSE probe_history.latency_ms END",
        vec![
            probe.name.as_str().into(),
            minute.into(),
            result.ok.into(),
            latency_ms.into(),
            false.into(),
        ],
    ))
    .await?;
    let transition_name = match transition {
        Transition::None => None,
        Transition::Down => {
            emit_in(
                &tx,
                "probe.down",
                json!({"probe": probe.name, "kind": probe.kind.as_str(), "target": probe.target,
                       "failures": next.consecutive_failures, "error": result.error,
                       "since": next.since, "maintenance": maintenance}),
                None,
                now,
            )
            .await?;
            tracing::warn!(probe = %probe.name, error = ?result.error, maintenance, "probe down");
            Some("down")
        }
        Transition::Up { down_since } => {
            emit_in(
                &tx,
                "probe.up",
                json!({"probe": probe.name, "kind": probe.kind.as_str(), "target": probe.target,
                       "down_since": down_since,
                       "down_seconds": (now - down_since).num_seconds()}),
                None,
                now,
            )
            .await?;
            tracing::info!(probe = %probe.name, down_since = %down_since, "probe up again");
            Some("up")
        }
    };
    let alert = match action {
        AlertAction::None => None,
        AlertAction::Fire => {
            let alert = down_alert(probe)
                .annotation("target", &probe.target)
                .annotation("error", result.error.as_deref().unwrap_or(""))
                .annotation("failures", next.consecutive_failures);
            enqueue_probe_alert(&tx, &alert, next.since, false, now).await?;
            Some("firing")
        }
        AlertAction::Resolve => {
            let down_since = match transition {
                Transition::Up { down_since } => down_since,
                _ => prev.since,
            };
            enqueue_probe_alert(&tx, &down_alert(probe), down_since, true, now).await?;
            Some("resolved")
        }
    };
    let cert_notice_days = match (&result.cert, &probe.kind) {
        (Some(cert), ProbeKind::Tls { warn_days, .. }) => {
            certificate_notice(&tx, probe, cert, warn_days, now).await?
        }
        _ => None,
    };
    tx.commit().await?;
    Ok(CheckReport {
        probe: probe.name.clone(),
        ok: result.ok,
        latency_ms: u64::try_from(latency_ms).unwrap_or(0),
        error: result.error.clone(),
        status: next.status.as_str(),
        transition: transition_name,
        alert,
        maintenance,
        cert_notice_days,
    })
}

/// Marks every threshold `cert` has crossed as notified for its
/// fingerprint and sends the notice due, if any: once per threshold and
/// certificate, so repeated checks and a certificate flip-flopping with
/// another never repeat one.
async fn certificate_notice(
    tx: &DatabaseTransaction,
    probe: &Probe,
    cert: &CertSeen,
    warn_days: &[u32],
    now: DateTime<Utc>,
) -> Result<Option<u32>, HeartbeatError> {
    let crossed = crossed_thresholds(cert.not_after - now, warn_days);
    if crossed.is_empty() {
        return Ok(None);
    }
    let backend = tx.get_database_backend();
    let rows = tx
        .query_all_raw(stmt(
            backend,
            "SELECT threshold_days FROM probe_cert_notices WHERE probe = $1 AND fingerprint = $2",
            vec![probe.name.as_str().into(), cert.fingerprint.as_str().into()],
        ))
        .await?;
    let notified = rows
        .iter()
        .map(|r| r.try_get::<i32>("", "threshold_days"))
        .collect::<Result<Vec<i32>, DbErr>>()?
        .into_iter()
        .filter_map(|d| u32::try_from(d).ok())
        .collect::<Vec<u32>>();
    let due = notice_due(&crossed, &notified);
    let mut claimed = false;
    for days in &crossed {
        let inserted = tx
            .execute_raw(stmt(
                backend,
                "INSERT INTO probe_cert_notices (probe, fingerprint, threshold_days, not_after, \
                 notified_at) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (probe, fingerprint, threshold_days) DO NOTHING",
                vec![
                    probe.name.as_str().into(),
                    cert.fingerprint.as_str().into(),
                    i32::try_from(*days).unwrap_or(i32::MAX).into(),
                    db_now(cert.not_after).into(),
                    now.into(),
                ],
            ))
            .await?
            .rows_affected();
        if Some(*days) == due {
            claimed = inserted == 1;
        }
    }
    let Some(days) = due.filter(|_| claimed) else {
        return Ok(None);
    };
    let left = cert.not_after - now;
    emit_in(
        tx,
        "probe.certificate_expiring",
        json!({"probe": probe.name, "target": probe.target, "threshold_days": days,
               "not_after": cert.not_after, "days_left": left.num_days(),
               "fingerprint": cert.fingerprint}),
        None,
        now,
    )
    .await?;
    let alert = crate::alerts::alert(
        CERT_ALERT,
        if days <= 3 {
            probe.severity
        } else {
            Severity::Warning
        },
        format!("certificate of {} expires within {days} days", probe.name),
        format!(
            "the certificate served at {} expires at {} ({} days left)",
            probe.target,
            cert.not_after,
            left.num_days()
        ),
    )
    .label("probe", &probe.name)
    .label("threshold_days", days)
    .annotation("not_after", cert.not_after.to_rfc3339())
    .annotation("fingerprint", &cert.fingerprint);
    crate::alerts::enqueue_alert(tx, &alert, now).await?;
    tracing::info!(probe = %probe.name, threshold_days = days, not_after = %cert.not_after,
        "certificate expiry notice");
    Ok(Some(days))
}
