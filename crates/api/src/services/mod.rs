//! The six gRPC services of the api, all served by one [`Api`] value that
//! holds the database, the auth tokens, the audit log and the clock. Every
//! handler runs through [`Api::observe`] (request metrics by method and
//! code, latency) and checks its role first; the work itself is one call
//! into `opsloop_core::workflow`.

mod events;
mod missions;
mod ops;
mod policy;
mod proposals;
mod triggers;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use opsloop_core::audit::AuditLog;
use opsloop_core::domain::input::{Limits, ValidationError, bounded, text};
use opsloop_core::workflow::WorkflowError;
use sea_orm::DatabaseConnection;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use opsloop_core::auth::{Auth, Role};

/// Where "now" comes from; tests may pin it.
pub type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

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
}

impl Api {
    pub fn now(&self) -> DateTime<Utc> {
        (self.clock)()
    }

    fn audit(&self) -> Option<&AuditLog> {
        self.audit.as_deref()
    }

    fn authorize<T>(&self, request: &Request<T>, role: Role) -> Result<(), Status> {
        self.auth.check(request.metadata(), role)
    }

    /// Runs a handler in a span (a child of the caller's W3C trace when the
    /// request carries `traceparent`), recording
    /// `opsloop_grpc_requests_total{method,code}` and
    /// `opsloop_grpc_request_duration_seconds{method}`.
    async fn observe<T>(
        &self,
        method: &'static str,
        trace: BTreeMap<String, String>,
        handler: impl Future<Output = Result<T, Status>>,
    ) -> Result<Response<T>, Status> {
        let span = tracing::info_span!("grpc", method, code = tracing::field::Empty);
        opsloop_core::telemetry::set_parent_from_headers(&span, &trace);
        let started = Instant::now();
        let result = handler.instrument(span.clone()).await;
        let code = match &result {
            Ok(_) => tonic::Code::Ok,
            Err(status) => status.code(),
        };
        span.record("code", format!("{code:?}"));
        metrics::counter!("opsloop_grpc_requests_total", "method" => method, "code" => format!("{code:?}"))
            .increment(1);
        metrics::histogram!("opsloop_grpc_request_duration_seconds", "method" => method)
            .record(started.elapsed().as_secs_f64());
        if let Err(status) = &result
            && matches!(code, tonic::Code::Internal | tonic::Code::Unavailable)
        {
            tracing::warn!(method, code = ?code, message = status.message(), "request failed");
        }
        result.map(Response::new)
    }
}

/// The W3C trace context headers of a request's metadata.
fn trace_headers<T>(request: &Request<T>) -> BTreeMap<String, String> {
    ["traceparent", "tracestate"]
        .into_iter()
        .filter_map(|name| {
            let value = request.metadata().get(name)?.to_str().ok()?;
            Some((name.to_owned(), value.to_owned()))
        })
        .collect()
}

/// A validation error as a gRPC status (INVALID_ARGUMENT naming the field).
fn invalid(e: ValidationError) -> Status {
    Status::from(WorkflowError::Invalid(e))
}

/// A required actor name, defaulting to the caller's role.
fn actor(value: &str, default: &str) -> Result<String, Status> {
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
