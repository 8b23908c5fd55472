//! Per-policy behaviour, as issue #2 states it.
//!
//! Most cases run through the in-process [`Pipeline`] with a [`FixedClock`];
//! `*_over_tls` cases send the same kind of objects through `/mutate`.
//!
//! Every patched object goes through [`Harness::admit`] (or
//! [`PyChecks::add`] for the TLS cases), which checks that:
//! * the patch applied with the Rust `json-patch` crate gives calmplane's object;
//! * feeding the patched object back (same operation, same oldObject) gives no patch;
//! * at the end of the test, Python `jsonpatch` applies the patch to the
//!   original and gets the same object (tests/pycheck.py), and the object
//!   passes `kubernetes-validate --strict -k 1.34.0`.

use calmplane::config::{Config, LeaseMode, PrestopMode};
use calmplane::pipeline::{FixedClock, Outcome, Pipeline, Request};
use calmplane::policy::Kind;
use calmplane::SKIP_ANNOTATION;
use calmplane::{LEASE_SCOPE_ANNOTATION, LEASE_SELECTOR_ANNOTATION, ROLLOUTS_ANNOTATION};
use calmplane_testkit::harness::*;
use calmplane_testkit::pychecks::PyChecks;
use calmplane_testkit::review;
use kube::core::admission::Operation;
use serde_json::{json, Value};

/// The fixed "now" of the in-process cases (2025-12-29T09:20:00Z).
const NOW: i64 = 1_767_000_000;

// ---------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------

struct Harness {
    pipeline: Pipeline,
    py: PyChecks,
}

impl Harness {
    fn new(config: &Config) -> Harness {
        Harness::at(config, NOW)
    }

    fn at(config: &Config, now: i64) -> Harness {
        Harness {
            pipeline: Pipeline::new(config, std::sync::Arc::new(FixedClock(now))),
            py: PyChecks::new(),
        }
    }

    /// Run the pipeline, check the patch both ways and the second pass.
    fn admit(
        &mut self,
        name: &str,
        kind: Kind,
        operation: Operation,
        namespace: &str,
        object: &Value,
        old: Option<&Value>,
    ) -> Outcome {
        let req = Request {
            kind,
            operation: operation.clone(),
            namespace: Some(namespace),
            old_object: old,
            templates: None,
        };
        let out = self.pipeline.run(&req, object.clone());
        // `/mutate` reads only the view of the object: it must do the same.
        if let Err(e) = review::view_matches_whole(
            &self.pipeline,
            kind,
            calmplane::review::operation_str(&operation),
            Some(namespace),
            object,
            old,
            &out,
        ) {
            panic!("{name}: {e}");
        }
        for change in &out.changes {
            assert!(
                out.policies.contains(&change.policy),
                "{name}: change by {} but policies = {:?}",
                change.policy,
                out.policies
            );
        }
        if out.patch.is_empty() {
            assert_eq!(
                &out.object, object,
                "{name}: no patch, yet the object changed"
            );
            assert!(out.policies.is_empty(), "{name}: {:?}", out.policies);
            return out;
        }
        let patch = serde_json::to_value(&out.patch).unwrap();
        assert_eq!(
            apply_patch(object, &patch),
            out.object,
            "{name}: the json-patch crate does not reproduce the object from the patch {patch:#}"
        );
        let again = self.pipeline.run(&req, out.object.clone());
        assert!(
            again.patch.is_empty(),
            "{name}: the second pass patched again: {:#}",
            serde_json::to_value(&again.patch).unwrap()
        );
        self.py.add(name, object, &patch, &out.object);
        out
    }

    fn pod(&mut self, name: &str, namespace: &str, pod: &Value) -> Outcome {
        self.admit(name, Kind::Pod, Operation::Create, namespace, pod, None)
    }

    fn create(&mut self, name: &str, deployment: &Value) -> Outcome {
        self.admit(
            name,
            Kind::Deployment,
            Operation::Create,
            "shop",
            deployment,
            None,
        )
    }

    fn update(&mut self, name: &str, deployment: &Value, old: &Value) -> Outcome {
        self.admit(
            name,
            Kind::Deployment,
            Operation::Update,
            "shop",
            deployment,
            Some(old),
        )
    }

    fn finish(self) {
        self.py.run();
    }
}

/// Defaults with every policy but `name` turned off.
fn only(name: &str) -> Config {
    let mut c = Config::default();
    c.lease.enabled = name == "lease";
    c.rollout_history.enabled = name == "rollout-history";
    c.dns.enabled = name == "dns";
    c.prestop.enabled = name == "prestop";
    c.rollout.enabled = name == "rollout";
    c
}

fn patch_json(out: &Outcome) -> Value {
    serde_json::to_value(&out.patch).unwrap()
}

fn paths(out: &Outcome) -> Vec<String> {
    out.patch
        .iter()
        .map(|op| {
            serde_json::to_value(op).unwrap()["path"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

// ---------------------------------------------------------------------------
// lease
// ---------------------------------------------------------------------------

/// A pod whose only selector is the annotation `sel`.
fn annotated_pod(sel: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web-0", "namespace": "team-a",
                     "annotations": {LEASE_SELECTOR_ANNOTATION: sel}},
        "spec": {"containers": [{"name": "app", "image": "app:1"}]}
    })
}

#[test]
fn lease_rewrites_annotation_env_and_both_flag_forms() {
    let mut h = Harness::new(&only("lease"));
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web-0", "namespace": "team-a",
                     "annotations": {LEASE_SELECTOR_ANNOTATION: "metadata.name=web-0", "other": "metadata.name=web-0"}},
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
    want["metadata"]["annotations"][LEASE_SELECTOR_ANNOTATION] = json!("metadata.namespace=team-a");
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
        let got = out.object["metadata"]["annotations"][LEASE_SELECTOR_ANNOTATION]
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
            out.object["metadata"]["annotations"][LEASE_SELECTOR_ANNOTATION],
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
            &Request {
                kind: Kind::Pod,
                operation: Operation::Create,
                namespace: Some("team-a"),
                old_object: None,
                templates: None,
            },
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
        out.object["metadata"]["annotations"][LEASE_SELECTOR_ANNOTATION],
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
        out.object["metadata"]["annotations"][LEASE_SELECTOR_ANNOTATION],
        "metadata.namespace=payments"
    );
    h.finish();
}

#[test]
fn lease_scope_annotation_gives_one_lease_per_hot_deployment() {
    let mut h = Harness::new(&only("lease"));
    let mut pod = annotated_pod("metadata.name=web-7d9f8b6c5-x2x4q,app=web");
    pod["metadata"]["annotations"][LEASE_SCOPE_ANNOTATION] = json!("deployment/web");
    pod["spec"]["containers"][0]["args"] =
        json!(["--lease-selector=spec.holderIdentity!=a,metadata.name==web-7d9f8b6c5-x2x4q"]);
    let out = h.pod("hot-scope", "team-a", &pod);
    assert_eq!(
        out.object["metadata"]["annotations"][LEASE_SELECTOR_ANNOTATION],
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
    let mut config = Config::default();
    config.lease.mode = LeaseMode::Pod;
    let mut h = Harness::new(&config);
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
    let p = Pipeline::new(&config, std::sync::Arc::new(FixedClock(NOW)));
    let req = Request {
        kind: Kind::Pod,
        operation: Operation::Create,
        namespace: Some("team-a"),
        old_object: None,
        templates: None,
    };
    assert!(!p.run(&req, pod).policies.contains(&"lease"));
    h.finish();
}

#[test]
fn lease_annotation_keys_env_names_and_flags_are_configurable() {
    let yaml = "lease:\n  annotations: [example.com/lease, example.com/lease2]\n  envNames: [MY_LEASE]\n  flags: [--lease, -l]\n";
    let mut config = Config::from_yaml(yaml, "policy.yaml").unwrap();
    config.dns.enabled = false;
    config.prestop.enabled = false;
    let mut h = Harness::new(&config);
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web-0", "annotations": {
            "example.com/lease": "metadata.name=web-0",
            "example.com/lease2": "metadata.name==web-0,a=b",
            LEASE_SELECTOR_ANNOTATION: "metadata.name=web-0"
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

// ---------------------------------------------------------------------------
// rollout-history
// ---------------------------------------------------------------------------

/// A Deployment whose strategy already satisfies `rollout`, so that only
/// rollout-history can change it.
fn deployment(image: &str, history: Option<&str>, scope: Option<&str>) -> Value {
    let mut d = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "shop", "labels": {"app": "web"}},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "web"}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {"labels": {"app": "web"},
                             "annotations": {LEASE_SELECTOR_ANNOTATION: "metadata.name=placeholder"}},
                "spec": {"containers": [{
                    "name": "app", "image": image,
                    "args": ["--lease-selector", "metadata.name=placeholder,app=web"]
                }]}
            }
        }
    });
    if let Some(history) = history {
        d["metadata"]["annotations"] = json!({ ROLLOUTS_ANNOTATION: history });
    }
    if let Some(scope) = scope {
        d["spec"]["template"]["metadata"]["annotations"][LEASE_SCOPE_ANNOTATION] = json!(scope);
    }
    d
}

fn history(stamps: &[i64]) -> String {
    stamps
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

#[test]
fn rollout_history_first_template_change_is_recorded_and_not_hot() {
    let mut h = Harness::new(&Config::default());
    let old = deployment("app:1", None, None);
    let new = deployment("app:2", None, None);
    let out = h.update("first-change", &new, &old);
    let mut want = new.clone();
    want["metadata"]["annotations"] = json!({ ROLLOUTS_ANNOTATION: NOW.to_string() });
    assert_eq!(out.object, want);
    assert_eq!(out.policies, vec!["rollout-history"]);
    // The annotations map was missing: one add creates it, key escaped.
    assert_eq!(
        patch_json(&out),
        json!([{"op": "add", "path": "/metadata/annotations",
                "value": {ROLLOUTS_ANNOTATION: NOW.to_string()}}])
    );
    h.finish();
}

#[test]
fn rollout_history_prunes_old_entries_and_marks_hot_deployments() {
    let mut h = Harness::new(&Config::default());
    let stored = history(&[NOW - 4000, NOW - 3601, NOW - 100]);
    let old = deployment("app:1", Some(&stored), None);
    let new = deployment("app:2", Some(&stored), None);
    let out = h.update("hot", &new, &old);
    let mut want = new.clone();
    want["metadata"]["annotations"][ROLLOUTS_ANNOTATION] = json!(history(&[NOW - 100, NOW]));
    want["spec"]["template"]["metadata"]["annotations"][LEASE_SCOPE_ANNOTATION] =
        json!("deployment/web");
    assert_eq!(out.object, want);
    assert!(out.warnings.is_empty(), "{:?}", out.warnings);
    let p = paths(&out);
    assert!(
        p.contains(&"/metadata/annotations/calmplane.dev~1rollouts".to_string()),
        "{p:?}"
    );
    assert!(
        p.contains(&"/spec/template/metadata/annotations/calmplane.dev~1lease-scope".to_string()),
        "{p:?}"
    );

    // End to end: the pods of the hot Deployment share one lease per Deployment.
    let pod = pod_from_template(&out.object).unwrap();
    let pod_out = h.pod("hot-pod", "shop", &pod);
    assert_eq!(
        pod_out.object["metadata"]["annotations"][LEASE_SELECTOR_ANNOTATION],
        "metadata.name=web"
    );
    assert_eq!(
        pod_out.object["spec"]["containers"][0]["args"][1],
        "metadata.name=web,app=web"
    );
    h.finish();
}

#[test]
fn rollout_history_survives_an_update_that_drops_the_annotation() {
    // `kubectl replace` sends the object without annotations it was not given.
    let mut h = Harness::new(&Config::default());
    let old = deployment("app:1", Some(&history(&[NOW - 100])), None);
    let new = deployment("app:2", None, None);
    let out = h.update("replace", &new, &old);
    assert_eq!(
        out.object["metadata"]["annotations"][ROLLOUTS_ANNOTATION],
        json!(history(&[NOW - 100, NOW]))
    );
    assert_eq!(
        out.object["spec"]["template"]["metadata"]["annotations"][LEASE_SCOPE_ANNOTATION],
        "deployment/web"
    );
    h.finish();
}

#[test]
fn rollout_history_cooled_down_deployment_loses_the_scope() {
    let mut h = Harness::new(&Config::default());
    let stored = history(&[NOW - 5000, NOW - 4000]);
    let old = deployment("app:1", Some(&stored), Some("deployment/web"));
    let new = deployment("app:2", Some(&stored), Some("deployment/web"));
    let out = h.update("cooled", &new, &old);
    let want = deployment("app:2", Some(&NOW.to_string()), None);
    assert_eq!(out.object, want);
    assert!(patch_json(&out)
        .as_array()
        .unwrap()
        .iter()
        .any(|op| op["op"] == "remove"
            && op["path"] == "/spec/template/metadata/annotations/calmplane.dev~1lease-scope"));

    // Its pods go back to one lease per namespace.
    let pod = pod_from_template(&out.object).unwrap();
    let pod_out = h.pod("cooled-pod", "shop", &pod);
    assert_eq!(
        pod_out.object["metadata"]["annotations"][LEASE_SELECTOR_ANNOTATION],
        "metadata.namespace=shop"
    );
    h.finish();
}

#[test]
fn rollout_history_never_triggers_a_rollout() {
    let mut h = Harness::new(&Config::default());
    // Hot history but no template change (a scale): nothing at all.
    let hot = history(&[NOW - 200, NOW - 100]);
    let old = deployment("app:1", Some(&hot), None);
    let mut new = old.clone();
    new["spec"]["replicas"] = json!(10);
    let out = h.update("scale", &new, &old);
    assert!(out.patch.is_empty(), "{:#}", patch_json(&out));

    // Cold history, template still marked hot, no template change: the
    // template annotation stays (removing it would roll the Deployment).
    let cold = history(&[NOW - 9000]);
    let old = deployment("app:1", Some(&cold), Some("deployment/web"));
    let mut new = old.clone();
    new["metadata"]["labels"]["team"] = json!("b");
    let out = h.update("label-change", &new, &old);
    assert!(out.patch.is_empty(), "{:#}", patch_json(&out));

    // Only calmplane's own annotation differs: not a template change. An
    // update that dropped it (kubectl replace, a GitOps sync of the manifest
    // as written) gets it back, or the template hash would change and the
    // Deployment controller would roll every pod.
    let old = deployment("app:1", Some(&hot), Some("deployment/web"));
    let new = deployment("app:1", Some(&hot), None);
    let out = h.update("scope-removed", &new, &old);
    assert_eq!(out.object, old);
    assert_eq!(
        paths(&out),
        vec!["/spec/template/metadata/annotations/calmplane.dev~1lease-scope"]
    );
    let out = h.update("scope-added", &old, &new);
    assert!(out.patch.is_empty(), "{:#}", patch_json(&out));

    // The same replace without the history: both come back, nothing else moves.
    let mut bare = deployment("app:1", None, None);
    bare["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("annotations");
    bare["spec"]["template"]["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("annotations");
    let mut old = deployment("app:1", Some(&hot), Some("deployment/web"));
    old["spec"]["template"]["metadata"]["annotations"]
        .as_object_mut()
        .unwrap()
        .remove(LEASE_SELECTOR_ANNOTATION);
    let out = h.update("replace-without-annotations", &bare, &old);
    assert_eq!(out.object, old);
    // An emptied history is the user's choice and stays empty.
    let mut emptied = old.clone();
    emptied["metadata"]["annotations"][ROLLOUTS_ANNOTATION] = json!("");
    let out = h.update("history-emptied", &emptied, &old);
    assert!(out.patch.is_empty(), "{:#}", patch_json(&out));

    // Any other template annotation does count.
    let mut new = deployment("app:1", Some(&hot), None);
    new["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"] =
        json!("2025-12-29T09:19:00Z");
    let old = deployment("app:1", Some(&hot), None);
    let out = h.update("restart", &new, &old);
    assert_eq!(out.policies, vec!["rollout-history"]);
    assert_eq!(
        out.object["metadata"]["annotations"][ROLLOUTS_ANNOTATION],
        json!(history(&[NOW - 200, NOW - 100, NOW]))
    );

    // CREATE is not a rollout.
    let out = h.create("create", &deployment("app:1", None, None));
    assert!(out.patch.is_empty(), "{:#}", patch_json(&out));
    h.finish();
}

#[test]
fn rollout_history_reinvocation_yields_no_patch() {
    // Harness::admit feeds every patched object back with the same oldObject;
    // this states it directly for a hot and a cold update.
    let mut h = Harness::new(&Config::default());
    for (name, stored) in [("hot", Some(history(&[NOW - 100]))), ("cold", None)] {
        let old = deployment("app:1", stored.as_deref(), None);
        let new = deployment("app:2", stored.as_deref(), None);
        let first = h.update(name, &new, &old);
        assert!(!first.patch.is_empty());
        let req = Request {
            kind: Kind::Deployment,
            operation: Operation::Update,
            namespace: Some("shop"),
            old_object: Some(&old),
            templates: None,
        };
        let second = h.pipeline.run(&req, first.object.clone());
        assert!(second.patch.is_empty(), "{:?}", second.patch);
        assert_eq!(second.object, first.object);
        // A third call is still stable (the history is not appended again).
        let third = h.pipeline.run(&req, second.object.clone());
        assert!(third.patch.is_empty());
    }
    h.finish();
}

#[test]
fn rollout_history_threshold_is_configurable() {
    let config = Config::from_yaml("rolloutHistory:\n  hotRolloutsPerHour: 3\n", "p.yaml").unwrap();
    let mut h = Harness::new(&config);
    let two = history(&[NOW - 300, NOW - 200]);
    let out = h.update(
        "three-is-not-more-than-three",
        &deployment("app:2", Some(&two), None),
        &deployment("app:1", Some(&two), None),
    );
    assert_eq!(
        out.object["metadata"]["annotations"][ROLLOUTS_ANNOTATION],
        json!(history(&[NOW - 300, NOW - 200, NOW]))
    );
    assert!(out.object["spec"]["template"]["metadata"]["annotations"]
        .get(LEASE_SCOPE_ANNOTATION)
        .is_none());
    let three = history(&[NOW - 300, NOW - 200, NOW - 100]);
    let out = h.update(
        "four-is-hot",
        &deployment("app:2", Some(&three), None),
        &deployment("app:1", Some(&three), None),
    );
    assert_eq!(
        out.object["spec"]["template"]["metadata"]["annotations"][LEASE_SCOPE_ANNOTATION],
        "deployment/web"
    );
    h.finish();
}

// ---------------------------------------------------------------------------
// dns
// ---------------------------------------------------------------------------

fn plain_pod(spec_extra: Value) -> Value {
    let mut pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "p", "namespace": "team-a"},
        "spec": {"containers": [{"name": "app", "image": "app:1"}]}
    });
    for (k, v) in spec_extra.as_object().unwrap() {
        pod["spec"][k] = v.clone();
    }
    pod
}

#[test]
fn dns_adds_ndots_2_as_a_string_and_single_request_reopen() {
    let mut h = Harness::new(&only("dns"));
    let wanted = json!([{"name": "ndots", "value": "2"}, {"name": "single-request-reopen"}]);

    // dnsConfig missing: one add of the whole dnsConfig.
    let pod = plain_pod(json!({}));
    let out = h.pod("dns-missing", "team-a", &pod);
    assert_eq!(out.object["spec"]["dnsConfig"], json!({"options": wanted}));
    assert!(out.object["spec"]["dnsConfig"]["options"][0]["value"].is_string());
    assert_eq!(out.policies, vec!["dns"]);
    assert_eq!(out.patch.len(), 1);

    // dnsConfig present without options: nameservers and searches kept.
    let pod =
        plain_pod(json!({"dnsConfig": {"nameservers": ["192.0.2.1"], "searches": ["a.example"]}}));
    let out = h.pod("dns-no-options", "team-a", &pod);
    assert_eq!(
        out.object["spec"]["dnsConfig"],
        json!({"nameservers": ["192.0.2.1"], "searches": ["a.example"], "options": wanted})
    );

    // options present: others kept in place, ours appended.
    let pod = plain_pod(
        json!({"dnsConfig": {"options": [{"name": "edns0"}, {"name": "timeout", "value": "1"}]}}),
    );
    let out = h.pod("dns-other-options", "team-a", &pod);
    assert_eq!(
        out.object["spec"]["dnsConfig"]["options"],
        json!([{"name": "edns0"}, {"name": "timeout", "value": "1"},
               {"name": "ndots", "value": "2"}, {"name": "single-request-reopen"}])
    );

    // Already there: no duplicates, no patch.
    let pod = plain_pod(json!({"dnsConfig": {"options": [
        {"name": "single-request-reopen"}, {"name": "ndots", "value": "2"}]}}));
    let out = h.pod("dns-already", "team-a", &pod);
    assert!(out.patch.is_empty());

    // One of the two present: only the other is added.
    let pod = plain_pod(json!({"dnsConfig": {"options": [{"name": "single-request-reopen"}]}}));
    let out = h.pod("dns-half", "team-a", &pod);
    assert_eq!(
        out.object["spec"]["dnsConfig"]["options"],
        json!([{"name": "single-request-reopen"}, {"name": "ndots", "value": "2"}])
    );

    // dnsConfig: null is absent.
    let pod = plain_pod(json!({"dnsConfig": null}));
    let out = h.pod("dns-null", "team-a", &pod);
    assert_eq!(out.object["spec"]["dnsConfig"], json!({"options": wanted}));

    // The corpus pod with dnsPolicy None and its own ndots 2 + edns0.
    let text = std::fs::read_to_string(corpus_file(
        "kubernetes__website__content__en__examples__service__networking__custom-dns.yaml",
    ))
    .unwrap();
    let pod: Value = calmplane::yaml::from_str(&text).unwrap();
    let out = h.pod("dns-custom-dns", "default", &pod);
    assert_eq!(
        out.object["spec"]["dnsConfig"]["options"],
        json!([{"name": "ndots", "value": "2"}, {"name": "edns0"}, {"name": "single-request-reopen"}])
    );
    assert_eq!(
        out.object["spec"]["dnsConfig"]["nameservers"],
        json!(["192.0.2.1"])
    );
    h.finish();
}

#[test]
fn dns_respects_an_existing_ndots_unless_override() {
    let pod = plain_pod(json!({"dnsConfig": {"options": [{"name": "ndots", "value": "5"}]}}));
    let mut h = Harness::new(&only("dns"));
    let out = h.pod("ndots-respected", "team-a", &pod);
    assert_eq!(
        out.object["spec"]["dnsConfig"]["options"],
        json!([{"name": "ndots", "value": "5"}, {"name": "single-request-reopen"}])
    );

    let mut config = Config::from_yaml("dns:\n  override: true\n", "p.yaml").unwrap();
    config.lease.enabled = false;
    config.prestop.enabled = false;
    let mut h2 = Harness::new(&config);
    let out = h2.pod("ndots-override", "team-a", &pod);
    assert_eq!(
        out.object["spec"]["dnsConfig"]["options"],
        json!([{"name": "ndots", "value": "2"}, {"name": "single-request-reopen"}])
    );
    // override with ndots already 2: nothing to do.
    let pod = plain_pod(json!({"dnsConfig": {"options": [
        {"name": "ndots", "value": "2"}, {"name": "single-request-reopen"}]}}));
    assert!(h2
        .pod("ndots-override-noop", "team-a", &pod)
        .patch
        .is_empty());
    h.finish();
    h2.finish();
}

#[test]
fn dns_skips_windows_pods() {
    let mut h = Harness::new(&Config::default());
    for (name, extra) in [
        ("os-name", json!({"os": {"name": "windows"}})),
        (
            "node-selector",
            json!({"nodeSelector": {"kubernetes.io/os": "windows"}}),
        ),
    ] {
        let pod = plain_pod(extra);
        let out = h.pod(name, "team-a", &pod);
        assert!(!out.policies.contains(&"dns"), "{name}: {:?}", out.policies);
        assert!(out.object["spec"].get("dnsConfig").is_none(), "{name}");
        assert!(paths(&out)
            .iter()
            .all(|p| !p.starts_with("/spec/dnsConfig")));
    }
    // Linux pods pinned by the same selector still get it.
    let pod =
        plain_pod(json!({"nodeSelector": {"kubernetes.io/os": "linux"}, "os": {"name": "linux"}}));
    let out = h.pod("linux", "team-a", &pod);
    assert!(out.policies.contains(&"dns"));
    h.finish();
}

// ---------------------------------------------------------------------------
// prestop
// ---------------------------------------------------------------------------

#[test]
fn prestop_sleeps_on_every_container_without_a_hook() {
    let mut h = Harness::new(&only("prestop"));
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "p"},
        "spec": {
            "initContainers": [
                {"name": "init", "image": "busybox"},
                {"name": "sidecar", "image": "proxy", "restartPolicy": "Always"}
            ],
            "containers": [
                {"name": "a", "image": "a"},
                {"name": "b", "image": "b", "lifecycle": {"postStart": {"exec": {"command": ["true"]}}}},
                {"name": "c", "image": "c", "lifecycle": {"preStop": {"exec": {"command": ["/drain"]}}}},
                {"name": "d", "image": "d", "lifecycle": {"preStop": {"httpGet": {"path": "/stop", "port": 8080}}}}
            ]
        }
    });
    let out = h.pod("prestop", "team-a", &pod);
    let sleep = json!({"sleep": {"seconds": 5}});
    let mut want = pod.clone();
    want["spec"]["containers"][0]["lifecycle"] = json!({"preStop": sleep});
    want["spec"]["containers"][1]["lifecycle"]["preStop"] = sleep.clone();
    assert_eq!(out.object, want);
    // The unset grace period (default 30 s) is left alone, without a warning.
    assert!(out.object["spec"]
        .get("terminationGracePeriodSeconds")
        .is_none());
    assert!(out.warnings.is_empty(), "{:?}", out.warnings);
    assert_eq!(out.policies, vec!["prestop"]);

    // Every container already has a hook: nothing to do.
    let mut all = pod.clone();
    all["spec"]["containers"] = json!([pod["spec"]["containers"][2].clone()]);
    assert!(h.pod("prestop-all-hooked", "team-a", &all).patch.is_empty());
    h.finish();
}

#[test]
fn prestop_exec_mode() {
    let config = Config::from_yaml("prestop:\n  mode: exec\n", "p.yaml").unwrap();
    assert_eq!(config.prestop.mode, PrestopMode::Exec);
    let mut config = config;
    config.dns.enabled = false;
    config.lease.enabled = false;
    let mut h = Harness::new(&config);
    let pod = plain_pod(json!({}));
    let out = h.pod("exec", "team-a", &pod);
    assert_eq!(
        out.object["spec"]["containers"][0]["lifecycle"],
        json!({"preStop": {"exec": {"command": ["sh", "-c", "sleep 5"]}}})
    );
    h.finish();
}

#[test]
fn prestop_raises_a_short_grace_period_with_a_warning() {
    let mut h = Harness::new(&only("prestop"));
    for (grace, want, warns) in [
        (5, 10, true),
        (1, 10, true),
        (9, 10, true),
        (10, 10, false),
        (11, 11, false),
        (30, 30, false),
    ] {
        let pod = plain_pod(json!({"terminationGracePeriodSeconds": grace}));
        let out = h.pod(&format!("grace-{grace}"), "team-a", &pod);
        assert_eq!(
            out.object["spec"]["terminationGracePeriodSeconds"],
            json!(want),
            "grace {grace}"
        );
        assert_eq!(
            out.object["spec"]["containers"][0]["lifecycle"]["preStop"],
            json!({"sleep": {"seconds": 5}})
        );
        assert_eq!(
            out.warnings.len(),
            usize::from(warns),
            "grace {grace}: {:?}",
            out.warnings
        );
        if warns {
            let w = &out.warnings[0];
            assert!(
                w.contains("terminationGracePeriodSeconds")
                    && w.contains(&grace.to_string())
                    && w.contains("10"),
                "{w}"
            );
            assert!(paths(&out).contains(&"/spec/terminationGracePeriodSeconds".to_string()));
        } else {
            assert!(!paths(&out).contains(&"/spec/terminationGracePeriodSeconds".to_string()));
        }
    }
    // sleepSeconds and minDrainSeconds set the sum.
    let mut config = Config::from_yaml(
        "prestop:\n  sleepSeconds: 3\n  minDrainSeconds: 2\n",
        "p.yaml",
    )
    .unwrap();
    config.dns.enabled = false;
    let mut h2 = Harness::new(&config);
    let out = h2.pod(
        "grace-custom",
        "team-a",
        &plain_pod(json!({"terminationGracePeriodSeconds": 4})),
    );
    assert_eq!(out.object["spec"]["terminationGracePeriodSeconds"], 5);
    assert_eq!(
        out.object["spec"]["containers"][0]["lifecycle"]["preStop"],
        json!({"sleep": {"seconds": 3}})
    );
    h.finish();
    h2.finish();
}

// ---------------------------------------------------------------------------
// rollout
// ---------------------------------------------------------------------------

fn bare_deployment(strategy: Option<Value>) -> Value {
    let mut d = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                         "spec": {"containers": [{"name": "app", "image": "app:1"}]}}
        }
    });
    if let Some(s) = strategy {
        d["spec"]["strategy"] = s;
    }
    d
}

#[test]
fn rollout_absent_strategy_is_added_whole() {
    let mut h = Harness::new(&only("rollout"));
    let out = h.create("no-strategy", &bare_deployment(None));
    assert_eq!(
        patch_json(&out),
        json!([{"op": "add", "path": "/spec/strategy", "value": {"rollingUpdate": {"maxUnavailable": 0}}}])
    );
    assert!(out.warnings.is_empty());
    for (name, s, want) in [
        (
            "empty",
            json!({}),
            json!({"rollingUpdate": {"maxUnavailable": 0}}),
        ),
        (
            "type-only",
            json!({"type": "RollingUpdate"}),
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0}}),
        ),
        (
            "defaults",
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}}),
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0}}),
        ),
        (
            "null-rolling-update",
            json!({"type": "RollingUpdate", "rollingUpdate": null}),
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0}}),
        ),
        (
            "null-strategy",
            Value::Null,
            json!({"rollingUpdate": {"maxUnavailable": 0}}),
        ),
        (
            "surge-only",
            json!({"rollingUpdate": {"maxSurge": 2}}),
            json!({"rollingUpdate": {"maxSurge": 2, "maxUnavailable": 0}}),
        ),
    ] {
        let out = h.create(name, &bare_deployment(Some(s)));
        assert_eq!(out.object["spec"]["strategy"], want, "{name}");
        assert!(out.warnings.is_empty(), "{name}: {:?}", out.warnings);
        assert_eq!(out.policies, vec!["rollout"]);
    }
    h.finish();
}

#[test]
fn rollout_applies_on_create_and_update_but_not_recreate() {
    let mut h = Harness::new(&only("rollout"));
    let old = bare_deployment(Some(json!({"rollingUpdate": {"maxUnavailable": 1}})));
    let new = old.clone();
    let out = h.update("update", &new, &old);
    assert_eq!(
        out.object["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"],
        0
    );
    assert_eq!(
        patch_json(&out),
        json!([{"op": "replace", "path": "/spec/strategy/rollingUpdate/maxUnavailable", "value": 0}])
    );

    let recreate = bare_deployment(Some(json!({"type": "Recreate"})));
    assert!(h.create("recreate-create", &recreate).patch.is_empty());
    assert!(h
        .update("recreate-update", &recreate, &recreate)
        .patch
        .is_empty());

    let done = bare_deployment(Some(
        json!({"rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}),
    ));
    assert!(h.create("already", &done).patch.is_empty());
    let done = bare_deployment(Some(
        json!({"rollingUpdate": {"maxUnavailable": "0%", "maxSurge": "25%"}}),
    ));
    assert!(h.create("already-percent", &done).patch.is_empty());
    h.finish();
}

#[test]
fn rollout_raises_a_zero_max_surge_with_a_warning() {
    let mut h = Harness::new(&only("rollout"));
    for (name, surge) in [
        ("int", json!(0)),
        ("percent", json!("0%")),
        ("string", json!("0")),
    ] {
        for unavailable in [json!("25%"), json!(0)] {
            let d = bare_deployment(Some(json!({"type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": surge, "maxUnavailable": unavailable}})));
            let out = h.create(&format!("surge-{name}"), &d);
            assert_eq!(
                out.object["spec"]["strategy"]["rollingUpdate"],
                json!({"maxSurge": 1, "maxUnavailable": 0}),
                "maxSurge {surge}"
            );
            assert_eq!(out.warnings.len(), 1, "{:?}", out.warnings);
            assert!(out.warnings[0].contains("maxSurge"), "{}", out.warnings[0]);
        }
    }
    // A non-zero maxSurge is kept and not warned about.
    let d = bare_deployment(Some(
        json!({"rollingUpdate": {"maxSurge": "10%", "maxUnavailable": "25%"}}),
    ));
    let out = h.create("surge-kept", &d);
    assert_eq!(
        out.object["spec"]["strategy"]["rollingUpdate"]["maxSurge"],
        "10%"
    );
    assert!(out.warnings.is_empty());
    h.finish();
}

// ---------------------------------------------------------------------------
// opting out
// ---------------------------------------------------------------------------

fn selector_pod(skip: Option<&str>) -> Value {
    let mut pod = annotated_pod("metadata.name=web-0");
    if let Some(skip) = skip {
        pod["metadata"]["annotations"][SKIP_ANNOTATION] = json!(skip);
    }
    pod
}

#[test]
fn skip_all_and_comma_lists() {
    let mut h = Harness::new(&Config::default());
    let out = h.pod("no-skip", "team-a", &selector_pod(None));
    assert_eq!(out.policies, vec!["lease", "dns", "prestop"]);

    for skip in ["all", " all ", "dns,all"] {
        let out = h.pod("skip-all", "team-a", &selector_pod(Some(skip)));
        assert!(out.patch.is_empty(), "skip {skip:?}");
        assert!(out.warnings.is_empty(), "skip {skip:?}: {:?}", out.warnings);
    }
    for (skip, left) in [
        ("dns", vec!["lease", "prestop"]),
        ("dns,prestop", vec!["lease"]),
        ("dns, prestop", vec!["lease"]),
        ("lease", vec!["dns", "prestop"]),
        ("lease,dns,prestop", vec![]),
    ] {
        let out = h.pod(&format!("skip-{skip}"), "team-a", &selector_pod(Some(skip)));
        assert_eq!(out.policies, left, "skip {skip:?}");
        assert!(out.warnings.is_empty(), "{skip:?}: {:?}", out.warnings);
        let lease_done = out.object["metadata"]["annotations"][LEASE_SELECTOR_ANNOTATION]
            == "metadata.namespace=team-a";
        assert_eq!(lease_done, left.contains(&"lease"), "skip {skip:?}");
    }

    // Deployments: rollout and rollout-history by name.
    let d = bare_deployment(None);
    let mut skipped = d.clone();
    skipped["metadata"]["annotations"] = json!({SKIP_ANNOTATION: "rollout"});
    assert!(h.create("skip-rollout", &skipped).patch.is_empty());
    let old = {
        let mut o = skipped.clone();
        o["metadata"]["annotations"][SKIP_ANNOTATION] = json!("rollout-history");
        o
    };
    let mut new = old.clone();
    new["spec"]["template"]["spec"]["containers"][0]["image"] = json!("app:2");
    let out = h.update("skip-history", &new, &old);
    assert_eq!(out.policies, vec!["rollout"]);
    assert!(out.object["metadata"]["annotations"]
        .get(ROLLOUTS_ANNOTATION)
        .is_none());
    h.finish();
}

#[test]
fn pods_inherit_skip_from_their_template() {
    let mut h = Harness::new(&Config::default());
    let mut d = deployment("app:1", None, None);
    d["spec"]["template"]["metadata"]["annotations"][SKIP_ANNOTATION] = json!("lease,prestop");
    let pod = pod_from_template(&d).unwrap();
    let out = h.pod("inherited", "shop", &pod);
    assert_eq!(out.policies, vec!["dns"]);
    assert_eq!(
        out.object["metadata"]["annotations"][LEASE_SELECTOR_ANNOTATION],
        "metadata.name=placeholder"
    );
    d["spec"]["template"]["metadata"]["annotations"][SKIP_ANNOTATION] = json!("all");
    let out = h.pod("inherited-all", "shop", &pod_from_template(&d).unwrap());
    assert!(out.patch.is_empty());
    // The template's skip is about its pods, not the Deployment itself.
    let mut d2 = bare_deployment(None);
    d2["spec"]["template"]["metadata"]["annotations"] = json!({SKIP_ANNOTATION: "all"});
    assert_eq!(
        h.create("template-skip-deployment", &d2).policies,
        vec!["rollout"]
    );
    h.finish();
}

#[test]
fn unknown_skip_names_warn() {
    let mut h = Harness::new(&Config::default());
    let out = h.pod("skip-typo", "team-a", &selector_pod(Some("dsn,prestop")));
    // `dsn` matches nothing, so dns still runs; prestop is skipped.
    assert_eq!(out.policies, vec!["lease", "dns"]);
    assert_eq!(out.warnings.len(), 1, "{:?}", out.warnings);
    assert!(out.warnings[0].contains("dsn"), "{}", out.warnings[0]);
    assert!(
        out.warnings[0].contains(SKIP_ANNOTATION),
        "{}",
        out.warnings[0]
    );
    h.finish();
}

// ---------------------------------------------------------------------------
// every policy over TLS
// ---------------------------------------------------------------------------

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// POST one review, check the patch with the Rust crate, send the patched
/// object back (same operation and oldObject) and require no patch.
async fn mutate_checked(
    client: &mut TlsClient,
    py: &mut PyChecks,
    name: &str,
    operation: &str,
    namespace: &str,
    object: &Value,
    old: Option<&Value>,
) -> (Value, Value) {
    let reply = client
        .mutate(&review(name, operation, namespace, object, old))
        .await;
    let (response, patch) = decode_response(&reply);
    assert_eq!(response["uid"], name);
    let Some(patch) = patch else {
        return (response, object.clone());
    };
    let patched = apply_patch(object, &patch);
    py.add(name, object, &patch, &patched);
    let again = client
        .mutate(&review(
            &format!("{name}-again"),
            operation,
            namespace,
            &patched,
            old,
        ))
        .await;
    let (_, second) = decode_response(&again);
    assert_eq!(second, None, "{name}: second pass patched again");
    (response, patched)
}

#[tokio::test]
async fn every_policy_over_tls() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    let mut py = PyChecks::new();

    // lease
    let mut pod = annotated_pod("spec.holderIdentity!=x,metadata.name==web-0");
    pod["spec"]["containers"][0]["args"] = json!(["--lease-selector", "metadata.name=web-0"]);
    let (_, patched) =
        mutate_checked(&mut c, &mut py, "lease", "CREATE", "team-a", &pod, None).await;
    assert_eq!(
        patched["metadata"]["annotations"][LEASE_SELECTOR_ANNOTATION],
        "spec.holderIdentity!=x,metadata.namespace=team-a"
    );
    assert_eq!(
        patched["spec"]["containers"][0]["args"][1],
        "metadata.namespace=team-a"
    );
    let (response, patched) = mutate_checked(
        &mut c,
        &mut py,
        "lease-bad",
        "CREATE",
        "team-a",
        &annotated_pod("metadata.name=a=b"),
        None,
    )
    .await;
    assert_eq!(
        patched["metadata"]["annotations"][LEASE_SELECTOR_ANNOTATION],
        "metadata.name=a=b"
    );
    one_warning(&response, "lease");

    // rollout-history, with the server's real clock
    let now = unix_now();
    let stored = history(&[now - 4000, now - 60]);
    let old = deployment("app:1", Some(&stored), None);
    let new = deployment("app:2", Some(&stored), None);
    let before = unix_now();
    let (response, patched) = mutate_checked(
        &mut c,
        &mut py,
        "history",
        "UPDATE",
        "shop",
        &new,
        Some(&old),
    )
    .await;
    let after = unix_now();
    let recorded: Vec<i64> = patched["metadata"]["annotations"][ROLLOUTS_ANNOTATION]
        .as_str()
        .unwrap()
        .split(',')
        .map(|s| s.parse().unwrap())
        .collect();
    assert_eq!(recorded.len(), 2, "{recorded:?}");
    assert_eq!(recorded[0], now - 60);
    assert!((before..=after).contains(&recorded[1]), "{recorded:?}");
    assert_eq!(
        patched["spec"]["template"]["metadata"]["annotations"][LEASE_SCOPE_ANNOTATION],
        "deployment/web"
    );
    assert_eq!(response["auditAnnotations"]["policies"], "rollout-history");
    let pod = pod_from_template(&patched).unwrap();
    let (_, patched_pod) =
        mutate_checked(&mut c, &mut py, "hot-pod", "CREATE", "shop", &pod, None).await;
    assert_eq!(
        patched_pod["metadata"]["annotations"][LEASE_SELECTOR_ANNOTATION],
        "metadata.name=web"
    );
    // no template change: no patch
    let mut scaled = new.clone();
    scaled["spec"]["replicas"] = json!(5);
    let (response, _) = mutate_checked(
        &mut c,
        &mut py,
        "scale",
        "UPDATE",
        "shop",
        &scaled,
        Some(&new),
    )
    .await;
    assert!(response.get("patch").is_none());

    // dns
    let (_, patched) = mutate_checked(
        &mut c,
        &mut py,
        "dns",
        "CREATE",
        "team-a",
        &plain_pod(json!({"dnsConfig": {"options": [{"name": "edns0"}]}})),
        None,
    )
    .await;
    assert_eq!(
        patched["spec"]["dnsConfig"]["options"],
        json!([{"name": "edns0"}, {"name": "ndots", "value": "2"}, {"name": "single-request-reopen"}])
    );

    // prestop
    let (response, patched) = mutate_checked(
        &mut c,
        &mut py,
        "prestop",
        "CREATE",
        "team-a",
        &plain_pod(json!({"terminationGracePeriodSeconds": 5, "os": {"name": "linux"}})),
        None,
    )
    .await;
    assert_eq!(patched["spec"]["terminationGracePeriodSeconds"], 10);
    assert_eq!(
        patched["spec"]["containers"][0]["lifecycle"]["preStop"],
        json!({"sleep": {"seconds": 5}})
    );
    one_warning(&response, "terminationGracePeriodSeconds");

    // rollout
    let (response, patched) = mutate_checked(
        &mut c,
        &mut py,
        "rollout",
        "CREATE",
        "shop",
        &bare_deployment(None),
        None,
    )
    .await;
    assert_eq!(
        patched["spec"]["strategy"],
        json!({"rollingUpdate": {"maxUnavailable": 0}})
    );
    assert!(warnings(&response).is_empty());
    let surge = bare_deployment(Some(json!({"rollingUpdate": {"maxSurge": "0%"}})));
    let (response, patched) = mutate_checked(
        &mut c,
        &mut py,
        "rollout-surge",
        "UPDATE",
        "shop",
        &surge,
        Some(&surge),
    )
    .await;
    assert_eq!(
        patched["spec"]["strategy"]["rollingUpdate"],
        json!({"maxSurge": 1, "maxUnavailable": 0})
    );
    assert_eq!(warnings(&response).len(), 1);

    // opt-out
    let (response, _) = mutate_checked(
        &mut c,
        &mut py,
        "skip-all",
        "CREATE",
        "team-a",
        &selector_pod(Some("all")),
        None,
    )
    .await;
    assert!(response.get("patch").is_none(), "{response}");
    let (response, patched) = mutate_checked(
        &mut c,
        &mut py,
        "skip-typo",
        "CREATE",
        "team-a",
        &selector_pod(Some("dns,prestopp")),
        None,
    )
    .await;
    assert_eq!(response["auditAnnotations"]["policies"], "lease,prestop");
    assert!(patched["spec"].get("dnsConfig").is_none());
    one_warning(&response, "prestopp");

    py.run();
    assert!(server.stop().await);
}

#[tokio::test]
async fn policy_file_settings_apply_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        "lease:\n  mode: pod\ndns:\n  override: true\n  ndots: 3\nprestop:\n  mode: exec\n  sleepSeconds: 7\nrolloutHistory:\n  enabled: false\n",
    )
    .unwrap();
    let server = TestServer::start_with(|o| o.config = Some(policy.clone())).await;
    let mut c = server.client().await;
    let mut py = PyChecks::new();
    let mut pod = plain_pod(
        json!({"dnsConfig": {"options": [{"name": "ndots", "value": "5"}]},
                                   "terminationGracePeriodSeconds": 10}),
    );
    pod["metadata"]["annotations"] = json!({LEASE_SELECTOR_ANNOTATION: "metadata.name=p"});
    let (response, patched) = mutate_checked(
        &mut c,
        &mut py,
        "configured",
        "CREATE",
        "team-a",
        &pod,
        None,
    )
    .await;
    assert_eq!(
        patched["metadata"]["annotations"][LEASE_SELECTOR_ANNOTATION],
        "metadata.name=p"
    );
    assert_eq!(
        patched["spec"]["dnsConfig"]["options"],
        json!([{"name": "ndots", "value": "3"}, {"name": "single-request-reopen"}])
    );
    assert_eq!(
        patched["spec"]["containers"][0]["lifecycle"]["preStop"],
        json!({"exec": {"command": ["sh", "-c", "sleep 7"]}})
    );
    assert_eq!(patched["spec"]["terminationGracePeriodSeconds"], 12);
    assert_eq!(warnings(&response).len(), 1);
    assert_eq!(response["auditAnnotations"]["policies"], "dns,prestop");

    // rollout-history is off: a template change only gets the rollout policy.
    let old = deployment("app:1", None, None);
    let new = deployment("app:2", None, None);
    let (response, _) = mutate_checked(
        &mut c,
        &mut py,
        "no-history",
        "UPDATE",
        "shop",
        &new,
        Some(&old),
    )
    .await;
    assert!(response.get("patch").is_none(), "{response}");
    py.run();
    assert!(server.stop().await);
}
