//! The connection registry and event delivery.
//!
//! Sockets are registered under the username their token carries, which is what events name
//! (`sender`, `recipient`): delivering an event is a hash-map probe per participant, with no
//! call to any other service, so a slow or failing auth-service cannot lose an event. (Usernames
//! are unique and never change, so this reaches exactly the sockets the original reached by
//! looking each username's id up in auth-service.) Each event's frame is built once and queued
//! to every socket of its recipient and of its sender's other devices, with its `_id` so a
//! socket never gets the same message twice (see [`crate::socket`]).
//!
//! `read` and `typing` events are routed by their `type` the same way, to the sockets that asked
//! for them ([`Events`]): a read receipt to the reader's and the peer's, a typing notice to its
//! addressee's. They carry no `_id`: never deduplicated, never caught up.
//!
//! When the event consumer had to start over on a fresh queue (the broker restarted, the
//! connection dropped), events published in between never reached this replica:
//! [`Hub::events_interrupted`] tells every socket, and each catches up from the store.

use std::{
    collections::HashMap,
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
};

use axum::extract::ws::Utf8Bytes;
use chat_common::{
    event::{
        AnyEvent, Frame, MessageView, READ, ReadReceipt, TYPING, Typing, read_frame, typing_frame,
    },
    time::{now_millis, parse_rfc3339_millis},
};
use serde::Deserialize;
use tokio::sync::watch;

use crate::{WsMetrics, catchup::MessageId, outbox::Outbox, signals::Events};

/// What a frame carries: a message (for every socket, written once per socket by its `_id`) or
/// a signal (for the sockets that asked for it; no id).
#[derive(Debug, Clone, Copy)]
enum Delivery {
    Message(MessageId),
    Signal(Events),
}

/// One open socket.
struct Conn {
    id: u64,
    outbox: Arc<Outbox>,
    /// The signals it asked for.
    events: Events,
}

pub struct Hub {
    conns: RwLock<HashMap<Arc<str>, Vec<Conn>>>,
    next_id: AtomicU64,
    metrics: WsMetrics,
    queue: usize,
    caps: SocketCaps,
    /// Sockets open or being opened (a [`Slot`] each).
    slots: AtomicUsize,
    /// Bumped each time events may have been missed (a fresh queue).
    interruptions: watch::Sender<u64>,
}

/// How many sockets a replica keeps, in all and per user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketCaps {
    /// `WS_MAX_SOCKETS` (default 20,000): upgrades beyond it get 503.
    pub per_replica: usize,
    /// `WS_MAX_SOCKETS_PER_USER` (default 10): a user's next socket closes their oldest (4008).
    pub per_user: usize,
}

impl Default for SocketCaps {
    fn default() -> Self {
        Self {
            per_replica: 20_000,
            per_user: 10,
        }
    }
}

/// A place among the replica's sockets, taken at the upgrade and given back on drop.
pub struct Slot {
    hub: Arc<Hub>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.hub.slots.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What a socket's task holds: its queue, removed from the hub on drop.
pub struct Registration {
    hub: Arc<Hub>,
    username: Arc<str>,
    id: u64,
    pub outbox: Arc<Outbox>,
    /// Changes when events may have been missed: the socket should catch up.
    pub interruptions: watch::Receiver<u64>,
}

impl Registration {
    pub fn username(&self) -> &str {
        &self.username
    }

    /// A number that differs from socket to socket, to spread their work over time.
    pub fn spread(&self) -> u64 {
        self.id.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.hub.remove(&self.username, self.id);
    }
}

impl Hub {
    /// `queue`: frames a socket may have pending before it is dropped as a slow consumer.
    pub fn new(metrics: WsMetrics, queue: usize, caps: SocketCaps) -> Self {
        Self {
            conns: RwLock::default(),
            next_id: AtomicU64::new(1),
            metrics,
            queue: queue.max(1),
            caps,
            slots: AtomicUsize::new(0),
            interruptions: watch::channel(0).0,
        }
    }

    /// A place for one more socket, or `None` when the replica holds `WS_MAX_SOCKETS`.
    pub fn reserve(self: &Arc<Self>) -> Option<Slot> {
        let taken = self
            .slots
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.caps.per_replica).then_some(n + 1)
            });
        if taken.is_err() {
            self.metrics.refused.inc();
            return None;
        }
        Some(Slot { hub: self.clone() })
    }

    /// Registers a socket of `username` that asked for `events`; beyond
    /// `WS_MAX_SOCKETS_PER_USER`, their oldest is evicted (its task closes it with 4008).
    pub fn register(self: &Arc<Self>, username: &str, events: Events) -> Registration {
        let outbox = Arc::new(Outbox::new(self.queue));
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let username: Arc<str> = username.into();
        {
            let mut conns = self.write();
            let list = conns.entry(username.clone()).or_default();
            // Sockets are pushed in order: the oldest come first.
            let over = (list.len() + 1).saturating_sub(self.caps.per_user.max(1));
            for old in list.drain(..over) {
                old.outbox.evict();
                self.metrics.evicted.inc();
                self.metrics.open_sockets.dec();
            }
            list.push(Conn {
                id,
                outbox: outbox.clone(),
                events,
            });
        }
        self.metrics.open_sockets.inc();
        let mut interruptions = self.interruptions.subscribe();
        interruptions.mark_unchanged();
        Registration {
            hub: self.clone(),
            username,
            id,
            outbox,
            interruptions,
        }
    }

    /// Events may have been missed (the consumer starts over on a fresh queue): every open
    /// socket catches up from the store.
    pub fn events_interrupted(&self) {
        self.metrics.interruptions.inc();
        self.interruptions.send_modify(|n| *n += 1);
    }

    /// A socket wrote `messages` read from the store.
    pub fn caught_up(&self, messages: usize) {
        self.metrics
            .catch_up
            .inc_by(u64::try_from(messages).unwrap_or(u64::MAX));
    }

    /// A socket was closed for sending too many frames.
    pub fn flooding(&self) {
        self.metrics.flooding.inc();
    }

    /// A client's typing frame came to `outcome`.
    pub fn typing_frame(&self, outcome: crate::signals::TypingOutcome) {
        self.metrics
            .typing
            .with_label_values(&[outcome.label()])
            .inc();
    }

    /// A client frame was answered with an error frame.
    pub fn client_error(&self) {
        self.metrics.client_errors.inc();
    }

    /// A socket could not read its catch-up and was closed (1013) to resume later.
    pub fn catch_up_failed(&self) {
        self.metrics.catch_up_failures.inc();
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<Arc<str>, Vec<Conn>>> {
        self.conns
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<Arc<str>, Vec<Conn>>> {
        self.conns
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn remove(&self, username: &str, id: u64) {
        let mut conns = self.write();
        if let Some(list) = conns.get_mut(username) {
            let before = list.len();
            list.retain(|c| c.id != id);
            if list.len() < before {
                self.metrics.open_sockets.dec();
            }
            if list.is_empty() {
                conns.remove(username);
            }
        }
    }

    /// Whether every socket (open or being opened) is gone within `limit`.
    pub async fn closed_within(&self, limit: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        while self.slots.load(Ordering::Acquire) > 0 {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        true
    }

    /// Sockets open on this replica.
    pub fn open_sockets(&self) -> usize {
        self.read().values().map(Vec::len).sum()
    }

    /// Queues a frame (built once, on the first socket found, into `frame`) on every socket of
    /// `username` it is for; a socket whose queue is full is marked dropped (its task closes it
    /// with 1008, and the client resumes). Returns how many sockets got it.
    fn deliver(
        &self,
        username: &str,
        what: Delivery,
        frame: &mut Option<Utf8Bytes>,
        build: &dyn Fn() -> String,
    ) -> usize {
        let mut delivered = 0;
        let mut slow = Vec::new();
        {
            let conns = self.read();
            let Some(list) = conns.get(username) else {
                return 0;
            };
            for c in list {
                let id = match what {
                    Delivery::Message(id) => Some(id),
                    Delivery::Signal(signal) if c.events.wants(signal) => None,
                    Delivery::Signal(_) => continue,
                };
                let frame = frame.get_or_insert_with(|| build().into());
                if c.outbox.push(id, frame.clone()) {
                    delivered += 1;
                } else {
                    slow.push(c.id);
                }
            }
        }
        for id in slow {
            tracing::info!("dropping a socket that stopped reading");
            self.metrics.slow_dropped.inc();
            self.remove(username, id);
        }
        delivered
    }

    fn delivered(&self, n: usize) {
        self.metrics
            .deliveries
            .inc_by(u64::try_from(n).unwrap_or(u64::MAX));
    }

    /// Handles one event payload from the exchange (or the in-process bus): once this returns,
    /// the event is in the queue of every local socket it is for, and may be acked. A payload
    /// that is not an event is counted (`ws_events_total{kind="malformed"}`) and dropped: it
    /// would fail the same way again.
    pub fn handle(&self, payload: &[u8]) {
        let event: AnyEvent = match serde_json::from_slice(payload) {
            Ok(e) => e,
            Err(e) => {
                // A type this version does not know (a newer publisher) is not an error.
                #[derive(Deserialize)]
                struct Kind {
                    #[serde(rename = "type")]
                    kind: String,
                }
                let known = |k: &str| [chat_common::event::NEW_MESSAGE, READ, TYPING].contains(&k);
                match serde_json::from_slice::<Kind>(payload) {
                    Ok(Kind { kind }) if !known(&kind) => {
                        self.metrics.events.with_label_values(&["ignored"]).inc();
                    }
                    _ => {
                        self.metrics.events.with_label_values(&["malformed"]).inc();
                        tracing::warn!(error = %e, "ignoring a malformed event");
                    }
                }
                return;
            }
        };
        match event {
            AnyEvent::NewMessage(m) => self.new_message(&m),
            AnyEvent::Read(r) => self.read_receipt(&r),
            AnyEvent::Typing(t) => self.typing(&t),
        }
    }

    fn new_message(&self, m: &MessageView) {
        let Some(id) = MessageId::parse(&m.id) else {
            self.metrics.events.with_label_values(&["malformed"]).inc();
            tracing::warn!(id = %m.id, "ignoring an event whose _id is not an ObjectId");
            return;
        };
        self.metrics
            .events
            .with_label_values(&["new_message"])
            .inc();
        let mut frame: Option<Utf8Bytes> = None;
        let build = || serde_json::to_string(&Frame::from(m)).expect("a frame always serialises");
        let mut delivered = 0;
        // The recipient's sockets, then the sender's other devices.
        for name in both(&m.recipient, &m.sender) {
            delivered += self.deliver(name, Delivery::Message(id), &mut frame, &build);
        }
        if delivered > 0 {
            self.delivered(delivered);
            if let Some(sent_ms) = parse_rfc3339_millis(&m.timestamp) {
                #[allow(clippy::cast_precision_loss)]
                let secs = (now_millis() - sent_ms).max(0) as f64 / 1000.0;
                self.metrics.latency.observe(secs);
            }
        }
    }

    /// To the peer's sockets (their messages were read) and the reader's (their other devices).
    fn read_receipt(&self, r: &ReadReceipt) {
        self.metrics.events.with_label_values(&[READ]).inc();
        let mut frame = None;
        let build = || read_frame(r);
        let mut delivered = 0;
        for name in both(&r.peer, &r.reader) {
            delivered += self.deliver(name, Delivery::Signal(Events::READ), &mut frame, &build);
        }
        self.delivered(delivered);
    }

    fn typing(&self, t: &Typing) {
        self.metrics.events.with_label_values(&[TYPING]).inc();
        let mut frame = None;
        let delivered = self.deliver(&t.to, Delivery::Signal(Events::TYPING), &mut frame, &|| {
            typing_frame(t)
        });
        self.delivered(delivered);
    }
}

/// `first`, then `second` unless it is the same user (a note to self).
fn both<'a>(first: &'a str, second: &'a str) -> impl Iterator<Item = &'a str> {
    std::iter::once(first).chain((second != first).then_some(second))
}
