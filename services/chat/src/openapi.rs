//! chat-service's OpenAPI 3.1 document, generated from the handlers' annotations and served at
//! `/openapi.json`; `openapi/chat-service.json` is its committed copy (a test keeps the two
//! equal). The response bodies the handlers build with `json!` are described by the types here.

use chat_common::openapi::Bearer;
use serde::Serialize;
use utoipa::{OpenApi, ToSchema};

/// A stored message, as the original system rendered it.
#[derive(Serialize, ToSchema)]
pub struct Message {
    /// A hex ObjectId: ids grow with time (within a second, not in commit order).
    #[serde(rename = "_id")]
    #[schema(pattern = "^[0-9a-f]{24}$")]
    pub id: String,
    pub sender: String,
    pub recipient: String,
    pub content: String,
    /// RFC 3339, UTC, milliseconds (`2025-01-31T12:00:00.000Z`).
    pub timestamp: String,
}

/// A send's answer (201 when stored now, 200 when replayed for its `Idempotency-Key`).
#[derive(Serialize, ToSchema)]
pub struct Sent {
    /// `Message sent successfully`
    pub message: String,
    pub data: Message,
}

/// A page of messages, oldest first.
#[derive(Serialize, ToSchema)]
pub struct Messages {
    pub data: Vec<Message>,
}

/// One conversation of the caller's list.
#[derive(Serialize, ToSchema)]
pub struct ConversationItem {
    /// The other participant (the caller for notes to self).
    pub peer: String,
    /// The newest message, either way.
    #[serde(rename = "lastMessage")]
    pub last_message: Message,
    /// Messages from `peer` after the caller's read position.
    pub unread: u64,
    /// How far `peer` has read this conversation (an `_id`), for read ticks; null if never.
    #[serde(rename = "peerReadUpTo")]
    #[schema(pattern = "^[0-9a-f]{24}$")]
    pub peer_read_up_to: Option<String>,
}

/// A page of the caller's conversations, the most recent first.
#[derive(Serialize, ToSchema)]
pub struct ConversationList {
    pub data: Vec<ConversationItem>,
    /// Pass as `before` for the next page; null on the last page.
    #[schema(pattern = "^[0-9a-f]{24}$")]
    pub next: Option<String>,
}

/// `POST /chat/read`: the caller has read their conversation with `peer` up to `upTo`.
#[derive(serde::Deserialize, ToSchema)]
pub struct ReadBody {
    /// The other participant.
    pub peer: String,
    /// The `_id` of a message of the conversation (either way).
    #[serde(rename = "upTo")]
    #[schema(pattern = "^[0-9a-fA-F]{24}$")]
    pub up_to: String,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "chat-service",
        description = "Sending messages (stored, then published to the `chat_exchange` fanout exchange) and reading them back.",
        license(name = "MIT")
    ),
    paths(
        crate::handlers::send,
        crate::handlers::history,
        crate::handlers::messages,
        crate::handlers::conversations,
        crate::handlers::read,
        crate::handlers::readyz,
    ),
    components(schemas(chat_common::openapi::ApiError, Message, Sent, Messages, ConversationItem, ConversationList, ReadBody, chat_common::openapi::Readiness)),
    modifiers(&Bearer)
)]
pub struct ApiDoc;

/// The document as served at `/openapi.json`.
pub fn document() -> String {
    chat_common::openapi::render(&ApiDoc::openapi())
}
