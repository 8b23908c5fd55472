//! HTTP routes: `/mutate`, `/report`, `/preview`, `/healthz`, `/readyz` on the TLS port,
//! `/metrics` on the plaintext metrics port.
//!
//! ```text
//! TLS accept (listener.rs) ─ hyper http1 ─ axum Router
//!    POST /mutate  ─ review::parse ─ Pipeline::run ─ review::response_body
//!    POST /report  ─ review::parse ─ Pipeline::run ─ counted and logged, never patched
//!    POST /preview ─ preview::preview
//! ```
//!
//! The handlers are thin: they time, count and log, and turn errors into
//! `{"error": "..."}` with a 4xx status. A panic inside the pipeline is caught
//! here and becomes a 500 for that one request.

pub mod listener;
pub mod report;
pub mod serve;
pub mod tls;

pub use serve::{ServeError, ServeOptions, Server};

use crate::metrics::Metrics;
use crate::pipeline::Pipeline;
use crate::{preview, review};
use arc_swap::ArcSwap;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use serde::Deserialize;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The largest request body accepted, as the apiserver's own limit for
/// webhook payloads is far below it (3 MiB objects in etcd).
pub const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

/// Shared by every request.
pub struct AppState {
    /// Swapped whole when the policy file reloads.
    pub pipeline: ArcSwap<Pipeline>,
    pub metrics: Arc<Metrics>,
    /// False from the moment shutdown starts, so endpoints drop this pod.
    pub ready: AtomicBool,
}

impl AppState {
    pub fn new(pipeline: Pipeline, metrics: Arc<Metrics>) -> Arc<AppState> {
        Arc::new(AppState {
            pipeline: ArcSwap::from_pointee(pipeline),
            metrics,
            ready: AtomicBool::new(true),
        })
    }
}

/// The TLS-port application.
pub fn router(state: Arc<AppState>, request_timeout: Duration) -> Router {
    Router::new()
        .route("/mutate", post(mutate))
        .route("/report", post(report::report))
        .route("/preview", post(preview_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            refuse_announced_oversize,
        ))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            request_timeout,
        ))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(|_| {
            error(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
        }))
        .with_state(state)
}

/// The plaintext metrics application.
pub fn metrics_router(metrics: Arc<Metrics>) -> Router {
    Router::new().route(
        "/metrics",
        get(move || {
            let metrics = metrics.clone();
            async move {
                (
                    [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    metrics.render(),
                )
            }
        }),
    )
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    let body = serde_json::json!({ "error": message.into() }).to_string();
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn body_error(rejection: BytesRejection) -> Response {
    let status = rejection.status();
    let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
        format!("request body is larger than {MAX_BODY_BYTES} bytes")
    } else {
        rejection.body_text()
    };
    error(status, message)
}

/// A body announced (Content-Length) larger than the cap is refused before
/// any of it is read: a hostile client that says 20 MiB gets its 413 at once
/// instead of after the server has read and decrypted 8 MiB of it. Bodies
/// without a length are still cut at the cap by `DefaultBodyLimit`.
async fn refuse_announced_oversize(
    State(state): State<Arc<AppState>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let announced = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if announced.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        if matches!(request.uri().path(), "/mutate" | "/report") {
            state
                .metrics
                .requests
                .with_label_values(&["unknown", "unknown", "error"])
                .inc();
        }
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body is larger than {MAX_BODY_BYTES} bytes"),
        );
    }
    next.run(request).await
}

/// The longest error message logged or returned for a rejected body.
const MAX_ERROR_CHARS: usize = 512;

fn clip(mut message: String) -> String {
    if let Some((cut, _)) = message.char_indices().nth(MAX_ERROR_CHARS) {
        let more = message.len() - cut;
        message.truncate(cut);
        message.push_str(&format!("... ({more} more bytes)"));
    }
    message
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if state.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response()
    }
}

/// The metrics label for a kind: bounded, since the kind comes from the client.
fn kind_label(kind: &str) -> &'static str {
    match kind {
        "Pod" => "Pod",
        "Deployment" => "Deployment",
        _ => "other",
    }
}

async fn mutate(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let m = &state.metrics;
    let body = match body {
        Ok(body) => body,
        Err(rejection) => {
            m.requests
                .with_label_values(&["unknown", "unknown", "error"])
                .inc();
            return body_error(rejection);
        }
    };
    let start = Instant::now();
    let request = match review::parse(&body) {
        Ok(request) => request,
        Err(e) => {
            m.requests
                .with_label_values(&["unknown", "unknown", "error"])
                .inc();
            // serde's messages quote the offending value, which the client
            // chose: clip it so that one request cannot write megabytes of log.
            let message = clip(e.to_string());
            tracing::warn!(error = %message, "rejected admission request");
            return error(StatusCode::BAD_REQUEST, message);
        }
    };
    let pipeline = state.pipeline.load();
    let kind_hint = kind_label(&request.kind.kind);
    let op_hint = review::operation_label(&request.operation);
    let uid = request.uid.clone();
    let result = catch_unwind(AssertUnwindSafe(|| review::admit(&pipeline, request)));
    let elapsed = start.elapsed();
    m.duration.observe(elapsed.as_secs_f64());
    match result {
        Ok((summary, body, outcome)) => {
            let verdict = summary.verdict.as_str();
            m.requests
                .with_label_values(&[kind_label(&summary.kind), summary.operation, verdict])
                .inc();
            for policy in &summary.policies {
                m.policy_changes.with_label_values(&[policy]).inc();
            }
            tracing::info!(
                uid = %summary.uid,
                kind = %summary.kind,
                namespace = %summary.namespace,
                operation = summary.operation,
                result = verdict,
                policies = %summary.policies.join(","),
                duration_us = elapsed.as_micros() as u64,
                "admission"
            );
            if !outcome.reported.policies.is_empty() {
                let would = report::WouldChange::reported_only(&outcome);
                report::record(m, &summary, &outcome.object, &would, "/mutate");
            }
            ([(header::CONTENT_TYPE, "application/json")], body).into_response()
        }
        Err(_) => {
            m.requests
                .with_label_values(&[kind_hint, op_hint, "error"])
                .inc();
            tracing::error!(uid = %uid, kind = kind_hint, operation = op_hint, "policy panicked; request failed, server keeps serving");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("internal error while mutating request {uid}"),
            )
        }
    }
}

#[derive(Deserialize)]
struct PreviewQuery {
    namespace: Option<String>,
}

async fn preview_handler(
    State(state): State<Arc<AppState>>,
    Query(query): Query<PreviewQuery>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(rejection) => return body_error(rejection),
    };
    let pipeline = state.pipeline.load();
    let namespace = query.namespace.as_deref().filter(|ns| !ns.is_empty());
    let result = catch_unwind(AssertUnwindSafe(|| {
        preview::preview(&pipeline, &body, namespace)
    }));
    match result {
        Ok(Ok(preview)) => match serde_json::to_string_pretty(&preview) {
            Ok(mut json) => {
                json.push('\n');
                ([(header::CONTENT_TYPE, "application/json")], json).into_response()
            }
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        },
        Ok(Err(e)) => error(StatusCode::BAD_REQUEST, e.to_string()),
        Err(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error while previewing",
        ),
    }
}
