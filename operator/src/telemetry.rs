//! The operator's metrics and its small HTTP server (`/metrics`, `/healthz`).

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{Router, extract::State, http::header, response::IntoResponse, routing::get};
use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry, TextEncoder,
};

/// Reconcile counters and timings.
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Registry,
    pub reconciles: IntCounter,
    pub failures: IntCounterVec,
    pub duration: Histogram,
    /// Watches that failed (a missing CRD, RBAC refusing a kind): the operator goes blind.
    pub watch_errors: IntCounter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let reconciles = IntCounter::new(
            "chat_operator_reconciles_total",
            "ChatCluster reconciles started.",
        )
        .expect("static metric definition");
        let failures = IntCounterVec::new(
            Opts::new(
                "chat_operator_reconcile_failures_total",
                "ChatCluster reconciles that failed, by reason.",
            ),
            &["reason"],
        )
        .expect("static metric definition");
        let duration = Histogram::with_opts(
            HistogramOpts::new(
                "chat_operator_reconcile_duration_seconds",
                "Time one ChatCluster reconcile took.",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
        )
        .expect("static metric definition");
        let watch_errors = IntCounter::new(
            "chat_operator_watch_errors_total",
            "Errors of the watches that trigger reconciles (each is retried with backoff).",
        )
        .expect("static metric definition");
        registry
            .register(Box::new(watch_errors.clone()))
            .expect("unique metric");
        registry
            .register(Box::new(reconciles.clone()))
            .expect("unique metric");
        registry
            .register(Box::new(failures.clone()))
            .expect("unique metric");
        registry
            .register(Box::new(duration.clone()))
            .expect("unique metric");
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("unique metric");
        Self {
            registry,
            reconciles,
            failures,
            duration,
            watch_errors,
        }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

async fn render_metrics(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics.render(),
    )
}

/// `/metrics` and `/healthz` (the process is alive and its runtime answers).
pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(|| async { r#"{"status":"ok"}"# }))
        .with_state(metrics)
}

/// Serves the router on `addr` until `shutdown` resolves.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "serving /metrics and /healthz");
    axum::serve(listener, router(metrics))
        .with_graceful_shutdown(shutdown)
        .await
}

/// Delay before retrying a ChatCluster after `failures` consecutive failed reconciles: 1 s,
/// doubling, at most 5 minutes.
pub fn backoff(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.saturating_sub(1).min(9)).min(Duration::from_secs(300))
}
