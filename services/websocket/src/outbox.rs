//! A socket's outgoing queue: bounded, single consumer, and allocation-free while empty (an idle
//! socket holds no queue storage). Full means the client stopped reading: the queue is then
//! marked dropped and its socket task closes the socket. A socket pushed out by its user's newer
//! ones (the per-user cap) is marked evicted the same way.

use std::{
    collections::VecDeque,
    sync::{
        Mutex,
        atomic::{AtomicU8, Ordering},
    },
};

use axum::extract::ws::Utf8Bytes;
use tokio::sync::Notify;

use crate::catchup::MessageId;

/// A queued frame and the `_id` of the message it carries (`None` for a signal, `read` or
/// `typing`: never repeated, never caught up).
pub type Queued = (Option<MessageId>, Utf8Bytes);

#[derive(Debug)]
pub struct Outbox {
    frames: Mutex<VecDeque<Queued>>,
    capacity: usize,
    /// `OPEN`, `DROPPED` or `EVICTED`.
    state: AtomicU8,
    wake: Notify,
}

const OPEN: u8 = 0;
const DROPPED: u8 = 1;
const EVICTED: u8 = 2;

/// What the socket task gets next.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    Frame(Option<MessageId>, Utf8Bytes),
    /// The queue overflowed: close the socket.
    Dropped,
    /// The user opened more sockets than they may keep: close this (their oldest).
    Evicted,
}

impl Outbox {
    pub fn new(capacity: usize) -> Self {
        Self {
            frames: Mutex::new(VecDeque::new()),
            capacity: capacity.max(1),
            state: AtomicU8::new(OPEN),
            wake: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Queued>> {
        self.frames
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues a frame; `false` (and the queue is marked dropped) when it is full.
    pub fn push(&self, id: Option<MessageId>, frame: Utf8Bytes) -> bool {
        let mut frames = self.lock();
        if frames.len() >= self.capacity {
            frames.clear();
            frames.shrink_to_fit();
            drop(frames);
            self.close(DROPPED);
            return false;
        }
        frames.push_back((id, frame));
        drop(frames);
        self.wake.notify_one();
        true
    }

    fn close(&self, why: u8) {
        // The first verdict stands.
        let _ = self
            .state
            .compare_exchange(OPEN, why, Ordering::AcqRel, Ordering::Acquire);
        self.wake.notify_one();
    }

    /// Closes the socket: its user has newer ones beyond the cap.
    pub fn evict(&self) {
        self.close(EVICTED);
    }

    /// Takes what is queued now without waiting (a socket catching up moves live frames aside
    /// so its queue does not overflow meanwhile); the verdict once the socket must close.
    pub fn take_queued(&self) -> Result<VecDeque<Queued>, Next> {
        match self.state.load(Ordering::Acquire) {
            OPEN => Ok(std::mem::take(&mut *self.lock())),
            DROPPED => Err(Next::Dropped),
            _ => Err(Next::Evicted),
        }
    }

    /// Waits for the next frame, or for the verdict that the socket fell too far behind.
    pub async fn next(&self) -> Next {
        loop {
            match self.state.load(Ordering::Acquire) {
                OPEN => {}
                DROPPED => return Next::Dropped,
                _ => return Next::Evicted,
            }
            if let Some((id, frame)) = self.lock().pop_front() {
                return Next::Frame(id, frame);
            }
            // A push between the check and here leaves a permit: no wake-up is lost.
            self.wake.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> MessageId {
        MessageId::from_bytes([n; 12])
    }

    #[tokio::test]
    async fn delivers_in_order_and_wakes_a_waiting_reader() {
        let o = std::sync::Arc::new(Outbox::new(2));
        assert!(o.push(Some(id(1)), "a".into()));
        assert!(o.push(Some(id(2)), "b".into()));
        assert_eq!(o.next().await, Next::Frame(Some(id(1)), "a".into()));
        assert_eq!(o.next().await, Next::Frame(Some(id(2)), "b".into()));
        let waiter = tokio::spawn({
            let o = o.clone();
            async move { o.next().await }
        });
        tokio::task::yield_now().await;
        assert!(o.push(Some(id(3)), "c".into()));
        assert_eq!(waiter.await.unwrap(), Next::Frame(Some(id(3)), "c".into()));
    }

    #[tokio::test]
    async fn overflow_drops_the_socket() {
        let o = Outbox::new(2);
        assert!(o.push(Some(id(1)), "a".into()));
        assert!(o.push(Some(id(2)), "b".into()));
        assert_eq!(o.take_queued().unwrap().len(), 2, "taken aside");
        assert!(o.push(Some(id(1)), "a".into()));
        assert!(o.push(Some(id(2)), "b".into()));
        assert!(!o.push(Some(id(3)), "c".into()), "full");
        assert_eq!(o.take_queued(), Err(Next::Dropped));
        assert_eq!(
            o.next().await,
            Next::Dropped,
            "pending frames are discarded"
        );
        o.evict();
        assert_eq!(o.next().await, Next::Dropped, "the first verdict stands");
    }

    #[tokio::test]
    async fn eviction_wakes_the_socket() {
        let o = std::sync::Arc::new(Outbox::new(2));
        let waiter = tokio::spawn({
            let o = o.clone();
            async move { o.next().await }
        });
        tokio::task::yield_now().await;
        o.evict();
        assert_eq!(waiter.await.unwrap(), Next::Evicted);
    }
}
