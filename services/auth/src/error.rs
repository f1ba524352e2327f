//! The auth-service error type: every failure a handler can return, mapped to a status and a
//! JSON `{"message"}`. Internal details are logged here and never sent to the client.

use std::time::Duration;

use axum::{
    http::StatusCode,
    response::{IntoResponse, Response},
};
use chat_common::http::{error_response, with_retry_after};

use crate::{password::HashError, store::StoreError};

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("{0}")]
    Validation(String),
    #[error("Username is already taken")]
    UsernameTaken,
    #[error("Invalid username or password")]
    InvalidCredentials,
    #[error("User not found")]
    UserNotFound,
    #[error("Too many failed login attempts; try again later")]
    TooManyAttempts(Duration),
    #[error("Too many registrations from this address; try again later")]
    TooManyRegistrations(Duration),
    #[error("Server is busy; try again shortly")]
    Busy,
    #[error("Service temporarily unavailable")]
    Unavailable(String),
    #[error("Internal server error")]
    Internal(String),
}

impl From<StoreError> for AuthError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Duplicate => Self::UsernameTaken,
            StoreError::Unavailable(reason) => Self::Unavailable(reason),
        }
    }
}

impl From<HashError> for AuthError {
    fn from(e: HashError) -> Self {
        match e {
            HashError::Busy => Self::Busy,
            HashError::Internal(reason) => Self::Internal(reason),
        }
    }
}

impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        let status = match &self {
            Self::Validation(_) => StatusCode::BAD_REQUEST,
            Self::UsernameTaken => StatusCode::CONFLICT,
            Self::InvalidCredentials => StatusCode::UNAUTHORIZED,
            Self::UserNotFound => StatusCode::NOT_FOUND,
            Self::TooManyAttempts(_) | Self::TooManyRegistrations(_) => {
                StatusCode::TOO_MANY_REQUESTS
            }
            Self::Busy | Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        match &self {
            Self::Unavailable(reason) => tracing::warn!(%reason, "dependency unavailable"),
            Self::Internal(reason) => tracing::error!(%reason, "internal error"),
            _ => {}
        }
        let response = error_response(status, &self.to_string());
        match self {
            Self::TooManyAttempts(wait) | Self::TooManyRegistrations(wait) => {
                with_retry_after(response, wait.as_secs() + 1)
            }
            Self::Busy | Self::Unavailable(_) => with_retry_after(response, 1),
            _ => response,
        }
    }
}
