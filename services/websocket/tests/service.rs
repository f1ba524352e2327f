//! websocket-service on its own, with no server anywhere: built by `App::build` in development
//! mode (events from the in-process bus) next to an in-process auth-service, as `main` builds
//! them, with a real WebSocket client.

use std::{net::SocketAddr, time::Duration};

use chat_common::{bus::LocalBus, config::Vars};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "service-test-secret-service-test-secret";

struct Services {
    auth: SocketAddr,
    websocket: SocketAddr,
    bus: LocalBus,
    _dir: tempfile::TempDir,
    _stops: Vec<oneshot::Sender<()>>,
}

fn env(dir: &std::path::Path, extra: &[(&str, String)]) -> Vars<Vec<(String, String)>> {
    let mut vars = vec![
        ("CHAT_DEV_MODE".to_owned(), "true".to_owned()),
        ("JWT_SECRET".to_owned(), SECRET.to_owned()),
        ("BIND_ADDR".to_owned(), "127.0.0.1".to_owned()),
        ("PORT".to_owned(), "0".to_owned()),
        ("DATA_DIR".to_owned(), dir.display().to_string()),
    ];
    vars.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
    Vars(vars)
}

async fn start() -> Services {
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
    let config = websocket_service::Config::from_env(&env(
        dir.path(),
        &[("AUTH_SERVICE_URL", format!("http://{auth_addr}"))],
    ))
    .unwrap();
    let bus = config.local_bus.clone();
    let app = websocket_service::App::build(&config).await.unwrap();
    let websocket = app.local_addr();
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
        websocket,
        bus,
        _dir: dir,
        _stops: stops,
    }
}

impl Services {
    /// Registers and logs in `name`; returns the token.
    async fn user(&self, name: &str) -> String {
        let http = reqwest::Client::new();
        let creds = json!({"username": name, "password": "password-123"});
        let url = format!("http://{}/auth/register", self.auth);
        assert_eq!(
            http.post(url).json(&creds).send().await.unwrap().status(),
            201
        );
        let url = format!("http://{}/auth/login", self.auth);
        let body: Value = http
            .post(url)
            .json(&creds)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        body["token"].as_str().unwrap().to_owned()
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
