//! The AdmissionReview v1 envelope: request bytes in, response bytes out.
//!
//! The request is parsed into a thin struct whose `object` stays a
//! `serde_json::Value`, then handed to the [`Pipeline`]. We reuse kube's
//! `Operation` and `GroupVersionKind`, but not its `AdmissionRequest<T>`:
//! that forces the object through a typed `ObjectMeta` (dropping fields it
//! does not know), and its `AdmissionResponse.patch` serialises as an array of
//! numbers, while the apiserver expects the documented base64 string.

use crate::pipeline::{Outcome, Pipeline, Request};
use crate::policy::Kind;
use base64::Engine as _;
use kube::core::admission::Operation;
use kube::core::GroupVersionKind;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// The only AdmissionReview version calmplane speaks, and the only one the
/// webhook configuration asks the apiserver for.
pub const API_VERSION: &str = "admission.k8s.io/v1";

/// Why a body is not an AdmissionReview we can answer. Each is a 400.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    /// The body is empty or only whitespace.
    #[error("empty body: expected an admission.k8s.io/v1 AdmissionReview")]
    Empty,
    /// The body is not JSON at all; serde_json's message says where.
    #[error("body is not JSON: {0}")]
    NotJson(serde_json::Error),
    /// The body is JSON but an array or a scalar (named in the field).
    #[error("expected an AdmissionReview object, got {0}")]
    NotAnObject(&'static str),
    /// A JSON object whose fields have the wrong types, e.g. a numeric `uid`.
    #[error("invalid AdmissionReview: {0}")]
    Invalid(serde_json::Error),
    /// `apiVersion` is missing or not v1 (the field holds what was sent):
    /// usually a webhook registered with `admissionReviewVersions: [v1beta1]`.
    #[error("unsupported apiVersion {0:?}: calmplane speaks admission.k8s.io/v1 only; register the webhook with admissionReviewVersions: [\"v1\"]")]
    WrongApiVersion(String),
    /// `kind` is missing or not `AdmissionReview` (the field holds what was sent).
    #[error("unsupported kind {0:?}: expected AdmissionReview")]
    WrongKind(String),
    /// The envelope has no `request`: a response, or a truncated review.
    #[error("AdmissionReview has no request")]
    NoRequest,
    /// An AdmissionRequest without its envelope, as test fixtures often are;
    /// named apart so the message can show the fix.
    #[error("this is a bare AdmissionRequest; send it wrapped: {{\"apiVersion\": \"admission.k8s.io/v1\", \"kind\": \"AdmissionReview\", \"request\": ...}}")]
    BareRequest,
    /// The request's `uid` is empty: the response must echo it, and the
    /// apiserver rejects a response whose uid does not match.
    #[error("AdmissionReview request has an empty uid")]
    NoUid,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReviewIn {
    #[serde(default)]
    api_version: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    request: Option<RequestIn>,
}

/// The fields of `AdmissionRequest` calmplane reads; the rest is ignored.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestIn {
    /// Echoed in the response, which is how the apiserver pairs the two.
    pub uid: String,
    /// The object's group/version/kind: decides which policies run, and
    /// whether any do.
    pub kind: GroupVersionKind,
    /// Set for requests on a subresource (`status`, `scale`, ...), which are
    /// allowed untouched: there the edits would be wrong (a `Scale`) or dropped.
    #[serde(default)]
    pub sub_resource: Option<String>,
    /// The request's namespace, which is authoritative: the object's own
    /// metadata may leave it to the URL.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Kept as text: an operation this build does not know (a newer
    /// apiserver, a fixture) is allowed untouched rather than rejected.
    pub operation: String,
    /// The object to mutate, kept untyped so no field is lost; absent on DELETE.
    #[serde(default)]
    pub object: Option<Value>,
    /// The stored object on UPDATE, which `rollout-history` compares against.
    #[serde(default)]
    pub old_object: Option<Value>,
}

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

/// The wire name of a kube `Operation`, e.g. `CREATE`.
pub fn operation_str(op: &Operation) -> &'static str {
    match op {
        Operation::Create => "CREATE",
        Operation::Update => "UPDATE",
        Operation::Delete => "DELETE",
        Operation::Connect => "CONNECT",
    }
}

/// The wire name of an operation, as kube's `Operation`.
pub fn parse_operation(op: &str) -> Option<Operation> {
    match op {
        "CREATE" => Some(Operation::Create),
        "UPDATE" => Some(Operation::Update),
        "DELETE" => Some(Operation::Delete),
        "CONNECT" => Some(Operation::Connect),
        _ => None,
    }
}

/// A bounded label for metrics and logs: the operation comes from the client.
pub fn operation_label(op: &str) -> &'static str {
    parse_operation(op).as_ref().map_or("other", operation_str)
}

/// Parse the envelope of an AdmissionReview v1.
pub fn parse(body: &[u8]) -> Result<RequestIn, ReviewError> {
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        None => return Err(ReviewError::Empty),
        Some(b'[') => return Err(ReviewError::NotAnObject("a JSON array")),
        Some(b'{') => {}
        Some(_) => {
            // Let serde_json say what is wrong and where.
            return Err(match serde_json::from_slice::<Value>(body) {
                Err(e) => ReviewError::NotJson(e),
                Ok(_) => ReviewError::NotAnObject("a JSON scalar"),
            });
        }
    }
    let review: ReviewIn = serde_json::from_slice(body).map_err(|e| {
        if e.is_syntax() || e.is_eof() {
            ReviewError::NotJson(e)
        } else if serde_json::from_slice::<Value>(body).is_ok_and(|v| is_bare_request(&v)) {
            ReviewError::BareRequest
        } else {
            ReviewError::Invalid(e)
        }
    })?;
    check(review)
}

/// Parse an AdmissionReview that is already a JSON value (one document of a
/// `calmplane preview` input), without writing it out as bytes again.
pub fn from_value(review: Value) -> Result<RequestIn, ReviewError> {
    let bare = is_bare_request(&review);
    let review: ReviewIn = serde_json::from_value(review).map_err(|e| {
        if bare {
            ReviewError::BareRequest
        } else {
            ReviewError::Invalid(e)
        }
    })?;
    check(review)
}

fn check(review: ReviewIn) -> Result<RequestIn, ReviewError> {
    match review.api_version.as_deref() {
        Some(API_VERSION) => {}
        other => {
            return Err(ReviewError::WrongApiVersion(
                other.unwrap_or("").to_string(),
            ))
        }
    }
    match review.kind.as_deref() {
        Some("AdmissionReview") => {}
        other => return Err(ReviewError::WrongKind(other.unwrap_or("").to_string())),
    }
    let request = review.request.ok_or(ReviewError::NoRequest)?;
    if request.uid.is_empty() {
        return Err(ReviewError::NoUid);
    }
    Ok(request)
}

/// An AdmissionRequest sent without its AdmissionReview envelope (test
/// fixtures often are). Only consulted on the error path.
fn is_bare_request(v: &Value) -> bool {
    v.get("request").is_none()
        && v.get("operation").is_some()
        && v.get("kind").is_some_and(Value::is_object)
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
pub fn admit(pipeline: &Pipeline, request: RequestIn) -> Admission {
    let RequestIn {
        uid,
        kind: gvk,
        sub_resource,
        namespace,
        operation,
        object,
        old_object,
    } = request;
    let kind = Kind::from_gvk(&gvk.group, &gvk.version, &gvk.kind);
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
            let req = Request {
                kind,
                operation,
                namespace: namespace.as_deref(),
                old_object: old_object.as_ref(),
            };
            let outcome = pipeline.run(&req, object);
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

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ReviewOut<'a> {
    api_version: &'static str,
    kind: &'static str,
    response: ResponseOut<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ResponseOut<'a> {
    uid: &'a str,
    allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    audit_annotations: BTreeMap<&'static str, String>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    warnings: &'a [String],
}

/// The AdmissionReview v1 response. `allowed` is always true: calmplane only
/// defaults, it never denies.
pub fn response_body(uid: &str, outcome: &Outcome) -> String {
    // Serialising JSON values and strings cannot fail (no maps with
    // non-string keys, no failing Serialize impls), so an empty fallback is
    // never taken; it only keeps a panic off the request path.
    let patch = (!outcome.patch.is_empty()).then(|| {
        let json = serde_json::to_vec(&outcome.patch).unwrap_or_default();
        base64::engine::general_purpose::STANDARD.encode(json)
    });
    let mut audit_annotations = BTreeMap::new();
    if !outcome.policies.is_empty() {
        audit_annotations.insert("policies", outcome.policies.join(","));
    }
    let review = ReviewOut {
        api_version: API_VERSION,
        kind: "AdmissionReview",
        response: ResponseOut {
            uid,
            allowed: true,
            patch_type: patch.as_ref().map(|_| "JSONPatch"),
            patch,
            audit_annotations,
            warnings: &outcome.warnings,
        },
    };
    serde_json::to_string(&review).unwrap_or_default()
}
