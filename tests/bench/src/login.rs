//! `login`: login latency and throughput at a given concurrency.

use std::time::Instant;

use futures_util::{StreamExt, stream};

use crate::{
    client::{self, Target},
    report::{Latency, Report, round},
};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Logins in flight.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Logins to time (after 10 not counted).
    #[arg(long, default_value_t = 400)]
    pub requests: usize,
}

#[allow(clippy::cast_precision_loss)]
pub async fn run(target: &Target, args: &Args, as_json: bool) -> anyhow::Result<Report> {
    let http = client::http_client();
    let name = format!("{}_login", client::run_prefix());
    client::make_user(&http, target, &name).await?;
    for _ in 0..10 {
        client::login(&http, target, &name).await?;
    }
    let bar = client::progress(args.requests as u64, "login", as_json);
    let started = Instant::now();
    let timings: Vec<anyhow::Result<std::time::Duration>> = stream::iter(0..args.requests)
        .map(|_| {
            let (http, name, bar) = (&http, &name, &bar);
            async move {
                let t = Instant::now();
                client::login(http, target, name).await?;
                bar.inc(1);
                Ok(t.elapsed())
            }
        })
        .buffer_unordered(args.concurrency.max(1))
        .collect()
        .await;
    let elapsed = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    let mut latency = Latency::default();
    let mut errors = 0;
    for t in timings {
        match t {
            Ok(d) => latency.record(d),
            Err(_) => errors += 1,
        }
    }
    let mut report = Report::new("login");
    report
        .set("concurrency", args.concurrency)
        .set("logins_per_sec", round(latency.count() as f64 / elapsed))
        .set("errors", errors)
        .latency("latency", &latency);
    Ok(report)
}
