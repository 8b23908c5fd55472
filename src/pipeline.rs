//! Runs the policies over one object and collects the result.
//!
//! ```text
//! object (serde_json::Value, owned)
//!   └─ for each policy that handles (kind, operation) and is not skipped:
//!        policy.apply(&ctx, &mut Mutation)     // edits in place, records ops
//!   └─ Outcome { object, patch ops, changes, warnings, policies }
//! ```
//!
//! The pipeline knows nothing of HTTP or AdmissionReview; `review` and
//! `preview` wrap it.

use crate::config::Config;
use crate::patch::{str_at, Change, Mutation};
use crate::policy::{self, Context, Kind, Policy};
use json_patch::PatchOperation;
use serde_json::Value;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// The source of "now". Injectable so that rollout history can be tested.
pub trait Clock: Send + Sync {
    /// Seconds since the Unix epoch.
    fn now_unix(&self) -> i64;
}

/// The wall clock, for the server. A clock before 1970 reads as 0 rather than
/// failing a request.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_unix(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64)
    }
}

/// A fixed clock, for tests and reproducible previews.
pub struct FixedClock(pub i64);

impl Clock for FixedClock {
    fn now_unix(&self) -> i64 {
        self.0
    }
}

/// The enabled policies, built once per policy file and shared by every request.
pub struct Pipeline {
    policies: Vec<Box<dyn Policy>>,
    /// What these policies read, for the view `/mutate` builds.
    reads: crate::view::Reads,
    /// Names of the policies in `enforcement: report`: run, never patched.
    report_only: Vec<&'static str>,
    clock: Arc<dyn Clock>,
}

/// What the policies in `enforcement: report` would have done.
#[derive(Debug, Default)]
pub struct Reported {
    /// Names of the report-only policies that would have changed the object.
    pub policies: Vec<&'static str>,
    /// Their changes, as they would have been made.
    pub changes: Vec<Change>,
    /// Their warnings, kept out of the response: the change was not made.
    pub warnings: Vec<String>,
}

/// What the pipeline did to one object.
#[derive(Debug)]
pub struct Outcome {
    /// The object after every edit, so `preview` can show the result
    /// without applying the patch.
    pub object: Value,
    /// The RFC 6902 operations that turn the admitted object into `object`;
    /// empty when nothing changed.
    pub patch: Vec<PatchOperation>,
    /// One entry per edit, for people: who changed what, and why.
    pub changes: Vec<Change>,
    /// Messages for the user (AdmissionResponse.warnings), such as a
    /// selector that did not parse.
    pub warnings: Vec<String>,
    /// Names of the policies that changed the object, in order.
    pub policies: Vec<&'static str>,
    /// Report-only policies' changes, which are not in `patch` or `object`.
    pub reported: Reported,
}

impl Outcome {
    /// The outcome of running no policy: `object` as it came, with no patch.
    pub fn unchanged(object: Value) -> Self {
        Outcome {
            object,
            patch: Vec::new(),
            changes: Vec::new(),
            warnings: Vec::new(),
            policies: Vec::new(),
            reported: Reported::default(),
        }
    }
}

/// The request facts the pipeline needs, independent of how they arrived.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// Picks the policies that run: each handles only some kinds.
    pub kind: Kind,
    /// Picks the policies that run: some only act on CREATE, some on UPDATE.
    pub operation: kube::core::admission::Operation,
    /// The request's namespace, which is authoritative: the object's own
    /// metadata may leave it to the URL. Falls back to the object's.
    pub namespace: Option<&'a str>,
    /// The object before an UPDATE, so a policy can tell what the update changes.
    pub old_object: Option<&'a Value>,
    /// The pod templates of a Deployment UPDATE as text, which
    /// `rollout-history` compares. Required when `object` and `old_object`
    /// are views ([`crate::view`]), whose templates are not all there; when
    /// `None`, the templates of the two values are compared.
    pub templates: Option<crate::view::Templates<'a>>,
}

impl Pipeline {
    /// The policies the policy file enables, in [`policy::ALL`] order.
    pub fn new(config: &Config, clock: Arc<dyn Clock>) -> Self {
        let policies = policy::ALL
            .iter()
            .filter_map(|entry| (entry.build)(config))
            .collect();
        let report_only = policy::ALL
            .iter()
            .map(|entry| entry.name)
            .filter(|name| config.enforcement(name) == crate::config::Enforcement::Report)
            .collect();
        Pipeline {
            policies,
            reads: crate::view::Reads::new(config),
            report_only,
            clock,
        }
    }

    /// A pipeline of exactly these policies (tests inject their own). What
    /// they read is unknown, so a view of an object keeps every annotation
    /// and variable.
    pub fn from_policies(policies: Vec<Box<dyn Policy>>, clock: Arc<dyn Clock>) -> Self {
        Pipeline {
            policies,
            reads: crate::view::Reads::everything(),
            report_only: Vec::new(),
            clock,
        }
    }

    /// What the policies read, for [`review::parse`](crate::review::parse).
    pub fn reads(&self) -> &crate::view::Reads {
        &self.reads
    }

    /// The unix time the pipeline's clock reads now.
    pub fn now_unix(&self) -> i64 {
        self.clock.now_unix()
    }

    /// The policies of an empty policy file, on the wall clock.
    pub fn with_defaults() -> Self {
        Pipeline::new(&Config::default(), Arc::new(SystemClock))
    }

    /// Run every policy that handles `req` and is not skipped by the object's
    /// `calmplane.dev/skip` annotation. Never fails: a policy that cannot act
    /// leaves the object alone and says why in the warnings.
    pub fn run(&self, req: &Request<'_>, object: Value) -> Outcome {
        self.run_on(req, Mutation::new(object))
    }

    /// [`Pipeline::run`] on a view of the object built with `shape` and this
    /// pipeline's [`reads`](Pipeline::reads): writes outside the view are
    /// refused ([`Mutation::in_view`]).
    pub fn run_in_view(
        &self,
        req: &Request<'_>,
        view: Value,
        shape: &'static crate::view::Shape,
    ) -> Outcome {
        self.run_on(req, Mutation::in_view(view, shape, &self.reads))
    }

    fn run_on(&self, req: &Request<'_>, mut m: Mutation<'_>) -> Outcome {
        let object = m.doc();
        let namespace = req
            .namespace
            .filter(|ns| !ns.is_empty())
            .or_else(|| str_at(object, &["metadata", "namespace"]).filter(|ns| !ns.is_empty()))
            .map(str::to_string);
        let skip_value = str_at(object, &["metadata", "annotations", crate::SKIP_ANNOTATION])
            .map(str::to_string);
        let skip = Skip::parse(skip_value.as_deref());
        let ctx = Context {
            kind: req.kind,
            operation: req.operation.clone(),
            namespace: namespace.as_deref(),
            old_object: req.old_object,
            templates: req.templates,
            now: self.clock.now_unix(),
        };
        if let Some(value) = skip_value.as_deref() {
            let unknown = unknown_skip_names(value);
            if !unknown.is_empty() {
                m.warn(format!(
                    "calmplane: {} names unknown policies {unknown:?}; known: all, {}",
                    crate::SKIP_ANNOTATION,
                    policy::NAMES.join(", ")
                ));
            }
        }
        let mut applied = Vec::new();
        let mut reported = Reported::default();
        for policy in &self.policies {
            if !policy.handles(req.kind, &req.operation) || skip.skips(policy.name()) {
                continue;
            }
            if self.report_only.contains(&policy.name()) {
                // On a copy: later policies must see the object as it will be
                // admitted, without this policy's edits.
                let mut scratch = m.scratch();
                scratch.begin(policy.name());
                policy.apply(&ctx, &mut scratch);
                let (_, ops, changes, warnings) = scratch.into_parts();
                if !ops.is_empty() {
                    reported.policies.push(policy.name());
                }
                reported.changes.extend(changes);
                reported.warnings.extend(warnings);
                continue;
            }
            let before = m.ops().len();
            m.begin(policy.name());
            policy.apply(&ctx, &mut m);
            if m.ops().len() > before {
                applied.push(policy.name());
            }
        }
        let (object, patch, changes, warnings) = m.into_parts();
        Outcome {
            object,
            patch,
            changes,
            warnings,
            policies: applied,
            reported,
        }
    }
}

/// The `calmplane.dev/skip` annotation: `all`, or a comma list of policy names.
enum Skip<'a> {
    None,
    All,
    Some(&'a str),
}

impl<'a> Skip<'a> {
    fn parse(value: Option<&'a str>) -> Skip<'a> {
        match value.map(str::trim) {
            None | Some("") => Skip::None,
            Some(v) if v.split(',').any(|p| p.trim() == "all") => Skip::All,
            Some(v) => Skip::Some(v),
        }
    }

    fn skips(&self, policy: &str) -> bool {
        match self {
            Skip::None => false,
            Skip::All => true,
            Skip::Some(list) => list.split(',').any(|p| p.trim() == policy),
        }
    }
}

/// Policy names in `calmplane.dev/skip` that match no policy (likely typos).
pub fn unknown_skip_names(value: &str) -> Vec<&str> {
    value
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty() && *p != "all" && !policy::NAMES.contains(p))
        .collect()
}
