//! Pods through calmplane's Pod webhook: which namespaces and Pods it
//! serves (c1), that the apiserver admits Pods unmutated while calmplane is
//! down and mutates them again once it is back (c5), and that a webhook
//! ordered after it makes the apiserver reinvoke it, to a fixed point (c6).

use crate::{
    admission_calls, assert_pod_mutated, assert_pod_untouched, fail_open, pod_object,
    two_containers, wait_for_probe, Env, PODS_WEBHOOK,
};
use anyhow::{ensure, Context as _, Result};
use calmplane::annotations::{enabled, ENABLED};
use calmplane_e2e::run_with_input;
use calmplane_e2e::webhook::{apply_webhook_configuration, AddsContainer};
use kube::Api;
use serde_json::{json, Value};

/// Opt-in and exclusions: the stored Pod in an opted-in namespace carries
/// every policy; an unlabelled namespace, kube-system and calmplane's own
/// namespace (both labelled, to show the name exclusion holds) and
/// calmplane's own Pods are stored as sent.
pub(crate) async fn c1_opt_in_and_exclusions(env: &Env) -> Result<()> {
    let on = env
        .namespace("c1-on", &[(ENABLED, enabled::WEBHOOK)])
        .await?;
    let off = env.namespace("c1-off", &[]).await?;
    env.namespace("kube-system", &[(ENABLED, enabled::WEBHOOK)])
        .await?;
    let own_ns = env
        .namespace("calmplane", &[(ENABLED, enabled::WEBHOOK)])
        .await?;

    let stored = env.create_pod(&on, &pod_object("web", &[])).await?;
    assert_pod_mutated(&stored, &format!("metadata.namespace={on}"))?;

    for ns in [off.as_str(), "kube-system", own_ns.as_str()] {
        let stored = env.create_pod(ns, &pod_object("web", &[])).await?;
        assert_pod_untouched(&stored, "web").with_context(|| format!("in namespace {ns}"))?;
    }
    let own = env
        .create_pod(
            &on,
            &pod_object("calmplane-0", &[("app.kubernetes.io/name", "calmplane")]),
        )
        .await?;
    assert_pod_untouched(&own, "calmplane-0").context("calmplane's own pod")?;
    Ok(())
}

/// With calmplane stopped, Pods are created unmutated and the apiserver
/// counts the fail-open; with calmplane back, mutation resumes with no
/// restart of anything else.
pub(crate) async fn c5_failure_policy(env: &Env) -> Result<()> {
    let ns = env.namespace("c5", &[(ENABLED, enabled::WEBHOOK)]).await?;
    let before = fail_open(&env.metrics().await?);
    env.calmplane.lock().await.stop();
    let result: Result<()> = async {
        let stored = env.create_pod(&ns, &pod_object("while-down", &[])).await?;
        assert_pod_untouched(&stored, "while-down")?;
        let after = fail_open(&env.metrics().await?);
        ensure!(after >= before + 1.0, "fail_open_count {before} -> {after}");
        Ok(())
    }
    .await;
    env.calmplane.lock().await.resume().await?;
    result?;
    env.wait_mutating(&ns).await?;
    let stored = env.create_pod(&ns, &pod_object("after", &[])).await?;
    assert_pod_mutated(&stored, &format!("metadata.namespace={ns}"))
}

/// A second webhook, ordered after calmplane, adds a container: the
/// apiserver reinvokes calmplane, which gives that container its preStop
/// sleep; calmplane's answer to the final object is an empty patch.
pub(crate) async fn c6_reinvocation(env: &Env) -> Result<()> {
    let adds = AddsContainer::start().await?;
    let config = adds.configuration();
    apply_webhook_configuration(&env.client(), &config).await?;
    let ns = env
        .namespace(
            "c6",
            &[
                (ENABLED, enabled::WEBHOOK),
                ("e2e.calmplane.dev/adds-container", "true"),
            ],
        )
        .await?;
    let result: Result<()> = async {
        wait_for_probe(env.client(), &ns, two_containers)
            .await
            .context("the second webhook never ran")?;

        let metrics = env.metrics().await?;
        let (ours, theirs) = (
            admission_calls(&metrics, PODS_WEBHOOK),
            adds.calls.load(std::sync::atomic::Ordering::SeqCst),
        );
        let stored = env.create_pod(&ns, &pod_object("reinvoked", &[])).await?;
        let metrics = env.metrics().await?;
        let ours = admission_calls(&metrics, PODS_WEBHOOK) - ours;
        let theirs = adds.calls.load(std::sync::atomic::Ordering::SeqCst) - theirs;

        let names: Vec<&str> = stored["spec"]["containers"]
            .as_array()
            .context("containers")?
            .iter()
            .filter_map(|c| c["name"].as_str())
            .collect();
        ensure!(
            names == ["app", AddsContainer::CONTAINER],
            "containers {names:?}"
        );
        assert_pod_mutated(&stored, &format!("metadata.namespace={ns}"))?;
        ensure!(
            ours == 2.0,
            "calmplane called {ours} times for one Pod (want the call and one reinvocation)"
        );
        ensure!(
            theirs == 2,
            "the second webhook called {theirs} times (want the call and one reinvocation)"
        );

        // A further reinvocation would change nothing: calmplane's own answer
        // to the stored Pod is an empty patch.
        let preview: Value = serde_json::from_str(&run_with_input(
            env.calmplane
                .lock()
                .await
                .command()
                .args(["preview", "-n", &ns, "-f", "-"]),
            &serde_json::to_vec(&stored)?,
        )?)?;
        ensure!(
            preview["patch"] == json!([]),
            "a second pass would patch: {}",
            preview["patch"]
        );
        Ok(())
    }
    .await;
    let api: Api<k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration> =
        Api::all(env.client());
    api.delete("zz-e2e-adds-container", &Default::default())
        .await?;
    result
}
