//! Report mode: `POST /report`, and the report-only policies of `/mutate`.
//!
//! A namespace labelled `calmplane.dev/enabled: report` is routed here by the
//! `*-report.calmplane.dev` webhooks. The request runs through the same
//! pipeline as `/mutate`; the answer is `allowed: true` with no patch, and what
//! would have changed is counted in `calmplane_report_changes_total{policy}`
//! and logged, one line per object. That is the canary: the numbers a
//! namespace would see, without the namespace seeing anything.

use super::{body_error, clip, error, kind_label, AppState};
use crate::metrics::Metrics;
use crate::patch::{str_at, Change};
use crate::pipeline::Outcome;
use crate::review::{self, Summary};
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::Value;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Instant;

/// The `result` label of `calmplane_admission_requests_total` for `/report`.
pub const REPORT_RESULT: &str = "report";

/// What one object would have been changed by, in pipeline order.
pub struct WouldChange<'a> {
    /// Names of the policies that would have changed the object.
    pub policies: Vec<&'static str>,
    /// Their changes, as `/mutate` would have made them.
    pub changes: Vec<&'a Change>,
}

impl<'a> WouldChange<'a> {
    /// Everything the pipeline did or reported: the whole object is in report mode.
    pub fn everything(outcome: &'a Outcome) -> Self {
        WouldChange {
            policies: outcome
                .policies
                .iter()
                .chain(&outcome.reported.policies)
                .copied()
                .collect(),
            changes: outcome
                .changes
                .iter()
                .chain(&outcome.reported.changes)
                .collect(),
        }
    }

    /// Only the policies in `enforcement: report`: `/mutate` patched the rest.
    pub fn reported_only(outcome: &'a Outcome) -> Self {
        WouldChange {
            policies: outcome.reported.policies.clone(),
            changes: outcome.reported.changes.iter().collect(),
        }
    }
}

/// Count and log what an object would have been changed by. `endpoint` says
/// which path decided not to patch.
pub fn record(
    metrics: &Metrics,
    summary: &Summary,
    object: &Value,
    would: &WouldChange<'_>,
    endpoint: &'static str,
) {
    for policy in &would.policies {
        metrics.report_changes.with_label_values(&[policy]).inc();
    }
    let name = str_at(object, &["metadata", "name"])
        .or_else(|| str_at(object, &["metadata", "generateName"]))
        .unwrap_or("");
    let changes = serde_json::to_string(&would.changes).unwrap_or_default();
    tracing::info!(
        uid = %summary.uid,
        kind = %summary.kind,
        namespace = %summary.namespace,
        name = %name,
        operation = summary.operation,
        endpoint,
        policies = %would.policies.join(","),
        changes = %changes,
        "report"
    );
}

/// `POST /report`: the pipeline's verdict, counted and logged, never applied.
pub(super) async fn report(
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
            let message = clip(e.to_string());
            tracing::warn!(error = %message, "rejected report request");
            return error(StatusCode::BAD_REQUEST, message);
        }
    };
    let pipeline = state.pipeline.load();
    let kind_hint = kind_label(&request.kind.kind);
    let op_hint = review::operation_label(&request.operation);
    let uid = request.uid.clone();
    let result = catch_unwind(AssertUnwindSafe(|| review::admit(&pipeline, request)));
    m.duration.observe(start.elapsed().as_secs_f64());
    match result {
        Ok((summary, _, outcome)) => {
            m.requests
                .with_label_values(&[kind_label(&summary.kind), summary.operation, REPORT_RESULT])
                .inc();
            record(
                m,
                &summary,
                &outcome.object,
                &WouldChange::everything(&outcome),
                "/report",
            );
            // The same envelope as an unchanged object: no patch, no
            // warnings about changes that were not made.
            let body = review::response_body(&summary.uid, &Outcome::unchanged(Value::Null));
            ([(header::CONTENT_TYPE, "application/json")], body).into_response()
        }
        Err(_) => {
            m.requests
                .with_label_values(&[kind_hint, op_hint, "error"])
                .inc();
            tracing::error!(uid = %uid, kind = kind_hint, operation = op_hint, "policy panicked in report mode; server keeps serving");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("internal error while reporting on request {uid}"),
            )
        }
    }
}
