//! Running the pipeline on a parsed request, and what to count and log
//! about it.

use super::decode::RequestIn;
use super::{operation_label, parse_operation, response_body};
use crate::pipeline::{Outcome, Pipeline};
use crate::policy::{Context, Kind};
use kube::core::admission::Operation;
use serde_json::Value;

/// How a request ended, for metrics and the log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The policies ran and the response carries a patch.
    Mutated,
    /// The policies ran and had nothing to change.
    Unchanged,
    /// No policy could run: a kind or operation calmplane does not mutate,
    /// a subresource, or no object.
    Skipped,
}

impl Verdict {
    /// The `result` label value of `calmplane_admission_requests_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Mutated => "mutated",
            Verdict::Unchanged => "unchanged",
            Verdict::Skipped => "skipped",
        }
    }
}

/// Everything worth logging and counting about one admission.
#[derive(Debug)]
pub struct Summary {
    /// Identifies the request in the log line; the response echoes it.
    pub uid: String,
    /// The request's kind, any kind, as sent (a metrics label).
    pub kind: String,
    /// The request's namespace; empty for cluster-scoped objects.
    pub namespace: String,
    /// The operation as a bounded label (`other` for unknown ones), so a
    /// client cannot grow the metric's label set.
    pub operation: &'static str,
    /// How the request ended (the `result` label).
    pub verdict: Verdict,
    /// The policies that changed the object, in order.
    pub policies: Vec<&'static str>,
}

/// What admitting one request produced: what to count and log, and what the
/// pipeline did. The server answers with [`Admission::response_body`];
/// preview shows the outcome itself.
#[derive(Debug)]
pub struct Admission {
    /// For metrics and the log line.
    pub summary: Summary,
    /// The patched object, the patch, the change notes and warnings.
    pub outcome: Outcome,
}

impl Admission {
    /// The AdmissionReview v1 response for this admission.
    pub fn response_body(&self) -> String {
        response_body(&self.summary.uid, &self.outcome)
    }
}

/// Run the pipeline for one parsed request.
pub fn admit(pipeline: &Pipeline, request: RequestIn<'_>) -> Admission {
    let RequestIn {
        uid,
        kind: gvk,
        sub_resource,
        namespace,
        operation,
        object,
        old_object,
        templates,
        view,
    } = request;
    let kind = Kind::of(&gvk);
    let operation_label = operation_label(&operation);
    let operation = parse_operation(&operation);
    let mutable = matches!(operation, Some(Operation::Create | Operation::Update))
        && sub_resource.as_deref().unwrap_or("").is_empty();
    let mut summary = Summary {
        uid,
        kind: gvk.kind,
        namespace: namespace.clone().unwrap_or_default(),
        operation: operation_label,
        verdict: Verdict::Skipped,
        policies: Vec::new(),
    };
    let outcome = match (kind, object, operation) {
        (Some(kind), Some(object), Some(operation)) if mutable && object.is_object() => {
            let ctx = Context::new(kind, operation)
                .in_namespace(namespace.as_deref())
                .replacing(old_object.as_ref(), templates);
            let outcome = if view {
                pipeline.run_in_view(&ctx, object)
            } else {
                pipeline.run(&ctx, object)
            };
            summary.verdict = if outcome.patch.is_empty() {
                Verdict::Unchanged
            } else {
                Verdict::Mutated
            };
            summary.policies = outcome.policies.clone();
            outcome
        }
        (_, object, _) => Outcome::unchanged(object.unwrap_or(Value::Null)),
    };
    Admission { summary, outcome }
}
