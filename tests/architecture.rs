//! The shape of the crate, held by a test: no import cycles between the
//! modules of `src/`, and the one list of policies is the only one.
//!
//! A module's imports are the `crate::` and `super::` paths its code names
//! (its own `#[cfg(test)] mod tests` aside: a test may use anything). A cycle
//! means two modules that cannot be understood, or changed, one without the
//! other.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file under `src/` (but `main.rs`, the binary's edge) and its
/// module path (`server::listener`, `crate` for `lib.rs`).
fn modules(src: &Path) -> BTreeMap<String, PathBuf> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().and_then(|e| e.to_str()) != Some("rs") {
                continue;
            }
            let rel = path.strip_prefix(src).unwrap().with_extension("");
            let mut segs: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            match segs.last().map(String::as_str) {
                Some("main") => continue,
                Some("mod") | Some("lib") => {
                    segs.pop();
                }
                _ => {}
            }
            let name = if segs.is_empty() {
                "crate".to_string()
            } else {
                segs.join("::")
            };
            out.insert(name, path);
        }
    }
    out
}

/// The code of a file without its test module and its comments.
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let text = match text.find("\n#[cfg(test)]\nmod tests") {
        Some(cut) => &text[..cut],
        None => &text[..],
    };
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The paths a file names after `prefix` (`crate::` or `super::`), as
/// segments: `crate::view::{Keys, Shape}` gives `[view, Keys]` and
/// `[view, Shape]`.
fn paths_after(code: &str, prefix: &str) -> Vec<Vec<String>> {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut out = Vec::new();
    for (at, _) in code.match_indices(prefix) {
        if code[..at].ends_with(|c: char| ident(c) || c == ':') {
            continue; // part of a longer path, `self::super::`
        }
        let rest = &code[at + prefix.len()..];
        let mut segs = Vec::new();
        let mut cursor = rest;
        loop {
            let seg: String = cursor.chars().take_while(|c| ident(*c)).collect();
            if seg.is_empty() {
                break;
            }
            cursor = &cursor[seg.len()..];
            segs.push(seg);
            match cursor.strip_prefix("::") {
                Some(next) => cursor = next,
                None => break,
            }
        }
        if let Some(group) = cursor.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let mut path = segs.clone();
                path.extend(
                    item.split("::")
                        .map(|s| s.trim().split(' ').next().unwrap_or("").to_string())
                        .filter(|s| !s.is_empty() && s != "self"),
                );
                out.push(path);
            }
        } else {
            out.push(segs);
        }
    }
    out
}

/// The longest known module that `path` starts with.
fn resolve(known: &BTreeMap<String, PathBuf>, path: &[String]) -> Option<String> {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].join("::"))
        .find(|m| known.contains_key(m))
}

/// Which module imports which.
fn graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let known = modules(src);
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, path) in &known {
        let code = code(path);
        let segs: Vec<String> = if module == "crate" {
            Vec::new()
        } else {
            module.split("::").map(String::from).collect()
        };
        // `super::` from `a/b.rs` and from `a/b/mod.rs` (module `a::b`) is `a`.
        let parent: Vec<String> = segs[..segs.len().saturating_sub(1)].to_vec();
        let mut targets = BTreeSet::new();
        for p in paths_after(&code, "crate::") {
            targets.extend(resolve(&known, &p));
        }
        for p in paths_after(&code, "super::") {
            let mut full = parent.clone();
            full.extend(p);
            targets.extend(resolve(&known, &full));
        }
        targets.remove(module);
        edges.insert(module.clone(), targets);
    }
    edges
}

/// The groups of modules that import each other, directly or not.
fn cycles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    let reaches = |from: &str| {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.to_string()];
        while let Some(m) = todo.pop() {
            for next in edges.get(&m).into_iter().flatten() {
                if seen.insert(next.clone()) {
                    todo.push(next.clone());
                }
            }
        }
        seen
    };
    let reach: BTreeMap<&String, BTreeSet<String>> =
        edges.keys().map(|m| (m, reaches(m))).collect();
    let mut groups: Vec<Vec<String>> = Vec::new();
    for m in edges.keys() {
        let group: Vec<String> = edges
            .keys()
            .filter(|o| *o != m && reach[m].contains(*o) && reach[*o].contains(m))
            .cloned()
            .collect();
        if !group.is_empty() {
            let mut all = group;
            all.push(m.clone());
            all.sort();
            if !groups.contains(&all) {
                groups.push(all);
            }
        }
    }
    groups
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn no_module_of_src_imports_one_that_imports_it() {
    let edges = graph(&src());
    // The graph is real: these edges exist, and would be missed by a broken
    // reader of paths.
    for (from, to) in [
        ("pipeline", "policy"),
        ("policy::dns", "view"),
        ("server::listener", "server::tls"),
        ("review::admit", "review::decode"),
    ] {
        assert!(
            edges[from].contains(to),
            "{from} -> {to} not seen: {:?}",
            edges[from]
        );
    }
    let found = cycles(&edges);
    assert!(
        found.is_empty(),
        "import cycles: {found:?}\n{}",
        edges
            .iter()
            .map(|(m, t)| format!(
                "{m} -> {}",
                t.iter().cloned().collect::<Vec<_>>().join(", ")
            ))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn the_cycle_finder_finds_cycles() {
    let edges: BTreeMap<String, BTreeSet<String>> = [
        ("a", vec!["b"]),
        ("b", vec!["c"]),
        ("c", vec!["a"]),
        ("d", vec!["a"]),
    ]
    .into_iter()
    .map(|(m, t)| (m.to_string(), t.into_iter().map(String::from).collect()))
    .collect();
    assert_eq!(cycles(&edges), vec![vec!["a", "b", "c"]]);
    let paths = paths_after("use crate::view::{self, Keys, shape::Shape};", "crate::");
    assert_eq!(
        paths,
        vec![
            vec!["view".to_string()],
            vec!["view".to_string(), "Keys".to_string()],
            vec!["view".to_string(), "shape".to_string(), "Shape".to_string()],
        ]
    );
}

#[test]
fn the_policy_names_are_written_in_one_place() {
    // A policy's name as a string literal appears only in its own module
    // (and the docs): everything else reads `policy::ALL`.
    let known = modules(&src());
    let names: Vec<&str> = calmplane::policy::names().collect();
    for (module, path) in &known {
        let code = code(path);
        for name in &names {
            let module_file = name.replace('-', "_");
            if module == &format!("policy::{module_file}") {
                continue;
            }
            assert!(
                !code.contains(&format!("\"{name}\"")),
                "{module} spells the policy name \"{name}\"; read it from policy::ALL"
            );
        }
    }
}
