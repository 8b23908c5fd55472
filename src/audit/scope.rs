//! Which objects the webhook would be called for, read from the embedded
//! webhook configuration (`manifests/base/webhook.yaml`) rather than written
//! again: its namespaceSelectors say which namespaces are opted in (and
//! exclude kube-system, kube-node-lease and calmplane by name), its
//! objectSelectors exclude calmplane's own pods, and its paths say whether a
//! namespace is mutated (`/mutate`) or watched (`/report`).

use super::AuditError;
use crate::manifests;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::core::{Selector, SelectorExt};
use serde_json::Value;
use std::collections::BTreeMap;

/// Labels of an object.
pub type Labels = BTreeMap<String, String>;

/// The label the apiserver sets on every namespace with its own name.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

struct Hook {
    resource: String,
    path: String,
    namespaces: Selector,
    objects: Selector,
}

/// The webhooks' routing rules.
pub struct Scope {
    hooks: Vec<Hook>,
    /// The `/mutate` webhooks' namespace matchLabels: what `--all-namespaces`
    /// pretends every namespace carries.
    pretend: Labels,
}

/// How a namespace takes part, as the JSON's `optedIn` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum OptIn {
    /// Routed to `/mutate`.
    True,
    /// Routed to `/report`.
    Report,
    /// Not routed to calmplane.
    No,
}

impl OptIn {
    /// The value printed in `optedIn`.
    pub fn as_str(self) -> &'static str {
        match self {
            OptIn::True => "true",
            OptIn::Report => "report",
            OptIn::No => "no",
        }
    }
}

fn selector(webhook: &Value, field: &str) -> Result<Selector, AuditError> {
    let name = webhook.get("name").and_then(Value::as_str).unwrap_or("?");
    let raw = webhook.get(field).cloned().unwrap_or(Value::Null);
    let typed: LabelSelector = if raw.is_null() {
        LabelSelector::default()
    } else {
        serde_json::from_value(raw)
            .map_err(|e| AuditError::Webhook(format!("webhook {name}: {field}: {e}")))?
    };
    Selector::try_from(typed)
        .map_err(|e| AuditError::Webhook(format!("webhook {name}: {field}: {e}")))
}

/// For each `In` expression of a webhook's namespaceSelector, its key and
/// first value: the label a namespace carries to be selected (`true` for
/// `calmplane.dev/enabled`, where `apiserver` is the other).
fn first_values_in(webhook: &Value) -> Labels {
    webhook
        .pointer("/namespaceSelector/matchExpressions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|e| e.get("operator").and_then(Value::as_str) == Some("In"))
        .filter_map(|e| {
            let key = e.get("key")?.as_str()?;
            let first = e.get("values")?.as_array()?.first()?.as_str()?;
            Some((key.to_string(), first.to_string()))
        })
        .collect()
}

/// The labels an object carries.
pub fn labels_at(obj: &Value, path: &[&str]) -> Labels {
    crate::patch::lookup(obj, path)
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

impl Scope {
    /// The routing of the embedded base configuration.
    pub fn from_base() -> Result<Scope, AuditError> {
        let config = manifests::base_webhook().map_err(|e| AuditError::Webhook(e.to_string()))?;
        Scope::from_configuration(&config)
    }

    /// The routing of a MutatingWebhookConfiguration.
    pub fn from_configuration(config: &Value) -> Result<Scope, AuditError> {
        let mut hooks = Vec::new();
        let mut pretend = Labels::new();
        for w in config
            .get("webhooks")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let path = w
                .pointer("/clientConfig/service/path")
                .and_then(Value::as_str)
                .unwrap_or("/")
                .to_string();
            if path == "/mutate" {
                pretend.extend(labels_at(w, &["namespaceSelector", "matchLabels"]));
                pretend.extend(first_values_in(w));
            }
            let namespaces = selector(w, "namespaceSelector")?;
            let objects = selector(w, "objectSelector")?;
            let resources = w
                .get("rules")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .flat_map(|r| {
                    r.get("resources")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                })
                .filter_map(Value::as_str);
            for resource in resources {
                hooks.push(Hook {
                    resource: resource.to_string(),
                    path: path.clone(),
                    namespaces: namespaces.clone(),
                    objects: objects.clone(),
                });
            }
        }
        if hooks.is_empty() {
            return Err(AuditError::Webhook(
                "the webhook configuration has no rules".into(),
            ));
        }
        Ok(Scope { hooks, pretend })
    }

    /// The path the apiserver would call for a `resource` object with these
    /// labels in a namespace with these labels, if any.
    pub fn route(&self, resource: &str, namespace: &Labels, object: &Labels) -> Option<&str> {
        self.hooks
            .iter()
            .find(|h| {
                h.resource == resource
                    && h.namespaces.matches(namespace)
                    && h.objects.matches(object)
            })
            .map(|h| h.path.as_str())
    }

    /// How a namespace with these labels takes part.
    pub fn opt_in(&self, namespace: &Labels) -> OptIn {
        match self.route("pods", namespace, &Labels::new()) {
            Some("/mutate") => OptIn::True,
            Some("/report") => OptIn::Report,
            _ => OptIn::No,
        }
    }

    /// `namespace`'s labels as `--all-namespaces` pretends them: opted in
    /// unless it already is. Exclusions by name still apply.
    pub fn pretend(&self, namespace: &Labels) -> Labels {
        if self.opt_in(namespace) != OptIn::No {
            return namespace.clone();
        }
        let mut labels = namespace.clone();
        labels.extend(self.pretend.clone());
        labels
    }
}
