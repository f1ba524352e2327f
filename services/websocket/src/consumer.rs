//! Consuming `new_message` events.
//!
//! From RabbitMQ: each replica declares its own server-named, exclusive, auto-delete queue bound
//! to the fanout exchange, consumes it with manual acks and a prefetch window, and acks each event
//! once it has been handed to the sockets. When the connection drops, the supervisor reconnects
//! with backoff and declares a *fresh* queue (lapin's recovery would re-declare the old
//! server-named queue, which the broker deleted). Open sockets keep being served meanwhile.
//!
//! From the in-process bus (standalone stack): a broadcast subscription.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use chat_common::{amqp, backoff::Backoff, bus::LocalBus};
use futures_util::StreamExt;
use lapin::{
    Connection, Consumer,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueBindOptions,
        QueueDeclareOptions,
    },
    types::FieldTable,
};
use tokio::sync::broadcast::error::RecvError;

use crate::hub::Hub;

/// Where events come from.
#[derive(Clone, Debug)]
pub enum EventSource {
    Amqp {
        url: String,
        exchange: String,
        prefetch: u16,
    },
    Local(LocalBus),
}

/// Consumes `source` into `hub` until `stop` is set; `ready` tells whether events flow.
pub async fn run(
    source: EventSource,
    hub: Arc<Hub>,
    ready: Arc<AtomicBool>,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    match source {
        EventSource::Local(bus) => {
            let mut rx = bus.subscribe();
            drop(bus);
            let mut stop = stop;
            ready.store(true, Ordering::Release);
            loop {
                let received = tokio::select! {
                    _ = stop.changed() => break,
                    r = rx.recv() => r,
                };
                match received {
                    Ok(payload) => hub.handle(&payload).await,
                    Err(RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "event consumer lagged");
                    }
                    Err(RecvError::Closed) => break,
                }
            }
            ready.store(false, Ordering::Release);
        }
        EventSource::Amqp {
            url,
            exchange,
            prefetch,
        } => {
            amqp(&url, &exchange, prefetch, &hub, &ready, stop).await;
        }
    }
}

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

async fn amqp(
    url: &str,
    exchange: &str,
    prefetch: u16,
    hub: &Hub,
    ready: &AtomicBool,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut backoff = Backoff::default();
    while !*stop.borrow() {
        match subscribe(url, exchange, prefetch).await {
            Ok((connection, mut consumer, queue)) => {
                tracing::info!(%queue, %exchange, "consuming events");
                backoff.reset();
                ready.store(true, Ordering::Release);
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
                                hub.handle(&delivery.data).await;
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
