//! `fanout`: M recipients on one websocket-service replica; `new_message` events published
//! straight to the exchange, as fast as the replica absorbs them (at most `window` events
//! published and not yet delivered). The websocket path alone.

use std::{
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use chat_common::time::{now_millis, rfc3339_millis};
use futures_util::StreamExt;
use lapin::{
    BasicProperties, Connection, ConnectionProperties, ExchangeKind,
    options::{BasicPublishOptions, ExchangeDeclareOptions},
    types::FieldTable,
};
use tokio_tungstenite::tungstenite::Message;

use crate::{
    client::{self, Target},
    plot,
    report::{Latency, Report, round},
};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Connected recipients.
    #[arg(long, default_value_t = 1000)]
    pub recipients: usize,
    /// Measured seconds.
    #[arg(long, default_value_t = 20)]
    pub duration: u64,
    /// Seconds published before measuring (not counted).
    #[arg(long, default_value_t = 2)]
    pub warmup: u64,
    /// Events published but not yet delivered, at most (the queueing a client adds to latency).
    #[arg(long, default_value_t = 400)]
    pub window: u64,
    /// RabbitMQ URL.
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    pub amqp: String,
    /// Exchange the websocket-service consumes.
    #[arg(long, default_value = "chat_exchange")]
    pub exchange: String,
    /// Draw the latency distribution and the rate over time into this SVG file.
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

struct Shared {
    t0: Instant,
    /// Publish time (ns from t0) by sequence number.
    published: Mutex<Vec<u64>>,
    delivered: AtomicU64,
    measured_from: AtomicU64,
    latency: Mutex<Latency>,
    per_sec: Vec<AtomicU64>,
}

#[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation)]
// One straight-line scenario: set up, drive, drain, report.
#[allow(clippy::too_many_lines)]
pub async fn run(target: &Target, args: &Args, as_json: bool) -> anyhow::Result<Report> {
    anyhow::ensure!(
        args.recipients > 0 && args.duration > 0,
        "recipients and duration must be positive"
    );
    let http = client::http_client();
    let prefix = client::run_prefix();
    let bar = client::progress(args.recipients as u64, "users", as_json);
    let users = client::make_users(&http, target, &prefix, args.recipients, 8).await?;
    bar.finish_and_clear();
    let seconds = (args.warmup + args.duration + 10) as usize;
    let shared = Arc::new(Shared {
        t0: Instant::now(),
        published: Mutex::new(Vec::with_capacity(1 << 20)),
        delivered: AtomicU64::new(0),
        measured_from: AtomicU64::new(u64::MAX),
        latency: Mutex::default(),
        per_sec: (0..seconds).map(|_| AtomicU64::new(0)).collect(),
    });

    let mut readers = Vec::new();
    for u in &users {
        let mut socket = client::connect(target, &u.token).await?;
        let shared = shared.clone();
        readers.push(tokio::spawn(async move {
            while let Some(Ok(msg)) = socket.next().await {
                let Message::Text(text) = msg else { continue };
                let Some(seq) = client::content_number(&text, "fanout ") else {
                    continue;
                };
                let now = Instant::now();
                let sent = shared.published.lock().expect("lock").get(seq).copied();
                shared.delivered.fetch_add(1, Ordering::Relaxed);
                let second = now.duration_since(shared.t0).as_secs() as usize;
                if let Some(c) = shared.per_sec.get(second) {
                    c.fetch_add(1, Ordering::Relaxed);
                }
                if let Some(sent) = sent
                    && seq as u64 >= shared.measured_from.load(Ordering::Relaxed)
                {
                    let at = now.duration_since(shared.t0).as_nanos() as u64;
                    shared
                        .latency
                        .lock()
                        .expect("lock")
                        .record(Duration::from_nanos(at.saturating_sub(sent)));
                }
            }
        }));
    }

    let conn = Connection::connect(&args.amqp, ConnectionProperties::default()).await?;
    let channel = conn.create_channel().await?;
    channel
        .exchange_declare(
            args.exchange.clone().into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let names: Vec<String> = users.iter().map(|u| u.name.clone()).collect();
    let started = Instant::now();
    let warm_end = started + Duration::from_secs(args.warmup);
    let end = warm_end + Duration::from_secs(args.duration);
    let bar = client::progress(args.warmup + args.duration, "fanout", as_json);
    let mut seq: u64 = 0;
    let mut measured_start = None;
    while Instant::now() < end {
        let now = Instant::now();
        if measured_start.is_none() && now >= warm_end {
            shared.measured_from.store(seq, Ordering::Relaxed);
            measured_start = Some((now, shared.delivered.load(Ordering::Relaxed)));
        }
        bar.set_position(now.duration_since(started).as_secs());
        if seq - shared.delivered.load(Ordering::Relaxed) >= args.window {
            tokio::time::sleep(Duration::from_micros(200)).await;
            continue;
        }
        let recipient = &names[(seq as usize) % names.len()];
        let body = serde_json::json!({"type": "new_message", "data": {
            "_id": format!("{seq:024x}"), "sender": format!("{prefix}_fanout"), "recipient": recipient,
            "content": format!("fanout {seq}"), "timestamp": rfc3339_millis(now_millis())}});
        shared
            .published
            .lock()
            .expect("lock")
            .push(Instant::now().duration_since(shared.t0).as_nanos() as u64);
        channel
            .basic_publish(
                args.exchange.clone().into(),
                "".into(),
                BasicPublishOptions::default(),
                &serde_json::to_vec(&body)?,
                BasicProperties::default(),
            )
            .await?;
        seq += 1;
    }
    let (t_start, d_start) = measured_start.unwrap_or((started, 0));
    let elapsed = t_start.elapsed().as_secs_f64();
    let delivered_in_window = shared.delivered.load(Ordering::Relaxed) - d_start;
    bar.finish_and_clear();
    // Let the in-flight ones land before reporting the tail.
    let deadline = Instant::now() + Duration::from_secs(5);
    while shared.delivered.load(Ordering::Relaxed) < seq && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let undelivered = seq - shared.delivered.load(Ordering::Relaxed);
    for r in readers {
        r.abort();
    }
    let _ = conn.close(200, "done".into()).await;
    let latency = shared.latency.lock().expect("lock").clone();
    if let Some(path) = &args.plot {
        let per_sec: Vec<f64> = shared
            .per_sec
            .iter()
            .map(|c| c.load(Ordering::Relaxed) as f64)
            .collect();
        plot::draw(
            path,
            &format!("fanout: {} recipients on one replica", args.recipients),
            &[("publish -> frame", &latency)],
            &[("deliveries/s", per_sec)],
        )?;
    }
    let mut report = Report::new("fanout: exchange -> one websocket-service replica");
    report
        .set("recipients", args.recipients)
        .set("published", seq)
        .set(
            "deliveries_per_sec",
            round(delivered_in_window as f64 / elapsed.max(0.001)),
        )
        .set("undelivered_after_5s", undelivered)
        .latency("delivery_latency", &latency);
    Ok(report)
}
