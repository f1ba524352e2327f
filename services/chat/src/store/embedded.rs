//! Embedded, persistent message store (a `redb` file) for the standalone stack and development
//! mode. Messages are keyed by (conversation, ObjectId bytes), so a page is one range read; a
//! second table keys each message by (user, id) for both its sender and its recipient, so a
//! user's catch-up is one range read too. The outbox holds the ids of unpublished messages with
//! their lease (a handful, read whole by a sweep); idempotency keys map to their message.
//! Conversation summaries (newest message, read position, unread count) are kept per user and
//! peer, and a user's list is a range of a table keyed by (user, newest message id), newest
//! last. Every write is one transaction, summaries included, so the unread counts are exact:
//! a send adds one to its recipient's, a read counts what is left after it.

use std::{path::Path, sync::Arc};

use async_trait::async_trait;
use bson::oid::ObjectId;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};

use super::{
    Backfill, Conversation, Conversations, Inserted, Message, MessageStore, Page, ReadMark,
    StoreError,
};

/// (conversation key, 12 ObjectId bytes) -> JSON body
const MESSAGES: TableDefinition<(&str, &[u8]), &[u8]> = TableDefinition::new("messages");
/// (user, 12 ObjectId bytes) -> the other participant; one row for the sender, one for the
/// recipient (a single row when they are the same user).
const BY_USER: TableDefinition<(&str, &[u8]), &str> = TableDefinition::new("by_user");
/// 12 ObjectId bytes -> (lease in ms since the epoch, conversation key) of a message whose
/// event is unconfirmed.
const OUTBOX: TableDefinition<&[u8], (i64, &str)> = TableDefinition::new("outbox");
/// (sender, idempotency key) -> 12 ObjectId bytes followed by the recipient.
const IDEMPOTENCY: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("idempotency");
/// (owner, peer) -> [`Summary`] (32 bytes).
const CONVERSATIONS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("conversations");
/// (owner, 12 bytes of the conversation's newest message id) -> peer: the owner's list.
const RECENT: TableDefinition<(&str, &[u8]), &str> = TableDefinition::new("recent");

/// A user's summary of one conversation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Summary {
    last: [u8; 12],
    /// All zeros: nothing read.
    read: [u8; 12],
    unread: u64,
}

impl Summary {
    fn encode(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out[..12].copy_from_slice(&self.last);
        out[12..24].copy_from_slice(&self.read);
        out[24..].copy_from_slice(&self.unread.to_le_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Result<Self, StoreError> {
        let field = |range: std::ops::Range<usize>| {
            bytes
                .get(range)
                .ok_or_else(|| unavailable("short conversation summary"))
        };
        Ok(Self {
            last: field(0..12)?.try_into().map_err(unavailable)?,
            read: field(12..24)?.try_into().map_err(unavailable)?,
            unread: u64::from_le_bytes(field(24..32)?.try_into().map_err(unavailable)?),
        })
    }
}

type SummaryTable<'t> = redb::Table<'t, (&'static str, &'static str), &'static [u8]>;
type RecentTable<'t> = redb::Table<'t, (&'static str, &'static [u8]), &'static str>;

fn summary(
    table: &impl ReadableTable<(&'static str, &'static str), &'static [u8]>,
    owner: &str,
    peer: &str,
) -> Result<Option<Summary>, StoreError> {
    match table.get((owner, peer)).map_err(unavailable)? {
        Some(v) => Summary::decode(v.value()).map(Some),
        None => Ok(None),
    }
}

/// Moves `owner`'s conversation with `peer` to its newest message `id`, if newer.
fn note_newest(
    recent: &mut RecentTable<'_>,
    s: &mut Option<Summary>,
    owner: &str,
    peer: &str,
    id: [u8; 12],
) -> Result<(), StoreError> {
    let current = s.get_or_insert_with(Summary::default);
    if current.last != [0; 12] && current.last >= id {
        return Ok(());
    }
    if current.last != [0; 12] {
        recent
            .remove((owner, &current.last[..]))
            .map_err(unavailable)?;
    }
    recent.insert((owner, &id[..]), peer).map_err(unavailable)?;
    current.last = id;
    Ok(())
}

/// Records message `id` in `owner`'s summary with `peer`; `incoming`: sent by `peer`.
fn note_message(
    conversations: &mut SummaryTable<'_>,
    recent: &mut RecentTable<'_>,
    owner: &str,
    peer: &str,
    id: [u8; 12],
    incoming: bool,
) -> Result<(), StoreError> {
    let mut s = summary(conversations, owner, peer)?;
    note_newest(recent, &mut s, owner, peer, id)?;
    let s = s.unwrap_or_default();
    let s = Summary {
        unread: s.unread + u64::from(incoming && id > s.read),
        ..s
    };
    conversations
        .insert((owner, peer), &s.encode()[..])
        .map_err(unavailable)?;
    Ok(())
}

/// Writes a summary for every conversation in `by_user` that has none (the newest message
/// either way, read): a file written before summaries existed. A summary that exists is kept as
/// it is: this store writes summaries in each send's transaction, so one that exists is exact.
/// Returns (messages, summaries written).
fn backfill(txn: &redb::WriteTransaction) -> Result<(u64, u64), StoreError> {
    let by_user = txn.open_table(BY_USER).map_err(unavailable)?;
    let mut conversations = txn.open_table(CONVERSATIONS).map_err(unavailable)?;
    let mut recent = txn.open_table(RECENT).map_err(unavailable)?;
    let mut newest: std::collections::HashMap<(String, String), [u8; 12]> =
        std::collections::HashMap::new();
    let mut messages = 0u64;
    for entry in by_user.iter().map_err(unavailable)? {
        let (key, peer) = entry.map_err(unavailable)?;
        let (user, id) = key.value();
        let id: [u8; 12] = id.try_into().map_err(unavailable)?;
        // A message has a row for its sender and one for its recipient (one for a note to
        // self): count it at the row whose user comes first.
        messages += u64::from(user <= peer.value());
        let slot = newest
            .entry((user.to_owned(), peer.value().to_owned()))
            .or_insert(id);
        *slot = (*slot).max(id);
    }
    let mut written = 0u64;
    for ((owner, peer), id) in &newest {
        let mut s = summary(&conversations, owner, peer)?;
        if s.is_some() {
            continue;
        }
        note_newest(&mut recent, &mut s, owner, peer, *id)?;
        let mut s = s.unwrap_or_default();
        s.read = *id;
        s.unread = 0;
        conversations
            .insert((owner.as_str(), peer.as_str()), &s.encode()[..])
            .map_err(unavailable)?;
        written += 1;
    }
    Ok((messages, written))
}

#[derive(Serialize, Deserialize)]
struct Body {
    sender: String,
    recipient: String,
    content: String,
    timestamp_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    idempotency_key: Option<String>,
}

/// Both directions of a conversation share one key: the two names, ordered, joined by NUL.
fn conversation_key(a: &str, b: &str) -> String {
    if a <= b {
        format!("{a}\0{b}")
    } else {
        format!("{b}\0{a}")
    }
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn decode(id: &[u8], body: &[u8]) -> Result<Message, StoreError> {
    let id: [u8; 12] = id.try_into().map_err(unavailable)?;
    let body: Body = serde_json::from_slice(body).map_err(unavailable)?;
    Ok(Message {
        id: ObjectId::from_bytes(id),
        sender: body.sender,
        recipient: body.recipient,
        content: body.content,
        timestamp_ms: body.timestamp_ms,
        idempotency_key: body.idempotency_key,
    })
}

/// The message `id` between `a` and `b`, read within `table`'s transaction.
fn read_message(
    table: &impl ReadableTable<(&'static str, &'static [u8]), &'static [u8]>,
    a: &str,
    b: &str,
    id: &[u8],
) -> Result<Option<Message>, StoreError> {
    let key = conversation_key(a, b);
    match table.get((key.as_str(), id)).map_err(unavailable)? {
        Some(body) => decode(id, body.value()).map(Some),
        None => Ok(None),
    }
}

/// Confirmed messages whose outbox entries a write transaction removes in passing.
type Cleared = Arc<std::sync::Mutex<Vec<[u8; 12]>>>;

/// Above this many pending clears, a transaction of their own removes them.
const CLEAR_ALONE_ABOVE: usize = 8192;

#[derive(Clone)]
pub struct EmbeddedMessageStore {
    db: Arc<Database>,
    /// Clears wait for the next write (the next batch of sends, or a sweep) instead of taking
    /// a transaction each: redb writes one transaction at a time, and a clear of its own per
    /// batch cost the standalone stack 16 % of its saturated send rate (8,170 -> 6,870/s).
    /// Lost in a crash, they are repeats, never losses.
    cleared: Cleared,
}

fn take_cleared(cleared: &Cleared) -> Vec<[u8; 12]> {
    std::mem::take(
        &mut *cleared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    )
}

fn remove_cleared(
    outbox: &mut redb::Table<'_, &'static [u8], (i64, &'static str)>,
    ids: &[[u8; 12]],
) -> Result<(), StoreError> {
    for id in ids {
        outbox.remove(&id[..]).map_err(unavailable)?;
    }
    Ok(())
}

impl EmbeddedMessageStore {
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let db = Database::create(path)
            .map_err(|e| anyhow::anyhow!("cannot open message store {}: {e}", path.display()))?;
        let txn = db.begin_write()?;
        {
            let messages = txn.open_table(MESSAGES)?;
            let mut by_user = txn.open_table(BY_USER)?;
            txn.open_table(OUTBOX)?;
            txn.open_table(IDEMPOTENCY)?;
            // A file written before the per-user table existed: index what it holds, once.
            if by_user.is_empty()? && !messages.is_empty()? {
                for entry in messages.iter()? {
                    let (key, body) = entry?;
                    let (_, id) = key.value();
                    let m = decode(id, body.value())?;
                    by_user.insert((m.sender.as_str(), id), m.recipient.as_str())?;
                    by_user.insert((m.recipient.as_str(), id), m.sender.as_str())?;
                }
            }
            // A file written before conversation summaries existed: summarise it, once.
            let summarised = !txn.open_table(CONVERSATIONS)?.is_empty()?;
            txn.open_table(RECENT)?;
            if !summarised && !by_user.is_empty()? {
                drop((messages, by_user));
                backfill(&txn)?;
            }
        }
        txn.commit()?;
        Ok(Self {
            db: Arc::new(db),
            cleared: Cleared::default(),
        })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || work(&db))
            .await
            .map_err(unavailable)?
    }
}

#[async_trait]
impl MessageStore for EmbeddedMessageStore {
    async fn insert_many(
        &self,
        messages: &[Message],
        lease_until_ms: i64,
    ) -> Result<Vec<Inserted>, StoreError> {
        let rows = messages
            .iter()
            .map(|m| {
                let body = serde_json::to_vec(&Body {
                    sender: m.sender.clone(),
                    recipient: m.recipient.clone(),
                    content: m.content.clone(),
                    timestamp_ms: m.timestamp_ms,
                    idempotency_key: m.idempotency_key.clone(),
                })?;
                Ok((m.clone(), body))
            })
            .collect::<Result<Vec<_>, serde_json::Error>>()
            .map_err(unavailable)?;
        let cleared = self.cleared.clone();
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(unavailable)?;
            let mut outcomes = Vec::with_capacity(rows.len());
            {
                let mut table = txn.open_table(MESSAGES).map_err(unavailable)?;
                let mut by_user = txn.open_table(BY_USER).map_err(unavailable)?;
                let mut outbox = txn.open_table(OUTBOX).map_err(unavailable)?;
                let mut keys = txn.open_table(IDEMPOTENCY).map_err(unavailable)?;
                let mut conversations = txn.open_table(CONVERSATIONS).map_err(unavailable)?;
                let mut recent = txn.open_table(RECENT).map_err(unavailable)?;
                remove_cleared(&mut outbox, &take_cleared(&cleared))?;
                for (m, body) in &rows {
                    let id = m.id.bytes();
                    if let Some(key) = &m.idempotency_key {
                        let slot = (m.sender.as_str(), key.as_str());
                        if keys.get(slot).map_err(unavailable)?.is_some() {
                            outcomes.push(Inserted::DuplicateKey);
                            continue;
                        }
                        let mut value = id.to_vec();
                        value.extend_from_slice(m.recipient.as_bytes());
                        keys.insert(slot, value.as_slice()).map_err(unavailable)?;
                    }
                    let key = conversation_key(&m.sender, &m.recipient);
                    table
                        .insert((key.as_str(), &id[..]), body.as_slice())
                        .map_err(unavailable)?;
                    by_user
                        .insert((m.sender.as_str(), &id[..]), m.recipient.as_str())
                        .map_err(unavailable)?;
                    by_user
                        .insert((m.recipient.as_str(), &id[..]), m.sender.as_str())
                        .map_err(unavailable)?;
                    outbox
                        .insert(&id[..], (lease_until_ms, key.as_str()))
                        .map_err(unavailable)?;
                    let (from, to) = (m.sender.as_str(), m.recipient.as_str());
                    note_message(&mut conversations, &mut recent, from, to, id, false)?;
                    if from != to {
                        note_message(&mut conversations, &mut recent, to, from, id, true)?;
                    }
                    outcomes.push(Inserted::Stored);
                }
            }
            txn.commit().map_err(unavailable)?;
            Ok(outcomes)
        })
        .await
    }

    async fn by_idempotency_key(
        &self,
        sender: &str,
        key: &str,
    ) -> Result<Option<Message>, StoreError> {
        let (sender, key) = (sender.to_owned(), key.to_owned());
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(unavailable)?;
            let keys = txn.open_table(IDEMPOTENCY).map_err(unavailable)?;
            let Some(value) = keys
                .get((sender.as_str(), key.as_str()))
                .map_err(unavailable)?
            else {
                return Ok(None);
            };
            let value = value.value();
            let (id, recipient) = value.split_at(12.min(value.len()));
            let recipient = std::str::from_utf8(recipient).map_err(unavailable)?;
            let table = txn.open_table(MESSAGES).map_err(unavailable)?;
            read_message(&table, &sender, recipient, id)
        })
        .await
    }

    async fn conversation(&self, a: &str, b: &str, page: Page) -> Result<Vec<Message>, StoreError> {
        let key = conversation_key(a, b);
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(unavailable)?;
            let table = txn.open_table(MESSAGES).map_err(unavailable)?;
            let lo: &[u8] = &[];
            let hi: &[u8] = &[0xff; 13];
            let k = key.as_str();
            let entry = |entry: Result<
                (
                    redb::AccessGuard<'_, (&str, &[u8])>,
                    redb::AccessGuard<'_, &[u8]>,
                ),
                redb::StorageError,
            >|
             -> Result<Message, StoreError> {
                let (key, value) = entry.map_err(unavailable)?;
                decode(key.value().1, value.value())
            };
            let mut out: Vec<Message> = match page {
                Page::Latest { limit } => table
                    .range((k, lo)..(k, hi))
                    .map_err(unavailable)?
                    .rev()
                    .take(limit)
                    .map(entry)
                    .collect::<Result<_, _>>()?,
                Page::Before { id, limit } => {
                    let bytes = id.bytes();
                    table
                        .range((k, lo)..(k, &bytes[..]))
                        .map_err(unavailable)?
                        .rev()
                        .take(limit)
                        .map(entry)
                        .collect::<Result<_, _>>()?
                }
                Page::After { id, limit } => {
                    let bytes = id.bytes();
                    table
                        .range::<(&str, &[u8])>((
                            std::ops::Bound::Excluded((k, &bytes[..])),
                            std::ops::Bound::Excluded((k, hi)),
                        ))
                        .map_err(unavailable)?
                        .take(limit)
                        .map(entry)
                        .collect::<Result<_, _>>()?
                }
            };
            if !matches!(page, Page::After { .. }) {
                out.reverse();
            }
            Ok(out)
        })
        .await
    }

    async fn for_user(
        &self,
        user: &str,
        after: Option<ObjectId>,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError> {
        let user = user.to_owned();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(unavailable)?;
            let by_user = txn.open_table(BY_USER).map_err(unavailable)?;
            let table = txn.open_table(MESSAGES).map_err(unavailable)?;
            let u = user.as_str();
            let hi: &[u8] = &[0xff; 13];
            let from = after.map(|id| id.bytes());
            let lower = match &from {
                Some(bytes) => std::ops::Bound::Excluded((u, &bytes[..])),
                None => std::ops::Bound::Included((u, &[][..])),
            };
            let mut out = Vec::new();
            for entry in by_user
                .range::<(&str, &[u8])>((lower, std::ops::Bound::Excluded((u, hi))))
                .map_err(unavailable)?
                .take(limit)
            {
                let (key, peer) = entry.map_err(unavailable)?;
                if let Some(m) = read_message(&table, u, peer.value(), key.value().1)? {
                    out.push(m);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn mark_published(&self, ids: &[ObjectId]) -> Result<(), StoreError> {
        let pending = {
            let mut cleared = self
                .cleared
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            cleared.extend(ids.iter().map(ObjectId::bytes));
            cleared.len()
        };
        if pending <= CLEAR_ALONE_ABOVE {
            return Ok(());
        }
        let cleared = self.cleared.clone();
        self.blocking(move |db| {
            let mut txn = db.begin_write().map_err(unavailable)?;
            // A clear lost in a crash only means a repeat: no flush to disk of its own.
            txn.set_durability(redb::Durability::None)
                .map_err(unavailable)?;
            {
                let mut outbox = txn.open_table(OUTBOX).map_err(unavailable)?;
                remove_cleared(&mut outbox, &take_cleared(&cleared))?;
            }
            txn.commit().map_err(unavailable)
        })
        .await
    }

    async fn claim_unpublished(
        &self,
        now_ms: i64,
        lease_until_ms: i64,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError> {
        let cleared = self.cleared.clone();
        self.blocking(move |db| {
            let mut txn = db.begin_write().map_err(unavailable)?;
            // A lease lost in a crash is taken again by the next sweep.
            txn.set_durability(redb::Durability::None)
                .map_err(unavailable)?;
            let mut claimed = Vec::new();
            {
                let mut outbox = txn.open_table(OUTBOX).map_err(unavailable)?;
                // What was confirmed is not due, whatever its lease says.
                remove_cleared(&mut outbox, &take_cleared(&cleared))?;
                let table = txn.open_table(MESSAGES).map_err(unavailable)?;
                // The outbox holds only unconfirmed messages (a handful): read whole, in id order.
                let mut due: Vec<(i64, Vec<u8>, String)> = Vec::new();
                for entry in outbox.iter().map_err(unavailable)? {
                    let (id, value) = entry.map_err(unavailable)?;
                    let (lease, conversation) = value.value();
                    if lease <= now_ms {
                        due.push((lease, id.value().to_vec(), conversation.to_owned()));
                    }
                }
                due.sort_by_key(|(lease, _, _)| *lease);
                due.truncate(limit);
                for (_, id, conversation) in due {
                    outbox
                        .insert(id.as_slice(), (lease_until_ms, conversation.as_str()))
                        .map_err(unavailable)?;
                    let body = table
                        .get((conversation.as_str(), id.as_slice()))
                        .map_err(unavailable)?;
                    if let Some(body) = body {
                        claimed.push(decode(&id, body.value())?);
                    } else {
                        // Nothing to publish (cannot happen: both written in one transaction).
                        outbox.remove(id.as_slice()).map_err(unavailable)?;
                    }
                }
            }
            txn.commit().map_err(unavailable)?;
            Ok(claimed)
        })
        .await
    }

    async fn conversations(
        &self,
        owner: &str,
        before: Option<ObjectId>,
        limit: usize,
    ) -> Result<Conversations, StoreError> {
        let owner = owner.to_owned();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(unavailable)?;
            let recent = txn.open_table(RECENT).map_err(unavailable)?;
            let conversations = txn.open_table(CONVERSATIONS).map_err(unavailable)?;
            let table = txn.open_table(MESSAGES).map_err(unavailable)?;
            let o = owner.as_str();
            let hi = before.map_or([0xff; 12], |b| b.bytes());
            let mut out = Conversations::default();
            for entry in recent
                .range((o, &[][..])..(o, &hi[..]))
                .map_err(unavailable)?
                .rev()
            {
                let (key, peer) = entry.map_err(unavailable)?;
                let (peer, id) = (peer.value(), key.value().1);
                if out.page.len() == limit {
                    out.next = out.page.last().map(|c| c.last.id);
                    break;
                }
                let Some(last) = read_message(&table, o, peer, id)? else {
                    continue;
                };
                let unread = summary(&conversations, o, peer)?.map_or(0, |s| s.unread);
                let peer_read_up_to = summary(&conversations, peer, o)?
                    .filter(|s| s.read != [0; 12])
                    .map(|s| ObjectId::from_bytes(s.read));
                out.page.push(Conversation {
                    peer: peer.to_owned(),
                    last,
                    unread,
                    peer_read_up_to,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn mark_read(
        &self,
        owner: &str,
        peer: &str,
        up_to: ObjectId,
    ) -> Result<ReadMark, StoreError> {
        let (owner, peer) = (owner.to_owned(), peer.to_owned());
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(unavailable)?;
            let mark = {
                let table = txn.open_table(MESSAGES).map_err(unavailable)?;
                let mut conversations = txn.open_table(CONVERSATIONS).map_err(unavailable)?;
                let mut recent = txn.open_table(RECENT).map_err(unavailable)?;
                let (o, p) = (owner.as_str(), peer.as_str());
                let id = up_to.bytes();
                if read_message(&table, o, p, &id)?.is_none() {
                    ReadMark::NotInConversation
                } else {
                    let mut s = summary(&conversations, o, p)?;
                    note_newest(&mut recent, &mut s, o, p, id)?;
                    let mut s = s.unwrap_or_default();
                    if s.read >= id {
                        ReadMark::Unchanged
                    } else {
                        // What is left unread: the peer's messages after this one (none in
                        // notes to self).
                        let key = conversation_key(o, p);
                        let mut unread = 0;
                        if o != p {
                            for entry in table
                                .range::<(&str, &[u8])>((
                                    std::ops::Bound::Excluded((key.as_str(), &id[..])),
                                    std::ops::Bound::Excluded((key.as_str(), &[0xff; 13][..])),
                                ))
                                .map_err(unavailable)?
                            {
                                let (k, body) = entry.map_err(unavailable)?;
                                unread += u64::from(decode(k.value().1, body.value())?.sender == p);
                            }
                        }
                        s.read = id;
                        s.unread = unread;
                        conversations
                            .insert((o, p), &s.encode()[..])
                            .map_err(unavailable)?;
                        ReadMark::Moved
                    }
                }
            };
            // Nothing written unless the position moved: no flush to disk for a repeat (clients
            // mark the same position again and again).
            if matches!(mark, ReadMark::Moved) {
                txn.commit().map_err(unavailable)?;
            } else {
                txn.abort().map_err(unavailable)?;
            }
            Ok(mark)
        })
        .await
    }

    async fn backfill_conversations(&self) -> Result<Backfill, StoreError> {
        self.blocking(|db| {
            let txn = db.begin_write().map_err(unavailable)?;
            let (messages, summaries) = backfill(&txn)?;
            txn.commit().map_err(unavailable)?;
            Ok(Backfill {
                messages,
                summaries,
            })
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(sender: &str, recipient: &str) -> Message {
        Message {
            id: ObjectId::new(),
            sender: sender.to_owned(),
            recipient: recipient.to_owned(),
            content: "hi".to_owned(),
            timestamp_ms: 0,
            idempotency_key: None,
        }
    }

    async fn list(store: &EmbeddedMessageStore, owner: &str) -> Vec<(String, ObjectId, u64)> {
        store
            .conversations(owner, None, 20)
            .await
            .unwrap()
            .page
            .into_iter()
            .map(|c| (c.peer, c.last.id, c.unread))
            .collect()
    }

    /// A file written before summaries existed is summarised when it opens, everything in it
    /// read; an explicit backfill later leaves the summaries kept since (unread counts too).
    #[tokio::test]
    async fn a_file_without_summaries_gets_them_at_open_and_a_backfill_keeps_live_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chat.redb");
        let old = [
            message("alice", "bob"),
            message("bob", "alice"),
            message("carol", "alice"),
        ];
        {
            let store = EmbeddedMessageStore::open(&path).unwrap();
            store.insert_many(&old, 0).await.unwrap();
            assert_eq!(list(&store, "alice").await[0].2, 1, "carol's, unread");
        }
        // As an earlier version left it: messages, no summaries.
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            txn.delete_table(CONVERSATIONS).unwrap();
            txn.delete_table(RECENT).unwrap();
            txn.commit().unwrap();
        }
        let store = EmbeddedMessageStore::open(&path).unwrap();
        let expected = vec![
            ("carol".to_owned(), old[2].id, 0),
            ("bob".to_owned(), old[1].id, 0),
        ];
        assert_eq!(list(&store, "alice").await, expected);
        assert_eq!(
            list(&store, "bob").await,
            [("alice".to_owned(), old[1].id, 0)]
        );

        let new = message("bob", "alice");
        store
            .insert_many(std::slice::from_ref(&new), 0)
            .await
            .unwrap();
        let report = store.backfill_conversations().await.unwrap();
        assert_eq!((report.messages, report.summaries), (4, 0));
        assert_eq!(
            list(&store, "alice").await,
            [
                ("bob".to_owned(), new.id, 1),
                ("carol".to_owned(), old[2].id, 0)
            ]
        );
    }

    /// A note to self has one row per user where a message between two has two: the backfill
    /// counts messages, not rows.
    #[tokio::test]
    async fn the_backfill_counts_notes_to_self_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedMessageStore::open(&dir.path().join("chat.redb")).unwrap();
        let notes = [
            message("alice", "alice"),
            message("alice", "alice"),
            message("alice", "alice"),
            message("alice", "bob"),
        ];
        store.insert_many(&notes, 0).await.unwrap();
        let report = store.backfill_conversations().await.unwrap();
        assert_eq!((report.messages, report.summaries), (4, 0));
    }
}
