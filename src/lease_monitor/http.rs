//! What the monitor serves on its admin port (`/metrics`, `/healthz`,
//! `/readyz`), through [`crate::process::admin`].

use super::state::LeaseState;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// What the HTTP handlers read.
#[derive(Clone)]
pub struct HttpState {
    /// Rendered on `/metrics` under its lock, so that a scrape never falls
    /// in the middle of a sample (buckets and counts stay consistent).
    pub state: Arc<Mutex<LeaseState>>,
    /// Set after the first complete Lease list; `/readyz` reports it.
    pub ready: Arc<AtomicBool>,
}

/// What the monitor tells its admin port: its metrics, rendered under the
/// state's lock, and whether the first Lease list is complete.
impl crate::process::admin::Admin for HttpState {
    fn metrics(&self) -> String {
        super::lock(&self.state).render()
    }

    fn ready(&self) -> Result<(), &'static str> {
        if self.ready.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err("waiting for the first complete Lease list")
        }
    }
}
