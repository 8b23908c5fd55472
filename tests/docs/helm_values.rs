//! Every Helm value the book names is a value of the chart.

use super::*;

/// `a.b.c` in `values`, with `*` for any key.
pub(crate) fn has_value(values: &serde_json::Value, path: &str) -> bool {
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
