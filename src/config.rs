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
//! Unknown keys are rejected (a typo must not silently fall back to a default)
//! and values are range-checked, so a bad file fails at start with a message
//! that names the key.

use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read policy file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("policy file {path}: {source}")]
    Parse {
        path: String,
        source: serde_yaml::Error,
    },
    #[error("policy file {path}: {key}: {message}")]
    Invalid {
        path: String,
        key: &'static str,
        message: String,
    },
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Config {
    pub lease: LeaseConfig,
    pub rollout_history: RolloutHistoryConfig,
    pub dns: DnsConfig,
    pub prestop: PrestopConfig,
    pub rollout: RolloutConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LeaseMode {
    /// Rewrite `metadata.name=<pod>` to `metadata.namespace=<ns>`.
    Namespace,
    /// Leave selectors alone (one lease per pod).
    Pod,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct LeaseConfig {
    pub enabled: bool,
    pub mode: LeaseMode,
    pub annotations: Vec<String>,
    pub env_names: Vec<String>,
    pub flags: Vec<String>,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        LeaseConfig {
            enabled: true,
            mode: LeaseMode::Namespace,
            annotations: vec![crate::LEASE_SELECTOR_ANNOTATION.to_string()],
            env_names: vec!["LEASE_SELECTOR".to_string()],
            flags: vec!["--lease-selector".to_string()],
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct RolloutHistoryConfig {
    pub enabled: bool,
    /// A Deployment that rolled more than this many times in the last hour is hot.
    pub hot_rollouts_per_hour: u32,
}

impl Default for RolloutHistoryConfig {
    fn default() -> Self {
        RolloutHistoryConfig {
            enabled: true,
            hot_rollouts_per_hour: 1,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct DnsConfig {
    pub enabled: bool,
    pub ndots: u8,
    /// Replace an ndots the pod sets itself.
    pub r#override: bool,
    pub single_request_reopen: bool,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            enabled: true,
            ndots: 2,
            r#override: false,
            single_request_reopen: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PrestopMode {
    /// The native `lifecycle.preStop.sleep` action (GA in Kubernetes 1.34).
    Sleep,
    /// `exec: ["sh", "-c", "sleep N"]`, for older clusters; needs a shell in the image.
    Exec,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct PrestopConfig {
    pub enabled: bool,
    pub mode: PrestopMode,
    pub sleep_seconds: i64,
    /// Time the grace period must leave after the sleep for the app to drain.
    pub min_drain_seconds: i64,
}

impl Default for PrestopConfig {
    fn default() -> Self {
        PrestopConfig {
            enabled: true,
            mode: PrestopMode::Sleep,
            sleep_seconds: 5,
            min_drain_seconds: 5,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct RolloutConfig {
    pub enabled: bool,
}

impl Default for RolloutConfig {
    fn default() -> Self {
        RolloutConfig { enabled: true }
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::load_with_bytes(path).map(|(config, _)| config)
    }

    /// [`Config::load`], also returning the bytes the policy came from: a
    /// watcher compares the file with them, so that a change made after the
    /// read, before the watch starts, is not taken as the baseline and missed.
    pub fn load_with_bytes(path: &Path) -> Result<(Config, Vec<u8>), ConfigError> {
        let shown = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| ConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        let config = Config::from_bytes(&bytes, &shown)?;
        Ok((config, bytes))
    }

    /// Parse and validate the bytes of a policy file, which must be UTF-8.
    pub fn from_bytes(bytes: &[u8], path: &str) -> Result<Config, ConfigError> {
        let text = std::str::from_utf8(bytes).map_err(|e| ConfigError::Read {
            path: path.to_string(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        })?;
        Config::from_yaml(text, path)
    }

    /// Parse and validate. An empty file means "all defaults".
    pub fn from_yaml(text: &str, path: &str) -> Result<Config, ConfigError> {
        let config: Config = if text.trim().is_empty() {
            Config::default()
        } else {
            serde_yaml::from_str::<Option<Config>>(text)
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
    fn partial_sections_keep_other_defaults() {
        let c = Config::from_yaml("dns:\n  ndots: 3\nprestop:\n  mode: exec\n", "p").unwrap();
        assert_eq!(c.dns.ndots, 3);
        assert!(c.dns.enabled);
        assert_eq!(c.prestop.mode, PrestopMode::Exec);
        assert_eq!(c.prestop.sleep_seconds, 5);
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
