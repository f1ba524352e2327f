//! websocket-service on its own, with no server anywhere: built by `App::build` in development
//! mode (events from the in-process bus) next to an in-process auth-service and chat-service
//! (where sockets read their catch-up), as `main` builds them, with a real WebSocket client.

use std::{net::SocketAddr, time::Duration};

use chat_common::{bus::LocalBus, config::Vars, testing};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "service-test-secret-service-test-secret";

struct Services {
    auth: SocketAddr,
    chat: SocketAddr,
    websocket: SocketAddr,
    hub: std::sync::Arc<websocket_service::hub::Hub>,
    bus: LocalBus,
    _dir: tempfile::TempDir,
    _stops: Vec<oneshot::Sender<()>>,
}

fn env(dir: &std::path::Path, extra: &[(&str, String)]) -> Vars<Vec<(String, String)>> {
    testing::dev_env(dir, SECRET, extra)
}

/// The services; chat-service publishes to websocket-service's bus if `connected`, else to a
/// bus of its own (its events then never reach a socket live).
async fn start_with(connected: bool) -> Services {
    let dir = tempfile::tempdir().unwrap();
    let mut stops = Vec::new();
    let auth =
        auth_service::App::build(&auth_service::Config::from_env(&env(dir.path(), &[])).unwrap())
            .await
            .unwrap();
    let auth_addr = auth.local_addr();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(auth.run(async move {
        let _ = stopped.await;
    }));
    stops.push(stop);
    let mut chat_config = chat_service::Config::from_env(&env(
        dir.path(),
        &[("AUTH_SERVICE_URL", format!("http://{auth_addr}"))],
    ))
    .unwrap();
    let mut config = websocket_service::Config::from_env(&env(dir.path(), &[])).unwrap();
    if connected {
        chat_config.local_bus = config.local_bus.clone();
    }
    let chat = chat_service::App::build(&chat_config).await.unwrap();
    let chat_addr = chat.local_addr();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(chat.run(async move {
        let _ = stopped.await;
    }));
    stops.push(stop);
    config.chat_service_url = format!("http://{chat_addr}");
    let bus = config.local_bus.clone();
    let app = websocket_service::App::build(&config).await.unwrap();
    let websocket = app.local_addr();
    let hub = app.hub();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(app.run(async move {
        let _ = stopped.await;
    }));
    stops.push(stop);
    // Ready once the consumer listens on the bus.
    let ready = format!("http://{websocket}/readyz");
    for _ in 0..100 {
        if reqwest::get(&ready).await.is_ok_and(|r| r.status() == 200) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Services {
        auth: auth_addr,
        chat: chat_addr,
        websocket,
        hub,
        bus,
        _dir: dir,
        _stops: stops,
    }
}

impl Services {
    /// Registers and logs in `name`; returns the token.
    async fn user(&self, name: &str) -> String {
        testing::register_and_login(&reqwest::Client::new(), self.auth, name)
            .await
            .1
    }
}

fn event(sender: &str, recipient: &str, content: &str) -> Value {
    json!({"type": "new_message", "data": {
        "_id": "65b9f0c2a1b2c3d4e5f60718", "sender": sender, "recipient": recipient,
        "content": content, "timestamp": "2025-01-31T12:00:00.000Z"}})
}

/// The next text frame as JSON, skipping pings.
async fn next_json<S>(socket: &mut S) -> Value
where
    S: futures_util::Stream<Item = tokio_tungstenite::tungstenite::Result<Message>> + Unpin,
{
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(5), socket.next())
            .await
            .expect("a frame within 5 s")
            .expect("the socket is open")
            .unwrap();
        match frame {
            Message::Text(text) => return serde_json::from_str(&text).unwrap(),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

async fn start() -> Services {
    start_with(true).await
}

#[tokio::test]
async fn an_event_reaches_the_recipients_socket_and_no_one_elses() {
    let services = start().await;
    services.user("alice").await;
    let bob = services.user("bob").await;
    let carol = services.user("carol").await;
    let url = |token: &str| format!("ws://{}/?token={token}", services.websocket);
    let (mut bob_socket, _) = tokio_tungstenite::connect_async(url(&bob)).await.unwrap();
    let (mut carol_socket, _) = tokio_tungstenite::connect_async(url(&carol)).await.unwrap();
    // Sockets register right after the upgrade: give them a moment before publishing.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let sent = event("alice", "bob", "hello bob");
    services
        .bus
        .publish(serde_json::to_vec(&sent).unwrap().into())
        .await;
    let frame = next_json(&mut bob_socket).await;
    // The original's frame: the message's fields and its type, side by side.
    let mut expected = sent["data"].clone();
    expected["type"] = json!("new_message");
    assert_eq!(frame, expected);
    let nothing = tokio::time::timeout(Duration::from_millis(300), carol_socket.next()).await;
    assert!(nothing.is_err(), "carol got {nothing:?}");
}

#[tokio::test]
async fn a_bad_token_is_closed_with_4001() {
    let services = start().await;
    let url = format!("ws://{}/?token=not-a-token", services.websocket);
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let close = tokio::time::timeout(Duration::from_secs(5), socket.next())
        .await
        .expect("closed within 5 s");
    match close {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(u16::from(frame.code), 4001),
        other => panic!("expected a 4001 close, got {other:?}"),
    }
}

impl Services {
    /// Sends through chat-service; returns the message's `_id`.
    async fn send(&self, token: &str, to: &str, content: &str) -> String {
        let response = reqwest::Client::new()
            .post(format!("http://{}/chat/send", self.chat))
            .bearer_auth(token)
            .json(&json!({"recipient": to, "content": content}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        let body: Value = response.json().await.unwrap();
        body["data"]["_id"].as_str().unwrap().to_owned()
    }

    async fn connect(
        &self,
        token: &str,
        last_id: Option<&str>,
    ) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>
    {
        let url = match last_id {
            Some(id) => format!("ws://{}/?token={token}&last_id={id}", self.websocket),
            None => format!("ws://{}/?token={token}", self.websocket),
        };
        let (socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        // Sockets register right after the upgrade.
        tokio::time::sleep(Duration::from_millis(100)).await;
        socket
    }
}

/// The contents of the message frames that arrive until the socket has been quiet for 500 ms.
async fn drain<S>(socket: &mut S) -> Vec<String>
where
    S: futures_util::Stream<Item = tokio_tungstenite::tungstenite::Result<Message>> + Unpin,
{
    let mut contents = Vec::new();
    while let Ok(Some(Ok(frame))) =
        tokio::time::timeout(Duration::from_millis(500), socket.next()).await
    {
        if let Message::Text(text) = frame {
            let frame: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(frame["type"], "new_message", "{frame}");
            contents.push(frame["content"].as_str().unwrap().to_owned());
        }
    }
    contents
}

#[tokio::test]
async fn a_client_resuming_with_last_id_gets_what_it_missed_then_live_ones_each_once() {
    let services = start().await;
    let alice = services.user("alice").await;
    let bob = services.user("bob").await;
    let mut socket = services.connect(&bob, None).await;
    let first = services.send(&alice, "bob", "one").await;
    assert_eq!(drain(&mut socket).await, ["one"]);
    drop(socket);

    services.send(&alice, "bob", "two").await;
    services
        .send(&bob, "alice", "three (from bob's other device)")
        .await;
    let mut socket = services.connect(&bob, Some(&first)).await;
    services.send(&alice, "bob", "four").await;
    assert_eq!(
        drain(&mut socket).await,
        ["two", "three (from bob's other device)", "four"],
        "missed ones oldest first, then live, none twice, not the one it had"
    );

    // A malformed last_id is refused before the upgrade.
    let url = format!("ws://{}/?token={bob}&last_id=nope", services.websocket);
    match tokio_tungstenite::connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 400);
        }
        other => panic!("expected 400, got {other:?}"),
    }
}

#[tokio::test]
async fn after_an_interruption_open_sockets_catch_up_from_the_store() {
    // chat-service publishes where no socket listens: only a catch-up brings the messages.
    let services = start_with(false).await;
    let alice = services.user("alice").await;
    let bob = services.user("bob").await;
    let mut socket = services.connect(&bob, None).await;
    services.send(&alice, "bob", "missed one").await;
    services.send(&alice, "bob", "missed two").await;
    assert!(drain(&mut socket).await.is_empty());
    services.hub.events_interrupted();
    // A live event from the fresh queue arrives before the socket's catch-up runs (its turn
    // comes within a second): the catch-up still starts from before the interruption.
    let later = format!("{:08x}0000000000000001", chat_common::time::now_secs() + 60);
    let mut live = event("alice", "bob", "live after the interruption");
    live["data"]["_id"] = json!(later);
    services
        .bus
        .publish(serde_json::to_vec(&live).unwrap().into())
        .await;
    let mut got = Vec::new();
    for _ in 0..4 {
        got.extend(drain(&mut socket).await);
    }
    assert_eq!(
        got,
        ["live after the interruption", "missed one", "missed two"]
    );
    // Interrupted again: nothing new, nothing repeated.
    services.hub.events_interrupted();
    let mut again = Vec::new();
    for _ in 0..4 {
        again.extend(drain(&mut socket).await);
    }
    assert!(again.is_empty(), "{again:?}");
}
