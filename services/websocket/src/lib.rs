//! websocket-service: delivers `new_message` events to users' open WebSockets, on every device.
//! A drop-in for the original's `ws://host:5003?token=<JWT>`, with many sockets per user, bounded
//! per-socket queues, pings, token expiry and a consumer that survives broker restarts.

mod bucket;
pub mod catchup;
pub mod consumer;
pub mod hub;
mod outbox;
pub mod signals;
mod socket;
mod web;

use std::{
    future::Future,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use axum::{Router, extract::State, response::Response, routing::get};
use catchup::ChatClient;
use chat_common::{
    bus::LocalBus,
    config::{CommonConfig, ConfigError, SecretUrl, Source, Vars},
    http::{Limits, readiness},
    jwt::{JwtSettings, TokenVerifier},
    metrics::{self, HttpMetrics},
    server::{Listeners, ServerConfig, serve},
};
pub use consumer::EventSource;
use hub::{Hub, SocketCaps};
pub use socket::{CLOSE_GOING_AWAY, CLOSE_POLICY, CLOSE_TRY_AGAIN, CLOSE_UNAUTHORIZED};
use tokio::sync::watch;

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
    /// `RESUME_MARGIN` (default 5 s): how far before its starting id a catch-up reads, for
    /// messages stored after a newer one was delivered.
    pub resume_margin: Duration,
    /// `WS_MAX_SOCKETS` and `WS_MAX_SOCKETS_PER_USER`.
    pub caps: SocketCaps,
    /// `WS_MAX_FRAMES_PER_SEC` (default 20, bursts of twice that): a client sending faster is
    /// closed with 1008.
    pub max_frames_per_sec: u32,
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
            resume_margin: Duration::from_secs(5),
            caps: SocketCaps::default(),
            max_frames_per_sec: 20,
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
    /// `PORT` (default 5003), `BIND_ADDR`, `MAX_BODY_BYTES`, `REQUEST_TIMEOUT`, `CHAT_DEV_MODE`,
    /// `DATA_DIR`, `LOG_FORMAT`: as for every service (the limits apply to its HTTP requests,
    /// the upgrade included).
    pub common: CommonConfig,
    /// `RABBITMQ_URL`. Required, except in development mode, where events then come from
    /// [`Self::local_bus`].
    pub rabbitmq_url: Option<SecretUrl>,
    /// The in-process bus events come from without `RABBITMQ_URL`: a bus of its own in
    /// development mode (nothing arrives from other processes); the standalone stack shares its
    /// chat-service's.
    pub local_bus: LocalBus,
    pub jwt: JwtSettings,
    /// `CHAT_SERVICE_URL` (default `http://localhost:5002`): where sockets read their catch-up.
    pub chat_service_url: String,
    /// `EXCHANGE_NAME` (default `chat_exchange`).
    pub exchange: String,
    /// `PREFETCH` (default 256): unacknowledged events in flight.
    pub prefetch: u16,
    pub socket: SocketConfig,
    /// `WEB_CLIENT` (default true): serve the web client at `/` to a plain GET.
    pub web_client: bool,
}

impl Config {
    pub fn from_env<S: Source>(vars: &Vars<S>) -> Result<Self, ConfigError> {
        let common = CommonConfig::from_env(vars, 5003)?;
        #[cfg(feature = "amqp")]
        let rabbitmq_url = vars.amqp_url("RABBITMQ_URL")?.map(SecretUrl::new);
        #[cfg(not(feature = "amqp"))]
        let rabbitmq_url = vars.unsupported("RABBITMQ_URL", "amqp")?;
        if rabbitmq_url.is_none() && !common.dev_mode {
            return Err(ConfigError::Missing("RABBITMQ_URL"));
        }
        let s = SocketConfig::default();
        Ok(Self {
            rabbitmq_url,
            local_bus: LocalBus::default(),
            jwt: JwtSettings::from_env(vars)?,
            chat_service_url: vars.http_url_or("CHAT_SERVICE_URL", "http://localhost:5002")?,
            exchange: vars
                .string("EXCHANGE_NAME")
                .unwrap_or_else(|| chat_common::bus::DEFAULT_EXCHANGE.to_owned()),
            prefetch: vars.positive_or("PREFETCH", 256)?,
            web_client: vars.flag_or("WEB_CLIENT", true)?,
            socket: SocketConfig {
                ping_interval: vars.nonzero_duration_or("WS_PING_INTERVAL", s.ping_interval)?,
                queue: vars.positive_or("WS_QUEUE", s.queue)?,
                max_message_bytes: vars.positive_or("WS_MAX_MESSAGE_BYTES", s.max_message_bytes)?,
                write_timeout: vars.nonzero_duration_or("WS_WRITE_TIMEOUT", s.write_timeout)?,
                resume_margin: vars.nonzero_duration_or("RESUME_MARGIN", s.resume_margin)?,
                caps: SocketCaps {
                    per_replica: vars.positive_or("WS_MAX_SOCKETS", s.caps.per_replica)?,
                    per_user: vars.positive_or("WS_MAX_SOCKETS_PER_USER", s.caps.per_user)?,
                },
                max_frames_per_sec: vars
                    .positive_or("WS_MAX_FRAMES_PER_SEC", s.max_frames_per_sec)?,
                ..s
            },
            common,
        })
    }

    /// Where events come from: RabbitMQ at `RABBITMQ_URL`, else the in-process bus.
    pub fn event_source(&self) -> EventSource {
        #[cfg(feature = "amqp")]
        if let Some(url) = &self.rabbitmq_url {
            return EventSource::Amqp {
                url: url.expose().to_owned(),
                exchange: self.exchange.clone(),
                prefetch: self.prefetch,
            };
        }
        EventSource::Local(self.local_bus.clone())
    }
}

/// websocket-service ready to serve: its state, its event consumer (started) and its bound
/// listener, built from the configuration alone. `main`, the standalone stack and the tests all
/// start it this way.
pub struct App {
    listeners: Listeners,
    server: ServerConfig,
    state: AppState,
}

impl App {
    pub async fn build(config: &Config) -> anyhow::Result<Self> {
        let listeners = Listeners::bind(config.common.bind, &config.common.server).await?;
        let state = AppState::new(config)?;
        if config.rabbitmq_url.is_none() {
            tracing::info!("no RABBITMQ_URL: events come from the in-process bus");
        }
        state.start_consumer(config.event_source());
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

    /// The connection registry (tests signal interruptions through it).
    pub fn hub(&self) -> Arc<Hub> {
        self.state.hub.clone()
    }

    /// Serves until `shutdown` resolves; then closes every socket with 1001 and stops consuming.
    pub async fn run<F>(self, shutdown: F) -> std::io::Result<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let stop = self.state.stop.clone();
        let metrics = self.state.http_metrics.clone();
        let hub = self.state.hub.clone();
        serve(
            self.listeners,
            router(self.state),
            &metrics,
            &self.server,
            async move {
                shutdown.await;
                let _ = stop.send(true);
            },
        )
        .await?;
        // Upgraded sockets are no longer the HTTP server's: wait for their tasks to send 1001
        // and close, so that a SIGTERM never exits under them.
        if !hub.closed_within(SOCKETS_CLOSE_WITHIN).await {
            tracing::warn!(open = hub.open_sockets(), "sockets still open at exit");
        }
        Ok(())
    }
}

/// How long shutdown waits for open sockets to be closed (1001) before the process exits: each
/// socket's close is a frame and a TCP close, but a stalled client may hold its write for up to
/// a second.
const SOCKETS_CLOSE_WITHIN: std::time::Duration = std::time::Duration::from_secs(5);

/// websocket-service's own metrics.
#[derive(Clone)]
pub struct WsMetrics {
    pub open_sockets: prometheus::IntGauge,
    pub deliveries: prometheus::IntCounter,
    pub slow_dropped: prometheus::IntCounter,
    pub events: prometheus::IntCounterVec,
    pub latency: prometheus::Histogram,
    pub interruptions: prometheus::IntCounter,
    pub catch_up: prometheus::IntCounter,
    pub catch_up_failures: prometheus::IntCounter,
    pub refused: prometheus::IntCounter,
    pub evicted: prometheus::IntCounter,
    pub flooding: prometheus::IntCounter,
    pub typing: prometheus::IntCounterVec,
    pub client_errors: prometheus::IntCounter,
}

#[derive(Clone)]
pub struct AppState {
    pub hub: Arc<Hub>,
    /// chat-service's catch-up read.
    pub chat: ChatClient,
    pub verifier: Arc<TokenVerifier>,
    pub config: SocketConfig,
    pub consumer_ready: Arc<AtomicBool>,
    pub shutdown: watch::Receiver<bool>,
    stop: Arc<watch::Sender<bool>>,
    pub http_metrics: HttpMetrics,
    /// Where typing events are published.
    pub signals: signals::SignalBus,
    web_client: bool,
    limits: Limits,
    /// Shared: every socket's task holds a clone of the state.
    cors: Arc<chat_common::http::Cors>,
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
            interruptions: prometheus::IntCounter::new(
                "ws_event_interruptions_total",
                "Times the event consumer started over on a fresh queue (open sockets then catch up).",
            )?,
            catch_up: prometheus::IntCounter::new(
                "ws_catch_up_messages_total",
                "Messages read from chat-service by catch-ups (resume, interruption), before dropping repeats.",
            )?,
            catch_up_failures: prometheus::IntCounter::new(
                "ws_catch_up_failures_total",
                "Catch-ups that could not be read; their sockets were closed with 1013.",
            )?,
            refused: prometheus::IntCounter::new(
                "ws_sockets_refused_total",
                "Upgrades refused with 503 because the replica held WS_MAX_SOCKETS.",
            )?,
            evicted: prometheus::IntCounter::new(
                "ws_sockets_evicted_total",
                "Sockets closed (4008) because their user opened more than WS_MAX_SOCKETS_PER_USER.",
            )?,
            flooding: prometheus::IntCounter::new(
                "ws_sockets_flooding_total",
                "Sockets closed (1008) for sending more than WS_MAX_FRAMES_PER_SEC.",
            )?,
            typing: metrics::counter_vec(
                "ws_typing_total",
                "Typing frames from clients, by outcome (forwarded, rate_limited, no_conversation, unavailable).",
                &["outcome"],
            ),
            client_errors: prometheus::IntCounter::new(
                "ws_client_frame_errors_total",
                "Client frames answered with an error frame (malformed, unknown type, binary).",
            )?,
        };
        http_metrics.register(metrics.typing.clone());
        http_metrics.register(metrics.client_errors.clone());
        http_metrics.register(metrics.refused.clone());
        http_metrics.register(metrics.evicted.clone());
        http_metrics.register(metrics.flooding.clone());
        http_metrics.register(metrics.open_sockets.clone());
        http_metrics.register(metrics.deliveries.clone());
        http_metrics.register(metrics.slow_dropped.clone());
        http_metrics.register(metrics.events.clone());
        http_metrics.register(metrics.latency.clone());
        http_metrics.register(metrics.interruptions.clone());
        http_metrics.register(metrics.catch_up.clone());
        http_metrics.register(metrics.catch_up_failures.clone());
        let (stop, shutdown) = watch::channel(false);
        Ok(Self {
            hub: Arc::new(Hub::new(metrics, config.socket.queue, config.socket.caps)),
            chat: ChatClient::new(
                &config.chat_service_url,
                config.common.limits.request_timeout,
            )?,
            verifier: Arc::new(config.jwt.verifier()),
            config: config.socket,
            consumer_ready: Arc::new(AtomicBool::new(false)),
            shutdown,
            stop: Arc::new(stop),
            http_metrics,
            signals: config.event_source().signal_bus(),
            web_client: config.web_client,
            limits: config.common.limits,
            cors: Arc::new(config.common.cors.clone()),
        })
    }

    /// Starts consuming events from `source` in the background (until shutdown).
    pub fn start_consumer(&self, source: EventSource) {
        tokio::spawn(consumer::run(
            source,
            self.signals.clone(),
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
    let cors = state.cors.clone();
    let mut routes = Router::new()
        .route("/", get(socket::upgrade))
        .route("/readyz", get(readyz));
    if state.web_client {
        routes = routes
            .route("/app.js", get(web::app))
            .route("/style.css", get(web::style));
    }
    let routes = routes.with_state(state);
    chat_common::http::finish_router(routes, &metrics, limits, &cors)
}
