//! The runbook's commands, as a script reads them: each alert's section of
//! `docs/src/observability/runbook.md`, its first ` ```sh ` block (one
//! command per line, `# needs: ...` for what else a command needs) and its
//! ` ```promql ` blocks. The e2e suite runs the commands against the real
//! control plane; `tests/monitoring.rs` runs the queries in a real
//! Prometheus. The page's rules are at its top, and `tests/docs/` holds
//! the page to them.

use crate::corpus::repo_root;

/// The runbook page, under the repository.
pub const PAGE: &str = "docs/src/observability/runbook.md";

/// One alert's section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    /// The alert, as the section's heading names it.
    pub alert: String,
    /// The first ` ```sh ` block, a command a line.
    pub commands: Vec<Command>,
    /// Every query of the section's ` ```promql ` blocks.
    pub queries: Vec<String>,
}

/// One line of a section's first ` ```sh ` block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// The command, without its trailing comment.
    pub line: String,
    /// What else it needs (`pod`, `metrics-server`, ...): where the e2e
    /// control plane has none, only its syntax is checked.
    pub needs: Vec<String>,
}

/// The runbook's alert sections (headings `## Calmplane...`), in page order.
pub fn sections() -> Vec<Section> {
    let path = repo_root().join(PAGE);
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    parse(&text)
}

/// The alert sections of a runbook's text.
pub fn parse(text: &str) -> Vec<Section> {
    let mut sections: Vec<Section> = Vec::new();
    let mut fence: Option<(String, Vec<String>)> = None;
    for line in text.lines() {
        if let Some((_, lines)) = &mut fence {
            if !line.trim_start().starts_with("```") {
                lines.push(line.to_string());
            } else if let (Some((info, lines)), Some(section)) = (fence.take(), sections.last_mut())
            {
                close(section, &info, lines);
            }
            continue;
        }
        if let Some(info) = line.trim_start().strip_prefix("```") {
            fence = Some((info.trim().to_string(), Vec::new()));
        } else if let Some(heading) = line.strip_prefix("## ") {
            let heading = heading.trim();
            if heading.starts_with("Calmplane") && !heading.contains(' ') {
                sections.push(Section {
                    alert: heading.to_string(),
                    commands: Vec::new(),
                    queries: Vec::new(),
                });
            } else {
                // A section that is no alert's: its blocks belong to no alert.
                sections.push(Section {
                    alert: String::new(),
                    commands: Vec::new(),
                    queries: Vec::new(),
                });
            }
        }
    }
    sections.retain(|s| !s.alert.is_empty());
    sections
}

fn close(section: &mut Section, info: &str, lines: Vec<String>) {
    match info {
        "sh" if section.commands.is_empty() => {
            section.commands = lines
                .into_iter()
                .filter(|l| !l.trim().is_empty())
                .map(|l| match l.split_once(" # needs: ") {
                    Some((command, needs)) => Command {
                        line: command.trim_end().to_string(),
                        needs: needs.split(", ").map(|n| n.trim().to_string()).collect(),
                    },
                    None => Command {
                        line: l,
                        needs: Vec::new(),
                    },
                })
                .collect();
        }
        "promql" => section
            .queries
            .extend(lines.into_iter().filter(|l| !l.trim().is_empty())),
        _ => {}
    }
}

/// `text` with the alert's label variables (`$NAMESPACE`, `${NAMESPACE}`,
/// ...) replaced by `values`: for queries, which no shell expands.
pub fn substitute(text: &str, values: &[(&str, &str)]) -> String {
    let mut out = text.to_string();
    for (name, value) in values {
        out = out
            .replace(&format!("${{{name}}}"), value)
            .replace(&format!("${name}"), value);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_commands_needs_and_queries() {
        let text = "# Runbook\n\n## How a section is written\n\n```sh\nnot an alert\n```\n\n\
                    ## CalmplaneX\n\n```sh\nkubectl get pods\nkubectl logs deploy/x   # needs: pod, metrics-server\n```\n\n\
                    ```promql\nup{job=\"$NAMESPACE\"}\n```\n\n```sh\nsecond block\n```\n\n## CalmplaneY\n\ntext\n";
        let sections = parse(text);
        assert_eq!(sections.len(), 2);
        assert_eq!(sections[0].alert, "CalmplaneX");
        assert_eq!(
            sections[0].commands,
            [
                Command {
                    line: "kubectl get pods".into(),
                    needs: vec![]
                },
                Command {
                    line: "kubectl logs deploy/x".into(),
                    needs: vec!["pod".into(), "metrics-server".into()]
                },
            ]
        );
        assert_eq!(sections[0].queries, ["up{job=\"$NAMESPACE\"}"]);
        assert!(sections[1].commands.is_empty());
        assert_eq!(
            substitute(&sections[0].queries[0], &[("NAMESPACE", "shop")]),
            "up{job=\"shop\"}"
        );
    }

    #[test]
    fn the_runbook_has_commands_for_every_alert_section() {
        let sections = sections();
        assert!(sections.len() >= 11, "{}", sections.len());
        for s in &sections {
            assert!(!s.commands.is_empty(), "{}: no commands", s.alert);
        }
    }
}
