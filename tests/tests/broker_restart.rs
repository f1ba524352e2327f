//! Survives RabbitMQ dropping every connection. Alone in its test binary: cargo runs test
//! binaries one after another, so no other test's connections are cut.

use std::time::{Duration, Instant};

use e2e_tests::{Stack, wait_ready};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_and_deliveries_survive_a_broker_connection_loss() {
    let stack = Stack::start(1).await;
    let (_, ta) = stack.user("alice").await;
    let (_, tb) = stack.user("bob").await;
    let mut bob = stack.connect(0, &tb).await;
    assert_eq!(stack.send(&ta, "bob", "before").await.0, 201);
    assert_eq!(
        bob.next_json(Duration::from_secs(5)).await.expect("before")["content"],
        "before"
    );

    let out = std::process::Command::new("rabbitmqctl")
        .args(["close_all_connections", "e2e: simulated broker failure"])
        .output()
        .expect("rabbitmqctl (installed with rabbitmq-server) must be on PATH");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Sends keep succeeding: the message is stored even while the broker is unreachable.
    let started = Instant::now();
    let mut sent = 0;
    let delivered_at = loop {
        let (status, body) = stack.send(&ta, "bob", &format!("during {sent}")).await;
        assert_eq!(status, 201, "{body}");
        sent += 1;
        if let Some(frame) = bob.next_json(Duration::from_millis(250)).await {
            assert!(frame["content"].as_str().unwrap().starts_with("during"));
            break started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "delivery did not resume within 15 s"
        );
    };
    assert!(
        delivered_at < Duration::from_secs(10),
        "resumed after {delivered_at:?}"
    );
    wait_ready(stack.ws[0].addr).await;
    wait_ready(stack.chat.addr).await;
    // The socket stayed open all along, and every acknowledged message is in the history.
    assert_eq!(stack.send(&ta, "bob", "after").await.0, 201);
    let mut last = None;
    while let Some(frame) = bob.next_json(Duration::from_secs(5)).await {
        last = frame["content"].as_str().map(str::to_owned);
        if last.as_deref() == Some("after") {
            break;
        }
    }
    assert_eq!(last.as_deref(), Some("after"));
    let (_, history) = stack.history(&tb, "user1=alice&user2=bob&limit=200").await;
    assert_eq!(history["data"].as_array().unwrap().len(), sent + 2);
    let text = stack.metrics(stack.chat.addr).await;
    println!(
        "publish failures during the outage: {}",
        text.lines()
            .filter(|l| l.contains("result=\"failed\""))
            .collect::<Vec<_>>()
            .join(" ")
    );
}
