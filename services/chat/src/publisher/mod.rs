//! Publishing `new_message` events: to RabbitMQ's fanout exchange with publisher confirms, or to
//! the in-process bus of the standalone stack.
//!
//! The AMQP publisher keeps one channel in confirm mode. Concurrent sends publish on it without
//! waiting for each other and each awaits its own confirm, so confirms overlap. A supervisor task
//! owns the connection: it reconnects with backoff whenever the connection drops (lapin's own
//! recovery is not used), and sends made while it is down fail fast.

#[cfg(feature = "amqp")]
mod amqp;

use std::time::Duration;

use async_trait::async_trait;
use chat_common::bus::{LocalBus, Payload};

#[cfg(feature = "amqp")]
pub use amqp::AmqpPublisher;

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("not connected to the broker")]
    NotConnected,
    #[error("broker refused the event")]
    Nacked,
    #[error("no confirm within {0:?}")]
    Timeout(Duration),
    #[cfg(feature = "amqp")]
    #[error("broker error: {0}")]
    Broker(#[from] lapin::Error),
}

#[async_trait]
pub trait EventPublisher: Send + Sync + 'static {
    /// Publishes one event; returns once the broker confirmed it.
    async fn publish(&self, payload: Payload) -> Result<(), PublishError>;
    /// `Ok` when events can be published now (for `/readyz`).
    fn ready(&self) -> Result<(), String>;
}

/// The standalone stack's publisher: the in-process bus (it waits for room, never drops).
pub struct LocalPublisher(pub LocalBus);

#[async_trait]
impl EventPublisher for LocalPublisher {
    async fn publish(&self, payload: Payload) -> Result<(), PublishError> {
        self.0.publish(payload).await;
        Ok(())
    }

    fn ready(&self) -> Result<(), String> {
        Ok(())
    }
}
