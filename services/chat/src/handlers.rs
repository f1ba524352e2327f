use axum::{
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use bson::oid::ObjectId;
use chat_common::{
    event::{AnyEvent, ReadReceipt},
    http::{Json, Query, readiness},
    jwt::AuthUser,
    time::now_millis,
};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{
    AppState, ChatError,
    store::{Inserted, Message, Page, ReadMark},
};

/// `POST /chat/send`. `sender` is optional: the sender is the token's user.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct SendBody {
    sender: Option<String>,
    recipient: String,
    content: String,
}

/// Longest `Idempotency-Key` accepted (a UUID is 36 characters).
const MAX_IDEMPOTENCY_KEY: usize = 255;

/// The optional `Idempotency-Key` header: 1 to 255 visible ASCII characters.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ChatError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let valid = value.to_str().ok().filter(|k| {
        (1..=MAX_IDEMPOTENCY_KEY).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_graphic())
    });
    match valid {
        Some(key) => Ok(Some(key.to_owned())),
        None => Err(ChatError::Validation(format!(
            "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters"
        ))),
    }
}

/// A username in a request is looked up only if it could be one (registration allows 32
/// characters; accounts from the original system may be longer, never beyond this).
fn check_name(field: &str, name: &str) -> Result<(), ChatError> {
    if name.len() > chat_common::http::MAX_NAME_BYTES {
        return Err(ChatError::Validation(format!(
            "{field} must be at most {} bytes",
            chat_common::http::MAX_NAME_BYTES
        )));
    }
    Ok(())
}

fn sent(status: StatusCode, message: &Message) -> Response {
    let body = json!({ "message": "Message sent successfully", "data": message.view() });
    (status, Json(body)).into_response()
}

/// A retried send: the message its key first stored (200, marked `Idempotent-Replayed`), if the
/// retry asks for the same message; a key reused for another message is a client bug (422).
fn replay(original: &Message, recipient: &str, content: &str) -> Result<Response, ChatError> {
    if original.recipient != recipient || original.content != content {
        return Err(ChatError::KeyReused);
    }
    let mut response = sent(StatusCode::OK, original);
    response
        .headers_mut()
        .insert("idempotent-replayed", HeaderValue::from_static("true"));
    Ok(response)
}

#[utoipa::path(
    post,
    path = "/chat/send",
    tag = "chat",
    request_body = SendBody,
    params(("Idempotency-Key" = Option<String>, Header, description = "1 to 255 visible ASCII characters: a retry with the same key stores nothing new and answers the original message")),
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Stored (and published, or left to the outbox to publish)", body = crate::openapi::Sent),
        (status = 200, description = "A retry of a stored send (`Idempotent-Replayed: true`)", body = crate::openapi::Sent),
        (status = 400, description = "Missing recipient, empty or too long content, a bad key or name, or a malformed body", body = chat_common::openapi::ApiError),
        (status = 401, description = "No valid token", body = chat_common::openapi::ApiError),
        (status = 403, description = "`sender` names someone else", body = chat_common::openapi::ApiError),
        (status = 404, description = "Recipient not found", body = chat_common::openapi::ApiError),
        (status = 413, description = "Body over `MAX_BODY_BYTES`", body = chat_common::openapi::ApiError),
        (status = 415, description = "Body not `application/json`", body = chat_common::openapi::ApiError),
        (status = 422, description = "The key already stored a different message", body = chat_common::openapi::ApiError),
        (status = 429, description = "Over the sender's `SEND_RATE_PER_USER`", body = chat_common::openapi::ApiError, headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "Database or auth-service unavailable", body = chat_common::openapi::ApiError, headers(("Retry-After" = u64, description = "Seconds to wait"))),
    )
)]
pub async fn send(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    headers: HeaderMap,
    Json(body): Json<SendBody>,
) -> Result<Response, ChatError> {
    if body.sender.as_deref().is_some_and(|s| s != user.username) {
        return Err(ChatError::Forbidden("sender must be the signed-in user"));
    }
    let key = idempotency_key(&headers)?;
    let recipient = body.recipient.trim();
    if recipient.is_empty() {
        return Err(ChatError::Validation("Recipient is required".into()));
    }
    check_name("recipient", recipient)?;
    if body.content.trim().is_empty() {
        return Err(ChatError::Validation(
            "Message content must not be empty".into(),
        ));
    }
    if body.content.chars().count() > state.max_message_chars {
        return Err(ChatError::Validation(format!(
            "Message content must be at most {} characters",
            state.max_message_chars
        )));
    }
    state
        .send_limit
        .check(&user.username)
        .map_err(ChatError::TooManyRequests)?;
    if let Some(key) = &key
        && let Some(original) = state.store.by_idempotency_key(&user.username, key).await?
    {
        return replay(&original, recipient, &body.content);
    }
    if recipient != user.username && state.directory.id_of(recipient).await?.is_none() {
        return Err(ChatError::RecipientNotFound);
    }
    let message = Message {
        id: ObjectId::new(),
        sender: user.username,
        recipient: recipient.to_owned(),
        content: body.content,
        timestamp_ms: now_millis(),
        idempotency_key: key,
    };
    let listed = match state.writer.write(&message).await? {
        Inserted::Stored => true,
        Inserted::StoredUnlisted => false,
        Inserted::DuplicateKey => {
            // The same key raced in from another request, which stored first.
            let key = message.idempotency_key.as_deref().unwrap_or_default();
            let original = state
                .store
                .by_idempotency_key(&message.sender, key)
                .await?
                .ok_or_else(|| {
                    ChatError::Unavailable("idempotency key without its message".into())
                })?;
            return replay(&original, &message.recipient, &message.content);
        }
    };
    state.metrics.messages.inc();
    // The message is stored, marked unpublished: from here on the send succeeds whatever the
    // broker does, and the outbox publishes it until the broker confirms.
    if listed {
        let _ = state.outbox.publish(&message).await;
    } else {
        // Its conversation summaries and its event are the outbox's to finish (it writes the
        // one before publishing the other).
        state.outbox.defer();
    }
    Ok(sent(StatusCode::CREATED, &message))
}

#[derive(Debug, Deserialize)]
pub struct HistoryQuery {
    user1: Option<String>,
    user2: Option<String>,
    limit: Option<usize>,
    before: Option<String>,
    after: Option<String>,
}

const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: usize = 200;

/// `limit`, or `default` without one; 400 outside 1 to `max`.
fn page_limit(limit: Option<usize>, default: usize, max: usize) -> Result<usize, ChatError> {
    let limit = limit.unwrap_or(default);
    if !(1..=max).contains(&limit) {
        return Err(ChatError::Validation(format!(
            "limit must be between 1 and {max}"
        )));
    }
    Ok(limit)
}

fn parse_id(name: &str, value: &str) -> Result<ObjectId, ChatError> {
    ObjectId::parse_str(value)
        .map_err(|_| ChatError::Validation(format!("{name} must be a message _id")))
}

/// `GET /chat/history?user1=&user2=[&limit=][&before=|&after=]`, for the two participants only.
#[utoipa::path(
    get,
    path = "/chat/history",
    tag = "chat",
    params(
        ("user1" = String, Query, description = "One participant (the caller or the other)"),
        ("user2" = String, Query, description = "The other participant"),
        ("limit" = Option<u32>, Query, description = "Page size, 1 to 200 (default 50)", minimum = 1, maximum = 200),
        ("before" = Option<String>, Query, description = "The page before this `_id` (not with `after`)", pattern = "^[0-9a-fA-F]{24}$"),
        ("after" = Option<String>, Query, description = "The page after this `_id` (not with `before`)", pattern = "^[0-9a-fA-F]{24}$"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Both directions of the conversation, oldest first", body = crate::openapi::Messages),
        (status = 400, description = "Missing users, a bad limit or id, or both `before` and `after`", body = chat_common::openapi::ApiError),
        (status = 401, description = "No valid token", body = chat_common::openapi::ApiError),
        (status = 403, description = "The caller is neither participant", body = chat_common::openapi::ApiError),
        (status = 503, description = "Database unavailable", body = chat_common::openapi::ApiError, headers(("Retry-After" = u64, description = "Seconds to wait"))),
    )
)]
pub async fn history(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Query(q): Query<HistoryQuery>,
) -> Result<Json<Value>, ChatError> {
    let (Some(user1), Some(user2)) = (
        q.user1.filter(|u| !u.is_empty()),
        q.user2.filter(|u| !u.is_empty()),
    ) else {
        return Err(ChatError::Validation("user1 and user2 are required".into()));
    };
    check_name("user1", &user1)?;
    check_name("user2", &user2)?;
    if user.username != user1 && user.username != user2 {
        return Err(ChatError::Forbidden(
            "Only the participants may read this conversation",
        ));
    }
    let limit = page_limit(q.limit, DEFAULT_PAGE, MAX_PAGE)?;
    let page = match (q.before.as_deref(), q.after.as_deref()) {
        (Some(_), Some(_)) => {
            return Err(ChatError::Validation(
                "Use either before or after, not both".into(),
            ));
        }
        (Some(b), None) => Page::Before {
            id: parse_id("before", b)?,
            limit,
        },
        (None, Some(a)) => Page::After {
            id: parse_id("after", a)?,
            limit,
        },
        (None, None) => Page::Latest { limit },
    };
    let messages = state.store.conversation(&user1, &user2, page).await?;
    let data: Vec<_> = messages.iter().map(Message::view).collect();
    Ok(Json(json!({ "data": data })))
}

#[derive(Debug, Deserialize)]
pub struct MessagesQuery {
    after: Option<String>,
    limit: Option<usize>,
}

/// `GET /chat/messages[?after=<_id>][&limit=]`: the caller's messages in every conversation,
/// sent and received, oldest first, newer than `after` (a client's catch-up after a reconnect).
#[utoipa::path(
    get,
    path = "/chat/messages",
    tag = "chat",
    params(
        ("after" = Option<String>, Query, description = "Only messages after this `_id`", pattern = "^[0-9a-fA-F]{24}$"),
        ("limit" = Option<u32>, Query, description = "Page size, 1 to 200 (default 50)", minimum = 1, maximum = 200),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The caller's messages in every conversation, sent and received, oldest first", body = crate::openapi::Messages),
        (status = 400, description = "A bad limit or id", body = chat_common::openapi::ApiError),
        (status = 401, description = "No valid token", body = chat_common::openapi::ApiError),
        (status = 503, description = "Database unavailable", body = chat_common::openapi::ApiError, headers(("Retry-After" = u64, description = "Seconds to wait"))),
    )
)]
pub async fn messages(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Query(q): Query<MessagesQuery>,
) -> Result<Json<Value>, ChatError> {
    let limit = page_limit(q.limit, DEFAULT_PAGE, MAX_PAGE)?;
    let after = q
        .after
        .as_deref()
        .map(|a| parse_id("after", a))
        .transpose()?;
    let messages = state.store.for_user(&user.username, after, limit).await?;
    let data: Vec<_> = messages.iter().map(Message::view).collect();
    Ok(Json(json!({ "data": data })))
}

#[derive(Debug, Deserialize)]
pub struct ConversationsQuery {
    limit: Option<usize>,
    before: Option<String>,
}

const DEFAULT_CONVERSATIONS: usize = 20;
const MAX_CONVERSATIONS: usize = 100;

/// `GET /chat/conversations[?limit=][&before=<cursor>]`: the caller's conversations, the most
/// recent first, each with its newest message and what the caller has not read.
#[utoipa::path(
    get,
    path = "/chat/conversations",
    tag = "chat",
    params(
        ("limit" = Option<u32>, Query, description = "Page size, 1 to 100 (default 20)", minimum = 1, maximum = 100),
        ("before" = Option<String>, Query, description = "The `next` of the previous page", pattern = "^[0-9a-fA-F]{24}$"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of the caller's conversations, the most recent first", body = crate::openapi::ConversationList),
        (status = 400, description = "A bad limit or cursor", body = chat_common::openapi::ApiError),
        (status = 401, description = "No valid token", body = chat_common::openapi::ApiError),
        (status = 503, description = "Database unavailable", body = chat_common::openapi::ApiError, headers(("Retry-After" = u64, description = "Seconds to wait"))),
    )
)]
pub async fn conversations(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Query(q): Query<ConversationsQuery>,
) -> Result<Json<Value>, ChatError> {
    let limit = page_limit(q.limit, DEFAULT_CONVERSATIONS, MAX_CONVERSATIONS)?;
    let before = q
        .before
        .as_deref()
        .map(|b| parse_id("before", b))
        .transpose()?;
    let list = state
        .store
        .conversations(&user.username, before, limit)
        .await?;
    let data: Vec<Value> = list
        .page
        .iter()
        .map(|c| {
            json!({
                "peer": c.peer,
                "lastMessage": c.last.view(),
                "unread": c.unread,
                "peerReadUpTo": c.peer_read_up_to.map(ObjectId::to_hex),
            })
        })
        .collect();
    Ok(Json(
        json!({ "data": data, "next": list.next.map(ObjectId::to_hex) }),
    ))
}

/// `POST /chat/read` `{"peer", "upTo"}`: the caller has read their conversation with `peer` up
/// to the message `upTo`. A position never moves backwards; when it moves, a `read` event tells
/// the peer's and the caller's sockets.
#[utoipa::path(
    post,
    path = "/chat/read",
    tag = "chat",
    request_body = crate::openapi::ReadBody,
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Read up to `upTo` (or further already)"),
        (status = 400, description = "Missing peer, a bad id or a malformed body", body = chat_common::openapi::ApiError),
        (status = 401, description = "No valid token", body = chat_common::openapi::ApiError),
        (status = 404, description = "`upTo` is not a message between the caller and `peer`", body = chat_common::openapi::ApiError),
        (status = 413, description = "Body over `MAX_BODY_BYTES`", body = chat_common::openapi::ApiError),
        (status = 415, description = "Body not `application/json`", body = chat_common::openapi::ApiError),
        (status = 503, description = "Database unavailable", body = chat_common::openapi::ApiError, headers(("Retry-After" = u64, description = "Seconds to wait"))),
    )
)]
pub async fn read(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Json(body): Json<crate::openapi::ReadBody>,
) -> Result<StatusCode, ChatError> {
    let peer = body.peer.trim();
    if peer.is_empty() {
        return Err(ChatError::Validation("peer is required".into()));
    }
    check_name("peer", peer)?;
    let up_to = parse_id("upTo", &body.up_to)?;
    match state.store.mark_read(&user.username, peer, up_to).await? {
        ReadMark::NotInConversation => Err(ChatError::MessageNotFound),
        ReadMark::Unchanged => Ok(StatusCode::NO_CONTENT),
        ReadMark::Moved => {
            let receipt = ReadReceipt {
                reader: user.username,
                peer: peer.to_owned(),
                up_to: up_to.to_hex(),
            };
            // A receipt is a notice, not data: the position is stored (and listed by
            // `/chat/conversations`), so a receipt the broker missed costs a tick, never state.
            // Published off the request: a broker slow to confirm never delays the answer.
            let outbox = state.outbox.clone();
            tokio::spawn(async move { outbox.notify(AnyEvent::Read(receipt).to_bytes()).await });
            Ok(StatusCode::NO_CONTENT)
        }
    }
}

/// `GET /readyz`: the store answers and the broker is connected.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "health",
    responses(
        (status = 200, description = "Ready", body = chat_common::openapi::Readiness),
        (status = 503, description = "Not ready: the message names what is unavailable", body = chat_common::openapi::Readiness,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    )
)]
pub async fn readyz(State(state): State<AppState>) -> Response {
    let store = state.store.ping().await.map_err(|e| e.to_string());
    readiness(&[("store", store), ("broker", state.outbox.ready())])
}
