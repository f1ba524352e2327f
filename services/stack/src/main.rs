//! `chat-stack`: the whole chat backend in one process (see the README).

use std::process::ExitCode;

use chat_common::config::Env;

#[tokio::main]
async fn main() -> ExitCode {
    chat_common::telemetry::init();
    if std::env::args()
        .nth(1)
        .is_some_and(|a| a == "--help" || a == "-h")
    {
        println!(
            "chat-stack: auth (5001), chat (5002) and websocket (5003) services in one process.\n\
             Without DATABASE_URL/RABBITMQ_URL it needs no server: data lives in DATA_DIR (./data)."
        );
        return ExitCode::SUCCESS;
    }
    match chat_stack::run(Env, chat_common::shutdown::signal(), |_| {}).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("chat-stack: {e:#}");
            ExitCode::FAILURE
        }
    }
}
