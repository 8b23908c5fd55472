//! The generated reference pages (the policy file, the metrics, the CLI) are
//! what the code writes now; `make docs` rewrites them.

use super::*;

/// Every generated page: its path under the repository, and its writer.
pub(crate) fn generated() -> Vec<(&'static str, String)> {
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
pub(crate) fn help(path: &[&str]) -> String {
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
pub(crate) fn subcommands(help: &str) -> Vec<String> {
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
pub(crate) fn cli() -> String {
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
