use std::{process::ExitCode, sync::Arc};

use auth_service::{
    AppState, Config, migrate_passwords,
    store::{EmbeddedUserStore, MongoUserStore, UserStore},
};
use chat_common::config::{Env, Vars};
use clap::{Parser, Subcommand};

/// auth-service: registration, login and JWTs for the chat backend.
///
/// Configured by environment variables (PORT, DATABASE_URL, JWT_SECRET, ...; see the README).
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve HTTP (the default).
    Serve,
    /// Replace every plaintext password left by the original system with its argon2id hash.
    MigratePasswords {
        /// Only count what would be migrated.
        #[arg(long)]
        dry_run: bool,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    chat_common::telemetry::init();
    let cli = Cli::parse();
    let config = match Config::from_env(&Vars(Env)) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("invalid configuration: {e}");
            eprintln!("auth-service: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    match run(cli.command.unwrap_or(Command::Serve), config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("auth-service: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command, config: Config) -> anyhow::Result<()> {
    let store: Arc<dyn UserStore> = match &config.database_url {
        Some(url) => {
            let name = config.database_name.as_deref();
            let mongo = Arc::new(
                MongoUserStore::connect(url, name, "auth-service", config.db_timeout).await?,
            );
            match command {
                Command::Serve => {
                    let indexing = mongo.clone();
                    tokio::spawn(async move { indexing.ensure_indexes_with_retry().await });
                }
                Command::MigratePasswords { .. } => mongo.ensure_indexes().await?,
            }
            mongo
        }
        None if config.dev_mode => {
            let path = config.data_dir.join("auth.redb");
            tracing::warn!(path = %path.display(), "CHAT_DEV_MODE without DATABASE_URL: embedded user store");
            Arc::new(EmbeddedUserStore::open(&path)?)
        }
        None => anyhow::bail!("DATABASE_URL is required (e.g. mongodb://db:27017/auth)"),
    };
    let state = AppState::new(&config, store.clone())?;
    match command {
        Command::Serve => {
            let listener = tokio::net::TcpListener::bind(("0.0.0.0", config.port)).await?;
            auth_service::run(listener, state, chat_common::shutdown::signal()).await?;
        }
        Command::MigratePasswords { dry_run } => {
            let report = migrate_passwords(store.as_ref(), &state.hasher, dry_run).await?;
            println!("{}", serde_json::to_string(&report)?);
        }
    }
    Ok(())
}
