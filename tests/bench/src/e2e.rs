//! `e2e`: P sender -> recipient pairs, an open-loop target rate through `POST /chat/send`,
//! recipients on WebSockets. Send latency is request -> 201; delivery latency is send start ->
//! frame received. A message acknowledged with 201 but never delivered is **lost**.

use std::{
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;

use crate::{
    client::{self, Target},
    plot,
    report::{Latency, Report, round},
};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Sender -> recipient pairs.
    #[arg(long, default_value_t = 20)]
    pub pairs: usize,
    /// Target rate, messages per second (open loop: sends are scheduled, not paced by answers).
    #[arg(long, default_value_t = 500.0)]
    pub rate: f64,
    /// Measured seconds.
    #[arg(long, default_value_t = 30)]
    pub duration: u64,
    /// Seconds sent before measuring (not counted).
    #[arg(long, default_value_t = 2)]
    pub warmup: u64,
    /// Sends in flight at most.
    #[arg(long, default_value_t = 32)]
    pub senders: usize,
    /// How long to wait for the last deliveries before counting the missing as lost.
    #[arg(long, default_value_t = 5)]
    pub loss_timeout: u64,
    /// Draw the latency distribution and the rate over time into this SVG file.
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

struct Slot {
    /// Nanoseconds from the run's start when the send began (0: not sent).
    start_ns: AtomicU64,
    acked: AtomicBool,
    delivered: AtomicBool,
}

struct Shared {
    t0: Instant,
    slots: Vec<Slot>,
    warm: u64,
    send_latency: Mutex<Latency>,
    delivery_latency: Mutex<Latency>,
    sent_per_sec: Vec<AtomicU64>,
    delivered_per_sec: Vec<AtomicU64>,
    errors: AtomicU64,
}

impl Shared {
    fn second(&self, at: Instant) -> usize {
        usize::try_from(at.duration_since(self.t0).as_secs()).unwrap_or(usize::MAX)
    }

    fn bump(counters: &[AtomicU64], i: usize) {
        if let Some(c) = counters.get(i) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A frame arrived with content `bench <seq>`.
    fn delivered(&self, seq: usize, now: Instant) {
        let Some(slot) = self.slots.get(seq) else {
            return;
        };
        if slot.delivered.swap(true, Ordering::AcqRel) {
            return;
        }
        let start = slot.start_ns.load(Ordering::Acquire);
        let elapsed = u64::try_from(now.duration_since(self.t0).as_nanos()).unwrap_or(u64::MAX);
        if start > 0 && (seq as u64) >= self.warm {
            self.delivery_latency
                .lock()
                .expect("latency lock")
                .record(Duration::from_nanos(elapsed.saturating_sub(start)));
        }
        Self::bump(&self.delivered_per_sec, self.second(now));
    }
}

#[allow(
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)]
// One straight-line scenario: set up, drive, drain, report.
#[allow(clippy::too_many_lines)]
pub async fn run(target: &Target, args: &Args, as_json: bool) -> anyhow::Result<Report> {
    anyhow::ensure!(
        args.pairs > 0 && args.rate > 0.0 && args.duration > 0,
        "pairs, rate and duration must be positive"
    );
    let http = client::http_client();
    let prefix = client::run_prefix();
    let users = client::make_users(&http, target, &prefix, args.pairs * 2, 8).await?;
    let (senders, recipients) = users.split_at(args.pairs);

    let total = (args.rate * (args.warmup + args.duration) as f64).ceil() as usize;
    let seconds = (args.warmup + args.duration + args.loss_timeout + 5) as usize;
    let shared = Arc::new(Shared {
        t0: Instant::now(),
        slots: (0..total)
            .map(|_| Slot {
                start_ns: AtomicU64::new(0),
                acked: AtomicBool::new(false),
                delivered: AtomicBool::new(false),
            })
            .collect(),
        warm: (args.rate * args.warmup as f64).ceil() as u64,
        send_latency: Mutex::default(),
        delivery_latency: Mutex::default(),
        sent_per_sec: (0..seconds).map(|_| AtomicU64::new(0)).collect(),
        delivered_per_sec: (0..seconds).map(|_| AtomicU64::new(0)).collect(),
        errors: AtomicU64::new(0),
    });

    // Recipients' sockets, each read by its own task.
    let mut readers = Vec::new();
    for r in recipients {
        let mut socket = client::connect(target, &r.token).await?;
        let shared = shared.clone();
        readers.push(tokio::spawn(async move {
            while let Some(Ok(msg)) = socket.next().await {
                if let Message::Text(text) = msg
                    && let Some(seq) = client::content_number(&text, "bench ")
                {
                    shared.delivered(seq, Instant::now());
                }
            }
        }));
    }

    let bar = client::progress(total as u64, "e2e", as_json);
    let permits = Arc::new(Semaphore::new(args.senders.max(1)));
    let start = Instant::now();
    let senders = Arc::new(senders.to_vec());
    let recipients = Arc::new(
        recipients
            .iter()
            .map(|u| u.name.clone())
            .collect::<Vec<_>>(),
    );
    let mut tasks = Vec::with_capacity(total);
    for seq in 0..total {
        let due = start + Duration::from_secs_f64(seq as f64 / args.rate);
        tokio::time::sleep_until(due.into()).await;
        let permit = permits.clone().acquire_owned().await?;
        let (http, target, shared, bar) =
            (http.clone(), target.clone(), shared.clone(), bar.clone());
        let (senders, recipients) = (senders.clone(), recipients.clone());
        tasks.push(tokio::spawn(async move {
            let pair = seq % senders.len();
            let began = Instant::now();
            let slot = &shared.slots[seq];
            let ns = u64::try_from(began.duration_since(shared.t0).as_nanos())
                .unwrap_or(u64::MAX)
                .max(1);
            slot.start_ns.store(ns, Ordering::Release);
            let status = client::send(
                &http,
                &target,
                &senders[pair],
                &recipients[pair],
                &format!("bench {seq}"),
            )
            .await;
            let done = Instant::now();
            drop(permit);
            bar.inc(1);
            if matches!(status, Ok(201)) {
                slot.acked.store(true, Ordering::Release);
                Shared::bump(&shared.sent_per_sec, shared.second(done));
                if seq as u64 >= shared.warm {
                    shared
                        .send_latency
                        .lock()
                        .expect("latency lock")
                        .record(done - began);
                }
            } else {
                shared.errors.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let send_window = start.elapsed();
    bar.finish_and_clear();

    // Wait for the stragglers, then count what never came.
    let deadline = Instant::now() + Duration::from_secs(args.loss_timeout);
    let missing = |s: &Shared| {
        s.slots
            .iter()
            .filter(|x| x.acked.load(Ordering::Acquire) && !x.delivered.load(Ordering::Acquire))
            .count()
    };
    while missing(&shared) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let lost = missing(&shared);
    for r in readers {
        r.abort();
    }

    let acked = shared
        .slots
        .iter()
        .filter(|x| x.acked.load(Ordering::Acquire))
        .count();
    let measured_acked = shared.slots[shared.warm as usize..]
        .iter()
        .filter(|x| x.acked.load(Ordering::Acquire))
        .count();
    let window = send_window.as_secs_f64() - args.warmup as f64;
    let send_latency = shared.send_latency.lock().expect("latency lock").clone();
    let delivery_latency = shared
        .delivery_latency
        .lock()
        .expect("latency lock")
        .clone();

    if let Some(path) = &args.plot {
        let per_sec = |v: &[AtomicU64]| {
            v.iter()
                .map(|c| c.load(Ordering::Relaxed) as f64)
                .collect::<Vec<_>>()
        };
        plot::draw(
            path,
            &format!("e2e: {} pairs, target {} msgs/s", args.pairs, args.rate),
            &[
                ("send (201)", &send_latency),
                ("delivery", &delivery_latency),
            ],
            &[
                ("sent/s", per_sec(&shared.sent_per_sec)),
                ("delivered/s", per_sec(&shared.delivered_per_sec)),
            ],
        )?;
    }

    let mut report = Report::new("e2e: POST /chat/send -> WebSocket frame");
    report
        .set("pairs", args.pairs)
        .set("target_rate", args.rate)
        .set(
            "achieved_rate",
            round(measured_acked as f64 / window.max(0.001)),
        )
        .set("acknowledged", acked)
        .set("errors", shared.errors.load(Ordering::Relaxed))
        .set("lost", lost)
        .latency("send_latency", &send_latency)
        .latency("delivery_latency", &delivery_latency);
    Ok(report)
}
