//! The `opsloop` CLI as a library: the gRPC client side of every command
//! (one module per command group), output formatting, and the worker loop
//! that `opsloop worker` and `opsloop dev --demo` share.

pub mod alerts;
pub mod backup;
pub mod client;
pub mod event;
pub mod http;
pub mod mission;
pub mod ops;
pub mod output;
pub mod parse;
pub mod policy;
pub mod proposal;
pub mod trigger;
pub mod worker;
pub mod worker_cmd;
