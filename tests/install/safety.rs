//! The webhook configuration is safe wherever it comes from, and the Deployment follows the advice calmplane enforces.

use super::*;

/// Every safety property the issue asks of the webhook configuration.
/// `namespace_object` is the calmplane Namespace as installed, when known.
pub(crate) fn assert_webhook_safe(
    config: &Value,
    namespace_object: Option<&Value>,
    pod_labels: &BTreeMap<String, String>,
) {
    assert_eq!(config["apiVersion"], "admissionregistration.k8s.io/v1");
    assert_eq!(config["kind"], "MutatingWebhookConfiguration");
    let webhooks = config["webhooks"].as_array().expect("webhooks");
    assert_eq!(
        webhooks.len(),
        4,
        "one webhook for Pods, one for Deployments, each also in report mode"
    );
    let names: BTreeSet<&str> = webhooks
        .iter()
        .map(|w| w["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names.len(), 4, "webhook names are unique");

    let mut seen = Vec::new();
    for w in webhooks {
        let name = w["name"].as_str().expect("name");
        assert_eq!(str_list(&w["admissionReviewVersions"]), ["v1"], "{name}");
        assert_eq!(w["sideEffects"], "None", "{name}");
        assert_eq!(w["timeoutSeconds"], 2, "{name}");
        assert_eq!(w["failurePolicy"], "Ignore", "{name}");
        // Report webhooks never patch: nothing to be reinvoked for.
        let (path, opt_ins, others, reinvocation): (_, &[&str], &[&str], _) =
            if name.contains("-report.") {
                ("/report", &["report"], &["true", "apiserver"], "Never")
            } else {
                ("/mutate", &["true", "apiserver"], &["report"], "IfNeeded")
            };
        let opt_in = opt_ins[0];
        assert_eq!(w["reinvocationPolicy"], reinvocation, "{name}");
        assert_eq!(w["matchPolicy"], "Equivalent", "{name}");
        // The apiserver skips objects that turn every policy off without
        // calling us (the e2e suite proves each condition).
        let conditions: Vec<&str> = w["matchConditions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str())
            .collect();
        assert!(
            conditions.contains(&"not-skipped"),
            "{name}: {conditions:?}"
        );

        let client = &w["clientConfig"];
        assert!(
            client.get("url").is_none(),
            "{name}: must call the Service, not a URL"
        );
        let service = &client["service"];
        assert_eq!(service["namespace"], NAMESPACE, "{name}");
        assert_eq!(service["name"], SERVICE, "{name}");
        assert_eq!(service["path"], path, "{name}");
        assert!(
            service.get("port").is_none_or(|p| p == 443),
            "{name}: port 443"
        );

        let rules = w["rules"].as_array().expect("rules");
        assert_eq!(rules.len(), 1, "{name}: one rule");
        let rule = &rules[0];
        let mut operations = str_list(&rule["operations"]);
        operations.sort();
        let signature = (
            str_list(&rule["apiGroups"]),
            str_list(&rule["apiVersions"]),
            str_list(&rule["resources"]),
            operations,
        );
        assert!(
            rule.get("scope")
                .is_none_or(|s| s == "Namespaced" || s == "*"),
            "{name}: scope"
        );
        seen.push(signature);

        // Opt-in only.
        let ns = &w["namespaceSelector"];
        for value in opt_ins {
            let shop_in = namespace_labels("shop", &[(OPT_IN_LABEL, value)]);
            assert!(
                selector_matches(ns, &shop_in),
                "{name}: a namespace labelled {value} is sent"
            );
        }
        // `report` goes only to /report; `true` and `apiserver` (where the
        // exported admission policies run first) only to /mutate.
        let mut refused: Vec<Vec<(&str, &str)>> = vec![
            vec![],
            vec![(OPT_IN_LABEL, "false")],
            vec![(OPT_IN_LABEL, "yes")],
        ];
        refused.extend(others.iter().map(|other| vec![(OPT_IN_LABEL, *other)]));
        for own in &refused {
            assert!(
                !selector_matches(ns, &namespace_labels("shop", own)),
                "{name}: namespace labelled {own:?} must not be mutated"
            );
        }
        // Excluded by name even when someone labels them in.
        for excluded in ["kube-system", "kube-node-lease", NAMESPACE] {
            let l = namespace_labels(excluded, &[(OPT_IN_LABEL, opt_in)]);
            assert!(
                !selector_matches(ns, &l),
                "{name}: {excluded} must never be mutated"
            );
        }
        if let Some(namespace) = namespace_object {
            let name_of_ns = namespace["metadata"]["name"]
                .as_str()
                .expect("namespace name");
            let mut l = labels(&namespace["metadata"]["labels"]);
            l.insert(NAME_LABEL.to_string(), name_of_ns.to_string());
            assert!(
                !selector_matches(ns, &l),
                "{name}: the installed namespace is not mutated"
            );
        }
        // The exclusion is by the apiserver-set name label, not only by
        // the opt-in label someone could flip.
        let by_name = ns["matchExpressions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["key"] == NAME_LABEL && e["operator"] == "NotIn")
            .unwrap_or_else(|| panic!("{name}: no {NAME_LABEL} NotIn"));
        let values = str_list(&by_name["values"]);
        for excluded in ["kube-system", "kube-node-lease", NAMESPACE] {
            assert!(
                values.contains(&excluded),
                "{name}: {excluded} not in NotIn"
            );
        }

        // Our own pods (and Deployment) are never sent to us.
        let objects = &w["objectSelector"];
        assert!(
            !selector_matches(objects, pod_labels),
            "{name}: calmplane's own pods must be excluded"
        );
        assert!(
            selector_matches(objects, &map(&[("app", "web")])),
            "{name}: other pods are not excluded"
        );
        assert!(
            selector_matches(objects, &BTreeMap::new()),
            "{name}: unlabelled pods are not excluded"
        );
    }
    seen.sort();
    let rules = [
        (vec![""], vec!["v1"], vec!["pods"], vec!["CREATE"]),
        (
            vec!["apps"],
            vec!["v1"],
            vec!["deployments"],
            vec!["CREATE", "UPDATE"],
        ),
    ];
    // The same rules once for /mutate and once for /report.
    let mut expected: Vec<_> = rules.iter().chain(&rules).cloned().collect();
    expected.sort();
    assert_eq!(
        seen, expected,
        "rules: Pods CREATE and apps/v1 Deployments CREATE+UPDATE"
    );
}

pub(crate) fn pod_template_labels(deployment: &Value) -> BTreeMap<String, String> {
    labels(&deployment["spec"]["template"]["metadata"]["labels"])
}

// ================================================================= tests

#[test]
fn every_yaml_file_under_manifests_passes_kubernetes_validate_strict() {
    // manifests/monitoring holds a Prometheus rule file and CRD objects;
    // tests/monitoring.rs validates it.
    let files: Vec<PathBuf> = yaml_files(&manifests_dir())
        .into_iter()
        .filter(|p| !is_kustomization(p) && !p.starts_with(manifests_dir().join("monitoring")))
        .collect();
    for expected in [
        "base/deployment.yaml",
        "base/webhook.yaml",
        "overlays/cert-manager/certificates.yaml",
        "components/networkpolicy/networkpolicy.yaml",
    ] {
        assert!(
            files.contains(&manifests_dir().join(expected)),
            "{expected} is missing from {files:?}"
        );
    }
    let docs = validate_all(&files);
    println!("{} files, {docs} documents validated", files.len());
}

#[test]
fn rendered_overlays_pass_kubernetes_validate_strict() {
    let Some(r) = render_all("rendered_overlays_pass_kubernetes_validate_strict") else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut files = Vec::new();
    for (name, text) in &r.texts {
        let path = tmp.path().join(format!("{name}.yaml"));
        std::fs::write(&path, text).expect("write rendered");
        files.push(path);
    }
    validate_all(&files);

    let kinds = |docs: &[Value]| -> BTreeSet<String> {
        docs.iter()
            .map(|d| d["kind"].as_str().expect("kind").to_string())
            .collect()
    };
    let base = kinds(&r.base);
    for kind in [
        "Namespace",
        "ConfigMap",
        "Deployment",
        "PodDisruptionBudget",
        "Service",
        "MutatingWebhookConfiguration",
    ] {
        assert!(base.contains(kind), "base renders a {kind}");
    }
    assert!(
        !base.contains("Secret"),
        "the base has no certificate of its own"
    );
    let cm = kinds(&r.cert_manager);
    assert!(cm.contains("Issuer") && cm.contains("Certificate"));
    assert!(cm.is_superset(&base));
    let st = kinds(&r.static_);
    assert!(st.contains("Secret"));
    assert!(st.is_superset(&base));
}

#[test]
fn the_webhook_configuration_is_safe_wherever_it_comes_from() {
    let deployment = find(&base_file("deployment.yaml"), "Deployment", "calmplane").clone();
    let pods = pod_template_labels(&deployment);
    let deployment_labels = labels(&deployment["metadata"]["labels"]);
    assert!(!deployment_labels.is_empty());
    let namespace = find(&base_file("namespace.yaml"), "Namespace", NAMESPACE).clone();

    // The base file itself.
    let base = only(&base_file("webhook.yaml"), "MutatingWebhookConfiguration").clone();
    assert_webhook_safe(&base, Some(&namespace), &pods);
    // The Deployment object is matched by the same objectSelector on UPDATE.
    assert_webhook_safe(&base, None, &deployment_labels);

    // What `calmplane manifests` prints.
    let dir = tempfile::tempdir().expect("tempdir");
    run(calmplane().arg("certs").arg("--out").arg(dir.path()));
    let out = run(calmplane()
        .arg("manifests")
        .arg("--ca-bundle")
        .arg(dir.path().join("ca.crt")));
    let printed = yaml_docs(&String::from_utf8(out.stdout).expect("UTF-8"));
    assert_eq!(printed.len(), 1);
    assert_webhook_safe(&printed[0], Some(&namespace), &pods);

    // And every rendered overlay.
    let Some(r) = render_all("the_webhook_configuration_is_safe_wherever_it_comes_from") else {
        return;
    };
    for (name, docs) in [
        ("base", &r.base),
        ("cert-manager", &r.cert_manager),
        ("static", &r.static_),
    ] {
        println!("checking {name}");
        let config = only(docs, "MutatingWebhookConfiguration");
        let ns = find(docs, "Namespace", NAMESPACE);
        let d = find(docs, "Deployment", "calmplane");
        assert_webhook_safe(config, Some(ns), &pod_template_labels(d));
    }
}

#[test]
fn the_selectors_used_by_the_safety_checks_behave_like_kubernetes() {
    // The safety test is only as good as this evaluator.
    let sel = json!({"matchLabels": {"a": "1"}, "matchExpressions": [
        {"key": "b", "operator": "NotIn", "values": ["x"]},
        {"key": "c", "operator": "Exists"},
        {"key": "d", "operator": "DoesNotExist"},
        {"key": "e", "operator": "In", "values": ["p", "q"]}]});
    let base = [("a", "1"), ("c", ""), ("e", "q")];
    assert!(selector_matches(&sel, &map(&base)));
    assert!(!selector_matches(
        &sel,
        &map(&[("a", "2"), ("c", ""), ("e", "q")])
    ));
    assert!(!selector_matches(
        &sel,
        &map(&[("a", "1"), ("b", "x"), ("c", ""), ("e", "q")])
    ));
    assert!(selector_matches(
        &sel,
        &map(&[("a", "1"), ("b", "y"), ("c", ""), ("e", "q")])
    ));
    assert!(!selector_matches(&sel, &map(&[("a", "1"), ("e", "q")])));
    assert!(!selector_matches(
        &sel,
        &map(&[("a", "1"), ("c", ""), ("d", ""), ("e", "q")])
    ));
    assert!(!selector_matches(&sel, &map(&[("a", "1"), ("c", "")])));
    assert!(selector_matches(&json!({}), &map(&[])));
}

#[test]
fn an_unsafe_webhook_configuration_is_caught() {
    // Each mutation breaks one property; the checker must notice every one.
    let base = only(&base_file("webhook.yaml"), "MutatingWebhookConfiguration").clone();
    let pods = pod_template_labels(find(
        &base_file("deployment.yaml"),
        "Deployment",
        "calmplane",
    ));
    type Breakage = Box<dyn Fn(&mut Value)>;
    let breakages: Vec<(&str, Breakage)> = vec![
        (
            "failurePolicy Fail",
            Box::new(|c| c["webhooks"][0]["failurePolicy"] = json!("Fail")),
        ),
        (
            "sideEffects Some",
            Box::new(|c| c["webhooks"][1]["sideEffects"] = json!("Some")),
        ),
        (
            "timeout 10",
            Box::new(|c| c["webhooks"][0]["timeoutSeconds"] = json!(10)),
        ),
        (
            "no opt-in",
            Box::new(|c| {
                c["webhooks"][0]["namespaceSelector"]["matchExpressions"]
                    .as_array_mut()
                    .unwrap()
                    .remove(0);
            }),
        ),
        (
            "apiserver namespaces not sent to /mutate",
            Box::new(|c| {
                c["webhooks"][0]["namespaceSelector"]["matchExpressions"][0]["values"] =
                    json!(["true"]);
            }),
        ),
        (
            "kube-system not excluded",
            Box::new(|c| {
                c["webhooks"][1]["namespaceSelector"]["matchExpressions"][1]["values"] =
                    json!(["kube-node-lease", "calmplane"]);
            }),
        ),
        (
            "own pods not excluded",
            Box::new(|c| {
                c["webhooks"][0]
                    .as_object_mut()
                    .unwrap()
                    .remove("objectSelector");
            }),
        ),
        (
            "deployments on DELETE",
            Box::new(|c| {
                c["webhooks"][1]["rules"][0]["operations"] = json!(["CREATE", "UPDATE", "DELETE"]);
            }),
        ),
        (
            "no skip condition",
            Box::new(|c| {
                c["webhooks"][2]
                    .as_object_mut()
                    .unwrap()
                    .remove("matchConditions");
            }),
        ),
        (
            "v1beta1 reviews",
            Box::new(|c| c["webhooks"][0]["admissionReviewVersions"] = json!(["v1", "v1beta1"])),
        ),
    ];
    for (what, breakage) in breakages {
        let mut broken = base.clone();
        breakage(&mut broken);
        let caught =
            std::panic::catch_unwind(|| assert_webhook_safe(&broken, None, &pods)).is_err();
        assert!(caught, "the safety check missed: {what}");
    }
}

/// `(flag, value)` for `--flag=value` and `--flag value` arguments.
pub(crate) fn flag<'a>(args: &'a [&'a str], name: &str) -> Option<&'a str> {
    args.iter().enumerate().find_map(|(i, a)| {
        if let Some(v) = a.strip_prefix(name).and_then(|r| r.strip_prefix('=')) {
            Some(v)
        } else if *a == name {
            args.get(i + 1).copied()
        } else {
            None
        }
    })
}

/// A named or numbered container port, resolved to its number.
pub(crate) fn resolve_port(container: &Value, port: &Value) -> i64 {
    if let Some(n) = port.as_i64() {
        return n;
    }
    let name = port.as_str().expect("port name or number");
    container["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == name)
        .and_then(|p| p["containerPort"].as_i64())
        .unwrap_or_else(|| panic!("no container port named {name}"))
}

pub(crate) fn listen_port(addr: &str) -> i64 {
    addr.rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("not host:port: {addr}"))
}

/// The volume mounted at the directory holding `file`, and the key in it.
pub(crate) fn volume_for<'a>(
    pod: &'a Value,
    container: &'a Value,
    file: &str,
) -> (&'a Value, String) {
    let path = Path::new(file);
    let mount = container["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| path.parent() == Some(Path::new(m["mountPath"].as_str().expect("mountPath"))))
        .unwrap_or_else(|| panic!("{file} is not in a mounted directory"));
    assert!(
        mount.get("subPath").is_none(),
        "{file}: subPath mounts are never updated"
    );
    let volume = pod["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["name"] == mount["name"])
        .unwrap_or_else(|| panic!("no volume {}", mount["name"]));
    let key = path
        .file_name()
        .and_then(|f| f.to_str())
        .expect("file name")
        .to_string();
    (volume, key)
}

#[test]
fn the_deployment_follows_the_advice_calmplane_enforces() {
    let docs: Vec<Value> = [
        "deployment.yaml",
        "configmap.yaml",
        "service.yaml",
        "pdb.yaml",
        "namespace.yaml",
    ]
    .iter()
    .flat_map(|f| base_file(f))
    .collect();
    let d = find(&docs, "Deployment", "calmplane");
    let spec = &d["spec"];
    let pod = &spec["template"]["spec"];
    let pod_labels = pod_template_labels(d);
    assert_eq!(spec["replicas"], 2);
    assert!(selector_matches(&spec["selector"], &pod_labels));
    assert_eq!(spec["strategy"]["rollingUpdate"]["maxUnavailable"], 0);
    assert_eq!(pod["priorityClassName"], "system-cluster-critical");

    let containers = pod["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    let args = str_list(&c["args"]);
    assert_eq!(args.first(), Some(&"serve"));
    let listen = flag(&args, "--listen").expect("--listen");
    assert_eq!(listen, "0.0.0.0:8443");
    let https_port = listen_port(listen);

    // Grace period > preStop sleep + the server's shutdown delay + drain.
    let sleep = c["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_u64()
        .expect("preStop sleep");
    let delay = go_duration(flag(&args, "--shutdown-delay").unwrap_or("5s"));
    let drain = go_duration(flag(&args, "--drain-timeout").unwrap_or("20s"));
    let grace = pod["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("grace period");
    let needed = Duration::from_secs(sleep) + delay + drain;
    assert!(
        Duration::from_secs(grace) > needed,
        "grace {grace}s must exceed preStop {sleep}s + shutdown {delay:?} + drain {drain:?}"
    );

    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        let get = &c[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}");
        assert_eq!(get["scheme"], "HTTPS", "{probe}");
        assert_eq!(resolve_port(c, &get["port"]), https_port, "{probe} port");
    }

    let resources = &c["resources"];
    assert!(resources["requests"]["cpu"].is_string(), "cpu request");
    assert!(
        resources["requests"]["memory"].is_string(),
        "memory request"
    );
    assert!(resources["limits"]["memory"].is_string(), "memory limit");
    assert!(
        resources["limits"].get("cpu").is_none(),
        "no CPU limit (CFS throttling)"
    );

    let spread = pod["topologySpreadConstraints"]
        .as_array()
        .expect("topologySpreadConstraints");
    assert!(
        spread
            .iter()
            .any(|t| t["topologyKey"] == "kubernetes.io/hostname"
                && selector_matches(&t["labelSelector"], &pod_labels)),
        "spread over hostnames, selecting our own pods"
    );

    let psc = &pod["securityContext"];
    let csc = &c["securityContext"];
    let either = |key: &str| {
        csc.get(key)
            .or_else(|| psc.get(key))
            .cloned()
            .unwrap_or(Value::Null)
    };
    assert_eq!(either("runAsNonRoot"), true);
    assert_eq!(csc["readOnlyRootFilesystem"], true);
    assert_eq!(csc["allowPrivilegeEscalation"], false);
    assert!(str_list(&csc["capabilities"]["drop"]).contains(&"ALL"));
    assert_eq!(either("seccompProfile")["type"], "RuntimeDefault");

    // Certificate and key from a mounted Secret.
    for (flag_name, file) in [("--cert", "tls.crt"), ("--key", "tls.key")] {
        let path = flag(&args, flag_name).unwrap_or_else(|| panic!("{flag_name}"));
        let (volume, key) = volume_for(pod, c, path);
        assert_eq!(key, file, "{flag_name} reads the kubernetes.io/tls key");
        assert_eq!(
            volume["secret"]["secretName"], "calmplane-tls",
            "{flag_name}"
        );
    }
    // The policy file from the mounted ConfigMap; it loads, with every section.
    let config_path = flag(&args, "--config").expect("--config");
    let (volume, key) = volume_for(pod, c, config_path);
    let cm_name = volume["configMap"]["name"]
        .as_str()
        .expect("configMap volume");
    let cm = find(&docs, "ConfigMap", cm_name);
    let text = cm["data"][&key]
        .as_str()
        .unwrap_or_else(|| panic!("ConfigMap {cm_name} has no {key}"));
    calmplane::config::Config::from_yaml(text, &key).expect("the policy file loads");
    let sections: Value = calmplane::yaml::from_str(text).expect("policy YAML");
    for section in ["lease", "rolloutHistory", "dns", "prestop", "rollout"] {
        assert!(
            sections.get(section).is_some(),
            "policy file lacks {section}"
        );
    }

    // Service: 443 -> the TLS port, and the metrics port.
    let svc = find(&docs, "Service", SERVICE);
    assert!(selector_matches(
        &json!({"matchLabels": svc["spec"]["selector"]}),
        &pod_labels
    ));
    let ports = svc["spec"]["ports"].as_array().expect("ports");
    let https = ports.iter().find(|p| p["port"] == 443).expect("port 443");
    assert_eq!(resolve_port(c, &https["targetPort"]), https_port);
    let metrics_listen = flag(&args, "--metrics-listen").expect("--metrics-listen");
    assert!(
        !metrics_listen.starts_with("127."),
        "metrics must be reachable from outside the pod"
    );
    let metrics = ports
        .iter()
        .find(|p| p["name"] == "metrics")
        .expect("a metrics port");
    assert_eq!(
        resolve_port(c, &metrics["targetPort"]),
        listen_port(metrics_listen)
    );

    let pdb = find(&docs, "PodDisruptionBudget", "calmplane");
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    assert!(selector_matches(&pdb["spec"]["selector"], &pod_labels));

    for doc in &docs {
        if doc["kind"] != "Namespace" {
            assert_eq!(
                doc["metadata"]["namespace"], NAMESPACE,
                "{} namespace",
                doc["kind"]
            );
        }
    }
    let ns = find(&docs, "Namespace", NAMESPACE);
    assert_ne!(ns["metadata"]["labels"][OPT_IN_LABEL], "true");
}

/// `calmplane preview` on `file` (with `extra` args), parsed.
pub(crate) fn preview(file: &Path, extra: &[&std::ffi::OsStr]) -> Value {
    let out = run(calmplane().arg("preview").arg("-f").arg(file).args(extra));
    serde_json::from_slice(&out.stdout).expect("preview prints JSON")
}

pub(crate) fn assert_clean(result: &Value, what: &str) {
    assert_eq!(result["kind"], "Deployment", "{what}");
    assert!(
        result.get("skipped").is_none(),
        "{what}: previewed, not skipped"
    );
    assert_eq!(result["patch"], json!([]), "{what}: Deployment patch");
    assert_eq!(result["changes"], json!([]), "{what}: Deployment changes");
    let template = result
        .get("template")
        .unwrap_or_else(|| panic!("{what}: no template preview"));
    assert_eq!(template["kind"], "Pod", "{what}");
    assert_eq!(template["patch"], json!([]), "{what}: pod template patch");
    assert_eq!(
        template["changes"],
        json!([]),
        "{what}: pod template changes"
    );
}

#[test]
fn calmplane_preview_finds_nothing_to_change_in_its_own_deployment() {
    let file = manifests_dir().join("base/deployment.yaml");
    // With the built-in defaults, and with the policy file it is deployed with.
    assert_clean(&preview(&file, &[]), "defaults");
    let tmp = tempfile::tempdir().expect("tempdir");
    let cm = find(
        &base_file("configmap.yaml"),
        "ConfigMap",
        "calmplane-policy",
    )
    .clone();
    let policy = tmp.path().join("policy.yaml");
    std::fs::write(
        &policy,
        cm["data"]["policy.yaml"].as_str().expect("policy.yaml"),
    )
    .expect("write");
    assert_clean(
        &preview(
            &file,
            &[std::ffi::OsStr::new("--config"), policy.as_os_str()],
        ),
        "the ConfigMap's policy",
    );

    // The same manifest without what the policies enforce is not clean: the
    // check above can fail.
    let mut bare = find(&read_docs(&file), "Deployment", "calmplane").clone();
    bare["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] = json!("25%");
    let pod = &mut bare["spec"]["template"]["spec"];
    pod.as_object_mut().expect("pod spec").remove("dnsConfig");
    pod["containers"][0]
        .as_object_mut()
        .expect("container")
        .remove("lifecycle");
    let bare_file = tmp.path().join("bare.yaml");
    std::fs::write(&bare_file, calmplane::yaml::to_string(&bare).expect("yaml")).expect("write");
    let result = preview(&bare_file, &[]);
    let paths = |v: &Value| -> Vec<String> {
        v.as_array()
            .expect("patch")
            .iter()
            .map(|op| op["path"].as_str().expect("path").to_string())
            .collect()
    };
    let deployment_paths = paths(&result["patch"]);
    assert!(
        deployment_paths
            .iter()
            .any(|p| p.ends_with("/maxUnavailable")),
        "{deployment_paths:?}"
    );
    let template_paths = paths(&result["template"]["patch"]);
    assert!(
        template_paths
            .iter()
            .any(|p| p.contains("/preStop") || p.contains("/lifecycle")),
        "{template_paths:?}"
    );
    assert!(
        template_paths.iter().any(|p| p.contains("/dnsConfig")),
        "{template_paths:?}"
    );
}

#[test]
fn the_cert_manager_overlay_injects_the_ca_of_the_certificate_the_pods_serve() {
    let Some(r) =
        render_all("the_cert_manager_overlay_injects_the_ca_of_the_certificate_the_pods_serve")
    else {
        return;
    };
    let docs = &r.cert_manager;
    let config = only(docs, "MutatingWebhookConfiguration");
    let inject = config["metadata"]["annotations"]["cert-manager.io/inject-ca-from"]
        .as_str()
        .expect("cert-manager.io/inject-ca-from annotation");
    let (ns, cert_name) = inject.split_once('/').expect("<namespace>/<certificate>");
    for w in config["webhooks"].as_array().expect("webhooks") {
        assert!(
            w["clientConfig"].get("caBundle").is_none(),
            "the cainjector owns caBundle"
        );
    }
    let serving = find(docs, "Certificate", cert_name);
    assert_eq!(serving["metadata"]["namespace"], ns);
    assert_ne!(
        serving["spec"]["isCA"], true,
        "the serving certificate is not a CA"
    );

    // It is the Secret the pods mount, for the name the apiserver calls.
    let d = find(docs, "Deployment", "calmplane");
    let secret_volume = d["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find_map(|v| v["secret"]["secretName"].as_str())
        .expect("a Secret volume");
    assert_eq!(serving["spec"]["secretName"], secret_volume);
    assert_eq!(d["metadata"]["namespace"], ns);
    let service = &config["webhooks"][0]["clientConfig"]["service"];
    let host = format!(
        "{}.{}.svc",
        service["name"].as_str().expect("service name"),
        service["namespace"].as_str().expect("service namespace")
    );
    assert!(
        str_list(&serving["spec"]["dnsNames"]).contains(&host.as_str()),
        "dnsNames lack {host}"
    );
    assert!(str_list(&serving["spec"]["usages"]).contains(&"server auth"));

    // Issued by a CA Issuer whose CA comes from a CA Certificate, itself
    // self-signed: the caBundle is the CA, stable across serving rotations.
    let issuer_ref = &serving["spec"]["issuerRef"];
    assert!(issuer_ref.get("kind").is_none_or(|k| k == "Issuer"));
    let ca_issuer = find(docs, "Issuer", issuer_ref["name"].as_str().expect("issuer"));
    assert_eq!(ca_issuer["metadata"]["namespace"], ns);
    let ca_secret = ca_issuer["spec"]["ca"]["secretName"]
        .as_str()
        .expect("a CA issuer");
    let ca_cert = docs
        .iter()
        .find(|d| d["kind"] == "Certificate" && d["spec"]["secretName"] == ca_secret)
        .expect("a Certificate for the CA secret");
    assert_eq!(ca_cert["spec"]["isCA"], true);
    assert_eq!(ca_cert["metadata"]["namespace"], ns);
    let root = find(
        docs,
        "Issuer",
        ca_cert["spec"]["issuerRef"]["name"]
            .as_str()
            .expect("issuer"),
    );
    assert!(root["spec"].get("selfSigned").is_some());
    let serving_life = go_duration(serving["spec"]["duration"].as_str().expect("duration"));
    let ca_life = go_duration(ca_cert["spec"]["duration"].as_str().expect("duration"));
    assert!(
        ca_life > serving_life * 4,
        "the CA outlives many serving certificates"
    );
}

#[test]
fn the_static_overlay_carries_the_generated_certificate_and_ca_bundle() {
    let Some(r) = render_all("the_static_overlay_carries_the_generated_certificate_and_ca_bundle")
    else {
        return;
    };
    let b64 = base64::engine::general_purpose::STANDARD;
    let docs = &r.static_;
    let secret = find(docs, "Secret", "calmplane-tls");
    assert_eq!(secret["type"], "kubernetes.io/tls");
    assert_eq!(secret["metadata"]["namespace"], NAMESPACE);
    // kustomize wraps long base64 lines; the apiserver (Go's decoder)
    // ignores the newlines.
    let decode = |k: &str| {
        let text: String = secret["data"][k]
            .as_str()
            .expect(k)
            .split_whitespace()
            .collect();
        b64.decode(text).expect("base64")
    };
    assert_eq!(decode("tls.crt"), r.static_certs.tls_crt);
    assert_eq!(decode("tls.key"), r.static_certs.tls_key);

    let d = find(docs, "Deployment", "calmplane");
    let mounts_secret = d["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .any(|v| v["secret"]["secretName"] == "calmplane-tls");
    assert!(mounts_secret, "the Deployment mounts the generated Secret");

    let config = only(docs, "MutatingWebhookConfiguration");
    let mut stripped = config.clone();
    for w in stripped["webhooks"].as_array_mut().expect("webhooks") {
        let bundle = w["clientConfig"]["caBundle"].as_str().expect("caBundle");
        assert_eq!(b64.decode(bundle).expect("base64"), r.static_certs.ca_pem);
        w["clientConfig"]
            .as_object_mut()
            .expect("clientConfig")
            .remove("caBundle");
    }
    // The patch changed the caBundle and nothing else.
    assert_eq!(&stripped, only(&r.base, "MutatingWebhookConfiguration"));
}

#[test]
fn calmplane_manifests_prints_the_base_webhook_with_the_ca_bundle() {
    let b64 = base64::engine::general_purpose::STANDARD;
    let tmp = tempfile::tempdir().expect("tempdir");
    run(calmplane().arg("certs").arg("--out").arg(tmp.path()));
    let ca = std::fs::read(tmp.path().join("ca.crt")).expect("ca.crt");
    let base = only(&base_file("webhook.yaml"), "MutatingWebhookConfiguration").clone();

    // The flag and the env var give the same output.
    let by_flag = run(calmplane()
        .arg("manifests")
        .arg("--ca-bundle")
        .arg(tmp.path().join("ca.crt")))
    .stdout;
    let by_env = run(calmplane()
        .arg("manifests")
        .env("CALMPLANE_CA_BUNDLE", tmp.path().join("ca.crt")))
    .stdout;
    assert_eq!(by_flag, by_env);
    let printed = yaml_docs(&String::from_utf8(by_flag).expect("UTF-8"));
    assert_eq!(printed.len(), 1);
    let mut expected = base.clone();
    for w in expected["webhooks"].as_array_mut().expect("webhooks") {
        w["clientConfig"]["caBundle"] = json!(b64.encode(&ca));
    }
    assert_eq!(printed[0], expected);

    // Without a bundle, for cert-manager's cainjector: the base as is.
    let none = run(calmplane().args(["manifests", "--no-ca-bundle"])).stdout;
    assert_eq!(
        yaml_docs(&String::from_utf8(none).expect("UTF-8")),
        vec![base.clone()]
    );

    // Another namespace and Service: referenced, and that namespace excluded.
    let other = run(calmplane().args([
        "manifests",
        "--no-ca-bundle",
        "--namespace",
        "webhooks",
        "--service",
        "calm",
    ]))
    .stdout;
    let other = &yaml_docs(&String::from_utf8(other).expect("UTF-8"))[0];
    for w in other["webhooks"].as_array().expect("webhooks") {
        assert_eq!(w["clientConfig"]["service"]["namespace"], "webhooks");
        assert_eq!(w["clientConfig"]["service"]["name"], "calm");
        let l = namespace_labels("webhooks", &[(OPT_IN_LABEL, "true")]);
        assert!(
            !selector_matches(&w["namespaceSelector"], &l),
            "its own namespace stays excluded"
        );
        let l = namespace_labels(NAMESPACE, &[(OPT_IN_LABEL, "true")]);
        assert!(!selector_matches(&w["namespaceSelector"], &l));
    }

    // Wrong inputs fail with a message, not a broken configuration.
    for (file, message) in [
        (tmp.path().join("tls.key"), "never a key"),
        (tmp.path().join("missing.crt"), "missing.crt"),
    ] {
        let out = calmplane()
            .arg("manifests")
            .arg("--ca-bundle")
            .arg(&file)
            .output()
            .expect("run");
        assert!(!out.status.success(), "{} accepted", file.display());
        assert!(out.stdout.is_empty(), "nothing printed on error");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(message), "{err}");
    }
    let out = calmplane()
        .args(["manifests", "--no-ca-bundle", "--namespace", "Bad_NS"])
        .output()
        .expect("run");
    assert!(!out.status.success());
}
