//! chat-service on its own, with no server anywhere: built by `App::build` in development mode
//! (the embedded store, the in-process bus) next to an in-process auth-service, as `main` builds
//! them, and driven over HTTP on ports picked by the OS.

use std::{net::SocketAddr, time::Duration};

use chat_common::{bus::LocalBus, config::Vars};
use serde_json::{Value, json};
use tokio::sync::oneshot;

const SECRET: &str = "service-test-secret-service-test-secret";

struct Services {
    auth: SocketAddr,
    chat: SocketAddr,
    bus: LocalBus,
    http: reqwest::Client,
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
    let auth_config = auth_service::Config::from_env(&env(dir.path(), &[])).unwrap();
    let auth = auth_service::App::build(&auth_config).await.unwrap();
    let auth_addr = auth.local_addr();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(auth.run(async move {
        let _ = stopped.await;
    }));
    stops.push(stop);
    let config = chat_service::Config::from_env(&env(
        dir.path(),
        &[("AUTH_SERVICE_URL", format!("http://{auth_addr}"))],
    ))
    .unwrap();
    let bus = config.local_bus.clone();
    let chat = chat_service::App::build(&config).await.unwrap();
    let chat_addr = chat.local_addr();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(chat.run(async move {
        let _ = stopped.await;
    }));
    stops.push(stop);
    Services {
        auth: auth_addr,
        chat: chat_addr,
        bus,
        http: reqwest::Client::new(),
        _dir: dir,
        _stops: stops,
    }
}

impl Services {
    async fn call(&self, request: reqwest::RequestBuilder) -> (u16, Value) {
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let body = response.json().await.unwrap_or(Value::Null);
        (status, body)
    }

    /// Registers and logs in `name`; returns the token.
    async fn user(&self, name: &str) -> String {
        let creds = json!({"username": name, "password": "password-123"});
        let url = format!("http://{}/auth/register", self.auth);
        assert_eq!(self.call(self.http.post(url).json(&creds)).await.0, 201);
        let url = format!("http://{}/auth/login", self.auth);
        let (status, body) = self.call(self.http.post(url).json(&creds)).await;
        assert_eq!(status, 200, "{body}");
        body["token"].as_str().unwrap().to_owned()
    }

    async fn send(&self, token: Option<&str>, body: &Value) -> (u16, Value) {
        let mut request = self
            .http
            .post(format!("http://{}/chat/send", self.chat))
            .json(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        self.call(request).await
    }

    async fn history(&self, token: &str, query: &str) -> (u16, Value) {
        let url = format!("http://{}/chat/history?{query}", self.chat);
        self.call(self.http.get(url).bearer_auth(token)).await
    }
}

#[tokio::test]
async fn a_send_is_stored_published_and_read_back() {
    let services = start().await;
    let alice = services.user("alice").await;
    let bob = services.user("bob").await;
    let mut events = services.bus.subscribe();

    let (status, sent) = services
        .send(
            Some(&alice),
            &json!({"recipient": "bob", "content": "hello bob"}),
        )
        .await;
    assert_eq!(status, 201, "{sent}");
    assert_eq!(sent["message"], "Message sent successfully");
    let message = &sent["data"];
    assert_eq!(
        (
            &message["sender"],
            &message["recipient"],
            &message["content"]
        ),
        (&json!("alice"), &json!("bob"), &json!("hello bob"))
    );

    let payload = tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .expect("published within 5 s")
        .unwrap();
    let event: Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(event, json!({"type": "new_message", "data": message}));

    let (status, page) = services.history(&bob, "user1=alice&user2=bob").await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["data"], json!([message]));
}

#[tokio::test]
async fn bad_sends_and_reads_get_a_clear_4xx() {
    let services = start().await;
    let alice = services.user("alice").await;
    services.user("bob").await;
    let carol = services.user("carol").await;
    for (token, body, status) in [
        (None, json!({"recipient": "bob", "content": "hi"}), 401),
        (
            Some("not-a-token"),
            json!({"recipient": "bob", "content": "hi"}),
            401,
        ),
        (
            Some(alice.as_str()),
            json!({"sender": "bob", "recipient": "alice", "content": "hi"}),
            403,
        ),
        (
            Some(alice.as_str()),
            json!({"recipient": "bob", "content": "  "}),
            400,
        ),
        (Some(alice.as_str()), json!({"content": "hi"}), 400),
        (
            Some(alice.as_str()),
            json!({"recipient": "nobody", "content": "hi"}),
            404,
        ),
    ] {
        let (got, answer) = services.send(token, &body).await;
        assert_eq!(got, status, "{body} -> {answer}");
        assert!(answer["message"].is_string(), "{body} -> {answer}");
    }
    for (query, status) in [
        ("user1=alice&user2=bob", 403),
        ("user1=carol", 400),
        ("user1=carol&user2=bob&limit=0", 400),
        ("user1=carol&user2=bob&before=zz", 400),
    ] {
        let (got, answer) = services.history(&carol, query).await;
        assert_eq!(got, status, "{query} -> {answer}");
        assert!(answer["message"].is_string(), "{query} -> {answer}");
    }
}
