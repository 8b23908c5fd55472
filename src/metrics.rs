//! Prometheus metrics, served in text format on the plaintext metrics port.

use crate::review::Verdict;
use crate::server::endpoint::Endpoint;
use prometheus::{
    core::Collector, Encoder, Gauge, Histogram, HistogramOpts, IntCounterVec, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use std::time::Duration;

/// How an admission request ended, for the `result` label of
/// `calmplane_admission_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Result {
    /// The pipeline ran (or had nothing to run): mutated, unchanged or
    /// skipped; `report` for every request to `/report`.
    Answered(Verdict),
    /// The request was refused: a 4xx, a 408, a 500.
    Error,
    /// The server was at capacity: a 503.
    Overloaded,
}

impl Result {
    /// The label value, for a request to `endpoint`.
    fn label(self, endpoint: Endpoint) -> &'static str {
        match self {
            Result::Answered(_) if endpoint == Endpoint::Report => "report",
            Result::Answered(verdict) => verdict.as_str(),
            Result::Error => "error",
            Result::Overloaded => "overloaded",
        }
    }
}

/// The `kind` label of a request: bounded, since the kind comes from the client.
pub fn kind_label(kind: &str) -> &'static str {
    match kind {
        "Pod" => "Pod",
        "Deployment" => "Deployment",
        _ => "other",
    }
}

/// The `kind` and `operation` labels of a request that failed before its
/// review was read.
pub const UNKNOWN: &str = "unknown";

/// How a TLS handshake on the webhook port ended, the `outcome` label of
/// `calmplane_tls_handshakes_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeOutcome {
    /// A TLS session was set up.
    Success,
    /// TLS that rustls refused: bad version, no shared cipher, a client
    /// certificate from another CA...
    Error,
    /// Not finished within the handshake timeout.
    Timeout,
    /// Not TLS: plaintext HTTP (answered with a 400) or other bytes.
    Plaintext,
    /// Closed before sending anything (a TCP probe, a port scan).
    Closed,
}

impl HandshakeOutcome {
    /// Every outcome, so that each series exists from the start.
    pub const ALL: [HandshakeOutcome; 5] = [
        HandshakeOutcome::Success,
        HandshakeOutcome::Error,
        HandshakeOutcome::Timeout,
        HandshakeOutcome::Plaintext,
        HandshakeOutcome::Closed,
    ];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            HandshakeOutcome::Success => "success",
            HandshakeOutcome::Error => "error",
            HandshakeOutcome::Timeout => "timeout",
            HandshakeOutcome::Plaintext => "plaintext",
            HandshakeOutcome::Closed => "closed",
        }
    }
}

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
    /// traffic, and how much of it we actually change or fail. Counted by
    /// [`Metrics::admission`] only.
    requests: IntCounterVec,
    /// `calmplane_admission_duration_seconds`: our share of the apiserver's
    /// latency, which the 5 ms budget is measured against.
    duration: Histogram,
    /// `calmplane_policy_changes_total{policy}`: which policy is doing the
    /// work, so one can be judged (or turned off) on its own.
    policy_changes: IntCounterVec,
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
    /// TLS handshakes by outcome: connection churn, next to the request rate.
    pub tls_handshakes: IntCounterVec,
    /// `calmplane_tls_certificate_expiry_timestamp_seconds`: notAfter of the
    /// serving certificate. A rotation that keeps failing leaves the old one
    /// serving until it expires, and then every call fails open.
    pub tls_expiry: Gauge,
    /// Requests answered 503 because the CPU queue was too long, by path: how
    /// often admission control turned work away (each such pod is admitted
    /// unmutated under `failurePolicy: Ignore`).
    pub overloaded: IntCounterVec,
    /// `calmplane_build_info{version}`: which build serves, for dashboards
    /// that span an upgrade.
    build_info: IntGaugeVec,
}

/// One metric family as the metrics reference documents it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Family {
    /// The series name.
    pub name: String,
    /// `counter`, `gauge` or `histogram`: how to query it.
    pub kind: &'static str,
    /// The help text `/metrics` serves.
    pub help: String,
    /// The label names, each bounded by the code that sets it.
    pub labels: Vec<String>,
}

/// The families `collectors` export, whether they have series yet or not
/// (a labelled metric has none until its first observation, so the
/// registry's `gather` would leave it out).
pub fn families(collectors: &[Box<dyn Collector>]) -> Vec<Family> {
    use prometheus::proto::MetricType;
    collectors
        .iter()
        .flat_map(|c| {
            let labels: Vec<String> = c
                .desc()
                .first()
                .map(|d| d.variable_labels.clone())
                .unwrap_or_default();
            c.collect().into_iter().map(move |f| Family {
                name: f.name().to_string(),
                kind: match f.get_field_type() {
                    MetricType::COUNTER => "counter",
                    MetricType::GAUGE => "gauge",
                    MetricType::HISTOGRAM => "histogram",
                    MetricType::SUMMARY => "summary",
                    MetricType::UNTYPED => "untyped",
                },
                help: f.help().to_string(),
                labels: labels.clone(),
            })
        })
        .collect()
}

impl Metrics {
    /// A fresh registry with every metric registered and `calmplane_build_info` set to 1.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "calmplane_admission_requests_total",
                "Admission requests by kind, operation and result (mutated, unchanged, skipped, report, error, overloaded).",
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
        let tls_handshakes = IntCounterVec::new(
            Opts::new(
                "calmplane_tls_handshakes_total",
                "TLS handshakes on the webhook port by outcome (success, error, timeout, plaintext, closed).",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        for outcome in HandshakeOutcome::ALL {
            tls_handshakes.with_label_values(&[outcome.label()]).reset();
        }
        let tls_expiry = Gauge::new(
            "calmplane_tls_certificate_expiry_timestamp_seconds",
            "The time the serving certificate expires (notAfter), in seconds since the Unix epoch.",
        )
        .expect("valid metric");
        let overloaded = IntCounterVec::new(
            Opts::new(
                "calmplane_overloaded_requests_total",
                "Requests answered 503 because the server was at capacity (requests waiting longer than --max-queue-delay for a CPU, or no room in the memory pools for requests), by path.",
            ),
            &["path"],
        )
        .expect("valid metric");
        for endpoint in Endpoint::ROUTED.into_iter().filter(|e| e.costs_work()) {
            overloaded.with_label_values(&[endpoint.label()]).reset();
        }
        let metrics = Metrics {
            registry,
            requests,
            duration,
            policy_changes,
            report_changes,
            build_info,
            tls_reloads,
            config_reloads,
            tls_handshakes,
            tls_expiry,
            overloaded,
        };
        for c in metrics.collectors() {
            metrics
                .registry
                .register(c)
                .expect("metric registered once");
        }
        metrics
    }

    /// Every metric, in the order `/metrics` and the reference list them:
    /// the one list that registers them and documents them.
    fn collectors(&self) -> Vec<Box<dyn Collector>> {
        vec![
            Box::new(self.requests.clone()),
            Box::new(self.duration.clone()),
            Box::new(self.policy_changes.clone()),
            Box::new(self.report_changes.clone()),
            Box::new(self.build_info.clone()),
            Box::new(self.tls_reloads.clone()),
            Box::new(self.config_reloads.clone()),
            Box::new(self.tls_handshakes.clone()),
            Box::new(self.tls_expiry.clone()),
            Box::new(self.overloaded.clone()),
        ]
    }

    /// The metric families this server exports, series or not yet: for the
    /// metrics reference.
    pub fn families(&self) -> Vec<Family> {
        families(&self.collectors())
    }

    /// Count one TLS handshake.
    pub fn handshake(&self, outcome: HandshakeOutcome) {
        self.tls_handshakes
            .with_label_values(&[outcome.label()])
            .inc();
    }

    /// Count one request to `endpoint` answered 503 because the server was
    /// at capacity; an admission request also counts as `result="overloaded"`.
    pub fn overloaded(&self, endpoint: Endpoint) {
        self.overloaded.with_label_values(&[endpoint.label()]).inc();
        self.admission(endpoint, UNKNOWN, UNKNOWN, Result::Overloaded);
    }

    /// Count one request to an admission endpoint (`/mutate`, `/report`;
    /// others are not counted here). `kind` and `operation` are labels
    /// already bounded ([`kind_label`], `review::operation_label`, or
    /// [`UNKNOWN`]). The one place `calmplane_admission_requests_total` is
    /// counted.
    pub fn admission(&self, endpoint: Endpoint, kind: &str, operation: &str, result: Result) {
        if !endpoint.is_admission() {
            return;
        }
        self.requests
            .with_label_values(&[kind, operation, result.label(endpoint)])
            .inc();
    }

    /// Record an admission the pipeline answered: its duration, and the
    /// policies that changed the object.
    pub fn admitted(&self, elapsed: Duration, changed_by: &[&str]) {
        self.duration.observe(elapsed.as_secs_f64());
        for policy in changed_by {
            self.policy_changes.with_label_values(&[policy]).inc();
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
