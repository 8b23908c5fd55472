//! Every alert's runbook_url is a section of the runbook page, and each
//! section starts with commands a script can run.

use super::*;

/// The page the alerts' runbook_url points into.
pub(crate) const RUNBOOK: &str = "docs/src/observability/runbook.md";

/// The alerts of the rule file: (name, runbook_url).
pub(crate) fn alerts() -> Vec<(String, String)> {
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
pub(crate) const NEEDS: &[&str] = &[
    "pod",
    "metrics-server",
    "cert-manager",
    "prometheus-operator",
];
/// The shell variables a runbook command may use: the alert's labels.
pub(crate) const VARIABLES: &[&str] = &["NAMESPACE", "WEBHOOK", "INSTANCE"];

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
