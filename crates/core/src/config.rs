//! Configuration: defaults, then a TOML file, then `OPSLOOP__SECTION__KEY`
//! environment variables. Common sections live in [`Settings`]; each daemon
//! reads its own section with [`LoadedConfig::section`]. A bad value fails at
//! start with one line naming the key.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The default config file, read when present and no `--config` was given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/opsloop/opsloop.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
    #[error("invalid configuration: {key}: {reason}")]
    Key { key: String, reason: String },
}

impl ConfigError {
    fn key(key: &str, reason: impl Into<String>) -> Self {
        Self::Key {
            key: key.to_owned(),
            reason: reason.into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseSettings {
    /// `postgres://user@host:port/db` or `sqlite://path?mode=rwc`. The secret
    /// `database_url` overrides it (use that when the URL holds a password).
    pub url: String,
    pub max_connections: u32,
    pub min_connections: u32,
    pub connect_timeout_ms: u64,
    pub acquire_timeout_ms: u64,
    /// Apply pending migrations when a daemon starts.
    pub migrate_on_start: bool,
    /// How long a starting daemon keeps retrying an unreachable PostgreSQL
    /// (capped backoff, one warning per attempt) before it exits; 0 exits at
    /// the first failure. A rejected login or a bad URL exits at once.
    pub start_wait_secs: u64,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: "sqlite://var/opsloop.db?mode=rwc".into(),
            max_connections: 10,
            min_connections: 1,
            connect_timeout_ms: 5_000,
            acquire_timeout_ms: 5_000,
            migrate_on_start: true,
            start_wait_secs: 600,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BusKind {
    /// In-process bus: the embedded default, one process only.
    Memory,
    /// RabbitMQ over AMQP 0-9-1.
    Rabbitmq,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BusSettings {
    pub kind: BusKind,
    /// AMQP URL; the secret `amqp_url` overrides it.
    pub url: String,
    pub exchange: String,
    pub dead_letter_exchange: String,
    /// Unacknowledged deliveries a consumer holds at once.
    pub prefetch: u16,
    /// How long a publish waits (for a reconnect and the broker's confirm)
    /// before it reports failure to the caller.
    pub publish_timeout_ms: u64,
    /// Cap of the exponential reconnect backoff.
    pub reconnect_max_backoff_ms: u64,
    /// `quorum` (replicated, the production default) or `classic`.
    pub queue_type: QueueType,
    /// Delete a queue after this long without consumers (`x-expires`);
    /// unset in production, set by tests so their queues clean themselves up.
    pub queue_expires_ms: Option<u64>,
    /// CA bundle trusted for `amqps://` besides the system roots: set from
    /// `tls.ca_file`, not a key of its own.
    #[serde(skip)]
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum QueueType {
    Quorum,
    Classic,
}

impl Default for BusSettings {
    fn default() -> Self {
        Self {
            kind: BusKind::Memory,
            url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            exchange: "opsloop.events".into(),
            dead_letter_exchange: "opsloop.dlx".into(),
            prefetch: 64,
            publish_timeout_ms: 30_000,
            reconnect_max_backoff_ms: 10_000,
            queue_type: QueueType::Quorum,
            queue_expires_ms: None,
            ca_file: None,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Pretty,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetrySettings {
    /// An `EnvFilter` directive; `RUST_LOG` wins when set.
    pub log_level: String,
    pub log_format: LogFormat,
    /// OTLP gRPC endpoint; `OTEL_EXPORTER_OTLP_ENDPOINT` wins when set.
    pub otlp_endpoint: Option<String>,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        Self {
            log_level: "info".into(),
            log_format: LogFormat::Json,
            otlp_endpoint: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownSettings {
    /// How long in-flight work may take to finish after SIGTERM.
    pub drain_timeout_ms: u64,
}

impl Default for ShutdownSettings {
    fn default() -> Self {
        Self {
            drain_timeout_ms: 10_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuditSettings {
    /// JSON-lines audit log; rotated by size.
    pub log_path: PathBuf,
    /// Rotate when the file reaches this size (`AUDIT_LOG_MAX_BYTES` wins).
    pub max_bytes: u64,
    /// Rotated generations kept (`AUDIT_LOG_RETENTION` wins).
    pub retention: u32,
}

impl Default for AuditSettings {
    fn default() -> Self {
        Self {
            log_path: PathBuf::from("var/logs/audit_events.jsonl"),
            max_bytes: 10 * 1024 * 1024,
            retention: 5,
        }
    }
}

/// TLS of the daemon's listeners and the CA its clients trust. A daemon
/// serves TLS once it has a certificate: `cert_file`/`key_file`, else the
/// secrets `tls_cert`/`tls_key` (PEM contents, e.g. systemd
/// `LoadCredential=tls_key:…`). Both are re-read on SIGHUP and every
/// `reload_interval_ms`; a new connection gets the new certificate, open
/// ones keep theirs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSettings {
    /// PEM certificate chain (leaf first).
    pub cert_file: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
    /// PEM CA bundle: when set, clients must present a certificate it
    /// signed (mutual TLS).
    pub client_ca_file: Option<PathBuf>,
    /// Serve the gRPC port over TLS (when a certificate is configured).
    pub grpc: bool,
    /// Serve the HTTP port (health, readiness, metrics, the daemon's HTTP
    /// API) over TLS (when a certificate is configured).
    pub http: bool,
    /// PEM CA bundle trusted, besides the system roots, by this daemon's
    /// outgoing TLS connections (`amqps://`, `https://`).
    pub ca_file: Option<PathBuf>,
    /// How often the certificate files are checked for a change.
    pub reload_interval_ms: u64,
}

impl Default for TlsSettings {
    fn default() -> Self {
        Self {
            cert_file: None,
            key_file: None,
            client_ca_file: None,
            grpc: true,
            http: true,
            ca_file: None,
            reload_interval_ms: 10_000,
        }
    }
}

/// The sections every daemon reads.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Settings {
    /// Deployment name, stamped on every log line (e.g. `production`).
    pub environment: String,
    /// With `environment = "production"`, start even on the embedded
    /// defaults (SQLite, in-process bus) or without tokens; logs a warning
    /// at every start.
    pub allow_insecure_defaults: bool,
    pub database: DatabaseSettings,
    pub bus: BusSettings,
    pub telemetry: TelemetrySettings,
    pub shutdown: ShutdownSettings,
    pub audit: AuditSettings,
    pub tls: TlsSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            environment: "development".into(),
            allow_insecure_defaults: false,
            database: DatabaseSettings::default(),
            bus: BusSettings::default(),
            telemetry: TelemetrySettings::default(),
            shutdown: ShutdownSettings::default(),
            audit: AuditSettings::default(),
            tls: TlsSettings::default(),
        }
    }
}

/// Top-level keys of [`Settings`].
pub const COMMON_KEYS: &[&str] = &[
    "environment",
    "allow_insecure_defaults",
    "database",
    "bus",
    "telemetry",
    "shutdown",
    "audit",
    "tls",
];

/// The daemons' own sections. One config file may serve every daemon, so
/// each accepts the others' sections (it validates only its own); any other
/// top-level key is a typo and an error.
pub const DAEMON_SECTIONS: &[&str] = &["api", "heartbeat", "alerter", "backup"];

/// Why a production deployment refuses to start, or `None`.
pub fn insecure_production_defaults(settings: &Settings, has_tokens: bool) -> Option<String> {
    if settings.environment != "production" {
        return None;
    }
    let mut found = Vec::new();
    if settings.database.url.starts_with("sqlite:") {
        found.push("the embedded SQLite database (set database.url or the secret database_url)");
    }
    if settings.bus.kind == BusKind::Memory {
        found.push("the in-process bus (set bus.kind = \"rabbitmq\")");
    }
    if !has_tokens {
        found.push(
            "no tokens (set the secrets admin_token and agent_token, or create named ones with `opsloop token create`)",
        );
    }
    (!found.is_empty()).then(|| found.join("; "))
}

impl Settings {
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_millis(self.shutdown.drain_timeout_ms)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let url = &self.database.url;
        if !(url.starts_with("postgres://")
            || url.starts_with("postgresql://")
            || url.starts_with("sqlite:"))
        {
            return Err(ConfigError::key(
                "database.url",
                "must start with postgres:// or sqlite:",
            ));
        }
        if self.database.max_connections == 0 {
            return Err(ConfigError::key(
                "database.max_connections",
                "must be at least 1",
            ));
        }
        if self.database.min_connections > self.database.max_connections {
            return Err(ConfigError::key(
                "database.min_connections",
                "must not exceed database.max_connections",
            ));
        }
        if self.bus.kind == BusKind::Rabbitmq
            && !(self.bus.url.starts_with("amqp://") || self.bus.url.starts_with("amqps://"))
        {
            return Err(ConfigError::key(
                "bus.url",
                "must start with amqp:// or amqps://",
            ));
        }
        if self.bus.exchange.is_empty() || self.bus.dead_letter_exchange.is_empty() {
            return Err(ConfigError::key("bus.exchange", "must not be empty"));
        }
        if self.bus.prefetch == 0 {
            return Err(ConfigError::key("bus.prefetch", "must be at least 1"));
        }
        if self.tls.cert_file.is_some() != self.tls.key_file.is_some() {
            return Err(ConfigError::key(
                "tls.cert_file",
                "tls.cert_file and tls.key_file go together: set both or neither",
            ));
        }
        if self.tls.reload_interval_ms == 0 {
            return Err(ConfigError::key(
                "tls.reload_interval_ms",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

/// Where configuration comes from. [`ConfigSources::from_process`] is what
/// daemons use; tests pass an explicit environment.
#[derive(Debug, Clone, Default)]
pub struct ConfigSources {
    /// An explicit `--config` file: must exist.
    pub file: Option<PathBuf>,
    /// Read `/etc/opsloop/opsloop.toml` when present and `file` is `None`.
    pub use_default_file: bool,
    /// Environment variables; `None` means the process environment.
    pub env: Option<HashMap<String, String>>,
}

impl ConfigSources {
    /// Defaults plus exactly these environment variables: no file, not the
    /// process environment. What tests and tools that embed a daemon use.
    pub fn env_only<K: Into<String>, V: Into<String>>(
        vars: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Self {
            file: None,
            use_default_file: false,
            env: Some(
                vars.into_iter()
                    .map(|(k, v)| (k.into(), v.into()))
                    .collect(),
            ),
        }
    }

    pub fn from_process(file: Option<&Path>) -> Self {
        Self {
            file: file.map(Path::to_path_buf),
            use_default_file: true,
            env: None,
        }
    }
}

/// Configuration after layering: the common [`Settings`] plus the raw tree
/// daemons read their own sections from.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    pub settings: Settings,
    raw: config::Config,
}

impl LoadedConfig {
    /// Reads a daemon's own section (e.g. `"alerter"`); a missing section
    /// yields the type's defaults.
    pub fn section<T: DeserializeOwned + Default>(&self, key: &str) -> Result<T, ConfigError> {
        let value = match self.raw.get::<config::Value>(key) {
            Ok(value) => value,
            Err(config::ConfigError::NotFound(_)) => return Ok(T::default()),
            Err(e) => return Err(describe(e)),
        };
        value.try_deserialize().map_err(|e| match describe(e) {
            ConfigError::Key { key: field, reason } => ConfigError::Key {
                key: format!("{key}.{field}"),
                reason,
            },
            ConfigError::Invalid(reason) => name_unknown_field(key, reason),
            other => other,
        })
    }
}

/// Layers defaults, the TOML file and the environment, and validates.
pub fn load(sources: &ConfigSources) -> Result<LoadedConfig, ConfigError> {
    let defaults = config::Config::try_from(&Settings::default())
        .map_err(|e| ConfigError::Invalid(format!("defaults: {e}")))?;
    let mut builder = config::Config::builder().add_source(defaults);

    let file = match &sources.file {
        Some(path) => {
            if !path.exists() {
                return Err(ConfigError::File {
                    path: path.clone(),
                    reason: "not found (check --config)".into(),
                });
            }
            Some(path.clone())
        }
        None if sources.use_default_file && Path::new(DEFAULT_CONFIG_PATH).exists() => {
            Some(PathBuf::from(DEFAULT_CONFIG_PATH))
        }
        None => None,
    };
    if let Some(path) = &file {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        builder = builder.add_source(config::File::from_str(&text, config::FileFormat::Toml));
    }

    let env_source = config::Environment::with_prefix("OPSLOOP")
        .prefix_separator("__")
        .separator("__")
        .try_parsing(true)
        .source(sources.env.clone());
    builder = builder.add_source(env_source);

    let raw = builder.build().map_err(|e| match (&file, e) {
        (Some(path), config::ConfigError::FileParse { cause, .. }) => ConfigError::File {
            path: path.clone(),
            reason: cause.to_string(),
        },
        (_, e) => describe(e),
    })?;
    check_top_level_keys(&raw)?;
    let mut settings: Settings = raw.clone().try_deserialize().map_err(describe)?;

    let env_value = |name: &str| -> Option<String> {
        match &sources.env {
            Some(env) => env.get(name).cloned(),
            None => std::env::var(name).ok(),
        }
    };
    if let Some(endpoint) = env_value("OTEL_EXPORTER_OTLP_ENDPOINT").filter(|v| !v.is_empty()) {
        settings.telemetry.otlp_endpoint = Some(endpoint);
    }
    if let Some(v) = env_value("AUDIT_LOG_MAX_BYTES") {
        settings.audit.max_bytes = v.parse().map_err(|_| {
            ConfigError::key("AUDIT_LOG_MAX_BYTES", "must be a whole number of bytes")
        })?;
    }
    if let Some(v) = env_value("AUDIT_LOG_RETENTION") {
        settings.audit.retention = v.parse().map_err(|_| {
            ConfigError::key(
                "AUDIT_LOG_RETENTION",
                "must be a whole number of generations",
            )
        })?;
    }
    settings.bus.ca_file = settings.tls.ca_file.clone();
    settings.validate()?;
    Ok(LoadedConfig { settings, raw })
}

/// Refuses a top-level key no daemon reads (`[databse]`), naming the key and
/// what is accepted.
fn check_top_level_keys(raw: &config::Config) -> Result<(), ConfigError> {
    let table = raw
        .clone()
        .try_deserialize::<HashMap<String, config::Value>>()
        .map_err(describe)?;
    let mut unknown: Vec<&String> = table
        .keys()
        .filter(|k| !COMMON_KEYS.contains(&k.as_str()) && !DAEMON_SECTIONS.contains(&k.as_str()))
        .collect();
    unknown.sort();
    match unknown.first() {
        None => Ok(()),
        Some(key) => Err(ConfigError::key(
            key,
            format!(
                "unknown setting; accepted at the top level: {}, and the sections [{}]",
                COMMON_KEYS.join(", "),
                DAEMON_SECTIONS.join("], [")
            ),
        )),
    }
}

/// serde's "unknown field `x`, expected one of …" under `section`, as the
/// key `section.x`.
fn name_unknown_field(section: &str, reason: String) -> ConfigError {
    let field = reason
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split('`').next())
        .map(str::to_owned);
    match field {
        Some(field) => ConfigError::Key {
            key: format!("{section}.{field}"),
            reason: match reason.split_once(", ") {
                Some((_, expected)) => format!("unknown setting; {expected}"),
                None => "unknown setting".to_owned(),
            },
        },
        None => ConfigError::Key {
            key: section.to_owned(),
            reason,
        },
    }
}

/// Turns the config crate's error into one line that names the key.
fn describe(e: config::ConfigError) -> ConfigError {
    match e {
        config::ConfigError::Type {
            key: Some(key),
            unexpected,
            expected,
            ..
        } => ConfigError::key(&key, format!("expected {expected}, got {unexpected}")),
        config::ConfigError::At {
            error,
            key: Some(key),
            ..
        } => name_unknown_field(&key, error.to_string()),
        other => ConfigError::Invalid(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources(file: Option<&Path>, env: &[(&str, &str)]) -> ConfigSources {
        ConfigSources {
            file: file.map(Path::to_path_buf),
            use_default_file: false,
            env: Some(
                env.iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            ),
        }
    }

    #[test]
    fn defaults_then_file_then_env() {
        let loaded = load(&sources(None, &[])).expect("defaults load");
        assert_eq!(loaded.settings, Settings::default());

        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("opsloop.toml");
        std::fs::write(
            &path,
            "environment = \"staging\"\n[database]\nmax_connections = 7\nurl = \"postgres://postgres@db/opsloop\"\n[bus]\nprefetch = 5\n",
        )
        .expect("write");
        let loaded = load(&sources(Some(&path), &[])).expect("file load");
        assert_eq!(loaded.settings.environment, "staging");
        assert_eq!(loaded.settings.database.max_connections, 7);
        assert_eq!(loaded.settings.bus.prefetch, 5);

        let loaded = load(&sources(
            Some(&path),
            &[
                ("OPSLOOP__DATABASE__MAX_CONNECTIONS", "9"),
                ("OPSLOOP__ENVIRONMENT", "production"),
                ("OPSLOOP__BUS__KIND", "rabbitmq"),
            ],
        ))
        .expect("env load");
        assert_eq!(loaded.settings.environment, "production");
        assert_eq!(loaded.settings.database.max_connections, 9);
        assert_eq!(loaded.settings.bus.kind, BusKind::Rabbitmq);
        assert_eq!(loaded.settings.bus.prefetch, 5, "file value kept");
    }

    #[test]
    fn bad_value_names_the_key() {
        let err = load(&sources(
            None,
            &[("OPSLOOP__DATABASE__MAX_CONNECTIONS", "many")],
        ))
        .expect_err("must fail");
        let line = err.to_string();
        assert!(line.contains("database.max_connections"), "{line}");
        assert!(!line.contains('\n'));

        let err = load(&sources(None, &[("OPSLOOP__DATABASE__URL", "mysql://x")]))
            .expect_err("must fail");
        assert!(err.to_string().contains("database.url"), "{err}");

        let err = load(&sources(None, &[("OPSLOOP__BUS__KIND", "kafka")])).expect_err("must fail");
        assert!(err.to_string().contains("bus.kind"), "{err}");
    }

    #[test]
    fn broken_file_and_unknown_key_are_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("broken.toml");
        std::fs::write(&path, "[database\nurl = 1").expect("write");
        let err = load(&sources(Some(&path), &[])).expect_err("must fail");
        assert!(err.to_string().contains("broken.toml"), "{err}");

        std::fs::write(&path, "[database]\nmax_conections = 3\n").expect("write");
        let err = load(&sources(Some(&path), &[])).expect_err("typo must fail");
        assert!(err.to_string().contains("max_conections"), "{err}");

        let missing = dir.path().join("nope.toml");
        let err = load(&sources(Some(&missing), &[])).expect_err("missing must fail");
        assert!(err.to_string().contains("nope.toml"), "{err}");
    }

    #[test]
    fn unknown_top_level_keys_are_refused_by_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("typo.toml");
        std::fs::write(&path, "[databse]\nurl = \"postgres://x@y/z\"\n").expect("write");
        let err = load(&sources(Some(&path), &[])).expect_err("typo must fail");
        let line = err.to_string();
        assert!(
            line.starts_with("invalid configuration: databse:"),
            "{line}"
        );
        assert!(
            line.contains("[alerter]") && line.contains("database"),
            "{line}"
        );
        let err = load(&sources(None, &[("OPSLOOP__ENVIRONMNT", "production")]))
            .expect_err("env typo must fail");
        assert!(err.to_string().contains("environmnt"), "{err}");
        // Every daemon's section is accepted by every daemon.
        load(&sources(
            None,
            &[
                ("OPSLOOP__API__GRPC_ADDR", "127.0.0.1:1"),
                ("OPSLOOP__BACKUP__SCHEDULE", "x"),
                ("OPSLOOP__TLS__HTTP", "false"),
            ],
        ))
        .expect("known sections load");
    }

    #[test]
    fn production_names_each_insecure_default() {
        let mut settings = Settings {
            environment: "production".into(),
            ..Settings::default()
        };
        let reason = insecure_production_defaults(&settings, false).expect("insecure");
        assert!(
            reason.contains("SQLite")
                && reason.contains("in-process bus")
                && reason.contains("no tokens"),
            "{reason}"
        );
        settings.database.url = "postgres://db/opsloop".into();
        settings.bus.kind = BusKind::Rabbitmq;
        assert_eq!(insecure_production_defaults(&settings, true), None);
        let reason = insecure_production_defaults(&settings, false).expect("no tokens");
        assert!(!reason.contains("SQLite"), "{reason}");
        settings.environment = "staging".into();
        assert_eq!(insecure_production_defaults(&settings, false), None);
    }

    #[test]
    fn tls_cert_and_key_go_together() {
        let err = load(&sources(None, &[("OPSLOOP__TLS__CERT_FILE", "/x.pem")])).expect_err("half");
        assert!(err.to_string().contains("tls.cert_file"), "{err}");
        let loaded = load(&sources(
            None,
            &[
                ("OPSLOOP__TLS__CERT_FILE", "/x.pem"),
                ("OPSLOOP__TLS__KEY_FILE", "/x.key"),
                ("OPSLOOP__TLS__HTTP", "false"),
            ],
        ))
        .expect("both");
        assert!(!loaded.settings.tls.http && loaded.settings.tls.grpc);
    }

    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    struct DaemonSection {
        grpc_addr: String,
        interval_secs: u64,
    }

    #[test]
    fn daemon_sections_read_from_the_same_layers() {
        let loaded = load(&sources(
            None,
            &[
                ("OPSLOOP__API__GRPC_ADDR", "0.0.0.0:1"),
                ("OPSLOOP__API__INTERVAL_SECS", "3"),
            ],
        ))
        .expect("load");
        let section: DaemonSection = loaded.section("api").expect("section");
        assert_eq!(section.grpc_addr, "0.0.0.0:1");
        assert_eq!(section.interval_secs, 3);
        let missing: DaemonSection = loaded.section("absent").expect("defaults");
        assert_eq!(missing, DaemonSection::default());
        let bad = load(&sources(None, &[("OPSLOOP__API__INTERVAL_SECS", "soon")])).expect("load");
        let err = bad.section::<DaemonSection>("api").expect_err("bad value");
        assert!(err.to_string().contains("interval_secs"), "{err}");
    }
}
