//! The HTTP contract of issue #2, over real TLS: `/mutate`, `/preview`,
//! `/healthz`, `/readyz`, the metrics port and `calmplane preview`.

mod cli_preview;
mod health;
mod mutate;
mod panic;
mod preview;

use base64::Engine as _;
use calmplane::annotations;
use calmplane::patch::Mutation;
use calmplane::pipeline::{FixedClock, Pipeline};
use calmplane::policy::{dns::Dns, prestop::Prestop, Context, Definition, Kind, Policy, Reads};
use calmplane_testkit::harness::*;
use calmplane_testkit::prom;
use calmplane_testkit::pychecks::PyChecks;
use kube::core::admission::Operation;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MIB: usize = 1024 * 1024;

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
