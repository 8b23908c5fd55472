//! What the pages claim, held to the code: policy counts, files, drain
//! arithmetic, commits.

use super::*;

/// A number as the prose writes it.
pub(crate) fn number_word(n: usize) -> &'static str {
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
