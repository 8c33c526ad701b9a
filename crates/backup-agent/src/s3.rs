//! An S3-compatible [`BackupStore`] over the `object_store` crate, written
//! against `Arc<dyn ObjectStore>` so the same code serves Amazon S3 (and
//! S3-compatible services via `endpoint`) and the in-memory backend tests
//! use.
//!
//! Layout, under the optional `prefix`: `<target>/<id>.<ext>` (the object),
//! `<target>/<id>.manifest.json` (its manifest) and, while an upload runs,
//! `<target>/.<id>.<ext>.partial-<nonce>` (an empty marker). The guarantees
//! of [`BackupStore`] hold as follows:
//!
//! - **Visible only when complete.** The object is streamed in parts of
//!   `part_size` bytes as a multipart upload to its final key, which S3
//!   makes visible only at `CompleteMultipartUpload`; an object smaller
//!   than one part is a single `PUT` at commit. Memory is bounded by
//!   `(MAX_PARTS_IN_FLIGHT + 1) × part_size`; nothing is copied to disk.
//! - **Crashes are swept.** The marker is written before the first byte and
//!   removed at commit or abandon, so an upload that died leaves a marker
//!   [`BackupStore::sweep`] removes (unless its backup is still running).
//!   The parts of a multipart upload that was never completed are not
//!   listable through `object_store`: an abandoned upload is aborted, and
//!   for crashes the bucket needs a lifecycle rule
//!   (`AbortIncompleteMultipartUpload`, e.g. after 2 days). Only keys this
//!   store writes (`<id>.…`) are ever swept; still, give it a `prefix` of its
//!   own in a shared bucket.
//! - **Manifest last and create-only.** `PutMode::Create` (S3's
//!   `If-None-Match: *`). For services without conditional writes
//!   (`conditional_put = false`) the store checks, then puts: a concurrent
//!   writer of the same manifest could slip in between, which the agent's
//!   per-target lease already rules out.
//!
//! The trait's readers and writers are blocking. All `object_store` futures
//! run on a small runtime owned by the store, so they may be driven from a
//! blocking thread or even from inside another runtime without deadlock, and
//! the HTTP connection pool always lives on one runtime.

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{MultipartUpload, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use opsloop_core::secrets::SecretStore;
use uuid::Uuid;

use crate::config::S3Settings;
use crate::store::{
    BackupStore, MANIFEST_SUFFIX, Manifest, ObjectUpload, StoreError, backup_id, check_key,
    manifest_key,
};

/// Secret holding the access key id.
pub const ACCESS_KEY_SECRET: &str = "s3_access_key_id";
/// Secret holding the secret access key.
pub const SECRET_KEY_SECRET: &str = "s3_secret_access_key";
/// Optional secret holding a session token (temporary credentials).
pub const SESSION_TOKEN_SECRET: &str = "s3_session_token";

/// Parts uploaded concurrently per object; a writer waits beyond this.
pub const MAX_PARTS_IN_FLIGHT: usize = 2;

/// How long dropping an abandoned upload waits for its clean-up.
const ABANDON_WAIT: Duration = Duration::from_secs(30);

/// Why an S3 store could not be built.
#[derive(Debug, thiserror::Error)]
pub enum S3Error {
    #[error("secret {name}: {source}")]
    Secret {
        name: &'static str,
        #[source]
        source: opsloop_core::secrets::SecretError,
    },
    #[error(
        "backup.store = \"s3\" needs the secrets {ACCESS_KEY_SECRET} and {SECRET_KEY_SECRET} (missing: {missing}), or backup.s3.anonymous = true"
    )]
    MissingCredentials { missing: String },
    #[error("backup.s3: {0}")]
    Client(#[source] object_store::Error),
    #[error("backup.s3: cannot start the store's I/O runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

/// How manifests are written create-only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestWrites {
    /// `PutMode::Create`: the service refuses an existing key atomically.
    Conditional,
    /// `HEAD`, then `PUT`: for services without conditional writes.
    CheckThenPut,
}

/// A runtime of its own for `object_store` futures (see the module doc).
#[derive(Debug)]
struct IoRuntime {
    runtime: Option<tokio::runtime::Runtime>,
}

impl IoRuntime {
    fn new() -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("backup-store-io")
            .enable_all()
            .build()?;
        Ok(Self {
            runtime: Some(runtime),
        })
    }

    fn handle(&self) -> Option<&tokio::runtime::Handle> {
        self.runtime.as_ref().map(|r| r.handle())
    }

    fn spawn<F>(&self, future: F) -> Option<tokio::task::JoinHandle<F::Output>>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle().map(|h| h.spawn(future))
    }

    /// Runs `future` on the I/O runtime and waits for it, from any thread.
    fn block<F>(&self, future: F, wait: Option<Duration>) -> std::io::Result<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.spawn(async move {
            let _ = tx.send(future.await);
        })
        .ok_or_else(stopped)?;
        match wait {
            None => rx.recv().map_err(|_| stopped()),
            Some(wait) => rx.recv_timeout(wait).map_err(|_| stopped()),
        }
    }

    /// Runs `future` on the I/O runtime and awaits it.
    async fn run<F>(&self, future: F) -> std::io::Result<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let task = self.spawn(future).ok_or_else(stopped)?;
        task.await.map_err(|e| std::io::Error::other(e.to_string()))
    }
}

impl Drop for IoRuntime {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which is not allowed inside another
        // runtime (where the last store handle may well be dropped).
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

fn stopped() -> std::io::Error {
    std::io::Error::other("the store's I/O runtime stopped")
}

fn os_error(e: object_store::Error) -> std::io::Error {
    std::io::Error::other(e)
}

fn io_err(key: &str, source: std::io::Error) -> StoreError {
    StoreError::Io {
        key: key.to_owned(),
        source,
    }
}

fn os_err(key: &str, e: object_store::Error) -> StoreError {
    match e {
        object_store::Error::NotFound { .. } => StoreError::NotFound {
            key: key.to_owned(),
        },
        other => io_err(key, os_error(other)),
    }
}

/// A [`BackupStore`] over any [`ObjectStore`].
#[derive(Clone)]
pub struct ObjectBackupStore {
    inner: Arc<dyn ObjectStore>,
    /// Key prefix without slashes at either end; empty for none.
    prefix: String,
    description: String,
    manifest_writes: ManifestWrites,
    part_size: usize,
    io: Arc<IoRuntime>,
}

impl std::fmt::Debug for ObjectBackupStore {
    /// Only the description: the client's configuration holds credentials.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectBackupStore")
            .field("store", &self.description)
            .field("manifest_writes", &self.manifest_writes)
            .field("part_size", &self.part_size)
            .finish()
    }
}

impl ObjectBackupStore {
    /// Wraps `inner`; keys live under `prefix` (may be empty).
    pub fn new(
        inner: Arc<dyn ObjectStore>,
        prefix: &str,
        description: impl Into<String>,
    ) -> Result<Self, S3Error> {
        Ok(Self {
            inner,
            prefix: prefix.trim_matches('/').to_owned(),
            description: description.into(),
            manifest_writes: ManifestWrites::Conditional,
            part_size: 16 * 1024 * 1024,
            io: Arc::new(IoRuntime::new().map_err(S3Error::Runtime)?),
        })
    }

    /// An in-memory store (tests).
    pub fn in_memory() -> Result<Self, S3Error> {
        Self::new(
            Arc::new(object_store::memory::InMemory::new()),
            "",
            "memory:",
        )
    }

    /// Bytes per multipart part (S3: at least 5 MiB).
    pub fn with_part_size(mut self, bytes: usize) -> Self {
        self.part_size = bytes.max(1);
        self
    }

    pub fn with_manifest_writes(mut self, writes: ManifestWrites) -> Self {
        self.manifest_writes = writes;
        self
    }

    /// The S3 store `[backup.s3]` describes, with its keys from `secrets`.
    pub fn s3(settings: &S3Settings, secrets: &SecretStore) -> Result<Self, S3Error> {
        let mut builder = AmazonS3Builder::new()
            .with_region(&settings.region)
            .with_bucket_name(&settings.bucket)
            .with_allow_http(settings.allow_http);
        if let Some(endpoint) = &settings.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        if settings.anonymous {
            builder = builder.with_skip_signature(true);
        } else {
            let get = |name: &'static str| {
                secrets
                    .get(name)
                    .map_err(|source| S3Error::Secret { name, source })
            };
            let key_id = get(ACCESS_KEY_SECRET)?;
            let secret = get(SECRET_KEY_SECRET)?;
            let (key_id, secret) = match (key_id, secret) {
                (Some(k), Some(s)) => (k, s),
                (k, s) => {
                    let missing: Vec<&str> = [
                        (k.is_none(), ACCESS_KEY_SECRET),
                        (s.is_none(), SECRET_KEY_SECRET),
                    ]
                    .into_iter()
                    .filter_map(|(m, n)| m.then_some(n))
                    .collect();
                    return Err(S3Error::MissingCredentials {
                        missing: missing.join(", "),
                    });
                }
            };
            builder = builder
                .with_access_key_id(key_id.expose())
                .with_secret_access_key(secret.expose());
            if let Some(token) = get(SESSION_TOKEN_SECRET)? {
                builder = builder.with_token(token.expose());
            }
        }
        let inner = builder.build().map_err(S3Error::Client)?;
        let description = format!(
            "s3:{}{}/{}",
            settings
                .endpoint
                .as_deref()
                .map(|e| format!("{}/", e.trim_end_matches('/')))
                .unwrap_or_default(),
            settings.bucket,
            settings.prefix.trim_matches('/'),
        );
        let writes = if settings.conditional_put {
            ManifestWrites::Conditional
        } else {
            ManifestWrites::CheckThenPut
        };
        Ok(Self::new(Arc::new(inner), &settings.prefix, description)?
            .with_part_size(settings.part_size_mib.saturating_mul(1024 * 1024))
            .with_manifest_writes(writes))
    }

    /// The object-store path of store key `key` (`target/file`).
    fn location(&self, key: &str) -> Result<ObjectPath, StoreError> {
        check_key(key)?;
        self.raw_location(key)
    }

    fn raw_location(&self, key: &str) -> Result<ObjectPath, StoreError> {
        let full = if self.prefix.is_empty() {
            key.to_owned()
        } else {
            format!("{}/{key}", self.prefix)
        };
        ObjectPath::parse(&full).map_err(|_| StoreError::InvalidKey {
            key: key.to_owned(),
        })
    }

    /// Every object of the store as `(target, file name)`; objects not laid
    /// out as `target/file` (not ours) are ignored.
    async fn files(&self) -> Result<Vec<(String, String)>, StoreError> {
        let inner = self.inner.clone();
        let prefix = if self.prefix.is_empty() {
            None
        } else {
            Some(ObjectPath::from(self.prefix.as_str()))
        };
        let listed = self
            .io
            .run(async move {
                let mut out = Vec::new();
                let mut stream = inner.list(prefix.as_ref());
                while let Some(meta) = stream.next().await {
                    out.push(meta?.location.to_string());
                }
                Ok::<_, object_store::Error>(out)
            })
            .await
            .map_err(|e| io_err(&self.description, e))?
            .map_err(|e| io_err(&self.description, os_error(e)))?;
        let strip = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        };
        Ok(listed
            .into_iter()
            .filter_map(|location| {
                let rest = location.strip_prefix(&strip)?;
                let (target, name) = rest.split_once('/')?;
                (!name.contains('/')).then(|| (target.to_owned(), name.to_owned()))
            })
            .collect())
    }

    async fn get_bytes(&self, key: &str) -> Result<Bytes, StoreError> {
        let location = self.location(key)?;
        let inner = self.inner.clone();
        self.io
            .run(async move { inner.get(&location).await?.bytes().await })
            .await
            .map_err(|e| io_err(key, e))?
            .map_err(|e| os_err(key, e))
    }

    async fn read_manifest(&self, key: &str) -> Result<Manifest, StoreError> {
        let body = self.get_bytes(key).await?;
        serde_json::from_slice(&body).map_err(|e| StoreError::BadManifest {
            key: key.to_owned(),
            reason: e.to_string(),
        })
    }

    async fn remove(&self, key: &str) -> Result<bool, StoreError> {
        let location = self.location(key)?;
        let inner = self.inner.clone();
        match self
            .io
            .run(async move { inner.delete(&location).await })
            .await
            .map_err(|e| io_err(key, e))?
        {
            Ok(()) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(os_err(key, e)),
        }
    }
}

/// An upload in progress (see the module doc).
struct S3Upload {
    inner: Arc<dyn ObjectStore>,
    io: Arc<IoRuntime>,
    key: String,
    location: ObjectPath,
    marker: ObjectPath,
    part_size: usize,
    buffer: Vec<u8>,
    multipart: Option<Box<dyn MultipartUpload>>,
    in_flight: VecDeque<tokio::task::JoinHandle<object_store::Result<()>>>,
    finished: bool,
}

impl S3Upload {
    /// Sends the full buffer as the next part, starting the multipart
    /// upload with the first, and waits while too many parts are in flight.
    fn send_part(&mut self) -> std::io::Result<()> {
        let part = std::mem::replace(&mut self.buffer, Vec::with_capacity(self.part_size));
        let multipart = match &mut self.multipart {
            Some(multipart) => multipart,
            None => {
                let inner = self.inner.clone();
                let location = self.location.clone();
                let started = self
                    .io
                    .block(async move { inner.put_multipart(&location).await }, None)?
                    .map_err(os_error)?;
                self.multipart.insert(started)
            }
        };
        let upload = multipart.put_part(PutPayload::from(part));
        let task = self.io.spawn(upload).ok_or_else(stopped)?;
        self.in_flight.push_back(task);
        while self.in_flight.len() > MAX_PARTS_IN_FLIGHT {
            if let Some(oldest) = self.in_flight.pop_front() {
                self.io
                    .block(oldest, None)?
                    .map_err(|e| std::io::Error::other(e.to_string()))?
                    .map_err(os_error)?;
            }
        }
        Ok(())
    }

    fn finish(&mut self) -> std::io::Result<()> {
        let inner = self.inner.clone();
        let location = self.location.clone();
        match self.multipart.take() {
            None => {
                let body = PutPayload::from(std::mem::take(&mut self.buffer));
                self.io
                    .block(async move { inner.put(&location, body).await }, None)?
                    .map_err(os_error)?;
            }
            Some(mut multipart) => {
                if !self.buffer.is_empty() {
                    let last = std::mem::take(&mut self.buffer);
                    let task = self
                        .io
                        .spawn(multipart.put_part(PutPayload::from(last)))
                        .ok_or_else(stopped)?;
                    self.in_flight.push_back(task);
                }
                let parts: Vec<_> = self.in_flight.drain(..).collect();
                self.io
                    .block(
                        async move {
                            let mut failed = None;
                            for part in parts {
                                match part.await {
                                    Ok(Ok(())) => {}
                                    Ok(Err(e)) => failed = failed.or(Some(os_error(e))),
                                    Err(e) => {
                                        failed =
                                            failed.or(Some(std::io::Error::other(e.to_string())))
                                    }
                                }
                            }
                            let result = match failed {
                                None => multipart.complete().await.map(|_| ()).map_err(os_error),
                                Some(e) => Err(e),
                            };
                            if result.is_err() {
                                let _ = multipart.abort().await;
                            }
                            result
                        },
                        None,
                    )
                    .and_then(|r| r)?;
            }
        }
        Ok(())
    }

    /// Aborts the multipart upload (if any) and removes the marker.
    fn discard(&mut self) {
        let multipart = self.multipart.take();
        for part in self.in_flight.drain(..) {
            part.abort();
        }
        let inner = self.inner.clone();
        let marker = self.marker.clone();
        let cleaned = self.io.block(
            async move {
                if let Some(mut multipart) = multipart {
                    let _ = multipart.abort().await;
                }
                inner.delete(&marker).await
            },
            Some(ABANDON_WAIT),
        );
        if let Err(error) = cleaned {
            tracing::warn!(key = %self.key, %error, "an abandoned upload was not cleaned up; sweep will");
        }
    }
}

impl Write for S3Upload {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.finished {
            return Err(std::io::Error::other("upload already finished"));
        }
        let room = self.part_size - self.buffer.len();
        let n = buf.len().min(room);
        self.buffer.extend_from_slice(&buf[..n]);
        if self.buffer.len() >= self.part_size {
            self.send_part()?;
        }
        Ok(n)
    }

    /// Parts go out when full (S3 requires at least 5 MiB each), so flush
    /// has nothing to do.
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl ObjectUpload for S3Upload {
    fn commit(mut self: Box<Self>) -> Result<(), StoreError> {
        if self.finished {
            return Err(StoreError::NotFound {
                key: self.key.clone(),
            });
        }
        self.finished = true;
        if let Err(e) = self.finish() {
            self.discard();
            return Err(io_err(&self.key, e));
        }
        // The object is complete; the marker only told sweep about it.
        let inner = self.inner.clone();
        let marker = self.marker.clone();
        match self
            .io
            .block(async move { inner.delete(&marker).await }, None)
        {
            Ok(Ok(())) | Ok(Err(object_store::Error::NotFound { .. })) => {}
            Ok(Err(e)) => {
                tracing::warn!(key = %self.key, error = %e, "upload marker left for sweep")
            }
            Err(e) => tracing::warn!(key = %self.key, error = %e, "upload marker left for sweep"),
        }
        Ok(())
    }
}

impl Drop for S3Upload {
    fn drop(&mut self) {
        if !self.finished {
            self.finished = true;
            self.discard();
        }
    }
}

/// A committed object read as a blocking stream of chunks.
struct S3Reader {
    io: Arc<IoRuntime>,
    stream: Option<BoxStream<'static, object_store::Result<Bytes>>>,
    chunk: Bytes,
}

impl Read for S3Reader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.chunk.is_empty() {
            let Some(mut stream) = self.stream.take() else {
                return Ok(0);
            };
            let (stream, next) = self.io.block(
                async move {
                    let next = stream.next().await;
                    (stream, next)
                },
                None,
            )?;
            match next {
                None => return Ok(0),
                Some(Err(e)) => return Err(os_error(e)),
                Some(Ok(chunk)) => {
                    self.chunk = chunk;
                    self.stream = Some(stream);
                }
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk[..n]);
        self.chunk = self.chunk.slice(n..);
        Ok(n)
    }
}

#[async_trait]
impl BackupStore for ObjectBackupStore {
    fn describe(&self) -> String {
        self.description.clone()
    }

    async fn begin_upload(&self, key: &str) -> Result<Box<dyn ObjectUpload>, StoreError> {
        let location = self.location(key)?;
        let (target, name) = key.split_once('/').ok_or_else(|| StoreError::InvalidKey {
            key: key.to_owned(),
        })?;
        let nonce = Uuid::new_v4().simple().to_string();
        let marker = self.raw_location(&format!("{target}/.{name}.partial-{}", &nonce[..8]))?;
        let inner = self.inner.clone();
        let marker_at = marker.clone();
        self.io
            .run(async move { inner.put(&marker_at, PutPayload::new()).await })
            .await
            .map_err(|e| io_err(key, e))?
            .map_err(|e| os_err(key, e))?;
        Ok(Box::new(S3Upload {
            inner: self.inner.clone(),
            io: self.io.clone(),
            key: key.to_owned(),
            location,
            marker,
            part_size: self.part_size,
            buffer: Vec::new(),
            multipart: None,
            in_flight: VecDeque::new(),
            finished: false,
        }))
    }

    async fn open(&self, key: &str) -> Result<Box<dyn Read + Send>, StoreError> {
        let location = self.location(key)?;
        let inner = self.inner.clone();
        let got = self
            .io
            .run(async move { inner.get(&location).await })
            .await
            .map_err(|e| io_err(key, e))?
            .map_err(|e| os_err(key, e))?;
        Ok(Box::new(S3Reader {
            io: self.io.clone(),
            stream: Some(got.into_stream()),
            chunk: Bytes::new(),
        }))
    }

    async fn put_manifest(&self, manifest: &Manifest) -> Result<(), StoreError> {
        let key = manifest.key();
        let location = self.location(&key)?;
        let body = serde_json::to_vec_pretty(manifest).map_err(|e| StoreError::BadManifest {
            key: key.clone(),
            reason: e.to_string(),
        })?;
        let inner = self.inner.clone();
        let writes = self.manifest_writes;
        let written = self
            .io
            .run(async move {
                let mode = match writes {
                    ManifestWrites::Conditional => PutMode::Create,
                    ManifestWrites::CheckThenPut => {
                        // Not atomic: see the module doc.
                        match inner.head(&location).await {
                            Ok(_) => {
                                return Err(object_store::Error::AlreadyExists {
                                    path: location.to_string(),
                                    source: "the manifest exists".into(),
                                });
                            }
                            Err(object_store::Error::NotFound { .. }) => {}
                            Err(e) => return Err(e),
                        }
                        PutMode::Overwrite
                    }
                };
                let options = PutOptions {
                    mode,
                    ..PutOptions::default()
                };
                inner
                    .put_opts(&location, PutPayload::from(body), options)
                    .await
            })
            .await
            .map_err(|e| io_err(&key, e))?;
        match written {
            Ok(_) => Ok(()),
            Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. },
            ) => Err(StoreError::AlreadyExists { key }),
            Err(e) => Err(os_err(&key, e)),
        }
    }

    async fn manifests(&self) -> Result<Vec<Manifest>, StoreError> {
        let mut out = Vec::new();
        for (target, name) in self.files().await? {
            if name.starts_with('.') || !name.ends_with(MANIFEST_SUFFIX) {
                continue;
            }
            let key = format!("{target}/{name}");
            match self.read_manifest(&key).await {
                Ok(manifest) => out.push(manifest),
                // Deleted since the listing: no longer a backup.
                Err(StoreError::NotFound { .. }) => {}
                Err(error) => tracing::warn!(%error, "skipping an unreadable manifest"),
            }
        }
        Ok(out)
    }

    async fn manifest(&self, target: &str, id: Uuid) -> Result<Option<Manifest>, StoreError> {
        match self.read_manifest(&manifest_key(target, id)).await {
            Ok(manifest) => Ok(Some(manifest)),
            Err(StoreError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn delete(&self, manifest: &Manifest) -> Result<(), StoreError> {
        self.remove(&manifest.key()).await?;
        self.remove(&manifest.object_key).await?;
        Ok(())
    }

    async fn sweep(&self, active: &HashSet<Uuid>) -> Result<Vec<String>, StoreError> {
        let files = self.files().await?;
        let manifested: HashSet<(String, Uuid)> = files
            .iter()
            .filter(|(_, name)| !name.starts_with('.') && name.ends_with(MANIFEST_SUFFIX))
            .filter_map(|(target, name)| backup_id(name).map(|id| (target.clone(), id)))
            .collect();
        let mut removed = Vec::new();
        for (target, name) in files {
            // Only what this store writes (`<id>.…`, `.<id>.…`) is ever
            // swept: a shared bucket's other objects are left alone.
            let Some(id) = backup_id(name.trim_start_matches('.')) else {
                continue;
            };
            if active.contains(&id) {
                continue;
            }
            let partial = name.starts_with('.');
            let orphan = !partial
                && !name.ends_with(MANIFEST_SUFFIX)
                && !manifested.contains(&(target.clone(), id));
            if partial || orphan {
                let key = format!("{target}/{name}");
                let location = self.raw_location(&key)?;
                let inner = self.inner.clone();
                match self
                    .io
                    .run(async move { inner.delete(&location).await })
                    .await
                    .map_err(|e| io_err(&key, e))?
                {
                    Ok(()) => removed.push(key),
                    Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(os_err(&key, e)),
                }
            }
        }
        removed.sort();
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read as _, Write as _};

    use super::*;
    use crate::config::S3Settings;
    use crate::store::{contract, object_key};

    #[tokio::test]
    async fn the_object_store_keeps_the_store_contract() {
        let store = ObjectBackupStore::in_memory().expect("store");
        contract::exercise(&store).await;
    }

    #[tokio::test]
    async fn the_contract_holds_under_a_prefix_and_with_check_then_put() {
        let inner: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        // Something else in the bucket is left alone.
        inner
            .put(&ObjectPath::from("other/x/y"), PutPayload::from("keep"))
            .await
            .expect("put");
        // Nor is a foreign object under the prefix: sweep takes only ours.
        let foreign = ObjectPath::from("backups/prod/contract/README.txt");
        inner
            .put(&foreign, PutPayload::from("keep"))
            .await
            .expect("put");
        let store = ObjectBackupStore::new(inner.clone(), "/backups/prod/", "memory:")
            .expect("store")
            .with_manifest_writes(ManifestWrites::CheckThenPut);
        contract::exercise(&store).await;
        assert!(inner.head(&ObjectPath::from("other/x/y")).await.is_ok());
        assert!(inner.head(&foreign).await.is_ok());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn large_objects_stream_in_parts_and_read_back_whole() {
        let inner: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let store = ObjectBackupStore::new(inner.clone(), "p", "memory:")
            .expect("store")
            .with_part_size(64 * 1024);
        let key = object_key("db", Uuid::new_v4(), "bin.zst");
        let data: Vec<u8> = (0..1_000_003u32).map(|i| (i % 251) as u8).collect();
        let mut upload = store.begin_upload(&key).await.expect("begin");
        let body = data.clone();
        let upload = tokio::task::spawn_blocking(move || {
            for chunk in body.chunks(10_000) {
                upload.write_all(chunk).expect("write");
            }
            upload.flush().expect("flush");
            upload
        })
        .await
        .expect("join");
        // Parts are out, but nothing is visible before commit.
        let location = ObjectPath::from(format!("p/{key}"));
        assert!(inner.head(&location).await.is_err());
        tokio::task::spawn_blocking(move || upload.commit())
            .await
            .expect("join")
            .expect("commit");
        let mut reader = store.open(&key).await.expect("open");
        let read = tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            reader.read_to_end(&mut out).map(|_| out)
        })
        .await
        .expect("join")
        .expect("read");
        assert_eq!(read.len(), data.len());
        assert!(read == data);
        // The marker is gone: only the object remains.
        let files = store.files().await.expect("files");
        assert_eq!(files.len(), 1, "{files:?}");
    }

    /// The pipeline streams a directory set through zstd and SHA-256 into
    /// the object store in parts; what is stored is what was hashed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_pipeline_streams_into_the_object_store() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Incompressible content (xorshift), so the object spans parts.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for i in 0..20u32 {
            let noise: Vec<u8> = (0..20_000)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect();
            std::fs::write(dir.path().join(format!("f{i}.bin")), noise).expect("write");
        }
        let store = ObjectBackupStore::in_memory()
            .expect("store")
            .with_part_size(16 * 1024);
        let key = object_key("files", Uuid::new_v4(), "tar.zst");
        let upload = store.begin_upload(&key).await.expect("begin");
        let dumped = crate::pipeline::dump_directories(
            &[dir.path().to_path_buf()],
            upload,
            &crate::crypt::Encoding::plain(3),
            Duration::from_secs(60),
        )
        .await
        .expect("dump");
        assert!(dumped.encoded.size_bytes > 3 * 16 * 1024, "several parts");
        let mut reader = store.open(&key).await.expect("open");
        let stored = tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            reader.read_to_end(&mut out).map(|_| out)
        })
        .await
        .expect("join")
        .expect("read");
        use sha2::Digest as _;
        assert_eq!(stored.len() as u64, dumped.encoded.size_bytes);
        assert_eq!(
            hex::encode(sha2::Sha256::digest(&stored)),
            dumped.encoded.sha256
        );
    }

    fn settings() -> S3Settings {
        S3Settings {
            endpoint: Some("http://127.0.0.1:9".into()),
            bucket: "backups".into(),
            allow_http: true,
            ..S3Settings::default()
        }
    }

    #[test]
    fn keys_come_from_secrets_unless_anonymous() {
        let dir = tempfile::tempdir().expect("tempdir");
        let none = SecretStore::with_sources(None, dir.path(), vec![]);
        let err = ObjectBackupStore::s3(&settings(), &none).expect_err("no keys");
        let text = err.to_string();
        assert!(
            text.contains(ACCESS_KEY_SECRET) && text.contains(SECRET_KEY_SECRET),
            "{text}"
        );

        let half = SecretStore::with_sources(
            None,
            dir.path(),
            vec![("OPSLOOP_S3_ACCESS_KEY_ID".into(), "AKIDEXAMPLE".into())],
        );
        let err = ObjectBackupStore::s3(&settings(), &half).expect_err("one key");
        assert!(
            matches!(&err, S3Error::MissingCredentials { missing } if missing == SECRET_KEY_SECRET),
            "{err}"
        );

        let both = SecretStore::with_sources(
            None,
            dir.path(),
            vec![
                ("OPSLOOP_S3_ACCESS_KEY_ID".into(), "AKIDEXAMPLE".into()),
                ("OPSLOOP_S3_SECRET_ACCESS_KEY".into(), "sekrit-value".into()),
            ],
        );
        let store = ObjectBackupStore::s3(&settings(), &both).expect("keys given");
        let shown = format!("{} {store:?}", store.describe());
        assert!(!shown.contains("sekrit-value"), "{shown}");
        assert_eq!(store.describe(), "s3:http://127.0.0.1:9/backups/");

        let anonymous = S3Settings {
            anonymous: true,
            ..settings()
        };
        ObjectBackupStore::s3(&anonymous, &none).expect("anonymous needs no keys");
    }

    /// Through the real S3 client (signing, HTTP, XML, multipart, and
    /// `If-None-Match: *`) against a small S3 server in the test.
    #[tokio::test]
    async fn the_s3_client_keeps_the_store_contract_against_a_local_server() {
        let server = fake_s3::FakeS3::start();
        let dir = tempfile::tempdir().expect("tempdir");
        let secrets = SecretStore::with_sources(
            None,
            dir.path(),
            vec![
                ("OPSLOOP_S3_ACCESS_KEY_ID".into(), "AKIDEXAMPLE".into()),
                ("OPSLOOP_S3_SECRET_ACCESS_KEY".into(), "secret".into()),
            ],
        );
        let settings = S3Settings {
            endpoint: Some(server.endpoint()),
            bucket: "backups".into(),
            prefix: "opsloop/prod".into(),
            allow_http: true,
            ..S3Settings::default()
        };
        let store = ObjectBackupStore::s3(&settings, &secrets).expect("store");
        contract::exercise(&store).await;
        assert!(
            server.conditional_puts() >= 2,
            "manifests use If-None-Match"
        );

        // Multipart through the client: small parts, read back whole.
        let store = store.with_part_size(8 * 1024);
        let key = object_key("db", Uuid::new_v4(), "bin.zst");
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
        let mut upload = store.begin_upload(&key).await.expect("begin");
        let body = data.clone();
        tokio::task::spawn_blocking(move || {
            upload.write_all(&body)?;
            upload.commit().map_err(std::io::Error::other)
        })
        .await
        .expect("join")
        .expect("upload");
        assert!(server.completed_multiparts() >= 1);
        let mut reader = store.open(&key).await.expect("open");
        let read = tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            reader.read_to_end(&mut out).map(|_| out)
        })
        .await
        .expect("join")
        .expect("read");
        assert!(read == data);

        // An upload abandoned mid-way is aborted: no parts, no marker left.
        let key = object_key("db", Uuid::new_v4(), "bin.zst");
        let mut upload = store.begin_upload(&key).await.expect("begin");
        let body = data.clone();
        tokio::task::spawn_blocking(move || {
            upload.write_all(&body)?;
            drop(upload);
            Ok::<_, std::io::Error>(())
        })
        .await
        .expect("join")
        .expect("write");
        assert_eq!(
            server.pending_uploads(),
            0,
            "the multipart upload was aborted"
        );
        assert!(server.keys().iter().all(|k| !k.contains(".partial-")));
        assert!(matches!(
            store.open(&key).await,
            Err(StoreError::NotFound { .. })
        ));

        // Check-then-put (HEAD, then PUT) for services without conditions.
        let store = store.with_manifest_writes(ManifestWrites::CheckThenPut);
        let manifest = Manifest {
            format: crate::store::MANIFEST_FORMAT,
            id: Uuid::new_v4(),
            target: "db".into(),
            kind: "sqlite".into(),
            database: "x.db".into(),
            object_key: "db/x.bin.zst".into(),
            started_at: chrono::Utc::now(),
            finished_at: chrono::Utc::now(),
            size_bytes: 0,
            sha256: String::new(),
            compression: "zstd:3".into(),
            tool_versions: Default::default(),
            row_counts: Default::default(),
            files: None,
            encryption: None,
            recipients: Vec::new(),
        };
        store.put_manifest(&manifest).await.expect("first write");
        assert!(matches!(
            store.put_manifest(&manifest).await,
            Err(StoreError::AlreadyExists { .. })
        ));
        assert_eq!(store.manifests().await.expect("list"), vec![manifest]);

        assert!(
            server.keys().iter().all(|k| k.starts_with("opsloop/prod/")),
            "{:?}",
            server.keys()
        );
    }

    /// Just enough of the S3 REST API for `object_store`: objects,
    /// `ListObjectsV2`, `DeleteObjects`, multipart uploads and `If-None-Match: *`. No
    /// signature checks, one bucket, no paging.
    mod fake_s3 {
        use std::collections::{BTreeMap, HashMap};
        use std::sync::{Arc, Mutex};

        use axum::body::Bytes;
        use axum::extract::State;
        use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
        use axum::response::{IntoResponse, Response};

        #[derive(Default)]
        struct Bucket {
            objects: BTreeMap<String, Vec<u8>>,
            uploads: HashMap<String, (String, BTreeMap<u32, Vec<u8>>)>,
            next_upload: u64,
            conditional_puts: usize,
            completed_multiparts: usize,
        }

        type Shared = Arc<Mutex<Bucket>>;

        pub(super) struct FakeS3 {
            addr: std::net::SocketAddr,
            bucket: Shared,
            stop: Option<tokio::sync::oneshot::Sender<()>>,
        }

        impl FakeS3 {
            /// Serves on its own thread and runtime, so a test blocking
            /// its own thread cannot stall the server.
            pub(super) fn start() -> Self {
                let bucket = Shared::default();
                let state = bucket.clone();
                let (addr_tx, addr_rx) = std::sync::mpsc::channel();
                let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
                std::thread::spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("runtime");
                    runtime.block_on(async move {
                        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                            .await
                            .expect("bind");
                        addr_tx
                            .send(listener.local_addr().expect("addr"))
                            .expect("send");
                        let app = axum::Router::new().fallback(handle).with_state(state);
                        let _ = axum::serve(listener, app)
                            .with_graceful_shutdown(async move {
                                let _ = stopped.await;
                            })
                            .await;
                    });
                });
                let addr = addr_rx.recv().expect("server address");
                Self {
                    addr,
                    bucket,
                    stop: Some(stop),
                }
            }

            pub(super) fn endpoint(&self) -> String {
                format!("http://{}", self.addr)
            }

            fn with<T>(&self, f: impl FnOnce(&Bucket) -> T) -> T {
                f(&self.bucket.lock().expect("lock"))
            }

            pub(super) fn conditional_puts(&self) -> usize {
                self.with(|b| b.conditional_puts)
            }

            pub(super) fn completed_multiparts(&self) -> usize {
                self.with(|b| b.completed_multiparts)
            }

            pub(super) fn pending_uploads(&self) -> usize {
                self.with(|b| b.uploads.len())
            }

            pub(super) fn keys(&self) -> Vec<String> {
                self.with(|b| b.objects.keys().cloned().collect())
            }
        }

        impl Drop for FakeS3 {
            fn drop(&mut self) {
                if let Some(stop) = self.stop.take() {
                    let _ = stop.send(());
                }
            }
        }

        fn decode(s: &str) -> String {
            let bytes = s.as_bytes();
            let mut out = Vec::with_capacity(bytes.len());
            let mut i = 0;
            while i < bytes.len() {
                if bytes[i] == b'%'
                    && i + 2 < bytes.len()
                    && let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16)
                {
                    out.push(b);
                    i += 3;
                } else {
                    out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
                    i += 1;
                }
            }
            String::from_utf8_lossy(&out).into_owned()
        }

        fn etag(data: &[u8]) -> String {
            use sha2::Digest as _;
            format!("\"{}\"", &hex::encode(sha2::Sha256::digest(data))[..32])
        }

        fn http_date() -> String {
            chrono::Utc::now()
                .format("%a, %d %b %Y %H:%M:%S GMT")
                .to_string()
        }

        fn xml(body: String) -> Response {
            ([(header::CONTENT_TYPE, "application/xml")], body).into_response()
        }

        fn status(code: StatusCode, s3_code: &str) -> Response {
            let body = format!("<Error><Code>{s3_code}</Code><Message>{s3_code}</Message></Error>");
            (code, [(header::CONTENT_TYPE, "application/xml")], body).into_response()
        }

        fn with_etag(code: StatusCode, tag: String) -> Response {
            (code, [(header::ETAG, tag)]).into_response()
        }

        async fn handle(
            State(bucket): State<Shared>,
            method: Method,
            uri: Uri,
            headers: HeaderMap,
            body: Bytes,
        ) -> Response {
            let path = decode(uri.path().trim_start_matches('/'));
            let key = path
                .split_once('/')
                .map(|(_, k)| k.to_owned())
                .unwrap_or_default();
            let query: HashMap<String, String> = uri
                .query()
                .unwrap_or_default()
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap_or((p, ""));
                    (decode(k), decode(v))
                })
                .collect();
            let Ok(mut b) = bucket.lock() else {
                return status(StatusCode::INTERNAL_SERVER_ERROR, "InternalError");
            };
            match (method, key.is_empty()) {
                (Method::POST, true) if query.contains_key("delete") => {
                    // DeleteObjects: <Delete><Object><Key>k</Key></Object>…
                    let text = String::from_utf8_lossy(&body);
                    let mut deleted = String::new();
                    for chunk in text.split("<Key>").skip(1) {
                        if let Some((key, _)) = chunk.split_once("</Key>") {
                            b.objects.remove(key);
                            deleted.push_str(&format!("<Deleted><Key>{key}</Key></Deleted>"));
                        }
                    }
                    xml(format!(
                        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><DeleteResult>{deleted}</DeleteResult>"
                    ))
                }
                (Method::GET, true) => {
                    let prefix = query.get("prefix").cloned().unwrap_or_default();
                    let now =
                        chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
                    let contents: String = b
                        .objects
                        .iter()
                        .filter(|(k, _)| k.starts_with(&prefix))
                        .map(|(k, v)| {
                            format!(
                                "<Contents><Key>{k}</Key><LastModified>{now}</LastModified><ETag>{}</ETag><Size>{}</Size></Contents>",
                                etag(v).replace('"', "&quot;"),
                                v.len()
                            )
                        })
                        .collect();
                    xml(format!(
                        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><ListBucketResult><Name>b</Name><Prefix>{prefix}</Prefix><IsTruncated>false</IsTruncated>{contents}</ListBucketResult>"
                    ))
                }
                (Method::PUT, false) => {
                    if let (Some(part), Some(id)) = (query.get("partNumber"), query.get("uploadId"))
                    {
                        let Ok(part) = part.parse::<u32>() else {
                            return status(StatusCode::BAD_REQUEST, "InvalidArgument");
                        };
                        let tag = etag(&body);
                        return match b.uploads.get_mut(id) {
                            Some((_, parts)) => {
                                parts.insert(part, body.to_vec());
                                with_etag(StatusCode::OK, tag)
                            }
                            None => status(StatusCode::NOT_FOUND, "NoSuchUpload"),
                        };
                    }
                    if headers.get(header::IF_NONE_MATCH).is_some_and(|v| v == "*") {
                        b.conditional_puts += 1;
                        if b.objects.contains_key(&key) {
                            return status(StatusCode::PRECONDITION_FAILED, "PreconditionFailed");
                        }
                    }
                    let tag = etag(&body);
                    b.objects.insert(key, body.to_vec());
                    with_etag(StatusCode::OK, tag)
                }
                (Method::POST, false) if query.contains_key("uploads") => {
                    b.next_upload += 1;
                    let id = format!("upload-{}", b.next_upload);
                    b.uploads.insert(id.clone(), (key.clone(), BTreeMap::new()));
                    xml(format!(
                        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><InitiateMultipartUploadResult><Bucket>b</Bucket><Key>{key}</Key><UploadId>{id}</UploadId></InitiateMultipartUploadResult>"
                    ))
                }
                (Method::POST, false) => {
                    let Some(id) = query.get("uploadId") else {
                        return status(StatusCode::BAD_REQUEST, "InvalidRequest");
                    };
                    let Some((target, parts)) = b.uploads.remove(id) else {
                        return status(StatusCode::NOT_FOUND, "NoSuchUpload");
                    };
                    let data: Vec<u8> = parts.into_values().flatten().collect();
                    let tag = etag(&data).replace('"', "&quot;");
                    b.objects.insert(target.clone(), data);
                    b.completed_multiparts += 1;
                    xml(format!(
                        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><CompleteMultipartUploadResult><Key>{target}</Key><ETag>{tag}</ETag></CompleteMultipartUploadResult>"
                    ))
                }
                (Method::DELETE, false) => {
                    match query.get("uploadId") {
                        Some(id) => {
                            b.uploads.remove(id);
                        }
                        None => {
                            b.objects.remove(&key);
                        }
                    }
                    StatusCode::NO_CONTENT.into_response()
                }
                (method @ (Method::GET | Method::HEAD), false) => match b.objects.get(&key) {
                    Some(data) => {
                        let headers = [
                            (header::ETAG, etag(data)),
                            (header::LAST_MODIFIED, http_date()),
                            (header::CONTENT_LENGTH, data.len().to_string()),
                        ];
                        if method == Method::HEAD {
                            (headers, ()).into_response()
                        } else {
                            (headers, data.clone()).into_response()
                        }
                    }
                    None if method == Method::HEAD => StatusCode::NOT_FOUND.into_response(),
                    None => status(StatusCode::NOT_FOUND, "NoSuchKey"),
                },
                _ => status(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed"),
            }
        }
    }
}
