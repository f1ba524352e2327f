//! auth-service over real HTTP against the real MongoDB-compatible server.

mod support;

use std::time::Duration;

use jsonwebtoken::{EncodingKey, Header};
use mongodb::bson::doc;
use serde_json::{Value, json};
use support::{SECRET, TestApp, spawn_app, spawn_app_with};

#[tokio::test]
async fn register_login_and_token_claims() {
    let app = spawn_app().await;
    let (status, body) = app.register("alice", "correct-horse").await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["message"], "User registered successfully");
    let id = body["id"].as_str().expect("id").to_owned();
    assert_eq!(id.len(), 24, "hex ObjectId: {id}");

    let (status, body) = app.login("alice", "correct-horse").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["message"], "Login successful");
    let token = body["token"].as_str().unwrap();
    let claims: Value = jsonwebtoken::dangerous::insecure_decode_claims(token).unwrap();
    assert_eq!(claims["id"], id.as_str());
    assert_eq!(claims["sub"], id.as_str());
    assert_eq!(claims["username"], "alice");
    let (iat, exp) = (
        claims["iat"].as_u64().unwrap(),
        claims["exp"].as_u64().unwrap(),
    );
    assert_eq!(exp - iat, 3600);
    let header = jsonwebtoken::decode_header(token).unwrap();
    assert_eq!(header.alg, jsonwebtoken::Algorithm::HS256);

    // Stored as the original's fields, with an argon2id PHC string in `password`.
    let stored = app
        .users()
        .await
        .find_one(doc! { "username": "alice" })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.get_object_id("_id").unwrap().to_hex(), id);
    let phc = stored.get_str("password").unwrap();
    assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
    assert!(!phc.contains("correct-horse"));
}

#[tokio::test]
async fn duplicate_username_is_409() {
    let app = spawn_app().await;
    assert_eq!(app.register("bob", "password-1").await.0, 201);
    let (status, body) = app.register("bob", "password-2").await;
    assert_eq!(status, 409);
    assert_eq!(body["message"], "Username is already taken");
    // Usernames are exact (as in the original): a different case is a different user.
    assert_eq!(app.register("Bob", "password-2").await.0, 201);
}

#[tokio::test]
async fn fifty_concurrent_registrations_of_one_name_give_one_201() {
    // Fifty registrations from one address: beyond its throttle, which is tested on its own.
    let app = spawn_app_with(&[("REGISTER_MAX_PER_ADDRESS", "0")]).await;
    let attempts = (0..50).map(|i| {
        let app = &app;
        async move { app.register("racer", &format!("password-{i:03}")).await.0 }
    });
    let statuses = futures_util::future::join_all(attempts).await;
    let created = statuses.iter().filter(|s| **s == 201).count();
    let conflicts = statuses.iter().filter(|s| **s == 409).count();
    assert_eq!((created, conflicts), (1, 49), "{statuses:?}");
    let count = app
        .users()
        .await
        .count_documents(doc! { "username": "racer" })
        .await
        .unwrap();
    assert_eq!(count, 1);
}

#[tokio::test]
async fn wrong_password_and_unknown_user_get_the_same_401_and_the_same_work() {
    let app = spawn_app().await;
    app.user("carol").await;
    let hashes_before = hash_count(&app.metrics().await);
    let (s1, b1) = app.login("carol", "wrong-password").await;
    let (s2, b2) = app.login("nobody-here", "wrong-password").await;
    assert_eq!((s1, s2), (401, 401));
    assert_eq!(b1, b2);
    assert_eq!(b1["message"], "Invalid username or password");
    // Both paths ran exactly one argon2 verification (the unknown user against a dummy hash).
    assert_eq!(hash_count(&app.metrics().await), hashes_before + 2);
}

fn hash_count(metrics: &str) -> u64 {
    metrics
        .lines()
        .find(|l| l.starts_with("auth_password_hash_seconds_count"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .expect("auth_password_hash_seconds_count in /metrics")
}

#[tokio::test]
async fn user_lookup_requires_a_token() {
    let app = spawn_app().await;
    let (dave_id, dave_token) = app.user("dave").await;

    let (status, body) = app.get("/auth/user-by-username?username=dave", None).await;
    assert_eq!(status, 401, "{body}");

    let (status, body) = app
        .get("/auth/user-by-username?username=dave", Some(&dave_token))
        .await;
    assert_eq!((status, &body), (200, &json!({ "id": dave_id })));

    // Internal callers use a short-lived service token minted with the shared secret.
    let service = app
        .state
        .issuer
        .issue_service("websocket", Duration::from_secs(60))
        .unwrap();
    let (status, body) = app
        .get("/auth/user-by-username?username=dave", Some(&service))
        .await;
    assert_eq!((status, &body), (200, &json!({ "id": dave_id })));

    let (status, body) = app.get("/auth/user-by-username", Some(&dave_token)).await;
    assert_eq!(
        (status, body["message"].as_str()),
        (400, Some("Username is required"))
    );
    let (status, _) = app
        .get("/auth/user-by-username?username=", Some(&dave_token))
        .await;
    assert_eq!(status, 400);
    let (status, body) = app
        .get("/auth/user-by-username?username=ghost", Some(&dave_token))
        .await;
    assert_eq!(
        (status, body["message"].as_str()),
        (404, Some("User not found"))
    );
}

fn forge(claims: &Value, key: &[u8]) -> String {
    jsonwebtoken::encode(&Header::default(), claims, &EncodingKey::from_secret(key)).unwrap()
}

#[tokio::test]
async fn tampered_tokens_are_refused() {
    let app = spawn_app().await;
    let (id, token) = app.user("erin").await;
    let now = chat_common::time::now_secs();
    let lookup = "/auth/user-by-username?username=erin";

    let good = json!({ "id": id, "username": "erin", "iat": now, "exp": now + 600 });
    assert_eq!(
        app.get(lookup, Some(&forge(&good, SECRET.as_bytes())))
            .await
            .0,
        200
    );

    let wrong_key = forge(&good, b"some-other-secret-some-other-secret!!");
    let expired = forge(
        &json!({ "id": id, "username": "erin", "iat": now - 7200, "exp": now - 3600 }),
        SECRET.as_bytes(),
    );
    let no_exp = forge(
        &json!({ "id": id, "username": "erin", "iat": now }),
        SECRET.as_bytes(),
    );
    let payload = token.split('.').nth(1).unwrap();
    let alg_none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}.");
    let mut parts: Vec<&str> = token.split('.').collect();
    let other_payload = wrong_key.split('.').nth(1).unwrap().to_owned();
    parts[1] = &other_payload;
    let spliced = parts.join(".");
    for (name, bad) in [
        ("wrong key", wrong_key.as_str()),
        ("expired", &expired),
        ("no exp", &no_exp),
        ("alg none", &alg_none),
        ("spliced payload", &spliced),
        ("garbage", "abc.def.ghi"),
    ] {
        let (status, body) = app.get(lookup, Some(bad)).await;
        assert_eq!(status, 401, "{name}: {body}");
    }
    let (_, body) = app.get(lookup, Some(&expired)).await;
    assert_eq!(body["message"], "Token expired");
}

#[tokio::test]
async fn bad_inputs_are_clear_4xx_json() {
    let app = spawn_app().await;
    for path in ["/auth/register", "/auth/login"] {
        let cases: Vec<(&str, Vec<u8>, u16)> = vec![
            ("malformed", b"{\"username\": \"x\",".to_vec(), 400),
            ("not an object", b"[1,2,3]".to_vec(), 400),
            ("missing password", br#"{"username":"frank"}"#.to_vec(), 400),
            (
                "missing username",
                br#"{"password":"password-1"}"#.to_vec(),
                400,
            ),
            (
                "number",
                br#"{"username":42,"password":"password-1"}"#.to_vec(),
                400,
            ),
            (
                "operator",
                br#"{"username":{"$ne":null},"password":"password-1"}"#.to_vec(),
                400,
            ),
            (
                "operator pw",
                br#"{"username":"frank","password":{"$gt":""}}"#.to_vec(),
                400,
            ),
            (
                "array",
                br#"{"username":["a"],"password":"password-1"}"#.to_vec(),
                400,
            ),
            (
                "null",
                br#"{"username":null,"password":"password-1"}"#.to_vec(),
                400,
            ),
            (
                "empty strings",
                br#"{"username":"","password":""}"#.to_vec(),
                400,
            ),
        ];
        for (name, body, expected) in cases {
            let (status, resp) = app.post_raw(path, Some("application/json"), body).await;
            assert_eq!(status, expected, "{path} {name}: {resp}");
        }
        let big = format!(
            r#"{{"username":"frank","password":"{}"}}"#,
            "x".repeat(1 << 20)
        );
        let (status, _) = app
            .post_raw(path, Some("application/json"), big.into_bytes())
            .await;
        assert_eq!(status, 413, "{path} 1 MB body");
        let (status, _) = app
            .post_raw(path, None, br#"{"username":"a","password":"b"}"#.to_vec())
            .await;
        assert_eq!(status, 415, "{path} without content type");
    }
    for (username, password) in [
        ("ab", "password-1"),
        ("has space", "password-1"),
        ("$where", "password-1"),
        (&"x".repeat(33) as &str, "password-1"),
        ("frank", "short"),
        ("frank", &"p".repeat(129)),
    ] {
        let (status, body) = app.register(username, password).await;
        assert_eq!(status, 400, "{username:?}/{password:?}: {body}");
    }
    let (status, _) = app.get("/no/such/route", None).await;
    assert_eq!(status, 404);
    let (status, _) = app.get("/auth/login", None).await;
    assert_eq!(status, 405);
    assert_eq!(app.users().await.count_documents(doc! {}).await.unwrap(), 0);
}

#[tokio::test]
async fn failed_logins_are_throttled_per_account() {
    let app = spawn_app_with(&[("LOGIN_MAX_FAILURES", "3"), ("LOGIN_FAILURE_WINDOW", "60s")]).await;
    app.user("gina").await;
    app.user("hank").await;
    for _ in 0..3 {
        assert_eq!(app.login("gina", "wrong-password").await.0, 401);
    }
    let response = app
        .http
        .post(app.url("/auth/login"))
        .json(&json!({ "username": "gina", "password": "password-123" }))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        429,
        "even the right password waits out the window"
    );
    let retry: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=61).contains(&retry), "{retry}");
    assert_eq!(
        app.login("hank", "password-123").await.0,
        200,
        "other accounts unaffected"
    );
    // Parallel guesses cannot slip past the limit: attempts are counted before checking.
    let guesses = (0..12).map(|i| {
        let app = &app;
        async move { app.login("hank", &format!("guess-{i:04}")).await.0 }
    });
    let mut statuses = futures_util::future::join_all(guesses).await;
    statuses.sort_unstable();
    assert_eq!(
        statuses,
        [[401; 3].as_slice(), [429; 9].as_slice()].concat()
    );
}

/// A client of `app` connecting from `local` (any 127.0.0.0/8 address is this machine's): a
/// client at another address, as the server sees it.
fn client_from(local: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(local.parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap()
}

async fn login_from(
    app: &TestApp,
    http: &reqwest::Client,
    username: &str,
    password: &str,
) -> reqwest::Response {
    http.post(app.url("/auth/login"))
        .json(&json!({ "username": username, "password": password }))
        .send()
        .await
        .unwrap()
}

/// The attack from the issue: ten wrong passwords for someone else's account locked it. Now
/// they lock the stranger's (account, address) pair only.
#[tokio::test]
async fn a_strangers_failures_never_lock_the_owner_out_from_another_address() {
    let app = spawn_app_with(&[("LOGIN_MAX_FAILURES", "10")]).await;
    app.user("olive").await;
    let stranger = client_from("127.0.0.1");
    let owner = client_from("127.0.0.2");
    for _ in 0..10 {
        let r = login_from(&app, &stranger, "olive", "not-her-password").await;
        assert_eq!(r.status(), 401);
    }
    let r = login_from(&app, &stranger, "olive", "password-123").await;
    assert_eq!(r.status(), 429, "the stranger's pair is locked");
    assert!(r.headers().contains_key("retry-after"));
    let r = login_from(&app, &owner, "olive", "password-123").await;
    assert_eq!(
        r.status(),
        200,
        "the owner logs in from elsewhere during the lockout"
    );
}

#[tokio::test]
async fn an_address_guessing_many_accounts_is_stopped_and_others_are_not() {
    let app = spawn_app_with(&[
        ("LOGIN_MAX_FAILURES", "5"),
        ("LOGIN_MAX_FAILURES_PER_ADDRESS", "8"),
    ])
    .await;
    app.user("pat").await;
    let sprayer = client_from("127.0.0.3");
    for i in 0..8 {
        let r = login_from(&app, &sprayer, &format!("victim{i}"), "password-1").await;
        assert_eq!(r.status(), 401);
    }
    let r = login_from(&app, &sprayer, "pat", "password-123").await;
    assert_eq!(r.status(), 429, "the address is out of attempts");
    let r = login_from(&app, &client_from("127.0.0.4"), "pat", "password-123").await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn registrations_are_throttled_per_client_address_read_through_trusted_proxies_only() {
    let app = spawn_app_with(&[
        ("REGISTER_MAX_PER_ADDRESS", "2"),
        ("TRUSTED_PROXIES", "127.0.0.5"),
    ])
    .await;
    let register = |http: reqwest::Client, name: &'static str, forwarded: Option<&'static str>| {
        let url = app.url("/auth/register");
        async move {
            let mut req = http
                .post(url)
                .json(&json!({ "username": name, "password": "password-123" }));
            if let Some(f) = forwarded {
                req = req.header("x-forwarded-for", f);
            }
            req.send().await.unwrap()
        }
    };
    let direct = client_from("127.0.0.6");
    assert_eq!(register(direct.clone(), "reg1", None).await.status(), 201);
    // Bad input costs nothing.
    assert_eq!(register(direct.clone(), "x", None).await.status(), 400);
    assert_eq!(register(direct.clone(), "reg2", None).await.status(), 201);
    let r = register(direct.clone(), "reg3", None).await;
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    let body: Value = r.json().await.unwrap();
    assert!(
        body["message"].as_str().unwrap().contains("registrations"),
        "{body}"
    );
    // A forged X-Forwarded-For from an untrusted peer changes nothing.
    assert_eq!(
        register(direct.clone(), "reg4", Some("198.51.100.1"))
            .await
            .status(),
        429
    );
    // Through the trusted proxy, each client is itself.
    let proxy = client_from("127.0.0.5");
    for (name, client) in [
        ("reg5", "198.51.100.1"),
        ("reg6", "198.51.100.1"),
        ("reg7", "198.51.100.2"),
    ] {
        assert_eq!(
            register(proxy.clone(), name, Some(client)).await.status(),
            201,
            "{name}"
        );
    }
    assert_eq!(
        register(proxy.clone(), "reg8", Some("198.51.100.1"))
            .await
            .status(),
        429
    );
}

#[tokio::test]
async fn a_planted_hash_with_huge_argon2_parameters_fails_fast() {
    let app = spawn_app().await;
    app.user("quinn").await;
    let users = app.users().await;
    let stored = users
        .find_one(doc! { "username": "quinn" })
        .await
        .unwrap()
        .unwrap();
    let hash = stored.get_str("password").unwrap().to_owned();
    let planted = hash.replace("m=19456", "m=4194304");
    assert_ne!(hash, planted);
    users
        .update_one(
            doc! { "username": "quinn" },
            doc! { "$set": { "password": planted } },
        )
        .await
        .unwrap();
    let started = std::time::Instant::now();
    assert_eq!(app.login("quinn", "password-123").await.0, 401);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "refused without hashing 4 GiB: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_full_hashing_queue_answers_503_with_retry_after() {
    let app = spawn_app_with(&[("HASH_CONCURRENCY", "1"), ("HASH_QUEUE", "0")]).await;
    let attempts = (0..8).map(|i| {
        let app = &app;
        async move {
            let r = app
                .http
                .post(app.url("/auth/login"))
                .json(&json!({ "username": format!("user{i}"), "password": "password-1" }))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.headers().contains_key("retry-after"))
        }
    });
    let results = futures_util::future::join_all(attempts).await;
    assert!(results.contains(&(503, true)), "{results:?}");
    assert!(results.iter().any(|r| r.0 == 401), "{results:?}");
    assert!(
        results.iter().all(|r| r.0 == 401 || *r == (503, true)),
        "{results:?}"
    );
}

#[tokio::test]
async fn metrics_count_requests_by_route_and_status() {
    let app = spawn_app().await;
    app.user("ivan").await;
    app.login("ivan", "nope-nope").await;
    let text = app.metrics().await;
    let has = |needle: &str| text.lines().any(|l| l.contains(needle));
    assert!(
        text.lines().any(|l| l.starts_with("http_requests_total")
            && l.contains(r#"route="/auth/login""#)
            && l.contains(r#"status="200""#)
            && l.ends_with(" 1")),
        "{text}"
    );
    assert!(has(r#"status="401""#), "{text}");
    assert!(has("http_request_duration_seconds_bucket"));
    assert!(
        has(r#"auth_logins_total{result="success",service="auth"} 1"#),
        "{text}"
    );
    assert!(
        has(r#"auth_registrations_total{result="created",service="auth"} 1"#),
        "{text}"
    );
    assert!(has("process_resident_memory_bytes"));
}

#[tokio::test]
async fn health_and_readiness() {
    let app = spawn_app().await;
    assert_eq!(app.get("/healthz", None).await.0, 200);
    let (status, body) = app.get("/readyz", None).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("ready")),
        "{body}"
    );
}

#[tokio::test]
async fn a_dead_database_gives_503_within_seconds_not_a_hang() {
    // Nothing listens on port 9 (discard) on this machine's loopback.
    let url = "mongodb://127.0.0.1:9/auth_dead";
    let config =
        auth_service::Config::from_env(&support::vars(url, &[("DB_TIMEOUT", "1s")])).unwrap();
    let app = support::start(config, url, "auth_dead").await;
    let started = std::time::Instant::now();
    let (status, body) = app.register("julia", "password-1").await;
    assert_eq!(status, 503, "{body}");
    let (status, _) = app.login("julia", "password-1").await;
    assert_eq!(status, 503);
    let (status, body) = app.get("/readyz", None).await;
    assert_eq!((status, body["status"].as_str()), (503, Some("not ready")));
    assert_eq!(app.get("/healthz", None).await.0, 200);
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
}
