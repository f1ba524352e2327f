use axum::{extract::State, http::StatusCode, response::Response};
use chat_common::{
    http::{Json, Query, readiness},
    jwt::Caller,
    server::ClientAddr,
};
use serde::Deserialize;
use serde_json::{Value, json};

use std::sync::atomic::{AtomicBool, Ordering};

use crate::{AppState, AuthError, store::UserRecord};

/// `POST /auth/register` and `POST /auth/login` bodies. A JSON object or array where a string
/// belongs (`{"$ne": null}`) fails deserialisation: a 400, never a query operator.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct Credentials {
    username: String,
    password: String,
}

#[derive(Debug, Deserialize)]
pub struct LookupQuery {
    username: Option<String>,
}

const USERNAME_LEN: std::ops::RangeInclusive<usize> = 3..=32;
const PASSWORD_LEN: std::ops::RangeInclusive<usize> = 8..=128;
/// Longest username or password looked at on login (accounts created by the original system may
/// not follow today's rules, but nothing longer than this is worth hashing).
const LOGIN_FIELD_MAX: usize = chat_common::http::MAX_NAME_BYTES;

fn validate_username(username: &str) -> Result<(), AuthError> {
    let len = username.chars().count();
    if !USERNAME_LEN.contains(&len) {
        return Err(AuthError::Validation(
            "Username must be 3 to 32 characters long".into(),
        ));
    }
    if !username
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    {
        return Err(AuthError::Validation(
            "Username may contain only letters, digits, '_', '.' and '-'".into(),
        ));
    }
    Ok(())
}

fn validate_password(password: &str) -> Result<(), AuthError> {
    if !PASSWORD_LEN.contains(&password.chars().count()) {
        return Err(AuthError::Validation(
            "Password must be 8 to 128 characters long".into(),
        ));
    }
    Ok(())
}

#[utoipa::path(
    post,
    path = "/auth/register",
    tag = "auth",
    request_body = Credentials,
    responses(
        (status = 201, description = "Registered", body = crate::openapi::Registered),
        (status = 400, description = "Invalid username (3 to 32 of `A-Z a-z 0-9 _ . -`) or password (8 to 128 characters), or a malformed body", body = chat_common::openapi::ApiError),
        (status = 409, description = "Username is already taken", body = chat_common::openapi::ApiError),
        (status = 413, description = "Body over `MAX_BODY_BYTES`", body = chat_common::openapi::ApiError),
        (status = 415, description = "Body not `application/json`", body = chat_common::openapi::ApiError),
        (status = 429, description = "Too many registrations from this address", body = chat_common::openapi::ApiError,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "Database unavailable or hashing queue full", body = chat_common::openapi::ApiError,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    )
)]
pub async fn register(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    Json(body): Json<Credentials>,
) -> Result<(StatusCode, Json<Value>), AuthError> {
    let result = async {
        validate_username(&body.username)?;
        validate_password(&body.password)?;
        // Charged before any lookup or hash: a flood from one address stops here.
        state
            .throttle
            .begin_register(client)
            .map_err(AuthError::TooManyRegistrations)?;
        // Cheap early answer for the common case; the unique index decides races.
        if state
            .store
            .find_by_username(&body.username)
            .await?
            .is_some()
        {
            return Err(AuthError::UsernameTaken);
        }
        let hash = state.hasher.hash(body.password).await?;
        state
            .store
            .create(&body.username, &hash)
            .await
            .map_err(AuthError::from)
    }
    .await;
    let label = match &result {
        Ok(_) => "created",
        Err(AuthError::UsernameTaken) => "taken",
        Err(AuthError::Validation(_)) => "invalid",
        Err(AuthError::TooManyRegistrations(_)) => "throttled",
        Err(_) => "error",
    };
    state
        .metrics
        .registrations
        .with_label_values(&[label])
        .inc();
    let id = result?;
    tracing::info!(user_id = %id, "user registered");
    Ok((
        StatusCode::CREATED,
        Json(json!({ "message": "User registered successfully", "id": id })),
    ))
}

#[utoipa::path(
    post,
    path = "/auth/login",
    tag = "auth",
    request_body = Credentials,
    responses(
        (status = 200, description = "Logged in", body = crate::openapi::LoggedIn),
        (status = 400, description = "Missing username or password, or a malformed body", body = chat_common::openapi::ApiError),
        (status = 401, description = "Invalid username or password (the same for an unknown user)", body = chat_common::openapi::ApiError),
        (status = 413, description = "Body over `MAX_BODY_BYTES`", body = chat_common::openapi::ApiError),
        (status = 415, description = "Body not `application/json`", body = chat_common::openapi::ApiError),
        (status = 429, description = "Too many failed logins for this account from this address, or from this address", body = chat_common::openapi::ApiError,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "Database unavailable or hashing queue full", body = chat_common::openapi::ApiError,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    )
)]
pub async fn login(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    Json(body): Json<Credentials>,
) -> Result<Json<Value>, AuthError> {
    let result = login_inner(&state, body, client).await;
    let label = match &result {
        Ok(_) => "success",
        Err(AuthError::InvalidCredentials) => "invalid",
        Err(AuthError::TooManyAttempts(_)) => "throttled",
        Err(AuthError::Validation(_)) => "bad_request",
        Err(_) => "error",
    };
    state.metrics.logins.with_label_values(&[label]).inc();
    let token = result?;
    Ok(Json(
        json!({ "message": "Login successful", "token": token }),
    ))
}

async fn login_inner(
    state: &AppState,
    body: Credentials,
    client: std::net::IpAddr,
) -> Result<String, AuthError> {
    let Credentials { username, password } = body;
    if username.is_empty() || password.is_empty() {
        return Err(AuthError::Validation(
            "Username and password are required".into(),
        ));
    }
    if username.len() > LOGIN_FIELD_MAX || password.len() > LOGIN_FIELD_MAX {
        return Err(AuthError::InvalidCredentials);
    }
    state
        .throttle
        .begin_login(&username, client)
        .map_err(AuthError::TooManyAttempts)?;
    let verified = verify(state, &username, password).await;
    match verified {
        Ok(Some(user)) => {
            state.throttle.login_succeeded(&username, client);
            state
                .issuer
                .issue_user(&user.id, &user.username)
                .map_err(|e| AuthError::Internal(e.to_string()))
        }
        // Unknown accounts count too, so lockouts reveal nothing about existence.
        Ok(None) => Err(AuthError::InvalidCredentials),
        Err(e) => {
            state.throttle.login_refund(&username, client);
            Err(e)
        }
    }
}

/// The user, if `password` is theirs; `None` for a wrong password or an unknown user (both
/// after one argon2 verification).
async fn verify(
    state: &AppState,
    username: &str,
    password: String,
) -> Result<Option<UserRecord>, AuthError> {
    static WARNED: AtomicBool = AtomicBool::new(false);
    let user = state.store.find_by_username(username).await?;
    let stored = user.as_ref().map(|u| u.password.clone());
    if stored.as_deref().is_some_and(|s| !s.starts_with("$argon2"))
        && !WARNED.swap(true, Ordering::Relaxed)
    {
        tracing::warn!(
            "an account still has a plaintext password; run `auth-service migrate-passwords`"
        );
    }
    let ok = state.hasher.verify(password, stored).await?;
    Ok(user.filter(|_| ok))
}

/// `GET /auth/user-by-username?username=`: for a signed-in user or one of our services.
#[utoipa::path(
    get,
    path = "/auth/user-by-username",
    tag = "auth",
    params(("username" = String, Query, description = "The username to look up")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The user's id", body = crate::openapi::UserId),
        (status = 400, description = "Username is required, or a malformed query", body = chat_common::openapi::ApiError),
        (status = 401, description = "No valid token", body = chat_common::openapi::ApiError),
        (status = 404, description = "User not found", body = chat_common::openapi::ApiError),
        (status = 503, description = "Database unavailable", body = chat_common::openapi::ApiError,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    )
)]
pub async fn user_by_username(
    State(state): State<AppState>,
    Caller(_caller): Caller,
    Query(query): Query<LookupQuery>,
) -> Result<Json<Value>, AuthError> {
    let username = query.username.unwrap_or_default();
    if username.trim().is_empty() {
        return Err(AuthError::Validation("Username is required".into()));
    }
    if username.len() > LOGIN_FIELD_MAX {
        return Err(AuthError::UserNotFound);
    }
    let user = state
        .store
        .find_by_username(&username)
        .await?
        .ok_or(AuthError::UserNotFound)?;
    Ok(Json(json!({ "id": user.id })))
}

/// `GET /readyz`: the user store answers.
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
    readiness(&[("store", store)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn username_rules() {
        for ok in ["bob", "alice_01", "a.b-c", &"x".repeat(32)] {
            assert!(validate_username(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "ab",
            "has space",
            "semi;colon",
            "ünï",
            "$ne",
            &"x".repeat(33),
        ] {
            assert!(validate_username(bad).is_err(), "{bad}");
        }
    }

    proptest::proptest! {
        /// A username is accepted exactly when it has 3 to 32 characters, each a letter, a
        /// digit, `_`, `.` or `-` (so no query operator, space or control character gets in).
        #[test]
        fn usernames_are_accepted_exactly_by_the_rules(name in "\\PC{0,40}|[A-Za-z0-9_.-]{0,40}") {
            let allowed = (3..=32).contains(&name.chars().count())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
            proptest::prop_assert_eq!(validate_username(&name).is_ok(), allowed);
        }

        /// A password is accepted exactly when it has 8 to 128 characters (not bytes).
        #[test]
        fn passwords_are_accepted_by_length_in_characters(password in "\\PC{0,140}") {
            let allowed = (8..=128).contains(&password.chars().count());
            proptest::prop_assert_eq!(validate_password(&password).is_ok(), allowed);
        }
    }

    #[test]
    fn password_rules() {
        assert!(validate_password("12345678").is_ok());
        assert!(validate_password(&"é".repeat(128)).is_ok());
        assert!(validate_password("1234567").is_err());
        assert!(validate_password(&"x".repeat(129)).is_err());
    }
}
