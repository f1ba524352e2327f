//! websocket-service: `websocket-service [serve]`.

use std::process::ExitCode;

use chat_common::cli::{self, Binary};
use websocket_service::{App, Config};

const BINARY: Binary = Binary {
    name: "websocket-service",
    version: env!("CARGO_PKG_VERSION"),
    about: "pushes new_message events to users' WebSockets; configured by environment variables \
            (PORT, RABBITMQ_URL, JWT_SECRET, CHAT_SERVICE_URL, ...; see the README)",
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
