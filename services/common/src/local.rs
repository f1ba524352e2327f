//! Local files: the embedded stores of development mode and the standalone stack.

use std::time::Duration;

/// Opens an embedded store, waiting up to 2 s for a previous run in this process (a restart of
/// the standalone stack, as its tests do) to let go of the file: redb holds an exclusive lock.
pub async fn open_retrying<T>(mut open: impl FnMut() -> anyhow::Result<T>) -> anyhow::Result<T> {
    let mut attempts = 0;
    loop {
        match open() {
            Ok(store) => return Ok(store),
            Err(e) if attempts < 20 => {
                attempts += 1;
                tracing::debug!(error = %e, "embedded store busy; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e),
        }
    }
}
