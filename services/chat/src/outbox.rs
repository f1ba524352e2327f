//! The transactional outbox: every stored message reaches the exchange at least once.
//!
//! A message is written *unpublished* (the store's outbox marker, in the message's own document:
//! no multi-document transaction), leased for `PUBLISH_TIMEOUT` + 1 s to the send that wrote it.
//! That send publishes the event at once; when the broker confirms, the marker is cleared, in
//! batches (one bulk write per batch, off the request path). Whatever stays marked past its lease
//! (the broker was down or did not confirm in time, the replica died between the write and the
//! publish, the clear failed) is taken by a **sweeper**: each replica claims due messages with a
//! conditional update (so replicas sweeping together never take the same message), publishes
//! them, oldest first, and clears them once confirmed.
//!
//! When it sweeps: at start (a previous run may have died mid-publish), when the lease of one of
//! its own failed publishes runs out, again at once while sweeps come back full, and otherwise
//! every `OUTBOX_INTERVAL` (default 10 s), which bounds how long a message left by a replica that
//! never came back waits. Nothing else: while publishes succeed, a replica reads the outbox once
//! per interval. Clears and claims are not durable writes of their own (a lost one is a repeat). An event may thus be published twice (a confirm lost, a lease run
//! out mid-publish): consumers drop repeats by `_id`.

use std::{
    sync::{Arc, Weak},
    time::{Duration, Instant},
};

use bson::oid::ObjectId;
use chat_common::{backoff::Backoff, event::Event, time::now_millis};
use tokio::sync::{Notify, mpsc};

use crate::{
    ChatMetrics,
    publisher::{EventPublisher, PublishError},
    store::{Message, MessageStore},
};

/// Messages claimed per sweep, and markers cleared per bulk write.
const BATCH: usize = 256;

/// Publishes stored messages' events and makes sure each one is confirmed; cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn MessageStore>,
    publisher: Arc<dyn EventPublisher>,
    confirmed: mpsc::Sender<ObjectId>,
    wake: Arc<Notify>,
    metrics: ChatMetrics,
    lease: Duration,
}

impl Outbox {
    /// The lease a send holds on the message it wrote: its own publish attempt may take up to
    /// `publish_timeout`, plus a second for the clock differences between replicas.
    pub fn lease(publish_timeout: Duration) -> Duration {
        publish_timeout + Duration::from_secs(1)
    }

    /// Starts the marker clearer and the sweeper (every `interval` at least).
    pub fn start(
        store: Arc<dyn MessageStore>,
        publisher: Arc<dyn EventPublisher>,
        metrics: ChatMetrics,
        publish_timeout: Duration,
        interval: Duration,
    ) -> Self {
        let (confirmed, rx) = mpsc::channel(BATCH * 32);
        let wake = Arc::new(Notify::new());
        let inner = Arc::new(Inner {
            store,
            publisher,
            confirmed,
            wake: wake.clone(),
            metrics,
            lease: Self::lease(publish_timeout),
        });
        // The tasks hold the outbox weakly: dropping the service stops them and releases the
        // store.
        tokio::spawn(clear_markers(Arc::downgrade(&inner.store), rx));
        tokio::spawn(sweep(Arc::downgrade(&inner), wake, interval));
        Self { inner }
    }

    /// Publishes the event of `message`, just stored by this send; once confirmed, its marker
    /// is cleared. On failure the message stays marked and the sweeper publishes it later.
    pub async fn publish(&self, message: &Message) -> Result<(), PublishError> {
        let result = self.inner.publish(message).await;
        match &result {
            Ok(()) => {
                // Waits only if the clearer is 8,192 markers behind: the database is slow.
                let _ = self.inner.confirmed.send(message.id).await;
            }
            Err(_) => self.inner.wake.notify_one(),
        }
        result
    }

    /// A message was stored without its conversation summaries: the sweeper finishes it once
    /// its lease runs out.
    pub fn defer(&self) {
        self.inner.wake.notify_one();
    }

    /// Publishes a notice (a `read` event): once, not kept if the broker does not confirm it.
    pub async fn notify(&self, payload: Vec<u8>) {
        if let Err(e) = self.inner.publisher.publish(payload.into()).await {
            tracing::info!(error = %e, "a notice was not published");
        }
    }

    /// `Ok` when events can be published now (for `/readyz`).
    pub fn ready(&self) -> Result<(), String> {
        self.inner.publisher.ready()
    }
}

impl Inner {
    async fn publish(&self, message: &Message) -> Result<(), PublishError> {
        let payload: Arc<[u8]> = Event::new_message(message.view()).to_bytes().into();
        let started = Instant::now();
        let result = self.publisher.publish(payload).await;
        match &result {
            Ok(()) => {
                self.metrics
                    .publish_seconds
                    .observe(started.elapsed().as_secs_f64());
                self.metrics.published.with_label_values(&["ok"]).inc();
            }
            Err(e) => {
                self.metrics.published.with_label_values(&["failed"]).inc();
                tracing::warn!(error = %e, message_id = %message.id, "event not published yet; the outbox will retry");
            }
        }
        result
    }
}

/// Clears the markers of confirmed messages, as many per bulk write as have queued up.
async fn clear_markers(store: Weak<dyn MessageStore>, mut confirmed: mpsc::Receiver<ObjectId>) {
    let mut batch = Vec::with_capacity(BATCH);
    while confirmed.recv_many(&mut batch, BATCH).await > 0 {
        let Some(store) = store.upgrade() else { return };
        let mut backoff = Backoff::default();
        for attempt in 1..=3 {
            match store.mark_published(&batch).await {
                Ok(()) => break,
                Err(e) if attempt == 3 => {
                    // Left marked: the sweeper publishes them again (a repeat, never a loss).
                    tracing::warn!(error = %e, count = batch.len(), "cannot clear outbox markers");
                }
                Err(_) => tokio::time::sleep(backoff.next_delay()).await,
            }
        }
        batch.clear();
    }
}

/// Claims and republishes what stayed unpublished past its lease.
async fn sweep(outbox: Weak<Inner>, wake: Arc<Notify>, interval: Duration) {
    // At start: a previous run may have died between a write and its publish.
    let mut next = Instant::now();
    let mut backoff = Backoff::default();
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(next.into()) => {}
            () = wake.notified() => {
                // One of our publishes failed: its message is due when its lease runs out.
                let Some(inner) = outbox.upgrade() else { return };
                next = next.min(Instant::now() + inner.lease + Duration::from_millis(10));
                continue;
            }
        }
        let Some(inner) = outbox.upgrade() else {
            return;
        };
        if inner.publisher.ready().is_err() {
            next = Instant::now() + Duration::from_secs(1);
            continue;
        }
        let now = now_millis();
        let lease_ms = i64::try_from(inner.lease.as_millis()).unwrap_or(i64::MAX / 2);
        let claimed = match inner
            .store
            .claim_unpublished(now, now + lease_ms, BATCH)
            .await
        {
            Ok(claimed) => claimed,
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::warn!(error = %e, retry_in = ?delay, "outbox sweep failed");
                next = Instant::now() + delay;
                continue;
            }
        };
        let full = claimed.len() == BATCH;
        let results = futures_util::future::join_all(
            claimed
                .iter()
                .map(|m| async { (m.id, inner.publish(m).await) }),
        )
        .await;
        let published: Vec<ObjectId> = results
            .iter()
            .filter_map(|(id, r)| r.is_ok().then_some(*id))
            .collect();
        let failed = published.len() < results.len();
        if !published.is_empty() {
            tracing::info!(
                count = published.len(),
                "republished events left unconfirmed"
            );
            inner
                .metrics
                .republished
                .inc_by(u64::try_from(published.len()).unwrap_or(u64::MAX));
            if let Err(e) = inner.store.mark_published(&published).await {
                tracing::warn!(error = %e, "cannot clear outbox markers after republishing");
            }
        }
        next = if failed {
            // Leased again to us: due once more when that lease runs out.
            Instant::now() + backoff.next_delay().max(inner.lease)
        } else if full {
            backoff.reset();
            Instant::now()
        } else {
            backoff.reset();
            Instant::now() + interval
        };
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    };

    use async_trait::async_trait;
    use chat_common::bus::Payload;

    use super::*;
    use crate::store::{EmbeddedMessageStore, Inserted};

    /// A broker that refuses while `down` is set and records what it confirmed.
    #[derive(Default)]
    struct Broker {
        down: AtomicBool,
        confirmed: Mutex<Vec<String>>,
    }

    #[async_trait]
    impl EventPublisher for Broker {
        async fn publish(&self, payload: Payload) -> Result<(), PublishError> {
            if self.down.load(Ordering::SeqCst) {
                return Err(PublishError::NotConnected);
            }
            let event: Event = serde_json::from_slice(&payload).unwrap();
            self.confirmed.lock().unwrap().push(event.data.id);
            Ok(())
        }

        fn ready(&self) -> Result<(), String> {
            if self.down.load(Ordering::SeqCst) {
                Err("down".into())
            } else {
                Ok(())
            }
        }
    }

    fn message(i: usize) -> Message {
        Message {
            id: ObjectId::new(),
            sender: "alice".into(),
            recipient: "bob".into(),
            content: format!("m{i}"),
            timestamp_ms: now_millis(),
            idempotency_key: None,
        }
    }

    fn store() -> (tempfile::TempDir, Arc<dyn MessageStore>) {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedMessageStore::open(&dir.path().join("chat.redb")).unwrap();
        (dir, Arc::new(store))
    }

    async fn until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn unpublished(store: &Arc<dyn MessageStore>) -> usize {
        // Everything still marked, whatever its lease: claimed as if far in the future, and left
        // due at once (a lease that ran out in 1970).
        let far = now_millis() + 3_600_000;
        store.claim_unpublished(far, 0, 10_000).await.unwrap().len()
    }

    #[tokio::test]
    async fn messages_left_by_a_run_that_died_are_published_at_start_and_cleared() {
        let (_dir, store) = store();
        // A previous run wrote these and died before publishing: their leases have run out.
        let left: Vec<Message> = (0..300).map(message).collect();
        let outcomes = store.insert_many(&left, now_millis() - 1).await.unwrap();
        assert!(outcomes.iter().all(|o| *o == Inserted::Stored));
        let broker = Arc::new(Broker::default());
        let _outbox = Outbox::start(
            store.clone(),
            broker.clone(),
            crate::ChatMetrics::new().unwrap(),
            Duration::from_secs(1),
            Duration::from_secs(3600),
        );
        until("300 republished", || {
            broker.confirmed.lock().unwrap().len() >= 300
        })
        .await;
        let confirmed = broker.confirmed.lock().unwrap().clone();
        let expected: Vec<String> = left.iter().map(|m| m.id.to_hex()).collect();
        assert_eq!(confirmed, expected, "each once, oldest first");
        assert_eq!(unpublished(&store).await, 0, "markers cleared");
    }

    #[tokio::test]
    async fn an_event_the_broker_refused_is_published_once_it_is_back() {
        let (_dir, store) = store();
        let broker = Arc::new(Broker::default());
        let publish_timeout = Duration::from_millis(200);
        let outbox = Outbox::start(
            store.clone(),
            broker.clone(),
            crate::ChatMetrics::new().unwrap(),
            publish_timeout,
            Duration::from_secs(3600),
        );
        let lease = Outbox::lease(publish_timeout);
        let sent = message(1);
        broker.down.store(true, Ordering::SeqCst);
        store
            .insert_many(
                std::slice::from_ref(&sent),
                now_millis() + i64::try_from(lease.as_millis()).unwrap(),
            )
            .await
            .unwrap();
        assert!(outbox.publish(&sent).await.is_err());
        assert_eq!(unpublished(&store).await, 1);
        tokio::time::sleep(Duration::from_millis(300)).await;
        broker.down.store(false, Ordering::SeqCst);
        let started = Instant::now();
        until("the refused event", || {
            !broker.confirmed.lock().unwrap().is_empty()
        })
        .await;
        assert!(
            started.elapsed() < lease + Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(*broker.confirmed.lock().unwrap(), [sent.id.to_hex()]);
        let deadline = Instant::now() + Duration::from_secs(5);
        while unpublished(&store).await > 0 {
            assert!(Instant::now() < deadline, "marker never cleared");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        // A confirmed publish clears its marker without any sweep.
        let second = message(2);
        store
            .insert_many(std::slice::from_ref(&second), now_millis() + 3_600_000)
            .await
            .unwrap();
        outbox.publish(&second).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while unpublished(&store).await > 0 {
            assert!(Instant::now() < deadline, "marker never cleared");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
