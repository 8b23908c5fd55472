//! `rollout-history`: how a Deployment becomes hot, with no state in the webhook.
//!
//! On every Deployment UPDATE that changes `spec.template`, the current unix
//! time is appended to the Deployment's annotation `calmplane.dev/rollouts`
//! (a comma-separated list, pruned to the last hour). A Deployment that rolled
//! more than `hotRolloutsPerHour` times in that hour gets the template
//! annotation `calmplane.dev/lease-scope: deployment/<name>`, which the `lease`
//! policy reads on its pods; a Deployment that cooled down loses it.
//!
//! The template annotation only changes on an update that already changes the
//! template, so calmplane never starts a rollout on its own. The history lives
//! in the object itself, so any replica can answer any request.
//!
//! An update that changes nothing but drops these annotations (`kubectl
//! replace`, a GitOps sync of the manifest as written) gets them back from
//! the stored object: losing the template's lease scope would change the pod
//! template hash and roll every pod.
//!
//! Reinvocation: the apiserver may call us again with our own output as
//! `object` and the same `oldObject`. If `object` already carries a history
//! that differs from `oldObject`'s, this update was recorded, and only the
//! (idempotent) lease-scope decision is made again.

use super::apiserver::InApiserver;
use super::{Context, Definition, Forecast, Kind, Policy, Reads};
use crate::annotations::{
    LeaseScope, RolloutHistory as History, LEASE_SCOPE as LEASE_SCOPE_ANNOTATION,
    ROLLOUTS as ROLLOUTS_ANNOTATION,
};
use crate::patch::{lookup, present, str_at, Mutation};
use crate::view::Shape;
use kube::core::admission::Operation;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

/// The policy's name in `calmplane.dev/skip`, metrics and changes.
pub const NAME: &str = "rollout-history";

/// The `rolloutHistory` section.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Settings {
    /// A Deployment that rolled more than this many times in the last hour is hot.
    pub hot_rollouts_per_hour: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            hot_rollouts_per_hour: 1,
        }
    }
}

impl super::Settings for Settings {}

/// The policy. Holds no history itself: that lives in each Deployment.
pub struct RolloutHistory {
    cfg: Settings,
}

impl RolloutHistory {
    /// Its settings.
    pub fn settings(&self) -> &Settings {
        &self.cfg
    }
}

impl Definition for RolloutHistory {
    const NAME: &'static str = NAME;
    const SECTION: &'static str = "rolloutHistory";
    const COUNTS: &'static str = "Deployments whose lease scope changes at their next rollout";
    type Settings = Settings;

    fn new(cfg: Settings) -> Self {
        RolloutHistory { cfg }
    }
}

/// Would `rollout-history` change this Deployment's lease scope at its next
/// rollout? Hot and not yet scoped to itself, or cold and still scoped.
fn lease_scope_changes(d: &Value, hot: bool) -> bool {
    let current = str_at(
        d,
        &[
            "spec",
            "template",
            "metadata",
            "annotations",
            LEASE_SCOPE_ANNOTATION,
        ],
    );
    let name = str_at(d, &["metadata", "name"]).unwrap_or("");
    if hot {
        current.and_then(LeaseScope::parse) != Some(LeaseScope { deployment: name })
    } else {
        current.is_some()
    }
}

impl Policy for RolloutHistory {
    fn name(&self) -> &'static str {
        NAME
    }

    fn handles(&self, kind: Kind, operation: &Operation) -> bool {
        kind == Kind::Deployment && *operation == Operation::Update
    }

    fn in_apiserver(&self) -> InApiserver {
        InApiserver::Stays(
            "it records when a Deployment's template changed and counts the changes of the last \
             hour: CEL has no clock, and a policy keeps no state between requests. It stays in the webhook",
        )
    }

    fn reads(&self, reads: &mut Reads) {
        // The template is compared as text, and only its annotations are
        // written: the view holds no more of it.
        reads.shape(
            Kind::Deployment,
            Shape::at(
                &["spec", "template"],
                Shape::Text(Box::new(Shape::at(
                    &["metadata", "annotations"],
                    Shape::Annotations,
                ))),
            ),
        );
        reads.keys(
            [
                ROLLOUTS_ANNOTATION.to_string(),
                LEASE_SCOPE_ANNOTATION.to_string(),
            ],
            [],
        );
    }

    fn forecast(&self, f: &Forecast<'_>) -> bool {
        f.kind == Kind::Deployment && lease_scope_changes(f.object, f.hot)
    }

    fn apply(&self, ctx: &Context<'_>, m: &mut Mutation) {
        let Some(old) = ctx.old_object else { return };
        let same = match ctx.templates {
            Some(t) => same_template(t.object.map(RawValue::get), t.old_object.map(RawValue::get)),
            None => {
                let text = |doc: &Value| {
                    present(doc, &["spec", "template"]).and_then(|t| serde_json::to_string(t).ok())
                };
                same_template(text(m.doc()).as_deref(), text(old).as_deref())
            }
        };
        if same {
            restore_dropped(old, m);
            return;
        }
        let Some(name) = str_at(m.doc(), &["metadata", "name"]).map(str::to_string) else {
            return;
        };

        let old_history = str_at(old, &["metadata", "annotations", ROLLOUTS_ANNOTATION]);
        let new_history = str_at(m.doc(), &["metadata", "annotations", ROLLOUTS_ANNOTATION]);
        let already_recorded = new_history.is_some() && new_history != old_history;
        // `kubectl replace` drops annotations it was not given; fall back to the
        // stored history so that it is not reset.
        let mut history = History::parse(new_history.or(old_history).unwrap_or(""));
        history.prune(ctx.now);
        if !already_recorded {
            history.record(ctx.now);
        }
        let count = history.len();
        let history = history.format();
        m.set(
            &["metadata", "annotations", ROLLOUTS_ANNOTATION],
            Value::String(history),
            format!("recorded a template change: {count} rollout(s) in the last hour"),
        );

        let scope_path = [
            "spec",
            "template",
            "metadata",
            "annotations",
            LEASE_SCOPE_ANNOTATION,
        ];
        let limit = self.cfg.hot_rollouts_per_hour as usize;
        if count > limit {
            m.set(
                &scope_path,
                Value::String(LeaseScope::format(&name)),
                format!(
                    "{count} rollouts in the last hour (more than {limit}): pods share one lease per Deployment"
                ),
            );
        } else {
            m.remove(
                &scope_path,
                format!("{count} rollout(s) in the last hour: back to one lease per namespace"),
            );
        }
    }
}

/// An update that changes nothing but drops calmplane's annotations (a
/// `kubectl replace` or a GitOps sync of the manifest as written) gets them
/// back from the stored object. Without the template's lease scope the pod
/// template hash changes and the Deployment controller rolls every pod, for
/// nothing; without the history the Deployment forgets that it is hot.
/// An annotation set to a new value, even empty, is the user's and is kept.
fn restore_dropped(old: &Value, m: &mut Mutation) {
    let dropped = [
        (
            &["metadata", "annotations", ROLLOUTS_ANNOTATION][..],
            "the rollout history",
        ),
        (
            &[
                "spec",
                "template",
                "metadata",
                "annotations",
                LEASE_SCOPE_ANNOTATION,
            ][..],
            "the pod template, which would otherwise roll every pod",
        ),
    ];
    for (path, what) in dropped {
        let Some(stored) = str_at(old, path) else {
            continue;
        };
        if lookup(m.doc(), path).is_some() {
            continue;
        }
        let message = format!(
            "restored {}={stored:?}, dropped by an update that changed nothing else: keeps {what}",
            path[path.len() - 1]
        );
        m.set(path, Value::String(stored.to_string()), message);
    }
}

/// Whether two pod templates, given as JSON text, are the same apart from
/// calmplane's own `lease-scope` annotation and members set to `null` in the
/// template, its metadata or its annotations.
///
/// The apiserver writes `object` and `oldObject` with the same encoder, so an
/// unchanged template is usually byte-for-byte equal and costs one `memcmp`.
/// Otherwise both are parsed into borrowed trees (`serde_json_borrow`: no
/// copies of strings, no hashing), which is far cheaper than building two
/// `serde_json::Value`s.
fn same_template(a: Option<&str>, b: Option<&str>) -> bool {
    if a == b {
        return true;
    }
    let (Some(a), Some(b)) = (a, b) else {
        return false;
    };
    match (
        serde_json::from_str::<Borrowed<'_>>(a),
        serde_json::from_str::<Borrowed<'_>>(b),
    ) {
        (Ok(a), Ok(b)) => templates_equal(&a, &b),
        _ => false,
    }
}

type Borrowed<'a> = serde_json_borrow::Value<'a>;
type Object<'a> = serde_json_borrow::ObjectAsVec<'a>;

fn templates_equal(a: &Borrowed<'_>, b: &Borrowed<'_>) -> bool {
    match (a.as_object(), b.as_object()) {
        (Some(a), Some(b)) => {
            same_except(a, b, "metadata") && metadata_equal(a.get("metadata"), b.get("metadata"))
        }
        _ => equal(a, b),
    }
}

fn metadata_equal<'v, 'a>(a: Option<&'v Borrowed<'a>>, b: Option<&'v Borrowed<'a>>) -> bool {
    fn obj<'v, 'a>(v: Option<&'v Borrowed<'a>>, empty: &'v Object<'a>) -> &'v Object<'a> {
        v.and_then(Borrowed::as_object).unwrap_or(empty)
    }
    let empty = Object::default();
    let (a, b) = (obj(a, &empty), obj(b, &empty));
    same_except(a, b, "annotations")
        && same_except(
            obj(a.get("annotations"), &empty),
            obj(b.get("annotations"), &empty),
            LEASE_SCOPE_ANNOTATION,
        )
}

/// The members of `a` and `b` other than `skip` and `null`s are equal.
fn same_except(a: &Object<'_>, b: &Object<'_>, skip: &str) -> bool {
    let covered = |x: &Object<'_>, y: &Object<'_>| {
        x.iter()
            .filter(|(k, v)| *k != skip && !v.is_null())
            .all(|(k, v)| y.get(k).is_some_and(|w| equal(v, w)))
    };
    covered(a, b) && covered(b, a)
}

/// JSON equality: members in any order, numbers by their parsed value (as
/// `serde_json::Value` compares them).
fn equal(a: &Borrowed<'_>, b: &Borrowed<'_>) -> bool {
    match (a, b) {
        (Borrowed::Array(a), Borrowed::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| equal(x, y))
        }
        (Borrowed::Object(a), Borrowed::Object(b)) => {
            a.len() == b.len() && a.iter().all(|(k, v)| b.get(k).is_some_and(|w| equal(v, w)))
        }
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn same(a: &Value, b: &Value) -> bool {
        same_template(Some(&a.to_string()), Some(&b.to_string()))
    }

    #[test]
    fn template_equality_ignores_only_our_annotation() {
        let a = json!({"metadata": {"labels": {"app": "x"}}, "spec": {"containers": []}});
        let mut b = a.clone();
        b["metadata"]["annotations"] = json!({LEASE_SCOPE_ANNOTATION: "deployment/x"});
        assert!(same(&a, &b));
        b["metadata"]["annotations"]["other"] = json!("1");
        assert!(!same(&a, &b));
        let mut c = a.clone();
        c["spec"]["containers"] = json!([{"name": "c"}]);
        assert!(!same(&a, &c));
        assert!(same_template(None, None));
        assert!(!same_template(Some(&a.to_string()), None));
    }

    #[test]
    fn template_equality_is_json_equality() {
        // Member order, whitespace and escapes do not matter; nulls only at
        // the three top levels; numbers compare as serde_json compares them.
        let a =
            r#"{"spec": {"a": 1, "b": [1, {"x": "y", "z": null}]}, "metadata": {"labels": null}}"#;
        let b = r#"{ "metadata" : {}, "spec": {"b": [1, {"z": null, "\u0078": "y"}], "a": 1}}"#;
        assert!(same_template(Some(a), Some(b)));
        let c = r#"{"spec": {"a": 1, "b": [1, {"x": "y"}]}}"#;
        assert!(!same_template(Some(a), Some(c)), "a deep null is a member");
        assert!(!same_template(
            Some(r#"{"spec": {"a": 1}}"#),
            Some(r#"{"spec": {"a": 1.0}}"#)
        ));
        assert!(!same_template(
            Some(r#"{"spec": [1, 2]}"#),
            Some(r#"{"spec": [2, 1]}"#)
        ));
        assert!(same_template(Some("3"), Some(" 3")));
    }

    #[test]
    fn the_forecast_is_a_lease_scope_change_at_the_next_rollout() {
        let d = |scope: Option<&str>| {
            let mut d = json!({"metadata": {"name": "web"}, "spec": {"template": {}}});
            if let Some(s) = scope {
                d["spec"]["template"]["metadata"] =
                    json!({"annotations": {LEASE_SCOPE_ANNOTATION: s}});
            }
            d
        };
        assert!(lease_scope_changes(&d(None), true));
        assert!(!lease_scope_changes(&d(Some("deployment/web")), true));
        assert!(lease_scope_changes(&d(Some("deployment/other")), true));
        assert!(lease_scope_changes(&d(Some("deployment/web")), false));
        assert!(!lease_scope_changes(&d(None), false));
    }
}
