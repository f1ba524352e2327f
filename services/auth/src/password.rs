//! Password hashing with argon2id, off the async runtime, with bounded concurrency and a bounded
//! queue of waiting requests, so a login flood cannot starve the rest of the service.
//!
//! Hashes run on a fixed set of worker threads rather than tokio's blocking pool: each argon2
//! call allocates `m` KiB (19 MiB), and the allocator keeps freed blocks per thread arena, so a
//! pool that grows to many threads would keep hundreds of MiB resident after a burst.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicUsize, Ordering},
};
use std::time::Instant;

use argon2::{
    Algorithm, Argon2, Params, Version,
    password_hash::{PasswordHasher as _, PasswordVerifier as _, phc::PasswordHash},
};
use tokio::sync::{Semaphore, oneshot};

type Job = Box<dyn FnOnce() + Send>;

/// Starts `n` threads that run jobs from one queue until its sender is dropped.
fn start_workers(n: usize) -> std::io::Result<std::sync::mpsc::Sender<Job>> {
    let (tx, rx) = std::sync::mpsc::channel::<Job>();
    let rx = Arc::new(Mutex::new(rx));
    for i in 0..n {
        let rx = rx.clone();
        std::thread::Builder::new()
            .name(format!("argon2-{i}"))
            .spawn(move || {
                loop {
                    let job = rx
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .recv();
                    match job {
                        Ok(job) => job(),
                        Err(_) => return,
                    }
                }
            })?;
    }
    Ok(tx)
}

/// argon2id cost parameters. The minimums are OWASP's (19 MiB, t=2, p=1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashParams {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl HashParams {
    pub const OWASP_MIN: Self = Self {
        memory_kib: 19 * 1024,
        iterations: 2,
        parallelism: 1,
    };

    /// Whether these are at least as strong as OWASP's minimum.
    pub fn meets_minimum(&self) -> bool {
        self.memory_kib >= Self::OWASP_MIN.memory_kib
            && self.iterations >= Self::OWASP_MIN.iterations
            && self.parallelism >= Self::OWASP_MIN.parallelism
    }
}

impl Default for HashParams {
    fn default() -> Self {
        Self::OWASP_MIN
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("too many password operations waiting")]
    Busy,
    #[error("password hashing failed: {0}")]
    Internal(String),
}

/// Whether a stored value is a PHC string we can verify (as opposed to legacy plaintext).
pub fn is_phc(stored: &str) -> bool {
    stored.starts_with("$argon2") && PasswordHash::new(stored).is_ok()
}

pub struct PasswordHasher {
    argon: Argon2<'static>,
    permits: Semaphore,
    workers: Mutex<std::sync::mpsc::Sender<Job>>,
    /// Requests running or waiting for a permit.
    in_flight: AtomicUsize,
    /// Permits + allowed waiting requests.
    capacity: usize,
    /// A hash of a random password, verified against when the user does not exist so that
    /// unknown users and wrong passwords take the same time.
    dummy: String,
    metrics: Option<HashMetrics>,
}

/// Metrics the hasher reports.
#[derive(Clone)]
pub struct HashMetrics {
    pub duration: prometheus::Histogram,
    pub in_flight: prometheus::IntGauge,
    pub rejected: prometheus::IntCounter,
}

struct InFlight<'a>(&'a PasswordHasher);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let now = self.0.in_flight.fetch_sub(1, Ordering::AcqRel) - 1;
        if let Some(m) = &self.0.metrics {
            m.in_flight.set(i64::try_from(now).unwrap_or(i64::MAX));
        }
    }
}

impl PasswordHasher {
    /// `concurrency` hashes run at once (at least 1); up to `queue` more requests may wait.
    pub fn new(
        params: HashParams,
        concurrency: usize,
        queue: usize,
        metrics: Option<HashMetrics>,
    ) -> Result<Self, HashError> {
        let p = Params::new(
            params.memory_kib,
            params.iterations,
            params.parallelism,
            None,
        )
        .map_err(|e| HashError::Internal(e.to_string()))?;
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, p);
        let dummy = argon
            .hash_password(format!("dummy-{}", std::process::id()).as_bytes())
            .map_err(|e| HashError::Internal(e.to_string()))?
            .to_string();
        let concurrency = concurrency.max(1);
        Ok(Self {
            argon,
            permits: Semaphore::new(concurrency),
            workers: Mutex::new(
                start_workers(concurrency).map_err(|e| HashError::Internal(e.to_string()))?,
            ),
            in_flight: AtomicUsize::new(0),
            capacity: concurrency + queue,
            dummy,
            metrics,
        })
    }

    async fn run<T, F>(self: &Arc<Self>, job: F) -> Result<T, HashError>
    where
        T: Send + 'static,
        F: FnOnce(&Argon2<'static>, &str) -> T + Send + 'static,
    {
        let before = self.in_flight.fetch_add(1, Ordering::AcqRel);
        let guard = InFlight(self);
        if let Some(m) = &self.metrics {
            m.in_flight
                .set(i64::try_from(before + 1).unwrap_or(i64::MAX));
        }
        if before >= self.capacity {
            if let Some(m) = &self.metrics {
                m.rejected.inc();
            }
            return Err(HashError::Busy);
        }
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|e| HashError::Internal(e.to_string()))?;
        let this = Arc::clone(self);
        let started = Instant::now();
        let (reply, answer) = oneshot::channel();
        self.workers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .send(Box::new(move || {
                let _ = reply.send(job(&this.argon, &this.dummy));
            }))
            .map_err(|e| HashError::Internal(e.to_string()))?;
        let out = answer
            .await
            .map_err(|e| HashError::Internal(e.to_string()))?;
        if let Some(m) = &self.metrics {
            m.duration.observe(started.elapsed().as_secs_f64());
        }
        drop(guard);
        Ok(out)
    }

    /// Hashes a password into a PHC string (`$argon2id$v=19$m=...`).
    pub async fn hash(self: &Arc<Self>, password: String) -> Result<String, HashError> {
        self.run(move |argon, _| {
            argon
                .hash_password(password.as_bytes())
                .map(|h| h.to_string())
                .map_err(|e| HashError::Internal(e.to_string()))
        })
        .await?
    }

    /// Checks `password` against a stored PHC string. With no stored value, or a value that is
    /// not a PHC string (legacy plaintext), it verifies against the dummy hash and answers
    /// `false`, so every failure costs the same.
    pub async fn verify(
        self: &Arc<Self>,
        password: String,
        stored: Option<String>,
    ) -> Result<bool, HashError> {
        self.run(move |argon, dummy| {
            let candidate = stored.as_deref().filter(|s| s.starts_with("$argon2"));
            let real = candidate.and_then(|s| PasswordHash::new(s).ok());
            if let Some(hash) = real {
                argon.verify_password(password.as_bytes(), &hash).is_ok()
            } else {
                if let Ok(hash) = PasswordHash::new(dummy) {
                    let _ = argon.verify_password(password.as_bytes(), &hash);
                }
                false
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_are_argon2id_with_owasp_parameters_and_verify() {
        let h = Arc::new(PasswordHasher::new(HashParams::default(), 2, 4, None).unwrap());
        let phc = h.hash("correct horse".into()).await.unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert!(is_phc(&phc));
        assert!(
            h.verify("correct horse".into(), Some(phc.clone()))
                .await
                .unwrap()
        );
        assert!(!h.verify("wrong horse".into(), Some(phc)).await.unwrap());
        // Plaintext is never compared, even when it matches.
        assert!(
            !h.verify("plain".into(), Some("plain".into()))
                .await
                .unwrap()
        );
        assert!(!h.verify("x".into(), None).await.unwrap());
        assert!(!is_phc("$argon2id$garbage"));
    }

    #[tokio::test]
    async fn a_full_queue_is_refused_not_queued() {
        let h = Arc::new(PasswordHasher::new(HashParams::default(), 1, 1, None).unwrap());
        let jobs: Vec<_> = (0..6)
            .map(|i| {
                let h = h.clone();
                tokio::spawn(async move { h.hash(format!("password-{i}")).await })
            })
            .collect();
        let mut busy = 0;
        for j in jobs {
            if matches!(j.await.unwrap(), Err(HashError::Busy)) {
                busy += 1;
            }
        }
        assert!(
            busy >= 1,
            "with capacity 2, some of 6 concurrent hashes must be refused"
        );
        assert_eq!(h.in_flight.load(Ordering::Acquire), 0);
        // Capacity is released: the next one succeeds.
        assert!(h.hash("again".into()).await.is_ok());
    }
}
