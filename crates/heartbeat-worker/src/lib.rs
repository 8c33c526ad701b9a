//! The heartbeat-worker daemon: the loop's clock (trigger rules, reactions,
//! insight promotion, stale-step recovery, ops health, budget, summaries).
//! Serves HTTP health and metrics.

use std::net::SocketAddr;

use opsloop_core::daemon::{Endpoints, Infra, bind, serve_until_stopped};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// The service name in logs, metrics and the start line.
pub const SERVICE: &str = "heartbeat-worker";

/// The `[heartbeat]` config section.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HeartbeatSettings {
    /// HTTP listen address (health, readiness, metrics).
    pub http_addr: String,
}

impl Default for HeartbeatSettings {
    fn default() -> Self {
        Self {
            http_addr: "127.0.0.1:9755".into(),
        }
    }
}

/// The daemon, built and bound, ready to run.
pub struct HeartbeatApp {
    infra: Infra,
    http: TcpListener,
}

impl HeartbeatApp {
    /// Reads the `[heartbeat]` section and binds the listeners.
    pub async fn build(infra: Infra) -> anyhow::Result<Self> {
        let settings: HeartbeatSettings = infra.config.section("heartbeat")?;
        let http = bind("heartbeat.http_addr", &settings.http_addr).await?;
        Ok(Self {
            infra,
            http,
        })
    }

    /// The bound HTTP address.
    pub fn http_addr(&self) -> std::io::Result<SocketAddr> {
        self.http.local_addr()
    }

    /// Serves until the infrastructure's shutdown token is cancelled.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let grpc = None;
        let router = opsloop_core::http::base_router(SERVICE, self.infra.readiness());
        let endpoints = Endpoints {
            service: SERVICE,
            grpc,
            http: (self.http, router),
        };
        serve_until_stopped(&self.infra, endpoints, JoinSet::new()).await
    }
}
