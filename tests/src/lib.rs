//! Spawns the three services in-process on `127.0.0.1:0` against the real RabbitMQ and
//! MongoDB-compatible servers (each stack with its own databases and its own exchange, so tests
//! run in parallel), plus HTTP and WebSocket client helpers.

pub mod faults;

use std::{net::SocketAddr, time::Duration};

use chat_common::{config::Vars, testing};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::{net::TcpStream, sync::oneshot};
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream,
    tungstenite::{Message, client::IntoClientRequest, protocol::CloseFrame},
};

pub const SECRET: &str = "e2e-secret-e2e-secret-e2e-secret-012345";

/// Stops a spawned service when dropped.
pub struct Running {
    pub addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

fn vars(extra: &[(&str, String)]) -> Vars<Vec<(String, String)>> {
    let mut v = vec![
        ("BIND_ADDR".to_owned(), "127.0.0.1".to_owned()),
        ("PORT".to_owned(), "0".to_owned()),
        ("JWT_SECRET".to_owned(), SECRET.to_owned()),
        ("DB_TIMEOUT".to_owned(), "3s".to_owned()),
    ];
    v.extend(
        testing::LOAD_TEST_LIMITS
            .iter()
            .map(|(k, val)| ((*k).to_owned(), (*val).to_owned())),
    );
    v.extend(extra.iter().map(|(k, val)| ((*k).to_owned(), val.clone())));
    Vars(v)
}

/// Serves a built service until the returned handle is dropped.
fn serve<F>(addr: SocketAddr, run: impl FnOnce(oneshot::Receiver<()>) -> F) -> Running
where
    F: std::future::Future<Output = std::io::Result<()>> + Send + 'static,
{
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(run(stopped));
    Running { addr, _stop: stop }
}

/// auth-service over `database_url`, built as its `main` builds it, once ready.
pub async fn spawn_auth(database_url: &str) -> Running {
    let config =
        auth_service::Config::from_env(&vars(&[("DATABASE_URL", database_url.to_owned())]))
            .unwrap();
    let app = auth_service::App::build(&config).await.unwrap();
    let running = serve(app.local_addr(), |stopped| {
        app.run(async move {
            let _ = stopped.await;
        })
    });
    wait_ready(running.addr).await;
    running
}

pub async fn spawn_chat(database_url: &str, auth: SocketAddr, exchange: &str) -> Running {
    let running =
        spawn_chat_with_broker(database_url, auth, exchange, &testing::rabbitmq_url()).await;
    wait_ready(running.addr).await;
    running
}

/// chat-service publishing to `rabbitmq_url` (which may be unreachable); not waited for.
pub async fn spawn_chat_with_broker(
    database_url: &str,
    auth: SocketAddr,
    exchange: &str,
    rabbitmq_url: &str,
) -> Running {
    let config = chat_service::Config::from_env(&vars(&[
        ("DATABASE_URL", database_url.to_owned()),
        ("RABBITMQ_URL", rabbitmq_url.to_owned()),
        ("AUTH_SERVICE_URL", format!("http://{auth}")),
        ("EXCHANGE_NAME", exchange.to_owned()),
    ]))
    .unwrap();
    let app = chat_service::App::build(&config).await.unwrap();
    serve(app.local_addr(), |stopped| {
        app.run(async move {
            let _ = stopped.await;
        })
    })
}

/// A websocket-service replica consuming `exchange`, once ready; its sockets catch up from the
/// chat-service at `chat`.
pub async fn spawn_ws(chat: SocketAddr, exchange: &str, extra: &[(&str, String)]) -> Running {
    let mut all = vec![
        ("RABBITMQ_URL", testing::rabbitmq_url()),
        ("CHAT_SERVICE_URL", format!("http://{chat}")),
        ("EXCHANGE_NAME", exchange.to_owned()),
    ];
    all.extend(extra.iter().cloned());
    let config = websocket_service::Config::from_env(&vars(&all)).unwrap();
    let app = websocket_service::App::build(&config).await.unwrap();
    let running = serve(app.local_addr(), |stopped| {
        app.run(async move {
            let _ = stopped.await;
        })
    });
    wait_ready(running.addr).await;
    running
}

/// Polls `/readyz` until 200 (at most 15 s).
pub async fn wait_ready(addr: SocketAddr) {
    let http = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(r) = http.get(format!("http://{addr}/readyz")).send().await
            && r.status() == 200
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{addr} not ready within 15 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// auth + chat + `replicas` websocket-services, with their own databases and exchange.
pub struct Stack {
    pub auth: Running,
    pub chat: Running,
    pub ws: Vec<Running>,
    pub exchange: String,
    /// chat-service's database URL (to plant documents as the original system wrote them).
    pub chat_db: String,
    pub http: reqwest::Client,
}

impl Stack {
    pub async fn start(replicas: usize) -> Self {
        Self::start_with(replicas, &[]).await
    }

    pub async fn start_with(replicas: usize, ws_extra: &[(&str, String)]) -> Self {
        let (auth_db, _) = testing::mongodb_url_with_fresh_database("e2e_auth");
        let (chat_db, _) = testing::mongodb_url_with_fresh_database("e2e_chat");
        let exchange = testing::unique_name("e2e_exchange");
        let auth = spawn_auth(&auth_db).await;
        let chat = spawn_chat(&chat_db, auth.addr, &exchange).await;
        let mut ws = Vec::new();
        for _ in 0..replicas {
            ws.push(spawn_ws(chat.addr, &exchange, ws_extra).await);
        }
        Self {
            auth,
            chat,
            ws,
            exchange,
            chat_db,
            http: reqwest::Client::new(),
        }
    }

    /// chat-service's `messages` collection, to plant documents as other writers wrote them.
    pub async fn messages(&self) -> mongodb::Collection<mongodb::bson::Document> {
        let client = mongodb::Client::with_uri_str(&self.chat_db)
            .await
            .expect("chat database URL");
        client
            .default_database()
            .expect("chat database named in its URL")
            .collection("messages")
    }

    /// Registers and logs in `username`; returns (id, token).
    pub async fn user(&self, username: &str) -> (String, String) {
        testing::register_and_login(&self.http, self.auth.addr, username).await
    }

    pub async fn post(
        &self,
        addr: SocketAddr,
        path: &str,
        token: Option<&str>,
        body: &Value,
    ) -> (u16, Value) {
        let mut req = self.http.post(format!("http://{addr}{path}")).json(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        read(req.send().await.unwrap()).await
    }

    pub async fn post_raw(&self, path: &str, token: &str, body: Vec<u8>) -> (u16, Value) {
        let req = self
            .http
            .post(format!("http://{}{path}", self.chat.addr))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body);
        read(req.send().await.unwrap()).await
    }

    pub async fn get(
        &self,
        addr: SocketAddr,
        path_and_query: &str,
        token: Option<&str>,
    ) -> (u16, Value) {
        let mut req = self.http.get(format!("http://{addr}{path_and_query}"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        read(req.send().await.unwrap()).await
    }

    /// `POST /chat/send` as the token's user.
    pub async fn send(&self, token: &str, recipient: &str, content: &str) -> (u16, Value) {
        self.post(
            self.chat.addr,
            "/chat/send",
            Some(token),
            &json!({ "recipient": recipient, "content": content }),
        )
        .await
    }

    pub async fn history(&self, token: &str, query: &str) -> (u16, Value) {
        self.get(
            self.chat.addr,
            &format!("/chat/history?{query}"),
            Some(token),
        )
        .await
    }

    pub async fn metrics(&self, addr: SocketAddr) -> String {
        self.http
            .get(format!("http://{addr}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Connects to websocket replica `replica` with `?token=`.
    pub async fn connect(&self, replica: usize, token: &str) -> Client {
        Client::connect(&format!("ws://{}/?token={token}", self.ws[replica].addr)).await
    }

    /// Connects to replica `replica` with `?token=&{query}` (such as `events=read,typing`), then
    /// waits until the replica has registered the socket (its `ws_open_sockets` grew): an event
    /// published from then on reaches it. Sockets of one test connect one after another.
    pub async fn connect_registered(&self, replica: usize, token: &str, query: &str) -> Client {
        let addr = self.ws[replica].addr;
        let open = metric(&self.metrics(addr).await, "ws_open_sockets");
        let client = Client::connect(&format!("ws://{addr}/?token={token}&{query}")).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while metric(&self.metrics(addr).await, "ws_open_sockets") <= open {
            assert!(
                tokio::time::Instant::now() < deadline,
                "replica {replica} did not register the socket within 5 s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        client
    }
}

/// `field` of every message of a history answer (`{"data": [...]}`), in order.
pub fn page_field(body: &Value, field: &str) -> Vec<String> {
    body["data"]
        .as_array()
        .expect("a history answer")
        .iter()
        .map(|m| m[field].as_str().expect("a string field").to_owned())
        .collect()
}

/// The integer value of the first sample of metric `name` (counters and gauges).
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
pub fn metric(text: &str, name: &str) -> u64 {
    chat_common::metrics::sample(text, name)
        .unwrap_or_else(|| panic!("metric {name} not found in:\n{text}")) as u64
}

pub use chat_common::testing::read_json as read;

/// A WebSocket client.
pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub protocol: Option<String>,
}

impl Client {
    pub async fn connect(url: &str) -> Self {
        Self::connect_request(url).await
    }

    pub async fn connect_request(request: impl IntoClientRequest + Unpin) -> Self {
        let (ws, response) = tokio_tungstenite::connect_async(request)
            .await
            .expect("websocket connect");
        let protocol = response
            .headers()
            .get("sec-websocket-protocol")
            .map(|v| v.to_str().unwrap().to_owned());
        Self { ws, protocol }
    }

    /// The next JSON text frame within `wait`, or `None`.
    pub async fn next_json(&mut self, wait: Duration) -> Option<Value> {
        let text = self.next_text(wait).await?;
        Some(serde_json::from_str(&text).expect("JSON frame"))
    }

    /// The next text frame within `wait`, or `None`.
    pub async fn next_text(&mut self, wait: Duration) -> Option<String> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()??;
            match msg {
                Ok(Message::Text(t)) => return Some(t.to_string()),
                Ok(Message::Ping(_) | Message::Pong(_)) => {}
                Ok(other) => panic!("unexpected frame {other:?}"),
                Err(e) => panic!("websocket error {e}"),
            }
        }
    }

    /// Waits for the close frame (skipping data frames) and returns its code and reason.
    pub async fn closed(&mut self, wait: Duration) -> Option<(u16, String)> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()?
            {
                Some(Ok(Message::Close(Some(CloseFrame { code, reason })))) => {
                    return Some((code.into(), reason.to_string()));
                }
                Some(Ok(Message::Close(None))) | None => return Some((1005, String::new())),
                Some(Ok(_)) => {}
                Some(Err(_)) => return Some((1006, String::new())),
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

/// Publishes raw payloads straight to `exchange` (as chat-service would), confirmed.
pub async fn publish_raw(exchange: &str, payloads: impl IntoIterator<Item = Vec<u8>>) {
    use lapin::options::ConfirmSelectOptions;
    let conn = chat_common::amqp::connect(&testing::rabbitmq_url(), "e2e-publisher")
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    chat_common::amqp::declare_exchange(&channel, exchange)
        .await
        .unwrap();
    let mut confirms = Vec::new();
    for p in payloads {
        confirms.push(
            chat_common::amqp::publish_event(&channel, exchange, &p)
                .await
                .unwrap(),
        );
    }
    for c in confirms {
        c.await.unwrap();
    }
    let _ = conn.close(200, "done".into()).await;
}

/// A token for `id`/`username` expiring in `ttl_secs` (may be negative), signed with `key`.
pub fn forge_token(id: &str, username: &str, ttl_secs: i64, key: &[u8]) -> String {
    let now = i64::try_from(chat_common::time::now_secs()).unwrap();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({ "id": id, "username": username, "iat": now, "exp": now + ttl_secs }),
        &jsonwebtoken::EncodingKey::from_secret(key),
    )
    .unwrap()
}

/// The standalone stack (`chat-stack`) served in-process on ephemeral ports of `127.0.0.1`, its
/// data in `dir`, with `extra` variables on top.
pub struct Standalone {
    pub addrs: chat_stack::Addrs,
    stop: oneshot::Sender<()>,
    done: tokio::task::JoinHandle<Result<(), String>>,
}

impl Standalone {
    pub async fn start(dir: &std::path::Path, extra: &[(&str, &str)]) -> Self {
        let env: Vec<(String, String)> = [
            ("DATA_DIR", dir.to_str().unwrap()),
            ("BIND_ADDR", "127.0.0.1"),
            ("AUTH_PORT", "0"),
            ("CHAT_PORT", "0"),
            ("WS_PORT", "0"),
        ]
        .iter()
        .chain(extra)
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        let (stop, stopped) = oneshot::channel::<()>();
        let (ready, addrs) = oneshot::channel();
        let done = tokio::spawn(async move {
            chat_stack::run(
                env,
                async move {
                    let _ = stopped.await;
                },
                move |a| {
                    let _ = ready.send(a);
                },
            )
            .await
            .map_err(|e| format!("{e:#}"))
        });
        let addrs = tokio::time::timeout(Duration::from_secs(10), addrs)
            .await
            .expect("the stack starts within 10 s")
            .expect("the stack runs");
        Self { addrs, stop, done }
    }

    /// Shuts the stack down and checks that it drained and exited cleanly.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(10), self.done)
            .await
            .expect("the stack stops within 10 s")
            .unwrap()
            .unwrap();
    }
}

/// POSTs `body` as JSON to `url`, with `token` as bearer when given; the status and JSON body.
pub async fn post_json(
    http: &reqwest::Client,
    url: String,
    token: Option<&str>,
    body: &Value,
) -> (u16, Value) {
    let mut req = http.post(url).json(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    read(req.send().await.unwrap()).await
}
