//! Every YAML file and every render passes `kubernetes-validate --strict`; cert-manager objects are checked structurally.

use super::*;

/// What kubernetes-validate said about a set of files.
pub(crate) struct Validation {
    /// (file, "kind/name") it validated against a schema.
    pub(crate) passed: Vec<(String, String)>,
    /// (file, apiVersion, kind) it had no schema for.
    pub(crate) no_schema: Vec<(String, String, String)>,
}

pub(crate) fn kubernetes_validate(files: &[PathBuf]) -> Validation {
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
pub(crate) fn validate_all(files: &[PathBuf]) -> usize {
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

pub(crate) fn go_duration(s: &str) -> Duration {
    humantime::parse_duration(s).unwrap_or_else(|e| panic!("duration {s:?}: {e}"))
}

pub(crate) fn keys_within(obj: &Value, allowed: &[&str], what: &str) {
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
pub(crate) fn check_cert_manager(doc: &Value) {
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
