//! `chat-stack`: the whole chat backend in one process (see the README).

use std::process::ExitCode;

use chat_common::{
    cli::{self, Binary},
    config::{Env, Vars},
};

const BINARY: Binary = Binary {
    name: "chat-stack",
    version: env!("CARGO_PKG_VERSION"),
    about: "auth (5001), chat (5002) and websocket (5003) services in one process. Without \
            DATABASE_URL/RABBITMQ_URL it needs no server: data lives in DATA_DIR (./data).",
    subcommands: &[],
};

#[tokio::main]
async fn main() -> ExitCode {
    cli::main(
        BINARY,
        |_: &Vars<Env>| Ok(()),
        |_, ()| chat_stack::run(Env, chat_common::shutdown::signal(), |_| {}),
    )
    .await
}
