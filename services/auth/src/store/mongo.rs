//! MongoDB user store: collection `users` of the database named in `DATABASE_URL` (or
//! `DATABASE_NAME`), with the original system's field names (`_id`, `username`, `password`).

use std::{
    future::IntoFuture,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use async_trait::async_trait;
use chat_common::{config::Durability, mongo};
use mongodb::{
    Collection, Database, IndexModel,
    bson::{doc, oid::ObjectId},
    options::IndexOptions,
};
use serde::{Deserialize, Serialize};

use super::{StoreError, UserRecord, UserStore};

#[derive(Debug, Serialize, Deserialize)]
struct UserDoc {
    #[serde(rename = "_id")]
    id: ObjectId,
    username: String,
    #[serde(default)]
    password: String,
}

impl From<UserDoc> for UserRecord {
    fn from(d: UserDoc) -> Self {
        Self {
            id: d.id.to_hex(),
            username: d.username,
            password: d.password,
        }
    }
}

pub struct MongoUserStore {
    db: Database,
    users: Collection<UserDoc>,
    op_timeout: Duration,
    indexed: AtomicBool,
}

impl MongoUserStore {
    /// Connects lazily (the driver connects on first use) to the database `name`, else the one
    /// named in `url`'s path.
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
            "mongodb://db:27017/auth",
        )
        .await?;
        Ok(Self {
            users: db.collection("users"),
            db,
            op_timeout,
            indexed: AtomicBool::new(false),
        })
    }

    /// Creates the unique index on `username` (idempotent; the original's Mongoose model made the
    /// same one). Registration is refused until this has succeeded once.
    pub async fn ensure_indexes(&self) -> Result<(), StoreError> {
        let index = IndexModel::builder()
            .keys(doc! { "username": 1 })
            .options(
                IndexOptions::builder()
                    .unique(true)
                    .name("username_1".to_owned())
                    .build(),
            )
            .build();
        self.timed(self.users.create_index(index)).await?;
        self.indexed.store(true, Ordering::Release);
        Ok(())
    }

    /// Retries [`Self::ensure_indexes`] with backoff until it succeeds.
    pub async fn ensure_indexes_with_retry(&self) {
        mongo::retry_until_ok("creating the users indexes", || self.ensure_indexes()).await;
    }

    async fn timed<T>(
        &self,
        call: impl IntoFuture<Output = mongodb::error::Result<T>>,
    ) -> Result<T, StoreError> {
        mongo::timed(self.op_timeout, call)
            .await
            .map_err(|e| match e {
                mongo::CallError::DuplicateKey => StoreError::Duplicate,
                mongo::CallError::Unavailable(reason) => StoreError::Unavailable(reason),
            })
    }
}

fn parse_id(id: &str) -> Option<ObjectId> {
    ObjectId::parse_str(id).ok()
}

#[async_trait]
impl UserStore for MongoUserStore {
    async fn create(&self, username: &str, password_hash: &str) -> Result<String, StoreError> {
        if !self.indexed.load(Ordering::Acquire) {
            // Without the unique index, two concurrent registrations could both succeed.
            self.ensure_indexes().await?;
        }
        let user = UserDoc {
            id: ObjectId::new(),
            username: username.to_owned(),
            password: password_hash.to_owned(),
        };
        self.timed(self.users.insert_one(&user)).await?;
        Ok(user.id.to_hex())
    }

    async fn find_by_username(&self, username: &str) -> Result<Option<UserRecord>, StoreError> {
        let found = self
            .timed(self.users.find_one(doc! { "username": username }))
            .await?;
        Ok(found.map(Into::into))
    }

    async fn page(&self, after: Option<&str>, limit: usize) -> Result<Vec<UserRecord>, StoreError> {
        let filter = match after.and_then(parse_id) {
            Some(id) => doc! { "_id": { "$gt": id } },
            None => doc! {},
        };
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let users = &self.users;
        self.timed(async move {
            let mut cursor = users
                .find(filter)
                .sort(doc! { "_id": 1 })
                .limit(limit)
                .await?;
            let mut out = Vec::new();
            while cursor.advance().await? {
                out.push(UserRecord::from(cursor.deserialize_current()?));
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
        let Some(oid) = parse_id(id) else {
            return Ok(false);
        };
        let result = self
            .timed(self.users.update_one(
                doc! { "_id": oid, "password": expected },
                doc! { "$set": { "password": new } },
            ))
            .await?;
        Ok(result.modified_count == 1)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.timed(self.db.run_command(doc! { "ping": 1 })).await?;
        Ok(())
    }
}
