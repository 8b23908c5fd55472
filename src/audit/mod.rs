//! `calmplane audit`: what calmplane would change in a cluster, before any
//! namespace is opted in.
//!
//! ```text
//! List (kubectl get ... -A -o json, or --live)   input::Inventory
//!   └─ namespaces routed like the webhook          scope::Scope (from manifests/base/webhook.yaml)
//!        ├─ every Deployment: Deployment CREATE    pipeline::Pipeline (the webhook's, --config)
//!        │    hot or cold?                          hot::judge (ReplicaSets, calmplane.dev/rollouts)
//!        │    covered by a PodDisruptionBudget?
//!        └─ every Pod: Pod CREATE                   pipeline::Pipeline
//!             lease selectors found and rewritten
//!   └─ Lease writes before and after               leases::totals (estimate, or --sample)
//!   └─ table or JSON                               render
//! ```
//!
//! The per-object changes are exactly the webhook's: the same [`Pipeline`]
//! runs over the same objects. Two numbers are forecasts, and say so:
//! `rollout-history` counts the Deployments whose lease scope the webhook
//! would change at their next rollout (hot ones not yet scoped, cooled ones
//! still scoped), and the Lease totals anticipate that hot Deployments' pods
//! share one Lease per Deployment after that rollout.

pub mod hot;
pub mod input;
pub mod leases;
pub mod live;
pub mod render;
pub mod scope;

use crate::config::{Config, ConfigError};
use crate::patch::str_at;
use crate::pipeline::{FixedClock, Pipeline, Request};
use crate::policy::{self, Kind};
use crate::selector;
use input::Inventory;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::core::admission::Operation;
use kube::core::{Selector, SelectorExt};
use leases::{Group, LeaseKey, LeaseTotals, Sample};
use scope::{labels_at, Labels, OptIn, Scope, NAMESPACE_NAME_LABEL};
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

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

/// `calmplane audit` options.
#[derive(Debug, Clone, clap::Args)]
pub struct AuditArgs {
    /// The output of `kubectl get pods,deployments,replicasets,leases,namespaces,poddisruptionbudgets -A -o json` (a v1 List, JSON or YAML); `-` for stdin.
    #[arg(
        short = 'f',
        long = "filename",
        env = "CALMPLANE_AUDIT_FILE",
        required_unless_present = "live",
        conflicts_with = "live"
    )]
    pub file: Option<String>,
    /// Read the same lists from the current kubeconfig context (get and list only).
    #[arg(long, env = "CALMPLANE_AUDIT_LIVE")]
    pub live: bool,
    /// With --live: watch Leases this long and count real writes instead of estimating them.
    #[arg(long, value_name = "DURATION", env = "CALMPLANE_AUDIT_SAMPLE", value_parser = humantime::parse_duration)]
    pub sample: Option<Duration>,
    /// Policy file (YAML), as given to `calmplane serve`. Built-in defaults apply without one.
    #[arg(long, env = "CALMPLANE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Audit every namespace as if it were opted in (the webhook's exclusions still apply).
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    /// Output format.
    #[arg(
        short = 'o',
        long,
        value_enum,
        default_value = "table",
        env = "CALMPLANE_AUDIT_OUTPUT"
    )]
    pub output: Output,
    /// The time to judge "the last hour" from (unix seconds or RFC 3339); default: now.
    #[arg(long, env = "CALMPLANE_AUDIT_NOW")]
    pub now: Option<String>,
}

/// `-o`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// A table per namespace, then lease totals and warnings.
    Table,
    /// The stable JSON documented in docs/audit.md.
    Json,
}

/// Objects changed by each policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Changes {
    /// Pods whose lease selectors are rewritten.
    pub lease: usize,
    /// Pods given ndots / single-request-reopen.
    pub dns: usize,
    /// Pods given a preStop sleep.
    pub prestop: usize,
    /// Deployments given `maxUnavailable: 0`.
    pub rollout: usize,
    /// Deployments whose lease scope changes at their next rollout.
    #[serde(rename = "rollout-history")]
    pub rollout_history: usize,
}

impl Changes {
    fn add(&mut self, policy: &str) {
        match policy {
            policy::lease::NAME => self.lease += 1,
            policy::dns::NAME => self.dns += 1,
            policy::prestop::NAME => self.prestop += 1,
            policy::rollout::NAME => self.rollout += 1,
            policy::rollout_history::NAME => self.rollout_history += 1,
            _ => {}
        }
    }

    fn sum(&mut self, other: &Changes) {
        self.lease += other.lease;
        self.dns += other.dns;
        self.prestop += other.prestop;
        self.rollout += other.rollout;
        self.rollout_history += other.rollout_history;
    }
}

/// One namespace, in the JSON's stable shape.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceReport {
    /// The namespace.
    pub name: String,
    /// `"true"`, `"report"` or `"no"` (audited only under `--all-namespaces`).
    pub opted_in: &'static str,
    /// Pods the webhook would be called for.
    pub pods: usize,
    /// Of those, pods some policy would change.
    pub pods_changed: usize,
    /// Objects changed, by policy.
    pub changes: Changes,
    /// Lease selectors found in the pods (rewritten or not).
    pub lease_selectors: usize,
    /// Deployments that rolled out more than `hotRolloutsPerHour` in the last hour.
    pub hot_deployments: Vec<String>,
    /// Deployments no PodDisruptionBudget selects: `maxUnavailable: 0` does
    /// not protect them from voluntary evictions.
    pub deployments_without_pdb: Vec<String>,
}

/// A hot Deployment and the evidence, for the table.
#[derive(Debug, Clone, PartialEq)]
pub struct HotDeployment {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Rollouts in the last hour and which source decided.
    pub judgement: hot::Judgement,
}

/// The audit, in the JSON's stable shape (`details` is for the table only).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    /// Audited namespaces, by name.
    pub namespaces: Vec<NamespaceReport>,
    /// The sum of every namespace's changes.
    pub changes: Changes,
    /// Lease writes before and after.
    pub leases: LeaseTotals,
    /// Input problems and the pipeline's warnings, grouped by message.
    pub warnings: Vec<String>,
    /// Evidence the table prints and the JSON leaves out.
    #[serde(skip)]
    pub details: Details,
}

/// What the table prints beyond the JSON.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Details {
    /// Every hot Deployment with its evidence.
    pub hot: Vec<HotDeployment>,
    /// Namespaces in the input that are not opted in and were not audited.
    pub not_opted_in: Vec<String>,
    /// The `hotRolloutsPerHour` used.
    pub hot_limit: u32,
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

/// Run `calmplane audit` and return what it prints.
pub fn run(args: &AuditArgs) -> Result<String, AuditError> {
    // Checked here: clap's `requires` counts a flag's `false` default as present.
    if args.sample.is_some() && !args.live {
        return Err(AuditError::Other(
            "--sample watches the cluster's Leases: it needs --live".into(),
        ));
    }
    let config = Config::load_or_default(args.config.as_deref())?;
    let now = match &args.now {
        Some(s) => parse_now(s)?,
        None => crate::pipeline::SystemClock.now_unix(),
    };
    let (inventory, sample) = if args.live {
        live::collect(args.sample)?
    } else {
        let path = args.file.as_deref().unwrap_or("-");
        let body = read_input(path)?;
        (Inventory::from_bytes(&body)?, None)
    };
    let opts = Options {
        all_namespaces: args.all_namespaces,
        now,
        sample,
    };
    let report = audit(inventory, &config, &opts)?;
    match args.output {
        Output::Table => Ok(render::table(&report)),
        Output::Json => render::json(&report),
    }
}

use crate::pipeline::Clock as _;

fn read_input(path: &str) -> Result<Vec<u8>, AuditError> {
    use std::io::Read;
    let mut body = Vec::new();
    let result = if path == "-" {
        std::io::stdin().read_to_end(&mut body).map(|_| ())
    } else {
        std::fs::read(path).map(|b| body = b)
    };
    result.map_err(|source| AuditError::Read {
        path: path.to_string(),
        source,
    })?;
    Ok(body)
}

/// Unix seconds, or an RFC 3339 time.
pub fn parse_now(s: &str) -> Result<i64, AuditError> {
    s.trim()
        .parse::<i64>()
        .ok()
        .or_else(|| hot::unix_seconds(s.trim()))
        .ok_or_else(|| AuditError::Now(s.to_string()))
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

/// One namespace as the audit sees it.
struct NamespaceState {
    opt_in: OptIn,
    /// The labels routing is decided on (pretended under `--all-namespaces`).
    routing: Labels,
}

/// Audit `inventory` with the webhook's pipeline for `config`.
pub fn audit(inventory: Inventory, config: &Config, opts: &Options) -> Result<Report, AuditError> {
    let scope = Scope::from_base()?;
    let pipeline = Pipeline::new(config, Arc::new(FixedClock(opts.now)));
    audit_with(inventory, config, &pipeline, &scope, opts)
}

/// [`audit`] with a given pipeline and routing (the pipeline's clock is not
/// used for hotness: `opts.now` is).
pub fn audit_with(
    inventory: Inventory,
    config: &Config,
    pipeline: &Pipeline,
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
    let mut warnings = Warnings::default();

    // Namespaces: labels, with the name label the apiserver always sets.
    let mut namespace_labels: HashMap<String, Labels> = HashMap::new();
    for ns in &namespaces {
        let name = name_of(ns);
        let mut labels = labels_at(ns, &["metadata", "labels"]);
        labels
            .entry(NAMESPACE_NAME_LABEL.to_string())
            .or_insert_with(|| name.clone());
        namespace_labels.insert(name, labels);
    }
    let mut states: HashMap<String, NamespaceState> = HashMap::new();
    let mut missing_namespaces: BTreeSet<String> = BTreeSet::new();
    let mut state_of = |ns: &str| -> (OptIn, Labels) {
        let st = states.entry(ns.to_string()).or_insert_with(|| {
            let labels = namespace_labels.get(ns).cloned().unwrap_or_else(|| {
                missing_namespaces.insert(ns.to_string());
                Labels::from([(NAMESPACE_NAME_LABEL.to_string(), ns.to_string())])
            });
            let opt_in = scope.opt_in(&labels);
            let routing = if opts.all_namespaces {
                scope.pretend(&labels)
            } else {
                labels
            };
            NamespaceState { opt_in, routing }
        });
        (st.opt_in, st.routing.clone())
    };

    // ReplicaSets by owning Deployment, and ReplicaSet -> Deployment for pods.
    let mut rs_by_deployment: HashMap<(String, String), Vec<Value>> = HashMap::new();
    let mut deployment_of_rs: HashMap<(String, String), String> = HashMap::new();
    for rs in replicasets {
        let Some(d) = owner(&rs, "Deployment").map(str::to_string) else {
            continue;
        };
        let ns = namespace_of(&rs);
        deployment_of_rs.insert((ns.clone(), name_of(&rs)), d.clone());
        rs_by_deployment.entry((ns, d)).or_default().push(rs);
    }

    // PodDisruptionBudget selectors by namespace. A PDB without a selector
    // selects nothing; `{}` selects every pod (policy/v1).
    let mut pdb_selectors: HashMap<String, Vec<Selector>> = HashMap::new();
    for pdb in &pdbs {
        let Some(raw) = pdb.pointer("/spec/selector").filter(|v| !v.is_null()) else {
            continue;
        };
        let parsed = serde_json::from_value::<LabelSelector>(raw.clone())
            .map_err(|e| e.to_string())
            .and_then(|s| Selector::try_from(s).map_err(|e| e.to_string()));
        match parsed {
            Ok(sel) => pdb_selectors
                .entry(namespace_of(pdb))
                .or_default()
                .push(sel),
            Err(e) => warnings.add(
                &format!("input: PodDisruptionBudget selector ignored: {e}"),
                &format!("{}/{}", namespace_of(pdb), name_of(pdb)),
            ),
        }
    }

    let mut reports: BTreeMap<String, NamespaceReport> = BTreeMap::new();
    let entry = |reports: &mut BTreeMap<String, NamespaceReport>, ns: &str, opt_in: OptIn| {
        if !reports.contains_key(ns) {
            reports.insert(
                ns.to_string(),
                NamespaceReport {
                    name: ns.to_string(),
                    opted_in: opt_in.as_str(),
                    pods: 0,
                    pods_changed: 0,
                    changes: Changes::default(),
                    lease_selectors: 0,
                    hot_deployments: Vec::new(),
                    deployments_without_pdb: Vec::new(),
                },
            );
        }
    };

    let limit = config.rollout_history.hot_rollouts_per_hour;
    let mut hot_list = Vec::new();
    let mut hot_set: HashSet<(String, String)> = HashSet::new();
    for d in deployments {
        let ns = namespace_of(&d);
        let name = name_of(&d);
        let (opt_in, routing) = state_of(&ns);
        let labels = labels_at(&d, &["metadata", "labels"]);
        if scope.route("deployments", &routing, &labels).is_none() {
            continue;
        }
        entry(&mut reports, &ns, opt_in);
        let key = (ns.clone(), name.clone());
        let owned: Vec<&Value> = rs_by_deployment
            .get(&key)
            .map(|v| v.iter().collect())
            .unwrap_or_default();
        let judgement = hot::judge(&d, &owned, opts.now, limit);
        let template_labels = labels_at(&d, &["spec", "template", "metadata", "labels"]);
        let protected = pdb_selectors
            .get(&ns)
            .is_some_and(|sels| sels.iter().any(|s| s.matches(&template_labels)));
        let scope_changes = config.rollout_history.enabled
            && !skips(&d, policy::rollout_history::NAME)
            && lease_scope_changes(&d, &name, judgement.hot);
        let id = format!("{ns}/{name}");
        let outcome = pipeline.run(
            &Request {
                kind: Kind::Deployment,
                operation: Operation::Create,
                namespace: Some(&ns),
                old_object: None,
                templates: None,
            },
            d,
        );
        let r = reports.get_mut(&ns).expect("entry was created above");
        for p in outcome.policies.iter().chain(&outcome.reported.policies) {
            r.changes.add(p);
        }
        if scope_changes {
            r.changes.add(policy::rollout_history::NAME);
        }
        for w in outcome.warnings.iter().chain(&outcome.reported.warnings) {
            warnings.add(w, &format!("Deployment {id}"));
        }
        if judgement.hot {
            r.hot_deployments.push(name.clone());
            hot_set.insert(key);
            hot_list.push(HotDeployment {
                namespace: ns.clone(),
                name: name.clone(),
                judgement,
            });
        }
        if !protected {
            r.deployments_without_pdb.push(name);
        }
    }

    let finder = policy::lease::Lease::new(config.lease.clone());
    let mut groups: BTreeMap<Group, BTreeSet<LeaseKey>> = BTreeMap::new();
    for pod in pods {
        let ns = namespace_of(&pod);
        let (opt_in, routing) = state_of(&ns);
        let labels = labels_at(&pod, &["metadata", "labels"]);
        if scope.route("pods", &routing, &labels).is_none() {
            continue;
        }
        entry(&mut reports, &ns, opt_in);
        let selectors = if config.lease.enabled {
            finder.selectors(&pod)
        } else {
            Vec::new()
        };
        let deployment = owner(&pod, "ReplicaSet")
            .and_then(|rs| deployment_of_rs.get(&(ns.clone(), rs.to_string())))
            .cloned();
        let scoped = str_at(
            &pod,
            &["metadata", "annotations", crate::LEASE_SCOPE_ANNOTATION],
        )
        .and_then(|v| v.strip_prefix("deployment/"))
        .filter(|n| !n.is_empty())
        .map(str::to_string);
        let id = format!("Pod {ns}/{}", name_of(&pod));
        let outcome = pipeline.run(
            &Request {
                kind: Kind::Pod,
                operation: Operation::Create,
                namespace: Some(&ns),
                old_object: None,
                templates: None,
            },
            pod,
        );
        let r = reports.get_mut(&ns).expect("entry was created above");
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
        for w in outcome.warnings.iter().chain(&outcome.reported.warnings) {
            warnings.add(w, &id);
        }
        if rewrote {
            let hot_deployment = deployment
                .filter(|d| hot_set.contains(&(ns.clone(), d.clone())))
                .or(scoped);
            let group = match &hot_deployment {
                Some(d) => Group::Deployment(ns.clone(), d.clone()),
                None => Group::Namespace(ns.clone()),
            };
            let replaced = groups.entry(group).or_default();
            for sel in &selectors {
                for lease in named_leases(sel) {
                    if hot_deployment.as_deref() != Some(lease.as_str()) {
                        replaced.insert((ns.clone(), lease));
                    }
                }
            }
        }
    }

    let rates = leases::Rates::new(&leases, opts.sample.as_ref());
    let lease_totals = leases::totals(&leases, &rates, &groups);

    let mut all_warnings = input_warnings;
    for ns in &missing_namespaces {
        if opts.all_namespaces || reports.contains_key(ns) {
            all_warnings.push(format!(
                "input: namespace {ns} has objects but no Namespace object: its labels are unknown, so it is taken as not opted in"
            ));
        }
    }
    all_warnings.extend(warnings.finish());

    let mut not_opted_in: Vec<String> = namespace_labels
        .keys()
        .filter(|ns| !reports.contains_key(*ns))
        .cloned()
        .collect();
    not_opted_in.sort();

    let mut changes = Changes::default();
    for r in reports.values() {
        changes.sum(&r.changes);
    }
    Ok(Report {
        namespaces: reports.into_values().collect(),
        changes,
        leases: lease_totals,
        warnings: all_warnings,
        details: Details {
            hot: hot_list,
            not_opted_in,
            hot_limit: limit,
        },
    })
}

/// Whether `calmplane.dev/skip` on `obj` turns `policy` off.
fn skips(obj: &Value, policy: &str) -> bool {
    str_at(obj, &["metadata", "annotations", crate::SKIP_ANNOTATION]).is_some_and(|v| {
        v.split(',')
            .map(str::trim)
            .any(|p| p == "all" || p == policy)
    })
}

/// Would `rollout-history` change this Deployment's lease scope at its next
/// rollout? Hot and not yet scoped to itself, or cold and still scoped.
fn lease_scope_changes(d: &Value, name: &str, hot: bool) -> bool {
    let current = str_at(
        d,
        &[
            "spec",
            "template",
            "metadata",
            "annotations",
            crate::LEASE_SCOPE_ANNOTATION,
        ],
    );
    if hot {
        current != Some(format!("deployment/{name}").as_str())
    } else {
        current.is_some()
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
