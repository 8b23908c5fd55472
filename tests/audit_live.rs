//! `--live` and `--sample` against a mock apiserver (tower-test): the audit
//! only ever sends GETs for the six lists (following continue tokens), builds
//! the same inventory a `kubectl get -o json` dump gives, and counts Lease
//! writes from a watch by the fields that matter.

use calmplane::audit::{input::Inventory, live};
use http::{Request, Response};
use kube::client::Body;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;
use tower_test::mock;

fn list(kind: &str, items: Vec<Value>, continue_: &str) -> Value {
    json!({"apiVersion": "v1", "kind": format!("{kind}List"),
           "metadata": {"resourceVersion": "100", "continue": continue_}, "items": items})
}

fn obj(name: &str, namespace: Option<&str>) -> Value {
    let mut m = json!({"name": name});
    if let Some(ns) = namespace {
        m["namespace"] = json!(ns);
    }
    json!({"metadata": m})
}

fn respond(send: mock::SendResponse<Response<Body>>, body: Value) {
    send.send_response(
        Response::builder()
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(&body).unwrap()))
            .unwrap(),
    );
}

#[tokio::test]
async fn live_lists_are_read_only_paged_and_typed() {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let server = tokio::spawn(async move {
        let mut handle = std::pin::pin!(handle);
        let mut seen = Vec::new();
        while let Some((request, send)) = handle.next_request().await {
            let method = request.method().to_string();
            let path = request.uri().path().to_string();
            let query = request.uri().query().unwrap_or("").to_string();
            seen.push((method, path.clone(), query.clone()));
            // Items as the apiserver lists them: without apiVersion and kind.
            let body = match path.as_str() {
                "/api/v1/namespaces" => list("Namespace", vec![obj("shop", None)], ""),
                "/api/v1/pods" if !query.contains("continue=") => {
                    list("Pod", vec![obj("a", Some("shop"))], "page-2")
                }
                "/api/v1/pods" => list("Pod", vec![obj("b", Some("shop"))], ""),
                "/apis/apps/v1/deployments" => {
                    list("Deployment", vec![obj("web", Some("shop"))], "")
                }
                "/apis/apps/v1/replicasets" => list("ReplicaSet", vec![], ""),
                "/apis/coordination.k8s.io/v1/leases" => {
                    list("Lease", vec![obj("a", Some("shop"))], "")
                }
                "/apis/policy/v1/poddisruptionbudgets" => {
                    list("PodDisruptionBudget", vec![obj("pdb", Some("shop"))], "")
                }
                other => panic!("unexpected request {other}"),
            };
            respond(send, body);
        }
        seen
    });
    let client = kube::Client::new(service, "default");
    let items = live::list_all(&client).await.expect("lists");
    drop(client);
    let seen = server.await.unwrap();

    assert!(seen.iter().all(|(m, _, _)| m == "GET"), "{seen:?}");
    let paths: Vec<&str> = seen.iter().map(|(_, p, _)| p.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/api/v1/namespaces",
            "/api/v1/pods",
            "/api/v1/pods",
            "/apis/apps/v1/deployments",
            "/apis/apps/v1/replicasets",
            "/apis/coordination.k8s.io/v1/leases",
            "/apis/policy/v1/poddisruptionbudgets",
        ]
    );
    assert!(seen[1].2.contains("limit=500"), "{seen:?}");
    assert!(seen[2].2.contains("continue=page-2"), "{seen:?}");

    let typed: Vec<(String, String, String)> = items
        .iter()
        .map(|i| {
            (
                i["apiVersion"].as_str().unwrap().to_string(),
                i["kind"].as_str().unwrap().to_string(),
                i["metadata"]["name"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let expected = [
        ("v1", "Namespace", "shop"),
        ("v1", "Pod", "a"),
        ("v1", "Pod", "b"),
        ("apps/v1", "Deployment", "web"),
        ("coordination.k8s.io/v1", "Lease", "a"),
        ("policy/v1", "PodDisruptionBudget", "pdb"),
    ]
    .map(|(a, k, n)| (a.to_string(), k.to_string(), n.to_string()));
    assert_eq!(typed, expected);
    let inventory = Inventory::from_documents(vec![
        json!({"apiVersion": "v1", "kind": "List", "items": items}),
    ])
    .unwrap();
    assert!(inventory.warnings.is_empty(), "{:?}", inventory.warnings);
    assert_eq!((inventory.pods.len(), inventory.leases.len()), (2, 1));
}

fn lease(name: &str, renew: &str, holder: &str, transitions: i64, label: &str) -> Value {
    json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
           "metadata": {"name": name, "namespace": "shop", "resourceVersion": "1",
                        "labels": {"note": label}},
           "spec": {"holderIdentity": holder, "leaseDurationSeconds": 10,
                    "renewTime": renew, "leaseTransitions": transitions}})
}

#[tokio::test]
async fn sample_counts_renewals_holder_changes_and_creates_only() {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let t = |s: u32| format!("2027-01-15T08:00:{s:02}.000000Z");
    let (t0, t1, t2, t3) = (t(0), t(1), t(2), t(3));
    let server = tokio::spawn(async move {
        let mut handle = std::pin::pin!(handle);
        let mut requests = 0;
        while let Some((request, send)) = handle.next_request().await {
            requests += 1;
            assert_eq!(request.method(), "GET");
            let query = request.uri().query().unwrap_or("").to_string();
            if !query.contains("watch=true") {
                respond(
                    send,
                    json!({"apiVersion": "coordination.k8s.io/v1", "kind": "LeaseList",
                           "metadata": {"resourceVersion": "10"},
                           "items": [lease("a", &t0, "a-0", 0, "x"), lease("b", &t0, "b-0", 0, "x")]}),
                );
                continue;
            }
            if requests > 2 {
                // Later watches stay open until the sample ends.
                std::mem::forget(send);
                continue;
            }
            let events = [
                ("MODIFIED", lease("a", &t1, "a-0", 0, "x")), // renewal: a write
                ("MODIFIED", lease("a", &t1, "a-0", 0, "y")), // label only: not counted
                ("MODIFIED", lease("b", &t0, "b-1", 1, "x")), // new holder: a write
                ("ADDED", lease("c", &t2, "c-0", 0, "x")),    // create: a write
                ("MODIFIED", lease("a", &t3, "a-0", 0, "y")), // renewal: a write
            ];
            let mut body = Vec::new();
            for (kind, object) in events {
                body.extend(serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap());
                body.push(b'\n');
            }
            send.send_response(
                Response::builder()
                    .header("content-type", "application/json")
                    .body(Body::from(body))
                    .unwrap(),
            );
        }
    });
    let client = kube::Client::new(service, "default");
    let sample = live::sample_leases(client, Duration::from_millis(700))
        .await
        .expect("sample");
    server.abort();
    let writes: BTreeMap<String, u64> = sample
        .writes
        .iter()
        .map(|((_, name), n)| (name.clone(), *n))
        .collect();
    assert_eq!(
        writes,
        BTreeMap::from([("a".into(), 2), ("b".into(), 1), ("c".into(), 1)])
    );
    assert!(sample.seconds >= 0.7, "{}", sample.seconds);
}
