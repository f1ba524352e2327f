//! Username -> user id resolution through auth-service (`GET /auth/user-by-username`), with a
//! bounded cache: positive answers for `ttl` (ids never change), "no such user" for a shorter
//! `negative_ttl` (the name may be registered soon).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use prometheus::IntCounterVec;

use crate::jwt::ServiceCredential;

#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("auth-service unavailable: {0}")]
    Unavailable(String),
}

/// Cache bounds and timings.
#[derive(Debug, Clone, Copy)]
pub struct DirectoryConfig {
    pub capacity: usize,
    pub ttl: Duration,
    pub negative_ttl: Duration,
    pub request_timeout: Duration,
}

impl Default for DirectoryConfig {
    fn default() -> Self {
        Self {
            capacity: 100_000,
            ttl: Duration::from_secs(600),
            negative_ttl: Duration::from_secs(5),
            request_timeout: Duration::from_secs(3),
        }
    }
}

#[derive(Clone)]
struct Entry {
    /// `Err` caches an unreachable auth-service for [`ERROR_TTL`], so a dead or slow
    /// auth-service costs one timeout per second per name, not one per event.
    id: Result<Option<Arc<str>>, String>,
    expires: Instant,
}

const ERROR_TTL: Duration = Duration::from_secs(1);

/// A pooled HTTP client for auth-service's lookup, with the cache in front.
#[derive(Clone)]
pub struct UserDirectory {
    http: reqwest::Client,
    url: String,
    credential: ServiceCredential,
    config: DirectoryConfig,
    cache: Arc<Mutex<HashMap<String, Entry>>>,
    lookups: Option<IntCounterVec>,
}

impl UserDirectory {
    /// `auth_base_url` is `AUTH_SERVICE_URL` (`http://auth-service:5001`).
    pub fn new(
        auth_base_url: &str,
        credential: ServiceCredential,
        config: DirectoryConfig,
    ) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .connect_timeout(config.request_timeout)
            .pool_max_idle_per_host(64)
            .tcp_nodelay(true)
            .build()?;
        Ok(Self {
            http,
            url: format!(
                "{}/auth/user-by-username",
                auth_base_url.trim_end_matches('/')
            ),
            credential,
            config,
            cache: Arc::default(),
            lookups: None,
        })
    }

    /// The directory a service uses: its credential from `jwt` (a minted service token, or
    /// `INTERNAL_API_TOKEN`), and `<prefix>_user_lookups_total{result}` registered in `metrics`.
    pub fn for_service(
        service: &str,
        prefix: &str,
        jwt: &crate::jwt::JwtSettings,
        auth_base_url: &str,
        config: DirectoryConfig,
        metrics: &crate::metrics::HttpMetrics,
    ) -> anyhow::Result<Self> {
        let credential = jwt.service_credential(service).ok_or_else(|| {
            anyhow::anyhow!("{service} needs JWT_SECRET or INTERNAL_API_TOKEN to call auth-service")
        })?;
        let lookups = crate::metrics::counter_vec(
            &format!("{prefix}_user_lookups_total"),
            "Username lookups by result (hit: from cache, miss: asked auth-service, error).",
            &["result"],
        );
        metrics.register(lookups.clone());
        Ok(Self::new(auth_base_url, credential, config)?.with_metrics(lookups))
    }

    /// Counts lookups by `result` (`hit`, `miss`, `error`) in `counter`.
    #[must_use]
    pub fn with_metrics(mut self, counter: IntCounterVec) -> Self {
        self.lookups = Some(counter);
        self
    }

    fn count(&self, result: &str) {
        if let Some(c) = &self.lookups {
            c.with_label_values(&[result]).inc();
        }
    }

    fn cached(&self, username: &str) -> Option<Entry> {
        let cache = self
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        cache
            .get(username)
            .filter(|e| e.expires > Instant::now())
            .cloned()
    }

    fn remember(&self, username: &str, id: Result<Option<Arc<str>>, String>) {
        let ttl = match &id {
            Ok(Some(_)) => self.config.ttl,
            Ok(None) => self.config.negative_ttl,
            Err(_) => ERROR_TTL,
        };
        let now = Instant::now();
        let mut cache = self
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if cache.len() >= self.config.capacity {
            cache.retain(|_, e| e.expires > now);
            if cache.len() >= self.config.capacity {
                // Still full of live entries: drop an arbitrary eighth.
                let drop_n = (self.config.capacity / 8).max(1);
                let victims: Vec<String> = cache.keys().take(drop_n).cloned().collect();
                for k in victims {
                    cache.remove(&k);
                }
            }
        }
        cache.insert(
            username.to_owned(),
            Entry {
                id,
                expires: now + ttl,
            },
        );
    }

    /// The id of `username`, `None` if no such user exists.
    pub async fn id_of(&self, username: &str) -> Result<Option<Arc<str>>, LookupError> {
        if let Some(hit) = self.cached(username) {
            self.count(if hit.id.is_ok() { "hit" } else { "error" });
            return hit.id.map_err(LookupError::Unavailable);
        }
        let result = self.fetch(username).await;
        match &result {
            Ok(id) => {
                self.count("miss");
                self.remember(username, Ok(id.clone()));
            }
            Err(LookupError::Unavailable(reason)) => {
                self.count("error");
                self.remember(username, Err(reason.clone()));
            }
        }
        result
    }

    async fn fetch(&self, username: &str) -> Result<Option<Arc<str>>, LookupError> {
        #[derive(serde::Deserialize)]
        struct Found {
            id: String,
        }
        let token = self
            .credential
            .token()
            .map_err(|e| LookupError::Unavailable(format!("cannot mint service token: {e}")))?;
        let response = self
            .http
            .get(&self.url)
            .query(&[("username", username)])
            .bearer_auth(token)
            .send()
            .await
            .map_err(|e| LookupError::Unavailable(e.without_url().to_string()))?;
        match response.status().as_u16() {
            200 => {
                let found: Found = response
                    .json()
                    .await
                    .map_err(|e| LookupError::Unavailable(e.without_url().to_string()))?;
                Ok(Some(found.id.into()))
            }
            404 => Ok(None),
            status => Err(LookupError::Unavailable(format!(
                "lookup answered {status}"
            ))),
        }
    }
}
