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

use super::apiserver::{self, InApiserver};
use super::{containers, is_windows, windows_reads, Context, Definition, Kind, Policy, Reads};
use crate::patch::{present, Mutation};
use crate::view::Shape;
use kube::core::admission::Operation;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// The policy's name in `calmplane.dev/skip`, metrics and changes.
pub const NAME: &str = "prestop";
/// The apiserver's default `terminationGracePeriodSeconds`.
pub const DEFAULT_GRACE_SECONDS: i64 = 30;

/// How the policy writes its sleep: the native action needs a recent
/// cluster, the exec form needs a shell in the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PrestopMode {
    /// The native `lifecycle.preStop.sleep` action (on by default since
    /// Kubernetes 1.30, GA in 1.34).
    Sleep,
    /// `exec: ["sh", "-c", "sleep N"]`, for older clusters; needs a shell in the image.
    Exec,
}

/// The `prestop` section.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Settings {
    /// Native sleep or exec, depending on what the cluster supports.
    pub mode: PrestopMode,
    /// How long SIGTERM is held back: long enough for endpoint removal to
    /// reach every proxy. `i64` because that is the API's type.
    #[schemars(range(min = 1, max = 3600))]
    pub sleep_seconds: i64,
    /// Time the grace period must leave after the sleep for the app to drain.
    #[schemars(range(min = 1, max = 3600))]
    pub min_drain_seconds: i64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            mode: PrestopMode::Sleep,
            sleep_seconds: 5,
            min_drain_seconds: 5,
        }
    }
}

impl super::Settings for Settings {
    fn check(&self) -> Result<(), (&'static str, String)> {
        if !(1..=3600).contains(&self.sleep_seconds) {
            return Err((
                "sleepSeconds",
                format!("{} is out of range 1..=3600", self.sleep_seconds),
            ));
        }
        if !(1..=3600).contains(&self.min_drain_seconds) {
            return Err((
                "minDrainSeconds",
                format!(
                    "{} is out of range 1..=3600; it must be at least 1 so that the grace period stays longer than the sleep",
                    self.min_drain_seconds
                ),
            ));
        }
        Ok(())
    }
}

/// The policy.
pub struct Prestop {
    cfg: Settings,
    /// The preStop handler to add, built once from the config, not per container.
    hook: Value,
}

impl Prestop {
    /// Its settings.
    pub fn settings(&self) -> &Settings {
        &self.cfg
    }
}

impl Definition for Prestop {
    const NAME: &'static str = NAME;
    const SECTION: &'static str = "prestop";
    const COUNTS: &'static str = "pods given a preStop sleep";
    type Settings = Settings;

    fn new(cfg: Settings) -> Self {
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

impl Policy for Prestop {
    fn name(&self) -> &'static str {
        NAME
    }

    fn handles(&self, kind: Kind, operation: &Operation) -> bool {
        kind == Kind::Pod && *operation == Operation::Create
    }

    fn reads(&self, reads: &mut Reads) {
        windows_reads(reads);
        reads.shape(
            Kind::Pod,
            Shape::at(&["spec", "terminationGracePeriodSeconds"], Shape::All),
        );
        reads.shape(
            Kind::Pod,
            Shape::at(&["spec", "containers", "*", "name"], Shape::All),
        );
        reads.shape(
            Kind::Pod,
            Shape::at(
                &["spec", "containers", "*", "lifecycle", "preStop"],
                Shape::All,
            ),
        );
    }

    /// A `JSONPatch`, one `add` per container without a preStop handler,
    /// by index as [`Policy::apply`] writes them: `exec.command` is an atomic
    /// list, which an `ApplyConfiguration` may not write, and one form serves
    /// both modes. The grace period is decided in the same expression, from
    /// the containers as they came in, so a reinvocation that adds no hook
    /// leaves it alone, as the webhook does.
    fn in_apiserver(&self) -> InApiserver {
        let seconds = self.cfg.sleep_seconds;
        let needed = seconds + self.cfg.min_drain_seconds;
        // `Object` and `JSONPatch` exist only in the mutation's expression,
        // not in variables: the variables decide, the expression builds.
        let hook = match self.cfg.mode {
            PrestopMode::Sleep => format!(
                "Object.spec.containers.lifecycle.preStop{{sleep: \
                 Object.spec.containers.lifecycle.preStop.sleep{{seconds: {seconds}}}}}"
            ),
            PrestopMode::Exec => format!(
                "Object.spec.containers.lifecycle.preStop{{exec: \
                 Object.spec.containers.lifecycle.preStop.exec{{command: ['sh', '-c', 'sleep {seconds}']}}}}"
            ),
        };
        let mut conditions = Vec::new();
        if self.cfg.mode == PrestopMode::Exec {
            conditions.push(("not-windows", format!("!({})", apiserver::windows())));
        }
        InApiserver::Runs(apiserver::Mutation {
            kind: Kind::Pod,
            operations: &["CREATE"],
            conditions,
            variables: vec![
                (
                    "missing",
                    "object.spec.containers.transformList(i, c, \
                     !has(c.lifecycle) || !has(c.lifecycle.preStop), i)"
                        .to_string(),
                ),
                (
                    "grace",
                    format!(
                        "has(object.spec.terminationGracePeriodSeconds) ? \
                         object.spec.terminationGracePeriodSeconds : {DEFAULT_GRACE_SECONDS}"
                    ),
                ),
            ],
            patch: apiserver::Patch::JsonPatch(format!(
                "variables.missing.map(i, has(object.spec.containers[i].lifecycle) ? \
                 JSONPatch{{op: 'add', path: '/spec/containers/' + string(i) + '/lifecycle/preStop', value: {hook}}} : \
                 JSONPatch{{op: 'add', path: '/spec/containers/' + string(i) + '/lifecycle', \
                 value: Object.spec.containers.lifecycle{{preStop: {hook}}}}}) + \
                 (size(variables.missing) > 0 && variables.grace < {needed} ? \
                 [JSONPatch{{op: 'add', path: '/spec/terminationGracePeriodSeconds', value: {needed}}}] : [])"
            )),
        })
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
