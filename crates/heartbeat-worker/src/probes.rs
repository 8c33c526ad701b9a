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

use chrono::{DateTime, Duration, Utc};
use opsloop_core::alert::{Alert, Severity};
use opsloop_core::audit::AuditLog;
use opsloop_core::secrets::SecretStore;
use opsloop_core::workflow::{self, OutboxMessage, PauseChange, WorkflowError, db_now};
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
use crate::probe_config::{
    HttpCheck, OnDown, Probe, ProbeKind, ProbeSpec, parse_maintenance, parse_probes,
};
use crate::probe_rules::{
    AlertAction, MaintenanceWindow, ProbeStatus, Status, Transition, alert_action,
    certificate_not_after, crossed_thresholds, in_maintenance, json_matches, notice_due, observe,
};

/// 1 while a probe is up (or not yet down), 0 while down.
pub const PROBE_UP: &str = "opsloop_probe_up";
/// Duration of each check.
pub const PROBE_DURATION: &str = "opsloop_probe_duration_seconds";
/// Seconds until the certificate a TLS probe last saw expires.
pub const CERT_EXPIRY: &str = "opsloop_tls_certificate_expiry_seconds";
/// Step kinds a probe holds paused (its `depends_kinds` while down).
pub const KINDS_PAUSED: &str = "opsloop_probe_paused_kinds";
/// The alert a probe raises while down.
pub const DOWN_ALERT: &str = "ProbeDown";
/// The notice of a certificate crossing an expiry threshold.
pub const CERT_ALERT: &str = "ProbeCertificateExpiring";

/// Seconds between reads of the probes added at run time.
const REFRESH_SECS: i64 = 10;

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
    #[error("heartbeat.probes[{probe}].header_secrets.{header}: {reason}")]
    HeaderSecret {
        probe: String,
        header: String,
        reason: String,
    },
}

/// Why `opsloop probe add|rm` was refused.
#[derive(Debug, thiserror::Error)]
pub enum ProbeChangeError {
    /// The entry does not parse (names the probe and field).
    #[error(transparent)]
    Invalid(crate::config::SettingsError),
    /// Its client cannot be built (a CA file, a header secret).
    #[error(transparent)]
    Setup(ProbeSetupError),
    #[error(
        "probe {0} is defined in the configuration file ([[heartbeat.probes]]); the file wins: edit it there"
    )]
    Configured(String),
    #[error("a probe named {0} was already added; remove it first (opsloop probe rm {0})")]
    Exists(String),
    #[error("no probe named {0} was added at run time (see opsloop probe list)")]
    NotFound(String),
    #[error(transparent)]
    Db(WorkflowError),
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
    /// Step kinds this check paused (the probe went down; `depends_kinds`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub paused_kinds: Vec<String>,
    /// Step kinds this check made claimable again (the probe is up).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub resumed_kinds: Vec<String>,
    /// This check engaged the emergency stop (`on_down = "emergency_stop"`).
    pub emergency_stop_engaged: bool,
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
    /// Added at run time (`probe_definitions`): the stored entry, so a
    /// refresh rebuilds the task only when it changed. `None`: configured.
    stored: Option<serde_json::Value>,
}

struct Inner {
    db: DatabaseConnection,
    /// The `[[heartbeat.probes]]` of the configuration.
    configured: Vec<Arc<ProbeTask>>,
    /// The configured probes, then those added at run time.
    probes: std::sync::RwLock<Arc<Vec<Arc<ProbeTask>>>>,
    /// Stored probes whose names the configuration also uses (ignored).
    shadowed: Mutex<Vec<String>>,
    secrets: SecretStore,
    permits: Semaphore,
    in_flight: Mutex<HashSet<String>>,
    next_due: Mutex<HashMap<String, DateTime<Utc>>>,
    history: Duration,
    maintenance: Vec<MaintenanceWindow>,
    audit: Option<Arc<AuditLog>>,
}

/// The probes of one heartbeat-worker: cheap to clone.
#[derive(Clone)]
pub struct ProbeRunner {
    inner: Arc<Inner>,
}

/// The request headers of an HTTP probe: its literal ones and those read
/// from secrets (marked sensitive, so they never show in debug output).
fn http_headers(
    probe: &Probe,
    http: &HttpCheck,
    secrets: &SecretStore,
) -> Result<reqwest::header::HeaderMap, ProbeSetupError> {
    let mut headers = reqwest::header::HeaderMap::new();
    for (name, value) in &http.headers {
        headers.insert(name.clone(), value.clone());
    }
    for (name, secret) in &http.header_secrets {
        let error = |reason: String| ProbeSetupError::HeaderSecret {
            probe: probe.name.clone(),
            header: name.to_string(),
            reason,
        };
        let value = secrets
            .get(secret)
            .map_err(|e| error(e.to_string()))?
            .ok_or_else(|| {
                error(format!(
                    "secret {secret} is not set: put it in $CREDENTIALS_DIRECTORY/{secret}, \
                     /run/secrets/{secret} or {}",
                    SecretStore::env_name(secret)
                ))
            })?;
        let mut value = reqwest::header::HeaderValue::from_str(value.expose()).map_err(|_| {
            error(format!(
                "secret {secret} has characters a header value cannot carry"
            ))
        })?;
        value.set_sensitive(true);
        headers.insert(name.clone(), value);
    }
    Ok(headers)
}

fn build_client(probe: &Probe, secrets: &SecretStore) -> Result<Client, ProbeSetupError> {
    let tls_error = |reason: String| ProbeSetupError::Tls {
        probe: probe.name.clone(),
        reason,
    };
    let ca = probe.ca_file.as_deref();
    Ok(match &probe.kind {
        ProbeKind::Http(http) => {
            // The check's own timeout bounds the whole request.
            let mut builder = reqwest::Client::builder()
                .connect_timeout(probe.timeout)
                .default_headers(http_headers(probe, http, secrets)?)
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
    /// The probes of `settings`, with their clients (reads CA files, and
    /// header secrets from the process's secret sources).
    pub fn new(
        db: DatabaseConnection,
        settings: &HeartbeatSettings,
    ) -> Result<Self, ProbeSetupError> {
        Self::with_secrets(db, settings, &SecretStore::from_process())
    }

    /// [`ProbeRunner::new`] reading header secrets from `secrets`.
    pub fn with_secrets(
        db: DatabaseConnection,
        settings: &HeartbeatSettings,
        secrets: &SecretStore,
    ) -> Result<Self, ProbeSetupError> {
        let parsed = parse_probes(&settings.probes)?;
        let maintenance = parse_maintenance(&settings.maintenance, &parsed)?;
        let probes = parsed
            .into_iter()
            .map(|probe| {
                Ok(Arc::new(ProbeTask {
                    client: build_client(&probe, secrets)?,
                    probe,
                    stored: None,
                }))
            })
            .collect::<Result<Vec<_>, ProbeSetupError>>()?;
        Ok(Self {
            inner: Arc::new(Inner {
                db,
                probes: std::sync::RwLock::new(Arc::new(probes.clone())),
                configured: probes,
                shadowed: Mutex::new(Vec::new()),
                secrets: secrets.clone(),
                permits: Semaphore::new(usize::try_from(settings.probe_concurrency).unwrap_or(16)),
                in_flight: Mutex::new(HashSet::new()),
                next_due: Mutex::new(HashMap::new()),
                history: Duration::days(i64::from(settings.probe_history_days)),
                maintenance,
                audit: None,
            }),
        })
    }

    /// Records the emergency stops that `on_down = "emergency_stop"` probes
    /// engage in `audit` too (the daemon's audit log).
    pub fn with_audit(mut self, audit: Option<Arc<AuditLog>>) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.audit = audit;
        }
        self
    }

    /// Every probe run: the configured ones, then those added at run time.
    pub fn probes(&self) -> Vec<Probe> {
        self.all().iter().map(|t| t.probe.clone()).collect()
    }

    fn all(&self) -> Arc<Vec<Arc<ProbeTask>>> {
        self.inner
            .probes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn db(&self) -> &DatabaseConnection {
        &self.inner.db
    }

    pub fn is_empty(&self) -> bool {
        self.all().is_empty()
    }

    /// The probe named `name` (configured or added).
    pub fn probe(&self, name: &str) -> Option<Probe> {
        self.task(name).map(|t| t.probe.clone())
    }

    fn task(&self, name: &str) -> Option<Arc<ProbeTask>> {
        self.all().iter().find(|t| t.probe.name == name).cloned()
    }

    fn is_configured(&self, name: &str) -> bool {
        self.inner.configured.iter().any(|t| t.probe.name == name)
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
            for task in self.all().iter() {
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
        let task = self.task(name)?;
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
            Ok(mut report) => {
                if report.transition == Some("down") && probe.on_down == OnDown::EmergencyStop {
                    report.emergency_stop_engaged = self.engage_stop(probe, &report, now).await;
                }
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

    /// Engages the global emergency stop for `probe` gone down; true when
    /// this call engaged it (false: already engaged, or it failed, logged).
    /// Releasing it stays a human decision, also when the probe recovers.
    async fn engage_stop(&self, probe: &Probe, report: &CheckReport, now: DateTime<Utc>) -> bool {
        let reason = format!(
            "probe {} ({}) is down: {}",
            probe.name,
            probe.target,
            report.error.as_deref().unwrap_or("failing")
        );
        match workflow::engage_emergency_stop(
            &self.inner.db,
            &format!("heartbeat:{}", pause_source(&probe.name)),
            &reason,
            self.inner.audit.as_deref(),
            now,
        )
        .await
        {
            Ok(change) => {
                if change.changed {
                    tracing::warn!(probe = %probe.name, %reason,
                        "emergency stop engaged: an upstream probe is down");
                }
                change.changed
            }
            Err(error) => {
                tracing::error!(probe = %probe.name, %error,
                    "cannot engage the emergency stop for a probe that went down; engage it by hand (opsloop emergency-stop engage)");
                false
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

    /// Lifts the pauses of probes that no longer pause kinds (removed from
    /// the configuration, `depends_kinds` emptied, or `on_down` changed),
    /// with a `probe.kinds_resumed` each; the probes whose pauses were
    /// lifted. A probe still configured to pause is brought in line by its
    /// next check. Run when this instance becomes the leader.
    pub async fn reconcile_pauses(
        &self,
        now: DateTime<Utc>,
    ) -> Result<Vec<String>, HeartbeatError> {
        let db = &self.inner.db;
        let standing = workflow::paused_kinds(db).await?;
        let mut lifted: Vec<String> = Vec::new();
        for pause in standing {
            let Some(name) = pause.source.strip_prefix(PAUSE_SOURCE_PREFIX) else {
                continue;
            };
            let keeps = self.probe(name).is_some_and(|p| {
                p.on_down == OnDown::PauseKinds && p.depends_kinds.contains(&pause.kind)
            });
            if keeps || lifted.iter().any(|l| l == name) {
                continue;
            }
            let tx = begin_write(db).await?;
            let wanted: Vec<String> = self
                .probe(name)
                .filter(|p| p.on_down == OnDown::PauseKinds)
                .map(|p| p.depends_kinds.clone())
                .unwrap_or_default();
            // Only the kinds no longer wanted go; the rest wait for a check.
            let held: Vec<String> = workflow::paused_kinds(&tx)
                .await?
                .into_iter()
                .filter(|p| p.source == pause.source && wanted.contains(&p.kind))
                .map(|p| p.kind)
                .collect();
            let change =
                workflow::sync_source_pauses(&tx, &pause.source, &held, &pause.reason, now).await?;
            pause_events(&tx, name, &change, &pause.reason, pause.since, now).await?;
            tx.commit().await?;
            lifted.push(name.to_owned());
        }
        Ok(lifted)
    }

    /// Stored probes whose names the configuration also uses: ignored
    /// (the configuration wins), reported by `GET /probes`.
    pub fn shadowed(&self) -> Vec<String> {
        self.inner
            .shadowed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Reads the probes added at run time (`probe_definitions`) and runs
    /// them besides the configured ones from now on. A stored probe whose
    /// name is configured is ignored (reported by [`Self::shadowed`]); one
    /// that no longer parses or whose client cannot be built (a secret
    /// gone) is skipped with a warning.
    pub async fn refresh_added(&self) -> Result<(), WorkflowError> {
        let db = &self.inner.db;
        let rows = db
            .query_all_raw(stmt(
                db.get_database_backend(),
                "SELECT name, spec FROM probe_definitions ORDER BY name",
                vec![],
            ))
            .await?;
        let current = self.all();
        let mut next: Vec<Arc<ProbeTask>> = self.inner.configured.clone();
        let mut shadowed = Vec::new();
        for row in rows {
            let name: String = row.try_get("", "name")?;
            let spec: serde_json::Value = row.try_get("", "spec")?;
            if self.is_configured(&name) {
                shadowed.push(name);
                continue;
            }
            if let Some(same) = current
                .iter()
                .find(|t| t.probe.name == name && t.stored.as_ref() == Some(&spec))
            {
                next.push(same.clone());
                continue;
            }
            let built = serde_json::from_value::<ProbeSpec>(spec.clone())
                .map_err(|e| format!("stored probe {name}: {e}"))
                .and_then(|s| s.parse().map_err(|e| e.to_string()))
                .and_then(|probe| {
                    build_client(&probe, &self.inner.secrets)
                        .map(|client| (probe, client))
                        .map_err(|e| e.to_string())
                });
            match built {
                Ok((probe, client)) => next.push(Arc::new(ProbeTask {
                    probe,
                    client,
                    stored: Some(spec),
                })),
                Err(error) => {
                    tracing::warn!(probe = %name, %error, "an added probe is skipped; remove it (opsloop probe rm) and add it again");
                }
            }
        }
        {
            let mut known = self
                .inner
                .shadowed
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if *known != shadowed && !shadowed.is_empty() {
                tracing::warn!(probes = ?shadowed,
                    "added probes share names with configured ones; the configuration wins");
            }
            *known = shadowed;
        }
        *self.inner.probes.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(next);
        Ok(())
    }

    /// Stores `spec` as a probe added at run time (`opsloop probe add`) and
    /// runs it from now on; on the other instances from their next refresh.
    pub async fn add(
        &self,
        spec: &ProbeSpec,
        created_by: &str,
        now: DateTime<Utc>,
    ) -> Result<Probe, ProbeChangeError> {
        let probe = spec.parse().map_err(ProbeChangeError::Invalid)?;
        if self.is_configured(&probe.name) {
            return Err(ProbeChangeError::Configured(probe.name));
        }
        // Fails now rather than at every refresh (e.g. a secret not set).
        build_client(&probe, &self.inner.secrets).map_err(ProbeChangeError::Setup)?;
        let stored = serde_json::to_value(spec)
            .map_err(|e| ProbeChangeError::Db(WorkflowError::Corrupt(e.to_string())))?;
        let db = &self.inner.db;
        let inserted = db
            .execute_raw(stmt(
                db.get_database_backend(),
                "INSERT INTO probe_definitions (name, spec, created_by, created_at) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (name) DO NOTHING",
                vec![
                    probe.name.as_str().into(),
                    stored.into(),
                    created_by.into(),
                    db_now(now).into(),
                ],
            ))
            .await
            .map_err(|e| ProbeChangeError::Db(e.into()))?
            .rows_affected();
        if inserted == 0 {
            return Err(ProbeChangeError::Exists(probe.name));
        }
        tracing::info!(probe = %probe.name, created_by, "probe added");
        self.refresh_added().await.map_err(ProbeChangeError::Db)?;
        Ok(probe)
    }

    /// Removes a probe added at run time: its definition and state go, the
    /// kinds it paused are resumed (`probe.kinds_resumed`); its history
    /// stays until the retention purges it.
    pub async fn remove(&self, name: &str, now: DateTime<Utc>) -> Result<(), ProbeChangeError> {
        if self.is_configured(name) {
            return Err(ProbeChangeError::Configured(name.to_owned()));
        }
        let db = &self.inner.db;
        let tx = begin_write(db)
            .await
            .map_err(|e| ProbeChangeError::Db(e.into()))?;
        let backend = tx.get_database_backend();
        let removed = async {
            let deleted = tx
                .execute_raw(stmt(
                    backend,
                    "DELETE FROM probe_definitions WHERE name = $1",
                    vec![name.into()],
                ))
                .await?
                .rows_affected();
            if deleted == 0 {
                return Ok::<bool, HeartbeatError>(false);
            }
            tx.execute_raw(stmt(
                backend,
                "DELETE FROM probe_state WHERE name = $1",
                vec![name.into()],
            ))
            .await?;
            let change =
                workflow::sync_source_pauses(&tx, &pause_source(name), &[], "", now).await?;
            pause_events(&tx, name, &change, "probe removed", now, now).await?;
            Ok(true)
        }
        .await
        .map_err(|e| ProbeChangeError::Db(WorkflowError::Conflict(e.to_string())))?;
        if !removed {
            return Err(ProbeChangeError::NotFound(name.to_owned()));
        }
        tx.commit()
            .await
            .map_err(|e| ProbeChangeError::Db(e.into()))?;
        tracing::info!(probe = %name, "probe removed");
        self.refresh_added().await.map_err(ProbeChangeError::Db)?;
        Ok(())
    }

    /// Deletes history older than this runner's retention at `now`; the
    /// rows deleted. Retention normally runs in the hourly roll-up
    /// ([`crate::probe_rollup`]), which purges only what it rolled up.
    pub async fn purge_history(&self, now: DateTime<Utc>) -> Result<u64, DbErr> {
        crate::probe_rollup::purge_raw_history(&self.inner.db, now - self.inner.history).await
    }

    /// While this instance leads: every second, starts the probes that are
    /// due (a round never waits for another round's slow probe). Until
    /// `shutdown`. Old history is purged by the roll-up, not here.
    pub async fn run_loop(self, hb: Heartbeat, shutdown: CancellationToken) {
        let mut rounds = JoinSet::new();
        let mut last_refresh: Option<DateTime<Utc>> = None;
        let mut reconciled = false;
        loop {
            let now = Utc::now();
            // Probes added (or removed) through another instance.
            if last_refresh.is_none_or(|at| now - at >= Duration::seconds(REFRESH_SECS)) {
                match self.refresh_added().await {
                    Ok(()) => last_refresh = Some(now),
                    Err(error) => tracing::warn!(%error, "cannot read the added probes"),
                }
            }
            if self.is_empty() {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(StdDuration::from_secs(1)) => {}
                }
                continue;
            }
            match hb.is_leader(now).await {
                Ok(true) => {
                    if !reconciled {
                        match self.reconcile_pauses(now).await {
                            Ok(lifted) => {
                                reconciled = true;
                                if !lifted.is_empty() {
                                    tracing::info!(probes = ?lifted,
                                        "pauses of probes no longer configured to pause lifted");
                                }
                            }
                            Err(error) => {
                                tracing::warn!(%error, "cannot reconcile paused step kinds")
                            }
                        }
                    }
                    let runner = self.clone();
                    rounds.spawn(async move {
                        runner.run_due(now).await;
                    });
                }
                Ok(false) => {
                    reconciled = false;
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
    if let Some(condition) = &http.json {
        let document: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| format!("body is not JSON (json_path {}): {e}", condition.path))?;
        match condition.path.lookup(&document) {
            None => return Err(format!("body has no value at json_path {}", condition.path)),
            Some(actual) if !json_matches(&condition.expected, actual) => {
                let mut shown = actual.to_string();
                if shown.len() > 120 {
                    let cut = (0..=120)
                        .rev()
                        .find(|i| shown.is_char_boundary(*i))
                        .unwrap_or(0);
                    shown.truncate(cut);
                    shown.push('…');
                }
                return Err(format!(
                    "json_path {} is {shown}, expected {}",
                    condition.path, condition.expected
                ));
            }
            Some(_) => {}
        }
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

/// One configured probe and its stored state: a row of `opsloop probe
/// list` (`GET /probes` on the heartbeat-worker).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProbeListing {
    pub name: String,
    /// `config` (`[[heartbeat.probes]]`) or `added` (`opsloop probe add`).
    pub source: &'static str,
    pub kind: &'static str,
    pub target: String,
    pub interval_secs: u64,
    /// `unknown` (never checked, or failing short of its retries), `up`
    /// or `down`.
    pub status: String,
    /// Since when it has been in `status`.
    pub since: Option<DateTime<Utc>>,
    pub consecutive_failures: i64,
    pub last_checked_at: Option<DateTime<Utc>>,
    pub last_ok_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    /// Latency of the newest check (the slowest of its minute).
    pub latency_ms: Option<i64>,
    /// `tls`: expiry of the certificate last seen, and whole days left.
    pub cert_not_after: Option<DateTime<Utc>>,
    pub cert_days_left: Option<i64>,
    pub depends_kinds: Vec<String>,
    pub on_down: &'static str,
    /// Step kinds this probe holds paused now.
    pub paused_kinds: Vec<String>,
}

impl ProbeRunner {
    /// Every configured probe with its stored state, by name.
    pub async fn list(&self, now: DateTime<Utc>) -> Result<Vec<ProbeListing>, WorkflowError> {
        let db = &self.inner.db;
        let backend = db.get_database_backend();
        let states = db
            .query_all_raw(stmt(
                backend,
                "SELECT name, status, since, consecutive_failures, last_checked_at, last_ok_at, \
                 last_error, cert_not_after FROM probe_state",
                vec![],
            ))
            .await?;
        let latencies = db
            .query_all_raw(stmt(
                backend,
                "SELECT h.probe, h.latency_ms FROM probe_history h WHERE h.minute = \
                 (SELECT MAX(l.minute) FROM probe_history l WHERE l.probe = h.probe)",
                vec![],
            ))
            .await?;
        let pauses = workflow::paused_kinds(db).await?;
        let all = self.all();
        let mut listings = Vec::with_capacity(all.len());
        for task in all.iter() {
            let probe = &task.probe;
            let mut listing = ProbeListing {
                name: probe.name.clone(),
                source: if task.stored.is_some() {
                    "added"
                } else {
                    "config"
                },
                kind: probe.kind.as_str(),
                target: probe.target.clone(),
                interval_secs: probe.interval.as_secs(),
                status: Status::Unknown.as_str().to_owned(),
                since: None,
                consecutive_failures: 0,
                last_checked_at: None,
                last_ok_at: None,
                last_error: None,
                latency_ms: None,
                cert_not_after: None,
                cert_days_left: None,
                depends_kinds: probe.depends_kinds.clone(),
                on_down: probe.on_down.as_str(),
                paused_kinds: pauses
                    .iter()
                    .filter(|p| p.source == pause_source(&probe.name))
                    .map(|p| p.kind.clone())
                    .collect(),
            };
            for row in &states {
                if row.try_get::<String>("", "name")? != probe.name {
                    continue;
                }
                listing.status = row.try_get("", "status")?;
                listing.since = Some(row.try_get("", "since")?);
                listing.consecutive_failures =
                    i64::from(row.try_get::<i32>("", "consecutive_failures")?);
                listing.last_checked_at = row.try_get("", "last_checked_at")?;
                listing.last_ok_at = row.try_get("", "last_ok_at")?;
                listing.last_error = row.try_get("", "last_error")?;
                listing.cert_not_after = row.try_get("", "cert_not_after")?;
                listing.cert_days_left = listing
                    .cert_not_after
                    .map(|at: DateTime<Utc>| (at - now).num_days());
            }
            for row in &latencies {
                if row.try_get::<String>("", "probe")? == probe.name {
                    listing.latency_ms = Some(row.try_get("", "latency_ms")?);
                }
            }
            listings.push(listing);
        }
        listings.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(listings)
    }
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
    .annotation("on_down", down_consequence(probe))
}

/// What going down does besides this alert, in words (alert annotation).
fn down_consequence(probe: &Probe) -> String {
    match probe.on_down {
        OnDown::EmergencyStop => {
            "the emergency stop is engaged; release it by hand once the upstream is healthy".into()
        }
        OnDown::PauseKinds if probe.depends_kinds.is_empty() => "nothing else".into(),
        OnDown::PauseKinds => format!(
            "step kinds {} are paused until the probe is up",
            probe.depends_kinds.join(", ")
        ),
    }
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
    opsloop_core::store::probe_history::record_minute(&tx, &probe.name, now, result.ok, latency_ms)
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
    let pauses = if probe.depends_kinds.is_empty() {
        PauseChange::default()
    } else {
        let wanted: &[String] =
            if next.status == Status::Down && probe.on_down == OnDown::PauseKinds {
                &probe.depends_kinds
            } else {
                &[]
            };
        let reason = format!(
            "probe {} is down since {}: {}",
            probe.name,
            next.since
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            result.error.as_deref().unwrap_or("failing")
        );
        let change =
            workflow::sync_source_pauses(&tx, &pause_source(&probe.name), wanted, &reason, now)
                .await?;
        pause_events(&tx, &probe.name, &change, &reason, next.since, now).await?;
        change
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
        paused_kinds: pauses.paused,
        resumed_kinds: pauses.resumed,
        emergency_stop_engaged: false,
    })
}

/// The `step_kind_pauses` source of probe `name`.
pub fn pause_source(name: &str) -> String {
    format!("{PAUSE_SOURCE_PREFIX}{name}")
}

const PAUSE_SOURCE_PREFIX: &str = "probe:";

/// `probe.kinds_paused` / `probe.kinds_resumed` for what `change` did.
async fn pause_events(
    tx: &DatabaseTransaction,
    probe: &str,
    change: &PauseChange,
    reason: &str,
    since: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<(), HeartbeatError> {
    if !change.paused.is_empty() {
        emit_in(
            tx,
            "probe.kinds_paused",
            json!({"probe": probe, "kinds": change.paused, "since": since, "reason": reason}),
            None,
            now,
        )
        .await?;
        metrics::gauge!(KINDS_PAUSED, "probe" => probe.to_owned()).set(change.paused.len() as f64);
        tracing::warn!(probe, kinds = ?change.paused, "step kinds paused: their upstream probe is down");
    }
    if !change.resumed.is_empty() {
        emit_in(
            tx,
            "probe.kinds_resumed",
            json!({"probe": probe, "kinds": change.resumed}),
            None,
            now,
        )
        .await?;
        if change.paused.is_empty() {
            metrics::gauge!(KINDS_PAUSED, "probe" => probe.to_owned()).set(0.0);
        }
        tracing::info!(probe, kinds = ?change.resumed, "step kinds claimable again");
    }
    Ok(())
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
