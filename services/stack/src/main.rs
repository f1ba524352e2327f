//! `chat-stack`: the whole chat backend in one process (see the README).

use std::process::ExitCode;

use chat_common::config::{Env, Vars};

#[tokio::main]
async fn main() -> ExitCode {
    chat_common::cli::main(
        "chat-stack",
        "auth (5001), chat (5002) and websocket (5003) services in one process. Without \
         DATABASE_URL/RABBITMQ_URL it needs no server: data lives in DATA_DIR (./data).",
        |_: &Vars<Env>| Ok(()),
        |()| chat_stack::run(Env, chat_common::shutdown::signal(), |_| {}),
    )
    .await
}
