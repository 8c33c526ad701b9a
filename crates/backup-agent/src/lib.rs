//! The backup-agent daemon: scheduled, checksummed, verified backups with GFS
//! retention. Serves `BackupService` over gRPC and health and metrics over
//! HTTP. Pure pieces (`retention`, `schedule`, `archive`) are unit-tested
//! without I/O; `pipeline`, `store` (a local directory, or `s3` for
//! S3-compatible buckets) and `verify` do the work; `agent` ties them to the
//! database, bus and metrics; `app` is the daemon's wiring.

pub mod agent;
pub mod app;
pub mod archive;
pub mod config;
pub mod crypt;
pub mod db;
pub mod lease;
pub mod pipeline;
pub mod progress;
pub mod retention;
pub mod s3;
pub mod schedule;
pub mod service;
pub mod store;
pub mod verify;

pub use app::BackupApp;
pub use config::BackupSettings;

/// The service name in logs, metrics and the start line.
pub const SERVICE: &str = "backup-agent";
