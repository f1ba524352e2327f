//! The standalone stack: auth-service, chat-service and websocket-service in one process, with the
//! same routers and handlers as the microservices. Without `DATABASE_URL` it keeps users and
//! messages in embedded `redb` files under `DATA_DIR`; without `RABBITMQ_URL` events fan out
//! in-process. With either set, it uses the real server instead.

use std::{
    future::Future,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use chat_common::config::{ConfigError, Source, Vars};
use tokio::sync::watch;

/// What the stack reads itself, besides what its services read.
pub const OWN_VARS: [&str; 3] = ["AUTH_PORT", "CHAT_PORT", "WS_PORT"];

/// What the stack sets for its services, whatever the environment says: each one's port (from
/// [`OWN_VARS`]), where chat finds auth and websocket finds chat, and development mode (embedded
/// stores and the in-process bus unless `DATABASE_URL`/`RABBITMQ_URL` are set).
pub const SETS_FOR_ITS_SERVICES: [&str; 5] = [
    "PORT",
    "AUTH_SERVICE_URL",
    "CHAT_SERVICE_URL",
    "CHAT_DEV_MODE",
    "METRICS_PORT",
];

/// Where the stack listens.
#[derive(Debug, Clone, Copy)]
pub struct Addrs {
    pub auth: SocketAddr,
    pub chat: SocketAddr,
    pub websocket: SocketAddr,
}

/// Environment with overrides: the last value for a name wins.
struct Overlay<S> {
    base: S,
    over: Vec<(String, String)>,
}

impl<S: Source> Source for Overlay<S> {
    fn get(&self, name: &str) -> Option<String> {
        self.over.get(name).or_else(|| self.base.get(name))
    }
}

/// An address this process can call itself on: a wildcard bind is reached through loopback.
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        ip if !ip.is_unspecified() => addr,
        std::net::IpAddr::V4(_) => (std::net::Ipv4Addr::LOCALHOST, addr.port()).into(),
        std::net::IpAddr::V6(_) => (std::net::Ipv6Addr::LOCALHOST, addr.port()).into(),
    }
}

/// A JWT secret that survives restarts: `JWT_SECRET`, else one generated once into `DATA_DIR`.
fn jwt_secret<S: Source>(vars: &Vars<S>, data_dir: &Path) -> anyhow::Result<String> {
    if let Some(s) = vars.string("JWT_SECRET") {
        return Ok(s);
    }
    let path = data_dir.join("jwt-secret");
    if let Ok(s) = std::fs::read_to_string(&path) {
        let s = s.trim().to_owned();
        if s.len() >= 32 {
            return Ok(s);
        }
    }
    let bytes: [u8; 32] = rand::random();
    let secret = bytes.iter().fold(String::with_capacity(64), |mut out, b| {
        use std::fmt::Write;
        let _ = write!(out, "{b:02x}");
        out
    });
    std::fs::create_dir_all(data_dir)?;
    write_private(&path, &secret)?;
    tracing::info!(path = %path.display(), "generated a JWT secret for this stack");
    Ok(secret)
}

#[cfg(unix)]
fn write_private(path: &Path, content: &str) -> std::io::Result<()> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(content.as_bytes())
}

#[cfg(not(unix))]
fn write_private(path: &Path, content: &str) -> std::io::Result<()> {
    std::fs::write(path, content)
}

/// Builds the three services as their own binaries do (each service's `App::build`), on
/// `AUTH_PORT`, `CHAT_PORT` and `WS_PORT`, in development mode (embedded stores without
/// `DATABASE_URL`, one in-process bus without `RABBITMQ_URL`), and serves until `shutdown`
/// resolves; `on_ready` gets the addresses.
pub async fn run<S, F>(env: S, shutdown: F, on_ready: impl FnOnce(Addrs)) -> anyhow::Result<()>
where
    S: Source,
    F: Future<Output = ()> + Send + 'static,
{
    let vars = Vars(&env);
    let data_dir: PathBuf = vars
        .string("DATA_DIR")
        .unwrap_or_else(|| "data".to_owned())
        .into();
    let port = |name: &'static str, default: u16| vars.parse_or::<u16>(name, default);
    let (auth_port, chat_port, ws_port) = (
        port("AUTH_PORT", 5001)?,
        port("CHAT_PORT", 5002)?,
        port("WS_PORT", 5003)?,
    );
    let config_error = |e: ConfigError| anyhow::anyhow!("invalid configuration: {e}");
    let mut settings = Overlay {
        base: &env,
        over: vec![
            ("CHAT_DEV_MODE".into(), "true".into()),
            ("JWT_SECRET".into(), jwt_secret(&vars, &data_dir)?),
            ("PORT".into(), auth_port.to_string()),
            // Three services in one process cannot share one metrics port: each serves its own
            // `/metrics` on its port.
            ("METRICS_PORT".into(), String::new()),
        ],
    };
    // The web client served on WS_PORT calls auth and chat on their own ports: other origins
    // to a browser. Unless told otherwise, the stack lets pages on this machine call it.
    if vars.string("CORS_ALLOWED_ORIGINS").is_none() {
        settings
            .over
            .push(("CORS_ALLOWED_ORIGINS".into(), "loopback".into()));
    }
    let auth_config = auth_service::Config::from_env(&Vars(&settings)).map_err(config_error)?;
    let auth = auth_service::App::build(&auth_config).await?;
    let auth_addr = auth.local_addr();
    settings.over.extend([
        (
            "AUTH_SERVICE_URL".into(),
            format!("http://{}", reachable(auth_addr)),
        ),
        ("PORT".into(), chat_port.to_string()),
    ]);
    let chat_config = chat_service::Config::from_env(&Vars(&settings)).map_err(config_error)?;
    let chat = chat_service::App::build(&chat_config).await?;
    settings.over.extend([
        (
            "CHAT_SERVICE_URL".into(),
            format!("http://{}", reachable(chat.local_addr())),
        ),
        ("PORT".into(), ws_port.to_string()),
    ]);
    let mut ws_config =
        websocket_service::Config::from_env(&Vars(&settings)).map_err(config_error)?;
    // Without RABBITMQ_URL, events go from chat-service to websocket-service in this process.
    ws_config.local_bus = chat_config.local_bus.clone();
    let websocket = websocket_service::App::build(&ws_config).await?;

    let (stop, stopped) = watch::channel(false);
    let signal = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let addrs = Addrs {
        auth: auth_addr,
        chat: chat.local_addr(),
        websocket: websocket.local_addr(),
    };
    let servers = tokio::spawn(async move {
        tokio::try_join!(
            auth.run(signal(stopped.clone())),
            chat.run(signal(stopped.clone())),
            websocket.run(signal(stopped)),
        )
    });
    tracing::info!(auth = %addrs.auth, chat = %addrs.chat, websocket = %addrs.websocket, "chat stack serving");
    on_ready(addrs);
    shutdown.await;
    let _ = stop.send(true);
    servers.await??;
    Ok(())
}
