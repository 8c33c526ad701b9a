//! The `[backup]` config section and its validation: what to back up, when
//! (cron and time zone), where to (a store directory), how long to keep it
//! (retention), how to verify it, and the tools and time limits used.
//! The store is a local directory (`store = "local"`, `store_dir`) or an
//! S3-compatible bucket (`store = "s3"` and `[backup.s3]`; the keys come
//! from the secrets `s3_access_key_id` and `s3_secret_access_key`).
//! Defaults work for `opsloop dev`: the configured database (SQLite
//! `var/opsloop.db`) into `var/backups`, every day at 02:00 UTC.
//!
//! ```toml
//! [backup]
//! schedule = "0 2 * * *"          # cron, 5 fields
//! timezone = "UTC"                # schedule and retention buckets
//! store_dir = "/var/lib/opsloop/backups"
//! # store = "s3"                 # instead: the bucket in [backup.s3]
//! compression_level = 3
//! dump_timeout_secs = 3600
//! # pg_dump_path = "/usr/lib/postgresql/15/bin/pg_dump"   # default: PATH
//!
//! [[backup.targets]]              # default: the daemon's own database
//! name = "opsloop"
//! url = "postgres://opsloop@db.internal:5432/opsloop"
//! password_secret = "backup_db_password"
//!
//! [[backup.directories]]
//! name = "files"
//! paths = ["var/artifacts", "var/logs"]
//!
//! [backup.retention]
//! keep_daily = 7
//! keep_weekly = 4
//! keep_monthly = 12
//! keep_within = "2d"
//!
//! [backup.verify]
//! after_backup = true
//! schedule = "0 4 * * 0"          # and weekly, Sunday 04:00
//! max_duration_secs = 600
//! # scratch_url = "postgres://opsloop@db.internal:5432/postgres"
//!
//! [backup.freshness]
//! max_age_hours = 26
//!
//! [backup.encryption]            # optional: age, after compression
//! recipients = ["age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"]
//! # identities (private keys, one per line; old ones kept after a key
//! # rotation) come from the secret backup_age_identities, for verify/restore
//!
//! [backup.s3]
//! # endpoint = "https://minio.internal:9000"   # S3-compatible services
//! region = "eu-central-1"
//! bucket = "opsloop-backups"
//! prefix = "prod"
//! ```

use std::path::PathBuf;
use std::time::Duration;

use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use crate::retention::RetentionPolicy;
use crate::schedule::Schedule;

/// The `[backup]` config section.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BackupSettings {
    /// gRPC listen address.
    pub grpc_addr: String,
    /// HTTP listen address (health, readiness, metrics).
    pub http_addr: String,
    /// Databases to back up. Empty: the daemon's own database
    /// (`database.url`, or the `database_url` secret) as target `opsloop`.
    pub targets: Vec<TargetSettings>,
    /// Directory sets to back up as tar + zstd (e.g. `var/artifacts`,
    /// `var/logs`), each its own target.
    pub directories: Vec<DirectorySetSettings>,
    /// Cron expression (5 fields) of scheduled backups.
    pub schedule: String,
    /// IANA time zone of the schedule and of retention buckets.
    pub timezone: String,
    /// Take one backup at start when a scheduled run was missed (the agent
    /// was down) or no backup exists yet.
    pub catch_up_missed: bool,
    /// Where backups are kept: `local` (`store_dir`) or `s3` (`[backup.s3]`).
    pub store: StoreKind,
    /// Directory of the local store.
    pub store_dir: PathBuf,
    /// The bucket of the S3 store.
    pub s3: S3Settings,
    /// zstd level (1–19).
    pub compression_level: i32,
    /// `pg_dump` binary; absent: looked up on `PATH`.
    pub pg_dump_path: Option<PathBuf>,
    /// `pg_restore` binary; absent: looked up on `PATH`.
    pub pg_restore_path: Option<PathBuf>,
    /// A dump running longer is killed (with its process group) and failed.
    pub dump_timeout_secs: u64,
    /// How long the per-target lease is held before another agent may take
    /// it over (renewed while a backup runs).
    pub lease_secs: u64,
    /// Prune by the retention policy after each successful backup.
    pub prune_after_backup: bool,
    pub retention: RetentionPolicy,
    pub verify: VerifySettings,
    pub freshness: FreshnessSettings,
    pub encryption: EncryptionSettings,
}

impl Default for BackupSettings {
    fn default() -> Self {
        Self {
            grpc_addr: "127.0.0.1:50053".into(),
            http_addr: "127.0.0.1:9757".into(),
            targets: Vec::new(),
            directories: Vec::new(),
            schedule: "0 2 * * *".into(),
            timezone: "UTC".into(),
            catch_up_missed: true,
            store: StoreKind::Local,
            store_dir: PathBuf::from("var/backups"),
            s3: S3Settings::default(),
            compression_level: 3,
            pg_dump_path: None,
            pg_restore_path: None,
            dump_timeout_secs: 3600,
            lease_secs: 300,
            prune_after_backup: true,
            retention: RetentionPolicy::default(),
            verify: VerifySettings::default(),
            freshness: FreshnessSettings::default(),
            encryption: EncryptionSettings::default(),
        }
    }
}

/// Which store backups go to.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    #[default]
    Local,
    S3,
}

/// `[backup.s3]`: an S3 or S3-compatible bucket. Keys are read from the
/// secrets `s3_access_key_id` and `s3_secret_access_key` (and optionally
/// `s3_session_token`), never from the config file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct S3Settings {
    /// Endpoint of an S3-compatible service; absent: AWS for `region`.
    pub endpoint: Option<String>,
    pub region: String,
    /// Required when `backup.store = "s3"`.
    pub bucket: String,
    /// Key prefix inside the bucket (may be empty).
    pub prefix: String,
    /// Allow a plain `http://` endpoint (local test services).
    pub allow_http: bool,
    /// Unsigned requests (a public or policy-open bucket): no keys needed.
    pub anonymous: bool,
    /// Write manifests with a conditional create (`If-None-Match: *`). Turn
    /// off for services without it: the store then checks, then writes.
    pub conditional_put: bool,
    /// Multipart part size in MiB (5–512); memory per upload is about
    /// three parts.
    pub part_size_mib: usize,
}

impl Default for S3Settings {
    fn default() -> Self {
        Self {
            endpoint: None,
            region: "us-east-1".into(),
            bucket: String::new(),
            prefix: String::new(),
            allow_http: false,
            anonymous: false,
            conditional_put: true,
            part_size_mib: 16,
        }
    }
}

impl S3Settings {
    fn validate(&self) -> Result<(), SettingsError> {
        if self.bucket.trim().is_empty() {
            return Err(invalid(
                "s3.bucket",
                "must be set when backup.store = \"s3\"",
            ));
        }
        if self.region.trim().is_empty() {
            return Err(invalid("s3.region", "must not be empty"));
        }
        if let Some(endpoint) = &self.endpoint {
            if endpoint.starts_with("http://") {
                if !self.allow_http {
                    return Err(invalid(
                        "s3.endpoint",
                        "is plain http: set backup.s3.allow_http = true to allow it",
                    ));
                }
            } else if !endpoint.starts_with("https://") {
                return Err(invalid(
                    "s3.endpoint",
                    "must start with https:// or http://",
                ));
            }
        }
        let prefix = self.prefix.trim_matches('/');
        if !prefix.is_empty()
            && !prefix.split('/').all(|p| {
                !p.is_empty()
                    && p != "."
                    && p != ".."
                    && p.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            })
        {
            return Err(invalid(
                "s3.prefix",
                "use path segments of letters, digits, '-', '_' and '.'",
            ));
        }
        if !(5..=512).contains(&self.part_size_mib) {
            return Err(invalid("s3.part_size_mib", "must be between 5 and 512"));
        }
        Ok(())
    }
}

/// One database to back up.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TargetSettings {
    /// Name in object keys, rows and metrics (letters, digits, `-`, `_`).
    pub name: String,
    /// `postgres://…` or `sqlite://path`. A password is better kept in the
    /// secret named by `password_secret`.
    pub url: String,
    /// Secret holding the database password (never put on argv).
    pub password_secret: Option<String>,
    /// This target's `pg_dump` (a server of a newer major version than
    /// `backup.pg_dump_path` needs its own client); absent: the global one.
    #[serde(default)]
    pub pg_dump_path: Option<PathBuf>,
    /// This target's `pg_restore`; absent: `backup.pg_restore_path`.
    #[serde(default)]
    pub pg_restore_path: Option<PathBuf>,
}

/// A set of directories backed up together.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DirectorySetSettings {
    /// Target name (letters, digits, `-`, `_`).
    pub name: String,
    /// Directories archived, each under its own path in the archive.
    pub paths: Vec<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct VerifySettings {
    /// Verify each backup right after taking it.
    pub after_backup: bool,
    /// Also verify the newest backup of every target on this cron schedule
    /// (in `backup.timezone`), e.g. `0 4 * * 0` for weekly.
    pub schedule: Option<String>,
    /// Alert when a verification (the restore-time figure) takes longer.
    pub max_duration_secs: u64,
    /// PostgreSQL server (any database on it) where scratch databases are
    /// created. Absent: the target's own server, database `postgres`.
    pub scratch_url: Option<String>,
    /// `pg_restore -j`.
    pub jobs: u32,
    /// A restore running longer is killed and failed.
    pub timeout_secs: u64,
}

impl Default for VerifySettings {
    fn default() -> Self {
        Self {
            after_backup: true,
            schedule: None,
            max_duration_secs: 600,
            scratch_url: None,
            jobs: 2,
            timeout_secs: 3600,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct FreshnessSettings {
    /// Warn when the newest good backup is older than this.
    pub max_age_hours: u64,
    /// How often freshness is checked.
    pub check_interval_secs: u64,
}

impl Default for FreshnessSettings {
    fn default() -> Self {
        Self {
            max_age_hours: 26,
            check_interval_secs: 300,
        }
    }
}

/// `[backup.encryption]`: at-rest encryption to age recipients, after
/// compression. The identities (private keys) that decrypt come from the
/// secret `backup_age_identities`, one per line; keep old ones there after a
/// rotation so older backups stay verifiable and restorable.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct EncryptionSettings {
    /// age public keys (`age1…`); empty: backups are not encrypted.
    pub recipients: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: backup.{key}: {reason}")]
pub struct SettingsError {
    pub key: String,
    pub reason: String,
}

fn invalid(key: &str, reason: impl Into<String>) -> SettingsError {
    SettingsError {
        key: key.to_owned(),
        reason: reason.into(),
    }
}

/// What kind of database a target is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    Postgres,
    Sqlite,
    Directory,
}

impl TargetKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Postgres => "postgres",
            Self::Sqlite => "sqlite",
            Self::Directory => "directory",
        }
    }
}

/// A validated target.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    pub kind: TargetKind,
    /// The database URL; empty for a directory set.
    pub url: String,
    pub password_secret: Option<String>,
    /// The directories of a directory set; empty for a database.
    pub paths: Vec<PathBuf>,
    /// Client tools of this target (PostgreSQL only), overriding the global
    /// `backup.pg_dump_path` / `backup.pg_restore_path`.
    pub pg_dump_path: Option<PathBuf>,
    pub pg_restore_path: Option<PathBuf>,
}

fn check_name(key: &str, name: &str, taken: &[Target]) -> Result<(), SettingsError> {
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(invalid(key, "use letters, digits, '-' and '_'"));
    }
    if taken.iter().any(|t| t.name == name) {
        return Err(invalid(key, format!("{name:?} is used twice")));
    }
    Ok(())
}

/// The validated section: parsed schedule and time zone, resolved targets.
#[derive(Debug, Clone)]
pub struct BackupConfig {
    pub settings: BackupSettings,
    pub schedule: Schedule,
    /// When to verify the newest backups, besides after each backup.
    pub verify_schedule: Option<Schedule>,
    pub timezone: Tz,
    pub targets: Vec<Target>,
}

impl BackupConfig {
    /// Validates `settings`; `default_url` is the daemon's database URL, the
    /// target when none is configured.
    pub fn new(settings: BackupSettings, default_url: &str) -> Result<Self, SettingsError> {
        let timezone: Tz = settings.timezone.parse().map_err(|_| {
            invalid(
                "timezone",
                format!("unknown time zone {:?}", settings.timezone),
            )
        })?;
        let schedule = Schedule::parse_in(&settings.schedule, timezone)
            .map_err(|e| invalid("schedule", e.to_string()))?;
        let verify_schedule = match &settings.verify.schedule {
            Some(expression) => Some(
                Schedule::parse_in(expression, timezone)
                    .map_err(|e| invalid("verify.schedule", e.to_string()))?,
            ),
            None => None,
        };
        if !(1..=19).contains(&settings.compression_level) {
            return Err(invalid("compression_level", "must be between 1 and 19"));
        }
        if settings.dump_timeout_secs == 0 {
            return Err(invalid("dump_timeout_secs", "must be at least 1"));
        }
        if settings.lease_secs < 10 {
            return Err(invalid("lease_secs", "must be at least 10"));
        }
        if settings.verify.jobs == 0 {
            return Err(invalid("verify.jobs", "must be at least 1"));
        }
        if !crate::crypt::AVAILABLE && !settings.encryption.recipients.is_empty() {
            return Err(invalid("encryption.recipients", crate::crypt::NOT_BUILT));
        }
        crate::crypt::parse_recipients(&settings.encryption.recipients).map_err(
            |(i, reason)| {
                invalid(
                    &format!("encryption.recipients[{i}]"),
                    format!("not an age public key (age1…): {reason}"),
                )
            },
        )?;
        match settings.store {
            StoreKind::Local => {
                if settings.store_dir.as_os_str().is_empty() {
                    return Err(invalid("store_dir", "must not be empty"));
                }
            }
            StoreKind::S3 => settings.s3.validate()?,
        }
        let configured = if settings.targets.is_empty() {
            vec![TargetSettings {
                name: "opsloop".into(),
                url: default_url.to_owned(),
                password_secret: None,
                ..Default::default()
            }]
        } else {
            settings.targets.clone()
        };
        let mut targets = Vec::with_capacity(configured.len());
        for (i, t) in configured.into_iter().enumerate() {
            let key = format!("targets[{i}]");
            check_name(&format!("{key}.name"), &t.name, &targets)?;
            let kind = target_kind(&t.url).ok_or_else(|| {
                invalid(
                    &format!("{key}.url"),
                    "must start with postgres:// or sqlite:",
                )
            })?;
            if kind != TargetKind::Postgres
                && (t.pg_dump_path.is_some() || t.pg_restore_path.is_some())
            {
                return Err(invalid(
                    &format!("{key}.pg_dump_path"),
                    "client tool paths apply to postgres:// targets only",
                ));
            }
            targets.push(Target {
                name: t.name,
                kind,
                url: t.url,
                password_secret: t.password_secret,
                paths: Vec::new(),
                pg_dump_path: t.pg_dump_path,
                pg_restore_path: t.pg_restore_path,
            });
        }
        for (i, d) in settings.directories.iter().enumerate() {
            let key = format!("directories[{i}]");
            check_name(&format!("{key}.name"), &d.name, &targets)?;
            if d.paths.is_empty() {
                return Err(invalid(
                    &format!("{key}.paths"),
                    "must name at least one directory",
                ));
            }
            targets.push(Target {
                name: d.name.clone(),
                kind: TargetKind::Directory,
                url: String::new(),
                password_secret: None,
                paths: d.paths.clone(),
                pg_dump_path: None,
                pg_restore_path: None,
            });
        }
        Ok(Self {
            settings,
            schedule,
            verify_schedule,
            timezone,
            targets,
        })
    }

    pub fn target(&self, name: &str) -> Option<&Target> {
        self.targets.iter().find(|t| t.name == name)
    }

    pub fn dump_timeout(&self) -> Duration {
        Duration::from_secs(self.settings.dump_timeout_secs)
    }

    pub fn verify_timeout(&self) -> Duration {
        Duration::from_secs(self.settings.verify.timeout_secs.max(1))
    }

    /// How objects are encoded: the zstd level and the age recipients.
    pub fn encoding(&self) -> crate::crypt::Encoding {
        crate::crypt::Encoding {
            level: self.settings.compression_level,
            // Validated in `new`.
            recipients: crate::crypt::parse_recipients(&self.settings.encryption.recipients)
                .unwrap_or_default(),
        }
    }

    pub fn compression(&self) -> String {
        format!("zstd:{}", self.settings.compression_level)
    }
}

/// The kind of database a URL points at.
pub fn target_kind(url: &str) -> Option<TargetKind> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Some(TargetKind::Postgres)
    } else if url.starts_with("sqlite:") {
        Some(TargetKind::Sqlite)
    } else {
        None
    }
}

/// Parses and validates `[backup]` before any I/O; what
/// `opsloop_core::daemon::run` calls.
pub fn check_config(config: &opsloop_core::config::LoadedConfig) -> anyhow::Result<()> {
    let settings: BackupSettings = config.section("backup")?;
    let default_url =
        match opsloop_core::secrets::SecretStore::from_process().get("database_url")? {
            Some(secret) => secret.expose().to_owned(),
            None => config.settings.database.url.clone(),
        };
    BackupConfig::new(settings, &default_url)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_back_up_the_daemon_database_at_two_utc() {
        let config = BackupConfig::new(
            BackupSettings::default(),
            "sqlite://var/opsloop.db?mode=rwc",
        )
        .expect("defaults are valid");
        assert_eq!(config.timezone, chrono_tz::UTC);
        assert_eq!(config.targets.len(), 1);
        assert_eq!(config.targets[0].name, "opsloop");
        assert_eq!(config.targets[0].kind, TargetKind::Sqlite);
        assert_eq!(config.settings.store_dir, PathBuf::from("var/backups"));
        assert_eq!(config.compression(), "zstd:3");
    }

    #[test]
    fn the_documented_example_is_valid() {
        let source = include_str!("config.rs");
        let example: String = source
            .lines()
            .skip_while(|l| !l.starts_with("//! ```toml"))
            .skip(1)
            .take_while(|l| !l.starts_with("//! ```"))
            .map(|l| format!("{}\n", l.trim_start_matches("//!").trim_start()))
            .collect();
        assert!(example.contains("[backup]"), "{example}");
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("opsloop.toml");
        std::fs::write(&file, &example).expect("write");
        let loaded = opsloop_core::config::load(&opsloop_core::config::ConfigSources {
            file: Some(file),
            use_default_file: false,
            env: Some(Default::default()),
        })
        .expect("loads");
        let mut settings: BackupSettings = loaded.section("backup").expect("backup section");
        if !crate::crypt::AVAILABLE {
            // The example encrypts; a binary without age says so.
            let err = BackupConfig::new(settings.clone(), "sqlite://x.db").expect_err("no age");
            assert!(err.to_string().contains("--features age"), "{err}");
            settings.encryption.recipients.clear();
        }
        let config = BackupConfig::new(settings, "sqlite://x.db").expect("valid");
        assert_eq!(config.targets.len(), 2);
        assert_eq!(config.targets[1].kind, TargetKind::Directory);
        assert_eq!(config.settings.store, StoreKind::Local);
        assert_eq!(config.settings.s3.bucket, "opsloop-backups");
        assert_eq!(config.settings.s3.prefix, "prod");
        assert_eq!(
            config.settings.retention.keep_within.map(|w| w.days),
            Some(2)
        );
    }

    #[test]
    fn bad_values_name_their_key() {
        type Change = Box<dyn Fn(&mut BackupSettings)>;
        let table: Vec<(&str, Change)> = vec![
            (
                "backup.timezone",
                Box::new(|s| s.timezone = "Mars/Olympus".into()),
            ),
            (
                "backup.schedule",
                Box::new(|s| s.schedule = "every day".into()),
            ),
            (
                "backup.compression_level",
                Box::new(|s| s.compression_level = 40),
            ),
            (
                // Built without age, any recipient is refused as a whole.
                if crate::crypt::AVAILABLE {
                    "backup.encryption.recipients[1]"
                } else {
                    "backup.encryption.recipients"
                },
                Box::new(|s| {
                    s.encryption.recipients = vec![
                        "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p".into(),
                        "AGE-SECRET-KEY-1QQQ".into(),
                    ]
                }),
            ),
            (
                "backup.targets[0].url",
                Box::new(|s| {
                    s.targets = vec![TargetSettings {
                        name: "x".into(),
                        url: "mysql://db".into(),
                        password_secret: None,
                        ..Default::default()
                    }]
                }),
            ),
            (
                "backup.directories[0].paths",
                Box::new(|s| {
                    s.directories = vec![DirectorySetSettings {
                        name: "files".into(),
                        paths: vec![],
                    }]
                }),
            ),
            (
                "backup.directories[0].name",
                Box::new(|s| {
                    s.directories = vec![DirectorySetSettings {
                        name: "opsloop".into(),
                        paths: vec![PathBuf::from("var/logs")],
                    }]
                }),
            ),
            (
                "backup.targets[0].name",
                Box::new(|s| {
                    s.targets = vec![TargetSettings {
                        name: "../etc".into(),
                        url: "sqlite://x.db".into(),
                        password_secret: None,
                        ..Default::default()
                    }]
                }),
            ),
        ];
        for (key, change) in table {
            let mut settings = BackupSettings::default();
            change(&mut settings);
            let err = BackupConfig::new(settings, "sqlite://x.db").expect_err(key);
            assert!(err.to_string().contains(key), "{err} should name {key}");
        }
    }

    #[cfg(not(feature = "age"))]
    #[test]
    fn recipients_without_the_age_feature_name_the_feature() {
        let mut settings = BackupSettings::default();
        settings.encryption.recipients =
            vec!["age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p".into()];
        let err = BackupConfig::new(settings, "sqlite://x.db").expect_err("refused");
        let text = err.to_string();
        assert!(text.contains("backup.encryption.recipients"), "{text}");
        assert!(text.contains("--features age"), "{text}");
    }

    fn load(toml: &str) -> Result<BackupConfig, String> {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("opsloop.toml");
        std::fs::write(&file, toml).expect("write");
        let loaded = opsloop_core::config::load(&opsloop_core::config::ConfigSources {
            file: Some(file),
            use_default_file: false,
            env: Some(Default::default()),
        })
        .map_err(|e| e.to_string())?;
        let settings: BackupSettings = loaded.section("backup").map_err(|e| e.to_string())?;
        BackupConfig::new(settings, "sqlite://x.db").map_err(|e| e.to_string())
    }

    #[test]
    fn an_s3_store_needs_a_bucket() {
        let err = load("[backup]\nstore = \"s3\"\n[backup.s3]\nregion = \"eu-central-1\"\n")
            .expect_err("no bucket");
        assert!(err.contains("backup.s3.bucket"), "{err}");
        let err = load("[backup]\nstore = \"s3\"\n").expect_err("no table");
        assert!(err.contains("backup.s3.bucket"), "{err}");

        let config = load(
            "[backup]\nstore = \"s3\"\n[backup.s3]\nendpoint = \"http://127.0.0.1:9000\"\nallow_http = true\nbucket = \"b\"\nprefix = \"opsloop/prod\"\n",
        )
        .expect("valid");
        assert_eq!(config.settings.store, StoreKind::S3);
        assert_eq!(config.settings.s3.region, "us-east-1");

        // A local store ignores an incomplete [backup.s3].
        load("[backup]\nstore = \"local\"\n[backup.s3]\nprefix = \"x\"\n").expect("local");
    }

    #[test]
    fn bad_s3_values_name_their_key() {
        type Change = Box<dyn Fn(&mut S3Settings)>;
        let table: Vec<(&str, Change)> = vec![
            ("backup.s3.region", Box::new(|s| s.region = String::new())),
            (
                "backup.s3.endpoint",
                Box::new(|s| s.endpoint = Some("http://minio:9000".into())),
            ),
            (
                "backup.s3.endpoint",
                Box::new(|s| s.endpoint = Some("minio:9000".into())),
            ),
            ("backup.s3.prefix", Box::new(|s| s.prefix = "a/../b".into())),
            ("backup.s3.part_size_mib", Box::new(|s| s.part_size_mib = 1)),
        ];
        for (key, change) in table {
            let mut settings = BackupSettings {
                store: StoreKind::S3,
                ..BackupSettings::default()
            };
            settings.s3.bucket = "b".into();
            change(&mut settings.s3);
            let err = BackupConfig::new(settings, "sqlite://x.db").expect_err(key);
            assert!(err.to_string().contains(key), "{err} should name {key}");
        }
    }
}
