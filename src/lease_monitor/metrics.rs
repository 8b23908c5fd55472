//! The lease monitor's Prometheus metrics. Names are part of the interface:
//! the rules in `manifests/monitoring/rules/` and the dashboard query them.
//!
//! Every label is a namespace, never a pod or a lease name, so the number of
//! series is bounded by the number of namespaces that hold Leases, or held
//! one within [`SERIES_RETENTION`]: at most 17 per namespace with leases
//! (13 for the histogram, the write counter, three gauges), 14 per namespace
//! emptied within the retention (the gauges go at once), plus the restart
//! counter. `state` removes the rest, so namespace churn does not add up.
//!
//! [`SERIES_RETENTION`]: super::state::SERIES_RETENTION

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Upper bounds of `lease_age_seconds`. The SLO (1 s) and the page (2 s) fall
/// on bucket edges, so both are exact in PromQL; 0.25 s holds a lease renewed
/// every 200 ms; 30 s and above catch node leases (renewed every 10 s) and
/// leases nobody renews any more.
pub const AGE_BUCKETS: &[f64] = &[0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0];

/// The label every lease metric carries.
pub const NAMESPACE_LABEL: &str = "namespace";

/// The lease monitor's metrics, in their own registry (the monitor runs as
/// its own process and exposes nothing of the webhook's).
#[derive(Clone)]
pub struct LeaseMetrics {
    registry: Registry,
    /// `lease_age_seconds{namespace}`: the age of every lease at every sample.
    pub age: HistogramVec,
    /// `calmplane_lease_writes_total{namespace}`: lease creations and renewals.
    pub writes: IntCounterVec,
    /// `calmplane_leases{namespace}`: Lease objects at the last sample.
    pub leases: IntGaugeVec,
    /// `calmplane_lease_oldest_age_seconds{namespace}`: largest age at the last sample.
    pub oldest_age: GaugeVec,
    /// `calmplane_lease_expired{namespace}`: leases older than their `leaseDurationSeconds`.
    pub expired: IntGaugeVec,
    /// `calmplane_lease_watch_restarts_total`: watch errors and relists.
    pub restarts: IntCounter,
}

impl LeaseMetrics {
    /// Fresh metrics in a new registry.
    pub fn new() -> Result<LeaseMetrics, prometheus::Error> {
        let registry = Registry::new();
        let labels = &[NAMESPACE_LABEL];
        let age = HistogramVec::new(
            HistogramOpts::new(
                "lease_age_seconds",
                "Age of each Lease (now minus renewTime, else acquireTime, else creationTimestamp), observed every sample interval.",
            )
            .buckets(AGE_BUCKETS.to_vec()),
            labels,
        )?;
        let writes = IntCounterVec::new(
            Opts::new(
                "calmplane_lease_writes_total",
                "Lease writes seen on the watch: creations, and updates that change renewTime, holderIdentity or leaseTransitions.",
            ),
            labels,
        )?;
        let leases = IntGaugeVec::new(
            Opts::new("calmplane_leases", "Lease objects at the last sample."),
            labels,
        )?;
        let oldest_age = GaugeVec::new(
            Opts::new(
                "calmplane_lease_oldest_age_seconds",
                "The largest lease age in the namespace at the last sample.",
            ),
            labels,
        )?;
        let expired = IntGaugeVec::new(
            Opts::new(
                "calmplane_lease_expired",
                "Leases whose age exceeds their leaseDurationSeconds at the last sample.",
            ),
            labels,
        )?;
        let restarts = IntCounter::new(
            "calmplane_lease_watch_restarts_total",
            "Lease watch restarts: watch errors, and relists the watcher started on its own.",
        )?;
        let metrics = LeaseMetrics {
            registry,
            age,
            writes,
            leases,
            oldest_age,
            expired,
            restarts,
        };
        for c in metrics.collectors() {
            metrics.registry.register(c)?;
        }
        Ok(metrics)
    }

    /// Every metric: the one list that registers them and documents them.
    fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        vec![
            Box::new(self.age.clone()),
            Box::new(self.writes.clone()),
            Box::new(self.leases.clone()),
            Box::new(self.oldest_age.clone()),
            Box::new(self.expired.clone()),
            Box::new(self.restarts.clone()),
        ]
    }

    /// The metric families the lease monitor exports: for the reference.
    pub fn families(&self) -> Vec<crate::metrics::Family> {
        crate::metrics::families(&self.collectors())
    }

    /// The text exposition format, for `/metrics`.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec only fails on invalid metric families, which
        // the registry refuses at registration.
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "encoding metrics");
        }
        String::from_utf8_lossy(&buf).into_owned()
    }
}
