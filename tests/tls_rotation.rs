//! Certificate rotation under a running server, through real TLS handshakes.
//!
//! Both ways Kubernetes updates a mounted Secret are exercised: files
//! rewritten in place, and the kubelet's atomic `..data` symlink swap. After
//! every rotation a client trusting only the new CA must get in and one
//! trusting only the old CA must not; connections opened before keep working;
//! invalid rotations keep the old pair and are counted. mTLS (`client_ca`)
//! refuses clients without a certificate or with one from another CA, and its
//! CA file reloads the same way.

use calmplane_testkit::harness::*;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------- PKI

type Ca = CertifiedIssuer<'static, KeyPair>;

fn dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

fn ca_params(common_name: &str) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.distinguished_name = dn(common_name);
    validity(&mut params);
    params
}

fn validity(params: &mut CertificateParams) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(30);
}

fn root_ca(common_name: &str) -> Ca {
    CertifiedIssuer::self_signed(ca_params(common_name), KeyPair::generate().unwrap()).unwrap()
}

fn intermediate_ca(common_name: &str, parent: &Ca) -> Ca {
    CertifiedIssuer::signed_by(ca_params(common_name), KeyPair::generate().unwrap(), parent)
        .unwrap()
}

/// A PEM certificate and its PEM key.
#[derive(Clone)]
struct Pair {
    cert: String,
    key: String,
}

fn leaf(issuer: &Ca, purpose: ExtendedKeyUsagePurpose) -> Pair {
    let names = certs_names();
    let mut params = CertificateParams::new(names.clone()).unwrap();
    params.distinguished_name = dn(&names[0]);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![purpose];
    validity(&mut params);
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    Pair {
        cert: cert.pem(),
        key: key.serialize_pem(),
    }
}

fn certs_names() -> Vec<String> {
    calmplane::certs::serving_names("calmplane", "calmplane")
}

fn server_leaf(issuer: &Ca) -> Pair {
    leaf(issuer, ExtendedKeyUsagePurpose::ServerAuth)
}

fn client_leaf(issuer: &Ca) -> Pair {
    leaf(issuer, ExtendedKeyUsagePurpose::ClientAuth)
}

/// A client certificate whose subject common name is `common_name`, and no
/// DNS name, as kubeadm writes the apiserver's client certificates.
fn named_client_leaf(issuer: &Ca, common_name: &str) -> Pair {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name = dn(common_name);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    validity(&mut params);
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    Pair {
        cert: cert.pem(),
        key: key.serialize_pem(),
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client that trusts only `ca_pem` and presents `identity`.
fn mtls_client_config(ca_pem: &str, identity: &Pair) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let chain = CertificateDer::pem_slice_iter(identity.cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(identity.key.as_bytes()).unwrap();
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .unwrap(),
    )
}

// ---------------------------------------------------------------- files

/// A Secret volume as the kubelet lays it out:
///
/// ```text
/// dir/..2026_01_01_00_00_00.000000001/tls.crt   real files
/// dir/..data -> ..2026_01_01_00_00_00.000000001
/// dir/tls.crt -> ..data/tls.crt
/// ```
///
/// An update writes a new timestamped dir, points `..data_tmp` at it, renames
/// `..data_tmp` over `..data` (the atomic step) and deletes the old dir.
struct SecretVolume {
    dir: PathBuf,
    generation: u32,
    current: Option<PathBuf>,
}

impl SecretVolume {
    fn create(dir: &Path, files: &[(&str, &str)]) -> SecretVolume {
        std::fs::create_dir_all(dir).unwrap();
        let mut volume = SecretVolume {
            dir: dir.to_path_buf(),
            generation: 0,
            current: None,
        };
        volume.swap(files);
        for (name, _) in files {
            std::os::unix::fs::symlink(format!("..data/{name}"), dir.join(name)).unwrap();
        }
        volume
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn swap(&mut self, files: &[(&str, &str)]) {
        self.generation += 1;
        let stamp = format!("..2026_01_01_00_00_{:02}.{:09}", self.generation, 1);
        let real = self.dir.join(&stamp);
        std::fs::create_dir(&real).unwrap();
        for (name, contents) in files {
            std::fs::write(real.join(name), contents).unwrap();
        }
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&stamp, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
        if let Some(old) = self.current.replace(real) {
            std::fs::remove_dir_all(old).unwrap();
        }
    }
}

// ---------------------------------------------------------------- probes

/// One fresh connection and a raw `GET /healthz`, read from the TLS stream
/// itself so that a TLS alert (sent after the handshake in TLS 1.3, when the
/// server rejects a client certificate) is reported as what it is. `Err`
/// carries the whole error chain.
async fn probe(server: &TestServer, config: Arc<rustls::ClientConfig>) -> Result<u16, String> {
    request(server, config, "GET /healthz").await
}

/// The status of an empty-bodied `/mutate` (400 once past the certificate
/// check, 403 when the connection may not use it).
async fn admission(server: &TestServer, config: Arc<rustls::ClientConfig>) -> Result<u16, String> {
    request(server, config, "POST /mutate").await
}

async fn request(
    server: &TestServer,
    config: Arc<rustls::ClientConfig>,
    method_path: &str,
) -> Result<u16, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let attempt = async {
        let tcp = tokio::net::TcpStream::connect(server.addr)
            .await
            .map_err(|e| chain(&e))?;
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("handshake: {}", chain(&e)))?;
        let head = format!(
            "{method_path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        tls.write_all(head.as_bytes())
            .await
            .map_err(|e| format!("write: {}", chain(&e)))?;
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = tls
                .read(&mut buf)
                .await
                .map_err(|e| format!("read: {}", chain(&e)))?;
            if n == 0 {
                return Err(format!(
                    "connection closed after {} bytes of response",
                    head.len()
                ));
            }
            head.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&head);
        text.split(' ')
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or_else(|| format!("not an HTTP response: {text:?}"))
    };
    tokio::time::timeout(Duration::from_secs(10), attempt)
        .await
        .unwrap_or_else(|_| Err("probe timed out".to_string()))
}

fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

async fn trusting(server: &TestServer, ca_pem: &str) -> Result<u16, String> {
    probe(server, client_config(ca_pem)).await
}

const RELOAD_OK: &str = r#"calmplane_tls_reloads_total{result="success"}"#;
const RELOAD_ERR: &str = r#"calmplane_tls_reloads_total{result="error"}"#;

async fn reloads(server: &TestServer) -> (u64, u64) {
    let text = server.metrics().await;
    (metric(&text, RELOAD_OK), metric(&text, RELOAD_ERR))
}

/// The server presents a certificate from `good` and not from `bad`.
async fn assert_serving(server: &TestServer, good: &str, bad: &str, when: &str) {
    assert_eq!(
        trusting(server, good).await,
        Ok(200),
        "{when}: a client trusting the expected CA must get in"
    );
    let refused = trusting(server, bad).await;
    let err = refused.expect_err(&format!("{when}: a client trusting the other CA got in"));
    assert!(
        err.contains("certificate") || err.contains("UnknownIssuer"),
        "{when}: unexpected failure: {err}"
    );
}

/// A request on an already-open connection still gets a real answer.
async fn assert_open_connection_works(client: &mut TlsClient, when: &str) {
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "ns"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]}});
    let reply = client
        .try_request(
            "POST",
            "/mutate",
            "application/json",
            serde_json::to_vec(&review("u-open", "CREATE", "ns", &pod, None)).unwrap(),
        )
        .await
        .unwrap_or_else(|e| panic!("{when}: open connection broke: {}", chain(&e)));
    let (response, patch) = decode_response(&reply);
    assert_eq!(response["uid"], "u-open");
    assert!(patch.is_some(), "{when}: expected a patch");
}

/// A serving pair from a CA of its own, written as `tls.crt` and `tls.key`
/// in a directory, for the tests that turn on client certificates.
struct Serving {
    /// Where the certificate was written, for `--tls-cert`.
    cert: PathBuf,
    /// Where the key was written, for `--tls-key`.
    key: PathBuf,
    /// The CA that signed it, which the test's clients trust.
    ca: Ca,
}

impl Serving {
    fn write(dir: &std::path::Path) -> Serving {
        let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
        let ca = root_ca("server CA");
        let serving = server_leaf(&ca);
        std::fs::write(&cert, &serving.cert).unwrap();
        std::fs::write(&key, &serving.key).unwrap();
        Serving { cert, key, ca }
    }
}

/// A server with the certificate and key at the given paths. The header
/// timeout is raised so that a connection held idle across a reload is not
/// closed as idle while the test waits.
async fn start(cert: PathBuf, key: PathBuf, client_ca: Option<PathBuf>) -> TestServer {
    TestServer::start_with(move |opts| {
        opts.tls.cert = cert;
        opts.tls.key = key;
        opts.tls.client_ca = client_ca;
        opts.limits.header_read_timeout = Duration::from_secs(60);
    })
    .await
}

/// After `what` rotated the served pair to one from `new_ca`: it is served
/// within [`EVENTUALLY_DEADLINE`], a client trusting only `old_ca` is
/// refused, the connection opened before still works, and the reload is
/// counted as a success (`ok_before` is the count from before).
async fn assert_rotated(
    server: &TestServer,
    open: &mut TlsClient,
    new_ca: &Ca,
    old_ca: &Ca,
    ok_before: u64,
    what: &str,
) {
    let started = Instant::now();
    eventually("a client trusting only the new CA gets in", || async {
        trusting(server, &new_ca.pem()).await == Ok(200)
    })
    .await;
    println!(
        "{what}: new certificate served after {:?}",
        started.elapsed()
    );
    let when = format!("after {what}");
    assert_serving(server, &new_ca.pem(), &old_ca.pem(), &when).await;
    assert_open_connection_works(open, &when).await;
    let (ok_after, _) = reloads(server).await;
    assert!(ok_after > ok_before, "{what}: success reload not counted");
}

// ---------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_in_place_serves_the_new_pair_and_keeps_open_connections() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let (ca_a, ca_b, ca_c) = (root_ca("A"), root_ca("B"), root_ca("C"));
    let a = server_leaf(&ca_a);
    std::fs::write(&cert, &a.cert).unwrap();
    std::fs::write(&key, &a.key).unwrap();
    let server = start(cert.clone(), key.clone(), None).await;
    assert_serving(&server, &ca_a.pem(), &ca_b.pem(), "before rotation").await;
    let mut open = TlsClient::connect(server.addr, &ca_a.pem()).await;
    assert_open_connection_works(&mut open, "before rotation").await;

    for (round, (new_ca, old_ca)) in [(&ca_b, &ca_a), (&ca_c, &ca_b)].into_iter().enumerate() {
        let (ok_before, _) = reloads(&server).await;
        // In place, as a hostPath or some CSI drivers do: truncate and write each file.
        let next = server_leaf(new_ca);
        std::fs::write(&cert, &next.cert).unwrap();
        std::fs::write(&key, &next.key).unwrap();
        let what = format!("in-place rotation {round}");
        assert_rotated(&server, &mut open, new_ca, old_ca, ok_before, &what).await;
    }
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_by_data_symlink_swap_serves_the_new_pair_and_keeps_open_connections() {
    let dir = tempfile::tempdir().unwrap();
    let (ca_a, ca_b, ca_c) = (root_ca("A"), root_ca("B"), root_ca("C"));
    let a = server_leaf(&ca_a);
    let mut volume = SecretVolume::create(
        &dir.path().join("secret"),
        &[
            ("ca.crt", &ca_a.pem()),
            ("tls.crt", &a.cert),
            ("tls.key", &a.key),
        ],
    );
    assert!(std::fs::symlink_metadata(volume.path("tls.crt"))
        .unwrap()
        .file_type()
        .is_symlink());
    let server = start(volume.path("tls.crt"), volume.path("tls.key"), None).await;
    assert_serving(&server, &ca_a.pem(), &ca_b.pem(), "before rotation").await;
    let mut open = TlsClient::connect(server.addr, &ca_a.pem()).await;

    for (new_ca, old_ca) in [(&ca_b, &ca_a), (&ca_c, &ca_b)] {
        let next = server_leaf(new_ca);
        let (ok_before, _) = reloads(&server).await;
        volume.swap(&[
            ("ca.crt", &new_ca.pem()),
            ("tls.crt", &next.cert),
            ("tls.key", &next.key),
        ]);
        assert_rotated(
            &server,
            &mut open,
            new_ca,
            old_ca,
            ok_before,
            "symlink swap",
        )
        .await;
    }
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_rotations_keep_the_old_pair_and_are_each_counted() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let (ca_a, ca_b) = (root_ca("A"), root_ca("B"));
    let a = server_leaf(&ca_a);
    let b = server_leaf(&ca_b);
    let (c, d) = (server_leaf(&ca_b), server_leaf(&ca_b));
    std::fs::write(&cert, &a.cert).unwrap();
    std::fs::write(&key, &a.key).unwrap();
    let server = start(cert.clone(), key.clone(), None).await;
    let mut open = TlsClient::connect(server.addr, &ca_a.pem()).await;
    assert_eq!(reloads(&server).await, (0, 0));

    // Each step changes exactly one file, atomically, so each is one reload
    // attempt, and each leaves an invalid pair on disk.
    let half_cert = &b.cert[..b.cert.len() / 2];
    let steps: [(&str, &Path, &str); 6] = [
        ("key from another pair", &key, &c.key),
        (
            "a second, different mismatched key (same error text)",
            &key,
            &d.key,
        ),
        ("half-written certificate", &cert, half_cert),
        (
            "certificate file with no PEM in it",
            &cert,
            "not a certificate\n",
        ),
        ("empty certificate file", &cert, ""),
        (
            "the next certificate, its key not yet written",
            &cert,
            &b.cert,
        ),
    ];
    for (expected_errors, (what, path, contents)) in (1u64..).zip(steps) {
        write_atomic(path, contents);
        eventually(&format!("error reload counted for: {what}"), || async {
            reloads(&server).await.1 >= expected_errors
        })
        .await;
        assert_eq!(
            reloads(&server).await,
            (0, expected_errors),
            "after {what}: exactly one failed attempt more, no success"
        );
        assert_serving(&server, &ca_a.pem(), &ca_b.pem(), what).await;
        assert_open_connection_works(&mut open, what).await;
    }

    // Completing the pair is a valid rotation.
    write_atomic(&key, &b.key);
    eventually("the completed pair is served", || async {
        trusting(&server, &ca_b.pem()).await == Ok(200)
    })
    .await;
    assert_serving(
        &server,
        &ca_b.pem(),
        &ca_a.pem(),
        "after completing the pair",
    )
    .await;
    assert_eq!(reloads(&server).await, (1, 6));
    assert_open_connection_works(&mut open, "after completing the pair").await;

    // A file that disappears for a while (a swap in progress) is one error, not one per tick.
    std::fs::remove_file(&key).unwrap();
    eventually("missing key counted", || async {
        reloads(&server).await.1 >= 7
    })
    .await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        reloads(&server).await,
        (1, 7),
        "a missing file must be counted once"
    );
    assert_serving(
        &server,
        &ca_b.pem(),
        &ca_a.pem(),
        "while the key is missing",
    )
    .await;
    write_atomic(&key, &b.key);
    // Same bytes as before: nothing to reload; still serving B.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_serving(&server, &ca_b.pem(), &ca_a.pem(), "key back").await;
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_chains_with_an_intermediate_are_served_whole() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let root = root_ca("root");
    let intermediate = intermediate_ca("intermediate 1", &root);
    let leaf1 = server_leaf(&intermediate);
    std::fs::write(&cert, format!("{}{}", leaf1.cert, intermediate.pem())).unwrap();
    std::fs::write(&key, &leaf1.key).unwrap();
    let server = start(cert.clone(), key.clone(), None).await;
    let other = root_ca("other");
    assert_serving(&server, &root.pem(), &other.pem(), "leaf + intermediate").await;

    // Rotate to a chain through a different intermediate under the same root.
    let intermediate2 = intermediate_ca("intermediate 2", &root);
    let leaf2 = server_leaf(&intermediate2);
    let (ok_before, _) = reloads(&server).await;
    write_atomic(&key, &leaf2.key);
    write_atomic(&cert, &format!("{}{}", leaf2.cert, intermediate2.pem()));
    eventually("the second chain is loaded", || async {
        reloads(&server).await.0 > ok_before
    })
    .await;
    assert_serving(&server, &root.pem(), &other.pem(), "second chain").await;

    // The intermediate really is sent: without it, a client that trusts the
    // root alone cannot build a path.
    let (ok_before, _) = reloads(&server).await;
    write_atomic(&cert, &leaf2.cert);
    eventually("the leaf-only file is loaded", || async {
        reloads(&server).await.0 > ok_before
    })
    .await;
    let err = trusting(&server, &root.pem())
        .await
        .expect_err("a leaf without its intermediate must not verify against the root");
    assert!(err.contains("UnknownIssuer"), "{err}");
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_refuses_admission_without_a_certificate_from_the_client_ca() {
    let dir = tempfile::tempdir().unwrap();
    let Serving {
        cert,
        key,
        ca: server_ca,
    } = Serving::write(dir.path());
    let (client_ca_x, client_ca_y) = (root_ca("apiserver client CA X"), root_ca("client CA Y"));
    let mut volume = SecretVolume::create(
        &dir.path().join("client-ca"),
        &[("ca.crt", &client_ca_x.pem())],
    );
    let server = start(cert, key, Some(volume.path("ca.crt"))).await;
    let srv = server_ca.pem();
    let x_client = mtls_client_config(&srv, &client_leaf(&client_ca_x));
    let y_client = mtls_client_config(&srv, &client_leaf(&client_ca_y));
    // A certificate signed by the *server* CA is still the wrong one.
    let server_ca_client = mtls_client_config(&srv, &client_leaf(&server_ca));

    assert_eq!(probe(&server, x_client.clone()).await, Ok(200));
    assert_eq!(admission(&server, x_client.clone()).await, Ok(400));
    // No certificate, as the kubelet's HTTPS probes: the probes answer, the
    // admission paths do not.
    assert_eq!(probe(&server, client_config(&srv)).await, Ok(200));
    assert_eq!(
        request(&server, client_config(&srv), "GET /readyz").await,
        Ok(200)
    );
    for path in ["POST /mutate", "POST /report", "POST /preview"] {
        assert_eq!(
            request(&server, client_config(&srv), path).await,
            Ok(403),
            "{path} without a client certificate"
        );
    }
    // A certificate that does not verify is refused in the handshake,
    // whatever the path.
    for (name, config) in [("CA Y", &y_client), ("server CA", &server_ca_client)] {
        let err = probe(&server, config.clone())
            .await
            .expect_err(&format!("a client certificate from {name} got in"));
        println!("client certificate from {name}: {err}");
        assert!(
            err.contains("UnknownCA") || err.contains("BadCertificate"),
            "{name}: {err}"
        );
    }
    let mut open = TlsClient::try_connect(server.addr, x_client.clone())
        .await
        .unwrap();
    assert_open_connection_works(&mut open, "mTLS before client CA rotation").await;

    // Rotate the client CA by symlink swap: Y in, X out.
    volume.swap(&[("ca.crt", &client_ca_y.pem())]);
    eventually("a client certificate from Y gets in", || async {
        probe(&server, y_client.clone()).await == Ok(200)
    })
    .await;
    let err = probe(&server, x_client.clone())
        .await
        .expect_err("X must be refused after the client CA rotated to Y");
    assert!(
        err.contains("UnknownCA") || err.contains("BadCertificate"),
        "{err}"
    );
    assert_open_connection_works(&mut open, "mTLS after client CA rotation").await;

    // An invalid client CA keeps Y.
    let (_, err_before) = reloads(&server).await;
    volume.swap(&[("ca.crt", "-----BEGIN CERTIFICATE-----\nMIIB\n")]);
    eventually("invalid client CA counted", || async {
        reloads(&server).await.1 > err_before
    })
    .await;
    assert_eq!(probe(&server, y_client.clone()).await, Ok(200));
    assert!(probe(&server, x_client.clone()).await.is_err());

    // Both CAs in one bundle (the overlap of a client CA rotation), in place.
    let bundle = format!("{}{}", client_ca_x.pem(), client_ca_y.pem());
    volume.swap(&[("ca.crt", &bundle)]);
    eventually("a client certificate from X gets in again", || async {
        probe(&server, x_client.clone()).await == Ok(200)
    })
    .await;
    assert_eq!(probe(&server, y_client.clone()).await, Ok(200));
    assert_eq!(admission(&server, client_config(&srv)).await, Ok(403));
    // Refusals of a request are counted as errors of the admission path.
    let text = server.metrics().await;
    assert!(
        metric(
            &text,
            r#"calmplane_admission_requests_total{kind="unknown",operation="unknown",result="error"}"#
        ) >= 4,
        "{text}"
    );
    assert!(server.stop().await);
}

/// A refusal answered before the body was read says `Connection: close` and
/// closes: a client that kept the connection for its next request (the
/// apiserver does) would otherwise lose that request to the close, and count
/// a 503 that calmplane never saw.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_admission_closes_its_connection_and_says_so() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let Serving {
        cert,
        key,
        ca: server_ca,
    } = Serving::write(dir.path());
    let ca = dir.path().join("client-ca.crt");
    std::fs::write(&ca, root_ca("client CA").pem()).unwrap();
    let server = start(cert, key, Some(ca)).await;
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(client_config(&server_ca.pem()))
        .connect(name, tcp)
        .await
        .unwrap();
    // A keep-alive request whose body is still on its way.
    tls.write_all(
        b"POST /mutate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"apiVersion\"",
    )
    .await
    .unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut answer)).await;
    // The server closed (EOF, or a reset after its answer), within the timeout.
    assert!(read.is_ok(), "the connection stayed open after the refusal");
    let text = String::from_utf8_lossy(&answer).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 403"), "{text}");
    assert!(text.contains("\r\nconnection: close\r\n"), "{text}");
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_client_subjects_narrow_who_may_call() {
    let dir = tempfile::tempdir().unwrap();
    let Serving {
        cert,
        key,
        ca: server_ca,
    } = Serving::write(dir.path());
    let ca = dir.path().join("client-ca.crt");
    let client_ca = root_ca("apiserver client CA");
    std::fs::write(&ca, client_ca.pem()).unwrap();
    let server = TestServer::start_with(|opts| {
        opts.tls.cert = cert;
        opts.tls.key = key;
        opts.tls.client_ca = Some(ca);
        opts.tls.client_subjects = vec!["kube-apiserver-webhook-client".into()];
    })
    .await;
    let srv = server_ca.pem();
    let apiserver = mtls_client_config(
        &srv,
        &named_client_leaf(&client_ca, "kube-apiserver-webhook-client"),
    );
    let other = mtls_client_config(&srv, &named_client_leaf(&client_ca, "some-pod"));
    // The named subject may call; another certificate from the same CA may not.
    assert_eq!(admission(&server, apiserver.clone()).await, Ok(400));
    assert_eq!(admission(&server, other.clone()).await, Ok(403));
    assert_eq!(admission(&server, client_config(&srv)).await, Ok(403));
    // Everyone may probe.
    for config in [apiserver, other, client_config(&srv)] {
        assert_eq!(probe(&server, config).await, Ok(200));
    }
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_expiry_of_the_served_certificate_is_a_metric_that_follows_rotations() {
    use calmplane::server::tls::validity;
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let ca = root_ca("CA");
    let first = server_leaf(&ca);
    std::fs::write(&cert, &first.cert).unwrap();
    std::fs::write(&key, &first.key).unwrap();
    let server = start(cert.clone(), key.clone(), None).await;
    let not_after = |pem: &str| {
        let der = CertificateDer::pem_slice_iter(pem.as_bytes())
            .next()
            .unwrap()
            .unwrap();
        validity(&der).unwrap().not_after
    };
    const GAUGE: &str = "calmplane_tls_certificate_expiry_timestamp_seconds";
    let gauge = |text: &str| -> i64 {
        text.lines()
            .find_map(|l| {
                l.strip_prefix(GAUGE)
                    .and_then(|v| v.trim().parse::<f64>().ok())
            })
            .unwrap_or_else(|| panic!("no {GAUGE} in\n{text}")) as i64
    };
    // rcgen wrote a notAfter 30 days from now (see `validity`).
    let expected = not_after(&first.cert);
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    assert!(
        (expected - now - 30 * 86_400).abs() < 120,
        "{expected} vs {now}"
    );
    assert_eq!(gauge(&server.metrics().await), expected);

    // A rotation to a certificate that expires sooner moves the gauge.
    let mut params = CertificateParams::new(certs_names()).unwrap();
    params.distinguished_name = dn("calmplane.calmplane.svc");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.not_before = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
    params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(3);
    let second_key = KeyPair::generate().unwrap();
    let second = params.signed_by(&second_key, &ca).unwrap().pem();
    write_atomic(&key, &second_key.serialize_pem());
    write_atomic(&cert, &second);
    let want = not_after(&second);
    eventually("the gauge follows the rotation", || async {
        gauge(&server.metrics().await) == want
    })
    .await;
    assert!(want < expected);
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_client_ca_rewritten_in_place_reloads() {
    let dir = tempfile::tempdir().unwrap();
    let Serving {
        cert,
        key,
        ca: server_ca,
    } = Serving::write(dir.path());
    let ca = dir.path().join("client-ca.crt");
    let (x, y) = (root_ca("X"), root_ca("Y"));
    std::fs::write(&ca, x.pem()).unwrap();
    let server = start(cert, key, Some(ca.clone())).await;
    let srv = server_ca.pem();
    let x_client = mtls_client_config(&srv, &client_leaf(&x));
    let y_client = mtls_client_config(&srv, &client_leaf(&y));
    assert_eq!(probe(&server, x_client.clone()).await, Ok(200));
    assert!(probe(&server, y_client.clone()).await.is_err());
    std::fs::write(&ca, y.pem()).unwrap();
    eventually("Y accepted after the in-place rewrite", || async {
        probe(&server, y_client.clone()).await == Ok(200)
    })
    .await;
    assert!(probe(&server, x_client.clone()).await.is_err());
    assert!(server.stop().await);
}

// ------------------------------------------------------ truncated files

/// A chain file (leaf + intermediate) caught half-written or garbled, in every
/// way the PEM reader alone would let through or misread. Each is refused,
/// though its key matches its leaf.
fn damaged_chains(leaf: &str, intermediate: &str) -> Vec<(&'static str, String)> {
    let lines: Vec<&str> = intermediate.lines().collect();
    let body = &lines[1..lines.len() - 1];
    // Whole base64 lines dropped from the middle: still valid base64, no
    // longer a certificate.
    let shortened = format!(
        "{}\n{}\n{}\n{}\n",
        lines[0],
        body[..body.len() / 2 - 1].join("\n"),
        body[body.len() - 1],
        lines[lines.len() - 1]
    );
    let broken_leaf_end = leaf.replace("-----END CERTIFICATE-----", "-----END CERTIFICATE");
    vec![
        (
            "cut right after the leaf, inside the next marker",
            format!("{leaf}-----BEGIN"),
        ),
        (
            "cut right after the leaf, after the next dashes",
            format!("{leaf}---"),
        ),
        (
            "cut after the next block's first line",
            format!("{leaf}-----BEGIN CERTIFICATE-----\n"),
        ),
        (
            "cut in the middle of the second certificate",
            format!("{leaf}{}", &intermediate[..intermediate.len() / 2]),
        ),
        (
            "second certificate shortened, end line intact",
            format!("{leaf}{shortened}"),
        ),
        (
            "broken end line on the second certificate",
            format!(
                "{leaf}{}",
                intermediate.replace("-----END CERTIFICATE-----", "-----END CERTIFICA")
            ),
        ),
        (
            "broken end line on the leaf",
            format!("{broken_leaf_end}{intermediate}"),
        ),
        (
            "garbled character inside the second certificate",
            format!(
                "{leaf}{}",
                intermediate.replacen(
                    body[2],
                    &body[2].replace(|c: char| c.is_ascii_alphabetic(), "*"),
                    1
                )
            ),
        ),
    ]
}

/// What a truncated-chain test rotates from and to.
struct Truncation {
    old_ca: Ca,
    new_ca: Ca,
    old: Pair,
    /// Leaf signed by an intermediate under `new_ca`.
    new: Pair,
    intermediate: String,
}

fn truncation() -> Truncation {
    let (old_ca, new_ca) = (root_ca("old"), root_ca("new"));
    let intermediate = intermediate_ca("new intermediate", &new_ca);
    Truncation {
        old: server_leaf(&old_ca),
        new: server_leaf(&intermediate),
        intermediate: intermediate.pem(),
        old_ca,
        new_ca,
    }
}

/// The library itself refuses each damaged chain next to its matching key,
/// and loads the whole one: so what the server refuses below, it refuses for
/// the damage.
fn assert_refused_by_the_loader(t: &Truncation, dir: &Path) {
    use calmplane::server::tls::{TlsPaths, TlsStore};
    let (cert, key) = (dir.join("direct.crt"), dir.join("direct.key"));
    std::fs::write(&key, &t.new.key).unwrap();
    let paths = TlsPaths {
        cert: cert.clone(),
        key,
        client_ca: None,
        client_subjects: Vec::new(),
    };
    std::fs::write(&cert, format!("{}{}", t.new.cert, t.intermediate)).unwrap();
    assert!(
        TlsStore::load(paths.clone()).is_ok(),
        "the whole chain loads"
    );
    for (what, contents) in damaged_chains(&t.new.cert, &t.intermediate) {
        std::fs::write(&cert, contents).unwrap();
        match TlsStore::load(paths.clone()) {
            Ok(_) => panic!("{what}: accepted"),
            Err(e) => println!("{what}: {e}"),
        }
    }
}

/// Still the old certificate, both for new handshakes and open connections.
async fn assert_old_kept(server: &TestServer, open: &mut TlsClient, t: &Truncation, what: &str) {
    // The file was seen: give the watcher a few more ticks to act on it.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_serving(server, &t.old_ca.pem(), &t.new_ca.pem(), what).await;
    assert_open_connection_works(open, what).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_or_garbled_chains_rewritten_in_place_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let t = truncation();
    assert_refused_by_the_loader(&t, dir.path());
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert, &t.old.cert).unwrap();
    std::fs::write(&key, &t.old.key).unwrap();
    let server = start(cert.clone(), key.clone(), None).await;
    let mut open = TlsClient::connect(server.addr, &t.old_ca.pem()).await;
    // The key first, as an in-place writer would: a mismatch, refused.
    std::fs::write(&key, &t.new.key).unwrap();
    eventually("the mismatched key is refused", || async {
        reloads(&server).await.1 >= 1
    })
    .await;
    for (what, contents) in damaged_chains(&t.new.cert, &t.intermediate) {
        let (_, errors) = reloads(&server).await;
        // Truncate and write, in place: the watcher may also see it empty.
        std::fs::write(&cert, contents).unwrap();
        eventually(&format!("refusal counted for: {what}"), || async {
            reloads(&server).await.1 > errors
        })
        .await;
        assert_old_kept(&server, &mut open, &t, what).await;
    }
    assert_eq!(reloads(&server).await.0, 0, "no damaged chain was taken");
    std::fs::write(&cert, format!("{}{}", t.new.cert, t.intermediate)).unwrap();
    eventually("the whole chain is served", || async {
        trusting(&server, &t.new_ca.pem()).await == Ok(200)
    })
    .await;
    assert_serving(&server, &t.new_ca.pem(), &t.old_ca.pem(), "whole chain").await;
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_or_garbled_chains_swapped_in_are_refused_and_each_counted() {
    let dir = tempfile::tempdir().unwrap();
    let t = truncation();
    let mut volume = SecretVolume::create(
        &dir.path().join("secret"),
        &[("tls.crt", &t.old.cert), ("tls.key", &t.old.key)],
    );
    let server = start(volume.path("tls.crt"), volume.path("tls.key"), None).await;
    let mut open = TlsClient::connect(server.addr, &t.old_ca.pem()).await;
    for (n, (what, contents)) in (1u64..).zip(damaged_chains(&t.new.cert, &t.intermediate)) {
        // Both files at once, as the kubelet swaps them: the key matches the leaf.
        volume.swap(&[("tls.crt", &contents), ("tls.key", &t.new.key)]);
        eventually(&format!("refusal counted for: {what}"), || async {
            reloads(&server).await.1 >= n
        })
        .await;
        assert_eq!(reloads(&server).await, (0, n), "{what}: one refusal each");
        assert_old_kept(&server, &mut open, &t, what).await;
    }
    volume.swap(&[
        ("tls.crt", &format!("{}{}", t.new.cert, t.intermediate)),
        ("tls.key", &t.new.key),
    ]);
    eventually("the whole chain is served", || async {
        trusting(&server, &t.new_ca.pem()).await == Ok(200)
    })
    .await;
    assert_serving(&server, &t.new_ca.pem(), &t.old_ca.pem(), "whole chain").await;
    assert!(server.stop().await);
}

/// A log sink for one test's own subscriber.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn an_expired_or_not_yet_valid_certificate_is_served_with_a_warning() {
    use calmplane::server::tls::{TlsPaths, TlsStore};
    let dir = tempfile::tempdir().unwrap();
    let ca = root_ca("CA");
    let now = time::OffsetDateTime::now_utc();
    for (name, not_before, not_after, says) in [
        (
            "expired",
            now - time::Duration::days(30),
            now - time::Duration::days(1),
            "has expired",
        ),
        (
            "future",
            now + time::Duration::days(1),
            now + time::Duration::days(30),
            "not valid yet",
        ),
        (
            "good",
            now - time::Duration::days(1),
            now + time::Duration::days(30),
            "",
        ),
    ] {
        let mut params = CertificateParams::new(certs_names()).unwrap();
        params.distinguished_name = dn(name);
        params.not_before = not_before;
        params.not_after = not_after;
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &ca).unwrap();
        let paths = TlsPaths {
            cert: dir.path().join(format!("{name}.crt")),
            key: dir.path().join(format!("{name}.key")),
            client_ca: None,
            client_subjects: Vec::new(),
        };
        std::fs::write(&paths.cert, cert.pem()).unwrap();
        std::fs::write(&paths.key, key.serialize_pem()).unwrap();
        let log = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer({
                let log = log.clone();
                move || log.clone()
            })
            .with_ansi(false)
            .finish();
        let store = tracing::subscriber::with_default(subscriber, || TlsStore::load(paths));
        // Served all the same: the apiserver decides, and a restart loop
        // would not make a better certificate appear.
        let store = store.unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(store.not_after(), not_after.unix_timestamp(), "{name}");
        let text = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
        if says.is_empty() {
            assert!(!text.contains("WARN"), "{name}: {text}");
        } else {
            assert!(
                text.contains("WARN") && text.contains(says),
                "{name}: {text}"
            );
        }
    }
}
