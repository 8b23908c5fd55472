//! Reading an AdmissionReview v1: the envelope in one pass, and the view of
//! its objects ([`crate::view`]) within what they may cost.

use super::API_VERSION;
use crate::policy::{Kind, Reads, Templates};
use crate::view::{self, Keys, Shape};
use kube::core::GroupVersionKind;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;
use std::borrow::Cow;
use std::fmt;

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

/// Parse an AdmissionReview v1 for `/mutate`: only what the policies read
/// is built (`reads`: what the pipeline's policy file makes them read, from
/// [`Pipeline::reads`](crate::pipeline::Pipeline::reads)), within [`crate::budget::view_limit`] of the body.
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

#[cfg(test)]
mod tests {
    use super::super::admit;
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
    fn invalid_utf8_is_not_json_and_says_where() {
        let body = b"{\"apiVersion\":\"admission.k8s.io/v1\",\"kind\":\"\xff\"}";
        let err = parse(body, &reads()).unwrap_err();
        assert!(matches!(err, ReviewError::NotJson(_)), "{err}");
        assert!(err.to_string().contains("column"), "{err}");
    }
}
