//! MongoDB message store: collection `messages` of the database named in `DATABASE_URL`, with
//! the original's fields (`sender`, `recipient`, `content`, `timestamp` as a BSON date).
//!
//! A conversation is read as two index range scans (one per direction) on
//! `{sender: 1, recipient: 1, _id: 1}`, each limited to the page size, merged here; no query
//! scans a conversation.

use std::{future::IntoFuture, time::Duration};

use async_trait::async_trait;
use chat_common::mongo;
use mongodb::{
    Collection, Database, IndexModel,
    bson::{DateTime, Document, doc, oid::ObjectId},
    options::IndexOptions,
};
use serde::{Deserialize, Serialize};

use super::{Message, MessageStore, Page, StoreError, merge_page};

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
    pub async fn connect(url: &str, app_name: &str, op_timeout: Duration) -> anyhow::Result<Self> {
        let db = mongo::connect(url, app_name, op_timeout, "mongodb://db:27017/chat").await?;
        Ok(Self {
            messages: db.collection("messages"),
            db,
            op_timeout,
        })
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
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.timed(async move {
            let mut cursor = messages.find(filter).sort(sort).limit(limit).await?;
            let mut out = Vec::new();
            while cursor.advance().await? {
                out.push(Message::from(cursor.deserialize_current()?));
            }
            Ok(out)
        })
        .await
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
        let forward = self.direction(a, b, page).await?;
        let backward = if a == b {
            Vec::new()
        } else {
            self.direction(b, a, page).await?
        };
        Ok(merge_page(forward, backward, page))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.timed(self.db.run_command(doc! { "ping": 1 })).await?;
        Ok(())
    }
}
