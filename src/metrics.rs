//! Prometheus metrics, served in text format on the plaintext metrics port.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Buckets from 50 µs to 1 s: the interesting range is well under a
/// millisecond, the budget is 5 ms, and the apiserver gives up at 2 s.
pub const DURATION_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0,
];

/// Every metric calmplane exports, in its own registry so that tests (and
/// two servers in one process) never share counters.
pub struct Metrics {
    registry: Registry,
    /// `calmplane_admission_requests_total{kind,operation,result}`: how much
    /// traffic, and how much of it we actually change or fail.
    pub requests: IntCounterVec,
    /// `calmplane_admission_duration_seconds`: our share of the apiserver's
    /// latency, which the 5 ms budget is measured against.
    pub duration: Histogram,
    /// `calmplane_policy_changes_total{policy}`: which policy is doing the
    /// work, so one can be judged (or turned off) on its own.
    pub policy_changes: IntCounterVec,
    /// `calmplane_report_changes_total{policy}`: objects a policy would have
    /// changed but did not (`/report`, or `enforcement: report`): the canary's
    /// signal.
    pub report_changes: IntCounterVec,
    /// `calmplane_tls_reloads_total{result}`: a failed rotation keeps the old
    /// certificate serving, so it must be alertable before that one expires.
    pub tls_reloads: IntCounterVec,
    /// `calmplane_config_reloads_total{result}`: a refused policy file keeps
    /// the old policy running, so the refusal must be visible.
    pub config_reloads: IntCounterVec,
}

impl Metrics {
    /// A fresh registry with every metric registered and `calmplane_build_info` set to 1.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "calmplane_admission_requests_total",
                "Admission requests by kind, operation and result (mutated, unchanged, skipped, error).",
            ),
            &["kind", "operation", "result"],
        )
        .expect("valid metric");
        let duration = Histogram::with_opts(
            HistogramOpts::new(
                "calmplane_admission_duration_seconds",
                "Time from request body received to response body ready, per admission.",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
        )
        .expect("valid metric");
        let policy_changes = IntCounterVec::new(
            Opts::new(
                "calmplane_policy_changes_total",
                "Objects changed, by the policy that changed them.",
            ),
            &["policy"],
        )
        .expect("valid metric");
        let report_changes = IntCounterVec::new(
            Opts::new(
                "calmplane_report_changes_total",
                "Objects a policy would have changed in report mode (not patched), by policy.",
            ),
            &["policy"],
        )
        .expect("valid metric");
        let build_info = IntGaugeVec::new(
            Opts::new("calmplane_build_info", "Always 1; labels carry the build."),
            &["version"],
        )
        .expect("valid metric");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let tls_reloads = IntCounterVec::new(
            Opts::new(
                "calmplane_tls_reloads_total",
                "Certificate reload attempts by result (success, error).",
            ),
            &["result"],
        )
        .expect("valid metric");
        let config_reloads = IntCounterVec::new(
            Opts::new(
                "calmplane_config_reloads_total",
                "Policy file reload attempts by result (success, error).",
            ),
            &["result"],
        )
        .expect("valid metric");
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(duration.clone()),
            Box::new(policy_changes.clone()),
            Box::new(report_changes.clone()),
            Box::new(build_info),
            Box::new(tls_reloads.clone()),
            Box::new(config_reloads.clone()),
        ] {
            registry.register(c).expect("metric registered once");
        }
        Metrics {
            registry,
            requests,
            duration,
            policy_changes,
            report_changes,
            tls_reloads,
            config_reloads,
        }
    }

    /// All metrics in the Prometheus text exposition format, for `GET /metrics`.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding does not fail");
        String::from_utf8(buf).expect("prometheus text is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
