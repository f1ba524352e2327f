//! Helpers for the services' integration tests: where the real backing servers are, and a clear
//! failure (never a skip) when one is not running.

mod conversations;
pub use conversations::conversations_scenario;

use std::{net::ToSocketAddrs, time::Duration};

/// What a load test lifts: the defaults protect a public deployment (10 sends/s per user, 20
/// registrations per address an hour, 10 sockets per user), while the end-to-end tests, the
/// fault tests and `chat-bench` (`tests/bench/bench.sh` sets the same) send hundreds of
/// messages a second from one user and register their users from one address.
pub const LOAD_TEST_LIMITS: &[(&str, &str)] = &[
    ("SEND_RATE_PER_USER", "100000"),
    ("SEND_BURST", "100000"),
    ("REGISTER_MAX_PER_ADDRESS", "0"),
    ("WS_MAX_SOCKETS_PER_USER", "20000"),
];

/// The MongoDB-compatible server for tests: `TEST_MONGODB_URL` (set by `tests/run.sh`), else
/// `mongodb://127.0.0.1:27017`. Panics with instructions when nothing listens there.
pub fn mongodb_url() -> String {
    let url = std::env::var("TEST_MONGODB_URL")
        .unwrap_or_else(|_| "mongodb://127.0.0.1:27017".to_owned());
    require_listening("MongoDB-compatible server", "TEST_MONGODB_URL", &url);
    url
}

/// The RabbitMQ server for tests: `TEST_RABBITMQ_URL`, else `amqp://guest:guest@127.0.0.1:5672/%2f`.
pub fn rabbitmq_url() -> String {
    let url = std::env::var("TEST_RABBITMQ_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
    require_listening("RabbitMQ", "TEST_RABBITMQ_URL", &url);
    url
}

/// `mongodb://host:port` plus a database name unique to this test: `(url, name)`.
pub fn mongodb_url_with_fresh_database(prefix: &str) -> (String, String) {
    let name = unique_name(prefix);
    (with_database(&mongodb_url(), &name), name)
}

/// Replaces (or adds) the database path of a MongoDB URL, keeping its options.
pub fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(a, b)| (a, Some(b)));
    let start = base.find("://").map_or(0, |i| i + 3);
    let root = match base[start..].find('/') {
        Some(slash) => &base[..start + slash],
        None => base,
    };
    match query {
        Some(q) => format!("{root}/{name}?{q}"),
        None => format!("{root}/{name}"),
    }
}

/// A name unlikely to repeat across tests and runs.
pub fn unique_name(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "{prefix}_{}_{nanos:x}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

fn require_listening(what: &str, var: &str, url: &str) {
    let authority = url
        .split_once("://")
        .map_or(url, |(_, rest)| rest)
        .split(['/', '?'])
        .next()
        .unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
    let first = host_port.split(',').next().unwrap_or_default();
    let reachable = first.to_socket_addrs().ok().and_then(|mut addrs| {
        addrs.find(|a| std::net::TcpStream::connect_timeout(a, Duration::from_secs(2)).is_ok())
    });
    assert!(
        reachable.is_some(),
        "{what} is not reachable at {first} ({var}={url}). Run the tests with `bash tests/run.sh`, \
         which installs and starts it, or start one yourself and set {var}."
    );
}

/// Status and JSON body of a response; panics if the body is not JSON, or if an error status
/// lacks the `{"message": ...}` every error must carry.
pub async fn read_json(r: reqwest::Response) -> (u16, serde_json::Value) {
    let status = r.status().as_u16();
    let text = r.text().await.expect("response body");
    let body: serde_json::Value = serde_json::from_str(&text)
        .unwrap_or_else(|_| panic!("status {status}: body is not JSON: {text:?}"));
    if status >= 400 {
        assert!(
            body["message"].is_string(),
            "status {status}: error body lacks a message: {body}"
        );
    }
    (status, body)
}

/// Registers `username` (password `password-123`) at the auth-service on `auth` and logs in:
/// `(id, token)`. Panics unless both succeed.
pub async fn register_and_login(
    http: &reqwest::Client,
    auth: std::net::SocketAddr,
    username: &str,
) -> (String, String) {
    let creds = serde_json::json!({ "username": username, "password": "password-123" });
    let post = |path: &str| {
        http.post(format!("http://{auth}{path}"))
            .json(&creds)
            .send()
    };
    let (status, registered) = read_json(post("/auth/register").await.expect("register")).await;
    assert_eq!(status, 201, "registering {username}: {registered}");
    let (status, login) = read_json(post("/auth/login").await.expect("login")).await;
    assert_eq!(status, 200, "logging {username} in: {login}");
    (
        registered["id"].as_str().expect("an id").to_owned(),
        login["token"].as_str().expect("a token").to_owned(),
    )
}

/// A development-mode environment for a service under test, listening on a free loopback
/// port with its files in `dir`, plus `extra`.
pub fn dev_env(
    dir: &std::path::Path,
    secret: &str,
    extra: &[(&str, String)],
) -> crate::config::Vars<Vec<(String, String)>> {
    let mut vars = vec![
        ("CHAT_DEV_MODE".to_owned(), "true".to_owned()),
        ("JWT_SECRET".to_owned(), secret.to_owned()),
        ("BIND_ADDR".to_owned(), "127.0.0.1".to_owned()),
        ("PORT".to_owned(), "0".to_owned()),
        ("DATA_DIR".to_owned(), dir.display().to_string()),
    ];
    vars.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
    crate::config::Vars(vars)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_urls() {
        assert_eq!(with_database("mongodb://h:1", "x"), "mongodb://h:1/x");
        assert_eq!(with_database("mongodb://h:1/", "x"), "mongodb://h:1/x");
        assert_eq!(
            with_database("mongodb://u:p@h:1/old?w=1", "x"),
            "mongodb://u:p@h:1/x?w=1"
        );
        assert_ne!(unique_name("t"), unique_name("t"));
    }
}
