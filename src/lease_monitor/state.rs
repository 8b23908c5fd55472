//! The event-handling path: watcher events in, write counts and ages out.
//! Pure apart from the metrics it updates: no I/O and no clock (callers pass
//! "now"), so the tests and the criterion bench drive it directly.

use super::metrics::LeaseMetrics;
use k8s_openapi::api::coordination::v1::Lease;
use kube::runtime::watcher::Event;
use prometheus::{Histogram, IntCounter};
use std::collections::{HashMap, HashSet};

/// What the monitor keeps of one Lease: the fields that make a write, and
/// the times its age is measured from.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LeaseRecord {
    renew_us: Option<i64>,
    acquire_us: Option<i64>,
    created_us: Option<i64>,
    holder: Option<String>,
    transitions: Option<i32>,
    duration_s: Option<i32>,
    /// The list generation that last saw this lease; after a relist, leases
    /// from older generations were deleted while the watch was down.
    seen: u64,
}

impl LeaseRecord {
    fn from_lease(lease: &Lease, seen: u64) -> LeaseRecord {
        let spec = lease.spec.as_ref();
        LeaseRecord {
            renew_us: spec
                .and_then(|s| s.renew_time.as_ref())
                .map(|t| t.0.as_microsecond()),
            acquire_us: spec
                .and_then(|s| s.acquire_time.as_ref())
                .map(|t| t.0.as_microsecond()),
            created_us: lease
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.as_microsecond()),
            holder: spec.and_then(|s| s.holder_identity.clone()),
            transitions: spec.and_then(|s| s.lease_transitions),
            duration_s: spec.and_then(|s| s.lease_duration_seconds),
            seen,
        }
    }

    /// Whether going from `self` to `next` is a lease write.
    fn is_write(&self, next: &LeaseRecord) -> bool {
        self.renew_us != next.renew_us
            || self.holder != next.holder
            || self.transitions != next.transitions
    }

    /// Seconds since renewTime, else acquireTime, else creationTimestamp;
    /// never negative (clock skew between the apiserver's clients and us).
    fn age_seconds(&self, now_us: i64) -> f64 {
        let since = self.renew_us.or(self.acquire_us).or(self.created_us);
        match since {
            Some(t) => (now_us.saturating_sub(t)).max(0) as f64 / 1e6,
            // A Lease without any timestamp cannot be aged; zero keeps it
            // out of the stale alert rather than inventing an age.
            None => 0.0,
        }
    }
}

/// One namespace's leases and its cached metric children (a label lookup per
/// event would cost more than the rest of the event).
struct NamespaceState {
    leases: HashMap<String, LeaseRecord>,
    writes: IntCounter,
    age: Histogram,
}

/// Everything the monitor knows about the Leases it watches.
pub struct LeaseState {
    metrics: LeaseMetrics,
    namespaces: HashMap<String, NamespaceState>,
    /// Namespaces whose gauges carry a value, so that emptied ones lose it.
    gauged: HashSet<String>,
    /// Incremented on every `Init`: the current list generation.
    generation: u64,
    /// True from the first `InitDone`: `/readyz` turns ready.
    listed: bool,
    /// Inside an `Init`..`InitDone` list.
    listing: bool,
    /// An error was counted as a restart and nothing has arrived since, so
    /// the relist it causes is the same restart.
    restart_counted: bool,
}

/// The result of one sample, for logs and tests.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Sample {
    /// Leases observed.
    pub leases: usize,
    /// Namespaces holding at least one lease.
    pub namespaces: usize,
    /// Leases older than their leaseDurationSeconds.
    pub expired: usize,
}

impl LeaseState {
    /// An empty state that updates `metrics`.
    pub fn new(metrics: LeaseMetrics) -> LeaseState {
        LeaseState {
            metrics,
            namespaces: HashMap::new(),
            gauged: HashSet::new(),
            generation: 0,
            listed: false,
            listing: false,
            restart_counted: false,
        }
    }

    /// True once the first complete list has been applied.
    pub fn is_listed(&self) -> bool {
        self.listed
    }

    /// The metrics in the text exposition format.
    pub fn render(&self) -> String {
        self.metrics.render()
    }

    /// Leases currently known.
    pub fn lease_count(&self) -> usize {
        self.namespaces.values().map(|n| n.leases.len()).sum()
    }

    /// A watcher error: the watcher backs off and retries, or relists.
    pub fn apply_error(&mut self) {
        self.metrics.restarts.inc();
        self.restart_counted = true;
    }

    /// Apply one watcher event.
    pub fn apply(&mut self, event: &Event<Lease>) {
        match event {
            Event::Init => {
                // A relist after the first list is a restart, unless the
                // error that caused it was counted already.
                if self.generation > 0 && !self.restart_counted {
                    self.metrics.restarts.inc();
                }
                self.restart_counted = false;
                self.generation += 1;
                self.listing = true;
            }
            Event::InitApply(lease) => {
                self.restart_counted = false;
                // The first list finds leases that exist already: they are not
                // writes we saw. A relist finds leases written while the
                // watch was down: those are.
                let count = self.listed;
                self.upsert(lease, count);
            }
            Event::InitDone => {
                self.restart_counted = false;
                let generation = self.generation;
                for ns in self.namespaces.values_mut() {
                    ns.leases.retain(|_, r| r.seen == generation);
                }
                self.namespaces.retain(|_, ns| !ns.leases.is_empty());
                self.listing = false;
                self.listed = true;
            }
            Event::Apply(lease) => {
                self.restart_counted = false;
                self.upsert(lease, true);
            }
            Event::Delete(lease) => {
                self.restart_counted = false;
                let (Some(ns), Some(name)) = (
                    lease.metadata.namespace.as_deref(),
                    lease.metadata.name.as_deref(),
                ) else {
                    return;
                };
                if let Some(state) = self.namespaces.get_mut(ns) {
                    state.leases.remove(name);
                    if state.leases.is_empty() {
                        self.namespaces.remove(ns);
                    }
                }
            }
        }
    }

    fn upsert(&mut self, lease: &Lease, count_writes: bool) {
        let (Some(ns), Some(name)) = (
            lease.metadata.namespace.as_deref(),
            lease.metadata.name.as_deref(),
        ) else {
            // Leases are namespaced: the apiserver never sends one without
            // both, and there is nothing to key it by.
            return;
        };
        let next = LeaseRecord::from_lease(lease, self.generation);
        let state = match self.namespaces.get_mut(ns) {
            Some(state) => state,
            None => {
                let writes = self.metrics.writes.with_label_values(&[ns]);
                let age = self.metrics.age.with_label_values(&[ns]);
                self.namespaces
                    .entry(ns.to_string())
                    .or_insert(NamespaceState {
                        leases: HashMap::new(),
                        writes,
                        age,
                    })
            }
        };
        match state.leases.get_mut(name) {
            Some(known) => {
                if count_writes && known.is_write(&next) {
                    state.writes.inc();
                }
                *known = next;
            }
            None => {
                if count_writes {
                    state.writes.inc();
                }
                state.leases.insert(name.to_string(), next);
            }
        }
    }

    /// Observe every lease's age at `now_us` (microseconds since the Unix
    /// epoch) and set the gauges; namespaces with no leases lose theirs.
    pub fn sample(&mut self, now_us: i64) -> Sample {
        let mut result = Sample::default();
        for (ns, state) in &self.namespaces {
            let mut oldest = 0.0_f64;
            let mut expired = 0_i64;
            for record in state.leases.values() {
                let age = record.age_seconds(now_us);
                state.age.observe(age);
                oldest = oldest.max(age);
                if record.duration_s.is_some_and(|d| age > f64::from(d)) {
                    expired += 1;
                }
            }
            let labels = &[ns.as_str()];
            self.metrics
                .leases
                .with_label_values(labels)
                .set(state.leases.len() as i64);
            self.metrics
                .oldest_age
                .with_label_values(labels)
                .set(oldest);
            self.metrics.expired.with_label_values(labels).set(expired);
            result.leases += state.leases.len();
            result.expired += expired as usize;
            if !self.gauged.contains(ns) {
                self.gauged.insert(ns.clone());
            }
        }
        let namespaces = &self.namespaces;
        let metrics = &self.metrics;
        self.gauged.retain(|ns| {
            if namespaces.contains_key(ns) {
                return true;
            }
            let labels = &[ns.as_str()];
            // The label values exist: this set only holds namespaces that
            // were set above in an earlier sample.
            let _ = metrics.leases.remove_label_values(labels);
            let _ = metrics.oldest_age.remove_label_values(labels);
            let _ = metrics.expired.remove_label_values(labels);
            false
        });
        result.namespaces = self.namespaces.len();
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};

    const SECOND: i64 = 1_000_000;

    fn ts(us: i64) -> MicroTime {
        MicroTime(k8s_openapi::jiff::Timestamp::from_microsecond(us).unwrap())
    }

    fn lease(ns: &str, name: &str, renew_us: Option<i64>, holder: &str) -> Lease {
        Lease {
            metadata: ObjectMeta {
                namespace: Some(ns.into()),
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                renew_time: renew_us.map(ts),
                holder_identity: Some(holder.into()),
                lease_duration_seconds: Some(15),
                ..LeaseSpec::default()
            }),
        }
    }

    fn state() -> (LeaseState, LeaseMetrics) {
        let m = LeaseMetrics::new().unwrap();
        (LeaseState::new(m.clone()), m)
    }

    fn writes(m: &LeaseMetrics, ns: &str) -> u64 {
        m.writes.with_label_values(&[ns]).get()
    }

    fn list(s: &mut LeaseState, leases: &[Lease]) {
        s.apply(&Event::Init);
        for l in leases {
            s.apply(&Event::InitApply(l.clone()));
        }
        s.apply(&Event::InitDone);
    }

    #[test]
    fn the_first_list_is_not_writes_and_later_changes_are() {
        let (mut s, m) = state();
        list(&mut s, &[lease("a", "x", Some(SECOND), "h")]);
        assert!(s.is_listed());
        assert_eq!(writes(&m, "a"), 0);
        s.apply(&Event::Apply(lease("a", "x", Some(2 * SECOND), "h")));
        s.apply(&Event::Apply(lease("a", "x", Some(2 * SECOND), "h")));
        s.apply(&Event::Apply(lease("a", "x", Some(2 * SECOND), "h2")));
        s.apply(&Event::Apply(lease("a", "y", None, "h")));
        assert_eq!(
            writes(&m, "a"),
            3,
            "renew, holder change, creation; not the no-op"
        );
    }

    #[test]
    fn a_relist_counts_only_what_changed_and_drops_what_went() {
        let (mut s, m) = state();
        list(
            &mut s,
            &[
                lease("a", "x", Some(SECOND), "h"),
                lease("a", "y", Some(SECOND), "h"),
            ],
        );
        s.apply_error();
        list(
            &mut s,
            &[
                lease("a", "x", Some(SECOND), "h"),
                lease("b", "z", Some(SECOND), "h"),
            ],
        );
        assert_eq!(writes(&m, "a"), 0);
        assert_eq!(writes(&m, "b"), 1, "created while the watch was down");
        assert_eq!(
            m.restarts.get(),
            1,
            "the error and its relist are one restart"
        );
        assert_eq!(s.lease_count(), 2, "y was deleted while the watch was down");
        list(&mut s, &[]);
        assert_eq!(m.restarts.get(), 2, "a relist with no error before it");
        assert_eq!(s.lease_count(), 0);
    }

    #[test]
    fn ages_come_from_renew_then_acquire_then_creation_and_never_go_negative() {
        let (mut s, m) = state();
        let mut acquired = lease("a", "acq", None, "h");
        acquired.spec.as_mut().unwrap().acquire_time = Some(ts(7 * SECOND));
        let mut created = lease("b", "new", None, "h");
        created.metadata.creation_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::from_microsecond(5 * SECOND).unwrap(),
            ));
        list(
            &mut s,
            &[
                lease("a", "renewed", Some(9 * SECOND + 750_000), "h"),
                acquired,
                created,
                lease("c", "future", Some(20 * SECOND), "h"),
            ],
        );
        s.sample(10 * SECOND);
        let oldest = |ns: &str| m.oldest_age.with_label_values(&[ns]).get();
        assert_eq!(oldest("a"), 3.0);
        assert_eq!(oldest("b"), 5.0);
        assert_eq!(oldest("c"), 0.0);
        let h = m.age.with_label_values(&["a"]);
        assert_eq!(h.get_sample_count(), 2);
        assert_eq!(
            h.get_sample_sum(),
            3.25,
            "0.25 s at microsecond precision, plus 3 s"
        );
        s.sample(30 * SECOND);
        assert_eq!(
            m.expired.with_label_values(&["a"]).get(),
            2,
            "23 s and 20.25 s > 15 s"
        );
        assert_eq!(m.expired.with_label_values(&["c"]).get(), 0);
    }

    #[test]
    fn deleted_leases_and_emptied_namespaces_leave_the_gauges() {
        let (mut s, m) = state();
        list(
            &mut s,
            &[
                lease("a", "x", Some(SECOND), "h"),
                lease("a", "y", Some(SECOND), "h"),
                lease("b", "z", Some(SECOND), "h"),
            ],
        );
        s.sample(2 * SECOND);
        assert_eq!(m.leases.with_label_values(&["a"]).get(), 2);
        s.apply(&Event::Delete(lease("a", "x", None, "h")));
        s.apply(&Event::Delete(lease("b", "z", None, "h")));
        s.sample(3 * SECOND);
        assert_eq!(m.leases.with_label_values(&["a"]).get(), 1);
        let text = m.render();
        assert!(
            !text.contains("calmplane_leases{namespace=\"b\"}"),
            "{text}"
        );
        assert!(
            !text.contains("calmplane_lease_oldest_age_seconds{namespace=\"b\"}"),
            "{text}"
        );
        assert!(
            text.contains("calmplane_lease_writes_total{namespace=\"b\"} 0"),
            "{text}"
        );
    }
}
