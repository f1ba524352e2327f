//! Password hashing with argon2id, off the async runtime, with bounded concurrency and a bounded
//! queue of waiting requests, so a login flood cannot starve the rest of the service.
//!
//! Hashes run on a fixed set of worker threads, each reusing one argon2 memory area (`m` KiB,
//! 19 MiB by default) for every hash it computes. Allocating that area per hash lets the C
//! allocator keep freed areas around: a few hundred logins then left ~200–480 MiB resident.
//! With reuse, the service holds at most `HASH_CONCURRENCY` areas.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicUsize, Ordering},
};
use std::time::Instant;

use argon2::{
    Algorithm, Argon2, Block, Params, Version,
    password_hash::phc::{Output, ParamsString, PasswordHash, Salt},
};
use chat_common::secret::constant_time_eq;
use tokio::sync::oneshot;

/// Work for a hashing thread, given that thread's reusable memory.
type Job = Box<dyn FnOnce(&mut Vec<Block>) + Send>;

const SALT_LEN: usize = 16;
const OUTPUT_LEN: usize = 32;

/// Starts `n` threads that run jobs from one queue until its sender is dropped.
fn start_workers(n: usize) -> std::io::Result<std::sync::mpsc::Sender<Job>> {
    let (tx, rx) = std::sync::mpsc::channel::<Job>();
    let rx = Arc::new(Mutex::new(rx));
    for i in 0..n {
        let rx = rx.clone();
        std::thread::Builder::new()
            .name(format!("argon2-{i}"))
            .spawn(move || {
                let mut memory = Vec::new();
                loop {
                    let job = rx
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .recv();
                    match job {
                        Ok(job) => job(&mut memory),
                        Err(_) => return,
                    }
                }
            })?;
    }
    Ok(tx)
}

/// The first `blocks` blocks of `memory`, growing it if needed.
fn area(memory: &mut Vec<Block>, blocks: usize) -> &mut [Block] {
    if memory.len() < blocks {
        memory.resize(blocks, Block::default());
    }
    &mut memory[..blocks]
}

fn internal(e: impl std::fmt::Display) -> HashError {
    HashError::Internal(e.to_string())
}

/// Hashes `password` with a fresh random salt into a PHC string.
fn hash_in(params: &Params, memory: &mut Vec<Block>, password: &[u8]) -> Result<String, HashError> {
    let salt: [u8; SALT_LEN] = rand::random();
    let mut out = [0u8; OUTPUT_LEN];
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
        .hash_password_into_with_memory(
            password,
            &salt,
            &mut out,
            area(memory, params.block_count()),
        )
        .map_err(internal)?;
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(params).map_err(internal)?,
        salt: Some(Salt::new(&salt).map_err(internal)?),
        hash: Some(Output::new(&out).map_err(internal)?),
    };
    Ok(phc.to_string())
}

/// Recomputes `hash` (with its own algorithm, version, parameters and salt) for `password`; a
/// hash whose parameters exceed `bound` is refused unverified (a planted `m=4194304` would
/// otherwise make one login allocate 4 GiB).
fn verify_in(
    memory: &mut Vec<Block>,
    password: &[u8],
    hash: &PasswordHash,
    bound: &HashParams,
) -> bool {
    let (Some(salt), Some(expected)) = (&hash.salt, &hash.hash) else {
        return false;
    };
    let Ok(algorithm) = Algorithm::try_from(hash.algorithm.as_str()) else {
        return false;
    };
    let version = match hash.version.map(Version::try_from) {
        None => Version::V0x13,
        Some(Ok(v)) => v,
        Some(Err(_)) => return false,
    };
    let Ok(params) = Params::try_from(hash) else {
        return false;
    };
    if params.m_cost() > bound.memory_kib
        || params.t_cost() > bound.iterations
        || params.p_cost() > bound.parallelism
    {
        tracing::warn!(
            memory_kib = params.m_cost(),
            iterations = params.t_cost(),
            parallelism = params.p_cost(),
            "a stored password hash has argon2 parameters beyond the bounds; not verified"
        );
        return false;
    }
    let mut out = vec![0u8; expected.as_bytes().len()];
    let blocks = params.block_count();
    Argon2::new(algorithm, version, params)
        .hash_password_into_with_memory(password, salt.as_ref(), &mut out, area(memory, blocks))
        .is_ok()
        && constant_time_eq(&out, expected.as_bytes())
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

    /// The most a stored hash may cost to verify: 256 MiB, t=16, p=16 (or what this service
    /// hashes with, if more).
    pub const VERIFY_MAX: Self = Self {
        memory_kib: 256 * 1024,
        iterations: 16,
        parallelism: 16,
    };

    /// [`Self::VERIFY_MAX`], raised to `self` where `self` is above it.
    #[must_use]
    pub fn verify_bound(&self) -> Self {
        Self {
            memory_kib: self.memory_kib.max(Self::VERIFY_MAX.memory_kib),
            iterations: self.iterations.max(Self::VERIFY_MAX.iterations),
            parallelism: self.parallelism.max(Self::VERIFY_MAX.parallelism),
        }
    }

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
    params: Params,
    /// The costliest stored hash verified.
    bound: HashParams,
    /// Jobs for the `concurrency` hashing threads; waiting jobs are the queue.
    workers: Mutex<std::sync::mpsc::Sender<Job>>,
    /// Jobs queued or running. Released by the worker when the job ends, not by the request:
    /// a client that disconnects still holds its place until a worker has skipped its job.
    in_flight: Arc<AtomicUsize>,
    /// Threads + allowed waiting jobs.
    capacity: usize,
    /// A hash of a random password, verified against when the user does not exist (or has a
    /// legacy plaintext password) so that every failure costs the same.
    dummy: Arc<PasswordHash>,
    metrics: Option<HashMetrics>,
}

/// Metrics the hasher reports.
#[derive(Clone)]
pub struct HashMetrics {
    pub duration: prometheus::Histogram,
    pub in_flight: prometheus::IntGauge,
    pub rejected: prometheus::IntCounter,
}

/// A place in the queue, given back when dropped.
struct Ticket {
    in_flight: Arc<AtomicUsize>,
    gauge: Option<prometheus::IntGauge>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let now = self.in_flight.fetch_sub(1, Ordering::AcqRel) - 1;
        if let Some(g) = &self.gauge {
            g.set(i64::try_from(now).unwrap_or(i64::MAX));
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
        let hash_params = params;
        let params = Params::new(
            params.memory_kib,
            params.iterations,
            params.parallelism,
            None,
        )
        .map_err(internal)?;
        let dummy_password: [u8; 16] = rand::random();
        let dummy = hash_in(&params, &mut Vec::new(), &dummy_password)?;
        let dummy = Arc::new(PasswordHash::new(&dummy).map_err(internal)?);
        let concurrency = concurrency.max(1);
        Ok(Self {
            params,
            bound: hash_params.verify_bound(),
            workers: Mutex::new(start_workers(concurrency).map_err(internal)?),
            in_flight: Arc::new(AtomicUsize::new(0)),
            capacity: concurrency + queue,
            dummy,
            metrics,
        })
    }

    /// Queues `job` for a hashing thread, or refuses at once when the queue is full.
    async fn run<T, F>(&self, job: F) -> Result<T, HashError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Vec<Block>) -> T + Send + 'static,
    {
        let before = self.in_flight.fetch_add(1, Ordering::AcqRel);
        let ticket = Ticket {
            in_flight: self.in_flight.clone(),
            gauge: self.metrics.as_ref().map(|m| m.in_flight.clone()),
        };
        if let Some(g) = &ticket.gauge {
            g.set(i64::try_from(before + 1).unwrap_or(i64::MAX));
        }
        if before >= self.capacity {
            if let Some(m) = &self.metrics {
                m.rejected.inc();
            }
            return Err(HashError::Busy);
        }
        let duration = self.metrics.as_ref().map(|m| m.duration.clone());
        let (reply, answer) = oneshot::channel();
        self.workers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .send(Box::new(move |memory: &mut Vec<Block>| {
                if reply.is_closed() {
                    return; // The request is gone (client left, timeout): skip the work.
                }
                let started = Instant::now();
                let out = job(memory);
                if let Some(h) = duration {
                    h.observe(started.elapsed().as_secs_f64());
                }
                drop(ticket);
                let _ = reply.send(out);
            }))
            .map_err(internal)?;
        answer.await.map_err(internal)
    }

    /// Hashes a password into a PHC string (`$argon2id$v=19$m=...`).
    pub async fn hash(&self, password: String) -> Result<String, HashError> {
        let params = self.params.clone();
        self.run(move |memory| hash_in(&params, memory, password.as_bytes()))
            .await?
    }

    /// Checks `password` against a stored PHC string. With no stored value, or a value that is
    /// not a PHC string (legacy plaintext), it verifies against the dummy hash and answers
    /// `false`, so every failure costs the same.
    pub async fn verify(
        &self,
        password: String,
        stored: Option<String>,
    ) -> Result<bool, HashError> {
        let dummy = self.dummy.clone();
        let bound = self.bound;
        self.run(move |memory| {
            let real = stored
                .as_deref()
                .filter(|s| s.starts_with("$argon2"))
                .and_then(|s| PasswordHash::new(s).ok());
            if let Some(hash) = real {
                verify_in(memory, password.as_bytes(), &hash, &bound)
            } else {
                let _ = verify_in(memory, password.as_bytes(), &dummy, &bound);
                false
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
    async fn a_planted_hash_with_huge_parameters_is_refused_without_allocating() {
        let h = PasswordHasher::new(HashParams::default(), 1, 4, None).unwrap();
        // A real hash of "pw" with m=8 MiB, its cost then rewritten to m=4 GiB, t=1.
        let genuine = h.hash("correct horse".into()).await.unwrap();
        let planted = genuine.replace("m=19456,t=2,p=1", "m=4194304,t=1,p=1");
        assert_ne!(genuine, planted);
        let started = std::time::Instant::now();
        assert!(
            !h.verify("correct horse".into(), Some(planted))
                .await
                .unwrap()
        );
        // Allocating and filling 4 GiB takes seconds; a refusal takes the dummy's ~20 ms.
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        let huge_t = genuine.replace("t=2", "t=1000");
        assert!(
            !h.verify("correct horse".into(), Some(huge_t))
                .await
                .unwrap()
        );
        assert!(
            h.verify("correct horse".into(), Some(genuine))
                .await
                .unwrap()
        );
    }

    #[tokio::test]
    async fn interoperates_with_the_standard_argon2_phc_implementation() {
        use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};
        let h = PasswordHasher::new(HashParams::default(), 1, 4, None).unwrap();
        // Theirs, with other parameters (argon2i, m=8 MiB): verified with the hash's own settings.
        let params = Params::new(8192, 3, 2, None).unwrap();
        let theirs = Argon2::new(Algorithm::Argon2i, Version::V0x13, params)
            .hash_password(b"s3cret-pass")
            .unwrap()
            .to_string();
        assert!(
            h.verify("s3cret-pass".into(), Some(theirs.clone()))
                .await
                .unwrap()
        );
        assert!(!h.verify("s3cret-pasS".into(), Some(theirs)).await.unwrap());
        // Ours, checked by theirs.
        let ours = h.hash("s3cret-pass".into()).await.unwrap();
        let parsed = PasswordHash::new(&ours).unwrap();
        assert!(
            Argon2::default()
                .verify_password(b"s3cret-pass", &parsed)
                .is_ok()
        );
    }

    #[tokio::test]
    async fn abandoned_requests_keep_their_place_until_skipped() {
        let metrics = HashMetrics {
            duration: prometheus::Histogram::with_opts(prometheus::HistogramOpts::new("d", "d"))
                .unwrap(),
            in_flight: prometheus::IntGauge::new("f", "f").unwrap(),
            rejected: prometheus::IntCounter::new("r", "r").unwrap(),
        };
        let h = Arc::new(
            PasswordHasher::new(HashParams::default(), 1, 1, Some(metrics.clone())).unwrap(),
        );
        let running = tokio::spawn({
            let h = h.clone();
            async move { h.hash("first".into()).await }
        });
        tokio::task::yield_now().await;
        // Queued behind the first, then abandoned (as by a client that disconnects).
        let abandoned =
            tokio::time::timeout(Duration::from_millis(1), h.hash("second".into())).await;
        assert!(abandoned.is_err());
        // Its place is still taken: the queue (1 running + 1 waiting) is full.
        assert!(matches!(h.hash("third".into()).await, Err(HashError::Busy)));
        running.await.unwrap().unwrap();
        assert!(h.hash("fourth".into()).await.is_ok());
        // The abandoned job was skipped, not computed: two hashes were timed.
        assert_eq!(metrics.duration.get_sample_count(), 2);
        assert_eq!(metrics.rejected.get(), 1);
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
