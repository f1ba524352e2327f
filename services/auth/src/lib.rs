//! auth-service: registration, login and JWT issuance, and the username -> id lookup the other
//! services use. A drop-in for the original system's auth service (same routes, bodies and data),
//! with argon2id passwords, throttled logins and authenticated lookups.

pub mod error;
pub mod password;
pub mod store;
pub mod throttle;

mod handlers;
mod migrate;
pub mod openapi;

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use axum::{Router, extract::FromRef, routing::get, routing::post};
use chat_common::{
    config::{CommonConfig, ConfigError, Durability, SecretUrl, Source, Vars},
    http::Limits,
    jwt::{JwtSettings, TokenIssuer, TokenVerifier},
    metrics::{self, HttpMetrics},
    server::{Listeners, ServerConfig, serve},
};

pub use error::AuthError;
pub use migrate::{MigrationReport, migrate_passwords};
use password::{HashMetrics, HashParams, PasswordHasher};
#[cfg(feature = "mongo")]
use store::MongoUserStore;
use store::{EmbeddedUserStore, UserStore};
use throttle::Throttle;
pub use throttle::ThrottleConfig;

/// auth-service configuration, from the environment.
#[derive(Debug, Clone)]
pub struct Config {
    /// `PORT` (default 5001), `BIND_ADDR`, `MAX_BODY_BYTES`, `REQUEST_TIMEOUT`, `CHAT_DEV_MODE`,
    /// `DATA_DIR`, `LOG_FORMAT`: as for every service.
    pub common: CommonConfig,
    /// `DATABASE_URL`, a MongoDB URL whose path names the database (`mongodb://db:27017/auth`).
    /// Required, except in development mode, where users then live in `DATA_DIR/auth.redb`.
    pub database_url: Option<SecretUrl>,
    /// `DATABASE_NAME`: the database, overriding `DATABASE_URL`'s path (which may then name none),
    /// so one URL can serve both auth's and chat's databases.
    pub database_name: Option<String>,
    pub jwt: JwtSettings,
    /// `ARGON2_MEMORY_KIB` / `ARGON2_ITERATIONS` / `ARGON2_PARALLELISM` (OWASP minimum by default;
    /// lower values are refused).
    pub hash: HashParams,
    /// `HASH_CONCURRENCY`: hashes computed at once (default: the number of CPUs).
    pub hash_concurrency: usize,
    /// `HASH_QUEUE`: requests allowed to wait for a hashing slot before 503 (default 128; 0: none
    /// wait, a request finding every slot busy gets 503 at once).
    pub hash_queue: usize,
    /// Login and registration throttles (see [`ThrottleConfig`]).
    pub throttle: ThrottleConfig,
    /// `DB_TIMEOUT`: longest a database call may take (default 5 s).
    pub db_timeout: Duration,
    /// `WRITE_CONCERN` and `WRITE_JOURNAL`: when MongoDB acknowledges a write (default: a
    /// majority, journaled).
    pub durability: Durability,
}

impl Config {
    pub fn from_env<S: Source>(vars: &Vars<S>) -> Result<Self, ConfigError> {
        let common = CommonConfig::from_env(vars, 5001)?;
        let cpus = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
        let hash = HashParams {
            memory_kib: vars.parse_or("ARGON2_MEMORY_KIB", HashParams::OWASP_MIN.memory_kib)?,
            iterations: vars.parse_or("ARGON2_ITERATIONS", HashParams::OWASP_MIN.iterations)?,
            parallelism: vars.parse_or("ARGON2_PARALLELISM", HashParams::OWASP_MIN.parallelism)?,
        };
        if !hash.meets_minimum() {
            return Err(ConfigError::malformed(
                "ARGON2_MEMORY_KIB",
                format!("{hash:?}"),
                "argon2id parameters below OWASP's minimum (19456 KiB, t=2, p=1)",
            ));
        }
        #[cfg(feature = "mongo")]
        let database_url = vars.string("DATABASE_URL").map(SecretUrl::new);
        #[cfg(not(feature = "mongo"))]
        let database_url = vars.unsupported("DATABASE_URL", "mongo")?;
        if database_url.is_none() && !common.dev_mode {
            return Err(ConfigError::Missing("DATABASE_URL"));
        }
        Ok(Self {
            database_url,
            database_name: vars.database_name("DATABASE_NAME")?,
            jwt: JwtSettings::from_env(vars)?,
            hash,
            hash_concurrency: vars.positive_or("HASH_CONCURRENCY", cpus)?,
            hash_queue: vars.parse_or("HASH_QUEUE", 128)?,
            throttle: throttle_config(vars)?,
            db_timeout: vars.nonzero_duration_or("DB_TIMEOUT", Duration::from_secs(5))?,
            durability: vars.durability()?,
            common,
        })
    }
}

fn throttle_config<S: Source>(vars: &Vars<S>) -> Result<ThrottleConfig, ConfigError> {
    let d = ThrottleConfig::default();
    Ok(ThrottleConfig {
        login_max_failures: vars.parse_or("LOGIN_MAX_FAILURES", d.login_max_failures)?,
        login_failure_window: vars
            .nonzero_duration_or("LOGIN_FAILURE_WINDOW", d.login_failure_window)?,
        login_max_failures_per_address: vars.parse_or(
            "LOGIN_MAX_FAILURES_PER_ADDRESS",
            d.login_max_failures_per_address,
        )?,
        register_max_per_address: vars
            .parse_or("REGISTER_MAX_PER_ADDRESS", d.register_max_per_address)?,
        register_window: vars.nonzero_duration_or("REGISTER_WINDOW", d.register_window)?,
        slots: vars.positive_or("THROTTLE_SLOTS", d.slots)?,
    })
}

/// auth-service ready to serve: its store, its state and its bound listener, built from the
/// configuration alone. `main`, the standalone stack and the tests all start it this way.
pub struct App {
    listeners: Listeners,
    server: ServerConfig,
    state: AppState,
}

impl App {
    pub async fn build(config: &Config) -> anyhow::Result<Self> {
        let listeners = Listeners::bind(config.common.bind, &config.common.server).await?;
        let state = AppState::new(config, open_store(config).await?)?;
        Ok(Self {
            listeners,
            server: config.common.server.clone(),
            state,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listeners.api_addr()
    }

    /// Where `/metrics` is served when `METRICS_PORT` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.listeners.metrics_addr()
    }

    /// The handlers' state: its store and hasher serve `migrate-passwords` and the tests.
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` resolves, then drains.
    pub async fn run<F>(self, shutdown: F) -> std::io::Result<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let metrics = self.state.http_metrics.clone();
        serve(
            self.listeners,
            router(self.state),
            &metrics,
            &self.server,
            shutdown,
        )
        .await
    }
}

/// The user store the configuration names: MongoDB at `DATABASE_URL` (its unique index created in
/// the background and retried until it exists; registration creates it first if need be), else,
/// in development mode, the embedded file `DATA_DIR/auth.redb`.
pub async fn open_store(config: &Config) -> anyhow::Result<Arc<dyn UserStore>> {
    #[cfg(feature = "mongo")]
    if let Some(url) = &config.database_url {
        let name = config.database_name.as_deref();
        let mongo = Arc::new(
            MongoUserStore::connect(
                url.expose(),
                name,
                "auth-service",
                config.db_timeout,
                config.durability,
            )
            .await?,
        );
        let indexing = mongo.clone();
        tokio::spawn(async move { indexing.ensure_indexes_with_retry().await });
        return Ok(mongo);
    }
    let path = config.common.data_dir.join("auth.redb");
    tracing::info!(path = %path.display(), "no DATABASE_URL: users in an embedded file");
    let store = chat_common::local::open_retrying(|| EmbeddedUserStore::open(&path)).await?;
    Ok(Arc::new(store))
}

/// auth-service's own metrics.
#[derive(Clone)]
pub struct AuthMetrics {
    pub registrations: prometheus::IntCounterVec,
    pub logins: prometheus::IntCounterVec,
}

/// Shared state of the handlers.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn UserStore>,
    pub hasher: Arc<PasswordHasher>,
    pub throttle: Arc<Throttle>,
    pub issuer: Arc<TokenIssuer>,
    pub verifier: Arc<TokenVerifier>,
    pub http_metrics: HttpMetrics,
    pub metrics: AuthMetrics,
    pub limits: Limits,
    pub cors: chat_common::http::Cors,
}

impl FromRef<AppState> for Arc<TokenVerifier> {
    fn from_ref(state: &AppState) -> Self {
        state.verifier.clone()
    }
}

impl AppState {
    /// Builds the state over a user store.
    pub fn new(config: &Config, store: Arc<dyn UserStore>) -> anyhow::Result<Self> {
        let http_metrics = HttpMetrics::new("auth");
        let hash_metrics = HashMetrics {
            duration: metrics::histogram(
                "auth_password_hash_seconds",
                "Time to hash or verify one password (argon2id).",
                metrics::LATENCY_BUCKETS,
            ),
            in_flight: metrics::gauge(
                "auth_password_hash_in_flight",
                "Password operations running or waiting for a slot.",
            ),
            rejected: prometheus::IntCounter::new(
                "auth_password_hash_rejected_total",
                "Password operations refused with 503 because the queue was full.",
            )?,
        };
        http_metrics.register(hash_metrics.duration.clone());
        http_metrics.register(hash_metrics.in_flight.clone());
        http_metrics.register(hash_metrics.rejected.clone());
        let metrics = AuthMetrics {
            registrations: metrics::counter_vec(
                "auth_registrations_total",
                "Registration attempts by result.",
                &["result"],
            ),
            logins: metrics::counter_vec(
                "auth_logins_total",
                "Login attempts by result.",
                &["result"],
            ),
        };
        http_metrics.register(metrics.registrations.clone());
        http_metrics.register(metrics.logins.clone());
        let hasher = PasswordHasher::new(
            config.hash,
            config.hash_concurrency,
            config.hash_queue,
            Some(hash_metrics),
        )?;
        let issuer = config.jwt.issuer().ok_or_else(|| {
            anyhow::anyhow!("auth-service needs a signing key: JWT_SECRET or JWT_PRIVATE_KEY_FILE")
        })?;
        Ok(Self {
            store,
            hasher: Arc::new(hasher),
            throttle: Arc::new(Throttle::new(&config.throttle)),
            issuer: Arc::new(issuer),
            verifier: Arc::new(config.jwt.verifier()),
            http_metrics,
            metrics,
            limits: config.common.limits,
            cors: config.common.cors.clone(),
        })
    }
}

/// `GET /openapi.json`: this service's OpenAPI document.
async fn openapi_json() -> axum::response::Response {
    static DOCUMENT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    chat_common::openapi::response(DOCUMENT.get_or_init(openapi::document))
}

/// The service's routes, with health, metrics and the common middleware.
pub fn router(state: AppState) -> Router {
    let metrics = state.http_metrics.clone();
    let limits = state.limits;
    let cors = state.cors.clone();
    let routes = Router::new()
        .route("/auth/register", post(handlers::register))
        .route("/auth/login", post(handlers::login))
        .route("/auth/user-by-username", get(handlers::user_by_username))
        .route("/readyz", get(handlers::readyz))
        .route("/openapi.json", get(openapi_json))
        .with_state(state);
    chat_common::http::finish_router(routes, &metrics, limits, &cors)
}
