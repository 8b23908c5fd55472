//! The part of an admitted object that the policies read.
//!
//! A Pod or Deployment arrives as JSON text. Building a whole
//! `serde_json::Value` from it was most of the time `/mutate` took: one
//! allocation per node, an `IndexMap` insert with SipHash per member, and a
//! second walk to drop the tree. Most of that tree (images, probes, volumes,
//! `managedFields`, `status`) no policy ever reads.
//!
//! So the request path parses the object through a [`Shape`]: a static tree
//! naming the members the policies read. Members outside it are skipped by
//! the parser without being built; members inside it become an ordinary
//! `Value`, so the policies and [`Mutation`](crate::patch::Mutation) work on
//! the view exactly as on the whole object. A patch is paths and values, so
//! it needs nothing more.
//!
//! ```text
//! POD         metadata { name, generateName, namespace, annotations* }
//!             spec { os*, nodeSelector*, dnsConfig*, terminationGracePeriodSeconds*,
//!                    containers[] / initContainers[] { name*, env*, args*, lifecycle* } }
//! DEPLOYMENT  metadata { name, generateName, namespace, annotations* }
//!             spec { strategy*, template { metadata { annotations* } } }
//!                                   (* = the whole subtree)
//! ```
//!
//! A value whose type is not the one the shape expects (`spec: "oops"`,
//! `containers: {}`) is kept whole, so a policy sees the same wrong shape it
//! would see in the whole object and refuses the same way.
//!
//! `rollout-history` compares the whole pod template of an UPDATE with the
//! stored one. It does that on the two templates' JSON text ([`Templates`]),
//! never on the view.
//!
//! The shapes are the one place that says what the policies read. A policy
//! that reads a member outside them would see it missing; `tests/view.rs`
//! runs every policy over the whole object and over the view, on every
//! fixture of the corpus and on generated objects, and requires the same
//! patch, changes and warnings.
//!
//! `/preview` shows the whole patched object, so it parses with
//! [`Extent::Whole`].

use crate::policy::Kind;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Number, Value};
use std::borrow::Cow;
use std::fmt;

/// Which members of a JSON value to build.
#[derive(Debug)]
pub enum Shape {
    /// The whole subtree.
    All,
    /// Only these members of an object, each with its own shape; the other
    /// members are skipped unbuilt.
    Members(&'static [(&'static str, Shape)]),
    /// Every element of an array, each with this shape.
    Each(&'static Shape),
}

use Shape::{All, Each, Members};

/// `metadata` as every policy and the request log read it.
const METADATA: Shape = Members(&[
    ("name", All),
    ("generateName", All),
    ("namespace", All),
    ("annotations", All),
]);

/// A container: `lease` reads `env` and `args`, `prestop` reads `lifecycle`
/// and `name`.
const CONTAINER: Shape = Members(&[
    ("name", All),
    ("env", All),
    ("args", All),
    ("lifecycle", All),
]);

/// What the Pod policies (`lease`, `dns`, `prestop`) and the pipeline read.
pub const POD: Shape = Members(&[
    ("metadata", METADATA),
    (
        "spec",
        Members(&[
            ("os", All),
            ("nodeSelector", All),
            ("dnsConfig", All),
            ("terminationGracePeriodSeconds", All),
            ("containers", Each(&CONTAINER)),
            ("initContainers", Each(&CONTAINER)),
        ]),
    ),
]);

/// What the Deployment policies (`rollout`, `rollout-history`) read; the
/// template itself is compared as text ([`Templates`]).
pub const DEPLOYMENT: Shape = Members(&[
    ("metadata", METADATA),
    (
        "spec",
        Members(&[
            ("strategy", All),
            (
                "template",
                Members(&[("metadata", Members(&[("annotations", All)]))]),
            ),
        ]),
    ),
]);

impl Kind {
    /// The members of an object of this kind that the policies read.
    pub fn shape(self) -> &'static Shape {
        match self {
            Kind::Pod => &POD,
            Kind::Deployment => &DEPLOYMENT,
        }
    }
}

/// How much of an admitted object to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extent {
    /// Only what the policies read: `/mutate` and `/report`, which answer
    /// with a patch.
    Read,
    /// Everything: `/preview` and `calmplane preview`, which show the whole
    /// patched object.
    Whole,
}

/// Build the members of `text` that `shape` names.
pub fn parse(text: &str, shape: &Shape) -> Result<Value, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(text);
    let value = ShapeSeed(shape).deserialize(&mut de)?;
    de.end()?;
    Ok(value)
}

/// The pod templates of an UPDATE, as the apiserver sent them.
#[derive(Debug, Clone, Copy)]
pub struct Templates<'a> {
    /// `spec.template` of the object being admitted.
    pub object: Option<&'a RawValue>,
    /// `spec.template` of the stored object.
    pub old_object: Option<&'a RawValue>,
}

impl<'a> Templates<'a> {
    /// Find `spec.template` in both texts. A text that is not a Deployment
    /// object has none, and a `null` template is no template, as the
    /// apiserver reads it.
    pub fn find(object: &'a RawValue, old_object: &'a RawValue) -> Templates<'a> {
        Templates {
            object: template_text(object),
            old_object: template_text(old_object),
        }
    }
}

fn template_text(object: &RawValue) -> Option<&RawValue> {
    member(member(object, "spec")?, "template")
}

/// The member `name` of the JSON object `text`, as text; `None` when `text`
/// is not an object, has no such member or has it `null`. Of duplicate
/// members the last counts, as in a `Value`.
fn member<'a>(text: &'a RawValue, name: &str) -> Option<&'a RawValue> {
    struct Member<'n>(&'n str);
    impl<'de, 'n> Visitor<'de> for Member<'n> {
        type Value = Option<&'de RawValue>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON object")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut found = None;
            while let Some(key) = map.next_key_seed(KeySeed)? {
                if key == self.0 {
                    found = Some(map.next_value::<&'de RawValue>()?);
                } else {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            Ok(found)
        }
    }
    let mut de = serde_json::Deserializer::from_str(text.get());
    let found = de::Deserializer::deserialize_map(&mut de, Member(name)).ok()??;
    (found.get() != "null").then_some(found)
}

struct ShapeSeed<'s>(&'s Shape);

impl<'de> DeserializeSeed<'de> for ShapeSeed<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        match self.0 {
            All => Value::deserialize(d),
            shape => d.deserialize_any(ShapeVisitor(shape)),
        }
    }
}

/// Builds the value the shape names. Scalars and containers of another type
/// than the shape expects are built whole, as `Value` would build them.
struct ShapeVisitor<'s>(&'s Shape);

impl<'de> Visitor<'de> for ShapeVisitor<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        ShapeSeed(self.0).deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let element = match self.0 {
            Each(element) => *element,
            _ => &All,
        };
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(item) = seq.next_element_seed(ShapeSeed(element))? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let members = match self.0 {
            Members(members) => *members,
            _ => {
                // Not the object the shape expects: build it whole.
                let mut whole = Map::new();
                while let Some((key, value)) = map.next_entry::<String, Value>()? {
                    whole.insert(key, value);
                }
                return Ok(Value::Object(whole));
            }
        };
        let mut kept = Map::new();
        while let Some(key) = map.next_key_seed(KeySeed)? {
            match members.iter().find(|(name, _)| *name == key) {
                Some((_, shape)) => {
                    let value = map.next_value_seed(ShapeSeed(shape))?;
                    // `insert` keeps the last of duplicate keys, as `Value` does.
                    kept.insert(key.into_owned(), value);
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Value::Object(kept))
    }
}

/// A member name, borrowed from the text unless it has escapes: most names
/// are skipped, and need no allocation.
struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Cow<'de, str>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(KeySeed)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a member name")
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keeps_only_the_named_members() {
        let text = r#"{"metadata": {"name": "p", "uid": "u", "annotations": {"a/b": "1"}},
            "spec": {"containers": [{"name": "c", "image": "i", "env": [{"name": "E", "valueFrom": {}}]}, 3],
                     "volumes": [{"name": "v"}], "dnsConfig": {"options": []}},
            "status": {"phase": "Pending"}}"#;
        let view = parse(text, &POD).unwrap();
        assert_eq!(
            view,
            json!({"metadata": {"name": "p", "annotations": {"a/b": "1"}},
                   "spec": {"containers": [{"name": "c", "env": [{"name": "E", "valueFrom": {}}]}, 3],
                            "dnsConfig": {"options": []}}})
        );
    }

    #[test]
    fn unexpected_types_are_kept_whole() {
        let text = r#"{"metadata": ["x", {"name": 1}], "spec": {"containers": {"0": {"image": "i"}}}, "kind": 1.5}"#;
        let view = parse(text, &POD).unwrap();
        assert_eq!(
            view,
            json!({"metadata": ["x", {"name": 1}], "spec": {"containers": {"0": {"image": "i"}}}})
        );
        assert_eq!(parse("null", &POD).unwrap(), Value::Null);
        assert_eq!(parse(r#""s""#, &DEPLOYMENT).unwrap(), json!("s"));
    }

    #[test]
    fn escaped_names_and_duplicates_read_as_value_reads_them() {
        let text = r#"{"meta\u0064ata": {"name": "a", "name": "b"}, "spec": {}}"#;
        let view = parse(text, &POD).unwrap();
        let whole: Value = serde_json::from_str(text).unwrap();
        assert_eq!(view, whole);
    }

    #[test]
    fn skipped_members_must_still_be_json() {
        assert!(parse(r#"{"status": {"phase": }}"#, &POD).is_err());
        assert!(parse(r#"{"status": 1} x"#, &POD).is_err());
    }

    #[test]
    fn finds_both_templates() {
        let new = RawValue::from_string(r#"{"spec": {"template": {"a": 1}}}"#.into()).unwrap();
        let old = RawValue::from_string(r#"{"spec": 3}"#.into()).unwrap();
        let t = Templates::find(&new, &old);
        assert_eq!(t.object.map(RawValue::get), Some(r#"{"a": 1}"#));
        assert!(t.old_object.is_none());
        // Neither a list (which serde's derived structs would accept) nor
        // a null is a template; the last of duplicates counts.
        for (text, found) in [
            (r#"{"spec": [{"template": 1}]}"#, None),
            (r#"[{"template": 1}]"#, None),
            (r#"{"spec": {"template": null}}"#, None),
            (r#"{"spec": {"template": 1, "template": 2}}"#, Some("2")),
            (r#"{"sp\u0065c": {"template": 3}}"#, Some("3")),
        ] {
            let raw = RawValue::from_string(text.into()).unwrap();
            assert_eq!(template_text(&raw).map(RawValue::get), found, "{text}");
        }
    }
}
