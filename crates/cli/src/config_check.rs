//! `opsloop config check [--daemon X]`: loads and validates the configuration
//! exactly as a daemon does before any I/O (the same
//! [`opsloop_core::config::load`] and [`opsloop_core::daemon::preflight`]
//! with the daemon's own `check_config`), then prints the effective
//! configuration — defaults, file and environment layered — with secrets
//! redacted, and warns where a secret is written in clear.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use opsloop_core::config::{ConfigSources, LoadedConfig};
use opsloop_core::secrets::SecretStore;
use serde_json::{Map, Value};

use crate::output::OutputFormat;

/// The daemons whose configuration `config check` validates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CheckedDaemon {
    /// `opsloop-api` (`[api]`).
    Api,
    /// `opsloop-alerter` (`[alerter]`).
    Alerter,
    /// `opsloop-heartbeat-worker` (`[heartbeat]`).
    Heartbeat,
    /// `opsloop-backup-agent` (`[backup]`).
    BackupAgent,
}

impl CheckedDaemon {
    /// Every daemon, in the order `config check` without `--daemon` checks them.
    pub const ALL: [CheckedDaemon; 4] = [
        CheckedDaemon::Api,
        CheckedDaemon::Alerter,
        CheckedDaemon::Heartbeat,
        CheckedDaemon::BackupAgent,
    ];

    /// The daemon's service name.
    pub fn name(self) -> &'static str {
        match self {
            CheckedDaemon::Api => opsloop_api::SERVICE,
            CheckedDaemon::Alerter => opsloop_alerter::SERVICE,
            CheckedDaemon::Heartbeat => opsloop_heartbeat_worker::SERVICE,
            CheckedDaemon::BackupAgent => opsloop_backup_agent::SERVICE,
        }
    }

    /// The daemon's own config section.
    pub fn section(self) -> &'static str {
        match self {
            CheckedDaemon::Api => "api",
            CheckedDaemon::Alerter => "alerter",
            CheckedDaemon::Heartbeat => "heartbeat",
            CheckedDaemon::BackupAgent => "backup",
        }
    }

    /// The daemon's `check_config`, the one its `main` hands to
    /// [`opsloop_core::daemon::run`].
    fn check(self) -> opsloop_core::daemon::ConfigCheck {
        match self {
            CheckedDaemon::Api => opsloop_api::check_config,
            CheckedDaemon::Alerter => opsloop_alerter::config::check_config,
            CheckedDaemon::Heartbeat => opsloop_heartbeat_worker::config::check_config,
            CheckedDaemon::BackupAgent => opsloop_backup_agent::config::check_config,
        }
    }

    /// The daemon's section as it would run: parsed into its settings type
    /// (defaults filled in) and serialized back.
    fn effective_section(self, config: &LoadedConfig) -> anyhow::Result<Value> {
        let section = self.section();
        Ok(match self {
            CheckedDaemon::Api => {
                serde_json::to_value(config.section::<opsloop_api::ApiSettings>(section)?)?
            }
            CheckedDaemon::Alerter => {
                serde_json::to_value(config.section::<opsloop_alerter::AlerterSettings>(section)?)?
            }
            CheckedDaemon::Heartbeat => serde_json::to_value(
                config.section::<opsloop_heartbeat_worker::HeartbeatSettings>(section)?,
            )?,
            CheckedDaemon::BackupAgent => serde_json::to_value(
                config.section::<opsloop_backup_agent::BackupSettings>(section)?,
            )?,
        })
    }
}

/// `opsloop config`.
#[derive(Debug, clap::Subcommand)]
pub enum ConfigCommand {
    /// Load and validate the configuration as a daemon would, print the
    /// effective configuration (secrets redacted); exit 2 when it is invalid.
    Check(CheckArgs),
}

/// `opsloop config check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Check only this daemon's view (default: every daemon).
    #[arg(long, value_enum)]
    pub daemon: Option<CheckedDaemon>,
}

/// What checking one daemon's configuration found.
#[derive(Debug)]
pub struct Report {
    /// The daemon checked.
    pub daemon: CheckedDaemon,
    /// Why the daemon would refuse to start, or `None`.
    pub error: Option<String>,
    /// Warnings: the daemon's own (logged at start) and clear-text secrets.
    pub warnings: Vec<String>,
    /// The effective configuration the daemon would run with, redacted.
    pub effective: Option<Value>,
}

/// Checks the configuration from `sources` for `daemon`.
pub fn check(sources: &ConfigSources, secrets: &SecretStore, daemon: CheckedDaemon) -> Report {
    let config = match opsloop_core::config::load(sources) {
        Ok(config) => config,
        Err(error) => {
            return Report {
                daemon,
                error: Some(error.to_string()),
                warnings: Vec::new(),
                effective: None,
            };
        }
    };
    let mut warnings = match opsloop_core::daemon::preflight(&config, secrets, daemon.check()) {
        Ok(warnings) => warnings,
        Err(error) => {
            return Report {
                daemon,
                error: Some(format!("{error:#}").replace('\n', " ")),
                warnings: Vec::new(),
                effective: None,
            };
        }
    };
    let effective = match effective(&config, daemon) {
        Ok(value) => value,
        Err(error) => {
            return Report {
                daemon,
                error: Some(format!("{error:#}")),
                warnings,
                effective: None,
            };
        }
    };
    let defaults = opsloop_core::config::load(&ConfigSources::env_only(std::iter::empty::<(
        String,
        String,
    )>()))
    .ok()
    .and_then(|defaults| self::effective(&defaults, daemon).ok());
    warnings.extend(clear_text_secrets(&effective, defaults.as_ref(), ""));
    Report {
        daemon,
        error: None,
        warnings,
        effective: Some(redact(effective)),
    }
}

/// The common sections and the daemon's own, unredacted.
fn effective(config: &LoadedConfig, daemon: CheckedDaemon) -> anyhow::Result<Value> {
    let mut tree = match serde_json::to_value(&config.settings)? {
        Value::Object(map) => map,
        _ => Map::new(),
    };
    tree.insert(
        daemon.section().to_owned(),
        daemon.effective_section(config)?,
    );
    Ok(Value::Object(tree))
}

/// Keys whose value is a secret itself (redacted on output).
fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    !key.ends_with("_secret")
        && key != "secret"
        && ["password", "token", "api_key", "passphrase", "private_key"]
            .iter()
            .any(|word| key.contains(word))
        && !key.ends_with("_file")
        && !key.ends_with("_path")
}

/// Keys whose value names a secret (looked up by [`SecretStore`]) rather than
/// holding it.
fn is_secret_reference_key(key: &str) -> bool {
    key == "secret" || key.ends_with("_secret")
}

/// Whether `name` can be a secret's name (what [`SecretStore::get`] accepts).
fn is_secret_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// The password inside `scheme://user:password@host`, when there is one.
fn url_password(value: &str) -> Option<(usize, usize)> {
    let start = value.find("://")? + 3;
    let rest = &value[start..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let at = rest[..authority_end].rfind('@')?;
    let colon = rest[..at].find(':')?;
    (colon + 1 < at).then_some((start + colon + 1, start + at))
}

/// Warnings for secrets written in clear where a secret reference belongs:
/// a `*secret` key whose value is not a secret's name, and a URL carrying a
/// password. A value equal to the built-in default at the same place
/// (`defaults`, e.g. the local broker's `guest:guest`) is not the operator's
/// and draws no warning.
pub fn clear_text_secrets(value: &Value, defaults: Option<&Value>, path: &str) -> Vec<String> {
    let mut warnings = Vec::new();
    if defaults.is_some_and(|d| d == value) {
        return warnings;
    }
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                let child_path = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                if is_secret_reference_key(key)
                    && let Value::String(text) = child
                    && !is_secret_name(text)
                {
                    warnings.push(format!(
                        "{child_path}: looks like a secret written in clear; give the name of a secret (lowercase letters, digits, '_') and put the value in $CREDENTIALS_DIRECTORY/<name>, /run/secrets/<name> or $OPSLOOP_<NAME>"
                    ));
                    continue;
                }
                if is_secret_key(key)
                    && let Value::String(text) = child
                    && !text.is_empty()
                {
                    warnings.push(format!(
                        "{child_path}: a secret written in clear in the configuration; use a secret instead"
                    ));
                    continue;
                }
                let child_defaults = defaults.and_then(|d| d.get(key));
                warnings.extend(clear_text_secrets(child, child_defaults, &child_path));
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let item_defaults = defaults.and_then(|d| d.get(i));
                warnings.extend(clear_text_secrets(
                    item,
                    item_defaults,
                    &format!("{path}[{i}]"),
                ));
            }
        }
        Value::String(text) if url_password(text).is_some() => {
            let hint = match path {
                "database.url" => " (the secret database_url holds it out of the file)",
                "bus.url" => " (the secret amqp_url holds it out of the file)",
                _ => "",
            };
            warnings.push(format!(
                "{path}: the URL carries a password in clear; use a secret instead{hint}"
            ));
        }
        _ => {}
    }
    warnings
}

/// The tree with every secret value and URL password replaced by `***`.
pub fn redact(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(key, child)| {
                    let child = match child {
                        Value::String(text)
                            if (is_secret_key(&key) && !text.is_empty())
                                || (is_secret_reference_key(&key) && !is_secret_name(&text)) =>
                        {
                            Value::String("***".into())
                        }
                        other => redact(other),
                    };
                    (key, child)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(redact).collect()),
        Value::String(mut text) => {
            if let Some((start, end)) = url_password(&text) {
                text.replace_range(start..end, "***");
            }
            Value::String(text)
        }
        other => other,
    }
}

/// `key = value` lines for every leaf, keys dotted.
fn flatten(value: &Value, path: &str, lines: &mut Vec<String>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (key, child) in map {
                let child_path = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                flatten(child, &child_path, lines);
            }
        }
        other => lines.push(format!("{path} = {other}")),
    }
}

/// Runs `opsloop config check`; the exit code is 0 when every checked daemon
/// would start, 2 otherwise.
pub fn run(
    config: Option<PathBuf>,
    args: CheckArgs,
    output: OutputFormat,
) -> std::process::ExitCode {
    let sources = ConfigSources::from_process(config.as_deref());
    let secrets = SecretStore::from_process();
    let daemons: Vec<CheckedDaemon> = match args.daemon {
        Some(daemon) => vec![daemon],
        None => CheckedDaemon::ALL.to_vec(),
    };
    let reports: Vec<Report> = daemons
        .into_iter()
        .map(|daemon| check(&sources, &secrets, daemon))
        .collect();
    let failed = reports.iter().any(|r| r.error.is_some());
    for report in &reports {
        for warning in &report.warnings {
            eprintln!("warning: {}: {warning}", report.daemon.name());
        }
        if let Some(error) = &report.error {
            eprintln!("{}: {error}", report.daemon.name());
        }
    }
    match output {
        OutputFormat::Json => {
            let documents: Vec<Value> = reports
                .iter()
                .map(|r| {
                    serde_json::json!({
                        "daemon": r.daemon.name(),
                        "ok": r.error.is_none(),
                        "error": r.error,
                        "warnings": r.warnings,
                        "effective": r.effective,
                    })
                })
                .collect();
            crate::outln!("{}", Value::Array(documents));
        }
        OutputFormat::Table => {
            for report in &reports {
                let verdict = if report.error.is_some() {
                    "INVALID"
                } else {
                    "ok"
                };
                crate::outln!("# {}: {verdict}", report.daemon.name());
                if let Some(effective) = &report.effective {
                    let mut lines = Vec::new();
                    flatten(effective, "", &mut lines);
                    for line in lines {
                        crate::outln!("{line}");
                    }
                }
                crate::outln!();
            }
        }
    }
    if failed {
        std::process::ExitCode::from(crate::exit::USAGE)
    } else {
        std::process::ExitCode::SUCCESS
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn url_passwords_are_found_and_redacted() {
        assert_eq!(
            redact(json!({"database": {"url": "postgres://opsloop:hunter2@db:5432/opsloop"}})),
            json!({"database": {"url": "postgres://opsloop:***@db:5432/opsloop"}})
        );
        assert!(url_password("postgres://opsloop@db/opsloop").is_none());
        assert!(url_password("sqlite:var/opsloop.db").is_none());
        assert!(url_password("https://example.com/a:b@c").is_none());
    }

    #[test]
    fn clear_text_secrets_warn_and_references_do_not() {
        let tree = json!({
            "database": {"url": "postgres://u:p@h/d"},
            "alerter": {"receivers": [
                {"name": "ok", "secret": "slack_webhook"},
                {"name": "bad", "secret": "https://hooks.slack.com/services/T/B/x"}
            ]},
            "backup": {"targets": [{"password_secret": "db_password", "s3": {"token": "abc"}}]}
        });
        let warnings = clear_text_secrets(&tree, None, "");
        assert_eq!(warnings.len(), 3, "{warnings:#?}");
        assert!(
            warnings[0]
                .starts_with("alerter.receivers[1].secret: looks like a secret written in clear")
        );
        assert!(warnings[1].starts_with("backup.targets[0].s3.token: a secret written in clear"));
        assert!(warnings[2].starts_with("database.url: the URL carries a password in clear"));
        // The same password as the built-in default is not the operator's.
        let defaults = json!({"database": {"url": "postgres://u:p@h/d"}});
        assert_eq!(clear_text_secrets(&tree, Some(&defaults), "").len(), 2);
        let redacted = redact(tree);
        assert_eq!(
            redacted["alerter"]["receivers"][0]["secret"],
            "slack_webhook"
        );
        assert_eq!(redacted["alerter"]["receivers"][1]["secret"], "***");
        assert_eq!(redacted["backup"]["targets"][0]["s3"]["token"], "***");
        assert_eq!(
            redacted["backup"]["targets"][0]["password_secret"],
            "db_password"
        );
    }
}
