use std::{process::ExitCode, sync::Arc};

use chat_common::bus::LocalBus;
use chat_service::{
    AppState, Config,
    publisher::{AmqpPublisher, EventPublisher, LocalPublisher},
    store::{EmbeddedMessageStore, MessageStore, MongoMessageStore},
};

#[tokio::main]
async fn main() -> ExitCode {
    chat_common::cli::main(
        "chat-service",
        "configured by environment variables (PORT, DATABASE_URL, RABBITMQ_URL, JWT_SECRET, AUTH_SERVICE_URL, ...; see the README)",
        Config::from_env,
        run,
    )
    .await
}

async fn run(config: Config) -> anyhow::Result<()> {
    let store: Arc<dyn MessageStore> = match &config.database_url {
        Some(url) => {
            let name = config.database_name.as_deref();
            let mongo = Arc::new(
                MongoMessageStore::connect(url, name, "chat-service", config.db_timeout).await?,
            );
            let indexing = mongo.clone();
            tokio::spawn(async move { indexing.ensure_indexes_with_retry().await });
            mongo
        }
        None if config.dev_mode => Arc::new(EmbeddedMessageStore::open(
            &config.data_dir.join("chat.redb"),
        )?),
        None => anyhow::bail!("DATABASE_URL is required (e.g. mongodb://db:27017/chat)"),
    };
    let publisher: Arc<dyn EventPublisher> = match &config.rabbitmq_url {
        Some(url) => {
            AmqpPublisher::start(url.clone(), config.exchange.clone(), config.publish_timeout)
        }
        None if config.dev_mode => {
            tracing::warn!("CHAT_DEV_MODE without RABBITMQ_URL: events stay in this process");
            Arc::new(LocalPublisher(LocalBus::default()))
        }
        None => anyhow::bail!("RABBITMQ_URL is required (e.g. amqp://rabbitmq:5672)"),
    };
    let state = AppState::new(&config, store, publisher)?;
    let listener = tokio::net::TcpListener::bind(("0.0.0.0", config.port)).await?;
    chat_service::run(listener, state, chat_common::shutdown::signal()).await?;
    Ok(())
}
