//! The connection loop against real sockets: the attacks from the issue (half-sent headers,
//! idle connections, too many connections) are closed by the server's own timers and cap, and
//! graceful shutdown still drains a request in flight.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use axum::{Router, routing::get};
use chat_common::{
    metrics::{HttpMetrics, sample},
    server::{Listeners, ServerConfig, serve},
};
use prometheus::Encoder;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::oneshot,
};

struct Server {
    addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    metrics: HttpMetrics,
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn start(config: ServerConfig) -> Server {
    let metrics = HttpMetrics::new("test");
    let routes = Router::new()
        .route(
            "/hello",
            get(|| async { "hello" }).post(|body: String| async move { body }),
        )
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(800)).await;
                "slow"
            }),
        );
    let router = chat_common::http::finish_router(
        routes,
        &metrics,
        chat_common::http::Limits::default(),
        &chat_common::http::Cors::Off,
    );
    let listeners = Listeners::bind("127.0.0.1:0".parse().unwrap(), &config)
        .await
        .unwrap();
    let (addr, metrics_addr) = (listeners.api_addr(), listeners.metrics_addr());
    let (stop, stopped) = oneshot::channel::<()>();
    let served = metrics.clone();
    let done = tokio::spawn(async move {
        serve(listeners, router, &served, &config, async move {
            let _ = stopped.await;
        })
        .await
    });
    Server {
        addr,
        metrics_addr,
        metrics,
        stop: Some(stop),
        done,
    }
}

impl Server {
    /// The sum of (integer) metric `name`'s samples whose labels contain `labels`.
    fn metric(&self, name: &str, labels: &str) -> u64 {
        let mut buf = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&self.metrics.registry().gather(), &mut buf)
            .unwrap();
        String::from_utf8(buf)
            .unwrap()
            .lines()
            .filter(|l| l.starts_with(name) && l.contains(labels))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }
}

/// Whether the server has closed `stream` (EOF or reset), waiting up to `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            // A response before the close: keep reading.
            Ok(Ok(_)) => {}
        }
    }
}

async fn fetch(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn half_sent_headers_are_closed_within_the_header_timeout() {
    let server = start(ServerConfig {
        header_timeout: Duration::from_secs(1),
        ..ServerConfig::default()
    })
    .await;
    // The attack from the issue, at a scale this test can hold: connections that each send
    // half a request header and wait.
    let mut attackers = Vec::new();
    for _ in 0..300 {
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        attackers.push(s);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        server.metric("http_connections_open", "listener=\"api\""),
        300
    );
    let started = Instant::now();
    for s in &mut attackers {
        assert!(
            closed_within(s, Duration::from_secs(3)).await,
            "a half-sent header still open {:?} after",
            started.elapsed()
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        server.metric("http_connections_timed_out_total", "timeout=\"header\""),
        300
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        server.metric("http_connections_open", "listener=\"api\""),
        0
    );
    // Legitimate requests are untouched.
    assert!(fetch(server.addr, "/hello").await.ends_with("hello"));
}

#[tokio::test]
async fn idle_keep_alive_and_stalled_connections_are_closed() {
    let server = start(ServerConfig {
        header_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_millis(1500),
        ..ServerConfig::default()
    })
    .await;
    // Keep-alive: one request answered, then nothing.
    let mut idle = TcpStream::connect(server.addr).await.unwrap();
    idle.write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    let n = idle.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    assert!(
        closed_within(&mut idle, Duration::from_secs(3)).await,
        "idle keep-alive closed"
    );

    // A body announced and never sent: the head is complete, so the idle timer closes it.
    let mut stalled = TcpStream::connect(server.addr).await.unwrap();
    stalled
        .write_all(b"POST /hello HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
        .await
        .unwrap();
    let started = Instant::now();
    assert!(
        closed_within(&mut stalled, Duration::from_secs(5)).await,
        "stalled body closed"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn connections_beyond_the_cap_are_closed_at_once() {
    let server = start(ServerConfig {
        max_connections: 5,
        ..ServerConfig::default()
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..5 {
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        s.write_all(b"GET /hel").await.unwrap();
        held.push(s);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut extra = TcpStream::connect(server.addr).await.unwrap();
    assert!(
        closed_within(&mut extra, Duration::from_secs(1)).await,
        "the 6th is closed"
    );
    assert_eq!(server.metric("http_connections_rejected_total", ""), 1);
    drop(held);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        fetch(server.addr, "/hello").await.ends_with("hello"),
        "room again"
    );
}

#[tokio::test]
async fn shutdown_drains_the_request_in_flight_and_stops_accepting() {
    let mut server = start(ServerConfig::default()).await;
    let addr = server.addr;
    let slow = tokio::spawn(async move { fetch(addr, "/slow").await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    server.stop.take().unwrap().send(()).unwrap();
    let answer = slow.await.unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.ends_with("slow"),
        "{answer}"
    );
    tokio::time::timeout(Duration::from_secs(5), &mut server.done)
        .await
        .expect("serve returns once drained")
        .unwrap()
        .unwrap();
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
}

#[tokio::test]
async fn with_a_metrics_port_metrics_are_served_there_only() {
    let server = start(ServerConfig {
        metrics_port: Some(0),
        ..ServerConfig::default()
    })
    .await;
    let metrics_addr = server.metrics_addr.expect("a metrics listener");
    assert_ne!(metrics_addr, server.addr);
    let api = fetch(server.addr, "/metrics").await;
    assert!(api.starts_with("HTTP/1.1 404"), "{api}");
    assert!(api.contains(r#"{"message":"Not found"}"#), "{api}");
    let scraped = fetch(metrics_addr, "/metrics").await;
    assert!(scraped.starts_with("HTTP/1.1 200"), "{scraped}");
    let body = &scraped[scraped.find("\r\n\r\n").unwrap() + 4..];
    assert!(sample(body, "http_connections_open").is_some(), "{body}");
    assert!(
        fetch(metrics_addr, "/healthz")
            .await
            .starts_with("HTTP/1.1 200")
    );
    assert!(fetch(server.addr, "/hello").await.ends_with("hello"));
}
