//! Spawns auth-service on 127.0.0.1:0 over a fresh database of the real MongoDB-compatible server.

#![allow(dead_code)]

use std::{net::SocketAddr, sync::Arc};

use auth_service::{App, AppState, Config, store::UserStore};
use chat_common::{
    config::Vars,
    testing::{self, read_json as read},
};
use serde_json::Value;
use tokio::sync::oneshot;

pub const SECRET: &str = "test-secret-test-secret-test-secret-0123";

pub struct TestApp {
    pub addr: SocketAddr,
    pub http: reqwest::Client,
    pub state: AppState,
    pub store: Arc<dyn UserStore>,
    pub database_url: String,
    pub database: String,
    _stop: oneshot::Sender<()>,
}

pub fn vars(database_url: &str, extra: &[(&str, &str)]) -> Vars<Vec<(String, String)>> {
    let mut v = vec![
        ("BIND_ADDR".to_owned(), "127.0.0.1".to_owned()),
        ("PORT".to_owned(), "0".to_owned()),
        ("DATABASE_URL".to_owned(), database_url.to_owned()),
        ("JWT_SECRET".to_owned(), SECRET.to_owned()),
        ("DB_TIMEOUT".to_owned(), "2s".to_owned()),
    ];
    v.extend(
        extra
            .iter()
            .map(|(k, val)| ((*k).to_owned(), (*val).to_owned())),
    );
    Vars(v)
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(&[]).await
}

pub async fn spawn_app_with(extra: &[(&str, &str)]) -> TestApp {
    let (database_url, database) = testing::mongodb_url_with_fresh_database("auth");
    spawn_on(&database_url, &database, extra).await
}

/// auth-service over `database_url`, built by `App::build` as `main` builds it, once ready (its
/// store answers and its unique index exists).
pub async fn spawn_on(database_url: &str, database: &str, extra: &[(&str, &str)]) -> TestApp {
    let config = Config::from_env(&vars(database_url, extra)).expect("valid test config");
    let app = start(config, database_url, database).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while app.get("/readyz", None).await.0 != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "auth-service not ready within 15 s: is the MongoDB-compatible server at {database_url} up? (TEST_MONGODB_URL; tests/run.sh starts one)"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    app
}

/// auth-service built from `config`, serving, not waited for.
pub async fn start(config: Config, database_url: &str, database: &str) -> TestApp {
    let app = App::build(&config).await.expect("auth-service builds");
    let addr = app.local_addr();
    let state = app.state().clone();
    let (stop, stopped) = oneshot::channel();
    tokio::spawn(app.run(async move {
        let _ = stopped.await;
    }));
    TestApp {
        addr,
        http: reqwest::Client::new(),
        store: state.store.clone(),
        state,
        database_url: database_url.to_owned(),
        database: database.to_owned(),
        _stop: stop,
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self
            .http
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .unwrap();
        read(r).await
    }

    pub async fn post_raw(
        &self,
        path: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> (u16, Value) {
        let mut req = self.http.post(self.url(path)).body(body);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        read(req.send().await.unwrap()).await
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let mut req = self.http.get(self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        read(req.send().await.unwrap()).await
    }

    pub async fn register(&self, username: &str, password: &str) -> (u16, Value) {
        self.post_json(
            "/auth/register",
            &serde_json::json!({ "username": username, "password": password }),
        )
        .await
    }

    pub async fn login(&self, username: &str, password: &str) -> (u16, Value) {
        self.post_json(
            "/auth/login",
            &serde_json::json!({ "username": username, "password": password }),
        )
        .await
    }

    /// Registers and logs in; returns (id, token).
    pub async fn user(&self, username: &str) -> (String, String) {
        let (s, body) = self.register(username, "password-123").await;
        assert_eq!(s, 201, "{body}");
        let (s, login) = self.login(username, "password-123").await;
        assert_eq!(s, 200, "{login}");
        (
            body["id"].as_str().unwrap().to_owned(),
            login["token"].as_str().unwrap().to_owned(),
        )
    }

    /// The raw `users` collection, to check or plant documents as the original system wrote them.
    pub async fn users(&self) -> mongodb::Collection<mongodb::bson::Document> {
        let client = mongodb::Client::with_uri_str(&self.database_url)
            .await
            .unwrap();
        client.database(&self.database).collection("users")
    }

    pub async fn metrics(&self) -> String {
        self.http
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}
