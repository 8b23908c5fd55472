//! What `calmplane audit` reports, in the JSON's stable shape (documented
//! in docs/src/adoption/audit.md); the table prints the same and `details`.

use super::hot;
use super::leases::LeaseTotals;
use super::scope::OptIn;
use crate::policy;
use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};

/// Objects changed, by policy: one count for every policy of
/// [`policy::ALL`], in its order, keyed by the policy's name. A new policy is
/// counted, and gets its column, with no change here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changes(Vec<(&'static str, usize)>);

impl Default for Changes {
    fn default() -> Self {
        Changes(policy::names().map(|name| (name, 0)).collect())
    }
}

impl Changes {
    /// One more object changed by `policy`.
    pub fn add(&mut self, policy: &str) {
        if let Some((_, n)) = self.0.iter_mut().find(|(name, _)| *name == policy) {
            *n += 1;
        }
    }

    /// Objects changed by `policy`.
    pub fn get(&self, policy: &str) -> usize {
        self.0
            .iter()
            .find(|(name, _)| *name == policy)
            .map_or(0, |(_, n)| *n)
    }

    /// The counts, in policy order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, usize)> + '_ {
        self.0.iter().copied()
    }

    /// Add `other`'s counts to these.
    pub fn sum(&mut self, other: &Changes) {
        for (name, n) in other.iter() {
            if let Some((_, mine)) = self.0.iter_mut().find(|(m, _)| *m == name) {
                *mine += n;
            }
        }
    }
}

impl Serialize for Changes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (name, n) in &self.0 {
            map.serialize_entry(name, n)?;
        }
        map.end()
    }
}

/// One namespace, in the JSON's stable shape.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceReport {
    /// The namespace.
    pub name: String,
    /// `"true"`, `"report"` or `"no"` (audited only under `--all-namespaces`).
    pub opted_in: &'static str,
    /// Pods the webhook would be called for.
    pub pods: usize,
    /// Of those, pods some policy would change.
    pub pods_changed: usize,
    /// Objects changed, by policy.
    pub changes: Changes,
    /// Lease selectors found in the pods (rewritten or not).
    pub lease_selectors: usize,
    /// Deployments that rolled out more than `hotRolloutsPerHour` in the last hour.
    pub hot_deployments: Vec<String>,
    /// Deployments no PodDisruptionBudget selects: `maxUnavailable: 0` does
    /// not protect them from voluntary evictions.
    pub deployments_without_pdb: Vec<String>,
}

impl NamespaceReport {
    /// The report of a namespace nothing has been audited in yet.
    pub fn new(name: &str, opt_in: OptIn) -> NamespaceReport {
        NamespaceReport {
            name: name.to_string(),
            opted_in: opt_in.as_str(),
            pods: 0,
            pods_changed: 0,
            changes: Changes::default(),
            lease_selectors: 0,
            hot_deployments: Vec::new(),
            deployments_without_pdb: Vec::new(),
        }
    }
}

/// A hot Deployment and the evidence, for the table.
#[derive(Debug, Clone, PartialEq)]
pub struct HotDeployment {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Rollouts in the last hour and which source decided.
    pub judgement: hot::Judgement,
}

/// The audit, in the JSON's stable shape (`details` is for the table only).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    /// Audited namespaces, by name.
    pub namespaces: Vec<NamespaceReport>,
    /// The sum of every namespace's changes.
    pub changes: Changes,
    /// Lease writes before and after.
    pub leases: LeaseTotals,
    /// Input problems and the pipeline's warnings, grouped by message.
    pub warnings: Vec<String>,
    /// Evidence the table prints and the JSON leaves out.
    #[serde(skip)]
    pub details: Details,
}

/// What the table prints beyond the JSON.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Details {
    /// Every hot Deployment with its evidence.
    pub hot: Vec<HotDeployment>,
    /// Namespaces in the input that are not opted in and were not audited.
    pub not_opted_in: Vec<String>,
    /// The `hotRolloutsPerHour` used.
    pub hot_limit: u32,
}
