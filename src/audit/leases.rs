//! Lease writes per second, before and after calmplane.
//!
//! **Before** is every Lease object in the input. Without `--sample`, a Lease
//! with a holder is assumed to be renewed every `leaseDurationSeconds / 4`:
//! the kubelet's node-lease rule (40 s leases renewed every 10 s). client-go's
//! leader election renews faster (every `RetryPeriod`, 2 s for a 15 s lease),
//! so the estimate is low for leader-election leases; `--sample` measures
//! instead. A Lease without a holder or without a duration is idle.
//!
//! **After** is the Leases nothing rewrites, at their own rate, plus one
//! shared Lease per namespace whose pods had selectors rewritten and one per
//! hot Deployment whose pods did. A shared Lease has one holder, which renews
//! it at the fastest rate of the Leases it replaces (or, when none of them is
//! in the input, at `DEFAULT_LEASE_DURATION_SECONDS / 4`).

use crate::patch::{lookup, str_at};
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// client-go's default leader-election `LeaseDuration`, for a shared Lease
/// that replaces no Lease in the input.
pub const DEFAULT_LEASE_DURATION_SECONDS: f64 = 15.0;
/// The kubelet renews its node lease every quarter of its duration.
pub const RENEWALS_PER_DURATION: f64 = 4.0;

/// A Lease, by namespace and name.
pub type LeaseKey = (String, String);

/// Lease writes counted by `--sample`.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    /// How long the watch ran, in seconds.
    pub seconds: f64,
    /// Writes per Lease over that time.
    pub writes: HashMap<LeaseKey, u64>,
}

/// Who will share a Lease after the rewrite.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Group {
    /// `metadata.namespace=<ns>`: every pod of the namespace.
    Namespace(String),
    /// `metadata.name=<deployment>`: the pods of one hot Deployment.
    Deployment(String, String),
}

/// One side of the comparison, in the JSON's stable shape.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Side {
    /// Lease objects.
    pub objects: usize,
    /// Writes per second to them, rounded to a thousandth.
    pub writes_per_second: f64,
    /// The rule or measurement the number comes from.
    pub source: String,
}

/// Before and after.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LeaseTotals {
    /// The Leases in the input, as they are written today.
    pub before: Side,
    /// After calmplane rewrites the selectors it found.
    pub after: Side,
}

/// The rate of each Lease: estimated from its spec, or sampled.
pub struct Rates {
    rates: HashMap<LeaseKey, f64>,
    sampled: Option<f64>,
}

impl Rates {
    /// Rates for `leases`, measured by `sample` when there is one.
    pub fn new(leases: &[Value], sample: Option<&Sample>) -> Rates {
        let mut rates = HashMap::with_capacity(leases.len());
        for lease in leases {
            let key = key(lease);
            let rate = match sample {
                Some(s) if s.seconds > 0.0 => {
                    s.writes.get(&key).copied().unwrap_or(0) as f64 / s.seconds
                }
                Some(_) => 0.0,
                None => estimate(lease),
            };
            rates.insert(key, rate);
        }
        Rates {
            rates,
            sampled: sample.map(|s| s.seconds),
        }
    }

    fn get(&self, key: &LeaseKey) -> Option<f64> {
        self.rates.get(key).copied()
    }
}

fn key(lease: &Value) -> LeaseKey {
    (
        str_at(lease, &["metadata", "namespace"])
            .unwrap_or("")
            .to_string(),
        str_at(lease, &["metadata", "name"])
            .unwrap_or("")
            .to_string(),
    )
}

/// The estimated renewals per second of one Lease.
pub fn estimate(lease: &Value) -> f64 {
    let holder = str_at(lease, &["spec", "holderIdentity"]).is_some_and(|h| !h.is_empty());
    let duration = lookup(lease, &["spec", "leaseDurationSeconds"]).and_then(Value::as_f64);
    match duration {
        Some(d) if holder && d > 0.0 => RENEWALS_PER_DURATION / d,
        _ => 0.0,
    }
}

fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Before and after for `leases`, given which Leases each group's rewritten
/// selectors named.
pub fn totals(
    leases: &[Value],
    rates: &Rates,
    groups: &BTreeMap<Group, BTreeSet<LeaseKey>>,
) -> LeaseTotals {
    let before_rate: f64 = leases
        .iter()
        .map(|l| rates.get(&key(l)).unwrap_or(0.0))
        .sum();
    let rule = match rates.sampled {
        Some(seconds) => format!(
            "sampled: writes seen in {seconds:.0}s (a create, or a change of renewTime, holderIdentity or leaseTransitions)"
        ),
        None => "estimate: each Lease with a holder renewed every leaseDurationSeconds/4 (the kubelet's node-lease rule; client-go leader election renews faster); Leases without a holder or duration idle".to_string(),
    };
    let replaced: BTreeSet<&LeaseKey> = groups.values().flatten().collect();
    let kept: Vec<LeaseKey> = leases
        .iter()
        .map(key)
        .filter(|k| !replaced.contains(k))
        .collect();
    let kept_rate: f64 = kept.iter().map(|k| rates.get(k).unwrap_or(0.0)).sum();
    let default_rate = RENEWALS_PER_DURATION / DEFAULT_LEASE_DURATION_SECONDS;
    let shared_rate: f64 = groups
        .values()
        .map(|names| {
            names
                .iter()
                .filter_map(|k| rates.get(k))
                .reduce(f64::max)
                .unwrap_or(default_rate)
        })
        .sum();
    let per_namespace = groups
        .keys()
        .filter(|g| matches!(g, Group::Namespace(_)))
        .count();
    let per_deployment = groups.len() - per_namespace;
    let after_source = format!(
        "{}: {} Lease(s) nothing rewrites at their {} rate, plus {} shared Lease(s) ({} per namespace, {} per hot Deployment), each renewed by one holder at the fastest rate of the Leases it replaces (every {}s/4 when none of them is in the input)",
        if rates.sampled.is_some() { "sampled and estimated" } else { "estimate" },
        kept.len(),
        if rates.sampled.is_some() { "sampled" } else { "estimated" },
        groups.len(),
        per_namespace,
        per_deployment,
        DEFAULT_LEASE_DURATION_SECONDS,
    );
    LeaseTotals {
        before: Side {
            objects: leases.len(),
            writes_per_second: round(before_rate),
            source: rule,
        },
        after: Side {
            objects: kept.len() + groups.len(),
            writes_per_second: round(kept_rate + shared_rate),
            source: after_source,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn lease(ns: &str, name: &str, duration: i64) -> Value {
        json!({"metadata": {"namespace": ns, "name": name},
               "spec": {"holderIdentity": name, "leaseDurationSeconds": duration}})
    }

    #[test]
    fn a_quarter_of_the_duration_and_idle_leases() {
        assert_eq!(estimate(&lease("a", "b", 40)), 0.1);
        assert_eq!(
            estimate(&json!({"spec": {"leaseDurationSeconds": 40}})),
            0.0
        );
        assert_eq!(estimate(&json!({"spec": {"holderIdentity": "x"}})), 0.0);
    }

    #[test]
    fn a_sample_replaces_the_estimate() {
        let leases = vec![
            lease("shop", "a", 8),
            lease("shop", "b", 8),
            lease("n", "node", 40),
        ];
        let sample = Sample {
            seconds: 10.0,
            writes: HashMap::from([
                (("shop".to_string(), "a".to_string()), 30),
                (("shop".to_string(), "b".to_string()), 5),
                // A Lease created during the sample, not in the input: not counted.
                (("shop".to_string(), "new".to_string()), 7),
            ]),
        };
        let rates = Rates::new(&leases, Some(&sample));
        let groups = BTreeMap::from([(
            Group::Namespace("shop".into()),
            BTreeSet::from([
                ("shop".to_string(), "a".to_string()),
                ("shop".into(), "b".into()),
            ]),
        )]);
        let t = totals(&leases, &rates, &groups);
        // a 3/s, b 0.5/s, node not written in the sample.
        assert_eq!(t.before.writes_per_second, 3.5);
        assert!(
            t.before.source.starts_with("sampled: writes seen in 10s"),
            "{}",
            t.before.source
        );
        // node (0) plus shop's shared Lease at a's measured 3/s.
        assert_eq!((t.after.objects, t.after.writes_per_second), (2, 3.0));
        assert!(
            t.after.source.contains("at their sampled rate"),
            "{}",
            t.after.source
        );
    }

    #[test]
    fn replaced_leases_collapse_into_their_group() {
        let leases = vec![
            lease("shop", "a", 8),
            lease("shop", "b", 4),
            lease("n", "node", 40),
        ];
        let rates = Rates::new(&leases, None);
        let mut groups = BTreeMap::new();
        groups.insert(
            Group::Namespace("shop".into()),
            BTreeSet::from([
                ("shop".to_string(), "a".to_string()),
                ("shop".into(), "b".into()),
            ]),
        );
        groups.insert(
            Group::Deployment("shop".into(), "hot".into()),
            BTreeSet::new(),
        );
        let t = totals(&leases, &rates, &groups);
        assert_eq!(t.before.objects, 3);
        assert_eq!(t.before.writes_per_second, 0.5 + 1.0 + 0.1);
        assert_eq!(t.after.objects, 1 + 2);
        // node lease 0.1 + shop group at b's 1.0 + the hot group at 4/15.
        assert_eq!(t.after.writes_per_second, round(0.1 + 1.0 + 4.0 / 15.0));
    }
}
