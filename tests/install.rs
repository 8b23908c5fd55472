//! Cluster installation: `manifests/`, `calmplane manifests`, `calmplane register`.
//!
//! No API server runs here, so the manifests are proven three ways:
//! * schema: every file, and every rendered overlay, passes
//!   `kubernetes-validate --strict` for Kubernetes 1.34. That tool has no
//!   schema for cert-manager's CRDs (it warns and passes), so Issuers and
//!   Certificates are checked structurally here instead, against the field
//!   lists of cert-manager's v1 API; anything else without a schema fails;
//! * rendering: both overlays build with `kubectl kustomize`, and so does
//!   the NetworkPolicy component's documented overlay;
//! * NetworkPolicy: which sources the component admits on which port of
//!   which pod, evaluated against the API's semantics written out here;
//! * content: the webhook's selectors are evaluated against real and
//!   hostile labels, the Deployment is checked against the advice calmplane
//!   enforces, and `calmplane preview` finds nothing to change in it.
//!
//! `calmplane register` talks to a `tower-test` mock in place of the apiserver.

use base64::Engine as _;
use calmplane_testkit::harness::python;
use calmplane_testkit::tools::{required, run_ok, yaml_docs};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

const K8S_VERSION: &str = "1.34.0";
const NAMESPACE: &str = "calmplane";
const SERVICE: &str = "calmplane";
/// The label every namespace carries with its own name.
const NAME_LABEL: &str = "kubernetes.io/metadata.name";
const OPT_IN_LABEL: &str = "calmplane.dev/enabled";

// ---------------------------------------------------------------- helpers

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn manifests_dir() -> PathBuf {
    repo().join("manifests")
}

fn calmplane() -> Command {
    Command::new(env!("CARGO_BIN_EXE_calmplane"))
}

/// kubectl from PATH; `None` (after saying why) where it is absent, except in
/// CI, where rendering must not be silently skipped.
fn kubectl(test: &str) -> Option<PathBuf> {
    required("kubectl", test, "install it to render the overlays")
}

fn run(cmd: &mut Command) -> Output {
    run_ok(cmd)
}

fn read_docs(path: &Path) -> Vec<Value> {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    yaml_docs(&text)
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read_dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml")
            ) {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn is_kustomization(path: &Path) -> bool {
    matches!(
        path.file_name().and_then(|n| n.to_str()),
        Some("kustomization.yaml" | "kustomization.yml" | "Kustomization")
    )
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} among {} documents", docs.len()))
}

fn only<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = docs.iter().filter(|d| d["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "expected exactly one {kind}");
    found[0]
}

fn str_list(v: &Value) -> Vec<&str> {
    v.as_array()
        .unwrap_or_else(|| panic!("expected a list, got {v}"))
        .iter()
        .map(|s| {
            s.as_str()
                .unwrap_or_else(|| panic!("expected strings in {v}"))
        })
        .collect()
}

fn labels(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().expect("label value").to_string()))
                .collect()
        })
        .unwrap_or_default()
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Kubernetes label selector semantics (metav1.LabelSelector), written out
/// here rather than taken from the code under test.
fn selector_matches(selector: &Value, labels: &BTreeMap<String, String>) -> bool {
    if selector.is_null() {
        return true;
    }
    let match_labels = selector["matchLabels"].as_object();
    for (k, v) in match_labels.into_iter().flatten() {
        if labels.get(k).map(String::as_str) != v.as_str() {
            return false;
        }
    }
    for e in selector["matchExpressions"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let key = e["key"].as_str().expect("expression key");
        let value = labels.get(key);
        let values = || {
            e["values"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
        };
        let ok = match e["operator"].as_str().expect("operator") {
            "In" => value.is_some_and(|v| values().contains(&v.as_str())),
            "NotIn" => value.is_none_or(|v| !values().contains(&v.as_str())),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            other => panic!("unknown selector operator {other}"),
        };
        if !ok {
            return false;
        }
    }
    true
}

/// The labels a namespace has in a cluster: its own plus the name label the
/// apiserver always sets.
fn namespace_labels(name: &str, own: &[(&str, &str)]) -> BTreeMap<String, String> {
    let mut l = map(own);
    l.insert(NAME_LABEL.to_string(), name.to_string());
    l
}

// ------------------------------------------------- kubernetes-validate

/// What kubernetes-validate said about a set of files.
struct Validation {
    /// (file, "kind/name") it validated against a schema.
    passed: Vec<(String, String)>,
    /// (file, apiVersion, kind) it had no schema for.
    no_schema: Vec<(String, String, String)>,
}

fn kubernetes_validate(files: &[PathBuf]) -> Validation {
    let out = Command::new(python())
        .args(["-m", "kubernetes_validate", "--strict", "-k", K8S_VERSION])
        .args(files)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} -m kubernetes_validate (run `make venv`): {e}",
                python().display()
            )
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "kubernetes-validate --strict -k {K8S_VERSION} failed:\n{text}"
    );
    let mut passed = Vec::new();
    let mut no_schema = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("INFO ") {
            let (file, rest) = rest.split_once(" passed for resource ").expect(line);
            let resource = rest.split(' ').next().expect(line);
            passed.push((file.to_string(), resource.to_string()));
        } else if let Some(rest) = line.strip_prefix("WARN ") {
            let (file, rest) = rest
                .split_once(" Couldn't find schema for kind ")
                .unwrap_or_else(|| panic!("unexpected warning: {line}"));
            let (kind, rest) = rest.split_once(" with api version ").expect(line);
            let api_version = rest.split(' ').next().expect(line);
            no_schema.push((file.to_string(), api_version.to_string(), kind.to_string()));
        } else if !line.trim().is_empty() {
            panic!("unexpected kubernetes-validate output: {line}");
        }
    }
    Validation { passed, no_schema }
}

/// Validate `files` and account for every document in them: each passed the
/// schema, or is a cert-manager object that passes [`check_cert_manager`].
/// Returns the number of documents.
fn validate_all(files: &[PathBuf]) -> usize {
    let report = kubernetes_validate(files);
    let mut total = 0;
    for file in files {
        let shown = file.display().to_string();
        let docs = read_docs(file);
        assert!(!docs.is_empty(), "{shown} has no documents");
        let passed = report.passed.iter().filter(|(f, _)| *f == shown).count();
        let no_schema: Vec<_> = report
            .no_schema
            .iter()
            .filter(|(f, ..)| *f == shown)
            .collect();
        for (_, api_version, kind) in &no_schema {
            assert!(
                api_version == "cert-manager.io/v1" && matches!(kind.as_str(), "Issuer" | "Certificate"),
                "{shown}: kubernetes-validate has no schema for {api_version} {kind}, and this test has no structural check for it"
            );
        }
        for doc in &docs {
            if doc["apiVersion"] == "cert-manager.io/v1" {
                check_cert_manager(doc);
            }
        }
        let cert_manager = docs
            .iter()
            .filter(|d| d["apiVersion"] == "cert-manager.io/v1")
            .count();
        assert_eq!(
            no_schema.len(),
            cert_manager,
            "{shown}: schema-less documents"
        );
        assert_eq!(
            passed + no_schema.len(),
            docs.len(),
            "{shown}: every document must be validated"
        );
        total += docs.len();
    }
    total
}

fn go_duration(s: &str) -> Duration {
    humantime::parse_duration(s).unwrap_or_else(|e| panic!("duration {s:?}: {e}"))
}

fn keys_within(obj: &Value, allowed: &[&str], what: &str) {
    let map = obj
        .as_object()
        .unwrap_or_else(|| panic!("{what} must be an object, got {obj}"));
    for k in map.keys() {
        assert!(allowed.contains(&k.as_str()), "{what}: unknown field {k:?}");
    }
}

/// Structural validation of cert-manager.io/v1 Issuer and Certificate, for
/// want of a schema: required fields, known field names (cert-manager v1.x
/// `CertificateSpec`, `IssuerConfig`), enums and durations.
fn check_cert_manager(doc: &Value) {
    let kind = doc["kind"].as_str().expect("kind");
    let name = doc["metadata"]["name"].as_str().expect("metadata.name");
    let what = format!("{kind} {name}");
    keys_within(doc, &["apiVersion", "kind", "metadata", "spec"], &what);
    assert!(
        doc["metadata"]["namespace"]
            .as_str()
            .is_some_and(|n| !n.is_empty()),
        "{what}: namespaced, needs metadata.namespace"
    );
    let spec = &doc["spec"];
    match kind {
        "Issuer" => {
            const TYPES: &[&str] = &["acme", "ca", "vault", "selfSigned", "venafi"];
            keys_within(spec, TYPES, &format!("{what} spec"));
            assert_eq!(
                spec.as_object().map(|m| m.len()),
                Some(1),
                "{what}: exactly one issuer type"
            );
            if let Some(ca) = spec.get("ca") {
                keys_within(
                    ca,
                    &[
                        "secretName",
                        "crlDistributionPoints",
                        "ocspServers",
                        "issuingCertificateURLs",
                    ],
                    &format!("{what} spec.ca"),
                );
                assert!(
                    ca["secretName"].as_str().is_some_and(|s| !s.is_empty()),
                    "{what}: ca.secretName"
                );
            }
            if let Some(s) = spec.get("selfSigned") {
                keys_within(
                    s,
                    &["crlDistributionPoints"],
                    &format!("{what} spec.selfSigned"),
                );
            }
        }
        "Certificate" => {
            keys_within(
                spec,
                &[
                    "subject",
                    "literalSubject",
                    "commonName",
                    "duration",
                    "renewBefore",
                    "renewBeforePercentage",
                    "dnsNames",
                    "ipAddresses",
                    "uris",
                    "otherNames",
                    "emailAddresses",
                    "secretName",
                    "secretTemplate",
                    "keystores",
                    "issuerRef",
                    "isCA",
                    "usages",
                    "privateKey",
                    "encodeUsagesInRequest",
                    "revisionHistoryLimit",
                    "additionalOutputFormats",
                    "nameConstraints",
                ],
                &format!("{what} spec"),
            );
            assert!(
                spec["secretName"].as_str().is_some_and(|s| !s.is_empty()),
                "{what}: secretName is required"
            );
            let issuer = &spec["issuerRef"];
            keys_within(
                issuer,
                &["name", "kind", "group"],
                &format!("{what} issuerRef"),
            );
            assert!(
                issuer["name"].as_str().is_some_and(|s| !s.is_empty()),
                "{what}: issuerRef.name is required"
            );
            assert!(
                ["commonName", "literalSubject", "dnsNames", "uris"]
                    .iter()
                    .any(|k| spec.get(*k).is_some()),
                "{what}: needs a commonName, literalSubject, dnsNames or uris"
            );
            if let Some(d) = spec["duration"].as_str() {
                assert!(
                    go_duration(d) >= Duration::from_secs(3600),
                    "{what}: duration at least 1h"
                );
            }
            if let Some(r) = spec["renewBefore"].as_str() {
                let r = go_duration(r);
                assert!(
                    r >= Duration::from_secs(300),
                    "{what}: renewBefore at least 5m"
                );
                let d = spec["duration"]
                    .as_str()
                    .map_or(Duration::from_secs(90 * 86400), go_duration);
                assert!(r < d, "{what}: renewBefore must be shorter than duration");
            }
            if let Some(b) = spec.get("isCA") {
                assert!(b.is_boolean(), "{what}: isCA is a boolean");
            }
            const USAGES: &[&str] = &[
                "signing",
                "digital signature",
                "content commitment",
                "key encipherment",
                "key agreement",
                "data encipherment",
                "cert sign",
                "crl sign",
                "encipher only",
                "decipher only",
                "any",
                "server auth",
                "client auth",
                "code signing",
                "email protection",
                "s/mime",
                "ipsec end system",
                "ipsec tunnel",
                "ipsec user",
                "timestamping",
                "ocsp signing",
                "microsoft sgc",
                "netscape sgc",
            ];
            if let Some(u) = spec.get("usages") {
                for usage in str_list(u) {
                    assert!(USAGES.contains(&usage), "{what}: unknown usage {usage:?}");
                }
            }
            if let Some(key) = spec.get("privateKey") {
                keys_within(
                    key,
                    &["rotationPolicy", "encoding", "algorithm", "size"],
                    &format!("{what} privateKey"),
                );
                let algorithm = key["algorithm"].as_str().unwrap_or("RSA");
                let size = key["size"].as_i64();
                match algorithm {
                    "RSA" => assert!(
                        size.is_none_or(|s| [2048, 4096, 8192].contains(&s)),
                        "{what}: RSA size"
                    ),
                    "ECDSA" => assert!(
                        size.is_none_or(|s| [256, 384, 521].contains(&s)),
                        "{what}: ECDSA size"
                    ),
                    "Ed25519" => {}
                    other => panic!("{what}: unknown key algorithm {other}"),
                }
                if let Some(p) = key["rotationPolicy"].as_str() {
                    assert!(
                        ["Never", "Always"].contains(&p),
                        "{what}: rotationPolicy {p}"
                    );
                }
                if let Some(e) = key["encoding"].as_str() {
                    assert!(["PKCS1", "PKCS8"].contains(&e), "{what}: encoding {e}");
                }
            }
        }
        other => panic!("no structural check for cert-manager kind {other}"),
    }
}

// ------------------------------------------------------------ rendering

/// `kubectl kustomize dir`, parsed.
fn kustomize(kubectl: &Path, dir: &Path) -> (String, Vec<Value>) {
    let out = run(Command::new(kubectl).arg("kustomize").arg(dir));
    let text = String::from_utf8(out.stdout).expect("UTF-8 output");
    let docs = yaml_docs(&text);
    (text, docs)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("dir entry");
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

/// Generated inputs of the static overlay, as the README has them made.
struct StaticCerts {
    ca_pem: Vec<u8>,
    tls_crt: Vec<u8>,
    tls_key: Vec<u8>,
}

/// A temp copy of manifests/ whose static overlay has its generated files,
/// made with the CLI exactly as the README says.
fn static_overlay_copy() -> (tempfile::TempDir, PathBuf, StaticCerts) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("manifests");
    copy_dir(&manifests_dir(), &root);
    let overlay = root.join("overlays/static");
    let certs = overlay.join("certs");
    let _ = std::fs::remove_dir_all(&certs);
    run(calmplane().arg("certs").arg("--out").arg(&certs));
    let out = run(calmplane()
        .arg("manifests")
        .arg("--ca-bundle")
        .arg(certs.join("ca.crt")));
    std::fs::write(overlay.join("webhook.generated.yaml"), out.stdout).expect("write patch");
    let read = |f: &str| std::fs::read(certs.join(f)).expect("generated cert file");
    let generated = StaticCerts {
        ca_pem: read("ca.crt"),
        tls_crt: read("tls.crt"),
        tls_key: read("tls.key"),
    };
    (tmp, overlay, generated)
}

/// The base and both overlays rendered, or `None` without kubectl.
struct Rendered {
    base: Vec<Value>,
    cert_manager: Vec<Value>,
    static_: Vec<Value>,
    static_certs: StaticCerts,
    texts: Vec<(&'static str, String)>,
}

fn render_all(test: &str) -> Option<Rendered> {
    let kubectl = kubectl(test)?;
    let (base_text, base) = kustomize(&kubectl, &manifests_dir().join("base"));
    let (cm_text, cert_manager) =
        kustomize(&kubectl, &manifests_dir().join("overlays/cert-manager"));
    let (_tmp, overlay, static_certs) = static_overlay_copy();
    let (static_text, static_) = kustomize(&kubectl, &overlay);
    Some(Rendered {
        base,
        cert_manager,
        static_,
        static_certs,
        texts: vec![
            ("base", base_text),
            ("cert-manager", cm_text),
            ("static", static_text),
        ],
    })
}

fn base_file(name: &str) -> Vec<Value> {
    read_docs(&manifests_dir().join("base").join(name))
}

// ------------------------------------------------------- safety checks

/// Every safety property the issue asks of the webhook configuration.
/// `namespace_object` is the calmplane Namespace as installed, when known.
fn assert_webhook_safe(
    config: &Value,
    namespace_object: Option<&Value>,
    pod_labels: &BTreeMap<String, String>,
) {
    assert_eq!(config["apiVersion"], "admissionregistration.k8s.io/v1");
    assert_eq!(config["kind"], "MutatingWebhookConfiguration");
    let webhooks = config["webhooks"].as_array().expect("webhooks");
    assert_eq!(
        webhooks.len(),
        4,
        "one webhook for Pods, one for Deployments, each also in report mode"
    );
    let names: BTreeSet<&str> = webhooks
        .iter()
        .map(|w| w["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names.len(), 4, "webhook names are unique");

    let mut seen = Vec::new();
    for w in webhooks {
        let name = w["name"].as_str().expect("name");
        assert_eq!(str_list(&w["admissionReviewVersions"]), ["v1"], "{name}");
        assert_eq!(w["sideEffects"], "None", "{name}");
        assert_eq!(w["timeoutSeconds"], 2, "{name}");
        assert_eq!(w["failurePolicy"], "Ignore", "{name}");
        // Report webhooks never patch: nothing to be reinvoked for.
        let (path, opt_in, reinvocation) = if name.contains("-report.") {
            ("/report", "report", "Never")
        } else {
            ("/mutate", "true", "IfNeeded")
        };
        assert_eq!(w["reinvocationPolicy"], reinvocation, "{name}");
        assert_eq!(w["matchPolicy"], "Equivalent", "{name}");

        let client = &w["clientConfig"];
        assert!(
            client.get("url").is_none(),
            "{name}: must call the Service, not a URL"
        );
        let service = &client["service"];
        assert_eq!(service["namespace"], NAMESPACE, "{name}");
        assert_eq!(service["name"], SERVICE, "{name}");
        assert_eq!(service["path"], path, "{name}");
        assert!(
            service.get("port").is_none_or(|p| p == 443),
            "{name}: port 443"
        );

        let rules = w["rules"].as_array().expect("rules");
        assert_eq!(rules.len(), 1, "{name}: one rule");
        let rule = &rules[0];
        let mut operations = str_list(&rule["operations"]);
        operations.sort();
        let signature = (
            str_list(&rule["apiGroups"]),
            str_list(&rule["apiVersions"]),
            str_list(&rule["resources"]),
            operations,
        );
        assert!(
            rule.get("scope")
                .is_none_or(|s| s == "Namespaced" || s == "*"),
            "{name}: scope"
        );
        seen.push(signature);

        // Opt-in only.
        let ns = &w["namespaceSelector"];
        let shop_in = namespace_labels("shop", &[(OPT_IN_LABEL, opt_in)]);
        assert!(
            selector_matches(ns, &shop_in),
            "{name}: an opted-in namespace is mutated"
        );
        // `report` goes only to /report and `true` only to /mutate.
        let other = if opt_in == "true" { "report" } else { "true" };
        for own in [
            &[][..],
            &[(OPT_IN_LABEL, "false")][..],
            &[(OPT_IN_LABEL, "yes")][..],
            &[(OPT_IN_LABEL, other)][..],
        ] {
            assert!(
                !selector_matches(ns, &namespace_labels("shop", own)),
                "{name}: namespace labelled {own:?} must not be mutated"
            );
        }
        // Excluded by name even when someone labels them in.
        for excluded in ["kube-system", "kube-node-lease", NAMESPACE] {
            let l = namespace_labels(excluded, &[(OPT_IN_LABEL, opt_in)]);
            assert!(
                !selector_matches(ns, &l),
                "{name}: {excluded} must never be mutated"
            );
        }
        if let Some(namespace) = namespace_object {
            let name_of_ns = namespace["metadata"]["name"]
                .as_str()
                .expect("namespace name");
            let mut l = labels(&namespace["metadata"]["labels"]);
            l.insert(NAME_LABEL.to_string(), name_of_ns.to_string());
            assert!(
                !selector_matches(ns, &l),
                "{name}: the installed namespace is not mutated"
            );
        }
        // The exclusion is by the apiserver-set name label, not only by
        // the opt-in label someone could flip.
        let by_name = ns["matchExpressions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["key"] == NAME_LABEL && e["operator"] == "NotIn")
            .unwrap_or_else(|| panic!("{name}: no {NAME_LABEL} NotIn"));
        let values = str_list(&by_name["values"]);
        for excluded in ["kube-system", "kube-node-lease", NAMESPACE] {
            assert!(
                values.contains(&excluded),
                "{name}: {excluded} not in NotIn"
            );
        }

        // Our own pods (and Deployment) are never sent to us.
        let objects = &w["objectSelector"];
        assert!(
            !selector_matches(objects, pod_labels),
            "{name}: calmplane's own pods must be excluded"
        );
        assert!(
            selector_matches(objects, &map(&[("app", "web")])),
            "{name}: other pods are not excluded"
        );
        assert!(
            selector_matches(objects, &BTreeMap::new()),
            "{name}: unlabelled pods are not excluded"
        );
    }
    seen.sort();
    let rules = [
        (vec![""], vec!["v1"], vec!["pods"], vec!["CREATE"]),
        (
            vec!["apps"],
            vec!["v1"],
            vec!["deployments"],
            vec!["CREATE", "UPDATE"],
        ),
    ];
    // The same rules once for /mutate and once for /report.
    let mut expected: Vec<_> = rules.iter().chain(&rules).cloned().collect();
    expected.sort();
    assert_eq!(
        seen, expected,
        "rules: Pods CREATE and apps/v1 Deployments CREATE+UPDATE"
    );
}

fn pod_template_labels(deployment: &Value) -> BTreeMap<String, String> {
    labels(&deployment["spec"]["template"]["metadata"]["labels"])
}

// ================================================================= tests

#[test]
fn every_yaml_file_under_manifests_passes_kubernetes_validate_strict() {
    // manifests/monitoring holds a Prometheus rule file and CRD objects;
    // tests/monitoring.rs validates it.
    let files: Vec<PathBuf> = yaml_files(&manifests_dir())
        .into_iter()
        .filter(|p| !is_kustomization(p) && !p.starts_with(manifests_dir().join("monitoring")))
        .collect();
    for expected in [
        "base/deployment.yaml",
        "base/webhook.yaml",
        "overlays/cert-manager/certificates.yaml",
        "components/networkpolicy/networkpolicy.yaml",
    ] {
        assert!(
            files.contains(&manifests_dir().join(expected)),
            "{expected} is missing from {files:?}"
        );
    }
    let docs = validate_all(&files);
    println!("{} files, {docs} documents validated", files.len());
}

#[test]
fn rendered_overlays_pass_kubernetes_validate_strict() {
    let Some(r) = render_all("rendered_overlays_pass_kubernetes_validate_strict") else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut files = Vec::new();
    for (name, text) in &r.texts {
        let path = tmp.path().join(format!("{name}.yaml"));
        std::fs::write(&path, text).expect("write rendered");
        files.push(path);
    }
    validate_all(&files);

    let kinds = |docs: &[Value]| -> BTreeSet<String> {
        docs.iter()
            .map(|d| d["kind"].as_str().expect("kind").to_string())
            .collect()
    };
    let base = kinds(&r.base);
    for kind in [
        "Namespace",
        "ConfigMap",
        "Deployment",
        "PodDisruptionBudget",
        "Service",
        "MutatingWebhookConfiguration",
    ] {
        assert!(base.contains(kind), "base renders a {kind}");
    }
    assert!(
        !base.contains("Secret"),
        "the base has no certificate of its own"
    );
    let cm = kinds(&r.cert_manager);
    assert!(cm.contains("Issuer") && cm.contains("Certificate"));
    assert!(cm.is_superset(&base));
    let st = kinds(&r.static_);
    assert!(st.contains("Secret"));
    assert!(st.is_superset(&base));
}

#[test]
fn the_webhook_configuration_is_safe_wherever_it_comes_from() {
    let deployment = find(&base_file("deployment.yaml"), "Deployment", "calmplane").clone();
    let pods = pod_template_labels(&deployment);
    let deployment_labels = labels(&deployment["metadata"]["labels"]);
    assert!(!deployment_labels.is_empty());
    let namespace = find(&base_file("namespace.yaml"), "Namespace", NAMESPACE).clone();

    // The base file itself.
    let base = only(&base_file("webhook.yaml"), "MutatingWebhookConfiguration").clone();
    assert_webhook_safe(&base, Some(&namespace), &pods);
    // The Deployment object is matched by the same objectSelector on UPDATE.
    assert_webhook_safe(&base, None, &deployment_labels);

    // What `calmplane manifests` prints.
    let dir = tempfile::tempdir().expect("tempdir");
    run(calmplane().arg("certs").arg("--out").arg(dir.path()));
    let out = run(calmplane()
        .arg("manifests")
        .arg("--ca-bundle")
        .arg(dir.path().join("ca.crt")));
    let printed = yaml_docs(&String::from_utf8(out.stdout).expect("UTF-8"));
    assert_eq!(printed.len(), 1);
    assert_webhook_safe(&printed[0], Some(&namespace), &pods);

    // And every rendered overlay.
    let Some(r) = render_all("the_webhook_configuration_is_safe_wherever_it_comes_from") else {
        return;
    };
    for (name, docs) in [
        ("base", &r.base),
        ("cert-manager", &r.cert_manager),
        ("static", &r.static_),
    ] {
        println!("checking {name}");
        let config = only(docs, "MutatingWebhookConfiguration");
        let ns = find(docs, "Namespace", NAMESPACE);
        let d = find(docs, "Deployment", "calmplane");
        assert_webhook_safe(config, Some(ns), &pod_template_labels(d));
    }
}

#[test]
fn the_selectors_used_by_the_safety_checks_behave_like_kubernetes() {
    // The safety test is only as good as this evaluator.
    let sel = json!({"matchLabels": {"a": "1"}, "matchExpressions": [
        {"key": "b", "operator": "NotIn", "values": ["x"]},
        {"key": "c", "operator": "Exists"},
        {"key": "d", "operator": "DoesNotExist"},
        {"key": "e", "operator": "In", "values": ["p", "q"]}]});
    let base = [("a", "1"), ("c", ""), ("e", "q")];
    assert!(selector_matches(&sel, &map(&base)));
    assert!(!selector_matches(
        &sel,
        &map(&[("a", "2"), ("c", ""), ("e", "q")])
    ));
    assert!(!selector_matches(
        &sel,
        &map(&[("a", "1"), ("b", "x"), ("c", ""), ("e", "q")])
    ));
    assert!(selector_matches(
        &sel,
        &map(&[("a", "1"), ("b", "y"), ("c", ""), ("e", "q")])
    ));
    assert!(!selector_matches(&sel, &map(&[("a", "1"), ("e", "q")])));
    assert!(!selector_matches(
        &sel,
        &map(&[("a", "1"), ("c", ""), ("d", ""), ("e", "q")])
    ));
    assert!(!selector_matches(&sel, &map(&[("a", "1"), ("c", "")])));
    assert!(selector_matches(&json!({}), &map(&[])));
}

#[test]
fn an_unsafe_webhook_configuration_is_caught() {
    // Each mutation breaks one property; the checker must notice every one.
    let base = only(&base_file("webhook.yaml"), "MutatingWebhookConfiguration").clone();
    let pods = pod_template_labels(find(
        &base_file("deployment.yaml"),
        "Deployment",
        "calmplane",
    ));
    type Breakage = Box<dyn Fn(&mut Value)>;
    let breakages: Vec<(&str, Breakage)> = vec![
        (
            "failurePolicy Fail",
            Box::new(|c| c["webhooks"][0]["failurePolicy"] = json!("Fail")),
        ),
        (
            "sideEffects Some",
            Box::new(|c| c["webhooks"][1]["sideEffects"] = json!("Some")),
        ),
        (
            "timeout 10",
            Box::new(|c| c["webhooks"][0]["timeoutSeconds"] = json!(10)),
        ),
        (
            "no opt-in",
            Box::new(|c| {
                c["webhooks"][0]["namespaceSelector"]
                    .as_object_mut()
                    .unwrap()
                    .remove("matchLabels");
            }),
        ),
        (
            "kube-system not excluded",
            Box::new(|c| {
                c["webhooks"][1]["namespaceSelector"]["matchExpressions"][0]["values"] =
                    json!(["kube-node-lease", "calmplane"]);
            }),
        ),
        (
            "own pods not excluded",
            Box::new(|c| {
                c["webhooks"][0]
                    .as_object_mut()
                    .unwrap()
                    .remove("objectSelector");
            }),
        ),
        (
            "deployments on DELETE",
            Box::new(|c| {
                c["webhooks"][1]["rules"][0]["operations"] = json!(["CREATE", "UPDATE", "DELETE"]);
            }),
        ),
        (
            "v1beta1 reviews",
            Box::new(|c| c["webhooks"][0]["admissionReviewVersions"] = json!(["v1", "v1beta1"])),
        ),
    ];
    for (what, breakage) in breakages {
        let mut broken = base.clone();
        breakage(&mut broken);
        let caught =
            std::panic::catch_unwind(|| assert_webhook_safe(&broken, None, &pods)).is_err();
        assert!(caught, "the safety check missed: {what}");
    }
}

/// `(flag, value)` for `--flag=value` and `--flag value` arguments.
fn flag<'a>(args: &'a [&'a str], name: &str) -> Option<&'a str> {
    args.iter().enumerate().find_map(|(i, a)| {
        if let Some(v) = a.strip_prefix(name).and_then(|r| r.strip_prefix('=')) {
            Some(v)
        } else if *a == name {
            args.get(i + 1).copied()
        } else {
            None
        }
    })
}

/// A named or numbered container port, resolved to its number.
fn resolve_port(container: &Value, port: &Value) -> i64 {
    if let Some(n) = port.as_i64() {
        return n;
    }
    let name = port.as_str().expect("port name or number");
    container["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == name)
        .and_then(|p| p["containerPort"].as_i64())
        .unwrap_or_else(|| panic!("no container port named {name}"))
}

fn listen_port(addr: &str) -> i64 {
    addr.rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("not host:port: {addr}"))
}

/// The volume mounted at the directory holding `file`, and the key in it.
fn volume_for<'a>(pod: &'a Value, container: &'a Value, file: &str) -> (&'a Value, String) {
    let path = Path::new(file);
    let mount = container["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| path.parent() == Some(Path::new(m["mountPath"].as_str().expect("mountPath"))))
        .unwrap_or_else(|| panic!("{file} is not in a mounted directory"));
    assert!(
        mount.get("subPath").is_none(),
        "{file}: subPath mounts are never updated"
    );
    let volume = pod["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["name"] == mount["name"])
        .unwrap_or_else(|| panic!("no volume {}", mount["name"]));
    let key = path
        .file_name()
        .and_then(|f| f.to_str())
        .expect("file name")
        .to_string();
    (volume, key)
}

#[test]
fn the_deployment_follows_the_advice_calmplane_enforces() {
    let docs: Vec<Value> = [
        "deployment.yaml",
        "configmap.yaml",
        "service.yaml",
        "pdb.yaml",
        "namespace.yaml",
    ]
    .iter()
    .flat_map(|f| base_file(f))
    .collect();
    let d = find(&docs, "Deployment", "calmplane");
    let spec = &d["spec"];
    let pod = &spec["template"]["spec"];
    let pod_labels = pod_template_labels(d);
    assert_eq!(spec["replicas"], 2);
    assert!(selector_matches(&spec["selector"], &pod_labels));
    assert_eq!(spec["strategy"]["rollingUpdate"]["maxUnavailable"], 0);
    assert_eq!(pod["priorityClassName"], "system-cluster-critical");

    let containers = pod["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    let args = str_list(&c["args"]);
    assert_eq!(args.first(), Some(&"serve"));
    let listen = flag(&args, "--listen").expect("--listen");
    assert_eq!(listen, "0.0.0.0:8443");
    let https_port = listen_port(listen);

    // Grace period > preStop sleep + the server's shutdown delay + drain.
    let sleep = c["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_u64()
        .expect("preStop sleep");
    let delay = go_duration(flag(&args, "--shutdown-delay").unwrap_or("5s"));
    let drain = go_duration(flag(&args, "--drain-timeout").unwrap_or("20s"));
    let grace = pod["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("grace period");
    let needed = Duration::from_secs(sleep) + delay + drain;
    assert!(
        Duration::from_secs(grace) > needed,
        "grace {grace}s must exceed preStop {sleep}s + shutdown {delay:?} + drain {drain:?}"
    );

    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        let get = &c[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}");
        assert_eq!(get["scheme"], "HTTPS", "{probe}");
        assert_eq!(resolve_port(c, &get["port"]), https_port, "{probe} port");
    }

    let resources = &c["resources"];
    assert!(resources["requests"]["cpu"].is_string(), "cpu request");
    assert!(
        resources["requests"]["memory"].is_string(),
        "memory request"
    );
    assert!(resources["limits"]["memory"].is_string(), "memory limit");
    assert!(
        resources["limits"].get("cpu").is_none(),
        "no CPU limit (CFS throttling)"
    );

    let spread = pod["topologySpreadConstraints"]
        .as_array()
        .expect("topologySpreadConstraints");
    assert!(
        spread
            .iter()
            .any(|t| t["topologyKey"] == "kubernetes.io/hostname"
                && selector_matches(&t["labelSelector"], &pod_labels)),
        "spread over hostnames, selecting our own pods"
    );

    let psc = &pod["securityContext"];
    let csc = &c["securityContext"];
    let either = |key: &str| {
        csc.get(key)
            .or_else(|| psc.get(key))
            .cloned()
            .unwrap_or(Value::Null)
    };
    assert_eq!(either("runAsNonRoot"), true);
    assert_eq!(csc["readOnlyRootFilesystem"], true);
    assert_eq!(csc["allowPrivilegeEscalation"], false);
    assert!(str_list(&csc["capabilities"]["drop"]).contains(&"ALL"));
    assert_eq!(either("seccompProfile")["type"], "RuntimeDefault");

    // Certificate and key from a mounted Secret.
    for (flag_name, file) in [("--cert", "tls.crt"), ("--key", "tls.key")] {
        let path = flag(&args, flag_name).unwrap_or_else(|| panic!("{flag_name}"));
        let (volume, key) = volume_for(pod, c, path);
        assert_eq!(key, file, "{flag_name} reads the kubernetes.io/tls key");
        assert_eq!(
            volume["secret"]["secretName"], "calmplane-tls",
            "{flag_name}"
        );
    }
    // The policy file from the mounted ConfigMap; it loads, with every section.
    let config_path = flag(&args, "--config").expect("--config");
    let (volume, key) = volume_for(pod, c, config_path);
    let cm_name = volume["configMap"]["name"]
        .as_str()
        .expect("configMap volume");
    let cm = find(&docs, "ConfigMap", cm_name);
    let text = cm["data"][&key]
        .as_str()
        .unwrap_or_else(|| panic!("ConfigMap {cm_name} has no {key}"));
    calmplane::config::Config::from_yaml(text, &key).expect("the policy file loads");
    let sections: Value = calmplane::yaml::from_str(text).expect("policy YAML");
    for section in ["lease", "rolloutHistory", "dns", "prestop", "rollout"] {
        assert!(
            sections.get(section).is_some(),
            "policy file lacks {section}"
        );
    }

    // Service: 443 -> the TLS port, and the metrics port.
    let svc = find(&docs, "Service", SERVICE);
    assert!(selector_matches(
        &json!({"matchLabels": svc["spec"]["selector"]}),
        &pod_labels
    ));
    let ports = svc["spec"]["ports"].as_array().expect("ports");
    let https = ports.iter().find(|p| p["port"] == 443).expect("port 443");
    assert_eq!(resolve_port(c, &https["targetPort"]), https_port);
    let metrics_listen = flag(&args, "--metrics-listen").expect("--metrics-listen");
    assert!(
        !metrics_listen.starts_with("127."),
        "metrics must be reachable from outside the pod"
    );
    let metrics = ports
        .iter()
        .find(|p| p["name"] == "metrics")
        .expect("a metrics port");
    assert_eq!(
        resolve_port(c, &metrics["targetPort"]),
        listen_port(metrics_listen)
    );

    let pdb = find(&docs, "PodDisruptionBudget", "calmplane");
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    assert!(selector_matches(&pdb["spec"]["selector"], &pod_labels));

    for doc in &docs {
        if doc["kind"] != "Namespace" {
            assert_eq!(
                doc["metadata"]["namespace"], NAMESPACE,
                "{} namespace",
                doc["kind"]
            );
        }
    }
    let ns = find(&docs, "Namespace", NAMESPACE);
    assert_ne!(ns["metadata"]["labels"][OPT_IN_LABEL], "true");
}

/// `calmplane preview` on `file` (with `extra` args), parsed.
fn preview(file: &Path, extra: &[&std::ffi::OsStr]) -> Value {
    let out = run(calmplane().arg("preview").arg("-f").arg(file).args(extra));
    serde_json::from_slice(&out.stdout).expect("preview prints JSON")
}

fn assert_clean(result: &Value, what: &str) {
    assert_eq!(result["kind"], "Deployment", "{what}");
    assert!(
        result.get("skipped").is_none(),
        "{what}: previewed, not skipped"
    );
    assert_eq!(result["patch"], json!([]), "{what}: Deployment patch");
    assert_eq!(result["changes"], json!([]), "{what}: Deployment changes");
    let template = result
        .get("template")
        .unwrap_or_else(|| panic!("{what}: no template preview"));
    assert_eq!(template["kind"], "Pod", "{what}");
    assert_eq!(template["patch"], json!([]), "{what}: pod template patch");
    assert_eq!(
        template["changes"],
        json!([]),
        "{what}: pod template changes"
    );
}

#[test]
fn calmplane_preview_finds_nothing_to_change_in_its_own_deployment() {
    let file = manifests_dir().join("base/deployment.yaml");
    // With the built-in defaults, and with the policy file it is deployed with.
    assert_clean(&preview(&file, &[]), "defaults");
    let tmp = tempfile::tempdir().expect("tempdir");
    let cm = find(
        &base_file("configmap.yaml"),
        "ConfigMap",
        "calmplane-policy",
    )
    .clone();
    let policy = tmp.path().join("policy.yaml");
    std::fs::write(
        &policy,
        cm["data"]["policy.yaml"].as_str().expect("policy.yaml"),
    )
    .expect("write");
    assert_clean(
        &preview(
            &file,
            &[std::ffi::OsStr::new("--config"), policy.as_os_str()],
        ),
        "the ConfigMap's policy",
    );

    // The same manifest without what the policies enforce is not clean: the
    // check above can fail.
    let mut bare = find(&read_docs(&file), "Deployment", "calmplane").clone();
    bare["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] = json!("25%");
    let pod = &mut bare["spec"]["template"]["spec"];
    pod.as_object_mut().expect("pod spec").remove("dnsConfig");
    pod["containers"][0]
        .as_object_mut()
        .expect("container")
        .remove("lifecycle");
    let bare_file = tmp.path().join("bare.yaml");
    std::fs::write(&bare_file, calmplane::yaml::to_string(&bare).expect("yaml")).expect("write");
    let result = preview(&bare_file, &[]);
    let paths = |v: &Value| -> Vec<String> {
        v.as_array()
            .expect("patch")
            .iter()
            .map(|op| op["path"].as_str().expect("path").to_string())
            .collect()
    };
    let deployment_paths = paths(&result["patch"]);
    assert!(
        deployment_paths
            .iter()
            .any(|p| p.ends_with("/maxUnavailable")),
        "{deployment_paths:?}"
    );
    let template_paths = paths(&result["template"]["patch"]);
    assert!(
        template_paths
            .iter()
            .any(|p| p.contains("/preStop") || p.contains("/lifecycle")),
        "{template_paths:?}"
    );
    assert!(
        template_paths.iter().any(|p| p.contains("/dnsConfig")),
        "{template_paths:?}"
    );
}

#[test]
fn the_cert_manager_overlay_injects_the_ca_of_the_certificate_the_pods_serve() {
    let Some(r) =
        render_all("the_cert_manager_overlay_injects_the_ca_of_the_certificate_the_pods_serve")
    else {
        return;
    };
    let docs = &r.cert_manager;
    let config = only(docs, "MutatingWebhookConfiguration");
    let inject = config["metadata"]["annotations"]["cert-manager.io/inject-ca-from"]
        .as_str()
        .expect("cert-manager.io/inject-ca-from annotation");
    let (ns, cert_name) = inject.split_once('/').expect("<namespace>/<certificate>");
    for w in config["webhooks"].as_array().expect("webhooks") {
        assert!(
            w["clientConfig"].get("caBundle").is_none(),
            "the cainjector owns caBundle"
        );
    }
    let serving = find(docs, "Certificate", cert_name);
    assert_eq!(serving["metadata"]["namespace"], ns);
    assert_ne!(
        serving["spec"]["isCA"], true,
        "the serving certificate is not a CA"
    );

    // It is the Secret the pods mount, for the name the apiserver calls.
    let d = find(docs, "Deployment", "calmplane");
    let secret_volume = d["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find_map(|v| v["secret"]["secretName"].as_str())
        .expect("a Secret volume");
    assert_eq!(serving["spec"]["secretName"], secret_volume);
    assert_eq!(d["metadata"]["namespace"], ns);
    let service = &config["webhooks"][0]["clientConfig"]["service"];
    let host = format!(
        "{}.{}.svc",
        service["name"].as_str().expect("service name"),
        service["namespace"].as_str().expect("service namespace")
    );
    assert!(
        str_list(&serving["spec"]["dnsNames"]).contains(&host.as_str()),
        "dnsNames lack {host}"
    );
    assert!(str_list(&serving["spec"]["usages"]).contains(&"server auth"));

    // Issued by a CA Issuer whose CA comes from a CA Certificate, itself
    // self-signed: the caBundle is the CA, stable across serving rotations.
    let issuer_ref = &serving["spec"]["issuerRef"];
    assert!(issuer_ref.get("kind").is_none_or(|k| k == "Issuer"));
    let ca_issuer = find(docs, "Issuer", issuer_ref["name"].as_str().expect("issuer"));
    assert_eq!(ca_issuer["metadata"]["namespace"], ns);
    let ca_secret = ca_issuer["spec"]["ca"]["secretName"]
        .as_str()
        .expect("a CA issuer");
    let ca_cert = docs
        .iter()
        .find(|d| d["kind"] == "Certificate" && d["spec"]["secretName"] == ca_secret)
        .expect("a Certificate for the CA secret");
    assert_eq!(ca_cert["spec"]["isCA"], true);
    assert_eq!(ca_cert["metadata"]["namespace"], ns);
    let root = find(
        docs,
        "Issuer",
        ca_cert["spec"]["issuerRef"]["name"]
            .as_str()
            .expect("issuer"),
    );
    assert!(root["spec"].get("selfSigned").is_some());
    let serving_life = go_duration(serving["spec"]["duration"].as_str().expect("duration"));
    let ca_life = go_duration(ca_cert["spec"]["duration"].as_str().expect("duration"));
    assert!(
        ca_life > serving_life * 4,
        "the CA outlives many serving certificates"
    );
}

#[test]
fn the_static_overlay_carries_the_generated_certificate_and_ca_bundle() {
    let Some(r) = render_all("the_static_overlay_carries_the_generated_certificate_and_ca_bundle")
    else {
        return;
    };
    let b64 = base64::engine::general_purpose::STANDARD;
    let docs = &r.static_;
    let secret = find(docs, "Secret", "calmplane-tls");
    assert_eq!(secret["type"], "kubernetes.io/tls");
    assert_eq!(secret["metadata"]["namespace"], NAMESPACE);
    // kustomize wraps long base64 lines; the apiserver (Go's decoder)
    // ignores the newlines.
    let decode = |k: &str| {
        let text: String = secret["data"][k]
            .as_str()
            .expect(k)
            .split_whitespace()
            .collect();
        b64.decode(text).expect("base64")
    };
    assert_eq!(decode("tls.crt"), r.static_certs.tls_crt);
    assert_eq!(decode("tls.key"), r.static_certs.tls_key);

    let d = find(docs, "Deployment", "calmplane");
    let mounts_secret = d["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .any(|v| v["secret"]["secretName"] == "calmplane-tls");
    assert!(mounts_secret, "the Deployment mounts the generated Secret");

    let config = only(docs, "MutatingWebhookConfiguration");
    let mut stripped = config.clone();
    for w in stripped["webhooks"].as_array_mut().expect("webhooks") {
        let bundle = w["clientConfig"]["caBundle"].as_str().expect("caBundle");
        assert_eq!(b64.decode(bundle).expect("base64"), r.static_certs.ca_pem);
        w["clientConfig"]
            .as_object_mut()
            .expect("clientConfig")
            .remove("caBundle");
    }
    // The patch changed the caBundle and nothing else.
    assert_eq!(&stripped, only(&r.base, "MutatingWebhookConfiguration"));
}

#[test]
fn calmplane_manifests_prints_the_base_webhook_with_the_ca_bundle() {
    let b64 = base64::engine::general_purpose::STANDARD;
    let tmp = tempfile::tempdir().expect("tempdir");
    run(calmplane().arg("certs").arg("--out").arg(tmp.path()));
    let ca = std::fs::read(tmp.path().join("ca.crt")).expect("ca.crt");
    let base = only(&base_file("webhook.yaml"), "MutatingWebhookConfiguration").clone();

    // The flag and the env var give the same output.
    let by_flag = run(calmplane()
        .arg("manifests")
        .arg("--ca-bundle")
        .arg(tmp.path().join("ca.crt")))
    .stdout;
    let by_env = run(calmplane()
        .arg("manifests")
        .env("CALMPLANE_CA_BUNDLE", tmp.path().join("ca.crt")))
    .stdout;
    assert_eq!(by_flag, by_env);
    let printed = yaml_docs(&String::from_utf8(by_flag).expect("UTF-8"));
    assert_eq!(printed.len(), 1);
    let mut expected = base.clone();
    for w in expected["webhooks"].as_array_mut().expect("webhooks") {
        w["clientConfig"]["caBundle"] = json!(b64.encode(&ca));
    }
    assert_eq!(printed[0], expected);

    // Without a bundle, for cert-manager's cainjector: the base as is.
    let none = run(calmplane().args(["manifests", "--no-ca-bundle"])).stdout;
    assert_eq!(
        yaml_docs(&String::from_utf8(none).expect("UTF-8")),
        vec![base.clone()]
    );

    // Another namespace and Service: referenced, and that namespace excluded.
    let other = run(calmplane().args([
        "manifests",
        "--no-ca-bundle",
        "--namespace",
        "webhooks",
        "--service",
        "calm",
    ]))
    .stdout;
    let other = &yaml_docs(&String::from_utf8(other).expect("UTF-8"))[0];
    for w in other["webhooks"].as_array().expect("webhooks") {
        assert_eq!(w["clientConfig"]["service"]["namespace"], "webhooks");
        assert_eq!(w["clientConfig"]["service"]["name"], "calm");
        let l = namespace_labels("webhooks", &[(OPT_IN_LABEL, "true")]);
        assert!(
            !selector_matches(&w["namespaceSelector"], &l),
            "its own namespace stays excluded"
        );
        let l = namespace_labels(NAMESPACE, &[(OPT_IN_LABEL, "true")]);
        assert!(!selector_matches(&w["namespaceSelector"], &l));
    }

    // Wrong inputs fail with a message, not a broken configuration.
    for (file, message) in [
        (tmp.path().join("tls.key"), "never a key"),
        (tmp.path().join("missing.crt"), "missing.crt"),
    ] {
        let out = calmplane()
            .arg("manifests")
            .arg("--ca-bundle")
            .arg(&file)
            .output()
            .expect("run");
        assert!(!out.status.success(), "{} accepted", file.display());
        assert!(out.stdout.is_empty(), "nothing printed on error");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(message), "{err}");
    }
    let out = calmplane()
        .args(["manifests", "--no-ca-bundle", "--namespace", "Bad_NS"])
        .output()
        .expect("run");
    assert!(!out.status.success());
}

// ------------------------------------------------------------------ image

/// Every container image in `docs`.
fn images(docs: &[Value]) -> Vec<String> {
    docs.iter()
        .filter(|d| d["kind"] == "Deployment")
        .flat_map(|d| {
            d["spec"]["template"]["spec"]["containers"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .map(|c| c["image"].as_str().expect("image is a string").to_string())
        .collect()
}

/// The `images:` example in the README, as a kustomize list.
fn readme_images_example() -> Value {
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("README.md");
    let block = readme
        .split("```yaml\n")
        .skip(1)
        .filter_map(|b| b.split("```").next())
        .find(|b| b.trim_start().starts_with("images:"))
        .expect("the README documents a kustomize `images:` override");
    calmplane::yaml::from_str::<Value>(block).expect("the README's images: block is YAML")["images"]
        .clone()
}

#[test]
fn the_image_is_the_same_everywhere_and_the_documented_override_applies() {
    let (name, tag) = calmplane::manifests::IMAGE
        .rsplit_once(':')
        .expect("image has a tag");
    assert_eq!(name, calmplane::manifests::IMAGE_NAME);
    assert_eq!(tag, env!("CARGO_PKG_VERSION"), "the tag is the release");
    assert!(
        name.split('/')
            .next()
            .is_some_and(|host| host.contains('.')),
        "the image names a registry host: {name}"
    );
    assert_eq!(
        images(&base_file("deployment.yaml")),
        vec![calmplane::manifests::IMAGE.to_string()]
    );
    // Every Deployment in every file under manifests/, the optional
    // monitoring kustomization included: its lease monitor is the same binary
    // (`calmplane lease-monitor`), so an image of its own could only be a
    // name that does not exist or a version that does not match.
    let mut everywhere = Vec::new();
    for file in yaml_files(&manifests_dir()) {
        for image in images(&read_docs(&file)) {
            everywhere.push((file.display().to_string(), image));
        }
    }
    assert!(
        everywhere
            .iter()
            .any(|(f, _)| f.ends_with("monitoring/lease-monitor.yaml")),
        "the lease monitor's Deployment is among the files: {everywhere:?}"
    );
    for (file, image) in &everywhere {
        assert_eq!(image, calmplane::manifests::IMAGE, "{file}");
    }
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).expect("Dockerfile");
    assert!(
        dockerfile.contains(&format!(
            "docker build -t {} .",
            calmplane::manifests::IMAGE
        )),
        "the Dockerfile's build line tags the image the manifests pull"
    );
    let example = readme_images_example();
    assert_eq!(
        example[0]["name"], name,
        "the README's override must match the manifests' image name, or kustomize ignores it"
    );

    let Some(rendered) = render_all("the_image_is_the_same_everywhere") else {
        return;
    };
    let kubectl = kubectl("the_image_is_the_same_everywhere").expect("kubectl");
    let (_, monitoring) = kustomize(&kubectl, &manifests_dir().join("monitoring"));
    for (overlay, docs) in [
        ("base", &rendered.base),
        ("cert-manager", &rendered.cert_manager),
        ("static", &rendered.static_),
        ("monitoring", &monitoring),
    ] {
        assert_eq!(
            images(docs),
            vec![calmplane::manifests::IMAGE.to_string()],
            "{overlay}"
        );
    }
    // The README's override, applied on top of each overlay and of the
    // monitoring kustomization (applied on its own, so it needs the same
    // override), changes the image.
    let (_tmp, static_overlay, _) = static_overlay_copy();
    let manifests = static_overlay
        .parent()
        .and_then(Path::parent)
        .expect("copy root");
    let want = format!(
        "{}:{}",
        example[0]["newName"].as_str().expect("newName"),
        example[0]["newTag"].as_str().expect("newTag")
    );
    for (overlay, resource) in [
        ("cert-manager", "../cert-manager"),
        ("static", "../static"),
        ("monitoring", "../../monitoring"),
    ] {
        let dir = manifests
            .join("overlays")
            .join(format!("{overlay}-custom-image"));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let kustomization = json!({
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "resources": [resource],
            "images": example,
        });
        std::fs::write(
            dir.join("kustomization.yaml"),
            calmplane::yaml::to_string(&kustomization).expect("yaml"),
        )
        .expect("write kustomization");
        let (_, docs) = kustomize(&kubectl, &dir);
        assert_eq!(
            images(&docs),
            vec![want.clone()],
            "{overlay} with the README's override"
        );
    }
}

// ---------------------------------------------------------- NetworkPolicy

fn networkpolicy_component() -> PathBuf {
    manifests_dir().join("components/networkpolicy")
}

/// Who opens a connection, for [`admits`].
enum Source {
    /// A host-network process or an address outside the pod network (the
    /// apiserver on a control-plane node): only an `ipBlock` can name it.
    Host(IpAddr),
    /// A pod, in a namespace with the apiserver-set name label.
    Pod {
        namespace: String,
        labels: BTreeMap<String, String>,
        ip: IpAddr,
    },
}

fn pod_in(namespace: &str, labels: &[(&str, &str)]) -> Source {
    Source::Pod {
        namespace: namespace.to_string(),
        labels: map(labels),
        ip: ip("10.244.1.5"),
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap_or_else(|e| panic!("IP {s}: {e}"))
}

/// Whether `address` lies in `cidr` (IPv4 or IPv6).
fn cidr_contains(cidr: &str, address: IpAddr) -> bool {
    let (net, bits) = cidr
        .split_once('/')
        .unwrap_or_else(|| panic!("not a CIDR: {cidr}"));
    let bits: u32 = bits.parse().unwrap_or_else(|e| panic!("{cidr}: {e}"));
    let (net, address, width) = match (ip(net), address) {
        (IpAddr::V4(n), IpAddr::V4(a)) => (u128::from(u32::from(n)), u128::from(u32::from(a)), 32),
        (IpAddr::V6(n), IpAddr::V6(a)) => (u128::from(n), u128::from(a), 128),
        _ => return false,
    };
    assert!(bits <= width, "{cidr}: prefix too long");
    bits == 0 || net >> (width - bits) == address >> (width - bits)
}

/// Whether a rule's `ports` admit TCP `port` on `pod` (a pod template,
/// whose container ports give named ports their numbers).
fn ports_admit(ports: &Value, pod: &Value, port: i64) -> bool {
    let Some(ports) = ports.as_array().filter(|p| !p.is_empty()) else {
        return true; // no ports: every port
    };
    ports.iter().any(|p| {
        if p["protocol"].as_str().unwrap_or("TCP") != "TCP" {
            return false;
        }
        match &p["port"] {
            Value::Null => true,
            Value::Number(n) => {
                let from = n.as_i64().expect("port number");
                let to = p["endPort"].as_i64().unwrap_or(from);
                (from..=to).contains(&port)
            }
            Value::String(name) => pod["spec"]["containers"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|c| c["ports"].as_array().into_iter().flatten())
                .any(|c| c["name"] == name.as_str() && c["containerPort"] == port),
            other => panic!("port {other}"),
        }
    })
}

/// Whether one `from` peer of a policy in `policy_namespace` admits `source`.
fn peer_admits(peer: &Value, policy_namespace: &str, source: &Source) -> bool {
    if let Some(block) = peer.get("ipBlock") {
        let address = match source {
            Source::Host(a) | Source::Pod { ip: a, .. } => *a,
        };
        let cidr = block["cidr"].as_str().expect("ipBlock.cidr");
        let excepted = block["except"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| cidr_contains(e.as_str().expect("except CIDR"), address));
        return cidr_contains(cidr, address) && !excepted;
    }
    let Source::Pod {
        namespace, labels, ..
    } = source
    else {
        return false; // selectors name pods, never hosts
    };
    let namespace_ok = match peer.get("namespaceSelector") {
        Some(selector) => selector_matches(selector, &namespace_labels(namespace, &[])),
        None => namespace == policy_namespace,
    };
    let pod_ok = peer
        .get("podSelector")
        .is_none_or(|selector| selector_matches(selector, labels));
    namespace_ok && pod_ok
}

/// NetworkPolicy ingress semantics (networking.k8s.io/v1), written out here
/// rather than taken from a CNI: a pod that no policy selects for Ingress
/// accepts everything; a selected pod accepts what some rule of some
/// selecting policy admits, by source and by port.
fn admits(policies: &[Value], namespace: &str, pod: &Value, port: i64, source: &Source) -> bool {
    let labels = labels(&pod["metadata"]["labels"]);
    let selecting: Vec<&Value> = policies
        .iter()
        .filter(|p| p["metadata"]["namespace"] == namespace)
        .filter(|p| selector_matches(&p["spec"]["podSelector"], &labels))
        .filter(|p| {
            // Without policyTypes, a policy always covers Ingress.
            p["spec"]["policyTypes"]
                .as_array()
                .is_none_or(|t| t.iter().any(|t| t == "Ingress"))
        })
        .collect();
    if selecting.is_empty() {
        return true;
    }
    selecting.iter().any(|p| {
        p["spec"]["ingress"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|rule| {
                let from_ok = match rule["from"].as_array().filter(|f| !f.is_empty()) {
                    None => true, // no from: every source
                    Some(peers) => peers
                        .iter()
                        .any(|peer| peer_admits(peer, namespace, source)),
                };
                from_ok && ports_admit(&rule["ports"], pod, port)
            })
    })
}

/// Everything the component must guarantee, for `policies` (the component
/// as shipped or as rendered), the webhook's and the lease monitor's
/// Deployments, and the addresses the apiserver calls from.
fn assert_networkpolicies_sound(
    policies: &[Value],
    webhook: &Value,
    monitor: &Value,
    apiserver: &[IpAddr],
) {
    assert!(!apiserver.is_empty());
    for p in policies {
        let name = p["metadata"]["name"].as_str().expect("name");
        assert_eq!(p["kind"], "NetworkPolicy", "{name}");
        assert_eq!(p["metadata"]["namespace"], NAMESPACE, "{name}");
        assert_eq!(
            str_list(&p["spec"]["policyTypes"]),
            ["Ingress"],
            "{name}: Ingress only"
        );
    }
    let webhook_pod = &webhook["spec"]["template"];
    let monitor_pod = &monitor["spec"]["template"];
    let webhook_labels = labels(&webhook_pod["metadata"]["labels"]);
    let monitor_labels = labels(&monitor_pod["metadata"]["labels"]);
    // Each policy selects its own pods, and only them.
    let webhook_policy = find(policies, "NetworkPolicy", "calmplane-webhook");
    let monitor_policy = find(policies, "NetworkPolicy", "calmplane-lease-monitor");
    for (policy, own, other) in [
        (webhook_policy, &webhook_labels, &monitor_labels),
        (monitor_policy, &monitor_labels, &webhook_labels),
    ] {
        let selector = &policy["spec"]["podSelector"];
        let name = &policy["metadata"]["name"];
        assert!(
            selector_matches(selector, own),
            "{name} must select {own:?}"
        );
        assert!(
            !selector_matches(selector, other),
            "{name} must not select {other:?}"
        );
    }

    let monitoring = || pod_in("monitoring", &[("app.kubernetes.io/name", "prometheus")]);
    let shop = || pod_in("shop", &[("app", "web")]);
    let system = || pod_in("kube-system", &[("k8s-app", "kube-dns")]);
    let neighbour = || {
        pod_in(
            NAMESPACE,
            &monitor_labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect::<Vec<_>>(),
        )
    };
    let webhook_admits =
        |port, source: &Source| admits(policies, NAMESPACE, webhook_pod, port, source);
    let monitor_admits =
        |port, source: &Source| admits(policies, NAMESPACE, monitor_pod, port, source);

    // 8443: the apiserver, and nobody else.
    for address in apiserver {
        assert!(
            webhook_admits(8443, &Source::Host(*address)),
            "the apiserver at {address} must reach 8443"
        );
        assert!(
            !webhook_admits(9090, &Source::Host(*address)),
            "{address} must not reach 9090"
        );
        assert!(
            !webhook_admits(12345, &Source::Host(*address)),
            "{address}: only 8443"
        );
    }
    for (who, source) in [
        ("a workload", shop()),
        ("kube-system", system()),
        ("Prometheus", monitoring()),
        ("the lease monitor", neighbour()),
    ] {
        assert!(!webhook_admits(8443, &source), "{who} must not reach 8443");
    }
    assert!(
        !webhook_admits(8443, &Source::Host(ip("203.0.113.200"))),
        "an address outside the CIDRs"
    );
    // 9090 and 9091: the monitoring namespace, and nobody else.
    assert!(
        webhook_admits(9090, &monitoring()),
        "Prometheus must reach 9090"
    );
    assert!(
        monitor_admits(9091, &monitoring()),
        "Prometheus must reach 9091"
    );
    for (who, source) in [
        ("a workload", shop()),
        ("kube-system", system()),
        ("the lease monitor", neighbour()),
    ] {
        assert!(!webhook_admits(9090, &source), "{who} must not reach 9090");
        assert!(!monitor_admits(9091, &source), "{who} must not reach 9091");
    }
    for address in apiserver {
        assert!(
            !monitor_admits(9091, &Source::Host(*address)),
            "{address} must not reach 9091"
        );
    }

    // The rules as the issue words them: the 8443 rule names port 8443 (or
    // the container port `https`), the metrics rules come from a
    // namespaceSelector only.
    let rules = |policy: &Value| {
        policy["spec"]["ingress"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    let https = rules(webhook_policy)
        .into_iter()
        .find(|r| ports_admit(&r["ports"], webhook_pod, 8443))
        .expect("a rule for 8443");
    assert!(
        https["ports"]
            .as_array()
            .expect("8443 rule ports")
            .iter()
            .all(|p| p["port"] == 8443 || p["port"] == "https"),
        "the 8443 rule names its port: {https}"
    );
    for (policy, pod, port) in [
        (webhook_policy, webhook_pod, 9090),
        (monitor_policy, monitor_pod, 9091),
    ] {
        for rule in rules(policy)
            .iter()
            .filter(|r| ports_admit(&r["ports"], pod, port))
        {
            let peers = rule["from"]
                .as_array()
                .filter(|f| !f.is_empty())
                .expect("a from list");
            for peer in peers {
                let keys: Vec<&String> = peer.as_object().expect("peer").keys().collect();
                assert_eq!(
                    keys,
                    ["namespaceSelector"],
                    "{port} from a namespaceSelector only: {rule}"
                );
            }
        }
    }
}

fn shipped_networkpolicies() -> Vec<Value> {
    read_docs(&networkpolicy_component().join("networkpolicy.yaml"))
}

fn monitor_deployment() -> Value {
    find(
        &read_docs(&manifests_dir().join("monitoring/lease-monitor.yaml")),
        "Deployment",
        "calmplane-lease-monitor",
    )
    .clone()
}

/// The shipped placeholders, one address in each.
const PLACEHOLDER_APISERVER: &[&str] = &["192.0.2.10", "198.51.100.10"];

#[test]
fn the_networkpolicy_component_admits_only_the_apiserver_and_prometheus() {
    let policies = shipped_networkpolicies();
    let webhook = find(&base_file("deployment.yaml"), "Deployment", "calmplane").clone();
    let apiserver: Vec<IpAddr> = PLACEHOLDER_APISERVER.iter().map(|a| ip(a)).collect();
    assert_networkpolicies_sound(&policies, &webhook, &monitor_deployment(), &apiserver);
    // The shipped CIDRs are documentation ranges (RFC 5737, RFC 3849), so
    // they can never pass for a real cluster's.
    let documentation = [
        "192.0.2.0/24",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "2001:db8::/32",
    ];
    let policy = find(&policies, "NetworkPolicy", "calmplane-webhook");
    let blocks: Vec<&str> = policy["spec"]["ingress"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|r| r["from"].as_array().into_iter().flatten())
        .filter_map(|p| p["ipBlock"]["cidr"].as_str())
        .collect();
    assert!(!blocks.is_empty());
    for cidr in blocks {
        let (first, _) = cidr.split_once('/').expect("CIDR");
        assert!(
            documentation.iter().any(|d| cidr_contains(d, ip(first))),
            "{cidr} is not a documentation range"
        );
    }
    // The component is a kustomize Component that lists that file.
    let kustomization = read_docs(&networkpolicy_component().join("kustomization.yaml"));
    assert_eq!(
        kustomization[0]["apiVersion"],
        "kustomize.config.k8s.io/v1alpha1"
    );
    assert_eq!(kustomization[0]["kind"], "Component");
    assert_eq!(
        str_list(&kustomization[0]["resources"]),
        ["networkpolicy.yaml"]
    );
}

#[test]
fn a_broken_networkpolicy_is_caught() {
    // Each breakage opens or closes something; the check must notice every one.
    let policies = shipped_networkpolicies();
    let webhook = find(&base_file("deployment.yaml"), "Deployment", "calmplane").clone();
    let monitor = monitor_deployment();
    let apiserver: Vec<IpAddr> = PLACEHOLDER_APISERVER.iter().map(|a| ip(a)).collect();
    let index = |name: &str| {
        policies
            .iter()
            .position(|p| p["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no policy {name}"))
    };
    let (w, m) = (index("calmplane-webhook"), index("calmplane-lease-monitor"));
    type Breakage = Box<dyn Fn(&mut [Value])>;
    let breakages: Vec<(&str, Breakage)> = vec![
        (
            "webhook podSelector selects nothing",
            Box::new(move |p| {
                p[w]["spec"]["podSelector"] =
                    json!({"matchLabels": {"app.kubernetes.io/name": "calmplane-webhook"}});
            }),
        ),
        (
            "webhook podSelector selects every pod",
            Box::new(move |p| p[w]["spec"]["podSelector"] = json!({})),
        ),
        (
            "monitor podSelector selects the webhook",
            Box::new(move |p| {
                p[m]["spec"]["podSelector"] =
                    json!({"matchLabels": {"app.kubernetes.io/name": "calmplane"}});
            }),
        ),
        (
            "8443 from anywhere",
            Box::new(move |p| {
                p[w]["spec"]["ingress"][0]
                    .as_object_mut()
                    .unwrap()
                    .remove("from");
            }),
        ),
        (
            "the Service port instead of the pod's",
            Box::new(move |p| p[w]["spec"]["ingress"][0]["ports"][0]["port"] = json!(443)),
        ),
        (
            "every port for the apiserver",
            Box::new(move |p| {
                p[w]["spec"]["ingress"][0]
                    .as_object_mut()
                    .unwrap()
                    .remove("ports");
            }),
        ),
        (
            "9090 from every namespace",
            Box::new(move |p| {
                p[w]["spec"]["ingress"][1]["from"][0]["namespaceSelector"] = json!({});
            }),
        ),
        (
            "9090 also from an ipBlock",
            Box::new(move |p| {
                p[w]["spec"]["ingress"][1]["from"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"ipBlock": {"cidr": "0.0.0.0/0"}}));
            }),
        ),
        (
            "9090 from pods of calmplane's namespace",
            Box::new(move |p| {
                p[w]["spec"]["ingress"][1]["from"][0] = json!({"podSelector": {}});
            }),
        ),
        (
            "9091 from another namespace",
            Box::new(move |p| {
                p[m]["spec"]["ingress"][0]["from"][0]["namespaceSelector"]["matchLabels"]
                    [NAME_LABEL] = json!("default");
            }),
        ),
        (
            "egress too",
            Box::new(move |p| p[w]["spec"]["policyTypes"] = json!(["Ingress", "Egress"])),
        ),
    ];
    for (what, breakage) in breakages {
        let mut broken = policies.clone();
        breakage(&mut broken);
        let caught = std::panic::catch_unwind(|| {
            assert_networkpolicies_sound(&broken, &webhook, &monitor, &apiserver)
        })
        .is_err();
        assert!(caught, "the NetworkPolicy check missed: {what}");
    }
}

#[test]
fn the_networkpolicy_evaluator_follows_the_api() {
    // The NetworkPolicy tests are only as good as this evaluator.
    let pod = json!({"metadata": {"labels": {"app": "x"}},
                     "spec": {"containers": [{"ports": [{"name": "web", "containerPort": 8080}]}]}});
    let policy = |spec: Value| json!({"kind": "NetworkPolicy", "metadata": {"name": "p", "namespace": "ns"}, "spec": spec});
    let anyone = Source::Host(ip("203.0.113.1"));
    // Not selected, or selected for Egress only: not isolated.
    let other =
        policy(json!({"podSelector": {"matchLabels": {"app": "y"}}, "policyTypes": ["Ingress"]}));
    assert!(admits(&[other], "ns", &pod, 1, &anyone));
    let egress = policy(json!({"podSelector": {}, "policyTypes": ["Egress"]}));
    assert!(admits(&[egress], "ns", &pod, 1, &anyone));
    // Selected with no rules: nothing; without policyTypes, Ingress is implied.
    let deny = policy(json!({"podSelector": {}}));
    assert!(!admits(std::slice::from_ref(&deny), "ns", &pod, 1, &anyone));
    // Rules add up across policies.
    let open = policy(json!({"podSelector": {}, "ingress": [{}]}));
    assert!(admits(&[deny, open], "ns", &pod, 1, &anyone));
    // A named port is the container's port of that name.
    let named = policy(json!({"podSelector": {}, "ingress": [{"ports": [{"port": "web"}]}]}));
    assert!(admits(
        std::slice::from_ref(&named),
        "ns",
        &pod,
        8080,
        &anyone
    ));
    assert!(!admits(&[named], "ns", &pod, 8081, &anyone));
    let range = policy(
        json!({"podSelector": {}, "ingress": [{"ports": [{"port": 8000, "endPort": 8100}]}]}),
    );
    assert!(admits(
        std::slice::from_ref(&range),
        "ns",
        &pod,
        8080,
        &anyone
    ));
    assert!(!admits(&[range], "ns", &pod, 8101, &anyone));
    // ipBlock with except.
    let block = policy(json!({"podSelector": {}, "ingress": [{"from": [
        {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}]}]}));
    let b = std::slice::from_ref(&block);
    assert!(admits(b, "ns", &pod, 1, &Source::Host(ip("10.2.3.4"))));
    assert!(!admits(b, "ns", &pod, 1, &Source::Host(ip("10.1.3.4"))));
    assert!(!admits(b, "ns", &pod, 1, &Source::Host(ip("11.0.0.1"))));
    // namespaceSelector and podSelector in one peer: both; in two peers: either.
    let and = policy(json!({"podSelector": {}, "ingress": [{"from": [
        {"namespaceSelector": {"matchLabels": {NAME_LABEL: "mon"}}, "podSelector": {"matchLabels": {"app": "prom"}}}]}]}));
    let or = policy(json!({"podSelector": {}, "ingress": [{"from": [
        {"namespaceSelector": {"matchLabels": {NAME_LABEL: "mon"}}}, {"podSelector": {"matchLabels": {"app": "prom"}}}]}]}));
    let prom_in_mon = pod_in("mon", &[("app", "prom")]);
    let other_in_mon = pod_in("mon", &[("app", "other")]);
    let prom_in_ns = pod_in("ns", &[("app", "prom")]);
    let prom_elsewhere = pod_in("elsewhere", &[("app", "prom")]);
    assert!(admits(
        std::slice::from_ref(&and),
        "ns",
        &pod,
        1,
        &prom_in_mon
    ));
    assert!(!admits(
        std::slice::from_ref(&and),
        "ns",
        &pod,
        1,
        &other_in_mon
    ));
    assert!(admits(
        std::slice::from_ref(&or),
        "ns",
        &pod,
        1,
        &other_in_mon
    ));
    // A podSelector alone names pods of the policy's own namespace.
    assert!(admits(
        std::slice::from_ref(&or),
        "ns",
        &pod,
        1,
        &prom_in_ns
    ));
    assert!(!admits(&[or], "ns", &pod, 1, &prom_elsewhere));
    // Selectors never name hosts.
    assert!(!admits(
        &[and],
        "ns",
        &pod,
        1,
        &Source::Host(ip("10.244.1.5"))
    ));
    assert!(cidr_contains("2001:db8::/32", ip("2001:db8::1")));
    assert!(!cidr_contains("2001:db8::/32", ip("192.0.2.1")));
    assert!(cidr_contains("0.0.0.0/0", ip("192.0.2.1")));
}

/// The overlay that the component's kustomization.yaml shows, as written there.
fn documented_networkpolicy_overlay() -> String {
    let text = std::fs::read_to_string(networkpolicy_component().join("kustomization.yaml"))
        .expect("kustomization.yaml");
    let start = "#   # manifests/overlays/mine/kustomization.yaml";
    let lines: Vec<&str> = text
        .lines()
        .skip_while(|l| *l != start)
        .take_while(|l| *l != "#")
        .collect();
    assert!(
        !lines.is_empty(),
        "the component documents an overlay starting {start:?}"
    );
    lines
        .iter()
        .map(|l| {
            l.strip_prefix("#   ")
                .unwrap_or_else(|| panic!("example line {l:?}"))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_documented_networkpolicy_overlay_renders_validates_and_sets_the_cidrs() {
    let Some(kubectl) = kubectl("the_documented_networkpolicy_overlay_renders") else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("manifests");
    copy_dir(&manifests_dir(), &root);
    let overlay = root.join("overlays/mine");
    std::fs::create_dir_all(&overlay).expect("mkdir");
    std::fs::write(
        overlay.join("kustomization.yaml"),
        documented_networkpolicy_overlay(),
    )
    .expect("write overlay");
    let (text, docs) = kustomize(&kubectl, &overlay);
    let file = tmp.path().join("rendered.yaml");
    std::fs::write(&file, &text).expect("write rendered");
    validate_all(&[file]);

    // The install is all there, with the two policies added.
    let (_, cert_manager) = kustomize(&kubectl, &manifests_dir().join("overlays/cert-manager"));
    let without: Vec<&Value> = docs
        .iter()
        .filter(|d| d["kind"] != "NetworkPolicy")
        .collect();
    assert_eq!(without, cert_manager.iter().collect::<Vec<_>>());
    let policies: Vec<Value> = docs
        .iter()
        .filter(|d| d["kind"] == "NetworkPolicy")
        .cloned()
        .collect();
    assert_eq!(policies.len(), 2);

    // The documented patch replaced the placeholders with its addresses; the
    // podSelectors still select the rendered pods.
    let (_, monitoring) = kustomize(&kubectl, &manifests_dir().join("monitoring"));
    let webhook = find(&docs, "Deployment", "calmplane");
    let monitor = find(&monitoring, "Deployment", "calmplane-lease-monitor");
    assert_networkpolicies_sound(
        &policies,
        webhook,
        monitor,
        &[ip("10.0.0.10"), ip("10.0.0.11")],
    );
    for placeholder in PLACEHOLDER_APISERVER {
        assert!(
            !admits(
                &policies,
                NAMESPACE,
                &webhook["spec"]["template"],
                8443,
                &Source::Host(ip(placeholder))
            ),
            "{placeholder} is still admitted"
        );
    }
}

// ------------------------------------------------------------- register

mod register {
    use super::*;
    use calmplane::manifests::{webhook_configuration, WebhookOptions};
    use calmplane::register::{register, RegisterError, RegisterOptions};
    use http::{Request, Response};
    use http_body_util::BodyExt;
    use kube::client::Body;
    use tower_test::mock;

    /// What the mock apiserver saw.
    struct Seen {
        method: http::Method,
        path: String,
        query: BTreeMap<String, String>,
        content_type: String,
        body: Value,
    }

    fn config() -> Value {
        let certs =
            calmplane::certs::generate(&calmplane::certs::serving_names(SERVICE, NAMESPACE))
                .expect("dev certs");
        webhook_configuration(&WebhookOptions {
            ca_bundle_pem: Some(certs.ca_pem.as_bytes()),
            ..WebhookOptions::default()
        })
        .expect("configuration")
    }

    /// A failed apiserver `Status`.
    fn failure(code: u16, reason: &str, message: &str) -> Value {
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": message, "reason": reason, "code": code})
    }

    /// Run `register` against a mock that answers the first request with
    /// `status` and `reply(body it received)`.
    async fn against_mock(
        config: &Value,
        opts: RegisterOptions,
        status: u16,
        reply: impl FnOnce(&Value) -> Value + Send + 'static,
    ) -> (
        Result<
            k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration,
            RegisterError,
        >,
        Seen,
    ) {
        let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
        let server = tokio::spawn(async move {
            let mut handle = std::pin::pin!(handle);
            let (request, send) = handle
                .next_request()
                .await
                .expect("register sent no request");
            let (parts, body) = request.into_parts();
            let bytes = body.collect().await.expect("request body").to_bytes();
            let text = String::from_utf8(bytes.to_vec()).expect("UTF-8 body");
            // application/apply-patch+yaml: parse as YAML (JSON is YAML).
            let body: Value = calmplane::yaml::from_str(&text).expect("YAML body");
            let query = parts
                .uri
                .query()
                .unwrap_or("")
                .split('&')
                .filter(|kv| !kv.is_empty())
                .map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                    (k.to_string(), v.to_string())
                })
                .collect();
            let seen = Seen {
                method: parts.method,
                path: parts.uri.path().to_string(),
                query,
                content_type: parts
                    .headers
                    .get(http::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string(),
                body,
            };
            let response = reply(&seen.body);
            send.send_response(
                Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .body(Body::from(serde_json::to_vec(&response).expect("json")))
                    .expect("response"),
            );
            seen
        });
        let client = kube::Client::new(service, "default");
        let result = register(client, config, opts).await;
        let seen = server.await.expect("mock apiserver task");
        (result, seen)
    }

    /// What an apiserver returns for a successful apply: the object, stored.
    fn stored(body: &Value) -> Value {
        let mut object = body.clone();
        object["metadata"]["resourceVersion"] = json!("4242");
        object["metadata"]["uid"] = json!("0b7f4c4e-8f7a-4a1c-9b1e-2d3c4b5a6f70");
        object
    }

    #[tokio::test]
    async fn register_sends_a_server_side_apply_of_the_exact_configuration() {
        let config = config();
        let (result, seen) = against_mock(&config, RegisterOptions::default(), 200, stored).await;
        assert_eq!(seen.method, http::Method::PATCH);
        assert_eq!(
            seen.path,
            "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/calmplane"
        );
        assert_eq!(seen.content_type, "application/apply-patch+yaml");
        assert_eq!(
            seen.query.get("fieldManager").map(String::as_str),
            Some("calmplane")
        );
        assert_eq!(
            seen.query.get("fieldValidation").map(String::as_str),
            Some("Strict")
        );
        assert!(
            !seen.query.contains_key("force"),
            "no force unless asked: {:?}",
            seen.query
        );
        assert!(!seen.query.contains_key("dryRun"), "{:?}", seen.query);
        // Server-side apply needs apiVersion and kind in the body, and every
        // field we own: the body is the configuration, untouched.
        assert_eq!(seen.body, config);
        assert_eq!(seen.body["apiVersion"], "admissionregistration.k8s.io/v1");
        assert_eq!(seen.body["kind"], "MutatingWebhookConfiguration");
        let base = only(&base_file("webhook.yaml"), "MutatingWebhookConfiguration").clone();
        for (sent, base) in seen.body["webhooks"]
            .as_array()
            .unwrap()
            .iter()
            .zip(base["webhooks"].as_array().unwrap())
        {
            assert!(sent["clientConfig"]["caBundle"].is_string());
            for key in [
                "namespaceSelector",
                "objectSelector",
                "failurePolicy",
                "sideEffects",
                "timeoutSeconds",
                "rules",
            ] {
                assert_eq!(sent[key], base[key], "{key}");
            }
            // Each webhook keeps its own path: /mutate, or /report.
            assert_eq!(
                sent["clientConfig"]["service"]["path"],
                base["clientConfig"]["service"]["path"]
            );
        }

        let stored = result.expect("register succeeds");
        assert_eq!(stored.metadata.resource_version.as_deref(), Some("4242"));
        // Pods and Deployments, each on /mutate and on /report.
        assert_eq!(stored.webhooks.map(|w| w.len()), Some(4));
    }

    #[tokio::test]
    async fn force_and_dry_run_become_query_parameters() {
        let config = config();
        let opts = RegisterOptions {
            force: true,
            dry_run: true,
        };
        let (result, seen) = against_mock(&config, opts, 200, stored).await;
        result.expect("register succeeds");
        assert_eq!(seen.query.get("force").map(String::as_str), Some("true"));
        assert_eq!(seen.query.get("dryRun").map(String::as_str), Some("All"));
        assert_eq!(
            seen.query.get("fieldManager").map(String::as_str),
            Some("calmplane")
        );
        assert_eq!(seen.method, http::Method::PATCH);
    }

    #[tokio::test]
    async fn a_conflict_is_reported_with_the_way_out() {
        let config = config();
        let conflict = |_: &Value| {
            failure(409, "Conflict", "Apply failed with 1 conflict: conflict with \"kubectl-client-side-apply\": .webhooks[name=\"pods.calmplane.dev\"].timeoutSeconds")
        };
        let (result, _) = against_mock(&config, RegisterOptions::default(), 409, conflict).await;
        let err = result.expect_err("a conflict is an error");
        assert!(matches!(err, RegisterError::Conflict { .. }), "{err:?}");
        let text = err.to_string();
        assert!(text.contains("--force"), "{text}");
        assert!(
            text.contains("timeoutSeconds"),
            "the apiserver's message is kept: {text}"
        );
    }

    #[tokio::test]
    async fn other_api_errors_are_not_called_conflicts() {
        let config = config();
        let forbidden = |_: &Value| {
            failure(403, "Forbidden", "mutatingwebhookconfigurations.admissionregistration.k8s.io \"calmplane\" is forbidden")
        };
        let (result, _) = against_mock(&config, RegisterOptions::default(), 403, forbidden).await;
        let err = result.expect_err("forbidden is an error");
        assert!(matches!(err, RegisterError::Apply { .. }), "{err:?}");
        assert!(err.to_string().contains("forbidden"), "{err}");
    }

    #[tokio::test]
    async fn a_configuration_without_a_name_is_refused_before_any_request() {
        let (service, _handle) = mock::pair::<Request<Body>, Response<Body>>();
        let client = kube::Client::new(service, "default");
        let mut config = config();
        config["metadata"].as_object_mut().unwrap().remove("name");
        let err = register(client, &config, RegisterOptions::default())
            .await
            .expect_err("no name");
        assert!(matches!(err, RegisterError::NoName), "{err:?}");
    }
}
