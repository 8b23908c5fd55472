//! The Helm chart, `charts/calmplane`, rendered by the helm that `make helm`
//! builds from pinned modules (e2e/helm/build.sh; `CALMPLANE_HELM` names it).
//!
//! No cluster runs here (e2e/tests/helm.rs installs the chart into a real
//! one); what is proven here is what `helm lint` and `helm template` show:
//! * `helm lint --strict` passes, with the defaults and with every value on;
//! * the defaults render what `kubectl kustomize manifests/overlays/static`
//!   renders, object by object, but for Helm's labels and annotations and
//!   the certificate material ([`kustomize`]);
//! * every render passes `kubernetes-validate --strict` (tests/install's
//!   validate.rs, included by path) and the manifest checks: the webhook
//!   configuration is the base's with only narrowing additions, the pods are
//!   hardened as the base's are, and the only RBAC is the lease monitor's
//!   read-only access to Leases ([`checks`]);
//! * a new release's webhook configuration is created by a hook that runs
//!   only after calmplane answers through its Service, and uninstall deletes
//!   it with the release ([`ordering`]); the hook scripts and the
//!   self-signed certificate work against a real calmplane ([`certs`]);
//! * the MutatingAdmissionPolicies equal `calmplane export
//!   mutating-admission-policy` for the same policy file
//!   ([`admission_policies`]);
//! * values.yaml, values.schema.json and README.md agree ([`values`]).

use calmplane_testkit::harness::python;
use calmplane_testkit::pychecks::K8S_VERSION;
use calmplane_testkit::tools::{find, key, read_docs, required, run_ok, str_list, yaml_docs};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

mod admission_policies;
mod certs;
mod checks;
mod kustomize;
mod ordering;
mod values;

// tests/install's own helpers, shared by path rather than copied: both
// files hold no tests. `allow(dead_code)`: this target uses only some of
// what they offer.
#[allow(dead_code)]
#[path = "../install/render.rs"]
mod render;
#[allow(dead_code)]
#[path = "../install/validate.rs"]
mod validate;

/// The release every render uses: the name and namespace the kustomize base
/// writes into its objects.
const RELEASE: &str = "calmplane";
const NAMESPACE: &str = "calmplane";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn chart_dir() -> PathBuf {
    repo().join("charts/calmplane")
}

fn manifests_dir() -> PathBuf {
    repo().join("manifests")
}

fn calmplane() -> Command {
    Command::new(env!("CARGO_BIN_EXE_calmplane"))
}

/// The helm to run: `CALMPLANE_HELM` (`make test` sets it), else the one
/// `make helm` built into e2e/bin, else helm from PATH; `None` (after saying
/// why) where there is none, except in CI.
fn helm(test: &str) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("CALMPLANE_HELM") {
        return Some(PathBuf::from(path));
    }
    let built = repo().join("e2e/bin/helm");
    if built.is_file() {
        return Some(built);
    }
    required(
        "helm",
        test,
        "build it with `make helm` (e2e/helm/build.sh)",
    )
}

/// kubectl from PATH, for `kubectl kustomize`; as [`helm`].
fn kubectl(test: &str) -> Option<PathBuf> {
    required("kubectl", test, "install it to render the overlays")
}

fn run(cmd: &mut Command) -> Output {
    run_ok(cmd)
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

/// What `helm template` printed, split as Helm splits it at install: the
/// release's own objects, and its hooks.
struct Render {
    objects: Vec<Value>,
    hooks: Vec<Value>,
}

impl Render {
    fn all(&self) -> impl Iterator<Item = &Value> {
        self.objects.iter().chain(&self.hooks)
    }

    /// The hooks that run on `event` (`post-install`, `test`...).
    fn hooks_on(&self, event: &str) -> Vec<&Value> {
        self.hooks
            .iter()
            .filter(|h| hook_events(h).contains(&event.to_string()))
            .collect()
    }
}

fn hook_events(doc: &Value) -> Vec<String> {
    doc["metadata"]["annotations"]["helm.sh/hook"]
        .as_str()
        .map(|s| s.split(',').map(|e| e.trim().to_string()).collect())
        .unwrap_or_default()
}

fn hook_weight(doc: &Value) -> i64 {
    doc["metadata"]["annotations"]["helm.sh/hook-weight"]
        .as_str()
        .map_or(0, |w| w.parse().expect("hook weight"))
}

/// `helm template` of the chart for release [`RELEASE`] in `namespace`,
/// with `values` (written to a file, passed with `-f`) and `args`.
fn template_in(helm: &Path, namespace: &str, values: &Value, args: &[&str]) -> Render {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("values.json");
    std::fs::write(&file, serde_json::to_vec_pretty(values).expect("json")).expect("write");
    let out = run(Command::new(helm)
        .args(["template", RELEASE])
        .arg(chart_dir())
        .args(["--namespace", namespace, "-f"])
        .arg(&file)
        .args(args));
    let text = String::from_utf8(out.stdout).expect("UTF-8");
    let (hooks, objects) = yaml_docs(&text)
        .into_iter()
        .partition(|d| !hook_events(d).is_empty());
    Render { objects, hooks }
}

fn template(helm: &Path, values: &Value, args: &[&str]) -> Render {
    template_in(helm, NAMESPACE, values, args)
}

/// `helm template` that must fail; its stderr.
fn template_fails(helm: &Path, values: &Value) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("values.json");
    std::fs::write(&file, serde_json::to_vec_pretty(values).expect("json")).expect("write");
    let out = Command::new(helm)
        .args(["template", RELEASE])
        .arg(chart_dir())
        .args(["--namespace", NAMESPACE, "-f"])
        .arg(&file)
        .output()
        .expect("run helm");
    assert!(
        !out.status.success(),
        "helm template accepted {values}:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Every value switched on that can be: each optional object rendered, the
/// selectors and conditions extended, cert-manager with the chart's CA.
/// (`failurePolicy: Fail` and `webhook.url` are other renders: a Fail
/// webhook is not one the safety checks accept, and with a URL the
/// Deployment is left out.)
fn everything_on() -> Value {
    json!({
        "image": {"digest": format!("sha256:{}", "a".repeat(64))},
        "imagePullSecrets": [{"name": "regcred"}],
        "replicas": 3,
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/os", "operator": "In", "values": ["linux"]}]}]}}},
        "nodeSelector": {"kubernetes.io/arch": "amd64"},
        "tolerations": [{"key": "CriticalAddonsOnly", "operator": "Exists"}],
        "podAnnotations": {"example.com/team": "platform"},
        "hostNetwork": true,
        "port": 10443,
        "metricsPort": 10090,
        "webhook": {
            "timeoutSeconds": 5,
            "namespaceSelector": {
                "matchLabels": {"example.com/tier": "apps"},
                "matchExpressions": [{"key": "example.com/legacy", "operator": "DoesNotExist"}]
            },
            "excludedNamespaces": ["monitoring", "cert-manager"],
            "matchConditions": {
                "pods": [{"name": "not-a-job", "expression": "!has(object.metadata.labels) || !('job-name' in object.metadata.labels)"}],
                "deployments": [{"name": "not-paused", "expression": "!has(object.spec.paused) || !object.spec.paused"}]
            }
        },
        "policy": {"dns": {"ndots": 3}, "prestop": {"mode": "exec", "sleepSeconds": 7}},
        "certificates": {"mode": "certManager"},
        "leaseMonitor": {"enabled": true},
        "serviceMonitor": {"enabled": true, "labels": {"release": "prometheus"}},
        "prometheusRule": {"enabled": true, "labels": {"release": "prometheus"}},
        "grafanaDashboard": {"enabled": true},
        "networkPolicy": {"enabled": true, "apiserver": [{"ipBlock": {"cidr": "10.0.0.10/32"}}]},
        "admissionPolicies": {"enabled": true},
    })
}

/// Helm's own labels, which the kustomize manifests do not carry.
const HELM_LABELS: &[&str] = &[
    "helm.sh/chart",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
];

/// Whether an annotation is Helm's (hooks, resource policy, ownership).
fn is_helm_annotation(key: &str) -> bool {
    key.starts_with("helm.sh/") || key.starts_with("meta.helm.sh/")
}

fn labels_of(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().expect("label value").to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// Kubernetes label selector semantics (metav1.LabelSelector), as
/// tests/install writes them out.
fn selector_matches(selector: &Value, labels: &BTreeMap<String, String>) -> bool {
    for (k, v) in selector["matchLabels"].as_object().into_iter().flatten() {
        if labels.get(k).map(String::as_str) != v.as_str() {
            return false;
        }
    }
    selector["matchExpressions"]
        .as_array()
        .into_iter()
        .flatten()
        .all(|e| {
            let value = labels.get(e["key"].as_str().expect("key"));
            let values: BTreeSet<&str> = e["values"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            match e["operator"].as_str().expect("operator") {
                "In" => value.is_some_and(|v| values.contains(v.as_str())),
                "NotIn" => value.is_none_or(|v| !values.contains(v.as_str())),
                "Exists" => value.is_some(),
                "DoesNotExist" => value.is_none(),
                other => panic!("unknown operator {other}"),
            }
        })
}

#[test]
fn helm_lint_strict_passes_with_the_defaults_and_with_every_value_on() {
    let Some(helm) = helm("helm_lint_strict_passes_with_the_defaults_and_with_every_value_on")
    else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let on = dir.path().join("on.json");
    std::fs::write(&on, everything_on().to_string()).expect("write");
    let url = dir.path().join("url.json");
    std::fs::write(
        &url,
        json!({"webhook": {"url": "https://192.0.2.7:8443", "failurePolicy": {"pods": "Fail", "deployments": "Fail"}}})
            .to_string(),
    )
    .expect("write");
    for values in [None, Some(&on), Some(&url)] {
        let mut cmd = Command::new(&helm);
        cmd.args(["lint", "--strict", "--namespace", NAMESPACE])
            .arg(chart_dir());
        if let Some(file) = values {
            cmd.arg("-f").arg(file);
        }
        let out = run(&mut cmd);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("0 chart(s) failed"), "{text}");
        // --strict fails on warnings; say so if Helm ever prints one anyway.
        assert!(!text.contains("[WARNING]"), "{text}");
    }
}
