//! The NetworkPolicy component admits only the apiserver and Prometheus.

use super::*;

pub(crate) fn networkpolicy_component() -> PathBuf {
    manifests_dir().join("components/networkpolicy")
}

/// Who opens a connection, for [`admits`].
pub(crate) enum Source {
    /// A host-network process or an address outside the pod network (the
    /// apiserver on a control-plane node): only an `ipBlock` can name it.
    Host(IpAddr),
    /// A pod, in a namespace with the apiserver-set name label.
    Pod {
        namespace: String,
        labels: BTreeMap<String, String>,
        ip: IpAddr,
    },
}

pub(crate) fn pod_in(namespace: &str, labels: &[(&str, &str)]) -> Source {
    Source::Pod {
        namespace: namespace.to_string(),
        labels: map(labels),
        ip: ip("10.244.1.5"),
    }
}

pub(crate) fn ip(s: &str) -> IpAddr {
    s.parse().unwrap_or_else(|e| panic!("IP {s}: {e}"))
}

/// Whether `address` lies in `cidr` (IPv4 or IPv6).
pub(crate) fn cidr_contains(cidr: &str, address: IpAddr) -> bool {
    let (net, bits) = cidr
        .split_once('/')
        .unwrap_or_else(|| panic!("not a CIDR: {cidr}"));
    let bits: u32 = bits.parse().unwrap_or_else(|e| panic!("{cidr}: {e}"));
    let (net, address, width) = match (ip(net), address) {
        (IpAddr::V4(n), IpAddr::V4(a)) => (u128::from(u32::from(n)), u128::from(u32::from(a)), 32),
        (IpAddr::V6(n), IpAddr::V6(a)) => (u128::from(n), u128::from(a), 128),
        _ => return false,
    };
    assert!(bits <= width, "{cidr}: prefix too long");
    bits == 0 || net >> (width - bits) == address >> (width - bits)
}

/// Whether a rule's `ports` admit TCP `port` on `pod` (a pod template,
/// whose container ports give named ports their numbers).
pub(crate) fn ports_admit(ports: &Value, pod: &Value, port: i64) -> bool {
    let Some(ports) = ports.as_array().filter(|p| !p.is_empty()) else {
        return true; // no ports: every port
    };
    ports.iter().any(|p| {
        if p["protocol"].as_str().unwrap_or("TCP") != "TCP" {
            return false;
        }
        match &p["port"] {
            Value::Null => true,
            Value::Number(n) => {
                let from = n.as_i64().expect("port number");
                let to = p["endPort"].as_i64().unwrap_or(from);
                (from..=to).contains(&port)
            }
            Value::String(name) => pod["spec"]["containers"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|c| c["ports"].as_array().into_iter().flatten())
                .any(|c| c["name"] == name.as_str() && c["containerPort"] == port),
            other => panic!("port {other}"),
        }
    })
}

/// Whether one `from` peer of a policy in `policy_namespace` admits `source`.
pub(crate) fn peer_admits(peer: &Value, policy_namespace: &str, source: &Source) -> bool {
    if let Some(block) = peer.get("ipBlock") {
        let address = match source {
            Source::Host(a) | Source::Pod { ip: a, .. } => *a,
        };
        let cidr = block["cidr"].as_str().expect("ipBlock.cidr");
        let excepted = block["except"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| cidr_contains(e.as_str().expect("except CIDR"), address));
        return cidr_contains(cidr, address) && !excepted;
    }
    let Source::Pod {
        namespace, labels, ..
    } = source
    else {
        return false; // selectors name pods, never hosts
    };
    let namespace_ok = match peer.get("namespaceSelector") {
        Some(selector) => selector_matches(selector, &namespace_labels(namespace, &[])),
        None => namespace == policy_namespace,
    };
    let pod_ok = peer
        .get("podSelector")
        .is_none_or(|selector| selector_matches(selector, labels));
    namespace_ok && pod_ok
}

/// NetworkPolicy ingress semantics (networking.k8s.io/v1), written out here
/// rather than taken from a CNI: a pod that no policy selects for Ingress
/// accepts everything; a selected pod accepts what some rule of some
/// selecting policy admits, by source and by port.
pub(crate) fn admits(
    policies: &[Value],
    namespace: &str,
    pod: &Value,
    port: i64,
    source: &Source,
) -> bool {
    let labels = labels(&pod["metadata"]["labels"]);
    let selecting: Vec<&Value> = policies
        .iter()
        .filter(|p| p["metadata"]["namespace"] == namespace)
        .filter(|p| selector_matches(&p["spec"]["podSelector"], &labels))
        .filter(|p| {
            // Without policyTypes, a policy always covers Ingress.
            p["spec"]["policyTypes"]
                .as_array()
                .is_none_or(|t| t.iter().any(|t| t == "Ingress"))
        })
        .collect();
    if selecting.is_empty() {
        return true;
    }
    selecting.iter().any(|p| {
        p["spec"]["ingress"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|rule| {
                let from_ok = match rule["from"].as_array().filter(|f| !f.is_empty()) {
                    None => true, // no from: every source
                    Some(peers) => peers
                        .iter()
                        .any(|peer| peer_admits(peer, namespace, source)),
                };
                from_ok && ports_admit(&rule["ports"], pod, port)
            })
    })
}

/// Everything the component must guarantee, for `policies` (the component
/// as shipped or as rendered), the webhook's and the lease monitor's
/// Deployments, and the addresses the apiserver calls from.
pub(crate) fn assert_networkpolicies_sound(
    policies: &[Value],
    webhook: &Value,
    monitor: &Value,
    apiserver: &[IpAddr],
) {
    assert!(!apiserver.is_empty());
    for p in policies {
        let name = p["metadata"]["name"].as_str().expect("name");
        assert_eq!(p["kind"], "NetworkPolicy", "{name}");
        assert_eq!(p["metadata"]["namespace"], NAMESPACE, "{name}");
        assert_eq!(
            str_list(&p["spec"]["policyTypes"]),
            ["Ingress"],
            "{name}: Ingress only"
        );
    }
    let webhook_pod = &webhook["spec"]["template"];
    let monitor_pod = &monitor["spec"]["template"];
    let webhook_labels = labels(&webhook_pod["metadata"]["labels"]);
    let monitor_labels = labels(&monitor_pod["metadata"]["labels"]);
    // Each policy selects its own pods, and only them.
    let webhook_policy = find(policies, "NetworkPolicy", "calmplane-webhook");
    let monitor_policy = find(policies, "NetworkPolicy", "calmplane-lease-monitor");
    for (policy, own, other) in [
        (webhook_policy, &webhook_labels, &monitor_labels),
        (monitor_policy, &monitor_labels, &webhook_labels),
    ] {
        let selector = &policy["spec"]["podSelector"];
        let name = &policy["metadata"]["name"];
        assert!(
            selector_matches(selector, own),
            "{name} must select {own:?}"
        );
        assert!(
            !selector_matches(selector, other),
            "{name} must not select {other:?}"
        );
    }

    let monitoring = || pod_in("monitoring", &[("app.kubernetes.io/name", "prometheus")]);
    let shop = || pod_in("shop", &[("app", "web")]);
    let system = || pod_in("kube-system", &[("k8s-app", "kube-dns")]);
    let neighbour = || {
        pod_in(
            NAMESPACE,
            &monitor_labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect::<Vec<_>>(),
        )
    };
    let webhook_admits =
        |port, source: &Source| admits(policies, NAMESPACE, webhook_pod, port, source);
    let monitor_admits =
        |port, source: &Source| admits(policies, NAMESPACE, monitor_pod, port, source);

    // 8443: the apiserver, and nobody else.
    for address in apiserver {
        assert!(
            webhook_admits(8443, &Source::Host(*address)),
            "the apiserver at {address} must reach 8443"
        );
        assert!(
            !webhook_admits(9090, &Source::Host(*address)),
            "{address} must not reach 9090"
        );
        assert!(
            !webhook_admits(12345, &Source::Host(*address)),
            "{address}: only 8443"
        );
    }
    for (who, source) in [
        ("a workload", shop()),
        ("kube-system", system()),
        ("Prometheus", monitoring()),
        ("the lease monitor", neighbour()),
    ] {
        assert!(!webhook_admits(8443, &source), "{who} must not reach 8443");
    }
    assert!(
        !webhook_admits(8443, &Source::Host(ip("203.0.113.200"))),
        "an address outside the CIDRs"
    );
    // 9090 and 9091: the monitoring namespace, and nobody else.
    assert!(
        webhook_admits(9090, &monitoring()),
        "Prometheus must reach 9090"
    );
    assert!(
        monitor_admits(9091, &monitoring()),
        "Prometheus must reach 9091"
    );
    for (who, source) in [
        ("a workload", shop()),
        ("kube-system", system()),
        ("the lease monitor", neighbour()),
    ] {
        assert!(!webhook_admits(9090, &source), "{who} must not reach 9090");
        assert!(!monitor_admits(9091, &source), "{who} must not reach 9091");
    }
    for address in apiserver {
        assert!(
            !monitor_admits(9091, &Source::Host(*address)),
            "{address} must not reach 9091"
        );
    }

    // The rules as the issue words them: the 8443 rule names port 8443 (or
    // the container port `https`), the metrics rules come from a
    // namespaceSelector only.
    let rules = |policy: &Value| {
        policy["spec"]["ingress"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    let https = rules(webhook_policy)
        .into_iter()
        .find(|r| ports_admit(&r["ports"], webhook_pod, 8443))
        .expect("a rule for 8443");
    assert!(
        https["ports"]
            .as_array()
            .expect("8443 rule ports")
            .iter()
            .all(|p| p["port"] == 8443 || p["port"] == "https"),
        "the 8443 rule names its port: {https}"
    );
    for (policy, pod, port) in [
        (webhook_policy, webhook_pod, 9090),
        (monitor_policy, monitor_pod, 9091),
    ] {
        for rule in rules(policy)
            .iter()
            .filter(|r| ports_admit(&r["ports"], pod, port))
        {
            let peers = rule["from"]
                .as_array()
                .filter(|f| !f.is_empty())
                .expect("a from list");
            for peer in peers {
                let keys: Vec<&String> = peer.as_object().expect("peer").keys().collect();
                assert_eq!(
                    keys,
                    ["namespaceSelector"],
                    "{port} from a namespaceSelector only: {rule}"
                );
            }
        }
    }
}

pub(crate) fn shipped_networkpolicies() -> Vec<Value> {
    read_docs(&networkpolicy_component().join("networkpolicy.yaml"))
}

pub(crate) fn monitor_deployment() -> Value {
    find(
        &read_docs(&manifests_dir().join("monitoring/lease-monitor.yaml")),
        "Deployment",
        "calmplane-lease-monitor",
    )
    .clone()
}

/// The shipped placeholders, one address in each.
pub(crate) const PLACEHOLDER_APISERVER: &[&str] = &["192.0.2.10", "198.51.100.10"];

#[test]
fn the_networkpolicy_component_admits_only_the_apiserver_and_prometheus() {
    let policies = shipped_networkpolicies();
    let webhook = find(&base_file("deployment.yaml"), "Deployment", "calmplane").clone();
    let apiserver: Vec<IpAddr> = PLACEHOLDER_APISERVER.iter().map(|a| ip(a)).collect();
    assert_networkpolicies_sound(&policies, &webhook, &monitor_deployment(), &apiserver);
    // The shipped CIDRs are documentation ranges (RFC 5737, RFC 3849), so
    // they can never pass for a real cluster's.
    let documentation = [
        "192.0.2.0/24",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "2001:db8::/32",
    ];
    let policy = find(&policies, "NetworkPolicy", "calmplane-webhook");
    let blocks: Vec<&str> = policy["spec"]["ingress"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|r| r["from"].as_array().into_iter().flatten())
        .filter_map(|p| p["ipBlock"]["cidr"].as_str())
        .collect();
    assert!(!blocks.is_empty());
    for cidr in blocks {
        let (first, _) = cidr.split_once('/').expect("CIDR");
        assert!(
            documentation.iter().any(|d| cidr_contains(d, ip(first))),
            "{cidr} is not a documentation range"
        );
    }
    // The component is a kustomize Component that lists that file.
    let kustomization = read_docs(&networkpolicy_component().join("kustomization.yaml"));
    assert_eq!(
        kustomization[0]["apiVersion"],
        "kustomize.config.k8s.io/v1alpha1"
    );
    assert_eq!(kustomization[0]["kind"], "Component");
    assert_eq!(
        str_list(&kustomization[0]["resources"]),
        ["networkpolicy.yaml"]
    );
}

#[test]
fn a_broken_networkpolicy_is_caught() {
    // Each breakage opens or closes something; the check must notice every one.
    let policies = shipped_networkpolicies();
    let webhook = find(&base_file("deployment.yaml"), "Deployment", "calmplane").clone();
    let monitor = monitor_deployment();
    let apiserver: Vec<IpAddr> = PLACEHOLDER_APISERVER.iter().map(|a| ip(a)).collect();
    let index = |name: &str| {
        policies
            .iter()
            .position(|p| p["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no policy {name}"))
    };
    let (w, m) = (index("calmplane-webhook"), index("calmplane-lease-monitor"));
    type Breakage = Box<dyn Fn(&mut [Value])>;
    let breakages: Vec<(&str, Breakage)> = vec![
        (
            "webhook podSelector selects nothing",
            Box::new(move |p| {
                p[w]["spec"]["podSelector"] =
                    json!({"matchLabels": {"app.kubernetes.io/name": "calmplane-webhook"}});
            }),
        ),
        (
            "webhook podSelector selects every pod",
            Box::new(move |p| p[w]["spec"]["podSelector"] = json!({})),
        ),
        (
            "monitor podSelector selects the webhook",
            Box::new(move |p| {
                p[m]["spec"]["podSelector"] =
                    json!({"matchLabels": {"app.kubernetes.io/name": "calmplane"}});
            }),
        ),
        (
            "8443 from anywhere",
            Box::new(move |p| {
                p[w]["spec"]["ingress"][0]
                    .as_object_mut()
                    .unwrap()
                    .remove("from");
            }),
        ),
        (
            "the Service port instead of the pod's",
            Box::new(move |p| p[w]["spec"]["ingress"][0]["ports"][0]["port"] = json!(443)),
        ),
        (
            "every port for the apiserver",
            Box::new(move |p| {
                p[w]["spec"]["ingress"][0]
                    .as_object_mut()
                    .unwrap()
                    .remove("ports");
            }),
        ),
        (
            "9090 from every namespace",
            Box::new(move |p| {
                p[w]["spec"]["ingress"][1]["from"][0]["namespaceSelector"] = json!({});
            }),
        ),
        (
            "9090 also from an ipBlock",
            Box::new(move |p| {
                p[w]["spec"]["ingress"][1]["from"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"ipBlock": {"cidr": "0.0.0.0/0"}}));
            }),
        ),
        (
            "9090 from pods of calmplane's namespace",
            Box::new(move |p| {
                p[w]["spec"]["ingress"][1]["from"][0] = json!({"podSelector": {}});
            }),
        ),
        (
            "9091 from another namespace",
            Box::new(move |p| {
                p[m]["spec"]["ingress"][0]["from"][0]["namespaceSelector"]["matchLabels"]
                    [NAME_LABEL] = json!("default");
            }),
        ),
        (
            "egress too",
            Box::new(move |p| p[w]["spec"]["policyTypes"] = json!(["Ingress", "Egress"])),
        ),
    ];
    for (what, breakage) in breakages {
        let mut broken = policies.clone();
        breakage(&mut broken);
        let caught = std::panic::catch_unwind(|| {
            assert_networkpolicies_sound(&broken, &webhook, &monitor, &apiserver)
        })
        .is_err();
        assert!(caught, "the NetworkPolicy check missed: {what}");
    }
}

#[test]
fn the_networkpolicy_evaluator_follows_the_api() {
    // The NetworkPolicy tests are only as good as this evaluator.
    let pod = json!({"metadata": {"labels": {"app": "x"}},
                     "spec": {"containers": [{"ports": [{"name": "web", "containerPort": 8080}]}]}});
    let policy = |spec: Value| json!({"kind": "NetworkPolicy", "metadata": {"name": "p", "namespace": "ns"}, "spec": spec});
    let anyone = Source::Host(ip("203.0.113.1"));
    // Not selected, or selected for Egress only: not isolated.
    let other =
        policy(json!({"podSelector": {"matchLabels": {"app": "y"}}, "policyTypes": ["Ingress"]}));
    assert!(admits(&[other], "ns", &pod, 1, &anyone));
    let egress = policy(json!({"podSelector": {}, "policyTypes": ["Egress"]}));
    assert!(admits(&[egress], "ns", &pod, 1, &anyone));
    // Selected with no rules: nothing; without policyTypes, Ingress is implied.
    let deny = policy(json!({"podSelector": {}}));
    assert!(!admits(std::slice::from_ref(&deny), "ns", &pod, 1, &anyone));
    // Rules add up across policies.
    let open = policy(json!({"podSelector": {}, "ingress": [{}]}));
    assert!(admits(&[deny, open], "ns", &pod, 1, &anyone));
    // A named port is the container's port of that name.
    let named = policy(json!({"podSelector": {}, "ingress": [{"ports": [{"port": "web"}]}]}));
    assert!(admits(
        std::slice::from_ref(&named),
        "ns",
        &pod,
        8080,
        &anyone
    ));
    assert!(!admits(&[named], "ns", &pod, 8081, &anyone));
    let range = policy(
        json!({"podSelector": {}, "ingress": [{"ports": [{"port": 8000, "endPort": 8100}]}]}),
    );
    assert!(admits(
        std::slice::from_ref(&range),
        "ns",
        &pod,
        8080,
        &anyone
    ));
    assert!(!admits(&[range], "ns", &pod, 8101, &anyone));
    // ipBlock with except.
    let block = policy(json!({"podSelector": {}, "ingress": [{"from": [
        {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}]}]}));
    let b = std::slice::from_ref(&block);
    assert!(admits(b, "ns", &pod, 1, &Source::Host(ip("10.2.3.4"))));
    assert!(!admits(b, "ns", &pod, 1, &Source::Host(ip("10.1.3.4"))));
    assert!(!admits(b, "ns", &pod, 1, &Source::Host(ip("11.0.0.1"))));
    // namespaceSelector and podSelector in one peer: both; in two peers: either.
    let and = policy(json!({"podSelector": {}, "ingress": [{"from": [
        {"namespaceSelector": {"matchLabels": {NAME_LABEL: "mon"}}, "podSelector": {"matchLabels": {"app": "prom"}}}]}]}));
    let or = policy(json!({"podSelector": {}, "ingress": [{"from": [
        {"namespaceSelector": {"matchLabels": {NAME_LABEL: "mon"}}}, {"podSelector": {"matchLabels": {"app": "prom"}}}]}]}));
    let prom_in_mon = pod_in("mon", &[("app", "prom")]);
    let other_in_mon = pod_in("mon", &[("app", "other")]);
    let prom_in_ns = pod_in("ns", &[("app", "prom")]);
    let prom_elsewhere = pod_in("elsewhere", &[("app", "prom")]);
    assert!(admits(
        std::slice::from_ref(&and),
        "ns",
        &pod,
        1,
        &prom_in_mon
    ));
    assert!(!admits(
        std::slice::from_ref(&and),
        "ns",
        &pod,
        1,
        &other_in_mon
    ));
    assert!(admits(
        std::slice::from_ref(&or),
        "ns",
        &pod,
        1,
        &other_in_mon
    ));
    // A podSelector alone names pods of the policy's own namespace.
    assert!(admits(
        std::slice::from_ref(&or),
        "ns",
        &pod,
        1,
        &prom_in_ns
    ));
    assert!(!admits(&[or], "ns", &pod, 1, &prom_elsewhere));
    // Selectors never name hosts.
    assert!(!admits(
        &[and],
        "ns",
        &pod,
        1,
        &Source::Host(ip("10.244.1.5"))
    ));
    assert!(cidr_contains("2001:db8::/32", ip("2001:db8::1")));
    assert!(!cidr_contains("2001:db8::/32", ip("192.0.2.1")));
    assert!(cidr_contains("0.0.0.0/0", ip("192.0.2.1")));
}

/// The overlay that the component's kustomization.yaml shows, as written there.
pub(crate) fn documented_networkpolicy_overlay() -> String {
    let text = std::fs::read_to_string(networkpolicy_component().join("kustomization.yaml"))
        .expect("kustomization.yaml");
    let start = "#   # manifests/overlays/mine/kustomization.yaml";
    let lines: Vec<&str> = text
        .lines()
        .skip_while(|l| *l != start)
        .take_while(|l| *l != "#")
        .collect();
    assert!(
        !lines.is_empty(),
        "the component documents an overlay starting {start:?}"
    );
    lines
        .iter()
        .map(|l| {
            l.strip_prefix("#   ")
                .unwrap_or_else(|| panic!("example line {l:?}"))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_documented_networkpolicy_overlay_renders_validates_and_sets_the_cidrs() {
    let Some(kubectl) = kubectl("the_documented_networkpolicy_overlay_renders") else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("manifests");
    copy_dir(&manifests_dir(), &root);
    let overlay = root.join("overlays/mine");
    std::fs::create_dir_all(&overlay).expect("mkdir");
    std::fs::write(
        overlay.join("kustomization.yaml"),
        documented_networkpolicy_overlay(),
    )
    .expect("write overlay");
    let (text, docs) = kustomize(&kubectl, &overlay);
    let file = tmp.path().join("rendered.yaml");
    std::fs::write(&file, &text).expect("write rendered");
    validate_all(&[file]);

    // The install is all there, with the two policies added.
    let (_, cert_manager) = kustomize(&kubectl, &manifests_dir().join("overlays/cert-manager"));
    let without: Vec<&Value> = docs
        .iter()
        .filter(|d| d["kind"] != "NetworkPolicy")
        .collect();
    assert_eq!(without, cert_manager.iter().collect::<Vec<_>>());
    let policies: Vec<Value> = docs
        .iter()
        .filter(|d| d["kind"] == "NetworkPolicy")
        .cloned()
        .collect();
    assert_eq!(policies.len(), 2);

    // The documented patch replaced the placeholders with its addresses; the
    // podSelectors still select the rendered pods.
    let (_, monitoring) = kustomize(&kubectl, &manifests_dir().join("monitoring"));
    let webhook = find(&docs, "Deployment", "calmplane");
    let monitor = find(&monitoring, "Deployment", "calmplane-lease-monitor");
    assert_networkpolicies_sound(
        &policies,
        webhook,
        monitor,
        &[ip("10.0.0.10"), ip("10.0.0.11")],
    );
    for placeholder in PLACEHOLDER_APISERVER {
        assert!(
            !admits(
                &policies,
                NAMESPACE,
                &webhook["spec"]["template"],
                8443,
                &Source::Host(ip(placeholder))
            ),
            "{placeholder} is still admitted"
        );
    }
}
