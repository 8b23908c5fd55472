//! The AdmissionReview v1 envelope: request bytes in, response bytes out.
//!
//! The envelope is read in one pass. The apiserver sends the request's `kind`
//! before `object` and `oldObject`, so by the time the objects come the shape
//! to read them with is known, and only the members the policies read become
//! a `serde_json::Value` ([`view`]); the rest is skipped, never copied. (A
//! body with the objects first keeps them as borrowed text, `&RawValue`, and
//! builds them once the kind is read.) We reuse kube's `Operation` and
//! `GroupVersionKind`, but not its `AdmissionRequest<T>`: that forces the
//! object through a typed `ObjectMeta` (dropping fields it does not know), and
//! its `AdmissionResponse.patch` serialises as an array of numbers, while the
//! apiserver expects the documented base64 string.

use crate::pipeline::{Outcome, Pipeline};
use crate::policy::{Context, Kind, Reads, Templates};
use crate::view::{self, Keys, Shape};
use kube::core::admission::Operation;
use kube::core::GroupVersionKind;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;
use std::borrow::Cow;
use std::fmt;
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
    /// The views of the requests in flight hold all the memory set aside
    /// for them ([`crate::budget::VIEW_POOL`]): a 503, try again.
    #[error("calmplane is busy: the requests in flight hold all the memory set aside for reading objects; try again")]
    Busy,
    /// Reading what the policies need would take more memory than the body
    /// may cost ([`crate::view::Budget`]): a hostile or broken object, such
    /// as a list of millions of empty strings.
    #[error("the object would take more than {limit} bytes of memory to read (the limit for a {body}-byte body); refused")]
    TooLarge {
        /// The bytes the view was allowed.
        limit: usize,
        /// The body's size.
        body: usize,
    },
}

/// The envelope. `request` is read by [`RequestSeed`].
struct ReviewIn<'a> {
    api_version: Option<Cow<'a, str>>,
    kind: Option<Cow<'a, str>>,
    request: Option<RequestIn<'a>>,
}

/// How much of an admitted object to build.
#[derive(Debug, Clone, Copy)]
pub enum Extent<'r> {
    /// Only what the policies read: `/mutate` and `/report`, which answer
    /// with a patch. The pipeline says what its policy file makes them read.
    Read(&'r Reads),
    /// Everything: `/preview` and `calmplane preview`, which show the whole
    /// patched object.
    Whole,
}

/// How to build an object: its extent and what building it may cost.
#[derive(Clone, Copy)]
struct Build<'r> {
    extent: Extent<'r>,
    budget: &'r view::Budget,
}

/// Reads an AdmissionReview in one pass over the body.
struct ReviewSeed<'r>(Build<'r>);

impl<'de> DeserializeSeed<'de> for ReviewSeed<'_> {
    type Value = ReviewIn<'de>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<ReviewIn<'de>, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ReviewSeed<'_> {
    type Value = ReviewIn<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an AdmissionReview")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ReviewIn<'de>, A::Error> {
        let mut review = ReviewIn {
            api_version: None,
            kind: None,
            request: None,
        };
        while let Some(key) = map.next_key_seed(view::KeySeed)? {
            match &*key {
                "apiVersion" => review.api_version = map.next_value()?,
                "kind" => review.kind = map.next_value()?,
                "request" => review.request = map.next_value_seed(OptionalRequest(self.0))?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(review)
    }
}

/// `request`, or `null`.
struct OptionalRequest<'r>(Build<'r>);

impl<'de> DeserializeSeed<'de> for OptionalRequest<'_> {
    type Value = Option<RequestIn<'de>>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        OrNull(WireVisitor(self.0))
            .deserialize(d)?
            .map(|wire| wire.finish(self.0).map_err(de::Error::custom))
            .transpose()
    }
}

/// `null`, or what the seed reads.
struct OrNull<S>(S);

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for OrNull<S> {
    type Value = Option<S::Value>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_option(self)
    }
}

impl<'de, S: DeserializeSeed<'de>> Visitor<'de> for OrNull<S> {
    type Value = Option<S::Value>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("null or a JSON object")
    }

    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        self.0.deserialize(d).map(Some)
    }
}

/// An object as the envelope pass left it: built, when the request's `kind`
/// came first (the apiserver always sends it first), or as text to build
/// once the kind is known.
enum ObjectIn<'a> {
    Built(view::Parsed<'a>),
    Text(&'a RawValue),
}

/// The fields of `AdmissionRequest` calmplane reads, as the envelope pass
/// found them; the rest is skipped.
#[derive(Default)]
struct RequestWire<'a> {
    uid: Option<String>,
    kind: Option<GroupVersionKind>,
    sub_resource: Option<String>,
    namespace: Option<String>,
    operation: Option<String>,
    object: Option<ObjectIn<'a>>,
    old_object: Option<ObjectIn<'a>>,
}

impl<'a> RequestWire<'a> {
    /// Build what the envelope pass kept as text, and check what the
    /// request must have.
    fn finish(self, how: Build<'_>) -> Result<RequestIn<'a>, serde_json::Error> {
        use de::Error as _;
        let missing = serde_json::Error::missing_field;
        let kind = self.kind.ok_or_else(|| missing("kind"))?;
        let (shape, keys) = shape(how.extent, &kind);
        let build = |object: Option<ObjectIn<'a>>| match object {
            Some(ObjectIn::Text(text)) => {
                view::parse(text.get(), shape, keys, how.budget).map(Some)
            }
            Some(ObjectIn::Built(parsed)) => Ok(Some(parsed)),
            None => Ok(None),
        };
        let object = build(self.object)?;
        let old_object = build(self.old_object)?;
        // Only a Deployment UPDATE is compared with what it replaces, and
        // only a view needs the text: a whole object has its templates.
        let templates = match (&object, &old_object) {
            (Some(new), Some(old)) if shape.has_text() => Some(Templates {
                object: new.text,
                old_object: old.text,
            }),
            _ => None,
        };
        Ok(RequestIn {
            view: matches!(how.extent, Extent::Read(_)),
            uid: self.uid.ok_or_else(|| missing("uid"))?,
            kind,
            sub_resource: self.sub_resource,
            namespace: self.namespace,
            operation: self.operation.ok_or_else(|| missing("operation"))?,
            object: object.map(|p| p.value),
            old_object: old_object.map(|p| p.value),
            templates,
        })
    }
}

struct WireVisitor<'r>(Build<'r>);

impl<'de> DeserializeSeed<'de> for WireVisitor<'_> {
    type Value = RequestWire<'de>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for WireVisitor<'_> {
    type Value = RequestWire<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an AdmissionRequest")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RequestWire<'de>, A::Error> {
        let mut wire = RequestWire::default();
        while let Some(key) = map.next_key_seed(view::KeySeed)? {
            match &*key {
                "uid" => wire.uid = Some(map.next_value()?),
                "kind" => wire.kind = Some(map.next_value()?),
                "subResource" => wire.sub_resource = map.next_value()?,
                "namespace" => wire.namespace = map.next_value()?,
                "operation" => wire.operation = Some(map.next_value()?),
                "object" => wire.object = map.next_value_seed(ObjectSeed(self.0, &wire.kind))?,
                "oldObject" => {
                    wire.old_object = map.next_value_seed(ObjectSeed(self.0, &wire.kind))?
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(wire)
    }
}

/// An object or `null`, built at once when the request's kind is known.
struct ObjectSeed<'r, 'k>(Build<'r>, &'k Option<GroupVersionKind>);

impl<'de> DeserializeSeed<'de> for ObjectSeed<'_, '_> {
    type Value = Option<ObjectIn<'de>>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        let Some(kind) = self.1 else {
            return Ok(Option::<&RawValue>::deserialize(d)?.map(ObjectIn::Text));
        };
        let (shape, keys) = shape(self.0.extent, kind);
        let built = OrNull(view::Seed(shape, keys, self.0.budget)).deserialize(d)?;
        Ok(built.map(ObjectIn::Built))
    }
}

/// [`Shape::All`], for [`Extent::Whole`].
static WHOLE: Shape = Shape::All;

/// What to build of an object of `kind`, and which annotations and variables.
fn shape<'r>(extent: Extent<'r>, kind: &GroupVersionKind) -> (&'r Shape, &'r Keys) {
    match extent {
        Extent::Whole => (&WHOLE, view::EVERYTHING),
        Extent::Read(reads) => (reads.shape_of(Kind::of(kind)), reads.keys_to_build()),
    }
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
    /// Whether `object` is a view ([`Extent::Read`]): the pipeline then
    /// refuses writes the view does not hold.
    pub view: bool,
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
/// is built (`reads`: what the pipeline's policy file makes them read, from
/// [`Pipeline::reads`]), within [`crate::budget::view_limit`] of the body.
pub fn parse<'a>(body: &'a [u8], reads: &Reads) -> Result<RequestIn<'a>, ReviewError> {
    let budget = view::Budget::new(crate::budget::view_limit(body.len()));
    parse_with(body, Extent::Read(reads), &budget)
}

/// Parse an AdmissionReview v1, building as much of its objects as `extent`
/// says, and no more than `budget` allows.
pub fn parse_with<'a>(
    body: &'a [u8],
    extent: Extent<'_>,
    budget: &view::Budget,
) -> Result<RequestIn<'a>, ReviewError> {
    let how = Build { extent, budget };
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
    // Checked as UTF-8 once, whole: serde_json then skips the check per
    // string. Invalid UTF-8 takes the slice parser, whose error says where.
    let review = match std::str::from_utf8(body) {
        Ok(text) => {
            let mut de = serde_json::Deserializer::from_str(text);
            ReviewSeed(how)
                .deserialize(&mut de)
                .and_then(|review| de.end().map(|()| review))
        }
        Err(_) => {
            let mut de = serde_json::Deserializer::from_slice(body);
            ReviewSeed(how)
                .deserialize(&mut de)
                .and_then(|review| de.end().map(|()| review))
        }
    };
    let review = review.map_err(|e| match budget.exceeded() {
        Some(view::Exceeded::Pool) => ReviewError::Busy,
        Some(view::Exceeded::Limit) => ReviewError::TooLarge {
            limit: budget.limit(),
            body: body.len(),
        },
        None if e.is_syntax() || e.is_eof() => ReviewError::NotJson(e),
        None if is_bare_request(body) => ReviewError::BareRequest,
        None => ReviewError::Invalid(e),
    })?;
    check(review)
}

fn check(review: ReviewIn<'_>) -> Result<RequestIn<'_>, ReviewError> {
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
/// fixtures often are). Only consulted on the error path, and read without
/// building anything: the body that failed may be a hostile one.
fn is_bare_request(body: &[u8]) -> bool {
    let mut de = serde_json::Deserializer::from_slice(body);
    BareProbe.deserialize(&mut de).unwrap_or(false)
}

/// Whether a JSON object has `operation` and an object `kind`, and no `request`.
struct BareProbe;

impl<'de> DeserializeSeed<'de> for BareProbe {
    type Value = bool;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for BareProbe {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        let (mut request, mut operation, mut kind) = (false, false, false);
        while let Some(key) = map.next_key_seed(view::KeySeed)? {
            match &*key {
                "request" => request = true,
                "operation" => operation = true,
                "kind" => {
                    kind = map.next_value_seed(IsObject)?;
                    continue;
                }
                _ => {}
            }
            map.next_value::<IgnoredAny>()?;
        }
        Ok(!request && operation && kind)
    }
}

/// Whether a JSON value is an object, skipping it unbuilt.
struct IsObject;

impl<'de> DeserializeSeed<'de> for IsObject {
    type Value = bool;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for IsObject {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(true)
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(false)
    }

    fn visit_bool<E>(self, _: bool) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_i64<E>(self, _: i64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_u64<E>(self, _: u64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_f64<E>(self, _: f64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_str<E>(self, _: &str) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_unit<E>(self) -> Result<bool, E> {
        Ok(false)
    }
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

/// The AdmissionReview v1 response. `allowed` is always true: calmplane only
/// defaults, it never denies.
///
/// Written straight into one buffer: the envelope by hand around
/// serde_json's strings, and the JSON Patch base64-encoded in place, with no
/// envelope struct and no intermediate base64 string.
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
        // The patch JSON is written once, then encoded straight into the
        // response. (A streaming base64 writer under serde_json was slower:
        // it pays per token, and serde_json writes many small tokens.)
        let json = serde_json::to_vec(&outcome.patch)?;
        let engine = &base64::engine::general_purpose::STANDARD;
        let start = out.len();
        out.resize(
            start + base64::encoded_len(json.len(), true).unwrap_or(0),
            0,
        );
        let written = base64::Engine::encode_slice(engine, &json, &mut out[start..])
            .map_err(std::io::Error::other)?;
        out.truncate(start + written);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::Pipeline;
    use serde_json::json;

    fn deployment(image: &str) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
               "metadata": {"name": "web", "annotations": {"a": "1"}, "managedFields": [{"manager": "kubectl"}]},
               "spec": {"replicas": 2, "strategy": {"type": "RollingUpdate"},
                        "template": {"metadata": {"labels": {"app": "web"}},
                                     "spec": {"containers": [{"name": "c", "image": image}]}}},
               "status": {"replicas": 2}})
    }

    /// The same UPDATE with `kind` before the objects (as the apiserver
    /// sends it: one pass) and after them (built in a second pass).
    fn bodies() -> (Vec<u8>, Vec<u8>) {
        let gvk = json!({"group": "apps", "version": "v1", "kind": "Deployment"});
        let (new, old) = (deployment("web:2"), deployment("web:1"));
        let first = format!(
            r#"{{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{{"uid":"u","kind":{gvk},"operation":"UPDATE","namespace":"ns","object":{new},"oldObject":{old}}}}}"#
        );
        let last = format!(
            r#"{{"kind":"AdmissionReview","request":{{"oldObject":{old},"object":{new},"operation":"UPDATE","uid":"u","namespace":"ns","kind":{gvk}}},"apiVersion":"admission.k8s.io/v1"}}"#
        );
        (first.into_bytes(), last.into_bytes())
    }

    fn reads() -> Reads {
        Pipeline::with_defaults().reads().clone()
    }

    #[test]
    fn field_order_does_not_change_the_view() {
        let pipeline = Pipeline::with_defaults();
        let (first, last) = bodies();
        let (a, b) = (
            parse(&first, pipeline.reads()).unwrap(),
            parse(&last, pipeline.reads()).unwrap(),
        );
        assert_eq!(a.object, b.object);
        assert_eq!(a.old_object, b.old_object);
        fn text<'a>(t: Option<Templates<'a>>) -> (Option<&'a str>, Option<&'a str>) {
            let t = t.expect("a Deployment UPDATE has templates");
            (t.object.map(RawValue::get), t.old_object.map(RawValue::get))
        }
        assert_eq!(text(a.templates), text(b.templates));
        assert!(text(a.templates).0.unwrap().contains("web:2"));
        // The view holds what the policies read and nothing else.
        assert_eq!(
            a.object.unwrap(),
            json!({"metadata": {"name": "web", "annotations": {}},
                   "spec": {"strategy": {"type": "RollingUpdate"}, "template": {"metadata": {}}}})
        );
        let one = admit(&pipeline, parse(&first, pipeline.reads()).unwrap()).outcome;
        let two = admit(&pipeline, parse(&last, pipeline.reads()).unwrap()).outcome;
        assert_eq!(one.policies, ["rollout-history", "rollout"]);
        assert_eq!(one.changes.len(), two.changes.len());
    }

    #[test]
    fn the_whole_extent_builds_everything_and_needs_no_text() {
        let (first, _) = bodies();
        let whole = parse_with(&first, Extent::Whole, &view::Budget::unlimited()).unwrap();
        assert_eq!(whole.object.unwrap(), deployment("web:2"));
        assert!(whole.templates.is_none());
    }

    #[test]
    fn missing_and_duplicate_fields() {
        let body = br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"kind":{"group":"","version":"v1","kind":"Pod"},"operation":"CREATE"}}"#;
        let err = parse(body, &reads()).unwrap_err().to_string();
        assert!(err.contains("missing field `uid`"), "{err}");
        let body =
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":null}"#;
        assert!(matches!(parse(body, &reads()), Err(ReviewError::NoRequest)));
        let body = br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","kind":{"group":"","version":"v1","kind":"Pod"},"operation":"CREATE","object":{"metadata":{"name":1e999}}}}"#;
        let err = parse(body, &reads()).unwrap_err();
        assert!(matches!(err, ReviewError::NotJson(_)), "{err}");
        assert!(err.to_string().contains("number out of range"), "{err}");
    }

    #[test]
    fn the_response_is_one_json_document_with_a_base64_patch() {
        use base64::Engine as _;
        let body = br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"a\"b\\c\u00e9","kind":{"group":"","version":"v1","kind":"Pod"},"operation":"CREATE","namespace":"ns","object":{"metadata":{"name":"p"},"spec":{"containers":[{"name":"c"}]}}}}"#;
        let admission = admit(&Pipeline::with_defaults(), parse(body, &reads()).unwrap());
        let response: Value = serde_json::from_str(&admission.response_body()).unwrap();
        let r = &response["response"];
        assert_eq!(r["uid"], "a\"b\\c\u{e9}");
        assert_eq!(r["patchType"], "JSONPatch");
        let patch = base64::engine::general_purpose::STANDARD
            .decode(r["patch"].as_str().unwrap())
            .unwrap();
        let patch: Vec<json_patch::PatchOperation> = serde_json::from_slice(&patch).unwrap();
        assert_eq!(patch, admission.outcome.patch);
        assert_eq!(r["auditAnnotations"]["policies"], "dns,prestop");
        let warnings = r
            .get("warnings")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        assert_eq!(warnings, admission.outcome.warnings.len());
    }

    #[test]
    fn invalid_utf8_is_not_json_and_says_where() {
        let body = b"{\"apiVersion\":\"admission.k8s.io/v1\",\"kind\":\"\xff\"}";
        let err = parse(body, &reads()).unwrap_err();
        assert!(matches!(err, ReviewError::NotJson(_)), "{err}");
        assert!(err.to_string().contains("column"), "{err}");
    }

    #[test]
    fn policy_names_need_no_escaping() {
        // The response writes them into a JSON string as they are.
        for name in crate::policy::names() {
            assert!(
                name.bytes().all(|b| b.is_ascii_lowercase() || b == b'-'),
                "{name}"
            );
        }
    }
}
