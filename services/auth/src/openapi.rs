//! auth-service's OpenAPI 3.1 document, generated from the handlers' annotations and served at
//! `/openapi.json`; `openapi/auth-service.json` is its committed copy (a test keeps the two
//! equal). The response bodies the handlers build with `json!` are described by the types here.

use serde::Serialize;
use utoipa::{
    Modify, OpenApi, ToSchema,
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
};

/// `{"message": "..."}`: every error, as the original system sent it.
#[derive(Serialize, ToSchema)]
pub struct ApiError {
    pub message: String,
}

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

/// The readiness answer: `ready`, or `not ready` with a message naming what is unavailable.
#[derive(Serialize, ToSchema)]
pub struct Readiness {
    pub status: String,
    pub message: Option<String>,
    pub checks: std::collections::BTreeMap<String, String>,
}

/// The `bearer` security scheme (a JWT in `Authorization`).
struct Bearer;

impl Modify for Bearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
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
    components(schemas(ApiError, Registered, LoggedIn, UserId, Readiness)),
    modifiers(&Bearer)
)]
pub struct ApiDoc;

/// The document as served at `/openapi.json`.
pub fn document() -> String {
    ApiDoc::openapi()
        .to_pretty_json()
        .expect("the OpenAPI document serialises")
}
