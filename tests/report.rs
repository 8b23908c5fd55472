//! Report mode over real TLS: `/report` never patches, and its metric and
//! log line say exactly what `/mutate` does to the same review; policies in
//! `enforcement: report` are counted but left out of `/mutate`'s patch; and
//! the webhook configuration sends `report` namespaces only to `/report`.

use base64::Engine as _;
use calmplane::manifests::{webhook_configuration, WebhookOptions};
use calmplane_testkit::cluster::fixture;
use calmplane_testkit::harness::{review, TestServer};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::core::{Selector, SelectorExt};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

const DEMO: &str = "GoogleCloudPlatform__microservices-demo__release__kubernetes-manifests.yaml";
const LIFECYCLE: &str = "kubernetes__website__content__en__examples__pods__lifecycle-events.yaml";
const CUSTOM_DNS: &str =
    "kubernetes__website__content__en__examples__service__networking__custom-dns.yaml";
const METRICS_SERVER: &str = "kubernetes-sigs__metrics-server__manifests__base__deployment.yaml";

/// Every log line of this test binary, as JSON.
#[derive(Clone)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn logs() -> &'static Capture {
    static LOGS: OnceLock<Capture> = OnceLock::new();
    LOGS.get_or_init(|| {
        let capture = Capture(Arc::new(Mutex::new(Vec::new())));
        let writer = capture.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("one subscriber");
        capture
    })
}

/// The `report` log lines for `uid`.
fn report_lines(uid: &str) -> Vec<Value> {
    let bytes = logs().0.lock().unwrap().clone();
    String::from_utf8_lossy(&bytes)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["message"] == "report" && l["uid"] == uid)
        .collect()
}

/// `calmplane_report_changes_total` by policy.
fn report_metric(text: &str) -> BTreeMap<String, u64> {
    calmplane::policy::names()
        .filter_map(|p| {
            calmplane_testkit::prom::exact(text, "calmplane_report_changes_total", &[("policy", p)])
                .map(|v| (p.to_string(), v as u64))
        })
        .collect()
}

fn policies_of(response: &Value) -> Vec<String> {
    response["auditAnnotations"]["policies"]
        .as_str()
        .map(|p| p.split(',').map(String::from).collect())
        .unwrap_or_default()
}

fn patched(object: &Value, response: &Value) -> Value {
    let mut doc = object.clone();
    if let Some(b64) = response["patch"].as_str() {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        let patch: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
        json_patch::patch(&mut doc, &patch).unwrap();
    }
    doc
}

/// Reviews of real objects: pods from the demo's templates and two example
/// pods (CREATE), the demo Deployments (CREATE), and template changes to
/// them (UPDATE, which rollout-history records).
fn reviews() -> Vec<(String, Value, Value)> {
    let mut out = Vec::new();
    let mut n = 0;
    let mut add = |op: &str, object: Value, old: Option<Value>| {
        n += 1;
        let uid = format!("report-{n}");
        let r = review(&uid, op, "shop", &object, old.as_ref());
        out.push((uid, r, object));
    };
    for d in fixture(DEMO, "Deployment") {
        let mut pod = calmplane::preview::pod_from_template(&d).unwrap();
        pod["metadata"]["name"] = json!(format!("{}-abc", d["metadata"]["name"].as_str().unwrap()));
        if d["metadata"]["name"] == "frontend" {
            pod["metadata"]["annotations"] =
                json!({"calmplane.dev/lease-selector": "metadata.name=frontend-abc"});
        }
        add("CREATE", pod, None);
        add("CREATE", d.clone(), None);
        let mut changed = d.clone();
        changed["spec"]["template"]["metadata"]["annotations"] =
            json!({"kubectl.kubernetes.io/restartedAt": "2026-11-25T18:00:00Z"});
        add("UPDATE", changed, Some(d));
    }
    add("CREATE", fixture(LIFECYCLE, "Pod").remove(0), None);
    add("CREATE", fixture(CUSTOM_DNS, "Pod").remove(0), None);
    add(
        "CREATE",
        fixture(METRICS_SERVER, "Deployment").remove(0),
        None,
    );
    out
}

#[tokio::test]
async fn report_never_patches_and_says_what_mutate_does() {
    logs();
    let server = TestServer::start().await;
    let mut c = server.client().await;
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    let reviews = reviews();
    for (uid, review, object) in &reviews {
        let mutate = c.mutate(review).await.json();
        let mutate = &mutate["response"];
        let policies = policies_of(mutate);
        for p in &policies {
            *expected.entry(p.clone()).or_default() += 1;
        }

        let reply = c
            .request(
                "POST",
                "/report",
                "application/json",
                serde_json::to_vec(review).unwrap(),
            )
            .await;
        assert_eq!(reply.status, 200, "{uid}: {}", reply.text());
        let body = reply.json();
        let response = &body["response"];
        assert_eq!(response["uid"], uid.as_str());
        assert_eq!(response["allowed"], true);
        for absent in ["patch", "patchType", "auditAnnotations", "warnings"] {
            assert!(
                response.get(absent).is_none(),
                "{uid}: /report sent {absent}: {body}"
            );
        }

        // The log line names the policies /mutate applied, and each change it
        // lists is a place /mutate's patch actually changed.
        let lines = report_lines(uid);
        assert_eq!(lines.len(), 1, "{uid}: one line per object: {lines:?}");
        let line = &lines[0];
        assert_eq!(line["endpoint"], "/report");
        assert_eq!(line["namespace"], "shop");
        assert_eq!(line["name"], object["metadata"]["name"]);
        let logged: Vec<String> = line["policies"]
            .as_str()
            .unwrap()
            .split(',')
            .filter(|p| !p.is_empty())
            .map(String::from)
            .collect();
        assert_eq!(logged, policies, "{uid}");
        let changes: Vec<Value> = serde_json::from_str(line["changes"].as_str().unwrap()).unwrap();
        let by_policy: BTreeSet<&str> = changes
            .iter()
            .map(|c| c["policy"].as_str().unwrap())
            .collect();
        assert_eq!(
            by_policy,
            policies.iter().map(String::as_str).collect(),
            "{uid}"
        );
        let after = patched(object, mutate);
        for change in &changes {
            let path = change["path"].as_str().unwrap();
            assert_ne!(
                object.pointer(path),
                after.pointer(path),
                "{uid}: {path} did not change under /mutate"
            );
        }
    }
    // Every policy shows up at least once, so the comparison below means something.
    let names: BTreeSet<&str> = expected.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        BTreeSet::from(["dns", "lease", "prestop", "rollout", "rollout-history"])
    );
    assert_eq!(report_metric(&server.metrics().await), expected);
    server.stop().await;
}

#[tokio::test]
async fn policies_in_enforcement_report_are_counted_not_patched() {
    logs();
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        "dns: {enforcement: report}\nprestop: {enforcement: report}\n",
    )
    .unwrap();
    let watched = TestServer::start_with(|o| o.config = Some(policy.clone())).await;
    let enforcing = TestServer::start().await;
    let (mut w, mut e) = (watched.client().await, enforcing.client().await);

    let d = fixture(DEMO, "Deployment").remove(1); // adservice: grace period 5 s
    let mut pod = calmplane::preview::pod_from_template(&d).unwrap();
    pod["metadata"]["name"] = json!("adservice-abc");
    pod["metadata"]["annotations"] =
        json!({"calmplane.dev/lease-selector": "metadata.name=adservice-abc"});
    let r = review("enforcement-1", "CREATE", "shop", &pod, None);

    let full = e.mutate(&r).await.json()["response"].clone();
    assert_eq!(policies_of(&full), ["lease", "dns", "prestop"]);
    let partial = w.mutate(&r).await.json()["response"].clone();
    assert_eq!(policies_of(&partial), ["lease"]);
    // The patch carries the lease rewrite only: no dnsConfig, no preStop, and
    // no grace period raised for a preStop that was not added.
    let after = patched(&pod, &partial);
    assert_eq!(after["spec"]["dnsConfig"], pod["spec"]["dnsConfig"]);
    assert_eq!(after["spec"]["containers"], pod["spec"]["containers"]);
    assert_eq!(after["spec"]["terminationGracePeriodSeconds"], 5);
    assert_eq!(
        after["metadata"]["annotations"]["calmplane.dev/lease-selector"],
        "metadata.namespace=shop"
    );
    assert!(partial.get("warnings").is_none(), "{partial}");

    // Counted and logged as what the enforcing server did.
    assert_eq!(
        report_metric(&watched.metrics().await),
        BTreeMap::from([("dns".to_string(), 1), ("prestop".to_string(), 1)])
    );
    assert!(report_metric(&enforcing.metrics().await).is_empty());
    let lines = report_lines("enforcement-1");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["endpoint"], "/mutate");
    assert_eq!(lines[0]["policies"], "dns,prestop");
    let full_after = patched(&pod, &full);
    let changes: Vec<Value> = serde_json::from_str(lines[0]["changes"].as_str().unwrap()).unwrap();
    for change in &changes {
        let path = change["path"].as_str().unwrap();
        assert!(
            full_after.pointer(path).is_some(),
            "{path} is not where /mutate writes"
        );
    }
    watched.stop().await;
    enforcing.stop().await;
}

fn selector(webhook: &Value, field: &str) -> Selector {
    let typed: LabelSelector = serde_json::from_value(webhook[field].clone()).unwrap();
    Selector::try_from(typed).unwrap()
}

#[test]
fn report_namespaces_go_only_to_report_and_true_only_to_mutate() {
    let config = webhook_configuration(&WebhookOptions {
        namespace: "webhooks",
        ..WebhookOptions::default()
    })
    .unwrap();
    let webhooks = config["webhooks"].as_array().unwrap();
    for resource in ["pods", "deployments"] {
        for (value, path) in [("true", "/mutate"), ("report", "/report")] {
            for ns in ["shop", "kube-system", "webhooks"] {
                let labels = BTreeMap::from([
                    ("kubernetes.io/metadata.name".to_string(), ns.to_string()),
                    ("calmplane.dev/enabled".to_string(), value.to_string()),
                ]);
                let called: Vec<&str> = webhooks
                    .iter()
                    .filter(|w| {
                        w["rules"][0]["resources"]
                            .as_array()
                            .unwrap()
                            .contains(&json!(resource))
                    })
                    .filter(|w| selector(w, "namespaceSelector").matches(&labels))
                    .map(|w| w["clientConfig"]["service"]["path"].as_str().unwrap())
                    .collect();
                let expected: &[&str] = if ns == "shop" { &[path] } else { &[] };
                assert_eq!(called, expected, "{resource} in {ns} labelled {value}");
            }
        }
    }
}

#[tokio::test]
async fn report_answers_bad_bodies_like_mutate() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    let good = serde_json::to_vec(&review(
        "bad-1",
        "CREATE",
        "shop",
        &fixture(CUSTOM_DNS, "Pod").remove(0),
        None,
    ))
    .unwrap();
    for body in [
        b"nope".to_vec(),
        good[..good.len() / 2].to_vec(),
        b"[]".to_vec(),
    ] {
        let mutate = c
            .request("POST", "/mutate", "application/json", body.clone())
            .await;
        let report = c.request("POST", "/report", "application/json", body).await;
        assert_eq!(report.status, 400);
        assert_eq!(report.status, mutate.status);
        assert_eq!(report.json(), mutate.json());
    }
    assert!(report_metric(&server.metrics().await).is_empty());
    server.stop().await;
}
