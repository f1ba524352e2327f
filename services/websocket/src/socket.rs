//! The WebSocket endpoint: authentication at the upgrade, then one task per socket that writes
//! queued frames, pings, reads (pongs, close), and closes on token expiry, slow consumption or
//! shutdown.

use std::{collections::HashMap, time::Duration};

use axum::{
    extract::{
        State, WebSocketUpgrade,
        ws::{CloseFrame, Message, WebSocket, rejection::WebSocketUpgradeRejection},
    },
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use chat_common::{
    http::{Query, bearer_token, error_response},
    jwt::{TokenError, User},
    time::now_secs,
};
use futures_util::{SinkExt, StreamExt};

use crate::{AppState, hub::Registration, outbox::Next};

/// Close codes.
pub const CLOSE_UNAUTHORIZED: u16 = 4001;
pub const CLOSE_POLICY: u16 = 1008;
pub const CLOSE_GOING_AWAY: u16 = 1001;

/// Sub-protocol a client may offer next to its token (`Sec-WebSocket-Protocol: bearer, <jwt>`).
const BEARER_PROTOCOL: &str = "bearer";

/// `GET /?token=<JWT>` with an upgrade. The token may also come as `Authorization: Bearer` or as a
/// `Sec-WebSocket-Protocol` value. A missing or bad token is closed at once with code 4001.
pub async fn upgrade(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                &format!("Expected a WebSocket upgrade: {}", rejection.body_text()),
            );
        }
    };
    let offered: Vec<String> = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty())
        .collect();
    let from_protocol = offered
        .iter()
        .find(|p| p.matches('.').count() == 2)
        .cloned();
    let token = query
        .get("token")
        .cloned()
        .or_else(|| bearer_token(&headers).map(str::to_owned))
        .or(from_protocol.clone());
    let verdict = match token.as_deref() {
        None => Err("No token provided"),
        Some(t) => state.verifier.verify_user(t).map_err(|e| match e {
            TokenError::Expired => "Token expired",
            TokenError::Invalid => "Invalid token",
        }),
    };
    let mut ws = ws
        .max_message_size(state.config.max_message_bytes)
        .max_frame_size(state.config.max_message_bytes)
        .read_buffer_size(state.config.read_buffer_bytes)
        .write_buffer_size(state.config.write_buffer_bytes)
        .max_write_buffer_size(state.config.max_write_buffer_bytes);
    // A browser passing its token as a sub-protocol must get one of its offers back.
    if offered.iter().any(|p| p == BEARER_PROTOCOL) {
        ws = ws.protocols([BEARER_PROTOCOL]);
    } else if let Some(p) = from_protocol.and_then(|p| HeaderValue::from_str(&p).ok()) {
        ws.set_selected_protocol(p);
    }
    match verdict {
        Ok(user) => ws.on_upgrade(move |socket| serve(socket, user, state)),
        Err(reason) => ws.on_upgrade(move |mut socket| async move {
            let _ = socket.send(close(CLOSE_UNAUTHORIZED, reason)).await;
        }),
    }
    .into_response()
}

fn close(code: u16, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }))
}

async fn serve(socket: WebSocket, user: User, state: AppState) {
    let registration = state.hub.register(&user.username, &user.id);
    let expires_at = user.expires_at;
    drop(user); // Idle sockets are many: keep nothing the task does not need.
    run_socket(socket, registration, expires_at, &state).await;
}

/// The socket's life, generic over its sink and stream so it can be driven in tests.
async fn run_socket<S>(mut socket: S, reg: Registration, expires_at: u64, state: &AppState)
where
    S: futures_util::Sink<Message>
        + futures_util::Stream<Item = Result<Message, axum::Error>>
        + Unpin,
{
    let mut shutdown = state.shutdown.clone();
    let ping_every = state.config.ping_interval;
    let write_timeout = state.config.write_timeout;
    let ping = tokio::time::sleep(ping_every);
    tokio::pin!(ping);
    let mut missed_pongs = 0u32;
    let expiry = tokio::time::sleep(Duration::from_secs(expires_at.saturating_sub(now_secs())));
    tokio::pin!(expiry);

    let outcome: Option<Message> = loop {
        tokio::select! {
            next = reg.outbox.next() => {
                let Next::Frame(frame) = next else {
                    break Some(close(CLOSE_POLICY, "Too slow"));
                };
                match tokio::time::timeout(write_timeout, socket.send(Message::Text(frame))).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => break None,
                    Err(_) => break Some(close(CLOSE_POLICY, "Too slow")),
                }
            }
            () = &mut ping => {
                ping.as_mut().reset(tokio::time::Instant::now() + ping_every);
                if missed_pongs >= 2 {
                    tracing::debug!("socket stopped answering pings");
                    break None;
                }
                missed_pongs += 1;
                if tokio::time::timeout(write_timeout, socket.send(Message::Ping(axum::body::Bytes::new()))).await.is_err() {
                    break None;
                }
            }
            () = &mut expiry => break Some(close(CLOSE_UNAUTHORIZED, "Token expired")),
            _ = shutdown.changed() => break Some(close(CLOSE_GOING_AWAY, "Server shutting down")),
            incoming = socket.next() => match incoming {
                None | Some(Err(_) | Ok(Message::Close(_))) => break None,
                // Any traffic proves the client alive; clients send nothing else we act on.
                Some(Ok(_)) => missed_pongs = 0,
            },
        }
    };
    drop(reg);
    if let Some(message) = outcome {
        let _ = tokio::time::timeout(Duration::from_secs(1), socket.send(message)).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), socket.close()).await;
}

/// The socket task driven through channels (no network): what it writes, and when it stops.
#[cfg(test)]
mod tests {
    use std::{
        pin::Pin,
        task::{Context, Poll},
    };

    use std::sync::Arc;

    use chat_common::config::Vars;
    use tokio::sync::mpsc;

    use super::*;
    use crate::outbox::Outbox;

    /// A socket whose two directions are channels the test holds the other ends of.
    struct Channels {
        to_client: mpsc::UnboundedSender<Message>,
        from_client: mpsc::UnboundedReceiver<Result<Message, axum::Error>>,
    }

    impl futures_util::Sink<Message> for Channels {
        type Error = axum::Error;
        fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }
        fn start_send(self: Pin<&mut Self>, item: Message) -> Result<(), Self::Error> {
            self.to_client.send(item).map_err(axum::Error::new)
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }
    }

    impl futures_util::Stream for Channels {
        type Item = Result<Message, axum::Error>;
        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            self.from_client.poll_recv(cx)
        }
    }

    struct Client {
        received: mpsc::UnboundedReceiver<Message>,
        send: mpsc::UnboundedSender<Result<Message, axum::Error>>,
    }

    fn state() -> AppState {
        let vars = Vars(vec![
            ("CHAT_DEV_MODE".to_owned(), "true".to_owned()),
            ("JWT_SECRET".to_owned(), "s".repeat(40)),
        ]);
        AppState::new(&crate::Config::from_env(&vars).unwrap()).unwrap()
    }

    /// Starts the socket task for `bob`, expiring at `expires_at`; the outbox feeds it.
    fn start(
        state: &AppState,
        expires_at: u64,
    ) -> (Arc<Outbox>, Client, tokio::task::JoinHandle<()>) {
        let (to_client, received) = mpsc::unbounded_channel();
        let (send, from_client) = mpsc::unbounded_channel();
        let reg = state.hub.register("bob", "bob-id");
        let outbox = reg.outbox.clone();
        let state = state.clone();
        let task = tokio::spawn(async move {
            let socket = Channels {
                to_client,
                from_client,
            };
            run_socket(socket, reg, expires_at, &state).await;
        });
        (outbox, Client { received, send }, task)
    }

    async fn next(client: &mut Client) -> Message {
        tokio::time::timeout(Duration::from_secs(5), client.received.recv())
            .await
            .expect("a message within 5 s")
            .expect("the task is alive")
    }

    #[tokio::test]
    async fn queued_frames_are_written_in_order_and_a_client_close_ends_the_task() {
        let state = state();
        let (outbox, mut client, task) = start(&state, now_secs() + 3600);
        for frame in ["one", "two", "three"] {
            assert!(outbox.push(frame.into()));
        }
        for frame in ["one", "two", "three"] {
            assert_eq!(next(&mut client).await, Message::Text(frame.into()));
        }
        client.send.send(Ok(Message::Close(None))).unwrap();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the task ends when the client closes")
            .unwrap();
    }

    #[tokio::test]
    async fn an_expired_token_closes_with_4001_and_shutdown_with_1001() {
        let state = state();
        let (_outbox, mut client, task) = start(&state, now_secs());
        let expected = close(CLOSE_UNAUTHORIZED, "Token expired");
        assert_eq!(next(&mut client).await, expected);
        task.await.unwrap();

        let (_outbox, mut client, task) = start(&state, now_secs() + 3600);
        let _ = state.stop.send(true);
        assert_eq!(
            next(&mut client).await,
            close(CLOSE_GOING_AWAY, "Server shutting down")
        );
        task.await.unwrap();
    }
}
