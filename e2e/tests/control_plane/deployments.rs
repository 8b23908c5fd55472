//! Deployments through the real Deployment and ReplicaSet controllers (c2):
//! what calmplane stores for each version, the rollout history it keeps in
//! the object, and the Pods the controller creates from its templates.

use crate::{annotation, assert_pod_mutated, Env, IMAGE};
use anyhow::{ensure, Context as _, Result};
use calmplane::annotations::{enabled, ENABLED, LEASE_SCOPE, LEASE_SELECTOR, ROLLOUTS};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::Api;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

pub(crate) fn deployment_object(name: &str, strategy: Value, version: u32) -> Result<Deployment> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": name}},
            "strategy": strategy,
            "template": {
                "metadata": {"labels": {"app": name},
                             "annotations": {LEASE_SELECTOR: "metadata.name=placeholder"}},
                "spec": {"containers": [{"name": "app", "image": IMAGE,
                                         "env": [{"name": "LEASE_SELECTOR", "value": "metadata.name=placeholder"},
                                                 {"name": "VERSION", "value": version.to_string()}]}]}
            }
        }
    }))?)
}

/// Pods of the ReplicaSet whose pod template carries `VERSION=version`
/// (see [`deployment_object`]), once it has some. Found by template, not by
/// the `deployment.kubernetes.io/revision` number: updates made in quick
/// succession may reach the controller coalesced, and a template it never
/// saw gets no ReplicaSet and no revision.
async fn pods_of_version(env: &Env, ns: &str, app: &str, version: u32) -> Result<Vec<Value>> {
    let rs_api: Api<ReplicaSet> = Api::namespaced(env.client(), ns);
    let pod_api: Api<Pod> = Api::namespaced(env.client(), ns);
    let start = Instant::now();
    loop {
        let sets = rs_api
            .list(&ListParams::default().labels(&format!("app={app}")))
            .await?;
        let wanted = version.to_string();
        let hash =
            sets.items
                .iter()
                .find(|rs| {
                    rs.spec
                        .template
                        .as_ref()
                        .and_then(|template| template.spec.as_ref())
                        .is_some_and(|pod| {
                            pod.containers.iter().any(|c| {
                                c.env.iter().flatten().any(|e| {
                                    e.name == "VERSION" && e.value.as_deref() == Some(&wanted)
                                })
                            })
                        })
                })
                .and_then(|rs| {
                    rs.metadata
                        .labels
                        .as_ref()?
                        .get("pod-template-hash")
                        .cloned()
                });
        if let Some(hash) = hash {
            let pods = pod_api
                .list(&ListParams::default().labels(&format!("app={app},pod-template-hash={hash}")))
                .await?;
            if !pods.items.is_empty() {
                return Ok(pods
                    .items
                    .iter()
                    .map(serde_json::to_value)
                    .collect::<Result<_, _>>()?);
            }
        }
        if start.elapsed() > Duration::from_secs(90) {
            // Enough to tell a stuck rollout from a slow controller.
            let summary: Vec<String> = sets
                .items
                .iter()
                .map(|rs| {
                    let revision = rs
                        .metadata
                        .annotations
                        .as_ref()
                        .and_then(|a| a.get("deployment.kubernetes.io/revision"))
                        .cloned();
                    format!(
                        "revision {revision:?}: spec {:?}, status {}",
                        rs.spec.replicas,
                        rs.status.as_ref().map_or(0, |s| s.replicas)
                    )
                })
                .collect();
            anyhow::bail!("no Pods for VERSION={version} of {app}; ReplicaSets: {summary:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Deployments through the real controller: every stored version has
/// `maxUnavailable: 0` and a usable maxSurge, calmplane's rollout history
/// records each template change, the Pods the ReplicaSet controller creates
/// are mutated, and once the Deployment is hot they carry its lease scope.
/// A Recreate Deployment is stored as sent.
pub(crate) async fn c2_deployments_through_the_controller(env: &Env) -> Result<()> {
    let ns = env.namespace("c2", &[(ENABLED, enabled::WEBHOOK)]).await?;
    let api: Api<Deployment> = Api::namespaced(env.client(), &ns);
    // maxSurge 100%: with no kubelet no Pod ever becomes available, and the
    // controller can then still replace unavailable old Pods by new ones.
    let rolling = json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "100%", "maxUnavailable": "50%"}});
    let created = api
        .create(
            &PostParams::default(),
            &deployment_object("web", rolling, 0)?,
        )
        .await?;
    let check_strategy = |d: &Deployment| -> Result<()> {
        let v = serde_json::to_value(d)?;
        let ru = &v["spec"]["strategy"]["rollingUpdate"];
        ensure!(ru["maxUnavailable"] == 0, "maxUnavailable not 0: {ru}");
        ensure!(ru["maxSurge"] == "100%", "maxSurge changed: {ru}");
        Ok(())
    };
    check_strategy(&created)?;
    for pod in pods_of_version(env, &ns, "web", 0).await? {
        assert_pod_mutated(&pod, &format!("metadata.namespace={ns}"))
            .context("first version's pod")?;
        ensure!(annotation(&pod, LEASE_SCOPE).is_none());
    }

    for version in 1..=3u32 {
        let patch = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "app", "env": [{"name": "LEASE_SELECTOR", "value": "metadata.name=placeholder"},
                                    {"name": "VERSION", "value": version.to_string()}]}]}}}});
        let updated = api
            .patch("web", &PatchParams::default(), &Patch::Strategic(&patch))
            .await?;
        check_strategy(&updated).with_context(|| format!("update {version}"))?;
        let v = serde_json::to_value(&updated)?;
        let history = annotation(&v, ROLLOUTS).context("no rollout history")?;
        ensure!(
            history.split(',').count() == version as usize,
            "update {version}: history {history:?}"
        );
        let scope = annotation(&v["spec"]["template"], LEASE_SCOPE);
        // hotRolloutsPerHour defaults to 1: hot from the second change on.
        if version >= 2 {
            ensure!(
                scope == Some("deployment/web"),
                "update {version}: lease scope {scope:?}"
            );
        } else {
            ensure!(scope.is_none(), "update {version}: hot too early");
        }
    }
    for pod in pods_of_version(env, &ns, "web", 3).await? {
        assert_pod_mutated(&pod, "metadata.name=web").context("last version's pod")?;
        ensure!(annotation(&pod, LEASE_SCOPE) == Some("deployment/web"));
    }

    let recreate = api
        .create(
            &PostParams::default(),
            &deployment_object("batch", json!({"type": "Recreate"}), 0)?,
        )
        .await?;
    let v = serde_json::to_value(&recreate)?;
    ensure!(
        v["spec"]["strategy"] == json!({"type": "Recreate"}),
        "Recreate changed: {}",
        v["spec"]["strategy"]
    );
    let sent = serde_json::to_value(deployment_object("batch", json!({"type": "Recreate"}), 0)?)?;
    ensure!(
        v["spec"]["template"]["metadata"]["annotations"]
            == sent["spec"]["template"]["metadata"]["annotations"],
        "Recreate template annotations changed"
    );
    Ok(())
}
