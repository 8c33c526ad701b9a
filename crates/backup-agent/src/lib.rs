//! The backup-agent daemon: scheduled, checksummed, verified backups with GFS
//! retention. Serves `BackupService` over gRPC and health and metrics over HTTP.

pub mod agent;
pub mod app;
pub mod archive;
pub mod auth;
pub mod config;
pub mod db;
pub mod lease;
pub mod pipeline;
pub mod retention;
pub mod schedule;
pub mod store;
pub mod verify;

/// The service name in logs, metrics and the start line.
pub const SERVICE: &str = "backup-agent";
pub mod service;

pub use app::BackupApp;
pub use config::BackupSettings;
