//! `/preview`: every input form, templates, the namespace parameter, clipping.

use super::*;

/// POST to /preview and return the JSON answer (status 200 required).
pub(crate) async fn post_preview(
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
    post_preview(
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
    let from_yaml = post_preview(&mut c, "/preview", "application/yaml", POD_YAML).await;
    assert_eq!(from_json, from_yaml);
    assert!(from_json.get("items").is_none());
    check_preview(&from_json, &object);
    assert_eq!(
        from_json["object"]["metadata"]["annotations"][annotations::LEASE_SELECTOR],
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
    let answer = post_preview(&mut c, "/preview", "application/yaml", stream).await;
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
    let answer = post_preview(&mut c, "/preview", "application/yaml", list_text).await;
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
                                       "annotations": {annotations::LEASE_SELECTOR: "metadata.name=x"}},
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
            t["object"]["metadata"]["annotations"][annotations::LEASE_SELECTOR],
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
    skipped["spec"]["template"]["metadata"]["annotations"][annotations::SKIP] = json!("all");
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
    p["metadata"]["annotations"] = json!({annotations::LEASE_SELECTOR: "metadata.name=p,app=x"});
    let body = serde_json::to_vec(&p).unwrap();

    let answer = post_preview(
        &mut c,
        "/preview?namespace=team-b",
        "application/json",
        body.clone(),
    )
    .await;
    assert_eq!(
        answer["object"]["metadata"]["annotations"][annotations::LEASE_SELECTOR],
        "metadata.namespace=team-b,app=x"
    );
    assert_eq!(answer["namespace"], "team-b");

    // Without a namespace anywhere, the selector is left alone, with a warning.
    let answer = post_preview(&mut c, "/preview", "application/json", body.clone()).await;
    assert_eq!(
        answer["object"]["metadata"]["annotations"][annotations::LEASE_SELECTOR],
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
        answer["object"]["metadata"]["annotations"][annotations::LEASE_SELECTOR],
        "metadata.namespace=own,app=x"
    );

    // It reaches the template preview of a workload without a namespace.
    let mut d = deployment(json!({}));
    d["metadata"].as_object_mut().unwrap().remove("namespace");
    d["spec"]["template"]["metadata"]["annotations"] =
        json!({annotations::LEASE_SELECTOR: "metadata.name=x"});
    let answer = preview_json(&mut c, "/preview?namespace=team-c", &d).await;
    assert_eq!(
        answer["template"]["object"]["metadata"]["annotations"][annotations::LEASE_SELECTOR],
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
        t["metadata"]["annotations"][annotations::LEASE_SELECTOR],
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
    let answer = post_preview(
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
    let answer = post_preview(&mut c, "/preview", "application/yaml", text).await;
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
    let answer = post_preview(&mut c, "/preview", "application/yaml", fixed).await;
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
