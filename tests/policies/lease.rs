//! `lease`: selectors rewritten wherever the pod carries them.

use super::*;

#[test]
fn lease_rewrites_annotation_env_and_both_flag_forms() {
    let mut h = Harness::new(&only("lease"));
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web-0", "namespace": "team-a",
                     "annotations": {annotations::LEASE_SELECTOR: "metadata.name=web-0", "other": "metadata.name=web-0"}},
        "spec": {
            "initContainers": [{
                "name": "init", "image": "busybox",
                "env": [
                    {"name": "LEASE_SELECTOR", "value": "metadata.name==web-0"},
                    {"name": "OTHER", "value": "metadata.name=web-0"}
                ]
            }],
            "containers": [
                {
                    "name": "app", "image": "app:1",
                    "env": [{"name": "LEASE_SELECTOR",
                             "value": "spec.holderIdentity!=x,metadata.name=web-0,status.phase=Running"}],
                    "args": ["--lease-selector=metadata.name=web-0", "--verbose",
                             "--lease-selector", "metadata.name==web-0,app=web",
                             "--peer", "metadata.name=web-0"]
                },
                {
                    "name": "side", "image": "side:1",
                    "env": [{"name": "LEASE_SELECTOR",
                             "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                    "args": ["--lease-selector-extra=metadata.name=web-0", "--lease-selector"]
                }
            ]
        }
    });
    let out = h.pod("lease-everywhere", "team-a", &pod);

    let mut want = pod.clone();
    want["metadata"]["annotations"][annotations::LEASE_SELECTOR] =
        json!("metadata.namespace=team-a");
    want["spec"]["initContainers"][0]["env"][0]["value"] = json!("metadata.namespace=team-a");
    want["spec"]["containers"][0]["env"][0]["value"] =
        json!("spec.holderIdentity!=x,metadata.namespace=team-a,status.phase=Running");
    want["spec"]["containers"][0]["args"] = json!([
        "--lease-selector=metadata.namespace=team-a",
        "--verbose",
        "--lease-selector",
        "metadata.namespace=team-a,app=web",
        "--peer",
        "metadata.name=web-0"
    ]);
    // Untouched: the other annotation, the env var with another name,
    // valueFrom, a flag that only starts with the flag name, a dangling flag.
    assert_eq!(out.object, want);
    assert_eq!(out.policies, vec!["lease"]);
    assert!(out.warnings.is_empty(), "{:?}", out.warnings);
    assert!(out.changes.iter().all(|c| c.policy == "lease"));
    assert_eq!(out.changes.len(), 5, "{:#?}", out.changes);
    h.finish();
}

#[test]
fn lease_terms_order_not_equals_and_no_duplicate_namespace_term() {
    let mut h = Harness::new(&only("lease"));
    let cases: &[(&str, Option<&str>)] = &[
        ("metadata.name=web-0", Some("metadata.namespace=team-a")),
        ("metadata.name==web-0", Some("metadata.namespace=team-a")),
        (
            "spec.holderIdentity!=x,metadata.name==web-0,status.phase=Running",
            Some("spec.holderIdentity!=x,metadata.namespace=team-a,status.phase=Running"),
        ),
        (
            "a=1,b==2,metadata.name=web-0,c!=3",
            Some("a=1,b==2,metadata.namespace=team-a,c!=3"),
        ),
        // A `!=` on the name is not a per-pod lease.
        ("metadata.name!=web-0", None),
        ("metadata.name!=web-0,app=web", None),
        // No duplicate namespace term, whichever comes first.
        (
            "metadata.namespace=team-a,metadata.name=web-0",
            Some("metadata.namespace=team-a"),
        ),
        (
            "metadata.name=web-0,metadata.namespace=team-a",
            Some("metadata.namespace=team-a"),
        ),
        (
            "metadata.name=a,x=y,metadata.name==b",
            Some("metadata.namespace=team-a,x=y"),
        ),
        ("metadata.namespace=team-a", None),
        ("metadata.namespace==team-a,app=web", None),
        ("app=web", None),
    ];
    for (i, (sel, want)) in cases.iter().enumerate() {
        let pod = annotated_pod(sel);
        let out = h.pod(&format!("terms-{i}"), "team-a", &pod);
        let got = out.object["metadata"]["annotations"][annotations::LEASE_SELECTOR]
            .as_str()
            .unwrap();
        assert_eq!(got, want.unwrap_or(sel), "selector {sel:?}");
        assert_eq!(out.patch.is_empty(), want.is_none(), "selector {sel:?}");
        assert!(out.warnings.is_empty(), "{sel:?}: {:?}", out.warnings);
    }
    h.finish();
}

#[test]
fn lease_follows_the_kubernetes_escape_grammar() {
    let mut h = Harness::new(&only("lease"));
    let rewritten: &[(&str, &str)] = &[
        // An escaped comma does not split terms.
        (
            r"app=a\,b,metadata.name=web-0",
            r"app=a\,b,metadata.namespace=team-a",
        ),
        (r"metadata.name=web\,0", "metadata.namespace=team-a"),
        // `\\` is an escaped backslash, so the comma after it does split.
        (
            r"app=a\\,metadata.name=web-0",
            r"app=a\\,metadata.namespace=team-a",
        ),
        // An escaped `=` stays in the value; untouched terms keep their bytes.
        (
            r"app=a\=b,metadata.name==web-0",
            r"app=a\=b,metadata.namespace=team-a",
        ),
        (
            r"metadata.name=web-0,x=\\\,\=",
            r"metadata.namespace=team-a,x=\\\,\=",
        ),
    ];
    for (i, (sel, want)) in rewritten.iter().enumerate() {
        let out = h.pod(&format!("escape-{i}"), "team-a", &annotated_pod(sel));
        assert_eq!(
            out.object["metadata"]["annotations"][annotations::LEASE_SELECTOR],
            json!(want),
            "selector {sel:?}"
        );
        assert!(out.warnings.is_empty(), "{sel:?}: {:?}", out.warnings);
    }
    // One term whose value holds an escaped `metadata.name\=y`: no name term.
    let sel = r"other=x\,metadata.name\=y";
    let out = h.pod("escape-one-term", "team-a", &annotated_pod(sel));
    assert!(out.patch.is_empty(), "{sel:?} has no metadata.name term");
    assert!(out.warnings.is_empty(), "{:?}", out.warnings);
    h.finish();
}

#[test]
fn lease_unparsable_selectors_are_left_unchanged_with_a_warning() {
    let h = Harness::new(&only("lease"));
    let bad = [
        "metadata.name=a=b",
        // The comma is escaped, so this is one term whose value has a bare `=`.
        r"other=x\,metadata.name=y",
        r"metadata.name=web-0\",
        r"metadata.name=we\b-0",
        "justtext",
        "metadata.name=web-0,bogus",
    ];
    for sel in bad {
        let out = h.pipeline.run(
            &Context::new(Kind::Pod, Operation::Create).in_namespace(Some("team-a")),
            annotated_pod(sel),
        );
        assert!(out.patch.is_empty(), "{sel:?} must be left unchanged");
        assert_eq!(out.object, annotated_pod(sel));
        assert_eq!(out.warnings.len(), 1, "{sel:?}: {:?}", out.warnings);
        let w = &out.warnings[0];
        assert!(
            w.contains("lease") && w.contains("unchanged"),
            "{sel:?}: warning {w:?} should say the lease selector was left unchanged"
        );
    }
    // One bad selector does not stop the good ones in the same pod.
    let mut h = h;
    let mut pod = annotated_pod("metadata.name=a=b");
    pod["spec"]["containers"][0]["env"] =
        json!([{"name": "LEASE_SELECTOR", "value": "metadata.name=web-0"}]);
    let out = h.pod("bad-and-good", "team-a", &pod);
    assert_eq!(
        out.object["spec"]["containers"][0]["env"][0]["value"],
        "metadata.namespace=team-a"
    );
    assert_eq!(
        out.object["metadata"]["annotations"][annotations::LEASE_SELECTOR],
        "metadata.name=a=b"
    );
    assert_eq!(out.warnings.len(), 1, "{:?}", out.warnings);
    h.finish();
}

#[test]
fn lease_uses_the_request_namespace() {
    let mut h = Harness::new(&only("lease"));
    // Pods created by controllers often carry no metadata.namespace.
    let mut pod = annotated_pod("metadata.name=web-0");
    pod["metadata"].as_object_mut().unwrap().remove("namespace");
    let out = h.pod("request-ns", "payments", &pod);
    assert_eq!(
        out.object["metadata"]["annotations"][annotations::LEASE_SELECTOR],
        "metadata.namespace=payments"
    );
    h.finish();
}

#[test]
fn lease_scope_annotation_gives_one_lease_per_hot_deployment() {
    let mut h = Harness::new(&only("lease"));
    let mut pod = annotated_pod("metadata.name=web-7d9f8b6c5-x2x4q,app=web");
    pod["metadata"]["annotations"][annotations::LEASE_SCOPE] = json!("deployment/web");
    pod["spec"]["containers"][0]["args"] =
        json!(["--lease-selector=spec.holderIdentity!=a,metadata.name==web-7d9f8b6c5-x2x4q"]);
    let out = h.pod("hot-scope", "team-a", &pod);
    assert_eq!(
        out.object["metadata"]["annotations"][annotations::LEASE_SELECTOR],
        "metadata.name=web,app=web"
    );
    assert_eq!(
        out.object["spec"]["containers"][0]["args"][0],
        "--lease-selector=spec.holderIdentity!=a,metadata.name=web"
    );
    // Not a namespace term anywhere.
    assert!(!out.object.to_string().contains("metadata.namespace="));
    h.finish();
}

#[test]
fn lease_mode_pod_turns_the_rewrite_off() {
    let mut h = Harness::new(&config("lease: {mode: pod}\n"));
    let mut pod = annotated_pod("metadata.name=web-0");
    pod["spec"]["containers"][0]["env"] =
        json!([{"name": "LEASE_SELECTOR", "value": "metadata.name=web-0"}]);
    pod["spec"]["containers"][0]["args"] = json!(["--lease-selector", "metadata.name=web-0"]);
    let out = h.pod("mode-pod", "team-a", &pod);
    // The other policies still run; the selectors stay per pod.
    assert!(!out.policies.contains(&"lease"), "{:?}", out.policies);
    assert!(out.policies.contains(&"dns"), "{:?}", out.policies);
    assert_eq!(
        out.object["metadata"]["annotations"],
        pod["metadata"]["annotations"]
    );
    assert_eq!(
        out.object["spec"]["containers"][0]["env"],
        pod["spec"]["containers"][0]["env"]
    );
    assert_eq!(
        out.object["spec"]["containers"][0]["args"],
        pod["spec"]["containers"][0]["args"]
    );
    // The same from a policy file.
    let config = Config::from_yaml("lease:\n  mode: pod\n", "policy.yaml").unwrap();
    let p = Pipeline::new(&config, std::sync::Arc::new(FixedClock(NOW))).unwrap();
    let req = Context::new(Kind::Pod, Operation::Create).in_namespace(Some("team-a"));
    assert!(!p.run(&req, pod).policies.contains(&"lease"));
    h.finish();
}

#[test]
fn lease_annotation_keys_env_names_and_flags_are_configurable() {
    let yaml = "lease:\n  annotations: [example.com/lease, example.com/lease2]\n  envNames: [MY_LEASE]\n  flags: [--lease, -l]\ndns: {enabled: false}\nprestop: {enabled: false}\n";
    let mut h = Harness::new(&config(yaml));
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web-0", "annotations": {
            "example.com/lease": "metadata.name=web-0",
            "example.com/lease2": "metadata.name==web-0,a=b",
            annotations::LEASE_SELECTOR: "metadata.name=web-0"
        }},
        "spec": {"containers": [{
            "name": "app", "image": "app:1",
            "env": [
                {"name": "MY_LEASE", "value": "metadata.name=web-0"},
                {"name": "LEASE_SELECTOR", "value": "metadata.name=web-0"}
            ],
            "args": ["--lease=metadata.name=web-0", "-l", "metadata.name=web-0",
                     "--lease-selector=metadata.name=web-0", "--lease-selector", "metadata.name=web-0"]
        }]}
    });
    let out = h.pod("configured", "team-a", &pod);
    let mut want = pod.clone();
    want["metadata"]["annotations"]["example.com/lease"] = json!("metadata.namespace=team-a");
    want["metadata"]["annotations"]["example.com/lease2"] = json!("metadata.namespace=team-a,a=b");
    want["spec"]["containers"][0]["env"][0]["value"] = json!("metadata.namespace=team-a");
    want["spec"]["containers"][0]["args"][0] = json!("--lease=metadata.namespace=team-a");
    want["spec"]["containers"][0]["args"][2] = json!("metadata.namespace=team-a");
    // The configured lists replace the defaults.
    assert_eq!(out.object, want);
    h.finish();
}
