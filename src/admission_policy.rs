//! `calmplane export mutating-admission-policy`: the policies the apiserver
//! can run itself, as `MutatingAdmissionPolicy` and
//! `MutatingAdmissionPolicyBinding` objects (`admissionregistration.k8s.io/v1`,
//! Kubernetes 1.36+).
//!
//! ```text
//! policy file ── policy::configure ──┬─ enabled, enforce, Runs(cel) ─▶ policy + binding
//!                                    ├─ Stays(why) ──────────────────▶ a note on stderr
//!                                    └─ disabled, or in report mode ──▶ a note on stderr
//! manifests/base/webhook.yaml ───────▶ the bindings' selectors and the webhook's
//!                                      matchConditions for the same kind
//! ```
//!
//! What is the same for every policy lives here: names (`calmplane-<policy>`),
//! labels, `failurePolicy: Ignore` and `reinvocationPolicy: IfNeeded` as the
//! webhook has them, the skip annotation, and the selectors. Each binding
//! selects the namespaces labelled `calmplane.dev/enabled: apiserver`, with
//! the webhook's own exclusions (kube-system, kube-node-lease, calmplane's
//! namespace) and its objectSelector (calmplane's own pods), both read from
//! the embedded webhook configuration so that the two engines cannot drift.
//! The webhook selects those namespaces too: the apiserver runs admission
//! policies before webhooks, so calmplane sees the exported policies' work
//! done and does only the rest.
//!
//! A MutatingAdmissionPolicy cannot return warnings or audit annotations:
//! what the webhook says about a change (a raised grace period or maxSurge)
//! is not said when the apiserver makes it.

use crate::annotations::{self, enabled};
use crate::config::{Config, ConfigError, Enforcement};
use crate::manifests::{self, ManifestError, WebhookOptions};
use crate::policy::apiserver::{self, InApiserver, Mutation};
use crate::policy::{self, Kind};
use serde_json::{json, Value};

/// The label on every exported object, for `kubectl get -l` and for
/// `register` to find the ones it applied before.
pub const COMPONENT: &str = "admission-policy";

/// Why nothing was exported.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The policy file is refused.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The webhook configuration the selectors come from is not usable.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
}

/// A policy the export leaves to the webhook, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct LeftOut {
    /// The policy's name.
    pub policy: &'static str,
    /// Why: it cannot be written in CEL, it is disabled, or it is in report mode.
    pub why: String,
}

/// What `export` produced.
#[derive(Debug, Clone)]
pub struct Export {
    /// A policy and its binding for each exported policy, in pipeline order.
    pub objects: Vec<Value>,
    /// The policies not exported, in pipeline order.
    pub left_out: Vec<LeftOut>,
}

impl Export {
    /// The names of the exported policies.
    pub fn exported(&self) -> impl Iterator<Item = &str> {
        self.objects
            .iter()
            .filter(|o| o["kind"] == "MutatingAdmissionPolicy")
            .filter_map(|o| o.pointer("/metadata/name").and_then(Value::as_str))
    }

    /// The objects as a YAML stream, ready for `kubectl apply -f -`.
    pub fn to_yaml(&self) -> Result<String, ManifestError> {
        yaml_stream(&self.objects)
    }
}

/// Documents as one YAML stream, separated by `---`.
pub fn yaml_stream(objects: &[Value]) -> Result<String, ManifestError> {
    let mut out = String::new();
    for object in objects {
        out.push_str("---\n");
        out.push_str(&crate::yaml::to_string(object).map_err(ManifestError::Print)?);
    }
    Ok(out)
}

/// The name of the policy and of the binding for the policy `name`.
pub fn object_name(policy: &str) -> String {
    format!("calmplane-{policy}")
}

/// Export the policies of `config` that the apiserver can run, for a
/// calmplane installed in `namespace` (excluded, as the webhook excludes it).
pub fn export(config: &Config, namespace: &str) -> Result<Export, ExportError> {
    let webhooks = manifests::webhook_configuration(&WebhookOptions {
        namespace,
        ..WebhookOptions::default()
    })?;
    let mut objects = Vec::new();
    let mut left_out = Vec::new();
    for configured in policy::configure(config)? {
        let name = configured.policy.name();
        let leave = |why: String| LeftOut { policy: name, why };
        if !configured.enabled {
            left_out.push(leave("disabled in the policy file".into()));
            continue;
        }
        if configured.enforcement == Enforcement::Report {
            left_out.push(leave(
                "in report mode: a MutatingAdmissionPolicy cannot report without patching; the webhook's /report does"
                    .into(),
            ));
            continue;
        }
        match configured.policy.in_apiserver() {
            InApiserver::Stays(why) => left_out.push(leave(why.to_string())),
            InApiserver::Runs(mutation) => {
                let hook = mutating_webhook(&webhooks, mutation.kind)?;
                objects.push(admission_policy(name, &mutation, hook)?);
                objects.push(binding(name, hook)?);
            }
        }
    }
    Ok(Export { objects, left_out })
}

/// The `/mutate` webhook of `config` for objects of `kind`.
fn mutating_webhook(config: &Value, kind: Kind) -> Result<&Value, ManifestError> {
    let (_, _, resource) = kind.resource();
    config["webhooks"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|w| {
            w.pointer("/clientConfig/service/path")
                .and_then(Value::as_str)
                == Some("/mutate")
                && w["rules"].as_array().into_iter().flatten().any(|r| {
                    r["resources"]
                        .as_array()
                        .is_some_and(|rs| rs.iter().any(|x| x == resource))
                })
        })
        .ok_or_else(|| shape(format!("no /mutate webhook for {resource}")))
}

fn shape(message: String) -> ManifestError {
    ManifestError::Shape(message)
}

fn metadata(policy: &str) -> Value {
    json!({
        "name": object_name(policy),
        "labels": {
            "app.kubernetes.io/name": "calmplane",
            "app.kubernetes.io/component": COMPONENT,
            "calmplane.dev/policy": policy,
        },
    })
}

fn admission_policy(name: &str, m: &Mutation, webhook: &Value) -> Result<Value, ManifestError> {
    let (group, version, resource) = m.kind.resource();
    // The webhook's own conditions for this kind, then the policy's skip
    // annotation, then the policy's own.
    let mut conditions: Vec<Value> = webhook["matchConditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    conditions.push(json!({
        "name": "policy-not-skipped",
        "expression": format!("!({})", apiserver::skipped(name)),
    }));
    for (condition, expression) in &m.conditions {
        conditions.push(json!({"name": condition, "expression": expression}));
    }
    let variables: Vec<Value> = m
        .variables
        .iter()
        .map(|(variable, expression)| json!({"name": variable, "expression": expression}))
        .collect();
    let field = match m.patch {
        apiserver::Patch::JsonPatch(_) => "jsonPatch",
        apiserver::Patch::ApplyConfiguration(_) => "applyConfiguration",
    };
    let mut mutation = json!({"patchType": m.patch.patch_type()});
    mutation[field] = json!({"expression": m.patch.expression()});
    Ok(json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingAdmissionPolicy",
        "metadata": metadata(name),
        "spec": {
            "matchConstraints": {
                "resourceRules": [{
                    "apiGroups": [group],
                    "apiVersions": [version],
                    "operations": m.operations,
                    "resources": [resource],
                    "scope": "Namespaced",
                }],
                "matchPolicy": "Equivalent",
            },
            "matchConditions": conditions,
            "variables": variables,
            "mutations": [mutation],
            "failurePolicy": field_of(webhook, "failurePolicy")?,
            "reinvocationPolicy": field_of(webhook, "reinvocationPolicy")?,
        },
    }))
}

fn field_of(webhook: &Value, field: &str) -> Result<Value, ManifestError> {
    webhook
        .get(field)
        .cloned()
        .ok_or_else(|| shape(format!("webhook has no {field}")))
}

/// The binding: the webhook's selectors, with `calmplane.dev/enabled`
/// narrowed to `apiserver`.
fn binding(name: &str, webhook: &Value) -> Result<Value, ManifestError> {
    let mut namespaces = field_of(webhook, "namespaceSelector")?;
    let expressions = namespaces
        .get_mut("matchExpressions")
        .and_then(Value::as_array_mut)
        .ok_or_else(|| shape("namespaceSelector has no matchExpressions".into()))?;
    let opt_in = expressions
        .iter_mut()
        .find(|e| e["key"] == annotations::ENABLED)
        .ok_or_else(|| {
            shape(format!(
                "namespaceSelector does not select on {}",
                annotations::ENABLED
            ))
        })?;
    *opt_in =
        json!({"key": annotations::ENABLED, "operator": "In", "values": [enabled::APISERVER]});
    Ok(json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingAdmissionPolicyBinding",
        "metadata": metadata(name),
        "spec": {
            "policyName": object_name(name),
            "matchResources": {
                "namespaceSelector": namespaces,
                "objectSelector": field_of(webhook, "objectSelector")?,
                "matchPolicy": "Equivalent",
            },
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn export_yaml(yaml: &str) -> Export {
        export(
            &Config::from_yaml(yaml, "policy.yaml").unwrap(),
            "calmplane",
        )
        .unwrap()
    }

    fn named<'a>(e: &'a Export, kind: &str, name: &str) -> &'a Value {
        e.objects
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name}"))
    }

    #[test]
    fn the_defaults_export_dns_prestop_and_rollout_and_say_why_not_the_others() {
        let e = export_yaml("");
        assert_eq!(
            e.exported().collect::<Vec<_>>(),
            ["calmplane-dns", "calmplane-prestop", "calmplane-rollout"]
        );
        // The test-only probe is in ALL too, and is never exported.
        let left: Vec<&str> = e.left_out.iter().map(|l| l.policy).collect();
        assert_eq!(left, ["lease", "rollout-history", "probe"]);
        assert!(
            e.left_out[0].why.contains("regex replace"),
            "{:?}",
            e.left_out
        );
        assert!(e.left_out[1].why.contains("no clock"), "{:?}", e.left_out);
        assert_eq!(e.objects.len(), 6);
    }

    #[test]
    fn report_mode_and_disabled_policies_are_left_to_the_webhook() {
        let e = export_yaml("dns: {enforcement: report}\nrollout: {enabled: false}\n");
        assert_eq!(e.exported().collect::<Vec<_>>(), ["calmplane-prestop"]);
        let why = |p: &str| {
            e.left_out
                .iter()
                .find(|l| l.policy == p)
                .map(|l| l.why.clone())
                .unwrap()
        };
        assert!(why("dns").contains("report mode"));
        assert!(why("rollout").contains("disabled"));
    }

    #[test]
    fn values_come_from_the_policy_file() {
        let e = export_yaml(
            "dns: {ndots: 3, singleRequestReopen: false}\nprestop: {sleepSeconds: 7, minDrainSeconds: 4}\n",
        );
        let text =
            serde_json::to_string(named(&e, "MutatingAdmissionPolicy", "calmplane-dns")).unwrap();
        assert!(text.contains("value: '3'"), "{text}");
        assert!(!text.contains("single-request-reopen"), "{text}");
        let text = serde_json::to_string(named(&e, "MutatingAdmissionPolicy", "calmplane-prestop"))
            .unwrap();
        assert!(text.contains("seconds: 7"), "{text}");
        assert!(text.contains("variables.grace < 11"), "{text}");
        assert!(text.contains("value: 11"), "{text}");
    }

    #[test]
    fn bindings_select_apiserver_namespaces_with_the_webhook_s_exclusions() {
        let e = export(&Config::default(), "tools").unwrap();
        let b = named(&e, "MutatingAdmissionPolicyBinding", "calmplane-dns");
        assert_eq!(b["spec"]["policyName"], "calmplane-dns");
        let expressions = &b["spec"]["matchResources"]["namespaceSelector"]["matchExpressions"];
        assert_eq!(
            expressions[0],
            json!({"key": "calmplane.dev/enabled", "operator": "In", "values": ["apiserver"]})
        );
        let excluded = &expressions[1];
        assert_eq!(excluded["key"], "kubernetes.io/metadata.name");
        assert_eq!(excluded["operator"], "NotIn");
        assert_eq!(
            excluded["values"],
            json!(["kube-system", "kube-node-lease", "calmplane", "tools"])
        );
        assert_eq!(
            b["spec"]["matchResources"]["objectSelector"]["matchExpressions"][0],
            json!({"key": "app.kubernetes.io/name", "operator": "NotIn", "values": ["calmplane"]})
        );
    }

    #[test]
    fn policies_fail_open_are_reinvoked_and_carry_the_webhook_s_conditions() {
        let e = export_yaml("");
        for name in ["calmplane-dns", "calmplane-prestop", "calmplane-rollout"] {
            let p = &named(&e, "MutatingAdmissionPolicy", name)["spec"];
            assert_eq!(p["failurePolicy"], "Ignore", "{name}");
            assert_eq!(p["reinvocationPolicy"], "IfNeeded", "{name}");
            let conditions: Vec<&str> = p["matchConditions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["name"].as_str().unwrap())
                .collect();
            assert!(
                conditions.contains(&"not-skipped"),
                "{name}: {conditions:?}"
            );
            assert!(
                conditions.contains(&"policy-not-skipped"),
                "{name}: {conditions:?}"
            );
        }
        let rollout = &named(&e, "MutatingAdmissionPolicy", "calmplane-rollout")["spec"];
        assert_eq!(
            rollout["matchConstraints"]["resourceRules"][0]["operations"],
            json!(["CREATE", "UPDATE"])
        );
        assert!(rollout["matchConditions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == "spec-or-history-changed"));
        assert_eq!(rollout["mutations"][0]["patchType"], "ApplyConfiguration");
        let dns = &named(&e, "MutatingAdmissionPolicy", "calmplane-dns")["spec"];
        assert_eq!(dns["mutations"][0]["patchType"], "JSONPatch");
        assert!(dns["mutations"][0]["jsonPatch"]["expression"].is_string());
    }
}
