//! chat-service: stores messages and publishes `new_message` events to the fanout exchange.
//! A drop-in for the original's chat service, with the sender bound to the token, reads limited
//! to the conversation's participants, pagination, and publisher confirms.

pub mod error;
pub mod publisher;
pub mod store;

mod handlers;

use std::{future::Future, sync::Arc, time::Duration};

use axum::{Router, extract::FromRef, routing::get, routing::post};
use chat_common::{
    config::{ConfigError, Source, Vars},
    directory::{DirectoryConfig, UserDirectory},
    http::Limits,
    jwt::{JwtSettings, TokenVerifier},
    metrics::{self, HttpMetrics},
};
use tokio::net::TcpListener;

pub use error::ChatError;
use publisher::EventPublisher;
use store::MessageStore;

/// chat-service configuration, from the environment.
#[derive(Debug, Clone)]
pub struct Config {
    /// `PORT` (default 5002).
    pub port: u16,
    /// `DATABASE_URL`, a MongoDB URL whose path names the database (`mongodb://db:27017/chat`).
    pub database_url: Option<String>,
    /// `DATABASE_NAME`: as for auth-service (overrides `DATABASE_URL`'s path).
    pub database_name: Option<String>,
    /// `RABBITMQ_URL` (`amqp://rabbitmq:5672`).
    pub rabbitmq_url: Option<String>,
    pub jwt: JwtSettings,
    /// `AUTH_SERVICE_URL` (default `http://localhost:5001`).
    pub auth_service_url: String,
    /// `EXCHANGE_NAME` (default `chat_exchange`).
    pub exchange: String,
    /// `MAX_MESSAGE_CHARS` (default 4000).
    pub max_message_chars: usize,
    /// `PUBLISH_TIMEOUT` (default 5 s): longest wait for a publisher confirm.
    pub publish_timeout: Duration,
    /// `DB_TIMEOUT` (default 5 s).
    pub db_timeout: Duration,
    /// `WRITE_BATCH` (default 256): most messages written together (group commit).
    pub write_batch: usize,
    /// `WRITE_CONCURRENCY` (default 4): batches written at once.
    pub write_concurrency: usize,
    /// `CHAT_DEV_MODE`, `DATA_DIR`: as for auth-service.
    pub dev_mode: bool,
    pub data_dir: std::path::PathBuf,
    pub limits: Limits,
}

impl Config {
    pub fn from_env<S: Source>(vars: &Vars<S>) -> Result<Self, ConfigError> {
        let defaults = Limits::default();
        Ok(Self {
            port: vars.parse_or("PORT", 5002)?,
            database_url: vars.string("DATABASE_URL"),
            database_name: vars.database_name("DATABASE_NAME")?,
            rabbitmq_url: vars.amqp_url("RABBITMQ_URL")?,
            jwt: JwtSettings::from_env(vars)?,
            auth_service_url: vars.http_url_or("AUTH_SERVICE_URL", "http://localhost:5001")?,
            exchange: vars
                .string("EXCHANGE_NAME")
                .unwrap_or_else(|| chat_common::bus::DEFAULT_EXCHANGE.to_owned()),
            max_message_chars: vars.positive_or("MAX_MESSAGE_CHARS", 4000)?,
            publish_timeout: vars.duration_or("PUBLISH_TIMEOUT", Duration::from_secs(5))?,
            db_timeout: vars.duration_or("DB_TIMEOUT", Duration::from_secs(5))?,
            write_batch: vars.positive_or("WRITE_BATCH", 256)?,
            write_concurrency: vars.positive_or("WRITE_CONCURRENCY", 4)?,
            dev_mode: vars.dev_mode()?,
            data_dir: vars
                .string("DATA_DIR")
                .unwrap_or_else(|| "data".to_owned())
                .into(),
            limits: Limits {
                body_bytes: vars.parse_or("MAX_BODY_BYTES", defaults.body_bytes)?,
                request_timeout: vars.duration_or("REQUEST_TIMEOUT", defaults.request_timeout)?,
            },
        })
    }
}

/// chat-service's own metrics.
#[derive(Clone)]
pub struct ChatMetrics {
    pub messages: prometheus::IntCounter,
    pub published: prometheus::IntCounterVec,
    pub publish_seconds: prometheus::Histogram,
}

#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn MessageStore>,
    pub publisher: Arc<dyn EventPublisher>,
    pub directory: UserDirectory,
    pub verifier: Arc<TokenVerifier>,
    pub max_message_chars: usize,
    pub http_metrics: HttpMetrics,
    pub metrics: ChatMetrics,
    pub limits: Limits,
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
        let metrics = ChatMetrics {
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
        };
        http_metrics.register(metrics.messages.clone());
        http_metrics.register(metrics.published.clone());
        http_metrics.register(metrics.publish_seconds.clone());
        let directory = UserDirectory::for_service(
            "chat-service",
            "chat",
            &config.jwt,
            &config.auth_service_url,
            DirectoryConfig::default(),
            &http_metrics,
        )?;
        Ok(Self {
            store: store::BatchingStore::wrap(store, config.write_concurrency, config.write_batch),
            publisher,
            directory,
            verifier: Arc::new(config.jwt.verifier()),
            max_message_chars: config.max_message_chars,
            http_metrics,
            metrics,
            limits: config.limits,
        })
    }
}

pub fn router(state: AppState) -> Router {
    let metrics = state.http_metrics.clone();
    let limits = state.limits;
    let routes = Router::new()
        .route("/chat/send", post(handlers::send))
        .route("/chat/history", get(handlers::history))
        .route("/readyz", get(handlers::readyz))
        .with_state(state);
    chat_common::http::finish_router(routes, &metrics, limits)
}

pub async fn run<F>(listener: TcpListener, state: AppState, shutdown: F) -> std::io::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    chat_common::http::serve(listener, router(state), shutdown).await
}
