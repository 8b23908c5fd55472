//! HTTP routes: `/mutate`, `/report`, `/preview`, `/healthz`, `/readyz` on the TLS port
//! (the admin port's routes are [`crate::process::admin`]'s). Where this sits
//! in the data path: the map in the crate's docs ([`crate`]).
//!
//! ```text
//! TLS accept (listener) ─ hyper http1 ─ axum Router
//!    Guard (one layer, in this order):
//!      client certificate   403 on /mutate, /report, /preview without one, under --client-ca
//!      announced size       413 at once for a Content-Length past the endpoint's cap
//!      room                 the request's share of the memory pools (budget), or 503
//!      body                 read once, into a buffer of its announced size; 413 past the cap
//!      catch panic          a panic becomes a 500 for that one request
//!      timeout              408 past --request-timeout, body reading included
//!      observe              count and log every ApiError, whoever raised it
//!    POST /mutate, /report, /preview: see the data path in the crate's docs
//! ```
//!
//! Work that grows with the body never runs on the runtime's workers: a
//! review larger than [`budget::INLINE_BODY`] and every preview run on a
//! blocking thread, so `/healthz` answers while they run. The handlers are
//! thin: they time, count and log successes, and return [`ApiError`] for
//! everything else.

pub mod endpoint;
pub mod error;
pub mod listener;
pub mod report;
pub mod serve;
pub mod tls;

pub use error::ApiError;
pub use serve::{ServeError, ServeOptions, Server};

use crate::budget::{self, Busy, Pools};
use crate::clip::Clipped;
use crate::metrics::{self, Metrics};
use crate::pipeline::Pipeline;
use crate::review::Extent;
use crate::{preview, review};
use arc_swap::ArcSwap;
use axum::body::Body;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Extension, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use bytes::{Bytes, BytesMut};
use endpoint::Endpoint;
use futures::FutureExt as _;
use http_body_util::BodyExt as _;
use serde::Deserialize;
use std::convert::Infallible;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tls::ClientCheck;

/// Shared by every request.
pub struct AppState {
    /// Swapped whole when the policy file reloads.
    pub pipeline: ArcSwap<Pipeline>,
    /// The counters and histograms `/metrics` serves.
    pub metrics: Arc<Metrics>,
    /// False from the moment shutdown starts, so endpoints drop this pod.
    pub ready: AtomicBool,
    /// The memory and CPU requests may take, shared so that their sum is
    /// bounded ([`crate::budget`]).
    pub pools: Pools,
}

impl AppState {
    /// State serving `pipeline`, ready.
    pub fn new(pipeline: Pipeline, metrics: Arc<Metrics>) -> Arc<AppState> {
        Arc::new(AppState {
            pipeline: ArcSwap::from_pointee(pipeline),
            metrics,
            ready: AtomicBool::new(true),
            pools: Pools::new(),
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
        .route(Endpoint::Mutate.path(), post(mutate))
        .route(Endpoint::Report.path(), post(report::report))
        .route(Endpoint::Preview.path(), post(preview_handler))
        .route(Endpoint::Healthz.path(), get(healthz))
        .route(Endpoint::Readyz.path(), get(readyz))
        // One `layer` call: axum boxes each route once per call, and every
        // box is a clone and an allocation per request. The Guard has read
        // the body within its endpoint's cap; axum's own default limit (2 MB)
        // would cut a review the Guard admitted.
        .layer(
            tower::ServiceBuilder::new()
                .layer(guard)
                .layer(DefaultBodyLimit::disable()),
        )
        .with_state(state)
}

/// What the webhook tells its admin port: its metrics, and whether it is
/// shutting down.
impl crate::process::admin::Admin for AppState {
    fn metrics(&self) -> String {
        self.metrics.render()
    }

    fn ready(&self) -> Result<(), &'static str> {
        if self.ready.load(Ordering::Relaxed) {
            Ok(())
        } else {
            Err("shutting down")
        }
    }
}

use crate::process::admin::healthz;

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
        seen.map_or(("", metrics::UNKNOWN, metrics::UNKNOWN), |s| {
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
/// future per request (about 9,500 instructions per request together, 2,400
/// for this one: `cargo bench --bench icount`, typical Pod, at 3a5c5a5).
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

/// An answer given before the request's body was read to its end (a
/// refused client, a body over its cap, a full pool, a timeout) closes the
/// connection, and says so. hyper would close it anyway rather than read the
/// rest, but without `Connection: close` the client may already have sent
/// its next request on it, which then fails without reaching us: the
/// apiserver counts that as a 503 and fails open.
fn closing(mut response: Response) -> Response {
    response.headers_mut().insert(
        axum::http::header::CONNECTION,
        axum::http::HeaderValue::from_static("close"),
    );
    response
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
        let endpoint = Endpoint::of(request.uri().path());
        let seen = Seen::default();
        request.extensions_mut().insert(seen.clone());
        if endpoint == Endpoint::Preview {
            request_deadline(&mut request, self.timeout);
        }
        let denied = request
            .extensions()
            .get::<ClientCheck>()
            .is_some_and(|_| endpoint.costs_work());
        let announced = content_length(&request);
        let work = async {
            if denied {
                let why = request
                    .extensions()
                    .get::<ClientCheck>()
                    .map(ToString::to_string);
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    why.unwrap_or_default(),
                ));
            }
            let room = self.room(endpoint, announced).await?;
            let request = match endpoint.max_body() {
                Some(max) => read_body(request, max).await?,
                None => request,
            };
            // The handler runs inside `call`'s future; `call` itself may run
            // code too: both are inside the catcher.
            let handled = AssertUnwindSafe(async move { inner.call(request).await })
                .catch_unwind()
                .await;
            drop(room);
            Ok::<_, ApiError>(handled)
        };
        // The timer is only armed if the work waits (a slow body, a full
        // pool): `timeout` polls the work first.
        let response = match tokio::time::timeout(self.timeout, work).await {
            Ok(Ok(Ok(Ok(response)))) => response,
            Ok(Ok(Ok(Err(never)))) => match never {},
            Ok(Ok(Err(_panic))) => return Ok(self.panicked(endpoint, seen.take())),
            Ok(Err(error)) => closing(error.into_response()),
            Err(_elapsed) => closing(ApiError::timeout(self.timeout).into_response()),
        };
        Ok(self.observe(endpoint, seen, response))
    }

    /// The request's share of what requests may hold, taken before its body
    /// is read: the memory pool for a review of the `announced` size, or
    /// the preview slot.
    async fn room(
        &self,
        endpoint: Endpoint,
        announced: Option<u64>,
    ) -> Result<Option<budget::Held>, ApiError> {
        let Some(max) = endpoint.max_body() else {
            return Ok(None);
        };
        if announced.is_some_and(|n| n > max as u64) {
            return Err(ApiError::too_large(max));
        }
        // Without a length, the body may take all of the cap.
        let len = announced.map_or(max, |n| n as usize);
        let pools = &self.state.pools;
        let held = match endpoint {
            Endpoint::Preview => pools.preview().await,
            _ => pools.body(len).await,
        };
        held.map(Some).map_err(busy)
    }

    /// The 500 for a request whose handler panicked, counted and logged.
    fn panicked(&self, endpoint: Endpoint, seen: Option<SeenRequest>) -> Response {
        let (uid, kind, operation) = SeenRequest::labels(seen.as_ref());
        let error = ApiError::internal(if endpoint.is_admission() {
            format!("internal error while mutating request {}", Clipped(uid))
        } else {
            "internal error while previewing".to_string()
        });
        tracing::error!(
            uid = %Clipped(uid),
            kind,
            operation,
            "request panicked; it failed, the server keeps serving"
        );
        self.state
            .metrics
            .admission(endpoint, kind, operation, metrics::Result::Error);
        error.into_response()
    }

    /// Count and log `response` if it is an [`ApiError`], whoever raised it.
    /// A 503 is no error of the request: the server was at capacity, and
    /// counts it as load shedding does.
    fn observe(&self, endpoint: Endpoint, seen: Seen, response: Response) -> Response {
        let Some(error) = response.extensions().get::<ApiError>() else {
            return response;
        };
        if error.status == StatusCode::SERVICE_UNAVAILABLE {
            self.state.metrics.overloaded(endpoint);
            tracing::debug!(error = %error.message, "at capacity");
            return response;
        }
        let seen = seen.take();
        let (uid, kind, operation) = SeenRequest::labels(seen.as_ref());
        let admission = endpoint.is_admission();
        if error.status.is_server_error() {
            tracing::error!(uid = %Clipped(uid), status = error.status.as_u16(), error = %error.message, "request failed");
        } else if admission {
            tracing::warn!(uid = %Clipped(uid), status = error.status.as_u16(), error = %error.message, "rejected admission request");
        } else {
            tracing::warn!(status = error.status.as_u16(), error = %error.message, "rejected request");
        }
        self.state
            .metrics
            .admission(endpoint, kind, operation, metrics::Result::Error);
        response
    }
}

/// The 503 for a request the pools had no room for.
fn busy(busy: Busy) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        format!(
            "busy: no room for {} more bytes of requests in flight (pool of {} bytes) within {} ms; try again",
            busy.wanted,
            busy.pool,
            budget::POOL_WAIT.as_millis()
        ),
    )
}

/// When the Guard stops waiting for a request: work on a blocking thread
/// reads it to stop there too.
#[derive(Debug, Clone, Copy)]
struct Deadline(Instant);

fn request_deadline(request: &mut axum::extract::Request, timeout: Duration) {
    request
        .extensions_mut()
        .insert(Deadline(Instant::now() + timeout));
}

/// The announced length of a request's body.
fn content_length(request: &axum::extract::Request) -> Option<u64> {
    request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
}

/// Read a request's body, at most `max` bytes, into one buffer of its
/// announced size (one allocation, where collecting the frames and then
/// joining them would hold the body twice).
async fn read_body(
    request: axum::extract::Request,
    max: usize,
) -> Result<axum::extract::Request, ApiError> {
    let hint = content_length(&request).map_or(0, |n| n as usize).min(max);
    let (parts, mut body) = request.into_parts();
    let mut buf = BytesMut::with_capacity(hint);
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| ApiError::bad_request(format!("cannot read the body: {e}")))?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > max {
                return Err(ApiError::too_large(max));
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(axum::extract::Request::from_parts(
        parts,
        Body::from(buf.freeze()),
    ))
}

/// Run `work` inline when the body is small, or on a blocking thread when
/// it is large enough that parsing it would hold a runtime worker (and the
/// probes behind it) for long; at most [`budget::HEAVY_CONCURRENCY`] at once.
async fn off_workers_if_large<T: Send + 'static>(
    state: &AppState,
    len: usize,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    if len <= budget::INLINE_BODY {
        return Ok(work());
    }
    let slot = state.pools.heavy().await.map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "busy: {} large requests are being worked on; try again",
                budget::HEAVY_CONCURRENCY
            ),
        )
    })?;
    blocking(move || {
        let _slot = slot;
        work()
    })
    .await
}

/// `work` on a blocking thread. A panic there is resumed here, so that the
/// Guard's catcher answers 500 as for a panic on the worker.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(value) => Ok(value),
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(ApiError::internal(format!("the work was cancelled: {e}"))),
    }
}

/// The Guard has read the body into memory already; this only fails if a
/// route is reached without it.
fn body_error(rejection: BytesRejection) -> ApiError {
    ApiError::new(rejection.status(), rejection.body_text())
}

/// `/readyz` on the TLS port: the same answer as the admin port's.
async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    use crate::process::admin::Admin as _;
    match state.ready() {
        Ok(()) => (StatusCode::OK, "ok\n").into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response(),
    }
}

/// What `/mutate` and `/report` answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// The patch; report-only policies' changes are recorded.
    Mutate,
    /// No patch; every change is recorded.
    Report,
}

/// What is left of an admission once its view is given back.
struct Admitted {
    summary: review::Summary,
    /// The AdmissionReview response, for `/mutate`.
    response: String,
    /// What to count and log as reported, if anything.
    report: Option<report::ReportLine>,
    /// From the body read to the response ready, for the duration histogram.
    elapsed: Duration,
}

/// What `/mutate` and `/report` share: parse the review within its share of
/// the view pool, note what the error path needs to know about it, run the
/// pipeline, and build the answer; off the runtime's workers when the body
/// is large. The view and its share of the pool are given back before this
/// returns.
async fn parse_and_admit(
    state: &Arc<AppState>,
    seen: &Seen,
    body: Result<Bytes, BytesRejection>,
    answer: Answer,
) -> Result<Admitted, ApiError> {
    let body = body.map_err(body_error)?;
    let len = body.len();
    let work = {
        let (state, seen) = (state.clone(), seen.clone());
        move || {
            let start = Instant::now();
            // One pipeline for the whole request: it says what to read, then reads it.
            let pipeline = state.pipeline.load();
            // Lives as long as the view: what it drew from the pool is in use.
            let budget = state.pools.view_budget(body.len());
            let request = review::parse_with(&body, Extent::Read(pipeline.reads()), &budget)
                .map_err(|e| match e {
                    review::ReviewError::Busy => {
                        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
                    }
                    e => ApiError::bad_request(e.to_string()),
                })?;
            seen.set(SeenRequest {
                uid: request.uid.clone(),
                kind: metrics::kind_label(&request.kind.kind),
                operation: review::operation_label(&request.operation),
            });
            let review::Admission { summary, outcome } = review::admit(&pipeline, request);
            let (response, would) = match answer {
                Answer::Mutate => (
                    review::response_body(&summary.uid, &outcome),
                    report::WouldChange::reported_only(&outcome),
                ),
                Answer::Report => (String::new(), report::WouldChange::everything(&outcome)),
            };
            let report = (answer == Answer::Report || !would.policies.is_empty())
                .then(|| report::ReportLine::of(&outcome.object, would));
            Ok::<_, ApiError>(Admitted {
                summary,
                response,
                report,
                elapsed: start.elapsed(),
            })
        }
    };
    off_workers_if_large(state, len, work).await?
}

async fn mutate(
    State(state): State<Arc<AppState>>,
    Extension(seen): Extension<Seen>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let admitted = parse_and_admit(&state, &seen, body, Answer::Mutate).await?;
    let m = &state.metrics;
    let summary = &admitted.summary;
    m.admitted(admitted.elapsed, &summary.policies);
    m.admission(
        Endpoint::Mutate,
        metrics::kind_label(&summary.kind),
        summary.operation,
        metrics::Result::Answered(summary.verdict),
    );
    let verdict = summary.verdict.as_str();
    tracing::info!(
        uid = %Clipped(&summary.uid),
        kind = %Clipped(&summary.kind),
        namespace = %Clipped(&summary.namespace),
        operation = summary.operation,
        result = verdict,
        policies = %summary.policies.join(","),
        duration_us = admitted.elapsed.as_micros() as u64,
        "admission"
    );
    if let Some(line) = &admitted.report {
        report::record(m, summary, line, "/mutate");
    }
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        admitted.response,
    )
        .into_response())
}

#[derive(Deserialize)]
struct PreviewQuery {
    namespace: Option<String>,
}

async fn preview_handler(
    State(state): State<Arc<AppState>>,
    Extension(Deadline(deadline)): Extension<Deadline>,
    Query(query): Query<PreviewQuery>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(body_error)?;
    let pipeline = state.pipeline.load_full();
    let namespace = query.namespace.filter(|ns| !ns.is_empty());
    // The Guard holds the one preview slot; the deadline stops the work
    // where the Guard's timeout stops waiting for it.
    let bounds = preview::Bounds::for_body(body.len(), deadline);
    let work = move || {
        let preview = preview::preview(&pipeline, &body, namespace.as_deref(), &bounds)?;
        preview::render(&preview, &bounds)
    };
    let json = blocking(work).await?.map_err(|e| match e {
        preview::PreviewError::Timeout => ApiError::new(StatusCode::REQUEST_TIMEOUT, e.to_string()),
        e => ApiError::bad_request(e.to_string()),
    })?;
    Ok(([(header::CONTENT_TYPE, "application/json")], json).into_response())
}
