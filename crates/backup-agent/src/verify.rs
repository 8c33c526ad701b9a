//! Proving a backup restorable, and restoring it. Verification fetches the
//! object, checks its SHA-256 against the manifest (over the stored, maybe
//! encrypted, bytes), decrypts it when it is encrypted with age (with the
//! identities in the secret `backup_age_identities`), decompresses it to a
//! local seekable file, restores it into a scratch database created for the
//! purpose (`pg_restore -j N --exit-on-error`), compares row counts with the
//! manifest and drops the scratch database — timing every stage. Restore
//! runs the same fetch and check, then restores into a given database,
//! refusing a non-empty one unless forced.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sea_orm::ConnectionTrait;
use sha2::{Digest, Sha256};

use crate::archive::{self, FileStats};
use crate::crypt::{self, CryptError};
use crate::db::{self, DbError, PgUrl};
use crate::pipeline::{self, PassFile, PipelineError, ToolCommand, Tools};
use crate::progress::Meter;
use crate::store::{BackupStore, Manifest, StoreError};
use opsloop_core::secrets::{Secret, SecretStore};

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(
        "checksum mismatch: manifest says sha256 {expected} ({expected_size} bytes), the stored object is {actual} ({actual_size} bytes)"
    )]
    ChecksumMismatch {
        expected: String,
        actual: String,
        expected_size: u64,
        actual_size: u64,
    },
    #[error("the object does not decompress: {0}")]
    Decompress(std::io::Error),
    #[error("row counts differ from the manifest in {0} table(s)")]
    RowCounts(usize),
    #[error("the archive holds {actual:?}, the manifest says {expected:?}")]
    FileCounts {
        expected: Option<FileStats>,
        actual: FileStats,
    },
    #[error("target {target} is not empty ({detail}); pass force to restore over it")]
    NotEmpty { target: String, detail: String },
    #[error("restoring a {kind} backup into {target} is not supported")]
    Unsupported { kind: String, target: String },
    #[error(transparent)]
    Crypt(#[from] CryptError),
    #[error("local scratch files: {0}")]
    Local(std::io::Error),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Db(#[from] DbError),
}

/// A table whose rows differ between the manifest and the restore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    pub table: String,
    pub expected: i64,
    pub actual: i64,
}

/// The outcome of one verification.
#[derive(Debug, Clone)]
pub struct VerifyReport {
    pub passed: bool,
    pub checksum_ok: bool,
    /// Stage name and duration, in the order run.
    pub stages: Vec<(&'static str, Duration)>,
    pub mismatches: Vec<Mismatch>,
    pub duration: Duration,
    pub error: Option<String>,
}

impl VerifyReport {
    /// `passed` or `failed`: the `outcome` label of
    /// `opsloop_backup_verifications_total`.
    pub fn outcome(&self) -> &'static str {
        if self.passed { "passed" } else { "failed" }
    }

    /// Records this verification of a backup of `target`: the
    /// `opsloop_backup_verifications_total{target, outcome}` counter (which
    /// the `OpsloopBackupVerificationFailed` alert watches), the duration
    /// gauge (the recovery-time figure) and each stage's duration.
    pub fn record_metrics(&self, target: &str) {
        metrics::counter!(
            "opsloop_backup_verifications_total",
            "target" => target.to_owned(),
            "outcome" => self.outcome()
        )
        .increment(1);
        metrics::gauge!("opsloop_backup_verify_duration_seconds", "target" => target.to_owned())
            .set(self.duration.as_secs_f64());
        for (stage, took) in &self.stages {
            metrics::gauge!(
                "opsloop_backup_verify_stage_duration_seconds",
                "target" => target.to_owned(),
                "stage" => *stage
            )
            .set(took.as_secs_f64());
        }
    }
}

/// The outcome of a restore.
#[derive(Debug, Clone)]
pub struct RestoreReport {
    pub duration: Duration,
    pub row_counts: BTreeMap<String, i64>,
}

/// Restores and verifies backups with the PostgreSQL client tools.
#[derive(Clone)]
pub struct Restorer {
    pub store: Arc<dyn BackupStore>,
    pub tools: Option<Tools>,
    /// `pg_restore -j`.
    pub jobs: u32,
    pub timeout: Duration,
    /// Where the age identities of encrypted backups are read from (only
    /// when one is verified or restored).
    pub secrets: SecretStore,
    /// Where each stage is reported while it runs (`GetProgress`).
    pub meter: Meter,
}

struct Stages {
    list: Vec<(&'static str, Duration)>,
    current: Option<(&'static str, Instant)>,
    meter: Meter,
}

impl Stages {
    fn new(meter: Meter) -> Self {
        Self {
            list: Vec::new(),
            current: None,
            meter,
        }
    }

    fn start(&mut self, stage: &'static str) {
        self.stop();
        self.meter.stage(stage);
        self.current = Some((stage, Instant::now()));
    }

    fn stop(&mut self) {
        if let Some((stage, started)) = self.current.take() {
            self.list.push((stage, started.elapsed()));
        }
    }
}

impl Restorer {
    /// Verifies the backup `manifest` describes. `scratch` is the server
    /// (any database on it) where a scratch database may be created; SQLite
    /// backups need none.
    pub async fn verify(&self, manifest: &Manifest, scratch: Option<&PgUrl>) -> VerifyReport {
        let started = Instant::now();
        let mut stages = Stages::new(self.meter.clone());
        let mut checksum_ok = false;
        let mut mismatches = Vec::new();
        let mut scratch_db: Option<(PgUrl, String)> = None;
        let result = self
            .verify_stages(
                manifest,
                scratch,
                &mut stages,
                &mut checksum_ok,
                &mut mismatches,
                &mut scratch_db,
            )
            .await;
        stages.start("cleanup");
        if let Some((admin, name)) = scratch_db
            && let Err(error) = drop_database(&admin, &name).await
        {
            tracing::warn!(%error, database = %name, "could not drop a scratch database");
        }
        stages.stop();
        let error = result.err().map(|e| e.to_string());
        VerifyReport {
            passed: error.is_none(),
            checksum_ok,
            stages: stages.list,
            mismatches,
            duration: started.elapsed(),
            error,
        }
    }

    async fn verify_stages(
        &self,
        manifest: &Manifest,
        scratch: Option<&PgUrl>,
        stages: &mut Stages,
        checksum_ok: &mut bool,
        mismatches: &mut Vec<Mismatch>,
        scratch_db: &mut Option<(PgUrl, String)>,
    ) -> Result<(), VerifyError> {
        let work = tempfile::Builder::new()
            .prefix("opsloop-verify-")
            .tempdir()
            .map_err(VerifyError::Local)?;
        stages.start("fetch");
        let fetched = self.fetch(manifest, work.path()).await?;
        stages.start("checksum");
        check(manifest, &fetched)?;
        *checksum_ok = true;
        stages.start("restore");
        let identities = self.identities(manifest)?;
        let dump = decompress(
            &fetched.path,
            &work.path().join("dump"),
            manifest,
            identities,
        )
        .await?;
        let actual = match manifest.kind.as_str() {
            "postgres" => {
                let admin = scratch.ok_or_else(|| VerifyError::Unsupported {
                    kind: manifest.kind.clone(),
                    target: "no scratch server".into(),
                })?;
                let name = format!(
                    "opsloop_verify_{}_{}",
                    &manifest.id.simple().to_string()[..8],
                    &uuid::Uuid::new_v4().simple().to_string()[..8]
                );
                create_database(admin, &name).await?;
                *scratch_db = Some((admin.clone(), name.clone()));
                let target = admin.with_database(&name);
                self.pg_restore(&dump, &target, false).await?;
                stages.start("compare");
                count_postgres(&target).await?
            }
            "sqlite" => {
                stages.start("compare");
                count_sqlite(&dump).await?
            }
            "directory" => {
                let unpacked = unpack(&dump, &work.path().join("unpacked")).await?;
                stages.start("compare");
                if manifest.files != Some(unpacked) {
                    return Err(VerifyError::FileCounts {
                        expected: manifest.files,
                        actual: unpacked,
                    });
                }
                BTreeMap::new()
            }
            other => {
                return Err(VerifyError::Unsupported {
                    kind: other.to_owned(),
                    target: "verification".into(),
                });
            }
        };
        mismatches.extend(compare(&manifest.row_counts, &actual));
        if mismatches.is_empty() {
            Ok(())
        } else {
            Err(VerifyError::RowCounts(mismatches.len()))
        }
    }

    /// Restores the backup into `target_url` (a database that exists).
    /// Refuses a non-empty target unless `force`, then cleans it first.
    pub async fn restore(
        &self,
        manifest: &Manifest,
        target_url: &str,
        force: bool,
    ) -> Result<RestoreReport, VerifyError> {
        let started = Instant::now();
        let work = tempfile::Builder::new()
            .prefix("opsloop-restore-")
            .tempdir()
            .map_err(VerifyError::Local)?;
        self.meter.stage("fetch");
        let fetched = self.fetch(manifest, work.path()).await?;
        self.meter.stage("checksum");
        check(manifest, &fetched)?;
        let identities = self.identities(manifest)?;
        self.meter.stage("decompress");
        let dump = decompress(
            &fetched.path,
            &work.path().join("dump"),
            manifest,
            identities,
        )
        .await?;
        self.meter.stage("restore");
        let row_counts = match (
            manifest.kind.as_str(),
            crate::config::target_kind(target_url),
        ) {
            ("postgres", Some(crate::config::TargetKind::Postgres)) => {
                let target = PgUrl::parse(target_url)?;
                let tables = user_tables(&target).await?;
                if tables > 0 && !force {
                    return Err(VerifyError::NotEmpty {
                        target: target.without_password(),
                        detail: format!("{tables} tables"),
                    });
                }
                self.pg_restore(&dump, &target, tables > 0).await?;
                count_postgres(&target).await?
            }
            ("sqlite", Some(crate::config::TargetKind::Sqlite)) => {
                let path = db::sqlite_path(target_url)?;
                let existing = if path.exists() {
                    count_sqlite(&path).await?.len()
                } else {
                    0
                };
                if existing > 0 && !force {
                    return Err(VerifyError::NotEmpty {
                        target: path.display().to_string(),
                        detail: format!("{existing} tables"),
                    });
                }
                // Next to the target, then renamed over it: never half a file.
                let staged = path.with_extension("restoring");
                tokio::fs::copy(&dump, &staged)
                    .await
                    .map_err(VerifyError::Local)?;
                tokio::fs::rename(&staged, &path)
                    .await
                    .map_err(VerifyError::Local)?;
                count_sqlite(&path).await?
            }
            ("directory", None) if target_url.starts_with("dir:") => {
                let dest = PathBuf::from(target_url.trim_start_matches("dir:"));
                let occupied = std::fs::read_dir(&dest)
                    .map(|mut d| d.next().is_some())
                    .unwrap_or(false);
                if occupied && !force {
                    return Err(VerifyError::NotEmpty {
                        target: dest.display().to_string(),
                        detail: "the directory has entries".into(),
                    });
                }
                let unpacked = unpack(&dump, &dest).await?;
                BTreeMap::from([
                    ("files".to_owned(), unpacked.files as i64),
                    ("bytes".to_owned(), unpacked.bytes as i64),
                ])
            }
            (kind, _) => {
                return Err(VerifyError::Unsupported {
                    kind: kind.to_owned(),
                    target: redact(target_url),
                });
            }
        };
        Ok(RestoreReport {
            duration: started.elapsed(),
            row_counts,
        })
    }

    /// The identities secret's text when `manifest`'s object is encrypted.
    fn identities(&self, manifest: &Manifest) -> Result<Option<Secret>, VerifyError> {
        if manifest.encryption.is_none() {
            return Ok(None);
        }
        self.secrets
            .get(crypt::IDENTITIES_SECRET)
            .map_err(|e| VerifyError::Crypt(CryptError::Secret(e.to_string())))
    }

    async fn fetch(&self, manifest: &Manifest, dir: &Path) -> Result<Fetched, VerifyError> {
        let mut reader = self.store.open(&manifest.object_key).await?;
        let local = dir.join("object.zst");
        tokio::task::spawn_blocking(move || -> std::io::Result<Fetched> {
            let mut file = std::fs::File::create(&local)?;
            let mut hasher = Sha256::new();
            let mut size = 0u64;
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                let n = reader.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                file.write_all(&buf[..n])?;
                size += n as u64;
            }
            file.sync_all()?;
            Ok(Fetched {
                path: local,
                size,
                sha256: hex::encode(hasher.finalize()),
            })
        })
        .await
        .map_err(|e| VerifyError::Local(std::io::Error::other(e.to_string())))?
        .map_err(VerifyError::Local)
    }

    async fn pg_restore(
        &self,
        dump: &Path,
        target: &PgUrl,
        clean: bool,
    ) -> Result<(), VerifyError> {
        let tools = self.tools.as_ref().ok_or_else(|| {
            VerifyError::Pipeline(PipelineError::ToolMissing {
                tool: "pg_restore",
                detail: "not located at start".into(),
            })
        })?;
        let passfile = match target.password() {
            Some(password) => Some(PassFile::new(password).map_err(VerifyError::Local)?),
            None => None,
        };
        let mut args: Vec<std::ffi::OsString> = vec![
            "--exit-on-error".into(),
            "--no-owner".into(),
            "--no-privileges".into(),
            "--no-password".into(),
            format!("--jobs={}", self.jobs.max(1)).into(),
            format!("--dbname={}", target.without_password()).into(),
        ];
        if clean {
            args.push("--clean".into());
            args.push("--if-exists".into());
        }
        args.push(dump.as_os_str().to_owned());
        let command = ToolCommand {
            tool: "pg_restore",
            program: tools.pg_restore.clone(),
            args,
            envs: pipeline::libpq_env(passfile.as_ref()),
        };
        pipeline::supervise(&command, self.timeout, |mut stdout| async move {
            let mut sink = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut stdout, &mut sink)
                .await
                .map_err(PipelineError::Stream)?;
            Ok(())
        })
        .await?;
        Ok(())
    }
}

struct Fetched {
    path: PathBuf,
    size: u64,
    sha256: String,
}

fn check(manifest: &Manifest, fetched: &Fetched) -> Result<(), VerifyError> {
    if fetched.sha256 == manifest.sha256 && fetched.size == manifest.size_bytes {
        Ok(())
    } else {
        Err(VerifyError::ChecksumMismatch {
            expected: manifest.sha256.clone(),
            actual: fetched.sha256.clone(),
            expected_size: manifest.size_bytes,
            actual_size: fetched.size,
        })
    }
}

/// Decrypts (when the manifest says so, with `identities`) and decompresses
/// `from` into `to`, in one pass.
async fn decompress(
    from: &Path,
    to: &Path,
    manifest: &Manifest,
    identities: Option<Secret>,
) -> Result<PathBuf, VerifyError> {
    let (from, to) = (from.to_path_buf(), to.to_path_buf());
    let (encryption, recipients) = (manifest.encryption.clone(), manifest.recipients.clone());
    tokio::task::spawn_blocking(move || -> Result<PathBuf, VerifyError> {
        let input = std::fs::File::open(&from).map_err(VerifyError::Local)?;
        let plain = crypt::open(
            std::io::BufReader::new(input),
            encryption.as_deref(),
            &recipients,
            identities.as_ref().map(Secret::expose),
        )?;
        let mut output = std::fs::File::create(&to).map_err(VerifyError::Local)?;
        let mut decoder =
            zstd::stream::read::Decoder::new(plain).map_err(VerifyError::Decompress)?;
        std::io::copy(&mut decoder, &mut output).map_err(VerifyError::Decompress)?;
        output.sync_all().map_err(VerifyError::Local)?;
        Ok(to)
    })
    .await
    .map_err(|e| VerifyError::Local(std::io::Error::other(e.to_string())))?
}

async fn unpack(archive_file: &Path, dest: &Path) -> Result<FileStats, VerifyError> {
    let (from, to) = (archive_file.to_path_buf(), dest.to_path_buf());
    tokio::task::spawn_blocking(move || {
        let file = std::fs::File::open(&from).map_err(VerifyError::Local)?;
        archive::unpack_archive(std::io::BufReader::new(file), &to).map_err(VerifyError::Decompress)
    })
    .await
    .map_err(|e| VerifyError::Local(std::io::Error::other(e.to_string())))?
}

/// Tables whose counts differ (a table missing on either side counts as 0).
pub fn compare(expected: &BTreeMap<String, i64>, actual: &BTreeMap<String, i64>) -> Vec<Mismatch> {
    let mut tables: Vec<&String> = expected.keys().chain(actual.keys()).collect();
    tables.sort();
    tables.dedup();
    tables
        .into_iter()
        .filter_map(|table| {
            let e = expected.get(table).copied().unwrap_or(0);
            let a = actual.get(table).copied().unwrap_or(0);
            (e != a).then(|| Mismatch {
                table: table.clone(),
                expected: e,
                actual: a,
            })
        })
        .collect()
}

async fn count_postgres(url: &PgUrl) -> Result<BTreeMap<String, i64>, VerifyError> {
    let label = url.without_password();
    let conn = db::connect_one(&url.connection_string(), &label).await?;
    let counts = db::row_counts(&conn, &label).await;
    let _ = conn.close().await;
    Ok(counts?)
}

async fn count_sqlite(path: &Path) -> Result<BTreeMap<String, i64>, VerifyError> {
    let label = path.display().to_string();
    let conn = db::connect_one(&format!("sqlite://{}?mode=ro", path.display()), &label).await?;
    let integrity = db::scalar_string(&conn, &label, "PRAGMA integrity_check").await;
    let counts = db::row_counts(&conn, &label).await;
    let _ = conn.close().await;
    let integrity = integrity?;
    if integrity != "ok" {
        return Err(VerifyError::Db(DbError::Query {
            database: label,
            reason: format!("integrity check: {integrity}"),
        }));
    }
    Ok(counts?)
}

async fn user_tables(url: &PgUrl) -> Result<i64, VerifyError> {
    let label = url.without_password();
    let conn = db::connect_one(&url.connection_string(), &label).await?;
    let n = db::scalar_string(
        &conn,
        &label,
        "SELECT count(*)::text FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')",
    )
    .await;
    let _ = conn.close().await;
    Ok(n?.parse().unwrap_or(0))
}

async fn create_database(admin: &PgUrl, name: &str) -> Result<(), VerifyError> {
    admin_statement(admin, &format!("CREATE DATABASE {}", db::quote_ident(name))).await
}

async fn drop_database(admin: &PgUrl, name: &str) -> Result<(), VerifyError> {
    admin_statement(
        admin,
        &format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            db::quote_ident(name)
        ),
    )
    .await
}

async fn admin_statement(admin: &PgUrl, sql: &str) -> Result<(), VerifyError> {
    let label = admin.without_password();
    let conn = db::connect_one(&admin.connection_string(), &label).await?;
    let result = conn.execute_unprepared(sql).await;
    let _ = conn.close().await;
    result.map_err(|e| DbError::Query {
        database: label,
        reason: e.to_string(),
    })?;
    Ok(())
}

/// A database URL with any password removed, for replies and logs.
pub fn redact(url: &str) -> String {
    match PgUrl::parse(url) {
        Ok(pg) => pg.without_password(),
        Err(_) => url.split('?').next().unwrap_or_default().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_verification_is_counted_by_outcome() {
        let handle = opsloop_core::telemetry::prometheus();
        let report = |passed: bool| VerifyReport {
            passed,
            checksum_ok: passed,
            stages: vec![("checksum", Duration::from_millis(5))],
            mismatches: Vec::new(),
            duration: Duration::from_millis(20),
            error: (!passed).then(|| "row counts differ".to_owned()),
        };
        report(true).record_metrics("verify-metric-test");
        report(false).record_metrics("verify-metric-test");
        report(false).record_metrics("verify-metric-test");
        let text = handle.render();
        for (outcome, n) in [("passed", 1), ("failed", 2)] {
            let line = format!(
                "opsloop_backup_verifications_total{{target=\"verify-metric-test\",outcome=\"{outcome}\"}} {n}"
            );
            assert!(text.contains(&line), "{line} in\n{text}");
        }
        assert!(
            text.contains("# HELP opsloop_backup_verifications_total "),
            "{text}"
        );
    }

    #[test]
    fn compare_reports_every_differing_table() {
        let expected = BTreeMap::from([("public.a".to_owned(), 3), ("public.b".to_owned(), 5)]);
        let actual = BTreeMap::from([("public.a".to_owned(), 3), ("public.c".to_owned(), 1)]);
        assert_eq!(
            compare(&expected, &actual),
            vec![
                Mismatch {
                    table: "public.b".into(),
                    expected: 5,
                    actual: 0
                },
                Mismatch {
                    table: "public.c".into(),
                    expected: 0,
                    actual: 1
                },
            ]
        );
        assert!(compare(&expected, &expected).is_empty());
    }

    #[test]
    fn redaction_removes_passwords() {
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u@h/db");
        assert_eq!(redact("sqlite://var/x.db?mode=rwc"), "sqlite://var/x.db");
    }
}
