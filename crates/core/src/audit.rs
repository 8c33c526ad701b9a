//! The audit log file: every policy change, approval, rejection, emergency
//! stop and restore as one JSON line in `var/logs/audit_events.jsonl`, rotated
//! by size (`file.1` is the newest rotated generation). The database copy is
//! written by the code that makes the change, in its own transaction.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Serialize;

use crate::config::AuditSettings;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AuditRecord {
    pub at: chrono::DateTime<chrono::Utc>,
    pub actor: String,
    pub action: String,
    pub subject: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<serde_json::Value>,
}

#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    max_bytes: u64,
    retention: u32,
    write_lock: Mutex<()>,
}

impl AuditLog {
    pub fn new(settings: &AuditSettings) -> Self {
        Self {
            path: settings.log_path.clone(),
            max_bytes: settings.max_bytes.max(1),
            retention: settings.retention,
            write_lock: Mutex::new(()),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one record, rotating first when the file is full.
    pub fn append(&self, record: &AuditRecord) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(record).map_err(std::io::Error::other)?;
        line.push(b'\n');
        let _guard = self
            .write_lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(dir) = self.path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)?;
        }
        let size = std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0);
        if size > 0 && size + line.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        file.write_all(&line)?;
        file.flush()
    }

    fn generation(&self, n: u32) -> PathBuf {
        let mut name = self.path.clone().into_os_string();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    }

    fn rotate(&self) -> std::io::Result<()> {
        if self.retention == 0 {
            return std::fs::remove_file(&self.path);
        }
        let oldest = self.generation(self.retention);
        if oldest.exists() {
            std::fs::remove_file(&oldest)?;
        }
        for n in (1..self.retention).rev() {
            let from = self.generation(n);
            if from.exists() {
                std::fs::rename(&from, self.generation(n + 1))?;
            }
        }
        std::fs::rename(&self.path, self.generation(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_by_size_and_keeps_retention_generations() {
        let dir = tempfile::tempdir().expect("tempdir");
        let settings = AuditSettings {
            log_path: dir.path().join("logs/audit_events.jsonl"),
            max_bytes: 300,
            retention: 2,
        };
        let log = AuditLog::new(&settings);
        for i in 0..20 {
            log.append(&AuditRecord {
                at: chrono::Utc::now(),
                actor: "admin".into(),
                action: "policy.set".into(),
                subject: format!("key{i}"),
                reason: None,
                before: None,
                after: Some(serde_json::json!({"enabled": true})),
            })
            .expect("append");
        }
        let current = std::fs::read_to_string(log.path()).expect("read");
        assert!(current.contains("key19"));
        assert!(std::fs::metadata(log.path()).expect("meta").len() <= 300);
        assert!(log.generation(1).exists());
        assert!(log.generation(2).exists());
        assert!(!log.generation(3).exists(), "retention bounds generations");
        for line in current.lines() {
            let v: serde_json::Value = serde_json::from_str(line).expect("json line");
            assert_eq!(v["action"], "policy.set");
        }
    }
}
