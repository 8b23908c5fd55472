//! `calmplane export mutating-admission-policy` and `--admission-policies`:
//! what is printed, what is said on stderr, and that every object passes
//! the schema of the Kubernetes version that runs it.

use super::*;

/// Run `calmplane` with `args`: (stdout documents, stderr).
fn printed(args: &[&str]) -> (Vec<Value>, String) {
    let out = run(calmplane().args(args));
    let stdout = String::from_utf8(out.stdout).expect("UTF-8 stdout");
    (
        yaml_docs(&stdout),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn names_of<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a str> {
    docs.iter()
        .filter(|d| d["kind"] == kind)
        .filter_map(|d| d["metadata"]["name"].as_str())
        .collect()
}

#[test]
fn export_prints_a_policy_and_a_binding_for_each_policy_the_apiserver_can_run() {
    let (docs, stderr) = printed(&["export", "mutating-admission-policy"]);
    let exported = ["calmplane-dns", "calmplane-prestop", "calmplane-rollout"];
    assert_eq!(names_of(&docs, "MutatingAdmissionPolicy"), exported);
    assert_eq!(names_of(&docs, "MutatingAdmissionPolicyBinding"), exported);
    assert_eq!(docs.len(), 6, "nothing else is printed");
    // The others stay in the webhook, and stderr says why.
    for policy in ["lease", "rollout-history"] {
        assert!(
            stderr.contains(&format!("not exported: {policy}: ")),
            "{stderr}"
        );
    }
    for binding in docs
        .iter()
        .filter(|d| d["kind"] == "MutatingAdmissionPolicyBinding")
    {
        let selector = &binding["spec"]["matchResources"]["namespaceSelector"];
        assert!(
            selector_matches(
                selector,
                &namespace_labels("shop", &[(OPT_IN_LABEL, "apiserver")])
            ),
            "{binding}"
        );
        // Namespaces the webhook runs every policy in are not the
        // policies' business, nor are the excluded ones.
        for (ns, value) in [
            ("shop", "true"),
            ("shop", "report"),
            ("kube-system", "apiserver"),
            (NAMESPACE, "apiserver"),
        ] {
            assert!(
                !selector_matches(selector, &namespace_labels(ns, &[(OPT_IN_LABEL, value)])),
                "{ns} labelled {value}: {binding}"
            );
        }
    }
}

#[test]
fn the_policy_file_decides_what_is_exported_and_with_which_values() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.yaml");
    std::fs::write(
        &file,
        "dns: {ndots: 3}\nprestop: {enforcement: report}\nrollout: {enabled: false}\n",
    )
    .unwrap();
    let (docs, stderr) = printed(&[
        "export",
        "mutating-admission-policy",
        "--config",
        file.to_str().unwrap(),
        "--namespace",
        "tools",
    ]);
    assert_eq!(
        names_of(&docs, "MutatingAdmissionPolicy"),
        ["calmplane-dns"]
    );
    assert!(
        stderr.contains("not exported: prestop: in report mode"),
        "{stderr}"
    );
    assert!(
        stderr.contains("not exported: rollout: disabled"),
        "{stderr}"
    );
    let dns = find(&docs, "MutatingAdmissionPolicy", "calmplane-dns");
    // The value is written where the option is built: in the mutation's
    // expression, the only place the apiserver declares `Object`.
    let text = serde_json::to_string(&dns["spec"]["mutations"]).unwrap();
    assert!(text.contains("value: '3'"), "{text}");
    assert!(!text.contains("value: '2'"), "{text}");
    let binding = find(&docs, "MutatingAdmissionPolicyBinding", "calmplane-dns");
    assert!(!selector_matches(
        &binding["spec"]["matchResources"]["namespaceSelector"],
        &namespace_labels("tools", &[(OPT_IN_LABEL, "apiserver")])
    ));
}

#[test]
fn a_policy_file_with_a_typo_exports_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.yaml");
    std::fs::write(&file, "dns: {ndot: 3}\n").unwrap();
    let out = calmplane()
        .args(["export", "mutating-admission-policy", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("ndot"), "{stderr}");
}

#[test]
fn manifests_with_admission_policies_prints_the_webhook_configuration_and_the_policies() {
    let (docs, _) = printed(&["manifests", "--no-ca-bundle", "--admission-policies"]);
    assert_eq!(docs[0]["kind"], "MutatingWebhookConfiguration");
    let (plain, _) = printed(&["manifests", "--no-ca-bundle"]);
    assert_eq!(docs[0], plain[0], "the webhook configuration is the same");
    let (exported, _) = printed(&["export", "mutating-admission-policy"]);
    assert_eq!(docs[1..], exported[..]);
}

#[test]
fn exported_objects_pass_kubernetes_validate_strict() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("exported.yaml");
    let out = run(calmplane().args(["manifests", "--no-ca-bundle", "--admission-policies"]));
    std::fs::write(&file, &out.stdout).unwrap();
    assert_eq!(validate_all(&[file]), 7);
}
