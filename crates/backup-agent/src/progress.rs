//! What this agent is doing right now, per backup: the operation (backup,
//! verify, restore), its stage and the bytes stored so far. Read by
//! `BackupService.GetProgress`, which `opsloop backup now|verify|restore`
//! poll to show progress on a terminal. In memory: it describes this
//! process's work in flight, and an entry goes when its work ends.

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::store::{ObjectUpload, StoreError};

/// Work in flight, by backup id.
#[derive(Debug, Default)]
pub struct Board {
    entries: Mutex<HashMap<Uuid, Arc<Entry>>>,
}

#[derive(Debug)]
struct Entry {
    operation: &'static str,
    target: String,
    stage: Mutex<&'static str>,
    bytes: AtomicU64,
    started: Instant,
}

/// One operation's progress as `GetProgress` answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub backup_id: Uuid,
    /// `backup`, `verify` or `restore`.
    pub operation: &'static str,
    pub target: String,
    pub stage: &'static str,
    /// Bytes stored so far (a backup's compressed object).
    pub bytes: u64,
    pub elapsed: Duration,
}

/// Updates one operation's entry; cheap to clone. [`Meter::none`] records
/// nothing (callers outside the agent, tests).
#[derive(Debug, Clone, Default)]
pub struct Meter(Option<Arc<Entry>>);

/// Removes its entry from the board when dropped (the work ended).
#[derive(Debug)]
pub struct Tracking {
    board: Arc<Board>,
    id: Uuid,
    entry: Arc<Entry>,
}

impl Board {
    /// Starts tracking `operation` on backup `id` of `target`, at `stage`.
    pub fn begin(
        self: &Arc<Self>,
        id: Uuid,
        operation: &'static str,
        target: &str,
        stage: &'static str,
    ) -> (Meter, Tracking) {
        let entry = Arc::new(Entry {
            operation,
            target: target.to_owned(),
            stage: Mutex::new(stage),
            bytes: AtomicU64::new(0),
            started: Instant::now(),
        });
        self.lock().insert(id, entry.clone());
        (
            Meter(Some(entry.clone())),
            Tracking {
                board: self.clone(),
                id,
                entry,
            },
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Arc<Entry>>> {
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The work in flight on backup `id`.
    pub fn get(&self, id: Uuid) -> Option<Snapshot> {
        self.lock().get(&id).map(|e| snapshot(id, e))
    }

    /// The backup being taken of `target` (any target when `None`), the
    /// oldest first when several run.
    pub fn running_backup(&self, target: Option<&str>) -> Option<Snapshot> {
        self.lock()
            .iter()
            .filter(|(_, e)| e.operation == "backup" && target.is_none_or(|t| t == e.target))
            .min_by_key(|(_, e)| e.started)
            .map(|(id, e)| snapshot(*id, e))
    }
}

fn snapshot(id: Uuid, e: &Entry) -> Snapshot {
    Snapshot {
        backup_id: id,
        operation: e.operation,
        target: e.target.clone(),
        stage: *e.stage.lock().unwrap_or_else(|p| p.into_inner()),
        bytes: e.bytes.load(Ordering::Relaxed),
        elapsed: e.started.elapsed(),
    }
}

impl Drop for Tracking {
    fn drop(&mut self) {
        let mut entries = self.board.lock();
        // Only this operation's entry: a later one on the same backup stays.
        if entries
            .get(&self.id)
            .is_some_and(|e| Arc::ptr_eq(e, &self.entry))
        {
            entries.remove(&self.id);
        }
    }
}

impl Meter {
    /// Records nothing.
    pub fn none() -> Self {
        Self(None)
    }

    /// The operation moved on to `stage`.
    pub fn stage(&self, stage: &'static str) {
        if let Some(e) = &self.0 {
            *e.stage.lock().unwrap_or_else(|p| p.into_inner()) = stage;
        }
    }

    /// `n` more bytes stored.
    pub fn add(&self, n: u64) {
        if let Some(e) = &self.0 {
            e.bytes.fetch_add(n, Ordering::Relaxed);
        }
    }
}

/// An upload that counts the bytes written through it on a [`Meter`].
pub struct MeteredUpload {
    inner: Box<dyn ObjectUpload>,
    meter: Meter,
}

impl MeteredUpload {
    pub fn boxed(inner: Box<dyn ObjectUpload>, meter: Meter) -> Box<dyn ObjectUpload> {
        Box::new(Self { inner, meter })
    }
}

impl Write for MeteredUpload {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.meter.add(n as u64);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl ObjectUpload for MeteredUpload {
    fn commit(self: Box<Self>) -> Result<(), StoreError> {
        self.inner.commit()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl ObjectUpload for Sink {
        fn commit(self: Box<Self>) -> Result<(), StoreError> {
            Ok(())
        }
    }

    #[test]
    fn work_is_visible_while_it_runs_and_gone_after() {
        let board = Arc::new(Board::default());
        let id = Uuid::now_v7();
        let (meter, tracking) = board.begin(id, "backup", "opsloop", "dump");
        let stored = Arc::new(Mutex::new(Vec::new()));
        let mut upload = MeteredUpload::boxed(Box::new(Sink(stored.clone())), meter.clone());
        upload.write_all(&[0u8; 1000]).expect("write");
        meter.stage("manifest");
        let now = board.get(id).expect("running");
        assert_eq!(
            (now.operation, now.stage, now.bytes, now.target.as_str()),
            ("backup", "manifest", 1000, "opsloop")
        );
        assert_eq!(
            board.running_backup(Some("opsloop")).map(|s| s.backup_id),
            Some(id)
        );
        assert_eq!(board.running_backup(None).map(|s| s.backup_id), Some(id));
        assert!(board.running_backup(Some("files")).is_none());
        upload.commit().expect("commit");
        assert_eq!(stored.lock().expect("lock").len(), 1000);
        drop(tracking);
        assert!(board.get(id).is_none(), "gone when the work ends");
        // A meter without a board records nothing and does not fail.
        Meter::none().stage("x");
        Meter::none().add(3);
    }

    #[test]
    fn an_ended_operation_leaves_a_later_one_on_the_same_backup() {
        let board = Arc::new(Board::default());
        let id = Uuid::now_v7();
        let (_, first) = board.begin(id, "backup", "opsloop", "dump");
        let (_, second) = board.begin(id, "verify", "opsloop", "fetch");
        drop(first);
        assert_eq!(board.get(id).map(|s| s.operation), Some("verify"));
        assert!(board.running_backup(None).is_none());
        drop(second);
        assert!(board.get(id).is_none());
    }
}
