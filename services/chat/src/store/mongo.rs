//! MongoDB message store: collection `messages` of the database named in `DATABASE_URL` (or
//! `DATABASE_NAME`), with the original's fields (`sender`, `recipient`, `content`, `timestamp` as a BSON date).
//!
//! A page of a conversation is at most two queries, one per direction (one when a user writes
//! to themselves), sent together: `find({sender, recipient, _id: <bound>}).sort({_id}).limit(n)`
//! with `n` the page size, `_id` bounded by `before`/`after` when given, sorted newest first for
//! a latest or `before` page and oldest first for an `after` page. On MongoDB each is a bounded
//! scan of the index `{sender: 1, recipient: 1, _id: 1}` that stops after `n` keys, whatever the
//! conversation's length; the two runs are merged and cut to the page in [`merge_page`].
//!
//! The MongoDB-compatible server the tests use (secantusdb) sorts the whole matching index
//! range before it applies the limit, so there a page costs time in proportion to the
//! conversation; the README gives both figures. No code here works around that: production
//! runs on MongoDB.

use std::{future::IntoFuture, time::Duration};

use async_trait::async_trait;
use chat_common::mongo;
use mongodb::{
    Collection, Database, IndexModel,
    bson::{DateTime, Document, doc, oid::ObjectId},
    options::IndexOptions,
};
use serde::{Deserialize, Serialize};

use super::{Message, MessageStore, Page, StoreError};

#[derive(Debug, Serialize, Deserialize)]
struct MessageDoc {
    #[serde(rename = "_id")]
    id: ObjectId,
    sender: String,
    recipient: String,
    content: String,
    timestamp: DateTime,
}

impl From<MessageDoc> for Message {
    fn from(d: MessageDoc) -> Self {
        Self {
            id: d.id,
            sender: d.sender,
            recipient: d.recipient,
            content: d.content,
            timestamp_ms: d.timestamp.timestamp_millis(),
        }
    }
}

pub struct MongoMessageStore {
    db: Database,
    messages: Collection<MessageDoc>,
    op_timeout: Duration,
}

impl MongoMessageStore {
    /// Connects lazily to the database `name`, else the one named in `url`'s path.
    pub async fn connect(
        url: &str,
        name: Option<&str>,
        app_name: &str,
        op_timeout: Duration,
    ) -> anyhow::Result<Self> {
        let db = mongo::connect(url, name, app_name, op_timeout, "mongodb://db:27017/chat").await?;
        Ok(Self::with_database(db, op_timeout))
    }

    /// A store over `db`, from a client the caller configured (the tests count its queries
    /// through the driver's command monitoring).
    pub fn with_database(db: Database, op_timeout: Duration) -> Self {
        Self {
            messages: db.collection("messages"),
            db,
            op_timeout,
        }
    }

    /// Creates the conversation index (idempotent).
    pub async fn ensure_indexes(&self) -> Result<(), StoreError> {
        let index = IndexModel::builder()
            .keys(doc! { "sender": 1, "recipient": 1, "_id": 1 })
            .options(
                IndexOptions::builder()
                    .name("conversation".to_owned())
                    .build(),
            )
            .build();
        self.timed(self.messages.create_index(index)).await?;
        Ok(())
    }

    /// Retries [`Self::ensure_indexes`] with backoff until it succeeds.
    pub async fn ensure_indexes_with_retry(&self) {
        mongo::retry_until_ok("creating the messages indexes", || self.ensure_indexes()).await;
    }

    async fn timed<T>(
        &self,
        call: impl IntoFuture<Output = mongodb::error::Result<T>>,
    ) -> Result<T, StoreError> {
        mongo::timed(self.op_timeout, call)
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))
    }

    /// One direction of a page: the messages `from` sent `to`, nearest the page's anchor first,
    /// at most the page size of them.
    async fn direction(
        &self,
        from: &str,
        to: &str,
        page: Page,
    ) -> Result<Vec<Message>, StoreError> {
        let mut filter = doc! { "sender": from, "recipient": to };
        let (sort, limit) = match page {
            Page::Latest { limit } => (-1, limit),
            Page::Before { id, limit } => {
                filter.insert("_id", doc! { "$lt": id });
                (-1, limit)
            }
            Page::After { id, limit } => {
                filter.insert("_id", doc! { "$gt": id });
                (1, limit)
            }
        };
        let messages = &self.messages;
        let sort: Document = doc! { "_id": sort };
        // The whole page in the first batch: one round trip per direction (the default first
        // batch is 101 documents, and a page may hold 200).
        let batch = u32::try_from(limit).unwrap_or(u32::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let started = std::time::Instant::now();
        let shown = tracing::enabled!(tracing::Level::TRACE).then(|| filter.to_string());
        let found = self
            .timed(async move {
                let mut cursor = messages
                    .find(filter)
                    .sort(sort)
                    .limit(limit)
                    .batch_size(batch)
                    .await?;
                let mut out = Vec::new();
                while cursor.advance().await? {
                    out.push(Message::from(cursor.deserialize_current()?));
                }
                Ok(out)
            })
            .await?;
        if let Some(filter) = shown {
            tracing::trace!(%filter, found = found.len(), elapsed = ?started.elapsed(), "history range scan");
        }
        Ok(found)
    }
}

#[async_trait]
impl MessageStore for MongoMessageStore {
    async fn insert_many(&self, messages: &[Message]) -> Result<(), StoreError> {
        let docs = messages.iter().map(|m| MessageDoc {
            id: m.id,
            sender: m.sender.clone(),
            recipient: m.recipient.clone(),
            content: m.content.clone(),
            timestamp: DateTime::from_millis(m.timestamp_ms),
        });
        if messages.len() == 1 {
            let doc = docs.into_iter().next().expect("one message");
            self.timed(self.messages.insert_one(&doc)).await?;
        } else {
            self.timed(self.messages.insert_many(docs)).await?;
        }
        Ok(())
    }

    async fn conversation(&self, a: &str, b: &str, page: Page) -> Result<Vec<Message>, StoreError> {
        if a == b {
            return Ok(merge_page(
                self.direction(a, a, page).await?,
                Vec::new(),
                page,
            ));
        }
        // The two directions are independent range scans: overlap their round trips.
        let (forward, backward) =
            tokio::try_join!(self.direction(a, b, page), self.direction(b, a, page))?;
        Ok(merge_page(forward, backward, page))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.timed(self.db.run_command(doc! { "ping": 1 })).await?;
        Ok(())
    }
}

/// Merges two id-ordered runs (one per direction) into the page wanted, oldest first.
fn merge_page(mut x: Vec<Message>, y: Vec<Message>, page: Page) -> Vec<Message> {
    x.extend(y);
    x.sort_by_key(|m| m.id);
    match page {
        Page::Latest { limit } | Page::Before { limit, .. } => {
            let skip = x.len().saturating_sub(limit);
            x.drain(..skip);
        }
        Page::After { limit, .. } => x.truncate(limit),
    }
    x
}
