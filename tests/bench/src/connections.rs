//! `connections`: opens C idle sockets to one replica and reports that process's resident memory
//! per socket, from its `/metrics` (`process_resident_memory_bytes`) before and after.

use std::time::Duration;

use futures_util::{StreamExt, stream};

use crate::{
    client::{self, Target},
    report::{Report, round},
};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Sockets to open.
    #[arg(long, default_value_t = 10_000)]
    pub count: usize,
    /// The replica's metrics URL (default: the websocket URL's host with http and /metrics).
    #[arg(long)]
    pub metrics: Option<String>,
    /// Sockets opened at once.
    #[arg(long, default_value_t = 64)]
    pub parallel: usize,
}

#[allow(clippy::cast_precision_loss)]
pub async fn run(target: &Target, args: &Args, as_json: bool) -> anyhow::Result<Report> {
    anyhow::ensure!(args.count > 0, "count must be positive");
    let http = client::http_client();
    let metrics_url = client::ws_metrics_url(target, args.metrics.as_deref());
    let user = client::make_user(&http, target, &format!("{}_conn", client::run_prefix())).await?;
    // One socket first, so the baseline includes what any connection initialises once.
    let first = client::connect(target, &user.token).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss = "process_resident_memory_bytes";
    let before = client::metric(&http, &metrics_url, rss).await?;
    let open_before = client::metric(&http, &metrics_url, "ws_open_sockets")
        .await
        .unwrap_or(0.0);
    let bar = client::progress(args.count as u64, "sockets", as_json);
    let sockets: Vec<_> = stream::iter(0..args.count)
        .map(|_| {
            let (target, token, bar) = (target.clone(), user.token.clone(), bar.clone());
            async move {
                let s = client::connect(&target, &token).await;
                bar.inc(1);
                s
            }
        })
        .buffer_unordered(args.parallel.max(1))
        .collect()
        .await;
    bar.finish_and_clear();
    let sockets: Vec<_> = sockets.into_iter().collect::<Result<_, _>>()?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = client::metric(&http, &metrics_url, rss).await?;
    let open_after = client::metric(&http, &metrics_url, "ws_open_sockets")
        .await
        .unwrap_or(0.0);
    let per_socket = (after - before) / args.count as f64;
    let mut report = Report::new("connections: idle sockets on one replica");
    report
        .set("sockets", sockets.len())
        .set("open_sockets_reported", open_after - open_before)
        .set("rss_before_mib", round(before / 1_048_576.0))
        .set("rss_after_mib", round(after / 1_048_576.0))
        .set("bytes_per_socket", round(per_socket))
        .set("kib_per_socket", round(per_socket / 1024.0));
    drop(sockets);
    drop(first);
    Ok(report)
}
