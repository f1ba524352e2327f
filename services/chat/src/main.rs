//! chat-service: `chat-service [serve]`.

use std::process::ExitCode;

use chat_common::cli::{self, Binary};
use chat_service::{App, Config};

const BINARY: Binary = Binary {
    name: "chat-service",
    version: env!("CARGO_PKG_VERSION"),
    about: "stores messages and publishes new_message events; configured by environment \
            variables (PORT, DATABASE_URL, RABBITMQ_URL, JWT_SECRET, AUTH_SERVICE_URL, ...; see the README)",
    subcommands: &[],
};

#[tokio::main]
async fn main() -> ExitCode {
    cli::main(BINARY, Config::from_env, |_, config| async move {
        let app = App::build(&config).await?;
        app.run(chat_common::shutdown::signal()).await?;
        Ok(())
    })
    .await
}
