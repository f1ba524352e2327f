//! The connection loop every service serves HTTP with (in place of `axum::serve`, which has no
//! timeouts and no connection cap):
//!
//! - **Header timeout** (`HTTP_HEADER_TIMEOUT`, default 10 s): a request's head must be complete
//!   within this time, counted from the connection's opening or from the end of the previous
//!   response; a half-sent header and a keep-alive connection idle between requests are closed
//!   alike.
//! - **Idle timeout** (`HTTP_IDLE_TIMEOUT`, default 60 s): a connection on which no byte moves
//!   either way for this long is closed, whatever it is doing (an upload that stalled, a client
//!   that stopped reading its response).
//! - **Connection cap** (`MAX_CONNECTIONS`, default 10,000): a connection beyond it is closed as
//!   soon as it is accepted, so the process keeps file descriptors for the ones it serves. An
//!   upgraded connection (a WebSocket) leaves this count: websocket-service caps sockets itself.
//! - **Client address**: the peer's, or, when the peer is one of `TRUSTED_PROXIES`, the nearest
//!   address in `X-Forwarded-For` that is not a trusted proxy; handlers read it as [`ClientAddr`].
//! - **Graceful shutdown**: when `shutdown` resolves, the listener closes, each connection
//!   finishes its request in flight, and `serve` returns once every connection is gone.
//!
//! With `METRICS_PORT`, `/metrics` is served on that port only (with `/healthz`), so a public
//! ingress to the service port does not expose it.

use std::{
    convert::Infallible,
    future::Future,
    io,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use axum::{
    Router,
    extract::FromRequestParts,
    http::{HeaderMap, request::Parts},
};
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{Semaphore, watch},
};
use tower::ServiceExt;

use crate::metrics::HttpMetrics;

/// The address of the client that sent a request (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        // Absent only when a router is called without this server (a test's `oneshot`).
        Ok(parts
            .extensions
            .get::<Self>()
            .copied()
            .unwrap_or(Self(IpAddr::from([0, 0, 0, 0]))))
    }
}

/// One address or network in CIDR notation (`10.0.0.0/8`, `fd00::/8`, `192.0.2.7`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    addr: IpAddr,
    prefix: u8,
}

impl std::str::FromStr for Network {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (ip, prefix) = match s.split_once('/') {
            Some((ip, prefix)) => (ip, Some(prefix)),
            None => (s, None),
        };
        let addr: IpAddr = ip
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or network"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0 to {max}"))?,
        };
        Ok(Self { addr, prefix })
    }
}

impl Network {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let bits = |ip: IpAddr| match ip {
            IpAddr::V4(v4) => (u128::from(v4.to_bits()), 32),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => (u128::from(v4.to_bits()), 32),
                None => (v6.to_bits(), 128),
            },
        };
        let ((net, width), (ip, ip_width)) = (bits(self.addr), bits(ip));
        if width != ip_width {
            return false;
        }
        let host_bits = u32::from(width - self.prefix.min(width));
        let mask = u128::MAX.checked_shl(host_bits).unwrap_or(0);
        net & mask == ip & mask
    }
}

/// The networks whose `X-Forwarded-For` is believed (`TRUSTED_PROXIES`, comma-separated).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(pub Vec<Network>);

impl TrustedProxies {
    fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|n| n.contains(ip))
    }

    /// The client of a request that came from `peer` with `headers`.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.trusts(peer) {
            return peer;
        }
        // Each proxy appends the address it got the request from: read from the right, skip
        // our own proxies, and take the first address they did not add themselves.
        let mut client = peer;
        for value in headers.get_all("x-forwarded-for").iter().rev() {
            let Ok(value) = value.to_str() else {
                return client;
            };
            for hop in value.rsplit(',') {
                let Ok(ip) = hop.trim().parse::<IpAddr>() else {
                    return client;
                };
                client = ip;
                if !self.trusts(ip) {
                    return ip;
                }
            }
        }
        client
    }
}

/// Bytes moved on a connection: the time of the last one, in ms since the server started.
struct Activity {
    epoch: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Resolves once nothing has moved for `limit`.
    async fn idle_for(&self, limit: Duration) {
        loop {
            let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let due = self.epoch + last + limit;
            if Instant::now() >= due {
                return;
            }
            tokio::time::sleep_until(due.into()).await;
        }
    }
}

/// A TCP stream that notes when bytes move.
struct Tracked {
    stream: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        result
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.stream).poll_write(cx, buf);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Connection settings (see the module documentation for each).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// `HTTP_HEADER_TIMEOUT`, default 10 s.
    pub header_timeout: Duration,
    /// `HTTP_IDLE_TIMEOUT`, default 60 s.
    pub idle_timeout: Duration,
    /// `MAX_CONNECTIONS`, default 10,000.
    pub max_connections: usize,
    /// `TRUSTED_PROXIES`, default none.
    pub trusted_proxies: TrustedProxies,
    /// `METRICS_PORT`: serve `/metrics` there only (default: on the service port).
    pub metrics_port: Option<u16>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 10_000,
            trusted_proxies: TrustedProxies::default(),
            metrics_port: None,
        }
    }
}

/// The listeners of one service: its API port and, with `METRICS_PORT`, its metrics port.
#[derive(Debug)]
pub struct Listeners {
    pub api: TcpListener,
    pub metrics: Option<TcpListener>,
}

impl Listeners {
    /// Binds `api` and, with `METRICS_PORT`, the metrics port on the same address.
    pub async fn bind(api: SocketAddr, config: &ServerConfig) -> anyhow::Result<Self> {
        let metrics = config
            .metrics_port
            .map(|port| SocketAddr::new(api.ip(), port));
        let api_listener = TcpListener::bind(api)
            .await
            .with_context(|| format!("listening on {api}"))?;
        let metrics = match metrics {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("listening on {addr} (METRICS_PORT)"))?,
            ),
            None => None,
        };
        Ok(Self {
            api: api_listener,
            metrics,
        })
    }

    pub fn api_addr(&self) -> SocketAddr {
        self.api.local_addr().expect("a bound listener")
    }

    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics
            .as_ref()
            .map(|l| l.local_addr().expect("a bound listener"))
    }
}

/// Connection metrics, registered in the service's registry.
#[derive(Clone)]
struct ConnectionMetrics {
    open: prometheus::IntGauge,
    rejected: prometheus::IntCounter,
    closed: prometheus::IntCounterVec,
}

impl ConnectionMetrics {
    fn new(metrics: &HttpMetrics, port: &str) -> Self {
        let labels = std::iter::once(("listener".to_owned(), port.to_owned())).collect();
        let this = Self {
            open: prometheus::IntGauge::with_opts(
                prometheus::Opts::new("http_connections_open", "HTTP connections being served.")
                    .const_labels(labels),
            )
            .expect("static metric definition"),
            rejected: prometheus::IntCounter::with_opts(
                prometheus::Opts::new(
                    "http_connections_rejected_total",
                    "Connections closed at once because MAX_CONNECTIONS were open.",
                )
                .const_labels(std::iter::once(("listener".to_owned(), port.to_owned())).collect()),
            )
            .expect("static metric definition"),
            closed: prometheus::IntCounterVec::new(
                prometheus::Opts::new(
                    "http_connections_timed_out_total",
                    "Connections closed by a timeout: header (HTTP_HEADER_TIMEOUT) or idle \
                     (HTTP_IDLE_TIMEOUT).",
                )
                .const_labels(std::iter::once(("listener".to_owned(), port.to_owned())).collect()),
                &["timeout"],
            )
            .expect("static metric definition"),
        };
        metrics.register(this.open.clone());
        metrics.register(this.rejected.clone());
        metrics.register(this.closed.clone());
        this
    }
}

/// Serves `router` on `listeners` until `shutdown` resolves, then drains (see the module
/// documentation). `/metrics` goes to the metrics listener when there is one.
pub async fn serve<F>(
    listeners: Listeners,
    router: Router,
    metrics: &HttpMetrics,
    config: &ServerConfig,
    shutdown: F,
) -> io::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    let (stop, stopped) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop.send(true);
    });
    let apart = listeners.metrics.is_some();
    let api = accept_loop(
        listeners.api,
        router,
        ConnectionMetrics::new(metrics, "api"),
        config.clone(),
        apart,
        stopped.clone(),
    );
    match listeners.metrics {
        None => api.await,
        Some(listener) => {
            let exposition = crate::http::metrics_router(metrics);
            let side = accept_loop(
                listener,
                exposition,
                ConnectionMetrics::new(metrics, "metrics"),
                config.clone(),
                false,
                stopped,
            );
            tokio::try_join!(api, side).map(|_| ())
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    router: Router,
    metrics: ConnectionMetrics,
    limits: ServerConfig,
    hide_metrics: bool,
    mut stopped: watch::Receiver<bool>,
) -> io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "listening");
    }
    let max = limits.max_connections.max(1);
    let slots = Arc::new(Semaphore::new(max));
    let epoch = Instant::now();
    let proxies = Arc::new(limits.trusted_proxies.clone());
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, or a connection reset before it was accepted:
                    // wait a moment instead of spinning, and keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stopping(&mut stopped) => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics.rejected.inc();
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let activity = Arc::new(Activity {
            epoch,
            last_ms: AtomicU64::new(0),
        });
        activity.touch();
        let io = TokioIo::new(Tracked {
            stream,
            activity: activity.clone(),
        });
        let router = router.clone();
        let proxies = proxies.clone();
        let service = service_fn(move |mut req: hyper::Request<Incoming>| {
            let client = proxies.client(peer.ip(), req.headers());
            req.extensions_mut().insert(ClientAddr(client));
            let router = router.clone();
            async move {
                if hide_metrics && req.uri().path() == "/metrics" {
                    // Served on METRICS_PORT only.
                    return Ok(crate::http::error_response(
                        axum::http::StatusCode::NOT_FOUND,
                        "Not found",
                    ));
                }
                router.oneshot(req).await
            }
        });
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout);
        let metrics = metrics.clone();
        let mut stopped = stopped.clone();
        let idle_timeout = limits.idle_timeout;
        tokio::spawn(async move {
            let _slot = slot;
            metrics.open.inc();
            let conn = builder.serve_connection(io, service).with_upgrades();
            tokio::pin!(conn);
            let mut draining = false;
            loop {
                tokio::select! {
                    result = conn.as_mut() => {
                        if let Err(e) = result {
                            if e.is_timeout() {
                                metrics.closed.with_label_values(&["header"]).inc();
                            } else {
                                tracing::debug!(error = %e, "connection ended with an error");
                            }
                        }
                        break;
                    }
                    () = activity.idle_for(idle_timeout) => {
                        metrics.closed.with_label_values(&["idle"]).inc();
                        break;
                    }
                    () = stopping(&mut stopped), if !draining => {
                        // Finish the request in flight, take no other.
                        conn.as_mut().graceful_shutdown();
                        draining = true;
                    }
                }
            }
            metrics.open.dec();
        });
    }
    drop(listener);
    // Every connection holds a slot: all slots back means all connections are gone.
    let _ = slots
        .acquire_many(u32::try_from(max).unwrap_or(u32::MAX))
        .await;
    Ok(())
}

/// Resolves once the server is stopping (the guard `wait_for` gives is dropped here, so the
/// futures that wait on it stay `Send`).
async fn stopping(stopped: &mut watch::Receiver<bool>) {
    let _ = stopped.wait_for(|s| *s).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxies(list: &[&str]) -> TrustedProxies {
        TrustedProxies(list.iter().map(|n| n.parse().unwrap()).collect())
    }

    #[test]
    fn networks_parse_and_match() {
        let n: Network = "10.1.0.0/16".parse().unwrap();
        assert!(n.contains("10.1.200.3".parse().unwrap()));
        assert!(!n.contains("10.2.0.1".parse().unwrap()));
        assert!(n.contains("::ffff:10.1.0.9".parse().unwrap()), "v4-mapped");
        let one: Network = "192.0.2.7".parse().unwrap();
        assert!(one.contains("192.0.2.7".parse().unwrap()));
        assert!(!one.contains("192.0.2.8".parse().unwrap()));
        let all: Network = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("203.0.113.1".parse().unwrap()));
        assert!(!all.contains("2001:db8::1".parse().unwrap()));
        let v6: Network = "fd00::/8".parse().unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        for bad in ["10.0.0.0/33", "fd00::/129", "nope", "10.0.0.0/x", ""] {
            assert!(bad.parse::<Network>().is_err(), "{bad}");
        }
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted = proxies(&["10.0.0.0/8"]);
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", "198.51.100.9".parse().unwrap());
        let peer: IpAddr = "10.0.0.2".parse().unwrap();
        let stranger: IpAddr = "203.0.113.5".parse().unwrap();
        assert_eq!(
            trusted.client(peer, &headers),
            "198.51.100.9".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            trusted.client(stranger, &headers),
            stranger,
            "spoofed header ignored"
        );
        assert_eq!(TrustedProxies::default().client(peer, &headers), peer);

        // A client that forges the header's start gets the address our proxy saw.
        headers.insert(
            "x-forwarded-for",
            "1.2.3.4, 198.51.100.9, 10.0.0.7".parse().unwrap(),
        );
        assert_eq!(
            trusted.client(peer, &headers),
            "198.51.100.9".parse::<IpAddr>().unwrap()
        );
        // Garbage stops the walk at the last address proxies vouched for.
        headers.insert("x-forwarded-for", "junk, 10.0.0.7".parse().unwrap());
        assert_eq!(
            trusted.client(peer, &headers),
            "10.0.0.7".parse::<IpAddr>().unwrap()
        );
    }
}
