//! Dry-run previews: what would calmplane do to this manifest?
//!
//! Accepts what a platform engineer has at hand: one object as JSON or YAML,
//! a multi-document YAML stream, a `v1 List`, or a whole AdmissionReview.
//! Objects are previewed as a CREATE (an AdmissionReview keeps its own
//! operation, namespace and oldObject). Workloads also get a `template`
//! preview: what pods created from their pod template will get.
//!
//! The same function serves `POST /preview` and `calmplane preview`, so the
//! two print the same JSON.

use crate::patch::{lookup, str_at, Change};
use crate::pipeline::{Outcome, Pipeline, Request};
use crate::policy::Kind;
use crate::review;
use kube::core::admission::Operation;
use serde::Serialize;
use serde_json::{json, Value};

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

/// Parse `body` and preview every object in it.
pub fn preview(
    pipeline: &Pipeline,
    body: &[u8],
    namespace: Option<&str>,
) -> Result<PreviewResponse, PreviewError> {
    let docs = parse_documents(body)?;
    let mut items = Vec::with_capacity(docs.len());
    for (i, doc) in docs.into_iter().enumerate() {
        if !doc.is_object() {
            return Err(PreviewError::NotAnObject(i + 1));
        }
        if str_at(&doc, &["kind"]) == Some("AdmissionReview") {
            items.push(preview_review(pipeline, doc)?);
        } else if let Some(list_items) = list_items(&doc) {
            for item in list_items {
                items.push(preview_object(pipeline, item.clone(), namespace));
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

/// The items of a `v1 List`.
fn list_items(doc: &Value) -> Option<&Vec<Value>> {
    if str_at(doc, &["kind"]) != Some("List") {
        return None;
    }
    doc.get("items").and_then(Value::as_array)
}

fn preview_review(pipeline: &Pipeline, doc: Value) -> Result<Preview, PreviewError> {
    // The review as text, so it takes the same envelope parse as `/mutate`;
    // only the extent differs: a preview shows the whole patched object.
    let text = serde_json::to_vec(&doc).map_err(review::ReviewError::NotJson)?;
    let request = review::parse_with(&text, crate::view::Extent::Whole)?;
    let namespace = request.namespace.clone();
    let review::Admission { summary, outcome } = review::admit(pipeline, request);
    let skipped = (summary.verdict == review::Verdict::Skipped).then(|| {
        format!(
            "calmplane does not mutate {} {}",
            summary.operation, summary.kind
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
    let kind_name = str_at(&object, &["kind"]).unwrap_or("").to_string();
    let namespace = str_at(&object, &["metadata", "namespace"])
        .filter(|ns| !ns.is_empty())
        .or(namespace)
        .map(str::to_string);
    let (skipped, outcome) = match Kind::from_object(&object) {
        Some(kind) => {
            let req = Request {
                kind,
                operation: Operation::Create,
                namespace: namespace.as_deref(),
                old_object: None,
                templates: None,
            };
            (None, pipeline.run(&req, object))
        }
        None => {
            let api_version = str_at(&object, &["apiVersion"]).unwrap_or("").to_string();
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
        kind,
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
    let req = Request {
        kind: Kind::Pod,
        operation: Operation::Create,
        namespace,
        old_object: None,
        templates: None,
    };
    let mut preview = finish("Pod".to_string(), "CREATE", None, pipeline.run(&req, pod));
    preview.namespace = namespace.map(str::to_string);
    Some(Box::new(preview))
}

/// JSON when it looks like JSON, otherwise a YAML stream. Empty YAML
/// documents (a leading `---`, a trailing separator) are dropped.
pub fn parse_documents(body: &[u8]) -> Result<Vec<Value>, PreviewError> {
    parse_documents_with(body, crate::yaml::documents)
}

/// [`parse_documents`] for a whole cluster dump (`calmplane audit`): YAML
/// gets budgets that grow with the input, see [`crate::yaml::large_documents`].
pub fn parse_large_documents(body: &[u8]) -> Result<Vec<Value>, PreviewError> {
    parse_documents_with(body, crate::yaml::large_documents)
}

fn parse_documents_with(
    body: &[u8],
    yaml: fn(&str) -> Result<Vec<Value>, crate::yaml::Error>,
) -> Result<Vec<Value>, PreviewError> {
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        None => return Err(PreviewError::Empty),
        Some(b'{') | Some(b'[') => {
            if let Ok(v) = serde_json::from_slice::<Value>(body) {
                return Ok(match v {
                    Value::Array(items) => items,
                    v => vec![v],
                });
            }
            // Flow-style YAML also starts with `{`; fall through to YAML, but
            // report the JSON error if that fails too and it was meant as JSON.
        }
        Some(_) => {}
    }
    let text = std::str::from_utf8(body).map_err(PreviewError::NotUtf8)?;
    let docs: Vec<Value> = yaml(text)
        .map_err(PreviewError::Yaml)?
        .into_iter()
        .filter(|doc| !doc.is_null())
        .collect();
    if docs.is_empty() {
        return Err(PreviewError::Empty);
    }
    check_legacy_octal(text, &docs)?;
    Ok(docs)
}

/// YAML 1.1 (kubectl) reads a plain `0640` as octal 416; YAML 1.2 (`crate::yaml`)
/// reads it as the string "0640". Either silent choice would mislead, so a
/// plain scalar of that shape that came out as a string is a clear error.
fn check_legacy_octal(text: &str, docs: &[Value]) -> Result<(), PreviewError> {
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
        if docs.iter().any(|d| contains_string(d, token)) {
            return Err(PreviewError::LegacyOctal {
                line: n + 1,
                token: token.to_string(),
                digits: digits.to_string(),
                decimal: i64::from_str_radix(digits, 8).unwrap_or(0),
            });
        }
    }
    Ok(())
}

fn contains_string(v: &Value, s: &str) -> bool {
    match v {
        Value::String(x) => x == s,
        Value::Array(items) => items.iter().any(|i| contains_string(i, s)),
        Value::Object(map) => map.values().any(|i| contains_string(i, s)),
        _ => false,
    }
}
