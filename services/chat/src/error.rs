//! The chat-service error type: each failure maps to a status and a JSON `{"message"}`;
//! internal details are logged, never returned.

use axum::{
    http::StatusCode,
    response::{IntoResponse, Response},
};
use chat_common::{
    auth_client::LookupError,
    http::{error_response, with_retry_after},
};

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error("{0}")]
    Validation(String),
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("Recipient not found")]
    RecipientNotFound,
    #[error("No such message in this conversation")]
    MessageNotFound,
    #[error("Idempotency-Key was already used for a different message")]
    KeyReused,
    #[error("Too many messages; slow down")]
    TooManyRequests(std::time::Duration),
    #[error("Service temporarily unavailable")]
    Unavailable(String),
}

impl From<StoreError> for ChatError {
    fn from(e: StoreError) -> Self {
        Self::Unavailable(e.to_string())
    }
}

impl From<LookupError> for ChatError {
    fn from(e: LookupError) -> Self {
        Self::Unavailable(e.to_string())
    }
}

impl IntoResponse for ChatError {
    fn into_response(self) -> Response {
        let status = match &self {
            Self::Validation(_) => StatusCode::BAD_REQUEST,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::RecipientNotFound | Self::MessageNotFound => StatusCode::NOT_FOUND,
            Self::KeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            Self::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable(reason) => {
                tracing::warn!(%reason, "dependency unavailable");
                StatusCode::SERVICE_UNAVAILABLE
            }
        };
        let response = error_response(status, &self.to_string());
        match self {
            Self::TooManyRequests(wait) => with_retry_after(response, wait.as_secs() + 1),
            Self::Unavailable(_) => with_retry_after(response, 1),
            _ => response,
        }
    }
}
