//! Every render is valid and passes the manifest checks of tests/install.
//!
//! Schema: `kubernetes-validate --strict` for Kubernetes 1.36 through
//! tests/install's validate.rs (which also checks cert-manager's objects
//! structurally). The prometheus-operator's objects have no schema there:
//! they must equal what manifests/monitoring renders, which
//! tests/monitoring.rs checks.
//!
//! Safety, by comparison with the manifests tests/install proves safe
//! (`assert_webhook_safe` on manifests/base/webhook.yaml, the hardened
//! Deployment, the lease monitor's read-only role): a render's webhook
//! configuration is the base's with only what the values add, and every
//! addition narrows what is sent; every pod runs as the base's does; the
//! only RBAC is the lease monitor's, as manifests/monitoring has it.

use super::*;
use crate::kustomize::{comparable, installed};

/// The renders every check runs on: (name, values, extra helm args).
fn renders() -> Vec<(&'static str, Value, Vec<&'static str>)> {
    vec![
        ("defaults", json!({}), vec![]),
        ("defaults, upgrade", json!({}), vec!["--is-upgrade"]),
        ("everything on", everything_on(), vec![]),
        (
            "everything on, upgrade",
            everything_on(),
            vec!["--is-upgrade"],
        ),
        (
            "cert-manager with an issuer of yours",
            json!({"certificates": {"mode": "certManager", "certManager": {
                "issuerRef": {"name": "platform-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"}}}}),
            vec![],
        ),
        (
            "existing Secret",
            json!({"certificates": {"mode": "existingSecret", "existingSecret": {
                "name": "my-tls", "caBundle": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"}}}),
            vec![],
        ),
        (
            "a URL",
            json!({"webhook": {"url": "https://192.0.2.7:8443"}, "admissionPolicies": {"enabled": true}}),
            vec![],
        ),
        (
            "no readiness gate",
            json!({"webhook": {"waitForReady": false}}),
            vec![],
        ),
    ]
}

/// Everything the cluster stores, hooks included (a hook Pod is a Pod the
/// cluster runs).
fn stored(r: &Render) -> Vec<Value> {
    let mut docs = installed(r);
    docs.extend(r.hooks.iter().filter(|h| h["kind"] == "Pod").cloned());
    docs
}

fn is_operator(doc: &Value) -> bool {
    doc["apiVersion"] == "monitoring.coreos.com/v1"
}

#[test]
fn every_render_passes_kubernetes_validate_strict() {
    let test = "every_render_passes_kubernetes_validate_strict";
    let Some(helm) = helm(test) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut files = Vec::new();
    let mut operator = Vec::new();
    for (i, (name, values, args)) in renders().into_iter().enumerate() {
        let r = template(&helm, &values, &args);
        // Hooks and the placeholder too: each is an object Helm creates.
        let (ops, docs): (Vec<Value>, Vec<Value>) = r.all().cloned().partition(is_operator);
        operator.extend(ops);
        let file = dir.path().join(format!("{i}.yaml"));
        std::fs::write(
            &file,
            calmplane::admission_policy::yaml_stream(&docs).expect("yaml"),
        )
        .expect("write");
        println!("{}: {name}", file.display());
        files.push(file);
    }
    let n = validate::validate_all(&files);
    println!("{n} documents validated");

    // The prometheus-operator's objects are manifests/monitoring's.
    let Some(kubectl) = kubectl(test) else {
        return;
    };
    let (_, monitoring) = render::kustomize(&kubectl, &manifests_dir().join("monitoring"));
    assert!(!operator.is_empty());
    for doc in &operator {
        let mut ours = comparable(doc);
        // The values add the labels Prometheus selects by.
        ours["metadata"]["labels"]
            .as_object_mut()
            .expect("labels")
            .remove("release");
        if doc["kind"] == "ServiceMonitor" {
            // The interval is a value (15s by default, as in manifests).
            assert_eq!(doc["spec"]["endpoints"][0]["interval"], "15s");
        }
        assert_eq!(
            ours,
            comparable(find(
                &monitoring,
                doc["kind"].as_str().expect("kind"),
                doc["metadata"]["name"].as_str().expect("name")
            )),
            "{} differs from manifests/monitoring",
            key(doc)
        );
    }
}

/// The parts of a webhook the values may change, taken out so that what is
/// left must be the base's, exactly.
fn without_values(mut w: Value, base: &Value, namespace: &str, r: &str) -> Value {
    let name = w["name"].as_str().expect("name").to_string();
    let client = w["clientConfig"].as_object_mut().expect("clientConfig");
    client.remove("caBundle");
    if let Some(service) = client.get_mut("service") {
        // The Service of the release's namespace.
        assert_eq!(service["namespace"], namespace, "{r}: {name}");
        service["namespace"] = base["clientConfig"]["service"]["namespace"].clone();
    }
    if let Some(url) = client.remove("url") {
        // Each webhook keeps its path behind the URL.
        let path = base["clientConfig"]["service"]["path"]
            .as_str()
            .expect("path");
        assert!(
            url.as_str().expect("url").ends_with(path),
            "{r}: {name}: {url} must end with {path}"
        );
        client.insert("service".into(), base["clientConfig"]["service"].clone());
    }
    // Additions to the namespace selector only narrow it: matchLabels and
    // expressions after the base's, and more names excluded.
    let selector = &mut w["namespaceSelector"];
    let base_selector = &base["namespaceSelector"];
    let base_labels = base_selector["matchLabels"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    if let Some(labels) = selector
        .get_mut("matchLabels")
        .and_then(Value::as_object_mut)
    {
        for (k, v) in base_labels.iter() {
            assert_eq!(labels.get(k), Some(v), "{r}: {name}: matchLabels keep {k}");
        }
        labels.retain(|k, _| base_labels.contains_key(k));
        if labels.is_empty() {
            selector
                .as_object_mut()
                .expect("selector")
                .remove("matchLabels");
        }
    }
    let expressions = selector["matchExpressions"]
        .as_array_mut()
        .expect("matchExpressions");
    let base_expressions = base_selector["matchExpressions"]
        .as_array()
        .expect("base expressions");
    assert!(expressions.len() >= base_expressions.len());
    expressions.truncate(base_expressions.len());
    for (ours, theirs) in expressions.iter_mut().zip(base_expressions) {
        if theirs["operator"] == "NotIn" {
            let extra: BTreeSet<&str> = str_list(&ours["values"]).into_iter().collect();
            // The base's, and the release's namespace.
            let mut required: BTreeSet<&str> = str_list(&theirs["values"]).into_iter().collect();
            required.insert(namespace);
            assert!(
                extra.is_superset(&required),
                "{r}: {name}: the exclusions are kept ({extra:?})"
            );
            ours["values"] = theirs["values"].clone();
        }
    }
    // Conditions after the base's: an object must pass the base's first.
    let conditions = w["matchConditions"]
        .as_array_mut()
        .expect("matchConditions");
    let base_conditions = base["matchConditions"].as_array().expect("base conditions");
    assert_eq!(
        &conditions[..base_conditions.len()],
        base_conditions.as_slice(),
        "{r}: {name}: the built-in conditions come first"
    );
    conditions.truncate(base_conditions.len());
    // The timeout and, for the mutating webhooks, the failure policy.
    let timeout = w["timeoutSeconds"].as_i64().expect("timeoutSeconds");
    assert!((1..=30).contains(&timeout), "{r}: {name}: timeout");
    w["timeoutSeconds"] = base["timeoutSeconds"].clone();
    if !name.contains("-report.") {
        assert!(["Ignore", "Fail"].contains(&w["failurePolicy"].as_str().expect("fp")));
        w["failurePolicy"] = base["failurePolicy"].clone();
    }
    w
}

/// A render's webhook configuration is manifests/base/webhook.yaml (proven
/// safe by tests/install's `assert_webhook_safe`) plus only what the values
/// add, each addition narrowing what is sent. `release_namespace` is
/// excluded like the base's own.
fn assert_webhook_is_the_base_narrowed(config: &Value, release_namespace: &str, r: &str) {
    let base = &read_docs(&manifests_dir().join("base/webhook.yaml"))[0];
    let webhooks = config["webhooks"].as_array().expect("webhooks");
    let base_webhooks = base["webhooks"].as_array().expect("base webhooks");
    assert_eq!(
        webhooks.len(),
        base_webhooks.len(),
        "{r}: the base's webhooks"
    );
    for (w, b) in webhooks.iter().zip(base_webhooks) {
        let name = w["name"].as_str().expect("name");
        // The release namespace is excluded by name, whatever it is called.
        assert_eq!(
            &without_values(w.clone(), b, release_namespace, r),
            b,
            "{r}: {name} is the base's"
        );
    }
    let mut meta = comparable(config)["metadata"].clone();
    if let Some(a) = meta.get_mut("annotations").and_then(Value::as_object_mut) {
        a.remove("cert-manager.io/inject-ca-from");
        if a.is_empty() {
            meta.as_object_mut()
                .expect("metadata")
                .remove("annotations");
        }
    }
    assert_eq!(meta, base["metadata"], "{r}: metadata");
}

#[test]
fn every_webhook_configuration_is_the_base_s_with_only_narrowing_additions() {
    let Some(helm) =
        helm("every_webhook_configuration_is_the_base_s_with_only_narrowing_additions")
    else {
        return;
    };
    for (name, values, args) in renders() {
        let r = template(&helm, &values, &args);
        let installed = installed(&r);
        let configs = of_kind(&installed, "MutatingWebhookConfiguration");
        assert_eq!(configs.len(), 1, "{name}");
        assert_webhook_is_the_base_narrowed(configs[0], NAMESPACE, name);
        // calmplane's own pods, and its Deployment, are not sent to it.
        // (The lease monitor's are not calmplane's: its namespace, excluded
        // by name, keeps them out.)
        for d in of_kind(&installed, "Deployment")
            .into_iter()
            .filter(|d| d["metadata"]["name"] == "calmplane")
        {
            for labels in [
                &d["metadata"]["labels"],
                &d["spec"]["template"]["metadata"]["labels"],
            ] {
                for w in configs[0]["webhooks"].as_array().expect("webhooks") {
                    assert!(
                        !selector_matches(&w["objectSelector"], &labels_of(labels)),
                        "{name}: {} is sent its own {}",
                        w["name"],
                        key(d)
                    );
                }
            }
        }
    }
    // In another namespace, that namespace is the one excluded.
    let r = template_in(&helm, "platform", &json!({}), &["--is-upgrade"]);
    let config = of_kind(&r.objects, "MutatingWebhookConfiguration")[0];
    assert_webhook_is_the_base_narrowed(config, "platform", "in namespace platform");
    assert_eq!(
        config["webhooks"][0]["clientConfig"]["service"]["namespace"],
        "platform"
    );

    // The check itself fails on what it must refuse.
    let base = &read_docs(&manifests_dir().join("base/webhook.yaml"))[0];
    type Breakage = fn(&mut Value);
    let breakages: [(&str, Breakage); 5] = [
        ("kube-system no longer excluded", |c| {
            c["webhooks"][0]["namespaceSelector"]["matchExpressions"][1]["values"] =
                json!(["kube-node-lease", "calmplane"]);
        }),
        ("opt-in widened", |c| {
            c["webhooks"][1]["namespaceSelector"]["matchExpressions"][0]["values"] =
                json!(["true", "apiserver", "yes"]);
        }),
        ("a built-in condition dropped", |c| {
            c["webhooks"][0]["matchConditions"]
                .as_array_mut()
                .unwrap()
                .remove(0);
        }),
        ("own pods sent", |c| {
            c["webhooks"][2]["objectSelector"] = json!({});
        }),
        ("report webhook fails closed", |c| {
            c["webhooks"][3]["failurePolicy"] = json!("Fail");
        }),
    ];
    for (what, breakage) in breakages {
        let mut broken = base.clone();
        breakage(&mut broken);
        let caught = std::panic::catch_unwind(|| {
            assert_webhook_is_the_base_narrowed(&broken, NAMESPACE, what);
        })
        .is_err();
        assert!(caught, "the check missed: {what}");
    }
}

/// Every pod spec a render holds: Deployments' templates and hook Pods.
fn pod_specs(docs: &[Value]) -> Vec<(String, Value)> {
    docs.iter()
        .filter_map(|d| match d["kind"].as_str() {
            Some("Deployment") => Some((key(d), d["spec"]["template"]["spec"].clone())),
            Some("Pod") => Some((key(d), d["spec"].clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn every_pod_is_hardened_as_the_base_deployment_is() {
    let Some(helm) = helm("every_pod_is_hardened_as_the_base_deployment_is") else {
        return;
    };
    let base = &read_docs(&manifests_dir().join("base/deployment.yaml"))[0];
    let base_pod = &base["spec"]["template"]["spec"];
    let base_container = &base_pod["containers"][0];
    let mut seen = BTreeSet::new();
    for (name, values, args) in renders() {
        let r = template(&helm, &values, &args);
        for (k, pod) in pod_specs(&stored(&r)) {
            seen.insert(k.clone());
            let what = format!("{name}: {k}");
            for field in ["runAsNonRoot", "runAsUser", "runAsGroup", "seccompProfile"] {
                assert_eq!(
                    pod["securityContext"][field], base_pod["securityContext"][field],
                    "{what}: securityContext.{field}"
                );
            }
            assert_eq!(pod["dnsConfig"], base_pod["dnsConfig"], "{what}: dnsConfig");
            for field in ["hostPID", "hostIPC", "shareProcessNamespace"] {
                assert!(pod.get(field).is_none(), "{what}: {field}");
            }
            // The host network only for the webhook, only when asked for.
            if pod.get("hostNetwork").is_some() {
                assert_eq!(values["hostNetwork"], true, "{what}");
                assert_eq!(k, "Deployment/calmplane", "{what}");
                assert_eq!(pod["dnsPolicy"], "ClusterFirstWithHostNet", "{what}");
            }
            // The webhook and the hooks never call the API; only the lease
            // monitor has a token.
            let monitor = k == "Deployment/calmplane-lease-monitor";
            assert_eq!(pod["automountServiceAccountToken"], monitor, "{what}");
            for volume in pod["volumes"].as_array().into_iter().flatten() {
                assert!(volume.get("hostPath").is_none(), "{what}: hostPath");
            }
            let containers = pod["containers"].as_array().expect("containers");
            assert!(pod.get("initContainers").is_none(), "{what}");
            for c in containers {
                assert_eq!(
                    c["securityContext"], base_container["securityContext"],
                    "{what}: container securityContext"
                );
                let resources = &c["resources"];
                assert!(
                    resources["requests"]["cpu"].is_string(),
                    "{what}: cpu request"
                );
                assert!(
                    resources["limits"]["memory"].is_string(),
                    "{what}: memory limit"
                );
                assert!(
                    resources["limits"].get("cpu").is_none(),
                    "{what}: no CPU limit"
                );
                let image = c["image"].as_str().expect("image");
                assert!(
                    image.contains(':'),
                    "{what}: a pinned image, not latest: {image}"
                );
                assert!(!image.ends_with(":latest"), "{what}: {image}");
            }
        }
        // The webhook's Deployment is the base's in everything the values
        // do not set.
        if let Some(d) = of_kind(&installed(&r), "Deployment")
            .into_iter()
            .find(|d| d["metadata"]["name"] == "calmplane")
        {
            let pod = &d["spec"]["template"]["spec"];
            let c = &pod["containers"][0];
            for field in [
                "lifecycle",
                "readinessProbe",
                "livenessProbe",
                "volumeMounts",
                "securityContext",
            ] {
                assert_eq!(c[field], base_container[field], "{name}: container {field}");
            }
            for field in ["terminationGracePeriodSeconds", "serviceAccountName"] {
                assert_eq!(pod[field], base_pod[field], "{name}: pod {field}");
            }
            // The volumes, but for the name of a Secret of your own.
            let mut volumes = pod["volumes"].clone();
            if let Some(own) = values["certificates"]["existingSecret"]["name"].as_str() {
                assert_eq!(volumes[0]["secret"]["secretName"], own, "{name}");
                volumes[0]["secret"]["secretName"] = json!("calmplane-tls");
            }
            assert_eq!(volumes, base_pod["volumes"], "{name}: pod volumes");
            assert_eq!(d["spec"]["strategy"], base["spec"]["strategy"], "{name}");
        }
    }
    for k in [
        "Deployment/calmplane",
        "Deployment/calmplane-lease-monitor",
        "Pod/calmplane-wait-for-ready",
        "Pod/calmplane-test-preview",
    ] {
        assert!(seen.contains(k), "{k} was checked");
    }
}

#[test]
fn the_only_rbac_is_the_lease_monitor_s_read_only_access_to_leases() {
    let test = "the_only_rbac_is_the_lease_monitor_s_read_only_access_to_leases";
    let (Some(helm), Some(kubectl)) = (helm(test), kubectl(test)) else {
        return;
    };
    let (_, monitoring) = render::kustomize(&kubectl, &manifests_dir().join("monitoring"));
    let rbac = |docs: &[Value]| -> Vec<Value> {
        docs.iter()
            .filter(|d| d["apiVersion"] == "rbac.authorization.k8s.io/v1")
            .cloned()
            .collect()
    };
    // tests/monitoring.rs proves these grant get, list and watch on Leases
    // to the monitor's ServiceAccount, and nothing else.
    let expected = rbac(&monitoring);
    assert_eq!(expected.len(), 2, "a ClusterRole and its binding");
    for (name, values, args) in renders() {
        let r = template(&helm, &values, &args);
        let ours = rbac(&r.all().cloned().collect::<Vec<_>>());
        if values["leaseMonitor"]["enabled"] == true {
            assert_eq!(ours.len(), expected.len(), "{name}");
            for doc in &ours {
                assert_eq!(
                    comparable(doc),
                    comparable(find(
                        &expected,
                        doc["kind"].as_str().expect("kind"),
                        doc["metadata"]["name"].as_str().expect("name")
                    )),
                    "{name}: {}",
                    key(doc)
                );
            }
        } else {
            assert!(ours.is_empty(), "{name}: no RBAC without the lease monitor");
        }
        // Every ServiceAccount but the monitor's has no token.
        for sa in of_kind(&r.objects, "ServiceAccount") {
            let monitor = sa["metadata"]["name"] == "calmplane-lease-monitor";
            assert_eq!(
                sa["automountServiceAccountToken"],
                monitor,
                "{name}: {}",
                key(sa)
            );
        }
    }
}

#[test]
fn the_rendered_deployment_finds_nothing_to_change_in_calmplane_preview() {
    let Some(helm) = helm("the_rendered_deployment_finds_nothing_to_change_in_calmplane_preview")
    else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, values) in [("defaults", json!({})), ("everything on", everything_on())] {
        let r = template(&helm, &values, &[]);
        let cm = find(&r.objects, "ConfigMap", "calmplane-policy");
        let policy = dir.path().join("policy.yaml");
        std::fs::write(&policy, cm["data"]["policy.yaml"].as_str().expect("policy")).expect("w");
        let d = find(&r.objects, "Deployment", "calmplane");
        let file = dir.path().join("deployment.yaml");
        std::fs::write(&file, calmplane::yaml::to_string(d).expect("yaml")).expect("write");
        let out = run(calmplane()
            .arg("preview")
            .arg("-f")
            .arg(&file)
            .arg("--config")
            .arg(&policy));
        let preview: Value = serde_json::from_slice(&out.stdout).expect("preview JSON");
        assert_eq!(preview["patch"], json!([]), "{name}: {preview}");
        assert_eq!(preview["template"]["patch"], json!([]), "{name}: {preview}");
    }
}

#[test]
fn the_monitoring_files_are_manifests_monitoring_s() {
    // A chart reads only its own directory: these are copies, kept equal.
    for (ours, theirs) in [
        (
            "files/calmplane.rules.yaml",
            "monitoring/rules/calmplane.rules.yaml",
        ),
        (
            "files/calmplane.json",
            "monitoring/dashboards/calmplane.json",
        ),
    ] {
        let a = std::fs::read_to_string(chart_dir().join(ours)).expect(ours);
        let b = std::fs::read_to_string(manifests_dir().join(theirs)).expect(theirs);
        assert!(
            a == b,
            "charts/calmplane/{ours} differs from manifests/{theirs}: cp manifests/{theirs} charts/calmplane/{ours}"
        );
    }
    let Some(helm) = helm("the_monitoring_files_are_manifests_monitoring_s") else {
        return;
    };
    let r = template(&helm, &everything_on(), &[]);
    let rules = &read_docs(&manifests_dir().join("monitoring/rules/calmplane.rules.yaml"))[0];
    assert_eq!(
        find(&r.objects, "PrometheusRule", "calmplane")["spec"]["groups"],
        rules["groups"]
    );
    // The runbook links follow the value, anchors kept, as kustomize's
    // replacement in manifests/monitoring writes them.
    let mut values = everything_on();
    values["prometheusRule"]["runbookUrl"] = json!("https://docs.example.org/runbook.html");
    let custom = template(&helm, &values, &[]);
    let rule = find(&custom.objects, "PrometheusRule", "calmplane");
    let mut links = 0;
    for (ours, theirs) in rule["spec"]["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("rules"))
        .zip(
            rules["groups"]
                .as_array()
                .expect("groups")
                .iter()
                .flat_map(|g| g["rules"].as_array().expect("rules")),
        )
    {
        if let Some(url) = theirs["annotations"]["runbook_url"].as_str() {
            let anchor = url.split_once('#').map(|(_, a)| a).expect("an anchor");
            assert_eq!(
                ours["annotations"]["runbook_url"],
                format!("https://docs.example.org/runbook.html#{anchor}")
            );
            links += 1;
        }
    }
    assert!(links > 0, "the alerts have runbook links");
    let dashboard: Value = serde_json::from_str(
        find(&r.objects, "ConfigMap", "calmplane-dashboard")["data"]["calmplane.json"]
            .as_str()
            .expect("json"),
    )
    .expect("dashboard JSON");
    let theirs: Value = serde_json::from_str(
        &std::fs::read_to_string(manifests_dir().join("monitoring/dashboards/calmplane.json"))
            .expect("dashboard"),
    )
    .expect("JSON");
    assert_eq!(dashboard, theirs);
}

#[test]
fn the_webhook_configuration_is_what_calmplane_manifests_prints() {
    // The same file embedded in the binary, filled in the same way: for
    // another namespace, and for a URL (`calmplane register --url`).
    let Some(helm) = helm("the_webhook_configuration_is_what_calmplane_manifests_prints") else {
        return;
    };
    let url = "https://192.0.2.7:8443";
    for (namespace, values, flags) in [
        (NAMESPACE, json!({}), vec![]),
        ("platform", json!({}), vec!["--namespace", "platform"]),
        (
            NAMESPACE,
            json!({"webhook": {"url": url}}),
            vec!["--url", url],
        ),
    ] {
        let r = template_in(&helm, namespace, &values, &["--is-upgrade"]);
        let ours = comparable(of_kind(&r.objects, "MutatingWebhookConfiguration")[0]);
        let out = run(calmplane()
            .args(["manifests", "--no-ca-bundle"])
            .args(&flags));
        let printed = yaml_docs(&String::from_utf8(out.stdout).expect("UTF-8"));
        assert_eq!(ours, comparable(&printed[0]), "{namespace} {flags:?}");
    }
}
