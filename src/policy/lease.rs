//! `lease`: one Lease per namespace instead of one per pod.
//!
//! Workloads that select their coordination.k8s.io Lease with
//! `metadata.name=<pod>` write one Lease per pod; at 150 pods that was 30,000
//! writes a second to etcd. This policy rewrites such selectors, wherever the
//! pod carries them, to `metadata.namespace=<ns>`. A webhook never sees the
//! reads, so the selectors it can fix are the ones written into the pod:
//!
//! * annotations (default `calmplane.dev/lease-selector`);
//! * `env[].value` of containers and init containers (default `LEASE_SELECTOR`);
//! * container args `--lease-selector=SEL` or `--lease-selector SEL`.
//!
//! A pod annotated `calmplane.dev/lease-scope: deployment/<name>` (set on hot
//! Deployments by `rollout-history`) gets `metadata.name=<name>` instead: one
//! Lease per Deployment. Selectors that do not parse are left alone, with a
//! warning.

use super::apiserver::InApiserver;
use super::{containers, Context, Definition, Kind, Policy, Reads};
use crate::annotations::{LeaseScope, LEASE_SCOPE, LEASE_SELECTOR};
use crate::patch::{str_at, Mutation};
use crate::selector::{self, Scope};
use crate::view::Shape;
use kube::core::admission::Operation;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The policy's name in `calmplane.dev/skip`, metrics and changes.
pub const NAME: &str = "lease";

/// Why `lease` is not exported as a MutatingAdmissionPolicy.
pub const LEASE_STAYS: &str = "a field selector is rewritten term by term with the apimachinery grammar: \
terms split at commas that are not escaped (`\\,`), and the first of `!=`, `==`, `=` is the operator. \
CEL has split, replace and matches, but no regex replace and no functions of one's own, so it cannot \
tell an escaped comma from a separator; a rewrite that splits there writes a selector that matches \
another Lease, or none. A selector that does not parse is left alone with a warning, and a \
MutatingAdmissionPolicy cannot warn. It stays in the webhook";

/// What the policy rewrites a per-pod selector to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LeaseMode {
    /// Rewrite `metadata.name=<pod>` to `metadata.namespace=<ns>`.
    Namespace,
    /// Leave selectors alone (one lease per pod).
    Pod,
}

/// The `lease` section. The selector can hide in three places in a pod, so
/// each has its own list of names to look under.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Settings {
    /// `namespace` rewrites; `pod` keeps the section but the policy does not run.
    pub mode: LeaseMode,
    /// Pod annotation keys whose value is a lease selector.
    pub annotations: Vec<String>,
    /// Container env var names whose `value` is a lease selector.
    pub env_names: Vec<String>,
    /// Container flags (`--flag=SEL` or `--flag SEL`) that take a lease selector.
    pub flags: Vec<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            mode: LeaseMode::Namespace,
            annotations: vec![LEASE_SELECTOR.to_string()],
            env_names: vec!["LEASE_SELECTOR".to_string()],
            flags: vec!["--lease-selector".to_string()],
        }
    }
}

impl super::Settings for Settings {
    fn check(&self) -> Result<(), (&'static str, String)> {
        if self
            .annotations
            .iter()
            .any(|a| a.is_empty() || a.len() > 317)
        {
            return Err((
                "annotations",
                "keys must be non-empty annotation keys".into(),
            ));
        }
        if self.env_names.iter().any(String::is_empty) {
            return Err(("envNames", "names must be non-empty".into()));
        }
        if let Some(f) = self
            .flags
            .iter()
            .find(|f| !f.starts_with('-') || f.contains('='))
        {
            return Err((
                "flags",
                format!("{f:?} must start with '-' and contain no '='"),
            ));
        }
        Ok(())
    }
}

/// The policy.
pub struct Lease {
    cfg: Settings,
}

impl Definition for Lease {
    const NAME: &'static str = NAME;
    const SECTION: &'static str = "lease";
    const COUNTS: &'static str = "pods whose lease selectors are rewritten";
    type Settings = Settings;

    fn new(cfg: Settings) -> Self {
        Lease { cfg }
    }
}

/// The longest selector the policy rewrites. A lease selector is a term or
/// two of names of at most 253 characters; anything longer is not one, and
/// copying it to parse, rewrite and quote it would cost memory the view's
/// budget does not see ([`crate::budget`]). Longer ones are left alone, with
/// a warning.
pub const MAX_SELECTOR_BYTES: usize = 4096;

/// One selector found in the pod: where it is, the text, and how to write it back.
struct Found {
    path: Vec<String>,
    /// The selector, or its length when it is longer than [`MAX_SELECTOR_BYTES`].
    selector: Result<String, usize>,
    /// `--flag=` for a joined flag argument, empty otherwise.
    prefix: String,
}

impl Found {
    fn new(path: Vec<String>, selector: &str, prefix: String) -> Found {
        Found {
            path,
            selector: if selector.len() > MAX_SELECTOR_BYTES {
                Err(selector.len())
            } else {
                Ok(selector.to_string())
            },
            prefix,
        }
    }
}

impl Policy for Lease {
    fn name(&self) -> &'static str {
        NAME
    }

    fn handles(&self, kind: Kind, operation: &Operation) -> bool {
        kind == Kind::Pod
            && *operation == Operation::Create
            && self.cfg.mode == LeaseMode::Namespace
    }

    fn in_apiserver(&self) -> InApiserver {
        InApiserver::Stays(LEASE_STAYS)
    }

    fn reads(&self, reads: &mut Reads) {
        if self.cfg.mode != LeaseMode::Namespace {
            return;
        }
        for list in ["containers", "initContainers"] {
            reads.shape(
                Kind::Pod,
                Shape::at(&["spec", list, "*", "env"], Shape::EnvVars),
            );
            reads.shape(
                Kind::Pod,
                Shape::at(&["spec", list, "*", "args"], Shape::All),
            );
        }
        reads.keys(
            self.cfg
                .annotations
                .iter()
                .cloned()
                .chain([LEASE_SCOPE.to_string()]),
            self.cfg.env_names.iter().cloned(),
        );
    }

    fn apply(&self, ctx: &Context<'_>, m: &mut Mutation) {
        let found = self.find(m.doc());
        if found.is_empty() {
            return;
        }
        let deployment = hot_deployment(m);
        let scope = match (&deployment, ctx.namespace) {
            (Some(name), _) => Scope::Name(name),
            (None, Some(ns)) if !ns.is_empty() => Scope::Namespace(ns),
            (None, _) => {
                m.warn("calmplane lease: selectors left unchanged: the request has no namespace");
                return;
            }
        };
        for f in found {
            let selector = match f.selector {
                Ok(selector) => selector,
                Err(len) => {
                    m.warn(format!(
                        "calmplane lease: selector at /{} left unchanged: it is {len} bytes long, more than a lease selector ({MAX_SELECTOR_BYTES})",
                        f.path.join("/")
                    ));
                    continue;
                }
            };
            let new = match selector::rewrite(&selector, scope) {
                Ok(Some(new)) => new,
                Ok(None) => continue,
                Err(e) => {
                    m.warn(format!("calmplane lease: selector left unchanged: {e}"));
                    continue;
                }
            };
            let why = match scope {
                Scope::Namespace(_) => "one lease per namespace",
                Scope::Name(_) => "one lease per hot Deployment",
            };
            let message = format!("lease selector {selector:?} -> {new:?} ({why})");
            let path: Vec<&str> = f.path.iter().map(String::as_str).collect();
            m.set(&path, Value::String(format!("{}{new}", f.prefix)), message);
        }
    }
}

/// The Deployment named by `calmplane.dev/lease-scope: deployment/<name>`, if any.
fn hot_deployment(m: &mut Mutation) -> Option<String> {
    let value = str_at(m.doc(), &["metadata", "annotations", LEASE_SCOPE])?;
    match LeaseScope::parse(value) {
        Some(scope) => Some(scope.deployment.to_string()),
        None => {
            let warning = format!(
                "calmplane lease: ignoring {LEASE_SCOPE}={value:?}: expected deployment/<name>"
            );
            m.warn(warning);
            None
        }
    }
}

impl Lease {
    /// The lease selectors written into `pod`, where this policy looks for
    /// them (`calmplane audit` counts and resolves them).
    pub fn selectors(&self, pod: &Value) -> Vec<String> {
        self.find(pod)
            .into_iter()
            .filter_map(|f| f.selector.ok())
            .collect()
    }

    fn find(&self, pod: &Value) -> Vec<Found> {
        let mut found = Vec::new();
        for key in &self.cfg.annotations {
            if let Some(sel) = str_at(pod, &["metadata", "annotations", key]) {
                found.push(Found::new(
                    vec!["metadata".into(), "annotations".into(), key.clone()],
                    sel,
                    String::new(),
                ));
            }
        }
        for list in ["initContainers", "containers"] {
            for (i, c) in containers(pod, list) {
                let base = ["spec".to_string(), list.to_string(), i.to_string()];
                for (j, env) in c
                    .get("env")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .enumerate()
                {
                    let name = env.get("name").and_then(Value::as_str);
                    let value = env.get("value").and_then(Value::as_str);
                    if let (Some(name), Some(value)) = (name, value) {
                        if self.cfg.env_names.iter().any(|n| n == name) {
                            let mut path = base.to_vec();
                            path.extend(["env".into(), j.to_string(), "value".into()]);
                            found.push(Found::new(path, value, String::new()));
                        }
                    }
                }
                let args: Vec<Option<&str>> = c
                    .get("args")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .map(Value::as_str)
                    .collect();
                for (k, arg) in args.iter().enumerate() {
                    let Some(arg) = arg else { continue };
                    for flag in &self.cfg.flags {
                        let arg_path = |k: usize| {
                            let mut path = base.to_vec();
                            path.extend(["args".into(), k.to_string()]);
                            path
                        };
                        if let Some(sel) = arg
                            .strip_prefix(flag.as_str())
                            .and_then(|r| r.strip_prefix('='))
                        {
                            found.push(Found::new(arg_path(k), sel, format!("{flag}=")));
                        } else if *arg == flag.as_str() {
                            if let Some(Some(sel)) = args.get(k + 1) {
                                found.push(Found::new(arg_path(k + 1), sel, String::new()));
                            }
                        }
                    }
                }
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::{FixedClock, Pipeline};
    use serde_json::json;
    use std::sync::Arc;

    #[test]
    fn a_selector_longer_than_any_lease_selector_is_left_alone_with_a_warning() {
        let long = format!("metadata.name={}", "p".repeat(MAX_SELECTOR_BYTES));
        let pod = json!({
            "metadata": {"annotations": {LEASE_SELECTOR: long}},
            "spec": {"containers": [{"name": "c", "env": [{"name": "LEASE_SELECTOR", "value": "metadata.name=p"}]}]}
        });
        let pipeline = Pipeline::from_policies(
            vec![Box::new(Lease::new(Settings::default()))],
            Arc::new(FixedClock(0)),
        );
        let request = Context::new(Kind::Pod, Operation::Create).in_namespace(Some("ns"));
        let outcome = pipeline.run(&request, pod);
        // The short one is rewritten; the long one is not, and not quoted.
        assert_eq!(outcome.patch.len(), 1);
        assert_eq!(
            outcome.object["spec"]["containers"][0]["env"][0]["value"],
            "metadata.namespace=ns"
        );
        assert_eq!(outcome.warnings.len(), 1, "{:?}", outcome.warnings);
        let warning = &outcome.warnings[0];
        assert!(
            warning.contains("/metadata/annotations/calmplane.dev/lease-selector"),
            "{warning}"
        );
        assert!(
            warning.contains(&format!("{} bytes", MAX_SELECTOR_BYTES + 14)),
            "{warning}"
        );
        assert!(warning.len() < 300, "{warning}");
    }
}
