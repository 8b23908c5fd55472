//! Editing an object while recording the RFC 6902 operations that reproduce the edit.
//!
//! Policies never see typed structs. They edit the admitted object as a
//! `serde_json::Value` through [`Mutation`], which applies every change in place
//! *and* appends the matching JSON Patch operation. This gives us three things
//! at once:
//!
//! * nothing is lost: fields that k8s-openapi does not know about are never
//!   touched, because no (de)serialisation through a schema ever happens;
//! * no diff: the patch is a by-product of the edit, so its cost is
//!   proportional to what changed, not to the size of the object;
//! * no clone: the one `Value` parsed from the request body is edited in place.
//!
//! Pointer segments are escaped by `jsonptr` (`/` → `~1`, `~` → `~0`), so an
//! annotation key like `calmplane.dev/skip` is safe.
//!
//! On `/mutate` the document is a view ([`crate::view`]) that holds only what
//! the policies read. A [`Mutation`] made with [`Mutation::in_view`] refuses,
//! with a warning that names the path, any write the view does not hold
//! ([`crate::view::holds`]): such a write would replace, on the real object,
//! a member the view never saw. A policy that tries it fails the tests that
//! compare the view with the whole object, instead of shipping.

use json_patch::{AddOperation, PatchOperation, RemoveOperation, ReplaceOperation};
use jsonptr::PointerBuf;
use serde::Serialize;
use serde_json::{Map, Value};

/// One human-readable line about something a policy changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    /// The policy that made the change, so a reader knows whom to ask (and
    /// which name to put in `calmplane.dev/skip`).
    pub policy: &'static str,
    /// The JSON pointer of the changed member, escaped as in the patch.
    pub path: String,
    /// What changed and why, for people.
    pub message: String,
}

/// What an edit did. A policy that only edits ignores it; one that must
/// know whether something changed (to raise a grace period, or warn) asks
/// [`Edit::changed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Edit {
    /// The document changed and one patch operation was recorded.
    Changed,
    /// The member already held the value: no operation.
    Unchanged,
    /// The object has an unexpected shape at the path (for example
    /// `spec: "oops"`), so the edit was skipped rather than producing a patch
    /// the apiserver could not apply. A warning says where.
    Refused,
}

impl Edit {
    /// Whether the document changed.
    pub fn changed(self) -> bool {
        self == Edit::Changed
    }
}

/// What may be written: anything in a whole object, or only what a view holds.
#[derive(Debug, Clone, Copy)]
enum Writable<'r> {
    Whole,
    View(&'r crate::view::Shape, &'r crate::view::Keys),
}

/// An object being edited, plus the operations and notes that describe the edit.
#[derive(Debug)]
pub struct Mutation<'r> {
    /// The object, edited in place.
    doc: Value,
    /// One RFC 6902 operation per edit, in order: the patch.
    ops: Vec<PatchOperation>,
    /// One note per edit, for previews and logs.
    changes: Vec<Change>,
    /// For AdmissionResponse.warnings: what users should know.
    warnings: Vec<String>,
    /// The policy whose edits are being recorded, named in changes and warnings.
    policy: &'static str,
    /// Whether `doc` is a view, whose writes are checked against its shape.
    writable: Writable<'r>,
}

/// Look up `path` in `v`; array elements are addressed by their decimal index.
pub fn lookup<'v>(v: &'v Value, path: &[&str]) -> Option<&'v Value> {
    path.iter().try_fold(v, |cur, seg| match cur {
        Value::Object(map) => map.get(*seg),
        Value::Array(items) => seg.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => None,
    })
}

/// Like [`lookup`], but treats JSON `null` as absent, which is what the
/// apiserver does for optional fields.
pub fn present<'v>(v: &'v Value, path: &[&str]) -> Option<&'v Value> {
    lookup(v, path).filter(|v| !v.is_null())
}

/// The string at `path`, if it is one.
pub fn str_at<'v>(v: &'v Value, path: &[&str]) -> Option<&'v str> {
    lookup(v, path).and_then(Value::as_str)
}

fn pointer(path: &[&str]) -> PointerBuf {
    PointerBuf::from_tokens(path.iter().copied())
}

impl<'r> Mutation<'r> {
    /// Start editing `doc`, a whole object.
    pub fn new(doc: Value) -> Self {
        Mutation {
            doc,
            ops: Vec::new(),
            changes: Vec::new(),
            warnings: Vec::new(),
            policy: "",
            writable: Writable::Whole,
        }
    }

    /// Start editing `doc`, a view built with `shape` and `keys`: writes
    /// outside what it holds are refused (see the module docs).
    pub fn in_view(doc: Value, shape: &'r crate::view::Shape, keys: &'r crate::view::Keys) -> Self {
        Mutation {
            writable: Writable::View(shape, keys),
            ..Mutation::new(doc)
        }
    }

    /// A copy of this mutation's document, to edit with the same rule
    /// (report-only policies edit a scratch copy).
    pub fn scratch(&self) -> Mutation<'r> {
        Mutation {
            writable: self.writable,
            ..Mutation::new(self.doc.clone())
        }
    }

    /// Refuse a write the view does not hold; `true` if refused.
    fn outside_view(&mut self, path: &[&str]) -> bool {
        let Writable::View(shape, keys) = self.writable else {
            return false;
        };
        if crate::view::holds(shape, keys, &self.doc, path) {
            return false;
        }
        self.warn(format!(
            "calmplane {}: internal error, write refused: {} is not in the view of the object that /mutate reads (src/view.rs); the object is admitted without it",
            self.policy,
            pointer(path)
        ));
        true
    }

    /// Name the policy that the following edits belong to.
    pub fn begin(&mut self, policy: &'static str) {
        self.policy = policy;
    }

    /// The document as edited so far.
    pub fn doc(&self) -> &Value {
        &self.doc
    }

    /// The patch operations recorded so far.
    pub fn ops(&self) -> &[PatchOperation] {
        &self.ops
    }

    /// The change notes recorded so far.
    pub fn changes(&self) -> &[Change] {
        &self.changes
    }

    /// The warnings recorded so far.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The edited document, the patch, the change notes and the warnings.
    pub fn into_parts(self) -> (Value, Vec<PatchOperation>, Vec<Change>, Vec<String>) {
        (self.doc, self.ops, self.changes, self.warnings)
    }

    /// The value at `path` in the document as edited so far.
    pub fn get(&self, path: &[&str]) -> Option<&Value> {
        lookup(&self.doc, path)
    }

    /// A warning for the user (AdmissionResponse.warnings). Warnings quote
    /// the object (a selector, an annotation), which the client chose: they
    /// are clipped, as every message calmplane writes is.
    pub fn warn(&mut self, message: impl Into<String>) {
        self.warnings.push(crate::clip::clip(message.into()));
    }

    fn note(&mut self, path: &[&str], message: String) {
        let path = pointer(path).as_str().to_owned();
        self.note_at(path, message);
    }

    fn note_at(&mut self, path: String, message: String) {
        self.changes.push(Change {
            policy: self.policy,
            path,
            message: crate::clip::clip(message),
        });
    }

    /// Set `path` to `value`, creating missing (or `null`) parent objects.
    ///
    /// Emits `replace` when the member exists, `add` when it does not, and
    /// nothing when it already holds `value`. When parents are missing, a single
    /// `add` carries the whole new subtree, because RFC 6902 `add` does not
    /// create intermediate members.
    pub fn set(&mut self, path: &[&str], value: Value, message: impl Into<String>) -> Edit {
        if self.outside_view(path) {
            return Edit::Refused;
        }
        let Some((last, parents)) = path.split_last() else {
            return self.refuse(path, "refusing to replace the whole object");
        };
        let depth = match existing_depth(&self.doc, parents) {
            Ok(depth) => depth,
            Err(reason) => return self.refuse(path, reason),
        };
        if depth < parents.len() {
            // Build the missing subtree bottom-up and attach it with one `add`
            // (or `replace`, when the attachment point holds `null`).
            let subtree = nest(&parents[depth + 1..], last, value);
            return self.write(&path[..=depth], subtree, path, message.into());
        }
        let unchanged = match lookup(&self.doc, parents) {
            Some(Value::Object(map)) => map.get(*last) == Some(&value),
            Some(Value::Array(items)) => match last.parse::<usize>() {
                Ok(i) if i < items.len() => items[i] == value,
                Ok(i) if i == items.len() => false,
                _ => return self.refuse(path, "array index out of range"),
            },
            _ => return self.refuse(path, "a parent is not an object"),
        };
        if unchanged {
            return Edit::Unchanged;
        }
        self.write(path, value, path, message.into())
    }

    /// Append `value` to the array at `path`, creating the array if it is missing.
    pub fn append(&mut self, path: &[&str], value: Value, message: impl Into<String>) -> Edit {
        match lookup(&self.doc, path) {
            Some(Value::Array(items)) => {
                let index = items.len().to_string();
                let mut full: Vec<&str> = path.to_vec();
                full.push(&index);
                self.set(&full, value, message)
            }
            Some(Value::Null) | None => self.set(path, Value::Array(vec![value]), message),
            Some(_) => self.refuse(path, "not an array"),
        }
    }

    /// Remove the member at `path` if it exists. Returns whether it did.
    pub fn remove(&mut self, path: &[&str], message: impl Into<String>) -> Edit {
        if self.outside_view(path) {
            return Edit::Refused;
        }
        let Some((last, parents)) = path.split_last() else {
            return self.refuse(path, "refusing to remove the whole object");
        };
        let removed = match lookup_mut(&mut self.doc, parents) {
            // shift_remove keeps the order of the other members, so a
            // preview shows the object as the user wrote it.
            Some(Value::Object(map)) => map.shift_remove(*last).is_some(),
            _ => false,
        };
        if !removed {
            return Edit::Unchanged;
        }
        self.ops.push(PatchOperation::Remove(RemoveOperation {
            path: pointer(path),
        }));
        self.note(path, message.into());
        Edit::Changed
    }

    /// Apply one write at `at` to the document and record it: `replace` when
    /// the target exists, `add` otherwise. `noted` is the path the user asked
    /// for, named in the change note (it is deeper than `at` when a missing
    /// subtree is added whole).
    fn write(&mut self, at: &[&str], value: Value, noted: &[&str], message: String) -> Edit {
        let Some((last, parents)) = at.split_last() else {
            return self.refuse(noted, "refusing to replace the whole object");
        };
        let existed = match lookup_mut(&mut self.doc, parents) {
            Some(Value::Object(map)) => map.insert((*last).to_string(), value.clone()).is_some(),
            Some(Value::Array(items)) => match last.parse::<usize>() {
                Ok(i) if i < items.len() => {
                    items[i] = value.clone();
                    true
                }
                Ok(i) if i == items.len() => {
                    items.push(value.clone());
                    false
                }
                _ => return self.refuse(noted, "array index out of range"),
            },
            _ => return self.refuse(noted, "a parent is not an object"),
        };
        let path = pointer(at);
        // Escaped once: the note names the same member unless a missing
        // subtree was added whole.
        let noted = if noted == at {
            path.as_str().to_owned()
        } else {
            pointer(noted).as_str().to_owned()
        };
        self.ops.push(if existed {
            PatchOperation::Replace(ReplaceOperation { path, value })
        } else {
            PatchOperation::Add(AddOperation { path, value })
        });
        self.note_at(noted, message);
        Edit::Changed
    }

    fn refuse(&mut self, path: &[&str], reason: &'static str) -> Edit {
        self.warn(format!(
            "calmplane {}: skipped, cannot edit {}: {reason}",
            self.policy,
            pointer(path)
        ));
        Edit::Refused
    }
}

/// How many leading segments of `parents` exist as containers in `doc`; an
/// error when one exists but cannot hold children.
fn existing_depth(doc: &Value, parents: &[&str]) -> Result<usize, &'static str> {
    let mut cur = doc;
    for (depth, seg) in parents.iter().enumerate() {
        let next = match cur {
            Value::Object(map) => match map.get(*seg) {
                Some(Value::Null) | None => return Ok(depth),
                Some(next) => next,
            },
            Value::Array(items) => seg
                .parse::<usize>()
                .ok()
                .and_then(|i| items.get(i))
                .ok_or("array index out of range")?,
            _ => return Err("a parent is not an object"),
        };
        if !matches!(next, Value::Object(_) | Value::Array(_)) {
            return Err("a parent is not an object");
        }
        cur = next;
    }
    Ok(parents.len())
}

/// `{"a": {"b": value}}` for `inner = ["a"]`, `last = "b"`.
fn nest(inner: &[&str], last: &str, value: Value) -> Value {
    let mut v = Value::Object(Map::from_iter([(last.to_string(), value)]));
    for seg in inner.iter().rev() {
        v = Value::Object(Map::from_iter([((*seg).to_string(), v)]));
    }
    v
}

fn lookup_mut<'v>(v: &'v mut Value, path: &[&str]) -> Option<&'v mut Value> {
    path.iter().try_fold(v, |cur, seg| match cur {
        Value::Object(map) => map.get_mut(*seg),
        Value::Array(items) => seg.parse::<usize>().ok().and_then(|i| items.get_mut(i)),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn apply(orig: &Value, ops: &[PatchOperation]) -> Value {
        let mut v = orig.clone();
        json_patch::patch(&mut v, ops).expect("patch applies");
        v
    }

    #[test]
    fn add_under_missing_parent_creates_parent_in_one_op() {
        let orig = json!({"metadata": {"name": "x"}});
        let mut m = Mutation::new(orig.clone());
        m.begin("t");
        assert_eq!(
            m.set(&["metadata", "annotations", "a/b~c"], json!("v"), "m"),
            Edit::Changed
        );
        let ops = serde_json::to_value(m.ops()).unwrap();
        assert_eq!(
            ops,
            json!([{"op": "add", "path": "/metadata/annotations", "value": {"a/b~c": "v"}}])
        );
        assert_eq!(apply(&orig, m.ops()), *m.doc());
        assert_eq!(m.changes()[0].path, "/metadata/annotations/a~1b~0c");
    }

    #[test]
    fn escapes_slash_and_tilde_in_existing_map() {
        let orig = json!({"metadata": {"annotations": {"x": "1"}}});
        let mut m = Mutation::new(orig.clone());
        m.set(
            &["metadata", "annotations", "calmplane.dev/a~b"],
            json!("v"),
            "m",
        );
        let ops = serde_json::to_value(m.ops()).unwrap();
        assert_eq!(ops[0]["path"], "/metadata/annotations/calmplane.dev~1a~0b");
        assert_eq!(apply(&orig, m.ops()), *m.doc());
    }

    #[test]
    fn null_parent_is_replaced() {
        let orig = json!({"metadata": {"annotations": null}});
        let mut m = Mutation::new(orig.clone());
        m.set(&["metadata", "annotations", "k"], json!("v"), "m");
        assert_eq!(*m.doc(), json!({"metadata": {"annotations": {"k": "v"}}}));
        assert_eq!(serde_json::to_value(m.ops()).unwrap()[0]["op"], "replace");
        assert_eq!(apply(&orig, m.ops()), *m.doc());
    }

    #[test]
    fn equal_value_is_a_no_op_and_shape_errors_are_refused() {
        let orig = json!({"spec": {"a": 1}, "bad": "str", "list": [1]});
        let mut m = Mutation::new(orig.clone());
        assert_eq!(m.set(&["spec", "a"], json!(1), "m"), Edit::Unchanged);
        assert_eq!(m.set(&["bad", "x"], json!(1), "m"), Edit::Refused);
        assert_eq!(m.set(&["list", "5"], json!(1), "m"), Edit::Refused);
        assert_eq!(m.set(&[], json!(1), "m"), Edit::Refused);
        assert!(m.ops().is_empty());
        assert_eq!(*m.doc(), orig);
        assert_eq!(m.warnings().len(), 3);
    }

    #[test]
    fn a_view_refuses_writes_it_does_not_hold() {
        use crate::view::{Keys, Shape};
        let keys = Keys::new([crate::annotations::SKIP.to_string()], []);
        let shape = Shape::at(&["metadata", "annotations"], Shape::Annotations)
            .merge(Shape::at(&["spec", "dnsConfig"], Shape::All))
            .merge(Shape::at(&["spec", "containers", "*", "name"], Shape::All));
        // The view of a Pod whose spec has volumes nobody read.
        let view =
            json!({"metadata": {"annotations": {}}, "spec": {"containers": [{"name": "c"}]}});
        let mut m = Mutation::in_view(view.clone(), &shape, &keys);
        m.begin("future-policy");
        assert_eq!(m.set(&["spec", "volumes"], json!([]), "m"), Edit::Refused);
        assert_eq!(
            m.set(&["metadata", "annotations", "team"], json!("x"), "m"),
            Edit::Refused
        );
        assert_eq!(
            m.remove(&["spec", "containers", "0", "image"], "m"),
            Edit::Refused
        );
        assert!(m.ops().is_empty());
        assert_eq!(*m.doc(), view);
        assert_eq!(m.warnings().len(), 3);
        assert!(
            m.warnings()[0].contains("/spec/volumes"),
            "{}",
            m.warnings()[0]
        );
        // What the view holds is written as before.
        assert_eq!(
            m.set(&["spec", "dnsConfig", "options"], json!([]), "m"),
            Edit::Changed
        );
        assert_eq!(
            m.set(
                &["metadata", "annotations", "calmplane.dev/skip"],
                json!("dns"),
                "m"
            ),
            Edit::Changed
        );
        // A whole object takes any write.
        let mut whole = Mutation::new(view);
        assert_eq!(
            whole.set(&["spec", "volumes"], json!([]), "m"),
            Edit::Changed
        );
    }

    #[test]
    fn append_and_remove() {
        let orig = json!({"spec": {"l": [1], "m": {"k": 1}}});
        let mut m = Mutation::new(orig.clone());
        assert_eq!(m.append(&["spec", "l"], json!(2), "m"), Edit::Changed);
        assert_eq!(m.append(&["spec", "new"], json!(3), "m"), Edit::Changed);
        assert_eq!(m.append(&["spec", "m"], json!(3), "m"), Edit::Refused);
        assert_eq!(m.remove(&["spec", "m", "k"], "m"), Edit::Changed);
        assert_eq!(m.remove(&["spec", "m", "absent"], "m"), Edit::Unchanged);
        assert_eq!(
            *m.doc(),
            json!({"spec": {"l": [1, 2], "new": [3], "m": {}}})
        );
        assert_eq!(apply(&orig, m.ops()), *m.doc());
    }
}
