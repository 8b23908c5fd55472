//! `prestop`: the preStop sleep and the grace period.

use super::*;

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
    let config = config("prestop:\n  mode: exec\ndns: {enabled: false}\nlease: {enabled: false}\n");
    let settings = policy::settings::<policy::prestop::Prestop>(&config).unwrap();
    assert_eq!(settings.mode, policy::prestop::PrestopMode::Exec);
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
    let mut h2 = Harness::new(&config(
        "prestop:\n  sleepSeconds: 3\n  minDrainSeconds: 2\ndns: {enabled: false}\n",
    ));
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
