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

use json_patch::{AddOperation, PatchOperation, RemoveOperation, ReplaceOperation};
use jsonptr::PointerBuf;
use serde::Serialize;
use serde_json::{Map, Value};

/// One human-readable line about something a policy changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    pub policy: &'static str,
    pub path: String,
    pub message: String,
}

/// Why an edit was refused. The object had an unexpected shape at `path`
/// (for example `spec: "oops"`); the edit is skipped rather than producing a
/// patch the apiserver could not apply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot edit {path}: {reason}")]
pub struct ShapeError {
    pub path: String,
    pub reason: &'static str,
}

/// An object being edited, plus the operations and notes that describe the edit.
#[derive(Debug)]
pub struct Mutation {
    doc: Value,
    ops: Vec<PatchOperation>,
    changes: Vec<Change>,
    warnings: Vec<String>,
    policy: &'static str,
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

impl Mutation {
    pub fn new(doc: Value) -> Self {
        Mutation {
            doc,
            ops: Vec::new(),
            changes: Vec::new(),
            warnings: Vec::new(),
            policy: "",
        }
    }

    /// Name the policy that the following edits belong to.
    pub fn begin(&mut self, policy: &'static str) {
        self.policy = policy;
    }

    pub fn doc(&self) -> &Value {
        &self.doc
    }

    pub fn ops(&self) -> &[PatchOperation] {
        &self.ops
    }

    pub fn changes(&self) -> &[Change] {
        &self.changes
    }

    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    pub fn into_parts(self) -> (Value, Vec<PatchOperation>, Vec<Change>, Vec<String>) {
        (self.doc, self.ops, self.changes, self.warnings)
    }

    pub fn get(&self, path: &[&str]) -> Option<&Value> {
        lookup(&self.doc, path)
    }

    /// A warning for the user (AdmissionResponse.warnings).
    pub fn warn(&mut self, message: impl Into<String>) {
        self.warnings.push(message.into());
    }

    fn note(&mut self, path: &[&str], message: String) {
        self.changes.push(Change {
            policy: self.policy,
            path: pointer(path).to_string(),
            message,
        });
    }

    /// Set `path` to `value`, creating missing (or `null`) parent objects.
    ///
    /// Emits `replace` when the member exists, `add` when it does not, and
    /// nothing when it already holds `value`. When parents are missing, a single
    /// `add` carries the whole new subtree, because RFC 6902 `add` does not
    /// create intermediate members. Returns whether anything changed.
    pub fn set(
        &mut self,
        path: &[&str],
        value: Value,
        message: impl Into<String>,
    ) -> Result<bool, ShapeError> {
        let Some((last, parents)) = path.split_last() else {
            return Err(self.shape(path, "refusing to replace the whole object"));
        };
        // Find the deepest existing container, remembering how many segments exist.
        let mut depth = 0;
        {
            let mut cur = &self.doc;
            for seg in parents {
                match cur {
                    Value::Object(map) => match map.get(*seg) {
                        Some(next @ (Value::Object(_) | Value::Array(_))) => cur = next,
                        Some(Value::Null) | None => break,
                        Some(_) => return Err(self.shape(path, "a parent is not an object")),
                    },
                    Value::Array(items) => {
                        match seg.parse::<usize>().ok().and_then(|i| items.get(i)) {
                            Some(next @ (Value::Object(_) | Value::Array(_))) => cur = next,
                            _ => return Err(self.shape(path, "array index out of range")),
                        }
                    }
                    _ => return Err(self.shape(path, "a parent is not an object")),
                }
                depth += 1;
            }
        }

        if depth < parents.len() {
            // Build the missing subtree bottom-up and attach it with one `add`
            // (or `replace`, when the attachment point holds `null`).
            let subtree = nest(&parents[depth + 1..], last, value);
            let attach = &path[..=depth];
            self.write(attach, subtree);
            self.note(path, message.into());
            return Ok(true);
        }

        let parent = lookup_mut(&mut self.doc, parents).expect("parent was found above");
        match parent {
            Value::Object(map) => {
                if map.get(*last) == Some(&value) {
                    return Ok(false);
                }
            }
            Value::Array(items) => match last.parse::<usize>().ok() {
                Some(i) if i < items.len() => {
                    if items[i] == value {
                        return Ok(false);
                    }
                }
                Some(i) if i == items.len() => {}
                _ => return Err(self.shape(path, "array index out of range")),
            },
            _ => return Err(self.shape(path, "a parent is not an object")),
        }
        self.write(path, value);
        self.note(path, message.into());
        Ok(true)
    }

    /// Append `value` to the array at `path`, creating the array if it is missing.
    pub fn append(
        &mut self,
        path: &[&str],
        value: Value,
        message: impl Into<String>,
    ) -> Result<(), ShapeError> {
        match lookup(&self.doc, path) {
            Some(Value::Array(items)) => {
                let index = items.len().to_string();
                let mut full: Vec<&str> = path.to_vec();
                full.push(&index);
                self.set(&full, value, message).map(|_| ())
            }
            Some(Value::Null) | None => self
                .set(path, Value::Array(vec![value]), message)
                .map(|_| ()),
            Some(_) => Err(self.shape(path, "not an array")),
        }
    }

    /// Remove the member at `path` if it exists. Returns whether it did.
    pub fn remove(&mut self, path: &[&str], message: impl Into<String>) -> bool {
        let Some((last, parents)) = path.split_last() else {
            return false;
        };
        let removed = match lookup_mut(&mut self.doc, parents) {
            Some(Value::Object(map)) => map.shift_remove(*last).is_some(),
            _ => false,
        };
        if removed {
            self.ops.push(PatchOperation::Remove(RemoveOperation {
                path: pointer(path),
            }));
            self.note(path, message.into());
        }
        removed
    }

    /// Apply one write to the document and record it: `replace` when the
    /// target exists, `add` otherwise. Parents are known to exist.
    fn write(&mut self, path: &[&str], value: Value) {
        let (last, parents) = path.split_last().expect("non-empty path");
        let parent = lookup_mut(&mut self.doc, parents).expect("parent exists");
        let existed = match parent {
            Value::Object(map) => map.insert((*last).to_string(), value.clone()).is_some(),
            Value::Array(items) => {
                let i: usize = last.parse().expect("index checked by caller");
                if i < items.len() {
                    items[i] = value.clone();
                    true
                } else {
                    items.push(value.clone());
                    false
                }
            }
            _ => unreachable!("parent shape checked by caller"),
        };
        let path = pointer(path);
        self.ops.push(if existed {
            PatchOperation::Replace(ReplaceOperation { path, value })
        } else {
            PatchOperation::Add(AddOperation { path, value })
        });
    }

    fn shape(&mut self, path: &[&str], reason: &'static str) -> ShapeError {
        let err = ShapeError {
            path: pointer(path).to_string(),
            reason,
        };
        self.warnings
            .push(format!("calmplane {}: skipped, {err}", self.policy));
        err
    }
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
        assert!(m
            .set(&["metadata", "annotations", "a/b~c"], json!("v"), "m")
            .unwrap());
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
        )
        .unwrap();
        let ops = serde_json::to_value(m.ops()).unwrap();
        assert_eq!(ops[0]["path"], "/metadata/annotations/calmplane.dev~1a~0b");
        assert_eq!(apply(&orig, m.ops()), *m.doc());
    }

    #[test]
    fn null_parent_is_replaced() {
        let orig = json!({"metadata": {"annotations": null}});
        let mut m = Mutation::new(orig.clone());
        m.set(&["metadata", "annotations", "k"], json!("v"), "m")
            .unwrap();
        assert_eq!(*m.doc(), json!({"metadata": {"annotations": {"k": "v"}}}));
        assert_eq!(serde_json::to_value(m.ops()).unwrap()[0]["op"], "replace");
        assert_eq!(apply(&orig, m.ops()), *m.doc());
    }

    #[test]
    fn equal_value_is_a_no_op_and_shape_errors_are_refused() {
        let orig = json!({"spec": {"a": 1}, "bad": "str", "list": [1]});
        let mut m = Mutation::new(orig.clone());
        assert!(!m.set(&["spec", "a"], json!(1), "m").unwrap());
        assert!(m.set(&["bad", "x"], json!(1), "m").is_err());
        assert!(m.set(&["list", "5"], json!(1), "m").is_err());
        assert!(m.ops().is_empty());
        assert_eq!(*m.doc(), orig);
        assert_eq!(m.warnings().len(), 2);
    }

    #[test]
    fn append_and_remove() {
        let orig = json!({"spec": {"l": [1], "m": {"k": 1}}});
        let mut m = Mutation::new(orig.clone());
        m.append(&["spec", "l"], json!(2), "m").unwrap();
        m.append(&["spec", "new"], json!(3), "m").unwrap();
        assert!(m.remove(&["spec", "m", "k"], "m"));
        assert!(!m.remove(&["spec", "m", "absent"], "m"));
        assert_eq!(
            *m.doc(),
            json!({"spec": {"l": [1, 2], "new": [3], "m": {}}})
        );
        assert_eq!(apply(&orig, m.ops()), *m.doc());
    }
}
