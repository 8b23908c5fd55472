//! Patched objects of one test, checked at the end with Python: `jsonpatch`
//! must reproduce each object from its original and patch
//! (tests/check_patch.py), and each object must pass
//! `kubernetes-validate --strict -k 1.34.0`.
#![allow(dead_code)]

use super::python;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The Kubernetes version the patched objects are validated against.
pub const K8S_VERSION: &str = "1.34.0";

/// Patched objects of one test, checked with Python by [`PyChecks::run`].
pub struct PyChecks {
    dir: tempfile::TempDir,
    n: usize,
}

impl PyChecks {
    pub fn new() -> PyChecks {
        PyChecks {
            dir: tempfile::tempdir().expect("tempdir"),
            n: 0,
        }
    }

    /// Record one case: `patch` applied to `orig` must give `want`. `name`
    /// only labels the files (and so the failure messages).
    pub fn add(&mut self, name: &str, orig: &Value, patch: &Value, want: &Value) {
        let safe: String = name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let base = self.dir.path().join(format!("{:03}-{safe}", self.n));
        for (ext, v) in [("orig", orig), ("patch", patch), ("want", want)] {
            let path = PathBuf::from(format!("{}.{ext}.json", base.display()));
            std::fs::write(&path, serde_json::to_vec_pretty(v).unwrap()).unwrap();
        }
        self.n += 1;
    }

    /// Python jsonpatch must reproduce every object, and every object must
    /// pass `kubernetes-validate --strict` for Kubernetes 1.34.
    pub fn run(self) {
        assert!(self.n > 0, "a test that checks patches recorded none");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/check_patch.py");
        let out = Command::new(python())
            .arg(&script)
            .arg(self.dir.path())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", python().display()));
        assert!(
            out.status.success(),
            "Python jsonpatch disagrees:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        validate_dir(self.dir.path(), self.n);
    }
}

/// `kubernetes-validate --strict -k 1.34.0` on every `*.want.json` in `dir`;
/// exactly `expected` of them, each reported as passed (a skipped object
/// fails).
pub fn validate_dir(dir: &Path, expected: usize) {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".want.json"))
        .collect();
    files.sort();
    assert_eq!(files.len(), expected);
    let validator = python()
        .parent()
        .expect("venv bin dir")
        .join("kubernetes-validate");
    let out = Command::new(&validator)
        .args(["--strict", "-k", K8S_VERSION])
        .args(&files)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", validator.display()));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "kubernetes-validate failed:\n{text}");
    assert_eq!(
        text.matches(" passed for resource ").count(),
        expected,
        "every object must be validated:\n{text}"
    );
}
