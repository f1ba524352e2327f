//! Consuming from RabbitMQ (feature `amqp`).

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use chat_common::{amqp, backoff::Backoff};
use futures_util::StreamExt;
use lapin::{
    Connection, Consumer,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueBindOptions,
        QueueDeclareOptions,
    },
    types::FieldTable,
};

use crate::{hub::Hub, signals::SignalBus};

async fn subscribe(
    url: &str,
    exchange: &str,
    prefetch: u16,
) -> lapin::Result<(Connection, Consumer, String)> {
    let connection = amqp::connect(url, "websocket-service").await?;
    let channel = connection.create_channel().await?;
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    amqp::declare_exchange(&channel, exchange).await?;
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                durable: false,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    let name = queue.name().to_string();
    channel
        .queue_bind(
            name.clone().into(),
            exchange.to_owned().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let consumer = channel
        .basic_consume(
            name.clone().into(),
            "websocket-service".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok((connection, consumer, name))
}

/// Events handled per cumulative ack, at most.
const ACK_EVERY: u32 = 64;
/// An idle consumer acks what it has handled after this long.
const ACK_QUIET: Duration = Duration::from_millis(5);

/// Acks every delivery up to and including this one.
async fn ack(acker: &lapin::Acker) -> bool {
    match acker.ack(BasicAckOptions { multiple: true }).await {
        Ok(_) => true,
        Err(e) => {
            tracing::warn!(error = %e, "ack failed");
            false
        }
    }
}

pub(super) async fn consume(
    url: &str,
    exchange: &str,
    prefetch: u16,
    hub: &Hub,
    signals: &SignalBus,
    ready: &AtomicBool,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut backoff = Backoff::default();
    while !*stop.borrow() {
        match subscribe(url, exchange, prefetch).await {
            Ok((connection, mut consumer, queue)) => {
                tracing::info!(%queue, %exchange, "consuming events");
                backoff.reset();
                // Typing events go out on a channel of their own on this connection: a publish
                // never waits behind the consumer's deliveries, and dies with the connection.
                match connection.create_channel().await {
                    Ok(channel) => signals.set_channel(Some(channel)),
                    Err(e) => tracing::warn!(error = %e, "no channel for typing events"),
                }
                ready.store(true, Ordering::Release);
                // Bound now; what was published before (while no queue of ours existed) is read
                // from the store by each open socket.
                hub.events_interrupted();
                // Acks are cumulative (`multiple`): one per ACK_EVERY events, or as soon as the
                // queue goes quiet, so each event costs no broker round trip of its own.
                let mut unacked: Option<(lapin::Acker, u32)> = None;
                loop {
                    let quiet = tokio::time::sleep(ACK_QUIET);
                    tokio::select! {
                        _ = stop.changed() => break,
                        () = quiet, if unacked.is_some() => {
                            if let Some((acker, _)) = unacked.take()
                                && !ack(&acker).await
                            {
                                break;
                            }
                        }
                        next = consumer.next() => match next {
                            Some(Ok(delivery)) => {
                                hub.handle(&delivery.data);
                                let count = unacked.take().map_or(1, |(_, n)| n + 1);
                                if count >= ACK_EVERY {
                                    if !ack(&delivery.acker).await {
                                        break;
                                    }
                                } else {
                                    unacked = Some((delivery.acker, count));
                                }
                            }
                            Some(Err(e)) => {
                                tracing::warn!(error = %e, "event consumer failed");
                                break;
                            }
                            None => break,
                        },
                    }
                }
                ready.store(false, Ordering::Release);
                signals.set_channel(None);
                let _ = tokio::time::timeout(
                    Duration::from_secs(1),
                    connection.close(200, "bye".into()),
                )
                .await;
                if *stop.borrow() {
                    return;
                }
                tracing::warn!("lost the RabbitMQ consumer; reconnecting with a fresh queue");
            }
            Err(e) => tracing::warn!(error = %e, "cannot subscribe to RabbitMQ"),
        }
        let delay = backoff.next_delay();
        tokio::select! {
            _ = stop.changed() => return,
            () = tokio::time::sleep(delay) => {},
        }
    }
}
