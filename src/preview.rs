//! Dry-run previews: what would calmplane do to this manifest?
//!
//! Accepts what a platform engineer has at hand: one object as JSON or YAML,
//! a multi-document YAML stream, a `v1 List`, or a whole AdmissionReview.
//! Objects are previewed as a CREATE (an AdmissionReview keeps its own
//! operation, namespace and oldObject). Workloads also get a `template`
//! preview: what pods created from their pod template will get.
//!
//! The same function serves `POST /preview` and `calmplane preview`, so the
//! two print the same JSON. The server passes [`Bounds`]: a deadline, and
//! what the parsed documents and the answer may cost in memory
//! ([`crate::budget`]); the command line runs on the user's own file,
//! unbounded. Every step is linear in the input.

use crate::clip::Clipped;
use crate::patch::{lookup, str_at, Change};
use crate::pipeline::{Outcome, Pipeline};
use crate::policy::{Context, Kind};
use crate::review;
use crate::view::{self, Budget};
use kube::core::admission::Operation;
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::Instant;

/// What one preview may spend.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Stop working at this instant: past the server's request timeout, the
    /// answer would go nowhere.
    pub deadline: Option<Instant>,
    /// The most the parsed documents may take in memory, in bytes.
    pub tree_bytes: usize,
    /// The longest answer, in bytes.
    pub output_bytes: usize,
}

impl Bounds {
    /// No bounds: `calmplane preview -f` on the user's own file.
    pub const NONE: Bounds = Bounds {
        deadline: None,
        tree_bytes: usize::MAX,
        output_bytes: usize::MAX,
    };

    /// The bounds of `POST /preview` for a body of `len` bytes, working
    /// until `deadline`.
    pub fn for_body(len: usize, deadline: Instant) -> Bounds {
        Bounds {
            deadline: Some(deadline),
            tree_bytes: crate::budget::preview_tree_limit(len),
            output_bytes: crate::budget::preview_output_limit(len),
        }
    }

    fn check_time(&self) -> Result<(), PreviewError> {
        match self.deadline {
            Some(deadline) if Instant::now() >= deadline => Err(PreviewError::Timeout),
            _ => Ok(()),
        }
    }
}

/// Why a preview body was refused. All are the sender's fault: a 400 on
/// `POST /preview`, a message and exit code on the command line.
#[derive(Debug, thiserror::Error)]
pub enum PreviewError {
    /// The body is empty or only whitespace and comments.
    #[error("empty body: send a Kubernetes object as JSON or YAML")]
    Empty,
    /// Invalid JSON. Not returned at present: a body starting with `{` that
    /// is not JSON is retried as flow-style YAML and reported as [`Self::Yaml`].
    #[error("invalid JSON: {0}")]
    Json(serde_json::Error),
    /// The body is not JSON and does not parse as YAML either.
    #[error("invalid YAML: {0}")]
    Yaml(crate::yaml::Error),
    /// The body is not UTF-8, which both JSON and YAML require.
    #[error("body is not UTF-8: {0}")]
    NotUtf8(std::str::Utf8Error),
    /// A leading-zero number such as `0640`, which kubectl and we would read
    /// differently: refused rather than previewed wrong.
    #[error("line {line}: {token} is a YAML 1.1 octal number (kubectl reads {decimal}), but YAML 1.2 reads the string \"{token}\"; write 0o{digits} or {decimal} to say which you mean")]
    LegacyOctal {
        /// Where the number is, 1-based, so the user can find it.
        line: usize,
        /// The number as written.
        token: String,
        /// The octal digits, to suggest the unambiguous `0o` spelling.
        digits: String,
        /// What kubectl would read, to suggest the decimal spelling.
        decimal: i64,
    },
    /// A document of the stream is a scalar or a list, not an object.
    #[error(
        "document {0} is not an object (expected a Kubernetes object with apiVersion and kind)"
    )]
    NotAnObject(usize),
    /// The body is an AdmissionReview that `review::parse` refuses.
    #[error("invalid AdmissionReview: {0}")]
    Review(#[from] review::ReviewError),
    /// The documents would take more memory than a preview of this size may.
    #[error("the documents would take more than {0} bytes of memory to preview; preview fewer at a time, or run `calmplane preview -f` offline")]
    TooLarge(usize),
    /// The answer would be longer than a preview of this size may write.
    #[error("the preview would be longer than {0} bytes; preview fewer objects at a time, or run `calmplane preview -f` offline")]
    TooLong(usize),
    /// The work went past the request's deadline and was stopped.
    #[error("the preview was stopped at the request timeout")]
    Timeout,
}

/// The preview of one object.
#[derive(Debug, Serialize)]
pub struct Preview {
    /// The object's kind, so a reader of a multi-object preview knows which is which.
    pub kind: String,
    /// `metadata.name`, for the same reason; absent for unnamed objects.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The namespace the policies saw: the object's own, else the one given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The operation previewed: `CREATE`, unless an AdmissionReview said otherwise.
    pub operation: &'static str,
    /// Why nothing was done, when calmplane does not handle this object.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    /// The JSON Patch the webhook would return.
    pub patch: Vec<json_patch::PatchOperation>,
    /// The object with the patch applied, so the result can be read (or
    /// diffed) without applying the patch by hand.
    pub object: Value,
    /// Each change, with the policy that made it and why.
    pub changes: Vec<Change>,
    /// The warnings the apiserver would show `kubectl` users.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// For workloads: what pods created from the pod template will get.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template: Option<Box<Preview>>,
}

/// One preview, or `{"items": [...]}` for several.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum PreviewResponse {
    /// The body held one object: its preview, unwrapped, as the common case
    /// reads best.
    One(Box<Preview>),
    /// The body held a stream, a `List` or several objects.
    Many {
        /// One preview per object, in the body's order.
        items: Vec<Preview>,
    },
}

/// Parse `body` and preview every object in it, within `bounds`.
pub fn preview(
    pipeline: &Pipeline,
    body: &[u8],
    namespace: Option<&str>,
    bounds: &Bounds,
) -> Result<PreviewResponse, PreviewError> {
    let docs = parse_documents_within(body, bounds)?;
    let mut items = Vec::with_capacity(docs.len());
    for (i, doc) in docs.into_iter().enumerate() {
        bounds.check_time()?;
        if !doc.is_object() {
            return Err(PreviewError::NotAnObject(i + 1));
        }
        if str_at(&doc, &["kind"]) == Some("AdmissionReview") {
            items.push(preview_review(pipeline, doc, bounds)?);
        } else if str_at(&doc, &["kind"]) == Some("List") {
            for item in list_items(doc) {
                bounds.check_time()?;
                items.push(preview_object(pipeline, item, namespace));
            }
        } else {
            items.push(preview_object(pipeline, doc, namespace));
        }
    }
    Ok(if items.len() == 1 {
        PreviewResponse::One(Box::new(items.pop().expect("one item")))
    } else {
        PreviewResponse::Many { items }
    })
}

/// The preview as the answer's text: pretty JSON with a final newline, or
/// [`PreviewError::TooLong`] past `bounds.output_bytes` (pretty-printing
/// indents every line, so deep documents grow).
pub fn render(preview: &PreviewResponse, bounds: &Bounds) -> Result<String, PreviewError> {
    let mut out = Capped {
        buf: Vec::new(),
        cap: bounds.output_bytes,
    };
    serde_json::to_writer_pretty(&mut out, preview)
        .map_err(|_| PreviewError::TooLong(bounds.output_bytes))?;
    out.buf.push(b'\n');
    // serde_json writes UTF-8.
    Ok(String::from_utf8(out.buf).unwrap_or_default())
}

/// A buffer that refuses to grow past `cap`.
struct Capped {
    buf: Vec<u8>,
    cap: usize,
}

impl std::io::Write for Capped {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.buf.len().saturating_add(data.len()) > self.cap {
            return Err(std::io::Error::other("preview too long"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The items of a `v1 List`, moved out of it.
fn list_items(mut doc: Value) -> Vec<Value> {
    match doc.get_mut("items").map(Value::take) {
        Some(Value::Array(items)) => items,
        _ => Vec::new(),
    }
}

fn preview_review(
    pipeline: &Pipeline,
    doc: Value,
    bounds: &Bounds,
) -> Result<Preview, PreviewError> {
    // The review as text, so it takes the same envelope parse as `/mutate`;
    // only the extent differs: a preview shows the whole patched object.
    let text = serde_json::to_vec(&doc).map_err(review::ReviewError::NotJson)?;
    drop(doc);
    let budget = Budget::new(bounds.tree_bytes);
    let request = review::parse_with(&text, review::Extent::Whole, &budget)?;
    let namespace = request.namespace.clone();
    let review::Admission { summary, outcome } = review::admit(pipeline, request);
    let skipped = (summary.verdict == review::Verdict::Skipped).then(|| {
        format!(
            "calmplane does not mutate {} {}",
            summary.operation,
            Clipped(&summary.kind)
        )
    });
    let mut preview = finish(summary.kind, summary.operation, skipped, outcome);
    if preview.namespace.is_none() {
        preview.namespace = namespace.filter(|ns| !ns.is_empty());
    }
    preview.template = template_preview(pipeline, &preview.object, preview.namespace.as_deref());
    Ok(preview)
}

/// Preview one object as a CREATE.
pub fn preview_object(pipeline: &Pipeline, object: Value, namespace: Option<&str>) -> Preview {
    let kind_name = Clipped(str_at(&object, &["kind"]).unwrap_or("")).to_string();
    let namespace = str_at(&object, &["metadata", "namespace"])
        .filter(|ns| !ns.is_empty())
        .or(namespace)
        .map(str::to_string);
    let (skipped, outcome) = match Kind::from_object(&object) {
        Some(kind) => {
            let ctx = Context::new(kind, Operation::Create).in_namespace(namespace.as_deref());
            (None, pipeline.run(&ctx, object))
        }
        None => {
            let api_version = Clipped(str_at(&object, &["apiVersion"]).unwrap_or(""));
            let why = format!("calmplane does not mutate {api_version} {kind_name}");
            (Some(why), Outcome::unchanged(object))
        }
    };
    let mut preview = finish(kind_name, "CREATE", skipped, outcome);
    if preview.namespace.is_none() {
        preview.namespace = namespace;
    }
    preview.template = template_preview(pipeline, &preview.object, preview.namespace.as_deref());
    preview
}

fn finish(kind: String, operation: &'static str, skipped: Option<String>, o: Outcome) -> Preview {
    Preview {
        kind: Clipped(&kind).to_string(),
        name: str_at(&o.object, &["metadata", "name"]).map(str::to_string),
        namespace: str_at(&o.object, &["metadata", "namespace"]).map(str::to_string),
        operation,
        skipped,
        patch: o.patch,
        object: o.object,
        changes: o.changes,
        warnings: o.warnings,
        template: None,
    }
}

/// Where each workload kind keeps its pod template.
fn template_path(kind: &str) -> Option<&'static [&'static str]> {
    match kind {
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "Job"
        | "ReplicationController" => Some(&["spec", "template"]),
        "CronJob" => Some(&["spec", "jobTemplate", "spec", "template"]),
        _ => None,
    }
}

/// The Pod a workload's controller would create from its pod template
/// (metadata and spec only; the controller adds a generated name).
/// `None` for kinds without a pod template.
pub fn pod_from_template(workload: &Value) -> Option<Value> {
    let template = lookup(workload, template_path(str_at(workload, &["kind"])?)?)?;
    if !template.is_object() {
        return None;
    }
    Some(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": template.get("metadata").filter(|m| m.is_object()).cloned().unwrap_or_else(|| json!({})),
        "spec": template.get("spec").cloned().unwrap_or_else(|| json!({})),
    }))
}

/// The Pod that the workload's controller would create, previewed as a Pod CREATE.
fn template_preview(
    pipeline: &Pipeline,
    workload: &Value,
    namespace: Option<&str>,
) -> Option<Box<Preview>> {
    let pod = pod_from_template(workload)?;
    let ctx = Context::new(Kind::Pod, Operation::Create).in_namespace(namespace);
    let mut preview = finish("Pod".to_string(), "CREATE", None, pipeline.run(&ctx, pod));
    preview.namespace = namespace.map(str::to_string);
    Some(Box::new(preview))
}

/// JSON when it looks like JSON, otherwise a YAML stream. Empty YAML
/// documents (a leading `---`, a trailing separator) are dropped.
pub fn parse_documents(body: &[u8]) -> Result<Vec<Value>, PreviewError> {
    parse_documents_within(body, &Bounds::NONE)
}

/// [`parse_documents`] for a whole cluster dump (`calmplane audit`): YAML
/// gets budgets that grow with the input, see [`crate::yaml::large_documents`].
pub fn parse_large_documents(body: &[u8]) -> Result<Vec<Value>, PreviewError> {
    parse_documents_with(body, &Bounds::NONE, |text, _| {
        crate::yaml::large_documents(text)
    })
}

/// [`parse_documents`] within `bounds`: YAML gets node and scalar budgets
/// from `bounds.tree_bytes` ([`crate::yaml::bounded_documents`]), JSON is
/// built through a [`view::Budget`] of the same size.
pub fn parse_documents_within(body: &[u8], bounds: &Bounds) -> Result<Vec<Value>, PreviewError> {
    parse_documents_with(body, bounds, |text, bounds| {
        if bounds.tree_bytes == usize::MAX {
            crate::yaml::documents(text)
        } else {
            crate::yaml::bounded_documents(text, bounds.tree_bytes)
        }
    })
}

fn parse_documents_with(
    body: &[u8],
    bounds: &Bounds,
    yaml: impl Fn(&str, &Bounds) -> Result<Vec<Value>, crate::yaml::Error>,
) -> Result<Vec<Value>, PreviewError> {
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        None => return Err(PreviewError::Empty),
        Some(b'{') | Some(b'[') => {
            if let Ok(text) = std::str::from_utf8(body) {
                let budget = Budget::new(bounds.tree_bytes);
                match view::parse(text, &view::Shape::All, view::EVERYTHING, &budget) {
                    Ok(parsed) => {
                        return Ok(match parsed.value {
                            Value::Array(items) => items,
                            v => vec![v],
                        })
                    }
                    Err(_) if budget.exceeded().is_some() => {
                        return Err(PreviewError::TooLarge(bounds.tree_bytes))
                    }
                    Err(_) => {}
                }
            }
            // Flow-style YAML also starts with `{`; fall through to YAML, but
            // report the JSON error if that fails too and it was meant as JSON.
        }
        Some(_) => {}
    }
    let text = std::str::from_utf8(body).map_err(PreviewError::NotUtf8)?;
    bounds.check_time()?;
    let docs: Vec<Value> = yaml(text, bounds)
        .map_err(PreviewError::Yaml)?
        .into_iter()
        .filter(|doc| !doc.is_null())
        .collect();
    if docs.is_empty() {
        return Err(PreviewError::Empty);
    }
    bounds.check_time()?;
    check_legacy_octal(text, &docs)?;
    Ok(docs)
}

/// YAML 1.1 (kubectl) reads a plain `0640` as octal 416; YAML 1.2 (`crate::yaml`)
/// reads it as the string "0640". Either silent choice would mislead, so a
/// plain scalar of that shape that came out as a string is a clear error.
///
/// Linear in the text and the documents: one pass over the lines collects
/// the octal-looking tokens (with the first line of each), one walk of the
/// documents looks every string up among them, and the earliest line of a
/// token found as a string is the one reported.
fn check_legacy_octal(text: &str, docs: &[Value]) -> Result<(), PreviewError> {
    let mut tokens: HashMap<&str, usize> = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let content = line.split(" #").next().unwrap_or("").trim_end();
        let token = content
            .rsplit_once(": ")
            .map(|(_, v)| v)
            .or_else(|| content.trim_start().strip_prefix("- "))
            .map(str::trim);
        let Some(token) = token else { continue };
        let digits = token.strip_prefix('0').unwrap_or("");
        if digits.is_empty() || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
            continue;
        }
        tokens.entry(token).or_insert(n + 1);
    }
    if tokens.is_empty() {
        return Ok(());
    }
    let mut first: Option<(usize, &str)> = None;
    let mut stack: Vec<&Value> = docs.iter().collect();
    while let Some(v) = stack.pop() {
        match v {
            Value::String(x) => {
                if let Some((&token, &line)) = tokens.get_key_value(x.as_str()) {
                    if first.is_none_or(|(l, _)| line < l) {
                        first = Some((line, token));
                    }
                }
            }
            Value::Array(items) => stack.extend(items),
            Value::Object(map) => stack.extend(map.values()),
            _ => {}
        }
    }
    match first {
        None => Ok(()),
        Some((line, token)) => {
            let digits = &token[1..];
            Err(PreviewError::LegacyOctal {
                line,
                token: token.to_string(),
                digits: digits.to_string(),
                decimal: i64::from_str_radix(digits, 8).unwrap_or(0),
            })
        }
    }
}
