//! YAML, read and written the one way calmplane does it everywhere: the
//! policy file, `calmplane preview`, `POST /preview` and `calmplane manifests`.
//!
//! The crate is serde-saphyr, the maintained YAML library kube-rs itself now
//! uses (serde_yaml 0.9 is deprecated and archived). The options pin what
//! users rely on:
//!
//! * YAML 1.2 scalars: `yes` is a string, and a leading-zero number such as
//!   `0640` stays the string `"0640"` (kubectl's YAML 1.1 would read octal
//!   416; `preview` refuses that ambiguity with a clear error rather than
//!   guessing either way);
//! * a duplicate key is an error, never "the last one wins";
//! * errors carry the line and column;
//! * alias expansion and document size are bounded by the crate's budget, so
//!   an alias bomb fails early instead of eating memory.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// A YAML document that does not parse, or does not fit the type asked
/// for: the parser's message with line, column and the lines around it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Error(String);

impl From<serde_saphyr::Error> for Error {
    fn from(e: serde_saphyr::Error) -> Self {
        // The parser's advice is for programmers using the crate, not for
        // the user whose manifest has the duplicate key.
        Error(
            e.to_string()
                .replace(", set DuplicateKeyPolicy in Options if acceptable", ""),
        )
    }
}

fn options() -> serde_saphyr::Options {
    let mut options = serde_saphyr::Options::default();
    options.duplicate_keys = serde_saphyr::DuplicateKeyPolicy::Error;
    options.legacy_octal_numbers = false;
    options.leading_zero_numbers_as_strings = true;
    options.underscored_numbers_as_strings = true;
    options.strict_booleans = true;
    options
}

/// One YAML document as `T`.
pub fn from_str<T: DeserializeOwned>(text: &str) -> Result<T, Error> {
    Ok(serde_saphyr::from_str_with_options(text, options())?)
}

/// Every document of a YAML stream, in order; empty documents (a leading
/// `---`, a trailing separator) come back as JSON `null`.
pub fn documents(text: &str) -> Result<Vec<serde_json::Value>, Error> {
    Ok(serde_saphyr::from_multiple_with_options(text, options())?)
}

/// [`documents`] for input that is large by nature, a cluster dump for
/// `calmplane audit`: the node, event and scalar-byte budgets grow with the
/// input's length (a node or event needs at least a byte of it), while the
/// alias, anchor and depth limits that stop an alias bomb stay as they are.
pub fn large_documents(text: &str) -> Result<Vec<serde_json::Value>, Error> {
    let mut options = options();
    let mut budget = options.budget.take().unwrap_or_default();
    budget.max_nodes = budget.max_nodes.max(text.len());
    budget.max_events = budget.max_events.max(text.len().saturating_mul(2));
    budget.max_total_scalar_bytes = budget.max_total_scalar_bytes.max(text.len());
    options.budget = Some(budget);
    Ok(serde_saphyr::from_multiple_with_options(text, options)?)
}

/// What one node of a parsed YAML document costs at most in memory: a
/// `serde_json::Value` (72 bytes) and, in a mapping, the key's `String` and
/// the map's hash and index for it. Scalar text is bounded apart.
pub const NODE_BYTES: usize = 128;

/// [`documents`] for input from a client (`POST /preview`), whose tree may
/// take at most about `tree_bytes` of memory: at most `tree_bytes /
/// NODE_BYTES` nodes, at most twice the text's length in scalar bytes (more
/// only through aliases), and aliases bounded as in [`documents`].
pub fn bounded_documents(text: &str, tree_bytes: usize) -> Result<Vec<serde_json::Value>, Error> {
    let mut options = options();
    let mut budget = options.budget.take().unwrap_or_default();
    budget.max_nodes = budget.max_nodes.min(tree_bytes / NODE_BYTES);
    budget.max_total_scalar_bytes = budget
        .max_total_scalar_bytes
        .min(text.len().saturating_mul(2));
    budget.max_recorded_anchor_bytes = budget.max_recorded_anchor_bytes.min(text.len());
    options.budget = Some(budget);
    Ok(serde_saphyr::from_multiple_with_options(text, options)?)
}

/// `value` as a YAML document.
pub fn to_string<T: Serialize>(value: &T) -> Result<String, serde_saphyr::SerializeError> {
    serde_saphyr::to_string(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    #[test]
    fn yaml_1_2_scalars() {
        let v: Value =
            from_str("a: yes\nb: 0640\nc: 0o640\nd: 12\ne: ~\nf: 1_000\ng: on\n").unwrap();
        assert_eq!(
            v,
            json!({"a": "yes", "b": "0640", "c": 416, "d": 12, "e": null, "f": "1_000", "g": "on"})
        );
    }

    #[test]
    fn duplicate_keys_are_refused_with_the_line() {
        let e = from_str::<Value>("a: 1\nb:\n  c: 1\n  c: 2\n").unwrap_err();
        let text = e.to_string();
        assert!(text.contains("duplicate mapping key: c"), "{text}");
        assert!(text.contains("line 4"), "{text}");
    }

    #[test]
    fn streams_keep_empty_documents_as_null() {
        let docs = documents("---\na: 1\n---\n---\nb: 2\n").unwrap();
        assert_eq!(docs.iter().filter(|d| !d.is_null()).count(), 2);
        assert_eq!(docs.iter().find(|d| !d.is_null()), Some(&json!({"a": 1})));
    }

    #[test]
    fn bounded_documents_refuse_more_nodes_than_the_budget() {
        let list = "- 1\n".repeat(10_000);
        // 10,000 items (plus the list) need room for as many nodes.
        assert!(bounded_documents(&list, 20_000 * NODE_BYTES).is_ok());
        let e = bounded_documents(&list, 5_000 * NODE_BYTES).unwrap_err();
        assert!(e.to_string().contains("budget"), "{e}");
        // Aliases of a large anchored scalar cannot multiply its bytes.
        let big = "x".repeat(10_000);
        let mut aliased = format!("a: &a {big}\n");
        for i in 0..20 {
            aliased.push_str(&format!("b{i}: *a\n"));
        }
        assert!(bounded_documents(&aliased, usize::MAX / 2).is_err());
    }

    #[test]
    fn an_alias_bomb_is_refused() {
        let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for (prev, name) in ["a", "b", "c", "d", "e", "f", "g", "h", "i"]
            .iter()
            .zip(["b", "c", "d", "e", "f", "g", "h", "i", "j"])
        {
            bomb.push_str(&format!(
                "{name}: &{name} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"
            ));
        }
        assert!(from_str::<Value>(&bomb).is_err());
    }
}
