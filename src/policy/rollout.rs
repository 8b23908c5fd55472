//! `rollout`: Deployments roll with `maxUnavailable: 0`.
//!
//! With the default `maxUnavailable: 25%`, a rollout kills old pods before new
//! ones are ready, and capacity drops exactly when the new version is least
//! proven. `maxUnavailable: 0` only removes an old pod once a new one is ready.
//! The apiserver rejects `maxSurge: 0` together with `maxUnavailable: 0`
//! (the rollout could never make progress), so a zero maxSurge is raised to 1,
//! with a warning. `Recreate` Deployments are left alone, and a missing
//! strategy is fine: the apiserver defaults it to RollingUpdate.

use super::apiserver::{self, InApiserver};
use super::{Context, Definition, Kind, Policy, Reads};
use crate::patch::{present, str_at, Mutation};
use crate::view::Shape;
use kube::core::admission::Operation;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// The policy's name in `calmplane.dev/skip`, metrics and changes.
pub const NAME: &str = "rollout";

/// The `rollout` section: nothing to configure but whether it runs, kept as
/// a section so the file's shape is the same for every policy.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Settings {}

impl super::Settings for Settings {}

/// The policy.
pub struct Rollout;

impl Definition for Rollout {
    const NAME: &'static str = NAME;
    const SECTION: &'static str = "rollout";
    const COUNTS: &'static str = "Deployments given maxUnavailable: 0";
    type Settings = Settings;

    fn new(_: Settings) -> Self {
        Rollout
    }
}

/// `0`, `"0"` and `"0%"` (and `"00%"`) all mean zero to the Deployment controller.
fn is_zero(v: &Value) -> bool {
    match v {
        Value::Number(n) => n.as_i64() == Some(0),
        Value::String(s) => {
            let digits = s.strip_suffix('%').unwrap_or(s);
            !digits.is_empty() && digits.bytes().all(|b| b == b'0')
        }
        _ => false,
    }
}

impl Policy for Rollout {
    fn name(&self) -> &'static str {
        NAME
    }

    fn handles(&self, kind: Kind, operation: &Operation) -> bool {
        kind == Kind::Deployment && matches!(operation, Operation::Create | Operation::Update)
    }

    fn reads(&self, reads: &mut Reads) {
        reads.shape(
            Kind::Deployment,
            Shape::at(&["spec", "strategy"], Shape::All),
        );
    }

    /// An `ApplyConfiguration`: `strategy` and `rollingUpdate` are granular
    /// structs. A zero maxSurge is raised to 1 in the same apply that sets
    /// maxUnavailable to 0, so no stored state has both at zero; a
    /// maxUnavailable that is already zero in another form (`"0%"`) is kept
    /// as written, as the webhook keeps it.
    fn in_apiserver(&self) -> InApiserver {
        let surge = "object.spec.strategy.rollingUpdate.maxSurge";
        let unavailable = "object.spec.strategy.rollingUpdate.maxUnavailable";
        InApiserver::Runs(apiserver::Mutation {
            kind: Kind::Deployment,
            operations: &["CREATE", "UPDATE"],
            conditions: vec![(
                "rolling-update",
                "object.spec.?strategy.?type.orValue('RollingUpdate') != 'Recreate'".to_string(),
            )],
            variables: vec![
                (
                    "surgeZero",
                    format!(
                        "object.spec.?strategy.?rollingUpdate.?maxSurge.hasValue() && {}",
                        apiserver::is_zero(surge)
                    ),
                ),
                (
                    "unavailableZero",
                    format!(
                        "object.spec.?strategy.?rollingUpdate.?maxUnavailable.hasValue() && {}",
                        apiserver::is_zero(unavailable)
                    ),
                ),
            ],
            patch: apiserver::Patch::ApplyConfiguration(
                "variables.unavailableZero && !variables.surgeZero ? Object{} : \
                 Object{spec: Object.spec{strategy: Object.spec.strategy{rollingUpdate: \
                 Object.spec.strategy.rollingUpdate{\
                 ?maxSurge: variables.surgeZero ? optional.of(1) : optional.none(), \
                 ?maxUnavailable: variables.unavailableZero ? optional.none() : optional.of(0)}}}}"
                    .to_string(),
            ),
        })
    }

    fn apply(&self, _ctx: &Context<'_>, m: &mut Mutation) {
        if str_at(m.doc(), &["spec", "strategy", "type"]) == Some("Recreate") {
            return;
        }
        let unavailable = ["spec", "strategy", "rollingUpdate", "maxUnavailable"];
        let surge = ["spec", "strategy", "rollingUpdate", "maxSurge"];
        let old_unavailable = present(m.doc(), &unavailable).cloned();
        let surge_value = present(m.doc(), &surge).cloned();

        // Raise maxSurge first, so that no intermediate state has both at zero.
        if let Some(s) = surge_value.filter(is_zero) {
            let message =
                format!("maxSurge {s} -> 1: maxSurge and maxUnavailable cannot both be 0");
            if m.set(&surge, json!(1), message).changed() {
                m.warn(format!(
                    "calmplane raised maxSurge from {s} to 1: with maxUnavailable 0 a rollout needs room to surge"
                ));
            }
        }
        if old_unavailable.as_ref().is_some_and(is_zero) {
            return;
        }
        let was = old_unavailable.map_or_else(|| "unset (25%)".to_string(), |v| v.to_string());
        m.set(
            &unavailable,
            json!(0),
            format!("maxUnavailable {was} -> 0: capacity never drops during a rollout"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_forms() {
        for z in [json!(0), json!("0"), json!("0%"), json!("00%")] {
            assert!(is_zero(&z), "{z}");
        }
        for nz in [
            json!(1),
            json!("25%"),
            json!("%"),
            json!(""),
            json!(null),
            json!("10"),
        ] {
            assert!(!is_zero(&nz), "{nz}");
        }
    }
}
