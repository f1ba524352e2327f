//! Where messages live: MongoDB (the original's `messages` collection) or an embedded file.
//!
//! Besides the messages, a store keeps two things per message that make sends safe to retry
//! and events safe from loss:
//! - the **outbox marker**: every message is written "not yet published", with the time after
//!   which a republisher may take it (a lease). The marker is cleared once the broker has
//!   confirmed the event ([`MessageStore::mark_published`]); what keeps it past its lease is
//!   claimed and republished ([`MessageStore::claim_unpublished`], see [`crate::outbox`]).
//! - the **idempotency key** of the send, if it had one, unique per sender.
//!
//! And one thing per user and conversation, the **conversation summary**: the newest message
//! (what orders a user's list), how far the user has read it, and what that leaves unread. It is
//! written with the messages, so a user's list is a bounded read whatever their history holds
//! (see [`MessageStore::conversations`]).

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
    /// The send's `Idempotency-Key`, if it had one (unique per sender).
    pub idempotency_key: Option<String>,
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

/// What became of one message of an [`MessageStore::insert_many`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    Stored,
    /// Stored, but its conversation summaries could not be written after it: the message
    /// stays in the outbox (its event unpublished), and the sweep writes them before it
    /// publishes.
    StoredUnlisted,
    /// Not stored: its sender already has a message with its idempotency key.
    DuplicateKey,
}

/// One conversation of a user's list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conversation {
    pub peer: String,
    pub last: Message,
    /// Messages from `peer` newer than what the user has read.
    pub unread: u64,
    /// How far `peer` has read the conversation (for read ticks), if at all.
    pub peer_read_up_to: Option<ObjectId>,
}

/// A page of a user's conversations, the most recent first.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Conversations {
    pub page: Vec<Conversation>,
    /// The cursor of the next page (the newest message id of this page's last conversation);
    /// `None` on the last page.
    pub next: Option<ObjectId>,
}

/// What a [`MessageStore::mark_read`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadMark {
    /// The read position moved forward to the message.
    Moved,
    /// The user had read that far already (a read position never moves backwards).
    Unchanged,
    /// No such message between the two users.
    NotInConversation,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("message store unavailable: {0}")]
    Unavailable(String),
}

#[async_trait]
pub trait MessageStore: Send + Sync + 'static {
    /// Stores several messages in one write, each unpublished with a lease until `lease_until_ms`
    /// (the sender's own publish attempt); returns once the write is acknowledged, with one
    /// outcome per message. Sends go through [`crate::writer::MessageWriter`], which batches
    /// them into these writes.
    async fn insert_many(
        &self,
        messages: &[Message],
        lease_until_ms: i64,
    ) -> Result<Vec<Inserted>, StoreError>;

    /// The message `sender` stored with idempotency key `key`.
    async fn by_idempotency_key(
        &self,
        sender: &str,
        key: &str,
    ) -> Result<Option<Message>, StoreError>;

    /// Messages between `a` and `b` in both directions, oldest first.
    async fn conversation(&self, a: &str, b: &str, page: Page) -> Result<Vec<Message>, StoreError>;

    /// The oldest `limit` messages to or from `user` (every conversation) newer than `after`
    /// (from the first when `None`), oldest first: a client's catch-up after a reconnect.
    async fn for_user(
        &self,
        user: &str,
        after: Option<ObjectId>,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError>;

    /// Clears the outbox marker of messages whose event the broker confirmed. Not durable by
    /// itself: a clear lost in a crash only means the event is published again.
    async fn mark_published(&self, ids: &[ObjectId]) -> Result<(), StoreError>;

    /// Leases to the caller, until `lease_until_ms`, at most `limit` unpublished messages whose
    /// lease ran out by `now_ms`, oldest lease first. A message is claimed by one caller only:
    /// the lease is taken with a conditional update, so replicas sweeping together share the
    /// work.
    async fn claim_unpublished(
        &self,
        now_ms: i64,
        lease_until_ms: i64,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError>;

    /// `owner`'s conversations whose newest message is older than `before` (all when `None`),
    /// the most recent first, at most `limit`.
    async fn conversations(
        &self,
        owner: &str,
        before: Option<ObjectId>,
        limit: usize,
    ) -> Result<Conversations, StoreError>;

    /// Marks `owner`'s conversation with `peer` read up to the message `up_to` (of either of
    /// them), never backwards.
    async fn mark_read(
        &self,
        owner: &str,
        peer: &str,
        up_to: ObjectId,
    ) -> Result<ReadMark, StoreError>;

    /// Writes the conversation summaries of every stored message (idempotent, safe while the
    /// service serves): the one-shot upgrade of a database written without them, by the
    /// original system or an earlier version. What it finds counts as read.
    async fn backfill_conversations(&self) -> Result<Backfill, StoreError>;

    async fn ping(&self) -> Result<(), StoreError>;
}

/// What [`MessageStore::backfill_conversations`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Backfill {
    /// Messages read.
    pub messages: u64,
    /// Conversation summaries written (two per pair of users, one for a user's notes to self).
    pub summaries: u64,
}
