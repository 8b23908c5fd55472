//! The audit's input: the v1 List that
//! `kubectl get pods,deployments,replicasets,leases,namespaces,poddisruptionbudgets -A -o json`
//! prints (JSON or YAML), sorted by kind.
//!
//! Objects stay `serde_json::Value`s, as in the webhook: the pipeline sees
//! exactly what the apiserver would send it. Unknown kinds and objects that
//! cannot be placed in a namespace are skipped with a warning; anything that
//! is not a List is an error.

use super::AuditError;
use crate::patch::str_at;
use crate::preview;
use serde_json::Value;
use std::collections::BTreeMap;

/// The kinds the audit reads, and how their objects are sorted.
#[derive(Debug, Default)]
pub struct Inventory {
    /// `v1 Namespace`: their labels decide which namespaces are opted in.
    pub namespaces: Vec<Value>,
    /// `v1 Pod`: each runs through the pipeline as a Pod CREATE.
    pub pods: Vec<Value>,
    /// `apps/v1 Deployment`: each runs as a Deployment CREATE and is judged hot or cold.
    pub deployments: Vec<Value>,
    /// `apps/v1 ReplicaSet`: a Deployment's rollout history.
    pub replicasets: Vec<Value>,
    /// `coordination.k8s.io/v1 Lease`: the writes before.
    pub leases: Vec<Value>,
    /// `policy/v1 PodDisruptionBudget`: which Deployments a PDB protects.
    pub pdbs: Vec<Value>,
    /// What was skipped, and why.
    pub warnings: Vec<String>,
}

/// Where an object goes, by `apiVersion` and `kind`.
#[derive(Clone, Copy)]
enum Slot {
    Namespace,
    Pod,
    Deployment,
    ReplicaSet,
    Lease,
    Pdb,
}

fn slot(api_version: &str, kind: &str) -> Option<Slot> {
    Some(match (api_version, kind) {
        ("v1", "Namespace") => Slot::Namespace,
        ("v1", "Pod") => Slot::Pod,
        ("apps/v1", "Deployment") => Slot::Deployment,
        ("apps/v1", "ReplicaSet") => Slot::ReplicaSet,
        ("coordination.k8s.io/v1", "Lease") => Slot::Lease,
        ("policy/v1", "PodDisruptionBudget") => Slot::Pdb,
        _ => return None,
    })
}

impl Inventory {
    /// Parse a List (or several, as a YAML stream) from bytes.
    pub fn from_bytes(body: &[u8]) -> Result<Inventory, AuditError> {
        let docs = preview::parse_large_documents(body).map_err(AuditError::Parse)?;
        Inventory::from_documents(docs)
    }

    /// Sort the items of one or more Lists.
    pub fn from_documents(docs: Vec<Value>) -> Result<Inventory, AuditError> {
        let mut inv = Inventory::default();
        let mut unknown: BTreeMap<String, usize> = BTreeMap::new();
        for (d, doc) in docs.into_iter().enumerate() {
            let items = list_items(doc, d + 1)?;
            for (i, item) in items.into_iter().enumerate() {
                inv.add(item, d + 1, i, &mut unknown);
            }
        }
        for (kind, n) in unknown {
            inv.warnings.push(format!(
                "input: skipped {n} object(s) of kind {kind}: not audited"
            ));
        }
        Ok(inv)
    }

    fn add(
        &mut self,
        item: Value,
        doc: usize,
        index: usize,
        unknown: &mut BTreeMap<String, usize>,
    ) {
        if !item.is_object() {
            self.warnings.push(format!(
                "input: document {doc} item {index} is not an object: skipped"
            ));
            return;
        }
        let api_version = str_at(&item, &["apiVersion"]).unwrap_or("");
        let kind = str_at(&item, &["kind"]).unwrap_or("");
        let Some(slot) = slot(api_version, kind) else {
            let shown = match (api_version, kind) {
                ("", "") => "(none: no apiVersion and kind)".to_string(),
                (a, k) => format!("{a} {k}"),
            };
            *unknown.entry(shown).or_default() += 1;
            return;
        };
        let name = str_at(&item, &["metadata", "name"]).unwrap_or("");
        if name.is_empty() {
            self.warnings.push(format!(
                "input: document {doc} item {index}: {kind} has no metadata.name: skipped"
            ));
            return;
        }
        let namespaced = !matches!(slot, Slot::Namespace);
        if namespaced && str_at(&item, &["metadata", "namespace"]).is_none_or(str::is_empty) {
            self.warnings.push(format!(
                "input: {kind} {name} has no metadata.namespace: skipped (kubectl get -A always prints it)"
            ));
            return;
        }
        let list = match slot {
            Slot::Namespace => &mut self.namespaces,
            Slot::Pod => &mut self.pods,
            Slot::Deployment => &mut self.deployments,
            Slot::ReplicaSet => &mut self.replicasets,
            Slot::Lease => &mut self.leases,
            Slot::Pdb => &mut self.pdbs,
        };
        list.push(item);
    }
}

/// The items of a `kind: List` (or `PodList` etc.), taken out of the document.
fn list_items(doc: Value, n: usize) -> Result<Vec<Value>, AuditError> {
    let kind = str_at(&doc, &["kind"]).unwrap_or("").to_string();
    if !kind.ends_with("List") {
        let shown = if kind.is_empty() {
            match &doc {
                Value::Object(_) => "an object without a kind".to_string(),
                Value::Array(_) => "an array".to_string(),
                _ => "a scalar".to_string(),
            }
        } else {
            format!("kind {kind}")
        };
        return Err(AuditError::NotAList {
            doc: n,
            found: shown,
        });
    }
    match doc {
        Value::Object(mut map) => match map.remove("items") {
            Some(Value::Array(items)) => Ok(items),
            Some(Value::Null) | None => Ok(Vec::new()),
            Some(_) => Err(AuditError::NotAList {
                doc: n,
                found: format!("a {kind} whose items is not a list"),
            }),
        },
        _ => Err(AuditError::NotAList {
            doc: n,
            found: "a scalar".into(),
        }),
    }
}
