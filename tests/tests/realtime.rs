//! The real-time path end to end: HTTP send -> MongoDB -> RabbitMQ fanout -> WebSocket.

use std::time::Duration;

use e2e_tests::{Client, SECRET, Stack, forge_token, metric, publish_raw};
use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const WAIT: Duration = Duration::from_secs(5);
const QUIET: Duration = Duration::from_millis(700);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_readme_workflow() {
    let stack = Stack::start(1).await;
    let (_, t1) = stack.user("user1").await;
    let (_, t2) = stack.user("user2").await;
    let mut c1 = stack.connect(0, &t1).await;
    let mut c2 = stack.connect(0, &t2).await;

    // The seed README's request, `sender` included.
    let (status, body) = stack
        .post(
            stack.chat.addr,
            "/chat/send",
            Some(&t1),
            &json!({ "sender": "user1", "recipient": "user2", "content": "Hello from user1!" }),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["message"], "Message sent successfully");
    let data = &body["data"];
    assert_eq!(
        (data["sender"].as_str(), data["recipient"].as_str()),
        (Some("user1"), Some("user2"))
    );
    let ts = data["timestamp"].as_str().unwrap();
    assert_eq!(ts.len(), 24, "RFC 3339 with milliseconds: {ts}");
    assert!(ts.ends_with('Z') && ts.as_bytes()[19] == b'.', "{ts}");

    let frame = c2
        .next_json(WAIT)
        .await
        .expect("recipient receives the message");
    assert_eq!(frame["type"], "new_message");
    assert_eq!(frame["sender"], "user1");
    assert_eq!(frame["recipient"], "user2");
    assert_eq!(frame["content"], "Hello from user1!");
    assert_eq!(frame["timestamp"], data["timestamp"]);
    assert_eq!(frame["_id"], data["_id"]);
    // The sender's own socket also gets it (multi-device echo).
    assert_eq!(c1.next_json(WAIT).await.expect("echo")["_id"], data["_id"]);

    let (status, history) = stack.history(&t2, "user1=user1&user2=user2").await;
    assert_eq!(status, 200, "{history}");
    assert_eq!(history["data"].as_array().unwrap().len(), 1);
    assert_eq!(history["data"][0], *data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replica_delivers_to_its_own_users() {
    let stack = Stack::start(2).await;
    let (_, ta) = stack.user("alice").await;
    let (_, tb) = stack.user("bob").await;
    let (_, tc) = stack.user("carol").await;
    let mut a = stack.connect(0, &ta).await;
    let mut b = stack.connect(1, &tb).await;
    assert_eq!(stack.send(&tc, "alice", "to alice").await.0, 201);
    assert_eq!(stack.send(&tc, "bob", "to bob").await.0, 201);
    assert_eq!(
        a.next_json(WAIT).await.expect("alice on replica 0")["content"],
        "to alice"
    );
    assert_eq!(
        b.next_json(WAIT).await.expect("bob on replica 1")["content"],
        "to bob"
    );
    assert!(a.next_json(QUIET).await.is_none(), "alice gets only hers");

    // One server-named exclusive queue per replica is bound to the exchange.
    let out = std::process::Command::new("rabbitmqctl")
        .args([
            "list_bindings",
            "-q",
            "--no-table-headers",
            "source_name",
            "destination_name",
        ])
        .output()
        .expect("rabbitmqctl (installed with rabbitmq-server) must be on PATH");
    let text = String::from_utf8_lossy(&out.stdout);
    let bound: Vec<&str> = text
        .lines()
        .filter(|l| l.split('\t').next() == Some(stack.exchange.as_str()))
        .collect();
    assert_eq!(bound.len(), 2, "{text}");
    assert!(
        bound.iter().all(|l| l.contains("amq.gen-")),
        "server-named queues: {bound:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_device_of_both_parties_and_nobody_else() {
    let stack = Stack::start(2).await;
    let (_, ta) = stack.user("alice").await;
    let (_, tb) = stack.user("bob").await;
    let (_, te) = stack.user("eve").await;
    let mut bob_phone = stack.connect(0, &tb).await;
    let mut bob_laptop = stack.connect(1, &tb).await;
    let mut bob_tablet = stack.connect(1, &tb).await;
    let mut alice_laptop = stack.connect(0, &ta).await;
    let mut eve = stack.connect(0, &te).await;
    let (status, sent) = stack.send(&ta, "bob", "hi bob").await;
    assert_eq!(status, 201);
    for (who, c) in [
        ("phone", &mut bob_phone),
        ("laptop", &mut bob_laptop),
        ("tablet", &mut bob_tablet),
    ] {
        assert_eq!(
            c.next_json(WAIT)
                .await
                .unwrap_or_else(|| panic!("bob's {who}"))["_id"],
            sent["data"]["_id"]
        );
    }
    assert_eq!(
        alice_laptop
            .next_json(WAIT)
            .await
            .expect("alice's other device")["content"],
        "hi bob"
    );
    assert!(
        eve.next_json(QUIET).await.is_none(),
        "no leak to a third user"
    );
    let text = stack.metrics(stack.ws[1].addr).await;
    assert_eq!(metric(&text, "ws_open_sockets"), 2);
    assert!(metric(&text, "ws_deliveries_total") >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_200_arrives_complete_and_in_order() {
    let stack = Stack::start(1).await;
    let (_, ta) = stack.user("alice").await;
    let (_, tb) = stack.user("bob").await;
    let mut bob = stack.connect(0, &tb).await;
    for i in 0..200 {
        let (status, body) = stack.send(&ta, "bob", &format!("message {i}")).await;
        assert_eq!(status, 201, "{body}");
    }
    for i in 0..200 {
        let frame = bob
            .next_json(WAIT)
            .await
            .unwrap_or_else(|| panic!("message {i} missing"));
        assert_eq!(frame["content"], format!("message {i}"));
    }
    assert!(bob.next_json(QUIET).await.is_none());
    let (_, history) = stack.history(&tb, "user1=alice&user2=bob&limit=200").await;
    assert_eq!(history["data"].as_array().unwrap().len(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_is_dropped_while_a_fast_one_keeps_receiving() {
    let stack = Stack::start_with(
        1,
        &[("WS_QUEUE", "64".into()), ("WS_WRITE_TIMEOUT", "2s".into())],
    )
    .await;
    let (_, tb) = stack.user("bob").await;
    let mut slow = stack.connect(0, &tb).await; // never read until the end
    let mut fast = stack.connect(0, &tb).await;
    // 300 events of 60 KB: far more than the socket buffers and the slow socket's queue hold.
    let big = "x".repeat(60_000);
    let count: usize = 300;
    let reader = tokio::spawn(async move {
        // Keep up: collect raw frames, check them afterwards.
        let mut frames = Vec::new();
        while let Some(text) = fast.next_text(Duration::from_secs(10)).await {
            frames.push(text);
            if frames.len() == count {
                break;
            }
        }
        for (i, text) in frames.iter().enumerate() {
            let frame: serde_json::Value = serde_json::from_str(text).unwrap();
            assert_eq!(frame["content"].as_str().map(str::len), Some(60_000));
            assert_eq!(frame["_id"], format!("{i:024x}"), "in order");
        }
        (frames.len(), fast)
    });
    publish_raw(
        &stack.exchange,
        (0..count).map(|i| {
            serde_json::to_vec(&json!({"type": "new_message", "data": {
                "_id": format!("{i:024x}"), "sender": "alice", "recipient": "bob",
                "content": big, "timestamp": "2025-01-31T12:00:00.000Z"}}))
            .unwrap()
        }),
    )
    .await;
    let (received, _fast) = reader.await.unwrap();
    assert_eq!(received, count, "the fast reader got everything");
    let text = stack.metrics(stack.ws[0].addr).await;
    assert!(
        metric(&text, "ws_slow_clients_dropped_total") >= 1,
        "{text}"
    );
    assert_eq!(metric(&text, "ws_open_sockets"), 1);
    // The slow socket, once it reads, finds its connection closed.
    let closed = slow.closed(Duration::from_secs(15)).await;
    assert!(
        matches!(closed, Some((1008 | 1006 | 1005, _))),
        "{closed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_without_a_valid_token_are_closed_with_4001() {
    let stack = Stack::start(1).await;
    let (id, token) = stack.user("alice").await;
    let base = format!("ws://{}", stack.ws[0].addr);
    let cases = [
        (format!("{base}/"), "No token provided"),
        (format!("{base}/?token=garbage"), "Invalid token"),
        (
            format!(
                "{base}/?token={}",
                forge_token(&id, "alice", 600, b"wrong-key-wrong-key-wrong-key-wrong")
            ),
            "Invalid token",
        ),
        (
            format!(
                "{base}/?token={}",
                forge_token(&id, "alice", -3600, SECRET.as_bytes())
            ),
            "Token expired",
        ),
    ];
    for (url, reason) in cases {
        let mut c = Client::connect(&url).await;
        assert_eq!(
            c.closed(WAIT).await,
            Some((4001, reason.to_owned())),
            "{url}"
        );
    }

    // The token may also come as a bearer header or as a sub-protocol.
    let mut req = base.clone().into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let mut by_header = Client::connect_request(req).await;
    let mut req = base.clone().into_client_request().unwrap();
    req.headers_mut().insert(
        "sec-websocket-protocol",
        format!("bearer, {token}").parse().unwrap(),
    );
    let mut by_protocol = Client::connect_request(req).await;
    assert_eq!(by_protocol.protocol.as_deref(), Some("bearer"));
    let (_, tb) = stack.user("bob").await;
    assert_eq!(stack.send(&tb, "alice", "both ways").await.0, 201);
    assert_eq!(
        by_header.next_json(WAIT).await.expect("header socket")["content"],
        "both ways"
    );
    assert_eq!(
        by_protocol.next_json(WAIT).await.expect("protocol socket")["content"],
        "both ways"
    );

    // A plain GET without an upgrade gets the web client; a broken upgrade is a JSON 400.
    let page = stack
        .http
        .get(format!("http://{}/", stack.ws[0].addr))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let broken = stack
        .http
        .get(format!("http://{}/", stack.ws[0].addr))
        .header("upgrade", "websocket")
        .header("connection", "upgrade")
        .send()
        .await
        .unwrap();
    assert_eq!(e2e_tests::read(broken).await.0, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_is_closed_when_its_token_expires() {
    let stack = Stack::start(1).await;
    let (id, _) = stack.user("alice").await;
    let short = forge_token(&id, "alice", 2, SECRET.as_bytes());
    let mut c = stack.connect(0, &short).await;
    assert_eq!(
        c.closed(Duration::from_secs(6)).await,
        Some((4001, "Token expired".to_owned()))
    );
}

/// Read receipts (published by chat-service) and typing notices (published by the replica the
/// typist is on) reach the sockets that asked for them on every replica, through RabbitMQ.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_and_typing_events_cross_replicas_through_the_exchange() {
    use futures_util::SinkExt;

    let stack = Stack::start(2).await;
    let (_, ta) = stack.user("alice").await;
    let (_, tb) = stack.user("bob").await;
    let mut alice = stack.connect_registered(0, &ta, "events=read,typing").await;
    let mut bob = stack.connect_registered(1, &tb, "events=read,typing").await;
    let mut bob_plain = stack.connect_registered(0, &tb, "").await;
    // Sent once every socket is registered, so each one gets it live, first. (Sent before they
    // connect, it could still reach a socket: a replica's consumer may hand it over late, or a
    // catch-up after an interruption may read it from the store.)
    let (status, sent) = stack.send(&ta, "bob", "hello").await;
    assert_eq!(status, 201, "{sent}");
    let id = sent["data"]["_id"].as_str().unwrap().to_owned();
    for (who, socket) in [
        ("alice", &mut alice),
        ("bob", &mut bob),
        ("bob_plain", &mut bob_plain),
    ] {
        let frame = socket.next_json(WAIT).await;
        let frame = frame.unwrap_or_else(|| panic!("the message on {who}'s socket"));
        assert_eq!(frame["type"], "new_message", "{who}: {frame}");
        assert_eq!(frame["_id"], json!(id), "{who}: {frame}");
    }

    bob.ws
        .send(tokio_tungstenite::tungstenite::Message::text(
            json!({ "type": "typing", "to": "alice" }).to_string(),
        ))
        .await
        .unwrap();
    assert_eq!(
        alice
            .next_json(WAIT)
            .await
            .expect("typing on the other replica"),
        json!({ "type": "typing", "from": "bob" })
    );

    let read = stack
        .http
        .post(format!("http://{}/chat/read", stack.chat.addr))
        .bearer_auth(&tb)
        .json(&json!({ "peer": "alice", "upTo": id }))
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 204);
    let receipt = json!({ "type": "read", "reader": "bob", "peer": "alice", "upTo": id });
    assert_eq!(
        alice.next_json(WAIT).await.expect("receipt to the peer"),
        receipt
    );
    assert_eq!(
        bob.next_json(WAIT).await.expect("receipt to the reader"),
        receipt
    );
    assert_eq!(
        bob_plain.next_text(QUIET).await,
        None,
        "a socket that asked for nothing"
    );
    let (_, page) = stack
        .get(stack.chat.addr, "/chat/conversations", Some(&ta))
        .await;
    assert_eq!(page["data"][0]["peerReadUpTo"], json!(id));
}
