//! The web UI: one HTML page, one script and one style sheet of our own, compiled into the
//! binary (no package registry, no CDN). The page is a small client of the REST API: it
//! polls `/overview`, `/jobs/overview`, `/jobs/{id}`, `/jobs/{id}/checkpoints` and
//! `/jobs/{id}/metrics/history` once a second and draws the job graph and the checkpoint
//! plots as SVG. Its buttons call the same endpoints as scripts do (trigger a checkpoint or a
//! savepoint, cancel, `PATCH /jobs/{id}/checkpoints/config`), with the token the user gives it
//! when the cluster has one.

use axum::extract::Path;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

const INDEX: &str = include_str!("ui/index.html");
const SCRIPT: &str = include_str!("ui/app.js");
const STYLE: &str = include_str!("ui/style.css");

pub(crate) async fn index() -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], INDEX).into_response()
}

pub(crate) async fn asset(Path(file): Path<String>) -> Response {
    match file.as_str() {
        "app.js" => ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], SCRIPT).into_response(),
        "style.css" => ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE).into_response(),
        other => (StatusCode::NOT_FOUND, format!("no UI file '{other}'")).into_response(),
    }
}
