//! `calmplane lease-monitor`: watches `coordination.k8s.io/v1` Leases and
//! exports the two numbers that tell whether calmplane's lease rewrite
//! worked: the lease write rate (`calmplane_lease_writes_total`) and lease
//! age (`lease_age_seconds`).
//!
//! ```text
//!  apiserver ──list/watch──▶ kube::runtime::watcher (relists, 410, bookmarks, backoff)
//!                               │ Event<Lease>
//!                               ▼
//!                           state::LeaseState::apply     writes, restarts, known leases
//!                               │ every --sample-interval
//!                               ▼
//!                           state::LeaseState::sample    ages, gauges
//!                               │
//!                               ▼
//!                           http: /metrics /healthz /readyz
//! ```

pub mod http;
pub mod metrics;
pub mod state;

use futures::StreamExt as _;
use k8s_openapi::api::coordination::v1::Lease;
use kube::runtime::watcher;
use kube::runtime::WatchStreamExt as _;
use kube::Api;
use metrics::LeaseMetrics;
use state::LeaseState;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Options of `calmplane lease-monitor`.
#[derive(Debug, Clone, clap::Args)]
pub struct LeaseMonitorArgs {
    /// Watch Leases in this namespace only (default: all namespaces).
    #[arg(long, env = "CALMPLANE_LEASE_NAMESPACE")]
    pub namespace: Option<String>,
    /// Label selector on Leases, e.g. `app.kubernetes.io/part-of=shop`.
    #[arg(long, env = "CALMPLANE_LEASE_SELECTOR")]
    pub selector: Option<String>,
    /// Address of the plaintext /metrics, /healthz and /readyz port.
    #[arg(
        long,
        env = "CALMPLANE_METRICS_LISTEN",
        default_value = "127.0.0.1:9091"
    )]
    pub metrics_listen: SocketAddr,
    /// How often every lease's age is observed.
    #[arg(long, env = "CALMPLANE_SAMPLE_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub sample_interval: Duration,
}

/// Why the monitor stopped.
#[derive(Debug, thiserror::Error)]
pub enum LeaseMonitorError {
    /// The metrics registry refused a metric (a bug, not an input problem).
    #[error("registering metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The metrics port could not be bound or served.
    #[error("metrics listener on {addr}: {source}")]
    Listen {
        /// The address from `--metrics-listen`.
        addr: SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
    /// No kubeconfig and no in-cluster service account, or an unusable one.
    #[error("connecting to the cluster (KUBECONFIG, ~/.kube/config or the in-cluster service account): {0}")]
    Client(#[from] kube::Error),
    /// `--sample-interval 0` would spin.
    #[error("--sample-interval must be more than zero")]
    ZeroInterval,
    /// The async runtime could not start.
    #[error("starting the async runtime: {0}")]
    Runtime(std::io::Error),
}

/// Microseconds since the Unix epoch, the resolution of Lease timestamps.
fn now_us() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
        // A clock before 1970 makes every age large rather than negative.
        Err(_) => 0,
    }
}

/// Run the monitor until `shutdown` completes.
pub async fn run(
    args: LeaseMonitorArgs,
    shutdown: impl Future<Output = ()>,
) -> Result<(), LeaseMonitorError> {
    if args.sample_interval.is_zero() {
        return Err(LeaseMonitorError::ZeroInterval);
    }
    let metrics = LeaseMetrics::new()?;
    let ready = Arc::new(AtomicBool::new(false));
    // The port comes up before the cluster connection, so that /healthz
    // answers (and /readyz says why it is not ready) while the list runs.
    let listener = tokio::net::TcpListener::bind(args.metrics_listen)
        .await
        .map_err(|source| LeaseMonitorError::Listen {
            addr: args.metrics_listen,
            source,
        })?;
    let state = Arc::new(Mutex::new(LeaseState::new(metrics)));
    let app = crate::process::admin::router(Arc::new(http::HttpState {
        state: state.clone(),
        ready: ready.clone(),
    }));
    // The same caps and timers as the webhook's admin port: anything that
    // can reach the port must not be able to exhaust the process.
    let http = tokio::spawn(crate::server::listener::serve_admin(
        listener,
        app,
        crate::server::listener::Limits::default(),
        std::future::pending(),
    ));

    let client = kube::Client::try_default().await?;
    let api: Api<Lease> = match &args.namespace {
        Some(ns) => Api::namespaced(client, ns),
        None => Api::all(client),
    };
    let mut config = watcher::Config::default();
    if let Some(selector) = &args.selector {
        config = config.labels(selector);
    }
    tracing::info!(
        namespace = args.namespace.as_deref().unwrap_or("(all)"),
        selector = args.selector.as_deref().unwrap_or(""),
        metrics = %args.metrics_listen,
        "watching leases"
    );
    let mut events = std::pin::pin!(watcher(api, config).default_backoff());
    let mut ticker = tokio::time::interval(args.sample_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            _ = ticker.tick() => {
                let mut s = lock(&state);
                if s.is_listed() {
                    s.sample(now_us());
                }
            }
            event = events.next() => match event {
                Some(Ok(event)) => {
                    let mut s = lock(&state);
                    s.apply(&event);
                    if matches!(event, watcher::Event::InitDone) && !ready.swap(true, Ordering::AcqRel) {
                        tracing::info!(leases = s.lease_count(), "first lease list complete");
                        // Gauges are right from the first scrape, not one interval later.
                        s.sample(now_us());
                    }
                }
                Some(Err(error)) => {
                    tracing::warn!(%error, "lease watch error; the watcher backs off and retries");
                    lock(&state).apply_error();
                }
                // The watcher stream never ends; if it does, nothing more can be measured.
                None => break,
            },
        }
    }
    http.abort();
    Ok(())
}

/// The state lock; a panic while holding it would have left counts
/// half-applied, which is still better than no metrics at all.
pub(crate) fn lock(state: &Mutex<LeaseState>) -> std::sync::MutexGuard<'_, LeaseState> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// `calmplane lease-monitor`: a runtime of its own, stopped by SIGTERM or SIGINT.
pub fn main(args: LeaseMonitorArgs) -> Result<(), LeaseMonitorError> {
    crate::process::raise_fd_limit();
    let runtime = crate::process::runtime().map_err(LeaseMonitorError::Runtime)?;
    runtime.block_on(run(args, crate::process::shutdown_signal()))
}
