//! What auth-service's and chat-service's OpenAPI documents share: the error body, the
//! readiness answer, the `bearer` security scheme, and serving a document as JSON.

use axum::{
    http::header,
    response::{IntoResponse, Response},
};
use serde::Serialize;
use utoipa::{
    Modify, ToSchema,
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
};

/// `{"message": "..."}`: every error, as the original system sent it.
#[derive(Serialize, ToSchema)]
pub struct ApiError {
    pub message: String,
}

/// The readiness answer: `ready`, or `not ready` with a message naming what is unavailable.
#[derive(Serialize, ToSchema)]
pub struct Readiness {
    pub status: String,
    pub message: Option<String>,
    pub checks: std::collections::BTreeMap<String, String>,
}

/// The `bearer` security scheme (a JWT from auth-service in `Authorization`).
#[derive(Debug, Clone, Copy)]
pub struct Bearer;

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

/// A document as the JSON text served at `/openapi.json` and committed under `openapi/`.
pub fn render(document: &utoipa::openapi::OpenApi) -> String {
    document
        .to_pretty_json()
        .expect("an OpenAPI document serialises")
}

/// The `/openapi.json` answer for a rendered document.
pub fn response(rendered: &str) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        rendered.to_owned(),
    )
        .into_response()
}
