//! `insert`: the backing store's raw single-document insert rate, measured the way chat-service
//! would load it (documents shaped like messages, `clients` concurrent writers), so the services'
//! overhead can be given as a ratio.

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use mongodb::bson::{DateTime, doc, oid::ObjectId};

use crate::report::{Latency, Report, round};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// MongoDB URL (a scratch database of the run's own is used).
    #[arg(long, default_value = "mongodb://127.0.0.1:27017")]
    pub mongo: String,
    /// Concurrent writers.
    #[arg(long, default_value_t = 32)]
    pub clients: usize,
    /// Measured seconds.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
}

#[allow(clippy::cast_precision_loss)]
pub async fn run(args: &Args) -> anyhow::Result<Report> {
    let client = mongodb::Client::with_uri_str(&args.mongo).await?;
    let db = client.database(&format!("bench_insert_{:08x}", rand::random::<u32>()));
    let messages = db.collection::<mongodb::bson::Document>("messages");
    messages.insert_one(doc! { "warm": true }).await?;
    let end = Instant::now() + Duration::from_secs(args.duration);
    let writers = (0..args.clients.max(1)).map(|w| {
        let messages = messages.clone();
        async move {
            let mut latency = Latency::default();
            let mut errors = 0u64;
            let mut i = 0u64;
            while Instant::now() < end {
                let d = doc! { "_id": ObjectId::new(), "sender": format!("w{w}"), "recipient": "r",
                "content": format!("insert {i}"), "timestamp": DateTime::now() };
                let t = Instant::now();
                match messages.insert_one(d).await {
                    Ok(_) => latency.record(t.elapsed()),
                    Err(_) => errors += 1,
                }
                i += 1;
            }
            (latency, errors)
        }
    });
    let started = Instant::now();
    let results = join_all(writers).await;
    let elapsed = started.elapsed().as_secs_f64();
    let mut all = Latency::default();
    let mut errors = 0;
    for (l, e) in &results {
        all.merge(l);
        errors += e;
    }
    let _ = db.drop().await;
    let mut report = Report::new("insert: raw MongoDB single-document inserts");
    report
        .set("clients", args.clients)
        .set("inserts_per_sec", round(all.count() as f64 / elapsed))
        .set("errors", errors)
        .latency("latency", &all);
    Ok(report)
}
