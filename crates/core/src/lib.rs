//! opsloop-core: the plumbing every opsloop daemon shares — configuration,
//! secrets, telemetry, the health/metrics HTTP server, lifecycle (shutdown and
//! systemd notify), the event bus, the store and the generated gRPC contract.
//! Daemons are thin: they wire these pieces together and run their own loop.

pub mod audit;
pub mod bus;
pub mod config;
pub mod daemon;
pub mod http;
pub mod lifecycle;
pub mod secrets;
pub mod telemetry;
pub mod proto;
pub mod grpc;
pub mod store;
pub mod domain;
pub mod workflow;
