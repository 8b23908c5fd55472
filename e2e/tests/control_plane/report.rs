//! Reading without writing: report mode, routed by the real
//! namespaceSelector, counts what calmplane would change and stores the Pod
//! as sent (c11); `calmplane audit --live` reads the live cluster as
//! `audit -f` reads a dump of it (c12).

use crate::{
    admission_calls, assert_pod_mutated, assert_pod_untouched, pod_object, Env, PODS_WEBHOOK,
};
use anyhow::{ensure, Result};
use calmplane::annotations::{enabled, ENABLED};
use calmplane_e2e::{run, run_with_input};
use calmplane_testkit::prom;
use serde_json::Value;

fn report_changes(metrics: &str) -> f64 {
    prom::sum(metrics, "calmplane_report_changes_total", &[])
}

/// Report mode routed by the real namespaceSelector: in a namespace labelled
/// `calmplane.dev/enabled: report` the apiserver calls only the report
/// webhooks, the Pod is stored as sent and calmplane counts what it would
/// have changed; relabelled `"true"`, the same Pod is mutated.
pub(crate) async fn c11_report_mode(env: &Env) -> Result<()> {
    const REPORT_WEBHOOK: &str = "pods-report.calmplane.dev";
    let ns = env.namespace("c11", &[(ENABLED, enabled::REPORT)]).await?;
    let apiserver = env.metrics().await?;
    let own = env.calmplane.lock().await.metrics().await?;
    let stored = env.create_pod(&ns, &pod_object("canary", &[])).await?;
    assert_pod_untouched(&stored, "canary")?;
    let apiserver_after = env.metrics().await?;
    let own_after = env.calmplane.lock().await.metrics().await?;
    let report_calls = admission_calls(&apiserver_after, REPORT_WEBHOOK)
        - admission_calls(&apiserver, REPORT_WEBHOOK);
    let mutate_calls =
        admission_calls(&apiserver_after, PODS_WEBHOOK) - admission_calls(&apiserver, PODS_WEBHOOK);
    ensure!(
        report_calls == 1.0,
        "{REPORT_WEBHOOK} called {report_calls} times"
    );
    ensure!(
        mutate_calls == 0.0,
        "{PODS_WEBHOOK} called {mutate_calls} times in a report namespace"
    );
    let counted = report_changes(&own_after) - report_changes(&own);
    // dns, prestop and lease would each have changed this Pod.
    ensure!(
        counted >= 3.0,
        "calmplane_report_changes_total rose by {counted}"
    );

    env.namespace("c11", &[(ENABLED, enabled::WEBHOOK)]).await?;
    // The apiserver matches namespaceSelectors against its namespace cache.
    env.wait_mutating(&ns).await?;
    let stored = env.create_pod(&ns, &pod_object("enforced", &[])).await?;
    assert_pod_mutated(&stored, &format!("metadata.namespace={ns}"))
}

/// `calmplane audit --live` reads the same cluster as `kubectl get ... -o
/// json | calmplane audit -f -` and says the same thing, judged at the same
/// instant (`--now`).
pub(crate) async fn c12_audit_live_matches_file(env: &Env) -> Result<()> {
    let now = time::OffsetDateTime::now_utc().unix_timestamp().to_string();
    let audit = |args: &[&str], input: Option<&[u8]>| -> Result<String> {
        let calmplane = env.calmplane.try_lock()?;
        let mut cmd = calmplane.command();
        cmd.env("KUBECONFIG", &env.cluster.kubeconfig)
            .args(["--log-format", "text", "audit", "-o", "json", "--now", &now])
            .args(args);
        match input {
            Some(input) => run_with_input(&mut cmd, input),
            None => run(&mut cmd),
        }
    };
    // The controllers and the apiserver's own Leases keep writing: a
    // difference may be a change between the two reads, so it must persist.
    let mut last = String::new();
    for _ in 0..3 {
        let listed = run(env.kubectl().args([
            "get",
            "pods,deployments,replicasets,leases,namespaces,poddisruptionbudgets",
            "-A",
            "-o",
            "json",
        ]))?;
        let from_file: Value =
            serde_json::from_str(&audit(&["-f", "-"], Some(listed.as_bytes()))?)?;
        let live: Value = serde_json::from_str(&audit(&["--live"], None)?)?;
        if from_file == live {
            ensure!(
                from_file.as_object().is_some_and(|o| !o.is_empty()),
                "an empty audit: {from_file}"
            );
            return Ok(());
        }
        last = format!("file:\n{from_file:#}\nlive:\n{live:#}");
    }
    anyhow::bail!("audit --live and audit -f differ three times in a row:\n{last}")
}
