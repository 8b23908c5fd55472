//! Per-policy behaviour, as issue #2 states it: one module per policy, and
//! `skip` for opting out and `over_tls` for `/mutate` itself.
//!
//! Most cases run through the in-process [`Pipeline`] with a [`FixedClock`];
//! `over_tls` sends the same kind of objects through `/mutate`.
//!
//! Every patched object goes through [`Harness::admit`] (or
//! [`PyChecks::add`] for the TLS cases), which checks that:
//! * the patch applied with the Rust `json-patch` crate gives calmplane's object;
//! * feeding the patched object back (same operation, same oldObject) gives no patch;
//! * at the end of the test, Python `jsonpatch` applies the patch to the
//!   original and gets the same object (tests/pycheck.py), and the object
//!   passes `kubernetes-validate --strict -k 1.34.0`.

mod dns;
mod lease;
mod over_tls;
mod prestop;
mod rollout;
mod rollout_history;
mod skip;

use calmplane::annotations;
use calmplane::config::Config;
use calmplane::pipeline::{FixedClock, Outcome, Pipeline};
use calmplane::policy::{self, Context, Kind};
use calmplane_testkit::harness::*;
use calmplane_testkit::pychecks::PyChecks;
use calmplane_testkit::review;
use kube::core::admission::Operation;
use serde_json::{json, Value};

/// The fixed "now" of the in-process cases (2025-12-29T09:20:00Z).
const NOW: i64 = 1_767_000_000;

struct Harness {
    pipeline: Pipeline,
    py: PyChecks,
}

impl Harness {
    fn new(config: &Config) -> Harness {
        Harness::at(config, NOW)
    }

    fn at(config: &Config, now: i64) -> Harness {
        Harness {
            pipeline: Pipeline::new(config, std::sync::Arc::new(FixedClock(now)))
                .expect("a valid policy file"),
            py: PyChecks::new(),
        }
    }

    /// Run the pipeline, check the patch both ways and the second pass.
    fn admit(
        &mut self,
        name: &str,
        kind: Kind,
        operation: Operation,
        namespace: &str,
        object: &Value,
        old: Option<&Value>,
    ) -> Outcome {
        let req = Context::new(kind, operation.clone())
            .in_namespace(Some(namespace))
            .replacing(old, None);
        let out = self.pipeline.run(&req, object.clone());
        // `/mutate` reads only the view of the object: it must do the same.
        if let Err(e) = review::view_matches_whole(
            &self.pipeline,
            kind,
            calmplane::review::operation_str(&operation),
            Some(namespace),
            object,
            old,
            &out,
        ) {
            panic!("{name}: {e}");
        }
        for change in &out.changes {
            assert!(
                out.policies.contains(&change.policy),
                "{name}: change by {} but policies = {:?}",
                change.policy,
                out.policies
            );
        }
        if out.patch.is_empty() {
            assert_eq!(
                &out.object, object,
                "{name}: no patch, yet the object changed"
            );
            assert!(out.policies.is_empty(), "{name}: {:?}", out.policies);
            return out;
        }
        let patch = serde_json::to_value(&out.patch).unwrap();
        assert_eq!(
            apply_patch(object, &patch),
            out.object,
            "{name}: the json-patch crate does not reproduce the object from the patch {patch:#}"
        );
        let again = self.pipeline.run(&req, out.object.clone());
        assert!(
            again.patch.is_empty(),
            "{name}: the second pass patched again: {:#}",
            serde_json::to_value(&again.patch).unwrap()
        );
        self.py.add(name, object, &patch, &out.object);
        out
    }

    fn pod(&mut self, name: &str, namespace: &str, pod: &Value) -> Outcome {
        self.admit(name, Kind::Pod, Operation::Create, namespace, pod, None)
    }

    fn create(&mut self, name: &str, deployment: &Value) -> Outcome {
        self.admit(
            name,
            Kind::Deployment,
            Operation::Create,
            "shop",
            deployment,
            None,
        )
    }

    fn update(&mut self, name: &str, deployment: &Value, old: &Value) -> Outcome {
        self.admit(
            name,
            Kind::Deployment,
            Operation::Update,
            "shop",
            deployment,
            Some(old),
        )
    }

    fn finish(self) {
        self.py.run();
    }
}

/// A policy file, as a user would write it.
fn config(yaml: &str) -> Config {
    Config::from_yaml(yaml, "test.yaml").expect("a valid policy file")
}

/// Defaults with every policy but `name` turned off: `enabled: false` in
/// every other policy's section, from the one list of policies.
fn only(name: &str) -> Config {
    only_with(name, "")
}

/// [`only`], with `settings` (YAML flow mapping entries) in `name`'s section.
fn only_with(name: &str, settings: &str) -> Config {
    let yaml: String = policy::ALL
        .iter()
        .map(|e| {
            if e.name == name {
                format!("{}: {{{settings}}}\n", e.section)
            } else {
                format!("{}: {{enabled: false}}\n", e.section)
            }
        })
        .collect();
    config(&yaml)
}

fn patch_json(out: &Outcome) -> Value {
    serde_json::to_value(&out.patch).unwrap()
}

fn paths(out: &Outcome) -> Vec<String> {
    out.patch
        .iter()
        .map(|op| {
            serde_json::to_value(op).unwrap()["path"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

// Objects the policies' cases share.

fn plain_pod(spec_extra: Value) -> Value {
    let mut pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "p", "namespace": "team-a"},
        "spec": {"containers": [{"name": "app", "image": "app:1"}]}
    });
    for (k, v) in spec_extra.as_object().unwrap() {
        pod["spec"][k] = v.clone();
    }
    pod
}

/// A pod whose only selector is the annotation `sel`.
fn annotated_pod(sel: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web-0", "namespace": "team-a",
                     "annotations": {annotations::LEASE_SELECTOR: sel}},
        "spec": {"containers": [{"name": "app", "image": "app:1"}]}
    })
}

fn bare_deployment(strategy: Option<Value>) -> Value {
    let mut d = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                         "spec": {"containers": [{"name": "app", "image": "app:1"}]}}
        }
    });
    if let Some(s) = strategy {
        d["spec"]["strategy"] = s;
    }
    d
}

/// A Deployment whose strategy already satisfies `rollout`, so that only
/// rollout-history can change it.
fn deployment(image: &str, history: Option<&str>, scope: Option<&str>) -> Value {
    let mut d = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "shop", "labels": {"app": "web"}},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "web"}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {"labels": {"app": "web"},
                             "annotations": {annotations::LEASE_SELECTOR: "metadata.name=placeholder"}},
                "spec": {"containers": [{
                    "name": "app", "image": image,
                    "args": ["--lease-selector", "metadata.name=placeholder,app=web"]
                }]}
            }
        }
    });
    if let Some(history) = history {
        d["metadata"]["annotations"] = json!({ annotations::ROLLOUTS: history });
    }
    if let Some(scope) = scope {
        d["spec"]["template"]["metadata"]["annotations"][annotations::LEASE_SCOPE] = json!(scope);
    }
    d
}

fn history(stamps: &[i64]) -> String {
    stamps
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn selector_pod(skip: Option<&str>) -> Value {
    let mut pod = annotated_pod("metadata.name=web-0");
    if let Some(skip) = skip {
        pod["metadata"]["annotations"][annotations::SKIP] = json!(skip);
    }
    pod
}
