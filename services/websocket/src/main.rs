use std::process::ExitCode;

use chat_common::bus::LocalBus;
use websocket_service::{AppState, Config, EventSource};

#[tokio::main]
async fn main() -> ExitCode {
    chat_common::cli::main(
        "websocket-service",
        "configured by environment variables (PORT, RABBITMQ_URL, JWT_SECRET, AUTH_SERVICE_URL, ...; see the README)",
        Config::from_env,
        run,
    )
    .await
}

async fn run(config: Config) -> anyhow::Result<()> {
    let source = match &config.rabbitmq_url {
        Some(url) => EventSource::Amqp {
            url: url.clone(),
            exchange: config.exchange.clone(),
            prefetch: config.prefetch,
        },
        None if config.dev_mode => {
            tracing::warn!(
                "CHAT_DEV_MODE without RABBITMQ_URL: no events will arrive from other processes"
            );
            EventSource::Local(LocalBus::default())
        }
        None => anyhow::bail!("RABBITMQ_URL is required (e.g. amqp://rabbitmq:5672)"),
    };
    let state = AppState::new(&config)?;
    state.start_consumer(source);
    let listener = tokio::net::TcpListener::bind(("0.0.0.0", config.port)).await?;
    websocket_service::run(listener, state, chat_common::shutdown::signal()).await?;
    Ok(())
}
