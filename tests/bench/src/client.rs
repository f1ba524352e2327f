//! The public API as a client sees it: users, sends, sockets, metrics.

use std::{sync::Arc, time::Duration};

use anyhow::{Context, bail};
use futures_util::{StreamExt, stream};
use serde_json::{Value, json};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, tungstenite::protocol::WebSocketConfig};

pub type Socket = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// Where the deployment is.
#[derive(Clone, Debug, clap::Args)]
pub struct Target {
    /// auth-service base URL.
    #[arg(long, default_value = "http://127.0.0.1:5001", global = true)]
    pub auth: String,
    /// chat-service base URL.
    #[arg(long, default_value = "http://127.0.0.1:5002", global = true)]
    pub chat: String,
    /// websocket-service URL.
    #[arg(long, default_value = "ws://127.0.0.1:5003", global = true)]
    pub ws: String,
}

#[derive(Clone, Debug)]
pub struct User {
    pub name: String,
    pub token: String,
}

pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(512)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("static client configuration")
}

/// A fresh random prefix, so every run makes its own users.
pub fn run_prefix() -> String {
    format!("b{:08x}", rand::random::<u32>())
}

/// Registers and logs in `count` users named `<prefix>_<i>`, `parallel` at a time.
pub async fn make_users(
    http: &reqwest::Client,
    target: &Target,
    prefix: &str,
    count: usize,
    parallel: usize,
) -> anyhow::Result<Vec<User>> {
    let results: Vec<anyhow::Result<User>> = stream::iter(0..count)
        .map(|i| {
            let name = format!("{prefix}_{i}");
            async move { make_user(http, target, &name).await }
        })
        .buffered(parallel.max(1))
        .collect()
        .await;
    results.into_iter().collect()
}

pub async fn make_user(
    http: &reqwest::Client,
    target: &Target,
    name: &str,
) -> anyhow::Result<User> {
    let r = post_credentials(http, target, "register", name).await?;
    if !r.status().is_success() && r.status() != 409 {
        bail!(
            "register {name}: {} {}",
            r.status(),
            r.text().await.unwrap_or_default()
        );
    }
    login(http, target, name).await
}

pub async fn login(http: &reqwest::Client, target: &Target, name: &str) -> anyhow::Result<User> {
    let r = post_credentials(http, target, "login", name).await?;
    if !r.status().is_success() {
        bail!(
            "login {name}: {} {}",
            r.status(),
            r.text().await.unwrap_or_default()
        );
    }
    let body: Value = r.json().await?;
    let token = body["token"]
        .as_str()
        .context("login answer without token")?
        .to_owned();
    Ok(User {
        name: name.to_owned(),
        token,
    })
}

/// `POST /auth/<action>` with the tool's credentials for `name`.
async fn post_credentials(
    http: &reqwest::Client,
    target: &Target,
    action: &str,
    name: &str,
) -> anyhow::Result<reqwest::Response> {
    http.post(format!("{}/auth/{action}", target.auth))
        .json(&json!({ "username": name, "password": "bench-password-1" }))
        .send()
        .await
        .with_context(|| format!("auth-service unreachable at {}", target.auth))
}

/// `POST /chat/send`; returns the HTTP status.
pub async fn send(
    http: &reqwest::Client,
    target: &Target,
    from: &User,
    to: &str,
    content: &str,
) -> anyhow::Result<u16> {
    let r = http
        .post(format!("{}/chat/send", target.chat))
        .bearer_auth(&from.token)
        .json(&json!({ "recipient": to, "content": content }))
        .send()
        .await?;
    Ok(r.status().as_u16())
}

/// `GET url` with `token`: how long it took, and its JSON answer (which must be a 200).
pub async fn timed_get(
    http: &reqwest::Client,
    url: &str,
    token: &str,
) -> anyhow::Result<(Duration, Value)> {
    let started = std::time::Instant::now();
    let r = http.get(url).bearer_auth(token).send().await?;
    anyhow::ensure!(r.status() == 200, "{url} answered {}", r.status());
    let body: Value = r.json().await?;
    Ok((started.elapsed(), body))
}

/// Sends `count` messages, `message(i)` giving message `i`'s sender, recipient and content,
/// `parallel` in flight, with a progress bar labelled `label`; fails unless every one is stored.
pub async fn send_all<'a>(
    http: &reqwest::Client,
    target: &Target,
    count: usize,
    parallel: usize,
    (label, hidden): (&str, bool),
    message: impl Fn(usize) -> (&'a User, &'a str, String),
) -> anyhow::Result<()> {
    let bar = progress(count as u64, label, hidden);
    let statuses: Vec<anyhow::Result<u16>> = stream::iter(0..count)
        .map(|i| {
            let bar = &bar;
            let (from, to, content) = message(i);
            async move {
                let s = send(http, target, from, to, &content).await;
                bar.inc(1);
                s
            }
        })
        .buffer_unordered(parallel.max(1))
        .collect()
        .await;
    bar.finish_and_clear();
    let failed = statuses.iter().filter(|s| !matches!(s, Ok(201))).count();
    anyhow::ensure!(failed == 0, "{failed} of {count} sends failed");
    Ok(())
}

/// Opens a socket for `user` (small buffers: the tool may hold thousands).
pub async fn connect(target: &Target, token: &str) -> anyhow::Result<Socket> {
    let url = format!("{}/?token={token}", target.ws.trim_end_matches('/'));
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let (socket, _) = tokio_tungstenite::connect_async_with_config(url, Some(config), true)
        .await
        .with_context(|| format!("websocket-service unreachable at {}", target.ws))?;
    Ok(socket)
}

/// The websocket replica's metrics URL: `explicit`, or the websocket URL's host with http.
pub fn ws_metrics_url(target: &Target, explicit: Option<&str>) -> String {
    explicit.map_or_else(
        || {
            format!(
                "{}/metrics",
                target.ws.replacen("ws", "http", 1).trim_end_matches('/')
            )
        },
        str::to_owned,
    )
}

/// A gauge or counter value from a Prometheus endpoint (the first sample named `name`).
pub async fn metric(http: &reqwest::Client, url: &str, name: &str) -> anyhow::Result<f64> {
    let text = http
        .get(url)
        .send()
        .await
        .with_context(|| format!("metrics unreachable at {url}"))?
        .text()
        .await?;
    chat_common::metrics::sample(&text, name).with_context(|| format!("{name} not found at {url}"))
}

/// The number in a frame whose `content` is `<prefix><number>`.
pub fn content_number(frame: &str, prefix: &str) -> Option<usize> {
    let v: Value = serde_json::from_str(frame).ok()?;
    v["content"].as_str()?.strip_prefix(prefix)?.parse().ok()
}

/// A progress bar on stderr (hidden when stderr is not a terminal or with `--json`).
pub fn progress(len: u64, label: &str, hidden: bool) -> Arc<indicatif::ProgressBar> {
    let bar = if hidden {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(len)
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg:>12} [{bar:40}] {pos}/{len} {elapsed}")
            .expect("static template")
            .progress_chars("=> "),
    );
    bar.set_message(label.to_owned());
    Arc::new(bar)
}
