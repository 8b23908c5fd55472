//! `rollout-history`: the history kept in the Deployment, hot and cooled Deployments.

use super::*;

#[test]
fn rollout_history_first_template_change_is_recorded_and_not_hot() {
    let mut h = Harness::new(&Config::default());
    let old = deployment("app:1", None, None);
    let new = deployment("app:2", None, None);
    let out = h.update("first-change", &new, &old);
    let mut want = new.clone();
    want["metadata"]["annotations"] = json!({ annotations::ROLLOUTS: NOW.to_string() });
    assert_eq!(out.object, want);
    assert_eq!(out.policies, vec!["rollout-history"]);
    // The annotations map was missing: one add creates it, key escaped.
    assert_eq!(
        patch_json(&out),
        json!([{"op": "add", "path": "/metadata/annotations",
                "value": {annotations::ROLLOUTS: NOW.to_string()}}])
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
    want["metadata"]["annotations"][annotations::ROLLOUTS] = json!(history(&[NOW - 100, NOW]));
    want["spec"]["template"]["metadata"]["annotations"][annotations::LEASE_SCOPE] =
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
        pod_out.object["metadata"]["annotations"][annotations::LEASE_SELECTOR],
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
        out.object["metadata"]["annotations"][annotations::ROLLOUTS],
        json!(history(&[NOW - 100, NOW]))
    );
    assert_eq!(
        out.object["spec"]["template"]["metadata"]["annotations"][annotations::LEASE_SCOPE],
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
        pod_out.object["metadata"]["annotations"][annotations::LEASE_SELECTOR],
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
        .remove(annotations::LEASE_SELECTOR);
    let out = h.update("replace-without-annotations", &bare, &old);
    assert_eq!(out.object, old);
    // An emptied history is the user's choice and stays empty.
    let mut emptied = old.clone();
    emptied["metadata"]["annotations"][annotations::ROLLOUTS] = json!("");
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
        out.object["metadata"]["annotations"][annotations::ROLLOUTS],
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
        let req = Context::new(Kind::Deployment, Operation::Update)
            .in_namespace(Some("shop"))
            .replacing(Some(&old), None);
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
        out.object["metadata"]["annotations"][annotations::ROLLOUTS],
        json!(history(&[NOW - 300, NOW - 200, NOW]))
    );
    assert!(out.object["spec"]["template"]["metadata"]["annotations"]
        .get(annotations::LEASE_SCOPE)
        .is_none());
    let three = history(&[NOW - 300, NOW - 200, NOW - 100]);
    let out = h.update(
        "four-is-hot",
        &deployment("app:2", Some(&three), None),
        &deployment("app:1", Some(&three), None),
    );
    assert_eq!(
        out.object["spec"]["template"]["metadata"]["annotations"][annotations::LEASE_SCOPE],
        "deployment/web"
    );
    h.finish();
}
