//! MongoDB plumbing shared by the stores: connecting to the database named in a URL, and calls
//! bounded by a timeout, so a dead database gives an error within seconds, never a hang.

use std::{future::Future, future::IntoFuture, time::Duration};

use mongodb::{
    Client, Database,
    error::{ErrorKind, WriteFailure},
    options::ClientOptions,
};

use crate::bus::Backoff;

const DUPLICATE_KEY: i32 = 11000;

/// Why a database call failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// A unique index refused the write (E11000).
    #[error("duplicate key")]
    DuplicateKey,
    #[error("{0}")]
    Unavailable(String),
}

/// Opens (lazily: the driver connects on first use) the database named in `url`'s path.
/// `example` shows the expected form in the error when the name is missing.
pub async fn connect(
    url: &str,
    app_name: &str,
    op_timeout: Duration,
    example: &str,
) -> anyhow::Result<Database> {
    let mut options = ClientOptions::parse(url)
        .await
        .map_err(|e| anyhow::anyhow!("DATABASE_URL is not a MongoDB URL: {e}"))?;
    let name = options
        .default_database
        .clone()
        .ok_or_else(|| anyhow::anyhow!("DATABASE_URL must name the database, e.g. {example}"))?;
    options.app_name = Some(app_name.to_owned());
    options.server_selection_timeout.get_or_insert(op_timeout);
    options.connect_timeout.get_or_insert(op_timeout);
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
