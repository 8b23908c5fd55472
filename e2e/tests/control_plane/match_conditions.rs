//! The matchConditions of calmplane's webhook configuration, evaluated by
//! the apiserver in CEL before it calls calmplane (c15): requests calmplane
//! has nothing to do for never reach it (the apiserver counts them in
//! `apiserver_admission_match_condition_exclusions_total`, calmplane counts
//! nothing), and the requests it must see still do.

use crate::deployments::deployment_object;
use crate::{
    annotation, assert_pod_mutated, assert_pod_untouched, calmplane_requests, pod_object, Env,
    PODS_WEBHOOK,
};
use anyhow::{bail, ensure, Context as _, Result};
use calmplane::annotations::{enabled, ENABLED, ROLLOUTS, SKIP};
use calmplane_e2e::run_with_input;
use calmplane_testkit::prom;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Patch, PatchParams, PostParams};
use kube::Api;
use serde_json::{json, Value};
use std::time::Duration;

/// calmplane's Deployment webhook, by its name in the apiserver's metrics.
const DEPLOYMENTS_WEBHOOK: &str = "deployments.calmplane.dev";
/// The annotation the kubelet puts on the API object of a static Pod.
const MIRROR: &str = "kubernetes.io/config.mirror";

/// The apiserver's count of `operation` requests its matchConditions kept
/// from `webhook` (k8s.io/apiserver `pkg/admission/metrics`: labels `name`,
/// `kind` (webhook or policy), `type` (admit or validate), `operation`).
fn exclusions(metrics: &str, webhook: &str, operation: &str) -> f64 {
    prom::sum(
        metrics,
        "apiserver_admission_match_condition_exclusions_total",
        &[
            ("name", webhook),
            ("kind", "webhook"),
            ("type", "admit"),
            ("operation", operation),
        ],
    )
}

/// The apiserver's and calmplane's metrics at one moment.
struct Reading {
    apiserver: String,
    calmplane: String,
}

impl Reading {
    async fn now(env: &Env) -> Result<Reading> {
        Ok(Reading {
            apiserver: env.metrics().await?,
            calmplane: env.calmplane_metrics().await?,
        })
    }

    /// Since `self`: exclusions of `webhook` for `operation`, and the
    /// requests calmplane answered for `kind` and `operation`.
    async fn since(
        &self,
        env: &Env,
        webhook: &str,
        kind: &str,
        operation: &str,
    ) -> Result<(f64, f64)> {
        let now = Reading::now(env).await?;
        Ok((
            exclusions(&now.apiserver, webhook, operation)
                - exclusions(&self.apiserver, webhook, operation),
            calmplane_requests(&now.calmplane, kind, operation)
                - calmplane_requests(&self.calmplane, kind, operation),
        ))
    }
}

/// A Pod that calmplane would change, with `annotations` added.
fn pod_with(name: &str, annotations: &[(&str, &str)]) -> Result<Pod> {
    let mut pod = serde_json::to_value(pod_object(name, &[]))?;
    for (key, value) in annotations {
        pod["metadata"]["annotations"][*key] = json!(value);
    }
    Ok(serde_json::from_value(pod)?)
}

/// Wait until the Deployment controller is done with `name`: it has seen
/// the current generation and written revision `revision`. It writes the
/// revision with an UPDATE of the Deployment itself, which the conditions
/// keep from calmplane too: waiting keeps it out of the counts that follow.
async fn settled(api: &Api<Deployment>, name: &str, revision: &str) -> Result<Value> {
    let start = std::time::Instant::now();
    loop {
        let d = serde_json::to_value(api.get(name).await?)?;
        if d["status"]["observedGeneration"] == d["metadata"]["generation"]
            && annotation(&d, "deployment.kubernetes.io/revision") == Some(revision)
        {
            return Ok(d);
        }
        if start.elapsed() > Duration::from_secs(60) {
            bail!(
                "the controller never settled on revision {revision}: {}",
                d["status"]
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The conditions, each way: a Pod with `calmplane.dev/skip: all` (alone
/// or in a list), a mirror Pod, a Deployment UPDATE that changes only a
/// label and one that changes only the status (through the main resource)
/// are excluded, and calmplane answers nothing for them; `skip: all` Pods are
/// stored as sent. A Pod that skips one policy, a template change and a
/// `kubectl replace` that drops calmplane's rollout history with the spec
/// unchanged still reach calmplane, and the history comes back.
pub(crate) async fn c15_match_conditions(env: &Env) -> Result<()> {
    let ns = env.namespace("c15", &[(ENABLED, enabled::WEBHOOK)]).await?;
    // Only this case's requests in calmplane's counts.
    env.quiesce().await?;

    // --- Pods -----------------------------------------------------------------
    let before = Reading::now(env).await?;
    for (name, skip) in [("skip-all", "all"), ("skip-list-with-all", "lease, all")] {
        let stored = env
            .create_pod(&ns, &pod_with(name, &[(SKIP, skip)])?)
            .await?;
        assert_pod_untouched(&stored, name).with_context(|| format!("skip: {skip}"))?;
    }
    let (excluded, answered) = before.since(env, PODS_WEBHOOK, "Pod", "CREATE").await?;
    ensure!(
        excluded == 2.0 && answered == 0.0,
        "two Pods with skip all: {excluded} exclusions of {PODS_WEBHOOK} (want 2), {answered} requests to calmplane (want 0)"
    );

    let before = Reading::now(env).await?;
    let stored = env
        .create_pod(&ns, &pod_with("skip-dns", &[(SKIP, "dns")])?)
        .await?;
    let (excluded, answered) = before.since(env, PODS_WEBHOOK, "Pod", "CREATE").await?;
    ensure!(
        excluded == 0.0 && answered == 1.0,
        "a Pod with skip dns: {excluded} exclusions (want 0), {answered} requests to calmplane (want 1)"
    );
    ensure!(
        stored.pointer("/spec/dnsConfig").is_none()
            && stored
                .pointer("/spec/containers/0/lifecycle/preStop")
                .is_some(),
        "skip dns: dns must not run and prestop must: {}",
        stored["spec"]
    );

    // A mirror Pod, as the kubelet creates it for a static Pod: bound to a
    // node, no service account.
    let before = Reading::now(env).await?;
    let mut mirror = serde_json::to_value(pod_with("mirror", &[(MIRROR, "e2e")])?)?;
    mirror["spec"]["nodeName"] = json!("e2e-node");
    let stored = env
        .create_pod(&ns, &serde_json::from_value(mirror)?)
        .await
        .context("an admin creating a mirror Pod")?;
    assert_pod_untouched(&stored, "mirror").context("mirror Pod")?;
    let (excluded, answered) = before.since(env, PODS_WEBHOOK, "Pod", "CREATE").await?;
    ensure!(
        excluded == 1.0 && answered == 0.0,
        "a mirror Pod: {excluded} exclusions (want 1), {answered} requests to calmplane (want 0)"
    );

    // The same Pod without the annotations is still mutated.
    let stored = env.create_pod(&ns, &pod_object("plain", &[])).await?;
    assert_pod_mutated(&stored, &format!("metadata.namespace={ns}"))?;

    // --- Deployments ------------------------------------------------------------
    let api: Api<Deployment> = Api::namespaced(env.client(), &ns);
    let mut deployment = deployment_object(
        "web",
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 1}}),
        0,
    )?;
    // No Pods: the ReplicaSet controller's creates would be calmplane's
    // requests too.
    deployment.spec.replicas = Some(0);
    api.create(&PostParams::default(), &deployment).await?;
    settled(&api, "web", "1").await?;

    let before = Reading::now(env).await?;
    let label = json!({"metadata": {"labels": {"e2e": "relabelled"}}});
    api.patch("web", &PatchParams::default(), &Patch::Merge(&label))
        .await?;
    let (excluded, answered) = before
        .since(env, DEPLOYMENTS_WEBHOOK, "Deployment", "UPDATE")
        .await?;
    ensure!(
        excluded >= 1.0 && answered == 0.0,
        "a label change: {excluded} exclusions of {DEPLOYMENTS_WEBHOOK} (want 1), {answered} requests to calmplane (want 0)"
    );

    // Status through the main resource: the apiserver keeps the stored
    // status, but admission sees the request's.
    let before = Reading::now(env).await?;
    let mut with_status = api.get("web").await?;
    if let Some(status) = with_status.status.as_mut() {
        status.observed_generation = Some(status.observed_generation.unwrap_or(0) + 100);
        status.replicas = Some(7);
    }
    api.replace("web", &PostParams::default(), &with_status)
        .await
        .context("an UPDATE of the Deployment that changes only its status")?;
    let (excluded, answered) = before
        .since(env, DEPLOYMENTS_WEBHOOK, "Deployment", "UPDATE")
        .await?;
    ensure!(
        excluded >= 1.0 && answered == 0.0,
        "a status-only UPDATE: {excluded} exclusions (want 1), {answered} requests to calmplane (want 0)"
    );

    // A template change reaches calmplane: the rollout is recorded.
    let before = Reading::now(env).await?;
    let template = json!({"spec": {"template": {"spec": {"containers": [
        {"name": "app", "env": [{"name": "VERSION", "value": "1"}]}]}}}});
    let updated = api
        .patch("web", &PatchParams::default(), &Patch::Strategic(&template))
        .await?;
    let (excluded, answered) = before
        .since(env, DEPLOYMENTS_WEBHOOK, "Deployment", "UPDATE")
        .await?;
    let updated = serde_json::to_value(&updated)?;
    let history = annotation(&updated, ROLLOUTS)
        .context("a template change: no rollout history recorded")?
        .to_string();
    ensure!(
        answered >= 1.0,
        "a template change: {answered} requests to calmplane (want 1; {excluded} exclusions)"
    );

    // `kubectl replace` with the manifest as stored but without calmplane's
    // history: the spec is the same, the annotation is not, so calmplane is
    // called and puts the history back.
    let stored = settled(&api, "web", "2").await?;
    let mut manifest = stored.clone();
    let meta = manifest["metadata"].as_object_mut().context("metadata")?;
    for field in [
        "resourceVersion",
        "managedFields",
        "uid",
        "creationTimestamp",
        "generation",
    ] {
        meta.remove(field);
    }
    meta["annotations"]
        .as_object_mut()
        .context("annotations")?
        .remove(ROLLOUTS);
    if let Some(m) = manifest.as_object_mut() {
        m.remove("status");
    }
    let before = Reading::now(env).await?;
    let replaced: Value = serde_json::from_str(&run_with_input(
        env.kubectl()
            .args(["replace", "-o", "json", "-n", &ns, "-f", "-"]),
        &serde_json::to_vec(&manifest)?,
    )?)?;
    let (excluded, answered) = before
        .since(env, DEPLOYMENTS_WEBHOOK, "Deployment", "UPDATE")
        .await?;
    ensure!(
        replaced["spec"] == stored["spec"],
        "kubectl replace changed the spec:\n{}\n->\n{}",
        stored["spec"],
        replaced["spec"]
    );
    // Not `excluded == 0`: the Deployment controller answers the replace
    // with an UPDATE of its own, which the conditions exclude.
    ensure!(
        answered >= 1.0,
        "kubectl replace without the history: {answered} requests to calmplane (want 1; {excluded} exclusions)"
    );
    ensure!(
        annotation(&replaced, ROLLOUTS) == Some(history.as_str()),
        "kubectl replace: history {:?}, was {history:?}",
        annotation(&replaced, ROLLOUTS)
    );
    // And the same replace with the history as stored is excluded.
    let before = Reading::now(env).await?;
    let mut unchanged = replaced.clone();
    if let Some(meta) = unchanged["metadata"].as_object_mut() {
        meta.remove("resourceVersion");
        meta.remove("managedFields");
    }
    run_with_input(
        env.kubectl()
            .args(["replace", "-o", "json", "-n", &ns, "-f", "-"]),
        &serde_json::to_vec(&unchanged)?,
    )?;
    let (excluded, answered) = before
        .since(env, DEPLOYMENTS_WEBHOOK, "Deployment", "UPDATE")
        .await?;
    if excluded < 1.0 || answered != 0.0 {
        bail!(
            "kubectl replace of the stored manifest: {excluded} exclusions (want 1), {answered} requests to calmplane (want 0)"
        );
    }
    Ok(())
}
