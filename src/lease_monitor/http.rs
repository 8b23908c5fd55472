//! `/metrics`, `/healthz` and `/readyz` on the monitor's plaintext port.

use super::state::LeaseState;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// What the HTTP handlers read.
#[derive(Clone)]
pub struct HttpState {
    /// Rendered on `/metrics` under its lock, so that a scrape never falls
    /// in the middle of a sample (buckets and counts stay consistent).
    pub state: Arc<Mutex<LeaseState>>,
    /// Set after the first complete Lease list; `/readyz` reports it.
    pub ready: Arc<AtomicBool>,
}

/// The monitor's HTTP application.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(
                |axum::extract::State(s): axum::extract::State<HttpState>| async move {
                    (
                        [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
                        super::lock(&s.state).render(),
                    )
                },
            ),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .layer(axum::middleware::from_fn(crate::server::refuse_bodies))
        .with_state(state)
}

async fn readyz(axum::extract::State(s): axum::extract::State<HttpState>) -> Response {
    if s.ready.load(Ordering::Acquire) {
        "ok\n".into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "waiting for the first complete Lease list\n",
        )
            .into_response()
    }
}
