//! Patched objects of one test, checked at the end with the Python checker
//! (`tests/pycheck.py check`): `jsonpatch` must reproduce each object from
//! its original and patch, and each object must pass
//! `kubernetes-validate --strict` for Kubernetes [`K8S_VERSION`].

use crate::corpus::repo_root;
use crate::harness::python;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The Kubernetes version the patched objects are validated against (the
/// checker's own `K8S_VERSION`).
pub const K8S_VERSION: &str = "1.36.0";

/// The one Python checker: `load` reads the upstream fixtures with PyYAML,
/// `check` applies and validates patches.
pub fn script() -> PathBuf {
    repo_root().join("tests/pycheck.py")
}

/// Run `pycheck.py check` over `cases` (each `{"name", "original",
/// "patch", "patched", "validate"}`, see the script's usage) written to
/// `dir/cases.json`: (all passed, stdout and stderr).
pub fn check_cases(dir: &Path, cases: &[Value]) -> (bool, String) {
    let path = dir.join("cases.json");
    std::fs::write(&path, serde_json::to_vec(cases).expect("cases serialise"))
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    let out: Output = Command::new(python())
        .arg(script())
        .arg("check")
        .arg(&path)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {} (make venv): {e}", python().display()));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Patched objects of one test, checked with Python by [`PyChecks::run`].
pub struct PyChecks {
    dir: tempfile::TempDir,
    cases: Vec<Value>,
}

impl Default for PyChecks {
    fn default() -> Self {
        PyChecks::new()
    }
}

impl PyChecks {
    /// An empty set of cases.
    pub fn new() -> PyChecks {
        PyChecks {
            dir: tempfile::tempdir().expect("tempdir"),
            cases: Vec::new(),
        }
    }

    /// Record one case: `patch` applied to `orig` must give `want`. `name`
    /// only labels the case (and so the failure messages).
    pub fn add(&mut self, name: &str, orig: &Value, patch: &Value, want: &Value) {
        let safe: String = name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        self.cases.push(json!({
            "name": format!("{:03}-{safe}", self.cases.len()),
            "original": orig,
            "patch": patch,
            "patched": want,
            // Objects a test wrote itself: every schema error counts.
            "validate": "all",
        }));
    }

    /// Python jsonpatch must reproduce every object, and every object must
    /// pass `kubernetes-validate --strict` for Kubernetes [`K8S_VERSION`].
    pub fn run(self) {
        let n = self.cases.len();
        assert!(n > 0, "a test that checks patches recorded none");
        let (ok, text) = check_cases(self.dir.path(), &self.cases);
        assert!(ok, "the Python checker disagrees:\n{text}");
        // Every object applied and validated, none skipped.
        let summary = format!(
            "pycheck: {n} patches applied with python jsonpatch, {n} objects validated against Kubernetes {K8S_VERSION} (strict), 0 failures"
        );
        assert!(
            text.contains(&summary),
            "every object must be checked ({summary:?}):\n{text}"
        );
    }
}
