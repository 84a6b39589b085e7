//! The browser page, served by the binary itself on the gRPC port (HTTP/1.1 or HTTP/2), so
//! `cargo run --release` and a browser are the whole demo.
//!
//! The files are the committed build of `clients/web` (`clients/web/dist/`), embedded at
//! compile time: building the server needs no npm. `GET /` (and `/index.html`) answers the page,
//! which loads `app.js` and `app.css` with a content hash in their URLs, so those may be cached
//! for good while the page itself is revalidated every time. The page speaks grpc-web to the
//! same origin. These routes sit beside the gRPC services' `/package.Service/Method` paths and
//! never shadow them.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

const INDEX_HTML: &str = include_str!("../clients/web/dist/index.html");
const APP_JS: &[u8] = include_bytes!("../clients/web/dist/app.js");
const APP_CSS: &[u8] = include_bytes!("../clients/web/dist/app.css");

/// The page itself: always revalidated, so a new build is picked up at once.
const NO_CACHE: &str = "no-cache";
/// Assets: referenced from the page with a content hash (`app.js?v=...`).
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

fn file(body: &'static [u8], content_type: &'static str, cache: &'static str) -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static(cache)),
            (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        ],
        body,
    )
        .into_response()
}

async fn index() -> Response {
    file(INDEX_HTML.as_bytes(), "text/html; charset=utf-8", NO_CACHE)
}

async fn app_js() -> Response {
    file(APP_JS, "text/javascript; charset=utf-8", IMMUTABLE)
}

async fn app_css() -> Response {
    file(APP_CSS, "text/css; charset=utf-8", IMMUTABLE)
}

/// The page's routes: `GET /`, `/index.html`, `/app.js`, `/app.css` (HEAD too). Merge it into
/// the gRPC router; it has no fallback of its own.
pub fn router() -> Router {
    Router::new()
        .route("/", get(index))
        .route("/index.html", get(index))
        .route("/app.js", get(app_js))
        .route("/app.css", get(app_css))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    async fn fetch(path: &str) -> Response {
        router().oneshot(Request::get(path).body(Body::empty()).unwrap()).await.unwrap()
    }

    #[tokio::test]
    async fn serves_the_page_and_its_assets_with_their_types() {
        for (path, content_type, len) in [
            ("/", "text/html; charset=utf-8", INDEX_HTML.len()),
            ("/index.html", "text/html; charset=utf-8", INDEX_HTML.len()),
            ("/app.js", "text/javascript; charset=utf-8", APP_JS.len()),
            ("/app.css", "text/css; charset=utf-8", APP_CSS.len()),
        ] {
            let res = fetch(path).await;
            assert_eq!(res.status(), StatusCode::OK, "{path}");
            assert_eq!(res.headers()[header::CONTENT_TYPE], content_type, "{path}");
            let body = axum::body::to_bytes(res.into_body(), usize::MAX).await.unwrap();
            assert_eq!(body.len(), len, "{path}");
        }
    }

    #[test]
    fn the_page_loads_the_embedded_assets() {
        assert!(INDEX_HTML.contains("src=\"app.js?v="), "index.html must reference the bundle");
        assert!(INDEX_HTML.contains("href=\"app.css?v="), "index.html must reference the stylesheet");
        assert!(!APP_JS.is_empty() && !APP_CSS.is_empty());
    }

    #[tokio::test]
    async fn unknown_paths_are_not_answered_here() {
        assert_eq!(fetch("/nope").await.status(), StatusCode::NOT_FOUND);
    }
}
