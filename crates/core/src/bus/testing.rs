//! Test support for anything that talks to the broker or the database over
//! TCP: isolated bus settings (a unique exchange per test, classic queues
//! that expire) and a [`TcpProxy`] that a test can sever and restore to
//! simulate an outage.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::config::{BusKind, BusSettings, QueueType};

/// The test broker: `OPSLOOP_TEST_AMQP_URL`, default the local RabbitMQ.
pub fn amqp_url() -> String {
    std::env::var("OPSLOOP_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// Panics with instructions when RabbitMQ is not listening: tests that need
/// the broker fail loudly instead of skipping.
pub async fn require_rabbitmq() {
    let url = amqp_url();
    let authority = url
        .split("://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .map(|a| a.rsplit('@').next().unwrap_or(a).to_owned())
        .unwrap_or_else(|| "127.0.0.1:5672".into());
    if TcpStream::connect(&authority).await.is_err() {
        panic!(
            "RabbitMQ is not reachable at {authority}: start it with `rabbitmq-server -detached` \
             (or set OPSLOOP_TEST_AMQP_URL)"
        );
    }
}

/// Bus settings no other test shares: a unique exchange and dead-letter
/// exchange, classic queues that expire a minute after their last consumer.
pub fn isolated_settings(url: &str) -> BusSettings {
    let id = uuid::Uuid::new_v4().simple().to_string();
    BusSettings {
        kind: BusKind::Rabbitmq,
        url: url.to_owned(),
        exchange: format!("test.{id}.events"),
        dead_letter_exchange: format!("test.{id}.dlx"),
        prefetch: 16,
        publish_timeout_ms: 20_000,
        reconnect_max_backoff_ms: 500,
        queue_type: QueueType::Classic,
        queue_expires_ms: Some(60_000),
        ca_file: None,
    }
}

/// A unique queue name for a test.
pub fn queue_name(label: &str) -> String {
    format!("test.{label}.{}", uuid::Uuid::new_v4().simple())
}

/// A TCP forwarder to `upstream` that can be severed (every open connection
/// closed, new ones refused) and restored.
pub struct TcpProxy {
    pub addr: std::net::SocketAddr,
    severed: Arc<AtomicBool>,
    refused: Arc<std::sync::atomic::AtomicUsize>,
    generation: Arc<std::sync::Mutex<CancellationToken>>,
    stop: CancellationToken,
}

impl TcpProxy {
    pub async fn start(upstream: &str) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let severed = Arc::new(AtomicBool::new(false));
        let refused = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let generation = Arc::new(std::sync::Mutex::new(CancellationToken::new()));
        let stop = CancellationToken::new();
        let upstream = upstream.to_owned();
        {
            let severed = severed.clone();
            let refused = refused.clone();
            let generation = generation.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                loop {
                    let accepted = tokio::select! {
                        _ = stop.cancelled() => return,
                        accepted = listener.accept() => accepted,
                    };
                    let Ok((mut client, _)) = accepted else {
                        continue;
                    };
                    if severed.load(Ordering::SeqCst) {
                        refused.fetch_add(1, Ordering::SeqCst);
                        drop(client);
                        continue;
                    }
                    let token = generation.lock().unwrap_or_else(|p| p.into_inner()).clone();
                    let upstream = upstream.clone();
                    tokio::spawn(async move {
                        let Ok(mut server) = TcpStream::connect(&upstream).await else {
                            return;
                        };
                        tokio::select! {
                            _ = token.cancelled() => {}
                            _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        }
                    });
                }
            });
        }
        Ok(Self {
            addr,
            severed,
            refused,
            generation,
            stop,
        })
    }

    /// Closes every forwarded connection and refuses new ones.
    pub fn sever(&self) {
        self.severed.store(true, Ordering::SeqCst);
        let mut token = self.generation.lock().unwrap_or_else(|p| p.into_inner());
        token.cancel();
        *token = CancellationToken::new();
    }

    /// How many connections were refused while severed (attempts made
    /// during an outage).
    pub fn refused_connections(&self) -> usize {
        self.refused.load(Ordering::SeqCst)
    }

    /// Accepts and forwards connections again.
    pub fn restore(&self) {
        self.severed.store(false, Ordering::SeqCst);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.stop.cancel();
        self.sever();
    }
}

/// `url` with its host:port replaced by `addr` (to route it through a proxy).
pub fn via(url: &str, addr: std::net::SocketAddr) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("amqp", url));
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let userinfo = authority
        .rsplit_once('@')
        .map(|(u, _)| format!("{u}@"))
        .unwrap_or_default();
    format!("{scheme}://{userinfo}{addr}/{path}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn rewrites_the_authority_only() {
        let addr: std::net::SocketAddr = "127.0.0.1:4000".parse().expect("addr");
        assert_eq!(
            super::via("amqp://guest:guest@127.0.0.1:5672/%2f", addr),
            "amqp://guest:guest@127.0.0.1:4000/%2f"
        );
        assert_eq!(
            super::via("postgres://postgres@localhost:5432/db?x=1", addr),
            "postgres://postgres@127.0.0.1:4000/db?x=1"
        );
    }
}
