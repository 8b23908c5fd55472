//! Load shedding: when requests wait too long for a CPU, the ones that cost
//! work get a fast 503 instead of joining the line.

use crate::metrics::Metrics;
use crate::server::endpoint::Endpoint;
use crate::server::ApiError;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// How late the runtime runs a task that asked to wake at a given time. When
/// the CPU is saturated, every request that has arrived waits in the same
/// line of runnable tasks, so this is how long they wait before any of their
/// bytes are read: a queue that cannot be seen from inside a request.
pub(super) struct Lag {
    epoch: Instant,
    /// When the probe is due to wake next, from `epoch`.
    due_nanos: AtomicU64,
    /// How late it woke last time.
    last_nanos: AtomicU64,
}

/// How often [`Lag`] looks: often enough to see a line build up within a
/// few requests' time, rare enough to cost nothing.
const LAG_PROBE_EVERY: Duration = Duration::from_millis(10);

impl Lag {
    pub(super) fn new() -> Lag {
        Lag {
            epoch: Instant::now(),
            due_nanos: AtomicU64::new(u64::MAX),
            last_nanos: AtomicU64::new(0),
        }
    }

    fn nanos(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_nanos() as u64
    }

    /// Measure the lag until the task is dropped.
    pub(super) async fn probe(self: Arc<Self>) {
        loop {
            let due = Instant::now() + LAG_PROBE_EVERY;
            self.due_nanos.store(self.nanos(due), Ordering::Relaxed);
            tokio::time::sleep_until(due).await;
            let late = Instant::now().saturating_duration_since(due);
            self.last_nanos
                .store(late.as_nanos() as u64, Ordering::Relaxed);
        }
    }

    /// The wait now: how late the probe was last time, or, if it is overdue
    /// now, how overdue (a line still growing).
    fn current(&self) -> Duration {
        let overdue = self
            .nanos(Instant::now())
            .saturating_sub(self.due_nanos.load(Ordering::Relaxed));
        Duration::from_nanos(overdue.max(self.last_nanos.load(Ordering::Relaxed)))
    }
}

/// Admission control: past [`Limits::max_queue_delay`](super::Limits), the
/// requests that cost work get a fast 503; probes (`/healthz`, `/readyz`)
/// never do, so that a busy pod is not restarted for being busy.
pub(super) struct Shed {
    pub(super) lag: Arc<Lag>,
    pub(super) limit: Duration,
    pub(super) metrics: Arc<Metrics>,
}

impl Shed {
    /// The 503 for a request to `endpoint` now, or `None` to serve it.
    pub(super) fn check(&self, endpoint: Endpoint) -> Option<Response> {
        if !endpoint.costs_work() {
            return None;
        }
        let waited = self.lag.current();
        if waited <= self.limit {
            return None;
        }
        self.metrics.overloaded(endpoint);
        // Shed before the router, so the router's `observe` layer never sees
        // it: counted above, and the body (with its Retry-After) is the same
        // `ApiError` as any other.
        Some(
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "overloaded: requests are waiting {} ms for a CPU (limit {} ms); try again",
                    waited.as_millis(),
                    self.limit.as_millis()
                ),
            )
            .into_response(),
        )
    }
}
