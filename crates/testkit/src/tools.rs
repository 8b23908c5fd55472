//! Programs the tests run beside calmplane (kubectl, promtool, prometheus)
//! and the small helpers around them.
//!
//! A missing program skips its test with a visible `SKIPPED` line on a
//! developer's machine, and fails it under `CI=true`: CI installs every one
//! of them (`make test`), so a skip there would hide a test that never ran.

use serde_json::Value;
use std::path::PathBuf;
use std::process::{Command, Output};

/// Whether this is a CI run (`CI` set to anything but empty, `0` or `false`).
pub fn in_ci() -> bool {
    matches!(std::env::var("CI").as_deref(), Ok(v) if !v.is_empty() && v != "false" && v != "0")
}

/// `name` from PATH, if it is there.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

/// `name` from PATH for `test`; without it, `None` after a `SKIPPED` line
/// that says how to install it (`install`), or a failure in CI.
pub fn required(name: &str, test: &str, install: &str) -> Option<PathBuf> {
    let found = find_on_path(name);
    if found.is_none() {
        let why = format!("{test}: `{name}` is not on PATH; {install}");
        assert!(!in_ci(), "CI is set, so this must not be skipped: {why}");
        // Straight to stderr: the test harness captures eprintln! of passing
        // tests, and a skip must be visible.
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), "SKIPPED {why}");
    }
    found
}

/// Run `cmd` and require success; the failure message has both outputs.
pub fn run_ok(cmd: &mut Command) -> Output {
    let shown = format!("{cmd:?}");
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {shown}: {e}"));
    assert!(
        out.status.success(),
        "{shown} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Every non-empty document of a YAML stream, read as calmplane reads YAML.
pub fn yaml_docs(text: &str) -> Vec<Value> {
    calmplane::yaml::documents(text)
        .expect("valid YAML")
        .into_iter()
        .filter(|v| !v.is_null())
        .collect()
}

/// [`yaml_docs`] of the file at `path`.
pub fn read_docs(path: &std::path::Path) -> Vec<Value> {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    yaml_docs(&text)
}

/// A list of strings, as manifests write args, verbs and the like.
pub fn str_list(v: &Value) -> Vec<&str> {
    v.as_array()
        .unwrap_or_else(|| panic!("expected a list, got {v}"))
        .iter()
        .map(|s| {
            s.as_str()
                .unwrap_or_else(|| panic!("expected strings in {v}"))
        })
        .collect()
}

/// `kind/name` of an object.
pub fn key(doc: &Value) -> String {
    format!(
        "{}/{}",
        doc["kind"].as_str().unwrap_or("?"),
        doc["metadata"]["name"].as_str().unwrap_or("?")
    )
}

/// The object `kind/name` among `docs`; a failure lists what there is.
pub fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| {
            panic!(
                "no {kind}/{name} among {:?}",
                docs.iter().map(key).collect::<Vec<_>>()
            )
        })
}
