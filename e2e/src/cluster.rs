//! etcd, kube-apiserver and kube-controller-manager as child processes on
//! loopback, for one test run.
//!
//! No scheduler and no kubelet: Pods stay Pending, and what the apiserver
//! stored is exactly what admission made of them. The controller-manager runs
//! only the controllers the suite needs (Deployments create ReplicaSets,
//! ReplicaSets create Pods, every namespace gets its `default`
//! ServiceAccount, and deleted objects are collected).

use crate::pki::{self, Pki};
use crate::{free_port, wait_until, Child};
use anyhow::{bail, Context as _, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The controllers kube-controller-manager runs: the fewer, the less CPU the
/// suite takes from a 2-core machine. EndpointSlices, for the runbook's
/// commands that read the Service's (c17).
const CONTROLLERS: &str = "deployment-controller,replicaset-controller,serviceaccount-controller,serviceaccount-token-controller,namespace-controller,garbage-collector-controller,endpointslice-controller";

/// Where e2e/build.sh put the binaries; `E2E_BIN_DIR` overrides it.
pub fn bin_dir() -> PathBuf {
    std::env::var_os("E2E_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("bin"))
}

/// A running control plane. Dropping it kills its processes.
pub struct Cluster {
    /// `https://127.0.0.1:<port>` of the apiserver.
    pub server: String,
    /// Admin kubeconfig, for kubectl and for `calmplane register`.
    pub kubeconfig: PathBuf,
    /// Admin client.
    pub client: kube::Client,
    /// Certificates of this run.
    pub pki: Pki,
    // Dropped in reverse order of start: the controller-manager first, etcd last.
    controller_manager: Child,
    apiserver: Child,
    _etcd: Child,
    /// The run's temp dir (etcd data, certificates, logs); kept on failure
    /// when `E2E_KEEP=1` so the logs can be read.
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

impl Cluster {
    /// Start etcd, the apiserver and the controller-manager, and wait until
    /// the apiserver is ready and the controller-manager has created the
    /// `default` ServiceAccount.
    ///
    /// The apiserver presents its webhook client certificate
    /// ([`Pki::webhook_client_cert`]) to the webhook at `webhook_client_host`
    /// (`host:port` of its `clientConfig.url`) and to no other: see
    /// `write_admission_config` below.
    pub async fn start(webhook_client_host: &str) -> Result<Cluster> {
        let bin = bin_dir();
        for name in [
            "etcd",
            "kube-apiserver",
            "kube-controller-manager",
            "kubectl",
        ] {
            if !bin.join(name).is_file() {
                bail!(
                    "{} is missing: build the control plane with `make e2e-build` (e2e/build.sh)",
                    bin.join(name).display()
                );
            }
        }
        let tmp = tempfile::Builder::new()
            .prefix("calmplane-e2e-")
            .tempdir()?;
        let (dir, tmp) = if std::env::var_os("E2E_KEEP").is_some() {
            (tmp.keep(), None)
        } else {
            (tmp.path().to_path_buf(), Some(tmp))
        };
        eprintln!("control plane files and logs in {}", dir.display());
        let pki = pki::write(&dir.join("pki"))?;
        let admission_config = write_admission_config(&dir, &pki, webhook_client_host)?;

        let client_port = free_port()?;
        let peer_port = free_port()?;
        let etcd_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let mut etcd = Command::new(bin.join("etcd"));
        etcd.arg("--name=e2e")
            .arg(format!("--data-dir={}", dir.join("etcd").display()))
            .arg(format!("--listen-client-urls={etcd_url}"))
            .arg(format!("--advertise-client-urls={etcd_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=e2e={peer_url}"))
            // A throwaway store: fsync only costs time on a shared disk.
            .arg("--unsafe-no-fsync")
            .arg("--log-level=warn");
        let etcd = Child::spawn("etcd", etcd, &dir)?;

        let port = free_port()?;
        let server = format!("https://127.0.0.1:{port}");
        let mut apiserver = Command::new(bin.join("kube-apiserver"));
        apiserver
            .arg(format!("--etcd-servers={etcd_url}"))
            .arg("--bind-address=127.0.0.1")
            .arg("--advertise-address=127.0.0.1")
            .arg(format!("--secure-port={port}"))
            .arg(format!(
                "--cert-dir={}",
                dir.join("apiserver-certs").display()
            ))
            .arg(format!("--tls-cert-file={}", pki.apiserver_cert.display()))
            .arg(format!(
                "--tls-private-key-file={}",
                pki.apiserver_key.display()
            ))
            .arg(format!("--client-ca-file={}", pki.ca.display()))
            .arg(format!(
                "--admission-control-config-file={}",
                admission_config.display()
            ))
            .arg("--authorization-mode=RBAC")
            .arg("--service-account-issuer=https://kubernetes.default.svc.cluster.local")
            .arg(format!(
                "--service-account-key-file={}",
                pki.sa_pub.display()
            ))
            .arg(format!(
                "--service-account-signing-key-file={}",
                pki.sa_key.display()
            ))
            .arg("--service-cluster-ip-range=10.96.0.0/16")
            // Some corpus Pods are privileged or use the host network.
            .arg("--allow-privileged=true")
            // A loopback address cannot be the `kubernetes` Service's endpoint.
            .arg("--endpoint-reconciler-type=none")
            .arg("--profiling=false")
            .arg("--v=1");
        let apiserver = Child::spawn("kube-apiserver", apiserver, &dir)?;

        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: e2e\n  cluster:\n    server: {server}\n    certificate-authority: {}\nusers:\n- name: admin\n  user:\n    client-certificate: {}\n    client-key: {}\ncontexts:\n- name: e2e\n  context:\n    cluster: e2e\n    user: admin\ncurrent-context: e2e\n",
                pki.ca.display(),
                pki.admin_cert.display(),
                pki.admin_key.display()
            ),
        )?;
        let kc = kube::config::Kubeconfig::read_from(&kubeconfig)?;
        let config =
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await?;
        let client = kube::Client::try_from(config)?;

        let mut cluster = Cluster {
            server,
            kubeconfig,
            client,
            pki,
            controller_manager: Child::none(),
            apiserver,
            _etcd: etcd,
            dir,
            _tmp: tmp,
        };
        cluster.wait_ready().await.with_context(|| {
            format!(
                "kube-apiserver not ready; its log:\n{}",
                cluster.apiserver.tail()
            )
        })?;

        let mut kcm = Command::new(bin.join("kube-controller-manager"));
        kcm.arg(format!("--kubeconfig={}", cluster.kubeconfig.display()))
            .arg("--leader-elect=false")
            .arg(format!("--controllers={CONTROLLERS}"))
            .arg(format!(
                "--service-account-private-key-file={}",
                cluster.pki.sa_key.display()
            ))
            .arg(format!("--root-ca-file={}", cluster.pki.ca.display()))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--secure-port={}", free_port()?))
            .arg("--v=1");
        cluster.controller_manager = Child::spawn("kube-controller-manager", kcm, &cluster.dir)?;
        cluster
            .wait_service_account("default")
            .await
            .with_context(|| {
                format!(
                "kube-controller-manager did not create the default ServiceAccount; its log:\n{}",
                cluster.controller_manager.tail()
            )
            })?;
        Ok(cluster)
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let client = self.client.clone();
        let apiserver = &mut self.apiserver;
        wait_until(Duration::from_secs(120), || {
            let client = client.clone();
            let exited = apiserver.exited();
            async move {
                if let Some(status) = exited {
                    bail!("kube-apiserver exited: {status}");
                }
                Ok(client
                    .request_text(get("/readyz")?)
                    .await
                    .is_ok_and(|t| t.trim() == "ok"))
            }
        })
        .await
    }

    /// Create (or relabel) namespace `name` with `labels` by server-side
    /// apply, and wait for its `default` ServiceAccount.
    pub async fn namespace(&self, name: &str, labels: &[(&str, &str)]) -> Result<()> {
        let api: kube::Api<k8s_openapi::api::core::v1::Namespace> =
            kube::Api::all(self.client.clone());
        let labels: serde_json::Map<String, serde_json::Value> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::json!(v)))
            .collect();
        let ns = serde_json::json!({"apiVersion": "v1", "kind": "Namespace",
                                    "metadata": {"name": name, "labels": labels}});
        api.patch(
            name,
            &kube::api::PatchParams::apply("calmplane-e2e").force(),
            &kube::api::Patch::Apply(&ns),
        )
        .await?;
        self.wait_service_account(name).await
    }

    /// Wait for the controller-manager to create `default` in `namespace`:
    /// until then the ServiceAccount admission plugin refuses Pods there.
    pub async fn wait_service_account(&self, namespace: &str) -> Result<()> {
        let api: kube::Api<k8s_openapi::api::core::v1::ServiceAccount> =
            kube::Api::namespaced(self.client.clone(), namespace);
        wait_until(Duration::from_secs(60), || {
            let api = api.clone();
            async move { Ok(api.get_opt("default").await?.is_some()) }
        })
        .await
    }

    /// The apiserver's own /metrics.
    pub async fn metrics(&self) -> Result<String> {
        Ok(self.client.request_text(get("/metrics")?).await?)
    }

    /// `kubectl` (the one e2e/build.sh built from the same release, or
    /// `KUBECTL`) against this cluster, with the admin kubeconfig.
    pub fn kubectl(&self) -> Command {
        let kubectl =
            std::env::var_os("KUBECTL").map_or_else(|| bin_dir().join("kubectl"), PathBuf::from);
        let mut cmd = Command::new(kubectl);
        cmd.env("KUBECONFIG", &self.kubeconfig);
        cmd
    }
}

/// Write the apiserver's `--admission-control-config-file` into `dir`, and
/// the kubeconfig it names; the path of the first.
///
/// The webhook admission plugins read only `users` from that kubeconfig, and
/// pick the entry for a call by the webhook's address (k8s.io/apiserver
/// `pkg/util/webhook/authentication.go`, `clientConfig`): the exact
/// `host:port` of a `clientConfig.url` (`name.namespace.svc:port` for a
/// `clientConfig.service`), then `*.`-prefixed names, then the same without
/// a port of 443, then `*`, then the current context's user; with none of
/// them, no credentials. The suite registers calmplane by URL on loopback
/// ports, so the one entry is named after the address `127.0.0.1:<port>`.
/// There is no `*` entry and no current context: every other webhook
/// (calmplane without `--client-ca`, the harness's own) is called exactly as
/// without this file. A TLS client only sends a certificate when the server
/// asks for one, and only calmplane with `--client-ca` asks.
///
/// The file formats are `AdmissionConfiguration` and
/// `WebhookAdmissionConfiguration` of `apiserver.config.k8s.io/v1`; the
/// apiserver refuses a relative `kubeConfigFile`.
fn write_admission_config(dir: &Path, pki: &Pki, webhook_client_host: &str) -> Result<PathBuf> {
    let kubeconfig = std::path::absolute(dir.join("webhook-client.kubeconfig"))?;
    let cert = std::path::absolute(&pki.webhook_client_cert)?;
    let key = std::path::absolute(&pki.webhook_client_key)?;
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nusers:\n- name: \"{webhook_client_host}\"\n  user:\n    client-certificate: \"{}\"\n    client-key: \"{}\"\n",
            cert.display(),
            key.display()
        ),
    )?;
    let plugin = |name: &str| {
        format!(
            "- name: {name}\n  configuration:\n    apiVersion: apiserver.config.k8s.io/v1\n    kind: WebhookAdmissionConfiguration\n    kubeConfigFile: \"{}\"\n",
            kubeconfig.display()
        )
    };
    let config = dir.join("admission-config.yaml");
    std::fs::write(
        &config,
        format!(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: AdmissionConfiguration\nplugins:\n{}{}",
            plugin("MutatingAdmissionWebhook"),
            plugin("ValidatingAdmissionWebhook")
        ),
    )?;
    Ok(config)
}

fn get(path: &str) -> Result<http::Request<Vec<u8>>> {
    Ok(http::Request::get(path).body(Vec::new())?)
}
