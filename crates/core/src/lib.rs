//! opsloop-core: the plumbing every opsloop daemon shares — configuration,
//! secrets, telemetry, the health/metrics HTTP server, lifecycle (shutdown and
//! systemd notify), the event bus, the store and the generated gRPC contract.
//! Daemons are thin: they wire these pieces together and run their own loop.

pub mod access;
pub mod alert;
pub mod audit;
pub mod auth;
pub mod bus;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod domain;
pub mod grpc;
pub mod healthcheck;
pub mod http;
pub mod lease;
pub mod lifecycle;
pub mod loop_metrics;
pub mod proto;
pub mod schedule;
pub mod secrets;
pub mod store;
pub mod telemetry;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod tls;
pub mod workflow;
