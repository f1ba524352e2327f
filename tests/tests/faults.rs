//! Nothing acknowledged is lost when a server or a replica fails. Each test runs the three
//! services as processes, a steady load of 40 sends a second for 12 s from two senders to two
//! recipients online by WebSocket (who reconnect with `last_id` when dropped, as a real client
//! does), and breaks one thing 3 s in. Afterwards every acknowledged message must be in history
//! exactly once and must have reached its recipient (live, or by resume or catch-up), never twice
//! on one socket. The tests run one at a time (they break servers), each with the servers it
//! breaks to itself; each writes its figures to `target/debug/faults/<fault>.json`.

use std::time::{Duration, Instant};

use e2e_tests::faults::{MongoServer, RabbitNode, SERIAL, Servers, World};

fn shared_servers() -> Servers {
    Servers {
        mongodb: chat_common::testing::mongodb_url(),
        rabbitmq: chat_common::testing::rabbitmq_url(),
    }
}

/// A RabbitMQ node of the test's own (it is stopped or has connections closed) and the world
/// on it.
async fn with_own_rabbitmq() -> (RabbitNode, World) {
    let rabbit = RabbitNode::start().await;
    let servers = Servers {
        rabbitmq: rabbit.url.clone(),
        ..shared_servers()
    };
    let world = World::start(&servers, 1).await;
    (rabbit, world)
}

const FAULT_AT: Duration = Duration::from_secs(3);

/// (a) RabbitMQ stopped for 3 s and started again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rabbitmq_stopped_and_started() {
    let _serial = SERIAL.lock().await;
    let (rabbit, world) = with_own_rabbitmq().await;
    let load = world.start_load("rabbitmq-restart");
    tokio::time::sleep(FAULT_AT).await;
    rabbit.ctl(&["stop_app"]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    rabbit.ctl(&["start_app"]);
    let log = load.await.unwrap();
    world.settle_and_check("a-rabbitmq-restart", &log).await;
}

/// (b) The RabbitMQ connections of websocket-service closed by the broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn b_websocket_service_connections_closed() {
    let _serial = SERIAL.lock().await;
    let (rabbit, world) = with_own_rabbitmq().await;
    let load = world.start_load("ws-connection-closed");
    tokio::time::sleep(FAULT_AT).await;
    let closed = rabbit.close_connections_of("websocket-service");
    assert!(closed >= 1, "no websocket-service connection to close");
    let log = load.await.unwrap();
    world.settle_and_check("b-ws-connection-closed", &log).await;
}

/// (c) The MongoDB-compatible server killed and restarted 3 s later: sends fail fast with 503
/// meanwhile (no hang, no 500), and readiness follows the store within 5 s both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn c_database_killed_and_restarted() {
    let _serial = SERIAL.lock().await;
    let mut mongo = MongoServer::start().await;
    let servers = Servers {
        mongodb: mongo.url(),
        ..shared_servers()
    };
    let world = World::start(&servers, 1).await;
    let ready_url = format!("http://{}/readyz", world.chat.addr());
    let readiness = tokio::spawn(async move {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let mut seen = Vec::new();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(20) {
            let ok = http
                .get(&ready_url)
                .send()
                .await
                .is_ok_and(|r| r.status() == 200);
            seen.push((Instant::now(), ok));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        seen
    });
    let load = world.start_load("database-restart");
    tokio::time::sleep(FAULT_AT).await;
    let killed = Instant::now();
    mongo.kill();
    tokio::time::sleep(Duration::from_secs(3)).await;
    mongo.restart().await;
    let back = Instant::now();
    let log = load.await.unwrap();
    let report = world.settle_and_check("c-database-restart", &log).await;

    let refused: Vec<u16> = log.refused.keys().copied().collect();
    assert!(
        refused.iter().all(|s| *s == 503),
        "sends during the outage answered {:?}, not only 503\n{report}",
        log.refused
    );
    assert!(
        log.slowest_refusal <= Duration::from_secs(5),
        "a refused send took {:?} (DB_TIMEOUT is 2 s)",
        log.slowest_refusal
    );
    let seen = readiness.await.unwrap();
    let not_ready = seen
        .iter()
        .find(|(at, ok)| *at > killed && !ok)
        .map(|(at, _)| *at - killed)
        .expect("readiness never turned false");
    assert!(
        not_ready <= Duration::from_secs(5),
        "not ready {not_ready:?} after the kill"
    );
    let ready_again = seen
        .iter()
        .find(|(at, ok)| *at > back && *ok)
        .map(|(at, _)| *at - back)
        .expect("readiness never came back");
    assert!(
        ready_again <= Duration::from_secs(5),
        "ready {ready_again:?} after the restart"
    );
    let figures = serde_json::json!({
        "not_ready_after_kill_ms": not_ready.as_millis(),
        "ready_after_restart_ms": ready_again.as_millis(),
    });
    e2e_tests::faults::write_report("c-readiness", &figures);
}

/// (d) One of two websocket-service replicas killed; its clients reconnect to the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn d_one_websocket_replica_killed() {
    let _serial = SERIAL.lock().await;
    let mut world = World::start(&shared_servers(), 2).await;
    let load = world.start_load("ws-replica-killed");
    tokio::time::sleep(FAULT_AT).await;
    world.ws[0].kill();
    let log = load.await.unwrap();
    world.settle_and_check("d-ws-replica-killed", &log).await;
}

/// (e) chat-service killed with SIGKILL under load and restarted a second later.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn e_chat_service_killed_and_restarted() {
    let _serial = SERIAL.lock().await;
    let mut world = World::start(&shared_servers(), 1).await;
    let load = world.start_load("chat-killed");
    tokio::time::sleep(FAULT_AT).await;
    world.chat.kill();
    tokio::time::sleep(Duration::from_secs(1)).await;
    world.chat.restart().await;
    let log = load.await.unwrap();
    world.settle_and_check("e-chat-killed", &log).await;
}

/// (f) auth-service stopped (SIGSTOP) for 5 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn f_auth_service_stopped_for_5_seconds() {
    let _serial = SERIAL.lock().await;
    let world = World::start(&shared_servers(), 1).await;
    let load = world.start_load("auth-stopped");
    tokio::time::sleep(FAULT_AT).await;
    world.auth.pause(true);
    tokio::time::sleep(Duration::from_secs(5)).await;
    world.auth.pause(false);
    let log = load.await.unwrap();
    world.settle_and_check("f-auth-stopped", &log).await;
}
