//! Embedded, persistent user store (a `redb` file) for the standalone stack.

use std::{path::Path, sync::Arc};

use async_trait::async_trait;
use bson::oid::ObjectId;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::{StoreError, UserRecord, UserStore};

/// username -> (id, password)
const USERS: TableDefinition<&str, (&str, &str)> = TableDefinition::new("users");
/// id -> username
const IDS: TableDefinition<&str, &str> = TableDefinition::new("user_ids");

#[derive(Clone)]
pub struct EmbeddedUserStore {
    db: Arc<Database>,
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

impl EmbeddedUserStore {
    /// Opens (creating if needed) the database file at `path`.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let db = Database::create(path)
            .map_err(|e| anyhow::anyhow!("cannot open user store {}: {e}", path.display()))?;
        let txn = db.begin_write()?;
        txn.open_table(USERS)?;
        txn.open_table(IDS)?;
        txn.commit()?;
        Ok(Self { db: Arc::new(db) })
    }

    async fn blocking<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(unavailable)?
    }
}

#[async_trait]
impl UserStore for EmbeddedUserStore {
    async fn create(&self, username: &str, password_hash: &str) -> Result<String, StoreError> {
        let (username, password) = (username.to_owned(), password_hash.to_owned());
        self.blocking(move |db| {
            let id = ObjectId::new().to_hex();
            let txn = db.begin_write().map_err(unavailable)?;
            {
                let mut users = txn.open_table(USERS).map_err(unavailable)?;
                if users.get(username.as_str()).map_err(unavailable)?.is_some() {
                    return Err(StoreError::Duplicate);
                }
                users
                    .insert(username.as_str(), (id.as_str(), password.as_str()))
                    .map_err(unavailable)?;
                let mut ids = txn.open_table(IDS).map_err(unavailable)?;
                ids.insert(id.as_str(), username.as_str())
                    .map_err(unavailable)?;
            }
            txn.commit().map_err(unavailable)?;
            Ok(id)
        })
        .await
    }

    async fn find_by_username(&self, username: &str) -> Result<Option<UserRecord>, StoreError> {
        let username = username.to_owned();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(unavailable)?;
            let users = txn.open_table(USERS).map_err(unavailable)?;
            Ok(users.get(username.as_str()).map_err(unavailable)?.map(|v| {
                let (id, password) = v.value();
                UserRecord {
                    id: id.to_owned(),
                    username: username.clone(),
                    password: password.to_owned(),
                }
            }))
        })
        .await
    }

    async fn page(&self, after: Option<&str>, limit: usize) -> Result<Vec<UserRecord>, StoreError> {
        let after = after.map(str::to_owned);
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(unavailable)?;
            let ids = txn.open_table(IDS).map_err(unavailable)?;
            let users = txn.open_table(USERS).map_err(unavailable)?;
            let range = match &after {
                Some(a) => ids.range::<&str>((
                    std::ops::Bound::Excluded(a.as_str()),
                    std::ops::Bound::Unbounded,
                )),
                None => ids.range::<&str>(..),
            }
            .map_err(unavailable)?;
            let mut out = Vec::new();
            for entry in range.take(limit) {
                let (id, username) = entry.map_err(unavailable)?;
                if let Some(v) = users.get(username.value()).map_err(unavailable)? {
                    out.push(UserRecord {
                        id: id.value().to_owned(),
                        username: username.value().to_owned(),
                        password: v.value().1.to_owned(),
                    });
                }
            }
            Ok(out)
        })
        .await
    }

    async fn replace_password(
        &self,
        id: &str,
        expected: &str,
        new: &str,
    ) -> Result<bool, StoreError> {
        let (id, expected, new) = (id.to_owned(), expected.to_owned(), new.to_owned());
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(unavailable)?;
            let replaced = {
                let ids = txn.open_table(IDS).map_err(unavailable)?;
                let mut users = txn.open_table(USERS).map_err(unavailable)?;
                let Some(username) = ids
                    .get(id.as_str())
                    .map_err(unavailable)?
                    .map(|u| u.value().to_owned())
                else {
                    return Ok(false);
                };
                let current = users
                    .get(username.as_str())
                    .map_err(unavailable)?
                    .map(|v| v.value().1.to_owned());
                if current.as_deref() == Some(expected.as_str()) {
                    users
                        .insert(username.as_str(), (id.as_str(), new.as_str()))
                        .map_err(unavailable)?;
                    true
                } else {
                    false
                }
            };
            txn.commit().map_err(unavailable)?;
            Ok(replaced)
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
