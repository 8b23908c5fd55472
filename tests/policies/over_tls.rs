//! Every policy, and a policy file, through `/mutate` over TLS.

use super::*;

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
        patched["metadata"]["annotations"][annotations::LEASE_SELECTOR],
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
        patched["metadata"]["annotations"][annotations::LEASE_SELECTOR],
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
    let recorded: Vec<i64> = patched["metadata"]["annotations"][annotations::ROLLOUTS]
        .as_str()
        .unwrap()
        .split(',')
        .map(|s| s.parse().unwrap())
        .collect();
    assert_eq!(recorded.len(), 2, "{recorded:?}");
    assert_eq!(recorded[0], now - 60);
    assert!((before..=after).contains(&recorded[1]), "{recorded:?}");
    assert_eq!(
        patched["spec"]["template"]["metadata"]["annotations"][annotations::LEASE_SCOPE],
        "deployment/web"
    );
    assert_eq!(response["auditAnnotations"]["policies"], "rollout-history");
    let pod = pod_from_template(&patched).unwrap();
    let (_, patched_pod) =
        mutate_checked(&mut c, &mut py, "hot-pod", "CREATE", "shop", &pod, None).await;
    assert_eq!(
        patched_pod["metadata"]["annotations"][annotations::LEASE_SELECTOR],
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
    pod["metadata"]["annotations"] = json!({annotations::LEASE_SELECTOR: "metadata.name=p"});
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
        patched["metadata"]["annotations"][annotations::LEASE_SELECTOR],
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
