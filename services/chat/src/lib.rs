//! chat-service: stores messages and publishes `new_message` events to the fanout exchange.
//! A drop-in for the original's chat service, with the sender bound to the token, reads limited
//! to the conversation's participants, pagination, and publisher confirms.

pub mod error;
pub mod outbox;
pub mod publisher;
pub mod store;
pub mod writer;

mod handlers;
pub mod openapi;

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use axum::{Router, extract::FromRef, routing::get, routing::post};
use chat_common::{
    auth_client::{DirectoryConfig, UserDirectory},
    bus::LocalBus,
    config::{CommonConfig, ConfigError, Durability, SecretUrl, Source, Vars},
    http::Limits,
    jwt::{JwtSettings, TokenVerifier},
    metrics::{self, HttpMetrics},
    server::{Listeners, ServerConfig, serve},
};

pub use error::ChatError;
use outbox::Outbox;
use publisher::{EventPublisher, LocalPublisher};
use store::{EmbeddedMessageStore, MessageStore};
use writer::MessageWriter;

/// chat-service configuration, from the environment.
#[derive(Debug, Clone)]
pub struct Config {
    /// `PORT` (default 5002), `BIND_ADDR`, `MAX_BODY_BYTES`, `REQUEST_TIMEOUT`, `CHAT_DEV_MODE`,
    /// `DATA_DIR`, `LOG_FORMAT`: as for every service.
    pub common: CommonConfig,
    /// `DATABASE_URL`, a MongoDB URL whose path names the database (`mongodb://db:27017/chat`).
    /// Required, except in development mode, where messages then live in `DATA_DIR/chat.redb`.
    pub database_url: Option<SecretUrl>,
    /// `DATABASE_NAME`: as for auth-service (overrides `DATABASE_URL`'s path).
    pub database_name: Option<String>,
    /// `RABBITMQ_URL` (`amqp://rabbitmq:5672`). Required, except in development mode, where
    /// events then go through [`Self::local_bus`].
    pub rabbitmq_url: Option<SecretUrl>,
    /// The in-process bus events go through without `RABBITMQ_URL`: a bus of its own in
    /// development mode; the standalone stack shares one with its websocket-service.
    pub local_bus: LocalBus,
    pub jwt: JwtSettings,
    /// `AUTH_SERVICE_URL` (default `http://localhost:5001`).
    pub auth_service_url: String,
    /// `EXCHANGE_NAME` (default `chat_exchange`).
    pub exchange: String,
    /// `MAX_MESSAGE_CHARS` (default 4000).
    pub max_message_chars: usize,
    /// `SEND_RATE_PER_USER` (default 10 per second) and `SEND_BURST` (default 20): each user's
    /// sends on one replica; beyond them, 429 with `Retry-After`.
    pub send_rate: u32,
    pub send_burst: u32,
    /// `PUBLISH_TIMEOUT` (default 5 s): longest wait for a publisher confirm.
    pub publish_timeout: Duration,
    /// `DB_TIMEOUT` (default 5 s).
    pub db_timeout: Duration,
    /// `WRITE_BATCH` (default 256): most messages written together (group commit).
    pub write_batch: usize,
    /// `WRITE_CONCURRENCY` (default 4): batches written at once.
    pub write_concurrency: usize,
    /// `WRITE_CONCERN` and `WRITE_JOURNAL`: when MongoDB acknowledges a write (default: a
    /// majority, journaled).
    pub durability: Durability,
    /// `OUTBOX_INTERVAL` (default 10 s): how often the outbox looks for events left unpublished
    /// by a replica that died (see [`outbox`]).
    pub outbox_interval: Duration,
}

impl Config {
    pub fn from_env<S: Source>(vars: &Vars<S>) -> Result<Self, ConfigError> {
        let common = CommonConfig::from_env(vars, 5002)?;
        #[cfg(feature = "mongo")]
        let database_url = vars.string("DATABASE_URL").map(SecretUrl::new);
        #[cfg(not(feature = "mongo"))]
        let database_url = vars.unsupported("DATABASE_URL", "mongo")?;
        if database_url.is_none() && !common.dev_mode {
            return Err(ConfigError::Missing("DATABASE_URL"));
        }
        #[cfg(feature = "amqp")]
        let rabbitmq_url = vars.amqp_url("RABBITMQ_URL")?.map(SecretUrl::new);
        #[cfg(not(feature = "amqp"))]
        let rabbitmq_url = vars.unsupported("RABBITMQ_URL", "amqp")?;
        if rabbitmq_url.is_none() && !common.dev_mode {
            return Err(ConfigError::Missing("RABBITMQ_URL"));
        }
        Ok(Self {
            database_url,
            database_name: vars.database_name("DATABASE_NAME")?,
            rabbitmq_url,
            local_bus: LocalBus::default(),
            jwt: JwtSettings::from_env(vars)?,
            auth_service_url: vars.http_url_or("AUTH_SERVICE_URL", "http://localhost:5001")?,
            exchange: vars
                .string("EXCHANGE_NAME")
                .unwrap_or_else(|| chat_common::bus::DEFAULT_EXCHANGE.to_owned()),
            max_message_chars: vars.positive_or("MAX_MESSAGE_CHARS", 4000)?,
            send_rate: vars.positive_or("SEND_RATE_PER_USER", 10)?,
            send_burst: vars.positive_or("SEND_BURST", 20)?,
            publish_timeout: vars.nonzero_duration_or("PUBLISH_TIMEOUT", Duration::from_secs(5))?,
            db_timeout: vars.nonzero_duration_or("DB_TIMEOUT", Duration::from_secs(5))?,
            write_batch: vars.positive_or("WRITE_BATCH", 256)?,
            write_concurrency: vars.positive_or("WRITE_CONCURRENCY", 4)?,
            durability: vars.durability()?,
            outbox_interval: vars
                .nonzero_duration_or("OUTBOX_INTERVAL", Duration::from_secs(10))?,
            common,
        })
    }
}

/// chat-service ready to serve: its store, its publisher, its state and its bound listener,
/// built from the configuration alone. `main`, the standalone stack and the tests all start it
/// this way.
pub struct App {
    listeners: Listeners,
    server: ServerConfig,
    state: AppState,
}

impl App {
    pub async fn build(config: &Config) -> anyhow::Result<Self> {
        let listeners = Listeners::bind(config.common.bind, &config.common.server).await?;
        let store = open_store(config).await?;
        let state = AppState::new(config, store, publisher(config))?;
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

/// Where events go: RabbitMQ's exchange at `RABBITMQ_URL`, else the in-process bus.
pub fn publisher(config: &Config) -> Arc<dyn EventPublisher> {
    #[cfg(feature = "amqp")]
    if let Some(url) = &config.rabbitmq_url {
        return publisher::AmqpPublisher::start(
            url.expose().to_owned(),
            config.exchange.clone(),
            config.publish_timeout,
        );
    }
    tracing::info!("no RABBITMQ_URL: events go through the in-process bus");
    Arc::new(LocalPublisher(config.local_bus.clone()))
}

/// The message store the configuration names: MongoDB at `DATABASE_URL` (its index created in
/// the background, retried until it exists), else, in development mode, the embedded file
/// `DATA_DIR/chat.redb`.
pub async fn open_store(config: &Config) -> anyhow::Result<Arc<dyn MessageStore>> {
    #[cfg(feature = "mongo")]
    if let Some(url) = &config.database_url {
        let name = config.database_name.as_deref();
        let mongo = Arc::new(
            store::MongoMessageStore::connect(
                url.expose(),
                name,
                "chat-service",
                config.db_timeout,
                config.durability,
            )
            .await?,
        );
        let indexing = mongo.clone();
        tokio::spawn(async move { indexing.ensure_indexes_with_retry().await });
        return Ok(mongo);
    }
    let path = config.common.data_dir.join("chat.redb");
    tracing::info!(path = %path.display(), "no DATABASE_URL: messages in an embedded file");
    let store = chat_common::local::open_retrying(|| EmbeddedMessageStore::open(&path)).await?;
    Ok(Arc::new(store))
}

/// Users whose send buckets one replica remembers (16 bytes each: 1 MiB).
const SEND_LIMIT_SLOTS: usize = 65_536;

/// chat-service's own metrics.
#[derive(Clone)]
pub struct ChatMetrics {
    pub messages: prometheus::IntCounter,
    pub published: prometheus::IntCounterVec,
    pub publish_seconds: prometheus::Histogram,
    pub republished: prometheus::IntCounter,
}

impl ChatMetrics {
    pub fn new() -> anyhow::Result<Self> {
        Ok(Self {
            messages: prometheus::IntCounter::new(
                "chat_messages_stored_total",
                "Messages stored (each acknowledged with 201).",
            )?,
            published: metrics::counter_vec(
                "chat_events_published_total",
                "new_message events by publish result (ok: confirmed by the broker).",
                &["result"],
            ),
            publish_seconds: metrics::histogram(
                "chat_publish_confirm_seconds",
                "Time from publish to broker confirm.",
                metrics::LATENCY_BUCKETS,
            ),
            republished: prometheus::IntCounter::new(
                "chat_events_republished_total",
                "Events published again by the outbox sweeper (left unconfirmed by their send).",
            )?,
        })
    }
}

#[derive(Clone)]
pub struct AppState {
    /// Reads: history pages, catch-up, idempotent replays and readiness.
    pub store: Arc<dyn MessageStore>,
    /// Writes: every send, batched (group commit).
    pub writer: MessageWriter,
    /// Events: published at once, and again until confirmed.
    pub outbox: Outbox,
    pub directory: UserDirectory,
    pub verifier: Arc<TokenVerifier>,
    pub max_message_chars: usize,
    /// Each user's sends (`SEND_RATE_PER_USER`, `SEND_BURST`).
    pub send_limit: Arc<chat_common::limiter::Limiter>,
    pub http_metrics: HttpMetrics,
    pub metrics: ChatMetrics,
    pub limits: Limits,
    pub cors: chat_common::http::Cors,
}

impl FromRef<AppState> for Arc<TokenVerifier> {
    fn from_ref(state: &AppState) -> Self {
        state.verifier.clone()
    }
}

impl AppState {
    pub fn new(
        config: &Config,
        store: Arc<dyn MessageStore>,
        publisher: Arc<dyn EventPublisher>,
    ) -> anyhow::Result<Self> {
        let http_metrics = HttpMetrics::new("chat");
        let metrics = ChatMetrics::new()?;
        http_metrics.register(metrics.messages.clone());
        http_metrics.register(metrics.published.clone());
        http_metrics.register(metrics.publish_seconds.clone());
        http_metrics.register(metrics.republished.clone());
        let directory = UserDirectory::for_service(
            "chat-service",
            "chat",
            &config.jwt,
            &config.auth_service_url,
            DirectoryConfig::default(),
            &http_metrics,
        )?;
        Ok(Self {
            writer: MessageWriter::start(
                &store,
                config.write_concurrency,
                config.write_batch,
                Outbox::lease(config.publish_timeout),
            ),
            outbox: Outbox::start(
                store.clone(),
                publisher,
                metrics.clone(),
                config.publish_timeout,
                config.outbox_interval,
            ),
            store,
            directory,
            verifier: Arc::new(config.jwt.verifier()),
            max_message_chars: config.max_message_chars,
            send_limit: Arc::new(chat_common::limiter::Limiter::new(
                config.send_burst,
                std::time::Duration::from_secs(1) / config.send_rate,
                SEND_LIMIT_SLOTS,
            )),
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

pub fn router(state: AppState) -> Router {
    let metrics = state.http_metrics.clone();
    let limits = state.limits;
    let cors = state.cors.clone();
    let routes = Router::new()
        .route("/chat/send", post(handlers::send))
        .route("/chat/history", get(handlers::history))
        .route("/chat/messages", get(handlers::messages))
        .route("/chat/conversations", get(handlers::conversations))
        .route("/chat/read", post(handlers::read))
        .route("/readyz", get(handlers::readyz))
        .route("/openapi.json", get(openapi_json))
        .with_state(state);
    chat_common::http::finish_router(routes, &metrics, limits, &cors)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_env(&Vars(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<Vec<_>>(),
        ))
    }

    #[cfg(all(feature = "mongo", feature = "amqp"))]
    #[test]
    fn debug_of_the_config_shows_no_credentials() {
        let secret = "s".repeat(40);
        let config = config(&[
            ("DATABASE_URL", "mongodb://root:hunter2@db:27017/chat"),
            ("RABBITMQ_URL", "amqp://chat:hunter2@mq:5672/%2f"),
            ("JWT_SECRET", &secret),
        ])
        .unwrap();
        let shown = format!("{config:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains(&secret),
            "{shown}"
        );
        assert!(shown.contains("mongodb://***@db:27017/chat"), "{shown}");
        assert_eq!(
            config.database_url.unwrap().expose(),
            "mongodb://root:hunter2@db:27017/chat"
        );
    }

    #[cfg(all(feature = "mongo", feature = "amqp"))]
    #[test]
    fn servers_are_required_outside_development_mode_and_limits_above_zero() {
        let secret = "s".repeat(40);
        let base = [
            ("DATABASE_URL", "mongodb://db:27017/chat"),
            ("RABBITMQ_URL", "amqp://mq:5672"),
            ("JWT_SECRET", secret.as_str()),
        ];
        assert!(config(&base).is_ok());
        for missing in ["DATABASE_URL", "RABBITMQ_URL"] {
            let without: Vec<_> = base
                .iter()
                .copied()
                .filter(|(k, _)| *k != missing)
                .collect();
            let err = config(&without).unwrap_err().to_string();
            assert!(err.contains(missing), "{err}");
            let mut dev = without.clone();
            dev.push(("CHAT_DEV_MODE", "true"));
            assert!(
                config(&dev).is_ok(),
                "development mode runs without {missing}"
            );
        }
        for (name, zero) in [
            ("PUBLISH_TIMEOUT", "0s"),
            ("DB_TIMEOUT", "0"),
            ("WRITE_BATCH", "0"),
            ("WRITE_CONCURRENCY", "0"),
            ("MAX_MESSAGE_CHARS", "0"),
            ("REQUEST_TIMEOUT", "0ms"),
            ("MAX_BODY_BYTES", "0"),
        ] {
            let mut pairs = base.to_vec();
            pairs.push((name, zero));
            let err = config(&pairs).unwrap_err().to_string();
            assert!(err.contains(name), "{name}={zero}: {err}");
        }
    }

    /// Built without a backend (`cargo test -p chat-service --no-default-features`, which
    /// tests/run.sh runs), its variable stops start-up naming the feature, never ignored.
    #[cfg(not(all(feature = "mongo", feature = "amqp")))]
    #[test]
    fn a_backend_left_out_of_the_build_is_refused_naming_its_feature() {
        let secret = "s".repeat(40);
        for (name, value, feature) in [
            (
                "DATABASE_URL",
                "mongodb://root:hunter2@db:27017/chat",
                "mongo",
            ),
            ("RABBITMQ_URL", "amqp://chat:hunter2@mq:5672/%2f", "amqp"),
        ] {
            if (feature == "mongo" && cfg!(feature = "mongo"))
                || (feature == "amqp" && cfg!(feature = "amqp"))
            {
                continue;
            }
            let err = config(&[
                ("CHAT_DEV_MODE", "true"),
                ("JWT_SECRET", &secret),
                (name, value),
            ])
            .unwrap_err()
            .to_string();
            assert!(
                err.contains(name) && err.contains(&format!("--features {feature}")),
                "{err}"
            );
            assert!(!err.contains("hunter2"), "{err}");
        }
    }
}
