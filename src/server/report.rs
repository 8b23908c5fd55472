//! Report mode: `POST /report`, and the report-only policies of `/mutate`.
//!
//! A namespace labelled `calmplane.dev/enabled: report` is routed here by the
//! `*-report.calmplane.dev` webhooks. The request runs through the same
//! pipeline as `/mutate`; the answer is `allowed: true` with no patch, and what
//! would have changed is counted in `calmplane_report_changes_total{policy}`
//! and logged, one line per object. That is the canary: the numbers a
//! namespace would see, without the namespace seeing anything.

use super::endpoint::Endpoint;
use super::{parse_and_admit, Answer, ApiError, AppState, Seen};
use crate::clip::Clipped;
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

/// The longest `changes` field of a report line: a change's message quotes
/// the object (a selector), which the client chose.
pub const MAX_LOGGED_CHANGES: usize = 8 * 1024;

/// What a report line and its counts need, taken out of the outcome, so that
/// the object's view can be given back before the line is written.
#[derive(Debug)]
pub struct ReportLine {
    /// Names of the policies that would have changed the object.
    pub policies: Vec<&'static str>,
    /// Their changes as JSON, cut at [`MAX_LOGGED_CHANGES`].
    pub changes: String,
    /// The object's name (or generateName), cut as every logged field is.
    pub name: String,
}

impl ReportLine {
    /// The line for `would`, about `object`.
    pub fn of(object: &Value, would: WouldChange<'_>) -> ReportLine {
        let name = str_at(object, &["metadata", "name"])
            .or_else(|| str_at(object, &["metadata", "generateName"]))
            .unwrap_or("");
        let mut changes = serde_json::to_string(&would.changes).unwrap_or_default();
        if changes.len() > MAX_LOGGED_CHANGES {
            let cut = (0..=MAX_LOGGED_CHANGES)
                .rev()
                .find(|&i| changes.is_char_boundary(i))
                .unwrap_or(0);
            let more = changes.len() - cut;
            changes.truncate(cut);
            changes.push_str(&format!("... ({more} more bytes)"));
        }
        ReportLine {
            policies: would.policies,
            changes,
            name: Clipped(name).to_string(),
        }
    }
}

/// Count and log what an object would have been changed by. `endpoint` says
/// which path decided not to patch.
pub fn record(metrics: &Metrics, summary: &Summary, line: &ReportLine, endpoint: &'static str) {
    for policy in &line.policies {
        metrics.report_changes.with_label_values(&[policy]).inc();
    }
    tracing::info!(
        uid = %Clipped(&summary.uid),
        kind = %Clipped(&summary.kind),
        namespace = %Clipped(&summary.namespace),
        name = %line.name,
        operation = summary.operation,
        endpoint,
        policies = %line.policies.join(","),
        changes = %line.changes,
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
    let admitted = parse_and_admit(&state, &seen, body, Answer::Report).await?;
    let m = &state.metrics;
    let summary = &admitted.summary;
    m.admitted(admitted.elapsed, &[]);
    m.admission(
        Endpoint::Report,
        crate::metrics::kind_label(&summary.kind),
        summary.operation,
        crate::metrics::Result::Answered(summary.verdict),
    );
    if let Some(line) = &admitted.report {
        record(m, summary, line, "/report");
    }
    // The envelope of an unchanged object: no patch, and no warnings about
    // changes that were not made.
    let body = review::response_body(&summary.uid, &Outcome::unchanged(Value::Null));
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}
