//! Report mode: `POST /report`, and the report-only policies of `/mutate`.
//!
//! A namespace labelled `calmplane.dev/enabled: report` is routed here by the
//! `*-report.calmplane.dev` webhooks. The request runs through the same
//! pipeline as `/mutate`; the answer is `allowed: true` with no patch, and what
//! would have changed is counted in `calmplane_report_changes_total{policy}`
//! and logged, one line per object. That is the canary: the numbers a
//! namespace would see, without the namespace seeing anything.

use super::{kind_label, parse_and_admit, ApiError, AppState, Seen};
use crate::metrics::Metrics;
use crate::patch::{str_at, Change};
use crate::pipeline::Outcome;
use crate::review::{self, Summary};
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::Value;
use std::sync::Arc;

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
/// Errors (bad bodies, panics) go through the same `ApiError` path as `/mutate`.
pub(super) async fn report(
    State(state): State<Arc<AppState>>,
    Extension(seen): Extension<Seen>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let (admission, start) = parse_and_admit(&state, &seen, body)?;
    let m = &state.metrics;
    m.duration.observe(start.elapsed().as_secs_f64());
    let summary = &admission.summary;
    m.requests
        .with_label_values(&[kind_label(&summary.kind), summary.operation, REPORT_RESULT])
        .inc();
    record(
        m,
        summary,
        &admission.outcome.object,
        &WouldChange::everything(&admission.outcome),
        "/report",
    );
    // The envelope of an unchanged object: no patch, and no warnings about
    // changes that were not made.
    let body = review::response_body(&summary.uid, &Outcome::unchanged(Value::Null));
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}
