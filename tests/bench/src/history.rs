//! `history`: seeds one conversation with N messages through the API, then measures the
//! latest-page query and the `after` catch-up query.

use crate::{
    client::{self, Target},
    report::{Latency, Report},
};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Messages in the conversation.
    #[arg(long, default_value_t = 100_000)]
    pub messages: usize,
    /// Queries of each kind.
    #[arg(long, default_value_t = 500)]
    pub queries: usize,
    /// Page size.
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    /// Sends in flight while seeding.
    #[arg(long, default_value_t = 32)]
    pub parallel: usize,
}

pub async fn run(target: &Target, args: &Args, as_json: bool) -> anyhow::Result<Report> {
    anyhow::ensure!(
        args.messages > args.limit,
        "messages must exceed the page size"
    );
    let http = client::http_client();
    let prefix = client::run_prefix();
    let users = client::make_users(&http, target, &prefix, 2, 2).await?;
    let (a, b) = (&users[0], &users[1]);
    client::send_all(
        &http,
        target,
        args.messages,
        args.parallel,
        ("seeding", as_json),
        |i| {
            let (from, to) = if i % 2 == 0 { (a, b) } else { (b, a) };
            (from, &to.name, format!("history {i}"))
        },
    )
    .await?;

    let latest_url = format!(
        "{}/chat/history?user1={}&user2={}&limit={}",
        target.chat, a.name, b.name, args.limit
    );
    let (_, page) = client::timed_get(&http, &latest_url, &a.token).await?;
    let anchor = page["data"][0]["_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let after_url = format!("{latest_url}&after={anchor}");
    let mut latest = Latency::default();
    let mut after = Latency::default();
    let bar = client::progress(args.queries as u64 * 2, "queries", as_json);
    for _ in 0..args.queries {
        let (d, body) = client::timed_get(&http, &latest_url, &a.token).await?;
        anyhow::ensure!(
            body["data"].as_array().map(Vec::len) == Some(args.limit),
            "short latest page"
        );
        latest.record(d);
        let (d, _) = client::timed_get(&http, &after_url, &b.token).await?;
        after.record(d);
        bar.inc(2);
    }
    bar.finish_and_clear();
    let mut report = Report::new("history: one conversation");
    report
        .set("messages", args.messages)
        .set("page", args.limit)
        .latency("latest_page", &latest)
        .latency("after_catch_up", &after);
    Ok(report)
}
