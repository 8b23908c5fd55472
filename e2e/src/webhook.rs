//! calmplane as a local process, registered with the apiserver through
//! `clientConfig.url` (loopback cannot be a Service endpoint), and a second,
//! tiny mutating webhook served by the harness for the reinvocation case.

use crate::{free_port, run, wait_until, Child};
use anyhow::{bail, Context as _, Result};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use serde_json::{json, Value};
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The calmplane binary the suite runs: `CALMPLANE_BIN`, or the workspace's
/// release build, built here first so a case never runs a stale binary
/// (release: case 9 measures its latency).
pub fn calmplane_bin() -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("CALMPLANE_BIN") {
        return Ok(PathBuf::from(bin));
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    run(Command::new(cargo).current_dir(&root).args([
        "build",
        "--release",
        "--package",
        "calmplane",
        "--bin",
        "calmplane",
    ]))?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    Ok(target.join("release").join("calmplane"))
}

/// `calmplane serve` on loopback ports, with certificates from `calmplane certs`.
pub struct Calmplane {
    bin: PathBuf,
    /// Holds `ca.crt`, `tls.crt` and `tls.key` (what `serve` reads).
    pub certs: PathBuf,
    /// The TLS port.
    pub addr: SocketAddr,
    /// The plaintext metrics port.
    pub metrics_addr: SocketAddr,
    /// Its name in the run's directory: `<name>.log`, `<name>-certs/`.
    name: String,
    /// `serve` flags beyond the ones every instance gets (`--client-ca`...).
    args: Vec<OsString>,
    log_dir: PathBuf,
    child: Child,
}

impl Calmplane {
    /// Generate certificates and start serving on a free port, with no
    /// further flags: the instance every case shares.
    pub async fn start(bin: PathBuf, dir: &Path) -> Result<Calmplane> {
        let addr = ([127, 0, 0, 1], free_port()?).into();
        Calmplane::start_with(bin, dir, "calmplane", addr, Vec::new()).await
    }

    /// Generate certificates and start serving on `addr` with the further
    /// `serve` flags `args`, logging to `<dir>/<name>.log`. The certificate
    /// directory `<dir>/<name>-certs` is laid out as the kubelet lays out a
    /// Secret volume (`tls.crt -> ..data/tls.crt`, `..data ->
    /// <generation>/`), so that it can be rotated both in place and by
    /// swapping the `..data` symlink.
    pub async fn start_with(
        bin: PathBuf,
        dir: &Path,
        name: &str,
        addr: SocketAddr,
        args: Vec<OsString>,
    ) -> Result<Calmplane> {
        let certs = dir.join(format!("{name}-certs"));
        std::fs::create_dir_all(&certs)?;
        let mut calmplane = Calmplane {
            bin,
            certs,
            addr,
            metrics_addr: ([127, 0, 0, 1], free_port()?).into(),
            name: name.to_string(),
            args,
            log_dir: dir.to_path_buf(),
            child: Child::none(),
        };
        let first = calmplane.generate("gen-1")?;
        std::os::unix::fs::symlink(
            first.file_name().context("generation")?,
            calmplane.certs.join("..data"),
        )?;
        for file in ["ca.crt", "tls.crt", "tls.key"] {
            std::os::unix::fs::symlink(format!("..data/{file}"), calmplane.certs.join(file))?;
        }
        calmplane.resume().await?;
        Ok(calmplane)
    }

    /// `calmplane certs` into a new generation directory beside `..data`
    /// (a fresh CA and serving certificate); its path.
    pub fn generate(&self, generation: &str) -> Result<PathBuf> {
        let out = self.certs.join(generation);
        run(Command::new(&self.bin).arg("certs").arg("--out").arg(&out))?;
        Ok(out)
    }

    /// Point `..data` at `generation` with one atomic rename, as the kubelet
    /// does when a Secret changes.
    pub fn swap_data(&self, generation: &Path) -> Result<()> {
        let tmp = self.certs.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(generation.file_name().context("generation")?, &tmp)?;
        std::fs::rename(&tmp, self.certs.join("..data"))?;
        Ok(())
    }

    /// `https://127.0.0.1:<port>`: the base of its webhook URLs.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The CA the apiserver must trust.
    pub fn ca_bundle(&self) -> PathBuf {
        self.certs.join("ca.crt")
    }

    /// Kill the process (the apiserver then fails open).
    pub fn stop(&mut self) {
        self.child.kill();
    }

    /// Stop it and start it again with the further `serve` flags `args`
    /// instead of the ones it had.
    pub async fn restart_with(&mut self, args: Vec<OsString>) -> Result<()> {
        self.stop();
        self.args = args;
        self.resume().await
    }

    /// Start it again on the same ports with the same certificates, and wait
    /// until it serves.
    pub async fn resume(&mut self) -> Result<()> {
        let mut cmd = Command::new(&self.bin);
        cmd.args(["--log-format", "text", "serve"])
            .arg(format!("--listen={}", self.addr))
            .arg(format!("--metrics-listen={}", self.metrics_addr))
            .arg("--cert")
            .arg(self.certs.join("tls.crt"))
            .arg("--key")
            .arg(self.certs.join("tls.key"))
            .arg("--reload-interval=200ms")
            .arg("--shutdown-delay=0s")
            .args(&self.args)
            .env("CALMPLANE_LOG", "warn");
        self.child = Child::spawn(&self.name, cmd, &self.log_dir)?;
        let metrics_addr = self.metrics_addr;
        let child = &mut self.child;
        wait_until(Duration::from_secs(30), || {
            let exited = child.exited();
            async move {
                if let Some(status) = exited {
                    bail!("calmplane exited: {status}");
                }
                Ok(plain_get(metrics_addr, "/metrics").await.is_ok())
            }
        })
        .await
        .with_context(|| format!("calmplane did not start; its log:\n{}", self.child.tail()))
    }

    /// calmplane's own /metrics.
    pub async fn metrics(&self) -> Result<String> {
        plain_get(self.metrics_addr, "/metrics").await
    }

    /// The `calmplane` command itself (for `manifests`, `register`, `preview`).
    pub fn command(&self) -> Command {
        Command::new(&self.bin)
    }

    /// The MutatingWebhookConfiguration for this process: `calmplane
    /// manifests --url <url>`, which points every webhook at `<url><its path>`.
    /// `ca_bundle` is the PEM file the apiserver trusts calmplane with.
    pub fn webhook_configuration(&self, ca_bundle: &Path) -> Result<Value> {
        let yaml = run(self
            .command()
            .arg("manifests")
            .arg("--ca-bundle")
            .arg(ca_bundle)
            .arg("--url")
            .arg(self.url()))?;
        Ok(calmplane::yaml::from_str(&yaml)?)
    }
}

/// GET over plain HTTP/1.0 (calmplane's metrics port), the body on 200.
pub async fn plain_get(addr: SocketAddr, path: &str) -> Result<String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await?;
    let mut response = String::new();
    tcp.read_to_string(&mut response).await?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("no HTTP header end")?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        bail!("GET {path}: {}", head.lines().next().unwrap_or_default());
    }
    Ok(body.to_string())
}

/// What a request over TLS got back: the status code and the body.
#[derive(Debug)]
pub struct TlsResponse {
    /// The HTTP status code.
    pub status: u16,
    /// The body.
    pub body: String,
}

/// The rustls client config of [`tls_request`] and [`tls12_handshake`]:
/// trust only `ca_pem` for the server, present `client` (certificate PEM
/// file, key PEM file) when given.
fn client_config(
    ca_pem: &str,
    client: Option<(&Path, &Path)>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Result<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)?
        .with_root_certificates(roots);
    Ok(match client {
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)?.collect::<Result<Vec<_>, _>>()?;
            builder.with_client_auth_cert(chain, PrivateKeyDer::from_pem_file(key)?)?
        }
        None => builder.with_no_client_auth(),
    })
}

/// A TLS 1.2 handshake with `addr`, presenting `client`, and nothing after
/// it. In TLS 1.2 the server checks a client certificate before it finishes
/// the handshake, so its refusal is the handshake's error, read as an
/// alert. (In TLS 1.3 the client's handshake is done before the server has
/// checked: the alert comes after, and can lose the race with the client's
/// first write, which then fails with a broken pipe instead.)
pub async fn tls12_handshake(
    addr: SocketAddr,
    ca_pem: &str,
    client: Option<(&Path, &Path)>,
) -> Result<()> {
    let config = client_config(ca_pem, client, &[&rustls::version::TLS12])?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    connector
        .connect(
            rustls::pki_types::ServerName::try_from(addr.ip().to_string())?,
            tcp,
        )
        .await
        .context("TLS 1.2 handshake")?;
    Ok(())
}

/// One HTTP/1.1 request to `addr` over TLS 1.3 or 1.2 (as the apiserver
/// offers them), trusting only `ca_pem` for the server, and presenting `client`
/// (certificate PEM file, key PEM file) when given, as the apiserver does.
/// An error when the handshake or the exchange fails.
pub async fn tls_request(
    addr: SocketAddr,
    ca_pem: &str,
    client: Option<(&Path, &Path)>,
    method: &str,
    path: &str,
    body: &[u8],
) -> Result<TlsResponse> {
    use rustls::pki_types::ServerName;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let config = client_config(ca_pem, client, rustls::DEFAULT_VERSIONS)?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let mut tls = connector
        .connect(ServerName::try_from(addr.ip().to_string())?, tcp)
        .await
        .context("TLS handshake")?;
    // Head and body in one write: calmplane refuses a request before it
    // reads the body, and a body arriving after it closed the connection
    // would be answered with a reset that can cost the client the response.
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    tls.write_all(&request).await?;
    tls.flush().await?;
    let mut response = Vec::new();
    match tls.read_to_end(&mut response).await {
        Ok(_) => {}
        // A server that closes without close_notify after a complete
        // response (Connection: close) is no failure of the exchange.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !response.is_empty() => {}
        Err(e) => return Err(e).context("reading the response"),
    }
    let response = String::from_utf8(response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("no HTTP header end")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("no status in {head:?}"))?;
    Ok(TlsResponse {
        status,
        body: body.to_string(),
    })
}

/// Server-side apply `config` (a MutatingWebhookConfiguration) as field
/// manager `calmplane-e2e`.
pub async fn apply_webhook_configuration(client: &kube::Client, config: &Value) -> Result<()> {
    use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
    let name = config["metadata"]["name"]
        .as_str()
        .context("no metadata.name")?;
    let api: kube::Api<MutatingWebhookConfiguration> = kube::Api::all(client.clone());
    api.patch(
        name,
        &kube::api::PatchParams::apply("calmplane-e2e").force(),
        &kube::api::Patch::Apply(config),
    )
    .await?;
    Ok(())
}

/// A second mutating webhook, served by the harness over TLS: it adds one
/// container named [`AddsContainer::CONTAINER`] to Pods that lack it, so the
/// apiserver must reinvoke calmplane (ordered before it) for that container.
pub struct AddsContainer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The CA of its serving certificate.
    pub ca_pem: String,
    /// How many AdmissionReviews it has answered.
    pub calls: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl AddsContainer {
    /// The container it adds.
    pub const CONTAINER: &'static str = "added-by-e2e";

    /// Listen on a loopback port.
    pub async fn start() -> Result<AddsContainer> {
        let certs = calmplane::certs::generate(&["127.0.0.1".to_string()])?;
        let key = rustls::pki_types::PrivateKeyDer::try_from(
            rustls::pki_types::pem::PemObject::from_pem_slice(certs.key_pem.as_bytes()).map(
                |k: rustls::pki_types::PrivatePkcs8KeyDer<'static>| k.secret_pkcs8_der().to_vec(),
            )?,
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        let chain: Vec<rustls::pki_types::CertificateDer<'static>> =
            rustls::pki_types::pem::PemObject::pem_slice_iter(certs.cert_pem.as_bytes())
                .collect::<Result<_, _>>()?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = calls.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let counter = counter.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |req| {
                        let counter = counter.clone();
                        async move { Ok::<_, hyper::Error>(answer(req, &counter).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Ok(AddsContainer {
            addr,
            ca_pem: certs.ca_pem,
            calls,
            task,
        })
    }

    /// Its MutatingWebhookConfiguration: Pods in namespaces labelled
    /// `calmplane.dev/enabled`, named to sort after `calmplane` (the
    /// apiserver calls configurations in name order).
    pub fn configuration(&self) -> Value {
        use base64::Engine as _;
        json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": "zz-e2e-adds-container"},
            "webhooks": [{
                "name": "adds-container.e2e.calmplane.dev",
                "admissionReviewVersions": ["v1"],
                "clientConfig": {
                    "url": format!("https://{}/mutate", self.addr),
                    "caBundle": base64::engine::general_purpose::STANDARD.encode(&self.ca_pem),
                },
                "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                           "resources": ["pods"], "scope": "Namespaced"}],
                "namespaceSelector": {"matchLabels": {"calmplane.dev/enabled": "true", "e2e.calmplane.dev/adds-container": "true"}},
                "sideEffects": "None",
                "timeoutSeconds": 5,
                "failurePolicy": "Fail",
                "reinvocationPolicy": "IfNeeded",
            }]
        })
    }
}

impl Drop for AddsContainer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(
    req: hyper::Request<hyper::body::Incoming>,
    calls: &AtomicUsize,
) -> hyper::Response<Full<Bytes>> {
    use base64::Engine as _;
    calls.fetch_add(1, Ordering::SeqCst);
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let review: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let uid = review["request"]["uid"].clone();
    let has_it = review["request"]["object"]["spec"]["containers"]
        .as_array()
        .is_some_and(|cs| cs.iter().any(|c| c["name"] == AddsContainer::CONTAINER));
    let mut response = json!({"uid": uid, "allowed": true});
    if !has_it {
        let patch = json!([{"op": "add", "path": "/spec/containers/-",
                            "value": {"name": AddsContainer::CONTAINER, "image": "registry.k8s.io/pause:3.10"}}]);
        response["patchType"] = json!("JSONPatch");
        response["patch"] =
            json!(base64::engine::general_purpose::STANDARD.encode(patch.to_string()));
    }
    let out = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response});
    hyper::Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(out.to_string())))
        .unwrap_or_default()
}
