//! The MutatingWebhookConfiguration that `calmplane manifests` prints and
//! `calmplane register` applies.
//!
//! It is built from `manifests/base/webhook.yaml`, embedded at compile time,
//! the same file the kustomize base installs: the two cannot drift. The YAML is
//! edited as an untyped value, never round-tripped through a typed struct, so
//! a field the typed API does not know (or drops when empty) survives as
//! written. Only the service reference, the namespace exclusion and the
//! caBundle are filled in; each webhook keeps its own path (`/mutate`, or
//! `/report` for the report-mode webhooks).

use base64::Engine as _;
use rustls_pki_types::pem::{PemObject, SectionKind};
use serde_json::Value;

/// The webhook configuration installed by `manifests/base`.
pub const BASE_WEBHOOK_YAML: &str = include_str!("../manifests/base/webhook.yaml");
/// Namespace the base installs calmplane into.
pub const DEFAULT_NAMESPACE: &str = "calmplane";
/// Name of the Service the base puts in front of calmplane.
pub const DEFAULT_SERVICE: &str = "calmplane";
/// The label every namespace carries with its own name (Kubernetes 1.21+).
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Why the webhook configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The embedded file does not parse (a build-time mistake).
    #[error("the embedded manifests/base/webhook.yaml is not valid YAML: {0}")]
    Parse(crate::yaml::Error),
    /// The embedded file parses but lacks what calmplane fills in.
    #[error("the embedded manifests/base/webhook.yaml is not what calmplane expects: {0}")]
    Shape(String),
    /// A namespace or Service name Kubernetes would refuse.
    #[error("{what} {value:?} is not a valid DNS label (lowercase letters, digits and '-', at most 63 characters)")]
    InvalidName {
        /// Which option: `namespace` or `service`.
        what: &'static str,
        /// The value given.
        value: String,
    },
    /// A `--url` the apiserver would refuse.
    #[error("--url {url:?}: {reason}")]
    InvalidUrl {
        /// The value given.
        url: String,
        /// What the apiserver requires instead.
        reason: &'static str,
    },
    /// The CA bundle file is not a set of certificates.
    #[error("caBundle: {0}")]
    CaBundle(String),
    /// The configuration could not be written as YAML.
    #[error("cannot print the webhook configuration as YAML: {0}")]
    Print(serde_saphyr::SerializeError),
}

/// Where calmplane's Service is: shared by every subcommand that needs it
/// (`certs` names the certificate after it; `manifests` and `register` point
/// the webhooks at it and exclude its namespace).
#[derive(Debug, Clone, clap::Args)]
pub struct ServiceArgs {
    /// Namespace of the calmplane Service (also excluded from mutation).
    #[arg(long, env = "CALMPLANE_NAMESPACE", default_value = DEFAULT_NAMESPACE)]
    pub namespace: String,
    /// Name of the calmplane Service.
    #[arg(long, env = "CALMPLANE_SERVICE", default_value = DEFAULT_SERVICE)]
    pub service: String,
}

/// What to fill into the embedded configuration.
#[derive(Debug, Clone, Copy)]
pub struct WebhookOptions<'a> {
    /// Namespace of the calmplane Service; also excluded from mutation.
    pub namespace: &'a str,
    /// Name of the calmplane Service.
    pub service: &'a str,
    /// Call calmplane at this `https://host:port` instead of through the
    /// Service: for a server outside the cluster (a local process under
    /// kind, minikube or a test control plane). Each webhook keeps its path.
    pub url: Option<&'a str>,
    /// PEM CA certificate(s) the apiserver should trust for the webhook.
    /// `None` leaves caBundle out (cert-manager's cainjector fills it in).
    pub ca_bundle_pem: Option<&'a [u8]>,
}

impl Default for WebhookOptions<'_> {
    fn default() -> Self {
        WebhookOptions {
            namespace: DEFAULT_NAMESPACE,
            service: DEFAULT_SERVICE,
            url: None,
            ca_bundle_pem: None,
        }
    }
}

/// The base webhook configuration exactly as the kustomize base has it.
pub fn base_webhook() -> Result<Value, ManifestError> {
    crate::yaml::from_str(BASE_WEBHOOK_YAML).map_err(ManifestError::Parse)
}

/// The webhook configuration for `opts`.
pub fn webhook_configuration(opts: &WebhookOptions<'_>) -> Result<Value, ManifestError> {
    check_dns_label("namespace", opts.namespace)?;
    check_dns_label("service", opts.service)?;
    let base_url = opts.url.map(check_url).transpose()?;
    let ca_bundle = opts.ca_bundle_pem.map(ca_bundle).transpose()?;
    let mut config = base_webhook()?;
    if config.get("kind").and_then(Value::as_str) != Some("MutatingWebhookConfiguration") {
        return Err(shape("kind is not MutatingWebhookConfiguration"));
    }
    let webhooks = config
        .get_mut("webhooks")
        .and_then(Value::as_array_mut)
        .filter(|w| !w.is_empty())
        .ok_or_else(|| shape("no webhooks"))?;
    for webhook in webhooks {
        let name = webhook
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_string();
        exclude_own_namespace(webhook, opts.namespace)
            .map_err(|e| shape(&format!("webhook {name}: {e}")))?;
        let client_config = webhook
            .get_mut("clientConfig")
            .and_then(Value::as_object_mut)
            .ok_or_else(|| shape(&format!("webhook {name} has no clientConfig")))?;
        let service = client_config
            .get_mut("service")
            .and_then(Value::as_object_mut)
            .ok_or_else(|| shape(&format!("webhook {name} has no clientConfig.service")))?;
        match base_url {
            Some(base) => {
                // clientConfig holds exactly one of service and url.
                let path = service.get("path").and_then(Value::as_str).unwrap_or("");
                let url = format!("{base}{path}");
                client_config.remove("service");
                client_config.insert("url".into(), Value::String(url));
            }
            None => {
                service.insert("namespace".into(), Value::String(opts.namespace.into()));
                service.insert("name".into(), Value::String(opts.service.into()));
            }
        }
        match &ca_bundle {
            Some(bundle) => {
                client_config.insert("caBundle".into(), Value::String(bundle.clone()));
            }
            None => {
                client_config.remove("caBundle");
            }
        }
    }
    Ok(config)
}

/// [`webhook_configuration`] as a YAML document, ready for `kubectl apply -f -`.
pub fn webhook_configuration_yaml(opts: &WebhookOptions<'_>) -> Result<String, ManifestError> {
    let config = webhook_configuration(opts)?;
    crate::yaml::to_string(&config).map_err(ManifestError::Print)
}

/// The caBundle field for a PEM file: its bytes, base64-encoded, once it is
/// known to hold certificates and nothing else. A private key here would be
/// published cluster-wide, and a wrong file would only show up later as
/// webhook calls failing TLS, which `failurePolicy: Ignore` turns into
/// silently unmutated objects.
pub fn ca_bundle(pem: &[u8]) -> Result<String, ManifestError> {
    let mut certificates = 0;
    for section in <(SectionKind, Vec<u8>)>::pem_slice_iter(pem) {
        match section {
            Ok((SectionKind::Certificate, _)) => certificates += 1,
            Ok((kind, _)) => {
                return Err(ManifestError::CaBundle(format!(
                    "expected only CERTIFICATE blocks, found {kind:?}; pass the CA certificate (ca.crt), never a key"
                )))
            }
            Err(e) => return Err(ManifestError::CaBundle(format!("invalid PEM: {e}"))),
        }
    }
    // Sections the PEM reader does not recognise are skipped, which would let
    // an `ENCRYPTED PRIVATE KEY` through.
    if String::from_utf8_lossy(pem).contains("PRIVATE KEY") {
        return Err(ManifestError::CaBundle(
            "the file contains a private key; pass the CA certificate (ca.crt)".into(),
        ));
    }
    if certificates == 0 {
        return Err(ManifestError::CaBundle(
            "no PEM CERTIFICATE block found (expected the CA certificate, e.g. certs/ca.crt)"
                .into(),
        ));
    }
    Ok(base64::engine::general_purpose::STANDARD.encode(pem))
}

/// The webhook must never call calmplane about objects in calmplane's own
/// namespace: with the server down, its pods could not be created while the
/// apiserver waited on it. Installing elsewhere adds that namespace to the
/// base's `kubernetes.io/metadata.name NotIn` list.
fn exclude_own_namespace(webhook: &mut Value, namespace: &str) -> Result<(), String> {
    let expressions = webhook
        .pointer_mut("/namespaceSelector/matchExpressions")
        .and_then(Value::as_array_mut)
        .ok_or("namespaceSelector has no matchExpressions")?;
    let values = expressions
        .iter_mut()
        .find(|e| {
            e.get("key").and_then(Value::as_str) == Some(NAMESPACE_NAME_LABEL)
                && e.get("operator").and_then(Value::as_str) == Some("NotIn")
        })
        .and_then(|e| e.get_mut("values"))
        .and_then(Value::as_array_mut)
        .ok_or_else(|| format!("namespaceSelector has no {NAMESPACE_NAME_LABEL} NotIn"))?;
    if !values.iter().any(|v| v.as_str() == Some(namespace)) {
        values.push(Value::String(namespace.to_string()));
    }
    Ok(())
}

/// The apiserver's rules for `clientConfig.url`: https, a host, no user
/// info, query or fragment. Returned without a trailing `/`, ready for each
/// webhook's path.
fn check_url(url: &str) -> Result<&str, ManifestError> {
    let invalid = |reason| ManifestError::InvalidUrl {
        url: url.to_string(),
        reason,
    };
    let uri: axum::http::Uri = url
        .parse()
        .map_err(|_| invalid("not a URL; expected https://HOST[:PORT]"))?;
    if uri.scheme_str() != Some("https") {
        return Err(invalid("the apiserver calls webhooks over https only"));
    }
    let authority = uri
        .authority()
        .ok_or_else(|| invalid("no host; expected https://HOST[:PORT]"))?;
    if authority.as_str().contains('@') {
        return Err(invalid("user info is not allowed in a webhook URL"));
    }
    if uri.query().is_some() || url.contains('#') {
        return Err(invalid(
            "a query or fragment is not allowed in a webhook URL",
        ));
    }
    if !matches!(uri.path(), "" | "/") {
        return Err(invalid(
            "give only https://HOST[:PORT]; each webhook appends its own path (/mutate)",
        ));
    }
    Ok(url.trim_end_matches('/'))
}

fn shape(message: &str) -> ManifestError {
    ManifestError::Shape(message.to_string())
}

/// RFC 1123 label, as Kubernetes requires of namespace and Service names.
fn check_dns_label(what: &'static str, value: &str) -> Result<(), ManifestError> {
    let ok = !value.is_empty()
        && value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !value.starts_with('-')
        && !value.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(ManifestError::InvalidName {
            what,
            value: value.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs;

    fn dev_certs() -> certs::DevCerts {
        certs::generate(&certs::serving_names("calmplane", "calmplane")).expect("dev certs")
    }

    fn webhooks(config: &Value) -> &Vec<Value> {
        config["webhooks"].as_array().expect("webhooks list")
    }

    /// `config` with every caBundle removed, for comparing with the base.
    fn without_ca_bundles(mut config: Value) -> Value {
        for w in config["webhooks"].as_array_mut().expect("webhooks") {
            w["clientConfig"]
                .as_object_mut()
                .expect("clientConfig")
                .remove("caBundle");
        }
        config
    }

    #[test]
    fn defaults_without_a_bundle_are_the_base_unchanged() {
        let base = base_webhook().unwrap();
        let out = webhook_configuration(&WebhookOptions::default()).unwrap();
        assert_eq!(out, base);
        assert!(webhooks(&out)
            .iter()
            .all(|w| w["clientConfig"].get("caBundle").is_none()));
    }

    #[test]
    fn ca_bundle_is_the_pem_file_base64_in_every_webhook_and_nothing_else_changes() {
        let certs = dev_certs();
        let opts = WebhookOptions {
            ca_bundle_pem: Some(certs.ca_pem.as_bytes()),
            ..WebhookOptions::default()
        };
        let out = webhook_configuration(&opts).unwrap();
        assert_eq!(webhooks(&out).len(), 4);
        for w in webhooks(&out) {
            let encoded = w["clientConfig"]["caBundle"].as_str().expect("caBundle");
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .expect("caBundle is base64");
            assert_eq!(decoded, certs.ca_pem.as_bytes());
        }
        assert_eq!(without_ca_bundles(out), base_webhook().unwrap());
    }

    /// The namespaces a webhook's namespaceSelector excludes by name.
    fn excluded_namespaces(webhook: &Value) -> Vec<&str> {
        webhook["namespaceSelector"]["matchExpressions"]
            .as_array()
            .expect("matchExpressions")
            .iter()
            .filter(|e| e["key"] == NAMESPACE_NAME_LABEL && e["operator"] == "NotIn")
            .flat_map(|e| e["values"].as_array().expect("values"))
            .filter_map(Value::as_str)
            .collect()
    }

    #[test]
    fn namespace_and_service_are_filled_in_and_the_namespace_is_excluded() {
        let opts = WebhookOptions {
            namespace: "webhooks",
            service: "calm",
            ..WebhookOptions::default()
        };
        let out = webhook_configuration(&opts).unwrap();
        for w in webhooks(&out) {
            assert_eq!(w["clientConfig"]["service"]["namespace"], "webhooks");
            assert_eq!(w["clientConfig"]["service"]["name"], "calm");
            // Each webhook keeps its own path: only service and namespace are filled in.
            let path = if w["name"].as_str().is_some_and(|n| n.contains("-report.")) {
                "/report"
            } else {
                "/mutate"
            };
            assert_eq!(w["clientConfig"]["service"]["path"], path);
            let excluded = excluded_namespaces(w);
            for ns in ["kube-system", "kube-node-lease", "calmplane", "webhooks"] {
                assert!(excluded.contains(&ns), "{ns} not excluded: {excluded:?}");
            }
        }
    }

    #[test]
    fn a_url_replaces_the_service_and_keeps_each_path() {
        let certs = dev_certs();
        let opts = WebhookOptions {
            url: Some("https://127.0.0.1:8443/"),
            ca_bundle_pem: Some(certs.ca_pem.as_bytes()),
            ..WebhookOptions::default()
        };
        let out = webhook_configuration(&opts).unwrap();
        let base = base_webhook().unwrap();
        for (w, b) in webhooks(&out).iter().zip(webhooks(&base)) {
            let path = b["clientConfig"]["service"]["path"].as_str().unwrap();
            assert_eq!(
                w["clientConfig"]["url"],
                format!("https://127.0.0.1:8443{path}")
            );
            assert!(w["clientConfig"].get("service").is_none());
            assert!(w["clientConfig"]["caBundle"].is_string());
        }
        for bad in [
            "http://127.0.0.1:8443",
            "https://127.0.0.1:8443/mutate",
            "https://u:p@127.0.0.1:8443",
            "https://127.0.0.1:8443/?x=1",
            "127.0.0.1:8443",
            "https://",
        ] {
            let opts = WebhookOptions {
                url: Some(bad),
                ..WebhookOptions::default()
            };
            let e = webhook_configuration(&opts).unwrap_err();
            assert!(matches!(e, ManifestError::InvalidUrl { .. }), "{bad}: {e}");
        }
    }

    #[test]
    fn the_default_namespace_is_not_listed_twice() {
        let out = webhook_configuration(&WebhookOptions::default()).unwrap();
        for w in webhooks(&out) {
            let excluded = excluded_namespaces(w);
            let count = excluded.iter().filter(|ns| **ns == "calmplane").count();
            assert_eq!(count, 1, "{excluded:?}");
        }
    }

    #[test]
    fn yaml_output_parses_back_to_the_same_value() {
        let certs = dev_certs();
        let opts = WebhookOptions {
            ca_bundle_pem: Some(certs.ca_pem.as_bytes()),
            ..WebhookOptions::default()
        };
        let text = webhook_configuration_yaml(&opts).unwrap();
        let back: Value = crate::yaml::from_str(&text).unwrap();
        assert_eq!(back, webhook_configuration(&opts).unwrap());
    }

    #[test]
    fn keys_and_other_non_certificates_are_refused() {
        let certs = dev_certs();
        let e = ca_bundle(certs.key_pem.as_bytes()).unwrap_err().to_string();
        assert!(e.contains("never a key"), "{e}");
        let both = format!("{}{}", certs.ca_pem, certs.key_pem);
        assert!(ca_bundle(both.as_bytes()).is_err());
        let encrypted = format!(
            "{}-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n",
            certs.ca_pem
        );
        let e = ca_bundle(encrypted.as_bytes()).unwrap_err().to_string();
        assert!(e.contains("private key"), "{e}");
        let e = ca_bundle(b"").unwrap_err().to_string();
        assert!(e.contains("no PEM CERTIFICATE"), "{e}");
        let e = ca_bundle(b"not a certificate\n").unwrap_err().to_string();
        assert!(e.contains("no PEM CERTIFICATE"), "{e}");
        let truncated = certs.ca_pem.replace("-----END CERTIFICATE-----", "");
        assert!(ca_bundle(truncated.as_bytes()).is_err());
    }

    #[test]
    fn a_bundle_of_two_cas_is_accepted_for_rotation() {
        let (old, new) = (dev_certs(), dev_certs());
        let both = format!("{}{}", old.ca_pem, new.ca_pem);
        let encoded = ca_bundle(both.as_bytes()).unwrap();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .unwrap();
        assert_eq!(decoded, both.as_bytes());
    }

    #[test]
    fn names_must_be_dns_labels() {
        for bad in ["", "Calm", "calm.plane", "-calm", "calm-", "calm_plane"] {
            let opts = WebhookOptions {
                namespace: bad,
                ..WebhookOptions::default()
            };
            let e = webhook_configuration(&opts).unwrap_err();
            assert!(
                matches!(
                    e,
                    ManifestError::InvalidName {
                        what: "namespace",
                        ..
                    }
                ),
                "{bad:?}: {e}"
            );
            let opts = WebhookOptions {
                service: bad,
                ..WebhookOptions::default()
            };
            assert!(webhook_configuration(&opts).is_err(), "{bad:?}");
        }
        let long = "a".repeat(64);
        let opts = WebhookOptions {
            namespace: &long,
            ..WebhookOptions::default()
        };
        assert!(webhook_configuration(&opts).is_err());
        let ok = "a".repeat(63);
        let opts = WebhookOptions {
            namespace: &ok,
            ..WebhookOptions::default()
        };
        assert!(webhook_configuration(&opts).is_ok());
    }
}
