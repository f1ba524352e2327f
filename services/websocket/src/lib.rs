//! websocket-service: delivers `new_message` events to users' open WebSockets, on every device.
//! A drop-in for the original's `ws://host:5003?token=<JWT>`, with many sockets per user, bounded
//! per-socket queues, pings, token expiry and a consumer that survives broker restarts.

pub mod consumer;
pub mod hub;
mod outbox;
mod socket;

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use axum::{Router, extract::State, response::Response, routing::get};
use chat_common::{
    config::{ConfigError, Source, Vars},
    directory::{DirectoryConfig, UserDirectory},
    http::{Limits, readiness},
    jwt::{JwtSettings, TokenVerifier},
    metrics::{self, HttpMetrics},
};
pub use consumer::EventSource;
use hub::Hub;
pub use socket::{CLOSE_GOING_AWAY, CLOSE_POLICY, CLOSE_UNAUTHORIZED};
use tokio::{net::TcpListener, sync::watch};

/// Socket tuning.
#[derive(Debug, Clone, Copy)]
pub struct SocketConfig {
    /// `WS_PING_INTERVAL` (default 25 s); a socket that answers nothing for two intervals is dropped.
    pub ping_interval: Duration,
    /// `WS_QUEUE` (default 256): frames a socket may have pending before it is dropped (1008).
    pub queue: usize,
    /// `WS_MAX_MESSAGE_BYTES` (default 64 KiB): largest incoming message.
    pub max_message_bytes: usize,
    /// `WS_WRITE_TIMEOUT` (default 10 s): longest a single write may block.
    pub write_timeout: Duration,
    pub read_buffer_bytes: usize,
    pub write_buffer_bytes: usize,
    pub max_write_buffer_bytes: usize,
}

impl Default for SocketConfig {
    fn default() -> Self {
        Self {
            ping_interval: Duration::from_secs(25),
            queue: 256,
            max_message_bytes: 64 * 1024,
            write_timeout: Duration::from_secs(10),
            // Clients send little (pongs); larger messages grow the buffer as needed.
            read_buffer_bytes: 256,
            write_buffer_bytes: 0,
            max_write_buffer_bytes: 256 * 1024,
        }
    }
}

/// websocket-service configuration, from the environment.
#[derive(Debug, Clone)]
pub struct Config {
    /// `PORT` (default 5003).
    pub port: u16,
    /// `RABBITMQ_URL`.
    pub rabbitmq_url: Option<String>,
    pub jwt: JwtSettings,
    /// `AUTH_SERVICE_URL` (default `http://localhost:5001`).
    pub auth_service_url: String,
    /// `EXCHANGE_NAME` (default `chat_exchange`).
    pub exchange: String,
    /// `PREFETCH` (default 256): unacknowledged events in flight.
    pub prefetch: u16,
    /// `LOOKUP_CACHE_SIZE` (default 100000) and `LOOKUP_CACHE_TTL` (default 10 min).
    pub directory: DirectoryConfig,
    pub socket: SocketConfig,
    pub dev_mode: bool,
    pub limits: Limits,
}

impl Config {
    pub fn from_env<S: Source>(vars: &Vars<S>) -> Result<Self, ConfigError> {
        let d = DirectoryConfig::default();
        let s = SocketConfig::default();
        Ok(Self {
            port: vars.parse_or("PORT", 5003)?,
            rabbitmq_url: vars.amqp_url("RABBITMQ_URL")?,
            jwt: JwtSettings::from_env(vars)?,
            auth_service_url: vars.http_url_or("AUTH_SERVICE_URL", "http://localhost:5001")?,
            exchange: vars
                .string("EXCHANGE_NAME")
                .unwrap_or_else(|| chat_common::bus::DEFAULT_EXCHANGE.to_owned()),
            prefetch: vars.positive_or("PREFETCH", 256)?,
            directory: DirectoryConfig {
                capacity: vars.parse_or("LOOKUP_CACHE_SIZE", d.capacity)?,
                ttl: vars.duration_or("LOOKUP_CACHE_TTL", d.ttl)?,
                ..d
            },
            socket: SocketConfig {
                ping_interval: vars.nonzero_duration_or("WS_PING_INTERVAL", s.ping_interval)?,
                queue: vars.positive_or("WS_QUEUE", s.queue)?,
                max_message_bytes: vars.parse_or("WS_MAX_MESSAGE_BYTES", s.max_message_bytes)?,
                write_timeout: vars.nonzero_duration_or("WS_WRITE_TIMEOUT", s.write_timeout)?,
                ..s
            },
            dev_mode: vars.dev_mode()?,
            limits: Limits::default(),
        })
    }
}

/// websocket-service's own metrics.
#[derive(Clone)]
pub struct WsMetrics {
    pub open_sockets: prometheus::IntGauge,
    pub deliveries: prometheus::IntCounter,
    pub slow_dropped: prometheus::IntCounter,
    pub events: prometheus::IntCounterVec,
    pub latency: prometheus::Histogram,
}

#[derive(Clone)]
pub struct AppState {
    pub hub: Arc<Hub>,
    pub verifier: Arc<TokenVerifier>,
    pub config: SocketConfig,
    pub consumer_ready: Arc<AtomicBool>,
    pub shutdown: watch::Receiver<bool>,
    stop: Arc<watch::Sender<bool>>,
    pub http_metrics: HttpMetrics,
    limits: Limits,
}

impl AppState {
    pub fn new(config: &Config) -> anyhow::Result<Self> {
        let http_metrics = HttpMetrics::new("websocket");
        let metrics = WsMetrics {
            open_sockets: metrics::gauge("ws_open_sockets", "WebSockets open on this replica."),
            deliveries: prometheus::IntCounter::new(
                "ws_deliveries_total",
                "Frames queued to sockets.",
            )?,
            slow_dropped: prometheus::IntCounter::new(
                "ws_slow_clients_dropped_total",
                "Sockets closed (1008) because their outgoing queue was full.",
            )?,
            events: metrics::counter_vec("ws_events_total", "Events consumed, by kind.", &["kind"]),
            latency: metrics::histogram(
                "ws_delivery_latency_seconds",
                "From the message's timestamp (set by chat-service) to its frame being queued.",
                metrics::LATENCY_BUCKETS,
            ),
        };
        http_metrics.register(metrics.open_sockets.clone());
        http_metrics.register(metrics.deliveries.clone());
        http_metrics.register(metrics.slow_dropped.clone());
        http_metrics.register(metrics.events.clone());
        http_metrics.register(metrics.latency.clone());
        let directory = UserDirectory::for_service(
            "websocket-service",
            "ws",
            &config.jwt,
            &config.auth_service_url,
            config.directory,
            &http_metrics,
        )?;
        let (stop, shutdown) = watch::channel(false);
        Ok(Self {
            hub: Arc::new(Hub::new(directory, metrics, config.socket.queue)),
            verifier: Arc::new(config.jwt.verifier()),
            config: config.socket,
            consumer_ready: Arc::new(AtomicBool::new(false)),
            shutdown,
            stop: Arc::new(stop),
            http_metrics,
            limits: config.limits,
        })
    }

    /// Starts consuming events from `source` in the background (until shutdown).
    pub fn start_consumer(&self, source: EventSource) {
        tokio::spawn(consumer::run(
            source,
            self.hub.clone(),
            self.consumer_ready.clone(),
            self.shutdown.clone(),
        ));
    }
}

async fn readyz(State(state): State<AppState>) -> Response {
    let consumer = if state.consumer_ready.load(Ordering::Acquire) {
        Ok(())
    } else {
        Err("event consumer not running".to_owned())
    };
    readiness(&[("consumer", consumer)])
}

pub fn router(state: AppState) -> Router {
    let metrics = state.http_metrics.clone();
    let limits = state.limits;
    let routes = Router::new()
        .route("/", get(socket::upgrade))
        .route("/readyz", get(readyz))
        .with_state(state);
    chat_common::http::finish_router(routes, &metrics, limits)
}

/// Serves until `shutdown` resolves; then closes every socket with 1001 and stops consuming.
pub async fn run<F>(listener: TcpListener, state: AppState, shutdown: F) -> std::io::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    let stop = state.stop.clone();
    let app = router(state);
    chat_common::http::serve(listener, app, async move {
        shutdown.await;
        let _ = stop.send(true);
    })
    .await
}
