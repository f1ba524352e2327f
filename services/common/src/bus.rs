//! Event fan-out: RabbitMQ's fanout exchange in the microservices ([`crate::amqp`]), or this
//! in-process broadcast in the standalone stack and development mode. Both carry the same JSON
//! payloads.

use std::sync::Arc;

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
