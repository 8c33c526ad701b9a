//! The agent: takes, verifies, restores and prunes backups of the configured
//! targets, keeps the `backups` rows in step with the store, holds the
//! per-target lease while a backup runs, and reports every outcome as a
//! `backup.*` event, an `alert.*` when something needs a human, and metrics.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use opsloop_core::alert::{Alert, Severity, enqueue_alert};
use opsloop_core::audit::{AuditLog, AuditRecord};
use opsloop_core::bus::{Bus, BusMessage};
use opsloop_core::secrets::{Secret, SecretStore};
use opsloop_core::store::entities::{audit_events, backups};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, DatabaseConnection, DbErr, EntityTrait, IntoActiveModel,
    QueryFilter, QueryOrder, QuerySelect, Set,
};
use serde_json::json;
use uuid::Uuid;

use crate::SERVICE;
use crate::config::{BackupConfig, Target, TargetKind};
use crate::db::PgUrl;
use crate::lease;
use crate::pipeline::{self, Dumped, PipelineError, Tools};
use crate::progress::{Board, Meter, MeteredUpload, Snapshot};
use crate::retention::{self, BackupState, Candidate, RetentionPlan};
use crate::schedule::Clock;
use crate::store::{self, BackupStore, MANIFEST_FORMAT, Manifest};
use crate::verify::{RestoreReport, Restorer, VerifyReport};

/// Row statuses of the `backups` table.
pub mod status {
    pub const RUNNING: &str = "running";
    pub const COMPLETED: &str = "completed";
    pub const FAILED: &str = "failed";
    pub const PRUNED: &str = "pruned";
    pub const VERIFIED: &str = "verified";
    pub const VERIFY_FAILED: &str = "verify_failed";
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("unknown backup target {0:?}")]
    UnknownTarget(String),
    #[error("a backup of {0} is already running")]
    AlreadyRunning(String),
    #[error("backup {0} not found")]
    NotFound(Uuid),
    #[error("backup {id} is {status}, not completed")]
    NotCompleted { id: Uuid, status: String },
    #[error("{field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },
    #[error("restore refused: {0}")]
    RestoreRefused(String),
    #[error("restore failed: {0}")]
    RestoreFailed(String),
    #[error("database: {0}")]
    Db(#[from] DbErr),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error("secret: {0}")]
    Secret(String),
    #[error("backup task: {0}")]
    Task(String),
}

impl From<AgentError> for tonic::Status {
    fn from(error: AgentError) -> Self {
        let message = error.to_string();
        match error {
            AgentError::UnknownTarget(_) | AgentError::InvalidArgument { .. } => {
                tonic::Status::invalid_argument(message)
            }
            AgentError::AlreadyRunning(_)
            | AgentError::NotCompleted { .. }
            | AgentError::RestoreRefused(_) => tonic::Status::failed_precondition(message),
            AgentError::NotFound(_) => tonic::Status::not_found(message),
            _ => tonic::Status::internal(message),
        }
    }
}

/// What the agent is built from; tests fill it with a fresh database, an
/// in-memory bus, a temporary store and a manual clock.
pub struct AgentDeps {
    pub config: BackupConfig,
    pub db: DatabaseConnection,
    pub bus: Arc<dyn Bus>,
    pub audit: Arc<AuditLog>,
    pub secrets: SecretStore,
    pub store: Arc<dyn BackupStore>,
    pub clock: Arc<dyn Clock>,
}

/// The outcome of a verification with the updated row.
pub struct Verified {
    pub row: backups::Model,
    pub report: VerifyReport,
}

/// The outcome of a restore.
pub struct Restored {
    pub row: backups::Model,
    pub target_redacted: String,
    pub report: RestoreReport,
}

/// A retention decision with the rows it judged.
pub struct Preview {
    pub plan: RetentionPlan,
    pub rows: HashMap<Uuid, backups::Model>,
    pub evaluated_at: DateTime<Utc>,
}

pub struct Agent {
    config: BackupConfig,
    db: DatabaseConnection,
    bus: Arc<dyn Bus>,
    audit: Arc<AuditLog>,
    secrets: SecretStore,
    store: Arc<dyn BackupStore>,
    clock: Arc<dyn Clock>,
    tools: Option<Tools>,
    /// Targets with their own client tools (`targets[].pg_dump_path`).
    target_tools: BTreeMap<String, Tools>,
    holder: String,
    running: Mutex<HashSet<String>>,
    /// Work in flight, for `GetProgress`.
    progress: Arc<Board>,
    stale: Mutex<HashSet<String>>,
    watching_since: DateTime<Utc>,
    /// Uploads hold it shared, sweeps exclusively: a sweep must never see an
    /// upload between its object's rename and its manifest and take the
    /// object for an orphan.
    objects: tokio::sync::RwLock<()>,
}

impl Agent {
    /// Builds the agent. With a PostgreSQL target, `pg_dump` and
    /// `pg_restore` must be found now: a missing tool is an error at start,
    /// not at 02:00.
    pub fn new(deps: AgentDeps) -> Result<Arc<Self>, AgentError> {
        let settings = &deps.config.settings;
        let needs_tools = deps
            .config
            .targets
            .iter()
            .any(|t| t.kind == TargetKind::Postgres);
        let needs_global_tools = deps.config.targets.iter().any(|t| {
            t.kind == TargetKind::Postgres
                && (t.pg_dump_path.is_none() || t.pg_restore_path.is_none())
        });
        let tools = match Tools::locate(
            settings.pg_dump_path.as_deref(),
            settings.pg_restore_path.as_deref(),
        ) {
            Ok(tools) => Some(tools),
            Err(error) if needs_tools && needs_global_tools => return Err(error.into()),
            Err(_) => None,
        };
        let mut target_tools = BTreeMap::new();
        for target in &deps.config.targets {
            if target.kind != TargetKind::Postgres
                || (target.pg_dump_path.is_none() && target.pg_restore_path.is_none())
            {
                continue;
            }
            let pg_dump = target
                .pg_dump_path
                .as_deref()
                .or(settings.pg_dump_path.as_deref());
            let pg_restore = target
                .pg_restore_path
                .as_deref()
                .or(settings.pg_restore_path.as_deref());
            target_tools.insert(target.name.clone(), Tools::locate(pg_dump, pg_restore)?);
        }
        let watching_since = deps.clock.now();
        Ok(Arc::new(Self {
            config: deps.config,
            db: deps.db,
            bus: deps.bus,
            audit: deps.audit,
            secrets: deps.secrets,
            store: deps.store,
            clock: deps.clock,
            tools,
            target_tools,
            holder: format!(
                "{SERVICE}-{}-{}",
                std::process::id(),
                &Uuid::new_v4().simple().to_string()[..8]
            ),
            running: Mutex::new(HashSet::new()),
            progress: Arc::new(Board::default()),
            stale: Mutex::new(HashSet::new()),
            watching_since,
            objects: tokio::sync::RwLock::new(()),
        }))
    }

    pub fn config(&self) -> &BackupConfig {
        &self.config
    }

    pub fn store(&self) -> &Arc<dyn BackupStore> {
        &self.store
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    fn target(&self, name: Option<&str>) -> Result<Target, AgentError> {
        match name {
            Some(name) => self
                .config
                .target(name)
                .cloned()
                .ok_or_else(|| AgentError::UnknownTarget(name.to_owned())),
            None => self
                .config
                .targets
                .first()
                .cloned()
                .ok_or_else(|| AgentError::UnknownTarget(String::new())),
        }
    }

    fn password(&self, target: &Target) -> Result<Option<Secret>, AgentError> {
        match &target.password_secret {
            Some(name) => self
                .secrets
                .get(name)
                .map_err(|e| AgentError::Secret(e.to_string())),
            None => Ok(None),
        }
    }

    fn pg_url(&self, target: &Target) -> Result<PgUrl, AgentError> {
        let url = PgUrl::parse(&target.url).map_err(|e| AgentError::InvalidArgument {
            field: "target.url",
            reason: e.to_string(),
        })?;
        Ok(url.with_password(self.password(target)?))
    }

    /// The client tools for `target`: its own, else the global ones.
    fn tools_for(&self, target: &str) -> Option<&Tools> {
        self.target_tools.get(target).or(self.tools.as_ref())
    }

    /// Compares each PostgreSQL target's server version with its `pg_dump`
    /// and logs one error line per target that cannot be dumped (the same
    /// check runs before every backup, which then fails with that line). An
    /// unreachable target is only a warning here: it may come up later.
    pub async fn check_client_versions(&self) {
        for target in &self.config.targets {
            if target.kind != TargetKind::Postgres {
                continue;
            }
            let Some(tools) = self.tools_for(&target.name) else {
                continue;
            };
            let server = async {
                let url = self.pg_url(target).map_err(|e| e.to_string())?;
                let label = url.without_password();
                let conn = crate::db::connect_one(&url.connection_string(), &label)
                    .await
                    .map_err(|e| e.to_string())?;
                let version = crate::db::scalar_string(&conn, &label, "SHOW server_version")
                    .await
                    .map_err(|e| e.to_string());
                let _ = conn.close().await;
                version
            };
            let server_version = match tokio::time::timeout(Duration::from_secs(10), server).await {
                Ok(Ok(version)) => version,
                Ok(Err(error)) => {
                    tracing::warn!(target = %target.name, %error, "cannot read the server version at start; checked again before each backup");
                    continue;
                }
                Err(_) => {
                    tracing::warn!(target = %target.name, "no answer for the server version within 10 s; checked again before each backup");
                    continue;
                }
            };
            let checked = match pipeline::tool_version("pg_dump", &tools.pg_dump).await {
                Ok(line) => pipeline::check_client_version("pg_dump", &line, &server_version),
                Err(error) => Err(error),
            };
            match checked {
                Ok(()) => {
                    tracing::info!(target = %target.name, server_version = %server_version, "pg_dump can dump this server")
                }
                Err(error) => tracing::error!(target = %target.name, "{error}"),
            }
        }
    }

    fn restorer(&self, target: &str, meter: Meter) -> Restorer {
        Restorer {
            store: self.store.clone(),
            tools: self.tools_for(target).cloned(),
            jobs: self.config.settings.verify.jobs,
            timeout: self.config.verify_timeout(),
            secrets: self.secrets.clone(),
            meter,
        }
    }

    /// The work in flight on backup `id`, or (without an id) the backup
    /// being taken of `target` (any target when `None`).
    pub fn progress(&self, id: Option<Uuid>, target: Option<&str>) -> Option<Snapshot> {
        match id {
            Some(id) => self.progress.get(id),
            None => self.progress.running_backup(target),
        }
    }

    // ---- taking backups -------------------------------------------------

    /// Takes a backup of `target` (the first configured one when `None`).
    /// With `wait`, answers when it has finished (verified and pruned as
    /// configured); otherwise as soon as it has started.
    pub async fn run_backup(
        self: &Arc<Self>,
        target: Option<&str>,
        wait: bool,
    ) -> Result<backups::Model, AgentError> {
        let target = self.target(target)?;
        let claim = self.claim(&target).await?;
        let row = match self.insert_running(&target).await {
            Ok(row) => row,
            Err(error) => {
                self.unclaim(&target).await;
                return Err(error);
            }
        };
        let agent = self.clone();
        let started = row.clone();
        let work = async move {
            let finished = {
                let _uploading = agent.objects.read().await;
                let (meter, _tracking) =
                    agent
                        .progress
                        .begin(started.id, "backup", &target.name, "dump");
                agent.take(&target, started, claim, &meter).await
            };
            // The lease is free before anyone hears of the outcome, so a
            // retry prompted by a failure alert is not refused.
            agent.unclaim(&target).await;
            if let Ok(row) = &finished {
                agent.announce(&target, row).await;
                agent.after_backup(&target, row).await;
            }
            finished
        };
        // Spawned even when waiting: a caller that goes away (a cancelled
        // gRPC call) must not abort the backup halfway and strand its lease.
        let handle = tokio::spawn(work);
        if wait {
            let finished = handle
                .await
                .map_err(|e| AgentError::Task(e.to_string()))??;
            // Re-read: verification may have updated it.
            Ok(self.get(finished.id).await.unwrap_or(finished))
        } else {
            Ok(row)
        }
    }

    /// The in-process guard plus the database lease: one backup per target.
    async fn claim(&self, target: &Target) -> Result<i64, AgentError> {
        {
            let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
            if !running.insert(target.name.clone()) {
                return Err(AgentError::AlreadyRunning(target.name.clone()));
            }
        }
        let name = lease::backup_lease(&target.name);
        match lease::acquire(
            &self.db,
            &name,
            &self.holder,
            self.lease_ttl(),
            self.clock.now(),
        )
        .await
        {
            Ok(Some(grant)) => Ok(grant.fencing_token),
            Ok(None) => {
                self.forget_running(&target.name);
                Err(AgentError::AlreadyRunning(target.name.clone()))
            }
            Err(error) => {
                self.forget_running(&target.name);
                Err(error.into())
            }
        }
    }

    async fn unclaim(&self, target: &Target) {
        let name = lease::backup_lease(&target.name);
        if let Err(error) = lease::release(&self.db, &name, &self.holder, self.clock.now()).await {
            tracing::warn!(target = %target.name, %error, "could not release the backup lease");
        }
        self.forget_running(&target.name);
    }

    fn forget_running(&self, target: &str) {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(target);
    }

    fn lease_ttl(&self) -> TimeDelta {
        TimeDelta::seconds(self.config.settings.lease_secs as i64)
    }

    async fn insert_running(&self, target: &Target) -> Result<backups::Model, AgentError> {
        let row = backups::ActiveModel {
            id: Set(Uuid::now_v7()),
            target: Set(target.name.clone()),
            kind: Set(target.kind.as_str().to_owned()),
            status: Set(status::RUNNING.to_owned()),
            object_key: Set(None),
            size_bytes: Set(None),
            sha256: Set(None),
            compression: Set(self.config.compression()),
            manifest: Set(None),
            started_at: Set(self.clock.now()),
            finished_at: Set(None),
            verify_status: Set(None),
            verified_at: Set(None),
            verify_duration_ms: Set(None),
            error: Set(None),
        };
        Ok(row.insert(&self.db).await?)
    }

    /// Dumps, stores, writes the manifest and records the outcome.
    async fn take(
        &self,
        target: &Target,
        row: backups::Model,
        fencing_token: i64,
        meter: &Meter,
    ) -> Result<backups::Model, AgentError> {
        tracing::info!(backup_id = %row.id, target = %target.name, fencing_token, "backup started");
        let renewal = self.keep_lease(target);
        let outcome = self.dump_and_store(target, &row, meter).await;
        renewal.abort();
        let finished_at = self.clock.now();
        let duration = (finished_at - row.started_at).to_std().unwrap_or_default();
        metrics::histogram!("opsloop_backup_duration_seconds", "target" => target.name.clone())
            .record(duration.as_secs_f64());
        match outcome {
            Ok(manifest) => {
                let mut active = row.into_active_model();
                active.status = Set(status::COMPLETED.to_owned());
                active.object_key = Set(Some(manifest.object_key.clone()));
                active.size_bytes = Set(Some(manifest.size_bytes as i64));
                active.sha256 = Set(Some(manifest.sha256.clone()));
                active.manifest = Set(serde_json::to_value(&manifest).ok());
                active.finished_at = Set(Some(manifest.finished_at));
                let row = active.update(&self.db).await?;
                metrics::counter!("opsloop_backups_total", "target" => target.name.clone(), "outcome" => "completed")
                    .increment(1);
                metrics::gauge!("opsloop_backup_last_success_timestamp_seconds", "target" => target.name.clone())
                    .set(finished_at.timestamp() as f64);
                metrics::gauge!("opsloop_backup_age_seconds", "target" => target.name.clone())
                    .set(0.0);
                metrics::gauge!("opsloop_backup_size_bytes", "target" => target.name.clone())
                    .set(manifest.size_bytes as f64);
                tracing::info!(
                    backup_id = %row.id,
                    target = %target.name,
                    size_bytes = manifest.size_bytes,
                    duration_ms = duration.as_millis() as u64,
                    "backup completed"
                );
                Ok(row)
            }
            Err(error) => {
                let message = error.to_string();
                let mut active = row.into_active_model();
                active.status = Set(status::FAILED.to_owned());
                active.error = Set(Some(message.clone()));
                active.finished_at = Set(Some(finished_at));
                let row = active.update(&self.db).await?;
                metrics::counter!("opsloop_backups_total", "target" => target.name.clone(), "outcome" => "failed")
                    .increment(1);
                tracing::error!(backup_id = %row.id, target = %target.name, error = %message, "backup failed");
                Ok(row)
            }
        }
    }

    /// `backup.completed` or `backup.failed` plus, for a failure, `alert.high`.
    async fn announce(&self, target: &Target, row: &backups::Model) {
        let duration_ms = row
            .finished_at
            .map(|f| (f - row.started_at).num_milliseconds().max(0))
            .unwrap_or(0);
        if row.status == status::COMPLETED {
            self.publish_event("completed", row, json!({"duration_ms": duration_ms}))
                .await;
            return;
        }
        let message = row.error.clone().unwrap_or_default();
        self.publish_event("failed", row, json!({"duration_ms": duration_ms}))
            .await;
        self.publish_alert(
            Severity::High,
            "BackupFailed",
            &target.name,
            &format!("Backup of {} failed", target.name),
            &format!("Backup {} of {} failed: {message}", row.id, target.name),
        )
        .await;
    }

    /// Renews the lease while a backup runs.
    fn keep_lease(&self, target: &Target) -> tokio::task::JoinHandle<()> {
        let (db, holder, clock, ttl) = (
            self.db.clone(),
            self.holder.clone(),
            self.clock.clone(),
            self.lease_ttl(),
        );
        let name = lease::backup_lease(&target.name);
        let every = Duration::from_secs((self.config.settings.lease_secs / 3).max(1));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                match lease::acquire(&db, &name, &holder, ttl, clock.now()).await {
                    Ok(Some(_)) => {}
                    Ok(None) => tracing::warn!(lease = %name, "backup lease lost while running"),
                    Err(error) => {
                        tracing::warn!(lease = %name, %error, "could not renew the backup lease")
                    }
                }
            }
        })
    }

    async fn dump_and_store(
        &self,
        target: &Target,
        row: &backups::Model,
        meter: &Meter,
    ) -> Result<Manifest, AgentError> {
        let encoding = self.config.encoding();
        let ext = match target.kind {
            TargetKind::Postgres => "pgdump.zst",
            TargetKind::Sqlite => "sqlite.zst",
            TargetKind::Directory => "tar.zst",
        };
        let ext = match encoding.encryption() {
            Some(_) => format!("{ext}.age"),
            None => ext.to_owned(),
        };
        let key = store::object_key(&target.name, row.id, &ext);
        let upload = MeteredUpload::boxed(self.store.begin_upload(&key).await?, meter.clone());
        let timeout = self.config.dump_timeout();
        let dumped: Dumped = match target.kind {
            TargetKind::Postgres => {
                let tools =
                    self.tools_for(&target.name)
                        .ok_or_else(|| PipelineError::ToolMissing {
                            tool: "pg_dump",
                            detail: "not located at start".into(),
                        })?;
                pipeline::dump_postgres(tools, &self.pg_url(target)?, upload, &encoding, timeout)
                    .await?
            }
            TargetKind::Sqlite => {
                pipeline::dump_sqlite(&target.url, upload, &encoding, timeout).await?
            }
            TargetKind::Directory => {
                pipeline::dump_directories(&target.paths, upload, &encoding, timeout).await?
            }
        };
        let mut tool_versions = dumped.tool_versions;
        tool_versions.insert(
            "opsloop-backup-agent".into(),
            env!("CARGO_PKG_VERSION").into(),
        );
        let manifest = Manifest {
            format: MANIFEST_FORMAT,
            id: row.id,
            target: target.name.clone(),
            kind: target.kind.as_str().to_owned(),
            database: dumped.database,
            object_key: key,
            started_at: row.started_at,
            finished_at: self.clock.now(),
            size_bytes: dumped.encoded.size_bytes,
            sha256: dumped.encoded.sha256,
            compression: self.config.compression(),
            tool_versions,
            row_counts: dumped.row_counts,
            files: dumped.files,
            encryption: encoding.encryption(),
            recipients: encoding.recipient_keys(),
        };
        // Last: only now is the object a backup.
        meter.stage("manifest");
        self.store.put_manifest(&manifest).await?;
        Ok(manifest)
    }

    async fn after_backup(self: &Arc<Self>, target: &Target, row: &backups::Model) {
        if row.status != status::COMPLETED {
            return;
        }
        if self.config.settings.verify.after_backup
            && let Err(error) = self.verify(row.id).await
        {
            tracing::error!(backup_id = %row.id, %error, "verification could not run");
        }
        if self.config.settings.prune_after_backup
            && let Err(error) = self.prune(Some(&target.name)).await
        {
            tracing::error!(target = %target.name, %error, "pruning failed");
        }
    }

    // ---- reading ---------------------------------------------------------

    pub async fn get(&self, id: Uuid) -> Result<backups::Model, AgentError> {
        backups::Entity::find_by_id(id)
            .one(&self.db)
            .await?
            .ok_or(AgentError::NotFound(id))
    }

    /// Backups newest first, filtered, one page (`offset`, `limit`).
    pub async fn list(
        &self,
        target: Option<&str>,
        kind: Option<&str>,
        status_filter: Option<&str>,
        offset: u64,
        limit: u64,
    ) -> Result<Vec<backups::Model>, AgentError> {
        // Pruned backups are gone from the store: not listed.
        let mut query = backups::Entity::find().filter(backups::Column::Status.ne(status::PRUNED));
        if let Some(target) = target {
            query = query.filter(backups::Column::Target.eq(target));
        }
        if let Some(kind) = kind {
            query = query.filter(backups::Column::Kind.eq(kind));
        }
        if let Some(status_filter) = status_filter {
            query = query.filter(backups::Column::Status.eq(status_filter));
        }
        Ok(query
            .order_by_desc(backups::Column::StartedAt)
            .order_by_desc(backups::Column::Id)
            .offset(offset)
            .limit(limit)
            .all(&self.db)
            .await?)
    }

    /// When `target` last started a backup (any outcome).
    pub async fn last_started(&self, target: &str) -> Result<Option<DateTime<Utc>>, AgentError> {
        Ok(backups::Entity::find()
            .filter(backups::Column::Target.eq(target))
            .order_by_desc(backups::Column::StartedAt)
            .one(&self.db)
            .await?
            .map(|row| row.started_at))
    }

    // ---- verification ----------------------------------------------------

    /// Verifies backup `id` and records the outcome (row, metrics, events,
    /// alerts).
    pub async fn verify(&self, id: Uuid) -> Result<Verified, AgentError> {
        let row = self.get(id).await?;
        if row.status != status::COMPLETED {
            return Err(AgentError::NotCompleted {
                id,
                status: row.status,
            });
        }
        let target = self.target(Some(&row.target)).ok();
        let (meter, _tracking) = self.progress.begin(id, "verify", &row.target, "fetch");
        let report = match self.store.manifest(&row.target, id).await? {
            Some(manifest) => {
                let scratch = match (&target, manifest.kind.as_str()) {
                    (Some(target), "postgres") => Some(self.scratch_url(target)?),
                    _ => None,
                };
                self.restorer(&row.target, meter)
                    .verify(&manifest, scratch.as_ref())
                    .await
            }
            None => VerifyReport {
                passed: false,
                checksum_ok: false,
                stages: Vec::new(),
                mismatches: Vec::new(),
                duration: Duration::ZERO,
                error: Some(format!(
                    "manifest {} is missing from the store",
                    store::manifest_key(&row.target, id)
                )),
            },
        };
        let mut active = row.into_active_model();
        active.verify_status = Set(Some(
            if report.passed {
                status::VERIFIED
            } else {
                status::VERIFY_FAILED
            }
            .to_owned(),
        ));
        active.verified_at = Set(Some(self.clock.now()));
        active.verify_duration_ms = Set(Some(report.duration.as_millis() as i64));
        let row = active.update(&self.db).await?;

        let target_name = row.target.clone();
        report.record_metrics(&target_name);
        let stages: serde_json::Map<String, serde_json::Value> = report
            .stages
            .iter()
            .map(|(s, d)| ((*s).to_owned(), json!(d.as_millis() as u64)))
            .collect();
        let details = json!({
            "duration_ms": report.duration.as_millis() as u64,
            "stages_ms": stages,
            "checksum_ok": report.checksum_ok,
            "verify_error": report.error,
            "mismatches": report.mismatches.iter().map(|m| json!({"table": m.table, "expected": m.expected, "actual": m.actual})).collect::<Vec<_>>(),
        });
        if report.passed {
            tracing::info!(backup_id = %row.id, duration_ms = report.duration.as_millis() as u64, "backup verified");
            self.publish_event("verified", &row, details).await;
        } else {
            let reason = report.error.clone().unwrap_or_default();
            tracing::error!(backup_id = %row.id, error = %reason, "backup verification failed");
            self.publish_event("verify_failed", &row, details).await;
            self.publish_alert(
                Severity::High,
                "BackupVerificationFailed",
                &target_name,
                &format!("Verification of a backup of {target_name} failed"),
                &format!(
                    "Backup {} of {target_name} did not verify: {reason}",
                    row.id
                ),
            )
            .await;
        }
        let max = Duration::from_secs(self.config.settings.verify.max_duration_secs);
        if report.duration > max {
            self.publish_alert(
                Severity::Warning,
                "BackupRestoreSlow",
                &target_name,
                &format!("Restoring a backup of {target_name} takes too long"),
                &format!(
                    "Verification of backup {} took {} s, over verify.max_duration_secs = {} s",
                    row.id,
                    report.duration.as_secs(),
                    max.as_secs()
                ),
            )
            .await;
        }
        Ok(Verified { row, report })
    }

    fn scratch_url(&self, target: &Target) -> Result<PgUrl, AgentError> {
        match &self.config.settings.verify.scratch_url {
            Some(url) => PgUrl::parse(url).map_err(|e| AgentError::InvalidArgument {
                field: "verify.scratch_url",
                reason: e.to_string(),
            }),
            None => Ok(self.pg_url(target)?.with_database("postgres")),
        }
    }

    // ---- restore ---------------------------------------------------------

    /// Restores backup `id` into `target_url`. Needs `confirm`; refuses a
    /// non-empty target unless `force`. Audited either way it ends.
    pub async fn restore(
        &self,
        id: Uuid,
        target_url: &str,
        confirm: bool,
        force: bool,
        actor: &str,
    ) -> Result<Restored, AgentError> {
        if !confirm {
            return Err(AgentError::InvalidArgument {
                field: "confirm",
                reason: "must be true to restore".into(),
            });
        }
        if crate::config::target_kind(target_url).is_none() && !target_url.starts_with("dir:") {
            return Err(AgentError::InvalidArgument {
                field: "target_url",
                reason: "must start with postgres://, sqlite: or dir: (a directory set)".into(),
            });
        }
        let actor = if actor.is_empty() { "unknown" } else { actor };
        let row = self.get(id).await?;
        if row.status != status::COMPLETED {
            return Err(AgentError::NotCompleted {
                id,
                status: row.status,
            });
        }
        let manifest = self.store.manifest(&row.target, id).await?.ok_or_else(|| {
            AgentError::RestoreFailed(format!("manifest of {id} is missing from the store"))
        })?;
        let redacted = crate::verify::redact(target_url);
        let (meter, _tracking) = self.progress.begin(id, "restore", &row.target, "fetch");
        let outcome = self
            .restorer(&row.target, meter)
            .restore(&manifest, target_url, force)
            .await;
        let (result, reason) = match &outcome {
            Ok(report) => (
                json!({"outcome": "restored", "duration_ms": report.duration.as_millis() as u64, "row_counts": report.row_counts}),
                None,
            ),
            Err(error) => (json!({"outcome": "failed"}), Some(error.to_string())),
        };
        self.audit_restore(actor, id, &redacted, force, result, reason)
            .await;
        match outcome {
            Ok(report) => Ok(Restored {
                row,
                target_redacted: redacted,
                report,
            }),
            Err(error @ crate::verify::VerifyError::NotEmpty { .. }) => {
                Err(AgentError::RestoreRefused(error.to_string()))
            }
            Err(error) => Err(AgentError::RestoreFailed(error.to_string())),
        }
    }

    async fn audit_restore(
        &self,
        actor: &str,
        id: Uuid,
        target: &str,
        force: bool,
        result: serde_json::Value,
        reason: Option<String>,
    ) {
        let now = self.clock.now();
        let after = json!({"backup_id": id, "target": target, "force": force, "result": result});
        let record = AuditRecord {
            at: now,
            actor: actor.to_owned(),
            action: "backup.restore".into(),
            subject: id.to_string(),
            reason: reason.clone(),
            before: None,
            after: Some(after.clone()),
        };
        let audit = self.audit.clone();
        let written = tokio::task::spawn_blocking(move || audit.append(&record)).await;
        if !matches!(written, Ok(Ok(()))) {
            tracing::error!(backup_id = %id, "could not append the restore to the audit log file");
        }
        let row = audit_events::ActiveModel {
            actor: Set(actor.to_owned()),
            action: Set("backup.restore".into()),
            subject: Set(id.to_string()),
            before: Set(None),
            after: Set(Some(after)),
            reason: Set(reason),
            created_at: Set(now),
            ..Default::default()
        };
        if let Err(error) = row.insert(&self.db).await {
            tracing::error!(backup_id = %id, %error, "could not record the restore in audit_events");
        }
    }

    // ---- retention -------------------------------------------------------

    /// What retention would keep and remove for `target`, and why.
    pub async fn preview_retention(&self, target: Option<&str>) -> Result<Preview, AgentError> {
        let target = self.target(target)?;
        let rows = backups::Entity::find()
            .filter(backups::Column::Target.eq(target.name.clone()))
            .filter(backups::Column::Status.ne(status::PRUNED))
            .all(&self.db)
            .await?;
        let candidates: Vec<Candidate> = rows
            .iter()
            .map(|row| Candidate {
                id: row.id,
                started_at: row.started_at,
                state: match row.status.as_str() {
                    status::COMPLETED => BackupState::Completed {
                        verified: row.verify_status.as_deref() == Some(status::VERIFIED),
                    },
                    status::RUNNING => BackupState::Running,
                    _ => BackupState::Failed,
                },
            })
            .collect();
        let evaluated_at = self.clock.now();
        let plan = retention::plan(
            &candidates,
            &self.config.settings.retention,
            self.config.timezone,
            evaluated_at,
        );
        Ok(Preview {
            plan,
            rows: rows.into_iter().map(|row| (row.id, row)).collect(),
            evaluated_at,
        })
    }

    /// Applies retention to `target`: removes what the plan removes (store
    /// first, then the row is marked pruned), then sweeps partial objects.
    pub async fn prune(&self, target: Option<&str>) -> Result<Preview, AgentError> {
        let preview = self.preview_retention(target).await?;
        let target_name = self.target(target)?.name;
        if let Some(reason) = &preview.plan.refused {
            tracing::warn!(target = %target_name, %reason, "pruning refused");
            return Ok(preview);
        }
        let mut pruned = Vec::new();
        for decision in &preview.plan.remove {
            let Some(row) = preview.rows.get(&decision.id) else {
                continue;
            };
            if row.status == status::COMPLETED
                && let Some(manifest) = self.store.manifest(&row.target, row.id).await?
            {
                self.store.delete(&manifest).await?;
            }
            let mut active = row.clone().into_active_model();
            active.status = Set(status::PRUNED.to_owned());
            active.update(&self.db).await?;
            pruned.push(
                json!({"id": row.id, "started_at": row.started_at, "reasons": decision.reasons}),
            );
        }
        self.sweep().await?;
        metrics::gauge!("opsloop_backup_objects_kept", "target" => target_name.clone()).set(
            preview
                .plan
                .keep
                .iter()
                .filter(|d| {
                    preview
                        .rows
                        .get(&d.id)
                        .is_some_and(|r| r.status == status::COMPLETED)
                })
                .count() as f64,
        );
        if !pruned.is_empty() {
            tracing::info!(target = %target_name, removed = pruned.len(), "backups pruned");
            let body = json!({"target": target_name, "removed": pruned, "at": self.clock.now()});
            self.publish("backup.pruned", &body).await;
        }
        Ok(preview)
    }

    /// Removes partial uploads and objects without a manifest (except those
    /// of running backups).
    pub async fn sweep(&self) -> Result<Vec<String>, AgentError> {
        let _exclusive = self.objects.write().await;
        let active: HashSet<Uuid> = backups::Entity::find()
            .filter(backups::Column::Status.eq(status::RUNNING))
            .all(&self.db)
            .await?
            .into_iter()
            .map(|row| row.id)
            .collect();
        let removed = self.store.sweep(&active).await?;
        if !removed.is_empty() {
            tracing::info!(removed = ?removed, "swept partial and unmanifested objects");
        }
        Ok(removed)
    }

    /// At start: backups left `running` by a stopped agent (their lease has
    /// lapsed) are failed, and their leftovers swept.
    pub async fn recover(&self) -> Result<(), AgentError> {
        let now = self.clock.now();
        let stuck = backups::Entity::find()
            .filter(backups::Column::Status.eq(status::RUNNING))
            .all(&self.db)
            .await?;
        for row in stuck {
            if lease::is_held(&self.db, &lease::backup_lease(&row.target), now).await? {
                continue;
            }
            tracing::warn!(backup_id = %row.id, target = %row.target, "failing a backup left running by a stopped agent");
            let mut active = row.into_active_model();
            active.status = Set(status::FAILED.to_owned());
            active.error = Set(Some(
                "the agent stopped while the backup was running".into(),
            ));
            active.finished_at = Set(Some(now));
            active.update(&self.db).await?;
        }
        self.sweep().await?;
        Ok(())
    }

    // ---- freshness -------------------------------------------------------

    /// Updates the age metric of every target and warns (once per episode)
    /// when its newest good backup is older than `freshness.max_age_hours`.
    pub async fn check_freshness(&self) -> Result<(), AgentError> {
        let now = self.clock.now();
        let max_age = TimeDelta::hours(self.config.settings.freshness.max_age_hours as i64);
        for target in &self.config.targets {
            let newest = backups::Entity::find()
                .filter(backups::Column::Target.eq(target.name.clone()))
                .filter(backups::Column::Status.eq(status::COMPLETED))
                .order_by_desc(backups::Column::StartedAt)
                .one(&self.db)
                .await?;
            let finished = newest.as_ref().and_then(|row| row.finished_at);
            if let Some(finished) = finished {
                metrics::gauge!("opsloop_backup_age_seconds", "target" => target.name.clone())
                    .set((now - finished).num_seconds().max(0) as f64);
                metrics::gauge!("opsloop_backup_last_success_timestamp_seconds", "target" => target.name.clone())
                    .set(finished.timestamp() as f64);
            }
            // With no backup yet, the clock runs from when this agent began
            // watching: a fresh install is not stale before max_age passes.
            let stale = now - finished.unwrap_or(self.watching_since) > max_age;
            let was_stale = {
                let mut set = self.stale.lock().unwrap_or_else(|p| p.into_inner());
                if stale {
                    !set.insert(target.name.clone())
                } else {
                    !set.remove(&target.name)
                }
            };
            if stale && !was_stale {
                let age = finished
                    .map(|f| format!("{} h old", (now - f).num_hours()))
                    .unwrap_or_else(|| "none exists".into());
                self.publish_alert(
                    Severity::Warning,
                    "BackupStale",
                    &target.name,
                    &format!("No fresh backup of {}", target.name),
                    &format!(
                        "The newest good backup of {} is {age}; freshness.max_age_hours is {}",
                        target.name, self.config.settings.freshness.max_age_hours
                    ),
                )
                .await;
            }
        }
        Ok(())
    }

    // ---- reporting -------------------------------------------------------

    async fn publish_event(&self, outcome: &str, row: &backups::Model, extra: serde_json::Value) {
        let mut body = json!({
            "id": row.id,
            "target": row.target,
            "kind": row.kind,
            "status": row.status,
            "object_key": row.object_key,
            "size_bytes": row.size_bytes,
            "sha256": row.sha256,
            "compression": row.compression,
            "started_at": row.started_at,
            "finished_at": row.finished_at,
            "verify_status": row.verify_status,
            "error": row.error,
            "at": self.clock.now(),
        });
        if let (Some(body), serde_json::Value::Object(extra)) = (body.as_object_mut(), extra) {
            body.extend(extra);
        }
        self.publish(&format!("backup.{outcome}"), &body).await;
    }

    /// Raises an alert through the outbox (relayed by the api), so it is not
    /// lost while the broker is down.
    async fn publish_alert(
        &self,
        severity: Severity,
        alertname: &str,
        target: &str,
        summary: &str,
        description: &str,
    ) {
        let alert = Alert::new(
            SERVICE,
            alertname,
            severity,
            summary.to_owned(),
            description.to_owned(),
        )
        .label("target", target);
        if let Err(error) = enqueue_alert(&self.db, &alert, self.clock.now()).await {
            tracing::error!(alertname, %error, "could not write the alert to the outbox");
        }
    }

    async fn publish(&self, routing_key: &str, body: &serde_json::Value) {
        let message = BusMessage::json(Uuid::now_v7().to_string(), routing_key, body);
        if let Err(error) = self.bus.publish(message).await {
            tracing::error!(routing_key, %error, "could not publish");
        }
    }
}

/// A scheduled backup of one target: what [`crate::schedule::run_schedule`]
/// runs for each configured target.
pub struct ScheduledBackup {
    agent: Arc<Agent>,
    target: String,
}

impl ScheduledBackup {
    pub fn new(agent: Arc<Agent>, target: &str) -> Self {
        Self {
            agent,
            target: target.to_owned(),
        }
    }
}

#[async_trait::async_trait]
impl crate::schedule::ScheduledJob for ScheduledBackup {
    async fn last_started(&self) -> Option<DateTime<Utc>> {
        match self.agent.last_started(&self.target).await {
            Ok(last) => last,
            Err(error) => {
                tracing::warn!(target = %self.target, %error, "cannot read the last backup; assuming none");
                None
            }
        }
    }

    async fn run(&self, due: DateTime<Utc>) {
        tracing::info!(target = %self.target, due = %due, "scheduled backup due");
        if let Err(error) = self.agent.run_backup(Some(&self.target), true).await {
            tracing::error!(target = %self.target, %error, "scheduled backup did not run");
        }
    }
}

/// A scheduled verification: the newest completed backup of every target.
pub struct ScheduledVerify {
    agent: Arc<Agent>,
}

impl ScheduledVerify {
    pub fn new(agent: Arc<Agent>) -> Self {
        Self { agent }
    }
}

#[async_trait::async_trait]
impl crate::schedule::ScheduledJob for ScheduledVerify {
    async fn last_started(&self) -> Option<DateTime<Utc>> {
        // Never caught up at start: verification follows each backup anyway.
        None
    }

    async fn run(&self, due: DateTime<Utc>) {
        for target in &self.agent.config.targets {
            let newest = self
                .agent
                .list(Some(&target.name), None, Some(status::COMPLETED), 0, 1)
                .await;
            match newest.map(|rows| rows.into_iter().next()) {
                Ok(Some(row)) => {
                    tracing::info!(target = %target.name, backup_id = %row.id, due = %due, "scheduled verification");
                    if let Err(error) = self.agent.verify(row.id).await {
                        tracing::error!(backup_id = %row.id, %error, "scheduled verification could not run");
                    }
                }
                Ok(None) => {}
                Err(error) => {
                    tracing::error!(target = %target.name, %error, "cannot find the backup to verify")
                }
            }
        }
    }
}
