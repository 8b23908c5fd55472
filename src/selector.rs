//! Kubernetes field selectors, parsed with the apimachinery grammar.
//!
//! This is a faithful port of `k8s.io/apimachinery/pkg/fields/selector.go`
//! (`splitTerms`, `splitTerm`, `UnescapeValue`, `EscapeValue`): terms are
//! separated by unescaped commas, the first of `!=`, `==`, `=` found scanning
//! left to right is the operator, and values accept only the escapes `\\`,
//! `\,` and `\=`. Unescaped `,` or `=` inside a value is an error, as is a
//! trailing backslash.
//!
//! Rewriting keeps the original text of every term it does not touch, so a
//! selector is only ever changed where the policy says so.

use std::fmt;

/// A term's operator. `=` and `==` test the same; both are kept so a parsed
/// term says what was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `field=value`.
    Equals,
    /// `field==value`, the same test as `=`.
    DoubleEquals,
    /// `field!=value`.
    NotEquals,
}

impl Op {
    fn as_str(self) -> &'static str {
        match self {
            Op::Equals => "=",
            Op::DoubleEquals => "==",
            Op::NotEquals => "!=",
        }
    }

    /// `=` and `==` mean the same thing.
    pub fn is_equality(self) -> bool {
        !matches!(self, Op::NotEquals)
    }
}

/// One `field<op>value` term. `raw` is the exact source text of the term.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Term<'a> {
    /// Written back unchanged when the policy leaves the term alone, so an
    /// untouched term is never re-escaped differently.
    pub raw: &'a str,
    /// The field name, as written (apimachinery does not trim it either).
    pub field: &'a str,
    /// The operator, which decides whether the term pins a single object.
    pub op: Op,
    /// The value with its escapes removed: what the apiserver compares.
    pub value: String,
}

/// Why a selector does not parse. The messages follow apimachinery's, so
/// they read like the apiserver's own rejection of the same selector.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    /// A term has none of `=`, `==`, `!=`.
    #[error("invalid selector: '{selector}'; can't understand '{term}'")]
    NoOperator {
        /// The whole selector.
        selector: String,
        /// The term at fault.
        term: String,
    },
    /// A backslash before anything but `\`, `,` or `=`, or at the very end.
    #[error("invalid field selector value {value:?}: invalid escape sequence {sequence:?}")]
    InvalidEscape {
        /// The value, still escaped.
        value: String,
        /// The offending escape, e.g. `\n`, or a lone `\` at the end.
        sequence: String,
    },
    /// A `,` or `=` in a value without a backslash before it.
    #[error("invalid field selector value {value:?}: unescaped {rune:?} must be escaped with a backslash")]
    Unescaped {
        /// The value, still escaped.
        value: String,
        /// The character that needs escaping.
        rune: char,
    },
}

/// A parsed selector. Empty terms (`a=b,,c=d`) are kept as `None` so that the
/// selector can be written back exactly as it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector<'a> {
    /// The terms in order, `None` for an empty one.
    pub terms: Vec<Option<Term<'a>>>,
}

/// Parse `selector` as the apiserver would. The empty selector is valid and
/// has no terms; terms borrow from `selector`.
pub fn parse(selector: &str) -> Result<Selector<'_>, SelectorError> {
    let mut terms = Vec::new();
    if selector.is_empty() {
        return Ok(Selector { terms });
    }
    for raw in split_terms(selector) {
        if raw.is_empty() {
            terms.push(None);
            continue;
        }
        let Some((field, op, rhs)) = split_term(raw) else {
            return Err(SelectorError::NoOperator {
                selector: selector.to_string(),
                term: raw.to_string(),
            });
        };
        terms.push(Some(Term {
            raw,
            field,
            op,
            value: unescape_value(rhs)?,
        }));
    }
    Ok(Selector { terms })
}

fn split_terms(s: &str) -> Vec<&str> {
    let mut terms = Vec::with_capacity(2);
    let mut start = 0;
    let mut in_slash = false;
    for (i, c) in s.char_indices() {
        if in_slash {
            in_slash = false;
        } else if c == '\\' {
            in_slash = true;
        } else if c == ',' {
            terms.push(&s[start..i]);
            start = i + 1;
        }
    }
    terms.push(&s[start..]);
    terms
}

fn split_term(term: &str) -> Option<(&str, Op, &str)> {
    for (i, _) in term.char_indices() {
        let rest = &term[i..];
        for op in [Op::NotEquals, Op::DoubleEquals, Op::Equals] {
            if rest.starts_with(op.as_str()) {
                return Some((&term[..i], op, &rest[op.as_str().len()..]));
            }
        }
    }
    None
}

/// A value with its `\\`, `\,` and `\=` escapes removed (apimachinery's
/// `UnescapeValue`); any other escape, or a bare `,` or `=`, is an error.
pub fn unescape_value(s: &str) -> Result<String, SelectorError> {
    if !s.contains(['\\', ',', '=']) {
        return Ok(s.to_string());
    }
    let mut out = String::with_capacity(s.len());
    let mut in_slash = false;
    for c in s.chars() {
        if in_slash {
            match c {
                '\\' | ',' | '=' => out.push(c),
                _ => {
                    return Err(SelectorError::InvalidEscape {
                        value: s.to_string(),
                        sequence: format!("\\{c}"),
                    })
                }
            }
            in_slash = false;
            continue;
        }
        match c {
            '\\' => in_slash = true,
            ',' | '=' => {
                return Err(SelectorError::Unescaped {
                    value: s.to_string(),
                    rune: c,
                })
            }
            _ => out.push(c),
        }
    }
    if in_slash {
        return Err(SelectorError::InvalidEscape {
            value: s.to_string(),
            sequence: "\\".to_string(),
        });
    }
    Ok(out)
}

/// `s` with `\`, `,` and `=` backslash-escaped, ready to be a term's value
/// (apimachinery's `EscapeValue`).
pub fn escape_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '\\' | ',' | '=') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// What to put in place of each `metadata.name` equality term.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope<'a> {
    /// `metadata.namespace=<ns>`: one lease per namespace.
    Namespace(&'a str),
    /// `metadata.name=<deployment>`: one lease per (hot) Deployment.
    Name(&'a str),
}

impl Scope<'_> {
    fn field(&self) -> &'static str {
        match self {
            Scope::Namespace(_) => "metadata.namespace",
            Scope::Name(_) => "metadata.name",
        }
    }

    fn value(&self) -> &str {
        match self {
            Scope::Namespace(v) | Scope::Name(v) => v,
        }
    }
}

impl fmt::Display for Scope<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.field(), escape_value(self.value()))
    }
}

/// Rewrite every `metadata.name=X` / `metadata.name==X` term to `scope`.
///
/// Other terms (including `metadata.name!=X`) and their order are kept byte for
/// byte; the scope term replaces the first rewritten term and is never
/// duplicated. Returns `Ok(None)` when the selector already says what the
/// scope says.
pub fn rewrite(selector: &str, scope: Scope<'_>) -> Result<Option<String>, SelectorError> {
    let parsed = parse(selector)?;
    let is_name_eq = |t: &Term<'_>| t.field == "metadata.name" && t.op.is_equality();
    let is_scope =
        |t: &Term<'_>| t.field == scope.field() && t.op.is_equality() && t.value == scope.value();
    if !parsed
        .terms
        .iter()
        .flatten()
        .any(|t| is_name_eq(t) && !is_scope(t))
    {
        return Ok(None);
    }
    let mut scope_written = parsed
        .terms
        .iter()
        .flatten()
        .any(|t| is_scope(t) && !is_name_eq(t));
    let mut out: Vec<String> = Vec::with_capacity(parsed.terms.len());
    for term in &parsed.terms {
        match term {
            None => out.push(String::new()),
            Some(t) if is_name_eq(t) => {
                if !scope_written {
                    out.push(scope.to_string());
                    scope_written = true;
                }
            }
            Some(t) => out.push(t.raw.to_string()),
        }
    }
    Ok(Some(out.join(",")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NS: Scope<'static> = Scope::Namespace("team-a");

    #[test]
    fn grammar_matches_apimachinery() {
        let s = parse(r"a=b,c==d,e!=f\,g").unwrap();
        let terms: Vec<_> = s.terms.iter().flatten().collect();
        assert_eq!(terms[0].field, "a");
        assert_eq!(terms[1].op, Op::DoubleEquals);
        assert_eq!(terms[2].op, Op::NotEquals);
        assert_eq!(terms[2].value, "f,g");
        // At each position `!=` and `==` are tried before `=`.
        let s = parse("a==b").unwrap();
        let t = s.terms[0].as_ref().unwrap();
        assert_eq!(
            (t.field, t.op, t.value.as_str()),
            ("a", Op::DoubleEquals, "b")
        );
        assert!(matches!(
            parse("a!==b"),
            Err(SelectorError::Unescaped { .. })
        ));
        assert!(matches!(
            parse("a=b=c"),
            Err(SelectorError::Unescaped { rune: '=', .. })
        ));
        assert!(matches!(
            parse(r"a=b\"),
            Err(SelectorError::InvalidEscape { .. })
        ));
        assert!(matches!(
            parse(r"a=\x"),
            Err(SelectorError::InvalidEscape { .. })
        ));
        assert!(matches!(
            parse("nooperator"),
            Err(SelectorError::NoOperator { .. })
        ));
        assert_eq!(parse("").unwrap().terms.len(), 0);
        assert_eq!(unescape_value(r"a\\b\=c").unwrap(), r"a\b=c");
        assert_eq!(escape_value(r"a\b=c,d"), r"a\\b\=c\,d");
    }

    #[test]
    fn rewrites_name_terms_and_keeps_the_rest() {
        assert_eq!(
            rewrite("metadata.name=web-7d9f", NS).unwrap().as_deref(),
            Some("metadata.namespace=team-a")
        );
        assert_eq!(
            rewrite(
                "spec.holderIdentity!=x,metadata.name==web-1,status.phase=Running",
                NS
            )
            .unwrap()
            .as_deref(),
            Some("spec.holderIdentity!=x,metadata.namespace=team-a,status.phase=Running")
        );
        // `!=` on the name is not a per-pod lease; leave it.
        assert_eq!(rewrite("metadata.name!=web-1", NS).unwrap(), None);
        // Two name terms collapse to a single namespace term.
        assert_eq!(
            rewrite("metadata.name=a,x=y,metadata.name=b", NS)
                .unwrap()
                .as_deref(),
            Some("metadata.namespace=team-a,x=y")
        );
    }

    #[test]
    fn never_duplicates_the_namespace_term() {
        assert_eq!(
            rewrite("metadata.namespace=team-a,metadata.name=web-1", NS)
                .unwrap()
                .as_deref(),
            Some("metadata.namespace=team-a")
        );
        assert_eq!(rewrite("metadata.namespace=team-a", NS).unwrap(), None);
    }

    #[test]
    fn deployment_scope_and_idempotence() {
        let scope = Scope::Name("web");
        let once = rewrite("metadata.name=web-7d9f-abcde", scope)
            .unwrap()
            .unwrap();
        assert_eq!(once, "metadata.name=web");
        assert_eq!(rewrite(&once, scope).unwrap(), None);
        let ns_once = rewrite(r"metadata.name=p\,1,a=b", NS).unwrap().unwrap();
        assert_eq!(ns_once, "metadata.namespace=team-a,a=b");
        assert_eq!(rewrite(&ns_once, NS).unwrap(), None);
    }

    #[test]
    fn escapes_the_written_value() {
        let weird = Scope::Namespace("a,b");
        assert_eq!(
            rewrite("metadata.name=x", weird).unwrap().as_deref(),
            Some(r"metadata.namespace=a\,b")
        );
    }

    #[test]
    fn invalid_selectors_are_errors_not_rewrites() {
        assert!(rewrite("metadata.name=a=b", NS).is_err());
    }
}
