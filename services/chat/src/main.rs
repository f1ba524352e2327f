//! chat-service: `chat-service [serve]`, or `chat-service backfill-conversations`.

use std::process::ExitCode;

use chat_common::cli::{self, Binary, Invocation, Subcommand};
use chat_service::{App, Config, open_store};

const BINARY: Binary = Binary {
    name: "chat-service",
    version: env!("CARGO_PKG_VERSION"),
    about: "stores messages and publishes new_message events; configured by environment \
            variables (PORT, DATABASE_URL, RABBITMQ_URL, JWT_SECRET, AUTH_SERVICE_URL, ...; see the README)",
    subcommands: &[Subcommand {
        name: "backfill-conversations",
        about: "write the conversation summaries of the messages already stored (by the original system or an earlier version; what they hold counts as read), then exit",
        flags: &[],
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
            Invocation::Run { .. } => {
                let store = open_store(&config).await?;
                let report = store.backfill_conversations().await?;
                println!("{}", serde_json::to_string(&report)?);
            }
        }
        Ok(())
    })
    .await
}
