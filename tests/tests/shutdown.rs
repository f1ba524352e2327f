//! SIGTERM, for real: websocket-service as a process closes every open socket with 1001 before
//! it exits (its sockets are no longer the HTTP server's once upgraded, so the server's drain
//! alone would exit under them), and exits cleanly.

use std::time::Duration;

use e2e_tests::{
    faults::{SERIAL, Service},
    spawn_auth, wait_ready,
};
use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn sigterm_closes_every_socket_with_1001_then_exits() {
    let _serial = SERIAL.lock().await;
    let (auth_db, _) = chat_common::testing::mongodb_url_with_fresh_database("sigterm_auth");
    let auth = spawn_auth(&auth_db).await;
    let (_, token) =
        chat_common::testing::register_and_login(&reqwest::Client::new(), auth.addr, "sigterm")
            .await;
    let mut ws = Service::start(
        "websocket-service",
        &[
            ("RABBITMQ_URL", chat_common::testing::rabbitmq_url()),
            (
                "EXCHANGE_NAME",
                chat_common::testing::unique_name("sigterm_exchange"),
            ),
        ],
    )
    .await;
    wait_ready(ws.addr()).await;
    let mut sockets = Vec::new();
    for _ in 0..3 {
        let (socket, _) =
            tokio_tungstenite::connect_async(format!("ws://{}/?token={token}", ws.addr()))
                .await
                .unwrap();
        sockets.push(socket);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = tokio::task::spawn_blocking(move || {
        let status = ws.terminate(Duration::from_secs(10));
        (ws, status)
    });
    for socket in &mut sockets {
        let close = loop {
            match tokio::time::timeout(Duration::from_secs(10), socket.next())
                .await
                .expect("a close within 10 s")
            {
                Some(Ok(Message::Close(frame))) => break frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => {}
                other => panic!("the socket ended without a close frame: {other:?}"),
            }
        };
        assert_eq!(close, Some(1001));
    }
    let (ws, status) = status.await.unwrap();
    let status =
        status.unwrap_or_else(|| panic!("still running 10 s after SIGTERM:\n{}", ws.log_tail()));
    assert!(status.success(), "{status:?}\n{}", ws.log_tail());
}
