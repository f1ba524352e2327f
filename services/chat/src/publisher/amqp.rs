//! The AMQP publisher (feature `amqp`).

use std::{
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use chat_common::{amqp, backoff::Backoff, bus::Payload};
use lapin::{Channel, Confirmation, options::ConfirmSelectOptions};

use super::{EventPublisher, PublishError};

/// Publisher to RabbitMQ's fanout exchange.
pub struct AmqpPublisher {
    channel: RwLock<Option<Channel>>,
    exchange: String,
    confirm_timeout: Duration,
    /// Set by a publish that hit a broker error or timeout: reconnect now.
    broken: AtomicBool,
}

impl AmqpPublisher {
    /// Starts the connection supervisor; the publisher is usable at once (sends fail fast until
    /// the first connection is up).
    pub fn start(url: String, exchange: String, confirm_timeout: Duration) -> Arc<Self> {
        let this = Arc::new(Self {
            channel: RwLock::new(None),
            exchange,
            confirm_timeout,
            broken: AtomicBool::new(false),
        });
        tokio::spawn(supervise(Arc::downgrade(&this), url));
        this
    }

    fn current(&self) -> Option<Channel> {
        self.channel
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn set(&self, channel: Option<Channel>) {
        *self
            .channel
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = channel;
    }
}

async fn open(url: &str, exchange: &str) -> lapin::Result<(lapin::Connection, Channel)> {
    let connection = amqp::connect(url, "chat-service").await?;
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    amqp::declare_exchange(&channel, exchange).await?;
    Ok((connection, channel))
}

/// Keeps a confirm-mode channel open while the publisher lives. It holds only a weak
/// reference between checks, so dropping the publisher closes the connection.
async fn supervise(publisher: std::sync::Weak<AmqpPublisher>, url: String) {
    let mut backoff = Backoff::default();
    loop {
        let Some(exchange) = publisher.upgrade().map(|p| p.exchange.clone()) else {
            return;
        };
        match open(&url, &exchange).await {
            Ok((connection, channel)) => {
                tracing::info!(%exchange, "publisher connected to RabbitMQ");
                backoff.reset();
                let alive = loop {
                    let Some(this) = publisher.upgrade() else {
                        break false;
                    };
                    if this.current().is_none() {
                        this.set(Some(channel.clone()));
                    }
                    let broken = this.broken.swap(false, Ordering::AcqRel);
                    if broken || !connection.status().connected() || !channel.status().connected() {
                        this.set(None);
                        break true;
                    }
                    drop(this);
                    tokio::time::sleep(Duration::from_millis(250)).await;
                };
                let _ = tokio::time::timeout(
                    Duration::from_secs(1),
                    connection.close(200, "reconnecting".into()),
                )
                .await;
                if !alive {
                    return;
                }
                tracing::warn!("publisher lost its RabbitMQ connection; reconnecting");
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot connect the publisher to RabbitMQ");
            }
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

#[async_trait]
impl EventPublisher for AmqpPublisher {
    async fn publish(&self, payload: Payload) -> Result<(), PublishError> {
        let channel = self.current().ok_or(PublishError::NotConnected)?;
        let attempt = async {
            let confirm = amqp::publish_event(&channel, &self.exchange, &payload)
                .await?
                .await?;
            match confirm {
                Confirmation::Nack(_) => Err(PublishError::Nacked),
                _ => Ok(()),
            }
        };
        let result = match tokio::time::timeout(self.confirm_timeout, attempt).await {
            Ok(r) => r,
            Err(_) => Err(PublishError::Timeout(self.confirm_timeout)),
        };
        if matches!(
            result,
            Err(PublishError::Broker(_) | PublishError::Timeout(_))
        ) {
            self.broken.store(true, Ordering::Release);
        }
        result
    }

    fn ready(&self) -> Result<(), String> {
        match self.current() {
            Some(c) if c.status().connected() => Ok(()),
            _ => Err("not connected to RabbitMQ".to_owned()),
        }
    }
}
