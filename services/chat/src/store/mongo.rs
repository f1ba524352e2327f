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
//! A user's catch-up ([`MessageStore::for_user`]) is likewise two bounded scans sent together,
//! on `{recipient: 1, _id: 1}` and `{sender: 1, _id: 1}`, merged. The outbox marker is the field
//! `outbox` (a date: the lease), present only while the event is unconfirmed, in a sparse index
//! `{outbox: 1}` that holds only those documents (for one field, the same set as a partial index
//! on `{outbox: {$exists: true}}`, which the test server does not use), so a sweep,
//! `find({outbox: {$lte: now}}).sort({outbox: 1}).limit(n)`, reads the few due messages and
//! never the collection. The idempotency key is `idempotencyKey`, unique per sender through a
//! partial unique index (messages without a key are not in it).
//!
//! The MongoDB-compatible server the tests use (secantusdb) sorts the whole matching index
//! range before it applies the limit, so there a page costs time in proportion to the
//! conversation; the README gives both figures. No code here works around that: production
//! runs on MongoDB.

use std::{future::IntoFuture, time::Duration};

use async_trait::async_trait;
use chat_common::{config::Durability, mongo};
use mongodb::{
    Collection, Database, IndexModel,
    bson::{DateTime, Document, doc, oid::ObjectId},
    options::IndexOptions,
};
use serde::{Deserialize, Serialize};

use super::{Inserted, Message, MessageStore, Page, StoreError};

#[derive(Debug, Serialize, Deserialize)]
struct MessageDoc {
    #[serde(rename = "_id")]
    id: ObjectId,
    sender: String,
    recipient: String,
    content: String,
    timestamp: DateTime,
    /// Present while the event is not confirmed: when a republisher may take it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    outbox: Option<DateTime>,
    #[serde(
        rename = "idempotencyKey",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    idempotency_key: Option<String>,
}

impl From<MessageDoc> for Message {
    fn from(d: MessageDoc) -> Self {
        Self {
            id: d.id,
            sender: d.sender,
            recipient: d.recipient,
            content: d.content,
            timestamp_ms: d.timestamp.timestamp_millis(),
            idempotency_key: d.idempotency_key,
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
        durability: Durability,
    ) -> anyhow::Result<Self> {
        let db = mongo::connect(
            url,
            name,
            app_name,
            op_timeout,
            durability,
            "mongodb://db:27017/chat",
        )
        .await?;
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

    /// Another store on the same database, as a second replica has (tests of concurrent
    /// replicas).
    #[must_use]
    pub fn same_database(&self) -> Self {
        Self::with_database(self.db.clone(), self.op_timeout)
    }

    /// Creates the indexes (idempotent): the conversation's, each user's two directions (for
    /// catch-up), the unique idempotency key per sender and the outbox's, both partial.
    pub async fn ensure_indexes(&self) -> Result<(), StoreError> {
        let index = |keys: Document, name: &str, partial: Option<Document>, unique: bool| {
            IndexModel::builder()
                .keys(keys)
                .options(
                    IndexOptions::builder()
                        .name(name.to_owned())
                        .partial_filter_expression(partial)
                        .unique(unique.then_some(true))
                        .build(),
                )
                .build()
        };
        let exists = |field: &str| Some(doc! { field: { "$exists": true } });
        let indexes = [
            index(
                doc! { "sender": 1, "recipient": 1, "_id": 1 },
                "conversation",
                None,
                false,
            ),
            index(doc! { "recipient": 1, "_id": 1 }, "received", None, false),
            index(doc! { "sender": 1, "_id": 1 }, "sent", None, false),
            index(
                doc! { "sender": 1, "idempotencyKey": 1 },
                "idempotency",
                exists("idempotencyKey"),
                true,
            ),
            index(doc! { "outbox": 1 }, "outbox", exists("outbox"), false),
        ];
        self.timed(self.messages.create_indexes(indexes)).await?;
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
        self.scan(doc! { "sender": from, "recipient": to }, page)
            .await
    }

    /// The messages matching `filter` (equality on an index's prefix, `_id` its last key), nearest
    /// the page's anchor first, at most the page size of them: one bounded index scan.
    async fn scan(&self, mut filter: Document, page: Page) -> Result<Vec<Message>, StoreError> {
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
    async fn insert_many(
        &self,
        messages: &[Message],
        lease_until_ms: i64,
    ) -> Result<Vec<Inserted>, StoreError> {
        let lease = DateTime::from_millis(lease_until_ms);
        let docs = messages.iter().map(|m| MessageDoc {
            id: m.id,
            sender: m.sender.clone(),
            recipient: m.recipient.clone(),
            content: m.content.clone(),
            timestamp: DateTime::from_millis(m.timestamp_ms),
            outbox: Some(lease),
            idempotency_key: m.idempotency_key.clone(),
        });
        let mut outcomes = vec![Inserted::Stored; messages.len()];
        if messages.len() == 1 {
            let doc = docs.into_iter().next().expect("one message");
            match mongo::timed(self.op_timeout, self.messages.insert_one(&doc)).await {
                Ok(_) => {}
                Err(mongo::CallError::DuplicateKey) => outcomes[0] = Inserted::DuplicateKey,
                Err(mongo::CallError::Unavailable(e)) => return Err(StoreError::Unavailable(e)),
            }
            return Ok(outcomes);
        }
        // Unordered: a message refused for its idempotency key does not stop the others.
        let insert = self.messages.insert_many(docs).ordered(false).into_future();
        match tokio::time::timeout(self.op_timeout, insert).await {
            Err(_) => Err(StoreError::Unavailable(format!(
                "no answer within {:?}",
                self.op_timeout
            ))),
            Ok(Ok(_)) => Ok(outcomes),
            Ok(Err(e)) => match mongo::refused_as_duplicates(&e) {
                Some(refused) => {
                    for i in refused {
                        if let Some(outcome) = outcomes.get_mut(i) {
                            *outcome = Inserted::DuplicateKey;
                        }
                    }
                    Ok(outcomes)
                }
                None => Err(StoreError::Unavailable(e.to_string())),
            },
        }
    }

    async fn by_idempotency_key(
        &self,
        sender: &str,
        key: &str,
    ) -> Result<Option<Message>, StoreError> {
        let found = self
            .timed(
                self.messages
                    .find_one(doc! { "sender": sender, "idempotencyKey": key }),
            )
            .await?;
        Ok(found.map(Message::from))
    }

    async fn for_user(
        &self,
        user: &str,
        after: Option<ObjectId>,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError> {
        // Oldest first from `after`, or from the very first message.
        let page = Page::After {
            id: after.unwrap_or_else(|| ObjectId::from_bytes([0; 12])),
            limit,
        };
        let (received, sent) = tokio::try_join!(
            self.scan(doc! { "recipient": user }, page),
            self.scan(doc! { "sender": user }, page)
        )?;
        let mut merged = merge_by_id([received, sent]);
        merged.truncate(limit);
        Ok(merged)
    }

    async fn mark_published(&self, ids: &[ObjectId]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        // One `update` command of one point update per message (a bulk write: one round trip).
        let updates: Vec<Document> = ids
            .iter()
            .map(|id| doc! { "q": { "_id": id }, "u": { "$unset": { "outbox": "" } } })
            .collect();
        // A clear lost in a crash only means a repeat: no need to wait for the journal.
        let command = doc! {
            "update": self.messages.name(),
            "updates": updates,
            "ordered": false,
            "writeConcern": { "w": 1, "j": false },
        };
        let reply = self.timed(self.db.run_command(command)).await?;
        match reply.get_array("writeErrors") {
            Ok(errors) if !errors.is_empty() => Err(StoreError::Unavailable(format!(
                "{} outbox markers not cleared",
                errors.len()
            ))),
            _ => Ok(()),
        }
    }

    async fn claim_unpublished(
        &self,
        now_ms: i64,
        lease_until_ms: i64,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let messages = &self.messages;
        let now = DateTime::from_millis(now_ms);
        let due: Vec<MessageDoc> = self
            .timed(async move {
                let mut cursor = messages
                    .find(doc! { "outbox": { "$lte": now } })
                    .sort(doc! { "outbox": 1 })
                    .limit(limit)
                    .await?;
                let mut out = Vec::new();
                while cursor.advance().await? {
                    out.push(cursor.deserialize_current()?);
                }
                Ok(out)
            })
            .await?;
        // Each lease is taken only if nobody took it since the read: of replicas sweeping at
        // once, one wins each message.
        let lease = DateTime::from_millis(lease_until_ms);
        let takes = due.into_iter().filter_map(|doc| {
            let held = doc.outbox?;
            Some(async move {
                let taken = self
                    .timed(self.messages.update_one(
                        doc! { "_id": doc.id, "outbox": held },
                        doc! { "$set": { "outbox": lease } },
                    ))
                    .await?;
                Ok::<_, StoreError>((taken.modified_count == 1).then(|| Message::from(doc)))
            })
        });
        let mut claimed = Vec::new();
        for taken in futures_util::future::join_all(takes).await {
            claimed.extend(taken?);
        }
        Ok(claimed)
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

/// Merges id-ordered runs (one per index scanned) into one oldest-first run without repeats
/// (a message to oneself is found by both the sender's and the recipient's scan).
fn merge_by_id(runs: impl IntoIterator<Item = Vec<Message>>) -> Vec<Message> {
    let mut all: Vec<Message> = runs.into_iter().flatten().collect();
    all.sort_by_key(|m| m.id);
    all.dedup_by_key(|m| m.id);
    all
}
