//! No credential in any log line or response header: the three services run as processes (as
//! they ship, debug logging on), a whole workflow goes through them (registration, good and bad
//! logins, lookups, sends, reads, sockets authenticated each way a client can, a resume, a bad
//! token), and then every line they logged and every response header they sent is searched
//! for the passwords, their hashes, the tokens and the signing secret. Start-up with credentials
//! in a bad or unreachable server URL is searched the same way.

use std::{process::Command, time::Duration};

use e2e_tests::{
    SECRET,
    faults::{SERIAL, Service},
    wait_ready,
};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const PASSWORDS: [&str; 3] = ["Alice-pw-9f3Kq!", "Bob-pw-7Zt2x?", "Wrong-pw-4Hq8m"];

fn debug_env(extra: &[(&str, String)]) -> Vec<(&'static str, String)> {
    let mut env: Vec<(&'static str, String)> =
        vec![("RUST_LOG", "debug".into()), ("LOG_FORMAT", "json".into())];
    env.extend(extra.iter().map(|(k, v)| {
        let k: &'static str = Box::leak((*k).to_owned().into_boxed_str());
        (k, v.clone())
    }));
    env
}

/// Every secret a log line or header must not hold, with what it is.
struct Secrets(Vec<(String, String)>);

impl Secrets {
    fn add(&mut self, what: &str, value: &str) {
        self.0.push((what.to_owned(), value.to_owned()));
    }

    fn find_in(&self, place: &str, text: &str) -> Vec<String> {
        let mut found = Vec::new();
        for (what, value) in &self.0 {
            if text.contains(value.as_str()) {
                found.push(format!("{what} in {place}"));
            }
        }
        if text.contains("$argon2") {
            found.push(format!("a password hash in {place}"));
        }
        found
    }
}

fn check_headers(secrets: &Secrets, leaks: &mut Vec<String>, what: &str, r: &reqwest::Response) {
    for (name, value) in r.headers() {
        let value = String::from_utf8_lossy(value.as_bytes());
        leaks.extend(secrets.find_in(&format!("{what}'s {name} header"), &value));
    }
}

/// The head of the answer to a WebSocket upgrade sent by hand with `extra` headers.
async fn raw_upgrade(addr: std::net::SocketAddr, extra: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut byte))
            .await
            .expect("an answer")
            .unwrap();
        assert!(n > 0, "closed before the answer's end");
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// Registers alice and bob, tries a wrong password for each, logs them in: their tokens (each
/// added to `secrets`).
async fn register_and_log_in(
    http: &reqwest::Client,
    auth: std::net::SocketAddr,
    secrets: &mut Secrets,
    leaks: &mut Vec<String>,
) -> Vec<String> {
    let a = |path: &str| format!("http://{auth}{path}");
    let mut tokens = Vec::new();
    for (name, password) in [("alice", PASSWORDS[0]), ("bob", PASSWORDS[1])] {
        let r = http
            .post(a("/auth/register"))
            .json(&json!({"username": name, "password": password}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        check_headers(secrets, leaks, "register", &r);
        let r = http
            .post(a("/auth/login"))
            .json(&json!({"username": name, "password": PASSWORDS[2]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        let r = http
            .post(a("/auth/login"))
            .json(&json!({"username": name, "password": password}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        check_headers(secrets, leaks, "login", &r);
        let body: Value = r.json().await.unwrap();
        let token = body["token"].as_str().unwrap().to_owned();
        // The whole token, and its signature alone (what a truncated log line would keep).
        secrets.add(&format!("{name}'s token"), &token);
        secrets.add(
            &format!("{name}'s token signature"),
            token.rsplit('.').next().unwrap(),
        );
        tokens.push(token);
    }
    tokens
}

/// The three services as processes, logging at debug level as JSON, ready.
async fn start_services() -> [Service; 3] {
    let mongodb = chat_common::testing::mongodb_url();
    let db = |name: &str| {
        chat_common::testing::with_database(&mongodb, &chat_common::testing::unique_name(name))
    };
    let exchange = chat_common::testing::unique_name("secrets_exchange");
    let auth = Service::start(
        "auth-service",
        &debug_env(&[("DATABASE_URL", db("secrets_auth"))]),
    )
    .await;
    let chat = Service::start(
        "chat-service",
        &debug_env(&[
            ("DATABASE_URL", db("secrets_chat")),
            ("RABBITMQ_URL", chat_common::testing::rabbitmq_url()),
            ("AUTH_SERVICE_URL", format!("http://{}", auth.addr())),
            ("EXCHANGE_NAME", exchange.clone()),
        ]),
    )
    .await;
    let ws = Service::start(
        "websocket-service",
        &debug_env(&[
            ("RABBITMQ_URL", chat_common::testing::rabbitmq_url()),
            ("CHAT_SERVICE_URL", format!("http://{}", chat.addr())),
            ("EXCHANGE_NAME", exchange),
        ]),
    )
    .await;
    for s in [&auth, &chat, &ws] {
        wait_ready(s.addr()).await;
    }
    [auth, chat, ws]
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Bob's sockets, authenticated each way a client can (and once with a bad token), their
/// answers searched: the one authenticated by the query.
async fn sockets(
    ws: std::net::SocketAddr,
    bob: &str,
    secrets: &Secrets,
    leaks: &mut Vec<String>,
) -> Socket {
    // Bob online three ways: token in the query, as Authorization, as a sub-protocol.
    let ws_url = format!("ws://{ws}");
    let (by_query, _) = tokio_tungstenite::connect_async(format!("{ws_url}/?token={bob}"))
        .await
        .unwrap();
    let mut request = format!("{ws_url}/").into_client_request().unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {bob}").parse().unwrap());
    let (_by_header, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    for (name, value) in response.headers() {
        leaks.extend(secrets.find_in(
            &format!("upgrade's {name} header"),
            &String::from_utf8_lossy(value.as_bytes()),
        ));
    }
    let mut request = format!("{ws_url}/").into_client_request().unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        format!("bearer, {bob}").parse().unwrap(),
    );
    let (_by_protocol, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    for (name, value) in response.headers() {
        leaks.extend(secrets.find_in(
            &format!("upgrade's {name} header"),
            &String::from_utf8_lossy(value.as_bytes()),
        ));
    }
    // A token offered alone as a sub-protocol authenticates too, but is not selected: the
    // handshake answers without echoing it (a strict client then refuses, as it should be
    // told: offer `bearer` next to the token).
    let head = raw_upgrade(ws, &format!("Sec-WebSocket-Protocol: {bob}\r\n")).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    leaks.extend(secrets.find_in("the token-only upgrade's answer", &head));
    let (mut bad, _) = tokio_tungstenite::connect_async(format!("{ws_url}/?token={bob}x"))
        .await
        .unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(2), bad.next()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    by_query
}

#[tokio::test]
async fn no_log_line_or_response_header_holds_a_credential() {
    let _serial = SERIAL.lock().await;
    let [auth, chat, ws] = start_services().await;
    let mut secrets = Secrets(Vec::new());
    secrets.add("the JWT secret", SECRET);
    for (i, p) in PASSWORDS.iter().enumerate() {
        secrets.add(&format!("password {i}"), p);
    }
    let mut leaks = Vec::new();
    let http = reqwest::Client::new();
    let a = |path: &str| format!("http://{}{path}", auth.addr());
    let c = |path: &str| format!("http://{}{path}", chat.addr());

    let tokens = register_and_log_in(&http, auth.addr(), &mut secrets, &mut leaks).await;
    let (alice, bob) = (&tokens[0], &tokens[1]);
    let r = http
        .get(a("/auth/user-by-username?username=bob"))
        .bearer_auth(alice)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    check_headers(&secrets, &mut leaks, "lookup", &r);

    let mut by_query = sockets(ws.addr(), bob, &secrets, &mut leaks).await;

    // Sends, reads, a resume.
    let mut last = String::new();
    for i in 0..3 {
        let r = http
            .post(c("/chat/send"))
            .bearer_auth(alice)
            .header("idempotency-key", format!("key-{i}"))
            .json(&json!({"recipient": "bob", "content": format!("hello {i}")}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        check_headers(&secrets, &mut leaks, "send", &r);
        let body: Value = r.json().await.unwrap();
        last = body["data"]["_id"].as_str().unwrap().to_owned();
    }
    let frame = tokio::time::timeout(Duration::from_secs(5), by_query.next())
        .await
        .expect("a frame")
        .unwrap()
        .unwrap();
    assert!(frame.to_text().unwrap().contains("hello"));
    for path in [
        "/chat/history?user1=alice&user2=bob".to_owned(),
        format!("/chat/messages?after={last}"),
    ] {
        let r = http.get(c(&path)).bearer_auth(bob).send().await.unwrap();
        assert_eq!(r.status(), 200);
        check_headers(&secrets, &mut leaks, &path, &r);
    }
    let (_resumed, _) = tokio_tungstenite::connect_async(format!(
        "ws://{}/?token={bob}&last_id=000000000000000000000000",
        ws.addr()
    ))
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The search itself finds what it looks for.
    assert_eq!(
        secrets
            .find_in(
                "a control line",
                &format!("token={bob} pw={}", PASSWORDS[1])
            )
            .len(),
        3
    );
    for service in [&auth, &chat, &ws] {
        let log = service.log();
        assert!(
            log.lines().count() > 5,
            "{} logged almost nothing: is RUST_LOG=debug applied?\n{log}",
            service.name
        );
        for (n, line) in log.lines().enumerate() {
            leaks.extend(secrets.find_in(&format!("{} log line {}", service.name, n + 1), line));
        }
    }
    assert!(leaks.is_empty(), "credentials leaked: {leaks:#?}");
}

/// A service that cannot start (a malformed URL) or cannot reach its servers says so without
/// the URLs' passwords.
#[tokio::test]
async fn start_up_errors_and_unreachable_servers_never_show_the_urls_passwords() {
    let _serial = SERIAL.lock().await;
    let bin = e2e_tests::faults::service_binary("chat-service");
    let output = Command::new(&bin)
        .env("DATABASE_URL", "mongodb://root:Db-pw-2Lm9@127.0.0.1:1/chat")
        .env("RABBITMQ_URL", "amqp://chat:Mq-pw-8Rk3@mq:not-a-port/%2f")
        .env("JWT_SECRET", SECRET)
        .env("PORT", "0")
        .output()
        .unwrap();
    assert!(!output.status.success(), "a malformed URL stops start-up");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        text.contains("RABBITMQ_URL"),
        "the variable is named: {text}"
    );
    assert!(
        !text.contains("Mq-pw-8Rk3") && !text.contains("Db-pw-2Lm9"),
        "{text}"
    );

    // Well-formed, unreachable: the service runs, is not ready, and logs its retries.
    let auth = Service::start(
        "auth-service",
        &debug_env(&[
            (
                "DATABASE_URL",
                "mongodb://root:Db-pw-2Lm9@127.0.0.1:1/auth?serverSelectionTimeoutMS=300".into(),
            ),
            ("DB_TIMEOUT", "500ms".into()),
        ]),
    )
    .await;
    let http = reqwest::Client::new();
    let r = http
        .get(format!("http://{}/readyz", auth.addr()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let r = http
        .post(format!("http://{}/auth/login", auth.addr()))
        .json(&json!({"username": "alice", "password": PASSWORDS[0]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let log = auth.log();
    assert!(
        log.contains("127.0.0.1:1") || log.contains("unavailable"),
        "{log}"
    );
    assert!(!log.contains("Db-pw-2Lm9"), "{log}");
    assert!(!log.contains(PASSWORDS[0]), "{log}");
}
