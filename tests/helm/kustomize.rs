//! The two install paths cannot drift: the chart's defaults render the
//! objects `kubectl kustomize manifests/overlays/static` renders.
//!
//! The static overlay is the one for the chart's default certificate mode,
//! `selfSigned`: a `kubernetes.io/tls` Secret `calmplane-tls` that the
//! Deployment mounts, and the CA as every webhook's caBundle. Before the
//! comparison, both sides lose the certificate material (the Secrets' data
//! and the caBundles, checked apart), and the chart's objects lose Helm's
//! labels and annotations. Objects only the chart has are named in
//! [`HELM_ONLY`].

use super::*;

/// The chart's objects that have no kustomize counterpart, and why.
const HELM_ONLY: &[(&str, &str)] = &[
    (
        "Secret/calmplane-ca",
        "the self-signed CA, kept to renew the serving certificate",
    ),
    (
        "Pod/calmplane-wait-for-ready",
        "post-install hook: the readiness gate before the webhook configuration",
    ),
    ("Pod/calmplane-test-preview", "`helm test`"),
];

/// The chart's own annotations: the self-signed certificate's expiry and
/// names (read back at upgrade), and the placeholder's note.
const CHART_ANNOTATIONS: &[&str] = &[
    "calmplane.dev/not-after",
    "calmplane.dev/names",
    "calmplane.dev/placeholder",
];

/// What a new release holds once `helm install` is done: its own objects,
/// with the placeholder webhook configuration replaced by the hook that
/// overwrites it, without the hook Pods (which the cluster no longer has).
pub(crate) fn installed(r: &Render) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    for doc in &r.objects {
        let replaced = r
            .hooks
            .iter()
            .any(|h| key(h) == key(doc) && hook_events(h).contains(&"post-install".to_string()));
        if !replaced {
            out.push(doc.clone());
        }
    }
    out.extend(
        r.hooks_on("post-install")
            .into_iter()
            .filter(|h| h["kind"] != "Pod")
            .cloned(),
    );
    out
}

/// Helm's labels and annotations off, the chart's own annotations and the
/// certificate material off, the policy file parsed.
pub(crate) fn comparable(doc: &Value) -> Value {
    let mut doc = doc.clone();
    let metadata = doc["metadata"].as_object_mut().expect("metadata");
    if let Some(labels) = metadata.get_mut("labels").and_then(Value::as_object_mut) {
        for label in HELM_LABELS {
            labels.remove(*label);
        }
    }
    if let Some(annotations) = metadata
        .get_mut("annotations")
        .and_then(Value::as_object_mut)
    {
        annotations
            .retain(|k, _| !is_helm_annotation(k) && !CHART_ANNOTATIONS.contains(&k.as_str()));
        if annotations.is_empty() {
            metadata.remove("annotations");
        }
    }
    if let Some(labels) = doc
        .pointer_mut("/spec/template/metadata/labels")
        .and_then(Value::as_object_mut)
    {
        labels.remove("app.kubernetes.io/instance");
    }
    match doc["kind"].as_str() {
        Some("Secret") => {
            doc.as_object_mut().expect("secret").remove("data");
        }
        Some("MutatingWebhookConfiguration") => {
            for w in doc["webhooks"].as_array_mut().into_iter().flatten() {
                w["clientConfig"]
                    .as_object_mut()
                    .expect("clientConfig")
                    .remove("caBundle");
            }
        }
        Some("ConfigMap") => {
            if let Some(text) = doc["data"]["policy.yaml"].as_str() {
                let parsed: Value = calmplane::yaml::from_str(text).expect("policy.yaml");
                doc["data"]["policy.yaml"] = parsed;
            }
        }
        _ => {}
    }
    doc
}

/// Compare `chart` with `kustomize` object by object; `what` names the case.
pub(crate) fn assert_same_objects(chart: &[Value], kustomize: &[Value], what: &str) {
    let helm_only: BTreeSet<&str> = HELM_ONLY.iter().map(|(k, _)| *k).collect();
    let ours: BTreeMap<String, Value> = chart
        .iter()
        .filter(|d| !helm_only.contains(key(d).as_str()))
        .map(|d| (key(d), comparable(d)))
        .collect();
    let theirs: BTreeMap<String, Value> =
        kustomize.iter().map(|d| (key(d), comparable(d))).collect();
    assert_eq!(
        ours.keys().collect::<Vec<_>>(),
        theirs.keys().collect::<Vec<_>>(),
        "{what}: the same objects"
    );
    for (k, doc) in &ours {
        assert_eq!(
            doc, &theirs[k],
            "{what}: {k} differs from the kustomize render"
        );
    }
}

/// The caBundle of every webhook is the CA in the chart's Secret.
fn assert_ca_bundle_is_the_secret_ca(docs: &[Value]) {
    let ca = find(docs, "Secret", "calmplane-tls")["data"]["ca.crt"]
        .as_str()
        .expect("ca.crt")
        .to_string();
    let ca_secret = find(docs, "Secret", "calmplane-ca")["data"]["tls.crt"]
        .as_str()
        .expect("the CA's tls.crt")
        .to_string();
    assert_eq!(ca, ca_secret, "one CA");
    for config in of_kind(docs, "MutatingWebhookConfiguration") {
        for w in config["webhooks"].as_array().expect("webhooks") {
            assert_eq!(w["clientConfig"]["caBundle"], ca.as_str(), "{}", w["name"]);
        }
    }
}

fn static_overlay(test: &str) -> Option<Vec<Value>> {
    let kubectl = kubectl(test)?;
    let (_tmp, overlay, _certs) = render::static_overlay_copy();
    Some(render::kustomize(&kubectl, &overlay).1)
}

#[test]
fn the_defaults_render_what_kustomize_renders_for_the_static_overlay() {
    let test = "the_defaults_render_what_kustomize_renders_for_the_static_overlay";
    let (Some(helm), Some(kustomize)) = (helm(test), static_overlay(test)) else {
        return;
    };
    // A new release, once its hooks have run.
    let install = template(&helm, &json!({}), &[]);
    let installed = installed(&install);
    assert_same_objects(&installed, &kustomize, "helm install");
    assert_ca_bundle_is_the_secret_ca(&installed);
    // Every Helm-only object is really there (the list is not stale).
    let all: Vec<Value> = install.all().cloned().collect();
    for (k, why) in HELM_ONLY {
        assert!(
            all.iter().any(|d| key(d) == *k),
            "{k} ({why}) is not rendered"
        );
    }

    // An upgrade renders the same objects, the configuration as the
    // release's own object.
    let upgrade = template(&helm, &json!({}), &["--is-upgrade"]);
    assert!(
        upgrade
            .hooks
            .iter()
            .all(|h| hook_events(h) == ["test".to_string()]),
        "an upgrade has no hook but `helm test`"
    );
    assert_same_objects(&upgrade.objects, &kustomize, "helm upgrade");
    assert_ca_bundle_is_the_secret_ca(&upgrade.objects);
}

#[test]
fn the_comparison_notices_a_difference() {
    // The comparison is only as good as what it strips: a value that
    // changes an object must make it fail.
    let test = "the_comparison_notices_a_difference";
    let (Some(helm), Some(kustomize)) = (helm(test), static_overlay(test)) else {
        return;
    };
    for values in [
        json!({"replicas": 3}),
        json!({"policy": {"dns": {"ndots": 3}}}),
        json!({"webhook": {"excludedNamespaces": ["monitoring"]}}),
        json!({"image": {"tag": "0.0.9"}}),
        json!({"namespace": {"create": false}}),
    ] {
        let installed = installed(&template(&helm, &values, &[]));
        let caught = std::panic::catch_unwind(|| {
            assert_same_objects(&installed, &kustomize, "changed");
        })
        .is_err();
        assert!(caught, "{values} went unnoticed");
    }
}
