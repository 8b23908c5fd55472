//! AdmissionReview request bodies for the benches and the load test, built
//! from the upstream fixtures in `tests/fixtures/upstream` ([`crate::corpus`]).
//!
//! Shared by `benches/pipeline.rs`, `benches/icount.rs` and
//! `load/fixture.rs`, so all three measure the same bytes.
//!
//! | name                | what                                                          |
//! |---------------------|---------------------------------------------------------------|
//! | `small-pod`         | one container, nothing else                                   |
//! | `typical-pod`       | the microservices-demo `frontend` Deployment's template as a Pod |
//! | `all-fields-pod`    | kubernetes/api `testdata/HEAD/core.v1.Pod.json` (every field) |
//! | `deployment-update` | kubernetes/api `apps.v1.Deployment.json`, UPDATE, template changed |
//! | `lease-pod`         | `typical-pod` plus lease selectors in annotation, env and args |

use crate::corpus::corpus_dir;
use serde_json::{json, Value};

// The same AdmissionReview builder the integration tests use.
pub use crate::review::review;

/// Name of the fixture with one container and nothing else.
pub const SMALL_POD: &str = "small-pod";
/// Name of the microservices-demo `frontend` template as a Pod.
pub const TYPICAL_POD: &str = "typical-pod";
/// Name of the kubernetes/api every-field Pod.
pub const ALL_FIELDS_POD: &str = "all-fields-pod";
/// Name of the kubernetes/api Deployment UPDATE with a changed template.
pub const DEPLOYMENT_UPDATE: &str = "deployment-update";
/// Name of `typical-pod` with lease selectors in annotation, env and args.
pub const LEASE_POD: &str = "lease-pod";

/// Every fixture, in report order.
pub const NAMES: [&str; 5] = [
    SMALL_POD,
    TYPICAL_POD,
    ALL_FIELDS_POD,
    DEPLOYMENT_UPDATE,
    LEASE_POD,
];

/// One bench fixture: a request body and what it must exercise.
pub struct Fixture {
    /// One of [`NAMES`]: the bench id's suffix.
    pub name: &'static str,
    /// The AdmissionReview request, serialised compactly as the apiserver does.
    pub body: Vec<u8>,
    /// Policies that must show up in the response's audit annotation: a
    /// fixture that silently stops exercising its path is a broken bench.
    pub expect_policies: &'static [&'static str],
}

fn read(name: &str) -> String {
    let path = corpus_dir().join(name);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("fixture source {}: {e}", path.display()))
}

fn json_file(name: &str) -> Value {
    serde_json::from_str(&read(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// The first document of `kind`/`name` in a multi-document YAML file.
fn yaml_doc(file: &str, kind: &str, name: &str) -> Value {
    let text = read(file);
    let docs = calmplane::yaml::documents(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
    for value in docs {
        if value["kind"] == kind && value["metadata"]["name"] == name {
            return value;
        }
    }
    panic!("{file}: no {kind} named {name}");
}

/// The Pod the ReplicaSet controller would create from a Deployment's template.
pub fn pod_from_template(deployment: &Value, namespace: &str) -> Value {
    let mut pod =
        calmplane::preview::pod_from_template(deployment).expect("a Deployment has a template");
    let name = deployment["metadata"]["name"].as_str().unwrap_or("app");
    pod["metadata"]["name"] = json!(format!("{name}-7d9f8b6c5-x2x4q"));
    pod["metadata"]["generateName"] = json!(format!("{name}-7d9f8b6c5-"));
    pod["metadata"]["namespace"] = json!(namespace);
    pod
}

fn small_pod() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]}
    })
}

fn frontend() -> Value {
    yaml_doc(
        "GoogleCloudPlatform__microservices-demo__release__kubernetes-manifests.yaml",
        "Deployment",
        "frontend",
    )
}

fn typical_pod() -> Value {
    pod_from_template(&frontend(), "default")
}

fn lease_pod() -> Value {
    let mut pod = typical_pod();
    let name = pod["metadata"]["name"].as_str().unwrap().to_string();
    let selector = format!("metadata.name={name}");
    pod["metadata"]["annotations"] = json!({ "calmplane.dev/lease-selector": selector });
    let container = &mut pod["spec"]["containers"][0];
    container["env"]
        .as_array_mut()
        .expect("frontend has env")
        .push(json!({"name": "LEASE_SELECTOR", "value": selector}));
    container["args"] = json!([
        "--lease-selector=spec.holderIdentity!=none,metadata.name==".to_string() + &name,
        "--lease-selector",
        selector,
    ]);
    pod
}

fn deployment_update() -> (Value, Value) {
    let new = json_file("kubernetes__api__testdata__HEAD__apps.v1.Deployment.json");
    let mut old = new.clone();
    // The template changed: a new image, as in a rollout.
    old["spec"]["template"]["spec"]["containers"][0]["image"] = json!("imageValue:previous");
    (new, old)
}

/// The request body of fixture `name`.
pub fn body(name: &str) -> Vec<u8> {
    let review = match name {
        SMALL_POD => review("0f1f2b4e-small", "CREATE", "default", &small_pod(), None),
        TYPICAL_POD => review(
            "0f1f2b4e-typical",
            "CREATE",
            "default",
            &typical_pod(),
            None,
        ),
        ALL_FIELDS_POD => {
            let pod = json_file("kubernetes__api__testdata__HEAD__core.v1.Pod.json");
            review("0f1f2b4e-all", "CREATE", "namespaceValue", &pod, None)
        }
        DEPLOYMENT_UPDATE => {
            let (new, old) = deployment_update();
            review(
                "0f1f2b4e-deploy",
                "UPDATE",
                "namespaceValue",
                &new,
                Some(&old),
            )
        }
        LEASE_POD => review("0f1f2b4e-lease", "CREATE", "default", &lease_pod(), None),
        other => panic!("unknown fixture {other:?}; known: {NAMES:?}"),
    };
    serde_json::to_vec(&review).expect("review serialises")
}

fn expected(name: &str) -> &'static [&'static str] {
    match name {
        SMALL_POD | TYPICAL_POD => &["dns", "prestop"],
        // It already has a preStop hook and dnsConfig options (no ndots).
        ALL_FIELDS_POD => &["dns"],
        DEPLOYMENT_UPDATE => &["rollout-history"],
        LEASE_POD => &["lease", "dns", "prestop"],
        _ => &[],
    }
}

/// Fixture `name` (one of [`NAMES`]); panics on an unknown name.
pub fn fixture(name: &str) -> Fixture {
    let name = NAMES
        .iter()
        .copied()
        .find(|n| *n == name)
        .unwrap_or_else(|| panic!("unknown fixture {name:?}; known: {NAMES:?}"));
    Fixture {
        name,
        body: body(name),
        expect_policies: expected(name),
    }
}

/// Every fixture, in report order.
pub fn all() -> Vec<Fixture> {
    NAMES.iter().map(|n| fixture(n)).collect()
}

/// Panic unless `response` (an AdmissionReview response body) names every
/// policy the fixture is meant to exercise.
pub fn check_response(fixture: &Fixture, response: &str) {
    let v: Value = serde_json::from_str(response).expect("response is JSON");
    let applied = v["response"]["auditAnnotations"]["policies"]
        .as_str()
        .unwrap_or("");
    for p in fixture.expect_policies {
        assert!(
            applied.split(',').any(|a| a == *p),
            "fixture {} no longer exercises policy {p}: applied {applied:?}",
            fixture.name
        );
    }
}

/// The fixed work of the floor: parse the request to a `Value` and write it back.
pub fn floor(body: &[u8]) -> String {
    let value: Value = serde_json::from_slice(body).expect("fixture is JSON");
    serde_json::to_string(&value).expect("serialises")
}

/// Set `CALMPLANE_BENCH_PLANT_SLOWDOWN=1` to add, to every pipeline run, a
/// parse of the whole request into a `serde_json::Value` and a pretty-printed
/// copy of its object: a planted regression (the one the view removed:
/// materialising what no policy reads) that shows the gate can fail. Never
/// set in CI.
pub fn planted_slowdown() -> bool {
    static PLANT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PLANT.get_or_init(|| {
        std::env::var("CALMPLANE_BENCH_PLANT_SLOWDOWN").is_ok_and(|v| !v.is_empty() && v != "0")
    })
}

/// The measured path: request bytes to response bytes, as `/mutate` does it
/// minus HTTP (`review::parse` + `review::admit`, which calls
/// `Pipeline::run` and `review::response_body`).
pub fn pipeline(pipeline: &calmplane::pipeline::Pipeline, body: &[u8]) -> String {
    let request = calmplane::review::parse(body, pipeline.reads()).expect("fixture parses");
    let admission = calmplane::review::admit(pipeline, request);
    if planted_slowdown() {
        let whole: Value = serde_json::from_slice(body).expect("fixture is JSON");
        let object = &whole["request"]["object"];
        std::hint::black_box(serde_json::to_string_pretty(object).expect("serialises"));
    }
    admission.response_body()
}
