//! `calmplane.dev/skip`: opting objects out of some or all policies.

use super::*;

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
        let lease_done = out.object["metadata"]["annotations"][annotations::LEASE_SELECTOR]
            == "metadata.namespace=team-a";
        assert_eq!(lease_done, left.contains(&"lease"), "skip {skip:?}");
    }

    // Deployments: rollout and rollout-history by name.
    let d = bare_deployment(None);
    let mut skipped = d.clone();
    skipped["metadata"]["annotations"] = json!({annotations::SKIP: "rollout"});
    assert!(h.create("skip-rollout", &skipped).patch.is_empty());
    let old = {
        let mut o = skipped.clone();
        o["metadata"]["annotations"][annotations::SKIP] = json!("rollout-history");
        o
    };
    let mut new = old.clone();
    new["spec"]["template"]["spec"]["containers"][0]["image"] = json!("app:2");
    let out = h.update("skip-history", &new, &old);
    assert_eq!(out.policies, vec!["rollout"]);
    assert!(out.object["metadata"]["annotations"]
        .get(annotations::ROLLOUTS)
        .is_none());
    h.finish();
}

#[test]
fn pods_inherit_skip_from_their_template() {
    let mut h = Harness::new(&Config::default());
    let mut d = deployment("app:1", None, None);
    d["spec"]["template"]["metadata"]["annotations"][annotations::SKIP] = json!("lease,prestop");
    let pod = pod_from_template(&d).unwrap();
    let out = h.pod("inherited", "shop", &pod);
    assert_eq!(out.policies, vec!["dns"]);
    assert_eq!(
        out.object["metadata"]["annotations"][annotations::LEASE_SELECTOR],
        "metadata.name=placeholder"
    );
    d["spec"]["template"]["metadata"]["annotations"][annotations::SKIP] = json!("all");
    let out = h.pod("inherited-all", "shop", &pod_from_template(&d).unwrap());
    assert!(out.patch.is_empty());
    // The template's skip is about its pods, not the Deployment itself.
    let mut d2 = bare_deployment(None);
    d2["spec"]["template"]["metadata"]["annotations"] = json!({annotations::SKIP: "all"});
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
        out.warnings[0].contains(annotations::SKIP),
        "{}",
        out.warnings[0]
    );
    h.finish();
}

#[test]
fn mirror_pods_are_left_alone_and_say_why() {
    let mut h = Harness::new(&Config::default());
    let mut pod = selector_pod(None);
    pod["metadata"]["annotations"][annotations::MIRROR] = json!("0f3c5c1d");
    let out = h.pod("static-web", "team-a", &pod);
    assert!(out.patch.is_empty(), "{:?}", out.patch);
    assert!(out.policies.is_empty());
    assert_eq!(out.warnings.len(), 1, "{:?}", out.warnings);
    assert!(
        out.warnings[0].contains("mirror Pod"),
        "{}",
        out.warnings[0]
    );
    // The annotation means nothing on a Deployment.
    let mut d = bare_deployment(None);
    d["metadata"]["annotations"] = json!({annotations::MIRROR: "x"});
    assert_eq!(h.create("not-a-pod", &d).policies, vec!["rollout"]);
    h.finish();
}
