//! The standalone stack (`chat-stack`): the seed workflow with no MongoDB and no RabbitMQ, and
//! persistence across a restart.

use std::time::Duration;

use e2e_tests::{Client, Standalone, post_json as post, read};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_workflow_runs_standalone_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    let stack = Standalone::start(dir.path(), &[]).await;
    let a = stack.addrs;
    let mut tokens = Vec::new();
    for user in ["user1", "user2"] {
        let creds = json!({ "username": user, "password": "password1" });
        assert_eq!(
            post(
                &http,
                format!("http://{}/auth/register", a.auth),
                None,
                &creds
            )
            .await
            .0,
            201
        );
        let (status, body) =
            post(&http, format!("http://{}/auth/login", a.auth), None, &creds).await;
        assert_eq!(status, 200);
        tokens.push(body["token"].as_str().unwrap().to_owned());
    }
    let mut c2 = Client::connect(&format!("ws://{}/?token={}", a.websocket, tokens[1])).await;
    let (status, sent) = post(
        &http,
        format!("http://{}/chat/send", a.chat),
        Some(&tokens[0]),
        &json!({ "sender": "user1", "recipient": "user2", "content": "Hello from user1!" }),
    )
    .await;
    assert_eq!(status, 201, "{sent}");
    let frame = c2
        .next_json(Duration::from_secs(5))
        .await
        .expect("delivered in-process");
    assert_eq!(
        (frame["sender"].as_str(), frame["content"].as_str()),
        (Some("user1"), Some("Hello from user1!"))
    );
    c2.close().await;
    stack.stop().await;

    // Same data directory: users, the JWT secret and the history are still there.
    let stack = Standalone::start(dir.path(), &[]).await;
    let a = stack.addrs;
    let history = http
        .get(format!(
            "http://{}/chat/history?user1=user1&user2=user2",
            a.chat
        ))
        .bearer_auth(&tokens[1])
        .send()
        .await
        .unwrap();
    let (status, body) = read(history).await;
    assert_eq!(
        status, 200,
        "tokens issued before the restart stay valid: {body}"
    );
    assert_eq!(body["data"], json!([sent["data"]]));
    let creds = json!({ "username": "user1", "password": "password1" });
    assert_eq!(
        post(&http, format!("http://{}/auth/login", a.auth), None, &creds)
            .await
            .0,
        200
    );
    assert_eq!(
        post(
            &http,
            format!("http://{}/auth/register", a.auth),
            None,
            &creds
        )
        .await
        .0,
        409
    );
    stack.stop().await;
}
