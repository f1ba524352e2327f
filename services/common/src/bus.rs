//! Event fan-out: RabbitMQ's fanout exchange in the microservices, or an in-process broadcast in
//! the standalone stack. Both carry the same JSON payloads.

use std::{sync::Arc, time::Duration};

use lapin::{
    Channel, Connection, ConnectionProperties, ExchangeKind, options::ExchangeDeclareOptions,
    types::FieldTable,
};
use tokio::sync::broadcast;

/// The exchange the original system used.
pub const DEFAULT_EXCHANGE: &str = "chat_exchange";

/// An event payload (the JSON bytes of an [`crate::event::Event`]), cheap to clone.
pub type Payload = Arc<[u8]>;

/// The in-process fan-out of the standalone stack: every subscriber sees every event.
#[derive(Clone, Debug)]
pub struct LocalBus {
    sender: broadcast::Sender<Payload>,
}

impl LocalBus {
    /// `capacity` events may be buffered for the slowest subscriber before it lags.
    pub fn new(capacity: usize) -> Self {
        Self {
            sender: broadcast::channel(capacity).0,
        }
    }

    /// Hands `payload` to every current subscriber (none is fine).
    pub fn publish(&self, payload: Payload) {
        let _ = self.sender.send(payload);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Payload> {
        self.sender.subscribe()
    }
}

impl Default for LocalBus {
    fn default() -> Self {
        Self::new(65_536)
    }
}

/// Opens an AMQP connection on the tokio runtime, named for the management UI.
pub async fn connect(url: &str, name: &str) -> lapin::Result<Connection> {
    Connection::connect(
        url,
        ConnectionProperties::default().with_connection_name(name.to_owned().into()),
    )
    .await
}

/// Declares the exchange exactly as the original did: fanout, not durable.
pub async fn declare_exchange(channel: &Channel, exchange: &str) -> lapin::Result<()> {
    channel
        .exchange_declare(
            exchange.to_owned().into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                durable: false,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
}

/// Exponential backoff from 100 ms to 5 s.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            next: Duration::from_millis(100),
        }
    }
}

impl Backoff {
    pub fn reset(&mut self) {
        *self = Self::default();
    }

    /// The delay to wait now; the next one is twice as long, at most 5 s.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(Duration::from_secs(5));
        d
    }
}
