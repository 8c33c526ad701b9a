//! gRPC plumbing every daemon shares: server reflection and `grpc.health.v1`
//! on every gRPC port, the message size limit, and one way to serve a set of
//! routes on a listener until shutdown.

use std::future::Future;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::service::Routes;
use tonic::transport::Server;
use tonic_health::server::HealthReporter;

use crate::proto::FILE_DESCRIPTOR_SET;

/// Largest request message a daemon decodes (4 MiB); larger ones are refused
/// with `RESOURCE_EXHAUSTED` before any handler runs. Daemons apply it to each
/// generated server with `.max_decoding_message_size(MAX_DECODING_MESSAGE_SIZE)`.
pub const MAX_DECODING_MESSAGE_SIZE: usize = 4 * 1024 * 1024;

/// HTTP/2 ping interval, so idle long-lived streams (`TailEvents`) survive
/// NATs and load balancers, and dead peers are noticed.
const HTTP2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);

/// How long a keepalive ping may go unanswered before the connection is closed.
const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Server reflection (`grpc.reflection.v1`) over the `opsloop.v1` contract and
/// `grpc.health.v1`, so `grpcurl` can list and describe every service.
pub fn reflection_v1() -> Result<
    tonic_reflection::server::v1::ServerReflectionServer<
        impl tonic_reflection::server::v1::ServerReflection,
    >,
    tonic_reflection::server::Error,
> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
}

/// The same reflection service under `grpc.reflection.v1alpha`, for clients
/// that only speak the older protocol.
pub fn reflection_v1alpha() -> Result<
    tonic_reflection::server::v1alpha::ServerReflectionServer<
        impl tonic_reflection::server::v1alpha::ServerReflection,
    >,
    tonic_reflection::server::Error,
> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
}

/// The standard routes of every gRPC port: reflection (v1 and v1alpha) and
/// `grpc.health.v1`. Add the daemon's own services with
/// [`Routes::add_service`], and report their health through the returned
/// [`HealthReporter`] (`set_serving::<FooServer<_>>()`, `set_not_serving` while
/// draining). The overall status (service name `""`) starts as `SERVING`.
pub fn standard_routes() -> Result<(Routes, HealthReporter), tonic_reflection::server::Error> {
    let (reporter, health) = tonic_health::server::health_reporter();
    let routes = Routes::new(health)
        .add_service(reflection_v1()?)
        .add_service(reflection_v1alpha()?);
    Ok((routes, reporter))
}

/// The one middleware stack of every gRPC server, applied to a daemon's
/// whole set of routes (its services, reflection and health) by
/// [`crate::daemon::serve_until_stopped`]. For each call, before the handler:
/// a `grpc` span whose parent is the caller's W3C trace (`traceparent`,
/// `tracestate` metadata); authentication and authorization from
/// [`crate::access::TABLE`] (a method missing from it is refused); the caller
/// ([`crate::auth::caller`]) set for the handler. After it:
/// `opsloop_grpc_requests_total{service,method,code}` and
/// `opsloop_grpc_request_duration_seconds{service,method}` (time to the
/// response headers; for a server stream, to its first message), and a
/// warning for `INTERNAL`/`UNAVAILABLE`.
pub fn secure(routes: Routes, daemon: &'static str, auth: crate::auth::Auth) -> Routes {
    Routes::from(
        routes
            .into_axum_router()
            .layer(axum::middleware::from_fn_with_state((daemon, auth), guard)),
    )
}

async fn guard(
    axum::extract::State((daemon, auth)): axum::extract::State<(&'static str, crate::auth::Auth)>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let path = request.uri().path().to_owned();
    let access = crate::access::grpc_access(&path);
    // Labels only for listed methods, so random paths cannot grow the
    // metrics without bound.
    let (service, method) = match (access, path.trim_start_matches('/').split_once('/')) {
        (Some(_), Some((service, method))) => (service.to_owned(), method.to_owned()),
        _ => ("unknown".to_owned(), "unknown".to_owned()),
    };
    let span = tracing::info_span!(
        "grpc",
        daemon,
        service = %service,
        method = %method,
        code = tracing::field::Empty,
        actor = tracing::field::Empty,
    );
    let trace: std::collections::BTreeMap<String, String> = ["traceparent", "tracestate"]
        .into_iter()
        .filter_map(|name| {
            let value = request.headers().get(name)?.to_str().ok()?;
            Some((name.to_owned(), value.to_owned()))
        })
        .collect();
    crate::telemetry::set_parent_from_headers(&span, &trace);
    let started = std::time::Instant::now();
    let response = match auth.authorize(&path, access, request.headers(), false) {
        Ok(principal) => {
            if let Some(p) = &principal {
                span.record("actor", p.name.as_str());
            }
            tracing::Instrument::instrument(
                crate::auth::with_caller(principal, next.run(request)),
                span.clone(),
            )
            .await
        }
        Err(denied) => {
            auth.record_failure(daemon, &path, &denied);
            denied
                .to_status()
                .into_http::<tonic::body::Body>()
                .map(axum::body::Body::new)
        }
    };
    let status = tonic::Status::from_header_map(response.headers());
    let code = status.as_ref().map_or(tonic::Code::Ok, tonic::Status::code);
    span.record("code", format!("{code:?}"));
    metrics::counter!(
        "opsloop_grpc_requests_total",
        "service" => service.clone(),
        "method" => method.clone(),
        "code" => format!("{code:?}")
    )
    .increment(1);
    metrics::histogram!(
        "opsloop_grpc_request_duration_seconds",
        "service" => service,
        "method" => method.clone()
    )
    .record(started.elapsed().as_secs_f64());
    if let Some(status) = status
        && matches!(code, tonic::Code::Internal | tonic::Code::Unavailable)
    {
        let _entered = span.enter();
        tracing::warn!(method, code = ?code, message = status.message(), "request failed");
    }
    response
}

/// Serves `routes` on `listener` until `shutdown` completes, then stops
/// accepting, lets in-flight calls finish and returns.
///
/// Binding is the caller's job, so tests can bind port 0 and read the address
/// before serving. Shutdown waits for open calls, so long-lived streams
/// (`TailEvents`) must end themselves when the same shutdown signal fires.
pub async fn serve(
    listener: TcpListener,
    routes: Routes,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    serve_tls(listener, routes, None, shutdown).await
}

/// [`serve`] over TLS when `tls` is given: each accepted connection is
/// handshaken with the (reloadable) certificate of [`crate::tls::ServerTls`];
/// a client that does not speak TLS, or presents no valid client certificate
/// under mutual TLS, is dropped before any call.
pub async fn serve_tls(
    listener: TcpListener,
    routes: Routes,
    tls: Option<&crate::tls::ServerTls>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let server = Server::builder()
        .http2_keepalive_interval(Some(HTTP2_KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(HTTP2_KEEPALIVE_TIMEOUT))
        .add_routes(routes);
    if let Some(tls) = tls {
        let stop = tokio_util::sync::CancellationToken::new();
        let incoming =
            match crate::tls::TlsIncoming::new(listener, tls.grpc_acceptor(), "grpc", stop.clone())
            {
                Ok(incoming) => incoming,
                Err(error) => {
                    tracing::error!(%error, "gRPC listener has no local address");
                    return Ok(());
                }
            };
        let _stop_accepting = stop.drop_guard();
        return server
            .serve_with_incoming_shutdown(incoming.into_stream(), shutdown)
            .await;
    }
    let incoming = TcpListenerStream::new(listener).map(|accepted| {
        accepted.inspect(|stream| {
            // Small request/response messages: don't wait for Nagle. Best
            // effort; a socket that refuses the option still works.
            if let Err(error) = stream.set_nodelay(true) {
                tracing::debug!(%error, "could not set TCP_NODELAY on a gRPC connection");
            }
        })
    });
    server
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}

/// The canonical gRPC name of a status code, e.g. `FAILED_PRECONDITION`.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// A UTC time as the contract's `google.protobuf.Timestamp`.
pub fn timestamp(t: chrono::DateTime<chrono::Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

/// A request's timestamp field as UTC time; `INVALID_ARGUMENT` naming
/// `field` when it is out of range.
pub fn from_timestamp(
    field: &str,
    t: &prost_types::Timestamp,
) -> Result<chrono::DateTime<chrono::Utc>, tonic::Status> {
    u32::try_from(t.nanos)
        .ok()
        .and_then(|nanos| chrono::DateTime::from_timestamp(t.seconds, nanos))
        .ok_or_else(|| tonic::Status::invalid_argument(format!("{field}: not a valid timestamp")))
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;

    #[test]
    fn descriptor_set_holds_every_opsloop_service() {
        let set = prost_types::FileDescriptorSet::decode(FILE_DESCRIPTOR_SET)
            .expect("the descriptor set written by build.rs decodes");
        let services: Vec<String> = set
            .file
            .iter()
            .filter(|file| file.package() == "opsloop.v1")
            .flat_map(|file| file.service.iter().map(|s| s.name().to_owned()))
            .collect();
        for expected in [
            "ProposalService",
            "MissionService",
            "EventService",
            "PolicyService",
            "TriggerService",
            "OpsService",
            "AlertService",
            "BackupService",
        ] {
            assert!(
                services.iter().any(|s| s == expected),
                "{expected} missing from {services:?}"
            );
        }
    }

    #[test]
    fn reflection_services_build_from_the_descriptor_set() {
        reflection_v1().expect("v1 reflection builds");
        reflection_v1alpha().expect("v1alpha reflection builds");
    }

    #[tokio::test]
    async fn serve_answers_health_checks_and_stops_on_shutdown() {
        use tonic_health::pb::HealthCheckRequest;
        use tonic_health::pb::health_check_response::ServingStatus;
        use tonic_health::pb::health_client::HealthClient;

        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind port 0");
        let addr = listener.local_addr().expect("local addr");
        let (routes, _reporter) = standard_routes().expect("standard routes");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, routes, async {
            let _ = stopped.await;
        }));

        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("valid endpoint")
            .connect()
            .await
            .expect("connect");
        let mut client = HealthClient::new(channel.clone());
        let status = client
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .expect("health check")
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32);

        let services = reflected_services(channel).await;
        for expected in [
            "opsloop.v1.ProposalService",
            "opsloop.v1.BackupService",
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
        ] {
            assert!(
                services.iter().any(|s| s == expected),
                "{expected} missing from {services:?}"
            );
        }

        drop(client);
        stop.send(()).expect("server still running");
        server
            .await
            .expect("server task joins")
            .expect("server stops cleanly");
    }

    /// Service names the server lists over `grpc.reflection.v1`.
    async fn reflected_services(channel: tonic::transport::Channel) -> Vec<String> {
        use tonic_reflection::pb::v1::ServerReflectionRequest;
        use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut responses = ServerReflectionClient::new(channel)
            .server_reflection_info(tokio_stream::iter([request]))
            .await
            .expect("reflection call")
            .into_inner();
        let response = responses
            .message()
            .await
            .expect("reflection answer")
            .expect("one reflection message");
        match response.message_response {
            Some(MessageResponse::ListServicesResponse(list)) => {
                list.service.into_iter().map(|s| s.name).collect()
            }
            other => panic!("unexpected reflection answer: {other:?}"),
        }
    }
}
