//! MongoDB message store: collection `messages` of the database named in `DATABASE_URL` (or
//! `DATABASE_NAME`), with the original's fields (`sender`, `recipient`, `content`, `timestamp` as a BSON date).
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
    /// Newest `_id` this replica has written or read, by direction: where a latest page starts
    /// looking. Stale or missing is fine (the range is open upwards; without it, now is used).
    newest: std::sync::Mutex<std::collections::HashMap<(String, String), ObjectId>>,
}

/// Directions remembered at most (then forgotten all at once; they are only hints).
const NEWEST_CAPACITY: usize = 100_000;

impl MongoMessageStore {
    /// Connects lazily to the database `name`, else the one named in `url`'s path.
    pub async fn connect(
        url: &str,
        name: Option<&str>,
        app_name: &str,
        op_timeout: Duration,
    ) -> anyhow::Result<Self> {
        let db = mongo::connect(url, name, app_name, op_timeout, "mongodb://db:27017/chat").await?;
        Ok(Self {
            messages: db.collection("messages"),
            db,
            op_timeout,
            newest: std::sync::Mutex::default(),
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

    fn newest_hint(&self, from: &str, to: &str) -> Option<ObjectId> {
        let newest = self
            .newest
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        newest.get(&(from.to_owned(), to.to_owned())).copied()
    }

    fn remember_newest<'a>(&self, seen: impl IntoIterator<Item = (&'a str, &'a str, ObjectId)>) {
        let mut newest = self
            .newest
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (from, to, id) in seen {
            if newest.len() >= NEWEST_CAPACITY {
                newest.clear();
            }
            let slot = newest.entry((from.to_owned(), to.to_owned())).or_insert(id);
            *slot = (*slot).max(id);
        }
    }

    /// One direction of a page. The `_id` range is widened step by step from the page's anchor
    /// (now, `before` or `after`): each step is a bounded index range, so a server that fetches
    /// a whole matching range before sorting and limiting (not MongoDB, but e.g. the test server)
    /// still reads only around the page, and MongoDB needs one step for any active conversation.
    async fn direction(
        &self,
        from: &str,
        to: &str,
        page: Page,
    ) -> Result<Vec<Message>, StoreError> {
        // First ids near the anchor in its writer's sequence, then widening time windows.
        let (limit, near) = match page {
            Page::Latest { limit } => (limit, self.newest_hint(from, to)),
            Page::Before { id, limit } | Page::After { id, limit } => (limit, Some(id)),
        };
        let anchor = near.map_or(now_secs() + 1, id_secs);
        // An `after` anchor from the last minute (a reconnecting client's catch-up): what
        // follows it is usually about a minute of the conversation, read in one query once the
        // ids right after the anchor do not fill the page.
        let recent_after =
            matches!(page, Page::After { .. }) && anchor + RECENT_AFTER >= now_secs();
        if let Some(id) = near {
            let steps = if recent_after {
                &NEAR_STEPS[..1]
            } else {
                &NEAR_STEPS[..]
            };
            for &(step, crossing) in steps {
                let range = near_range(page, id, i64::from(step), crossing);
                let found = self.scan(from, to, page, Some(range)).await?;
                if found.len() >= limit {
                    return Ok(self.seen(from, to, page, found));
                }
            }
        }
        if recent_after {
            return self.scan(from, to, page, None).await;
        }
        for window in WINDOWS {
            // An `after` window reaching the present is read to the end instead, so ids from a
            // writer whose clock runs ahead are not cut off.
            if matches!(page, Page::After { .. })
                && anchor.saturating_add(window) > now_secs() + CLOCK_SKEW
            {
                break;
            }
            let mut range = Document::new();
            match page {
                Page::Latest { .. } => {
                    range.insert("$gte", oid_at(anchor.saturating_sub(window)));
                }
                Page::Before { id, .. } => {
                    range.insert("$lt", id);
                    range.insert("$gte", oid_at(anchor.saturating_sub(window)));
                }
                Page::After { id, .. } => {
                    range.insert("$gt", id);
                    range.insert("$lt", oid_at(anchor.saturating_add(window)));
                }
            }
            let reached_end = !matches!(page, Page::After { .. }) && anchor <= window;
            let found = self.scan(from, to, page, Some(range)).await?;
            if found.len() >= limit || reached_end {
                return Ok(self.seen(from, to, page, found));
            }
        }
        let found = self.scan(from, to, page, None).await?;
        Ok(self.seen(from, to, page, found))
    }

    /// Remembers the newest id of a latest page.
    fn seen(&self, from: &str, to: &str, page: Page, found: Vec<Message>) -> Vec<Message> {
        if matches!(page, Page::Latest { .. })
            && let Some(first) = found.first()
        {
            self.remember_newest([(from, to, first.id)]);
        }
        found
    }

    async fn scan(
        &self,
        from: &str,
        to: &str,
        page: Page,
        id_range: Option<Document>,
    ) -> Result<Vec<Message>, StoreError> {
        let mut filter = doc! { "sender": from, "recipient": to };
        let (sort, limit) = match page {
            Page::Latest { limit } | Page::Before { limit, .. } => (-1, limit),
            Page::After { limit, .. } => (1, limit),
        };
        match (id_range, page) {
            (Some(range), _) => {
                filter.insert("_id", range);
            }
            (None, Page::Before { id, .. }) => {
                filter.insert("_id", doc! { "$lt": id });
            }
            (None, Page::After { id, .. }) => {
                filter.insert("_id", doc! { "$gt": id });
            }
            (None, Page::Latest { .. }) => {}
        }
        let messages = &self.messages;
        let sort: Document = doc! { "_id": sort };
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let started = std::time::Instant::now();
        let shown = tracing::enabled!(tracing::Level::TRACE).then(|| filter.to_string());
        let found = self
            .timed(async move {
                let mut cursor = messages.find(filter).sort(sort).limit(limit).await?;
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

/// Widening windows, in seconds, around a page's anchor (then unbounded): each four times the
/// last, so the probes cost at most a third more than the last one.
const WINDOWS: [u64; 12] = [
    1, 4, 16, 64, 256, 1024, 4096, 16_384, 65_536, 262_144, 1_048_576, 4_194_304,
];
/// Distances in the anchor writer's id sequence, and whether the bound crosses into the next
/// (or previous) second, tried around an anchor id before time windows.
const NEAR_STEPS: [(u32, bool); 4] = [
    (1 << 7, false),
    (1 << 7, true),
    (1 << 10, true),
    (1 << 15, true),
];

/// The `_id` range of a probe `step` ids from the anchor `id` (the newest known id of a latest
/// page, or the `before`/`after` id), open towards the anchor's side.
fn near_range(page: Page, id: ObjectId, step: i64, crossing: bool) -> Document {
    match page {
        Page::Latest { .. } => doc! { "$gte": writer_bound(id, -step, crossing) },
        Page::Before { .. } => doc! { "$lt": id, "$gte": writer_bound(id, -step, crossing) },
        Page::After { .. } => doc! { "$gt": id, "$lt": writer_bound(id, step, crossing) },
    }
}

/// A bound `by` ids away from `id` in its writer's sequence. An ObjectId is (second, process,
/// counter), and a process's counter runs on across seconds: the ids a process handed out just
/// before `id` are `(second, process, counter - n)`, or `(second - 1, …)` once `n` reaches back
/// past the start of `id`'s second. The bound keeps the process and moves the counter by `by`
/// (saturating); with `crossing`, it also moves the second by one towards `by`, so the range
/// then also holds the rest of `id`'s second (for its writer, fewer than `|by|` ids when the
/// bound without crossing did not find enough; other writers' ids of that second too). Only
/// the cost of a probe depends on the bound: every probe's range reaches the anchor.
fn writer_bound(id: ObjectId, by: i64, crossing: bool) -> ObjectId {
    let bytes = id.bytes();
    let secs = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    let counter = i64::from(u32::from_be_bytes([0, bytes[9], bytes[10], bytes[11]]));
    let secs = match (crossing, by < 0) {
        (false, _) => secs,
        (true, true) => secs.saturating_sub(1),
        (true, false) => secs.saturating_add(1),
    };
    let counter = u32::try_from(counter.saturating_add(by).clamp(0, 0x00ff_ffff)).unwrap_or(0);
    let mut out = [0u8; 12];
    out[..4].copy_from_slice(&secs.to_be_bytes());
    out[4..9].copy_from_slice(&bytes[4..9]);
    out[9..].copy_from_slice(&counter.to_be_bytes()[1..]);
    ObjectId::from_bytes(out)
}

/// An `after` anchor at most this many seconds old is read to the end at once.
const RECENT_AFTER: u64 = 60;

/// How far ahead of our clock other writers' ids may be.
const CLOCK_SKEW: u64 = 60;

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn id_secs(id: ObjectId) -> u64 {
    u64::try_from(id.timestamp().timestamp_millis() / 1000).unwrap_or(0)
}

/// The smallest ObjectId of second `secs`.
fn oid_at(secs: u64) -> ObjectId {
    let mut bytes = [0u8; 12];
    bytes[..4].copy_from_slice(&u32::try_from(secs).unwrap_or(u32::MAX).to_be_bytes());
    ObjectId::from_bytes(bytes)
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
        self.remember_newest(
            messages
                .iter()
                .map(|m| (m.sender.as_str(), m.recipient.as_str(), m.id)),
        );
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writer_bounds_follow_the_writers_sequence() {
        let id = ObjectId::parse_str("65b9f0c2a1b2c3d4e5000010").unwrap();
        // Same process, counter moved (saturating); crossing also moves the second by one.
        for (by, crossing, expected) in [
            (-8, false, "65b9f0c2a1b2c3d4e5000008"),
            (-0x20, false, "65b9f0c2a1b2c3d4e5000000"),
            (0x10, false, "65b9f0c2a1b2c3d4e5000020"),
            (-8, true, "65b9f0c1a1b2c3d4e5000008"),
            (0x10, true, "65b9f0c3a1b2c3d4e5000020"),
        ] {
            assert_eq!(
                writer_bound(id, by, crossing).to_hex(),
                expected,
                "{by} {crossing}"
            );
        }
        for crossing in [false, true] {
            assert!(writer_bound(id, -1, crossing) < id && id < writer_bound(id, 1, crossing));
        }
        // The same writer's previous message, from the previous second, is in the crossing range.
        let previous = ObjectId::parse_str("65b9f0c1a1b2c3d4e500000f").unwrap();
        assert!(writer_bound(id, -1, true) <= previous);
        let zero = ObjectId::from_bytes([0; 12]);
        assert_eq!(writer_bound(zero, -5, true), zero);
        let max = ObjectId::from_bytes([0xff; 12]);
        assert_eq!(writer_bound(max, 5, true).bytes(), [0xff; 12]);
    }
}
