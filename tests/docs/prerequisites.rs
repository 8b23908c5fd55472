//! The README's and the book's prerequisites name every tool the Makefile,
//! `.ci/run` and the tests call.

use super::*;

/// What a shell script or recipe may call without it being a prerequisite:
/// the shell itself and coreutils-level tools every Linux has.
pub(crate) const BASICS: &[&str] = &[
    "bash",
    "sh",
    "command",
    "cd",
    "echo",
    "exit",
    "test",
    "[",
    "true",
    "false",
    "touch",
    "rm",
    "mkdir",
    "cp",
    "mv",
    "cat",
    "grep",
    "sed",
    "awk",
    "head",
    "tail",
    "sort",
    "cut",
    "tr",
    "sha256sum",
    "date",
    "printf",
    "set",
    "export",
    "exec",
    "env",
    "wait",
    "kill",
    "sleep",
];

/// A Makefile, as far as the prerequisites test needs it: its variables
/// and, per target, its prerequisites and recipe lines.
pub(crate) struct Makefile {
    pub(crate) vars: BTreeMap<String, String>,
    targets: BTreeMap<String, (Vec<String>, Vec<String>)>,
}

impl Makefile {
    pub(crate) fn parse(text: &str) -> Makefile {
        let mut vars = BTreeMap::new();
        let mut targets: BTreeMap<String, (Vec<String>, Vec<String>)> = BTreeMap::new();
        let mut current: Vec<String> = Vec::new();
        for line in text.lines() {
            if let Some(recipe) = line.strip_prefix('\t') {
                for t in &current {
                    targets.get_mut(t).unwrap().1.push(recipe.to_string());
                }
                continue;
            }
            if line.trim_start().starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let assignment = ["?=", ":=", "+=", "="]
                .iter()
                .find_map(|op| line.split_once(op));
            if let Some((name, value)) = assignment {
                let name = name.trim();
                let name = name.strip_prefix("export ").unwrap_or(name).trim();
                if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    vars.entry(name.to_string())
                        .or_insert(value.trim().to_string());
                    current.clear();
                    continue;
                }
            }
            if let Some((names, deps)) = line.split_once(':') {
                current = names
                    .split_whitespace()
                    .map(str::to_string)
                    .filter(|n| !n.starts_with('.'))
                    .collect();
                for t in &current {
                    targets
                        .entry(t.clone())
                        .or_default()
                        .0
                        .extend(deps.split_whitespace().map(str::to_string));
                }
            }
        }
        let mut make = Makefile { vars, targets };
        // Targets and prerequisites named with variables: `$(VENV)/.installed`.
        let expanded: BTreeMap<_, _> = make
            .targets
            .iter()
            .map(|(t, (deps, recipe))| {
                (
                    make.expand(t),
                    (
                        deps.iter().map(|d| make.expand(d)).collect(),
                        recipe.clone(),
                    ),
                )
            })
            .collect();
        make.targets = expanded;
        make
    }

    /// `$(NAME)` replaced by its value, as often as it takes.
    fn expand(&self, text: &str) -> String {
        let mut out = text.to_string();
        for _ in 0..8 {
            let mut next = out.clone();
            for (name, value) in &self.vars {
                next = next.replace(&format!("$({name})"), value);
            }
            if next == out {
                break;
            }
            out = next;
        }
        out
    }

    /// The recipe lines of `roots` and of every target they depend on.
    fn recipes(&self, roots: &[&str]) -> Vec<String> {
        let mut seen = BTreeSet::new();
        let mut queue: Vec<String> = roots.iter().map(|r| r.to_string()).collect();
        let mut out = Vec::new();
        while let Some(target) = queue.pop() {
            if !seen.insert(target.clone()) {
                continue;
            }
            let Some((deps, recipe)) = self.targets.get(&target) else {
                continue;
            };
            out.extend(recipe.iter().map(|r| self.expand(r)));
            queue.extend(deps.iter().cloned());
        }
        out
    }
}

/// The programs a shell line calls: the first word of each command, and
/// what `command -v` looks for; a `bash script.sh` adds what the script
/// looks for with `command -v`.
pub(crate) fn programs(line: &str, found: &mut BTreeSet<String>) {
    // What is left of make's `$(...)` after expansion: a variable that is
    // empty or from the environment goes, a function such as `$(abspath
    // x)` leaves its argument.
    let mut line = line.to_string();
    while let Some(i) = line.find("$(") {
        let end = line[i..].find(')').map_or(line.len(), |e| i + e);
        let inner = &line[i + 2..end];
        let kept = inner
            .split_once(' ')
            .map_or("", |(_, args)| args)
            .to_string();
        line = format!(
            "{}{}{}",
            &line[..i],
            kept,
            &line[(end + 1).min(line.len())..]
        );
    }
    for sep in ["&&", "||", ";", "|", "{", "}", "(", ")", "<", ">"] {
        line = line.replace(sep, "\n");
    }
    for command in line.lines() {
        let mut words = command
            .split_whitespace()
            .map(|w| w.trim_start_matches(['@', '-']))
            .skip_while(|w| w.contains('=') || w.is_empty());
        let Some(first) = words.next() else {
            continue;
        };
        let rest: Vec<&str> = words.collect();
        if first == "command" && rest.first() == Some(&"v") {
            if let Some(tool) = rest.get(1) {
                found.insert(tool.to_string());
            }
            continue;
        }
        if (first == "bash" || first == "sh") && rest.first().is_some_and(|s| s.ends_with(".sh")) {
            let script = read(&repo().join(rest[0]));
            for line in script.lines() {
                if let Some(i) = line.find("command -v ") {
                    if let Some(tool) = line[i + "command -v ".len()..].split_whitespace().next() {
                        found.insert(tool.to_string());
                    }
                }
            }
            continue;
        }
        if first.contains('/') || first.contains('$') || BASICS.contains(&first) {
            continue;
        }
        found.insert(first.to_string());
    }
}

/// The tools the tests run from PATH: `required("x"`, `tool("x"` and
/// `Command::new("x")`, in tests/ and the testkit.
pub(crate) fn tools_the_tests_run() -> BTreeSet<String> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                if !path.ends_with("fixtures") {
                    walk(&path, out);
                }
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(&repo().join("tests"), &mut files);
    walk(&repo().join("crates/testkit/src"), &mut files);
    let mut found = BTreeSet::new();
    // This file names the patterns it looks for.
    files.retain(|f| !f.ends_with("tests/docs/prerequisites.rs"));
    for file in files {
        let text = read(&file);
        for call in ["required(", "tool(", "Command::new("] {
            for (i, _) in text.match_indices(call) {
                let after = text[i + call.len()..].trim_start();
                if let Some(quoted) = after.strip_prefix('"') {
                    let name = &quoted[..quoted.find('"').unwrap()];
                    let tool_like = name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
                    if tool_like && !name.is_empty() && !BASICS.contains(&name) {
                        found.insert(name.to_string());
                    }
                }
            }
        }
    }
    found
}

/// The text of a page's `## Prerequisites` section.
pub(crate) fn prerequisites(path: &Path) -> String {
    let text = read(path);
    let start = text
        .find("\n## Prerequisites\n")
        .unwrap_or_else(|| panic!("{} has no `## Prerequisites`", shown(path)));
    let body = &text[start + 1..];
    let end = body[3..].find("\n## ").map(|e| e + 3).unwrap_or(body.len());
    body[..end].to_string()
}

/// Whether `word` appears in `text` on its own (not inside a longer name).
pub(crate) fn names(text: &str, word: &str) -> bool {
    text.match_indices(word).any(|(i, _)| {
        let before = text[..i].chars().next_back();
        let after = text[i + word.len()..].chars().next();
        let part = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '-' || c == '_');
        !part(before) && !part(after)
    })
}

/// The targets `.ci/run` makes.
pub(crate) fn ci_targets() -> Vec<String> {
    let run = read(&repo().join(".ci/run"));
    let mut out = Vec::new();
    for line in run.lines().filter(|l| !l.trim_start().starts_with('#')) {
        let words: Vec<&str> = line.split_whitespace().collect();
        for pair in words.windows(2) {
            if pair[0].trim_start_matches(['{', '(']) == "make" {
                out.push(pair[1].trim_end_matches([';', '}', ')']).to_string());
            }
        }
    }
    out
}

#[test]
fn the_readme_and_ci_run_the_same_test_command() {
    let readme = read(&repo().join("README.md"));
    assert!(
        readme.contains("\nmake run "),
        "the README gives `make run`"
    );
    assert!(
        readme.contains("\nmake test "),
        "the README gives `make test`"
    );
    let ci = ci_targets();
    assert!(
        ci.contains(&"test".to_string()),
        ".ci/run makes {ci:?}, not `test`"
    );
}

#[test]
fn the_prerequisites_name_every_tool_the_build_and_the_tests_call() {
    let make = Makefile::parse(&read(&repo().join("Makefile")));
    let mut needed: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut need = |tool: &str, why: String| needed.entry(tool.to_string()).or_default().push(why);
    for (what, roots) in [
        ("make run", vec!["run".to_string()]),
        ("make test", vec!["test".to_string()]),
        (".ci/run", ci_targets()),
    ] {
        let roots: Vec<&str> = roots.iter().map(String::as_str).collect();
        let recipes = make.recipes(&roots);
        assert!(
            !recipes.is_empty(),
            "{what}: no recipe found in the Makefile"
        );
        let mut found = BTreeSet::new();
        for line in &recipes {
            programs(line, &mut found);
            if line.contains("-m venv") {
                need("venv", format!("{what}: `{line}`"));
            }
            if line.contains("apt-get install") {
                need("root", format!("{what}: apt-get installs packages"));
            }
        }
        for tool in found {
            need(&tool, format!("{what} calls it"));
        }
    }
    for tool in tools_the_tests_run() {
        need(&tool, "a test runs it".to_string());
    }
    let cargo = read(&repo().join("Cargo.toml"));
    let rust = cargo
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .expect("Cargo.toml has a rust-version")
        .trim_matches('"')
        .to_string();
    need(
        &format!("Rust {rust}"),
        "Cargo.toml's rust-version".to_string(),
    );
    if read(&repo().join("Cargo.lock")).contains("\nname = \"cc\"\n") {
        need(
            "C compiler",
            "the cc crate builds C code (mimalloc, ring)".to_string(),
        );
    }
    // The tools found must be the real list, not an empty one.
    for tool in [
        "cargo",
        "python3",
        "promtool",
        "prometheus",
        "apt-get",
        "curl",
        "kubectl",
        "valgrind",
        "cargo-deny",
        "go",
    ] {
        assert!(
            needed.contains_key(tool),
            "{tool} is no longer found; the parser is broken or the build changed: {needed:?}"
        );
    }
    for page in ["README.md", "docs/src/getting-started.md"] {
        let section = prerequisites(&repo().join(page));
        let missing: Vec<String> = needed
            .iter()
            .filter(|(tool, _)| !names(&section, tool))
            .map(|(tool, why)| format!("{tool} ({})", why.join("; ")))
            .collect();
        assert!(
            missing.is_empty(),
            "{page}'s Prerequisites do not name:\n{}",
            missing.join("\n")
        );
    }
}
