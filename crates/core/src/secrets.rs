//! Secrets: where they come from (systemd credentials, compose secrets, the
//! environment — in that order) and a `Secret` type that never prints itself.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize, Serializer};

/// A secret value. Debug, Display and serde output are redacted; the value is
/// only reachable through [`Secret::expose`], which makes every use greppable.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The raw value. Call only where the value is handed to its consumer
    /// (an HTTP client, a connection string), never for logging.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

const REDACTED: &str = "[redacted]";

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(REDACTED)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("secret {name}: cannot read {path}: {source}")]
    Unreadable {
        name: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("secret {name}: invalid name (use lowercase letters, digits and '_')")]
    InvalidName { name: String },
}

/// Looks secrets up by name: `$CREDENTIALS_DIRECTORY/<name>` (systemd
/// `LoadCredential=`), then `<run_secrets_dir>/<name>` (compose, default
/// `/run/secrets`), then the environment variable `OPSLOOP_<NAME>`.
#[derive(Debug, Clone)]
pub struct SecretStore {
    credentials_dir: Option<PathBuf>,
    run_secrets_dir: PathBuf,
    env: Option<Vec<(String, String)>>,
}

impl Default for SecretStore {
    fn default() -> Self {
        Self::from_process()
    }
}

impl SecretStore {
    /// The store as the process sees it: `CREDENTIALS_DIRECTORY` from the
    /// environment, `/run/secrets`, and the process environment.
    pub fn from_process() -> Self {
        Self {
            credentials_dir: std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from),
            run_secrets_dir: PathBuf::from("/run/secrets"),
            env: None,
        }
    }

    /// A store with explicit sources, for tests and tools.
    pub fn with_sources(
        credentials_dir: Option<&Path>,
        run_secrets_dir: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Self {
        Self {
            credentials_dir: credentials_dir.map(Path::to_path_buf),
            run_secrets_dir: run_secrets_dir.to_path_buf(),
            env: Some(env.into_iter().collect()),
        }
    }

    /// The environment variable a secret is read from, e.g. `admin_token` →
    /// `OPSLOOP_ADMIN_TOKEN`.
    pub fn env_name(name: &str) -> String {
        format!("OPSLOOP_{}", name.to_ascii_uppercase())
    }

    /// Reads a secret; `Ok(None)` when no source has it. File contents are
    /// trimmed of one trailing newline (as `echo` writes it).
    pub fn get(&self, name: &str) -> Result<Option<Secret>, SecretError> {
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        {
            return Err(SecretError::InvalidName {
                name: name.to_owned(),
            });
        }
        let dirs = self
            .credentials_dir
            .iter()
            .chain(std::iter::once(&self.run_secrets_dir));
        for dir in dirs {
            let path = dir.join(name);
            match std::fs::read_to_string(&path) {
                Ok(value) => {
                    let value = value.strip_suffix('\n').unwrap_or(&value);
                    let value = value.strip_suffix('\r').unwrap_or(value);
                    // An empty file is a placeholder (e.g. a compose secret
                    // not filled in yet): the secret is not set.
                    if value.is_empty() {
                        return Ok(None);
                    }
                    return Ok(Some(Secret::new(value)));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                // A directory we may not list (e.g. /run/secrets owned by root)
                // holds nothing for us; any other error is the operator's to fix.
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied && !path.exists() => {
                    continue;
                }
                Err(source) => {
                    return Err(SecretError::Unreadable {
                        name: name.to_owned(),
                        path,
                        source,
                    });
                }
            }
        }
        let var = Self::env_name(name);
        let value = match &self.env {
            Some(env) => env.iter().find(|(k, _)| *k == var).map(|(_, v)| v.clone()),
            None => std::env::var(&var).ok(),
        };
        Ok(value.filter(|v| !v.is_empty()).map(Secret::new))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_never_prints_its_value() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "[redacted]");
        assert_eq!(format!("{s}"), "[redacted]");
        assert_eq!(
            serde_json::to_string(&s).expect("serialize"),
            "\"[redacted]\""
        );
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn credentials_dir_wins_over_run_secrets_wins_over_env() {
        let creds = tempfile::tempdir().expect("tempdir");
        let run = tempfile::tempdir().expect("tempdir");
        let env = vec![("OPSLOOP_ADMIN_TOKEN".to_owned(), "from-env".to_owned())];
        let store = SecretStore::with_sources(Some(creds.path()), run.path(), env.clone());
        assert_eq!(
            store
                .get("admin_token")
                .expect("read")
                .map(|s| s.expose().to_owned()),
            Some("from-env".into())
        );
        std::fs::write(run.path().join("admin_token"), "from-run\n").expect("write");
        assert_eq!(
            store
                .get("admin_token")
                .expect("read")
                .map(|s| s.expose().to_owned()),
            Some("from-run".into())
        );
        std::fs::write(creds.path().join("admin_token"), "from-creds").expect("write");
        assert_eq!(
            store
                .get("admin_token")
                .expect("read")
                .map(|s| s.expose().to_owned()),
            Some("from-creds".into())
        );
        assert!(store.get("agent_token").expect("read").is_none());
        std::fs::write(run.path().join("slack_webhook_url"), "\n").expect("write");
        assert!(
            store.get("slack_webhook_url").expect("read").is_none(),
            "an empty file is not a secret"
        );
        assert!(store.get("../etc/passwd").is_err());
    }
}
