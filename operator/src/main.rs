//! `chat-operator`: runs the ChatCluster controller against the cluster of the current
//! kubeconfig (or the in-cluster service account), with `/metrics` and `/healthz` on
//! `METRICS_PORT`.

use std::{net::SocketAddr, process::ExitCode, sync::Arc};

use chat_operator::{controller, plan::OperatorSettings, telemetry};
use tokio::sync::watch;

struct Config {
    addr: SocketAddr,
    namespace: Option<String>,
    settings: OperatorSettings,
    json_logs: bool,
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

impl Config {
    fn from_env() -> Result<Self, String> {
        let port: u16 = match var("METRICS_PORT") {
            None => 8080,
            Some(v) => v
                .trim()
                .parse()
                .map_err(|_| format!("METRICS_PORT must be a port number, got {v:?}"))?,
        };
        let bind = var("BIND_ADDR").unwrap_or_else(|| "0.0.0.0".into());
        let ip = bind
            .parse()
            .map_err(|_| format!("BIND_ADDR must be an IP address, got {bind:?}"))?;
        let defaults = OperatorSettings::default();
        let json_logs = match var("LOG_FORMAT").as_deref() {
            None | Some("text") => false,
            Some("json") => true,
            Some(other) => return Err(format!("LOG_FORMAT must be text or json, got {other:?}")),
        };
        Ok(Config {
            addr: SocketAddr::new(ip, port),
            namespace: var("WATCH_NAMESPACE"),
            settings: OperatorSettings {
                cluster_domain: var("CLUSTER_DOMAIN").unwrap_or(defaults.cluster_domain),
                service_image_tag: var("SERVICE_IMAGE_TAG").unwrap_or(defaults.service_image_tag),
            },
            json_logs,
        })
    }
}

fn init_logs(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,kube=warn".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

#[tokio::main]
async fn main() -> ExitCode {
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("chat-operator: {e}");
            return ExitCode::from(2);
        }
    };
    init_logs(config.json_logs);
    let client = match kube::Client::try_default().await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(
                error = %e,
                "no Kubernetes cluster configured: set KUBECONFIG (or ~/.kube/config), or run in a pod with a service account"
            );
            return ExitCode::from(1);
        }
    };
    let metrics = Arc::new(telemetry::Metrics::new());
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let server = tokio::spawn(telemetry::serve(
        config.addr,
        metrics.clone(),
        stopped(stop_rx.clone()),
    ));
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down");
        let _ = stop_tx.send(true);
    });
    tracing::info!(
        namespace = config.namespace.as_deref().unwrap_or("<all>"),
        "chat-operator starting"
    );
    controller::run(
        client,
        config.namespace,
        config.settings,
        metrics,
        stopped(stop_rx),
    )
    .await;
    match server.await {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "the metrics server failed");
            ExitCode::from(1)
        }
        Err(_) => ExitCode::from(1),
    }
}
