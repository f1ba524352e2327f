//! auth-service's OpenAPI 3.1 document, generated from the handlers' annotations and served at
//! `/openapi.json`; `openapi/auth-service.json` is its committed copy (a test keeps the two
//! equal). The response bodies the handlers build with `json!` are described by the types here.

use chat_common::openapi::Bearer;
use serde::Serialize;
use utoipa::{OpenApi, ToSchema};

/// A registration's answer.
#[derive(Serialize, ToSchema)]
pub struct Registered {
    /// `User registered successfully`
    pub message: String,
    /// The new user's id, a hex ObjectId.
    #[schema(pattern = "^[0-9a-f]{24}$")]
    pub id: String,
}

/// A login's answer.
#[derive(Serialize, ToSchema)]
pub struct LoggedIn {
    /// `Login successful`
    pub message: String,
    /// A JWT (HS256 or EdDSA) whose claims carry `id` and `username`.
    pub token: String,
}

/// A username lookup's answer.
#[derive(Serialize, ToSchema)]
pub struct UserId {
    #[schema(pattern = "^[0-9a-f]{24}$")]
    pub id: String,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "auth-service",
        description = "Registration, login (JWTs carrying `id` and `username`) and username lookups.",
        license(name = "MIT")
    ),
    paths(
        crate::handlers::register,
        crate::handlers::login,
        crate::handlers::user_by_username,
        crate::handlers::readyz,
    ),
    components(schemas(chat_common::openapi::ApiError, Registered, LoggedIn, UserId, chat_common::openapi::Readiness)),
    modifiers(&Bearer)
)]
pub struct ApiDoc;

/// The document as served at `/openapi.json`.
pub fn document() -> String {
    chat_common::openapi::render(&ApiDoc::openapi())
}
