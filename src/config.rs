//! The policy file: one section per policy, every key optional.
//!
//! ```yaml
//! lease:
//!   mode: namespace            # or `pod` to turn the rewrite off
//!   annotations: [calmplane.dev/lease-selector]
//!   envNames: [LEASE_SELECTOR]
//!   flags: [--lease-selector]
//! rolloutHistory:
//!   hotRolloutsPerHour: 1
//! dns:
//!   ndots: 2
//!   override: false
//! prestop:
//!   mode: sleep                # or `exec` for clusters older than 1.34
//!   sleepSeconds: 5
//!   minDrainSeconds: 5
//! rollout: {}
//! ```
//!
//! Every section also takes `enforcement: enforce | report`. A policy in
//! `report` is computed on every `/mutate` request, counted in
//! `calmplane_report_changes_total{policy}` and logged, but never patched.
//! The key is not `mode`: `lease.mode` (namespace | pod) and `prestop.mode`
//! (sleep | exec) already say *what* a policy writes; `enforcement` says
//! *whether* it writes, and means the same in every section.
//!
//! Unknown keys are rejected (a typo must not silently fall back to a default)
//! and values are range-checked, so a bad file fails at start with a message
//! that names the key.

use serde::{Deserialize, Serialize};
use std::path::Path;

/// Why a policy file was refused. Each names the file, and the key when one is at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read policy file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The file is not UTF-8: YAML must be, and a lossy decode would change
    /// what the file says.
    #[error("policy file {path} is not UTF-8: {source}")]
    NotUtf8 {
        /// The file.
        path: String,
        /// Where the first invalid byte is.
        source: std::str::Utf8Error,
    },
    /// The YAML does not parse, or has a key or value the schema refuses.
    #[error("policy file {path}: {source}")]
    Parse {
        /// The file.
        path: String,
        /// The parser's message, with line and column.
        source: crate::yaml::Error,
    },
    /// A value is out of range.
    #[error("policy file {path}: {key}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// The key, in the file's own spelling.
        key: &'static str,
        /// What is wrong and what is allowed.
        message: String,
    },
}

/// The whole policy file. Each section configures one policy, so a policy's
/// constructor takes only its own section.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Config {
    /// `lease`: which selectors to rewrite, and where the pod carries them.
    pub lease: LeaseConfig,
    /// `rolloutHistory`: when a Deployment counts as hot.
    pub rollout_history: RolloutHistoryConfig,
    /// `dns`: the resolver options added to pods.
    pub dns: DnsConfig,
    /// `prestop`: how long containers wait before SIGTERM, and how.
    pub prestop: PrestopConfig,
    /// `rollout`: only an on/off switch, kept as a section so the file's shape
    /// is the same for every policy.
    pub rollout: RolloutConfig,
}

/// Whether a policy's changes are patched or only reported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Enforcement {
    /// Patch the changes (the default).
    #[default]
    Enforce,
    /// Compute, count and log the changes; never patch them.
    Report,
}

/// What the `lease` policy rewrites a per-pod selector to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LeaseMode {
    /// Rewrite `metadata.name=<pod>` to `metadata.namespace=<ns>`.
    Namespace,
    /// Leave selectors alone (one lease per pod).
    Pod,
}

/// The `lease` section. The selector can hide in three places in a pod, so
/// each has its own list of names to look under.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct LeaseConfig {
    /// Turns the policy off without removing the section.
    pub enabled: bool,
    /// `report` computes and counts this policy's changes without patching them.
    pub enforcement: Enforcement,
    /// `namespace` rewrites; `pod` keeps the section but the policy does not run.
    pub mode: LeaseMode,
    /// Pod annotation keys whose value is a lease selector.
    pub annotations: Vec<String>,
    /// Container env var names whose `value` is a lease selector.
    pub env_names: Vec<String>,
    /// Container flags (`--flag=SEL` or `--flag SEL`) that take a lease selector.
    pub flags: Vec<String>,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        LeaseConfig {
            enabled: true,
            enforcement: Enforcement::Enforce,
            mode: LeaseMode::Namespace,
            annotations: vec![crate::LEASE_SELECTOR_ANNOTATION.to_string()],
            env_names: vec!["LEASE_SELECTOR".to_string()],
            flags: vec!["--lease-selector".to_string()],
        }
    }
}

/// The `rolloutHistory` section.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct RolloutHistoryConfig {
    /// Turns the policy off: Deployments are no longer marked hot, nor cooled down.
    pub enabled: bool,
    /// `report` computes and counts this policy's changes without patching them.
    pub enforcement: Enforcement,
    /// A Deployment that rolled more than this many times in the last hour is hot.
    pub hot_rollouts_per_hour: u32,
}

impl Default for RolloutHistoryConfig {
    fn default() -> Self {
        RolloutHistoryConfig {
            enabled: true,
            enforcement: Enforcement::Enforce,
            hot_rollouts_per_hour: 1,
        }
    }
}

/// The `dns` section.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct DnsConfig {
    /// Turns the policy off without removing the section.
    pub enabled: bool,
    /// `report` computes and counts this policy's changes without patching them.
    pub enforcement: Enforcement,
    /// The `ndots` option written into pods: low enough that external names
    /// skip the search path, high enough that `svc.ns` still uses it.
    pub ndots: u8,
    /// Replace an ndots the pod sets itself.
    pub r#override: bool,
    /// Whether to add `single-request-reopen`, against the conntrack race
    /// that loses an A or AAAA reply.
    pub single_request_reopen: bool,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            enabled: true,
            enforcement: Enforcement::Enforce,
            ndots: 2,
            r#override: false,
            single_request_reopen: true,
        }
    }
}

/// How the `prestop` policy writes its sleep: the native action needs a
/// recent cluster, the exec form needs a shell in the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PrestopMode {
    /// The native `lifecycle.preStop.sleep` action (GA in Kubernetes 1.34).
    Sleep,
    /// `exec: ["sh", "-c", "sleep N"]`, for older clusters; needs a shell in the image.
    Exec,
}

/// The `prestop` section.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct PrestopConfig {
    /// Turns the policy off without removing the section.
    pub enabled: bool,
    /// `report` computes and counts this policy's changes without patching them.
    pub enforcement: Enforcement,
    /// Native sleep or exec, depending on what the cluster supports.
    pub mode: PrestopMode,
    /// How long SIGTERM is held back: long enough for endpoint removal to
    /// reach every proxy. `i64` because that is the API's type.
    pub sleep_seconds: i64,
    /// Time the grace period must leave after the sleep for the app to drain.
    pub min_drain_seconds: i64,
}

impl Default for PrestopConfig {
    fn default() -> Self {
        PrestopConfig {
            enabled: true,
            enforcement: Enforcement::Enforce,
            mode: PrestopMode::Sleep,
            sleep_seconds: 5,
            min_drain_seconds: 5,
        }
    }
}

/// The `rollout` section.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct RolloutConfig {
    /// Turns the policy off without removing the section.
    pub enabled: bool,
    /// `report` computes and counts this policy's changes without patching them.
    pub enforcement: Enforcement,
}

impl Default for RolloutConfig {
    fn default() -> Self {
        RolloutConfig {
            enabled: true,
            enforcement: Enforcement::Enforce,
        }
    }
}

impl Config {
    /// The policy file at `path`, or the built-in defaults without one. The
    /// server's start, its hot reload and `calmplane preview` all load the
    /// file through here and [`Config::from_bytes`], so they decode it alike.
    pub fn load_or_default(path: Option<&Path>) -> Result<Config, ConfigError> {
        match path {
            Some(path) => Config::load(path),
            None => Ok(Config::default()),
        }
    }

    /// The `enforcement` of the section of the policy named `policy` (a
    /// [`crate::policy::ALL`] name); `enforce` for a name it does not know.
    pub fn enforcement(&self, policy: &str) -> Enforcement {
        use crate::policy::{dns, lease, prestop, rollout, rollout_history};
        match policy {
            lease::NAME => self.lease.enforcement,
            rollout_history::NAME => self.rollout_history.enforcement,
            dns::NAME => self.dns.enforcement,
            prestop::NAME => self.prestop.enforcement,
            rollout::NAME => self.rollout.enforcement,
            _ => Enforcement::Enforce,
        }
    }

    /// Read and parse the policy file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let shown = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| ConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        Config::from_bytes(&bytes, &shown)
    }

    /// Parse and validate the bytes of a policy file; `path` names it in errors.
    pub fn from_bytes(bytes: &[u8], path: &str) -> Result<Config, ConfigError> {
        let text = std::str::from_utf8(bytes).map_err(|source| ConfigError::NotUtf8 {
            path: path.to_string(),
            source,
        })?;
        Config::from_yaml(text, path)
    }

    /// Parse and validate. An empty file means "all defaults".
    pub fn from_yaml(text: &str, path: &str) -> Result<Config, ConfigError> {
        let config: Config = if text.trim().is_empty() {
            Config::default()
        } else {
            crate::yaml::from_str::<Option<Config>>(text)
                .map_err(|source| ConfigError::Parse {
                    path: path.to_string(),
                    source,
                })?
                .unwrap_or_default()
        };
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: &str) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, message: String| ConfigError::Invalid {
            path: path.to_string(),
            key,
            message,
        };
        let l = &self.lease;
        if l.annotations.iter().any(|a| a.is_empty() || a.len() > 317) {
            return Err(invalid(
                "lease.annotations",
                "keys must be non-empty annotation keys".into(),
            ));
        }
        if l.env_names.iter().any(String::is_empty) {
            return Err(invalid("lease.envNames", "names must be non-empty".into()));
        }
        if let Some(f) = l
            .flags
            .iter()
            .find(|f| !f.starts_with('-') || f.contains('='))
        {
            return Err(invalid(
                "lease.flags",
                format!("{f:?} must start with '-' and contain no '='"),
            ));
        }
        if !(1..=15).contains(&self.dns.ndots) {
            return Err(invalid(
                "dns.ndots",
                format!(
                    "{} is out of range 1..=15 (the resolver caps ndots at 15)",
                    self.dns.ndots
                ),
            ));
        }
        let p = &self.prestop;
        if !(1..=3600).contains(&p.sleep_seconds) {
            return Err(invalid(
                "prestop.sleepSeconds",
                format!("{} is out of range 1..=3600", p.sleep_seconds),
            ));
        }
        if !(1..=3600).contains(&p.min_drain_seconds) {
            return Err(invalid(
                "prestop.minDrainSeconds",
                format!(
                    "{} is out of range 1..=3600; it must be at least 1 so that the grace period stays longer than the sleep",
                    p.min_drain_seconds
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_defaults() {
        assert_eq!(Config::from_yaml("", "p").unwrap(), Config::default());
        assert_eq!(
            Config::from_yaml("# nothing\n", "p").unwrap(),
            Config::default()
        );
        assert_eq!(Config::from_yaml("{}", "p").unwrap(), Config::default());
    }

    #[test]
    fn the_example_file_spells_out_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/policy.yaml");
        assert_eq!(Config::load(&path).unwrap(), Config::default());
    }

    #[test]
    fn non_utf8_files_are_refused_not_decoded_lossily() {
        let e = Config::from_bytes(b"dns:\n  ndots: 3 # \xff\n", "p.yaml").unwrap_err();
        assert!(matches!(e, ConfigError::NotUtf8 { .. }), "{e}");
        assert!(e.to_string().contains("p.yaml"), "{e}");
        let c = Config::from_bytes(b"dns:\n  ndots: 3\n", "p.yaml").unwrap();
        assert_eq!(c.dns.ndots, 3);
    }

    #[test]
    fn partial_sections_keep_other_defaults() {
        let c = Config::from_yaml("dns:\n  ndots: 3\nprestop:\n  mode: exec\n", "p").unwrap();
        assert_eq!(c.dns.ndots, 3);
        assert!(c.dns.enabled);
        assert_eq!(c.prestop.mode, PrestopMode::Exec);
        assert_eq!(c.prestop.sleep_seconds, 5);
    }

    #[test]
    fn enforcement_is_per_policy_and_does_not_collide_with_mode() {
        let c = Config::from_yaml(
            "dns: {enforcement: report}\nprestop: {mode: exec, enforcement: report}\n",
            "p",
        )
        .unwrap();
        assert_eq!(c.dns.enforcement, Enforcement::Report);
        assert_eq!(c.prestop.enforcement, Enforcement::Report);
        assert_eq!(c.prestop.mode, PrestopMode::Exec);
        assert_eq!(c.lease.enforcement, Enforcement::Enforce);
        assert_eq!(c.rollout.enforcement, Enforcement::Enforce);
        for entry in crate::policy::ALL {
            let report = ["dns", "prestop"].contains(&entry.name);
            assert_eq!(
                c.enforcement(entry.name) == Enforcement::Report,
                report,
                "{}",
                entry.name
            );
        }
        let e = Config::from_yaml("dns: {enforcement: watch}\n", "p")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown variant `watch`"), "{e}");
        // `mode: report` is not an enforcement: it names what lease writes.
        let e = Config::from_yaml("lease: {mode: report}\n", "p")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown variant `report`"), "{e}");
    }

    #[test]
    fn typos_and_bad_values_are_named() {
        let e = Config::from_yaml("dns:\n  ndot: 3\n", "policy.yaml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `ndot`"), "{e}");
        assert!(e.contains("policy.yaml"), "{e}");
        let e = Config::from_yaml("dns:\n  ndots: 0\n", "p")
            .unwrap_err()
            .to_string();
        assert!(e.contains("dns.ndots"), "{e}");
        let e = Config::from_yaml("prestop:\n  minDrainSeconds: 0\n", "p")
            .unwrap_err()
            .to_string();
        assert!(e.contains("prestop.minDrainSeconds"), "{e}");
        let e = Config::from_yaml("lease:\n  mode: pods\n", "p")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown variant `pods`"), "{e}");
        let e = Config::from_yaml("lease:\n  flags: [lease]\n", "p")
            .unwrap_err()
            .to_string();
        assert!(e.contains("lease.flags"), "{e}");
    }
}
