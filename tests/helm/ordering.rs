//! No webhook points at an absent calmplane, and none outlives the release.
//!
//! What Helm v4 does with a release (helm.sh/helm/v4 v4.3.2, read in the
//! module cache after `go mod download` in e2e/helm):
//! * install (`pkg/action/install.go`, `performInstall`): pre-install hooks,
//!   then every object of the release in one `KubeClient.Create` (sorted by
//!   kind, `pkg/release/v1/util/kind_sorter.go` `InstallOrder`, but not
//!   waited for between kinds), then `waiter.Wait` (a no-op without
//!   `--wait`: `hookOnlyWaiter` in `pkg/kube/statuswait.go`), then the
//!   post-install hooks;
//! * hooks (`pkg/action/hooks.go`, `execHookWithDelayedShutdown`): sorted by
//!   weight, then name; each one created and waited for
//!   (`WatchUntilReady`: a Pod until it has Succeeded, a Job until it is
//!   complete, anything else at once) before the next; a failure stops
//!   there, and the install fails;
//! * uninstall (`pkg/action/uninstall.go`): pre-delete hooks, then the
//!   release's own objects in `UninstallOrder` (webhook configurations
//!   first), each only if it carries the release's ownership metadata
//!   (`verifyOwnershipBeforeDelete`, `checkOwnership` in validate.go); hooks
//!   are never deleted by uninstall;
//! * rollback (`pkg/action/rollback.go`): the target revision's objects, and
//!   its hooks for post-rollback.
//!
//! So the chart's first revision holds a placeholder configuration with no
//! webhooks as its own object, and two post-install hooks: a Pod (weight 0)
//! that succeeds only once calmplane answers /readyz through the Service
//! with the caBundle's CA, then the real configuration (weight 10) under the
//! placeholder's name with the release's ownership metadata, so that
//! uninstall deletes it like the placeholder it replaced. Later revisions
//! render the real configuration as their own object. e2e/tests/helm.rs
//! watches a real install go through those steps.

use super::*;
use crate::kustomize::installed;

fn the_configuration(docs: &[&Value]) -> Value {
    let found: Vec<&&Value> = docs
        .iter()
        .filter(|d| d["kind"] == "MutatingWebhookConfiguration")
        .collect();
    assert_eq!(found.len(), 1, "one webhook configuration");
    (*found[0]).clone()
}

#[test]
fn install_creates_the_webhook_configuration_only_after_calmplane_answers() {
    let Some(helm) = helm("install_creates_the_webhook_configuration_only_after_calmplane_answers")
    else {
        return;
    };
    for (what, values) in [
        ("self-signed", json!({})),
        (
            "cert-manager",
            json!({"certificates": {"mode": "certManager"}}),
        ),
        ("URL", json!({"webhook": {"url": "https://192.0.2.7:8443"}})),
    ] {
        let r = template(&helm, &values, &[]);

        // The release's own configuration has no webhook: whatever Helm
        // creates in its first pass sends nothing anywhere.
        let own = the_configuration(&r.objects.iter().collect::<Vec<_>>());
        assert_eq!(own["webhooks"], json!([]), "{what}: the placeholder");

        // The real one is a post-install hook, after the readiness gate.
        let post_install = r.hooks_on("post-install");
        let config = the_configuration(&post_install);
        assert_eq!(
            key(&config),
            key(&own),
            "{what}: under the placeholder's name"
        );
        assert_eq!(
            config["webhooks"].as_array().map(Vec::len),
            Some(4),
            "{what}"
        );
        let gates: Vec<&&Value> = post_install.iter().filter(|h| h["kind"] == "Pod").collect();
        assert_eq!(gates.len(), 1, "{what}: one readiness gate");
        let gate = *gates[0];
        assert!(
            hook_weight(gate) < hook_weight(&config),
            "{what}: the gate runs first"
        );
        assert!(
            post_install
                .iter()
                .filter(|h| hook_weight(h) <= hook_weight(&config) && key(h) != key(&config))
                .all(|h| key(h) == key(gate)),
            "{what}: nothing else runs before the configuration"
        );
        // A Pod that Helm waits for until it has succeeded, and that only
        // succeeds once /readyz answers at the address the webhooks call.
        // Deleted when done either way, and it gives up by itself if no
        // helm waits for it any more.
        assert_eq!(gate["spec"]["restartPolicy"], "Never", "{what}");
        assert_eq!(
            gate["metadata"]["annotations"]["helm.sh/hook-delete-policy"],
            "before-hook-creation,hook-succeeded,hook-failed",
            "{what}"
        );
        assert!(
            gate["spec"]["activeDeadlineSeconds"].as_i64().is_some(),
            "{what}"
        );
        let container = &gate["spec"]["containers"][0];
        let script = container["command"][2].as_str().expect("script");
        assert!(
            script.contains("until curl")
                && script.contains("--fail")
                && script.contains("--cacert /tmp/ca.crt")
                && script.contains("\"$CALMPLANE_URL/readyz\""),
            "{what}: {script}"
        );
        let env: BTreeMap<&str, &Value> = container["env"]
            .as_array()
            .expect("env")
            .iter()
            .map(|e| (e["name"].as_str().expect("name"), e))
            .collect();
        let base = env["CALMPLANE_URL"]["value"].as_str().expect("URL");
        for w in config["webhooks"].as_array().expect("webhooks") {
            let client = &w["clientConfig"];
            let called = match client.get("url") {
                Some(url) => url.as_str().expect("url").to_string(),
                None => {
                    let s = &client["service"];
                    format!(
                        "https://{}.{}.svc:{}{}",
                        s["name"].as_str().expect("name"),
                        s["namespace"].as_str().expect("namespace"),
                        s["port"],
                        s["path"].as_str().expect("path")
                    )
                }
            };
            assert!(
                called.starts_with(base),
                "{what}: {called} is not behind {base}"
            );
        }
        // The CA it trusts is the one the apiserver gets: the Secret's
        // ca.crt, which is the caBundle (self-signed) or what cainjector
        // copies into it from that Certificate's Secret (cert-manager).
        let ca = &env["CALMPLANE_CA"]["valueFrom"]["secretKeyRef"];
        assert_eq!(ca["name"], "calmplane-tls", "{what}");
        assert_eq!(ca["key"], "ca.crt", "{what}");
        if what == "cert-manager" {
            assert_eq!(
                config["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
                "calmplane/calmplane-serving"
            );
            let serving = find(&r.objects, "Certificate", "calmplane-serving");
            assert_eq!(serving["spec"]["secretName"], "calmplane-tls");
        } else {
            let secret = find(&r.objects, "Secret", "calmplane-tls");
            for w in config["webhooks"].as_array().expect("webhooks") {
                assert_eq!(
                    w["clientConfig"]["caBundle"], secret["data"]["ca.crt"],
                    "{what}"
                );
            }
        }

        // Uninstall deletes it: it has the release's ownership metadata,
        // which `checkOwnership` requires, and the placeholder's name, which
        // the release's manifest lists.
        let meta = &config["metadata"];
        assert_eq!(
            meta["labels"]["app.kubernetes.io/managed-by"], "Helm",
            "{what}"
        );
        assert_eq!(
            meta["annotations"]["meta.helm.sh/release-name"], RELEASE,
            "{what}"
        );
        assert_eq!(
            meta["annotations"]["meta.helm.sh/release-namespace"], NAMESPACE,
            "{what}"
        );
        // The placeholder is deleted before the hook is created (Helm's
        // before-hook-creation), and the hook is never deleted by Helm as a
        // hook: not on success, not on failure.
        assert_eq!(
            meta["annotations"]["helm.sh/hook-delete-policy"], "before-hook-creation",
            "{what}"
        );
        // A rollback to this revision runs the same two hooks.
        for hook in [&config, gate] {
            assert!(
                hook_events(hook).contains(&"post-rollback".to_string()),
                "{what}"
            );
        }

        // An upgrade renders the configuration as its own object, and no
        // hook: the pods already serve, the configuration is updated in place.
        let up = template(&helm, &values, &["--is-upgrade"]);
        let own = the_configuration(&up.objects.iter().collect::<Vec<_>>());
        assert_eq!(
            own["webhooks"],
            with_ca_of(&config["webhooks"], &own),
            "{what}"
        );
        assert!(up
            .hooks
            .iter()
            .all(|h| hook_events(h) == ["test".to_string()]));
    }

    // Without the gate, the configuration is an object like the others.
    let r = template(&helm, &json!({"webhook": {"waitForReady": false}}), &[]);
    assert!(r
        .hooks
        .iter()
        .all(|h| hook_events(h) == ["test".to_string()]));
    let own = the_configuration(&r.objects.iter().collect::<Vec<_>>());
    assert_eq!(own["webhooks"].as_array().map(Vec::len), Some(4));
    assert_eq!(installed(&r).len(), r.objects.len());
}

/// `webhooks` with the caBundles of `other`'s: two renders make two CAs.
fn with_ca_of(webhooks: &Value, other: &Value) -> Value {
    let mut out = webhooks.clone();
    for (w, o) in out
        .as_array_mut()
        .into_iter()
        .flatten()
        .zip(other["webhooks"].as_array().into_iter().flatten())
    {
        if let Some(ca) = o["clientConfig"].get("caBundle") {
            w["clientConfig"]["caBundle"] = ca.clone();
        }
    }
    out
}

#[test]
fn no_object_but_the_namespace_is_kept_on_uninstall() {
    // `helm.sh/resource-policy: keep` would leave an object behind on
    // uninstall: only the Namespace has it (deleting a namespace deletes
    // whatever else is in it).
    let Some(helm) = helm("no_object_but_the_namespace_is_kept_on_uninstall") else {
        return;
    };
    let r = template(&helm, &everything_on(), &[]);
    for doc in r.all() {
        let keep = doc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep";
        assert_eq!(keep, doc["kind"] == "Namespace", "{}", key(doc));
    }
}
