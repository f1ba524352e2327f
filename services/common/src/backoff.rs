//! Retrying with growing pauses: reconnecting to RabbitMQ, creating MongoDB indexes.

use std::time::Duration;

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
