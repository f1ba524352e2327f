//! A socket's outgoing queue: bounded, single consumer, and allocation-free while empty (an idle
//! socket holds no queue storage). Full means the client stopped reading: the queue is then
//! marked dropped and its socket task closes the socket.

use std::{
    collections::VecDeque,
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use axum::extract::ws::Utf8Bytes;
use tokio::sync::Notify;

#[derive(Debug)]
pub struct Outbox {
    frames: Mutex<VecDeque<Utf8Bytes>>,
    capacity: usize,
    dropped: AtomicBool,
    wake: Notify,
}

/// What the socket task gets next.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    Frame(Utf8Bytes),
    /// The queue overflowed: close the socket.
    Dropped,
}

impl Outbox {
    pub fn new(capacity: usize) -> Self {
        Self {
            frames: Mutex::new(VecDeque::new()),
            capacity: capacity.max(1),
            dropped: AtomicBool::new(false),
            wake: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Utf8Bytes>> {
        self.frames
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues a frame; `false` (and the queue is marked dropped) when it is full.
    pub fn push(&self, frame: Utf8Bytes) -> bool {
        let mut frames = self.lock();
        if frames.len() >= self.capacity {
            frames.clear();
            frames.shrink_to_fit();
            drop(frames);
            self.dropped.store(true, Ordering::Release);
            self.wake.notify_one();
            return false;
        }
        frames.push_back(frame);
        drop(frames);
        self.wake.notify_one();
        true
    }

    /// Waits for the next frame, or for the verdict that the socket fell too far behind.
    pub async fn next(&self) -> Next {
        loop {
            if self.dropped.load(Ordering::Acquire) {
                return Next::Dropped;
            }
            if let Some(frame) = self.lock().pop_front() {
                return Next::Frame(frame);
            }
            // A push between the check and here leaves a permit: no wake-up is lost.
            self.wake.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn delivers_in_order_and_wakes_a_waiting_reader() {
        let o = std::sync::Arc::new(Outbox::new(2));
        assert!(o.push("a".into()));
        assert!(o.push("b".into()));
        assert_eq!(o.next().await, Next::Frame("a".into()));
        assert_eq!(o.next().await, Next::Frame("b".into()));
        let waiter = tokio::spawn({
            let o = o.clone();
            async move { o.next().await }
        });
        tokio::task::yield_now().await;
        assert!(o.push("c".into()));
        assert_eq!(waiter.await.unwrap(), Next::Frame("c".into()));
    }

    #[tokio::test]
    async fn overflow_drops_the_socket() {
        let o = Outbox::new(2);
        assert!(o.push("a".into()));
        assert!(o.push("b".into()));
        assert!(!o.push("c".into()), "full");
        assert_eq!(
            o.next().await,
            Next::Dropped,
            "pending frames are discarded"
        );
    }
}
