//! `chat-bench`: a load tool for any deployment speaking the chat backend's public API.
//!
//! Every subcommand prints a table (or one JSON object with `--json`), measures with monotonic
//! clocks into HDR histograms, makes its own users, and leaves warm-up out of its figures.

mod client;
mod connections;
mod conversations;
mod e2e;
mod fanout;
mod history;
mod insert;
mod login;
mod plot;
mod report;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    target: client::Target,
    /// Print one JSON object instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Sender -> recipient pairs at a target rate through POST /chat/send, recipients on WebSockets.
    E2e(e2e::Args),
    /// Events straight to the exchange, delivered by one websocket-service replica.
    Fanout(fanout::Args),
    /// Resident memory per idle socket on one replica.
    Connections(connections::Args),
    /// Latest-page and catch-up query latency of a long conversation.
    History(history::Args),
    /// Conversation-list latency of a user with many conversations and a long history.
    Conversations(conversations::Args),
    /// Login latency and throughput.
    Login(login::Args),
    /// The backing MongoDB's raw insert rate (the baseline for e2e).
    Insert(insert::Args),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // Thousands of sockets need file descriptors.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let t = &cli.target;
    let result = match &cli.command {
        Command::E2e(a) => e2e::run(t, a, cli.json).await,
        Command::Fanout(a) => fanout::run(t, a, cli.json).await,
        Command::Connections(a) => connections::run(t, a, cli.json).await,
        Command::History(a) => history::run(t, a, cli.json).await,
        Command::Conversations(a) => conversations::run(t, a, cli.json).await,
        Command::Login(a) => login::run(t, a, cli.json).await,
        Command::Insert(a) => insert::run(a).await,
    };
    match result {
        Ok(report) => {
            report.print(cli.json);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("chat-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
