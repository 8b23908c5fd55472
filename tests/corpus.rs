//! Every real manifest in `tests/fixtures/upstream/` through `/mutate` over real TLS.
//!
//! Pods go in directly; Deployments as a CREATE (and an UPDATE that changes the
//! image); every workload's pod template as a Pod. The corpus is read by
//! PyYAML, the way kubectl would send it, and every patch is checked by
//! independent implementations (`tests/pycheck.py`: Python `jsonpatch` and
//! `kubernetes-validate --strict`), then fed back for a second pass that must
//! yield no patch.

use calmplane::config::Config;
use calmplane::pipeline::{FixedClock, Pipeline};
use calmplane::policy::{Context, Kind};
use calmplane_testkit::harness::*;
use calmplane_testkit::pychecks;
use calmplane_testkit::review::view_matches_whole;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::process::Command;
use std::sync::Arc;

/// One patched object, for the independent checker.
struct Case {
    name: String,
    original: Value,
    patch: Value,
    patched: Value,
    /// Schema validation applies: real manifests, not the placeholder-filled
    /// round-trip fixtures.
    validate: bool,
}

fn load_corpus(dir: &std::path::Path) -> Vec<(String, Value)> {
    let out = dir.join("corpus.json");
    let status = Command::new(python())
        .arg(pychecks::script())
        .arg("load")
        .arg(corpus_dir())
        .arg(&out)
        .status()
        .expect("run the test venv's python (make venv)");
    assert!(status.success(), "pycheck.py load failed");
    let docs: Vec<Value> = serde_json::from_slice(&std::fs::read(out).unwrap()).unwrap();
    docs.into_iter()
        .map(|d| {
            let name = format!("{}#{}", d["file"].as_str().unwrap(), d["index"]);
            (name, d["object"].clone())
        })
        .collect()
}

fn run_checker(dir: &std::path::Path, cases: &[Case]) {
    let (ok, text) = checker(dir, cases);
    println!("{text}");
    assert!(ok, "independent checks failed:\n{text}");
}

/// Run tests/pycheck.py over `cases`: (all passed, its report).
fn checker(dir: &std::path::Path, cases: &[Case]) -> (bool, String) {
    let json: Vec<Value> = cases
        .iter()
        .map(|c| {
            // Upstream manifests may carry their own placeholder errors:
            // only the errors a patch adds count.
            let validate = if c.validate { "new" } else { "none" };
            json!({"name": c.name, "original": c.original, "patch": c.patch,
                   "patched": c.patched, "validate": validate})
        })
        .collect();
    pychecks::check_cases(dir, &json)
}

const WORKLOADS: &[&str] = &[
    "Deployment",
    "StatefulSet",
    "DaemonSet",
    "Job",
    "CronJob",
    "ReplicaSet",
];

struct Runner {
    client: TlsClient,
    cases: Vec<Case>,
    uid: u64,
    mutated: BTreeSet<String>,
    allowed_untouched: usize,
    /// The server's policies in process, to hold the view `/mutate` builds
    /// to the whole object on every manifest.
    pipeline: Pipeline,
}

impl Runner {
    /// Send `object` as `operation`, check the response, apply the patch,
    /// check the second pass, and record the case.
    async fn admit(
        &mut self,
        name: &str,
        operation: &str,
        object: &Value,
        old: Option<&Value>,
        validate: bool,
    ) -> Value {
        self.uid += 1;
        let uid = format!("corpus-{}", self.uid);
        let namespace = object["metadata"]["namespace"].as_str().unwrap_or("corpus");
        if let Some(kind) = Kind::from_object(object) {
            let operation = calmplane::review::parse_operation(operation).expect("known operation");
            let request = Context::new(kind, operation.clone())
                .in_namespace(Some(namespace))
                .replacing(old, None);
            let whole = self.pipeline.run(&request, object.clone());
            let operation = calmplane::review::operation_str(&operation);
            let namespace = Some(namespace);
            view_matches_whole(
                &self.pipeline,
                kind,
                operation,
                namespace,
                object,
                old,
                &whole,
            )
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        let reply = self
            .client
            .mutate(&review(&uid, operation, namespace, object, old))
            .await;
        let (response, patch) = decode_response(&reply);
        assert_eq!(response["uid"], uid.as_str(), "{name}: uid not echoed");
        let Some(patch) = patch else {
            self.allowed_untouched += 1;
            assert!(
                response.get("auditAnnotations").is_none(),
                "{name}: audit without a change"
            );
            return object.clone();
        };
        let patched = apply_patch(object, &patch);
        let policies = response["auditAnnotations"]["policies"]
            .as_str()
            .unwrap_or("");
        assert!(
            !policies.is_empty(),
            "{name}: a patch must name its policies"
        );

        // Reinvocation: our own output comes back and must be left alone.
        self.uid += 1;
        let again = self
            .client
            .mutate(&review(
                &format!("corpus-{}", self.uid),
                operation,
                namespace,
                &patched,
                old,
            ))
            .await;
        assert_eq!(
            decode_response(&again).1,
            None,
            "{name}: second pass produced a patch"
        );

        self.mutated.insert(name.to_string());
        self.cases.push(Case {
            name: format!("{name} {operation}"),
            original: object.clone(),
            patch,
            patched: patched.clone(),
            validate,
        });
        patched
    }
}

/// What every patched Pod must look like, whatever it started as.
fn assert_pod_invariants(name: &str, pod: &Value) {
    let windows = pod["spec"]["os"]["name"] == "windows"
        || pod["spec"]["nodeSelector"]["kubernetes.io/os"] == "windows";
    let grace = pod["spec"]["terminationGracePeriodSeconds"]
        .as_i64()
        .unwrap_or(30);
    for c in pod["spec"]["containers"].as_array().into_iter().flatten() {
        let pre_stop = &c["lifecycle"]["preStop"];
        assert!(
            pre_stop.is_object(),
            "{name}: container {} has no preStop hook",
            c["name"]
        );
        if let Some(sleep) = pre_stop["sleep"]["seconds"].as_i64() {
            assert!(
                grace > sleep,
                "{name}: grace {grace} is not longer than the {sleep}s sleep"
            );
        }
    }
    if !windows {
        let options = pod["spec"]["dnsConfig"]["options"]
            .as_array()
            .expect("dnsConfig.options");
        let names: Vec<&str> = options.iter().filter_map(|o| o["name"].as_str()).collect();
        assert!(names.contains(&"ndots"), "{name}: no ndots");
        assert!(
            names.contains(&"single-request-reopen"),
            "{name}: no single-request-reopen"
        );
        let unique: BTreeSet<&&str> = names.iter().collect();
        assert_eq!(
            unique.len(),
            names.len(),
            "{name}: duplicate dns options {names:?}"
        );
        for o in options {
            if o["name"] == "ndots" {
                assert!(
                    o["value"].is_string(),
                    "{name}: ndots value must be a string"
                );
            }
        }
    }
}

fn assert_deployment_invariants(name: &str, d: &Value) {
    let strategy = &d["spec"]["strategy"];
    if strategy["type"] == "Recreate" {
        return;
    }
    let ru = &strategy["rollingUpdate"];
    assert_eq!(ru["maxUnavailable"], json!(0), "{name}: maxUnavailable");
    let surge = &ru["maxSurge"];
    assert!(
        !(surge == &json!(0) || surge == &json!("0%") || surge == &json!("0")),
        "{name}: maxSurge and maxUnavailable both 0"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_corpus_manifest_goes_through_mutate_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let docs = load_corpus(dir.path());
    assert!(
        docs.len() > 100,
        "corpus looks empty: {} documents",
        docs.len()
    );
    let server = TestServer::start().await;
    let mut run = Runner {
        client: server.client().await,
        cases: Vec::new(),
        uid: 0,
        mutated: BTreeSet::new(),
        allowed_untouched: 0,
        pipeline: Pipeline::new(&Config::default(), Arc::new(FixedClock(1_800_000_000))).unwrap(),
    };
    let (mut pods, mut deployments, mut templates, mut reviews) = (0, 0, 0, 0);

    let mut objects: Vec<(String, Value)> = Vec::new();
    for (name, doc) in docs {
        let fixture = name.starts_with("kubernetes__api__testdata__");
        match doc["kind"].as_str() {
            Some("AdmissionReview") => {
                reviews += 1;
                check_real_review(&mut run.client, &name, &doc).await;
            }
            // A bare AdmissionRequest (kubewarden's policy-evaluator fixtures).
            _ if doc["kind"].is_object() && doc.get("operation").is_some() => {
                reviews += 1;
                let mut request = doc.clone();
                if request.get("uid").is_none() {
                    request["uid"] = json!("bare-request-uid");
                }
                let wrapped = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request});
                check_real_review(&mut run.client, &name, &wrapped).await;
            }
            Some("List") => {
                for (i, item) in doc["items"].as_array().unwrap().iter().enumerate() {
                    objects.push((format!("{name}/items/{i}"), item.clone()));
                }
            }
            _ if fixture => {} // covered by the lossless test below
            _ => objects.push((name, doc)),
        }
    }

    for (name, object) in &objects {
        let kind = object["kind"].as_str().unwrap_or("");
        let patched = run.admit(name, "CREATE", object, None, true).await;
        match kind {
            "Pod" => {
                pods += 1;
                assert_pod_invariants(name, &patched);
            }
            "Deployment" => {
                deployments += 1;
                assert_deployment_invariants(name, &patched);
                // A rollout: the stored object is the patched one, the user
                // changes the image.
                let mut updated = patched.clone();
                updated["spec"]["template"]["spec"]["containers"][0]["image"] =
                    json!("example.com/rolled:2");
                let after = run
                    .admit(name, "UPDATE", &updated, Some(&patched), true)
                    .await;
                assert!(
                    after["metadata"]["annotations"][calmplane::annotations::ROLLOUTS].is_string(),
                    "{name}: template change not recorded"
                );
            }
            _ => {}
        }
        if WORKLOADS.contains(&kind) {
            let pod = pod_from_template(object).expect("workload has a template");
            let pod_name = format!("{name} template");
            let patched = run.admit(&pod_name, "CREATE", &pod, None, true).await;
            assert_pod_invariants(&pod_name, &patched);
            templates += 1;
        }
    }
    println!(
        "corpus: {} objects, {pods} pods, {deployments} deployments, {templates} pod templates, {reviews} real reviews; {} patched cases, {} untouched",
        objects.len(),
        run.cases.len(),
        run.allowed_untouched
    );
    assert!(
        pods >= 4 && deployments >= 30 && templates >= 45,
        "corpus coverage shrank"
    );
    run_checker(dir.path(), &run.cases);
    assert!(server.stop().await);
}

/// The real AdmissionReview payloads are answered as the apiserver expects.
async fn check_real_review(client: &mut TlsClient, name: &str, review: &Value) {
    let reply = client.mutate(review).await;
    let (response, patch) = decode_response(&reply);
    let request = &review["request"];
    assert_eq!(response["uid"], request["uid"], "{name}: uid");
    let handled = request["kind"]["kind"] == "Pod" || request["kind"]["kind"] == "Deployment";
    let mutable = matches!(request["operation"].as_str(), Some("CREATE" | "UPDATE"))
        && request["subResource"].as_str().unwrap_or("").is_empty();
    if handled && mutable {
        let patch = patch.unwrap_or_else(|| panic!("{name}: expected a patch"));
        let patched = apply_patch(&request["object"], &patch);
        if request["kind"]["kind"] == "Pod" {
            assert_pod_invariants(name, &patched);
        } else {
            assert_deployment_invariants(name, &patched);
        }
    } else {
        // The all-fields fixture: a CustomType object, a subresource and a
        // placeholder operation. Allowed, untouched.
        assert_eq!(patch, None, "{name}: unhandled request was patched");
    }
}

/// Every leaf of `v` as (JSON pointer, value).
fn leaves(v: &Value, prefix: String, out: &mut Vec<(String, Value)>) {
    match v {
        Value::Object(map) if !map.is_empty() => {
            for (k, child) in map {
                let seg = k.replace('~', "~0").replace('/', "~1");
                leaves(child, format!("{prefix}/{seg}"), out);
            }
        }
        Value::Array(items) if !items.is_empty() => {
            for (i, child) in items.iter().enumerate() {
                leaves(child, format!("{prefix}/{i}"), out);
            }
        }
        _ => out.push((prefix, v.clone())),
    }
}

fn invent_fields(object: &mut Value) {
    let invented = json!({"nested": [1, {"deep": true}], "with/slash~tilde": "kept"});
    object["xCalmplaneInvented"] = invented.clone();
    object["metadata"]["xInvented"] = invented.clone();
    object["spec"]["xInvented"] = invented.clone();
    let template = match object["kind"].as_str() {
        Some("CronJob") => object.pointer_mut("/spec/jobTemplate/spec/template"),
        _ => object.pointer_mut("/spec/template"),
    };
    if let Some(template) = template {
        template["metadata"]["xInvented"] = invented.clone();
        template["spec"]["containers"][0]["xInvented"] = invented.clone();
    }
    if object["kind"] == "Pod" {
        object["spec"]["containers"][0]["xInvented"] = invented;
    }
}

/// Nothing is lost: every leaf of the all-fields fixtures (plus fields invented
/// here, which no schema knows) survives the patch, except where a patch
/// operation deliberately replaced or removed it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_fields_fixtures_lose_nothing() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let fixtures = [
        "core.v1.Pod.json",
        "apps.v1.Deployment.json",
        "apps.v1.StatefulSet.json",
        "apps.v1.DaemonSet.json",
        "batch.v1.Job.json",
        "batch.v1.CronJob.json",
        "coordination.k8s.io.v1.Lease.json",
    ];
    let mut checked = 0;
    for fixture in fixtures {
        let path = corpus_file(&format!("kubernetes__api__testdata__HEAD__{fixture}"));
        let mut object: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        invent_fields(&mut object);
        let mut inputs = vec![(fixture.to_string(), object.clone())];
        if let Some(pod) = pod_from_template(&object) {
            inputs.push((format!("{fixture} template"), pod));
        }
        for (name, input) in inputs {
            let reply = client
                .mutate(&review("lossless", "CREATE", "ns", &input, None))
                .await;
            let (_, patch) = decode_response(&reply);
            let handled = matches!(input["kind"].as_str(), Some("Pod" | "Deployment"));
            let Some(patch) = patch else {
                assert!(!handled, "{name}: expected a patch");
                continue;
            };
            let patched = apply_patch(&input, &patch);
            let overwritten: Vec<String> = patch
                .as_array()
                .unwrap()
                .iter()
                .filter(|op| {
                    op["op"] != "add" || {
                        // `add` onto an existing member replaces it.
                        input.pointer(op["path"].as_str().unwrap()).is_some()
                    }
                })
                .map(|op| op["path"].as_str().unwrap().to_string())
                .collect();
            let mut before = Vec::new();
            leaves(&input, String::new(), &mut before);
            for (pointer, value) in &before {
                if overwritten
                    .iter()
                    .any(|p| pointer == p || pointer.starts_with(&format!("{p}/")))
                {
                    continue;
                }
                assert_eq!(
                    patched.pointer(pointer),
                    Some(value),
                    "{name}: {pointer} was lost or changed"
                );
                checked += 1;
            }
            let invented: &[&str] = if name.ends_with("template") {
                &[
                    "/metadata/xInvented/nested/1/deep",
                    "/spec/containers/0/xInvented/with~1slash~0tilde",
                ]
            } else {
                &[
                    "/xCalmplaneInvented/with~1slash~0tilde",
                    "/metadata/xInvented/nested/1/deep",
                    "/spec/xInvented/nested/0",
                ]
            };
            for pointer in invented {
                assert!(
                    patched.pointer(pointer).is_some(),
                    "{name}: invented field {pointer} lost"
                );
            }
            // The fixtures are deliberately exotic; the second pass must still be clean.
            let again = client
                .mutate(&review("lossless-2", "CREATE", "ns", &patched, None))
                .await;
            assert_eq!(
                decode_response(&again).1,
                None,
                "{name}: second pass produced a patch"
            );
        }
    }
    println!("lossless: {checked} leaves of the all-fields fixtures survived");
    assert!(checked > 1000, "suspiciously few leaves checked: {checked}");
    assert!(server.stop().await);
}

/// The YAML serialisation of the all-fields Pod decodes to the same object as
/// the JSON one and is patched the same way through `/preview`.
#[tokio::test]
async fn all_fields_pod_yaml_and_json_preview_alike() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let json_body = std::fs::read(corpus_file(
        "kubernetes__api__testdata__HEAD__core.v1.Pod.json",
    ))
    .unwrap();
    let yaml_body = std::fs::read(corpus_file(
        "kubernetes__api__testdata__HEAD__core.v1.Pod.yaml",
    ))
    .unwrap();
    let a = client
        .preview("/preview", "application/json", json_body)
        .await;
    let b = client
        .preview("/preview", "application/yaml", yaml_body)
        .await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(b.status, 200, "{}", b.text());
    assert_eq!(a.json()["patch"], b.json()["patch"]);
    assert!(!a.json()["patch"].as_array().unwrap().is_empty());
    assert!(server.stop().await);
}

/// The independent checker itself can fail: a patch that breaks the schema,
/// or one whose Python result differs from ours, is reported.
#[test]
fn pycheck_rejects_bad_patches() {
    let dir = tempfile::tempdir().unwrap();
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
                     "spec": {"containers": [{"name": "c", "image": "i"}]}});
    let bad_schema =
        json!([{"op": "add", "path": "/spec/terminationGracePeriodSeconds", "value": "ten"}]);
    let unknown_field = json!([{"op": "add", "path": "/spec/containers/0/bogus", "value": 1}]);
    for (label, patch) in [("wrong type", bad_schema), ("unknown field", unknown_field)] {
        let patched = apply_patch(&pod, &patch);
        let case = Case {
            name: label.into(),
            original: pod.clone(),
            patch,
            patched,
            validate: true,
        };
        let (ok, report) = checker(dir.path(), &[case]);
        assert!(!ok, "pycheck accepted a patch with a {label}: {report}");
    }
    let lying = Case {
        name: "mismatch".into(),
        original: pod.clone(),
        patch: json!([{"op": "add", "path": "/metadata/labels", "value": {"a": "b"}}]),
        patched: pod.clone(),
        validate: false,
    };
    let (ok, report) = checker(dir.path(), &[lying]);
    assert!(!ok && report.contains("differs"), "{report}");

    // An error the original already had: tolerated for upstream manifests
    // ("new"), refused for objects a test wrote itself ("all", PyChecks).
    let mut flawed = pod.clone();
    flawed["spec"]["bogus"] = json!(1);
    let patch = json!([{"op": "add", "path": "/metadata/labels", "value": {"a": "b"}}]);
    let patched = apply_patch(&flawed, &patch);
    let case = |validate: &str| {
        json!({"name": format!("inherited error, {validate}"), "original": flawed,
               "patch": patch, "patched": patched, "validate": validate})
    };
    let (ok, report) = pychecks::check_cases(dir.path(), &[case("new")]);
    assert!(ok, "an inherited error must not count as new: {report}");
    let (ok, report) = pychecks::check_cases(dir.path(), &[case("all")]);
    assert!(!ok && report.contains("bogus"), "{report}");
    // A type-only difference (1 vs 1.0) is a difference.
    let numeric = json!({"name": "1.0 is not 1", "original": pod, "validate": "none",
        "patch": [{"op": "add", "path": "/spec/terminationGracePeriodSeconds", "value": 1}],
        "patched": apply_patch(&pod, &json!([{"op": "add", "path": "/spec/terminationGracePeriodSeconds", "value": 1.0}]))});
    let (ok, report) = pychecks::check_cases(dir.path(), &[numeric]);
    assert!(!ok && report.contains("differs"), "{report}");
}
