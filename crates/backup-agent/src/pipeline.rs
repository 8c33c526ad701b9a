//! Taking a backup: the database's bytes stream through zstd and SHA-256 in
//! one pass into a store upload — no full local copy first. PostgreSQL is
//! dumped by `pg_dump -Fc` inside an exported REPEATABLE READ snapshot in
//! which the rows are counted; SQLite is copied with `VACUUM INTO` first.
//! External tools run supervised: located up front (a clear error when
//! missing), password through a passfile, stdout and stderr drained
//! concurrently, and killed with their whole process group on timeout.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sea_orm::{AccessMode, ConnectionTrait, IsolationLevel, TransactionTrait};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::archive::{self, FileStats};
use crate::crypt::{Encoding, Sealed};
use crate::db::{self, DbError, PgUrl};
use crate::store::{ObjectUpload, StoreError};
use opsloop_core::secrets::Secret;

/// How much of a tool's stderr is kept for the report.
const STDERR_TAIL_BYTES: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("{tool} not found ({detail}); install the PostgreSQL client or set backup.{tool}_path")]
    ToolMissing { tool: &'static str, detail: String },
    #[error("{tool} could not be started: {source}")]
    Spawn {
        tool: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{tool} failed ({status}): {stderr_tail}")]
    ToolFailed {
        tool: &'static str,
        status: String,
        stderr_tail: String,
    },
    #[error(
        "{tool} did not finish within {after:?}; killed with its process group. stderr: {stderr_tail}"
    )]
    Timeout {
        tool: &'static str,
        after: Duration,
        stderr_tail: String,
    },
    #[error(
        "{tool} {tool_version} is older than the server (PostgreSQL {server_version}) and cannot dump it: \
         install the PostgreSQL {server_major} client or newer and set backup.{tool}_path \
         (or the target's {tool}_path)"
    )]
    ClientTooOld {
        tool: &'static str,
        tool_version: String,
        server_version: String,
        server_major: String,
    },
    #[error("streaming into the store: {0}")]
    Stream(std::io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Db(#[from] DbError),
}

/// The PostgreSQL client tools, located once.
#[derive(Debug, Clone)]
pub struct Tools {
    pub pg_dump: PathBuf,
    pub pg_restore: PathBuf,
}

impl Tools {
    /// Finds `pg_dump` and `pg_restore`: the configured paths, else `PATH`.
    pub fn locate(
        pg_dump: Option<&Path>,
        pg_restore: Option<&Path>,
    ) -> Result<Self, PipelineError> {
        Ok(Self {
            pg_dump: locate("pg_dump", pg_dump)?,
            pg_restore: locate("pg_restore", pg_restore)?,
        })
    }
}

/// A tool's path: `configured` when given (it must exist), else the first
/// executable `name` on `PATH`.
pub fn locate(tool: &'static str, configured: Option<&Path>) -> Result<PathBuf, PipelineError> {
    if let Some(path) = configured {
        return if path.is_file() {
            Ok(path.to_path_buf())
        } else {
            Err(PipelineError::ToolMissing {
                tool,
                detail: format!("configured path {} does not exist", path.display()),
            })
        };
    }
    let path_var = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path_var)
        .map(|dir| dir.join(tool))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| PipelineError::ToolMissing {
            tool,
            detail: "not on PATH".into(),
        })
}

/// `tool --version`, trimmed (e.g. `pg_dump (PostgreSQL) 15.20`).
pub async fn tool_version(tool: &'static str, path: &Path) -> Result<String, PipelineError> {
    let output = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::process::Command::new(path)
            .arg("--version")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| PipelineError::Timeout {
        tool,
        after: Duration::from_secs(10),
        stderr_tail: String::new(),
    })?
    .map_err(|source| spawn_error(tool, path, source))?;
    if !output.status.success() {
        return Err(PipelineError::ToolFailed {
            tool,
            status: output.status.to_string(),
            stderr_tail: tail_text(&output.stderr),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

fn spawn_error(tool: &'static str, path: &Path, source: std::io::Error) -> PipelineError {
    if source.kind() == std::io::ErrorKind::NotFound {
        PipelineError::ToolMissing {
            tool,
            detail: format!("{} does not exist", path.display()),
        }
    } else {
        PipelineError::Spawn { tool, source }
    }
}

/// One invocation of an external tool.
#[derive(Debug, Clone)]
pub struct ToolCommand {
    pub tool: &'static str,
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub envs: Vec<(OsString, OsString)>,
}

/// A passfile holding one password for libpq (`PGPASSFILE`), readable by
/// this user only, removed when dropped.
pub struct PassFile {
    file: tempfile::NamedTempFile,
}

impl PassFile {
    pub fn new(password: &Secret) -> std::io::Result<Self> {
        // tempfile creates the file with mode 0600.
        let mut file = tempfile::Builder::new()
            .prefix("opsloop-pgpass-")
            .tempfile()?;
        let escaped = password.expose().replace('\\', "\\\\").replace(':', "\\:");
        writeln!(file, "*:*:*:*:{escaped}")?;
        file.flush()?;
        Ok(Self { file })
    }

    pub fn path(&self) -> &Path {
        self.file.path()
    }
}

/// The environment for a libpq tool: the passfile when there is a password,
/// and nothing inherited that could carry one.
pub fn libpq_env(passfile: Option<&PassFile>) -> Vec<(OsString, OsString)> {
    let mut envs = Vec::new();
    if let Some(passfile) = passfile {
        envs.push(("PGPASSFILE".into(), passfile.path().as_os_str().to_owned()));
    }
    envs
}

/// Runs `command`, hands its stdout to `consume` while stderr is drained
/// concurrently, and waits for both under `timeout`. On timeout the whole
/// process group is killed and the stderr tail reported. `consume`'s result
/// is returned only when the tool exited successfully.
pub async fn supervise<T, F>(
    command: &ToolCommand,
    timeout: Duration,
    consume: impl FnOnce(tokio::process::ChildStdout) -> F,
) -> Result<T, PipelineError>
where
    F: std::future::Future<Output = Result<T, PipelineError>>,
{
    let tool = command.tool;
    let mut cmd = tokio::process::Command::new(&command.program);
    cmd.args(&command.args)
        .env_remove("PGPASSWORD")
        .envs(command.envs.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so a timeout kills every descendant too.
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .map_err(|source| spawn_error(tool, &command.program, source))?;
    let pgid = child.id();
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(PipelineError::Spawn {
            tool,
            source: std::io::Error::other("no stdout/stderr pipe"),
        });
    };
    let tail = Arc::new(Mutex::new(Vec::new()));
    let mut stderr_task = tokio::spawn(read_tail(stderr, tail.clone()));
    // The tail so far, once stderr closed (bounded: a lingering descendant
    // may hold it open).
    let stderr_tail = async move |task: &mut tokio::task::JoinHandle<()>| {
        if tokio::time::timeout(Duration::from_secs(5), &mut *task)
            .await
            .is_err()
        {
            task.abort();
        }
        tail_text(&tail.lock().unwrap_or_else(|p| p.into_inner()))
    };
    let work = async {
        // stdout is read to its end (the tool closes it when done) while
        // stderr drains in its own task, so neither pipe can fill and stall.
        let consumed = consume(stdout).await;
        if consumed.is_err() {
            // Nobody reads stdout any more: stop the tool instead of letting
            // it block on a full pipe until the timeout.
            let _ = child.start_kill();
        }
        let status = child.wait().await;
        (consumed, status)
    };
    match tokio::time::timeout(timeout, work).await {
        Ok((consumed, status)) => {
            let stderr_tail = stderr_tail(&mut stderr_task).await;
            let status = status.map_err(|source| PipelineError::Spawn { tool, source })?;
            if !status.success() {
                return Err(PipelineError::ToolFailed {
                    tool,
                    status: status.to_string(),
                    stderr_tail,
                });
            }
            consumed
        }
        Err(_) => {
            if let Some(pgid) = pgid {
                kill_process_group(pgid).await;
            }
            let stderr_tail = stderr_tail(&mut stderr_task).await;
            Err(PipelineError::Timeout {
                tool,
                after: timeout,
                stderr_tail,
            })
        }
    }
}

/// SIGKILL to every process of group `pgid` (through `kill(1)`: this crate
/// forbids `unsafe`, which a direct `kill(2)` would need).
async fn kill_process_group(pgid: u32) {
    let result = tokio::process::Command::new("kill")
        .args(["-s", "KILL", "--", &format!("-{pgid}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await;
    match result {
        Ok(status) if status.success() => {
            tracing::warn!(pgid, "killed a timed-out tool's process group")
        }
        Ok(status) => tracing::warn!(pgid, %status, "kill of a process group reported failure"),
        Err(error) => tracing::error!(pgid, %error, "cannot run kill(1) to stop a timed-out tool"),
    }
}

/// Drains `stderr`, keeping its last bytes in `tail`.
async fn read_tail(mut stderr: tokio::process::ChildStderr, tail: Arc<Mutex<Vec<u8>>>) {
    let mut buf = vec![0u8; 8192];
    loop {
        match stderr.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let mut tail = tail.lock().unwrap_or_else(|p| p.into_inner());
                tail.extend_from_slice(&buf[..n]);
                if tail.len() > 2 * STDERR_TAIL_BYTES {
                    let excess = tail.len() - STDERR_TAIL_BYTES;
                    tail.drain(..excess);
                }
            }
        }
    }
}

fn tail_text(bytes: &[u8]) -> String {
    let start = bytes.len().saturating_sub(STDERR_TAIL_BYTES);
    String::from_utf8_lossy(&bytes[start..]).trim().to_owned()
}

/// What went into the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    pub size_bytes: u64,
    pub sha256: String,
}

/// A writer that hashes and counts what passes through it.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    pub fn finish(self) -> (W, Encoded) {
        let encoded = Encoded {
            size_bytes: self.bytes,
            sha256: hex::encode(self.hasher.finalize()),
        };
        (self.inner, encoded)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Streams `reader` through zstd (with frame checksums), age (when the
/// encoding has recipients) and SHA-256 into `upload`, in one pass, and returns the upload (not yet
/// committed) with the stored size and checksum. The compressing side runs
/// on a blocking thread fed through a small bounded channel, so a slow store
/// slows the reader instead of buffering the dump in memory.
pub async fn compress_into<R: AsyncRead + Unpin>(
    mut reader: R,
    upload: Box<dyn ObjectUpload>,
    encoding: &Encoding,
) -> Result<(Box<dyn ObjectUpload>, Encoded), PipelineError> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    let encoding = encoding.clone();
    let encoder = tokio::task::spawn_blocking(move || -> std::io::Result<_> {
        // zstd, then age (when recipients are set), then the hash over the
        // stored bytes.
        let sealed = Sealed::new(HashingWriter::new(upload), &encoding.recipients)?;
        let mut encoder = zstd::stream::write::Encoder::new(sealed, encoding.level)?;
        encoder.include_checksum(true)?;
        while let Some(chunk) = rx.blocking_recv() {
            encoder.write_all(&chunk)?;
        }
        let mut hashing = encoder.finish()?.finish()?;
        hashing.flush()?;
        Ok(hashing.finish())
    });
    let mut read_error = None;
    loop {
        let mut chunk = vec![0u8; 128 * 1024];
        match reader.read(&mut chunk).await {
            Ok(0) => break,
            Ok(n) => {
                chunk.truncate(n);
                if tx.send(chunk).await.is_err() {
                    // The encoder stopped: its error is reported below.
                    break;
                }
            }
            Err(e) => {
                read_error = Some(e);
                break;
            }
        }
    }
    drop(tx);
    let encoded = encoder
        .await
        .map_err(|e| PipelineError::Stream(std::io::Error::other(e.to_string())))?
        .map_err(PipelineError::Stream)?;
    if let Some(e) = read_error {
        return Err(PipelineError::Stream(e));
    }
    Ok(encoded)
}

/// What a finished dump produced: the object is committed; the manifest is
/// the caller's to write.
#[derive(Debug, Clone)]
pub struct Dumped {
    pub encoded: Encoded,
    /// The database (without credentials) or the directories backed up.
    pub database: String,
    pub tool_versions: BTreeMap<String, String>,
    pub row_counts: BTreeMap<String, i64>,
    pub files: Option<FileStats>,
}

/// A PostgreSQL major version from a version string: `15` of `15.19 (Debian
/// 15.19-0+deb12u1)` or of `pg_dump (PostgreSQL) 15.20`, `16` of `16beta1`,
/// `9.6` of `9.6.24` (before 10 the major had two parts).
pub fn postgres_major(version: &str) -> Option<(u32, u32)> {
    let text = version.rsplit_once(") ").map_or(version, |(_, v)| v);
    let text = text.trim_start_matches(|c: char| !c.is_ascii_digit());
    let mut parts = text.split(|c: char| !c.is_ascii_digit());
    let first: u32 = parts.next()?.parse().ok()?;
    if first >= 10 {
        return Some((first, 0));
    }
    let second: u32 = parts.next()?.parse().ok()?;
    Some((first, second))
}

fn major_text((major, minor): (u32, u32)) -> String {
    if major >= 10 {
        major.to_string()
    } else {
        format!("{major}.{minor}")
    }
}

/// `pg_dump` refuses a server of a newer major version than its own: checked
/// before each dump (and at start) so the failure is one line naming both
/// versions and the fix. An unparsable version is let through: `pg_dump`
/// itself then has the last word.
pub fn check_client_version(
    tool: &'static str,
    tool_version_line: &str,
    server_version: &str,
) -> Result<(), PipelineError> {
    let (Some(client), Some(server)) = (
        postgres_major(tool_version_line),
        postgres_major(server_version),
    ) else {
        return Ok(());
    };
    if client >= server {
        return Ok(());
    }
    let tool_version = tool_version_line
        .rsplit_once(") ")
        .map_or(tool_version_line, |(_, v)| v)
        .to_owned();
    let server_version = server_version
        .split_whitespace()
        .next()
        .unwrap_or(server_version)
        .to_owned();
    Err(PipelineError::ClientTooOld {
        tool,
        tool_version,
        server_version,
        server_major: major_text(server),
    })
}

/// Dumps a PostgreSQL database into `upload`: rows counted and `pg_dump -Fc`
/// run in one exported snapshot, so the counts describe exactly the dump.
pub async fn dump_postgres(
    tools: &Tools,
    url: &PgUrl,
    upload: Box<dyn ObjectUpload>,
    encoding: &Encoding,
    timeout: Duration,
) -> Result<Dumped, PipelineError> {
    let pg_dump_version = tool_version("pg_dump", &tools.pg_dump).await?;
    let label = url.without_password();
    let conn = db::connect_one(&url.connection_string(), &label).await?;
    let db_error = |e: sea_orm::DbErr| DbError::Query {
        database: label.clone(),
        reason: e.to_string(),
    };
    let txn = conn
        .begin_with_config(
            Some(IsolationLevel::RepeatableRead),
            Some(AccessMode::ReadOnly),
        )
        .await
        .map_err(db_error)?;
    let snapshot = db::scalar_string(&txn, &label, "SELECT pg_export_snapshot()").await?;
    let server_version = db::scalar_string(&txn, &label, "SHOW server_version").await?;
    check_client_version("pg_dump", &pg_dump_version, &server_version)?;
    let row_counts = db::row_counts(&txn, &label).await?;

    let passfile = match url.password() {
        Some(password) => Some(PassFile::new(password).map_err(PipelineError::Stream)?),
        None => None,
    };
    let command = ToolCommand {
        tool: "pg_dump",
        program: tools.pg_dump.clone(),
        args: vec![
            "--format=custom".into(),
            // zstd compresses better and faster than pg_dump's zlib.
            "--compress=0".into(),
            "--no-password".into(),
            format!("--snapshot={snapshot}").into(),
            format!("--dbname={}", url.without_password()).into(),
        ],
        envs: libpq_env(passfile.as_ref()),
    };
    let result = supervise(&command, timeout, |stdout| {
        compress_into(stdout, upload, encoding)
    })
    .await;
    // The snapshot only had to live while pg_dump imported it; end it.
    let _ = txn.rollback().await;
    let _ = conn.close().await;
    drop(passfile);
    let (upload, encoded) = result?;
    commit(upload).await?;
    Ok(Dumped {
        encoded,
        database: url.without_password(),
        tool_versions: BTreeMap::from([
            ("pg_dump".into(), pg_dump_version),
            ("server".into(), format!("PostgreSQL {server_version}")),
        ]),
        row_counts,
        files: None,
    })
}

/// Copies a SQLite database online and consistently (`VACUUM INTO` a
/// temporary file), counts its rows, and streams the copy into `upload`.
pub async fn dump_sqlite(
    url: &str,
    upload: Box<dyn ObjectUpload>,
    encoding: &Encoding,
    timeout: Duration,
) -> Result<Dumped, PipelineError> {
    let source = db::sqlite_path(url)?;
    let label = source.display().to_string();
    let scratch = tempfile::Builder::new()
        .prefix("opsloop-sqlite-backup-")
        .tempdir()
        .map_err(PipelineError::Stream)?;
    let copy = scratch.path().join("copy.db");
    let work = async {
        let conn = db::connect_one(url, &label).await?;
        let version = db::scalar_string(&conn, &label, "SELECT sqlite_version()").await?;
        let vacuum = format!(
            "VACUUM INTO {}",
            db::quote_literal(&copy.display().to_string())
        );
        conn.execute_unprepared(&vacuum)
            .await
            .map_err(|e| DbError::Query {
                database: label.clone(),
                reason: e.to_string(),
            })?;
        let _ = conn.close().await;
        let copy_url = format!("sqlite://{}?mode=ro", copy.display());
        let copy_conn = db::connect_one(&copy_url, &label).await?;
        let row_counts = db::row_counts(&copy_conn, &label).await?;
        let _ = copy_conn.close().await;
        let file = tokio::fs::File::open(&copy)
            .await
            .map_err(PipelineError::Stream)?;
        let (upload, encoded) = compress_into(file, upload, encoding).await?;
        commit(upload).await?;
        Ok::<_, PipelineError>(Dumped {
            encoded,
            database: label.clone(),
            tool_versions: BTreeMap::from([("sqlite".into(), version)]),
            row_counts,
            files: None,
        })
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| PipelineError::Timeout {
            tool: "sqlite",
            after: timeout,
            stderr_tail: String::new(),
        })?
}

/// Archives a set of directories (tar) through zstd and SHA-256 into
/// `upload`, in one pass on a blocking thread.
pub async fn dump_directories(
    paths: &[PathBuf],
    upload: Box<dyn ObjectUpload>,
    encoding: &Encoding,
    timeout: Duration,
) -> Result<Dumped, PipelineError> {
    let dirs = paths.to_vec();
    let encoding = encoding.clone();
    let task = tokio::task::spawn_blocking(move || -> std::io::Result<_> {
        let sealed = Sealed::new(HashingWriter::new(upload), &encoding.recipients)?;
        let mut encoder = zstd::stream::write::Encoder::new(sealed, encoding.level)?;
        encoder.include_checksum(true)?;
        let (encoder, stats) = archive::write_archive(&dirs, encoder)?;
        let mut hashing = encoder.finish()?.finish()?;
        hashing.flush()?;
        let (upload, encoded) = hashing.finish();
        Ok((upload, encoded, stats))
    });
    // A timed-out archive keeps its thread until done, but is never
    // committed: the dropped upload discards it.
    let (upload, encoded, stats) = tokio::time::timeout(timeout, task)
        .await
        .map_err(|_| PipelineError::Timeout {
            tool: "tar",
            after: timeout,
            stderr_tail: String::new(),
        })?
        .map_err(|e| PipelineError::Stream(std::io::Error::other(e.to_string())))?
        .map_err(PipelineError::Stream)?;
    commit(upload).await?;
    Ok(Dumped {
        encoded,
        database: paths
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(","),
        tool_versions: BTreeMap::from([("tar".into(), "ustar (tar crate 0.4)".into())]),
        row_counts: BTreeMap::new(),
        files: Some(stats),
    })
}

async fn commit(upload: Box<dyn ObjectUpload>) -> Result<(), PipelineError> {
    tokio::task::spawn_blocking(move || upload.commit())
        .await
        .map_err(|e| PipelineError::Stream(std::io::Error::other(e.to_string())))??;
    Ok(())
}

#[cfg(test)]
mod version_tests {
    use super::*;

    #[test]
    fn majors_parse_from_tools_and_servers() {
        let table = [
            ("pg_dump (PostgreSQL) 15.20", Some((15, 0))),
            ("15.19 (Debian 15.19-0+deb12u1)", Some((15, 0))),
            (
                "pg_dump (PostgreSQL) 17.2 (Debian 17.2-1.pgdg120+1)",
                Some((17, 0)),
            ),
            ("16beta1", Some((16, 0))),
            ("9.6.24", Some((9, 6))),
            ("pg_dump (PostgreSQL) 9.6.24", Some((9, 6))),
            ("", None),
            ("unknown", None),
        ];
        for (text, expected) in table {
            assert_eq!(postgres_major(text), expected, "{text}");
        }
    }

    #[test]
    fn an_older_pg_dump_is_refused_with_both_versions_and_the_fix() {
        assert!(
            check_client_version("pg_dump", "pg_dump (PostgreSQL) 15.20", "15.19 (Debian)").is_ok()
        );
        assert!(check_client_version("pg_dump", "pg_dump (PostgreSQL) 17.2", "15.19").is_ok());
        assert!(check_client_version("pg_dump", "pg_dump (PostgreSQL) 10.1", "9.6.24").is_ok());
        assert!(check_client_version("pg_dump", "something odd", "16.1").is_ok());
        let error = check_client_version("pg_dump", "pg_dump (PostgreSQL) 15.20", "16.4 (Ubuntu)")
            .expect_err("15 cannot dump 16");
        assert_eq!(
            error.to_string(),
            "pg_dump 15.20 is older than the server (PostgreSQL 16.4) and cannot dump it: \
             install the PostgreSQL 16 client or newer and set backup.pg_dump_path \
             (or the target's pg_dump_path)"
        );
        let error = check_client_version("pg_dump", "pg_dump (PostgreSQL) 9.5.3", "9.6.24")
            .expect_err("9.5 cannot dump 9.6");
        assert!(
            error.to_string().contains("PostgreSQL 9.6 client"),
            "{error}"
        );
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;
    use crate::store::{BackupStore, LocalStore};

    #[tokio::test]
    async fn compresses_and_hashes_in_one_pass() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LocalStore::new(dir.path());
        let data: Vec<u8> = (0..500_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let upload = store.begin_upload("t/a.bin.zst").await.expect("begin");
        let (upload, encoded) = compress_into(&data[..], upload, &Encoding::plain(3))
            .await
            .expect("encode");
        commit(upload).await.expect("commit");

        let mut stored = Vec::new();
        store
            .open("t/a.bin.zst")
            .await
            .expect("open")
            .read_to_end(&mut stored)
            .expect("read");
        assert_eq!(encoded.size_bytes, stored.len() as u64);
        assert_eq!(encoded.sha256, hex::encode(Sha256::digest(&stored)));
        assert!(stored.len() < data.len() / 4, "compressed");
        assert_eq!(zstd::decode_all(&stored[..]).expect("decodes"), data);
    }

    fn script(dir: &Path, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt as _;
        let path = dir.join("tool.sh");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write script");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        path
    }

    fn command(program: PathBuf) -> ToolCommand {
        ToolCommand {
            tool: "pg_dump",
            program,
            args: vec![],
            envs: vec![],
        }
    }

    async fn drain(mut stdout: tokio::process::ChildStdout) -> Result<Vec<u8>, PipelineError> {
        let mut out = Vec::new();
        stdout
            .read_to_end(&mut out)
            .await
            .map_err(PipelineError::Stream)?;
        Ok(out)
    }

    #[tokio::test]
    async fn a_failing_tool_reports_its_stderr_tail() {
        let dir = tempfile::tempdir().expect("tempdir");
        let program = script(
            dir.path(),
            "i=0; while [ $i -lt 2000 ]; do echo noise $i >&2; i=$((i+1)); done\n\
             echo 'pg_dump: error: connection refused' >&2; exit 1",
        );
        let err = supervise(&command(program), Duration::from_secs(30), drain)
            .await
            .expect_err("fails");
        let PipelineError::ToolFailed { stderr_tail, .. } = &err else {
            panic!("unexpected {err}");
        };
        assert!(
            stderr_tail.ends_with("pg_dump: error: connection refused"),
            "{stderr_tail}"
        );
        assert!(stderr_tail.len() <= STDERR_TAIL_BYTES);
    }

    #[tokio::test]
    async fn large_stdout_and_stderr_are_drained_concurrently() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Far more than a pipe buffer on both streams, interleaved.
        let program = script(
            dir.path(),
            "i=0; while [ $i -lt 3000 ]; do echo out-line-$i-padding-padding-padding; \
             echo err-line-$i-padding-padding-padding >&2; i=$((i+1)); done",
        );
        let out = supervise(&command(program), Duration::from_secs(60), drain)
            .await
            .expect("succeeds");
        assert!(out.len() > 100_000, "{}", out.len());
    }

    #[tokio::test]
    async fn a_missing_tool_is_a_clear_error() {
        let err = locate("pg_dump", Some(Path::new("/nonexistent/pg_dump"))).expect_err("missing");
        assert!(err.to_string().contains("pg_dump not found"), "{err}");
        assert!(err.to_string().contains("/nonexistent/pg_dump"), "{err}");
        let err = supervise(
            &command(PathBuf::from("/nonexistent/pg_dump")),
            Duration::from_secs(5),
            drain,
        )
        .await
        .expect_err("missing");
        assert!(matches!(err, PipelineError::ToolMissing { .. }), "{err}");
    }

    #[test]
    fn passfile_escapes_and_is_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let file = PassFile::new(&Secret::new("a:b\\c")).expect("passfile");
        let text = std::fs::read_to_string(file.path()).expect("read");
        assert_eq!(text, "*:*:*:*:a\\:b\\\\c\n");
        let mode = std::fs::metadata(file.path())
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "readable by the owner only");
    }
}
