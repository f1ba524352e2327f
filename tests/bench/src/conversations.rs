//! `conversations`: one user with many conversations and a long history (by default the issue's
//! 1,000 conversations and 100,000 messages, seeded through the API), then the latency of their
//! conversation list: the first page as the first look after the seeding computes every unread
//! count on it, the first page again (counts known), a page deep in the list (by cursor), and
//! the first page right after a new message (one count again).

use std::time::Instant;

use crate::{
    client::{self, Target},
    report::{Latency, Report},
};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The user's conversations (one peer each).
    #[arg(long, default_value_t = 1_000)]
    pub conversations: usize,
    /// Messages in all, spread evenly over the conversations, both ways.
    #[arg(long, default_value_t = 100_000)]
    pub messages: usize,
    /// Queries of each kind.
    #[arg(long, default_value_t = 300)]
    pub queries: usize,
    /// Page size.
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
    /// Sends in flight while seeding.
    #[arg(long, default_value_t = 32)]
    pub parallel: usize,
}

pub async fn run(target: &Target, args: &Args, as_json: bool) -> anyhow::Result<Report> {
    anyhow::ensure!(
        args.conversations > args.limit && args.messages >= args.conversations,
        "more conversations than a page, and at least a message each"
    );
    let http = client::http_client();
    let prefix = client::run_prefix();
    let seeding = Instant::now();
    let mut users = client::make_users(&http, target, &prefix, args.conversations + 1, 16).await?;
    let owner = users.remove(0);
    // Message `i` goes between the owner and peer `i % peers`: from the peer on even rounds,
    // from the owner on odd ones.
    let peers = users.len();
    client::send_all(
        &http,
        target,
        args.messages,
        args.parallel,
        ("seeding", as_json),
        |i| {
            let peer = &users[i % peers];
            let (from, to) = if (i / peers) % 2 == 0 {
                (peer, &owner)
            } else {
                (&owner, peer)
            };
            (from, to.name.as_str(), format!("m{i}"))
        },
    )
    .await?;
    let seeded_in = seeding.elapsed();

    let base = format!("{}/chat/conversations?limit={}", target.chat, args.limit);
    let (first_look, first) = client::timed_get(&http, &base, &owner.token).await?;
    let listed = first["data"].as_array().map_or(0, Vec::len);
    anyhow::ensure!(listed == args.limit, "a short first page: {listed}");
    // A cursor half-way down the list: walk there page by page.
    let mut cursor = first["next"].as_str().unwrap_or_default().to_owned();
    for _ in 1..(args.conversations / args.limit / 2) {
        let (_, next) =
            client::timed_get(&http, &format!("{base}&before={cursor}"), &owner.token).await?;
        next["next"]
            .as_str()
            .unwrap_or_default()
            .clone_into(&mut cursor);
    }
    let deep_url = format!("{base}&before={cursor}");

    let (mut warm, mut deep, mut after_new) =
        (Latency::default(), Latency::default(), Latency::default());
    let bar = client::progress(args.queries as u64 * 3, "queries", as_json);
    for q in 0..args.queries {
        let (d, body) = client::timed_get(&http, &base, &owner.token).await?;
        anyhow::ensure!(
            body["data"].as_array().map(Vec::len) == Some(args.limit),
            "short first page"
        );
        warm.record(d);
        let (d, body) = client::timed_get(&http, &deep_url, &owner.token).await?;
        anyhow::ensure!(
            body["data"].as_array().is_some_and(|p| !p.is_empty()),
            "empty deep page"
        );
        deep.record(d);
        // A peer writes: that conversation comes first with one more unread, counted afresh.
        let peer = &users[q % users.len()];
        let status = client::send(&http, target, peer, &owner.name, "new").await?;
        anyhow::ensure!(status == 201, "send answered {status}");
        let (d, body) = client::timed_get(&http, &base, &owner.token).await?;
        anyhow::ensure!(
            body["data"][0]["peer"].as_str() == Some(peer.name.as_str()),
            "the new message's conversation comes first"
        );
        after_new.record(d);
        bar.inc(3);
    }
    bar.finish_and_clear();
    let mut report = Report::new("conversations: one user's list");
    report
        .set("conversations", args.conversations)
        .set("messages", args.messages)
        .set("page", args.limit)
        .set("seeded_in_s", crate::report::round(seeded_in.as_secs_f64()))
        .set(
            "first_look_ms",
            crate::report::round(first_look.as_secs_f64() * 1000.0),
        )
        .latency("first_page", &warm)
        .latency("deep_page", &deep)
        .latency("after_new_message", &after_new);
    Ok(report)
}
