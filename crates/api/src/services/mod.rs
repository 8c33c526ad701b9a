//! The gRPC services of the api, all served by one [`Api`] value that
//! holds the database, the auth tokens, the audit log and the clock. Every
//! handler is one call into `opsloop_core::workflow`; spans, request metrics
//! and the access check run before it, once for every gRPC server, in
//! `opsloop_core::grpc::secure`.

mod events;
mod missions;
mod ops;
mod policy;
mod proposals;
mod rollouts;
mod tokens;
mod triggers;

use std::future::Future;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use opsloop_core::audit::AuditLog;
use opsloop_core::domain::input::{Limits, ValidationError, bounded, text};
use opsloop_core::workflow::WorkflowError;
use sea_orm::DatabaseConnection;
use tokio_util::sync::CancellationToken;
use tonic::{Response, Status};

use opsloop_core::auth::Auth;

/// Where "now" comes from (core's one clock); tests may pin it.
pub type Clock = opsloop_core::clock::SharedClock;

/// The state behind every gRPC service of the api.
#[derive(Clone)]
pub struct Api {
    pub db: DatabaseConnection,
    pub auth: Auth,
    pub audit: Option<Arc<AuditLog>>,
    pub limits: Limits,
    pub clock: Clock,
    /// This process's policy snapshot, checked against the stored policy by
    /// every hot-path write (`opsloop_core::workflow::PolicyCache`).
    pub policy: opsloop_core::workflow::PolicyCache,
    /// Ends open `TailEvents` streams on shutdown.
    pub shutdown: CancellationToken,
    /// Wakes long-polling `ClaimStep`s (fed by PostgreSQL `NOTIFY` through
    /// `opsloop_core::workflow::notify::listen`; on SQLite by the handlers).
    pub steps: opsloop_core::workflow::notify::StepNotifier,
}

impl Api {
    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    pub(crate) fn audit(&self) -> Option<&AuditLog> {
        self.audit.as_deref()
    }

    /// Steps of `kinds` may have become claimable: wakes this process's
    /// long polls on SQLite. On PostgreSQL the writing transaction's
    /// `NOTIFY` does it, for every replica, so nothing is done here.
    fn wake<'a>(&self, kinds: impl IntoIterator<Item = &'a str>) {
        if self.db.get_database_backend() != sea_orm::DbBackend::Postgres {
            for kind in kinds {
                self.steps.notify(kind);
            }
        }
    }

    /// [`Api::wake`] for every kind.
    fn wake_any(&self) {
        if self.db.get_database_backend() != sea_orm::DbBackend::Postgres {
            self.steps.notify_all();
        }
    }
}

/// A handler's answer as a response. Spans, request metrics and the access
/// check happen once for every call, in `opsloop_core::grpc::secure`.
async fn respond<T>(
    handler: impl Future<Output = Result<T, Status>>,
) -> Result<Response<T>, Status> {
    handler.await.map(Response::new)
}

/// A validation error as a gRPC status (INVALID_ARGUMENT naming the field).
fn invalid(e: ValidationError) -> Status {
    Status::from(WorkflowError::Invalid(e))
}

/// Who the audit log and events name: the caller's token name when tokens
/// are configured (what the request says is ignored then); in an open
/// (dev-mode) daemon the request's actor, defaulting to `default`.
fn actor(value: &str, default: &str) -> Result<String, Status> {
    if let Some(caller) = opsloop_core::auth::caller() {
        return Ok(caller.name);
    }
    if value.trim().is_empty() {
        return Ok(default.to_owned());
    }
    text("actor", value, 128).map_err(invalid)
}

fn required(field: &str, value: &str, max: usize) -> Result<String, Status> {
    text(field, value, max).map_err(invalid)
}

fn optional(field: &str, value: &str, max: usize) -> Result<Option<String>, Status> {
    if value.trim().is_empty() {
        return Ok(None);
    }
    bounded(field, value, max).map(Some).map_err(invalid)
}
