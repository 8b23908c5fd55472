//! The Helm chart (charts/calmplane) against a real control plane, with the
//! helm that `make helm` builds (e2e/helm/build.sh; `CALMPLANE_HELM` names
//! it): install, upgrade and uninstall as a platform team runs them.
//!
//! There is no kubelet: calmplane runs as a local process, and the chart is
//! installed with `webhook.url` pointing at it (no Deployment), as
//! `calmplane register --url` does. The suite plays the kubelet's part for
//! what the chart hands it: it gives the local calmplane the serving
//! certificate of the chart's Secret and the policy file of its ConfigMap
//! (as a Secret and a ConfigMap volume would), and it completes the
//! readiness gate's Pod once calmplane answers the way that Pod checks
//! (tests/helm runs the Pod's own script against a real calmplane).
//!
//! * h1: install (self-signed certificates): while the gate is pending the
//!   webhook configuration is an empty placeholder, then the real one
//!   appears; an opted-in Pod is stored mutated; upgrade with another
//!   policy value and another match condition: the stored configuration,
//!   the MutatingAdmissionPolicies and the mutations follow, the certificate
//!   is kept; uninstall with calmplane down: no webhook configuration and no
//!   admission policy is left, and Pods are created untouched.
//! * h2: an install that never gets ready fails with only the placeholder
//!   in place, and its uninstall leaves nothing behind.
//!
//! `cargo test -p calmplane-e2e --test helm` (after `make e2e-build helm`).

use anyhow::{bail, ensure, Context as _, Result};
use base64::Engine as _;
use calmplane_e2e::cluster::Cluster;
use calmplane_e2e::webhook::{calmplane_bin, tls_request, Calmplane};
use calmplane_e2e::{free_port, run, wait_until, Child};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret};
use kube::api::{Patch, PatchParams, PostParams};
use kube::Api;
use libtest_mimic::{Arguments, Failed, Trial};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

const ENABLED: &str = "calmplane.dev/enabled";
const IMAGE: &str = "registry.k8s.io/pause:3.10";
/// The label the upgrade's extra match condition keeps away from calmplane.
const OPT_OUT: &str = "e2e.calmplane.dev/opt-out";

/// The helm to run: `CALMPLANE_HELM`, or the one `make helm` built.
fn helm_bin() -> Result<PathBuf> {
    let path = std::env::var_os("CALMPLANE_HELM")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("bin/helm"));
    ensure!(
        path.is_file(),
        "{} is missing: build it with `make helm` (e2e/helm/build.sh)",
        path.display()
    );
    Ok(path)
}

fn chart() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/calmplane")
}

/// The control plane, a local calmplane, and helm pointed at both.
struct Env {
    cluster: Cluster,
    calmplane: tokio::sync::Mutex<Calmplane>,
    /// The policy file the local calmplane reads (`--config`): what a
    /// ConfigMap volume would hold.
    policy: PathBuf,
    helm: PathBuf,
    /// HELM_*_HOME: nothing of the user's is read or written.
    helm_home: tempfile::TempDir,
}

impl Env {
    async fn start() -> Result<Env> {
        let bin = calmplane_bin()?;
        let helm = helm_bin()?;
        // No webhook of this suite asks for a client certificate.
        let cluster = Cluster::start("127.0.0.1:1").await?;
        let policy = cluster.dir.join("policy.yaml");
        std::fs::write(&policy, "")?;
        let addr = ([127, 0, 0, 1], free_port()?).into();
        let calmplane = Calmplane::start_with(
            bin,
            &cluster.dir,
            "calmplane",
            addr,
            vec!["--config".into(), policy.clone().into()],
        )
        .await?;
        Ok(Env {
            cluster,
            calmplane: tokio::sync::Mutex::new(calmplane),
            policy,
            helm,
            helm_home: tempfile::tempdir()?,
        })
    }

    fn client(&self) -> kube::Client {
        self.cluster.client.clone()
    }

    fn helm(&self) -> Command {
        let mut cmd = Command::new(&self.helm);
        let home = self.helm_home.path();
        cmd.env("KUBECONFIG", &self.cluster.kubeconfig)
            .env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_DATA_HOME", home.join("data"));
        cmd
    }

    /// `helm install|upgrade` in the background, with its output in the
    /// run's directory.
    fn helm_spawn(&self, name: &str, args: &[&str]) -> Result<Child> {
        let mut cmd = self.helm();
        cmd.args(args);
        Child::spawn(name, cmd, &self.cluster.dir)
    }

    async fn namespace(&self, name: &str, labels: &[(&str, &str)]) -> Result<()> {
        self.cluster.namespace(name, labels).await
    }

    async fn webhook_configuration(&self, name: &str) -> Result<Option<Value>> {
        let api: Api<MutatingWebhookConfiguration> = Api::all(self.client());
        Ok(api
            .get_opt(name)
            .await?
            .map(serde_json::to_value)
            .transpose()?)
    }

    /// What the kubelet would do with the chart's Secret and ConfigMap: the
    /// local calmplane serves the Secret's certificate and reads the
    /// ConfigMap's policy file (it reloads both). The Secret's CA.
    async fn mount(&self, namespace: &str, release: &str, generation: &str) -> Result<String> {
        let secrets: Api<Secret> = Api::namespaced(self.client(), namespace);
        let secret = secrets.get(&format!("{release}-tls")).await?;
        let data = secret.data.context("the Secret has no data")?;
        let file = |k: &str| -> Result<Vec<u8>> {
            Ok(data.get(k).with_context(|| format!("no {k}"))?.0.clone())
        };
        let calmplane = self.calmplane.lock().await;
        let dir = calmplane.certs.join(generation);
        std::fs::create_dir_all(&dir)?;
        for k in ["tls.crt", "tls.key", "ca.crt"] {
            std::fs::write(dir.join(k), file(k)?)?;
        }
        calmplane.swap_data(&dir)?;
        let ca = String::from_utf8(file("ca.crt")?)?;
        drop(calmplane);
        self.sync_policy(namespace, release).await?;
        Ok(ca)
    }

    async fn sync_policy(&self, namespace: &str, release: &str) -> Result<()> {
        let maps: Api<ConfigMap> = Api::namespaced(self.client(), namespace);
        let cm = maps.get(&format!("{release}-policy")).await?;
        let text = cm
            .data
            .and_then(|d| d.get("policy.yaml").cloned())
            .context("no policy.yaml")?;
        let tmp = self.policy.with_extension("tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &self.policy)?;
        Ok(())
    }

    /// A Pod created in `ns` (dry run or stored), as the apiserver returns it.
    async fn pod(&self, ns: &str, name: &str, labels: Value, dry_run: bool) -> Result<Value> {
        let api: Api<Pod> = Api::namespaced(self.client(), ns);
        let pod: Pod = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": labels},
            "spec": {"containers": [{"name": "app", "image": IMAGE}]}
        }))?;
        let params = PostParams {
            dry_run,
            ..Default::default()
        };
        Ok(serde_json::to_value(api.create(&params, &pod).await?)?)
    }

    /// Dry-run Pods in `ns` until one satisfies `check` (the apiserver loads
    /// webhook configurations and admission policies asynchronously).
    async fn until_pod(&self, ns: &str, labels: Value, check: fn(&Value) -> bool) -> Result<()> {
        wait_until(Duration::from_secs(60), || {
            let labels = labels.clone();
            async move { Ok(check(&self.pod(ns, "probe", labels, true).await?)) }
        })
        .await
    }

    fn kubectl_json(&self, args: &[&str]) -> Result<Value> {
        let out = run(self.cluster.kubectl().args(args).args(["-o", "json"]))?;
        Ok(serde_json::from_str(&out)?)
    }
}

/// The `ndots` a stored Pod got, if any.
fn ndots(pod: &Value) -> Option<String> {
    pod.pointer("/spec/dnsConfig/options")?
        .as_array()?
        .iter()
        .find(|o| o["name"] == "ndots")
        .and_then(|o| o["value"].as_str())
        .map(str::to_string)
}

fn mutated(pod: &Value) -> bool {
    ndots(pod).is_some()
        && pod
            .pointer("/spec/containers/0/lifecycle/preStop")
            .is_some()
}

fn untouched(pod: &Value) -> bool {
    pod.pointer("/spec/dnsConfig").is_none()
        && pod.pointer("/spec/containers/0/lifecycle").is_none()
}

/// Play the kubelet for the readiness gate: wait for its Pod, check what it
/// checks (calmplane answers /readyz at `url` with the CA `ca`, when given),
/// then record it as Succeeded. While the Pod waits, the release's webhook
/// configuration `name` must be the empty placeholder.
async fn complete_gate(env: &Env, ns: &str, gate: &str, name: &str) -> Result<Value> {
    let pods: Api<Pod> = Api::namespaced(env.client(), ns);
    wait_until(Duration::from_secs(60), || {
        let pods = pods.clone();
        async move { Ok(pods.get_opt(gate).await?.is_some()) }
    })
    .await
    .context("the readiness gate's Pod never appeared")?;
    let placeholder = env
        .webhook_configuration(name)
        .await?
        .context("no webhook configuration while the gate waits")?;
    ensure!(
        placeholder["webhooks"].as_array().is_none_or(Vec::is_empty),
        "a webhook exists before calmplane was found ready: {placeholder}"
    );
    Ok(placeholder)
}

async fn succeed_gate(env: &Env, ns: &str, gate: &str) -> Result<()> {
    let pods: Api<Pod> = Api::namespaced(env.client(), ns);
    pods.patch_status(
        gate,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Succeeded"}})),
    )
    .await
    .context("recording the gate Pod as Succeeded")?;
    Ok(())
}

/// Wait for a helm command started with [`Env::helm_spawn`]; its log on failure.
async fn finish(mut helm: Child, what: &str) -> Result<()> {
    let mut status = None;
    wait_until(Duration::from_secs(180), || {
        let s = helm.exited();
        if s.is_some() {
            status = s;
        }
        async move { Ok(s.is_some()) }
    })
    .await
    .with_context(|| format!("{what} did not finish:\n{}", helm.tail()))?;
    let status = status.context("status")?;
    ensure!(
        status.success(),
        "{what} failed ({status}):\n{}",
        helm.tail()
    );
    Ok(())
}

fn values_file(dir: &Path, name: &str, values: &Value) -> Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, serde_json::to_vec_pretty(values)?)?;
    Ok(path)
}

async fn h1_install_upgrade_uninstall(env: &Env) -> Result<()> {
    let ns = "calmplane";
    let url = env.calmplane.lock().await.url();
    let dir = env.cluster.dir.clone();
    let install = values_file(&dir, "h1-install.json", &json!({"webhook": {"url": url}}))?;
    let chart = chart();
    let chart = chart.to_str().context("chart path")?;

    // 1. helm install, self-signed certificates; the namespace comes from
    // --create-namespace and is taken over by the chart's Namespace.
    let helm = env.helm_spawn(
        "h1-helm-install",
        &[
            "install",
            "calmplane",
            chart,
            "--namespace",
            ns,
            "--create-namespace",
            "-f",
            install.to_str().context("path")?,
            "--timeout",
            "2m",
        ],
    )?;
    complete_gate(env, ns, "calmplane-wait-for-ready", "calmplane").await?;
    let ca = env.mount(ns, "calmplane", "helm-1").await?;
    // What the gate checks: /readyz answers with the Secret's CA, at the
    // URL's address (the certificate names 127.0.0.1).
    let addr = env.calmplane.lock().await.addr;
    wait_until(Duration::from_secs(30), || {
        let ca = ca.clone();
        async move {
            Ok(tls_request(addr, &ca, None, "GET", "/readyz", b"")
                .await
                .is_ok_and(|r| r.status == 200))
        }
    })
    .await
    .context("calmplane never answered with the chart's certificate")?;
    ensure!(
        env.webhook_configuration("calmplane")
            .await?
            .is_some_and(|c| c["webhooks"].as_array().is_none_or(Vec::is_empty)),
        "still only the placeholder until the gate succeeds"
    );
    succeed_gate(env, ns, "calmplane-wait-for-ready").await?;
    finish(helm, "helm install").await?;

    let config = env
        .webhook_configuration("calmplane")
        .await?
        .context("no webhook configuration after install")?;
    let webhooks = config["webhooks"].as_array().context("webhooks")?;
    ensure!(webhooks.len() == 4, "{config}");
    let ca_b64 = base64::engine::general_purpose::STANDARD.encode(&ca);
    for w in webhooks {
        let client = &w["clientConfig"];
        ensure!(
            client["url"].as_str().is_some_and(|u| u.starts_with(&url)),
            "{w}"
        );
        ensure!(
            client["caBundle"] == ca_b64.as_str(),
            "the caBundle is the Secret's CA"
        );
    }
    let namespace: Api<Namespace> = Api::all(env.client());
    let labels = namespace.get(ns).await?.metadata.labels.unwrap_or_default();
    ensure!(
        labels
            .get("pod-security.kubernetes.io/enforce")
            .map(String::as_str)
            == Some("restricted")
            && labels.get(ENABLED).map(String::as_str) == Some("false"),
        "the chart's Namespace labels: {labels:?}"
    );

    // 2. An opted-in Pod is stored mutated, with the policy file's ndots.
    env.namespace("h1-shop", &[(ENABLED, "true")]).await?;
    env.until_pod("h1-shop", json!({}), mutated).await?;
    let pod = env.pod("h1-shop", "before", json!({}), false).await?;
    ensure!(
        mutated(&pod) && ndots(&pod).as_deref() == Some("2"),
        "{pod}"
    );
    let opted_out = env
        .pod(
            "h1-shop",
            "opted-out-before",
            json!({OPT_OUT: "yes"}),
            false,
        )
        .await?;
    ensure!(
        mutated(&opted_out),
        "no match condition on the label yet: {opted_out}"
    );
    let secrets: Api<Secret> = Api::namespaced(env.client(), ns);
    let tls_before = secrets.get("calmplane-tls").await?.data;

    // 3. helm upgrade: ndots 3 in the policy file, and a match condition
    // that keeps Pods labelled OPT_OUT away from calmplane.
    let upgrade = values_file(
        &dir,
        "h1-upgrade.json",
        &json!({"webhook": {"url": url, "matchConditions": {"pods": [
                    {"name": "not-opted-out", "expression":
                     format!("!has(object.metadata.labels) || !('{OPT_OUT}' in object.metadata.labels)")}]}},
                "policy": {"dns": {"ndots": 3}}}),
    )?;
    let helm = env.helm_spawn(
        "h1-helm-upgrade",
        &[
            "upgrade",
            "calmplane",
            chart,
            "--namespace",
            ns,
            "-f",
            upgrade.to_str().context("path")?,
            "--timeout",
            "2m",
        ],
    )?;
    finish(helm, "helm upgrade").await?;
    // The stored configuration follows, and keeps its certificate.
    let config = env
        .webhook_configuration("calmplane")
        .await?
        .context("config")?;
    for w in config["webhooks"].as_array().context("webhooks")? {
        let names: Vec<&str> = w["matchConditions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str())
            .collect();
        let pods = w["rules"][0]["resources"][0] == "pods";
        ensure!(
            names.contains(&"not-opted-out") == pods,
            "{}: {names:?}",
            w["name"]
        );
        ensure!(
            w["clientConfig"]["caBundle"] == ca_b64.as_str(),
            "the caBundle is kept"
        );
    }
    ensure!(
        secrets.get("calmplane-tls").await?.data == tls_before,
        "the self-signed certificate is kept across the upgrade"
    );
    // The ConfigMap holds the new policy value ...
    let maps: Api<ConfigMap> = Api::namespaced(env.client(), ns);
    let stored = maps.get("calmplane-policy").await?.data.unwrap_or_default();
    ensure!(
        stored
            .get("policy.yaml")
            .is_some_and(|p| p.contains("ndots: 3")),
        "{stored:?}"
    );
    // ... and calmplane is still on the old one: ndots 2.
    let pod = env
        .pod("h1-shop", "upgraded-not-mounted", json!({}), false)
        .await?;
    ensure!(ndots(&pod).as_deref() == Some("2"), "{pod}");
    // The webhook follows its ConfigMap once it is mounted again.
    env.sync_policy(ns, "calmplane").await?;
    env.until_pod("h1-shop", json!({}), |p| ndots(p).as_deref() == Some("3"))
        .await
        .context("calmplane never read the upgraded policy file")?;
    let pod = env.pod("h1-shop", "after", json!({}), false).await?;
    ensure!(
        mutated(&pod) && ndots(&pod).as_deref() == Some("3"),
        "{pod}"
    );
    // And the new match condition keeps the labelled Pod away.
    env.until_pod("h1-shop", json!({OPT_OUT: "yes"}), untouched)
        .await?;
    let opted_out = env
        .pod("h1-shop", "opted-out-after", json!({OPT_OUT: "yes"}), false)
        .await?;
    ensure!(untouched(&opted_out), "{opted_out}");

    // 4. helm uninstall, with calmplane down (a broken release): nothing of
    // calmplane's stays registered, and Pods are created untouched.
    env.calmplane.lock().await.stop();
    run(env.helm().args([
        "uninstall",
        "calmplane",
        "--namespace",
        ns,
        "--timeout",
        "2m",
    ]))?;
    ensure!(
        env.webhook_configuration("calmplane").await?.is_none(),
        "the webhook configuration outlived the release"
    );
    let left = run(env.cluster.kubectl().args([
        "get",
        "mutatingwebhookconfigurations,mutatingadmissionpolicies,mutatingadmissionpolicybindings",
        "-o",
        "name",
    ]))?;
    ensure!(left.trim().is_empty(), "left behind: {left}");
    env.until_pod("h1-shop", json!({}), untouched).await?;
    let pod = env.pod("h1-shop", "uninstalled", json!({}), false).await?;
    ensure!(untouched(&pod), "{pod}");
    // The namespace is kept (helm.sh/resource-policy: keep).
    ensure!(
        namespace.get_opt(ns).await?.is_some(),
        "the namespace is kept"
    );
    env.calmplane.lock().await.resume().await?;
    Ok(())
}

async fn h2_a_release_that_never_gets_ready(env: &Env) -> Result<()> {
    // Nothing listens at this URL: the gate never succeeds.
    let ns = "calmplane-broken";
    let dead = format!("https://127.0.0.1:{}", free_port()?);
    let values = values_file(
        &env.cluster.dir,
        "h2.json",
        &json!({"webhook": {"url": dead}}),
    )?;
    let chart = chart();
    let mut helm = env.helm();
    helm.args(["install", "calmplane-broken"])
        .arg(&chart)
        .args(["--namespace", ns, "--create-namespace", "-f"])
        .arg(&values)
        .args(["--timeout", "15s"]);
    let out = helm.output()?;
    ensure!(!out.status.success(), "the install must fail");
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(err.contains("post-install"), "{err}");
    let config = env
        .webhook_configuration("calmplane-broken")
        .await?
        .context("the placeholder")?;
    ensure!(
        config["webhooks"].as_array().is_none_or(Vec::is_empty),
        "a failed install registers no webhook: {config}"
    );
    // The failed gate is deleted (hook-failed), not left polling.
    let pods: Api<Pod> = Api::namespaced(env.client(), ns);
    wait_until(Duration::from_secs(30), || {
        let pods = pods.clone();
        async move {
            Ok(pods
                .get_opt("calmplane-broken-wait-for-ready")
                .await?
                .is_none())
        }
    })
    .await
    .context("the failed gate Pod was left behind")?;
    run(env
        .helm()
        .args(["uninstall", "calmplane-broken", "--namespace", ns]))?;
    if let Some(config) = env.webhook_configuration("calmplane-broken").await? {
        bail!("left behind after uninstall: {config}");
    }
    Ok(())
}

/// The MutatingAdmissionPolicies follow the policy value across an upgrade,
/// run by the apiserver alone (calmplane is stopped: the webhook fails
/// open, so every mutation seen is the apiserver's).
async fn h3_admission_policies_follow_the_policy_value(env: &Env) -> Result<()> {
    let ns = "calmplane-apiserver";
    env.calmplane.lock().await.stop();
    let url = env.calmplane.lock().await.url();
    let chart = chart();
    let chart = chart.to_str().context("chart path")?;
    let values = |ndots: u8| {
        json!({"webhook": {"url": url, "waitForReady": false},
               "admissionPolicies": {"enabled": true},
               "policy": {"dns": {"ndots": ndots}}})
    };
    let dir = env.cluster.dir.clone();
    let first = values_file(&dir, "h3-install.json", &values(2))?;
    run(env.helm().args([
        "install",
        "calmplane",
        chart,
        "--namespace",
        ns,
        "--create-namespace",
        "-f",
        first.to_str().context("path")?,
    ]))?;
    env.namespace("h3-api", &[(ENABLED, "apiserver")]).await?;
    env.until_pod("h3-api", json!({}), |p| ndots(p).as_deref() == Some("2"))
        .await?;
    let second = values_file(&dir, "h3-upgrade.json", &values(4))?;
    run(env.helm().args([
        "upgrade",
        "calmplane",
        chart,
        "--namespace",
        ns,
        "-f",
        second.to_str().context("path")?,
    ]))?;
    let map = env.kubectl_json(&["get", "mutatingadmissionpolicy", "calmplane-dns"])?;
    ensure!(map.to_string().contains("value: '4'"), "{map}");
    env.until_pod("h3-api", json!({}), |p| ndots(p).as_deref() == Some("4"))
        .await
        .context("the apiserver's dns policy never wrote the upgraded ndots")?;
    let pod = env.pod("h3-api", "upgraded", json!({}), false).await?;
    ensure!(ndots(&pod).as_deref() == Some("4"), "{pod}");
    run(env
        .helm()
        .args(["uninstall", "calmplane", "--namespace", ns]))?;
    let left = run(env.cluster.kubectl().args([
        "get",
        "mutatingadmissionpolicies,mutatingadmissionpolicybindings",
        "-o",
        "name",
    ]))?;
    ensure!(left.trim().is_empty(), "left behind: {left}");
    env.until_pod("h3-api", json!({}), untouched).await?;
    env.calmplane.lock().await.resume().await?;
    Ok(())
}

type Case = fn(&Env) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>> + '_>>;

fn main() {
    let mut args = Arguments::from_args();
    // One control plane and one calmplane, and cases that stop it.
    args.test_threads = Some(1);
    let runtime = Arc::new(tokio::runtime::Runtime::new().expect("tokio runtime"));
    let env: Arc<tokio::sync::OnceCell<std::result::Result<Env, String>>> =
        Arc::new(tokio::sync::OnceCell::new());
    // (name, case, ignored)
    let cases: Vec<(&str, Case, bool)> = vec![
        (
            "h1_install_upgrade_uninstall",
            |e| Box::pin(h1_install_upgrade_uninstall(e)),
            false,
        ),
        (
            "h2_a_release_that_never_gets_ready",
            |e| Box::pin(h2_a_release_that_never_gets_ready(e)),
            false,
        ),
        (
            "h3_admission_policies_follow_the_policy_value",
            |e| Box::pin(h3_admission_policies_follow_the_policy_value(e)),
            false,
        ),
    ];
    let trials = cases
        .into_iter()
        .map(|(name, case, ignored)| {
            let runtime = runtime.clone();
            let env = env.clone();
            Trial::test(name, move || {
                runtime.block_on(async {
                    let env = env
                        .get_or_init(|| async { Env::start().await.map_err(|e| format!("{e:#}")) })
                        .await
                        .as_ref()
                        .map_err(|e| {
                            Failed::from(format!("the control plane did not start: {e}"))
                        })?;
                    case(env).await.map_err(|e| Failed::from(format!("{e:#}")))
                })
            })
            .with_ignored_flag(ignored)
        })
        .collect();
    let conclusion = libtest_mimic::run(&args, trials);
    drop(env);
    conclusion.exit()
}
