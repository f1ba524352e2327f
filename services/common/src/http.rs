//! HTTP plumbing shared by the services: the `{"message": ...}` error body, extractors whose
//! rejections are JSON, the common middleware stack and the server loop.

use std::time::Duration;

use axum::{
    Router,
    extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Request, rejection},
    http::{HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
};
use serde::Serialize;

use crate::metrics::HttpMetrics;

/// Longest username any request may name (registration allows 32 characters; accounts
/// carried over from the original system may be longer, never beyond this): longer input is a
/// 400 or 404 before any lookup.
pub const MAX_NAME_BYTES: usize = 1024;

/// The body of every error response: `{"message": "..."}`, as the original system sent.
#[derive(Debug, Serialize)]
pub struct ErrorBody<'a> {
    pub message: &'a str,
}

/// Builds a JSON error response.
pub fn error_response(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(ErrorBody { message })).into_response()
}

/// Adds `Retry-After: <secs>` to a response.
pub fn with_retry_after(mut response: Response, secs: u64) -> Response {
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
    response
}

/// A client error found before the handler ran: bad JSON, bad query, missing token.
#[derive(Debug, Clone)]
pub struct ApiRejection {
    pub status: StatusCode,
    pub message: String,
}

impl ApiRejection {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiRejection {
    fn into_response(self) -> Response {
        error_response(self.status, &self.message)
    }
}

impl From<rejection::JsonRejection> for ApiRejection {
    fn from(r: rejection::JsonRejection) -> Self {
        use rejection::JsonRejection as J;
        let status = match &r {
            J::MissingJsonContentType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            J::BytesRejection(b) if b.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                return Self::new(StatusCode::PAYLOAD_TOO_LARGE, "Request body is too large");
            }
            J::BytesRejection(b) => b.status(),
            // Syntax errors, wrong types (`{"$ne": null}` where a string belongs), missing fields.
            _ => StatusCode::BAD_REQUEST,
        };
        Self::new(status, r.body_text())
    }
}

impl From<rejection::QueryRejection> for ApiRejection {
    fn from(r: rejection::QueryRejection) -> Self {
        Self::new(StatusCode::BAD_REQUEST, r.body_text())
    }
}

/// `axum::Json` whose rejection is a JSON `{"message"}` with a 4xx status.
#[derive(Debug, Clone, Copy, Default, FromRequest)]
#[from_request(via(axum::Json), rejection(ApiRejection))]
pub struct Json<T>(pub T);

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// `axum::extract::Query` whose rejection is a JSON 400.
#[derive(Debug, Clone, Copy, Default, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiRejection))]
pub struct Query<T>(pub T);

/// Limits that every service applies to every request.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest request body accepted; larger ones get 413.
    pub body_bytes: usize,
    /// Longest a request may take before it is answered with 503.
    pub request_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            body_bytes: 64 * 1024,
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// Which web pages may call the service from a browser (`CORS_ALLOWED_ORIGINS`): none by
/// default (a browser then refuses a page from another origin, as it should for an API whose
/// clients are apps); the web client served by websocket-service on another port needs its
/// origin listed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Cors {
    #[default]
    Off,
    /// `*`: any page.
    Any,
    /// `loopback`: pages from `http://localhost`, `127.0.0.1` or `[::1]` on any port (the
    /// standalone stack's default, for the web client on this machine).
    Loopback,
    /// A comma-separated list of origins, `scheme://host[:port]` each.
    Origins(Vec<HeaderValue>),
}

impl Cors {
    /// Parses `CORS_ALLOWED_ORIGINS`; the error says what is wrong.
    pub fn parse(list: &str) -> Result<Self, String> {
        match list.trim() {
            "" => return Ok(Self::Off),
            "*" => return Ok(Self::Any),
            "loopback" => return Ok(Self::Loopback),
            _ => {}
        }
        let mut origins = Vec::new();
        for origin in list.split(',').map(str::trim).filter(|o| !o.is_empty()) {
            let uri: axum::http::Uri = origin
                .parse()
                .map_err(|_| format!("{origin:?} is not an origin"))?;
            let plain = matches!(uri.scheme_str(), Some("http" | "https"))
                && uri.authority().is_some()
                && uri.path() == "/"
                && uri.query().is_none()
                // A browser's Origin never ends with a slash: such an entry would match nothing.
                && !origin.ends_with('/');
            if !plain {
                return Err(format!(
                    "{origin:?} is not an origin: expected scheme://host[:port], such as http://localhost:5003"
                ));
            }
            origins.push(HeaderValue::from_str(origin).map_err(|e| e.to_string())?);
        }
        Ok(Self::Origins(origins))
    }

    fn layer(&self) -> Option<tower_http::cors::CorsLayer> {
        use axum::http::{HeaderName, Method};
        use tower_http::cors::{AllowOrigin, CorsLayer};
        let allow = match self {
            Self::Off => return None,
            Self::Any => AllowOrigin::any(),
            Self::Origins(list) => AllowOrigin::list(list.iter().cloned()),
            Self::Loopback => {
                AllowOrigin::predicate(|origin, _| origin.to_str().is_ok_and(is_loopback_origin))
            }
        };
        Some(
            CorsLayer::new()
                .allow_origin(allow)
                .allow_methods([Method::GET, Method::POST])
                .allow_headers([
                    header::AUTHORIZATION,
                    header::CONTENT_TYPE,
                    HeaderName::from_static("idempotency-key"),
                ])
                .expose_headers([header::RETRY_AFTER])
                .max_age(Duration::from_secs(600)),
        )
    }
}

/// `http://localhost`, `http://127.0.0.1` or `http://[::1]`, with any port or none.
fn is_loopback_origin(origin: &str) -> bool {
    let Some(authority) = origin.strip_prefix("http://") else {
        return false;
    };
    let host = match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    };
    matches!(host, "localhost" | "127.0.0.1" | "[::1]")
}

/// Wraps a service's routes with what every service has: `/healthz`, `/metrics`, JSON 404/405,
/// body limit, request timeout, request metrics, request tracing and CORS.
pub fn finish_router(routes: Router, metrics: &HttpMetrics, limits: Limits, cors: &Cors) -> Router {
    let timeout = limits.request_timeout;
    let router = routes
        .merge(metrics_router(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limits.body_bytes))
        .layer(middleware::from_fn(move |req: Request, next: Next| {
            request_timeout(timeout, req, next)
        }))
        .layer(middleware::from_fn_with_state(metrics.clone(), crate::metrics::track))
        .layer(
            tower_http::trace::TraceLayer::new_for_http()
                // Never log query strings: they may carry tokens.
                .make_span_with(|req: &Request| {
                    tracing::info_span!("request", method = %req.method(), path = %req.uri().path())
                }),
        );
    // Outermost: every answer carries the headers a page needs to read it, a 503 from the
    // timeout or a 413 from the body limit included, and a preflight is answered here.
    match cors.layer() {
        Some(layer) => router.layer(layer),
        None => router,
    }
}

/// `/healthz` and `/metrics`: what a scraper needs, alone on `METRICS_PORT` when it is set.
pub fn metrics_router(metrics: &HttpMetrics) -> Router {
    let metrics = metrics.clone();
    Router::new()
        .route("/healthz", axum::routing::get(healthz))
        .route(
            "/metrics",
            axum::routing::get(move || async move { metrics.render() }),
        )
}

async fn request_timeout(limit: Duration, req: Request, next: Next) -> Response {
    if let Ok(response) = tokio::time::timeout(limit, next.run(req)).await {
        response
    } else {
        tracing::warn!(?limit, "request timed out");
        with_retry_after(
            error_response(StatusCode::SERVICE_UNAVAILABLE, "Request timed out"),
            1,
        )
    }
}

/// `GET /healthz`: the process is alive and serving.
pub async fn healthz() -> Response {
    axum::Json(serde_json::json!({ "status": "ok" })).into_response()
}

/// The `/readyz` answer for a list of dependency checks (`name`, `Ok` or the reason). Reasons
/// are logged, not returned.
pub fn readiness(checks: &[(&str, Result<(), String>)]) -> Response {
    let mut failing = Vec::new();
    let detail: serde_json::Map<String, serde_json::Value> = checks
        .iter()
        .map(|(name, r)| {
            let v = match r {
                Ok(()) => "ok",
                Err(reason) => {
                    tracing::warn!(check = name, %reason, "not ready");
                    failing.push(*name);
                    "unavailable"
                }
            };
            ((*name).to_owned(), v.into())
        })
        .collect();
    if failing.is_empty() {
        let body = serde_json::json!({ "status": "ready", "checks": detail });
        return (StatusCode::OK, axum::Json(body)).into_response();
    }
    let body = serde_json::json!({
        "status": "not ready",
        "message": format!("Unavailable: {}", failing.join(", ")),
        "checks": detail,
    });
    with_retry_after(
        (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response(),
        1,
    )
}

async fn not_found() -> Response {
    error_response(StatusCode::NOT_FOUND, "Not found")
}

async fn method_not_allowed() -> Response {
    error_response(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed")
}

/// Extracts the token of an `Authorization: Bearer <token>` header, if any.
pub fn bearer_token(headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderMap;

    #[test]
    fn bearer_parsing() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer_token(&h), None);
        h.insert(header::AUTHORIZATION, "Bearer abc.def".parse().unwrap());
        assert_eq!(bearer_token(&h), Some("abc.def"));
        h.insert(header::AUTHORIZATION, "bearer   xyz ".parse().unwrap());
        assert_eq!(bearer_token(&h), Some("xyz"));
        h.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer_token(&h), None);
        h.insert(header::AUTHORIZATION, "Bearer ".parse().unwrap());
        assert_eq!(bearer_token(&h), None);
    }

    #[test]
    fn cors_origins_are_plain_origins() {
        assert_eq!(Cors::parse(""), Ok(Cors::Off));
        assert_eq!(Cors::parse("*"), Ok(Cors::Any));
        assert_eq!(Cors::parse("loopback"), Ok(Cors::Loopback));
        assert_eq!(
            Cors::parse("http://localhost:5003, https://chat.example.com"),
            Ok(Cors::Origins(vec![
                HeaderValue::from_static("http://localhost:5003"),
                HeaderValue::from_static("https://chat.example.com"),
            ]))
        );
        for origin in [
            "http://localhost:5003",
            "http://127.0.0.1",
            "http://[::1]:8080",
        ] {
            assert!(is_loopback_origin(origin), "{origin}");
        }
        for origin in [
            "https://localhost",
            "http://localhost.evil.example",
            "http://10.0.0.1:5003",
        ] {
            assert!(!is_loopback_origin(origin), "{origin}");
        }
        for bad in [
            "localhost:5003",
            "http://localhost:5003/",
            "http://localhost:5003/app",
            "http://localhost:5003?x=1",
            "ftp://localhost",
            "http://",
        ] {
            assert!(Cors::parse(bad).is_err(), "{bad}");
        }
    }
}
