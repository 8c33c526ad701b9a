//! Where backups live: the [`BackupStore`] trait and its local-directory
//! implementation. An object is written under a temporary name and renamed
//! when complete; its JSON [`Manifest`] is written last and create-only. An
//! object without a manifest is not a backup: it is never listed and
//! [`BackupStore::sweep`] removes it, with any partial upload.

use std::collections::{BTreeMap, HashSet};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// File name suffix of manifests.
pub const MANIFEST_SUFFIX: &str = ".manifest.json";

/// Version of the manifest format written by this agent.
pub const MANIFEST_FORMAT: u32 = 1;

/// What a backup is, written next to its object when it is complete.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub id: Uuid,
    /// The configured target name.
    pub target: String,
    /// `postgres` or `sqlite`.
    pub kind: String,
    /// The database backed up, without credentials.
    pub database: String,
    pub object_key: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    /// Size of the stored object in bytes.
    pub size_bytes: u64,
    /// SHA-256 of the stored object, lowercase hex.
    pub sha256: String,
    /// e.g. `zstd:3`.
    pub compression: String,
    /// e.g. `pg_dump` → `pg_dump (PostgreSQL) 15.20`, `server` → `15.20`.
    pub tool_versions: BTreeMap<String, String>,
    /// Rows per table (`schema.table`), counted in the dump's own snapshot.
    #[serde(default)]
    pub row_counts: BTreeMap<String, i64>,
    /// Files and bytes of a directory set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<crate::archive::FileStats>,
    /// `age` when the object is encrypted (after compression); absent: not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<String>,
    /// The age recipients (public keys) it is encrypted to; never identities.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recipients: Vec<String>,
}

impl Manifest {
    /// The manifest's key: next to the object.
    pub fn key(&self) -> String {
        manifest_key(&self.target, self.id)
    }
}

/// The manifest key of backup `id` of `target`.
pub fn manifest_key(target: &str, id: Uuid) -> String {
    format!("{target}/{id}{MANIFEST_SUFFIX}")
}

/// The object key of backup `id` of `target` with extension `ext`.
pub fn object_key(target: &str, id: Uuid, ext: &str) -> String {
    format!("{target}/{id}.{ext}")
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store I/O on {key}: {source}")]
    Io {
        key: String,
        #[source]
        source: std::io::Error,
    },
    #[error("object {key} not found in the store")]
    NotFound { key: String },
    #[error("manifest {key} already exists (manifests are create-only)")]
    AlreadyExists { key: String },
    #[error("invalid object key {key:?}")]
    InvalidKey { key: String },
    #[error("manifest {key} is unreadable: {reason}")]
    BadManifest { key: String, reason: String },
}

fn io(key: &str) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        key: key.to_owned(),
        source,
    }
}

/// An object being written. Bytes go to a temporary name; [`commit`] makes
/// them visible under the key. Dropped uncommitted, the partial data is
/// discarded (and a crash leaves it for [`BackupStore::sweep`]).
///
/// [`commit`]: ObjectUpload::commit
pub trait ObjectUpload: Write + Send {
    fn commit(self: Box<Self>) -> Result<(), StoreError>;
}

/// A place backups are kept. Reads and writes are blocking (`Read`/`Write`):
/// callers drive them from blocking tasks, so a backup streams through
/// compression and hashing without a local copy.
#[async_trait]
pub trait BackupStore: Send + Sync + 'static {
    /// Where the store is, for logs (`local:var/backups`).
    fn describe(&self) -> String;
    /// Starts writing `key` under a temporary name.
    async fn begin_upload(&self, key: &str) -> Result<Box<dyn ObjectUpload>, StoreError>;
    /// Opens a committed object.
    async fn open(&self, key: &str) -> Result<Box<dyn Read + Send>, StoreError>;
    /// Writes the manifest, last and create-only.
    async fn put_manifest(&self, manifest: &Manifest) -> Result<(), StoreError>;
    /// Every complete backup (one with a manifest), any order.
    async fn manifests(&self) -> Result<Vec<Manifest>, StoreError>;
    /// The manifest of backup `id` of `target`, if it is a complete backup.
    async fn manifest(&self, target: &str, id: Uuid) -> Result<Option<Manifest>, StoreError>;
    /// Removes a backup: the manifest first (so it stops being a backup),
    /// then its object.
    async fn delete(&self, manifest: &Manifest) -> Result<(), StoreError>;
    /// Removes partial uploads and objects without a manifest, except those
    /// of backups in `active` (still being written). Returns the keys removed.
    async fn sweep(&self, active: &HashSet<Uuid>) -> Result<Vec<String>, StoreError>;
}

/// Keys are `target/file` with plain names: no traversal, no hidden files
/// (a leading `.` marks temporary files).
pub(crate) fn check_key(key: &str) -> Result<(), StoreError> {
    let parts: Vec<&str> = key.split('/').collect();
    let plain = |p: &str| {
        !p.is_empty()
            && !p.starts_with('.')
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    };
    if parts.len() == 2 && parts.iter().all(|p| plain(p)) {
        Ok(())
    } else {
        Err(StoreError::InvalidKey {
            key: key.to_owned(),
        })
    }
}

/// A directory on local disk: `<root>/<target>/<id>.<ext>` and
/// `<root>/<target>/<id>.manifest.json`; temporary files start with `.`.
#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file of `key` (tests use it to damage objects).
    pub fn path_of(&self, key: &str) -> Result<PathBuf, StoreError> {
        check_key(key)?;
        Ok(self.root.join(key))
    }

    fn temp_path(&self, key: &str, purpose: &str) -> Result<PathBuf, StoreError> {
        let path = self.path_of(key)?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let nonce = Uuid::new_v4().simple().to_string();
        Ok(path.with_file_name(format!(".{name}.{purpose}-{}", &nonce[..8])))
    }

    /// Every file of the store: (target dir, file name).
    fn files(&self) -> Result<Vec<(String, String)>, StoreError> {
        let root_key = self.root.display().to_string();
        let mut out = Vec::new();
        let targets = match std::fs::read_dir(&self.root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(io(&root_key)(e)),
        };
        for target in targets {
            let target = target.map_err(io(&root_key))?;
            if !target.file_type().map_err(io(&root_key))?.is_dir() {
                continue;
            }
            let target_name = target.file_name().to_string_lossy().into_owned();
            for file in std::fs::read_dir(target.path()).map_err(io(&target_name))? {
                let file = file.map_err(io(&target_name))?;
                if file.file_type().map_err(io(&target_name))?.is_file() {
                    out.push((
                        target_name.clone(),
                        file.file_name().to_string_lossy().into_owned(),
                    ));
                }
            }
        }
        Ok(out)
    }
}

struct LocalUpload {
    file: Option<BufWriter<std::fs::File>>,
    temp: PathBuf,
    path: PathBuf,
    key: String,
}

impl Write for LocalUpload {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match &mut self.file {
            Some(file) => file.write(buf),
            None => Err(std::io::Error::other("upload already finished")),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.file {
            Some(file) => file.flush(),
            None => Ok(()),
        }
    }
}

impl ObjectUpload for LocalUpload {
    fn commit(mut self: Box<Self>) -> Result<(), StoreError> {
        let key = self.key.clone();
        let file = self
            .file
            .take()
            .ok_or_else(|| StoreError::NotFound { key: key.clone() })?;
        let file = file.into_inner().map_err(|e| io(&key)(e.into_error()))?;
        file.sync_all().map_err(io(&key))?;
        drop(file);
        std::fs::rename(&self.temp, &self.path).map_err(io(&key))?;
        sync_dir(&self.path);
        Ok(())
    }
}

impl Drop for LocalUpload {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            // Abandoned before commit: the partial object must not linger.
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

/// Makes a rename durable. Best effort: not every file system allows it.
fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent()
        && let Ok(dir) = std::fs::File::open(dir)
    {
        let _ = dir.sync_all();
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(StoreError::Io {
            key: "-".into(),
            source: std::io::Error::other(e.to_string()),
        })
    })
}

#[async_trait]
impl BackupStore for LocalStore {
    fn describe(&self) -> String {
        format!("local:{}", self.root.display())
    }

    async fn begin_upload(&self, key: &str) -> Result<Box<dyn ObjectUpload>, StoreError> {
        let path = self.path_of(key)?;
        let temp = self.temp_path(key, "partial")?;
        let key = key.to_owned();
        blocking(move || {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(io(&key))?;
            }
            let file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&temp)
                .map_err(io(&key))?;
            Ok(Box::new(LocalUpload {
                file: Some(BufWriter::with_capacity(256 * 1024, file)),
                temp,
                path,
                key,
            }) as Box<dyn ObjectUpload>)
        })
        .await
    }

    async fn open(&self, key: &str) -> Result<Box<dyn Read + Send>, StoreError> {
        let path = self.path_of(key)?;
        let key = key.to_owned();
        blocking(move || match std::fs::File::open(&path) {
            Ok(file) => Ok(Box::new(std::io::BufReader::new(file)) as Box<dyn Read + Send>),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(StoreError::NotFound { key }),
            Err(e) => Err(io(&key)(e)),
        })
        .await
    }

    async fn put_manifest(&self, manifest: &Manifest) -> Result<(), StoreError> {
        let key = manifest.key();
        let path = self.path_of(&key)?;
        let temp = self.temp_path(&key, "tmp")?;
        let body = serde_json::to_vec_pretty(manifest).map_err(|e| StoreError::BadManifest {
            key: key.clone(),
            reason: e.to_string(),
        })?;
        blocking(move || {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(io(&key))?;
            }
            let mut file = std::fs::File::create_new(&temp).map_err(io(&key))?;
            let written = file.write_all(&body).and_then(|_| file.sync_all());
            drop(file);
            // A hard link is an atomic create-only publish: it fails when
            // the manifest exists, and never exposes a half-written file.
            let linked = written.and_then(|_| std::fs::hard_link(&temp, &path));
            let _ = std::fs::remove_file(&temp);
            match linked {
                Ok(()) => {
                    sync_dir(&path);
                    Ok(())
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    Err(StoreError::AlreadyExists { key })
                }
                Err(e) => Err(io(&key)(e)),
            }
        })
        .await
    }

    async fn manifests(&self) -> Result<Vec<Manifest>, StoreError> {
        let store = self.clone();
        blocking(move || {
            let mut out = Vec::new();
            for (target, name) in store.files()? {
                if name.starts_with('.') || !name.ends_with(MANIFEST_SUFFIX) {
                    continue;
                }
                let key = format!("{target}/{name}");
                match read_manifest(&store.root.join(&key), &key) {
                    Ok(manifest) => out.push(manifest),
                    Err(error) => tracing::warn!(%error, "skipping an unreadable manifest"),
                }
            }
            Ok(out)
        })
        .await
    }

    async fn manifest(&self, target: &str, id: Uuid) -> Result<Option<Manifest>, StoreError> {
        let key = manifest_key(target, id);
        let path = self.path_of(&key)?;
        blocking(move || match read_manifest(&path, &key) {
            Ok(manifest) => Ok(Some(manifest)),
            Err(StoreError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        })
        .await
    }

    async fn delete(&self, manifest: &Manifest) -> Result<(), StoreError> {
        let manifest_path = self.path_of(&manifest.key())?;
        let object_path = self.path_of(&manifest.object_key)?;
        let key = manifest.object_key.clone();
        blocking(move || {
            for path in [manifest_path, object_path] {
                match std::fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io(&key)(e)),
                }
            }
            Ok(())
        })
        .await
    }

    async fn sweep(&self, active: &HashSet<Uuid>) -> Result<Vec<String>, StoreError> {
        let store = self.clone();
        let active = active.clone();
        blocking(move || {
            let files = store.files()?;
            let manifested: HashSet<(String, Uuid)> = files
                .iter()
                .filter(|(_, name)| !name.starts_with('.') && name.ends_with(MANIFEST_SUFFIX))
                .filter_map(|(target, name)| backup_id(name).map(|id| (target.clone(), id)))
                .collect();
            let mut removed = Vec::new();
            for (target, name) in files {
                let id = backup_id(name.trim_start_matches('.'));
                if id.is_some_and(|id| active.contains(&id)) {
                    continue;
                }
                let partial = name.starts_with('.');
                let orphan = !partial
                    && !name.ends_with(MANIFEST_SUFFIX)
                    && !id.is_some_and(|id| manifested.contains(&(target.clone(), id)));
                if partial || orphan {
                    let key = format!("{target}/{name}");
                    match std::fs::remove_file(store.root.join(&key)) {
                        Ok(()) => removed.push(key),
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => return Err(io(&key)(e)),
                    }
                }
            }
            removed.sort();
            Ok(removed)
        })
        .await
    }
}

/// The backup id a file name starts with (`<uuid>.…`).
pub(crate) fn backup_id(name: &str) -> Option<Uuid> {
    name.split('.').next().and_then(|s| Uuid::parse_str(s).ok())
}

fn read_manifest(path: &Path, key: &str) -> Result<Manifest, StoreError> {
    let text = match std::fs::read(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(StoreError::NotFound {
                key: key.to_owned(),
            });
        }
        Err(e) => return Err(io(key)(e)),
    };
    serde_json::from_slice(&text).map_err(|e| StoreError::BadManifest {
        key: key.to_owned(),
        reason: e.to_string(),
    })
}

/// The behaviour every [`BackupStore`] must have, as one reusable check that
/// panics on the first deviation. The local store and the object store
/// ([`crate::s3`], over `InMemory`) run it.
#[cfg(test)]
pub mod contract {
    use std::collections::HashSet;
    use std::io::{Read as _, Write as _};

    use super::*;

    fn manifest(target: &str, id: Uuid, object_key: &str, size: u64) -> Manifest {
        Manifest {
            format: MANIFEST_FORMAT,
            id,
            target: target.into(),
            kind: "sqlite".into(),
            database: "contract.db".into(),
            object_key: object_key.into(),
            started_at: Utc::now(),
            finished_at: Utc::now(),
            size_bytes: size,
            sha256: "00".repeat(32),
            compression: "zstd:3".into(),
            tool_versions: BTreeMap::new(),
            row_counts: BTreeMap::from([("main.events".into(), 3)]),
            files: None,
            encryption: None,
            recipients: Vec::new(),
        }
    }

    async fn read_all(store: &dyn BackupStore, key: &str) -> Result<Vec<u8>, StoreError> {
        let mut reader = store.open(key).await?;
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            reader.read_to_end(&mut out).map(|_| out)
        })
        .await
        .map_err(|e| StoreError::Io {
            key: "-".into(),
            source: std::io::Error::other(e.to_string()),
        })?
        .map_err(|source| StoreError::Io {
            key: "-".into(),
            source,
        })
    }

    /// Exercises `store`, which must be empty.
    pub async fn exercise(store: &dyn BackupStore) {
        let target = "contract";
        // An abandoned upload is invisible.
        let abandoned = object_key(target, Uuid::new_v4(), "bin.zst");
        let mut up = store.begin_upload(&abandoned).await.expect("begin");
        up.write_all(b"partial").expect("write");
        drop(up);
        assert!(matches!(
            store.open(&abandoned).await,
            Err(StoreError::NotFound { .. })
        ));

        // A committed object is readable but not a backup until its manifest.
        let id = Uuid::new_v4();
        let key = object_key(target, id, "bin.zst");
        let mut up = store.begin_upload(&key).await.expect("begin");
        up.write_all(b"hello store").expect("write");
        up.commit().expect("commit");
        assert_eq!(read_all(store, &key).await.expect("read"), b"hello store");
        assert!(
            store.manifests().await.expect("list").is_empty(),
            "no manifest, no backup"
        );
        assert!(store.manifest(target, id).await.expect("get").is_none());

        let m = manifest(target, id, &key, 11);
        store.put_manifest(&m).await.expect("manifest");
        assert_eq!(store.manifests().await.expect("list"), vec![m.clone()]);
        assert_eq!(
            store.manifest(target, id).await.expect("get"),
            Some(m.clone())
        );
        assert!(
            matches!(
                store.put_manifest(&m).await,
                Err(StoreError::AlreadyExists { .. })
            ),
            "manifests are create-only"
        );

        // A crashed upload and an unmanifested object are swept; an active
        // upload and complete backups are not.
        let crashed = object_key(target, Uuid::new_v4(), "bin.zst");
        let mut up = store.begin_upload(&crashed).await.expect("begin");
        up.write_all(b"half").expect("write");
        up.flush().expect("flush");
        std::mem::forget(up);
        let orphan_id = Uuid::new_v4();
        let mut up = store
            .begin_upload(&object_key(target, orphan_id, "bin.zst"))
            .await
            .expect("begin");
        up.write_all(b"no manifest").expect("write");
        up.commit().expect("commit");
        let active = Uuid::new_v4();
        let mut live = store
            .begin_upload(&object_key(target, active, "bin.zst"))
            .await
            .expect("begin");
        live.write_all(b"in progress").expect("write");
        live.flush().expect("flush");
        let swept = store.sweep(&HashSet::from([active])).await.expect("sweep");
        assert_eq!(swept.len(), 2, "{swept:?}");
        assert!(swept.iter().any(|k| k.contains(&orphan_id.to_string())));
        live.commit().expect("the active upload survived");
        assert_eq!(store.manifests().await.expect("list").len(), 1);

        store.delete(&m).await.expect("delete");
        assert!(store.manifests().await.expect("list").is_empty());
        assert!(matches!(
            store.open(&key).await,
            Err(StoreError::NotFound { .. })
        ));
        assert!(matches!(
            store.begin_upload("../escape").await,
            Err(StoreError::InvalidKey { .. })
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_local_store_keeps_the_store_contract() {
        let dir = tempfile::tempdir().expect("tempdir");
        contract::exercise(&LocalStore::new(dir.path())).await;
    }

    #[tokio::test]
    async fn an_abandoned_upload_leaves_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LocalStore::new(dir.path());
        let mut up = store
            .begin_upload(&object_key("db", Uuid::new_v4(), "sqlite.zst"))
            .await
            .expect("begin");
        up.write_all(b"partial").expect("write");
        drop(up);
        assert_eq!(
            store.files().expect("files"),
            Vec::<(String, String)>::new()
        );
    }

    #[test]
    fn keys_cannot_escape_the_store() {
        for bad in [
            "../x/y",
            "db/../../etc",
            "db/.hidden",
            "db",
            "a/b/c",
            "db/x y",
        ] {
            assert!(check_key(bad).is_err(), "{bad}");
        }
        assert!(check_key("db/0b7e.sqlite.zst").is_ok());
    }
}
