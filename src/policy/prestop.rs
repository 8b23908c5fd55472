//! `prestop`: a preStop sleep on every container that has no preStop hook.
//!
//! When a pod is deleted, the kubelet sends SIGTERM while the endpoint removal
//! is still travelling to every kube-proxy, ingress controller and service
//! mesh. Requests keep arriving at a process that is shutting down. A short
//! preStop sleep holds SIGTERM back until the endpoint is gone.
//!
//! Existing hooks are never replaced and init containers are left alone. The
//! sleep counts against `terminationGracePeriodSeconds`, and the apiserver
//! rejects a sleep longer than the grace period, so a grace period shorter than
//! `sleepSeconds + minDrainSeconds` is raised to that sum, with a warning.
//! An unset grace period is the API default, 30 s, and is only written when
//! that default would be too short.

use super::{containers, is_windows, Context, Kind, Policy};
use crate::config::{PrestopConfig, PrestopMode};
use crate::patch::{present, Mutation};
use kube::core::admission::Operation;
use serde_json::{json, Value};

/// The policy's name in `calmplane.dev/skip`, metrics and changes.
pub const NAME: &str = "prestop";
/// The apiserver's default `terminationGracePeriodSeconds`.
const DEFAULT_GRACE_SECONDS: i64 = 30;

/// The policy.
pub struct Prestop {
    cfg: PrestopConfig,
    /// The preStop handler to add, built once from the config, not per container.
    hook: Value,
}

impl Prestop {
    /// The policy for this `prestop` section.
    pub fn new(cfg: PrestopConfig) -> Self {
        let seconds = cfg.sleep_seconds;
        let hook = match cfg.mode {
            PrestopMode::Sleep => json!({"sleep": {"seconds": seconds}}),
            PrestopMode::Exec => {
                json!({"exec": {"command": ["sh", "-c", format!("sleep {seconds}")]}})
            }
        };
        Prestop { cfg, hook }
    }
}

/// The policy as the policy file configures it, unless disabled.
pub fn build(config: &crate::config::Config) -> Option<Box<dyn Policy>> {
    let cfg = &config.prestop;
    cfg.enabled
        .then(|| Box::new(Prestop::new(cfg.clone())) as Box<dyn Policy>)
}

impl Policy for Prestop {
    fn name(&self) -> &'static str {
        NAME
    }

    fn handles(&self, kind: Kind, operation: &Operation) -> bool {
        kind == Kind::Pod && *operation == Operation::Create
    }

    fn apply(&self, _ctx: &Context<'_>, m: &mut Mutation) {
        if self.cfg.mode == PrestopMode::Exec && is_windows(m.doc()) {
            // `sh` does not exist on Windows images.
            return;
        }
        let without_hook: Vec<(usize, String)> = containers(m.doc(), "containers")
            .filter(|(_, c)| {
                c.get("lifecycle")
                    .and_then(|l| l.get("preStop"))
                    .is_none_or(Value::is_null)
            })
            .map(|(i, c)| {
                let name = c.get("name").and_then(Value::as_str).unwrap_or("?");
                (i, name.to_string())
            })
            .collect();

        let mut added = false;
        for (i, name) in without_hook {
            let index = i.to_string();
            let path = ["spec", "containers", &index, "lifecycle", "preStop"];
            let message = format!(
                "container {name:?}: preStop sleeps {}s so endpoint removal propagates before SIGTERM",
                self.cfg.sleep_seconds
            );
            added |= m.set(&path, self.hook.clone(), message).changed();
        }
        if added {
            self.ensure_grace(m);
        }
    }
}

impl Prestop {
    fn ensure_grace(&self, m: &mut Mutation) {
        let needed = self.cfg.sleep_seconds + self.cfg.min_drain_seconds;
        let path = ["spec", "terminationGracePeriodSeconds"];
        let current = match present(m.doc(), &path) {
            None => DEFAULT_GRACE_SECONDS,
            Some(v) => match v.as_i64() {
                Some(n) => n,
                None => return,
            },
        };
        if current >= needed {
            return;
        }
        let message = format!(
            "terminationGracePeriodSeconds {current} -> {needed}: the {}s preStop sleep plus {}s to drain",
            self.cfg.sleep_seconds, self.cfg.min_drain_seconds
        );
        if m.set(&path, json!(needed), message).changed() {
            m.warn(format!(
                "calmplane raised terminationGracePeriodSeconds from {current} to {needed} to fit a {}s preStop sleep",
                self.cfg.sleep_seconds
            ));
        }
    }
}
