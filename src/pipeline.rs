//! Runs the policies over one object and collects the result.
//!
//! ```text
//! object (serde_json::Value, owned; or a view of it)
//!   └─ for each policy that handles (kind, operation) and is not skipped:
//!        policy.apply(&ctx, &mut Mutation)     // edits in place, records ops
//!   └─ Outcome { object, patch ops, changes, warnings, policies }
//! ```
//!
//! The pipeline knows nothing of HTTP or AdmissionReview; `review` and
//! `preview` wrap it.

use crate::annotations::{self, Skip};
use crate::config::{Config, ConfigError, Enforcement};
use crate::patch::{str_at, Change, Mutation};
use crate::policy::{self, Context, Policy, Reads};
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
    /// What these policies read, merged: the view `/mutate` builds.
    reads: Reads,
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

impl Pipeline {
    /// The policies the policy file enables, in [`policy::ALL`] order, and
    /// what they read. Fails on a section or a setting no policy accepts.
    pub fn new(config: &Config, clock: Arc<dyn Clock>) -> Result<Self, ConfigError> {
        let mut policies = Vec::new();
        let mut reads = Reads::base();
        let mut report_only = Vec::new();
        for configured in policy::configure(config)? {
            if !configured.enabled {
                continue;
            }
            let policy = configured.policy;
            policy.reads(&mut reads);
            if configured.enforcement == Enforcement::Report {
                report_only.push(policy.name());
            }
            policies.push(policy);
        }
        Ok(Pipeline {
            policies,
            reads,
            report_only,
            clock,
        })
    }

    /// A pipeline of exactly these policies (tests inject their own). The
    /// view of an object keeps everything, so that a policy that declares
    /// less than it reads is caught by the tests that compare views with
    /// whole objects, not here.
    pub fn from_policies(policies: Vec<Box<dyn Policy>>, clock: Arc<dyn Clock>) -> Self {
        Pipeline {
            policies,
            reads: Reads::everything(),
            report_only: Vec::new(),
            clock,
        }
    }

    /// What the policies read, for [`review::parse`](crate::review::parse).
    pub fn reads(&self) -> &Reads {
        &self.reads
    }

    /// The policies that run, in order.
    pub fn policies(&self) -> impl Iterator<Item = &dyn Policy> {
        self.policies.iter().map(|p| &**p)
    }

    /// The policy of type `P`, if it runs: for a caller that needs one
    /// policy's own methods (`calmplane audit` and the `lease` policy's
    /// selectors).
    pub fn policy<P: Policy>(&self) -> Option<&P> {
        self.policies
            .iter()
            .find_map(|p| (&**p as &dyn std::any::Any).downcast_ref::<P>())
    }

    /// The unix time the pipeline's clock reads now.
    pub fn now_unix(&self) -> i64 {
        self.clock.now_unix()
    }

    /// The policies of an empty policy file, on the wall clock.
    pub fn with_defaults() -> Self {
        Pipeline::new(&Config::default(), Arc::new(SystemClock))
            .expect("the defaults are a valid policy file")
    }

    /// Run every policy that handles `ctx` and is not skipped by the object's
    /// `calmplane.dev/skip` annotation. Never fails: a policy that cannot act
    /// leaves the object alone and says why in the warnings.
    pub fn run(&self, ctx: &Context<'_>, object: Value) -> Outcome {
        self.run_on(ctx, Mutation::new(object))
    }

    /// [`Pipeline::run`] on a view of the object, built with the shape of
    /// this pipeline's [`reads`](Pipeline::reads) for its kind: writes
    /// outside the view are refused ([`Mutation::in_view`]).
    pub fn run_in_view(&self, ctx: &Context<'_>, view: Value) -> Outcome {
        let shape = self.reads.shape_of(Some(ctx.kind));
        self.run_on(
            ctx,
            Mutation::in_view(view, shape, self.reads.keys_to_build()),
        )
    }

    fn run_on(&self, req: &Context<'_>, mut m: Mutation<'_>) -> Outcome {
        let object = m.doc();
        let namespace = req
            .namespace
            .filter(|ns| !ns.is_empty())
            .or_else(|| str_at(object, &["metadata", "namespace"]).filter(|ns| !ns.is_empty()))
            .map(str::to_string);
        let skip_value =
            str_at(object, &["metadata", "annotations", annotations::SKIP]).map(str::to_string);
        let ctx = Context {
            namespace: namespace.as_deref(),
            now: self.clock.now_unix(),
            ..req.clone()
        };
        let mirror = ctx.kind == policy::Kind::Pod
            && str_at(object, &["metadata", "annotations", annotations::MIRROR]).is_some();
        let skip = if mirror {
            Skip::All
        } else {
            Skip::parse(skip_value.as_deref())
        };
        let unknown = skip.unknown(policy::is_name);
        if mirror {
            m.warn(format!(
                "calmplane: a mirror Pod ({}): the kubelet runs its static manifest, so no policy changes it",
                annotations::MIRROR
            ));
        }
        if !unknown.is_empty() {
            let known: Vec<&str> = policy::names().collect();
            m.warn(format!(
                "calmplane: {} names unknown policies {unknown:?}; known: all, {}",
                annotations::SKIP,
                known.join(", ")
            ));
        }
        let mut applied = Vec::new();
        let mut reported = Reported::default();
        for policy in &self.policies {
            if !policy.handles(ctx.kind, &ctx.operation) || skip.skips(policy.name()) {
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
