//! chat-service on its own, with no server anywhere: built by `App::build` in development mode
//! (the embedded store, the in-process bus) next to an in-process auth-service, as `main` builds
//! them, and driven over HTTP on ports picked by the OS.

use std::{net::SocketAddr, time::Duration};

use chat_common::{bus::LocalBus, config::Vars, testing};
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
    testing::dev_env(dir, SECRET, extra)
}

async fn start() -> Services {
    start_with(&[]).await
}

async fn start_with(chat_extra: &[(&str, String)]) -> Services {
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
    let mut chat_env = vec![("AUTH_SERVICE_URL", format!("http://{auth_addr}"))];
    chat_env.extend(chat_extra.iter().cloned());
    let config = chat_service::Config::from_env(&env(dir.path(), &chat_env)).unwrap();
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
        testing::register_and_login(&self.http, self.auth, name)
            .await
            .1
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

impl Services {
    async fn send_keyed(&self, token: &str, key: &str, body: &Value) -> (u16, Value, bool) {
        let response = self
            .http
            .post(format!("http://{}/chat/send", self.chat))
            .bearer_auth(token)
            .header("Idempotency-Key", key)
            .json(body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let replayed = response.headers().get("idempotent-replayed").is_some();
        (
            status,
            response.json().await.unwrap_or(Value::Null),
            replayed,
        )
    }

    async fn messages(&self, token: &str, query: &str) -> (u16, Value) {
        let url = format!("http://{}/chat/messages?{query}", self.chat);
        self.call(self.http.get(url).bearer_auth(token)).await
    }
}

#[tokio::test]
async fn a_retried_send_with_its_idempotency_key_is_stored_once() {
    let services = start().await;
    let alice = services.user("alice").await;
    let bob = services.user("bob").await;
    let body = json!({"recipient": "bob", "content": "exactly once"});

    let (status, first, replayed) = services.send_keyed(&alice, "key-1", &body).await;
    assert_eq!((status, replayed), (201, false), "{first}");
    let (status, again, replayed) = services.send_keyed(&alice, "key-1", &body).await;
    assert_eq!((status, replayed), (200, true), "{again}");
    assert_eq!(
        again["data"], first["data"],
        "the original message, same _id"
    );

    // Retries racing each other: one message, every answer names it.
    let racing: Vec<_> = (0..8)
        .map(|_| services.send_keyed(&alice, "key-2", &body))
        .collect();
    let answers = futures_util::future::join_all(racing).await;
    let ids: std::collections::BTreeSet<_> = answers
        .iter()
        .map(|(status, answer, _)| {
            assert!(matches!(status, 200 | 201), "{status} {answer}");
            answer["data"]["_id"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(ids.len(), 1, "{answers:?}");
    assert_eq!(answers.iter().filter(|(s, _, _)| *s == 201).count(), 1);

    // The same key for another message is a client bug; another sender's key is their own.
    let other = json!({"recipient": "bob", "content": "something else"});
    let (status, answer, _) = services.send_keyed(&alice, "key-1", &other).await;
    assert_eq!(status, 422, "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("Idempotency-Key")
    );
    let (status, answer, _) = services
        .send_keyed(
            &bob,
            "key-1",
            &json!({"recipient": "alice", "content": "mine"}),
        )
        .await;
    assert_eq!(status, 201, "{answer}");
    for bad in ["", &"k".repeat(256), "two words"] {
        let (status, answer, _) = services.send_keyed(&alice, bad, &body).await;
        assert_eq!(status, 400, "{bad:?}: {answer}");
    }

    let (_, page) = services.history(&bob, "user1=alice&user2=bob").await;
    let stored: Vec<&str> = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(stored, ["exactly once", "exactly once", "mine"]);
}

#[tokio::test]
async fn a_users_messages_in_every_conversation_come_back_oldest_first() {
    let services = start().await;
    let alice = services.user("alice").await;
    let bob = services.user("bob").await;
    let carol = services.user("carol").await;
    let mut ids = Vec::new();
    for (token, to, content) in [
        (&alice, "bob", "a->b"),
        (&carol, "bob", "c->b"),
        (&bob, "alice", "b->a"),
        (&alice, "carol", "a->c (not bob's)"),
        (&bob, "bob", "note to self"),
    ] {
        let (status, sent) = services
            .send(Some(token), &json!({"recipient": to, "content": content}))
            .await;
        assert_eq!(status, 201, "{sent}");
        ids.push(sent["data"]["_id"].as_str().unwrap().to_owned());
    }
    let contents = |page: &Value| -> Vec<String> {
        page["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["content"].as_str().unwrap().to_owned())
            .collect()
    };
    let (status, page) = services.messages(&bob, "").await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(contents(&page), ["a->b", "c->b", "b->a", "note to self"]);
    let (_, page) = services.messages(&bob, &format!("after={}", ids[1])).await;
    assert_eq!(contents(&page), ["b->a", "note to self"]);
    let (_, page) = services.messages(&bob, "limit=2").await;
    assert_eq!(contents(&page), ["a->b", "c->b"]);
    for (query, status) in [("after=zz", 400), ("limit=0", 400), ("limit=201", 400)] {
        let (got, answer) = services.messages(&bob, query).await;
        assert_eq!(got, status, "{query} -> {answer}");
        assert!(answer["message"].is_string());
    }
    let url = format!("http://{}/chat/messages", services.chat);
    assert_eq!(services.call(services.http.get(url)).await.0, 401);
}

/// Each user's sends are a token bucket: a burst, then the rate; one user's flood leaves
/// another's sends alone.
#[tokio::test]
async fn a_users_sends_beyond_the_rate_get_429_with_retry_after() {
    let services = start_with(&[
        ("SEND_RATE_PER_USER", "2".into()),
        ("SEND_BURST", "5".into()),
    ])
    .await;
    let alice = services.user("alice").await;
    let bob = services.user("bob").await;
    let body = json!({"recipient": "bob", "content": "hi"});
    let mut statuses = Vec::new();
    for _ in 0..8 {
        statuses.push(services.send(Some(&alice), &body).await.0);
    }
    assert_eq!(statuses, [201, 201, 201, 201, 201, 429, 429, 429]);
    let response = services
        .http
        .post(format!("http://{}/chat/send", services.chat))
        .bearer_auth(&alice)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "1");
    let message: Value = response.json().await.unwrap();
    assert_eq!(message["message"], "Too many messages; slow down");
    // Bob is not slowed down by Alice.
    let (status, _) = services
        .send(
            Some(&bob),
            &json!({"recipient": "alice", "content": "hello"}),
        )
        .await;
    assert_eq!(status, 201);
    // Half a second later, one more token.
    tokio::time::sleep(std::time::Duration::from_millis(550)).await;
    assert_eq!(services.send(Some(&alice), &body).await.0, 201);
    let (_, history) = services.history(&alice, "user1=alice&user2=bob").await;
    assert_eq!(
        history["data"].as_array().unwrap().len(),
        7,
        "only the accepted are stored"
    );
}

/// A name longer than any username is refused before any lookup (no call to auth-service, no
/// cache entry of the attacker's size).
#[tokio::test]
async fn names_longer_than_any_username_are_refused_before_any_lookup() {
    let services = start().await;
    let alice = services.user("alice").await;
    let long = "x".repeat(chat_common::http::MAX_NAME_BYTES + 1);
    let (status, body) = services
        .send(Some(&alice), &json!({"recipient": long, "content": "hi"}))
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("recipient"),
        "{body}"
    );
    let (status, body) = services
        .history(&alice, &format!("user1=alice&user2={long}"))
        .await;
    assert_eq!(status, 400, "{body}");
}

#[tokio::test]
async fn conversations_list_the_most_recent_first_with_unread_counts_that_reads_move() {
    let services = start().await;
    testing::conversations_scenario(&services.http, services.auth, services.chat).await;
}

/// A page from an allowed origin may call the API (its preflight answered, the headers it sends
/// allowed, `Retry-After` readable); a page from any other origin gets no CORS headers, so its
/// browser keeps the answer from it.
#[tokio::test]
async fn pages_from_allowed_origins_only_may_call_the_api() {
    let services = start_with(&[("CORS_ALLOWED_ORIGINS", "http://localhost:5003".into())]).await;
    let alice = services.user("alice").await;
    let url = format!("http://{}/chat/send", services.chat);
    let preflight = |origin: &'static str| {
        services
            .http
            .request(reqwest::Method::OPTIONS, &url)
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,content-type,idempotency-key",
            )
            .send()
    };
    let allowed = preflight("http://localhost:5003").await.unwrap();
    assert!(allowed.status().is_success(), "{}", allowed.status());
    let headers = allowed.headers();
    assert_eq!(
        headers["access-control-allow-origin"],
        "http://localhost:5003"
    );
    let allow = headers["access-control-allow-headers"].to_str().unwrap();
    for name in ["authorization", "content-type", "idempotency-key"] {
        assert!(allow.contains(name), "{allow}");
    }
    let other = preflight("http://evil.example").await.unwrap();
    assert!(!other.headers().contains_key("access-control-allow-origin"));

    let sent = services
        .http
        .post(&url)
        .header("origin", "http://localhost:5003")
        .bearer_auth(&alice)
        .json(&json!({"recipient": "alice", "content": "from the page"}))
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), 201);
    assert_eq!(
        sent.headers()["access-control-allow-origin"],
        "http://localhost:5003"
    );
    assert!(
        sent.headers()["access-control-expose-headers"]
            .to_str()
            .unwrap()
            .contains("retry-after")
    );
    // Errors carry them too: the page reads the message.
    let refused = services
        .http
        .post(&url)
        .header("origin", "http://localhost:5003")
        .json(&json!({"recipient": "alice", "content": "no token"}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    assert!(
        refused
            .headers()
            .contains_key("access-control-allow-origin")
    );
}
