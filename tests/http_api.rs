//! The HTTP contract of issue #2, over real TLS: `/mutate`, `/preview`,
//! `/healthz`, `/readyz`, the metrics port and `calmplane preview`.

use base64::Engine as _;
use calmplane::config::{DnsConfig, PrestopConfig};
use calmplane::patch::Mutation;
use calmplane::pipeline::{FixedClock, Pipeline};
use calmplane::policy::{dns::Dns, prestop::Prestop, Context, Kind, Policy};
use calmplane::{LEASE_SELECTOR_ANNOTATION, SKIP_ANNOTATION};
use calmplane_testkit::harness::*;
use calmplane_testkit::pychecks::PyChecks;
use kube::core::admission::Operation;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MIB: usize = 1024 * 1024;

// ---------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------

fn pod(name: &str, namespace: Option<&str>) -> Value {
    let mut p = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "app", "image": "app:1"}]}
    });
    if let Some(ns) = namespace {
        p["metadata"]["namespace"] = json!(ns);
    }
    p
}

/// A CREATE review of `pod(name)` in namespace `ns`.
fn pod_review(uid: &str, name: &str) -> Value {
    review(uid, "CREATE", "ns", &pod(name, Some("ns")), None)
}

fn deployment(strategy: Value) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "strategy": strategy,
            "template": {"metadata": {"labels": {"app": "web"}},
                         "spec": {"containers": [{"name": "app", "image": "app:1"}]}}
        }
    })
}

/// The set of policies named in auditAnnotations.
fn audited(response: &Value) -> Vec<String> {
    let Some(a) = response.get("auditAnnotations") else {
        return Vec::new();
    };
    let a = a.as_object().expect("auditAnnotations is a map");
    for v in a.values() {
        assert!(v.is_string(), "audit annotation values are strings: {a:?}");
    }
    let mut names: Vec<String> = a
        .values()
        .flat_map(|v| v.as_str().unwrap().split(',').map(str::to_string))
        .filter(|s| !s.is_empty())
        .collect();
    names.sort();
    names
}

fn sorted(names: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

/// A 4xx answer with a JSON `{"error": "..."}` body. Returns the message.
fn expect_error(reply: &Reply, status: u16) -> String {
    assert_eq!(reply.status, status, "{}", reply.text());
    assert!(
        reply.content_type.starts_with("application/json"),
        "content-type {:?}",
        reply.content_type
    );
    let body = reply.json();
    let message = body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error message in {body}"))
        .to_string();
    assert!(!message.is_empty());
    message
}

/// A good request after a bad one: the server still answers.
async fn still_serving(client: &mut TlsClient) {
    let reply = client.mutate(&pod_review("after", "p")).await;
    let (response, patch) = decode_response(&reply);
    assert_eq!(response["uid"], "after");
    assert!(patch.is_some());
}

fn corpus_json(name: &str) -> Value {
    serde_json::from_slice(&std::fs::read(corpus_file(name)).unwrap()).unwrap()
}

fn wrap(request: Value) -> Value {
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request})
}

// ---------------------------------------------------------------------------
// /mutate
// ---------------------------------------------------------------------------

#[tokio::test]
async fn mutate_answers_with_a_base64_json_patch() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    let mut py = PyChecks::new();

    let mut p = pod("web-0", Some("team-a"));
    p["metadata"]["annotations"] = json!({LEASE_SELECTOR_ANNOTATION: "metadata.name=web-0"});
    let reply = c
        .mutate(&review("uid-7f3a", "CREATE", "team-a", &p, None))
        .await;
    assert!(reply.content_type.starts_with("application/json"));
    let raw = reply.json();
    let response = &raw["response"];
    assert_eq!(response["uid"], "uid-7f3a");
    assert_eq!(response["allowed"], true);
    assert_eq!(response["patchType"], "JSONPatch");
    let encoded = response["patch"]
        .as_str()
        .expect("patch is a base64 string, never a number array");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .expect("standard base64");
    let patch: Value = serde_json::from_slice(&bytes).expect("base64 of a JSON array");
    let ops = patch.as_array().expect("RFC 6902 array");
    assert!(!ops.is_empty());
    for op in ops {
        assert!(
            ["add", "replace", "remove"].contains(&op["op"].as_str().unwrap()),
            "{op}"
        );
        assert!(op["path"].as_str().unwrap().starts_with('/'), "{op}");
    }
    assert_eq!(audited(response), sorted(&["lease", "dns", "prestop"]));
    assert!(
        warnings(response).is_empty(),
        "no adjustment, no warning: {response}"
    );
    let patched = apply_patch(&p, &patch);
    assert_eq!(
        patched["metadata"]["annotations"][LEASE_SELECTOR_ANNOTATION],
        "metadata.namespace=team-a"
    );
    py.add("pod-web-0", &p, &patch, &patched);

    // Unchanged: no patch, no patchType, nothing audited.
    let reply = c
        .mutate(&review("uid-again", "CREATE", "team-a", &patched, None))
        .await;
    let raw = reply.json();
    let response = &raw["response"];
    assert_eq!(response["uid"], "uid-again");
    assert_eq!(response["allowed"], true);
    assert!(response.get("patch").is_none(), "{response}");
    assert!(response.get("patchType").is_none(), "{response}");
    assert!(audited(response).is_empty(), "{response}");
    assert!(warnings(response).is_empty(), "{response}");

    // A Deployment names only the policy that changed it.
    let d = deployment(json!({"type": "RollingUpdate"}));
    let reply = c.mutate(&review("uid-d", "CREATE", "shop", &d, None)).await;
    let (response, patch) = decode_response(&reply);
    assert_eq!(response["uid"], "uid-d");
    assert_eq!(audited(&response), sorted(&["rollout"]));
    let patch = patch.unwrap();
    py.add("deployment-web", &d, &patch, &apply_patch(&d, &patch));
    py.run();
    assert!(server.stop().await);
}

#[tokio::test]
async fn warnings_only_for_adjustments() {
    let server = TestServer::start().await;
    let mut c = server.client().await;

    // Raised grace period.
    let mut p = pod("p", Some("ns"));
    p["spec"]["terminationGracePeriodSeconds"] = json!(5);
    let (response, patch) =
        decode_response(&c.mutate(&review("g", "CREATE", "ns", &p, None)).await);
    assert!(patch.is_some());
    let w = one_warning(&response, "terminationGracePeriodSeconds");
    assert!(w.contains('5') && w.contains("10"), "{w:?}");

    // Raised maxSurge.
    let d = deployment(json!({"rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}));
    let (response, _) = decode_response(&c.mutate(&review("s", "CREATE", "shop", &d, None)).await);
    one_warning(&response, "maxSurge");

    // Unparsable lease selector: left unchanged, warned.
    let mut p = pod("p", Some("ns"));
    p["metadata"]["annotations"] = json!({LEASE_SELECTOR_ANNOTATION: "metadata.name=a=b"});
    let (response, patch) =
        decode_response(&c.mutate(&review("l", "CREATE", "ns", &p, None)).await);
    let patched = apply_patch(&p, &patch.unwrap());
    assert_eq!(
        patched["metadata"]["annotations"][LEASE_SELECTOR_ANNOTATION],
        "metadata.name=a=b"
    );
    one_warning(&response, "lease");

    // Ordinary changes are not warnings.
    for (name, ns, object) in [
        ("plain-pod", "ns", pod("p", Some("ns"))),
        (
            "plain-deployment",
            "shop",
            deployment(json!({"rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}})),
        ),
    ] {
        let (response, patch) =
            decode_response(&c.mutate(&review(name, "CREATE", ns, &object, None)).await);
        assert!(patch.is_some(), "{name}");
        assert!(warnings(&response).is_empty(), "{name}: {response}");
    }
    assert!(server.stop().await);
}

#[tokio::test]
async fn delete_connect_subresources_and_other_kinds_are_allowed_untouched() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    let p = pod("p", Some("ns"));
    let d = deployment(json!({}));

    let mut cases: Vec<(&str, Value)> = Vec::new();
    // DELETE: object is null, oldObject is the pod.
    let mut del = review("delete", "DELETE", "ns", &p, Some(&p));
    del["request"]["object"] = Value::Null;
    del["request"]["options"] = json!({"apiVersion": "meta.k8s.io/v1", "kind": "DeleteOptions"});
    cases.push(("delete", del));
    let mut del = review("delete-deployment", "DELETE", "shop", &d, Some(&d));
    del["request"]["object"] = Value::Null;
    cases.push(("delete-deployment", del));
    // CONNECT: pods/exec with a PodExecOptions object.
    let exec = json!({"apiVersion": "v1", "kind": "PodExecOptions", "stdin": true, "tty": true,
                      "container": "app", "command": ["sh"]});
    let mut connect = review("connect", "CONNECT", "ns", &p, None);
    connect["request"]["subResource"] = json!("exec");
    connect["request"]["object"] = exec;
    connect["request"]["options"] = Value::Null;
    cases.push(("connect", connect));
    // Kinds calmplane does not handle.
    let service = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s", "namespace": "ns"},
                         "spec": {"ports": [{"port": 80}], "selector": {"app": "web"}}});
    cases.push(("service", review("service", "CREATE", "ns", &service, None)));
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "ns"},
                    "data": {"k": "v"}});
    cases.push(("configmap", review("configmap", "CREATE", "ns", &cm, None)));
    cases.push((
        "configmap-update",
        review("configmap-update", "UPDATE", "ns", &cm, Some(&cm)),
    ));
    // A Pod status update (subresource) and a Deployment scale update.
    let mut status = p.clone();
    status["status"] = json!({"phase": "Running"});
    let mut st = review("status", "UPDATE", "ns", &status, Some(&p));
    st["request"]["subResource"] = json!("status");
    st["request"]["requestSubResource"] = json!("status");
    cases.push(("pod-status", st));
    let mut sc = review("scale", "UPDATE", "shop", &d, Some(&d));
    sc["request"]["subResource"] = json!("scale");
    cases.push(("deployment-scale", sc));
    // A Pod UPDATE: the pod policies are CREATE only.
    cases.push((
        "pod-update",
        review("pod-update", "UPDATE", "ns", &p, Some(&p)),
    ));
    // A Deployment of another API version is not ours either.
    let mut beta = d.clone();
    beta["apiVersion"] = json!("apps/v1beta2");
    cases.push((
        "deployment-v1beta2",
        review("deployment-v1beta2", "CREATE", "shop", &beta, None),
    ));

    for (name, r) in cases {
        let reply = c.mutate(&r).await;
        let (response, patch) = decode_response(&reply);
        assert_eq!(response["uid"], r["request"]["uid"], "{name}");
        assert_eq!(patch, None, "{name}: {response}");
        assert!(audited(&response).is_empty(), "{name}: {response}");
        assert!(warnings(&response).is_empty(), "{name}: {response}");
    }
    // The same Pod as a CREATE is patched: the cases above were not skipped by accident.
    let (_, patch) = decode_response(&c.mutate(&review("control", "CREATE", "ns", &p, None)).await);
    assert!(patch.is_some());
    assert!(server.stop().await);
}

#[tokio::test]
async fn dry_run_is_mutated_exactly_like_a_real_request() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    let mut p = pod("p", Some("ns"));
    p["metadata"]["annotations"] = json!({LEASE_SELECTOR_ANNOTATION: "metadata.name=p"});
    p["spec"]["terminationGracePeriodSeconds"] = json!(5);
    let d = deployment(json!({"rollingUpdate": {"maxSurge": "0%"}}));
    for (ns, object) in [("ns", &p), ("shop", &d)] {
        let real = review("same-uid", "CREATE", ns, object, None);
        let mut dry = real.clone();
        dry["request"]["dryRun"] = json!(true);
        let a = c.mutate(&real).await.json();
        let b = c.mutate(&dry).await.json();
        assert!(a["response"].get("patch").is_some());
        assert_eq!(a, b, "dryRun must not change the answer");
    }
    assert!(server.stop().await);
}

#[tokio::test]
async fn real_admission_reviews_from_the_corpus() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    let mut py = PyChecks::new();

    // kubewarden policy-server: Pod CREATEs in `default`, grace 30, no dnsConfig.
    for (file, containers) in [
        (
            "kubewarden__policy-server__tests__data__pod_with_privileged_containers.json",
            2,
        ),
        (
            "kubewarden__policy-server__tests__data__pod_without_privileged_containers.json",
            2,
        ),
    ] {
        let r = corpus_json(file);
        let object = &r["request"]["object"];
        let n = object["spec"]["containers"].as_array().unwrap().len();
        assert_eq!(n, containers, "{file}");
        let (response, patch) = decode_response(&c.mutate(&r).await);
        assert_eq!(response["uid"], r["request"]["uid"], "{file}");
        let patch = patch.unwrap_or_else(|| panic!("{file}: expected a patch"));
        let patched = apply_patch(object, &patch);
        let mut want = object.clone();
        want["spec"]["dnsConfig"] = json!({"options": [{"name": "ndots", "value": "2"}, {"name": "single-request-reopen"}]});
        for i in 0..n {
            assert!(object["spec"]["containers"][i].get("lifecycle").is_none());
            want["spec"]["containers"][i]["lifecycle"] =
                json!({"preStop": {"sleep": {"seconds": 5}}});
        }
        assert_eq!(patched, want, "{file}");
        assert_eq!(audited(&response), sorted(&["dns", "prestop"]), "{file}");
        assert!(warnings(&response).is_empty(), "{file}");
        py.add(file, object, &patch, &patched);
    }

    // kubernetes/api all-fields fixture: a CustomType object, a subresource,
    // a placeholder operation and a response block. Allowed, untouched.
    let r =
        corpus_json("kubernetes__api__testdata__HEAD__admission.k8s.io.v1.AdmissionReview.json");
    assert_eq!(r["request"]["object"]["kind"], "CustomType");
    let reply = c.mutate(&r).await;
    let (response, patch) = decode_response(&reply);
    assert_eq!(response["uid"], "uidValue");
    assert_eq!(patch, None);
    // Our answer is ours: nothing of the request's `response` block is echoed.
    assert!(response.get("status").is_none(), "{response}");
    assert!(audited(&response).is_empty());
    assert!(warnings(&response).is_empty());

    // kubewarden policy-evaluator: bare AdmissionRequests, wrapped here.
    let request = corpus_json("kubewarden__policy-evaluator__tests__data__app_deployment.json");
    assert!(request.get("request").is_none() && request.get("apiVersion").is_none());
    // Unwrapped, it is not an AdmissionReview: a clear 400.
    let message = expect_error(&c.mutate(&request).await, 400);
    assert!(message.contains("bare AdmissionRequest"), "{message}");
    let (response, patch) = decode_response(&c.mutate(&wrap(request.clone())).await);
    assert_eq!(response["uid"], request["uid"]);
    let object = &request["object"];
    let patch = patch.expect("a Deployment CREATE with maxUnavailable 25% is patched");
    let patched = apply_patch(object, &patch);
    let mut want = object.clone();
    want["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] = json!(0);
    assert_eq!(patched, want);
    assert_eq!(audited(&response), sorted(&["rollout"]));
    py.add("app_deployment", object, &patch, &patched);

    let request =
        corpus_json("kubewarden__policy-evaluator__tests__data__pod_creation_flux_cat.json");
    let (response, patch) = decode_response(&c.mutate(&wrap(request.clone())).await);
    assert_eq!(response["uid"], request["uid"]);
    let object = &request["object"];
    let patched = apply_patch(object, &patch.unwrap());
    assert_eq!(
        patched["spec"]["dnsConfig"]["options"][0],
        json!({"name": "ndots", "value": "2"})
    );
    for i in 0..object["spec"]["containers"].as_array().unwrap().len() {
        assert_eq!(
            patched["spec"]["containers"][i]["lifecycle"]["preStop"],
            json!({"sleep": {"seconds": 5}})
        );
    }
    assert_eq!(patched["spec"]["terminationGracePeriodSeconds"], 30);
    py.run();
    assert!(server.stop().await);
}

#[tokio::test]
async fn bad_input_gets_a_clear_4xx_and_the_server_keeps_serving() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    let good_request = pod_review("r", "p")["request"].clone();
    let mut v1beta1 = wrap(good_request.clone());
    v1beta1["apiVersion"] = json!("admission.k8s.io/v1beta1");
    let mut no_uid = good_request.clone();
    no_uid.as_object_mut().unwrap().remove("uid");
    let mut empty_uid = good_request.clone();
    empty_uid["uid"] = json!("");
    let mut wrong_kind = wrap(good_request.clone());
    wrong_kind["kind"] = json!("Pod");

    let cases: Vec<(&str, Vec<u8>, &[&str])> =
        vec![
        ("not JSON", b"hello, webhook".to_vec(), &["JSON"]),
        ("truncated JSON", br#"{"apiVersion": "admission.k8s.io/v1", "kind":"#.to_vec(), &["JSON"]),
        ("invalid UTF-8", b"\xff\xfe{}".to_vec(), &["JSON"]),
        ("empty body", Vec::new(), &["empty"]),
        ("whitespace body", b" \n\t ".to_vec(), &["empty"]),
        ("JSON array", b"[]".to_vec(), &["array"]),
        (
            "array of reviews",
            serde_json::to_vec(&json!([wrap(good_request.clone())])).unwrap(),
            &["array"],
        ),
        ("JSON scalar", b"42".to_vec(), &["AdmissionReview"]),
        (
            "no request",
            br#"{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}"#.to_vec(),
            &["request"],
        ),
        (
            "null request",
            br#"{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": null}"#
                .to_vec(),
            &["request"],
        ),
        ("v1beta1", serde_json::to_vec(&v1beta1).unwrap(), &["v1beta1", "admission.k8s.io/v1"]),
        ("wrong kind", serde_json::to_vec(&wrong_kind).unwrap(), &["kind", "AdmissionReview"]),
        ("missing uid", serde_json::to_vec(&wrap(no_uid)).unwrap(), &["uid"]),
        ("empty uid", serde_json::to_vec(&wrap(empty_uid)).unwrap(), &["uid"]),
        (
            "request is a string",
            br#"{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": "x"}"#
                .to_vec(),
            &["invalid"],
        ),
    ];
    for (name, body, words) in cases {
        let reply = c.request("POST", "/mutate", "application/json", body).await;
        let message = expect_error(&reply, 400);
        for w in words {
            assert!(
                message.contains(w),
                "{name}: {message:?} should mention {w:?}"
            );
        }
        still_serving(&mut c).await;
    }

    // Over the cap with a Content-Length: 413, and a fresh connection works.
    let cap = calmplane::budget::MAX_REVIEW_BODY;
    let mut big = pod("p", Some("ns"));
    big["metadata"]["annotations"] = json!({"pad": "x".repeat(cap)});
    let body = serde_json::to_vec(&review("big", "CREATE", "ns", &big, None)).unwrap();
    assert!(body.len() > cap);
    let mut c2 = server.client().await;
    match c2
        .try_request("POST", "/mutate", "application/json", body)
        .await
    {
        Ok(reply) => {
            let message = expect_error(&reply, 413);
            assert!(message.contains(&cap.to_string()), "{message}");
        }
        // The server may answer and close before the client finished writing.
        Err(e) => panic!("no 413 answer for an oversized body: {e}"),
    }
    let mut c3 = server.client().await;
    still_serving(&mut c3).await;

    // Over the cap without a length (chunked): still 413.
    let reply = chunked_post(&server, "/mutate", cap + MIB).await;
    assert!(
        reply.starts_with("HTTP/1.1 413"),
        "{}",
        &reply[..reply.len().min(300)]
    );
    assert!(reply.contains("\"error\""), "{reply}");
    still_serving(&mut c3).await;

    // Just under the cap is an ordinary request.
    let mut large = pod("p", Some("ns"));
    large["metadata"]["annotations"] = json!({"pad": "x".repeat(cap - 64 * 1024)});
    let reply = c3
        .mutate(&review("large", "CREATE", "ns", &large, None))
        .await;
    let (response, patch) = decode_response(&reply);
    assert_eq!(response["uid"], "large");
    assert!(patch.is_some());

    // /preview answers bad bodies the same way.
    for (name, body, word) in [
        ("empty", &b""[..], "empty"),
        ("scalar list", &b"[1, 2]"[..], "not an object"),
        ("broken YAML", &b"a: [1, 2\nb: {"[..], "YAML"),
    ] {
        let reply = c3
            .preview("/preview", "application/yaml", body.to_vec())
            .await;
        let message = expect_error(&reply, 400);
        assert!(message.contains(word), "{name}: {message}");
    }
    still_serving(&mut c3).await;
    assert!(server.stop().await);
}

/// POST `size` bytes with chunked transfer encoding over a raw TLS stream and
/// return whatever the server answers.
async fn chunked_post(server: &TestServer, path: &str, size: usize) -> String {
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(client_config(&server.ca_pem));
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![b' '; 64 * 1024];
    let mut sent = 0;
    while sent < size {
        let frame = [
            format!("{:x}\r\n", chunk.len()).as_bytes(),
            &chunk[..],
            b"\r\n",
        ]
        .concat();
        if tls.write_all(&frame).await.is_err() {
            break; // the server answered and closed: read its answer
        }
        sent += chunk.len();
    }
    let _ = tls.write_all(b"0\r\n\r\n").await;
    let _ = tls.flush().await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 4096];
        loop {
            match tls.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    answer.extend_from_slice(&buf[..n]);
                    if answer.windows(4).any(|w| w == b"\r\n\r\n")
                        && String::from_utf8_lossy(&answer).contains("\"error\"")
                    {
                        break;
                    }
                }
            }
        }
    })
    .await;
    String::from_utf8_lossy(&answer).into_owned()
}

// ---------------------------------------------------------------------------
// a panic in a policy
// ---------------------------------------------------------------------------

/// Panics on pods named `boom`; does nothing otherwise.
struct PanickingPolicy;

impl Policy for PanickingPolicy {
    fn name(&self) -> &'static str {
        "panicking"
    }

    fn handles(&self, kind: Kind, operation: &Operation) -> bool {
        kind == Kind::Pod && *operation == Operation::Create
    }

    fn apply(&self, _ctx: &Context<'_>, m: &mut Mutation) {
        if m.get(&["metadata", "name"]).and_then(Value::as_str) == Some("boom") {
            panic!("PanickingPolicy: deliberate panic for the test");
        }
    }
}

#[tokio::test]
async fn a_panic_in_a_policy_is_a_500_for_that_request_only() {
    let clock = Arc::new(FixedClock(1_767_000_000));
    let pipeline = Pipeline::from_policies(
        vec![
            Box::new(PanickingPolicy),
            Box::new(Dns::new(DnsConfig::default())),
            Box::new(Prestop::new(PrestopConfig::default())),
        ],
        clock.clone(),
    );
    let s = TestServer::start().await;
    s.state.pipeline.store(Arc::new(pipeline));
    let mut c = s.client().await;

    for round in 0..2 {
        let uid = format!("boom-{round}");
        let reply = c.mutate(&pod_review(&uid, "boom")).await;
        let message = expect_error(&reply, 500);
        assert!(message.contains(&uid), "{message}");
        // The next good request on the same connection succeeds.
        let reply = c.mutate(&pod_review("fine", "fine")).await;
        let (response, patch) = decode_response(&reply);
        assert_eq!(response["uid"], "fine");
        let patched = apply_patch(&pod("fine", Some("ns")), &patch.unwrap());
        assert_eq!(
            patched["spec"]["dnsConfig"]["options"][0],
            json!({"name": "ndots", "value": "2"})
        );
    }
    // /preview too.
    let pod_json = |name| serde_json::to_vec(&pod(name, Some("ns"))).unwrap();
    let reply = c
        .preview("/preview", "application/json", pod_json("boom"))
        .await;
    expect_error(&reply, 500);
    let reply = c
        .preview("/preview", "application/json", pod_json("fine"))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());

    // Counted as errors, by kind and operation.
    let (status, metrics) = s.metrics_get("/metrics").await;
    assert_eq!(status, 200);
    let m = parse_metrics(&metrics);
    let pod_creates = |result| {
        value(
            &m,
            "calmplane_admission_requests_total",
            &[("kind", "Pod"), ("operation", "CREATE"), ("result", result)],
        )
    };
    assert_eq!(pod_creates("error"), Some(2.0), "{metrics}");
    assert_eq!(pod_creates("mutated"), Some(2.0), "{metrics}");

    // Swapping the pipeline back to the defaults takes effect at once.
    s.state.pipeline.store(Arc::new(Pipeline::new(
        &calmplane::config::Config::default(),
        clock,
    )));
    let (_, patch) = decode_response(&c.mutate(&pod_review("b", "boom")).await);
    assert!(patch.is_some());
    assert!(s.stop().await);
}

// ---------------------------------------------------------------------------
// /preview
// ---------------------------------------------------------------------------

/// POST to /preview and return the JSON answer (status 200 required).
async fn preview(
    c: &mut TlsClient,
    path: &str,
    content_type: &str,
    body: impl Into<bytes::Bytes>,
) -> Value {
    let reply = c.preview(path, content_type, body).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(reply.content_type.starts_with("application/json"));
    reply.json()
}

/// [`preview`] of one JSON value.
async fn preview_json(c: &mut TlsClient, path: &str, body: &Value) -> Value {
    preview(
        c,
        path,
        "application/json",
        serde_json::to_vec(body).unwrap(),
    )
    .await
}

/// A single preview's patch reproduces its object from `input`, and its
/// `changes` are well formed.
fn check_preview(p: &Value, input: &Value) {
    let patch = p["patch"]
        .as_array()
        .expect("patch is a list of operations");
    let changes = p["changes"].as_array().expect("changes is a list");
    assert_eq!(apply_patch(input, &p["patch"]), p["object"]);
    assert_eq!(patch.is_empty(), changes.is_empty(), "{p:#}");
    for ch in changes {
        assert!(ch["policy"].is_string() && ch["path"].is_string(), "{ch}");
        assert!(!ch["message"].as_str().unwrap().is_empty(), "{ch}");
    }
}

const POD_YAML: &str = "\
apiVersion: v1
kind: Pod
metadata:
  name: p
  namespace: team-a
  annotations:
    calmplane.dev/lease-selector: metadata.name=p
spec:
  containers:
    - name: app
      image: app:1
";

#[tokio::test]
async fn preview_accepts_json_yaml_streams_lists_and_reviews() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    let object: Value = calmplane::yaml::from_str(POD_YAML).unwrap();

    // One object as JSON and as YAML: the same answer.
    let from_json = preview_json(&mut c, "/preview", &object).await;
    let from_yaml = preview(&mut c, "/preview", "application/yaml", POD_YAML).await;
    assert_eq!(from_json, from_yaml);
    assert!(from_json.get("items").is_none());
    check_preview(&from_json, &object);
    assert_eq!(
        from_json["object"]["metadata"]["annotations"][LEASE_SELECTOR_ANNOTATION],
        "metadata.namespace=team-a"
    );
    let policies: Vec<&str> = from_json["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["policy"].as_str().unwrap())
        .collect();
    for p in ["lease", "dns", "prestop"] {
        assert!(policies.contains(&p), "{policies:?}");
    }
    assert!(from_json.get("template").is_none(), "a Pod has no template");

    // Multi-document YAML, with empty documents around it.
    let stream = format!(
        "---\n{POD_YAML}---\napiVersion: v1\nkind: Service\nmetadata:\n  name: s\nspec:\n  ports: [{{port: 80}}]\n---\n{}\n---\n",
        calmplane::yaml::to_string(&deployment(json!({}))).unwrap()
    );
    let answer = preview(&mut c, "/preview", "application/yaml", stream).await;
    let items = answer["items"]
        .as_array()
        .expect("several documents: items");
    assert_eq!(items.len(), 3, "{answer:#}");
    assert_eq!(items[0]["kind"], "Pod");
    assert_eq!(items[1]["kind"], "Service");
    assert_eq!(items[1]["patch"], json!([]));
    assert_eq!(items[2]["kind"], "Deployment");
    check_preview(&items[0], &object);
    check_preview(&items[2], &deployment(json!({})));

    // A v1 List (linkerd's), as YAML.
    let list_text = std::fs::read_to_string(corpus_file(
        "linkerd__linkerd2__cli__cmd__testdata__inject_emojivoto_list.input.yml",
    ))
    .unwrap();
    // The file ends with a `---` separator: read its first document.
    let list: Value = calmplane::yaml::from_str(list_text.split("\n---").next().unwrap()).unwrap();
    let answer = preview(&mut c, "/preview", "application/yaml", list_text).await;
    let items = answer["items"].as_array().unwrap();
    assert_eq!(items.len(), list["items"].as_array().unwrap().len());
    for (item, input) in items.iter().zip(list["items"].as_array().unwrap()) {
        assert_eq!(item["kind"], "Deployment");
        check_preview(item, input);
        assert_eq!(
            item["object"]["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"],
            0
        );
        assert!(item["template"].is_object());
    }

    // An AdmissionReview: its own operation and namespace.
    let r =
        corpus_json("kubewarden__policy-server__tests__data__pod_with_privileged_containers.json");
    let answer = preview_json(&mut c, "/preview", &r).await;
    assert_eq!(answer["kind"], "Pod");
    assert_eq!(answer["operation"], "CREATE");
    assert_eq!(answer["namespace"], "default");
    check_preview(&answer, &r["request"]["object"]);
    // It matches what /mutate answers for the same review.
    let (_, patch) = decode_response(&c.mutate(&r).await);
    assert_eq!(answer["patch"], patch.unwrap());
    // A DELETE review is previewed as skipped.
    let p = pod("p", Some("ns"));
    let mut del = review("d", "DELETE", "ns", &p, Some(&p));
    del["request"]["object"] = Value::Null;
    let answer = preview_json(&mut c, "/preview", &del).await;
    assert_eq!(answer["patch"], json!([]));
    assert!(answer["skipped"].is_string(), "{answer:#}");
    assert!(server.stop().await);
}

/// Parse errors echo what the client sent; the echo is clipped, as on /mutate.
#[tokio::test]
async fn preview_errors_are_clipped() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    let huge = "x".repeat(256 * 1024);
    let bodies = [
        // An AdmissionReview whose request is a huge string.
        serde_json::to_string(&json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": huge,
        }))
        .unwrap(),
        // A YAML AdmissionReview with a huge apiVersion.
        format!("kind: AdmissionReview\napiVersion: v{huge}\n"),
    ];
    for body in bodies {
        let reply = c.preview("/preview", "application/yaml", body).await;
        let message = expect_error(&reply, 400);
        assert!(
            message.len() < 2048,
            "400 body echoes {} bytes",
            message.len()
        );
        assert!(message.contains("more bytes)"), "{message:.300}");
    }
    still_serving(&mut c).await;
    assert!(server.stop().await);
}

#[tokio::test]
async fn preview_templates_of_workloads() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    let pod_spec =
        json!({"containers": [{"name": "app", "image": "app:1"}], "restartPolicy": "OnFailure"});
    let template = json!({"metadata": {"labels": {"app": "w"},
                                       "annotations": {LEASE_SELECTOR_ANNOTATION: "metadata.name=x"}},
                          "spec": pod_spec});
    let selector = json!({"matchLabels": {"app": "w"}});
    let workloads = [
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "w", "namespace": "ns"},
               "spec": {"selector": selector, "template": template}}),
        json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "w", "namespace": "ns"},
               "spec": {"selector": selector, "serviceName": "w", "template": template}}),
        json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "w", "namespace": "ns"},
               "spec": {"selector": selector, "template": template}}),
        json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "w", "namespace": "ns"},
               "spec": {"template": template}}),
        json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "w", "namespace": "ns"},
               "spec": {"schedule": "*/5 * * * *", "jobTemplate": {"spec": {"template": template}}}}),
    ];
    let template_pod = json!({"apiVersion": "v1", "kind": "Pod",
                              "metadata": template["metadata"], "spec": template["spec"]});
    for w in &workloads {
        let kind = w["kind"].as_str().unwrap();
        let answer = preview_json(&mut c, "/preview", w).await;
        assert_eq!(answer["kind"], kind);
        check_preview(&answer, w);
        let t = &answer["template"];
        assert!(t.is_object(), "{kind}: no template preview");
        assert_eq!(t["kind"], "Pod", "{kind}");
        assert_eq!(t["namespace"], "ns", "{kind}");
        check_preview(t, &template_pod);
        assert_eq!(
            t["object"]["spec"]["containers"][0]["lifecycle"]["preStop"],
            json!({"sleep": {"seconds": 5}}),
            "{kind}"
        );
        assert_eq!(
            t["object"]["metadata"]["annotations"][LEASE_SELECTOR_ANNOTATION],
            "metadata.namespace=ns",
            "{kind}"
        );
        // Only the Deployment itself is changed (rollout); the others are not.
        assert_eq!(
            answer["patch"].as_array().unwrap().is_empty(),
            kind != "Deployment",
            "{kind}"
        );
        // The template preview does not leak into the workload's own object.
        assert!(!answer["object"].to_string().contains("preStop"), "{kind}");
    }
    // A skip annotation on the template reaches the template preview.
    let mut skipped = workloads[0].clone();
    skipped["spec"]["template"]["metadata"]["annotations"][SKIP_ANNOTATION] = json!("all");
    let answer = preview_json(&mut c, "/preview", &skipped).await;
    assert_eq!(answer["template"]["patch"], json!([]));
    // No template for a Pod or a Service.
    let service = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}, "spec": {"ports": [{"port": 80}]}});
    let answer = preview_json(&mut c, "/preview", &service).await;
    assert!(answer.get("template").is_none());
    assert!(answer["skipped"].is_string());
    assert!(server.stop().await);
}

#[tokio::test]
async fn preview_namespace_parameter() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    let mut p = pod("p", None);
    p["metadata"]["annotations"] = json!({LEASE_SELECTOR_ANNOTATION: "metadata.name=p,app=x"});
    let body = serde_json::to_vec(&p).unwrap();

    let answer = preview(
        &mut c,
        "/preview?namespace=team-b",
        "application/json",
        body.clone(),
    )
    .await;
    assert_eq!(
        answer["object"]["metadata"]["annotations"][LEASE_SELECTOR_ANNOTATION],
        "metadata.namespace=team-b,app=x"
    );
    assert_eq!(answer["namespace"], "team-b");

    // Without a namespace anywhere, the selector is left alone, with a warning.
    let answer = preview(&mut c, "/preview", "application/json", body.clone()).await;
    assert_eq!(
        answer["object"]["metadata"]["annotations"][LEASE_SELECTOR_ANNOTATION],
        "metadata.name=p,app=x"
    );
    assert!(
        warnings(&answer).iter().any(|w| w.contains("namespace")),
        "{answer:#}"
    );

    // The object's own namespace wins: the parameter only fills a gap.
    let mut own = p.clone();
    own["metadata"]["namespace"] = json!("own");
    let answer = preview_json(&mut c, "/preview?namespace=team-b", &own).await;
    assert_eq!(
        answer["object"]["metadata"]["annotations"][LEASE_SELECTOR_ANNOTATION],
        "metadata.namespace=own,app=x"
    );

    // It reaches the template preview of a workload without a namespace.
    let mut d = deployment(json!({}));
    d["metadata"].as_object_mut().unwrap().remove("namespace");
    d["spec"]["template"]["metadata"]["annotations"] =
        json!({LEASE_SELECTOR_ANNOTATION: "metadata.name=x"});
    let answer = preview_json(&mut c, "/preview?namespace=team-c", &d).await;
    assert_eq!(
        answer["template"]["object"]["metadata"]["annotations"][LEASE_SELECTOR_ANNOTATION],
        "metadata.namespace=team-c"
    );
    assert_eq!(answer["template"]["namespace"], "team-c");
    assert!(server.stop().await);
}

/// The README example, verbatim apart from the port, with the real curl.
#[tokio::test]
async fn the_curl_example_from_the_issue_works() {
    let server = TestServer::start().await;
    let ca = server.dir.path().join("ca.crt");
    assert!(ca.exists());
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/deployment.yaml");
    let url = format!("https://127.0.0.1:{}/preview", server.addr.port());
    let out = tokio::task::spawn_blocking({
        let ca = ca.clone();
        let example = example.clone();
        move || {
            Command::new("curl")
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .args(["--silent", "--show-error", "--fail-with-body", "--cacert"])
                .arg(&ca)
                .arg("--data-binary")
                .arg(format!("@{}", example.display()))
                .args(["-H", "content-type: application/yaml"])
                .arg(&url)
                .output()
        }
    })
    .await
    .unwrap()
    .expect("curl runs");
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: Value = serde_json::from_slice(&out.stdout).expect("JSON from curl");
    let input: Value =
        calmplane::yaml::from_str(&std::fs::read_to_string(&example).unwrap()).unwrap();
    assert_eq!(answer["kind"], "Deployment");
    check_preview(&answer, &input);
    // maxSurge 0 raised with a warning; maxUnavailable 0.
    assert_eq!(
        answer["object"]["spec"]["strategy"]["rollingUpdate"],
        json!({"maxSurge": 1, "maxUnavailable": 0})
    );
    assert!(
        warnings(&answer).iter().any(|w| w.contains("maxSurge")),
        "{answer:#}"
    );
    // The pods: every selector per namespace, preStop, grace 5 -> 10 with a warning.
    let t = &answer["template"]["object"];
    assert_eq!(
        t["metadata"]["annotations"][LEASE_SELECTOR_ANNOTATION],
        "metadata.namespace=shop"
    );
    let app = &t["spec"]["containers"][0];
    assert_eq!(
        app["args"],
        json!([
            "--lease-selector",
            "metadata.namespace=shop,spec.holderIdentity!=none"
        ])
    );
    assert_eq!(app["env"][0]["value"], "metadata.namespace=shop");
    assert_eq!(
        app["lifecycle"]["preStop"],
        json!({"sleep": {"seconds": 5}})
    );
    assert_eq!(t["spec"]["terminationGracePeriodSeconds"], 10);
    assert_eq!(
        t["spec"]["dnsConfig"]["options"],
        json!([{"name": "ndots", "value": "2"}, {"name": "single-request-reopen"}])
    );
    assert!(warnings(&answer["template"])
        .iter()
        .any(|w| w.contains("terminationGracePeriodSeconds")));
    assert!(server.stop().await);
}

#[tokio::test]
async fn preview_yaml_hard_cases_from_the_corpus() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    let read = |name: &str| std::fs::read_to_string(corpus_file(name)).unwrap();

    // Flow style (JSON-like YAML with trailing commas and a leading ---):
    // handled; the existing preStop hook is kept.
    let text = read("kubernetes__website__content__en__examples__pods__lifecycle-events.yaml");
    let answer = preview(
        &mut c,
        "/preview?namespace=default",
        "application/yaml",
        text,
    )
    .await;
    assert_eq!(answer["kind"], "Pod");
    let container = &answer["object"]["spec"]["containers"][0];
    assert_eq!(
        container["lifecycle"]["preStop"]["exec"]["command"][2],
        "nginx -s quit; while killall -0 nginx; do sleep 1; done"
    );
    assert!(container["lifecycle"]["postStart"].is_object());
    assert!(answer["object"]["spec"]["dnsConfig"].is_object());
    assert!(!answer["patch"].to_string().contains("preStop"));

    // Null maps: `annotations:` with no value (linkerd's kubectl-get output).
    let text = read("linkerd__linkerd2__cli__cmd__testdata__inject_tap_deployment.input.yml");
    let input: Value = calmplane::yaml::from_str(&text).unwrap();
    assert!(input["metadata"]["annotations"].is_null());
    let answer = preview(&mut c, "/preview", "application/yaml", text).await;
    check_preview(&answer, &input);
    assert!(answer["object"]["metadata"]["annotations"].is_null());
    assert_eq!(
        answer["object"]["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"],
        0
    );
    assert_eq!(
        answer["object"]["spec"]["strategy"]["rollingUpdate"]["maxSurge"],
        "25%"
    );
    assert!(answer["template"]["object"]["spec"]["dnsConfig"].is_object());

    // Octal modes: `defaultMode: 0640` means 416 to kubectl (YAML 1.1) and
    // the string "0640" to YAML 1.2. A clear 400 names the line and the value.
    let name = "elastic__beats__deploy__kubernetes__filebeat-kubernetes.yaml";
    let text = read(name);
    let line = text
        .lines()
        .position(|l| l.trim() == "defaultMode: 0640")
        .expect("the corpus file has the octal mode")
        + 1;
    let reply = c.preview("/preview", "application/yaml", text).await;
    let message = expect_error(&reply, 400);
    assert!(message.contains(&format!("line {line}")), "{message}");
    assert!(message.contains("0640"), "{message}");
    assert!(message.contains("octal"), "{message}");
    assert!(message.contains("416"), "{message}");
    // The fix the message suggests works: 0o640 is 416.
    let fixed = read(name).replace("defaultMode: 0640", "defaultMode: 0o640");
    let answer = preview(&mut c, "/preview", "application/yaml", fixed).await;
    let daemonset = answer["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["kind"] == "DaemonSet")
        .expect("filebeat has a DaemonSet");
    let modes: Vec<&Value> = daemonset["object"]["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.get("configMap")?.get("defaultMode"))
        .collect();
    assert_eq!(modes, vec![&json!(416)]);

    // Duplicate key: `selector` twice in the Deployment spec.
    let text = read("kubernetes__examples___archived__openshift-origin__etcd-controller.yaml");
    let reply = c.preview("/preview", "application/yaml", text).await;
    let message = expect_error(&reply, 400);
    assert!(
        message.contains("duplicate mapping key: selector"),
        "{message}"
    );
    assert!(message.contains("line 12"), "{message}");
    assert!(!message.contains("DuplicateKeyPolicy"), "{message}");
    still_serving(&mut c).await;
    assert!(server.stop().await);
}

// ---------------------------------------------------------------------------
// calmplane preview (CLI)
// ---------------------------------------------------------------------------

fn cli_preview(args: &[&str], stdin: Option<&[u8]>) -> std::process::Output {
    use std::io::Write;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_calmplane"));
    cmd.arg("preview").args(args);
    for var in [
        "CALMPLANE_CONFIG",
        "CALMPLANE_PREVIEW_FILE",
        "CALMPLANE_PREVIEW_NAMESPACE",
    ] {
        cmd.env_remove(var);
    }
    cmd.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("calmplane binary runs");
    {
        let mut pipe = child.stdin.take().unwrap();
        if let Some(bytes) = stdin {
            pipe.write_all(bytes).unwrap();
        }
    }
    child.wait_with_output().unwrap()
}

#[tokio::test]
async fn cli_preview_prints_the_same_json_as_the_endpoint() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    let dir = tempfile::tempdir().unwrap();
    let mut p = pod("p", None);
    p["metadata"]["annotations"] = json!({LEASE_SELECTOR_ANNOTATION: "metadata.name=p"});
    p["spec"]["terminationGracePeriodSeconds"] = json!(5);
    let pod_file = dir.path().join("pod.json");
    std::fs::write(&pod_file, serde_json::to_vec(&p).unwrap()).unwrap();
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/deployment.yaml");

    let inputs: Vec<(PathBuf, Option<&str>)> = vec![
        (pod_file.clone(), Some("team-a")),
        (pod_file.clone(), None),
        (examples, None),
        (
            corpus_file(
                "GoogleCloudPlatform__microservices-demo__release__kubernetes-manifests.yaml",
            ),
            Some("demo"),
        ),
        (
            corpus_file("linkerd__linkerd2__cli__cmd__testdata__inject_emojivoto_list.input.yml"),
            None,
        ),
        (
            corpus_file("kubernetes__website__content__en__examples__pods__lifecycle-events.yaml"),
            None,
        ),
        (
            corpus_file(
                "kubewarden__policy-server__tests__data__pod_with_privileged_containers.json",
            ),
            None,
        ),
        (
            corpus_file("open-policy-agent__gatekeeper__test__expansion__cronjob.yaml"),
            Some("jobs"),
        ),
    ];
    for (file, ns) in inputs {
        let body = std::fs::read(&file).unwrap();
        let path = match ns {
            Some(ns) => format!("/preview?namespace={ns}"),
            None => "/preview".to_string(),
        };
        let http = preview(&mut c, &path, "application/yaml", body.clone()).await;
        let file_arg = file.display().to_string();
        let mut args = vec!["-f", file_arg.as_str()];
        if let Some(ns) = ns {
            args.extend(["--namespace", ns]);
        }
        let out = cli_preview(&args, None);
        assert!(
            out.status.success(),
            "{file_arg}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let cli: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{file_arg}: CLI output is not JSON: {e}"));
        assert_eq!(cli, http, "{file_arg} (namespace {ns:?})");
        // stdin gives the same.
        let mut args = vec!["-f", "-"];
        if let Some(ns) = ns {
            args.extend(["-n", ns]);
        }
        let out = cli_preview(&args, Some(&body));
        assert!(out.status.success());
        let from_stdin: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(from_stdin, http, "{file_arg} from stdin");
    }

    // An input the endpoint refuses fails the CLI with the same message.
    let octal = corpus_file("elastic__beats__deploy__kubernetes__filebeat-kubernetes.yaml");
    let reply = c
        .preview(
            "/preview",
            "application/yaml",
            std::fs::read(&octal).unwrap(),
        )
        .await;
    let message = expect_error(&reply, 400);
    let out = cli_preview(&["-f", &octal.display().to_string()], None);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&message),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(server.stop().await);
}

// ---------------------------------------------------------------------------
// health and metrics
// ---------------------------------------------------------------------------

type Series = BTreeMap<String, f64>;

/// `name{a="x",b="y"}` (labels sorted) -> value.
fn parse_metrics(text: &str) -> Series {
    let mut out = Series::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line.rsplit_once(' ').unwrap();
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let pairs: Vec<(String, String)> = labels
            .split("\",")
            .filter(|s| !s.is_empty())
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap();
                (k.to_string(), v.trim_matches('"').to_string())
            })
            .collect();
        let key = series_key(name, pairs);
        let value = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap(),
        };
        out.insert(key, value);
    }
    out
}

/// `name{k=v,...}` with the labels sorted: a key of [`Series`].
fn series_key<K: Ord + Display, V: Ord + Display>(name: &str, mut pairs: Vec<(K, V)>) -> String {
    pairs.sort();
    let labels: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{name}{{{}}}", labels.join(","))
}

fn value(m: &Series, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    m.get(&series_key(name, labels.to_vec())).copied()
}

#[tokio::test]
async fn health_and_metrics() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    for path in ["/healthz", "/readyz"] {
        let reply = c.get(path).await;
        assert_eq!(reply.status, 200, "{path}");
    }
    // Metrics live on the plaintext port only.
    assert_eq!(c.get("/metrics").await.status, 404);

    // One of each result.
    let p = pod("p", Some("ns"));
    let (_, patch) = decode_response(&c.mutate(&review("m", "CREATE", "ns", &p, None)).await);
    let patched = apply_patch(&p, &patch.unwrap());
    let (_, patch) = decode_response(&c.mutate(&review("u", "CREATE", "ns", &patched, None)).await);
    assert!(patch.is_none());
    let cm =
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {}});
    decode_response(&c.mutate(&review("s", "CREATE", "ns", &cm, None)).await);
    let mut del = review("d", "DELETE", "ns", &p, Some(&p));
    del["request"]["object"] = Value::Null;
    decode_response(&c.mutate(&del).await);
    let d = deployment(json!({}));
    decode_response(&c.mutate(&review("dep", "CREATE", "shop", &d, None)).await);
    expect_error(
        &c.request("POST", "/mutate", "application/json", "nope")
            .await,
        400,
    );

    let text = server.metrics().await;
    let m = parse_metrics(&text);
    let req = |kind, op, result| {
        value(
            &m,
            "calmplane_admission_requests_total",
            &[("kind", kind), ("operation", op), ("result", result)],
        )
    };
    assert_eq!(req("Pod", "CREATE", "mutated"), Some(1.0), "{text}");
    assert_eq!(req("Pod", "CREATE", "unchanged"), Some(1.0), "{text}");
    assert_eq!(req("Pod", "DELETE", "skipped"), Some(1.0), "{text}");
    assert_eq!(req("Deployment", "CREATE", "mutated"), Some(1.0), "{text}");
    let by_result = |result: &str| -> f64 {
        m.iter()
            .filter(|(k, _)| {
                k.starts_with("calmplane_admission_requests_total{")
                    && k.contains(&format!("result={result}}}"))
            })
            .map(|(_, v)| v)
            .sum()
    };
    assert_eq!(by_result("skipped"), 2.0, "{text}"); // the ConfigMap and the DELETE
    assert_eq!(by_result("error"), 1.0, "{text}");
    assert_eq!(by_result("mutated"), 2.0, "{text}");
    for k in m
        .keys()
        .filter(|k| k.starts_with("calmplane_admission_requests_total{"))
    {
        assert!(
            ["mutated", "unchanged", "skipped", "error"]
                .iter()
                .any(|r| k.contains(&format!("result={r}}}"))),
            "{k}"
        );
    }

    // Duration histogram: buckets from 50 µs to 1 s, cumulative, counting every admission.
    let buckets: Vec<(f64, f64)> = m
        .iter()
        .filter_map(|(k, v)| {
            let le = k.strip_prefix("calmplane_admission_duration_seconds_bucket{le=")?;
            let le = le.trim_end_matches('}');
            Some((
                if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap()
                },
                *v,
            ))
        })
        .collect();
    let mut buckets = buckets;
    buckets.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
    let les: Vec<f64> = buckets.iter().map(|b| b.0).collect();
    assert!(les.contains(&5e-05), "{les:?}");
    assert!(les.contains(&1.0), "{les:?}");
    assert_eq!(les[0], 5e-05, "{les:?}");
    assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{buckets:?}");
    let count = m["calmplane_admission_duration_seconds_count{}"];
    // Five reviews were answered (the unparsable body may or may not be timed).
    assert!((5.0..=6.0).contains(&count), "{text}");
    assert_eq!(buckets.last().unwrap().1, count);
    let one_second = buckets.iter().find(|b| b.0 == 1.0).unwrap().1;
    assert_eq!(one_second, count, "every test request takes less than 1 s");
    assert!(m["calmplane_admission_duration_seconds_sum{}"] > 0.0);

    // Policy changes: the Pod by dns and prestop, the Deployment by rollout.
    let changes = |p| value(&m, "calmplane_policy_changes_total", &[("policy", p)]);
    assert_eq!(changes("dns"), Some(1.0), "{text}");
    assert_eq!(changes("prestop"), Some(1.0), "{text}");
    assert_eq!(changes("rollout"), Some(1.0), "{text}");
    assert_eq!(changes("lease").unwrap_or(0.0), 0.0, "{text}");

    assert_eq!(
        value(
            &m,
            "calmplane_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0),
        "{text}"
    );
    assert!(text.contains("# TYPE calmplane_admission_duration_seconds histogram"));
    assert!(text.contains("# TYPE calmplane_admission_requests_total counter"));
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preview_answers_are_no_larger_than_what_was_sent() {
    // A kind of 200 KB used to come back three times: in `kind`, in
    // `skipped` and in `object`.
    let server = TestServer::start().await;
    let mut c = server.client().await;
    let object = json!({"apiVersion": "example.com/v1", "kind": "K".repeat(200_000),
                        "metadata": {"name": "x"}});
    let body = serde_json::to_vec(&object).unwrap();
    let reply = c
        .preview("/preview", "application/json", body.clone())
        .await;
    assert_eq!(reply.status, 200, "{:.300}", reply.text());
    let preview = reply.json();
    assert!(preview["kind"].as_str().unwrap().len() < 300);
    assert!(
        preview["skipped"].as_str().unwrap().len() < 400,
        "{}",
        preview["skipped"]
    );
    assert_eq!(
        preview["object"], object,
        "the object itself comes back whole"
    );
    assert!(
        reply.body.len() < body.len() + 4096,
        "{} bytes out for {} in",
        reply.body.len(),
        body.len()
    );
    assert!(server.stop().await);
}
