//! `fanout`: M recipients on one websocket-service replica; `new_message` events published
//! straight to the exchange, as fast as the replica absorbs them (at most `window` events
//! published and not yet delivered). The websocket path alone.
//!
//! The tool shares the machine with the system it measures, so it is kept cheap: each event
//! carries its own publish time in its content (no shared lookup per frame), readers keep their
//! own tallies (no lock per frame), and events are published in batches so a publish does not
//! cost a round trip to lapin's I/O thread each.

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use chat_common::time::{now_millis, rfc3339_millis};
use futures_util::{StreamExt, future::try_join_all};
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
    /// Connected recipients (one socket each).
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
    /// Events handed to the AMQP client at once.
    #[arg(long, default_value_t = 64)]
    pub batch: u64,
    /// Senders are connected users too: each event also reaches its sender's socket (the
    /// multi-device echo), so it makes two deliveries instead of one.
    #[arg(long)]
    pub echo: bool,
    /// RabbitMQ URL.
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    pub amqp: String,
    /// Exchange the websocket-service consumes.
    #[arg(long, default_value = "chat_exchange")]
    pub exchange: String,
    /// Draw the latency distribution and the rate over time into this SVG file.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// The replica's metrics URL, for its CPU time (default: the websocket URL's host with
    /// http and /metrics).
    #[arg(long)]
    pub metrics: Option<String>,
}

const CPU: &str = "process_cpu_seconds_total";

struct Shared {
    t0: Instant,
    /// Frames received, for the publisher's window.
    frames: AtomicU64,
    /// Events published before this time (ns from t0) are warm-up.
    measured_from_ns: AtomicU64,
}

impl Shared {
    fn ns(&self, at: Instant) -> u64 {
        u64::try_from(at.duration_since(self.t0).as_nanos()).unwrap_or(u64::MAX)
    }
}

/// What one reader saw: latencies in µs of measured frames, and frames per second since t0.
#[derive(Default)]
struct Tally {
    latencies_us: Vec<u32>,
    per_sec: Vec<u32>,
}

/// `(seq, publish ns)` from a frame whose content is `fanout <seq> <ns>`.
fn stamp(frame: &str) -> Option<(u64, u64)> {
    const KEY: &str = "\"content\":\"fanout ";
    let rest = &frame[frame.find(KEY)? + KEY.len()..];
    let (content, _) = rest.split_once('"')?;
    let (seq, ns) = content.split_once(' ')?;
    Some((seq.parse().ok()?, ns.parse().ok()?))
}

async fn read(
    mut socket: client::Socket,
    shared: Arc<Shared>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Tally {
    let mut tally = Tally::default();
    loop {
        let msg = tokio::select! {
            biased;
            _ = stop.changed() => break,
            msg = socket.next() => msg,
        };
        let Some(Ok(msg)) = msg else { break };
        let Message::Text(text) = msg else { continue };
        let Some((_, published)) = stamp(&text) else {
            continue;
        };
        let now = shared.ns(Instant::now());
        shared.frames.fetch_add(1, Ordering::Relaxed);
        let second = usize::try_from(now / 1_000_000_000).unwrap_or(usize::MAX);
        if tally.per_sec.len() <= second {
            tally.per_sec.resize(second + 1, 0);
        }
        tally.per_sec[second] += 1;
        if published >= shared.measured_from_ns.load(Ordering::Relaxed) {
            let us = now.saturating_sub(published) / 1000;
            tally
                .latencies_us
                .push(u32::try_from(us).unwrap_or(u32::MAX));
        }
    }
    tally
}

#[allow(clippy::cast_precision_loss)]
// One straight-line scenario: set up, drive, drain, report.
#[allow(clippy::too_many_lines)]
pub async fn run(target: &Target, args: &Args, as_json: bool) -> anyhow::Result<Report> {
    anyhow::ensure!(
        args.recipients > 1 && args.duration > 0 && args.window > 0 && args.batch > 0,
        "recipients must be at least 2; duration, window and batch positive"
    );
    let http = client::http_client();
    let prefix = client::run_prefix();
    let bar = client::progress(args.recipients as u64, "users", as_json);
    let users = client::make_users(&http, target, &prefix, args.recipients, 8).await?;
    bar.finish_and_clear();
    let shared = Arc::new(Shared {
        t0: Instant::now(),
        frames: AtomicU64::new(0),
        measured_from_ns: AtomicU64::new(u64::MAX),
    });
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut readers = Vec::new();
    for u in &users {
        let socket = client::connect(target, &u.token).await?;
        readers.push(tokio::spawn(read(socket, shared.clone(), stop_rx.clone())));
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
    let metrics_url = client::ws_metrics_url(target, args.metrics.as_deref());
    let names: Vec<&str> = users.iter().map(|u| u.name.as_str()).collect();
    let outsider = format!("{prefix}_outsider");
    let per_event: u64 = if args.echo { 2 } else { 1 };
    let started = Instant::now();
    let warm_end = started + Duration::from_secs(args.warmup);
    let end = warm_end + Duration::from_secs(args.duration);
    let bar = client::progress(args.warmup + args.duration, "fanout", as_json);
    let mut seq: u64 = 0;
    let mut measured_start = None;
    let mut payloads: Vec<Vec<u8>> = Vec::new();
    while Instant::now() < end {
        let now = Instant::now();
        if measured_start.is_none() && now >= warm_end {
            shared
                .measured_from_ns
                .store(shared.ns(now), Ordering::Relaxed);
            let cpu = client::metric(&http, &metrics_url, CPU).await?;
            measured_start = Some((now, shared.frames.load(Ordering::Relaxed), cpu));
        }
        bar.set_position(now.duration_since(started).as_secs());
        let in_flight = (seq * per_event).saturating_sub(shared.frames.load(Ordering::Relaxed));
        let room = args.window.saturating_sub(in_flight) / per_event;
        if room == 0 {
            tokio::time::sleep(Duration::from_micros(200)).await;
            continue;
        }
        let timestamp = rfc3339_millis(now_millis());
        payloads.clear();
        for _ in 0..room.min(args.batch) {
            let i = usize::try_from(seq).unwrap_or(0) % names.len();
            let recipient = names[i];
            // With echo, the sender is the next connected user; otherwise someone offline.
            let sender = if args.echo {
                names[(i + 1) % names.len()]
            } else {
                &outsider
            };
            let ns = shared.ns(Instant::now());
            // Names are [A-Za-z0-9_]: no JSON escaping needed.
            payloads.push(
                format!(
                    r#"{{"type":"new_message","data":{{"_id":"{seq:024x}","sender":"{sender}","recipient":"{recipient}","content":"fanout {seq} {ns}","timestamp":"{timestamp}"}}}}"#
                )
                .into_bytes(),
            );
            seq += 1;
        }
        try_join_all(payloads.iter().map(|p| {
            channel.basic_publish(
                args.exchange.clone().into(),
                "".into(),
                BasicPublishOptions::default(),
                p,
                BasicProperties::default(),
            )
        }))
        .await?;
    }
    let cpu_end = client::metric(&http, &metrics_url, CPU).await?;
    let (t_start, f_start, cpu_start) = measured_start.unwrap_or((started, 0, 0.0));
    let elapsed = t_start.elapsed().as_secs_f64();
    let frames_in_window = shared.frames.load(Ordering::Relaxed) - f_start;
    let cpu = cpu_end - cpu_start;
    bar.finish_and_clear();
    // Let the in-flight ones land before reporting the tail.
    let expected = seq * per_event;
    let deadline = Instant::now() + Duration::from_secs(5);
    while shared.frames.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let undelivered = expected.saturating_sub(shared.frames.load(Ordering::Relaxed));
    let _ = stop_tx.send(true);
    let mut latency = Latency::default();
    let mut per_sec: Vec<f64> = Vec::new();
    for r in readers {
        let tally = r.await?;
        for us in tally.latencies_us {
            latency.record(Duration::from_micros(u64::from(us)));
        }
        if per_sec.len() < tally.per_sec.len() {
            per_sec.resize(tally.per_sec.len(), 0.0);
        }
        for (total, n) in per_sec.iter_mut().zip(tally.per_sec) {
            *total += f64::from(n);
        }
    }
    let _ = conn.close(200, "done".into()).await;
    if let Some(path) = &args.plot {
        plot::draw(
            path,
            &format!("fanout: {} recipients on one replica", args.recipients),
            &[("publish -> frame", &latency)],
            &[("deliveries/s", per_sec)],
        )?;
    }
    let deliveries_per_sec = frames_in_window as f64 / elapsed.max(0.001);
    let mut report = Report::new("fanout: exchange -> one websocket-service replica");
    report
        .set("recipients", args.recipients)
        .set("sockets_per_event", per_event)
        .set("published", seq)
        .set(
            "events_per_sec",
            round(deliveries_per_sec / per_event as f64),
        )
        .set("deliveries_per_sec", round(deliveries_per_sec))
        .set("undelivered_after_5s", undelivered)
        .latency("delivery_latency", &latency)
        // The replica's own cost, whatever else shares the machine (its process CPU counter
        // has a resolution of one second, hence the long measured window).
        .set("replica_cpu_cores", round(cpu / elapsed.max(0.001)))
        .set(
            "replica_cpu_us_per_delivery",
            round(cpu * 1e6 / (frames_in_window.max(1) as f64)),
        );
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::stamp;

    #[test]
    fn reads_the_stamp_from_a_frame() {
        let frame = r#"{"type":"new_message","_id":"1","sender":"a","recipient":"b","content":"fanout 12 345","timestamp":"t"}"#;
        assert_eq!(stamp(frame), Some((12, 345)));
        assert_eq!(stamp(r#"{"content":"hello"}"#), None);
    }
}
