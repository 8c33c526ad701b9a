//! The lease that keeps one backup at a time per target across every agent
//! process (the lease itself is `opsloop_core::lease`).

pub use opsloop_core::lease::{acquire, is_held, release};

/// The lease name guarding backups of `target`.
pub fn backup_lease(target: &str) -> String {
    format!("backup:{target}")
}
