//! Where users live: a small trait with a MongoDB implementation (production, drop-in with the
//! original's `users` collection) and an embedded one (the standalone stack, persistent on disk).

mod embedded;
#[cfg(feature = "mongo")]
mod mongo;

pub use embedded::EmbeddedUserStore;
#[cfg(feature = "mongo")]
pub use mongo::MongoUserStore;

use async_trait::async_trait;

/// A stored user. `password` is an argon2id PHC string, or, in data written by the original
/// system and not yet migrated, plaintext (which login never compares).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    /// Hex ObjectId.
    pub id: String,
    pub username: String,
    pub password: String,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("username already taken")]
    Duplicate,
    #[error("user store unavailable: {0}")]
    Unavailable(String),
}

#[async_trait]
pub trait UserStore: Send + Sync + 'static {
    /// Inserts a user; [`StoreError::Duplicate`] when the username exists (atomically, so
    /// concurrent registrations of one name have exactly one winner). Returns the new id.
    async fn create(&self, username: &str, password_hash: &str) -> Result<String, StoreError>;

    async fn find_by_username(&self, username: &str) -> Result<Option<UserRecord>, StoreError>;

    /// Up to `limit` users with an id greater than `after`, in id order (for batch jobs).
    async fn page(&self, after: Option<&str>, limit: usize) -> Result<Vec<UserRecord>, StoreError>;

    /// Replaces a user's password only if it still equals `expected`; says whether it did.
    async fn replace_password(
        &self,
        id: &str,
        expected: &str,
        new: &str,
    ) -> Result<bool, StoreError>;

    /// Whether the store answers (for `/readyz`).
    async fn ping(&self) -> Result<(), StoreError>;
}
