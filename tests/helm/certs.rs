//! The self-signed certificates and the hook scripts, against a real
//! calmplane.
//!
//! A render with `webhook.url` pointing at a loopback port gives a serving
//! certificate for 127.0.0.1 (beside the Service's names). calmplane serves
//! with it and with the rendered policy file, and the scripts of the
//! readiness gate and of `helm test` run here with the host's `sh` and
//! `curl`, with the environment the Pods get: the gate waits until calmplane
//! answers, then succeeds; it never succeeds against another CA; the test
//! previews a Deployment.

use super::*;
use base64::Engine as _;
use calmplane_testkit::process::{free_port, KillOnDrop};
use std::process::Stdio;
use std::time::Instant;

fn secret_file(secret: &Value, key: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(
            secret["data"][key]
                .as_str()
                .unwrap_or_else(|| panic!("no {key}")),
        )
        .expect("base64")
}

#[test]
fn the_self_signed_certificate_chains_to_the_ca_bundle_for_the_names_the_apiserver_calls() {
    let Some(helm) = helm(
        "the_self_signed_certificate_chains_to_the_ca_bundle_for_the_names_the_apiserver_calls",
    ) else {
        return;
    };
    for (values, names) in [
        (
            json!({}),
            vec![
                "calmplane.calmplane.svc",
                "calmplane.calmplane.svc.cluster.local",
            ],
        ),
        (
            json!({"webhook": {"url": "https://127.0.0.1:9443"}}),
            vec!["calmplane.calmplane.svc", "127.0.0.1"],
        ),
        (
            json!({"webhook": {"url": "https://calmplane.example.com"}}),
            vec!["calmplane.calmplane.svc", "calmplane.example.com"],
        ),
    ] {
        let r = template(&helm, &values, &[]);
        let tls = find(&r.objects, "Secret", "calmplane-tls");
        assert_eq!(tls["type"], "kubernetes.io/tls");
        let ca_pem = secret_file(tls, "ca.crt");
        let cert_pem = secret_file(tls, "tls.crt");
        let (_, ca) = x509_parser::pem::parse_x509_pem(&ca_pem).expect("CA PEM");
        let ca = ca.parse_x509().expect("CA");
        let (_, cert) = x509_parser::pem::parse_x509_pem(&cert_pem).expect("cert PEM");
        let cert = cert.parse_x509().expect("cert");
        assert!(ca.is_ca(), "{values}");
        assert!(!cert.is_ca(), "{values}: the serving certificate is no CA");
        // Issued by the CA (curl verifies the signature and the name in
        // the_readiness_gate_and_helm_test_work_against_a_real_calmplane).
        assert_eq!(cert.issuer(), ca.subject());
        let sans: Vec<String> = cert
            .subject_alternative_name()
            .expect("SAN")
            .expect("SAN")
            .value
            .general_names
            .iter()
            .map(|n| match n {
                x509_parser::extensions::GeneralName::DNSName(d) => d.to_string(),
                x509_parser::extensions::GeneralName::IPAddress(ip) => {
                    ip.iter().map(u8::to_string).collect::<Vec<_>>().join(".")
                }
                other => format!("{other:?}"),
            })
            .collect();
        for name in names {
            assert!(sans.contains(&name.to_string()), "{name} not in {sans:?}");
        }
        // A year, as the values say, and the CA ten.
        let days = |c: &x509_parser::certificate::X509Certificate| {
            (c.validity().not_after.timestamp() - c.validity().not_before.timestamp()) / 86400
        };
        assert!((364..=366).contains(&days(&cert)), "{}", days(&cert));
        assert!((3649..=3651).contains(&days(&ca)), "{}", days(&ca));
        // The annotation an upgrade reads to renew it in time.
        let not_after = tls["metadata"]["annotations"]["calmplane.dev/not-after"]
            .as_str()
            .expect("not-after");
        let written = humantime::parse_rfc3339_weak(&not_after.replace('T', " ")[..19])
            .expect("RFC 3339")
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_secs() as i64;
        assert!(
            (written - cert.validity().not_after.timestamp()).abs() < 120,
            "{not_after} is the certificate's notAfter"
        );
        // The CA's own Secret holds the same CA, and its key.
        let ca_secret = find(&r.objects, "Secret", "calmplane-ca");
        assert_eq!(secret_file(ca_secret, "tls.crt"), ca_pem);
        assert!(String::from_utf8(secret_file(ca_secret, "tls.key"))
            .expect("PEM")
            .contains("PRIVATE KEY"));
    }
}

/// The script and the environment of a hook Pod's one container, with the
/// Secret's values filled in and the Pod's `/tmp` moved to `tmp`.
fn hook_command(pod: &Value, secret: &Value, tmp: &Path) -> Command {
    let c = &pod["spec"]["containers"][0];
    assert_eq!(str_list(&c["command"])[..2], ["sh", "-c"]);
    let script = c["command"][2]
        .as_str()
        .expect("script")
        .replace("/tmp/", &format!("{}/", tmp.display()));
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(script)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default());
    for e in c["env"].as_array().expect("env") {
        let name = e["name"].as_str().expect("name");
        let value = match e.get("value") {
            Some(v) => v.as_str().expect("value").to_string(),
            None => {
                let r = &e["valueFrom"]["secretKeyRef"];
                assert_eq!(r["name"], secret["metadata"]["name"]);
                String::from_utf8(secret_file(secret, r["key"].as_str().expect("key")))
                    .expect("UTF-8")
            }
        };
        cmd.env(name, value);
    }
    cmd
}

/// Wait up to `limit` for `child` to exit; its status, or `None`.
fn wait_exit(child: &mut KillOnDrop, limit: Duration) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        // A plain test thread polling a child process: no tokio here.
        #[allow(clippy::disallowed_methods)]
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

#[test]
fn the_readiness_gate_and_helm_test_work_against_a_real_calmplane() {
    let test = "the_readiness_gate_and_helm_test_work_against_a_real_calmplane";
    let (Some(helm), Some(_)) = (
        helm(test),
        required("curl", test, "the hook scripts run with curl"),
    ) else {
        return;
    };
    let port = free_port();
    let r = template(
        &helm,
        &json!({"webhook": {"url": format!("https://127.0.0.1:{port}")}}),
        &[],
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = find(&r.objects, "Secret", "calmplane-tls");
    let gate = find(&r.hooks, "Pod", "calmplane-wait-for-ready");
    let helm_test = find(&r.hooks, "Pod", "calmplane-test-preview");

    // The gate waits while nothing answers.
    let gate_tmp = dir.path().join("gate");
    std::fs::create_dir(&gate_tmp).expect("mkdir");
    let mut waiting = KillOnDrop(
        hook_command(gate, secret, &gate_tmp)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sh"),
    );
    assert!(
        wait_exit(&mut waiting, Duration::from_secs(3)).is_none(),
        "the gate must wait for calmplane"
    );

    // calmplane as the Deployment runs it: the Secret's certificate and
    // key, the ConfigMap's policy file.
    for key in ["tls.crt", "tls.key"] {
        std::fs::write(dir.path().join(key), secret_file(secret, key)).expect("write");
    }
    let policy = find(&r.objects, "ConfigMap", "calmplane-policy")["data"]["policy.yaml"]
        .as_str()
        .expect("policy.yaml")
        .to_string();
    std::fs::write(dir.path().join("policy.yaml"), policy).expect("write");
    let _calmplane = KillOnDrop(
        calmplane()
            .arg("serve")
            .arg(format!("--listen=127.0.0.1:{port}"))
            .arg(format!("--metrics-listen=127.0.0.1:{}", free_port()))
            .arg("--cert")
            .arg(dir.path().join("tls.crt"))
            .arg("--key")
            .arg(dir.path().join("tls.key"))
            .arg("--config")
            .arg(dir.path().join("policy.yaml"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("calmplane serve"),
    );
    let status = wait_exit(&mut waiting, Duration::from_secs(30)).expect("the gate succeeds");
    assert!(status.success(), "the gate exited {status}");

    // Against another CA it never succeeds: it checks what the apiserver
    // will check.
    let other = tempfile::tempdir().expect("tempdir");
    run(calmplane().arg("certs").arg("--out").arg(other.path()));
    let mut wrong = secret.clone();
    wrong["data"]["ca.crt"] = json!(base64::engine::general_purpose::STANDARD
        .encode(std::fs::read(other.path().join("ca.crt")).expect("ca")));
    let mut distrusting = KillOnDrop(
        hook_command(gate, &wrong, &gate_tmp)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sh"),
    );
    assert!(
        wait_exit(&mut distrusting, Duration::from_secs(4)).is_none(),
        "the gate must not trust another CA"
    );

    // `helm test` previews a Deployment and finds the rollout policy's patch.
    let test_tmp = dir.path().join("test");
    std::fs::create_dir(&test_tmp).expect("mkdir");
    let out = hook_command(helm_test, secret, &test_tmp)
        .output()
        .expect("sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "helm test's script failed:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("calmplane previewed the Deployment"),
        "{stdout}"
    );
    assert!(stdout.contains("maxUnavailable"), "{stdout}");
}
