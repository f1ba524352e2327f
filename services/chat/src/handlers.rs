use std::{sync::Arc, time::Instant};

use axum::{extract::State, http::StatusCode, response::Response};
use bson::oid::ObjectId;
use chat_common::{
    event::Event,
    http::{Json, Query, readiness},
    jwt::AuthUser,
    time::now_millis,
};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{
    AppState, ChatError,
    store::{Message, Page},
};

/// `POST /chat/send`. `sender` is optional: the sender is the token's user.
#[derive(Debug, Deserialize)]
pub struct SendBody {
    sender: Option<String>,
    recipient: String,
    content: String,
}

pub async fn send(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Json(body): Json<SendBody>,
) -> Result<(StatusCode, Json<Value>), ChatError> {
    if body.sender.as_deref().is_some_and(|s| s != user.username) {
        return Err(ChatError::Forbidden("sender must be the signed-in user"));
    }
    let recipient = body.recipient.trim();
    if recipient.is_empty() {
        return Err(ChatError::Validation("Recipient is required".into()));
    }
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
    if recipient != user.username && state.directory.id_of(recipient).await?.is_none() {
        return Err(ChatError::RecipientNotFound);
    }
    let message = Message {
        id: ObjectId::new(),
        sender: user.username,
        recipient: recipient.to_owned(),
        content: body.content,
        timestamp_ms: now_millis(),
    };
    state.writer.write(&message).await?;
    state.metrics.messages.inc();
    // The message is safe in the database: from here on the send succeeds whatever the broker does.
    let event = Event::new_message(message.view());
    let payload: Arc<[u8]> = event.to_bytes().into();
    let started = Instant::now();
    match state.publisher.publish(payload).await {
        Ok(()) => {
            state
                .metrics
                .publish_seconds
                .observe(started.elapsed().as_secs_f64());
            state.metrics.published.with_label_values(&["ok"]).inc();
        }
        Err(e) => {
            state.metrics.published.with_label_values(&["failed"]).inc();
            tracing::warn!(error = %e, message_id = %event.data.id, "event not published; the message is stored");
        }
    }
    Ok((
        StatusCode::CREATED,
        Json(json!({ "message": "Message sent successfully", "data": event.data })),
    ))
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

fn parse_id(name: &str, value: &str) -> Result<ObjectId, ChatError> {
    ObjectId::parse_str(value)
        .map_err(|_| ChatError::Validation(format!("{name} must be a message _id")))
}

/// `GET /chat/history?user1=&user2=[&limit=][&before=|&after=]`, for the two participants only.
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
    if user.username != user1 && user.username != user2 {
        return Err(ChatError::Forbidden(
            "Only the participants may read this conversation",
        ));
    }
    let limit = q.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ChatError::Validation(format!(
            "limit must be between 1 and {MAX_PAGE}"
        )));
    }
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

/// `GET /readyz`: the store answers and the broker is connected.
pub async fn readyz(State(state): State<AppState>) -> Response {
    let store = state.store.ping().await.map_err(|e| e.to_string());
    readiness(&[("store", store), ("broker", state.publisher.ready())])
}
