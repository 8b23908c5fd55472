//! `calmplane audit` over a cluster dump built from real manifests: exact
//! counts derived from how the dump was built, the audit held to what
//! `/mutate` does over TLS, and bad input.

use calmplane::audit::{self, input::Inventory, AuditError, Options, Report};
use calmplane::config::Config;
use calmplane_testkit::cluster::{fixture, Dump, NOW};
use calmplane_testkit::harness::{review, TestServer};
use serde_json::{json, Value};

const DEMO: &str = "GoogleCloudPlatform__microservices-demo__release__kubernetes-manifests.yaml";
const METRICS_SERVER: &str = "kubernetes-sigs__metrics-server__manifests__base__deployment.yaml";
const KSM: &str =
    "prometheus-operator__kube-prometheus__manifests__kubeStateMetrics-deployment.yaml";
const LIFECYCLE: &str = "kubernetes__website__content__en__examples__pods__lifecycle-events.yaml";
const CUSTOM_DNS: &str =
    "kubernetes__website__content__en__examples__service__networking__custom-dns.yaml";

/// Per-pod Leases of workloads that select `metadata.name=<pod>`.
const POD_LEASE_SECONDS: i64 = 10;
const NODE_LEASE_SECONDS: i64 = 40;
const LEADER_LEASE_SECONDS: i64 = 15;
const SELECTOR: &str = "calmplane.dev/lease-selector";
const HOUR: i64 = 3600;

/// Names the test needs to derive its expectations.
struct Story {
    dump: Dump,
    /// Deployments in `shop`, in input order.
    shop_deployments: Vec<String>,
}

fn one(name: &str, kind: &str) -> Value {
    fixture(name, kind).remove(0)
}

/// The dump: `shop` opted in ("true"), `blog` in report mode, `quiet` not
/// opted in, kube-system labelled in by mistake, node leases, and one of
/// calmplane's own pods in `shop`.
fn story() -> Story {
    let mut dump = Dump::default();
    dump.namespace("shop", Some("true"));
    dump.namespace("blog", Some("report"));
    dump.namespace("quiet", None);
    dump.namespace("kube-system", Some("true"));
    dump.namespace("kube-node-lease", None);
    dump.namespace("calmplane", Some("true"));

    let mut shop_deployments = Vec::new();
    for d in fixture(DEMO, "Deployment") {
        let name = d["metadata"]["name"].as_str().unwrap().to_string();
        let mut d = d.clone();
        // frontend: three revisions, two of them in the last hour: hot by ReplicaSets.
        // adservice: one rollout in the hour (not hot), still scoped from when it was.
        // cartservice: calmplane recorded two rollouts: hot by the annotation.
        let history: &[(i64, u64)] = match name.as_str() {
            "frontend" => &[(3 * HOUR, 1), (50 * 60, 2), (20 * 60, 3)],
            "adservice" => &[(3 * HOUR, 1), (10 * 60, 2)],
            _ => &[(3 * HOUR, 1)],
        };
        if name == "adservice" {
            d["spec"]["template"]["metadata"]["annotations"]["calmplane.dev/lease-scope"] =
                json!("deployment/adservice");
        }
        if name == "cartservice" {
            d["metadata"]["annotations"] = json!({"calmplane.dev/rollouts": format!("{},{},{}", NOW - 2 * HOUR, NOW - 1000, NOW - 500)});
        }
        let pods = dump.deployment("shop", &d, history, 2);
        if name == "frontend" || name == "checkoutservice" {
            for pod in pods {
                dump.annotate("Pod", &pod, SELECTOR, &format!("metadata.name={pod}"));
                dump.lease("shop", &pod, POD_LEASE_SECONDS, Some(&pod));
            }
        }
        shop_deployments.push(name);
    }
    dump.pdb(
        "shop",
        "frontend",
        json!({"matchLabels": {"app": "frontend"}}),
    );
    dump.pdb(
        "shop",
        "cart",
        json!({"matchExpressions": [{"key": "app", "operator": "In", "values": ["cartservice", "redis-cart"]}]}),
    );
    // A selector that does not parse: left alone, with a warning.
    let mut broken = one(CUSTOM_DNS, "Pod");
    broken["metadata"]["name"] = json!("broken-selector");
    broken["metadata"]["annotations"] = json!({SELECTOR: "metadata.name"});
    dump.pod("shop", &broken);
    dump.lease(
        "shop",
        "broken-selector",
        POD_LEASE_SECONDS,
        Some("broken-selector"),
    );
    dump.lease("shop", "released", POD_LEASE_SECONDS, None);
    // calmplane's own pod: the objectSelector excludes it wherever it runs.
    let mut own = one(LIFECYCLE, "Pod");
    own["metadata"]["name"] = json!("calmplane-7c9d");
    own["metadata"]["labels"] = json!({"app.kubernetes.io/name": "calmplane"});
    dump.pod("shop", &own);

    dump.deployment(
        "blog",
        &one(METRICS_SERVER, "Deployment"),
        &[(3 * HOUR, 1)],
        3,
    );
    let mut lifecycle = one(LIFECYCLE, "Pod");
    lifecycle["metadata"]["annotations"] = json!({SELECTOR: "metadata.name=lifecycle-demo"});
    dump.pod("blog", &lifecycle);
    dump.lease(
        "blog",
        "lifecycle-demo",
        POD_LEASE_SECONDS,
        Some("lifecycle-demo"),
    );
    dump.pod("blog", &one(CUSTOM_DNS, "Pod"));

    dump.deployment("quiet", &one(KSM, "Deployment"), &[(3 * HOUR, 1)], 2);
    dump.lease("quiet", "leader", LEADER_LEASE_SECONDS, Some("ksm-0"));

    dump.deployment(
        "kube-system",
        &one(METRICS_SERVER, "Deployment"),
        &[(3 * HOUR, 1)],
        1,
    );
    dump.deployment("calmplane", &one(KSM, "Deployment"), &[(3 * HOUR, 1)], 1);
    for node in ["node-a", "node-b", "node-c"] {
        dump.lease("kube-node-lease", node, NODE_LEASE_SECONDS, Some(node));
    }
    Story {
        dump,
        shop_deployments,
    }
}

fn run(dump: &Dump, all_namespaces: bool) -> Report {
    let inventory = Inventory::from_bytes(&dump.bytes()).expect("dump parses");
    let opts = Options {
        all_namespaces,
        now: NOW,
        sample: None,
    };
    audit::audit(inventory, &Config::default(), &opts).expect("audit")
}

// Independent of the policies' code: what the defaults promise, read off the object.

fn containers(pod: &Value) -> &Vec<Value> {
    pod["spec"]["containers"].as_array().expect("containers")
}

/// dns: ndots and single-request-reopen unless both are there.
fn wants_dns(pod: &Value) -> bool {
    let options = pod["spec"]["dnsConfig"]["options"].as_array();
    let has = |n: &str| options.is_some_and(|o| o.iter().any(|x| x["name"] == n));
    !(has("ndots") && has("single-request-reopen"))
}

/// prestop: some container has no preStop hook.
fn wants_prestop(pod: &Value) -> bool {
    containers(pod)
        .iter()
        .any(|c| c["lifecycle"]["preStop"].is_null())
}

/// rollout: a rolling Deployment whose maxUnavailable is not 0 (or whose maxSurge is 0).
fn wants_rollout(d: &Value) -> bool {
    let s = &d["spec"]["strategy"];
    let zero = |v: &Value| v == &json!(0) || v == &json!("0%") || v == &json!("0");
    s["type"] != "Recreate"
        && (!zero(&s["rollingUpdate"]["maxUnavailable"]) || zero(&s["rollingUpdate"]["maxSurge"]))
}

/// lease: a selector with `metadata.name=`.
fn wants_lease(pod: &Value) -> bool {
    pod["metadata"]["annotations"][SELECTOR]
        .as_str()
        .is_some_and(|s| s.starts_with("metadata.name="))
}

fn audited_pods<'a>(dump: &'a Dump, ns: &str) -> Vec<&'a Value> {
    dump.items
        .iter()
        .filter(|i| i["kind"] == "Pod" && i["metadata"]["namespace"] == ns)
        .filter(|i| i["metadata"]["labels"]["app.kubernetes.io/name"] != "calmplane")
        .collect()
}

fn deployments_in<'a>(dump: &'a Dump, ns: &str) -> Vec<&'a Value> {
    dump.items
        .iter()
        .filter(|i| i["kind"] == "Deployment" && i["metadata"]["namespace"] == ns)
        .collect()
}

fn count(items: &[&Value], f: fn(&Value) -> bool) -> usize {
    items.iter().filter(|i| f(i)).count()
}

fn assert_namespace(report: &Report, dump: &Dump, ns: &str, opted_in: &str) -> Value {
    let json = serde_json::to_value(report).unwrap();
    let entry = json["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == ns)
        .unwrap_or_else(|| panic!("{ns} not audited: {json:#}"))
        .clone();
    let pods = audited_pods(dump, ns);
    let deployments = deployments_in(dump, ns);
    assert_eq!(entry["optedIn"], opted_in, "{ns}");
    assert_eq!(entry["pods"], pods.len(), "{ns}");
    let changed = pods
        .iter()
        .filter(|p| wants_dns(p) || wants_prestop(p) || wants_lease(p))
        .count();
    assert_eq!(entry["podsChanged"], changed, "{ns}");
    assert_eq!(entry["changes"]["dns"], count(&pods, wants_dns), "{ns}");
    assert_eq!(
        entry["changes"]["prestop"],
        count(&pods, wants_prestop),
        "{ns}"
    );
    assert_eq!(entry["changes"]["lease"], count(&pods, wants_lease), "{ns}");
    assert_eq!(
        entry["changes"]["rollout"],
        count(&deployments, wants_rollout),
        "{ns}"
    );
    let selectors = pods
        .iter()
        .filter(|p| !p["metadata"]["annotations"][SELECTOR].is_null())
        .count();
    assert_eq!(entry["leaseSelectors"], selectors, "{ns}");
    entry
}

#[test]
fn counts_follow_from_how_the_dump_was_built() {
    let story = story();
    let report = run(&story.dump, false);
    let names: Vec<&str> = report.namespaces.iter().map(|n| n.name.as_str()).collect();
    // kube-system and calmplane are labelled in, but excluded by name; quiet is not labelled.
    assert_eq!(names, ["blog", "shop"]);

    let shop = assert_namespace(&report, &story.dump, "shop", "true");
    // 12 demo Deployments, two pods each, plus the broken-selector pod; calmplane's own pod excluded.
    assert_eq!(shop["pods"], 12 * 2 + 1);
    assert_eq!(shop["changes"]["lease"], 4);
    assert_eq!(shop["leaseSelectors"], 5);
    assert_eq!(shop["hotDeployments"], json!(["frontend", "cartservice"]));
    // frontend and cartservice are hot and not yet scoped; adservice cooled down but is still scoped.
    assert_eq!(shop["changes"]["rollout-history"], 3);
    let without: Vec<&String> = story
        .shop_deployments
        .iter()
        .filter(|d| !["frontend", "cartservice", "redis-cart"].contains(&d.as_str()))
        .collect();
    assert_eq!(shop["deploymentsWithoutPdb"], json!(without));

    let blog = assert_namespace(&report, &story.dump, "blog", "report");
    assert_eq!(blog["pods"], 3 + 2);
    assert_eq!(blog["changes"]["lease"], 1);
    assert_eq!(
        blog["changes"]["rollout"], 0,
        "metrics-server already has maxUnavailable: 0"
    );
    assert_eq!(blog["hotDeployments"], json!([]));
    assert_eq!(blog["deploymentsWithoutPdb"], json!(["metrics-server"]));

    let total = serde_json::to_value(report.changes).unwrap();
    for policy in ["lease", "dns", "prestop", "rollout", "rollout-history"] {
        assert_eq!(
            total[policy].as_u64().unwrap(),
            shop["changes"][policy].as_u64().unwrap() + blog["changes"][policy].as_u64().unwrap(),
            "{policy}"
        );
    }

    let hot: Vec<(&str, usize, &str)> = report
        .details
        .hot
        .iter()
        .map(|h| {
            (
                h.name.as_str(),
                h.judgement.rollouts,
                h.judgement.source.as_str(),
            )
        })
        .collect();
    assert_eq!(
        hot,
        [
            ("frontend", 2, "replicasets"),
            ("cartservice", 2, "calmplane.dev/rollouts")
        ]
    );
}

#[test]
fn lease_writes_before_and_after() {
    let report = run(&story().dump, false);
    let pod_rate = 4.0 / POD_LEASE_SECONDS as f64;
    let node_rate = 4.0 / NODE_LEASE_SECONDS as f64;
    let leader_rate = 4.0 / LEADER_LEASE_SECONDS as f64;
    // Before: 4 shop pod Leases, broken-selector's, lifecycle-demo's, released (idle), quiet's leader, 3 nodes.
    let before = &report.leases.before;
    assert_eq!(before.objects, 4 + 1 + 1 + 1 + 1 + 3);
    let expected = 6.0 * pod_rate + leader_rate + 3.0 * node_rate;
    assert!(
        (before.writes_per_second - expected).abs() < 0.001,
        "{before:?}"
    );
    assert!(before.source.starts_with("estimate: "), "{}", before.source);
    assert!(
        before.source.contains("leaseDurationSeconds/4"),
        "{}",
        before.source
    );
    // After: frontend's two pod Leases become one per hot Deployment,
    // checkoutservice's two one for shop, lifecycle-demo's one for blog; the
    // rest (broken-selector, released, leader, nodes) stay.
    let after = &report.leases.after;
    assert_eq!(after.objects, 3 + (1 + 1 + 1 + 3));
    let expected = 3.0 * pod_rate + pod_rate + leader_rate + 3.0 * node_rate;
    assert!(
        (after.writes_per_second - expected).abs() < 0.001,
        "{after:?}"
    );
    assert!(
        after.source.contains("1 per hot Deployment"),
        "{}",
        after.source
    );
    assert!(after.source.contains("2 per namespace"), "{}", after.source);
}

#[test]
fn all_namespaces_adds_the_unlabelled_but_never_the_excluded() {
    let story = story();
    let report = run(&story.dump, true);
    let names: Vec<&str> = report.namespaces.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["blog", "quiet", "shop"]);
    assert_namespace(&report, &story.dump, "quiet", "no");
}

#[test]
fn warnings_name_the_objects_and_are_grouped() {
    let report = run(&story().dump, false);
    let raised = report
        .warnings
        .iter()
        .find(|w| w.contains("raised terminationGracePeriodSeconds from 5 to 10"))
        .unwrap_or_else(|| panic!("{:#?}", report.warnings));
    // Eight demo Deployments set 5 s, two pods each: three named, 13 more.
    assert!(raised.contains("and 13 more"), "{raised}");
    assert!(
        report
            .warnings
            .iter()
            .any(|w| w.contains("selector left unchanged") && w.contains("shop/broken-selector")),
        "{:#?}",
        report.warnings
    );
}

#[test]
fn yaml_and_json_dumps_give_the_same_report() {
    let story = story();
    // JSON is YAML 1.2; the leading document marker sends it down the YAML
    // path (the way `kubectl get -o yaml` output goes) without tying the test
    // to a YAML serialiser.
    let yaml = format!(
        "---\n{}\n",
        serde_json::to_string_pretty(&story.dump.list()).unwrap()
    );
    let from_yaml = audit::audit(
        Inventory::from_bytes(yaml.as_bytes()).unwrap(),
        &Config::default(),
        &Options {
            now: NOW,
            ..Options::default()
        },
    )
    .unwrap();
    assert_eq!(from_yaml, run(&story.dump, false));
}

#[test]
fn json_output_has_exactly_the_documented_keys() {
    let report = run(&story().dump, false);
    let v: Value = serde_json::from_str(&audit::render::json(&report).unwrap()).unwrap();
    let keys = |v: &Value| -> Vec<String> { v.as_object().unwrap().keys().cloned().collect() };
    assert_eq!(keys(&v), ["namespaces", "changes", "leases", "warnings"]);
    assert_eq!(
        keys(&v["namespaces"][0]),
        [
            "name",
            "optedIn",
            "pods",
            "podsChanged",
            "changes",
            "leaseSelectors",
            "hotDeployments",
            "deploymentsWithoutPdb"
        ]
    );
    // A count for every policy, in the policies' order.
    let policies: Vec<&str> = calmplane::policy::names().collect();
    assert_eq!(
        policies,
        ["lease", "rollout-history", "dns", "prestop", "rollout"]
    );
    assert_eq!(keys(&v["changes"]), policies);
    assert_eq!(keys(&v["namespaces"][0]["changes"]), policies);
    assert_eq!(keys(&v["leases"]), ["before", "after"]);
    for side in ["before", "after"] {
        assert_eq!(
            keys(&v["leases"][side]),
            ["objects", "writesPerSecond", "source"]
        );
        assert!(v["leases"][side]["writesPerSecond"].is_f64());
    }
    let table = audit::render::table(&report);
    assert!(
        table.contains("shop/frontend: 2 rollouts, decided by replicasets"),
        "{table}"
    );
    assert!(table.contains("Not opted in, not audited (4)"), "{table}");
}

/// For every object the webhook would be called for, the audit's
/// per-policy changes are the policies `/mutate` reports over TLS.
#[tokio::test]
async fn audit_agrees_with_mutate_object_by_object() {
    let story = story();
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let namespaces: Vec<&Value> = story
        .dump
        .items
        .iter()
        .filter(|i| i["kind"] == "Namespace")
        .collect();
    let mut checked = 0;
    for ns in ["shop", "blog"] {
        let objects: Vec<&Value> = audited_pods(&story.dump, ns)
            .into_iter()
            .chain(deployments_in(&story.dump, ns))
            .collect();
        for (i, object) in objects.into_iter().enumerate() {
            let reply = client
                .mutate(&review(&format!("{ns}-{i}"), "CREATE", ns, object, None))
                .await;
            let response = &reply.json()["response"];
            let mut webhook: Vec<&str> = response["auditAnnotations"]["policies"]
                .as_str()
                .map(|p| p.split(',').collect())
                .unwrap_or_default();
            webhook.sort();
            assert_eq!(response["patch"].is_string(), !webhook.is_empty());

            let mut one = Dump {
                items: namespaces.iter().map(|n| (*n).clone()).collect(),
            };
            one.items.push(object.clone());
            let report = run(&one, false);
            let changes = serde_json::to_value(report.changes).unwrap();
            // rollout-history is the audit's forecast for the next rollout (an
            // UPDATE); a CREATE never runs it, so it is held to the dump's
            // construction in counts_follow_from_how_the_dump_was_built.
            let mut audited: Vec<&str> = ["lease", "dns", "prestop", "rollout"]
                .into_iter()
                .filter(|p| changes[p] == 1)
                .collect();
            audited.sort();
            assert_eq!(audited, webhook, "{ns} {}", object["metadata"]["name"]);
            checked += 1;
        }
    }
    assert_eq!(checked, 25 + 12 + 5 + 1);
    server.stop().await;
}

// ------------------------------------------------------------- bad input

#[test]
fn a_single_object_is_not_a_list() {
    let pod = serde_json::to_vec(&one(CUSTOM_DNS, "Pod")).unwrap();
    let e = Inventory::from_bytes(&pod).unwrap_err();
    assert!(matches!(e, AuditError::NotAList { doc: 1, .. }), "{e}");
    let message = e.to_string();
    assert!(message.contains("kind Pod, not a v1 List"), "{message}");
    assert!(
        message.contains("kubectl get pods,deployments"),
        "{message}"
    );
    let e = Inventory::from_bytes(b"[1, 2]").unwrap_err().to_string();
    assert!(e.contains("a scalar"), "{e}");
    let e = Inventory::from_bytes(b"").unwrap_err().to_string();
    assert!(e.contains("empty"), "{e}");
}

#[test]
fn a_truncated_dump_is_a_parse_error() {
    let bytes = story().dump.bytes();
    let e = Inventory::from_bytes(&bytes[..bytes.len() / 2]).unwrap_err();
    assert!(matches!(e, AuditError::Parse(_)), "{e}");
    assert!(e.to_string().starts_with("input: "), "{e}");
}

#[test]
fn unknown_kinds_and_objects_without_a_namespace_are_warnings() {
    let mut pod = one(CUSTOM_DNS, "Pod");
    pod["metadata"].as_object_mut().unwrap().remove("namespace");
    let list = json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "shop"}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "api", "namespace": "shop"}},
        {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}},
        pod,
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "nameless-ns"}},
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"namespace": "shop"}},
        "not an object",
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop", "labels": {"calmplane.dev/enabled": "true"}}},
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "odd", "namespace": "shop"}, "spec": "not an object"},
    ]});
    let inventory = Inventory::from_bytes(&serde_json::to_vec(&list).unwrap()).unwrap();
    let w = inventory.warnings.join("\n");
    assert!(w.contains("skipped 2 object(s) of kind v1 Service"), "{w}");
    assert!(
        w.contains("skipped 1 object(s) of kind example.com/v1 Widget"),
        "{w}"
    );
    assert!(
        w.contains("Pod dns-example has no metadata.namespace"),
        "{w}"
    );
    assert!(
        w.contains("Deployment nameless-ns has no metadata.namespace"),
        "{w}"
    );
    assert!(w.contains("Pod has no metadata.name"), "{w}");
    assert!(w.contains("item 6 is not an object"), "{w}");
    let report = audit::audit(inventory, &Config::default(), &Options::default()).unwrap();
    // Only the odd pod is audited, and nothing panics on its shape.
    assert_eq!(report.namespaces.len(), 1);
    assert_eq!(report.namespaces[0].pods, 1);
    assert!(report.warnings.len() >= 6);
}

#[test]
fn the_binary_answers_bad_input_with_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = story().dump.bytes();
    let truncated = dir.path().join("truncated.json");
    std::fs::write(&truncated, &bytes[..bytes.len() / 3]).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_calmplane"))
        .args(["audit", "-f"])
        .arg(&truncated)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("input: invalid JSON") || stderr.contains("input: invalid YAML"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_calmplane"))
        .args(["audit", "--sample", "1s", "-f"])
        .arg(&truncated)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("it needs --live"), "{stderr}");

    let good = dir.path().join("dump.json");
    std::fs::write(&good, &bytes).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_calmplane"))
        .args(["audit", "-o", "json", "--now", &NOW.to_string(), "-f"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        printed,
        serde_json::to_value(run(&story().dump, false)).unwrap()
    );
}

mod never_panics {
    use super::*;
    use proptest::prelude::*;

    /// A value of an unexpected shape.
    fn odd() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            "[a-z=,./\\\\-]{0,12}".prop_map(Value::from),
            Just(json!([])),
            Just(json!({})),
            Just(json!([{"kind": "Deployment", "name": 3}])),
            Just(json!({"matchExpressions": [{"key": "app", "operator": "Bogus"}]})),
        ]
    }

    /// Places the audit reads.
    const PATHS: [&str; 14] = [
        "/metadata/labels",
        "/metadata/annotations",
        "/metadata/ownerReferences",
        "/metadata/creationTimestamp",
        "/metadata/annotations/deployment.kubernetes.io~1revision",
        "/metadata/annotations/calmplane.dev~1rollouts",
        "/metadata/annotations/calmplane.dev~1lease-selector",
        "/spec",
        "/spec/template",
        "/spec/template/metadata/labels",
        "/spec/selector",
        "/spec/containers",
        "/spec/leaseDurationSeconds",
        "/spec/holderIdentity",
    ];

    fn set(item: &mut Value, pointer: &str, value: Value) {
        let (parent, last) = pointer.rsplit_once('/').unwrap();
        let last = last.replace("~1", "/");
        if let Some(Value::Object(map)) = item.pointer_mut(parent) {
            map.insert(last, value);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn odd_shapes_are_audited_without_a_panic(
            edits in proptest::collection::vec((any::<prop::sample::Index>(), 0..PATHS.len(), odd()), 1..12)
        ) {
            let mut dump = story().dump;
            for (index, path, value) in edits {
                let i = index.index(dump.items.len());
                set(&mut dump.items[i], PATHS[path], value);
            }
            let inventory = Inventory::from_bytes(&dump.bytes()).unwrap();
            let report = audit::audit(inventory, &Config::default(), &Options { now: NOW, ..Options::default() });
            prop_assert!(report.is_ok());
            let report = report.unwrap();
            audit::render::table(&report);
            prop_assert!(audit::render::json(&report).is_ok());
        }
    }
}

/// A YAML dump far past the YAML budget `preview` keeps for one request
/// (250,000 nodes) is still read: the audit's budget grows with the input.
#[test]
fn a_large_yaml_dump_is_read_like_its_json() {
    let dump = calmplane_testkit::cluster::generated(4, 600, 3000);
    let yaml = format!(
        "---\n{}\n",
        serde_json::to_string_pretty(&dump.list()).unwrap()
    );
    assert!(
        calmplane::preview::parse_documents(yaml.as_bytes()).is_err(),
        "the dump must be larger than one request's YAML budget"
    );
    let opts = Options {
        now: NOW,
        ..Options::default()
    };
    let from_yaml = audit::audit(
        Inventory::from_bytes(yaml.as_bytes()).unwrap(),
        &Config::default(),
        &opts,
    )
    .unwrap();
    let from_json = audit::audit(
        Inventory::from_bytes(&dump.bytes()).unwrap(),
        &Config::default(),
        &opts,
    )
    .unwrap();
    assert_eq!(from_yaml, from_json);
    assert_eq!(
        from_json.namespaces.iter().map(|n| n.pods).sum::<usize>(),
        3000
    );
}
