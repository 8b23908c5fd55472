//! The policy file: one section per policy, every key optional.
//!
//! This module reads the file's structure and the two keys every section
//! has; it knows no policy. Each policy module owns its section's other keys,
//! their defaults and their checks ([`crate::policy::Definition`]), and
//! [`crate::policy::configure`] refuses sections no policy owns.
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
//!   mode: sleep                # or `exec` for clusters older than 1.30
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
use serde_json::{Map, Value};
use std::collections::BTreeMap;
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
    /// A section or a value the policy that owns it refuses: an unknown
    /// section or key, a wrong type, a value out of range.
    #[error("policy file {path}: {key}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// The section, or `section.key`, in the file's own spelling.
        key: String,
        /// What is wrong and what is allowed.
        message: String,
    },
}

/// The whole policy file: its sections, by the key they are written under.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Config {
    /// Where it was read from, to name it in errors found later (by the
    /// policy that owns a section).
    source: String,
    /// The sections as written; a section the file leaves out has its
    /// defaults ([`Section::default`]).
    sections: BTreeMap<String, Section>,
}

/// Whether a policy's changes are patched or only reported.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Enforcement {
    /// Patch the changes (the default).
    #[default]
    Enforce,
    /// Compute, count and log the changes; never patch them.
    Report,
}

/// One section of the policy file: the keys every policy has, and the rest
/// for the policy that owns the section to read.
#[derive(Debug, Clone, PartialEq)]
pub struct Section {
    /// `enabled: false` turns the policy off without removing the section.
    pub enabled: bool,
    /// `enforcement: report` computes and counts the policy's changes without
    /// patching them.
    pub enforcement: Enforcement,
    /// The policy's own keys, undecoded: the policy decodes and checks them.
    pub settings: Map<String, Value>,
}

impl Default for Section {
    fn default() -> Self {
        Section {
            enabled: true,
            enforcement: Enforcement::Enforce,
            settings: Map::new(),
        }
    }
}

/// [`Section::default`], to lend out for a section the file leaves out.
static DEFAULT_SECTION: std::sync::LazyLock<Section> = std::sync::LazyLock::new(Section::default);

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

    /// Read and parse the policy file at `path`.
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

    /// Parse the bytes of a policy file; `path` names it in errors.
    pub fn from_bytes(bytes: &[u8], path: &str) -> Result<Config, ConfigError> {
        let text = std::str::from_utf8(bytes).map_err(|source| ConfigError::NotUtf8 {
            path: path.to_string(),
            source,
        })?;
        Config::from_yaml(text, path)
    }

    /// Parse the file's sections. An empty file means "all defaults". The
    /// sections' own keys are checked by the policies that own them
    /// ([`crate::policy::configure`]).
    pub fn from_yaml(text: &str, path: &str) -> Result<Config, ConfigError> {
        let mut config = Config {
            source: path.to_string(),
            sections: BTreeMap::new(),
        };
        if text.trim().is_empty() {
            return Ok(config);
        }
        let file =
            crate::yaml::from_str::<Option<Value>>(text).map_err(|source| ConfigError::Parse {
                path: path.to_string(),
                source,
            })?;
        let sections = match file {
            None | Some(Value::Null) => return Ok(config),
            Some(Value::Object(sections)) => sections,
            Some(other) => {
                return Err(config.invalid(
                    "(top level)",
                    format!("expected a mapping of sections, got {}", kind_of(&other)),
                ))
            }
        };
        for (key, value) in sections {
            let mut settings = match value {
                Value::Null => Map::new(),
                Value::Object(settings) => settings,
                other => {
                    return Err(config
                        .invalid(&key, format!("expected a mapping, got {}", kind_of(&other))))
                }
            };
            let mut section = Section::default();
            if let Some(v) = settings.remove("enabled") {
                section.enabled = serde_json::from_value(v)
                    .map_err(|e| config.invalid(&format!("{key}.enabled"), e.to_string()))?;
            }
            if let Some(v) = settings.remove("enforcement") {
                section.enforcement = serde_json::from_value(v)
                    .map_err(|e| config.invalid(&format!("{key}.enforcement"), e.to_string()))?;
            }
            section.settings = settings;
            config.sections.insert(key, section);
        }
        Ok(config)
    }

    /// The section written under `key`, or its defaults.
    pub fn section(&self, key: &str) -> &Section {
        self.sections.get(key).unwrap_or(&DEFAULT_SECTION)
    }

    /// The keys of the sections the file has, in the file's spelling.
    pub fn section_keys(&self) -> impl Iterator<Item = &str> {
        self.sections.keys().map(String::as_str)
    }

    /// The file, for error messages: its path, or `(defaults)`.
    pub fn source(&self) -> &str {
        if self.source.is_empty() {
            "(defaults)"
        } else {
            &self.source
        }
    }

    /// An error about `key` (a section, or `section.key`) in this file.
    pub fn invalid(&self, key: &str, message: String) -> ConfigError {
        ConfigError::Invalid {
            path: self.source().to_string(),
            key: key.to_string(),
            message,
        }
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_files_are_defaults() {
        for text in ["", "# nothing\n", "{}", "~"] {
            let c = Config::from_yaml(text, "p").unwrap();
            assert_eq!(c.section_keys().count(), 0, "{text:?}");
            assert_eq!(*c.section("dns"), Section::default());
        }
    }

    #[test]
    fn non_utf8_files_are_refused_not_decoded_lossily() {
        let e = Config::from_bytes(b"dns:\n  ndots: 3 # \xff\n", "p.yaml").unwrap_err();
        assert!(matches!(e, ConfigError::NotUtf8 { .. }), "{e}");
        assert!(e.to_string().contains("p.yaml"), "{e}");
    }

    #[test]
    fn enabled_and_enforcement_are_every_section_s_and_the_rest_is_the_policy_s() {
        let c = Config::from_yaml(
            "dns: {enforcement: report, ndots: 3}\nprestop: {enabled: false}\nrollout:\n",
            "p",
        )
        .unwrap();
        let dns = c.section("dns");
        assert_eq!(dns.enforcement, Enforcement::Report);
        assert!(dns.enabled);
        assert_eq!(dns.settings.get("ndots"), Some(&serde_json::json!(3)));
        assert!(!dns.settings.contains_key("enforcement"));
        assert!(!c.section("prestop").enabled);
        assert_eq!(*c.section("rollout"), Section::default());
        assert_eq!(
            c.section_keys().collect::<Vec<_>>(),
            ["dns", "prestop", "rollout"]
        );
    }

    #[test]
    fn bad_shapes_and_values_name_the_file_and_the_key() {
        for (text, key, says) in [
            (
                "dns: {enforcement: watch}\n",
                "dns.enforcement",
                "unknown variant `watch`",
            ),
            ("dns: {enabled: yes}\n", "dns.enabled", "expected a boolean"),
            ("dns: [1]\n", "dns", "expected a mapping, got a list"),
            ("- dns\n", "(top level)", "expected a mapping of sections"),
        ] {
            let e = Config::from_yaml(text, "policy.yaml")
                .unwrap_err()
                .to_string();
            assert!(e.contains("policy.yaml"), "{e}");
            assert!(e.contains(key), "{text}: {e}");
            assert!(e.contains(says), "{text}: {e}");
        }
        let e = Config::from_yaml("dns:\n  ndots: 2\n  ndots: 3\n", "p").unwrap_err();
        assert!(e.to_string().contains("duplicate"), "{e}");
    }
}
