//! The cluster policies, one module each, all behind [`Policy`], and
//! [`ALL`], the one list of them.
//!
//! A policy module owns everything about its policy, so that adding one is
//! one new module and one line in [`ALL`]:
//!
//! * its name, in `calmplane.dev/skip`, metrics, logs and reports
//!   ([`Definition::NAME`]);
//! * its section of the policy file: the key, its settings with their
//!   defaults and checks ([`Definition::SECTION`], [`Definition::Settings`]);
//!   `enabled` and `enforcement` are every section's ([`crate::config`]);
//! * what it reads of the objects it handles ([`Policy::reads`]), which the
//!   pipeline merges into the view it asks `/mutate` to build;
//! * how it edits an object ([`Policy::apply`]), through a [`Mutation`];
//! * what `calmplane audit` counts for it beyond the edits the pipeline makes
//!   ([`Policy::forecast`]);
//! * whether the apiserver can run it as a MutatingAdmissionPolicy, and the
//!   CEL it runs, or why not ([`Policy::in_apiserver`]).
//!
//! A policy looks at the object through a [`Context`] and edits it through a
//! [`Mutation`]; it never builds a patch or a response itself. Which policies
//! run for which request is decided by [`Policy::handles`], so the pipeline
//! stays a plain loop.
//!
//! | policy            | kind       | operations      |
//! |-------------------|------------|-----------------|
//! | `lease`           | Pod        | CREATE          |
//! | `rollout-history` | Deployment | UPDATE          |
//! | `dns`             | Pod        | CREATE          |
//! | `prestop`         | Pod        | CREATE          |
//! | `rollout`         | Deployment | CREATE, UPDATE  |

use crate::config::{Config, ConfigError, Enforcement, Section};
use crate::patch::Mutation;
use crate::view::{Keys, Shape};
use kube::core::admission::Operation;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::Value;
use std::any::Any;

pub mod apiserver;
pub mod dns;
pub mod lease;
pub mod prestop;
#[cfg(test)]
mod probe;
pub mod rollout;
pub mod rollout_history;

/// Every policy, in pipeline order. This is the one list: the policy file,
/// the pipeline, the skip annotation's names, audit and its columns, and the
/// reports all read it.
pub const ALL: &[Entry] = &[
    Entry::of::<lease::Lease>(),
    Entry::of::<rollout_history::RolloutHistory>(),
    Entry::of::<dns::Dns>(),
    Entry::of::<prestop::Prestop>(),
    Entry::of::<rollout::Rollout>(),
    // A sixth policy that exists only in the crate's unit tests: it proves
    // that one line here is all a new policy needs (see `probe`).
    #[cfg(test)]
    Entry::of::<probe::Probe>(),
];

/// The names of every policy, in pipeline order.
pub fn names() -> impl Iterator<Item = &'static str> {
    ALL.iter().map(|entry| entry.name)
}

/// Whether `name` is a policy's name.
pub fn is_name(name: &str) -> bool {
    names().any(|n| n == name)
}

/// The kinds calmplane mutates. Everything else is allowed untouched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `v1 Pod`: lease selectors, DNS options and preStop hooks live here.
    Pod,
    /// `apps/v1 Deployment`: rollout strategy and rollout history live here.
    Deployment,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 2] = [Kind::Pod, Kind::Deployment];

    /// Match on group/version/kind exactly: with `matchPolicy: Equivalent` the
    /// apiserver converts other versions to the one we registered.
    pub fn from_gvk(group: &str, version: &str, kind: &str) -> Option<Kind> {
        match (group, version, kind) {
            ("", "v1", "Pod") => Some(Kind::Pod),
            ("apps", "v1", "Deployment") => Some(Kind::Deployment),
            _ => None,
        }
    }

    /// The kind of a request's group/version/kind.
    pub fn of(gvk: &kube::core::GroupVersionKind) -> Option<Kind> {
        Kind::from_gvk(&gvk.group, &gvk.version, &gvk.kind)
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

/// The pod templates of a Deployment UPDATE, as the apiserver sent them.
/// `None` is no template: absent, `null`, or an object that is not a
/// Deployment.
#[derive(Debug, Clone, Copy)]
pub struct Templates<'a> {
    /// `spec.template` of the object being admitted.
    pub object: Option<&'a RawValue>,
    /// `spec.template` of the stored object.
    pub old_object: Option<&'a RawValue>,
}

/// What a policy may know about the request besides the object itself.
#[derive(Debug, Clone)]
pub struct Context<'a> {
    /// The object's kind: picks the policies that run, for a policy that
    /// acts differently per kind.
    pub kind: Kind,
    /// CREATE or UPDATE: some edits are only safe, or only needed, on one.
    pub operation: Operation,
    /// The request's namespace, which is authoritative: the object's own
    /// metadata may leave it to the URL. The pipeline falls back to the
    /// object's own.
    pub namespace: Option<&'a str>,
    /// The object before an UPDATE; `rollout-history` compares templates with it.
    pub old_object: Option<&'a Value>,
    /// The pod templates of a Deployment UPDATE as text, which
    /// `rollout-history` compares. Required when `object` and `old_object`
    /// are views, whose templates are not all there; when `None`, the
    /// templates of the two values are compared.
    pub templates: Option<Templates<'a>>,
    /// Unix seconds, set by the pipeline from its clock once per request.
    pub now: i64,
}

impl<'a> Context<'a> {
    /// A request of `kind` and `operation` with nothing else known yet.
    pub fn new(kind: Kind, operation: Operation) -> Context<'a> {
        Context {
            kind,
            operation,
            namespace: None,
            old_object: None,
            templates: None,
            now: 0,
        }
    }

    /// The request's namespace.
    pub fn in_namespace(mut self, namespace: Option<&'a str>) -> Self {
        self.namespace = namespace;
        self
    }

    /// The stored object an UPDATE replaces, and the two templates as text.
    pub fn replacing(mut self, old: Option<&'a Value>, templates: Option<Templates<'a>>) -> Self {
        self.old_object = old;
        self.templates = templates;
        self
    }
}

/// What a set of policies reads: one [`Shape`] per kind (and one for the
/// kinds no policy handles), and the annotation keys and environment
/// variables to build. Every kind's metadata is read, for the skip
/// annotation and the logs.
#[derive(Debug, Clone, PartialEq)]
pub struct Reads {
    pod: Shape,
    deployment: Shape,
    other: Shape,
    keys: Keys,
}

impl Reads {
    /// What the pipeline itself reads of every object: its name, namespace,
    /// `calmplane.dev/skip` and the kubelet's mirror-Pod annotation.
    pub fn base() -> Reads {
        let metadata = ["name", "generateName", "namespace"]
            .into_iter()
            .map(|member| Shape::at(&["metadata", member], Shape::All))
            .fold(
                Shape::at(&["metadata", "annotations"], Shape::Annotations),
                Shape::merge,
            );
        Reads {
            pod: metadata.clone(),
            deployment: metadata.clone(),
            other: metadata,
            keys: Keys::new(
                [
                    crate::annotations::SKIP.to_string(),
                    crate::annotations::MIRROR.to_string(),
                ],
                [],
            ),
        }
    }

    /// Everything of every object: for pipelines of policies not built from
    /// a policy file, whose reads are not declared.
    pub fn everything() -> Reads {
        Reads {
            pod: Shape::All,
            deployment: Shape::All,
            other: Shape::All,
            keys: Keys::everything(),
        }
    }

    /// Also read `shape` of objects of `kind`.
    pub fn shape(&mut self, kind: Kind, shape: Shape) {
        let mine = match kind {
            Kind::Pod => &mut self.pod,
            Kind::Deployment => &mut self.deployment,
        };
        let taken = std::mem::replace(mine, Shape::All);
        *mine = taken.merge(shape);
    }

    /// Also build these annotation keys and environment variables.
    pub fn keys(
        &mut self,
        annotations: impl IntoIterator<Item = String>,
        env_names: impl IntoIterator<Item = String>,
    ) {
        self.keys.add(annotations, env_names);
    }

    /// The shape to build objects of `kind` with (`None`: a kind no policy
    /// handles).
    pub fn shape_of(&self, kind: Option<Kind>) -> &Shape {
        match kind {
            Some(Kind::Pod) => &self.pod,
            Some(Kind::Deployment) => &self.deployment,
            None => &self.other,
        }
    }

    /// The annotation keys and environment variables to build.
    pub fn keys_to_build(&self) -> &Keys {
        &self.keys
    }
}

/// What `calmplane audit` knows about an object beyond what a webhook is
/// sent, for [`Policy::forecast`].
#[derive(Debug, Clone, Copy)]
pub struct Forecast<'a> {
    /// The object's kind.
    pub kind: Kind,
    /// The object, as listed.
    pub object: &'a Value,
    /// For a Deployment: whether it rolled more than `hotRolloutsPerHour`
    /// times in the last hour, by its ReplicaSets or its history.
    pub hot: bool,
}

/// One cluster policy. `Any`, so that a caller that knows which policy it
/// wants can have it ([`crate::pipeline::Pipeline::policy`]).
pub trait Policy: Send + Sync + Any {
    /// The name used in `calmplane.dev/skip`, audit annotations, metrics and changes.
    fn name(&self) -> &'static str;

    /// Whether this policy runs for this kind and operation.
    fn handles(&self, kind: Kind, operation: &Operation) -> bool;

    /// Declare what this policy reads of the objects it handles: members
    /// ([`Reads::shape`]), annotation keys and environment variables
    /// ([`Reads::keys`]). `/mutate` builds only what the policies declare,
    /// and a policy may write only there ([`crate::view::holds`]).
    fn reads(&self, reads: &mut Reads);

    /// Edit the object. Every edit goes through `m`, which records the patch.
    fn apply(&self, ctx: &Context<'_>, m: &mut Mutation);

    /// For `calmplane audit`: whether this policy will change `f.object` at
    /// some later request, though it changes nothing now (a Deployment's
    /// lease scope changes at its next rollout). Most policies change what
    /// they change at once: `false`.
    fn forecast(&self, f: &Forecast<'_>) -> bool {
        let _ = f;
        false
    }

    /// The same edits as CEL the apiserver runs in-process, for `calmplane
    /// export mutating-admission-policy`; or why they cannot be written so.
    /// No default: every policy must answer, and say why when it stays.
    fn in_apiserver(&self) -> apiserver::InApiserver;
}

/// A policy's settings: the keys of its section other than `enabled` and
/// `enforcement`, with their defaults (`Default`) and checks.
pub trait Settings:
    Serialize + DeserializeOwned + schemars::JsonSchema + Default + Clone + Send + Sync
{
    /// The first value out of range, as `(key, what is wrong)`; the key in
    /// the file's spelling, without the section.
    fn check(&self) -> Result<(), (&'static str, String)> {
        Ok(())
    }
}

/// What makes a type a policy calmplane ships: its name, its section and
/// its settings. [`Entry::of`] turns it into an entry of [`ALL`].
pub trait Definition: Policy + Sized {
    /// The policy's name.
    const NAME: &'static str;
    /// The key of its section in the policy file.
    const SECTION: &'static str;
    /// What `calmplane audit` counts for it, for the report's legend: the
    /// objects it changes, or will change.
    const COUNTS: &'static str;
    /// Its settings.
    type Settings: Settings;

    /// The policy with these (checked) settings.
    fn new(settings: Self::Settings) -> Self;
}

/// A section's key (`section` or `section.key`) and what is wrong with it.
type Refusal = (String, String);

/// One policy as [`ALL`] lists it: what is known without building it.
pub struct Entry {
    /// The policy's name ([`Policy::name`]).
    pub name: &'static str,
    /// The key of its section in the policy file.
    pub section: &'static str,
    /// What `calmplane audit` counts for it ([`Definition::COUNTS`]).
    pub counts: &'static str,
    /// Decode and check the section's settings, and build the policy.
    build: fn(&Section) -> Result<Box<dyn Policy>, Refusal>,
    /// The settings as the policy file writes them: of a section, or the
    /// defaults for `None`. For the example file and the reference.
    settings_json: fn(Option<&Section>) -> Result<Value, Refusal>,
    /// The JSON Schema of the settings, with their doc comments and
    /// defaults: the policy file's reference is generated from it.
    schema: fn() -> schemars::Schema,
    /// The policy with its default settings, for what the reference says
    /// of it beyond its settings (whether the apiserver can run it).
    with_defaults: fn() -> Box<dyn Policy>,
}

impl Entry {
    /// The entry for the policy `P`.
    pub const fn of<P: Definition>() -> Entry {
        Entry {
            name: P::NAME,
            section: P::SECTION,
            counts: P::COUNTS,
            build: build::<P>,
            settings_json: settings_json::<P>,
            schema: || schemars::schema_for!(P::Settings),
            with_defaults: || Box::new(P::new(P::Settings::default())),
        }
    }

    /// The JSON Schema of this policy's settings.
    pub fn schema(&self) -> Value {
        (self.schema)().to_value()
    }

    /// The policy with its default settings.
    pub fn with_defaults(&self) -> Box<dyn Policy> {
        (self.with_defaults)()
    }

    /// The settings of this policy's section of `config`, as the file would
    /// write them, with every default filled in.
    pub fn settings_of(&self, config: &Config) -> Result<Value, ConfigError> {
        (self.settings_json)(Some(config.section(self.section)))
            .map_err(|(key, message)| config.invalid(&key, message))
    }

    /// This policy's default settings, as the file would write them.
    pub fn default_settings(&self) -> Value {
        (self.settings_json)(None).unwrap_or(Value::Null)
    }
}

/// Decode `P`'s settings from `section`, and check them. Errors are
/// `(key, message)`, the key qualified with the section.
fn decode<P: Definition>(section: &Section) -> Result<P::Settings, Refusal> {
    let settings: P::Settings = serde_json::from_value(Value::Object(section.settings.clone()))
        .map_err(|e| (P::SECTION.to_string(), e.to_string()))?;
    settings
        .check()
        .map_err(|(key, message)| (format!("{}.{key}", P::SECTION), message))?;
    Ok(settings)
}

fn build<P: Definition>(section: &Section) -> Result<Box<dyn Policy>, Refusal> {
    Ok(Box::new(P::new(decode::<P>(section)?)))
}

fn settings_json<P: Definition>(section: Option<&Section>) -> Result<Value, Refusal> {
    let settings = match section {
        Some(section) => decode::<P>(section)?,
        None => P::Settings::default(),
    };
    serde_json::to_value(settings).map_err(|e| (P::SECTION.to_string(), e.to_string()))
}

/// The settings of policy `P` in `config`, decoded and checked: for a caller
/// that needs one policy's settings without building a pipeline (`calmplane
/// audit`, the MutatingAdmissionPolicy export).
pub fn settings<P: Definition>(config: &Config) -> Result<P::Settings, ConfigError> {
    decode::<P>(config.section(P::SECTION)).map_err(|(key, message)| config.invalid(&key, message))
}

/// A policy built from the policy file, with its section's common keys.
pub struct Configured {
    /// The policy.
    pub policy: Box<dyn Policy>,
    /// Whether it runs.
    pub enabled: bool,
    /// Whether its changes are patched or only reported.
    pub enforcement: Enforcement,
}

/// Every policy of [`ALL`], built from its section of `config` (its
/// defaults where the file has none), in pipeline order. Fails on a section
/// no policy owns and on settings a policy refuses, enabled or not: a typo
/// in a disabled section is still a typo.
pub fn configure(config: &Config) -> Result<Vec<Configured>, ConfigError> {
    if let Some(unknown) = config
        .section_keys()
        .find(|key| !ALL.iter().any(|e| e.section == *key))
    {
        let known: Vec<&str> = ALL.iter().map(|e| e.section).collect();
        return Err(config.invalid(
            unknown,
            format!(
                "no policy has this section; the sections are {}",
                known.join(", ")
            ),
        ));
    }
    ALL.iter()
        .map(|entry| {
            let section = config.section(entry.section);
            let policy =
                (entry.build)(section).map_err(|(key, message)| config.invalid(&key, message))?;
            Ok(Configured {
                policy,
                enabled: section.enabled,
                enforcement: section.enforcement,
            })
        })
        .collect()
}

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

/// What [`is_windows`] reads.
pub(crate) fn windows_reads(reads: &mut Reads) {
    reads.shape(Kind::Pod, Shape::at(&["spec", "os"], Shape::All));
    reads.shape(Kind::Pod, Shape::at(&["spec", "nodeSelector"], Shape::All));
}

/// A pod that will run on Windows: `spec.os.name: windows`, or pinned to
/// Windows nodes by `nodeSelector` (the older and still common way, used by
/// every Windows DaemonSet in sig-windows-tools).
pub(crate) fn is_windows(obj: &Value) -> bool {
    use crate::patch::str_at;
    str_at(obj, &["spec", "os", "name"]) == Some("windows")
        || str_at(obj, &["spec", "nodeSelector", "kubernetes.io/os"]) == Some("windows")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn configure_yaml(yaml: &str) -> Result<Vec<Configured>, ConfigError> {
        configure(&Config::from_yaml(yaml, "policy.yaml").unwrap())
    }

    #[test]
    fn the_example_file_spells_out_every_policy_s_defaults() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/policy.yaml");
        let config = Config::load(&path).unwrap();
        for entry in ALL {
            // The test-only probe has no place in the shipped example.
            if entry.name == "probe" {
                continue;
            }
            assert!(
                config.section_keys().any(|k| k == entry.section),
                "examples/policy.yaml has no `{}` section",
                entry.section
            );
            assert_eq!(
                entry.settings_of(&config).unwrap(),
                entry.default_settings(),
                "{}",
                entry.section
            );
            let section = config.section(entry.section);
            assert!(section.enabled, "{}", entry.section);
            assert_eq!(
                section.enforcement,
                Enforcement::Enforce,
                "{}",
                entry.section
            );
        }
    }

    #[test]
    fn partial_sections_keep_the_other_defaults() {
        let config = Config::from_yaml("dns:\n  ndots: 3\nprestop:\n  mode: exec\n", "p").unwrap();
        let dns = settings::<dns::Dns>(&config).unwrap();
        assert_eq!(dns.ndots, 3);
        assert!(dns.single_request_reopen);
        let prestop = settings::<prestop::Prestop>(&config).unwrap();
        assert_eq!(prestop.mode, prestop::PrestopMode::Exec);
        assert_eq!(prestop.sleep_seconds, 5);
    }

    #[test]
    fn typos_unknown_sections_and_bad_values_are_named() {
        for (yaml, says) in [
            ("dns:\n  ndot: 3\n", "unknown field `ndot`"),
            ("dns:\n  ndots: 0\n", "dns.ndots: 0 is out of range"),
            (
                "prestop:\n  minDrainSeconds: 0\n",
                "prestop.minDrainSeconds",
            ),
            ("lease:\n  mode: pods\n", "unknown variant `pods`"),
            // `mode: report` is not an enforcement: it names what lease writes.
            ("lease: {mode: report}\n", "unknown variant `report`"),
            ("lease:\n  flags: [lease]\n", "lease.flags"),
            ("dnss: {}\n", "dnss: no policy has this section"),
            // A disabled section is still checked: a typo is still a typo.
            ("dns: {enabled: false, ndot: 3}\n", "unknown field `ndot`"),
        ] {
            let e = configure_yaml(yaml).err().unwrap().to_string();
            assert!(e.contains(says), "{yaml}: {e}");
            assert!(e.contains("policy.yaml"), "{e}");
        }
        let e = configure_yaml("dnss: {}\n").err().unwrap().to_string();
        for entry in ALL {
            assert!(e.contains(entry.section), "{e}");
        }
    }

    #[test]
    fn enforcement_is_each_section_s_own() {
        let configured = configure_yaml(
            "dns: {enforcement: report}\nprestop: {mode: exec, enforcement: report}\n",
        )
        .unwrap();
        for c in configured {
            let report = ["dns", "prestop"].contains(&c.policy.name());
            assert_eq!(
                c.enforcement == Enforcement::Report,
                report,
                "{}",
                c.policy.name()
            );
        }
    }
}
