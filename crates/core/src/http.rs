//! The HTTP side every daemon serves: `/healthz` (alive), `/readyz` (live
//! checks of the database and the broker, each with its latency) and
//! `/metrics` (Prometheus text). Daemons merge their own routes onto it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// One dependency `/readyz` checks.
#[async_trait]
pub trait ReadinessCheck: Send + Sync {
    fn name(&self) -> &str;
    /// `Err` carries an operator-readable reason.
    async fn check(&self) -> Result<(), String>;
}

/// How long one readiness check may take before it counts as failed.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// The checks behind `/readyz`, shared by every route of a daemon.
#[derive(Clone, Default)]
pub struct Readiness {
    checks: Vec<Arc<dyn ReadinessCheck>>,
}

impl Readiness {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with(mut self, check: Arc<dyn ReadinessCheck>) -> Self {
        self.checks.push(check);
        self
    }

    /// Runs every check concurrently; `(all_ok, body)`.
    pub async fn evaluate(&self) -> (bool, serde_json::Value) {
        let results = futures::future::join_all(self.checks.iter().map(|check| async move {
            let started = Instant::now();
            let outcome = tokio::time::timeout(CHECK_TIMEOUT, check.check())
                .await
                .unwrap_or_else(|_| Err(format!("no answer within {CHECK_TIMEOUT:?}")));
            let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
            (check.name().to_owned(), outcome, latency_ms)
        }))
        .await;
        let mut ok = true;
        let mut checks = serde_json::Map::new();
        for (name, outcome, latency_ms) in results {
            let entry = match outcome {
                Ok(()) => json!({"status": "ok", "latency_ms": latency_ms}),
                Err(error) => {
                    ok = false;
                    json!({"status": "error", "latency_ms": latency_ms, "error": error})
                }
            };
            checks.insert(name, entry);
        }
        let body = json!({"status": if ok { "ready" } else { "not_ready" }, "checks": checks});
        (ok, body)
    }
}

/// `/healthz`, `/readyz` and `/metrics`.
pub fn base_router(service: &'static str, readiness: Readiness) -> Router {
    Router::new()
        .route(
            "/healthz",
            get(move || async move {
                axum::Json(json!({"status": "ok", "service": service, "version": env!("CARGO_PKG_VERSION")}))
            }),
        )
        .route("/readyz", get(readyz).with_state(readiness))
        .route("/metrics", get(metrics))
}

/// The access check of every HTTP route (a `route_layer`, so unknown paths
/// stay 404): the route's roles from [`crate::access::TABLE`] by daemon,
/// method and path pattern, checked before the handler against a bearer
/// token or HTTP basic auth (the token's name and secret). 401 without a
/// valid credential (with `WWW-Authenticate`), 403 for a role that may not
/// make the call or a route missing from the table. Applied by
/// [`crate::daemon::serve_until_stopped`] to the daemon's whole router.
pub fn secure(router: Router, daemon: &'static str, auth: crate::auth::Auth) -> Router {
    router.route_layer(axum::middleware::from_fn_with_state((daemon, auth), guard))
}

async fn guard(
    State((daemon, auth)): State<(&'static str, crate::auth::Auth)>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let method = request.method().as_str().to_owned();
    let (pattern, access) =
        crate::access::http_route(daemon, &method, request.uri().path()).unzip();
    let target = format!(
        "{method} {}",
        pattern.unwrap_or_else(|| request.uri().path())
    );
    if pattern.is_some_and(|p| crate::access::checked_by_session(daemon, p)) {
        // The console checks its session cookie against the same entry.
        return next.run(request).await;
    }
    match auth.authorize(&target, access, request.headers(), true) {
        Ok(principal) => crate::auth::with_caller(principal, next.run(request)).await,
        Err(denied) => {
            auth.record_failure(daemon, &target, &denied);
            let body = axum::Json(json!({"error": denied.message()}));
            if denied.is_unauthenticated() {
                (
                    StatusCode::UNAUTHORIZED,
                    [(
                        header::WWW_AUTHENTICATE,
                        "Bearer realm=\"opsloop\", Basic realm=\"opsloop\"",
                    )],
                    body,
                )
                    .into_response()
            } else {
                (StatusCode::FORBIDDEN, body).into_response()
            }
        }
    }
}

async fn readyz(State(readiness): State<Readiness>) -> Response {
    let (ok, body) = readiness.evaluate().await;
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

async fn metrics() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::telemetry::scrape().await,
    )
        .into_response()
}

/// Serves `router` on `listener` until `shutdown` is cancelled, then lets
/// in-flight requests finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    serve_tls(listener, router, None, shutdown).await
}

/// [`serve`] over TLS when `tls` is given (HTTP/1.1 and HTTP/2 by ALPN).
pub async fn serve_tls(
    listener: TcpListener,
    router: Router,
    tls: Option<&crate::tls::ServerTls>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    if let Some(tls) = tls {
        let stop = shutdown.child_token();
        let incoming = crate::tls::TlsIncoming::new(listener, tls.http_acceptor(), "http", stop)?;
        return axum::serve(incoming, router)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
    }
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    struct Switch(Arc<AtomicBool>);

    #[async_trait]
    impl ReadinessCheck for Switch {
        fn name(&self) -> &str {
            "switch"
        }
        async fn check(&self) -> Result<(), String> {
            if self.0.load(Ordering::SeqCst) {
                Ok(())
            } else {
                Err("switched off".into())
            }
        }
    }

    #[tokio::test]
    async fn readiness_reports_each_check() {
        let flag = Arc::new(AtomicBool::new(true));
        let readiness = Readiness::new().with(Arc::new(Switch(flag.clone())));
        let (ok, body) = readiness.evaluate().await;
        assert!(ok);
        assert_eq!(body["checks"]["switch"]["status"], "ok");
        flag.store(false, Ordering::SeqCst);
        let (ok, body) = readiness.evaluate().await;
        assert!(!ok);
        assert_eq!(body["checks"]["switch"]["error"], "switched off");
    }
}
