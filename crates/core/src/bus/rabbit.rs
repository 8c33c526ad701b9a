//! RabbitMQ over lapin: one connection per process kept alive by a manager
//! task (reconnect with capped exponential backoff, topology declared
//! idempotently on every connect), publisher confirms, and consumers that
//! re-establish themselves after a reconnect.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::{
    Acker, Bus, BusError, BusMessage, Delivery, QueueSpec, Subscription, SubscriptionInner,
};
use crate::config::{BusSettings, QueueType};
use crate::domain::Doubling;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const LINK_POLL: Duration = Duration::from_millis(200);
const MIN_BACKOFF: Duration = Duration::from_millis(100);

struct Link {
    connection: Connection,
    publisher: Channel,
}

struct Shared {
    settings: BusSettings,
    url: String,
    link: watch::Sender<Option<Arc<Link>>>,
    broken: Notify,
    stop: CancellationToken,
}

/// The RabbitMQ bus. Cloning shares the connection.
#[derive(Clone)]
pub struct RabbitBus {
    shared: Arc<Shared>,
}

impl RabbitBus {
    /// Starts the connection manager; the bus reports connected once the
    /// first connection and topology are up.
    pub fn start(settings: BusSettings, url: String) -> Self {
        let (link, _) = watch::channel(None);
        let shared = Arc::new(Shared {
            settings,
            url,
            link,
            broken: Notify::new(),
            stop: CancellationToken::new(),
        });
        tokio::spawn(manage_connection(shared.clone()));
        Self { shared }
    }

    /// Waits until connected, up to `timeout`.
    pub async fn wait_connected(&self, timeout: Duration) -> Result<(), BusError> {
        wait_for_link(&self.shared, Instant::now() + timeout)
            .await
            .map(|_| ())
            .ok_or_else(|| BusError::Unavailable(format!("no connection within {timeout:?}")))
    }

    /// Closes the connection and stops reconnecting.
    pub async fn close(&self) {
        self.shared.stop.cancel();
        if let Some(link) = self.shared.link.send_replace(None) {
            close_link(&link).await;
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn manage_connection(shared: Arc<Shared>) {
    let mut backoff = Doubling::new(
        MIN_BACKOFF,
        Duration::from_millis(shared.settings.reconnect_max_backoff_ms.max(100)),
    );
    let mut had_link = false;
    super::record_connection_state("connecting");
    loop {
        if shared.stop.is_cancelled() {
            break;
        }
        match establish(&shared).await {
            Ok(link) => {
                super::record_connection_state("connected");
                backoff.reset();
                tracing::info!(
                    exchange = %shared.settings.exchange,
                    reconnect = had_link,
                    "connected to RabbitMQ"
                );
                had_link = true;
                shared.link.send_replace(Some(link.clone()));
                wait_until_broken(&shared, &link).await;
                shared.link.send_replace(None);
                if shared.stop.is_cancelled() {
                    close_link(&link).await;
                    break;
                }
                super::record_connection_state("reconnecting");
                tracing::warn!("lost the RabbitMQ connection; reconnecting");
            }
            Err(error) => {
                tracing::warn!(%error, backoff_ms = backoff.peek().as_millis() as u64, "cannot reach RabbitMQ; retrying");
            }
        }
        tokio::select! {
            _ = shared.stop.cancelled() => break,
            _ = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
    super::record_connection_state("closed");
}

async fn establish(shared: &Shared) -> Result<Arc<Link>, BusError> {
    let properties = ConnectionProperties::default()
        .with_connection_name(format!("opsloop-{}", std::process::id()).into());
    let tls = tls_config(&shared.url, &shared.settings)?;
    let runtime = lapin::runtime::default_runtime().map_err(protocol)?;
    let connection = tokio::time::timeout(
        CONNECT_TIMEOUT,
        Connection::connect_with_config(&shared.url, properties, tls, runtime),
    )
    .await
    .map_err(|_| BusError::Unavailable(format!("connect timed out after {CONNECT_TIMEOUT:?}")))?
    .map_err(|e| connect_error(&shared.url, e))?;
    let publisher = connection.create_channel().await.map_err(protocol)?;
    declare_topology(&publisher, &shared.settings).await?;
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(protocol)?;
    Ok(Arc::new(Link {
        connection,
        publisher,
    }))
}

/// TLS for `amqps://`: the broker's certificate is checked against the
/// system roots plus `tls.ca_file` (read at every connect, so a renewed CA
/// bundle is picked up on reconnect).
fn tls_config(url: &str, settings: &BusSettings) -> Result<lapin::tcp::OwnedTLSConfig, BusError> {
    let mut tls = lapin::tcp::OwnedTLSConfig::default();
    if url.starts_with("amqps://")
        && let Some(path) = &settings.ca_file
    {
        let pem = std::fs::read_to_string(path).map_err(|e| {
            BusError::Unavailable(format!(
                "tls.ca_file {}: cannot read it: {e}",
                path.display()
            ))
        })?;
        tls.cert_chain = Some(pem);
    }
    Ok(tls)
}

/// A connect failure in one line; a TLS failure says what to check.
fn connect_error(url: &str, e: lapin::Error) -> BusError {
    let text = e.to_string();
    if url.starts_with("amqps://")
        && (text.contains("certificate")
            || text.contains("Certificate")
            || text.contains("tls")
            || text.contains("TLS"))
    {
        return BusError::Unavailable(format!(
            "TLS to the broker failed: {text} (the broker's certificate must be signed by a system root or by tls.ca_file, for the host name in bus.url)"
        ));
    }
    BusError::Unavailable(text)
}

/// Closes the connection politely. lapin's close joins its I/O thread, which
/// deadlocks a current-thread runtime (tests, `opsloop migrate`); there the
/// connection is simply dropped, which the broker treats as a disconnect.
async fn close_link(link: &Link) {
    if tokio::runtime::Handle::current().runtime_flavor()
        == tokio::runtime::RuntimeFlavor::MultiThread
    {
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            link.connection.close(200, "shutdown".into()),
        )
        .await;
    }
}

fn protocol(e: lapin::Error) -> BusError {
    BusError::Protocol(e.to_string())
}

fn durable_exchange() -> ExchangeDeclareOptions {
    ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    }
}

/// The exchange, the dead-letter exchange and the queue that keeps dead
/// letters (`<dlx>.parked`). Idempotent.
async fn declare_topology(channel: &Channel, settings: &BusSettings) -> Result<(), BusError> {
    channel
        .exchange_declare(
            settings.exchange.as_str().into(),
            ExchangeKind::Topic,
            durable_exchange(),
            FieldTable::default(),
        )
        .await
        .map_err(protocol)?;
    channel
        .exchange_declare(
            settings.dead_letter_exchange.as_str().into(),
            ExchangeKind::Topic,
            durable_exchange(),
            FieldTable::default(),
        )
        .await
        .map_err(protocol)?;
    let parked = format!("{}.parked", settings.dead_letter_exchange);
    channel
        .queue_declare(
            parked.as_str().into(),
            QueueDeclareOptions::durable(),
            queue_arguments(settings, None, false),
        )
        .await
        .map_err(protocol)?;
    channel
        .queue_bind(
            parked.as_str().into(),
            settings.dead_letter_exchange.as_str().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(protocol)?;
    Ok(())
}

fn queue_arguments(
    settings: &BusSettings,
    dead_letter_exchange: Option<&str>,
    single_active: bool,
) -> FieldTable {
    let mut args = FieldTable::default();
    let queue_type = match settings.queue_type {
        QueueType::Quorum => "quorum",
        QueueType::Classic => "classic",
    };
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(queue_type.into()),
    );
    if let Some(dlx) = dead_letter_exchange {
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(dlx.into()),
        );
    }
    if single_active {
        args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
    }
    if let Some(ms) = settings.queue_expires_ms {
        args.insert("x-expires".into(), AMQPValue::LongLongInt(ms as i64));
    }
    args
}

async fn wait_until_broken(shared: &Shared, link: &Link) {
    let mut poll = tokio::time::interval(LINK_POLL);
    loop {
        tokio::select! {
            _ = shared.stop.cancelled() => return,
            _ = shared.broken.notified() => {}
            _ = poll.tick() => {}
        }
        if !link.connection.status().connected() || !link.publisher.status().connected() {
            return;
        }
    }
}

async fn wait_for_link(shared: &Shared, deadline: Instant) -> Option<Arc<Link>> {
    let mut rx = shared.link.subscribe();
    loop {
        if let Some(link) = rx.borrow_and_update().clone() {
            return Some(link);
        }
        tokio::select! {
            _ = shared.stop.cancelled() => return None,
            changed = tokio::time::timeout_at(deadline, rx.changed()) => match changed {
                Ok(Ok(())) => continue,
                _ => return None,
            }
        }
    }
}

fn to_properties(message: &BusMessage) -> BasicProperties {
    let mut headers = FieldTable::default();
    for (k, v) in &message.headers {
        headers.insert(k.as_str().into(), AMQPValue::LongString(v.as_str().into()));
    }
    BasicProperties::default()
        .with_message_id(message.id.as_str().into())
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_timestamp(chrono::Utc::now().timestamp().max(0) as u64)
        .with_headers(headers)
}

fn from_delivery(delivery: &lapin::message::Delivery) -> BusMessage {
    let mut headers = BTreeMap::new();
    if let Some(table) = delivery.properties.headers() {
        for (k, v) in table.inner() {
            let value = match v {
                AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
                AMQPValue::ShortString(s) => s.as_str().to_owned(),
                other => format!("{other:?}"),
            };
            headers.insert(k.as_str().to_owned(), value);
        }
    }
    BusMessage {
        id: delivery
            .properties
            .message_id()
            .as_ref()
            .map(|s: &ShortString| s.as_str().to_owned())
            .unwrap_or_default(),
        routing_key: delivery.routing_key.as_str().to_owned(),
        payload: delivery.data.clone(),
        headers,
    }
}

#[async_trait]
impl Bus for RabbitBus {
    async fn publish(&self, message: BusMessage) -> Result<(), BusError> {
        let timeout_ms = self.shared.settings.publish_timeout_ms;
        let deadline = Instant::now() + Duration::from_millis(timeout_ms);
        let properties = to_properties(&message);
        let mut last_error = String::from("not connected");
        loop {
            let Some(link) = wait_for_link(&self.shared, deadline).await else {
                if self.shared.stop.is_cancelled() {
                    return Err(BusError::Closed);
                }
                return Err(BusError::PublishTimeout {
                    message_id: message.id.clone(),
                    timeout_ms,
                    reason: last_error,
                });
            };
            let attempt = async {
                link.publisher
                    .basic_publish(
                        self.shared.settings.exchange.as_str().into(),
                        message.routing_key.as_str().into(),
                        BasicPublishOptions::default(),
                        &message.payload,
                        properties.clone(),
                    )
                    .await?
                    .await
            };
            match tokio::time::timeout_at(deadline, attempt).await {
                Ok(Ok(Confirmation::Ack(_))) | Ok(Ok(Confirmation::NotRequested)) => return Ok(()),
                Ok(Ok(Confirmation::Nack(_))) => {
                    return Err(BusError::Nacked {
                        message_id: message.id.clone(),
                    });
                }
                Ok(Err(error)) => {
                    // The link broke under us: let the manager reconnect, then
                    // publish again (consumers deduplicate on the message id).
                    last_error = error.to_string();
                    self.shared.broken.notify_one();
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(_) => {
                    return Err(BusError::PublishTimeout {
                        message_id: message.id.clone(),
                        timeout_ms,
                        reason: "no confirm from the broker".into(),
                    });
                }
            }
        }
    }

    async fn subscribe(&self, spec: QueueSpec) -> Result<Subscription, BusError> {
        let prefetch = spec.prefetch.unwrap_or(self.shared.settings.prefetch);
        let (tx, rx) = mpsc::channel(usize::from(prefetch).max(1));
        let stop = self.shared.stop.child_token();
        let (ready_tx, ready_rx) = oneshot::channel();
        tokio::spawn(consume(
            self.shared.clone(),
            spec.clone(),
            prefetch,
            tx,
            stop.clone(),
            ready_tx,
        ));
        let timeout = Duration::from_millis(self.shared.settings.publish_timeout_ms);
        match tokio::time::timeout(timeout, ready_rx).await {
            Ok(Ok(Ok(()))) => Ok(Subscription {
                inner: SubscriptionInner::Rabbit(RabbitSubscription {
                    rx,
                    _stop: stop.drop_guard(),
                }),
            }),
            Ok(Ok(Err(error))) => {
                stop.cancel();
                Err(error)
            }
            _ => {
                stop.cancel();
                Err(BusError::Unavailable(format!(
                    "queue {} not declared within {timeout:?}",
                    spec.name
                )))
            }
        }
    }

    fn is_connected(&self) -> bool {
        self.shared
            .link
            .borrow()
            .as_ref()
            .is_some_and(|l| l.connection.status().connected())
    }

    fn kind(&self) -> &'static str {
        "rabbitmq"
    }

    async fn close(&self) {
        RabbitBus::close(self).await;
    }
}

async fn open_consumer(
    shared: &Shared,
    link: &Link,
    spec: &QueueSpec,
    prefetch: u16,
) -> Result<(Channel, lapin::Consumer), BusError> {
    let channel = link.connection.create_channel().await.map_err(protocol)?;
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await
        .map_err(protocol)?;
    channel
        .queue_declare(
            spec.name.as_str().into(),
            QueueDeclareOptions::durable(),
            queue_arguments(
                &shared.settings,
                Some(&shared.settings.dead_letter_exchange),
                spec.single_active_consumer,
            ),
        )
        .await
        .map_err(protocol)?;
    for binding in &spec.bindings {
        channel
            .queue_bind(
                spec.name.as_str().into(),
                shared.settings.exchange.as_str().into(),
                binding.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(protocol)?;
    }
    let consumer = channel
        .basic_consume(
            spec.name.as_str().into(),
            format!(
                "opsloop-{}-{}",
                std::process::id(),
                uuid::Uuid::new_v4().simple()
            )
            .into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(protocol)?;
    Ok((channel, consumer))
}

async fn consume(
    shared: Arc<Shared>,
    spec: QueueSpec,
    prefetch: u16,
    tx: mpsc::Sender<Delivery>,
    stop: CancellationToken,
    ready: oneshot::Sender<Result<(), BusError>>,
) {
    let mut ready = Some(ready);
    loop {
        let link = tokio::select! {
            _ = stop.cancelled() => return,
            link = wait_for_link(&shared, Instant::now() + Duration::from_secs(3600)) => match link {
                Some(link) => link,
                None => return,
            },
        };
        let (channel, mut consumer) = match open_consumer(&shared, &link, &spec, prefetch).await {
            Ok(opened) => opened,
            Err(error) => {
                tracing::warn!(queue = %spec.name, %error, "cannot consume; retrying");
                // A declaration the broker refuses (e.g. mismatched arguments)
                // is reported to the first subscribe call rather than retried.
                if link.connection.status().connected()
                    && let Some(ready) = ready.take()
                {
                    let _ = ready.send(Err(error));
                    return;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        if let Some(ready) = ready.take() {
            let _ = ready.send(Ok(()));
        }
        loop {
            tokio::select! {
                _ = stop.cancelled() => {
                    let _ = channel.close(200, "consumer stopped".into()).await;
                    return;
                }
                item = consumer.next() => match item {
                    Some(Ok(delivery)) => {
                        let message = from_delivery(&delivery);
                        let out = Delivery {
                            message,
                            redelivered: delivery.redelivered,
                            acker: Acker::Rabbit(delivery.acker),
                        };
                        if tx.send(out).await.is_err() {
                            let _ = channel.close(200, "consumer dropped".into()).await;
                            return;
                        }
                    }
                    Some(Err(error)) => {
                        tracing::warn!(queue = %spec.name, %error, "consumer interrupted; resubscribing");
                        break;
                    }
                    None => break,
                }
            }
        }
        shared.broken.notify_one();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub struct RabbitSubscription {
    rx: mpsc::Receiver<Delivery>,
    _stop: DropGuard,
}

impl RabbitSubscription {
    pub(super) async fn next(&mut self) -> Option<Delivery> {
        self.rx.recv().await
    }
}

impl std::fmt::Debug for RabbitBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitBus")
            .field("exchange", &self.shared.settings.exchange)
            .field("connected", &self.is_connected())
            .finish()
    }
}

/// Readiness of the broker connection for `/readyz`.
pub struct BusReadiness(pub Arc<dyn Bus>);

#[async_trait]
impl crate::http::ReadinessCheck for BusReadiness {
    fn name(&self) -> &str {
        "broker"
    }
    async fn check(&self) -> Result<(), String> {
        if self.0.is_connected() {
            Ok(())
        } else {
            Err(format!("{} bus disconnected; reconnecting", self.0.kind()))
        }
    }
}

#[cfg(test)]
mod tls_tests {
    use super::*;
    use crate::bus::testing::{amqp_url, isolated_settings, queue_name, require_rabbitmq};
    use crate::tls::test_pki::Ca;

    /// A TLS-terminating proxy (the test's certificate) in front of the
    /// broker's plain AMQP port; returns its port.
    async fn tls_proxy(tls: crate::tls::ServerTls, upstream: String) -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let acceptor = tls.acceptor(&[]);
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let Ok(mut broker) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut broker).await;
                });
            }
        });
        port
    }

    fn broker_addr() -> String {
        let url = amqp_url();
        let after_at = url.rsplit('@').next().unwrap_or("127.0.0.1:5672/");
        after_at
            .split('/')
            .next()
            .unwrap_or("127.0.0.1:5672")
            .to_owned()
    }

    fn amqps_url(port: u16) -> String {
        let url = amqp_url();
        let credentials = url
            .strip_prefix("amqp://")
            .and_then(|rest| rest.split('@').next())
            .unwrap_or("guest:guest");
        format!("amqps://{credentials}@localhost:{port}/%2f")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn amqps_publishes_and_consumes_with_the_broker_certificate_checked() {
        require_rabbitmq().await;
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Ca::new(dir.path(), "broker");
        let (cert, key) = ca.leaf_files(dir.path(), "rabbit", false);
        let tls = crate::tls::ServerTls::from_files(&cert, &key, None).expect("tls");
        let port = tls_proxy(tls, broker_addr()).await;

        let mut settings = isolated_settings(&amqps_url(port));
        settings.ca_file = Some(ca.pem_path.clone());
        let bus = RabbitBus::start(settings.clone(), amqps_url(port));
        bus.wait_connected(Duration::from_secs(10))
            .await
            .expect("connected over amqps");
        let queue = queue_name("amqps");
        let mut sub =
            crate::bus::Bus::subscribe(&bus, crate::bus::QueueSpec::new(&queue, &["event.#"]))
                .await
                .expect("subscribe");
        crate::bus::Bus::publish(
            &bus,
            crate::bus::BusMessage::json(
                "tls-1",
                "event.tls.check",
                &serde_json::json!({"ok": true}),
            ),
        )
        .await
        .expect("publish over amqps");
        let delivery = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .expect("a delivery within 10 s")
            .expect("subscription open");
        assert_eq!(delivery.message.id, "tls-1");
        delivery.ack().await.expect("ack");
        drop(sub);
        bus.close().await;

        // The same broker behind a certificate from a CA the client does not
        // trust: refused, with an error that says so.
        let other = Ca::new(dir.path(), "other");
        let mut untrusting = settings.clone();
        untrusting.ca_file = Some(other.pem_path.clone());
        let (link, _) = watch::channel(None);
        let shared = Shared {
            settings: untrusting,
            url: amqps_url(port),
            link,
            broken: Notify::new(),
            stop: CancellationToken::new(),
        };
        let error = match establish(&shared).await {
            Ok(_) => panic!("a broker certificate from an untrusted CA was accepted"),
            Err(error) => error.to_string(),
        };
        assert!(error.contains("TLS to the broker failed"), "{error}");
        assert!(error.contains("tls.ca_file"), "{error}");
        assert!(
            !error.contains("guest:guest"),
            "no credentials in the error: {error}"
        );
    }
}
