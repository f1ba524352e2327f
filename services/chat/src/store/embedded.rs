//! Embedded, persistent message store (a `redb` file) for the standalone stack. Messages are
//! keyed by (conversation, ObjectId bytes), so a page is one range read.

use std::{path::Path, sync::Arc};

use async_trait::async_trait;
use bson::oid::ObjectId;
use redb::{Database, ReadableDatabase, TableDefinition};
use serde::{Deserialize, Serialize};

use super::{Message, MessageStore, Page, StoreError};

/// (conversation key, 12 ObjectId bytes) -> JSON body
const MESSAGES: TableDefinition<(&str, &[u8]), &[u8]> = TableDefinition::new("messages");

#[derive(Serialize, Deserialize)]
struct Body {
    sender: String,
    recipient: String,
    content: String,
    timestamp_ms: i64,
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

#[derive(Clone)]
pub struct EmbeddedMessageStore {
    db: Arc<Database>,
}

impl EmbeddedMessageStore {
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let db = Database::create(path)
            .map_err(|e| anyhow::anyhow!("cannot open message store {}: {e}", path.display()))?;
        let txn = db.begin_write()?;
        txn.open_table(MESSAGES)?;
        txn.commit()?;
        Ok(Self { db: Arc::new(db) })
    }
}

#[async_trait]
impl MessageStore for EmbeddedMessageStore {
    async fn insert_many(&self, messages: &[Message]) -> Result<(), StoreError> {
        let db = self.db.clone();
        let rows = messages
            .iter()
            .map(|m| {
                let body = serde_json::to_vec(&Body {
                    sender: m.sender.clone(),
                    recipient: m.recipient.clone(),
                    content: m.content.clone(),
                    timestamp_ms: m.timestamp_ms,
                })?;
                Ok((
                    conversation_key(&m.sender, &m.recipient),
                    m.id.bytes(),
                    body,
                ))
            })
            .collect::<Result<Vec<_>, serde_json::Error>>()
            .map_err(unavailable)?;
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_write().map_err(unavailable)?;
            {
                let mut table = txn.open_table(MESSAGES).map_err(unavailable)?;
                for (key, id, body) in &rows {
                    table
                        .insert((key.as_str(), &id[..]), body.as_slice())
                        .map_err(unavailable)?;
                }
            }
            txn.commit().map_err(unavailable)
        })
        .await
        .map_err(unavailable)?
    }

    async fn conversation(&self, a: &str, b: &str, page: Page) -> Result<Vec<Message>, StoreError> {
        let db = self.db.clone();
        let key = conversation_key(a, b);
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_read().map_err(unavailable)?;
            let table = txn.open_table(MESSAGES).map_err(unavailable)?;
            let lo: &[u8] = &[];
            let hi: &[u8] = &[0xff; 13];
            let k = key.as_str();
            let decode = |entry: Result<
                (
                    redb::AccessGuard<'_, (&str, &[u8])>,
                    redb::AccessGuard<'_, &[u8]>,
                ),
                redb::StorageError,
            >|
             -> Result<Message, StoreError> {
                let (key, value) = entry.map_err(unavailable)?;
                let id_bytes: [u8; 12] = key.value().1.try_into().map_err(unavailable)?;
                let body: Body = serde_json::from_slice(value.value()).map_err(unavailable)?;
                Ok(Message {
                    id: ObjectId::from_bytes(id_bytes),
                    sender: body.sender,
                    recipient: body.recipient,
                    content: body.content,
                    timestamp_ms: body.timestamp_ms,
                })
            };
            let mut out: Vec<Message> = match page {
                Page::Latest { limit } => table
                    .range((k, lo)..(k, hi))
                    .map_err(unavailable)?
                    .rev()
                    .take(limit)
                    .map(decode)
                    .collect::<Result<_, _>>()?,
                Page::Before { id, limit } => {
                    let bytes = id.bytes();
                    table
                        .range((k, lo)..(k, &bytes[..]))
                        .map_err(unavailable)?
                        .rev()
                        .take(limit)
                        .map(decode)
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
                        .map(decode)
                        .collect::<Result<_, _>>()?
                }
            };
            if !matches!(page, Page::After { .. }) {
                out.reverse();
            }
            Ok(out)
        })
        .await
        .map_err(unavailable)?
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
