//! Cluster installation: `manifests/`, `calmplane manifests`, `calmplane register`.
//!
//! No API server runs here, so the manifests are proven three ways:
//! * schema: every file, and every rendered overlay, passes
//!   `kubernetes-validate --strict` for Kubernetes 1.36. That tool has no
//!   schema for cert-manager's CRDs (it warns and passes), so Issuers and
//!   Certificates are checked structurally here instead, against the field
//!   lists of cert-manager's v1 API; anything else without a schema fails;
//! * rendering: both overlays build with `kubectl kustomize`, and so does
//!   the NetworkPolicy component's documented overlay;
//! * NetworkPolicy: which sources the component admits on which port of
//!   which pod, evaluated against the API's semantics written out here;
//! * content: the webhook's selectors are evaluated against real and
//!   hostile labels, the Deployment is checked against the advice calmplane
//!   enforces, and `calmplane preview` finds nothing to change in it.
//!
//! `calmplane register` talks to a `tower-test` mock in place of the apiserver.
//! The exported MutatingAdmissionPolicies are checked here for shape and
//! schema; that the apiserver runs them as the webhook would is proven by
//! the e2e suite.

use base64::Engine as _;
use calmplane_testkit::harness::python;
use calmplane_testkit::tools::{find, read_docs, required, run_ok, str_list, yaml_docs};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

mod admission_policies;
mod image;
mod networkpolicy;
mod register;
mod render;
mod safety;
mod validate;
#[allow(unused_imports)]
use image::*;
#[allow(unused_imports)]
use networkpolicy::*;
#[allow(unused_imports)]
use register::*;
#[allow(unused_imports)]
use render::*;
#[allow(unused_imports)]
use safety::*;
#[allow(unused_imports)]
use validate::*;

use calmplane_testkit::pychecks::K8S_VERSION;
const NAMESPACE: &str = "calmplane";
const SERVICE: &str = "calmplane";
/// The label every namespace carries with its own name.
const NAME_LABEL: &str = "kubernetes.io/metadata.name";
const OPT_IN_LABEL: &str = "calmplane.dev/enabled";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn manifests_dir() -> PathBuf {
    repo().join("manifests")
}

fn calmplane() -> Command {
    Command::new(env!("CARGO_BIN_EXE_calmplane"))
}

/// kubectl from PATH; `None` (after saying why) where it is absent, except in
/// CI, where rendering must not be silently skipped.
fn kubectl(test: &str) -> Option<PathBuf> {
    required("kubectl", test, "install it to render the overlays")
}

fn run(cmd: &mut Command) -> Output {
    run_ok(cmd)
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read_dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml")
            ) {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn is_kustomization(path: &Path) -> bool {
    matches!(
        path.file_name().and_then(|n| n.to_str()),
        Some("kustomization.yaml" | "kustomization.yml" | "Kustomization")
    )
}

fn only<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = docs.iter().filter(|d| d["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "expected exactly one {kind}");
    found[0]
}

fn labels(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().expect("label value").to_string()))
                .collect()
        })
        .unwrap_or_default()
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Kubernetes label selector semantics (metav1.LabelSelector), written out
/// here rather than taken from the code under test.
fn selector_matches(selector: &Value, labels: &BTreeMap<String, String>) -> bool {
    if selector.is_null() {
        return true;
    }
    let match_labels = selector["matchLabels"].as_object();
    for (k, v) in match_labels.into_iter().flatten() {
        if labels.get(k).map(String::as_str) != v.as_str() {
            return false;
        }
    }
    for e in selector["matchExpressions"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let key = e["key"].as_str().expect("expression key");
        let value = labels.get(key);
        let values = || {
            e["values"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
        };
        let ok = match e["operator"].as_str().expect("operator") {
            "In" => value.is_some_and(|v| values().contains(&v.as_str())),
            "NotIn" => value.is_none_or(|v| !values().contains(&v.as_str())),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            other => panic!("unknown selector operator {other}"),
        };
        if !ok {
            return false;
        }
    }
    true
}

/// The labels a namespace has in a cluster: its own plus the name label the
/// apiserver always sets.
fn namespace_labels(name: &str, own: &[(&str, &str)]) -> BTreeMap<String, String> {
    let mut l = map(own);
    l.insert(NAME_LABEL.to_string(), name.to_string());
    l
}
