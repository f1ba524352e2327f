//! auth-service: `auth-service [serve]`, or `auth-service migrate-passwords [--dry-run]`.

use std::process::ExitCode;

use auth_service::{App, AppState, Config, migrate_passwords, open_store};
use chat_common::cli::{self, Binary, Invocation, Subcommand};

const BINARY: Binary = Binary {
    name: "auth-service",
    version: env!("CARGO_PKG_VERSION"),
    about: "registration, login and JWTs for the chat backend; configured by environment \
            variables (PORT, DATABASE_URL, JWT_SECRET, ...; see the README)",
    subcommands: &[Subcommand {
        name: "migrate-passwords",
        about: "replace every plaintext password left by the original system with its argon2id hash, then exit",
        flags: &[("--dry-run", "only count what would be migrated")],
    }],
};

#[tokio::main]
async fn main() -> ExitCode {
    cli::main(BINARY, Config::from_env, |invocation, config| async move {
        match invocation {
            Invocation::Serve => {
                let app = App::build(&config).await?;
                app.run(chat_common::shutdown::signal()).await?;
            }
            Invocation::Run { flags, .. } => {
                let store = open_store(&config).await?;
                let state = AppState::new(&config, store.clone())?;
                let dry_run = flags.contains(&"--dry-run");
                let report = migrate_passwords(store.as_ref(), &state.hasher, dry_run).await?;
                println!("{}", serde_json::to_string(&report)?);
            }
        }
        Ok(())
    })
    .await
}
