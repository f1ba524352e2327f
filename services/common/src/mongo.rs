//! MongoDB plumbing shared by the stores: connecting to the database named in a URL (or by
//! `DATABASE_NAME`), and calls bounded by a timeout, so a dead database gives an error within
//! seconds, never a hang.

use std::{future::Future, future::IntoFuture, time::Duration};

use mongodb::{
    Client, Database,
    error::{ErrorKind, WriteFailure},
    options::{ClientOptions, WriteConcern},
};

use crate::{
    backoff::Backoff,
    config::{Acknowledgment, Durability},
};

/// The server's code for a write refused by a unique index.
pub const DUPLICATE_KEY: i32 = 11000;

/// Why a database call failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// A unique index refused the write (E11000).
    #[error("duplicate key")]
    DuplicateKey,
    #[error("{0}")]
    Unavailable(String),
}

pub use crate::config::check_database_name;

/// Opens (lazily: the driver connects on first use) the database `name` if given, else the one
/// named in `url`'s path. `example` shows the expected form in the error when neither names one.
/// Every write waits for `durability` (bounded by `op_timeout`), whatever the URL says.
pub async fn connect(
    url: &str,
    name: Option<&str>,
    app_name: &str,
    op_timeout: Duration,
    durability: Durability,
    example: &str,
) -> anyhow::Result<Database> {
    let mut options = ClientOptions::parse(url)
        .await
        .map_err(|e| anyhow::anyhow!("DATABASE_URL is not a MongoDB URL: {e}"))?;
    // The override only picks the database: credentials still authenticate where the URL says
    // (its `authSource`, else its path, else `admin`), as parsing has already settled.
    let name = match name {
        Some(name) => {
            check_database_name(name)
                .map_err(|reason| anyhow::anyhow!("DATABASE_NAME {name:?} {reason}"))?;
            name.to_owned()
        }
        None => options.default_database.clone().ok_or_else(|| {
            anyhow::anyhow!("DATABASE_URL must name the database, e.g. {example}")
        })?,
    };
    options.app_name = Some(app_name.to_owned());
    options.server_selection_timeout.get_or_insert(op_timeout);
    options.connect_timeout.get_or_insert(op_timeout);
    options.write_concern = Some(
        WriteConcern::builder()
            .w(match durability.acknowledgment {
                Acknowledgment::Majority => mongodb::options::Acknowledgment::Majority,
                Acknowledgment::Members(n) => mongodb::options::Acknowledgment::Nodes(n),
            })
            .journal(durability.journal)
            .w_timeout(op_timeout)
            .build(),
    );
    Ok(Client::with_options(options)?.database(&name))
}

/// Runs one driver call, bounded by `limit`.
pub async fn timed<T>(
    limit: Duration,
    call: impl IntoFuture<Output = mongodb::error::Result<T>>,
) -> Result<T, CallError> {
    match tokio::time::timeout(limit, call.into_future()).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) if is_duplicate_key(&e) => Err(CallError::DuplicateKey),
        Ok(Err(e)) => Err(CallError::Unavailable(e.to_string())),
        Err(_) => Err(CallError::Unavailable(format!(
            "no answer within {limit:?}"
        ))),
    }
}

/// For an unordered `insert_many` refused in part by a unique index (and by nothing else): the
/// positions of the refused documents. The others were written with the requested durability.
pub fn refused_as_duplicates(e: &mongodb::error::Error) -> Option<Vec<usize>> {
    match e.kind.as_ref() {
        ErrorKind::InsertMany(failure) if failure.write_concern_error.is_none() => {
            let errors = failure.write_errors.as_ref()?;
            errors
                .iter()
                .all(|w| w.code == DUPLICATE_KEY)
                .then(|| errors.iter().map(|w| w.index).collect())
        }
        _ => None,
    }
}

fn is_duplicate_key(e: &mongodb::error::Error) -> bool {
    match e.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(w)) => w.code == DUPLICATE_KEY,
        ErrorKind::Command(c) => c.code == DUPLICATE_KEY,
        _ => false,
    }
}

/// Retries `attempt` with backoff until it succeeds (index creation at start-up, while the
/// database may still be starting).
pub async fn retry_until_ok<F, Fut, E>(what: &str, mut attempt: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let mut backoff = Backoff::default();
    while let Err(e) = attempt().await {
        let delay = backoff.next_delay();
        tracing::warn!(error = %e, retry_in = ?delay, "{what} failed; retrying");
        tokio::time::sleep(delay).await;
    }
    tracing::info!("{what} done");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing;

    const LIMIT: Duration = Duration::from_secs(5);

    #[test]
    fn database_names_follow_mongodbs_rules() {
        for ok in ["auth", "chat", "chat_prod-2", "Ünïcode", &"x".repeat(63)] {
            assert!(check_database_name(ok).is_ok(), "{ok:?}");
        }
        for bad in ["", "  ", "a/b", "a\\b", "a.b", "a b", "a\"b", "$a", "a\0b"] {
            assert!(check_database_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_database_name(&"x".repeat(64)).is_err());
        // Bytes, not characters: 32 two-byte characters are 64 bytes.
        assert!(check_database_name(&"é".repeat(32)).is_err());
    }

    #[tokio::test]
    async fn the_name_overrides_the_urls_path() {
        // The driver connects lazily, so no server is needed to see which database is chosen.
        let named = "mongodb://127.0.0.1:9/fromurl";
        let db = connect(named, None, "t", LIMIT, Durability::default(), "e")
            .await
            .unwrap();
        assert_eq!(db.name(), "fromurl");
        let db = connect(named, Some("chat"), "t", LIMIT, Durability::default(), "e")
            .await
            .unwrap();
        assert_eq!(db.name(), "chat");
        let bare = "mongodb://u:p@127.0.0.1:9,127.0.0.1:10/?replicaSet=rs0&authSource=admin";
        let db = connect(bare, Some("auth"), "t", LIMIT, Durability::default(), "e")
            .await
            .unwrap();
        assert_eq!(db.name(), "auth");

        let err = connect(
            bare,
            None,
            "t",
            LIMIT,
            Durability::default(),
            "mongodb://db:27017/auth",
        )
        .await
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "DATABASE_URL must name the database, e.g. mongodb://db:27017/auth"
        );
        let err = connect(bare, Some("a.b"), "t", LIMIT, Durability::default(), "e")
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("DATABASE_NAME"), "{err}");
    }

    #[tokio::test]
    async fn a_url_without_a_database_serves_the_named_one() {
        let bare = testing::with_database(&testing::mongodb_url(), "");
        let name = testing::unique_name("dbname");
        let db = connect(
            &bare,
            Some(&name),
            "mongo-test",
            LIMIT,
            Durability::default(),
            "e",
        )
        .await
        .unwrap();
        let probe = db.collection::<mongodb::bson::Document>("probe");
        timed(LIMIT, probe.insert_one(mongodb::bson::doc! { "k": 1 }))
            .await
            .unwrap();

        // Read back through the URL naming that database: the write landed there.
        let named = testing::with_database(&bare, &name);
        let db = connect(
            &named,
            None,
            "mongo-test",
            LIMIT,
            Durability::default(),
            "e",
        )
        .await
        .unwrap();
        let found = timed(
            LIMIT,
            db.collection::<mongodb::bson::Document>("probe")
                .count_documents(mongodb::bson::doc! { "k": 1 }),
        )
        .await
        .unwrap();
        assert_eq!(found, 1);
        let _ = timed(LIMIT, db.drop()).await;
    }
}
