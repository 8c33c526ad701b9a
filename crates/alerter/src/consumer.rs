//! The bus input: consumes `alert.#` from the `opsloop.alerter` queue (single
//! active consumer) while this alerter holds the delivery lease, so a standby
//! takes over the queue with the lease; idempotent on message id. A malformed message is dead-lettered; a
//! store failure puts the message back for another try.

use std::sync::Arc;
use std::time::Duration;

use opsloop_core::bus::{Bus, QueueSpec};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::service::{Alerter, AlerterError};

/// The default queue name (`alerter.queue`).
pub const QUEUE: &str = "opsloop.alerter";
pub const BINDING: &str = "alert.#";

/// Pause before a message that failed on the store is handed back.
const REQUEUE_PAUSE: Duration = Duration::from_millis(500);

/// Consumes while this alerter holds the delivery lease (so alerts from the
/// bus land where they are delivered), until `shutdown`.
pub async fn consume(
    bus: Arc<dyn Bus>,
    queue: String,
    alerter: Arc<Alerter>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut leadership = alerter.leadership();
    loop {
        while !*leadership.borrow_and_update() {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                changed = leadership.changed() => if changed.is_err() { return Ok(()) },
            }
        }
        let mut subscription = bus
            .subscribe(QueueSpec::new(queue.clone(), &[BINDING]).single_active())
            .await?;
        tracing::info!(%queue, "consuming alerts from the bus");
        loop {
            let delivery = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                changed = leadership.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                    if !*leadership.borrow_and_update() {
                        tracing::info!(%queue, "standing by: no longer consuming alerts");
                        break;
                    }
                    continue;
                }
                next = subscription.next() => match next {
                    Some(delivery) => delivery,
                    None => return Ok(()),
                },
            };
            let span = tracing::info_span!(
                "alert_message",
                message_id = %delivery.message.id,
                routing_key = %delivery.message.routing_key
            );
            opsloop_core::telemetry::set_parent_from_headers(&span, &delivery.message.headers);
            settle(&alerter, delivery).instrument(span).await;
        }
    }
}

async fn settle(alerter: &Alerter, delivery: opsloop_core::bus::Delivery) {
    let id = delivery.message.id.clone();
    let routing_key = delivery.message.routing_key.clone();
    let settled = match alerter
        .receive_message(&id, &delivery.message.payload)
        .await
    {
        Ok(fresh) => {
            tracing::debug!(message_id = %id, %routing_key, fresh, "alert message consumed");
            delivery.ack().await
        }
        Err(AlerterError::Store(error)) => {
            tracing::warn!(message_id = %id, %error, "cannot store alert message; requeueing");
            tokio::time::sleep(REQUEUE_PAUSE).await;
            delivery.nack(true).await
        }
        Err(error) => {
            tracing::error!(message_id = %id, %routing_key, %error, "malformed alert message dead-lettered");
            metrics::counter!("opsloop_alerter_messages_rejected_total").increment(1);
            delivery.nack(false).await
        }
    };
    if let Err(error) = settled {
        tracing::warn!(message_id = %id, %error, "cannot settle alert message");
    }
}
