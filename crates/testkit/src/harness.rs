//! Shared test helpers: a real calmplane server on a loopback TLS socket, a
//! kept-alive TLS client that trusts only a given CA, and AdmissionReview
//! builders. Every integration test talks to the server through real sockets.

use base64::Engine as _;
use bytes::Bytes;
use calmplane::certs;
use calmplane::server::{AppState, ServeOptions};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::oneshot;

pub use crate::corpus::{corpus_dir, corpus_file};
pub use crate::prom::metric;
pub use crate::review::review;

/// A running server with its own dev certificates in a temp dir.
pub struct TestServer {
    /// The HTTPS port the tests connect to (ephemeral, on 127.0.0.1).
    pub addr: SocketAddr,
    /// The plaintext metrics port, when the test's options kept one.
    pub metrics_addr: Option<SocketAddr>,
    /// The CA that signed the serving certificate: clients trust only this.
    pub ca_pem: String,
    /// Holds the certificates (and whatever files a test adds); removed on drop.
    pub dir: tempfile::TempDir,
    /// The server's shared state: tests may swap its pipeline.
    pub state: Arc<AppState>,
    shutdown: Option<oneshot::Sender<()>>,
    /// The server task: resolves to `Server::run`'s result after shutdown.
    pub handle: tokio::task::JoinHandle<bool>,
}

impl TestServer {
    /// Start with the default options (ephemeral ports, no shutdown delay).
    pub async fn start() -> TestServer {
        TestServer::start_with(|_| {}).await
    }

    /// Start with options adjusted by `tweak` (ports are always ephemeral).
    pub async fn start_with(tweak: impl FnOnce(&mut ServeOptions)) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let generated =
            certs::generate(&certs::serving_names("calmplane", "calmplane")).expect("certs");
        certs::write(dir.path(), &generated).expect("write certs");
        let mut opts = ServeOptions::default();
        opts.tls.cert = dir.path().join("tls.crt");
        opts.tls.key = dir.path().join("tls.key");
        opts.listen = ([127, 0, 0, 1], 0).into();
        opts.metrics_listen = ([127, 0, 0, 1], 0).into();
        opts.shutdown_delay = Duration::from_millis(0);
        opts.reload_interval = Duration::from_millis(100);
        tweak(&mut opts);
        let server = opts.bind().await.expect("server binds");
        let addr = server.local_addr();
        let metrics_addr = Some(server.metrics_addr());
        let state = server.state.clone();
        let (tx, rx) = oneshot::channel();
        let handle = tokio::spawn(server.run(async move {
            let _ = rx.await;
        }));
        TestServer {
            addr,
            metrics_addr,
            ca_pem: generated.ca_pem,
            dir,
            state,
            shutdown: Some(tx),
            handle,
        }
    }

    /// A new kept-alive HTTPS connection that trusts only this server's CA.
    pub async fn client(&self) -> TlsClient {
        TlsClient::connect(self.addr, &self.ca_pem).await
    }

    /// Trigger shutdown and wait for the server to return.
    pub async fn stop(mut self) -> bool {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        (&mut self.handle).await.expect("server task")
    }

    /// GET /metrics on the plaintext metrics port.
    pub async fn metrics(&self) -> String {
        self.metrics_get("/metrics").await.1
    }

    /// GET a path on the plaintext metrics port: (status, body).
    pub async fn metrics_get(&self, path: &str) -> (u16, String) {
        let addr = self.metrics_addr.expect("metrics port");
        let tcp = TcpStream::connect(addr).await.expect("connect metrics");
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                .await
                .expect("http handshake");
        tokio::spawn(conn);
        let req = hyper::Request::get(path)
            .header("host", "localhost")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = send.send_request(req).await.expect("metrics response");
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }
}

/// A rustls client config trusting only `ca_pem`.
pub fn client_config(ca_pem: &str) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.expect("CA PEM")).expect("add CA");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// One kept-alive HTTPS connection.
pub struct TlsClient {
    send: SendRequest<Full<Bytes>>,
}

/// One HTTP response, read whole.
pub struct Reply {
    /// The HTTP status code.
    pub status: u16,
    /// The `content-type` header, empty when absent.
    pub content_type: String,
    /// The whole body.
    pub body: Bytes,
}

impl Reply {
    /// The body as JSON; panics with the body when it is not.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The body as text (lossy UTF-8).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl TlsClient {
    /// Connect to `addr`, trusting only `ca_pem`; panics on failure.
    pub async fn connect(addr: SocketAddr, ca_pem: &str) -> TlsClient {
        TlsClient::try_connect(addr, client_config(ca_pem))
            .await
            .expect("TLS connect")
    }

    /// Connect to `addr` with `config` (TLS as `localhost`), returning the error.
    pub async fn try_connect(
        addr: SocketAddr,
        config: Arc<rustls::ClientConfig>,
    ) -> Result<TlsClient, Box<dyn std::error::Error + Send + Sync>> {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let connector = tokio_rustls::TlsConnector::from(config);
        let tls = connector
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await?;
        let (send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await?;
        tokio::spawn(conn);
        Ok(TlsClient { send })
    }

    /// Send one request with `body`; panics when the exchange fails.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        content_type: &str,
        body: impl Into<Bytes>,
    ) -> Reply {
        self.try_request(method, path, content_type, body)
            .await
            .expect("request over TLS")
    }

    /// Send one request with `body`, returning a transport error.
    pub async fn try_request(
        &mut self,
        method: &str,
        path: &str,
        content_type: &str,
        body: impl Into<Bytes>,
    ) -> Result<Reply, hyper::Error> {
        let req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost")
            .header("content-type", content_type)
            .body(Full::new(body.into()))
            .unwrap();
        self.send.ready().await?;
        let resp = self.send.send_request(req).await?;
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok(Reply {
            status,
            content_type,
            body,
        })
    }

    /// GET `path`.
    pub async fn get(&mut self, path: &str) -> Reply {
        self.request("GET", path, "text/plain", Bytes::new()).await
    }

    /// POST an AdmissionReview to /mutate.
    pub async fn mutate(&mut self, review: &Value) -> Reply {
        self.request(
            "POST",
            "/mutate",
            "application/json",
            serde_json::to_vec(review).unwrap(),
        )
        .await
    }

    /// POST `body` as `content_type` to a preview endpoint at `path`.
    pub async fn preview(
        &mut self,
        path: &str,
        content_type: &str,
        body: impl Into<Bytes>,
    ) -> Reply {
        self.request("POST", path, content_type, body).await
    }
}

/// The Pod a workload's controller would create from its template, with the
/// generated name a ReplicaSet would give it.
pub fn pod_from_template(workload: &Value) -> Option<Value> {
    let mut pod = calmplane::preview::pod_from_template(workload)?;
    let name = workload["metadata"]["name"].as_str().unwrap_or("workload");
    pod["metadata"]["name"] = json!(format!("{name}-7d9f8b6c5-x2x4q"));
    Some(pod)
}

/// Decode a /mutate response: (allowed, patch ops or None, the response object).
pub fn decode_response(reply: &Reply) -> (Value, Option<Value>) {
    assert_eq!(reply.status, 200, "mutate failed: {}", reply.text());
    let review = reply.json();
    assert_eq!(review["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(review["kind"], "AdmissionReview");
    let response = review["response"].clone();
    assert_eq!(response["allowed"], true, "calmplane never denies");
    let patch = response.get("patch").map(|p| {
        let encoded = p
            .as_str()
            .expect("patch is a base64 string, not a byte array");
        assert_eq!(response["patchType"], "JSONPatch");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .expect("patch is base64");
        serde_json::from_slice::<Value>(&bytes).expect("patch is a JSON array")
    });
    if patch.is_none() {
        assert!(
            response.get("patchType").is_none(),
            "patchType without patch"
        );
    }
    (response, patch)
}

/// The `warnings` of an AdmissionResponse; none when absent, and when
/// present a list of strings.
pub fn warnings(response: &Value) -> Vec<String> {
    match response.get("warnings") {
        None => Vec::new(),
        Some(w) => w
            .as_array()
            .expect("warnings is a list")
            .iter()
            .map(|s| s.as_str().expect("warnings are strings").to_string())
            .collect(),
    }
}

/// The only warning of an AdmissionResponse, which must mention `about`.
pub fn one_warning(response: &Value, about: &str) -> String {
    let w = warnings(response);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].contains(about), "{w:?}");
    w.into_iter().next().unwrap()
}

/// Apply RFC 6902 `ops` with the json-patch crate.
pub fn apply_patch(object: &Value, ops: &Value) -> Value {
    let patch: json_patch::Patch = serde_json::from_value(ops.clone()).expect("patch parses");
    let mut out = object.clone();
    json_patch::patch(&mut out, &patch).expect("patch applies");
    out
}

/// The Python interpreter of the test venv (`make venv`), which has
/// `jsonpatch` and `kubernetes-validate`.
pub fn python() -> PathBuf {
    if let Ok(p) = std::env::var("CALMPLANE_PYTHON") {
        return PathBuf::from(p);
    }
    crate::corpus::repo_root().join(".venv/bin/python")
}

/// How long [`eventually`] waits: any reload (policy file, certificates) must
/// show within it. The server polls every 100 ms; this is generous for two
/// busy CI cores.
pub const EVENTUALLY_DEADLINE: Duration = Duration::from_secs(15);

/// Poll `check` until it is true, failing with `what` after
/// [`EVENTUALLY_DEADLINE`].
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = std::time::Instant::now();
    while !check().await {
        assert!(
            start.elapsed() < EVENTUALLY_DEADLINE,
            "timed out after {EVENTUALLY_DEADLINE:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Write through a temp file and a rename: the reader sees old or new, never a
/// mix. Used where a test needs exactly one change per step.
pub fn write_atomic(path: &Path, contents: &str) {
    let tmp = path.with_extension("tmp-write");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}
