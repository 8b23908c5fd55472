//! `rollout`: maxUnavailable 0 and the maxSurge fix-up.

use super::*;

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
