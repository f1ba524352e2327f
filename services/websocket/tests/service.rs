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
    stops: Vec<oneshot::Sender<()>>,
}

fn env(dir: &std::path::Path, extra: &[(&str, String)]) -> Vars<Vec<(String, String)>> {
    testing::dev_env(dir, SECRET, extra)
}

/// The services; chat-service publishes to websocket-service's bus if `connected`, else to a
/// bus of its own (its events then never reach a socket live).
async fn start_with(connected: bool) -> Services {
    start_configured(connected, &[]).await
}

/// As [`start_with`], websocket-service with `ws_extra` in its environment.
async fn start_configured(connected: bool, ws_extra: &[(&str, String)]) -> Services {
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
    let mut config = websocket_service::Config::from_env(&env(dir.path(), ws_extra)).unwrap();
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
        stops,
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

    async fn connect(&self, token: &str, last_id: Option<&str>) -> Socket {
        let query = last_id
            .map(|id| format!("last_id={id}"))
            .unwrap_or_default();
        self.connect_with(token, &query).await
    }

    /// A socket of `token`'s user with `query` (such as `events=read,typing`) after its token.
    async fn connect_with(&self, token: &str, query: &str) -> Socket {
        let url = format!("ws://{}/?token={token}&{query}", self.websocket);
        let (socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        // Sockets register right after the upgrade.
        tokio::time::sleep(Duration::from_millis(100)).await;
        socket
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The contents of the message frames that arrive until the socket has been quiet for 500 ms.
async fn drain(socket: &mut Socket) -> Vec<String> {
    frames(socket)
        .await
        .into_iter()
        .map(|frame| {
            assert_eq!(frame["type"], "new_message", "{frame}");
            frame["content"].as_str().unwrap().to_owned()
        })
        .collect()
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
    assert_eq!(refused_upgrade(url).await.status(), 400);
}

/// The HTTP answer that refused the upgrade to `url` (the test fails if the upgrade succeeds).
async fn refused_upgrade(
    url: String,
) -> Box<tokio_tungstenite::tungstenite::handshake::client::Response> {
    match tokio_tungstenite::connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => response,
        other => panic!("expected the upgrade to be refused, got {other:?}"),
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

/// The close frame that ends `socket` within 5 s (frames before it skipped).
async fn close_code<S>(socket: &mut S) -> Option<u16>
where
    S: futures_util::Stream<Item = tokio_tungstenite::tungstenite::Result<Message>> + Unpin,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(deadline, socket.next())
            .await
            .expect("closed within 5 s")
        {
            Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => {}
            None | Some(Err(_)) => return None,
        }
    }
}

/// The attack from the issue: one user opening sockets without end. The 11th closes the
/// oldest (4008); the newest ten keep getting the user's messages.
#[tokio::test]
async fn a_users_eleventh_socket_closes_their_oldest_with_4008() {
    let services = start_configured(true, &[("WS_MAX_SOCKETS_PER_USER", "10".into())]).await;
    let alice = services.user("alice").await;
    let bob = services.user("bob").await;
    let mut sockets = Vec::new();
    for _ in 0..11 {
        sockets.push(services.connect(&bob, None).await);
    }
    assert_eq!(services.hub.open_sockets(), 10);
    let mut oldest = sockets.remove(0);
    assert_eq!(close_code(&mut oldest).await, Some(4008));
    services.send(&alice, "bob", "to every device").await;
    for socket in &mut sockets {
        assert_eq!(next_json(socket).await["content"], "to every device");
    }
    let metrics = services.metrics().await;
    assert_eq!(
        chat_common::metrics::sample(&metrics, "ws_sockets_evicted_total"),
        Some(1.0)
    );
}

#[tokio::test]
async fn a_full_replica_refuses_upgrades_with_503() {
    let services = start_configured(true, &[("WS_MAX_SOCKETS", "3".into())]).await;
    let bob = services.user("bob").await;
    let carol = services.user("carol").await;
    let held = [
        services.connect(&bob, None).await,
        services.connect(&bob, None).await,
        services.connect(&carol, None).await,
    ];
    let refused = refused_upgrade(format!("ws://{}/?token={carol}", services.websocket)).await;
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    drop(held);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _again = services.connect(&carol, None).await;
    assert_eq!(
        services.hub.open_sockets(),
        1,
        "room again once sockets close"
    );
}

#[tokio::test]
async fn a_client_flooding_frames_is_closed_with_1008() {
    use futures_util::SinkExt;
    let services = start_configured(true, &[("WS_MAX_FRAMES_PER_SEC", "10".into())]).await;
    let bob = services.user("bob").await;
    let mut socket = services.connect(&bob, None).await;
    for i in 0..100 {
        if socket
            .send(Message::text(format!("spam {i}")))
            .await
            .is_err()
        {
            break;
        }
    }
    assert_eq!(close_code(&mut socket).await, Some(1008));
    // Within the rate, a client is never bothered.
    let mut calm = services.connect(&bob, None).await;
    for _ in 0..10 {
        calm.send(Message::Pong(Vec::new().into())).await.unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let quiet = tokio::time::timeout(Duration::from_millis(300), calm.next()).await;
    assert!(quiet.is_err(), "still open, nothing sent: {quiet:?}");
}

/// A client that keeps sending but never reads cannot answer pings (their payload changes each
/// time), so it is dropped after two ping intervals however busy its own side is.
#[tokio::test]
async fn a_client_that_sends_but_never_reads_is_dropped() {
    use futures_util::SinkExt;
    let services = start_configured(true, &[("WS_PING_INTERVAL", "300ms".into())]).await;
    let bob = services.user("bob").await;
    let socket = services.connect(&bob, None).await;
    let (mut sink, _never_read) = socket.split();
    let started = std::time::Instant::now();
    while services.hub.open_sockets() > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "still registered after {:?}",
            started.elapsed()
        );
        // Unsolicited pongs, as a client's heartbeat: they do not prove it reads.
        let _ = sink.send(Message::Pong(Vec::new().into())).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
}

/// A token offered as a sub-protocol is used, never echoed: the answer selects `bearer`.
#[tokio::test]
async fn a_token_in_the_protocol_header_is_never_echoed() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let services = start().await;
    let bob = services.user("bob").await;
    let mut request = format!("ws://{}/", services.websocket)
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        format!("bearer, {bob}").parse().unwrap(),
    );
    let (mut socket, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(response.headers()["sec-websocket-protocol"], "bearer");
    for (name, value) in response.headers() {
        assert!(
            !value.to_str().unwrap_or_default().contains(&bob),
            "{name} echoes the token"
        );
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let alice = services.user("alice").await;
    services
        .send(&alice, "bob", "authenticated by protocol")
        .await;
    assert_eq!(
        next_json(&mut socket).await["content"],
        "authenticated by protocol"
    );
}

/// SIGTERM's path: the server stops and every socket is closed with 1001 before it exits.
#[tokio::test]
async fn shutdown_closes_every_socket_with_1001() {
    let mut services = start().await;
    let bob = services.user("bob").await;
    let mut a = services.connect(&bob, None).await;
    let mut b = services.connect(&bob, None).await;
    // The websocket replica's stop is the last one pushed.
    drop(services.stops.pop());
    assert_eq!(close_code(&mut a).await, Some(1001));
    assert_eq!(close_code(&mut b).await, Some(1001));
}

impl Services {
    /// `POST /chat/read` as `token`'s user; the status.
    async fn mark_read(&self, token: &str, peer: &str, up_to: &str) -> u16 {
        reqwest::Client::new()
            .post(format!("http://{}/chat/read", self.chat))
            .bearer_auth(token)
            .json(&json!({"peer": peer, "upTo": up_to}))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    async fn metrics(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.websocket))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

/// Every text frame, as JSON, that arrives until the socket has been quiet for 500 ms.
async fn frames(socket: &mut Socket) -> Vec<Value> {
    let mut frames = Vec::new();
    while let Ok(Some(Ok(frame))) =
        tokio::time::timeout(Duration::from_millis(500), socket.next()).await
    {
        match frame {
            Message::Text(text) => frames.push(serde_json::from_str(&text).unwrap()),
            Message::Close(close) => panic!("closed: {close:?}"),
            _ => {}
        }
    }
    frames
}

async fn send_frame(socket: &mut Socket, frame: Message) {
    use futures_util::SinkExt;
    socket.send(frame).await.unwrap();
}

fn typing_to(to: &str) -> Message {
    Message::text(json!({"type": "typing", "to": to}).to_string())
}

#[tokio::test]
async fn read_and_typing_frames_reach_only_the_sockets_that_asked_for_them() {
    let services = start().await;
    let alice = services.user("alice").await;
    let bob = services.user("bob").await;
    let mut bob_plain = services.connect(&bob, None).await;
    let mut bob_app = services.connect_with(&bob, "events=read,typing").await;
    let mut alice_read = services.connect_with(&alice, "events=read").await;
    let mut alice_typing = services.connect_with(&alice, "events=typing").await;
    // Sent once the sockets are registered (`connect_with` waits), so each one gets it live.
    let first = services.send(&alice, "bob", "hello").await;
    for socket in [
        &mut bob_plain,
        &mut bob_app,
        &mut alice_read,
        &mut alice_typing,
    ] {
        let got = frames(socket).await;
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0]["_id"], json!(first), "{got:?}");
    }

    send_frame(&mut alice_typing, typing_to("bob")).await;
    assert_eq!(
        frames(&mut bob_app).await,
        [json!({"type": "typing", "from": "alice"})]
    );

    assert_eq!(services.mark_read(&bob, "alice", &first).await, 204);
    let receipt = json!({"type": "read", "reader": "bob", "peer": "alice", "upTo": first});
    assert_eq!(
        frames(&mut alice_read).await,
        std::slice::from_ref(&receipt),
        "the peer"
    );
    assert_eq!(
        frames(&mut bob_app).await,
        [receipt],
        "the reader's other devices"
    );
    // Read again, nothing moves: no receipt.
    assert_eq!(services.mark_read(&bob, "alice", &first).await, 204);
    assert!(frames(&mut alice_read).await.is_empty());

    // Messages reach every socket, whatever it asked for; a socket that asked for nothing (a
    // client of the original system) sees nothing else.
    services.send(&alice, "bob", "after").await;
    let plain = frames(&mut bob_plain).await;
    assert_eq!(plain.len(), 1, "{plain:?}");
    assert_eq!(plain[0]["type"], "new_message");
    assert_eq!(frames(&mut bob_app).await[0]["content"], "after");
    let typing_only = frames(&mut alice_typing).await;
    assert_eq!(typing_only.len(), 1, "{typing_only:?}");
    assert_eq!(typing_only[0]["type"], "new_message", "{typing_only:?}");

    // The list of events is checked at the upgrade.
    let url = format!(
        "ws://{}/?token={bob}&events=read,presence",
        services.websocket
    );
    assert_eq!(refused_upgrade(url).await.status(), 400);
}

#[tokio::test]
async fn typing_is_dropped_for_strangers_and_beyond_its_rate_and_bad_frames_get_error_frames() {
    let services = start().await;
    let alice = services.user("alice").await;
    let bob = services.user("bob").await;
    let carol = services.user("carol").await;
    services.send(&bob, "alice", "hi").await;
    let mut bob_socket = services.connect_with(&bob, "events=typing").await;
    let mut carol_socket = services.connect_with(&carol, "events=typing").await;
    let mut alice_socket = services.connect(&alice, None).await;
    assert_eq!(frames(&mut bob_socket).await.len(), 0);

    // Carol has never exchanged a message with Alice.
    let mut alice_other = services.connect(&alice, None).await;
    send_frame(&mut alice_other, typing_to("carol")).await;
    assert!(frames(&mut carol_socket).await.is_empty());

    // Five at once: the burst of three goes through.
    for _ in 0..5 {
        send_frame(&mut alice_socket, typing_to("bob")).await;
    }
    let got = frames(&mut bob_socket).await;
    assert_eq!(got.len(), 3, "{got:?}");
    assert!(
        got.iter()
            .all(|f| *f == json!({"type": "typing", "from": "alice"}))
    );
    assert!(
        frames(&mut alice_socket).await.is_empty(),
        "dropped typing frames are not answered"
    );

    // What a client cannot send gets an error frame, and the socket stays open.
    for bad in [
        Message::text("hello"),
        Message::text(r#"{"type":"send","content":"x"}"#),
        Message::text(r#"{"type":"typing"}"#),
        Message::binary(vec![1, 2, 3]),
    ] {
        send_frame(&mut alice_other, bad).await;
        let answer = frames(&mut alice_other).await;
        assert_eq!(answer.len(), 1, "{answer:?}");
        assert_eq!(answer[0]["type"], "error");
        assert!(answer[0]["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    services.send(&bob, "alice", "still open").await;
    assert_eq!(frames(&mut alice_other).await[0]["content"], "still open");

    let metrics = services.metrics().await;
    for (name, expected) in [
        (
            r#"ws_typing_total{outcome="forwarded",service="websocket"}"#,
            3.0,
        ),
        (
            r#"ws_typing_total{outcome="rate_limited",service="websocket"}"#,
            2.0,
        ),
        (
            r#"ws_typing_total{outcome="no_conversation",service="websocket"}"#,
            1.0,
        ),
        ("ws_client_frame_errors_total", 4.0),
    ] {
        assert_eq!(
            chat_common::metrics::sample(&metrics, name),
            Some(expected),
            "{name} in\n{metrics}"
        );
    }
}

#[tokio::test]
async fn a_plain_get_gets_the_web_client_and_upgrades_still_work_there() {
    let services = start().await;
    let page = reqwest::get(format!("http://{}/", services.websocket))
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let header = |name: &str| page.headers()[name].to_str().unwrap().to_owned();
    assert_eq!(header("content-type"), "text/html; charset=utf-8");
    assert!(header("content-security-policy").contains("script-src 'self'"));
    assert_eq!(header("x-content-type-options"), "nosniff");
    assert!(page.text().await.unwrap().contains(r#"src="app.js""#));
    for (path, kind) in [("/app.js", "text/javascript"), ("/style.css", "text/css")] {
        let file = reqwest::get(format!("http://{}{path}", services.websocket))
            .await
            .unwrap();
        assert_eq!(file.status(), 200, "{path}");
        assert!(
            file.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with(kind)
        );
    }
    let bob = services.user("bob").await;
    let mut socket = services.connect(&bob, None).await;
    services.send(&bob, "bob", "a note").await;
    assert_eq!(next_json(&mut socket).await["content"], "a note");

    // Switched off, a plain GET is the API's 400 again.
    let off = start_configured(true, &[("WEB_CLIENT", "false".into())]).await;
    let page = reqwest::get(format!("http://{}/", off.websocket))
        .await
        .unwrap();
    assert_eq!(page.status(), 400);
    let page = reqwest::get(format!("http://{}/app.js", off.websocket))
        .await
        .unwrap();
    assert_eq!(page.status(), 404);
}
