//! The standalone stack: auth-service, chat-service and websocket-service in one process, with the
//! same routers and handlers as the microservices. Without `DATABASE_URL` it keeps users and
//! messages in embedded `redb` files under `DATA_DIR`; without `RABBITMQ_URL` events fan out
//! in-process. With either set, it uses the real server instead.

use std::{
    future::Future,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use auth_service::store::{EmbeddedUserStore, MongoUserStore, UserStore};
use chat_common::{
    bus::LocalBus,
    config::{ConfigError, Source, Vars},
};
use chat_service::{
    publisher::{AmqpPublisher, EventPublisher, LocalPublisher},
    store::{EmbeddedMessageStore, MessageStore, MongoMessageStore},
};
use tokio::{net::TcpListener, sync::watch};
use websocket_service::EventSource;

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

/// Binds the three ports and serves until `shutdown` resolves; `on_ready` gets the addresses.
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
    let host = vars
        .string("BIND_ADDR")
        .unwrap_or_else(|| "0.0.0.0".to_owned());
    let port = |name: &'static str, default: u16| vars.parse_or::<u16>(name, default);
    let (auth_port, chat_port, ws_port) = (
        port("AUTH_PORT", 5001)?,
        port("CHAT_PORT", 5002)?,
        port("WS_PORT", 5003)?,
    );
    let auth_listener = TcpListener::bind((host.as_str(), auth_port)).await?;
    let chat_listener = TcpListener::bind((host.as_str(), chat_port)).await?;
    let ws_listener = TcpListener::bind((host.as_str(), ws_port)).await?;
    let auth_addr = auth_listener.local_addr()?;
    let overlay = Overlay {
        base: &env,
        over: vec![
            ("JWT_SECRET".into(), jwt_secret(&vars, &data_dir)?),
            (
                "AUTH_SERVICE_URL".into(),
                format!("http://{}", reachable(auth_addr)),
            ),
        ],
    };
    let vars = Vars(&overlay);
    let config_error = |e: ConfigError| anyhow::anyhow!("invalid configuration: {e}");
    let auth_config = auth_service::Config::from_env(&vars).map_err(config_error)?;
    let chat_config = chat_service::Config::from_env(&vars).map_err(config_error)?;
    let ws_config = websocket_service::Config::from_env(&vars).map_err(config_error)?;

    let (users, messages) = stores(&auth_config, &chat_config, &data_dir).await?;
    let (publisher, source) = events(&chat_config, &ws_config);

    let auth_state = auth_service::AppState::new(&auth_config, users)?;
    let chat_state = chat_service::AppState::new(&chat_config, messages, publisher)?;
    let ws_state = websocket_service::AppState::new(&ws_config)?;
    ws_state.start_consumer(source);

    let (stop, stopped) = watch::channel(false);
    let signal = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let addrs = Addrs {
        auth: auth_addr,
        chat: chat_listener.local_addr()?,
        websocket: ws_listener.local_addr()?,
    };
    let servers = tokio::spawn(async move {
        tokio::try_join!(
            auth_service::run(auth_listener, auth_state, signal(stopped.clone())),
            chat_service::run(chat_listener, chat_state, signal(stopped.clone())),
            websocket_service::run(ws_listener, ws_state, signal(stopped)),
        )
    });
    tracing::info!(auth = %addrs.auth, chat = %addrs.chat, websocket = %addrs.websocket, "chat stack serving");
    on_ready(addrs);
    shutdown.await;
    let _ = stop.send(true);
    servers.await??;
    Ok(())
}

type Stores = (Arc<dyn UserStore>, Arc<dyn MessageStore>);

/// MongoDB when `DATABASE_URL` is set (users and messages in that one database, or in
/// `DATABASE_NAME`), else embedded.
async fn stores(
    auth: &auth_service::Config,
    chat: &chat_service::Config,
    data_dir: &Path,
) -> anyhow::Result<Stores> {
    if let Some(url) = &auth.database_url {
        // Both configs read the same environment, so both name the same database.
        let name = auth.database_name.as_deref();
        let users =
            Arc::new(MongoUserStore::connect(url, name, "chat-stack", auth.db_timeout).await?);
        let messages =
            Arc::new(MongoMessageStore::connect(url, name, "chat-stack", chat.db_timeout).await?);
        users.ensure_indexes().await?;
        messages.ensure_indexes().await?;
        return Ok((users, messages));
    }
    tracing::info!(dir = %data_dir.display(), "embedded stores");
    let users = open_retrying(|| EmbeddedUserStore::open(&data_dir.join("auth.redb"))).await?;
    let messages =
        open_retrying(|| EmbeddedMessageStore::open(&data_dir.join("chat.redb"))).await?;
    Ok((Arc::new(users), Arc::new(messages)))
}

/// Opens an embedded store, waiting up to 2 s for a previous run in this process (a restart) to
/// let go of the file.
async fn open_retrying<T>(mut open: impl FnMut() -> anyhow::Result<T>) -> anyhow::Result<T> {
    let mut attempts = 0;
    loop {
        match open() {
            Ok(store) => return Ok(store),
            Err(e) if attempts < 20 => {
                attempts += 1;
                tracing::debug!(error = %e, "embedded store busy; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// RabbitMQ when `RABBITMQ_URL` is set, else the in-process bus.
fn events(
    chat: &chat_service::Config,
    ws: &websocket_service::Config,
) -> (Arc<dyn EventPublisher>, EventSource) {
    if let Some(url) = &chat.rabbitmq_url {
        let publisher =
            AmqpPublisher::start(url.clone(), chat.exchange.clone(), chat.publish_timeout);
        let source = EventSource::Amqp {
            url: url.clone(),
            exchange: ws.exchange.clone(),
            prefetch: ws.prefetch,
        };
        return (publisher, source);
    }
    let bus = LocalBus::default();
    (
        Arc::new(LocalPublisher(bus.clone())),
        EventSource::Local(bus),
    )
}
