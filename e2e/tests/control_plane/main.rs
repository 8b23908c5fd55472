//! calmplane against a real control plane: etcd, kube-apiserver and
//! kube-controller-manager (built by e2e/build.sh), with calmplane as a local
//! process registered through `clientConfig.url`.
//!
//! One control plane and one calmplane serve every case, started on the first
//! case that runs; cases run one at a time (some stop calmplane, rotate its
//! certificate or take its webhook configuration away) and each works in its
//! own namespaces. Run one case with
//! `cargo test -p calmplane-e2e --test control_plane -- c5_`.
//!
//! This file holds what the cases share: [`Env`], the Pods they create and
//! what they check on stored objects, and the list of cases. Each module
//! holds the cases of one subject:
//!
//! | module | cases |
//! |---|---|
//! | [`pods`] | c1 opt-in and exclusions, c5 failure policy, c6 reinvocation |
//! | [`deployments`] | c2 Deployments through the real controller |
//! | [`corpus`] | c3 upstream manifests created and applied, c4 dry run and diff |
//! | [`certificates`] | c7 serving certificate rotation, c13 client certificates |
//! | [`register`] | c8 `calmplane register` |
//! | [`latency`] | c9 the webhook's latency as the apiserver sees it |
//! | [`lease_monitor`] | c10 `calmplane lease-monitor` on a real watch |
//! | [`report`] | c11 report mode, c12 `audit --live` against `audit -f` |
//! | [`engines`] | c14 the webhook and the exported MutatingAdmissionPolicies store the same objects, and together change nothing twice; the policies follow the policy file; c16 what each engine costs the apiserver |
//! | [`runbook`] | c17 the runbook's first commands for every alert run against calmplane's manifests |
//! | [`match_conditions`] | c15 the webhook configuration's matchConditions spare calmplane the calls it has nothing to do for, and only those |

mod certificates;
mod corpus;
mod deployments;
mod engines;
mod latency;
mod lease_monitor;
mod match_conditions;
mod pods;
mod register;
mod report;
mod runbook;

use anyhow::{ensure, Context as _, Result};
use calmplane::annotations::{enabled, ENABLED, LEASE_SELECTOR};
use calmplane_e2e::cluster::Cluster;
use calmplane_e2e::wait_until;
use calmplane_e2e::webhook::{
    apply_webhook_configuration, calmplane_bin, AddsContainer, Calmplane,
};
use calmplane_testkit::prom;
use k8s_openapi::api::core::v1::Pod;
use kube::api::PostParams;
use kube::Api;
use libtest_mimic::{Arguments, Failed, Trial};
use serde_json::{json, Value};
use std::ffi::OsStr;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Mutex, OnceCell};

/// calmplane's Pod webhook, by its name in the apiserver's metrics.
const PODS_WEBHOOK: &str = "pods.calmplane.dev";
/// A pause image: nothing runs it (there is no kubelet), but it must parse.
const IMAGE: &str = "registry.k8s.io/pause:3.10";

/// The control plane and calmplane, shared by the cases.
struct Env {
    cluster: Cluster,
    calmplane: Mutex<Calmplane>,
    /// The calmplane binary, for cases that start an instance of their own.
    bin: PathBuf,
    /// Holds the port of case 13's calmplane until that case starts it: the
    /// apiserver's webhook client kubeconfig names it (see
    /// [`Cluster::start`]), and the apiserver reads that file only at start.
    mtls_port: std::sync::Mutex<Option<std::net::TcpListener>>,
}

impl Env {
    async fn start() -> Result<Env> {
        let bin = calmplane_bin()?;
        let mtls_port = std::net::TcpListener::bind("127.0.0.1:0")?;
        let cluster = Cluster::start(&mtls_port.local_addr()?.to_string()).await?;
        let calmplane = Calmplane::start(bin.clone(), &cluster.dir).await?;
        let env = Env {
            cluster,
            calmplane: Mutex::new(calmplane),
            bin,
            mtls_port: std::sync::Mutex::new(Some(mtls_port)),
        };
        env.register_calmplane().await?;
        Ok(env)
    }

    fn client(&self) -> kube::Client {
        self.cluster.client.clone()
    }

    /// Apply calmplane's webhook configuration (trusting its current CA) and
    /// wait until the apiserver calls it.
    async fn register_calmplane(&self) -> Result<()> {
        let config = {
            let calmplane = self.calmplane.lock().await;
            calmplane.webhook_configuration(&calmplane.ca_bundle())?
        };
        apply_webhook_configuration(&self.client(), &config).await?;
        let ns = self
            .namespace("e2e-probe", &[(ENABLED, enabled::WEBHOOK)])
            .await?;
        self.wait_mutating(&ns).await
    }

    /// Wait until a dry-run Pod in `ns` comes back mutated: the apiserver
    /// loads webhook configurations asynchronously.
    async fn wait_mutating(&self, ns: &str) -> Result<()> {
        wait_for_probe(self.client(), ns, |pod| {
            serde_json::to_value(pod).is_ok_and(|v| is_mutated(&v))
        })
        .await
        .context("calmplane never mutated a dry-run Pod")
    }

    /// Create (or label) namespace `name` with `labels`, and wait for its
    /// `default` ServiceAccount.
    async fn namespace(&self, name: &str, labels: &[(&str, &str)]) -> Result<String> {
        self.cluster.namespace(name, labels).await?;
        Ok(name.to_string())
    }

    async fn create_pod(&self, ns: &str, pod: &Pod) -> Result<Value> {
        let api: Api<Pod> = Api::namespaced(self.client(), ns);
        Ok(serde_json::to_value(
            api.create(&PostParams::default(), pod).await?,
        )?)
    }

    /// The apiserver's /metrics.
    async fn metrics(&self) -> Result<String> {
        self.cluster.metrics().await
    }

    /// Return once the apiserver has loaded every webhook configuration
    /// change made so far. It loads them from one watch, in order, so when a
    /// configuration applied now is in effect, all earlier changes are too.
    async fn webhook_barrier(&self) -> Result<()> {
        use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
        let adds = AddsContainer::start().await?;
        let mut config = adds.configuration();
        config["metadata"]["name"] = json!("zz-e2e-barrier");
        config["webhooks"][0]["namespaceSelector"] =
            json!({"matchLabels": {"e2e.calmplane.dev/barrier": "true"}});
        apply_webhook_configuration(&self.client(), &config).await?;
        let ns = self
            .namespace("e2e-barrier", &[("e2e.calmplane.dev/barrier", "true")])
            .await?;
        let seen = wait_for_probe(self.client(), &ns, two_containers).await;
        let configs: Api<MutatingWebhookConfiguration> = Api::all(self.client());
        configs
            .delete("zz-e2e-barrier", &Default::default())
            .await?;
        seen.context("the barrier webhook never took effect")
    }

    fn kubectl(&self) -> std::process::Command {
        self.cluster.kubectl()
    }

    /// calmplane's own /metrics.
    async fn calmplane_metrics(&self) -> Result<String> {
        self.calmplane.lock().await.metrics().await
    }

    /// `calmplane register --url <calmplane> --ca-bundle <ca>` with `extra`
    /// arguments, against this cluster; what it said on stderr.
    async fn register(&self, ca: &Path, extra: &[&OsStr]) -> Result<String> {
        let calmplane = self.calmplane.lock().await;
        let mut cmd = calmplane.command();
        cmd.env("KUBECONFIG", &self.cluster.kubeconfig)
            .args(["--log-format", "text", "register", "--url"])
            .arg(calmplane.url())
            .arg("--ca-bundle")
            .arg(ca)
            .args(extra);
        let out = cmd.output()?;
        ensure!(
            out.status.success(),
            "calmplane register {extra:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stderr).into_owned())
    }

    /// Delete calmplane's MutatingWebhookConfiguration and return once the
    /// apiserver no longer calls calmplane. [`Env::register_calmplane`]
    /// brings it back.
    async fn unregister_calmplane(&self) -> Result<()> {
        use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
        let api: Api<MutatingWebhookConfiguration> = Api::all(self.client());
        api.delete("calmplane", &Default::default()).await?;
        self.webhook_barrier().await
    }

    /// Return once calmplane has answered no admission request for a second
    /// (at most 30 s): what the controllers still had to create from earlier
    /// cases is done, and a difference of calmplane's counters is this case's.
    async fn quiesce(&self) -> Result<()> {
        let requests =
            |metrics: &str| prom::sum(metrics, "calmplane_admission_requests_total", &[]);
        let start = std::time::Instant::now();
        let mut last = requests(&self.calmplane_metrics().await?);
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let now = requests(&self.calmplane_metrics().await?);
            if now == last {
                return Ok(());
            }
            ensure!(
                start.elapsed() < Duration::from_secs(30),
                "calmplane kept answering admission requests for 30 s"
            );
            last = now;
        }
    }
}

/// Create dry-run probe Pods in `ns` until what the apiserver returns
/// satisfies `check`, for up to 60 s: the apiserver loads webhook
/// configurations asynchronously, so a new one takes effect a little later.
async fn wait_for_probe(
    client: kube::Client,
    ns: &str,
    check: impl Fn(&Pod) -> bool,
) -> Result<()> {
    let api: Api<Pod> = Api::namespaced(client, ns);
    let check = &check;
    wait_until(Duration::from_secs(60), || {
        let api = api.clone();
        async move {
            let dry_run = PostParams {
                dry_run: true,
                ..Default::default()
            };
            let pod = api.create(&dry_run, &pod_object("probe", &[])).await?;
            Ok(check(&pod))
        }
    })
    .await
}

/// The probe Pod came back with a second container: the harness's own
/// webhook ran.
fn two_containers(pod: &Pod) -> bool {
    pod.spec.as_ref().is_some_and(|s| s.containers.len() == 2)
}

/// A Pod with one container and the lease selectors calmplane rewrites
/// (annotation and env), a grace period shorter than the preStop sleep, and
/// `labels`.
fn pod_object(name: &str, labels: &[(&str, &str)]) -> Pod {
    let labels: serde_json::Map<String, Value> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": labels,
                     "annotations": {LEASE_SELECTOR: format!("metadata.name={name}")}},
        "spec": {
            "terminationGracePeriodSeconds": 2,
            "containers": [{"name": "app", "image": IMAGE,
                            "env": [{"name": "LEASE_SELECTOR", "value": format!("metadata.name={name}")}]}]
        }
    }))
    .expect("a valid Pod")
}

/// The value of annotation `key` on `object`.
fn annotation<'a>(object: &'a Value, key: &str) -> Option<&'a str> {
    object["metadata"]["annotations"][key].as_str()
}

/// calmplane's count of the admission requests it answered for `kind`
/// (`Pod`, `Deployment`) and `operation` (`CREATE`, `UPDATE`).
fn calmplane_requests(metrics: &str, kind: &str, operation: &str) -> f64 {
    prom::sum(
        metrics,
        "calmplane_admission_requests_total",
        &[("kind", kind), ("operation", operation)],
    )
}

/// Did calmplane's Pod policies act on this stored Pod?
fn is_mutated(pod: &Value) -> bool {
    pod.pointer("/spec/dnsConfig/options").is_some()
}

fn dns_options(pod: &Value) -> Vec<Value> {
    pod.pointer("/spec/dnsConfig/options")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

/// Everything calmplane promises for a Pod in an opted-in namespace, read
/// from what the apiserver stored.
fn assert_pod_mutated(pod: &Value, selector: &str) -> Result<()> {
    let options = dns_options(pod);
    ensure!(
        options.contains(&json!({"name": "ndots", "value": "2"})),
        "no ndots:2 in {options:?}"
    );
    ensure!(
        options.iter().any(|o| o["name"] == "single-request-reopen"),
        "no single-request-reopen in {options:?}"
    );
    let grace = pod
        .pointer("/spec/terminationGracePeriodSeconds")
        .and_then(Value::as_i64)
        .context("no grace period")?;
    for c in pod["spec"]["containers"]
        .as_array()
        .context("no containers")?
    {
        let sleep = c
            .pointer("/lifecycle/preStop/sleep/seconds")
            .and_then(Value::as_i64)
            .with_context(|| format!("container {} has no preStop sleep: {c}", c["name"]))?;
        ensure!(
            grace > sleep,
            "grace period {grace} s does not outlast the {sleep} s preStop sleep"
        );
    }
    ensure!(
        annotation(pod, LEASE_SELECTOR) == Some(selector),
        "lease annotation not {selector}: {}",
        pod["metadata"]["annotations"]
    );
    let env = &pod["spec"]["containers"][0]["env"][0];
    ensure!(env["value"] == selector, "lease env not {selector}: {env}");
    Ok(())
}

/// A stored Pod exactly as sent: none of calmplane's fields.
fn assert_pod_untouched(pod: &Value, name: &str) -> Result<()> {
    ensure!(!is_mutated(pod), "dnsConfig was added: {}", pod["spec"]);
    ensure!(
        pod["spec"]["containers"][0].get("lifecycle").is_none(),
        "a preStop hook was added: {}",
        pod["spec"]["containers"][0]
    );
    ensure!(
        pod["spec"]["terminationGracePeriodSeconds"] == 2,
        "grace period changed"
    );
    ensure!(
        annotation(pod, LEASE_SELECTOR) == Some(&format!("metadata.name={name}")),
        "lease annotation changed"
    );
    Ok(())
}

/// The apiserver's fail-opens of calmplane's Pod webhook.
fn fail_open(metrics: &str) -> f64 {
    fail_open_of(metrics, PODS_WEBHOOK)
}

/// The apiserver's fail-opens of `webhook`.
fn fail_open_of(metrics: &str, webhook: &str) -> f64 {
    prom::sum(
        metrics,
        "apiserver_admission_webhook_fail_open_count",
        &[("name", webhook)],
    )
}

/// The apiserver's CREATE calls to `webhook`, reinvocations included.
fn admission_calls(metrics: &str, webhook: &str) -> f64 {
    prom::sum(
        metrics,
        "apiserver_admission_webhook_admission_duration_seconds_count",
        &[("name", webhook), ("operation", "CREATE")],
    )
}

// --- runner -------------------------------------------------------------------

type Case = for<'a> fn(&'a Env) -> Pin<Box<dyn Future<Output = Result<()>> + 'a>>;

/// `(name, case)` pairs from `module::case` paths: a case is named after its
/// function alone, so that filters like `c5_` keep working.
macro_rules! cases {
    ($($module:ident :: $name:ident),* $(,)?) => {
        vec![$((stringify!($name), (|env| Box::pin($module::$name(env))) as Case)),*]
    };
}

fn main() {
    let mut args = Arguments::from_args();
    // One control plane, one calmplane: cases stop it and rotate its
    // certificates, so they run one at a time.
    args.test_threads = Some(1);
    let runtime = Arc::new(tokio::runtime::Runtime::new().expect("tokio runtime"));
    let env: Arc<OnceCell<std::result::Result<Env, String>>> = Arc::new(OnceCell::new());
    let cases: Vec<(&str, Case)> = cases![
        pods::c1_opt_in_and_exclusions,
        deployments::c2_deployments_through_the_controller,
        corpus::c3_corpus_manifests_accepted,
        corpus::c4_dry_run_and_diff,
        pods::c5_failure_policy,
        pods::c6_reinvocation,
        certificates::c7_certificate_rotation,
        register::c8_register,
        latency::c9_latency,
        lease_monitor::c10_lease_monitor,
        report::c11_report_mode,
        report::c12_audit_live_matches_file,
        certificates::c13_client_certificates,
        engines::c14_engines_same_result,
        engines::c14_engines_idempotent,
        engines::c14_engines_follow_config,
        match_conditions::c15_match_conditions,
        engines::c16_engine_latency,
        runbook::c17_runbook_commands,
    ];
    let trials = cases
        .into_iter()
        .map(|(name, case)| {
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
                    let start = std::time::Instant::now();
                    let result = case(env).await;
                    eprintln!("{name}: {:.1} s", start.elapsed().as_secs_f64());
                    result.map_err(|e| Failed::from(format!("{e:#}")))
                })
            })
        })
        .collect();
    let conclusion = libtest_mimic::run(&args, trials);
    // Stop the processes before exiting (exit skips destructors).
    drop(env);
    conclusion.exit()
}
