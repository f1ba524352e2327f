//! The connection registry and event delivery.
//!
//! Sockets are registered under the username of their token (events name users by username) and
//! remember their user id. For each event, only names with a socket on this replica are resolved
//! to an id (through the cached auth-service lookup), and a frame goes to the sockets whose id
//! matches: a user connected elsewhere costs one hash-map probe.

use std::{
    collections::HashMap,
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering},
    },
};

use axum::extract::ws::Utf8Bytes;
use chat_common::{
    auth_client::UserDirectory,
    event::{Event, Frame, NEW_MESSAGE},
    time::{now_millis, parse_rfc3339_millis},
};

use crate::{WsMetrics, outbox::Outbox};

/// One open socket.
struct Conn {
    id: u64,
    user_id: Arc<str>,
    outbox: Arc<Outbox>,
}

pub struct Hub {
    conns: RwLock<HashMap<Arc<str>, Vec<Conn>>>,
    next_id: AtomicU64,
    directory: UserDirectory,
    metrics: WsMetrics,
    queue: usize,
}

/// What a socket's task holds: its queue, removed from the hub on drop.
pub struct Registration {
    hub: Arc<Hub>,
    username: Arc<str>,
    id: u64,
    pub outbox: Arc<Outbox>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.hub.remove(&self.username, self.id);
    }
}

impl Hub {
    /// `queue`: frames a socket may have pending before it is dropped as a slow consumer.
    pub fn new(directory: UserDirectory, metrics: WsMetrics, queue: usize) -> Self {
        Self {
            conns: RwLock::default(),
            next_id: AtomicU64::new(1),
            directory,
            metrics,
            queue: queue.max(1),
        }
    }

    pub fn register(self: &Arc<Self>, username: &str, user_id: &str) -> Registration {
        let outbox = Arc::new(Outbox::new(self.queue));
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let username: Arc<str> = username.into();
        self.write()
            .entry(username.clone())
            .or_default()
            .push(Conn {
                id,
                user_id: user_id.into(),
                outbox: outbox.clone(),
            });
        self.metrics.open_sockets.inc();
        Registration {
            hub: self.clone(),
            username,
            id,
            outbox,
        }
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

    /// Sockets open on this replica.
    pub fn open_sockets(&self) -> usize {
        self.read().values().map(Vec::len).sum()
    }

    fn has(&self, username: &str) -> bool {
        self.read().contains_key(username)
    }

    /// Queues `frame` on every socket of `username` whose user id is `user_id`; drops sockets
    /// whose queue is full. Returns how many sockets got it.
    fn deliver(&self, username: &str, user_id: &str, frame: &Utf8Bytes) -> usize {
        let mut delivered = 0;
        let mut slow = Vec::new();
        {
            let conns = self.read();
            let Some(list) = conns.get(username) else {
                return 0;
            };
            for c in list.iter().filter(|c| &*c.user_id == user_id) {
                if c.outbox.push(frame.clone()) {
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

    /// Handles one event payload from the exchange (or the in-process bus).
    pub async fn handle(&self, payload: &[u8]) {
        let event: Event = match serde_json::from_slice(payload) {
            Ok(e) => e,
            Err(e) => {
                self.metrics.events.with_label_values(&["malformed"]).inc();
                tracing::warn!(error = %e, "ignoring a malformed event");
                return;
            }
        };
        if event.kind != NEW_MESSAGE {
            self.metrics.events.with_label_values(&["ignored"]).inc();
            return;
        }
        self.metrics
            .events
            .with_label_values(&["new_message"])
            .inc();
        let m = &event.data;
        let mut frame: Option<Utf8Bytes> = None;
        let mut delivered = 0;
        // The recipient's sockets, then the sender's other devices.
        let sender_differs = m.sender != m.recipient;
        for name in std::iter::once(&m.recipient).chain(sender_differs.then_some(&m.sender)) {
            if !self.has(name) {
                continue;
            }
            let id = match self.directory.id_of(name).await {
                Ok(Some(id)) => id,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot resolve a username; event not delivered to it");
                    continue;
                }
            };
            let frame = frame.get_or_insert_with(|| {
                serde_json::to_string(&Frame::from(m))
                    .expect("a frame always serialises")
                    .into()
            });
            delivered += self.deliver(name, &id, frame);
        }
        if delivered > 0 {
            self.metrics
                .deliveries
                .inc_by(u64::try_from(delivered).unwrap_or(u64::MAX));
            if let Some(sent_ms) = parse_rfc3339_millis(&m.timestamp) {
                #[allow(clippy::cast_precision_loss)]
                let secs = (now_millis() - sent_ms).max(0) as f64 / 1000.0;
                self.metrics.latency.observe(secs);
            }
        }
    }
}
