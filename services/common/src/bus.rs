//! Event fan-out: RabbitMQ's fanout exchange in the microservices ([`crate::amqp`]), or this
//! in-process bus in the standalone stack and development mode. Both carry the same JSON
//! payloads.

use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::mpsc;

/// The exchange the original system used.
pub const DEFAULT_EXCHANGE: &str = "chat_exchange";

/// An event payload (the JSON bytes of an [`crate::event::Event`]), cheap to clone.
pub type Payload = Arc<[u8]>;

/// The in-process fan-out of the standalone stack: every subscriber sees every event, in order.
/// Nothing is dropped for a slow subscriber: each has a bounded queue, and a publish waits for
/// room in every queue (back-pressure reaches the sends), as a broker's flow control would.
#[derive(Clone, Debug)]
pub struct LocalBus {
    subscribers: Arc<Mutex<Vec<mpsc::Sender<Payload>>>>,
    capacity: usize,
}

impl LocalBus {
    /// `capacity` events may wait for each subscriber before a publish waits.
    pub fn new(capacity: usize) -> Self {
        Self {
            subscribers: Arc::default(),
            capacity: capacity.max(1),
        }
    }

    /// Hands `payload` to every current subscriber (none is fine, as for an exchange without
    /// queues); returns once each has it queued. A subscriber that went away is forgotten.
    pub async fn publish(&self, payload: Payload) {
        // Queued at once where there is room (no allocation, the lock held briefly); only a
        // subscriber whose queue is full is waited for, outside the lock.
        let mut full = Vec::new();
        let mut gone = false;
        {
            let subscribers = self
                .subscribers
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            for subscriber in subscribers.iter() {
                match subscriber.try_send(payload.clone()) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(payload)) => {
                        full.push((subscriber.clone(), payload));
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => gone = true,
                }
            }
        }
        for (subscriber, payload) in full {
            gone |= subscriber.send(payload).await.is_err();
        }
        if gone {
            self.subscribers
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .retain(|s| !s.is_closed());
        }
    }

    pub fn subscribe(&self) -> mpsc::Receiver<Payload> {
        let (tx, rx) = mpsc::channel(self.capacity);
        self.subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(tx);
        rx
    }
}

impl Default for LocalBus {
    fn default() -> Self {
        Self::new(4096)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_slow_subscriber_loses_nothing_the_publisher_waits() {
        let bus = LocalBus::new(2);
        let mut rx = bus.subscribe();
        let publisher = bus.clone();
        let sent = tokio::spawn(async move {
            for i in 0..100u8 {
                publisher.publish(Arc::from(vec![i])).await;
            }
        });
        for i in 0..100u8 {
            let got = rx.recv().await.expect("every event");
            assert_eq!(&got[..], &[i]);
        }
        sent.await.unwrap();
        drop(rx);
        // A subscriber gone does not block publishing.
        tokio::time::timeout(
            std::time::Duration::from_secs(1),
            bus.publish(Arc::from(vec![0])),
        )
        .await
        .expect("publishing past a closed subscriber");
        assert!(bus.subscribers.lock().unwrap().is_empty());
    }
}
