//! Real manifests through kubectl: the upstream corpus is accepted by
//! `kubectl create` with calmplane's patches, and server-side applies of the
//! same files keep what calmplane set (c3); `kubectl apply --dry-run=server`
//! and `kubectl diff` show calmplane's changes without storing them (c4).

use crate::deployments::deployment_object;
use crate::{assert_pod_mutated, pod_object, Env};
use anyhow::{ensure, Context as _, Result};
use calmplane::annotations::{enabled, ENABLED};
use calmplane_e2e::{run, run_with_input};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// The corpus files this suite creates (copies in tests/fixtures/upstream/,
/// see SOURCES.md there).
pub(crate) const CORPUS: &[&str] = &[
    "GoogleCloudPlatform__microservices-demo__release__kubernetes-manifests.yaml",
    "elastic__beats__deploy__kubernetes__filebeat-kubernetes.yaml",
    "istio__istio__samples__bookinfo__platform__kube__bookinfo.yaml",
    "kubernetes-sigs__sig-windows-tools__hostprocess__calico__kube-proxy__kube-proxy.yml",
    "kubernetes-sigs__sig-windows-tools__hostprocess__csi-proxy__csi-proxy.yaml",
    "kubernetes__examples___archived__javaweb-tomcat-sidecar__javaweb.yaml",
    "kubernetes__examples___archived__newrelic__newrelic-daemonset.yaml",
    "kubernetes__examples___archived__openshift-origin__etcd-controller.yaml",
    "kubernetes__examples___archived__storage__minio__minio-standalone-deployment.yaml",
    "kubernetes__examples__databases__cassandra__cassandra-statefulset.yaml",
    "kubernetes__ingress-nginx__deploy__static__provider__cloud__deploy.yaml",
    "kubernetes__website__content__en__examples__application__job__job-sidecar.yaml",
    "kubernetes__website__content__en__examples__application__zookeeper__zookeeper.yaml",
    "kubernetes__website__content__en__examples__controllers__job-pod-failure-policy-example.yaml",
    "kubernetes__website__content__en__examples__pods__lifecycle-events.yaml",
    "kubernetes__website__content__en__examples__service__networking__custom-dns.yaml",
    "linkerd__linkerd2__cli__cmd__testdata__inject_emojivoto_deployment_hostNetwork_true.input.yml",
    "linkerd__linkerd2__cli__cmd__testdata__inject_emojivoto_list.input.yml",
    "linkerd__linkerd2__cli__cmd__testdata__inject_emojivoto_statefulset.input.yml",
    "linkerd__linkerd2__cli__cmd__testdata__inject_tap_deployment.input.yml",
    "open-policy-agent__gatekeeper__test__expansion__cronjob.yaml",
    "prometheus-operator__kube-prometheus__manifests__kubeStateMetrics-deployment.yaml",
    "prometheus-operator__kube-prometheus__manifests__nodeExporter-daemonset.yaml",
    "prometheus-operator__kube-prometheus__manifests__prometheusAdapter-deployment.yaml",
    "prometheus-operator__kube-prometheus__manifests__prometheusOperator-deployment.yaml",
];

pub(crate) fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/upstream")
        .join(name)
}

const CLUSTER_SCOPED: &[&str] = &[
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PriorityClass",
    "StorageClass",
    "PersistentVolume",
];

/// The file's objects as kubectl reads them, moved into `ns`.
pub(crate) fn corpus_objects(env: &Env, file: &Path, ns: &str) -> Result<Value> {
    let text = run(env
        .kubectl()
        .args(["create", "--dry-run=client", "-o", "json", "-f"])
        .arg(file))?;
    let mut items = objects(&text)?;
    for item in &mut items {
        // Some files are dumps of live objects: a resourceVersion would make
        // every apply a stale precondition, and a uid name another object.
        if let Some(meta) = item["metadata"].as_object_mut() {
            meta.remove("resourceVersion");
            meta.remove("uid");
        }
        if !CLUSTER_SCOPED.contains(&item["kind"].as_str().unwrap_or_default()) {
            item["metadata"]["namespace"] = json!(ns);
        }
    }
    Ok(json!({"apiVersion": "v1", "kind": "List", "items": items}))
}

/// The one corpus file whose forced server-side apply the apiserver refuses.
/// Its Pod brings its own `dnsConfig.options`; calmplane appends to that list,
/// and the list is atomic for server-side apply, so applying the file's list
/// again means replacing calmplane's, which a Pod's immutable spec forbids.
/// Without `--force-conflicts` (the re-apply) it is a conflict with
/// `kubectl create` on that list.
const APPLY_REFUSED: (&str, [&str; 2]) = (
    "kubernetes__website__content__en__examples__service__networking__custom-dns.yaml",
    [
        "pod updates may not change fields",
        "conflict with \"kubectl-create\" using v1: .spec.dnsConfig.options",
    ],
);

/// kubectl's `-o json` output: one object, a List, or several of either
/// one after another.
pub(crate) fn objects(text: &str) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    for doc in serde_json::Deserializer::from_str(text).into_iter::<Value>() {
        let doc = doc?;
        match doc["kind"].as_str() {
            Some("List") => out.extend(doc["items"].as_array().cloned().unwrap_or_default()),
            _ => out.push(doc),
        }
    }
    Ok(out)
}

/// The fields calmplane sets, per stored object, and its resourceVersion.
fn mutated_fields(list: &Value) -> Vec<(String, Value, Value)> {
    list["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter(|o| matches!(o["kind"].as_str(), Some("Pod" | "Deployment")))
                .map(|o| {
                    let key = format!("{}/{}", o["kind"].as_str().unwrap_or_default(), o["metadata"]["name"].as_str().unwrap_or_default());
                    let fields = json!({
                        "dns": o.pointer("/spec/dnsConfig"),
                        "containers": o.pointer("/spec/containers").map(|cs| cs.as_array().map(|cs| cs.iter().map(|c| c.get("lifecycle").cloned()).collect::<Vec<_>>())),
                        "grace": o.pointer("/spec/terminationGracePeriodSeconds"),
                        "strategy": o.pointer("/spec/strategy"),
                        "generation": o.pointer("/metadata/generation"),
                    });
                    (key, fields, o["metadata"]["resourceVersion"].clone())
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Every corpus file the suite uses is accepted by `kubectl create` into an
/// opted-in namespace, with calmplane's patches applied by the apiserver
/// itself; a server-side apply of the same files, and a second one, leave
/// every field calmplane set (and the Deployments' generation) as it was.
pub(crate) async fn c3_corpus_manifests_accepted(env: &Env) -> Result<()> {
    let mut mutated = 0;
    let mut failures = Vec::new();
    for (i, name) in CORPUS.iter().enumerate() {
        let one = async {
            // A namespace per file: files reuse names such as `web`.
            let ns = env
                .namespace(&format!("c3-{i}"), &[(ENABLED, enabled::WEBHOOK)])
                .await?;
            let list = corpus_objects(env, &fixture(name), &ns)?;
            let input = serde_json::to_vec(&list)?;
            let created = json!({"items": objects(&run_with_input(
            env.kubectl().args(["create", "-o", "json", "-f", "-"]),
            &input,
        ).with_context(|| format!("kubectl create {name}"))?)?});
            let before = mutated_fields(&created);
            for (key, fields, _) in &before {
                if key.starts_with("Pod/") {
                    ensure!(
                        fields["dns"].is_object(),
                        "{name}: {key} not mutated: {fields}"
                    );
                }
                if key.starts_with("Deployment/") && fields["strategy"]["type"] != "Recreate" {
                    ensure!(
                        fields["strategy"]["rollingUpdate"]["maxUnavailable"] == 0,
                        "{name}: {key} not mutated: {fields}"
                    );
                }
                mutated += 1;
            }
            let mut previous: Vec<(String, Value, Value)> = Vec::new();
            for round in ["apply", "re-apply"] {
                // The first apply takes over the fields `kubectl create` owns
                // (some, like maxUnavailable, with calmplane's value) from the
                // other manager; the second must change nothing at all.
                let mut cmd = env.kubectl();
                cmd.args([
                    "apply",
                    "--server-side",
                    "--field-manager=e2e-apply",
                    "-o",
                    "json",
                    "-f",
                    "-",
                ]);
                if round == "apply" {
                    cmd.arg("--force-conflicts");
                }
                let output = match run_with_input(&mut cmd, &input) {
                    Err(e) if name == &APPLY_REFUSED.0 => {
                        let e = format!("{e:#}");
                        ensure!(APPLY_REFUSED.1.iter().any(|m| e.contains(m)), "{name}: {e}");
                        // Refused, so nothing flipped: the stored objects are as created.
                        run_with_input(
                            env.kubectl().args(["get", "-o", "json", "-f", "-"]),
                            &input,
                        )?
                    }
                    other => other.with_context(|| format!("{round} {name}"))?,
                };
                let applied = json!({"items": objects(&output)?});
                let after = mutated_fields(&applied);
                ensure!(
                    after.len() == before.len(),
                    "{round} {name}: {} objects, created {}",
                    after.len(),
                    before.len()
                );
                for ((key, was, _), (_, now, _)) in before.iter().zip(&after) {
                    ensure!(
                        was == now,
                        "{round} {name}: {key} changed:\n{was}\n->\n{now}"
                    );
                }
                if round == "re-apply" {
                    // Same manager, same file: the apiserver must not store
                    // anything. Only Pods are compared by resourceVersion:
                    // the Deployment controller writes status meanwhile, and
                    // a Deployment's spec is covered by its generation.
                    for ((key, _, rv_was), (_, _, rv_now)) in previous.iter().zip(&after) {
                        ensure!(
                            rv_was == rv_now || !key.starts_with("Pod/"),
                            "{round} {name}: {key} was written again"
                        );
                    }
                }
                previous = after;
            }
            anyhow::Ok(())
        }
        .await;
        if let Err(e) = one {
            failures.push(format!("{name}: {e:#}"));
        }
    }
    ensure!(
        failures.is_empty(),
        "{} of {} files failed:\n{}",
        failures.len(),
        CORPUS.len(),
        failures.join("\n")
    );
    ensure!(mutated > 0, "no Pod or Deployment in the corpus files");
    eprintln!(
        "c3: {} files created and applied twice; {mutated} Pods and Deployments stored mutated",
        CORPUS.len()
    );
    Ok(())
}

/// `kubectl apply --dry-run=server` returns calmplane's changes without
/// storing anything, and `kubectl diff` shows them.
pub(crate) async fn c4_dry_run_and_diff(env: &Env) -> Result<()> {
    let ns = env.namespace("c4", &[(ENABLED, enabled::WEBHOOK)]).await?;
    let dir = tempfile::tempdir()?;
    let pod_file = dir.path().join("pod.json");
    std::fs::write(&pod_file, serde_json::to_vec(&pod_object("dry", &[]))?)?;
    let out: Value = serde_json::from_str(&run(env
        .kubectl()
        .args(["apply", "--dry-run=server", "-o", "json", "-n", &ns, "-f"])
        .arg(&pod_file))?)?;
    assert_pod_mutated(&out, &format!("metadata.namespace={ns}"))?;
    let api: Api<Pod> = Api::namespaced(env.client(), &ns);
    ensure!(
        api.get_opt("dry").await?.is_none(),
        "the dry run stored the Pod"
    );

    let deploy_file = dir.path().join("deployment.json");
    let rolling =
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 1}});
    std::fs::write(
        &deploy_file,
        serde_json::to_vec(&deployment_object("diffed", rolling, 0)?)?,
    )?;
    let out = env
        .kubectl()
        .args(["diff", "-n", &ns, "-f"])
        .arg(&deploy_file)
        .output()?;
    // kubectl diff: exit 1 means "differences found".
    ensure!(
        out.status.code() == Some(1),
        "kubectl diff: {:?} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let diff = String::from_utf8(out.stdout)?;
    ensure!(
        diff.lines().any(|l| l.trim() == "+      maxUnavailable: 0"),
        "maxUnavailable: 0 not in the diff:\n{diff}"
    );
    ensure!(
        diff.contains("maxSurge: 1"),
        "maxSurge missing from the diff:\n{diff}"
    );

    let out = env
        .kubectl()
        .args(["diff", "-n", &ns, "-f"])
        .arg(&pod_file)
        .output()?;
    ensure!(
        out.status.code() == Some(1),
        "kubectl diff pod: {:?}",
        out.status
    );
    let diff = String::from_utf8(out.stdout)?;
    for needle in [
        "ndots",
        "single-request-reopen",
        "preStop",
        "metadata.namespace=c4",
    ] {
        ensure!(diff.contains(needle), "{needle} not in the diff:\n{diff}");
    }
    Ok(())
}
