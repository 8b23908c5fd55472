//! The chart's MutatingAdmissionPolicies are `calmplane export
//! mutating-admission-policy`'s, object by object, for the same policy file.
//!
//! Helm cannot run calmplane, so templates/admission-policies.yaml writes
//! the same CEL from the same settings. Each case renders the chart with a
//! policy value, writes the policy.yaml of the ConfigMap it rendered, and
//! exports with that file: a difference in the CEL, the selectors, the
//! conditions or in which policies are exported fails here. That the
//! apiserver runs them as the webhook would is proven by the e2e suite.

use super::*;
use crate::kustomize::comparable;

/// Policy values, each a case: the defaults, examples/policy.yaml, and each
/// setting the CEL depends on.
fn cases() -> Vec<(&'static str, Value)> {
    let example: Value = calmplane::yaml::from_str(
        &std::fs::read_to_string(repo().join("examples/policy.yaml"))
            .expect("examples/policy.yaml"),
    )
    .expect("YAML");
    vec![
        ("defaults", json!({})),
        ("examples/policy.yaml", json!({"policy": example})),
        (
            "dns: ndots 3, override, no single-request-reopen",
            json!({"policy": {"dns": {"ndots": 3, "override": true, "singleRequestReopen": false}}}),
        ),
        ("dns: ndots 15", json!({"policy": {"dns": {"ndots": 15}}})),
        (
            "prestop: exec, 7 s, drain 4 s",
            json!({"policy": {"prestop": {"mode": "exec", "sleepSeconds": 7, "minDrainSeconds": 4}}}),
        ),
        (
            "prestop: sleep 3600 s, drain 3600 s",
            json!({"policy": {"prestop": {"sleepSeconds": 3600, "minDrainSeconds": 3600}}}),
        ),
        (
            "dns in report mode, rollout disabled",
            json!({"policy": {"dns": {"enforcement": "report"}, "rollout": {"enabled": false}}}),
        ),
        (
            "prestop disabled, lease in report mode",
            json!({"policy": {"prestop": {"enabled": false}, "lease": {"enforcement": "report"}}}),
        ),
        ("reportMode: nothing exported", json!({"reportMode": true})),
    ]
}

#[test]
fn the_admission_policies_are_what_calmplane_exports_for_the_same_policy_file() {
    let Some(helm) =
        helm("the_admission_policies_are_what_calmplane_exports_for_the_same_policy_file")
    else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut compared = 0;
    for namespace in [NAMESPACE, "platform"] {
        for (what, mut values) in cases() {
            values["admissionPolicies"] = json!({"enabled": true});
            let r = template_in(&helm, namespace, &values, &[]);
            let policy = find(&r.objects, "ConfigMap", "calmplane-policy")["data"]["policy.yaml"]
                .as_str()
                .expect("policy.yaml")
                .to_string();
            let file = dir.path().join("policy.yaml");
            std::fs::write(&file, &policy).expect("write");
            let out = run(calmplane()
                .args([
                    "export",
                    "mutating-admission-policy",
                    "--namespace",
                    namespace,
                ])
                .arg("--config")
                .arg(&file));
            let exported = yaml_docs(&String::from_utf8(out.stdout).expect("UTF-8"));
            let ours: Vec<&Value> = r
                .objects
                .iter()
                .filter(|d| {
                    d["apiVersion"] == "admissionregistration.k8s.io/v1"
                        && d["kind"]
                            .as_str()
                            .is_some_and(|k| k.starts_with("MutatingAdmissionPolicy"))
                })
                .collect();
            let by_key = |docs: Vec<Value>| -> BTreeMap<String, Value> {
                docs.into_iter().map(|d| (key(&d), d)).collect()
            };
            let ours = by_key(ours.into_iter().map(comparable).collect());
            let theirs = by_key(exported.iter().map(comparable).collect());
            assert_eq!(
                ours.keys().collect::<Vec<_>>(),
                theirs.keys().collect::<Vec<_>>(),
                "{what} in {namespace}: the same objects\n{policy}"
            );
            for (k, doc) in &ours {
                assert_eq!(doc, &theirs[k], "{what} in {namespace}: {k}\n{policy}");
                compared += 1;
            }
            if what.starts_with("reportMode") {
                assert!(ours.is_empty());
            }
        }
    }
    println!("{compared} objects equal to calmplane's export");
    assert!(compared > 40);

    // The admission policies carry the chart's own webhook settings, as the
    // export carries those of the webhook configuration it reads.
    let r = template(
        &helm,
        &json!({"admissionPolicies": {"enabled": true},
                "webhook": {"failurePolicy": {"pods": "Fail", "deployments": "Ignore"},
                            "excludedNamespaces": ["legacy"],
                            "matchConditions": {"pods": [{"name": "no-jobs", "expression": "true"}]}}}),
        &[],
    );
    let dns = find(&r.objects, "MutatingAdmissionPolicy", "calmplane-dns");
    assert_eq!(dns["spec"]["failurePolicy"], "Fail");
    assert!(dns["spec"]["matchConditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .any(|c| c["name"] == "no-jobs"));
    let rollout = find(&r.objects, "MutatingAdmissionPolicy", "calmplane-rollout");
    assert_eq!(rollout["spec"]["failurePolicy"], "Ignore");
    let binding = find(
        &r.objects,
        "MutatingAdmissionPolicyBinding",
        "calmplane-dns",
    );
    let excluded = &binding["spec"]["matchResources"]["namespaceSelector"]["matchExpressions"][1];
    assert!(str_list(&excluded["values"]).contains(&"legacy"));
}

#[test]
fn the_admission_policies_need_kubernetes_1_36() {
    let Some(helm) = helm("the_admission_policies_need_kubernetes_1_36") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("values.json");
    std::fs::write(
        &file,
        json!({"admissionPolicies": {"enabled": true}}).to_string(),
    )
    .expect("write");
    let out = Command::new(&helm)
        .args(["template", RELEASE])
        .arg(chart_dir())
        .args(["--kube-version", "1.35.0", "-f"])
        .arg(&file)
        .output()
        .expect("helm");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("needs Kubernetes 1.36"), "{err}");
}
