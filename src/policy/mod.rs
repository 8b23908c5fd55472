//! The cluster policies, one module each, all behind [`Policy`].
//!
//! A policy looks at the object through a [`Context`] and edits it through a
//! [`Mutation`]; it never builds a patch or a response itself. Which policies
//! run for which request is decided by [`Policy::handles`], so the pipeline
//! stays a plain loop.
//!
//! | policy            | kind       | operations      |
//! |-------------------|------------|-----------------|
//! | `lease`           | Pod        | CREATE          |
//! | `dns`             | Pod        | CREATE          |
//! | `prestop`         | Pod        | CREATE          |
//! | `rollout`         | Deployment | CREATE, UPDATE  |
//! | `rollout-history` | Deployment | UPDATE          |

use crate::config::Config;
use crate::patch::Mutation;
use kube::core::admission::Operation;
use serde_json::Value;

pub mod dns;
pub mod lease;
pub mod prestop;
pub mod rollout;
pub mod rollout_history;

/// The kinds calmplane mutates. Everything else is allowed untouched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `v1 Pod`: lease selectors, DNS options and preStop hooks live here.
    Pod,
    /// `apps/v1 Deployment`: rollout strategy and rollout history live here.
    Deployment,
}

impl Kind {
    /// Match on group/version/kind exactly: with `matchPolicy: Equivalent` the
    /// apiserver converts other versions to the one we registered.
    pub fn from_gvk(group: &str, version: &str, kind: &str) -> Option<Kind> {
        match (group, version, kind) {
            ("", "v1", "Pod") => Some(Kind::Pod),
            ("apps", "v1", "Deployment") => Some(Kind::Deployment),
            _ => None,
        }
    }

    /// From an object's own `apiVersion` and `kind` (used by preview).
    pub fn from_object(obj: &Value) -> Option<Kind> {
        let api_version = obj.get("apiVersion")?.as_str()?;
        let kind = obj.get("kind")?.as_str()?;
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        Kind::from_gvk(group, version, kind)
    }

    /// The Kubernetes kind name, e.g. `Pod`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Pod => "Pod",
            Kind::Deployment => "Deployment",
        }
    }
}

/// What a policy may know about the request besides the object itself.
#[derive(Debug, Clone)]
pub struct Context<'a> {
    /// The object's kind, already accepted by [`Policy::handles`]; there for a
    /// policy that acts differently per kind.
    pub kind: Kind,
    /// CREATE or UPDATE: some edits are only safe, or only needed, on one.
    pub operation: Operation,
    /// The request's namespace, falling back to the object's own.
    pub namespace: Option<&'a str>,
    /// The object before an UPDATE; `rollout-history` compares templates with it.
    pub old_object: Option<&'a Value>,
    /// The two pod templates of an UPDATE as text; see
    /// [`Request::templates`](crate::pipeline::Request::templates).
    pub templates: Option<crate::view::Templates<'a>>,
    /// Unix seconds, taken once per request from the pipeline's clock.
    pub now: i64,
}

/// One cluster policy.
pub trait Policy: Send + Sync {
    /// The name used in `calmplane.dev/skip`, audit annotations, metrics and changes.
    fn name(&self) -> &'static str;

    /// Whether this policy runs for this kind and operation.
    fn handles(&self, kind: Kind, operation: &Operation) -> bool;

    /// Edit the object. Every edit goes through `m`, which records the patch.
    fn apply(&self, ctx: &Context<'_>, m: &mut Mutation);
}

/// One entry of the policy list: a name and how the policy file builds it.
pub struct Entry {
    /// The policy's name ([`Policy::name`]), known without building it, for
    /// `calmplane.dev/skip` checks and reports.
    pub name: &'static str,
    /// The policy as the policy file configures it; `None` when it is disabled.
    pub build: fn(&Config) -> Option<Box<dyn Policy>>,
}

/// Every policy, in pipeline order. This is the one list: the pipeline, the
/// skip annotation's names and the reports all read it.
pub const ALL: [Entry; 5] = [
    Entry {
        name: lease::NAME,
        build: lease::build,
    },
    Entry {
        name: rollout_history::NAME,
        build: rollout_history::build,
    },
    Entry {
        name: dns::NAME,
        build: dns::build,
    },
    Entry {
        name: prestop::NAME,
        build: prestop::build,
    },
    Entry {
        name: rollout::NAME,
        build: rollout::build,
    },
];

/// The names of every policy, in pipeline order, read off [`ALL`].
pub const NAMES: [&str; ALL.len()] = {
    let mut names = [""; ALL.len()];
    let mut i = 0;
    while i < ALL.len() {
        names[i] = ALL[i].name;
        i += 1;
    }
    names
};

/// The indexes and values of `spec.containers` (or another container list)
/// that are objects.
pub(crate) fn containers<'v>(
    obj: &'v Value,
    list: &str,
) -> impl Iterator<Item = (usize, &'v serde_json::Map<String, Value>)> {
    obj.get("spec")
        .and_then(|s| s.get(list))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
        .filter_map(|(i, c)| c.as_object().map(|c| (i, c)))
}

/// A pod that will run on Windows: `spec.os.name: windows`, or pinned to
/// Windows nodes by `nodeSelector` (the older and still common way, used by
/// every Windows DaemonSet in sig-windows-tools).
pub(crate) fn is_windows(obj: &Value) -> bool {
    use crate::patch::str_at;
    str_at(obj, &["spec", "os", "name"]) == Some("windows")
        || str_at(obj, &["spec", "nodeSelector", "kubernetes.io/os"]) == Some("windows")
}
