//! One-shot migration of passwords stored in plaintext by the original system: every value that
//! is not an argon2 PHC string is replaced, in place, by its argon2id hash. Idempotent (hashed
//! values are skipped) and safe to run while the service serves traffic (each replacement only
//! applies if the stored value is still the one that was hashed).

use std::sync::Arc;

use crate::{
    password::{HashError, PasswordHasher, is_phc},
    store::{StoreError, UserStore},
};

const BATCH: usize = 200;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct MigrationReport {
    /// Users looked at.
    pub scanned: u64,
    /// Already argon2 PHC strings, left as they were.
    pub already_hashed: u64,
    /// Plaintext passwords replaced by their hash.
    pub migrated: u64,
    /// Changed by someone else between read and write (left alone; a re-run picks them up).
    pub changed_concurrently: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Hash(#[from] HashError),
}

/// Hashes every plaintext password in `store`. With `dry_run`, only counts them.
pub async fn migrate_passwords(
    store: &dyn UserStore,
    hasher: &Arc<PasswordHasher>,
    dry_run: bool,
) -> Result<MigrationReport, MigrationError> {
    let mut report = MigrationReport::default();
    let mut after: Option<String> = None;
    loop {
        let page = store.page(after.as_deref(), BATCH).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.id.clone());
        for user in page {
            report.scanned += 1;
            if is_phc(&user.password) {
                report.already_hashed += 1;
                continue;
            }
            if dry_run {
                report.migrated += 1;
                continue;
            }
            let hash = hasher.hash(user.password.clone()).await?;
            if store
                .replace_password(&user.id, &user.password, &hash)
                .await?
            {
                report.migrated += 1;
            } else {
                report.changed_concurrently += 1;
            }
        }
    }
    Ok(report)
}
