//! `/mutate`: the AdmissionReview contract, real reviews, and bad input.

use super::*;

#[tokio::test]
async fn mutate_answers_with_a_base64_json_patch() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    let mut py = PyChecks::new();

    let mut p = pod("web-0", Some("team-a"));
    p["metadata"]["annotations"] = json!({annotations::LEASE_SELECTOR: "metadata.name=web-0"});
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
        patched["metadata"]["annotations"][annotations::LEASE_SELECTOR],
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
    p["metadata"]["annotations"] = json!({annotations::LEASE_SELECTOR: "metadata.name=a=b"});
    let (response, patch) =
        decode_response(&c.mutate(&review("l", "CREATE", "ns", &p, None)).await);
    let patched = apply_patch(&p, &patch.unwrap());
    assert_eq!(
        patched["metadata"]["annotations"][annotations::LEASE_SELECTOR],
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
    p["metadata"]["annotations"] = json!({annotations::LEASE_SELECTOR: "metadata.name=p"});
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
