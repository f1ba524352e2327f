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
