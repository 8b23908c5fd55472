//! c17: the runbook's first commands for every alert run against the real
//! control plane, with calmplane's manifests applied, so that a wrong label,
//! namespace, name or jsonpath fails here and not in front of an on-call
//! engineer. Commands marked `# needs: pod` (and the other needs the control
//! plane has none of: no kubelet, no metrics-server, no operators) have only
//! their shell syntax checked. The runbook's PromQL runs in a real Prometheus
//! in `tests/monitoring.rs`; here the labels it selects on the apiserver's
//! metrics are checked against this apiserver's /metrics.

use super::*;
use calmplane_e2e::run;
use calmplane_testkit::runbook::{self, Section};
use std::process::Command;

/// The namespace the lease alerts' commands are pointed at (`$NAMESPACE`).
const LEASE_NS: &str = "e2e-runbook";

/// What the kinds calmplane's manifests hold need that this control plane
/// lacks: the objects of these kinds are left out.
const NEEDS_AN_OPERATOR: &[&str] = &[
    "ServiceMonitor",
    "PrometheusRule",
    "MutatingWebhookConfiguration",
];

/// Apply `kubectl kustomize <dir>` without the objects this control plane
/// cannot take (the operators' kinds) or must not (the webhook
/// configuration: the shared one, named as the base names it, is already
/// registered and calls the local calmplane).
fn apply_rendered(env: &Env, dir: &Path) -> Result<()> {
    let rendered = run(env.kubectl().arg("kustomize").arg(dir))?;
    let kept: Vec<Value> = calmplane::yaml::documents(&rendered)?
        .into_iter()
        .filter(|o| {
            !NEEDS_AN_OPERATOR
                .iter()
                .any(|k| o["kind"].as_str() == Some(k))
        })
        .collect();
    let list = json!({"apiVersion": "v1", "kind": "List", "items": kept});
    calmplane_e2e::run_with_input(
        env.kubectl()
            .args(["apply", "--server-side", "--force-conflicts", "-f", "-"]),
        serde_json::to_string(&list)?.as_bytes(),
    )?;
    Ok(())
}

/// The alert's commands as a shell runs them: `pipefail`, the alert's
/// labels as variables, and this release's kubectl first on `PATH`.
fn shell(env: &Env, command: &str, syntax_only: bool) -> Command {
    let mut cmd = Command::new("bash");
    if syntax_only {
        cmd.arg("-n");
    }
    let kubectl = env.kubectl();
    let kubectl_dir = Path::new(kubectl.get_program())
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs = vec![kubectl_dir];
    dirs.extend(std::env::split_paths(&path));
    cmd.args(["-o", "pipefail", "-c", command])
        .env("PATH", std::env::join_paths(dirs).expect("PATH"))
        .env("KUBECONFIG", &env.cluster.kubeconfig)
        .env("NAMESPACE", LEASE_NS)
        .env("WEBHOOK", PODS_WEBHOOK)
        .env("INSTANCE", "127.0.0.1:9090");
    cmd
}

/// Whether a pipeline ends in `grep`, whose exit status 1 means "nothing
/// matched": an answer, not a failure.
fn ends_in_grep(command: &str) -> bool {
    command
        .rsplit('|')
        .next()
        .is_some_and(|last| last.trim_start().starts_with("grep "))
}

/// Run one section's commands; each failure as a line.
fn run_section(env: &Env, section: &Section) -> Vec<String> {
    let mut failures = Vec::new();
    for command in &section.commands {
        let syntax_only = !command.needs.is_empty();
        let out = match shell(env, &command.line, syntax_only).output() {
            Ok(out) => out,
            Err(e) => {
                failures.push(format!(
                    "{}: {}: cannot run bash: {e}",
                    section.alert, command.line
                ));
                continue;
            }
        };
        let code = out.status.code();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let ok = code == Some(0)
            || (code == Some(1) && ends_in_grep(&command.line) && stderr.is_empty());
        // A command that reads something must find it: `No resources found`
        // (a wrong label or namespace) prints nothing on stdout.
        let found = syntax_only || ends_in_grep(&command.line) || !stdout.trim().is_empty();
        let how = if syntax_only {
            format!("syntax only (needs {})", command.needs.join(", "))
        } else {
            format!("exit {code:?}, {} bytes", stdout.len())
        };
        println!("  {}: {} -> {how}", section.alert, command.line);
        if !ok || !found {
            failures.push(format!(
                "{}: `{}` {how}\nstdout: {stdout}\nstderr: {stderr}",
                section.alert, command.line
            ));
        }
    }
    failures
}

/// The label names of each family in a Prometheus text exposition.
fn labels_by_family(
    text: &str,
) -> std::collections::BTreeMap<String, std::collections::BTreeSet<String>> {
    let mut out: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> =
        Default::default();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (name, rest) = match line.split_once('{') {
            Some((name, rest)) => (name, rest),
            None => continue,
        };
        let entry = out.entry(name.to_string()).or_default();
        for pair in rest.split("\",") {
            if let Some((label, _)) = pair.split_once("=\"") {
                entry.insert(label.trim_start_matches(',').to_string());
            }
        }
    }
    out
}

/// The apiserver metrics the runbook's queries select on, with the labels
/// they use: `(metric, labels)`, read off its `metric{...}` selectors.
fn apiserver_selectors(query: &str) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    let mut rest = query;
    while let Some(at) = rest.find("apiserver_") {
        let tail = &rest[at..];
        let name_len = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..name_len];
        let after = &tail[name_len..];
        if let Some(inner) = after.strip_prefix('{') {
            let end = inner.find('}').unwrap_or(inner.len());
            let labels = inner[..end]
                .split(',')
                .filter_map(|m| m.split(['=', '!']).next())
                .map(|l| l.trim().to_string())
                .filter(|l| !l.is_empty())
                .collect();
            out.push((name.to_string(), labels));
        }
        rest = &tail[name_len..];
    }
    out
}

pub(crate) async fn c17_runbook_commands(env: &Env) -> Result<()> {
    let repo = calmplane_testkit::corpus::repo_root();
    // calmplane as the kustomize base installs it, its serving certificate
    // in the Secret the runbook reads, and the lease monitor with its RBAC.
    env.namespace("calmplane", &[]).await?;
    apply_rendered(env, &repo.join("manifests/base"))?;
    apply_rendered(env, &repo.join("manifests/monitoring"))?;
    let certs = env.calmplane.lock().await.certs.clone();
    let secret = run(env
        .kubectl()
        .args([
            "-n",
            "calmplane",
            "create",
            "secret",
            "tls",
            "calmplane-tls",
            "--dry-run=client",
            "-o",
            "json",
        ])
        .arg(format!("--cert={}", certs.join("tls.crt").display()))
        .arg(format!("--key={}", certs.join("tls.key").display())))?;
    calmplane_e2e::run_with_input(
        env.kubectl()
            .args(["apply", "--server-side", "--force-conflicts", "-f", "-"]),
        secret.as_bytes(),
    )?;
    // The ReplicaSet controller creates the Pods the label selectors find
    // (they stay Pending: there is no kubelet).
    wait_until(Duration::from_secs(60), || async {
        let pods = run(env.kubectl().args([
            "-n",
            "calmplane",
            "get",
            "pods",
            "-l",
            "app.kubernetes.io/name=calmplane-lease-monitor",
            "-o",
            "name",
        ]))?;
        let webhook = run(env.kubectl().args([
            "-n",
            "calmplane",
            "get",
            "pods",
            "-l",
            "app.kubernetes.io/name=calmplane,app.kubernetes.io/component=webhook",
            "-o",
            "name",
        ]))?;
        Ok(!pods.trim().is_empty() && !webhook.trim().is_empty())
    })
    .await
    .context("the Deployments' Pods were never created")?;
    // A namespace with a Lease and the Pod that holds it, for the lease
    // alerts.
    env.namespace(LEASE_NS, &[]).await?;
    env.create_pod(LEASE_NS, &pod_object("worker-0", &[]))
        .await?;
    let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "worker-0", "namespace": LEASE_NS},
        "spec": {"holderIdentity": "worker-0", "leaseDurationSeconds": 15,
                 "renewTime": "2026-12-05T00:00:00.000000Z"}});
    calmplane_e2e::run_with_input(
        env.kubectl().args(["apply", "--server-side", "-f", "-"]),
        serde_json::to_string(&lease)?.as_bytes(),
    )?;

    let sections = runbook::sections();
    let alerts: Vec<&str> = sections.iter().map(|s| s.alert.as_str()).collect();
    ensure!(
        sections.len() >= 11,
        "the runbook has {} alert sections: {alerts:?}",
        sections.len()
    );
    let mut failures = Vec::new();
    let (mut ran, mut syntax) = (0, 0);
    for section in &sections {
        failures.extend(run_section(env, section));
        for c in &section.commands {
            if c.needs.is_empty() {
                ran += 1;
            } else {
                syntax += 1;
            }
        }
    }
    println!(
        "c17: {ran} commands run, {syntax} checked for syntax only, over {} alerts",
        sections.len()
    );
    ensure!(
        failures.is_empty(),
        "runbook commands failed:\n{}",
        failures.join("\n\n")
    );

    // The runbook's queries select on labels the apiserver's metrics carry.
    let families = labels_by_family(&env.metrics().await?);
    let mut checked = 0;
    for section in &sections {
        for query in &section.queries {
            for (metric, labels) in apiserver_selectors(query) {
                // A labelled counter has no series before its first
                // increment (a fail-open happens in c5, not on its own).
                let Some(known) = families.get(&metric) else {
                    println!(
                        "  {}: {metric} has no series yet, its labels are not checked",
                        section.alert
                    );
                    continue;
                };
                for label in labels {
                    ensure!(
                        known.contains(&label),
                        "{}: {metric} has no label {label:?} ({known:?}): {query}",
                        section.alert
                    );
                    checked += 1;
                }
            }
        }
    }
    ensure!(checked > 0, "no apiserver label was checked");
    Ok(())
}
