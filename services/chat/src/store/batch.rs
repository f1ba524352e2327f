//! Group commit: concurrent sends are written together. A few writer tasks each take whatever
//! inserts are waiting (up to a batch size) and write them with one `insert_many` (one round trip
//! to MongoDB, one transaction in the embedded store); each send is answered once its batch is
//! acknowledged. An idle service writes each message alone, so batching adds no latency; under
//! load it multiplies what the store takes.

use std::sync::{Arc, Weak};

use async_trait::async_trait;
use tokio::sync::{Mutex, mpsc, oneshot};

use super::{Message, MessageStore, Page, StoreError};

type Pending = (Message, oneshot::Sender<Result<(), StoreError>>);

pub struct BatchingStore {
    inner: Arc<dyn MessageStore>,
    queue: mpsc::Sender<Pending>,
}

impl BatchingStore {
    /// Wraps `inner` with `writers` concurrent writers of at most `max_batch` messages each.
    pub fn wrap(inner: Arc<dyn MessageStore>, writers: usize, max_batch: usize) -> Arc<Self> {
        let (queue, rx) = mpsc::channel::<Pending>(max_batch.max(1) * writers.max(1) * 4);
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..writers.max(1) {
            // Writers hold the store weakly: dropping this wrapper releases it (the embedded
            // store's file can then be reopened at once).
            tokio::spawn(write_batches(
                Arc::downgrade(&inner),
                rx.clone(),
                max_batch.max(1),
            ));
        }
        Arc::new(Self { inner, queue })
    }
}

async fn write_batches(
    store: Weak<dyn MessageStore>,
    rx: Arc<Mutex<mpsc::Receiver<Pending>>>,
    max_batch: usize,
) {
    let mut batch: Vec<Pending> = Vec::with_capacity(max_batch);
    loop {
        {
            let mut rx = rx.lock().await;
            let Some(first) = rx.recv().await else { return };
            batch.push(first);
            while batch.len() < max_batch {
                match rx.try_recv() {
                    Ok(next) => batch.push(next),
                    Err(_) => break,
                }
            }
        }
        let (messages, replies): (Vec<Message>, Vec<_>) = batch.drain(..).unzip();
        let result = match store.upgrade() {
            Some(store) => store.insert_many(&messages).await,
            None => Err(StoreError::Unavailable("store closed".into())),
        };
        for reply in replies {
            let _ = reply.send(match &result {
                Ok(()) => Ok(()),
                Err(StoreError::Unavailable(reason)) => {
                    Err(StoreError::Unavailable(reason.clone()))
                }
            });
        }
    }
}

#[async_trait]
impl MessageStore for BatchingStore {
    async fn insert(&self, message: &Message) -> Result<(), StoreError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send((message.clone(), reply))
            .await
            .map_err(|_| StoreError::Unavailable("writer stopped".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Unavailable("writer stopped".into()))?
    }

    async fn insert_many(&self, messages: &[Message]) -> Result<(), StoreError> {
        self.inner.insert_many(messages).await
    }

    async fn conversation(&self, a: &str, b: &str, page: Page) -> Result<Vec<Message>, StoreError> {
        self.inner.conversation(a, b, page).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
}
