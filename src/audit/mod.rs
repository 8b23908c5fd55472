//! `calmplane audit`: what calmplane would change in a cluster, before any
//! namespace is opted in.
//!
//! ```text
//! List (kubectl get ... -A -o json, or --live)   input::Inventory (cli.rs reads it)
//!   └─ namespaces routed like the webhook          Namespaces, scope::Scope (manifests/base/webhook.yaml)
//!        ├─ every Deployment: Deployment CREATE    Audit::deployments: pipeline::Pipeline (the webhook's)
//!        │    hot or cold?                          hot::judge (ReplicaSets, calmplane.dev/rollouts)
//!        │    what each policy forecasts            policy::Policy::forecast
//!        │    covered by a PodDisruptionBudget?
//!        └─ every Pod: Pod CREATE                   Audit::pods: pipeline::Pipeline
//!             lease selectors found and rewritten   the lease policy's selectors
//!   └─ Lease writes before and after               leases::totals (estimate, or --sample)
//!   └─ the report                                  report::Report: changes by policy name
//!   └─ table or JSON                               render (a column per policy of policy::ALL)
//! ```
//!
//! The per-object changes are exactly the webhook's: the same [`Pipeline`]
//! runs over the same objects, and the counts are kept by policy name, so a
//! new policy is counted with no change here. Two numbers are forecasts, and
//! say so: what a policy says it will change later
//! ([`Policy::forecast`](crate::policy::Policy::forecast): `rollout-history`
//! counts the Deployments whose lease scope the webhook would change at their
//! next rollout), and the Lease totals, which anticipate that hot
//! Deployments' pods share one Lease per Deployment after that rollout.

pub mod cli;
pub mod hot;
pub mod input;
pub mod leases;
pub mod live;
pub mod render;
pub mod report;
pub mod scope;

pub use cli::{run, AuditArgs, Output};
pub use report::{Changes, Details, HotDeployment, NamespaceReport, Report};

use crate::annotations::{LeaseScope, Skip, LEASE_SCOPE};
use crate::config::{Config, ConfigError};
use crate::patch::str_at;
use crate::pipeline::{FixedClock, Pipeline};
use crate::policy::{self, Context, Forecast, Kind};
use crate::selector;
use input::Inventory;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::core::admission::Operation;
use kube::core::{Selector, SelectorExt};
use leases::{Group, LeaseKey, Sample};
use scope::{labels_at, Labels, OptIn, Scope, NAMESPACE_NAME_LABEL};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

/// Why an audit could not run.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The input file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file, or `-` for stdin.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The input is not JSON or YAML (or is truncated).
    #[error("input: {0}")]
    Parse(crate::preview::PreviewError),
    /// A document is not a List.
    #[error("input: document {doc} is {found}, not a v1 List; produce one with `kubectl get pods,deployments,replicasets,leases,namespaces,poddisruptionbudgets -A -o json`")]
    NotAList {
        /// The document's position, from 1.
        doc: usize,
        /// What it is instead.
        found: String,
    },
    /// The policy file is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The embedded webhook configuration cannot be read as routing rules.
    #[error("webhook configuration: {0}")]
    Webhook(String),
    /// `--now` is neither unix seconds nor RFC 3339.
    #[error("--now {0:?}: expected unix seconds or an RFC 3339 time such as 2026-01-01T12:00:00Z")]
    Now(String),
    /// Talking to the cluster failed.
    #[error("{context}: {source}")]
    Kube {
        /// What was being done.
        context: String,
        /// The client's error.
        source: kube::Error,
    },
    /// A runtime or output failure.
    #[error("{0}")]
    Other(String),
}

/// How to audit.
#[derive(Clone, Default)]
pub struct Options {
    /// Audit namespaces that are not opted in too.
    pub all_namespaces: bool,
    /// Unix seconds "now" is.
    pub now: i64,
    /// Measured Lease writes, when sampled.
    pub sample: Option<Sample>,
}

/// Audit `inventory` with the webhook's pipeline for `config`.
pub fn audit(inventory: Inventory, config: &Config, opts: &Options) -> Result<Report, AuditError> {
    let scope = Scope::from_base()?;
    let pipeline = Pipeline::new(config, Arc::new(FixedClock(opts.now)))?;
    // Judged whether or not the policy runs: the report lists hot
    // Deployments either way.
    let limit =
        policy::settings::<policy::rollout_history::RolloutHistory>(config)?.hot_rollouts_per_hour;
    audit_with(inventory, &pipeline, limit, &scope, opts)
}

/// [`audit`] with a given pipeline, `hotRolloutsPerHour` and routing (the
/// pipeline's clock is not used for hotness: `opts.now` is).
pub fn audit_with(
    inventory: Inventory,
    pipeline: &Pipeline,
    hot_limit: u32,
    scope: &Scope,
    opts: &Options,
) -> Result<Report, AuditError> {
    let Inventory {
        namespaces,
        pods,
        deployments,
        replicasets,
        leases,
        pdbs,
        warnings: input_warnings,
    } = inventory;
    let mut audit = Audit {
        pipeline,
        opts,
        hot_limit,
        namespaces: Namespaces::new(&namespaces, scope, opts.all_namespaces),
        owners: Owners::new(replicasets),
        reports: BTreeMap::new(),
        warnings: Warnings::default(),
        hot: Vec::new(),
        groups: BTreeMap::new(),
    };
    let pdbs = audit.pdb_selectors(&pdbs);
    audit.deployments(deployments, &pdbs);
    audit.pods(pods);
    let rates = leases::Rates::new(&leases, opts.sample.as_ref());
    let lease_totals = leases::totals(&leases, &rates, &audit.groups);
    Ok(audit.finish(input_warnings, lease_totals))
}

/// The audit of one inventory, step by step.
struct Audit<'p> {
    pipeline: &'p Pipeline,
    opts: &'p Options,
    /// `hotRolloutsPerHour`, for [`hot::judge`].
    hot_limit: u32,
    namespaces: Namespaces<'p>,
    owners: Owners,
    reports: BTreeMap<String, NamespaceReport>,
    warnings: Warnings,
    /// Every hot Deployment, with its evidence.
    hot: Vec<HotDeployment>,
    /// The Leases whose writes move to a shared Lease, by the Lease they share.
    groups: BTreeMap<Group, BTreeSet<LeaseKey>>,
}

/// Namespaces by name: their labels, and whether and how they are routed.
struct Namespaces<'s> {
    scope: &'s Scope,
    all_namespaces: bool,
    /// Labels, with the name label the apiserver always sets.
    labels: HashMap<String, Labels>,
    states: HashMap<String, NamespaceState>,
    /// Namespaces that objects are in but the input has no Namespace object for.
    missing: BTreeSet<String>,
}

/// One namespace as the audit sees it.
struct NamespaceState {
    opt_in: OptIn,
    /// The labels routing is decided on (pretended under `--all-namespaces`).
    routing: Labels,
}

impl<'s> Namespaces<'s> {
    fn new(namespaces: &[Value], scope: &'s Scope, all_namespaces: bool) -> Self {
        let mut labels = HashMap::new();
        for ns in namespaces {
            let name = name_of(ns);
            let mut l = labels_at(ns, &["metadata", "labels"]);
            l.entry(NAMESPACE_NAME_LABEL.to_string())
                .or_insert_with(|| name.clone());
            labels.insert(name, l);
        }
        Namespaces {
            scope,
            all_namespaces,
            labels,
            states: HashMap::new(),
            missing: BTreeSet::new(),
        }
    }

    /// Whether `ns` is opted in, and the labels routing is decided on.
    fn state_of(&mut self, ns: &str) -> (OptIn, Labels) {
        let Namespaces {
            scope,
            all_namespaces,
            labels,
            states,
            missing,
        } = self;
        let st = states.entry(ns.to_string()).or_insert_with(|| {
            let labels = labels.get(ns).cloned().unwrap_or_else(|| {
                missing.insert(ns.to_string());
                Labels::from([(NAMESPACE_NAME_LABEL.to_string(), ns.to_string())])
            });
            let opt_in = scope.opt_in(&labels);
            let routing = if *all_namespaces {
                scope.pretend(&labels)
            } else {
                labels
            };
            NamespaceState { opt_in, routing }
        });
        (st.opt_in, st.routing.clone())
    }

    /// Whether the webhook for `resource` is called for an object with
    /// `labels` in `ns`, and whether `ns` is opted in.
    fn routes(&mut self, resource: &str, ns: &str, labels: &Labels) -> Option<OptIn> {
        let (opt_in, routing) = self.state_of(ns);
        self.scope.route(resource, &routing, labels).map(|_| opt_in)
    }
}

/// ReplicaSets by owning Deployment, and ReplicaSet -> Deployment for pods.
struct Owners {
    replicasets: HashMap<(String, String), Vec<Value>>,
    deployment_of: HashMap<(String, String), String>,
}

impl Owners {
    fn new(replicasets: Vec<Value>) -> Owners {
        let mut owners = Owners {
            replicasets: HashMap::new(),
            deployment_of: HashMap::new(),
        };
        for rs in replicasets {
            let Some(d) = owner(&rs, "Deployment").map(str::to_string) else {
                continue;
            };
            let ns = namespace_of(&rs);
            owners
                .deployment_of
                .insert((ns.clone(), name_of(&rs)), d.clone());
            owners.replicasets.entry((ns, d)).or_default().push(rs);
        }
        owners
    }
}

impl Audit<'_> {
    /// The namespace's report, made when the first object in it is audited.
    fn report(&mut self, ns: &str, opt_in: OptIn) -> &mut NamespaceReport {
        self.reports
            .entry(ns.to_string())
            .or_insert_with(|| NamespaceReport::new(ns, opt_in))
    }

    /// PodDisruptionBudget selectors by namespace. A PDB without a selector
    /// selects nothing; `{}` selects every pod (policy/v1).
    fn pdb_selectors(&mut self, pdbs: &[Value]) -> HashMap<String, Vec<Selector>> {
        let mut selectors: HashMap<String, Vec<Selector>> = HashMap::new();
        for pdb in pdbs {
            let Some(raw) = pdb.pointer("/spec/selector").filter(|v| !v.is_null()) else {
                continue;
            };
            let parsed = serde_json::from_value::<LabelSelector>(raw.clone())
                .map_err(|e| e.to_string())
                .and_then(|s| Selector::try_from(s).map_err(|e| e.to_string()));
            match parsed {
                Ok(sel) => selectors.entry(namespace_of(pdb)).or_default().push(sel),
                Err(e) => self.warnings.add(
                    &format!("input: PodDisruptionBudget selector ignored: {e}"),
                    &format!("{}/{}", namespace_of(pdb), name_of(pdb)),
                ),
            }
        }
        selectors
    }

    /// Every routed Deployment as a CREATE: what the policies change now,
    /// what they forecast, whether it is hot and whether a PDB covers it.
    fn deployments(&mut self, deployments: Vec<Value>, pdbs: &HashMap<String, Vec<Selector>>) {
        for d in deployments {
            let ns = namespace_of(&d);
            let name = name_of(&d);
            let labels = labels_at(&d, &["metadata", "labels"]);
            let Some(opt_in) = self.namespaces.routes("deployments", &ns, &labels) else {
                continue;
            };
            let key = (ns.clone(), name.clone());
            let owned: Vec<&Value> = self
                .owners
                .replicasets
                .get(&key)
                .map(|v| v.iter().collect())
                .unwrap_or_default();
            let judgement = hot::judge(&d, &owned, self.opts.now, self.hot_limit);
            let template_labels = labels_at(&d, &["spec", "template", "metadata", "labels"]);
            let protected = pdbs
                .get(&ns)
                .is_some_and(|sels| sels.iter().any(|s| s.matches(&template_labels)));
            let forecast = Forecast {
                kind: Kind::Deployment,
                object: &d,
                hot: judgement.hot,
            };
            let skip = Skip::of(&d);
            let forecasts: Vec<&'static str> = self
                .pipeline
                .policies()
                .filter(|p| !skip.skips(p.name()) && p.forecast(&forecast))
                .map(|p| p.name())
                .collect();
            let id = format!("Deployment {ns}/{name}");
            let ctx = Context::new(Kind::Deployment, Operation::Create).in_namespace(Some(&ns));
            let outcome = self.pipeline.run(&ctx, d);
            for w in outcome.warnings.iter().chain(&outcome.reported.warnings) {
                self.warnings.add(w, &id);
            }
            let r = self.report(&ns, opt_in);
            for p in outcome.policies.iter().chain(&outcome.reported.policies) {
                r.changes.add(p);
            }
            for p in forecasts {
                r.changes.add(p);
            }
            if judgement.hot {
                r.hot_deployments.push(name.clone());
            }
            if !protected {
                r.deployments_without_pdb.push(name.clone());
            }
            if judgement.hot {
                self.hot.push(HotDeployment {
                    namespace: ns,
                    name,
                    judgement,
                });
            }
        }
    }

    /// Every routed Pod as a CREATE: what the policies change, and which
    /// Leases the `lease` policy's rewrite merges.
    fn pods(&mut self, pods: Vec<Value>) {
        let hot: HashSet<(String, String)> = self
            .hot
            .iter()
            .map(|h| (h.namespace.clone(), h.name.clone()))
            .collect();
        for pod in pods {
            let ns = namespace_of(&pod);
            let labels = labels_at(&pod, &["metadata", "labels"]);
            let Some(opt_in) = self.namespaces.routes("pods", &ns, &labels) else {
                continue;
            };
            let selectors = self
                .pipeline
                .policy::<policy::lease::Lease>()
                .map(|lease| lease.selectors(&pod))
                .unwrap_or_default();
            let deployment = owner(&pod, "ReplicaSet")
                .and_then(|rs| self.owners.deployment_of.get(&(ns.clone(), rs.to_string())))
                .cloned();
            let scoped = str_at(&pod, &["metadata", "annotations", LEASE_SCOPE])
                .and_then(LeaseScope::parse)
                .map(|s| s.deployment.to_string());
            let id = format!("Pod {ns}/{}", name_of(&pod));
            let ctx = Context::new(Kind::Pod, Operation::Create).in_namespace(Some(&ns));
            let outcome = self.pipeline.run(&ctx, pod);
            for w in outcome.warnings.iter().chain(&outcome.reported.warnings) {
                self.warnings.add(w, &id);
            }
            let r = self.report(&ns, opt_in);
            r.pods += 1;
            r.lease_selectors += selectors.len();
            let mut changed = false;
            let mut rewrote = false;
            for p in outcome.policies.iter().chain(&outcome.reported.policies) {
                r.changes.add(p);
                changed = true;
                rewrote |= *p == policy::lease::NAME;
            }
            if changed {
                r.pods_changed += 1;
            }
            if rewrote {
                let hot_deployment = deployment
                    .filter(|d| hot.contains(&(ns.clone(), d.clone())))
                    .or(scoped);
                let group = match &hot_deployment {
                    Some(d) => Group::Deployment(ns.clone(), d.clone()),
                    None => Group::Namespace(ns.clone()),
                };
                let replaced = self.groups.entry(group).or_default();
                for sel in &selectors {
                    for lease in named_leases(sel) {
                        if hot_deployment.as_deref() != Some(lease.as_str()) {
                            replaced.insert((ns.clone(), lease));
                        }
                    }
                }
            }
        }
    }

    /// The report: namespaces, totals, warnings, and what the table adds.
    fn finish(self, input_warnings: Vec<String>, leases: leases::LeaseTotals) -> Report {
        let Audit {
            opts,
            hot_limit,
            namespaces,
            reports,
            warnings,
            hot,
            ..
        } = self;
        let mut all_warnings = input_warnings;
        for ns in &namespaces.missing {
            if opts.all_namespaces || reports.contains_key(ns) {
                all_warnings.push(format!(
                    "input: namespace {ns} has objects but no Namespace object: its labels are unknown, so it is taken as not opted in"
                ));
            }
        }
        all_warnings.extend(warnings.finish());
        let mut not_opted_in: Vec<String> = namespaces
            .labels
            .keys()
            .filter(|ns| !reports.contains_key(*ns))
            .cloned()
            .collect();
        not_opted_in.sort();
        let mut changes = Changes::default();
        for r in reports.values() {
            changes.sum(&r.changes);
        }
        Report {
            namespaces: reports.into_values().collect(),
            changes,
            leases,
            warnings: all_warnings,
            details: Details {
                hot,
                not_opted_in,
                hot_limit,
            },
        }
    }
}

/// The controller owner of kind `kind`, by name.
fn owner<'v>(obj: &'v Value, kind: &str) -> Option<&'v str> {
    let refs = obj.pointer("/metadata/ownerReferences")?.as_array()?;
    let mut of_kind = refs
        .iter()
        .filter(|r| r.get("kind").and_then(Value::as_str) == Some(kind));
    let first = of_kind.clone().next();
    of_kind
        .find(|r| r.get("controller").and_then(Value::as_bool) == Some(true))
        .or(first)
        .and_then(|r| r.get("name"))
        .and_then(Value::as_str)
}

fn name_of(obj: &Value) -> String {
    str_at(obj, &["metadata", "name"]).unwrap_or("").to_string()
}

fn namespace_of(obj: &Value) -> String {
    str_at(obj, &["metadata", "namespace"])
        .unwrap_or("")
        .to_string()
}

/// Warnings grouped by message, in first-seen order, with example objects.
#[derive(Default)]
struct Warnings {
    order: Vec<String>,
    seen: HashMap<String, (usize, Vec<String>)>,
}

const WARNING_EXAMPLES: usize = 3;

impl Warnings {
    fn add(&mut self, message: &str, object: &str) {
        let entry = self.seen.entry(message.to_string()).or_insert_with(|| {
            self.order.push(message.to_string());
            (0, Vec::new())
        });
        entry.0 += 1;
        if entry.1.len() < WARNING_EXAMPLES {
            entry.1.push(object.to_string());
        }
    }

    fn finish(self) -> Vec<String> {
        let Warnings { order, seen } = self;
        order
            .into_iter()
            .map(|m| {
                let (n, examples) = &seen[&m];
                let more = if *n > examples.len() {
                    format!(", and {} more", n - examples.len())
                } else {
                    String::new()
                };
                format!("{m} ({}{more})", examples.join(", "))
            })
            .collect()
    }
}

/// The Lease names a selector's `metadata.name` equality terms pick.
fn named_leases(sel: &str) -> Vec<String> {
    selector::parse(sel)
        .map(|s| {
            s.terms
                .into_iter()
                .flatten()
                .filter(|t| t.field == "metadata.name" && t.op.is_equality())
                .map(|t| t.value)
                .collect()
        })
        .unwrap_or_default()
}
