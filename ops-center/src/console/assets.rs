//! The console's page, embedded in the binary: nothing is fetched at run
//! time, from us or from anyone else.
//!
//! The scripts are TypeScript (`ops-center/console/src/`), compiled by
//! `tsc` to the ES modules in `ops-center/console/js/`, which are
//! committed: a build needs no Node. `ops-center/tests/console_assets.rs`
//! type-checks the sources and checks that the committed JavaScript is what
//! `tsc` makes of them today.

use axum::{
    extract::Request,
    http::{HeaderValue, Method, StatusCode, header},
    response::{IntoResponse, Response},
};

/// Every file the console serves: path, media type, content.
pub const FILES: &[(&str, &str, &[u8])] = &[
    (
        "/",
        "text/html; charset=utf-8",
        include_bytes!("../../console/index.html"),
    ),
    (
        "/style.css",
        "text/css; charset=utf-8",
        include_bytes!("../../console/style.css"),
    ),
    (
        "/js/main.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../console/js/main.js"),
    ),
    (
        "/js/api.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../console/js/api.js"),
    ),
    (
        "/js/queue.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../console/js/queue.js"),
    ),
    (
        "/js/views.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../console/js/views.js"),
    ),
];

/// The file at the request's path, or 404.
pub async fn serve(req: Request) -> Response {
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        return (StatusCode::METHOD_NOT_ALLOWED, "method not allowed").into_response();
    }
    let path = req.uri().path();
    let path = if path == "/index.html" { "/" } else { path };
    match FILES.iter().find(|(p, _, _)| *p == path) {
        Some((_, media, body)) => {
            let mut response = body.into_response();
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(media));
            response
        }
        None => (StatusCode::NOT_FOUND, "not found").into_response(),
    }
}
