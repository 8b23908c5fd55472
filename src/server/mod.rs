//! HTTP routes: `/mutate`, `/report`, `/preview`, `/healthz`, `/readyz` on the TLS port,
//! `/metrics` on the plaintext metrics port.
//!
//! ```text
//! TLS accept (listener.rs) ─ hyper http1 ─ axum Router
//!    Guard (one layer, in this order):
//!      announced size   413 at once for a Content-Length past MAX_BODY_BYTES
//!      catch panic      a panic becomes a 500 for that one request
//!      timeout          408 past --request-timeout
//!      observe          count and log every ApiError, whoever raised it
//!    body limit         413 past MAX_BODY_BYTES (bodies without a length)
//!    POST /mutate  ─ review::parse ─ review::admit ─ Admission::response_body
//!    POST /report  ─ review::parse ─ review::admit ─ counted and logged, never patched
//!    POST /preview ─ preview::preview
//! ```
//!
//! The handlers are thin: they time, count and log successes, and return
//! [`ApiError`] for everything else.

pub mod batch_log;
pub mod error;
pub mod listener;
pub mod report;
pub mod serve;
pub mod tls;

pub use error::ApiError;
pub use serve::{ServeError, ServeOptions, Server};

use crate::metrics::Metrics;
use crate::pipeline::Pipeline;
use crate::{preview, review};
use arc_swap::ArcSwap;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Extension, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use futures::FutureExt as _;
use serde::Deserialize;
use std::convert::Infallible;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// The largest request body accepted, as the apiserver's own limit for
/// webhook payloads is far below it (3 MiB objects in etcd).
pub const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

/// Shared by every request.
pub struct AppState {
    /// Swapped whole when the policy file reloads.
    pub pipeline: ArcSwap<Pipeline>,
    /// The counters and histograms `/metrics` serves.
    pub metrics: Arc<Metrics>,
    /// False from the moment shutdown starts, so endpoints drop this pod.
    pub ready: AtomicBool,
}

impl AppState {
    /// State serving `pipeline`, ready.
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
    let guard = Guard {
        state: state.clone(),
        timeout: request_timeout,
    };
    Router::new()
        .route("/mutate", post(mutate))
        .route("/report", post(report::report))
        .route("/preview", post(preview_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        // One `layer` call: axum boxes each route once per call, and every
        // box is a clone and an allocation per request.
        .layer(
            tower::ServiceBuilder::new()
                .layer(guard)
                .layer(DefaultBodyLimit::max(MAX_BODY_BYTES)),
        )
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

/// What `/mutate` learned about a request before it failed, for the labels
/// and the message of its error. The handler fills it once the review
/// parses; [`Guard`] reads it, even after a panic unwound the handler.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Option<SeenRequest>>>);

struct SeenRequest {
    uid: String,
    kind: &'static str,
    operation: &'static str,
}

impl SeenRequest {
    /// The uid, kind and operation for an error's log line and metric;
    /// `unknown` when the request failed before its review parsed.
    fn labels(seen: Option<&SeenRequest>) -> (&str, &'static str, &'static str) {
        seen.map_or(("", "unknown", "unknown"), |s| {
            (&s.uid, s.kind, s.operation)
        })
    }
}

impl Seen {
    fn set(&self, request: SeenRequest) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(request);
    }

    fn take(&self) -> Option<SeenRequest> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// What stands between a connection and the handlers, as one tower layer:
/// the announced-size check, the panic catcher, the request timeout, and
/// the one place errors are counted and logged. Written out rather than
/// stacked from `from_fn`, `CatchPanicLayer`, `HandleErrorLayer` and
/// `TimeoutLayer`: each of those is a boxed service, a clone and a boxed
/// future per request (callgrind, typical Pod, mimalloc: about 9,500
/// instructions per request together, 2,400 for this one).
#[derive(Clone)]
struct Guard {
    state: Arc<AppState>,
    timeout: Duration,
}

impl<S> tower::Layer<S> for Guard {
    type Service = Guarded<S>;

    fn layer(&self, inner: S) -> Guarded<S> {
        Guarded {
            inner,
            guard: self.clone(),
        }
    }
}

/// A route behind the [`Guard`].
#[derive(Clone)]
struct Guarded<S> {
    inner: S,
    guard: Guard,
}

impl<S> tower::Service<axum::extract::Request> for Guarded<S>
where
    S: tower::Service<axum::extract::Request, Response = Response, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: axum::extract::Request) -> Self::Future {
        // The clone goes to the next request; the one made ready serves this.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(self.guard.clone().run(inner, request))
    }
}

impl Guard {
    async fn run<S>(
        self,
        mut inner: S,
        mut request: axum::extract::Request,
    ) -> Result<Response, Infallible>
    where
        S: tower::Service<axum::extract::Request, Response = Response, Error = Infallible>,
    {
        // `/report` takes the same AdmissionReviews: its errors count alike.
        let mutate = matches!(request.uri().path(), "/mutate" | "/report");
        let seen = Seen::default();
        let response = if announced_oversize(&request) {
            ApiError::too_large(MAX_BODY_BYTES).into_response()
        } else {
            request.extensions_mut().insert(seen.clone());
            // The handler runs inside `call`'s future; `call` itself may run
            // code too: both are inside the catcher.
            let handled = AssertUnwindSafe(async move { inner.call(request).await }).catch_unwind();
            // The timer is only armed if the handler waits (a slow body):
            // `timeout` polls the handler first.
            match tokio::time::timeout(self.timeout, handled).await {
                Ok(Ok(Ok(response))) => response,
                Ok(Ok(Err(never))) => match never {},
                Ok(Err(_panic)) => {
                    return Ok(self.panicked(mutate, seen.take()));
                }
                Err(_elapsed) => ApiError::timeout(self.timeout).into_response(),
            }
        };
        Ok(self.observe(mutate, seen, response))
    }

    /// The 500 for a request whose handler panicked, counted and logged.
    fn panicked(&self, mutate: bool, seen: Option<SeenRequest>) -> Response {
        let (uid, kind, operation) = SeenRequest::labels(seen.as_ref());
        let error = ApiError::internal(if mutate {
            format!("internal error while mutating request {uid}")
        } else {
            "internal error while previewing".to_string()
        });
        tracing::error!(
            uid,
            kind,
            operation,
            "request panicked; it failed, the server keeps serving"
        );
        if mutate {
            self.count_error(kind, operation);
        }
        error.into_response()
    }

    /// Count and log `response` if it is an [`ApiError`], whoever raised it.
    fn observe(&self, mutate: bool, seen: Seen, response: Response) -> Response {
        let Some(error) = response.extensions().get::<ApiError>() else {
            return response;
        };
        let seen = seen.take();
        let (uid, kind, operation) = SeenRequest::labels(seen.as_ref());
        if error.status.is_server_error() {
            tracing::error!(uid, status = error.status.as_u16(), error = %error.message, "request failed");
        } else if mutate {
            tracing::warn!(uid, status = error.status.as_u16(), error = %error.message, "rejected admission request");
        } else {
            tracing::warn!(status = error.status.as_u16(), error = %error.message, "rejected request");
        }
        if mutate {
            self.count_error(kind, operation);
        }
        response
    }

    fn count_error(&self, kind: &str, operation: &str) {
        self.state
            .metrics
            .requests
            .with_label_values(&[kind, operation, "error"])
            .inc();
    }
}

/// A body announced (Content-Length) larger than the cap is refused before
/// any of it is read: a hostile client that says 20 MiB gets its 413 at once
/// instead of after the server has read and decrypted 8 MiB of it. Bodies
/// without a length are still cut at the cap by `DefaultBodyLimit`.
fn announced_oversize(request: &axum::extract::Request) -> bool {
    request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .is_some_and(|n| n > MAX_BODY_BYTES as u64)
}

fn body_error(rejection: BytesRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::too_large(MAX_BODY_BYTES)
    } else {
        ApiError::new(rejection.status(), rejection.body_text())
    }
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

/// What `/mutate` and `/report` share: parse the review, note what the
/// error path needs to know about it, and run the pipeline. Returns the
/// admission and when the work started, for the duration histogram.
fn parse_and_admit(
    state: &AppState,
    seen: &Seen,
    body: Result<Bytes, BytesRejection>,
) -> Result<(review::Admission, Instant), ApiError> {
    let body = body.map_err(body_error)?;
    let start = Instant::now();
    // One pipeline for the whole request: it says what to read, then reads it.
    let pipeline = state.pipeline.load();
    let request =
        review::parse(&body, pipeline.reads()).map_err(|e| ApiError::bad_request(e.to_string()))?;
    seen.set(SeenRequest {
        uid: request.uid.clone(),
        kind: kind_label(&request.kind.kind),
        operation: review::operation_label(&request.operation),
    });
    Ok((review::admit(&pipeline, request), start))
}

async fn mutate(
    State(state): State<Arc<AppState>>,
    Extension(seen): Extension<Seen>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let (admission, start) = parse_and_admit(&state, &seen, body)?;
    let body = admission.response_body();
    let elapsed = start.elapsed();
    let m = &state.metrics;
    m.duration.observe(elapsed.as_secs_f64());
    let summary = &admission.summary;
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
    if !admission.outcome.reported.policies.is_empty() {
        let would = report::WouldChange::reported_only(&admission.outcome);
        report::record(m, summary, &admission.outcome.object, &would, "/mutate");
    }
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

#[derive(Deserialize)]
struct PreviewQuery {
    namespace: Option<String>,
}

async fn preview_handler(
    State(state): State<Arc<AppState>>,
    Query(query): Query<PreviewQuery>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(body_error)?;
    let pipeline = state.pipeline.load();
    let namespace = query.namespace.as_deref().filter(|ns| !ns.is_empty());
    let preview = preview::preview(&pipeline, &body, namespace)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let mut json = serde_json::to_string_pretty(&preview)
        .map_err(|e| ApiError::internal(format!("cannot write the preview: {e}")))?;
    json.push('\n');
    Ok(([(header::CONTENT_TYPE, "application/json")], json).into_response())
}
