//! Where messages live: MongoDB (the original's `messages` collection) or an embedded file.

mod embedded;
#[cfg(feature = "mongo")]
mod mongo;

pub use embedded::EmbeddedMessageStore;
#[cfg(feature = "mongo")]
pub use mongo::MongoMessageStore;

use async_trait::async_trait;
use bson::oid::ObjectId;
use chat_common::{event::MessageView, time::rfc3339_millis};

/// A stored message; `timestamp` in milliseconds since the Unix epoch (a BSON date in MongoDB).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub id: ObjectId,
    pub sender: String,
    pub recipient: String,
    pub content: String,
    pub timestamp_ms: i64,
}

impl Message {
    pub fn view(&self) -> MessageView {
        MessageView {
            id: self.id.to_hex(),
            sender: self.sender.clone(),
            recipient: self.recipient.clone(),
            content: self.content.clone(),
            timestamp: rfc3339_millis(self.timestamp_ms),
        }
    }
}

/// Which part of a conversation to read. Every page comes back oldest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page {
    /// The latest `limit` messages.
    Latest { limit: usize },
    /// The latest `limit` messages older than `id`.
    Before { id: ObjectId, limit: usize },
    /// The oldest `limit` messages newer than `id` (catch-up after a reconnect).
    After { id: ObjectId, limit: usize },
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("message store unavailable: {0}")]
    Unavailable(String),
}

#[async_trait]
pub trait MessageStore: Send + Sync + 'static {
    /// Stores several messages in one write; returns once it is acknowledged. Sends go through
    /// [`crate::writer::MessageWriter`], which batches them into these writes.
    async fn insert_many(&self, messages: &[Message]) -> Result<(), StoreError>;

    /// Messages between `a` and `b` in both directions, oldest first.
    async fn conversation(&self, a: &str, b: &str, page: Page) -> Result<Vec<Message>, StoreError>;

    async fn ping(&self) -> Result<(), StoreError>;
}
