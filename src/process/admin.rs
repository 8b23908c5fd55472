//! The plaintext admin port every calmplane process serves: `/metrics` for
//! Prometheus, `/healthz` and `/readyz` for the kubelet. The webhook and the
//! lease monitor differ only in what they render and when they are ready
//! ([`Admin`]); the port's limits are the listener's
//! ([`crate::server::listener::serve_admin`]).

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::sync::Arc;

/// What a process tells its admin port.
pub trait Admin: Send + Sync + 'static {
    /// Its metrics, in the Prometheus text exposition format.
    fn metrics(&self) -> String;

    /// `Ok` when ready for traffic; otherwise why not, for `/readyz`'s body.
    fn ready(&self) -> Result<(), &'static str>;
}

/// The admin application. Its routes read no body, so a request that sends
/// one is refused before anything is read.
pub fn router(admin: Arc<dyn Admin>) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(|State(admin): State<Arc<dyn Admin>>| async move {
                (
                    [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
                    admin.metrics(),
                )
            }),
        )
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .layer(axum::middleware::from_fn(refuse_bodies))
        .with_state(admin)
}

/// `/healthz`: the process answers.
pub async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(admin): State<Arc<dyn Admin>>) -> Response {
    match admin.ready() {
        Ok(()) => (StatusCode::OK, "ok\n").into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response(),
    }
}

/// 413 for a request that carries a body, on a port whose routes read none.
/// Plain text, as every answer of this port is (it has no error type of
/// its own: it has nothing else to refuse).
async fn refuse_bodies(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let chunked = request.headers().contains_key(header::TRANSFER_ENCODING);
    let announced = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if chunked || announced.is_some_and(|n| n > 0) {
        return (
            StatusCode::PAYLOAD_TOO_LARGE,
            "this port takes no request bodies\n",
        )
            .into_response();
    }
    next.run(request).await
}
