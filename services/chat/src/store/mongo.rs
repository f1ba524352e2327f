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
//! **Conversations** live in the collection `conversations`, one document per user and peer
//! (`owner`, `peer`, both unique together): `lastId`, the newest message's `_id`; `lastIn`, the
//! newest message *from* the peer; `incoming`, a number that grows with every write of messages
//! from the peer; `readUpTo`, how far the owner has read; `counted`, the unread count last
//! computed and the (`readUpTo`, `lastIn`, `incoming`) it was computed for. A send writes, after
//! its messages, one upsert per user and peer (both sides; one bulk `update`, one round trip per
//! batch of sends): `$max` of the ids, `$inc` of `incoming`. Re-applying one (the outbox does,
//! for a message whose summaries could not be written) changes no id, and no count can drift: an
//! unread count is counted, never incremented; `incoming` only tells a count computed before a
//! message landed from one computed after (ids are assigned when a send arrives and batches
//! commit concurrently, so a message can land below `lastIn`). A summary is written only once
//! the unique index exists (the first write makes it if start-up has not yet), so no two
//! summaries of one conversation can ever be created. A page of a user's list is:
//! 1. `find({owner, lastId: {$lt: before}}).sort({lastId: -1}).limit(n + 1)` on
//!    `{owner: 1, lastId: -1}`: a bounded scan of n + 1 keys;
//! 2. together: the last messages, `find({_id: {$in: [...]}})` (n point reads), the peers' read
//!    positions, `find({owner: {$in: peers}, peer: owner})` (n point reads of the unique
//!    index), and, only for a conversation whose `counted` is not for its current `readUpTo`
//!    and `lastIn`, `count({sender: peer, recipient: owner, _id: {$gt: readUpTo, $lte:
//!    lastIn}})`, a count of the conversation index's keys that are unread; each count is then
//!    kept in `counted`, so an unchanged conversation is never counted twice.
//!
//! The MongoDB-compatible server the tests use (secantusdb) sorts the whole matching index
//! range before it applies the limit, so there a page costs time in proportion to the
//! conversation; the README gives both figures. No code here works around that: production
//! runs on MongoDB.

use std::{
    future::IntoFuture,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use chat_common::{config::Durability, mongo};
use mongodb::{
    Collection, Database, IndexModel,
    bson::{DateTime, Document, doc, oid::ObjectId},
    options::IndexOptions,
};
use serde::{Deserialize, Serialize};

use super::{
    Backfill, Conversation, Conversations, Inserted, Message, MessageStore, Page, ReadMark,
    StoreError,
};

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

/// A user's summary of one conversation (see the module's documentation).
#[derive(Debug, Default, Serialize, Deserialize)]
struct SummaryDoc {
    owner: String,
    peer: String,
    #[serde(rename = "lastId", default, skip_serializing_if = "Option::is_none")]
    last_id: Option<ObjectId>,
    #[serde(rename = "lastIn", default, skip_serializing_if = "Option::is_none")]
    last_in: Option<ObjectId>,
    #[serde(rename = "readUpTo", default, skip_serializing_if = "Option::is_none")]
    read_up_to: Option<ObjectId>,
    /// Grows with every write of messages from the peer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    incoming: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    counted: Option<Counted>,
}

/// An unread count and the read position, newest incoming message and `incoming` it was counted
/// for.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Counted {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    read: Option<ObjectId>,
    last: ObjectId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    seen: Option<i64>,
    n: i64,
}

impl SummaryDoc {
    /// The unread count if no count is needed: none unread, or counted for this state.
    fn known_unread(&self) -> Option<u64> {
        let Some(last_in) = self.last_in else {
            return Some(0);
        };
        if self.read_up_to.is_some_and(|r| r >= last_in) {
            return Some(0);
        }
        self.counted
            .as_ref()
            .filter(|c| c.read == self.read_up_to && c.last == last_in && c.seen == self.incoming)
            .map(|c| u64::try_from(c.n).unwrap_or(0))
    }
}

/// The collection of one-shot upgrade markers, and the one of the conversation summaries: `since`,
/// the first id this version assigned on this database.
const MIGRATIONS: &str = "migrations";
const CONVERSATIONS_SINCE: &str = "conversations";

/// What a write changes in one user's summary of one conversation.
#[derive(Debug, Default)]
struct SummaryWrite {
    last: Option<ObjectId>,
    last_in: Option<ObjectId>,
    incoming: i64,
    read: Option<ObjectId>,
}

/// The summary writes of a batch of messages (a send's, or the backfill's), per user and peer.
#[derive(Debug, Default)]
struct SummaryWrites<'a>(std::collections::HashMap<(&'a str, &'a str), SummaryWrite>);

impl<'a> SummaryWrites<'a> {
    /// Message `id` from `sender` to `recipient`, in both users' summaries (once in a note to
    /// oneself's).
    fn message(&mut self, sender: &'a str, recipient: &'a str, id: ObjectId) {
        let mine = self.0.entry((sender, recipient)).or_default();
        mine.last = mine.last.max(Some(id));
        if sender != recipient {
            let theirs = self.0.entry((recipient, sender)).or_default();
            theirs.last = theirs.last.max(Some(id));
            theirs.last_in = theirs.last_in.max(Some(id));
            theirs.incoming += 1;
        }
    }

    /// `owner` has read their conversation with `peer` up to `id`.
    fn read(&mut self, owner: &'a str, peer: &'a str, id: ObjectId) {
        let s = self.0.entry((owner, peer)).or_default();
        s.read = s.read.max(Some(id));
    }

    /// One upsert statement per summary: `$max` of the ids (idempotent, order-free) and `$inc`
    /// of `incoming`.
    fn statements(self) -> Vec<Document> {
        self.0
            .into_iter()
            .map(|((owner, peer), w)| {
                let mut max = Document::new();
                for (field, id) in [
                    ("lastId", w.last),
                    ("lastIn", w.last_in),
                    ("readUpTo", w.read),
                ] {
                    if let Some(id) = id {
                        max.insert(field, id);
                    }
                }
                let mut update = doc! { "$max": max };
                if w.incoming > 0 {
                    update.insert("$inc", doc! { "incoming": w.incoming });
                }
                doc! { "q": { "owner": owner, "peer": peer }, "u": update, "upsert": true }
            })
            .collect()
    }
}

/// The summaries' unique index: one summary per user and peer.
fn owner_peer_index() -> IndexModel {
    IndexModel::builder()
        .keys(doc! { "owner": 1, "peer": 1 })
        .options(
            IndexOptions::builder()
                .name("owner_peer".to_owned())
                .unique(true)
                .build(),
        )
        .build()
}

/// A message's `_id` and its two users, read without its content.
#[derive(Debug, Deserialize)]
struct Ends {
    #[serde(rename = "_id")]
    id: ObjectId,
    sender: String,
    recipient: String,
}

/// The projection that reads [`Ends`].
fn ends_projection() -> Document {
    doc! { "sender": 1, "recipient": 1 }
}

/// What an `update` command answers, as far as a bulk write needs.
#[derive(Debug, Deserialize)]
struct UpdateReply {
    #[serde(default, rename = "writeErrors")]
    write_errors: Vec<StatementError>,
    #[serde(rename = "writeConcernError")]
    write_concern_error: Option<Document>,
}

/// A statement of an `update` command that failed: its position in `updates`, and why.
#[derive(Debug, Deserialize)]
struct StatementError {
    index: usize,
    code: i32,
    #[serde(default)]
    errmsg: String,
}

pub struct MongoMessageStore {
    db: Database,
    messages: Collection<MessageDoc>,
    conversations: Collection<SummaryDoc>,
    op_timeout: Duration,
    /// Set once the summaries' unique index exists (shared by [`Self::same_database`]).
    summaries_indexed: Arc<AtomicBool>,
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
            conversations: db.collection("conversations"),
            db,
            op_timeout,
            summaries_indexed: Arc::default(),
        }
    }

    /// Another store on the same database, as a second replica has (tests of concurrent
    /// replicas).
    #[must_use]
    pub fn same_database(&self) -> Self {
        Self {
            summaries_indexed: self.summaries_indexed.clone(),
            ..Self::with_database(self.db.clone(), self.op_timeout)
        }
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
        // One at a time: the unique one is what summaries wait for.
        self.summaries_ready().await?;
        self.timed(self.conversations.create_index(index(
            doc! { "owner": 1, "lastId": -1 },
            "recent",
            None,
            false,
        )))
        .await?;
        // When this version first served this database: what was stored before counts as read
        // once `backfill-conversations` lists it (the first start wins).
        self.timed(
            self.db
                .collection::<Document>(MIGRATIONS)
                .update_one(
                    doc! { "_id": CONVERSATIONS_SINCE },
                    doc! { "$setOnInsert": { "since": ObjectId::new() } },
                )
                .upsert(true),
        )
        .await?;
        Ok(())
    }

    /// Summaries are written only once their unique index exists: the first caller before
    /// [`Self::ensure_indexes`] got there creates it (idempotent, one round trip once).
    async fn summaries_ready(&self) -> Result<(), StoreError> {
        if self.summaries_indexed.load(Ordering::Acquire) {
            return Ok(());
        }
        self.timed(self.conversations.create_index(owner_peer_index()))
            .await?;
        self.summaries_indexed.store(true, Ordering::Release);
        Ok(())
    }

    /// Runs `updates` (statements of one `update` command) on `conversations`, unordered. An
    /// upsert that lost a race to create the same summary fails on the unique index: it is run
    /// again, and then updates the summary the other created. (MongoDB retries such an upsert
    /// itself when its filter is the unique key's equality; other servers may not.)
    async fn update_summaries(&self, mut updates: Vec<Document>) -> Result<(), StoreError> {
        // Summaries are what lists a conversation: as durable as the messages they list.
        let write_concern = self
            .conversations
            .write_concern()
            .and_then(|wc| bson::to_document(wc).ok())
            .unwrap_or_default();
        for attempt in 0..2 {
            if updates.is_empty() {
                return Ok(());
            }
            let errors = self
                .update_command(&self.conversations, updates.clone(), &write_concern)
                .await?;
            let mut again = Vec::new();
            for error in errors {
                if error.code == mongo::DUPLICATE_KEY && attempt == 0 {
                    again.extend(updates.get(error.index).cloned());
                } else {
                    return Err(StoreError::Unavailable(format!(
                        "conversation summaries not written: {} (code {})",
                        error.errmsg, error.code
                    )));
                }
            }
            updates = again;
        }
        Ok(())
    }

    /// Runs one unordered `update` command of `updates` on `collection` (a bulk write: one round
    /// trip) and returns its statements' write errors. The driver adds no write concern to a
    /// command it is given: `write_concern` is the command's (empty: the server's default), and
    /// a write concern error fails the call.
    async fn update_command<T: Send + Sync>(
        &self,
        collection: &Collection<T>,
        updates: Vec<Document>,
        write_concern: &Document,
    ) -> Result<Vec<StatementError>, StoreError> {
        let mut command = doc! {
            "update": collection.name(),
            "updates": updates,
            "ordered": false,
        };
        if !write_concern.is_empty() {
            command.insert("writeConcern", write_concern.clone());
        }
        let reply = self.timed(self.db.run_command(command)).await?;
        let reply: UpdateReply = bson::from_document(reply)
            .map_err(|e| StoreError::Unavailable(format!("an update's reply: {e}")))?;
        if let Some(error) = reply.write_concern_error {
            return Err(StoreError::Unavailable(format!(
                "write concern not met: {error}"
            )));
        }
        Ok(reply.write_errors)
    }

    /// Writes the summaries of `messages`' conversations (see [`SummaryWrites`]).
    async fn record_conversations(&self, messages: &[&Message]) -> Result<(), StoreError> {
        if messages.is_empty() {
            return Ok(());
        }
        self.summaries_ready().await?;
        let mut writes = SummaryWrites::default();
        for m in messages {
            writes.message(&m.sender, &m.recipient, m.id);
        }
        self.update_summaries(writes.statements()).await
    }

    /// Counts what `s.owner` has not read from `s.peer`, and keeps the count in the summary.
    async fn count_unread(&self, s: &SummaryDoc) -> Result<u64, StoreError> {
        let Some(last_in) = s.last_in else {
            return Ok(0);
        };
        let mut range = doc! { "$lte": last_in };
        if let Some(read) = s.read_up_to {
            range.insert("$gt", read);
        }
        let n = self
            .timed(
                self.messages.count_documents(
                    doc! { "sender": &s.peer, "recipient": &s.owner, "_id": range },
                ),
            )
            .await?;
        let counted = Counted {
            read: s.read_up_to,
            last: last_in,
            seen: s.incoming,
            n: i64::try_from(n).unwrap_or(i64::MAX),
        };
        // Kept only as a hint: a count for another state is never used (`known_unread`).
        if let Ok(counted) = bson::to_document(&counted) {
            let kept = self
                .timed(self.conversations.update_one(
                    doc! { "owner": &s.owner, "peer": &s.peer },
                    doc! { "$set": { "counted": counted } },
                ))
                .await;
            if let Err(e) = kept {
                tracing::debug!(error = %e, "unread count not kept");
            }
        }
        Ok(n)
    }

    async fn collect<T: serde::de::DeserializeOwned + Send + Sync>(
        &self,
        cursor: impl IntoFuture<Output = mongodb::error::Result<mongodb::Cursor<T>>>,
    ) -> Result<Vec<T>, StoreError> {
        self.timed(async move {
            let mut cursor = cursor.await?;
            let mut out = Vec::new();
            while cursor.advance().await? {
                out.push(cursor.deserialize_current()?);
            }
            Ok(out)
        })
        .await
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
        let found: Vec<Message> = self
            .collect(
                messages
                    .find(filter)
                    .sort(sort)
                    .limit(limit)
                    .batch_size(batch),
            )
            .await?
            .into_iter()
            .map(Message::from)
            .collect();
        if let Some(filter) = shown {
            tracing::trace!(%filter, found = found.len(), elapsed = ?started.elapsed(), "history range scan");
        }
        Ok(found)
    }

    /// Inserts `docs` (the documents of `messages`): one outcome per message.
    async fn insert_messages(
        &self,
        messages: &[Message],
        docs: impl Iterator<Item = MessageDoc> + Send,
    ) -> Result<Vec<Inserted>, StoreError> {
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
        let mut outcomes = self.insert_messages(messages, docs).await?;
        let stored: Vec<&Message> = messages
            .iter()
            .zip(&outcomes)
            .filter_map(|(m, o)| (*o == Inserted::Stored).then_some(m))
            .collect();
        if let Err(e) = self.record_conversations(&stored).await {
            // The messages are stored: their events wait in the outbox, whose sweep writes the
            // summaries before it publishes.
            tracing::warn!(error = %e, "conversation summaries left to the outbox");
            for outcome in &mut outcomes {
                if *outcome == Inserted::Stored {
                    *outcome = Inserted::StoredUnlisted;
                }
            }
        }
        Ok(outcomes)
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
        let updates: Vec<Document> = ids
            .iter()
            .map(|id| doc! { "q": { "_id": id }, "u": { "$unset": { "outbox": "" } } })
            .collect();
        // A clear lost in a crash only means a repeat: no need to wait for the journal.
        let errors = self
            .update_command(&self.messages, updates, &doc! { "w": 1, "j": false })
            .await?;
        if errors.is_empty() {
            Ok(())
        } else {
            Err(StoreError::Unavailable(format!(
                "{} outbox markers not cleared",
                errors.len()
            )))
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
            .collect(
                messages
                    .find(doc! { "outbox": { "$lte": now } })
                    .sort(doc! { "outbox": 1 })
                    .limit(limit),
            )
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
        // A message may be here because its send could not write its summaries: write them
        // before its event goes out (a `$max`: harmless if they were written).
        self.record_conversations(&claimed.iter().collect::<Vec<_>>())
            .await?;
        Ok(claimed)
    }

    async fn conversations(
        &self,
        owner: &str,
        before: Option<ObjectId>,
        limit: usize,
    ) -> Result<Conversations, StoreError> {
        let mut filter = doc! { "owner": owner };
        if let Some(before) = before {
            filter.insert("lastId", doc! { "$lt": before });
        }
        let wanted = i64::try_from(limit.saturating_add(1)).unwrap_or(i64::MAX);
        let mut summaries = self
            .collect(
                self.conversations
                    .find(filter)
                    .sort(doc! { "lastId": -1 })
                    .limit(wanted)
                    .batch_size(u32::try_from(wanted).unwrap_or(u32::MAX)),
            )
            .await?;
        let more = summaries.len() > limit;
        summaries.truncate(limit);
        if summaries.is_empty() {
            return Ok(Conversations::default());
        }
        let last_ids: Vec<ObjectId> = summaries.iter().filter_map(|s| s.last_id).collect();
        let peers: Vec<&str> = summaries.iter().map(|s| s.peer.as_str()).collect();
        let unread = futures_util::future::try_join_all(summaries.iter().map(|s| async move {
            match s.known_unread() {
                Some(n) => Ok(n),
                None => self.count_unread(s).await,
            }
        }));
        let (lasts, theirs, unread) = tokio::try_join!(
            self.collect(self.messages.find(doc! { "_id": { "$in": &last_ids } })),
            self.collect(
                self.conversations
                    .find(doc! { "owner": { "$in": &peers }, "peer": owner })
                    .projection(doc! { "owner": 1, "peer": 1, "readUpTo": 1 }),
            ),
            unread,
        )?;
        let mut lasts: std::collections::HashMap<ObjectId, Message> = lasts
            .into_iter()
            .map(|d| (d.id, Message::from(d)))
            .collect();
        let theirs: std::collections::HashMap<String, Option<ObjectId>> = theirs
            .into_iter()
            .map(|s| (s.owner, s.read_up_to))
            .collect();
        let next = more
            .then(|| summaries.last().and_then(|s| s.last_id))
            .flatten();
        let page = summaries
            .into_iter()
            .zip(unread)
            .filter_map(|(s, unread)| {
                let last = lasts.remove(&s.last_id?)?;
                Some(Conversation {
                    peer_read_up_to: theirs.get(&s.peer).copied().flatten(),
                    peer: s.peer,
                    last,
                    unread,
                })
            })
            .collect();
        Ok(Conversations { page, next })
    }

    async fn mark_read(
        &self,
        owner: &str,
        peer: &str,
        up_to: ObjectId,
    ) -> Result<ReadMark, StoreError> {
        let found = self
            .timed(
                self.messages
                    .clone_with_type::<Ends>()
                    .find_one(doc! { "_id": up_to })
                    .projection(ends_projection()),
            )
            .await?;
        let ours = found.is_some_and(|m| {
            (m.sender == owner && m.recipient == peer) || (m.sender == peer && m.recipient == owner)
        });
        if !ours {
            return Ok(ReadMark::NotInConversation);
        }
        self.summaries_ready().await?;
        let update = doc! { "$max": { "readUpTo": up_to, "lastId": up_to } };
        let filter = doc! { "owner": owner, "peer": peer };
        let call = || {
            self.conversations
                .find_one_and_update(filter.clone(), update.clone())
                .upsert(true)
                .return_document(mongodb::options::ReturnDocument::Before)
        };
        let before = match mongo::timed(self.op_timeout, call()).await {
            Ok(before) => before,
            // Another request created the summary first: this one then updates it.
            Err(mongo::CallError::DuplicateKey) => self.timed(call()).await?,
            Err(mongo::CallError::Unavailable(e)) => return Err(StoreError::Unavailable(e)),
        };
        let moved = before
            .and_then(|s| s.read_up_to)
            .is_none_or(|read| read < up_to);
        Ok(if moved {
            ReadMark::Moved
        } else {
            ReadMark::Unchanged
        })
    }

    async fn backfill_conversations(&self) -> Result<Backfill, StoreError> {
        use std::collections::HashMap;
        #[derive(Deserialize)]
        struct Since {
            since: ObjectId,
        }
        // The indexes first (a one-shot run does not wait for a server's), and the first id of
        // this version: what was stored before it counts as read, what came after (sends of
        // this version, or of an older replica during a rolling upgrade) does not.
        self.ensure_indexes().await?;
        let since = self
            .timed(
                self.db
                    .collection::<Since>(MIGRATIONS)
                    .find_one(doc! { "_id": CONVERSATIONS_SINCE }),
            )
            .await?
            .map_or_else(ObjectId::new, |s| s.since);
        // One pass over the collection: per direction, the newest message, and the newest
        // before `since`.
        let ends = self.messages.clone_with_type::<Ends>();
        let mut report = Backfill::default();
        let mut newest: HashMap<(String, String), (ObjectId, Option<ObjectId>)> = HashMap::new();
        let messages = &mut report.messages;
        let newest_ref = &mut newest;
        // Not bounded by the per-operation timeout: a one-shot pass over the collection.
        async move {
            let mut cursor = ends
                .find(doc! {})
                .projection(ends_projection())
                .batch_size(10_000)
                .await?;
            while cursor.advance().await? {
                let e = cursor.deserialize_current()?;
                *messages += 1;
                let slot = newest_ref
                    .entry((e.sender, e.recipient))
                    .or_insert((e.id, None));
                slot.0 = slot.0.max(e.id);
                if e.id < since {
                    slot.1 = slot.1.max(Some(e.id));
                }
            }
            Ok::<_, mongodb::error::Error>(())
        }
        .await
        .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        // Per user and peer: the newest message either way, the newest from the peer, and the
        // newest from the peer before `since` (read).
        let mut writes = SummaryWrites::default();
        for ((sender, recipient), (newest, old)) in &newest {
            writes.message(sender, recipient, *newest);
            if let Some(old) = old
                && sender != recipient
            {
                writes.read(recipient, sender, *old);
            }
        }
        let updates = writes.statements();
        report.summaries = u64::try_from(updates.len()).unwrap_or(u64::MAX);
        for chunk in updates.chunks(1000) {
            self.update_summaries(chunk.to_vec()).await?;
        }
        Ok(report)
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
        // Not ready to serve sends fully until summaries can be written.
        self.summaries_ready().await
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
