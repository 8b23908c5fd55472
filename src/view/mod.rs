//! The part of an admitted object that the policies read.
//!
//! A Pod or Deployment arrives as JSON text. Building a whole
//! `serde_json::Value` from it was most of the time `/mutate` took: one
//! allocation per node, an `IndexMap` insert with SipHash per member, and a
//! second walk to drop the tree. Most of that tree (images, probes, volumes,
//! `managedFields`, `status`) no policy ever reads.
//!
//! So the request path parses the object through a [`Shape`]: a tree naming
//! the members the policies read. Members outside it are skipped by the
//! parser without being built; members inside it become an ordinary `Value`,
//! so the policies and [`Mutation`](crate::patch::Mutation) work on the view
//! exactly as on the whole object. A patch is paths and values, so it needs
//! nothing more.
//!
//! This module is the generic machinery; it knows no policy. Each policy
//! declares what it reads ([`Policy::reads`](crate::policy::Policy::reads)),
//! and the pipeline merges the declarations into one shape per kind and one
//! set of [`Keys`] (the annotation keys and environment variables to build)
//! when it is built from the policy file: see
//! [`policy::Reads`](crate::policy::Reads).
//!
//! A value whose type is not the one the shape expects (`spec: "oops"`,
//! `containers: {}`) is kept whole, so a policy sees the same wrong shape it
//! would see in the whole object and refuses the same way.
//!
//! A policy that reads a member outside its declaration would see it
//! missing, and one that writes outside it is refused ([`holds`]). So
//! `calmplane_testkit::review::view_matches_whole` runs the policies over the
//! view and over the whole object and requires the same patch, changes and
//! warnings: in every policy test (`tests/policies/`), on generated objects
//! (`tests/properties.rs`), on every corpus manifest (`tests/corpus.rs`) and
//! on every fuzz input (`fuzz_check`).
//!
//! # What a view may cost
//!
//! A `serde_json::Value` is 72 bytes, so a body can become a much larger
//! tree: `"args": ["", "", ...]` costs 24 times its text, and more while its
//! array grows. Everything the parser builds is counted by a [`Budget`]:
//! each object may cost at most [`crate::budget::view_limit`] of its body,
//! and on the server all views in flight together draw from one pool
//! ([`crate::budget::VIEW_POOL`]), so the sum is bounded whatever the mix of
//! requests. The parse stops with [`Budget::exceeded`] set when either runs
//! out. Members skipped unbuilt cost nothing.
//!
//! | file | holds |
//! |---|---|
//! | `shape.rs` | [`Shape`], and how declarations merge |
//! | `seed.rs` | the serde seeds that build what a shape names |
//! | `budget.rs` | [`Budget`]: what a view may cost |

mod budget;
mod seed;
mod shape;

pub use budget::{Budget, Exceeded};
pub use seed::KeySeed;
pub use shape::Shape;

use seed::ShapeSeed;
use serde::de::{self, DeserializeSeed};
use serde_json::value::RawValue;
use serde_json::Value;

/// Which annotation keys and environment variables a view builds, of those
/// its [`Shape`] marks [`Shape::Annotations`] and [`Shape::EnvVars`]. A
/// Pod's ten ordinary variables were half of the time a typical Pod took;
/// unread ones now cost a skip.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Keys {
    /// Annotation keys to build.
    annotations: Vec<String>,
    /// Environment variable names to build.
    env_names: Vec<String>,
    /// Build every annotation and variable: the whole object, or a pipeline
    /// of policies that are not built from a policy file and so declare
    /// nothing.
    everything: bool,
}

impl Keys {
    /// These annotation keys and environment variables.
    pub fn new(
        annotations: impl IntoIterator<Item = String>,
        env_names: impl IntoIterator<Item = String>,
    ) -> Keys {
        let mut keys = Keys::default();
        keys.add(annotations, env_names);
        keys
    }

    /// Every annotation and every variable.
    pub fn everything() -> Keys {
        EVERYTHING.clone()
    }

    /// Also build these annotation keys and environment variables.
    pub fn add(
        &mut self,
        annotations: impl IntoIterator<Item = String>,
        env_names: impl IntoIterator<Item = String>,
    ) {
        for key in annotations {
            if !self.annotations.contains(&key) {
                self.annotations.push(key);
            }
        }
        for name in env_names {
            if !self.env_names.contains(&name) {
                self.env_names.push(name);
            }
        }
    }

    /// Whether the annotation `key` is built.
    pub fn annotation(&self, key: &str) -> bool {
        self.everything || self.annotations.iter().any(|k| k == key)
    }

    /// Whether the environment variable `name` is built.
    pub fn env_var(&self, name: &str) -> bool {
        self.everything || self.env_names.iter().any(|n| n == name)
    }
}

/// [`Keys::everything`].
pub static EVERYTHING: &Keys = &Keys {
    annotations: Vec::new(),
    env_names: Vec::new(),
    everything: true,
};

/// A view, and the text its shape keeps.
#[derive(Debug)]
pub struct Parsed<'a> {
    /// The members the shape names, built.
    pub value: Value,
    /// The text of the member the shape marks [`Shape::Text`], when the
    /// object has it and it is not `null`.
    pub text: Option<&'a RawValue>,
}

/// Build the members of `text` that `shape` and `keys` name, charging what
/// is built to `budget`.
pub fn parse<'a>(
    text: &'a str,
    shape: &Shape,
    keys: &Keys,
    budget: &Budget,
) -> Result<Parsed<'a>, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(text);
    let parsed = Seed(shape, keys, budget).deserialize(&mut de)?;
    de.end()?;
    Ok(parsed)
}

/// [`parse`] as a `DeserializeSeed`, to build a view in the same pass that
/// reads what surrounds it (the AdmissionReview envelope). Only for
/// serde_json's deserializers: [`Shape::Text`] borrows a `RawValue`.
pub struct Seed<'s>(pub &'s Shape, pub &'s Keys, pub &'s Budget);

impl<'de> DeserializeSeed<'de> for Seed<'_> {
    type Value = Parsed<'de>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Parsed<'de>, D::Error> {
        let mut text = None;
        let value = ShapeSeed {
            shape: self.0,
            keys: self.1,
            budget: self.2,
            text: &mut text,
        }
        .deserialize(d)?;
        Ok(Parsed { value, text })
    }
}

/// Whether a view built with `shape` and `keys` holds the member at `path`
/// as the object has it, so that a patch operation there says what it means.
/// `doc` is the view (as edited so far).
///
/// A view leaves out what no policy reads. Writing a member it left out
/// would be wrong in a way no test of the view alone can see: the view has
/// no such member, so [`Mutation`](crate::patch::Mutation) would `add` it,
/// and on the real object `add` replaces whatever is there (an annotation
/// nobody read, a whole `spec`). So every path a policy writes must be named
/// by the shape: a member of [`Shape::Members`], anything inside
/// [`Shape::All`], an element of [`Shape::Each`], an annotation [`Keys`]
/// names, or the `name` and `value` of an environment variable that was read.
pub fn holds(shape: &Shape, keys: &Keys, doc: &Value, path: &[&str]) -> bool {
    let mut shape = shape;
    for (i, seg) in path.iter().enumerate() {
        while let Shape::Text(inner) = shape {
            shape = inner;
        }
        match shape {
            Shape::All => return true,
            Shape::Members(members) => match members.iter().find(|(name, _)| name == seg) {
                Some((_, inner)) => shape = inner,
                None => return false,
            },
            Shape::Each(element) => {
                if seg.parse::<usize>().is_err() {
                    return false;
                }
                shape = element;
            }
            Shape::Annotations => return keys.annotation(seg),
            Shape::EnvVars => {
                // A new variable is written whole; an existing one only if
                // it was read (an unread one is a `null` placeholder).
                let existing = at(doc, &path[..=i]);
                return match (existing, path.get(i + 1)) {
                    (None, _) => seg.parse::<usize>().is_ok(),
                    (Some(Value::Object(_)), None | Some(&"name") | Some(&"value")) => {
                        path.len() <= i + 2
                    }
                    _ => false,
                };
            }
            Shape::Text(_) => unreachable!("unwrapped above"),
        }
    }
    true
}

/// The member of `doc` at `path` (segments unescaped, as the policies write
/// them): `Value::pointer` without building and re-parsing a pointer string,
/// which cost a Pod with lease selectors in its environment about 12,000
/// instructions per review (`cargo bench --bench icount`, lease-pod, at
/// `6049619`).
fn at<'a>(doc: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(doc, |value, seg| match value {
        Value::Object(members) => members.get(*seg),
        Value::Array(items) => seg.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// What the shipped Pod policies read: a test's own copy, so that these
    /// tests hold the machinery and not the policies' declarations.
    fn pod() -> Shape {
        let container = |list: &'static str| {
            Shape::at(&["spec", list, "*", "name"], Shape::All)
                .merge(Shape::at(&["spec", list, "*", "env"], Shape::EnvVars))
                .merge(Shape::at(&["spec", list, "*", "args"], Shape::All))
                .merge(Shape::at(
                    &["spec", list, "*", "lifecycle", "preStop"],
                    Shape::All,
                ))
        };
        metadata()
            .merge(Shape::at(&["spec", "os"], Shape::All))
            .merge(Shape::at(&["spec", "nodeSelector"], Shape::All))
            .merge(Shape::at(&["spec", "dnsConfig"], Shape::All))
            .merge(Shape::at(
                &["spec", "terminationGracePeriodSeconds"],
                Shape::All,
            ))
            .merge(container("containers"))
            .merge(container("initContainers"))
    }

    fn metadata() -> Shape {
        ["name", "generateName", "namespace"]
            .into_iter()
            .map(|m| Shape::at(&["metadata", m], Shape::All))
            .fold(
                Shape::at(&["metadata", "annotations"], Shape::Annotations),
                Shape::merge,
            )
    }

    fn deployment() -> Shape {
        metadata()
            .merge(Shape::at(&["spec", "strategy"], Shape::All))
            .merge(Shape::at(
                &["spec", "template"],
                Shape::Text(Box::new(Shape::at(
                    &["metadata", "annotations"],
                    Shape::Annotations,
                ))),
            ))
    }

    #[test]
    fn keeps_only_the_named_members() {
        let text = r#"{"metadata": {"name": "p", "uid": "u", "annotations": {"a/b": "1"}},
            "spec": {"containers": [{"name": "c", "image": "i", "env": [{"name": "E", "valueFrom": {}}],
                                     "lifecycle": {"postStart": {}, "preStop": {"sleep": {"seconds": 1}}}}, 3],
                     "volumes": [{"name": "v"}], "dnsConfig": {"options": []}},
            "status": {"phase": "Pending"}}"#;
        let view = parse(text, &pod(), EVERYTHING, &Budget::unlimited())
            .unwrap()
            .value;
        assert_eq!(
            view,
            json!({"metadata": {"name": "p", "annotations": {"a/b": "1"}},
                   "spec": {"containers": [{"name": "c", "env": [{"name": "E"}],
                                            "lifecycle": {"preStop": {"sleep": {"seconds": 1}}}}, 3],
                            "dnsConfig": {"options": []}}})
        );
    }

    #[test]
    fn unexpected_types_are_kept_whole() {
        let text = r#"{"metadata": ["x", {"name": 1}], "spec": {"containers": {"0": {"image": "i"}}}, "kind": 1.5}"#;
        let view = parse(text, &pod(), EVERYTHING, &Budget::unlimited())
            .unwrap()
            .value;
        assert_eq!(
            view,
            json!({"metadata": ["x", {"name": 1}], "spec": {"containers": {"0": {"image": "i"}}}})
        );
        assert_eq!(
            parse("null", &pod(), EVERYTHING, &Budget::unlimited())
                .unwrap()
                .value,
            Value::Null
        );
        assert_eq!(
            parse(r#""s""#, &deployment(), EVERYTHING, &Budget::unlimited())
                .unwrap()
                .value,
            json!("s")
        );
    }

    #[test]
    fn escaped_names_and_duplicates_read_as_value_reads_them() {
        let text = r#"{"meta\u0064ata": {"name": "a", "name": "b"}, "spec": {}}"#;
        let view = parse(text, &pod(), EVERYTHING, &Budget::unlimited())
            .unwrap()
            .value;
        let whole: Value = serde_json::from_str(text).unwrap();
        assert_eq!(view, whole);
    }

    #[test]
    fn skipped_members_must_still_be_json() {
        assert!(parse(
            r#"{"status": {"phase": }}"#,
            &pod(),
            EVERYTHING,
            &Budget::unlimited()
        )
        .is_err());
        assert!(parse(
            r#"{"status": 1} x"#,
            &pod(),
            EVERYTHING,
            &Budget::unlimited()
        )
        .is_err());
    }

    #[test]
    fn reads_only_the_annotations_and_variables_the_policy_file_names() {
        let reads = Keys::new(
            ["calmplane.dev/skip".to_string()],
            ["LEASE_SELECTOR".to_string()],
        );
        let text = r#"{"metadata": {"annotations": {"calmplane.dev/skip": "dns", "other": "x"}},
            "spec": {"containers": [{"env": [{"name": "A", "value": "1"}, 7,
                {"value": "metadata.name=p", "name": "LEASE_SELECTOR", "valueFrom": null},
                {"name": "LEASE_SELECTOR\u0021"}]}]}}"#;
        let view = parse(text, &pod(), &reads, &Budget::unlimited())
            .unwrap()
            .value;
        assert_eq!(
            view,
            json!({"metadata": {"annotations": {"calmplane.dev/skip": "dns"}},
                   "spec": {"containers": [{"env": [null, null,
                       {"name": "LEASE_SELECTOR", "value": "metadata.name=p"}, null]}]}})
        );
        let everything = parse(text, &pod(), EVERYTHING, &Budget::unlimited())
            .unwrap()
            .value;
        assert_eq!(everything["metadata"]["annotations"]["other"], "x");
        assert_eq!(
            everything["spec"]["containers"][0]["env"][0],
            json!({"name": "A", "value": "1"})
        );
        assert_eq!(everything["spec"]["containers"][0]["env"][1], Value::Null);
    }

    #[test]
    fn keeps_the_template_text_beside_its_view() {
        let text = r#"{"spec": {"replicas": 1, "template": {"metadata": {"annotations": {"a": "1"}, "labels": {}}, "spec": {}}}}"#;
        let parsed = parse(text, &deployment(), EVERYTHING, &Budget::unlimited()).unwrap();
        assert_eq!(
            parsed.value,
            json!({"spec": {"template": {"metadata": {"annotations": {"a": "1"}}}}})
        );
        assert_eq!(
            parsed.text.map(RawValue::get),
            Some(r#"{"metadata": {"annotations": {"a": "1"}, "labels": {}}, "spec": {}}"#)
        );
        // A null or missing template has no text; a list is not a spec; of
        // duplicates the last counts, as in the view itself.
        for (text, found) in [
            (r#"{"spec": {"template": null}}"#, None),
            (r#"{"spec": {}}"#, None),
            (r#"{"spec": [{"template": 1}]}"#, None),
            (r#"{"spec": {"template": 1, "template": 2}}"#, Some("2")),
            (r#"{"spec": {"template": 1}, "spec": {}}"#, None),
            (r#"{"sp\u0065c": {"template": 3}}"#, Some("3")),
        ] {
            let parsed = parse(text, &deployment(), EVERYTHING, &Budget::unlimited()).unwrap();
            assert_eq!(parsed.text.map(RawValue::get), found, "{text}");
        }
    }

    #[test]
    fn a_view_holds_what_its_shape_names_and_nothing_else() {
        let reads = Keys::new(
            [
                "calmplane.dev/skip".to_string(),
                "calmplane.dev/lease-selector".to_string(),
                "calmplane.dev/lease-scope".to_string(),
            ],
            ["LEASE_SELECTOR".to_string()],
        );
        let pod_doc = json!({"spec": {"containers": [{"env": [null, {"name": "LEASE_SELECTOR", "value": "x"}]}]}});
        let holds = |path: &[&str]| holds(&pod(), &reads, &pod_doc, path);
        assert!(holds(&["spec", "dnsConfig", "options"]));
        assert!(holds(&["spec", "terminationGracePeriodSeconds"]));
        assert!(holds(&["spec", "containers", "0", "lifecycle", "preStop"]));
        assert!(holds(&[
            "metadata",
            "annotations",
            "calmplane.dev/lease-selector"
        ]));
        assert!(holds(&["spec", "containers", "0", "env", "1", "value"]));
        assert!(holds(&["spec", "containers", "0", "env", "2"]));
        // Members the view leaves out, or keeps only in part.
        assert!(!holds(&["spec", "volumes"]));
        assert!(!holds(&["spec", "containers", "0", "image"]));
        assert!(!holds(&[
            "spec",
            "containers",
            "0",
            "lifecycle",
            "postStart"
        ]));
        assert!(!holds(&["metadata", "annotations", "someone-elses"]));
        assert!(!holds(&["metadata", "labels", "app"]));
        assert!(!holds(&["spec", "containers", "0", "env", "0", "value"]));
        assert!(!holds(&[
            "spec",
            "containers",
            "0",
            "env",
            "1",
            "valueFrom"
        ]));
        // A Deployment's template is kept as text, its annotations in the view.
        let d = json!({});
        assert!(holds_in(
            &deployment(),
            &reads,
            &d,
            &[
                "spec",
                "template",
                "metadata",
                "annotations",
                "calmplane.dev/lease-scope"
            ]
        ));
        assert!(!holds_in(
            &deployment(),
            &reads,
            &d,
            &["spec", "template", "spec", "containers"]
        ));
        assert!(holds_in(
            &deployment(),
            &reads,
            &d,
            &["spec", "strategy", "rollingUpdate", "maxSurge"]
        ));
        assert!(!holds_in(&deployment(), &reads, &d, &["spec", "replicas"]));
    }

    fn holds_in(shape: &Shape, reads: &Keys, doc: &Value, path: &[&str]) -> bool {
        holds(shape, reads, doc, path)
    }

    #[test]
    fn a_view_that_would_cost_more_than_its_budget_is_refused() {
        // Two million empty args: 6 MB of text, 144 MB of `Value`s.
        let args = vec!["\"\""; 2_000_000].join(",");
        let text = format!(r#"{{"spec": {{"containers": [{{"name": "c", "args": [{args}]}}]}}}}"#);
        let limit = crate::budget::view_limit(text.len());
        let budget = Budget::new(limit);
        let err = parse(&text, &pod(), EVERYTHING, &budget).unwrap_err();
        assert_eq!(budget.exceeded(), Some(Exceeded::Limit));
        assert!(
            err.to_string()
                .contains(&format!("more than {limit} bytes")),
            "{err}"
        );
        // Unread variables keep their indexes with a `null` each: counted too.
        let env = vec!["1"; 200_000].join(",");
        let text = format!(r#"{{"spec": {{"containers": [{{"env": [{env}]}}]}}}}"#);
        let budget = Budget::new(crate::budget::view_limit(text.len()));
        assert!(parse(&text, &pod(), EVERYTHING, &budget).is_err());
        assert_eq!(budget.exceeded(), Some(Exceeded::Limit));
        // A member of the wrong type is built whole, and charged whole.
        let nested = vec!["[]"; 100_000].join(",");
        let text = format!(r#"{{"metadata": [{nested}]}}"#);
        let budget = Budget::new(crate::budget::view_limit(text.len()));
        assert!(parse(&text, &pod(), EVERYTHING, &budget).is_err());
    }
}
