//! The AdmissionReview v1 envelope: request bytes in, response bytes out.
//!
//! The envelope is parsed with `object` and `oldObject` left as borrowed JSON
//! text (`&RawValue`): nothing is copied or built until the request's kind is
//! known. Then only the members the policies read become a
//! `serde_json::Value` ([`view`]). We reuse kube's `Operation` and
//! `GroupVersionKind`, but not its `AdmissionRequest<T>`: that forces the
//! object through a typed `ObjectMeta` (dropping fields it does not know), and
//! its `AdmissionResponse.patch` serialises as an array of numbers, while the
//! apiserver expects the documented base64 string.

use crate::pipeline::{Outcome, Pipeline, Request};
use crate::policy::Kind;
use crate::view::{self, Extent, Shape, Templates};
use kube::core::admission::Operation;
use kube::core::GroupVersionKind;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;
use std::borrow::Cow;
use std::io::Write as _;

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
struct ReviewIn<'a> {
    #[serde(borrow, default)]
    api_version: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    request: Option<RequestWire<'a>>,
}

/// The fields of `AdmissionRequest` calmplane reads, as sent; the rest is
/// skipped. The objects stay text until the kind is known.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RequestWire<'a> {
    uid: String,
    kind: GroupVersionKind,
    #[serde(default)]
    sub_resource: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
    operation: String,
    #[serde(borrow, default)]
    object: Option<&'a RawValue>,
    #[serde(borrow, default)]
    old_object: Option<&'a RawValue>,
}

/// An admission request, ready for the pipeline.
#[derive(Debug)]
pub struct RequestIn<'a> {
    /// Echoed in the response, which is how the apiserver pairs the two.
    pub uid: String,
    /// The object's group/version/kind: decides which policies run, and
    /// whether any do.
    pub kind: GroupVersionKind,
    /// Set for requests on a subresource (`status`, `scale`, ...), which are
    /// allowed untouched: there the edits would be wrong (a `Scale`) or dropped.
    pub sub_resource: Option<String>,
    /// The request's namespace, which is authoritative: the object's own
    /// metadata may leave it to the URL.
    pub namespace: Option<String>,
    /// Kept as text: an operation this build does not know (a newer
    /// apiserver, a fixture) is allowed untouched rather than rejected.
    pub operation: String,
    /// The object to mutate, untyped so no field is lost: with
    /// [`Extent::Read`] only the members the policies read, with
    /// [`Extent::Whole`] all of it. Absent on DELETE.
    pub object: Option<Value>,
    /// The stored object on UPDATE (same extent), whose annotations
    /// `rollout-history` reads.
    pub old_object: Option<Value>,
    /// Both pod templates of a Deployment UPDATE, as text, for
    /// `rollout-history` to compare.
    pub templates: Option<Templates<'a>>,
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

/// Parse an AdmissionReview v1 for `/mutate`: only what the policies read
/// is built.
pub fn parse(body: &[u8]) -> Result<RequestIn<'_>, ReviewError> {
    parse_with(body, Extent::Read)
}

/// Parse an AdmissionReview v1, building as much of its objects as `extent` says.
pub fn parse_with(body: &[u8], extent: Extent) -> Result<RequestIn<'_>, ReviewError> {
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
    let review: ReviewIn<'_> = serde_json::from_slice(body).map_err(|e| {
        if e.is_syntax() || e.is_eof() {
            ReviewError::NotJson(e)
        } else if serde_json::from_slice::<Value>(body).is_ok_and(|v| is_bare_request(&v)) {
            ReviewError::BareRequest
        } else {
            ReviewError::Invalid(e)
        }
    })?;
    let request = check(review)?;
    build(request, extent).map_err(ReviewError::Invalid)
}

fn check(review: ReviewIn<'_>) -> Result<RequestWire<'_>, ReviewError> {
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

/// What `/mutate` reads of an object no policy handles: its name, for the
/// logs and reports.
const METADATA_ONLY: Shape = Shape::Members(&[(
    "metadata",
    Shape::Members(&[
        ("name", Shape::All),
        ("generateName", Shape::All),
        ("namespace", Shape::All),
    ]),
)]);

/// Build the objects of a checked request: the view its kind's policies
/// read, or all of it.
fn build(wire: RequestWire<'_>, extent: Extent) -> Result<RequestIn<'_>, serde_json::Error> {
    let kind = Kind::from_gvk(&wire.kind.group, &wire.kind.version, &wire.kind.kind);
    let shape = match (extent, kind) {
        (Extent::Whole, _) => &Shape::All,
        (Extent::Read, Some(kind)) => kind.shape(),
        (Extent::Read, None) => &METADATA_ONLY,
    };
    let object = wire
        .object
        .map(|text| view::parse(text.get(), shape))
        .transpose()?;
    // Only a Deployment UPDATE is compared with what it replaces.
    let (old_object, templates) = match (kind, wire.object, wire.old_object) {
        (Some(Kind::Deployment), Some(new), Some(old)) => (
            Some(view::parse(old.get(), shape)?),
            Some(Templates::find(new, old)),
        ),
        _ => (None, None),
    };
    Ok(RequestIn {
        uid: wire.uid,
        kind: wire.kind,
        sub_resource: wire.sub_resource,
        namespace: wire.namespace,
        operation: wire.operation,
        object,
        old_object,
        templates,
    })
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
                templates,
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

/// The AdmissionReview v1 response. `allowed` is always true: calmplane only
/// defaults, it never denies.
///
/// Written straight into one buffer: the JSON Patch is serialised through a
/// base64 encoder into the response, with no intermediate patch text or
/// envelope struct.
pub fn response_body(uid: &str, outcome: &Outcome) -> String {
    let mut out = Vec::with_capacity(256 + 96 * outcome.patch.len());
    // Writing to a Vec cannot fail and JSON values and strings always
    // serialise, so the empty fallback is never taken; it only keeps a panic
    // off the request path.
    if write_response(&mut out, uid, outcome).is_err() {
        return String::new();
    }
    String::from_utf8(out).unwrap_or_default()
}

fn write_response(out: &mut Vec<u8>, uid: &str, outcome: &Outcome) -> std::io::Result<()> {
    out.extend_from_slice(b"{\"apiVersion\":\"");
    out.extend_from_slice(API_VERSION.as_bytes());
    out.extend_from_slice(b"\",\"kind\":\"AdmissionReview\",\"response\":{\"uid\":");
    serde_json::to_writer(&mut *out, uid)?;
    out.extend_from_slice(b",\"allowed\":true");
    if !outcome.patch.is_empty() {
        out.extend_from_slice(b",\"patchType\":\"JSONPatch\",\"patch\":\"");
        {
            let mut base64 = base64::write::EncoderWriter::new(
                &mut *out,
                &base64::engine::general_purpose::STANDARD,
            );
            serde_json::to_writer(&mut base64, &outcome.patch)?;
            base64.finish()?;
        }
        out.push(b'"');
    }
    if let Some((first, rest)) = outcome.policies.split_first() {
        // Policy names are our own constants: lower-case letters and dashes,
        // nothing to escape.
        out.extend_from_slice(b",\"auditAnnotations\":{\"policies\":\"");
        out.extend_from_slice(first.as_bytes());
        for name in rest {
            out.push(b',');
            out.extend_from_slice(name.as_bytes());
        }
        out.extend_from_slice(b"\"}");
    }
    if !outcome.warnings.is_empty() {
        out.extend_from_slice(b",\"warnings\":");
        serde_json::to_writer(&mut *out, &outcome.warnings)?;
    }
    out.write_all(b"}}")
}
