//! The event-handling path: watcher events in, write counts and ages out.
//! Pure apart from the metrics it updates: no I/O and no clock (callers pass
//! "now"), so the tests and the criterion bench drive it directly.
//!
//! A namespace's series live as long as it holds Leases, plus
//! [`SERIES_RETENTION`]: its gauges go at the first sample without a lease,
//! its write counter and age histogram once it has had none for that long.
//! So the series count follows the namespaces that hold Leases now or held
//! one recently, not every namespace the monitor has ever seen.

use super::metrics::LeaseMetrics;
use k8s_openapi::api::coordination::v1::Lease;
use kube::runtime::watcher::Event;
use prometheus::{Histogram, IntCounter};
use std::collections::HashMap;
use std::time::Duration;

/// How long a namespace without Leases keeps its write counter and age
/// histogram before their series are removed.
///
/// Removing them at once would turn every brief gap into a counter that
/// drops and comes back from zero: a Deployment deleted and applied again,
/// the last per-pod lease replaced by the next one. A `rate()` window over
/// the drop reads it as a counter reset, the writes counted after the last
/// scrape are lost with the old series, and the dashboard's per-namespace
/// panels flicker. 10 minutes is twice the longest range the rules and the
/// dashboard take a `rate()` over (5m), and 40 scrapes at the
/// ServiceMonitor's 15 s: a namespace empty for less than that keeps one
/// continuous counter, and one that comes back later starts a new series
/// that no 5-minute window shares with the old one. The cost is bounded: an
/// emptied namespace keeps its 14 series (13 for the histogram, one counter)
/// for 10 minutes more, so churn adds at most 14 series per namespace
/// emptied in the last 10 minutes.
pub const SERIES_RETENTION: Duration = Duration::from_secs(10 * 60);

/// [`SERIES_RETENTION`] in the unit of the sample clock.
const SERIES_RETENTION_US: i64 = SERIES_RETENTION.as_micros() as i64;

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
    /// Its gauges carry a value, so that they are removed when it empties.
    gauged: bool,
    /// The first sample that found it without leases; its counter and
    /// histogram are removed [`SERIES_RETENTION`] after that. Set by
    /// `sample`, the only place with a clock: at most one sample interval
    /// after the last lease went.
    empty_since_us: Option<i64>,
}

/// Everything the monitor knows about the Leases it watches.
pub struct LeaseState {
    metrics: LeaseMetrics,
    /// Namespaces that hold leases, and those that held one less than
    /// [`SERIES_RETENTION`] ago.
    namespaces: HashMap<String, NamespaceState>,
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
                // Namespaces emptied here keep their state (and series)
                // until `sample` has seen them empty for SERIES_RETENTION.
                for ns in self.namespaces.values_mut() {
                    ns.leases.retain(|_, r| r.seen == generation);
                }
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
                // An emptied namespace stays until `sample` retires it.
                if let Some(state) = self.namespaces.get_mut(ns) {
                    state.leases.remove(name);
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
                        gauged: false,
                        empty_since_us: None,
                    })
            }
        };
        // A lease within the retention: the same series continue.
        state.empty_since_us = None;
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
    /// epoch) and set the gauges. Namespaces with no leases lose their
    /// gauges at once, and their counter and histogram once they have had
    /// none for [`SERIES_RETENTION`].
    pub fn sample(&mut self, now_us: i64) -> Sample {
        let mut result = Sample::default();
        let metrics = &self.metrics;
        self.namespaces.retain(|ns, state| {
            let labels = &[ns.as_str()];
            if state.leases.is_empty() {
                if state.gauged {
                    // A last value would be a lie: an oldest age that stops
                    // growing, a lease count of a namespace that has none.
                    // The label values exist, they were set when `gauged`
                    // was.
                    let _ = metrics.leases.remove_label_values(labels);
                    let _ = metrics.oldest_age.remove_label_values(labels);
                    let _ = metrics.expired.remove_label_values(labels);
                    state.gauged = false;
                }
                let since = *state.empty_since_us.get_or_insert(now_us);
                if now_us.saturating_sub(since) < SERIES_RETENTION_US {
                    return true;
                }
                // Created with the state, so they exist. A lease that comes
                // back later starts them again from zero, after a gap longer
                // than any rate() range in the rules: no window holds both.
                let _ = metrics.writes.remove_label_values(labels);
                let _ = metrics.age.remove_label_values(labels);
                return false;
            }
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
            metrics
                .leases
                .with_label_values(labels)
                .set(state.leases.len() as i64);
            metrics.oldest_age.with_label_values(labels).set(oldest);
            metrics.expired.with_label_values(labels).set(expired);
            state.gauged = true;
            result.leases += state.leases.len();
            result.expired += expired as usize;
            result.namespaces += 1;
            true
        });
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

    const RETENTION_US: i64 = SERIES_RETENTION.as_micros() as i64;

    /// The exported lines (not comments) of `namespace`'s series.
    fn series_of(m: &LeaseMetrics, namespace: &str) -> Vec<String> {
        let label = format!("namespace=\"{namespace}\"");
        m.render()
            .lines()
            .filter(|l| !l.starts_with('#') && l.contains(&label))
            .map(str::to_string)
            .collect()
    }

    /// The metric names among `lines`, without their labels.
    fn names(lines: &[String]) -> std::collections::BTreeSet<&str> {
        lines
            .iter()
            .map(|l| l.split(['{', ' ']).next().unwrap_or(""))
            .collect()
    }

    #[test]
    fn an_emptied_namespace_keeps_counter_and_histogram_for_the_retention_then_loses_them() {
        let (mut s, m) = state();
        list(
            &mut s,
            &[
                lease("gone", "x", Some(SECOND), "h"),
                lease("kept", "y", Some(SECOND), "h"),
            ],
        );
        s.apply(&Event::Apply(lease("gone", "x", Some(2 * SECOND), "h")));
        let t0 = 3 * SECOND;
        s.sample(t0);
        // Three gauges, the counter, and 11 buckets, _sum and _count.
        assert_eq!(
            series_of(&m, "gone").len(),
            17,
            "{:?}",
            series_of(&m, "gone")
        );

        s.apply(&Event::Delete(lease("gone", "x", None, "h")));
        // The first sample without a lease starts the retention and drops
        // the gauges: 14 series are left.
        let emptied = t0 + SECOND;
        let sample = s.sample(emptied);
        assert_eq!(sample.namespaces, 1, "{sample:?}");
        let left = series_of(&m, "gone");
        assert_eq!(left.len(), 14, "{left:?}");
        assert_eq!(
            names(&left),
            [
                "calmplane_lease_writes_total",
                "lease_age_seconds_bucket",
                "lease_age_seconds_count",
                "lease_age_seconds_sum"
            ]
            .into(),
        );
        assert!(
            left.contains(&"calmplane_lease_writes_total{namespace=\"gone\"} 1".to_string()),
            "{left:?}"
        );

        s.sample(emptied + RETENTION_US - 1);
        assert_eq!(series_of(&m, "gone"), left, "one microsecond short");
        s.sample(emptied + RETENTION_US);
        assert_eq!(series_of(&m, "gone"), Vec::<String>::new());
        // A namespace that holds a lease keeps all of its series.
        assert_eq!(series_of(&m, "kept").len(), 17);
        assert_eq!(s.lease_count(), 1);
    }

    #[test]
    fn a_namespace_emptied_by_a_relist_goes_the_same_way() {
        let (mut s, m) = state();
        list(&mut s, &[lease("a", "x", Some(SECOND), "h")]);
        s.sample(2 * SECOND);
        s.apply_error();
        list(&mut s, &[]);
        s.sample(3 * SECOND);
        assert_eq!(series_of(&m, "a").len(), 14);
        s.sample(3 * SECOND + RETENTION_US);
        assert_eq!(series_of(&m, "a"), Vec::<String>::new());
    }

    #[test]
    fn a_namespace_back_within_the_retention_continues_its_counter_and_restarts_the_clock() {
        let (mut s, m) = state();
        list(&mut s, &[lease("a", "x", Some(SECOND), "h")]);
        s.apply(&Event::Apply(lease("a", "x", Some(2 * SECOND), "h")));
        s.apply(&Event::Delete(lease("a", "x", None, "h")));
        let emptied = 3 * SECOND;
        s.sample(emptied);
        s.sample(emptied + RETENTION_US / 2);
        s.apply(&Event::Apply(lease("a", "z", Some(emptied), "h")));
        assert_eq!(writes(&m, "a"), 2, "the same counter, not a new one at 1");
        // Past the first retention: the lease that came back reset the clock.
        s.sample(emptied + RETENTION_US);
        assert_eq!(series_of(&m, "a").len(), 17);
        assert_eq!(m.leases.with_label_values(&["a"]).get(), 1);

        s.apply(&Event::Delete(lease("a", "z", None, "h")));
        let again = emptied + RETENTION_US + SECOND;
        s.sample(again);
        s.sample(again + RETENTION_US - 1);
        assert_eq!(series_of(&m, "a").len(), 14);
        s.sample(again + RETENTION_US);
        assert_eq!(series_of(&m, "a"), Vec::<String>::new());
        // After the removal a new lease starts a new counter.
        s.apply(&Event::Apply(lease("a", "w", Some(again), "h")));
        assert_eq!(writes(&m, "a"), 1);
    }

    #[test]
    fn with_namespace_churn_the_series_follow_the_last_retention_not_all_history() {
        let (mut s, m) = state();
        list(&mut s, &[]);
        const MINUTE: i64 = 60 * SECOND;
        // A namespace a minute: created, sampled, deleted.
        // Namespace i is first seen empty at i minutes + 1 s.
        for i in 0..60 {
            let ns = format!("ns-{i}");
            s.apply(&Event::Apply(lease(&ns, "l", Some(i * MINUTE), "h")));
            s.sample(i * MINUTE);
            s.apply(&Event::Delete(lease(&ns, "l", None, "h")));
            s.sample(i * MINUTE + SECOND);
        }
        // At 59 min + 1 s, those emptied less than 10 minutes before remain:
        // 59 - i < 10, so i = 50..=59.
        let text = m.render();
        let namespaces: std::collections::BTreeSet<&str> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split("namespace=\"").nth(1))
            .filter_map(|rest| rest.split('"').next())
            .collect();
        let expected: std::collections::BTreeSet<String> =
            (50..60).map(|i| format!("ns-{i}")).collect();
        assert_eq!(
            namespaces,
            expected.iter().map(String::as_str).collect(),
            "{text}"
        );
    }
}
