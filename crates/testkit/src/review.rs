//! AdmissionReview v1 requests as the apiserver sends them. Shared by the
//! integration tests, the benches and the load test, so that all of them
//! send the same shape.

use serde_json::{json, Value};

/// `(group, version, kind)` of an object, from its apiVersion and kind.
pub fn gvk_of(object: &Value) -> (String, String, String) {
    let api_version = object["apiVersion"].as_str().unwrap_or("v1");
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let kind = object["kind"].as_str().unwrap_or("").to_string();
    (group.to_string(), version.to_string(), kind)
}

/// An AdmissionReview v1 request for `object`; `oldObject` only when given.
pub fn review(
    uid: &str,
    operation: &str,
    namespace: &str,
    object: &Value,
    old: Option<&Value>,
) -> Value {
    let (group, version, kind) = gvk_of(object);
    let resource = format!("{}s", kind.to_lowercase());
    let mut request = json!({
        "uid": uid,
        "kind": {"group": group, "version": version, "kind": kind},
        "resource": {"group": group, "version": version, "resource": resource},
        "requestKind": {"group": group, "version": version, "kind": kind},
        "requestResource": {"group": group, "version": version, "resource": resource},
        "name": object["metadata"]["name"].as_str().unwrap_or(""),
        "namespace": namespace,
        "operation": operation,
        "userInfo": {
            "username": "system:serviceaccount:kube-system:replicaset-controller",
            "uid": "4b2b0d4e-3f6e-4a8e-9a59-6a2f3f2b8a11",
            "groups": ["system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"]
        },
        "object": object,
        "dryRun": false,
        "options": {
            "apiVersion": "meta.k8s.io/v1",
            "kind": if operation == "UPDATE" { "UpdateOptions" } else { "CreateOptions" }
        },
    });
    if let Some(old) = old {
        request["oldObject"] = old.clone();
    }
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request})
}

/// Admit `object` as `/mutate` does (an AdmissionReview body, parsed into
/// the view of what the policies read) and compare the outcome with
/// `whole`, the pipeline's outcome on the whole object. The view must give
/// the same patch, changes, warnings and policies; `Err` says what differs.
pub fn view_matches_whole(
    pipeline: &calmplane::pipeline::Pipeline,
    kind: calmplane::policy::Kind,
    operation: &str,
    namespace: Option<&str>,
    object: &Value,
    old: Option<&Value>,
    whole: &calmplane::pipeline::Outcome,
) -> Result<(), String> {
    use calmplane::policy::Kind;
    if !matches!(operation, "CREATE" | "UPDATE") {
        return Ok(()); // `/mutate` runs no policy on other operations
    }
    let mut body = review(
        "view-vs-whole",
        operation,
        namespace.unwrap_or(""),
        object,
        old,
    );
    let (group, version) = match kind {
        Kind::Pod => ("", "v1"),
        Kind::Deployment => ("apps", "v1"),
    };
    body["request"]["kind"] = json!({"group": group, "version": version, "kind": kind.as_str()});
    let bytes = serde_json::to_vec(&body).map_err(|e| e.to_string())?;
    // Unlimited: this compares what the view and the whole object make the
    // policies do; what a view may cost is `calmplane::view`'s own tests' and
    // tests/hostile.rs's subject (generated objects can be much larger as
    // views than any real one).
    let budget = calmplane::view::Budget::unlimited();
    let request = calmplane::review::parse_with(
        &bytes,
        calmplane::review::Extent::Read(pipeline.reads()),
        &budget,
    )
    .map_err(|e| format!("view parse: {e}"))?;
    let view = calmplane::review::admit(pipeline, request).outcome;
    let differs = |what: &str, a: String, b: String| {
        Err(format!(
            "view and whole object differ in {what}:\n view:  {a}\n whole: {b}"
        ))
    };
    if view.patch != whole.patch {
        return differs(
            "the patch",
            serde_json::to_string(&view.patch).unwrap_or_default(),
            serde_json::to_string(&whole.patch).unwrap_or_default(),
        );
    }
    if view.changes != whole.changes {
        return differs(
            "changes",
            format!("{:?}", view.changes),
            format!("{:?}", whole.changes),
        );
    }
    if view.warnings != whole.warnings {
        return differs(
            "warnings",
            format!("{:?}", view.warnings),
            format!("{:?}", whole.warnings),
        );
    }
    if view.policies != whole.policies {
        return differs(
            "policies",
            format!("{:?}", view.policies),
            format!("{:?}", whole.policies),
        );
    }
    Ok(())
}
