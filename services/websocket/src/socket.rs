//! The WebSocket endpoint: authentication at the upgrade, then one task per socket that catches
//! the client up (`?last_id=`), writes queued frames (each message once), pings, reads (pongs,
//! close), catches up again when this replica's events were interrupted, and closes on token
//! expiry, slow consumption or shutdown. Clients may send typing frames ([`crate::signals`]);
//! anything else they send gets an `error` frame. A plain GET without an upgrade gets the web
//! client ([`crate::web`]).

use std::{collections::HashMap, collections::VecDeque, time::Duration};

use axum::{
    extract::{
        State, WebSocketUpgrade,
        ws::{CloseFrame, Message, WebSocket, rejection::WebSocketUpgradeRejection},
    },
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use chat_common::{
    http::{Query, bearer_token, error_response, with_retry_after},
    jwt::{TokenError, User},
    time::now_secs,
};
use futures_util::{SinkExt, StreamExt};

use crate::{
    AppState,
    bucket::TokenBucket,
    catchup::{MessageId, PAGE, RecentIds},
    hub::{Registration, Slot},
    outbox::{Next, Queued},
    signals::{ClientFrame, Events, TypingGate, parse_client_frame},
};

/// Close codes.
pub const CLOSE_UNAUTHORIZED: u16 = 4001;
/// The client stopped reading (its queue overflowed or a write timed out): reconnect with
/// `last_id`.
pub const CLOSE_POLICY: u16 = 1008;
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// A catch-up could not be read (chat-service unreachable): reconnect with `last_id` later.
pub const CLOSE_TRY_AGAIN: u16 = 1013;
/// The user opened more than `WS_MAX_SOCKETS_PER_USER` sockets: this one, their oldest, is
/// closed (a client should not reconnect it automatically).
pub const CLOSE_TOO_MANY_SOCKETS: u16 = 4008;

/// The close frame for a socket its queue has closed.
fn closing(verdict: &Next) -> Message {
    match verdict {
        Next::Evicted => close(CLOSE_TOO_MANY_SOCKETS, "Too many connections for this user"),
        _ => close(CLOSE_POLICY, "Too slow"),
    }
}

/// Sub-protocol a client may offer next to its token (`Sec-WebSocket-Protocol: bearer, <jwt>`).
const BEARER_PROTOCOL: &str = "bearer";

/// `GET /?token=<JWT>[&last_id=<_id>][&events=read,typing]` with an upgrade. The token may also
/// come as `Authorization: Bearer` or as a `Sec-WebSocket-Protocol` value next to `bearer` (the
/// only protocol ever selected: a token is never echoed in a response header). A missing or bad token is closed at once with code 4001;
/// a replica holding `WS_MAX_SOCKETS` answers 503. Without an `Upgrade` header, the web client.
pub async fn upgrade(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let ws = match ws {
        Ok(ws) => ws,
        Err(_) if state.web_client && !headers.contains_key(header::UPGRADE) => {
            return crate::web::index();
        }
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
        .or(from_protocol);
    let last_id = match query.get("last_id").map(|id| MessageId::parse(id)) {
        None => None,
        Some(Some(id)) => Some(id),
        Some(None) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "last_id must be the _id of a message",
            );
        }
    };
    let events = match query.get("events").map(|list| Events::parse(list)) {
        None => Events::NONE,
        Some(Ok(events)) => events,
        Some(Err(message)) => return error_response(StatusCode::BAD_REQUEST, message),
    };
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
    // A browser passing its token as a sub-protocol must get one of its offers back: `bearer`,
    // never the token (response headers end up in logs and proxies).
    if offered.iter().any(|p| p == BEARER_PROTOCOL) {
        ws = ws.protocols([BEARER_PROTOCOL]);
    }
    match verdict {
        Ok(user) => {
            let Some(slot) = state.hub.reserve() else {
                return with_retry_after(
                    error_response(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "This replica holds as many sockets as it may: try again later",
                    ),
                    5,
                );
            };
            let session = Session {
                token: token.unwrap_or_default().into_boxed_str(),
                expires_at: user.expires_at,
                last_id,
                events,
            };
            ws.on_upgrade(move |socket| serve(socket, user, session, state, slot))
        }
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

/// What a socket's task keeps of its upgrade request.
struct Session {
    /// The user's token, for catch-up reads from chat-service on their behalf.
    token: Box<str>,
    expires_at: u64,
    /// The last message the client saw, if it is resuming.
    last_id: Option<MessageId>,
    /// The signals it asked for.
    events: Events,
}

async fn serve(socket: WebSocket, user: User, session: Session, state: AppState, slot: Slot) {
    let registration = state.hub.register(&user.username, session.events);
    drop(user); // Idle sockets are many: keep nothing the task does not need.
    run_socket(socket, registration, session, &state).await;
    drop(slot);
}

/// Why a socket task stops writing: `Some` close frame to send, or `None` (the peer is gone).
type Stop = Option<Message>;

/// A socket's writing side: what it sent (each message once) and the newest id among it.
struct Writer<'a, S> {
    socket: &'a mut S,
    sent: RecentIds,
    /// The newest message id written (or the connection time): where a catch-up after an
    /// interruption starts, less the margin.
    cursor: MessageId,
    write_timeout: Duration,
}

impl<S> Writer<'_, S>
where
    S: futures_util::Sink<Message> + Unpin,
{
    /// Writes `frame` unless message `id` was already written to this socket (a signal, without
    /// an id, always).
    async fn frame(
        &mut self,
        id: Option<MessageId>,
        frame: axum::extract::ws::Utf8Bytes,
    ) -> Result<(), Stop> {
        if let Some(id) = id {
            if !self.sent.insert(id) {
                return Ok(());
            }
            self.cursor = self.cursor.max(id);
        }
        match tokio::time::timeout(self.write_timeout, self.socket.send(Message::Text(frame))).await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(None),
            Err(_) => Err(Some(close(CLOSE_POLICY, "Too slow"))),
        }
    }

    async fn frames(&mut self, queued: &mut VecDeque<Queued>) -> Result<(), Stop> {
        while let Some((id, frame)) = queued.pop_front() {
            self.frame(id, frame).await?;
        }
        Ok(())
    }
}

/// Writes every message of the user newer than `from` (oldest first, a page at a time), then
/// the live frames that arrived meanwhile. Live frames are moved aside after each page, so the
/// socket's queue never overflows while it catches up.
async fn catch_up<S>(
    writer: &mut Writer<'_, S>,
    reg: &Registration,
    session: &Session,
    from: MessageId,
    state: &AppState,
) -> Result<(), Stop>
where
    S: futures_util::Sink<Message> + Unpin,
{
    let mut held: VecDeque<Queued> = VecDeque::new();
    let mut after = from;
    loop {
        let page = match state.chat.messages_after(&session.token, after).await {
            Ok(page) => page,
            Err(crate::catchup::CatchUpError::Status(status))
                if status == StatusCode::UNAUTHORIZED =>
            {
                return Err(Some(close(CLOSE_UNAUTHORIZED, "Token expired")));
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot catch a socket up; closing it so it resumes");
                state.hub.catch_up_failed();
                return Err(Some(close(
                    CLOSE_TRY_AGAIN,
                    "Catch-up unavailable, reconnect with last_id",
                )));
            }
        };
        for m in &page {
            let Some(id) = MessageId::parse(&m.id) else {
                continue;
            };
            let frame = serde_json::to_string(&chat_common::event::Frame::from(m))
                .expect("a frame always serialises");
            writer.frame(Some(id), frame.into()).await?;
            after = id;
        }
        state.hub.caught_up(page.len());
        match reg.outbox.take_queued() {
            Ok(live) if held.len() + live.len() <= state.config.queue * 4 => held.extend(live),
            Ok(_) => return Err(Some(close(CLOSE_POLICY, "Too slow"))),
            Err(verdict) => return Err(Some(closing(&verdict))),
        }
        if page.len() < PAGE {
            break;
        }
    }
    writer.frames(&mut held).await
}

/// The socket's life, generic over its sink and stream so it can be driven in tests.
async fn run_socket<S>(mut socket: S, mut reg: Registration, session: Session, state: &AppState)
where
    S: futures_util::Sink<Message>
        + futures_util::Stream<Item = Result<Message, axum::Error>>
        + Unpin,
{
    let outcome = serve_socket(&mut socket, &mut reg, &session, state).await;
    drop(reg);
    if let Some(message) = outcome
        && let Ok(Ok(())) = tokio::time::timeout(Duration::from_secs(1), socket.send(message)).await
    {
        // The closing handshake: what the client still sends is read (and dropped) until its
        // Close, for at most a second. Closing with unread input makes the kernel reset the
        // connection, and a reset discards what the client had not read yet: our close frame
        // among it (seen with a client flooding frames: it read no close code at all).
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            while let Some(Ok(message)) = socket.next().await {
                if matches!(message, Message::Close(_)) {
                    break;
                }
            }
        })
        .await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), socket.close()).await;
}

async fn serve_socket<S>(
    socket: &mut S,
    reg: &mut Registration,
    session: &Session,
    state: &AppState,
) -> Stop
where
    S: futures_util::Sink<Message>
        + futures_util::Stream<Item = Result<Message, axum::Error>>
        + Unpin,
{
    let mut shutdown = state.shutdown.clone();
    let ping_every = state.config.ping_interval;
    let margin = state.config.resume_margin;
    let ping = tokio::time::sleep(ping_every);
    tokio::pin!(ping);
    let mut missed_pongs = 0u32;
    // Each ping carries a fresh number; only a pong that echoes it proves the client reads (a
    // client that sends but never reads cannot answer, and is dropped after two intervals).
    let mut ping_nonce = 0u64;
    // Incoming frames: `WS_MAX_FRAMES_PER_SEC`, bursts of twice that.
    let per_sec = f64::from(state.config.max_frames_per_sec.max(1));
    let mut frames = TokenBucket::new(per_sec, per_sec * 2.0);
    // On the heap once the client sends a typing frame: idle sockets, the many, carry a pointer.
    let mut typing: Option<Box<TypingGate>> = None;
    let expiry = tokio::time::sleep(Duration::from_secs(
        session.expires_at.saturating_sub(now_secs()),
    ));
    tokio::pin!(expiry);
    // A catch-up after an interruption waits a moment, different for each socket, so that a
    // replica's sockets do not all read from chat-service at once.
    let spread = Duration::from_millis(reg.spread() % 1000);
    let catch_up_at = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(catch_up_at);
    // Where a pending catch-up starts: the newest id sent *before* the interruption. Live frames
    // from the fresh queue may arrive while the catch-up waits its turn; they must not move it.
    let mut catch_up_from: Option<MessageId> = None;

    let mut writer = Writer {
        socket,
        sent: RecentIds::default(),
        cursor: session
            .last_id
            .unwrap_or_else(|| MessageId::at_secs(now_secs())),
        write_timeout: state.config.write_timeout,
    };
    if let Some(last) = session.last_id {
        // The client has `last`; everything after it (and what may have landed just before it)
        // comes first, oldest first.
        writer.sent.insert(last);
        // Boxed, here and below: the catch-up's state (an HTTP request) lives on the heap only
        // while it runs, not in every idle socket's task.
        let from = last.minus(margin);
        if let Err(stop) = Box::pin(catch_up(&mut writer, reg, session, from, state)).await {
            return stop;
        }
    }

    loop {
        tokio::select! {
            next = reg.outbox.next() => {
                let Next::Frame(id, frame) = next else {
                    break Some(closing(&next));
                };
                if let Err(stop) = writer.frame(id, frame).await {
                    break stop;
                }
            }
            changed = reg.interruptions.changed() => {
                if changed.is_err() {
                    continue;
                }
                let before = writer.cursor;
                catch_up_from = Some(catch_up_from.map_or(before, |from| from.min(before)));
                catch_up_at.as_mut().reset(tokio::time::Instant::now() + spread);
            }
            () = &mut catch_up_at, if catch_up_from.is_some() => {
                let from = catch_up_from.take().unwrap_or(writer.cursor).minus(margin);
                if let Err(stop) = Box::pin(catch_up(&mut writer, reg, session, from, state)).await {
                    break stop;
                }
            }
            () = &mut ping => {
                ping.as_mut().reset(tokio::time::Instant::now() + ping_every);
                if missed_pongs >= 2 {
                    tracing::debug!("socket stopped answering pings");
                    break None;
                }
                missed_pongs += 1;
                ping_nonce += 1;
                let payload = axum::body::Bytes::copy_from_slice(&ping_nonce.to_be_bytes());
                if tokio::time::timeout(writer.write_timeout, writer.socket.send(Message::Ping(payload))).await.is_err() {
                    break None;
                }
            }
            () = &mut expiry => break Some(close(CLOSE_UNAUTHORIZED, "Token expired")),
            _ = shutdown.changed() => break Some(close(CLOSE_GOING_AWAY, "Server shutting down")),
            incoming = writer.socket.next() => {
                if !frames.take(std::time::Instant::now()) {
                    state.hub.flooding();
                    break Some(close(CLOSE_POLICY, "Too many frames"));
                }
                match incoming {
                    None | Some(Err(_) | Ok(Message::Close(_))) => break None,
                    Some(Ok(Message::Pong(payload))) => {
                        if payload.as_ref() == ping_nonce.to_be_bytes() {
                            missed_pongs = 0;
                        }
                    }
                    Some(Ok(message @ (Message::Text(_) | Message::Binary(_)))) => {
                        // Boxed: its state (a check through chat-service, an error frame's
                        // write) lives on the heap only while it runs, not in every idle socket.
                        let answered = answer(message, &mut typing, &mut writer, reg, session, state);
                        if let Err(stop) = Box::pin(answered).await {
                            break stop;
                        }
                    }
                    // Pings are answered by the WebSocket layer itself.
                    Some(Ok(Message::Ping(_))) => {}
                }
            }
        }
    }
}

/// Acts on a client's data frame, answering with an error frame what it cannot act on.
async fn answer<S>(
    message: Message,
    typing: &mut Option<Box<TypingGate>>,
    writer: &mut Writer<'_, S>,
    reg: &Registration,
    session: &Session,
    state: &AppState,
) -> Result<(), Stop>
where
    S: futures_util::Sink<Message> + Unpin,
{
    let parsed = match &message {
        Message::Text(text) => parse_client_frame(text),
        _ => Err("Binary frames are not supported: send JSON text"),
    };
    match parsed {
        Ok(ClientFrame::Typing { to }) => {
            let outcome = typing
                .get_or_insert_with(Box::default)
                .typing(
                    &state.chat,
                    &state.signals,
                    &session.token,
                    reg.username(),
                    &to,
                )
                .await;
            state.hub.typing_frame(outcome);
            // Dropped typing frames are not answered: to the sender, a peer who cannot be told
            // looks like one who is not looking.
            Ok(())
        }
        Err(message) => {
            state.hub.client_error();
            let error = chat_common::event::error_frame(message);
            writer.frame(None, error.into()).await
        }
    }
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

    /// Starts the socket task for `bob`, expiring at `expires_at`, resuming after `last_id`;
    /// the outbox feeds it. No chat-service listens where the state says: a catch-up fails.
    fn start_resuming(
        state: &AppState,
        expires_at: u64,
        last_id: Option<MessageId>,
    ) -> (Arc<Outbox>, Client, tokio::task::JoinHandle<()>) {
        let (to_client, received) = mpsc::unbounded_channel();
        let (send, from_client) = mpsc::unbounded_channel();
        let reg = state.hub.register("bob", Events::NONE);
        let outbox = reg.outbox.clone();
        let state = state.clone();
        let session = Session {
            token: "a-token".into(),
            expires_at,
            last_id,
            events: Events::NONE,
        };
        let task = tokio::spawn(async move {
            let socket = Channels {
                to_client,
                from_client,
            };
            run_socket(socket, reg, session, &state).await;
        });
        (outbox, Client { received, send }, task)
    }

    fn start(
        state: &AppState,
        expires_at: u64,
    ) -> (Arc<Outbox>, Client, tokio::task::JoinHandle<()>) {
        start_resuming(state, expires_at, None)
    }

    fn id(n: u8) -> MessageId {
        MessageId::from_bytes([n; 12])
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
        for (n, frame) in [(1, "one"), (2, "two"), (1, "one again"), (3, "three")] {
            assert!(outbox.push(Some(id(n)), frame.into()));
        }
        for frame in ["one", "two", "three"] {
            assert_eq!(
                next(&mut client).await,
                Message::Text(frame.into()),
                "each message once"
            );
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

    #[tokio::test]
    async fn a_catch_up_that_cannot_be_read_closes_with_1013_so_the_client_resumes() {
        // Nothing listens at the chat-service URL of a development configuration's port 1.
        let vars = Vars(vec![
            ("CHAT_DEV_MODE".to_owned(), "true".to_owned()),
            ("JWT_SECRET".to_owned(), "s".repeat(40)),
            (
                "CHAT_SERVICE_URL".to_owned(),
                "http://127.0.0.1:1".to_owned(),
            ),
        ]);
        let state = AppState::new(&crate::Config::from_env(&vars).unwrap()).unwrap();
        let expected = close(
            CLOSE_TRY_AGAIN,
            "Catch-up unavailable, reconnect with last_id",
        );

        // Resuming: at once.
        let (_outbox, mut client, task) = start_resuming(&state, now_secs() + 3600, Some(id(7)));
        assert_eq!(next(&mut client).await, expected);
        task.await.unwrap();

        // Open when this replica's events were interrupted: after its spread (under a second).
        let (_outbox, mut client, task) = start(&state, now_secs() + 3600);
        state.hub.events_interrupted();
        assert_eq!(next(&mut client).await, expected);
        task.await.unwrap();
    }
}
