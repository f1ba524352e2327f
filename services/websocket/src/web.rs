//! The web client (`web/` at the repository's root), compiled into the binary and served at `/`
//! to a plain GET (an upgrade there is the WebSocket), with `/app.js` and `/style.css` beside it.
//! Three small files (about 30 KiB): no static-file server, nothing to find on disk at run time.

use axum::{
    http::{HeaderValue, header},
    response::{IntoResponse, Response},
};

const INDEX: &str = include_str!("../../../web/index.html");
const APP: &str = include_str!("../../../web/app.js");
const STYLE: &str = include_str!("../../../web/style.css");

/// The page runs only its own script and style (no inline code: user content can never become
/// one), and talks to the services wherever they are (`?auth=&chat=&ws=`).
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     connect-src 'self' http: https: ws: wss:; img-src 'self' data:; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn file(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CSP),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
            // Revalidated on each load: a redeployed service serves its own client at once.
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}

pub fn index() -> Response {
    file("text/html; charset=utf-8", INDEX)
}

pub async fn app() -> Response {
    file("text/javascript; charset=utf-8", APP)
}

pub async fn style() -> Response {
    file("text/css; charset=utf-8", STYLE)
}
