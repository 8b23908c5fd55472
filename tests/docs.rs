//! The book (`docs/`) and the README, held to the code:
//! * the generated reference pages are what the code writes now. `make docs`
//!   rewrites them (`CALMPLANE_UPDATE_DOCS=1`); here a page that differs
//!   fails, with the command that fixes it;
//! * every link and `#anchor` of the README and the book resolves, with
//!   anchors as mdBook 0.5 writes heading ids, and every page of the book is
//!   in its SUMMARY.md;
//! * the README stays short, and its prerequisites (and the book's) name
//!   every tool the Makefile, `.ci/run` and the tests call;
//! * every alert's runbook_url is a section of the runbook page, and each
//!   section starts with commands that the e2e suite can run.

use calmplane::reference;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Every generated page: its path under the repository, and its writer.
fn generated() -> Vec<(&'static str, String)> {
    vec![
        (
            "docs/src/reference/policy-file.md",
            reference::policy_file(),
        ),
        ("docs/src/reference/metrics.md", reference::metrics()),
        ("docs/src/reference/cli.md", cli()),
    ]
}

/// `calmplane <path> --help`, as a user's terminal shows it. The
/// environment is cleared of calmplane's variables, which clap would show
/// as values.
fn help(path: &[&str]) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_calmplane"));
    for (key, _) in std::env::vars() {
        if key.starts_with("CALMPLANE_") {
            cmd.env_remove(key);
        }
    }
    let out = cmd
        .args(path)
        .arg("--help")
        .output()
        .expect("run calmplane");
    assert!(out.status.success(), "calmplane {path:?} --help failed");
    String::from_utf8(out.stdout).expect("UTF-8 help")
}

/// The subcommands a help text lists under `Commands:`, but `help`.
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| *l != "Commands:")
        .skip(1)
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_string)
        .collect()
}

/// `docs/src/reference/cli.md`: every subcommand's `--help`, from clap.
fn cli() -> String {
    let mut out = format!(
        "{}\n\n# CLI reference\n\nEvery command's `--help`, as clap prints it. Each option can also be set by the \
         environment variable shown beside it; a flag on the command line wins.\n",
        reference::GENERATED
    );
    let mut queue: Vec<Vec<String>> = vec![vec![]];
    while let Some(path) = queue.pop() {
        let args: Vec<&str> = path.iter().map(String::as_str).collect();
        let text = help(&args);
        let title = std::iter::once("calmplane")
            .chain(args.iter().copied())
            .collect::<Vec<_>>()
            .join(" ");
        out.push_str(&format!("\n## `{title}`\n\n```text\n{}```\n", text));
        // Depth first, in the order help lists them.
        for sub in subcommands(&text).into_iter().rev() {
            let mut next = path.clone();
            next.push(sub);
            queue.push(next);
        }
    }
    out
}

#[test]
fn generated_reference_pages_are_what_the_code_writes() {
    let update = std::env::var_os("CALMPLANE_UPDATE_DOCS").is_some();
    let mut stale = Vec::new();
    for (path, fresh) in generated() {
        let file: PathBuf = repo().join(path);
        if update {
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(&file, &fresh).unwrap();
            continue;
        }
        let committed = std::fs::read_to_string(&file).unwrap_or_default();
        if committed != fresh {
            stale.push(path);
        }
    }
    assert!(
        stale.is_empty(),
        "generated pages differ from what the code writes now: {stale:?}; run `make docs` and commit them"
    );
}

#[test]
fn the_cli_reference_covers_every_subcommand() {
    let page = cli();
    for command in [
        "calmplane serve",
        "calmplane export mutating-admission-policy",
        "calmplane audit",
        "calmplane lease-monitor",
    ] {
        assert!(page.contains(&format!("## `{command}`")), "{command}");
    }
    assert!(!page.contains("## `calmplane help`"));
}

// ------------------------------------------------------------ Markdown

/// Every Markdown file the links test reads: the README and the book's
/// sources, generated pages included.
fn markdown_files() -> Vec<PathBuf> {
    let mut files = vec![repo().join("README.md")];
    files.extend(book_pages());
    files
}

/// Every `.md` file under `docs/src`, `SUMMARY.md` included, sorted.
fn book_pages() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "md") {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(&repo().join("docs/src"), &mut out);
    out.sort();
    out
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn shown(path: &Path) -> String {
    path.strip_prefix(repo())
        .unwrap_or(path)
        .display()
        .to_string()
}

/// Something with the 1-based number of the line it starts on.
type Numbered<T> = (usize, T);

/// A fenced code block: its info string and its lines.
struct Fence {
    info: String,
    lines: Vec<String>,
}

/// A Markdown text cut into prose lines (1-based line numbers) and fenced
/// code blocks. Only backtick fences are used in this repository; a line
/// whose indentation is stripped starts or ends one.
fn split_fences(text: &str) -> (Vec<Numbered<String>>, Vec<Numbered<Fence>>) {
    let mut prose = Vec::new();
    let mut fences = Vec::new();
    let mut open: Option<(usize, Fence)> = None;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        match open.take() {
            Some((start, mut fence)) => {
                if trimmed.trim_end() == "```" {
                    fences.push((start, fence));
                } else {
                    fence.lines.push(line.to_string());
                    open = Some((start, fence));
                }
            }
            None => {
                if let Some(info) = trimmed.strip_prefix("```") {
                    open = Some((
                        i + 1,
                        Fence {
                            info: info.trim().to_string(),
                            lines: Vec::new(),
                        },
                    ));
                } else {
                    prose.push((i + 1, line.to_string()));
                }
            }
        }
    }
    assert!(open.is_none(), "a code fence is never closed");
    (prose, fences)
}

/// `line` with inline code spans cut out (their text replaced by spaces),
/// so that nothing in code is read as a link.
fn without_code_spans(line: &str) -> String {
    let mut out = String::new();
    let mut rest = line;
    while let Some(start) = rest.find('`') {
        out.push_str(&rest[..start]);
        let run = rest[start..].chars().take_while(|c| *c == '`').count();
        let after = &rest[start + run..];
        let closing = "`".repeat(run);
        match after.find(&closing) {
            Some(end) => {
                out.push_str(&" ".repeat(run + end + run));
                rest = &after[end + run..];
            }
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// The targets of the inline links `[text](target)` of a page's prose.
fn links(text: &str) -> Vec<(usize, String)> {
    let (prose, _) = split_fences(text);
    let mut out = Vec::new();
    for (n, line) in prose {
        let line = without_code_spans(&line);
        let mut rest = line.as_str();
        while let Some(i) = rest.find("](") {
            let after = &rest[i + 2..];
            let end = after.find(')').unwrap_or(after.len());
            let target = after[..end].trim();
            assert!(
                !target.contains(' '),
                "line {n}: a link target with a space (or a title): {target:?}"
            );
            out.push((n, target.to_string()));
            rest = &after[end..];
        }
    }
    out
}

/// A heading's inline Markdown as the text mdBook reads its id from: code
/// spans keep their text as it is, links keep their text, emphasis marks
/// and escapes go, and outside code smart punctuation turns `--` into a
/// dash (which the id then drops).
fn heading_text(inline: &str) -> String {
    let mut out = String::new();
    let mut rest = inline;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('`') {
            let end = after.find('`').expect("a closed code span in a heading");
            out.push_str(&after[..end]);
            rest = &after[end + 1..];
            continue;
        }
        let next = rest.find('`').unwrap_or(rest.len());
        let mut prose = rest[..next].to_string();
        // [text](target) -> text
        while let Some(open) = prose.find("](") {
            let close = prose[open..]
                .find(')')
                .map(|c| open + c)
                .unwrap_or(prose.len() - 1);
            let start = prose[..open].rfind('[').expect("a link's text");
            prose = format!(
                "{}{}{}",
                &prose[..start],
                &prose[start + 1..open],
                &prose[close + 1..]
            );
        }
        let prose = prose
            .replace("---", "\u{2014}")
            .replace("--", "\u{2013}")
            .replace(['*', '\\'], "");
        out.push_str(&prose);
        rest = &rest[next..];
    }
    out
}

/// mdBook 0.5's heading id for a heading's text (mdbook-html,
/// `utils::id_from_content`): trimmed, lower case, letters, digits, `_` and
/// `-` kept, whitespace made `-`, everything else dropped.
fn slug(text: &str) -> String {
    text.trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| {
            if c.is_alphanumeric() || c == '_' || c == '-' {
                Some(c)
            } else if c.is_whitespace() {
                Some('-')
            } else {
                None
            }
        })
        .collect()
}

/// The ids mdBook gives a page's headings: `{#id}` where written, else the
/// slug of the text, made unique within the page with `-1`, `-2`... in
/// order (`utils::unique_id`).
fn heading_ids(path: &Path) -> BTreeSet<String> {
    let text = read(path);
    let (prose, _) = split_fences(&text);
    let mut used = BTreeSet::new();
    let mut previous_blank = true;
    for (n, line) in &prose {
        // Forms that would make ids this function does not compute: a
        // setext heading, and a definition term (definition lists are on in
        // mdBook 0.5; a term gets an id from the same counter).
        let trimmed = line.trim();
        assert!(
            previous_blank
                || !(trimmed.chars().all(|c| c == '=' || c == '-') && trimmed.len() >= 3),
            "{}:{n}: a setext heading; write `#` headings",
            shown(path)
        );
        assert!(
            previous_blank || !line.starts_with(": "),
            "{}:{n}: a line that starts with `: ` makes a definition list",
            shown(path)
        );
        previous_blank = trimmed.is_empty();
        let hashes = line.chars().take_while(|c| *c == '#').count();
        if !(1..=6).contains(&hashes) || !line[hashes..].starts_with(' ') {
            continue;
        }
        let mut inline = line[hashes..]
            .trim()
            .trim_end_matches('#')
            .trim()
            .to_string();
        let id = match inline.rfind("{#") {
            Some(i) if inline.ends_with('}') => {
                let id = inline[i + 2..inline.len() - 1].to_string();
                inline.truncate(i);
                id
            }
            _ => slug(&heading_text(&inline)),
        };
        let mut unique = id.clone();
        let mut counter = 1;
        while used.contains(&unique) {
            unique = format!("{id}-{counter}");
            counter += 1;
        }
        used.insert(unique);
    }
    used
}

#[test]
fn heading_ids_are_the_ones_mdbook_writes() {
    // The cases of mdbook-html's own tests (utils.rs, it_normalizes_ids),
    // and forms this book uses.
    assert_eq!(
        slug(&heading_text("`--passes`: add more rustdoc passes")),
        "--passes-add-more-rustdoc-passes"
    );
    assert_eq!(
        slug("Method-call 🐙 expressions \u{1f47c}"),
        "method-call--expressions-"
    );
    assert_eq!(slug("_-_12345"), "_-_12345");
    assert_eq!(slug("中文標題 CJK title"), "中文標題-cjk-title");
    assert_eq!(slug("Über"), "über");
    assert_eq!(
        slug(&heading_text("The override: `lease.mode: pod`")),
        "the-override-leasemode-pod"
    );
    assert_eq!(
        slug(&heading_text("failurePolicy: Ignore or Fail")),
        "failurepolicy-ignore-or-fail"
    );
    assert_eq!(
        slug(&heading_text("[With Helm](helm.md) -- first")),
        "with-helm--first"
    );
    assert_eq!(
        slug(&heading_text("`calmplane register`")),
        "calmplane-register"
    );
}

/// Where a link goes: its file (resolved) and its anchor.
fn resolve(from: &Path, target: &str) -> (PathBuf, Option<String>) {
    let (path, anchor) = match target.split_once('#') {
        Some((p, a)) => (p, Some(a.to_string())),
        None => (target, None),
    };
    let file = if path.is_empty() {
        from.to_path_buf()
    } else {
        let mut joined = from.parent().unwrap().to_path_buf();
        for part in path.split('/') {
            match part {
                "." | "" => {}
                ".." => {
                    joined.pop();
                }
                part => joined.push(part),
            }
        }
        joined
    };
    (file, anchor)
}

#[test]
fn every_internal_link_and_anchor_resolves() {
    let book = repo().join("docs/src");
    let mut broken = Vec::new();
    let mut checked = 0;
    for file in markdown_files() {
        let text = read(&file);
        for (line, target) in links(&text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            let at = format!("{}:{line}: {target}", shown(&file));
            let (path, anchor) = resolve(&file, &target);
            if !path.exists() {
                broken.push(format!("{at}: no such file"));
                continue;
            }
            // The book is served as HTML: a page may only link to pages, not
            // to the repository around it, which is not there.
            if file.starts_with(&book) && !path.starts_with(&book) {
                broken.push(format!(
                    "{at}: leaves docs/src (name repository files in `code`)"
                ));
                continue;
            }
            if let Some(anchor) = anchor {
                if path.extension().is_none_or(|e| e != "md") {
                    broken.push(format!("{at}: an anchor into a file that is not Markdown"));
                } else if !heading_ids(&path).contains(&anchor) {
                    broken.push(format!("{at}: no heading with the id {anchor:?}"));
                }
            }
        }
    }
    assert!(
        checked > 100,
        "only {checked} links found: is the parser broken?"
    );
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

/// The pages `SUMMARY.md` names, as paths under docs/src.
fn summary_pages() -> Vec<PathBuf> {
    let summary = repo().join("docs/src/SUMMARY.md");
    links(&read(&summary))
        .into_iter()
        .map(|(_, target)| resolve(&summary, &target).0)
        .collect()
}

#[test]
fn every_page_of_the_book_is_in_its_summary() {
    let listed: BTreeSet<PathBuf> = summary_pages().into_iter().collect();
    for page in &listed {
        assert!(
            page.is_file(),
            "SUMMARY.md names {}, which does not exist",
            shown(page)
        );
    }
    let missing: Vec<String> = book_pages()
        .into_iter()
        .filter(|p| !p.ends_with("SUMMARY.md") && !listed.contains(p))
        .map(|p| shown(&p))
        .collect();
    assert!(
        missing.is_empty(),
        "pages mdBook would not build, because SUMMARY.md does not name them: {missing:?}"
    );
    // The generated reference pages are in the book too.
    for (path, _) in generated() {
        assert!(
            listed.contains(&repo().join(path)),
            "SUMMARY.md does not name {path}"
        );
    }
}

#[test]
fn the_readme_is_short() {
    let lines = read(&repo().join("README.md")).lines().count();
    assert!(
        lines <= 150,
        "README.md has {lines} lines; keep it under 150 and put the rest in the book (docs/src)"
    );
}

// ------------------------------------------------------ prerequisites

/// What a shell script or recipe may call without it being a prerequisite:
/// the shell itself and coreutils-level tools every Linux has.
const BASICS: &[&str] = &[
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
struct Makefile {
    vars: BTreeMap<String, String>,
    targets: BTreeMap<String, (Vec<String>, Vec<String>)>,
}

impl Makefile {
    fn parse(text: &str) -> Makefile {
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
fn programs(line: &str, found: &mut BTreeSet<String>) {
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
fn tools_the_tests_run() -> BTreeSet<String> {
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
    files.retain(|f| !f.ends_with("tests/docs.rs"));
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
fn prerequisites(path: &Path) -> String {
    let text = read(path);
    let start = text
        .find("\n## Prerequisites\n")
        .unwrap_or_else(|| panic!("{} has no `## Prerequisites`", shown(path)));
    let body = &text[start + 1..];
    let end = body[3..].find("\n## ").map(|e| e + 3).unwrap_or(body.len());
    body[..end].to_string()
}

/// Whether `word` appears in `text` on its own (not inside a longer name).
fn names(text: &str, word: &str) -> bool {
    text.match_indices(word).any(|(i, _)| {
        let before = text[..i].chars().next_back();
        let after = text[i + word.len()..].chars().next();
        let part = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '-' || c == '_');
        !part(before) && !part(after)
    })
}

/// The targets `.ci/run` makes.
fn ci_targets() -> Vec<String> {
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

// ------------------------------------------------------------ runbook

/// The page the alerts' runbook_url points into.
const RUNBOOK: &str = "docs/src/observability/runbook.md";

/// The alerts of the rule file: (name, runbook_url).
fn alerts() -> Vec<(String, String)> {
    let text = read(&repo().join("manifests/monitoring/rules/calmplane.rules.yaml"));
    let rules: serde_json::Value = calmplane::yaml::from_str(&text).expect("the rule file is YAML");
    rules["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().iter())
        .filter_map(|r| {
            let alert = r["alert"].as_str()?;
            let url = r["annotations"]["runbook_url"]
                .as_str()
                .unwrap_or_else(|| panic!("{alert} has no runbook_url"));
            Some((alert.to_string(), url.to_string()))
        })
        .collect()
}

#[test]
fn every_runbook_url_points_at_a_section_of_the_runbook_page() {
    // The base is set in one place (kustomize reads it from there; the rule
    // files carry it as the default), and it is the runbook page's address
    // in the built book: the page's path under docs/src, as .html.
    let configured: serde_json::Value =
        calmplane::yaml::from_str(&read(&repo().join("manifests/monitoring/runbook-url.yaml")))
            .unwrap();
    let page_url = configured["data"]["runbook"]
        .as_str()
        .expect("data.runbook");
    let in_book = RUNBOOK
        .strip_prefix("docs/src/")
        .unwrap()
        .replace(".md", ".html");
    assert!(
        page_url.ends_with(&format!("/{in_book}")),
        "{page_url} is not the address of {RUNBOOK} in the book"
    );
    let ids = heading_ids(&repo().join(RUNBOOK));
    let alerts = alerts();
    assert_eq!(alerts.len(), 11);
    for (alert, url) in alerts {
        let (base, anchor) = url
            .split_once('#')
            .unwrap_or_else(|| panic!("{alert}: {url} has no anchor"));
        assert_eq!(base, page_url, "{alert}");
        assert!(
            ids.contains(anchor),
            "{alert}: {RUNBOOK} has no heading with the id {anchor:?}"
        );
        assert_eq!(
            anchor,
            slug(&alert),
            "{alert}: the anchor is the alert's own section"
        );
    }
}

/// What a runbook command may say it needs (see the runbook's rules).
const NEEDS: &[&str] = &[
    "pod",
    "metrics-server",
    "cert-manager",
    "prometheus-operator",
];
/// The shell variables a runbook command may use: the alert's labels.
const VARIABLES: &[&str] = &["NAMESPACE", "WEBHOOK", "INSTANCE"];

#[test]
fn every_alert_section_of_the_runbook_starts_with_commands_a_script_can_run() {
    let text = read(&repo().join(RUNBOOK));
    let (_, fences) = split_fences(&text);
    for (start, fence) in &fences {
        assert!(
            ["sh", "promql", "yaml"].contains(&fence.info.as_str()),
            "{RUNBOOK}:{start}: a code block tagged {:?}; use sh, promql or yaml",
            fence.info
        );
        if fence.info == "sh" {
            assert!(
                !fence
                    .lines
                    .iter()
                    .any(|l| l.contains("histogram_quantile(") || l.contains("rate(")),
                "{RUNBOOK}:{start}: PromQL in a sh block; put it in a ```promql block"
            );
        }
    }
    let lines: Vec<&str> = text.lines().collect();
    for (alert, _) in alerts() {
        let heading = lines
            .iter()
            .position(|l| *l == format!("## {alert}"))
            .unwrap_or_else(|| panic!("{RUNBOOK} has no section `## {alert}`"));
        let end = lines[heading + 1..]
            .iter()
            .position(|l| l.starts_with("## "))
            .map_or(lines.len(), |e| heading + 1 + e);
        let (first_start, first) = fences
            .iter()
            .find(|(start, _)| *start > heading + 1 && *start <= end)
            .unwrap_or_else(|| panic!("{alert}: no code block in its section"));
        assert_eq!(
            first.info, "sh",
            "{alert}: the first block (line {first_start}) is not ```sh"
        );
        assert!(!first.lines.is_empty(), "{alert}: an empty first block");
        for (i, line) in first.lines.iter().enumerate() {
            let at = format!("{alert}, line {} of its first block", i + 1);
            assert!(!line.trim().is_empty(), "{at}: a blank line");
            assert!(
                !line.trim_start().starts_with('#'),
                "{at}: a comment of its own: {line}"
            );
            assert!(
                !line.trim_end().ends_with('\\'),
                "{at}: a continued line: {line}"
            );
            let (command, comment) = match line.split_once(" # ") {
                Some((c, m)) => (c.trim_end(), Some(m.trim())),
                None => (line.as_str(), None),
            };
            assert!(!command.ends_with('&'), "{at}: a background job: {line}");
            if let Some(comment) = comment {
                let needs = comment.strip_prefix("needs: ").unwrap_or_else(|| {
                    panic!("{at}: only `# needs: ...` may follow a command: {line}")
                });
                for need in needs.split(", ") {
                    assert!(
                        NEEDS.contains(&need),
                        "{at}: needs {need:?}, not one of {NEEDS:?}"
                    );
                }
            }
            for (i, _) in command.match_indices('$') {
                let name: String = command[i + 1..]
                    .trim_start_matches('{')
                    .chars()
                    .take_while(|c| c.is_ascii_uppercase() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    assert!(
                        VARIABLES.contains(&name.as_str()),
                        "{at}: ${name} is not an alert label: {line}"
                    );
                }
            }
        }
    }
}

/// The ids computed here against the ones mdBook wrote, page by page, in a
/// book built from these sources: `make docs` runs this after `mdbook build
/// docs` (ignored otherwise, since it needs the built book).
#[test]
#[ignore = "needs the book built by `mdbook build docs`; `make docs` runs it"]
fn heading_ids_match_the_built_book() {
    let built = repo().join("docs/book");
    assert!(
        built.is_dir(),
        "no docs/book: run `mdbook build docs` first"
    );
    for page in book_pages() {
        let rel = page.strip_prefix(repo().join("docs/src")).unwrap();
        if rel == Path::new("SUMMARY.md") {
            continue;
        }
        let html = read(&built.join(rel).with_extension("html"));
        let main =
            &html[html.find("<main>").expect("<main>")..html.find("</main>").expect("</main>")];
        let mut written = BTreeSet::new();
        for (i, _) in main.match_indices("<h") {
            let tag = &main[i + 2..];
            if tag.starts_with(|c: char| ('1'..='6').contains(&c)) {
                if let Some(id) = tag[1..].strip_prefix(" id=\"") {
                    written.insert(id[..id.find('"').unwrap()].to_string());
                }
            }
        }
        assert_eq!(heading_ids(&page), written, "{}", rel.display());
    }
}

// ---------------------------------------------- what the pages claim

/// A number as the prose writes it.
fn number_word(n: usize) -> &'static str {
    [
        "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    ]
    .get(n)
    .copied()
    .expect("ten policies at most, in words")
}

#[test]
fn the_policy_tables_have_every_policy_and_the_count_is_right() {
    let names: Vec<&str> = calmplane::policy::names().collect();
    for page in [
        "README.md",
        "docs/src/introduction.md",
        "docs/src/policies/index.md",
    ] {
        let text = read(&repo().join(page));
        let rows: Vec<String> = text
            .lines()
            .filter(|l| l.starts_with("| ") && !l.starts_with("| policy") && !l.starts_with("|---"))
            .filter_map(|l| {
                let first = l.split('|').nth(1)?.trim();
                let name = first.split('`').nth(1)?;
                names.contains(&name).then(|| name.to_string())
            })
            .collect();
        assert_eq!(rows, names, "{page}: one row per policy, in pipeline order");
        if page != "docs/src/policies/index.md" {
            let claim = format!("changes {} things", number_word(names.len()));
            assert!(
                text.replace('\n', " ").contains(&claim),
                "{page} does not say it {claim}"
            );
        }
    }
    for name in &names {
        assert!(
            repo()
                .join(format!("docs/src/policies/{name}.md"))
                .is_file(),
            "no page docs/src/policies/{name}.md"
        );
    }
}

/// Files a command in the README or the book names: the argument of `-f`,
/// `--config`, `--ca-bundle`, `--out` and curl's `@`. A path with a folder
/// must exist in the repository (or be one the commands make); a bare name
/// must be one of the files a user brings, so that a repository file is
/// never named without its folder.
#[test]
fn the_files_the_commands_name_exist() {
    const USER_FILES: &[&str] = &[
        "-",
        "deploy.yaml",
        "policy.yaml",
        "dump.json",
        "ca.crt",
        "admission-policies.yaml",
        "calmplane.rules.yaml",
        "tls.crt",
        "tls.key",
    ];
    // Made by the commands themselves (git-ignored), or outside the repository.
    let made = |p: &str| {
        p.starts_with('/')
            || p.starts_with('$')
            || p.starts_with("certs/")
            || p.starts_with("manifests/overlays/static/certs")
            || p.ends_with("webhook.generated.yaml")
            || p.starts_with("target/")
    };
    let mut wrong = Vec::new();
    for file in markdown_files() {
        let (_, fences) = split_fences(&read(&file));
        for (start, fence) in fences.iter().filter(|(_, f)| f.info == "sh") {
            for (i, line) in fence.lines.iter().enumerate() {
                let words: Vec<&str> = line.split_whitespace().collect();
                let mut named: Vec<&str> = Vec::new();
                for pair in words.windows(2) {
                    if ["-f", "--config", "--ca-bundle", "--filename"].contains(&pair[0]) {
                        named.push(pair[1]);
                    }
                }
                for word in &words {
                    if let Some(path) = word.strip_prefix('@') {
                        named.push(path);
                    }
                    for flag in ["--config=", "--ca-bundle="] {
                        if let Some(path) = word.strip_prefix(flag) {
                            named.push(path);
                        }
                    }
                }
                for path in named {
                    let path = path.trim_matches(['\'', '"']);
                    let ok = if path.contains('/') {
                        made(path) || repo().join(path).exists()
                    } else {
                        USER_FILES.contains(&path)
                    };
                    if !ok {
                        wrong.push(format!("{}:{}: {path}", shown(&file), start + 1 + i));
                    }
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "files named by commands that do not exist (or a repository file without its folder):\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_runbook_commands_avoid_the_traps_they_once_fell_into() {
    let text = read(&repo().join(RUNBOOK));
    let (_, fences) = split_fences(&text);
    for (start, fence) in fences.iter().filter(|(_, f)| f.info == "sh") {
        for (i, line) in fence.lines.iter().enumerate() {
            let at = format!("{RUNBOOK}:{}", start + 1 + i);
            // Raw histogram buckets are not a latency: a quantile in PromQL is.
            assert!(
                !line.contains("_bucket"),
                "{at}: raw histogram buckets: {line}"
            );
            // `{.webhooks[*]...}` prints one base64 string per webhook, which
            // base64 -d cannot decode as one.
            assert!(
                !(line.contains("[*]") && line.contains("base64 -d")),
                "{at}: several base64 values into one base64 -d: {line}"
            );
            // A grep for a few lines after a YAML key breaks with the file's layout.
            for command in line.split('|') {
                let words: Vec<&str> = command.split_whitespace().collect();
                assert!(
                    words.first() != Some(&"grep")
                        || !words
                            .iter()
                            .any(|w| ["-A", "-B", "-C"].iter().any(|f| w.starts_with(f))),
                    "{at}: a context grep: {line}"
                );
            }
            // Logs of the webhook: every replica, not the one `deploy/` picks,
            // and all lines, not the 10 a selector gets by default.
            if line.contains("kubectl") && line.contains(" logs ") {
                assert!(
                    !line.contains("deploy/calmplane ") || line.contains("--previous"),
                    "{at}: the log of one replica; use -l and --prefix: {line}"
                );
                if line.contains(" -l ") {
                    assert!(
                        line.contains("--prefix") && line.contains("--tail"),
                        "{at}: {line}"
                    );
                }
            }
        }
    }
    // The alerts that read the apiserver's metrics say that Prometheus must
    // scrape it, in their own section.
    let rules: serde_json::Value = calmplane::yaml::from_str(&read(
        &repo().join("manifests/monitoring/rules/calmplane.rules.yaml"),
    ))
    .unwrap();
    let mut reading_the_apiserver = 0;
    for rule in rules["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().iter())
    {
        let (Some(alert), Some(expr)) = (rule["alert"].as_str(), rule["expr"].as_str()) else {
            continue;
        };
        if !expr.contains("apiserver_") {
            continue;
        }
        reading_the_apiserver += 1;
        let start = text.find(&format!("\n## {alert}\n")).expect(alert);
        let section = &text[start + 1..];
        let section = &section[..section[3..].find("\n## ").map_or(section.len(), |e| e + 3)];
        assert!(
            section.contains("scrape the kube-apiserver"),
            "{alert} reads the apiserver's metrics; its section must say that Prometheus must scrape the kube-apiserver"
        );
    }
    assert_eq!(reading_the_apiserver, 2);
}

#[test]
fn the_pages_state_the_drain_and_the_gate_as_the_makefile_and_manifests_set_them() {
    // The drain: preStop sleep + --shutdown-delay + --drain-timeout, within
    // the grace period, as manifests/base/deployment.yaml sets them.
    let deployment: serde_json::Value =
        calmplane::yaml::from_str(&read(&repo().join("manifests/base/deployment.yaml"))).unwrap();
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let seconds = |flag: &str| -> u64 {
        container["args"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|a| a.as_str()?.strip_prefix(flag))
            .next()
            .unwrap_or_else(|| panic!("the Deployment sets {flag}"))
            .trim_end_matches('s')
            .parse()
            .unwrap()
    };
    let sleep = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_u64()
        .unwrap();
    let (delay, drain) = (seconds("--shutdown-delay="), seconds("--drain-timeout="));
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    let total = sleep + delay + drain;
    assert!(
        total < grace,
        "the manifests' own drain does not fit their grace period"
    );
    let limits = read(&repo().join("docs/src/limits.md")).replace('\n', " ");
    let stated = format!("{sleep} + {delay} + {drain} = {total} s");
    assert!(
        limits.contains(&stated),
        "limits.md does not say {stated:?}"
    );
    assert!(
        limits.contains(&format!("`terminationGracePeriodSeconds: {grace}`")),
        "limits.md does not give the manifests' grace period, {grace}"
    );
    // The bench gate's criterion settings, as the Makefile passes them.
    let make = Makefile::parse(&read(&repo().join("Makefile")));
    let args = make.vars.get("BENCH_GATE_ARGS").expect("BENCH_GATE_ARGS");
    let wanted: Vec<&str> = args.split_whitespace().collect();
    for page in ["docs/src/contributing/performance.md", "CONTRIBUTING.md"] {
        let text = read(&repo().join(page))
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        assert!(
            text.contains(&wanted.join(" ")),
            "{page} does not give the gate's criterion settings {args:?}"
        );
    }
}

/// Every commit a contributor page names as where a figure was measured is
/// a commit of this repository. Skipped without git or its history (the
/// tarball of a release has neither).
#[test]
fn the_commits_the_figures_name_exist() {
    if !repo().join(".git").exists() || Command::new("git").arg("--version").output().is_err() {
        eprintln!("SKIPPED the_commits_the_figures_name_exist: no git history");
        return;
    }
    let mut pages: Vec<PathBuf> = book_pages();
    pages.push(repo().join("load/OVERLOAD.md"));
    let mut missing = Vec::new();
    let mut checked = 0;
    for page in pages {
        let text = read(&page);
        for part in text.split('`').skip(1).step_by(2) {
            let hex = part.len() == 7
                && part
                    .chars()
                    .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase());
            if !hex || !part.chars().any(|c| c.is_ascii_digit()) {
                continue;
            }
            checked += 1;
            let known = Command::new("git")
                .current_dir(repo())
                .args(["cat-file", "-e", &format!("{part}^{{commit}}")])
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !known {
                missing.push(format!("{}: {part}", shown(&page)));
            }
        }
    }
    assert!(
        checked > 10,
        "only {checked} commits named: is the parser broken?"
    );
    assert!(
        missing.is_empty(),
        "commits that are not in the history: {missing:?}"
    );
}

// ------------------------------------------------------------ Helm values

/// `a.b.c` in `values`, with `*` for any key.
fn has_value(values: &serde_json::Value, path: &str) -> bool {
    let mut current = values;
    for key in path.split('.') {
        if key == "*" {
            return current.is_object();
        }
        match current.get(key) {
            Some(next) => current = next,
            None => return false,
        }
    }
    true
}

#[test]
fn every_helm_value_the_book_names_is_a_value_of_the_chart() {
    let values: serde_json::Value =
        calmplane::yaml::from_str(&read(&repo().join("charts/calmplane/values.yaml"))).unwrap();
    let top: Vec<&String> = values.as_object().unwrap().keys().collect();
    let mut named = Vec::new();
    for page in book_pages().into_iter().chain([repo().join("README.md")]) {
        let text = read(&page);
        let shown = page.strip_prefix(repo()).unwrap().display().to_string();
        // `--set key=value` anywhere.
        for (at, _) in text.match_indices("--set ") {
            let key: String = text[at + 6..]
                .chars()
                .take_while(|c| *c != '=' && !c.is_whitespace())
                .collect();
            named.push((shown.clone(), key));
        }
        // `a.b` in backticks on the Helm page: a value unless it is a file.
        if shown.ends_with("install/helm.md") {
            for part in text.split('`').skip(1).step_by(2) {
                let part = part.split('=').next().unwrap_or(part);
                let first = part.split('.').next().unwrap_or("");
                let file = [".yaml", ".json", ".md", ".txt"]
                    .iter()
                    .any(|ext| part.ends_with(ext));
                if part.contains('.')
                    && !part.contains(' ')
                    && !file
                    && top.iter().any(|k| k.as_str() == first)
                {
                    named.push((shown.clone(), part.to_string()));
                }
            }
        }
    }
    assert!(named.len() > 10, "{named:?}");
    for (page, key) in named {
        // `--set 'list[0].field=...'`: the list must be a value; what its
        // items hold, the schema says.
        let key = key.trim_matches(|c| c == '\'' || c == '"');
        let key = key.split('[').next().unwrap_or(key);
        assert!(
            has_value(&values, key),
            "{page}: {key} is not a value of charts/calmplane/values.yaml"
        );
    }
}
