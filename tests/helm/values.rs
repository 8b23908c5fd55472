//! values.yaml, values.schema.json and README.md say the same thing.
//!
//! * every value is documented by the comment above it, and the schema
//!   knows every key (and refuses others);
//! * the schema refuses the policy files calmplane refuses, and accepts the
//!   ones it accepts, so that a bad policy fails `helm install` instead of
//!   the pods' start;
//! * README.md's table of values is generated from values.yaml: run
//!   `CALMPLANE_UPDATE_CHART_README=1 cargo test --test helm chart_readme`
//!   after changing a value.

use super::*;

/// One documented key of values.yaml: its path and the comment above it.
#[derive(Debug)]
pub(crate) struct Documented {
    path: Vec<String>,
    doc: String,
}

/// The keys of values.yaml with the comment lines right above each (no
/// blank line between). Block mappings only: a list's items are a value.
pub(crate) fn documented_keys(text: &str) -> Vec<Documented> {
    let mut out = Vec::new();
    let mut stack: Vec<(usize, String)> = Vec::new();
    let mut comment: Vec<String> = Vec::new();
    for line in text.lines() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        if trimmed.is_empty() {
            comment.clear();
        } else if let Some(c) = trimmed.strip_prefix('#') {
            comment.push(c.strip_prefix(' ').unwrap_or(c).to_string());
        } else if trimmed.starts_with("- ") || trimmed == "-" {
            comment.clear();
        } else if let Some((key, _)) = trimmed.split_once(':').filter(|(k, _)| {
            !k.is_empty()
                && k.chars().all(|c| {
                    c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.' || c == '/'
                })
        }) {
            while stack.last().is_some_and(|(i, _)| *i >= indent) {
                stack.pop();
            }
            let mut path: Vec<String> = stack.iter().map(|(_, k)| k.clone()).collect();
            path.push(key.to_string());
            out.push(Documented {
                path,
                doc: comment.join(" "),
            });
            comment.clear();
            stack.push((indent, key.to_string()));
        } else {
            comment.clear();
        }
    }
    out
}

fn values_text() -> String {
    std::fs::read_to_string(chart_dir().join("values.yaml")).expect("values.yaml")
}

fn values() -> Value {
    calmplane::yaml::from_str(&values_text()).expect("values.yaml")
}

fn schema() -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(chart_dir().join("values.schema.json")).expect("schema"),
    )
    .expect("values.schema.json is JSON")
}

fn at<'a>(v: &'a Value, path: &[String]) -> &'a Value {
    path.iter().fold(v, |v, k| &v[k.as_str()])
}

/// The keys that hold documented keys: sections, not values.
fn sections(keys: &[Documented]) -> BTreeSet<Vec<String>> {
    keys.iter()
        .filter(|k| k.path.len() > 1 && !k.doc.is_empty())
        .flat_map(|k| (1..k.path.len()).map(|n| k.path[..n].to_vec()))
        .collect()
}

/// The documented values and the sections: every key but those inside a
/// value (`resources.requests`), each of which must be documented unless
/// it is a section.
fn values_and_sections(keys: &[Documented]) -> Vec<&Documented> {
    let sections = sections(keys);
    keys.iter()
        .filter(|k| (1..k.path.len()).all(|n| sections.contains(&k.path[..n])))
        .collect()
}

#[test]
fn every_value_is_documented_and_known_to_the_schema() {
    let all = documented_keys(&values_text());
    let sections = sections(&all);
    let keys = values_and_sections(&all);
    let values = values();
    let schema = schema();
    assert!(keys.len() > 60, "{} keys", keys.len());
    for k in &keys {
        let shown = k.path.join(".");
        if !sections.contains(&k.path) {
            assert!(!k.doc.is_empty(), "{shown} has no comment in values.yaml");
        }
        assert!(!at(&values, &k.path).is_null(), "{shown}");
        // The schema has a property for it, under objects that refuse others.
        let mut node = &schema;
        for (i, part) in k.path.iter().enumerate() {
            assert_eq!(
                node["additionalProperties"],
                false,
                "values.schema.json refuses unknown keys beside {}",
                k.path[..i].join(".")
            );
            node = &node["properties"][part.as_str()];
            assert!(node.is_object(), "values.schema.json lacks {shown}");
        }
    }
    // And it knows nothing values.yaml does not have, in its sections.
    let known: BTreeSet<Vec<String>> = keys.iter().map(|k| k.path.clone()).collect();
    let mut pending = vec![(Vec::<String>::new(), &schema)];
    while let Some((path, node)) = pending.pop() {
        if !path.is_empty() && !sections.contains(&path) {
            continue;
        }
        for (k, sub) in node["properties"].as_object().into_iter().flatten() {
            let mut here = path.clone();
            here.push(k.clone());
            assert!(
                known.contains(&here),
                "the schema has {}, values.yaml does not",
                here.join(".")
            );
            pending.push((here, sub));
        }
    }
}

/// `base` with `patch` merged in, as Helm merges values (maps key by key,
/// anything else replaced).
fn merged(base: &Value, patch: &Value) -> Value {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            let mut out = b.clone();
            for (k, v) in p {
                let m = merged(b.get(k).unwrap_or(&Value::Null), v);
                out.insert(k.clone(), m);
            }
            Value::Object(out)
        }
        _ => patch.clone(),
    }
}

fn calmplane_accepts(policy: &Value) -> Result<(), String> {
    let text = calmplane::yaml::to_string(policy).expect("yaml");
    let config =
        calmplane::config::Config::from_yaml(&text, "policy.yaml").map_err(|e| e.to_string())?;
    calmplane::policy::configure(&config)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[test]
fn the_schema_refuses_the_policy_files_calmplane_refuses() {
    let Some(helm) = helm("the_schema_refuses_the_policy_files_calmplane_refuses") else {
        return;
    };
    let defaults = values()["policy"].clone();
    let refused = [
        json!({"dns": {"ndots": 0}}),
        json!({"dns": {"ndots": 16}}),
        json!({"dns": {"ndots": "2"}}),
        json!({"dns": {"enforcement": "audit"}}),
        json!({"dns": {"enabled": "yes"}}),
        json!({"dns": {"ndot": 2}}),
        json!({"prestop": {"sleepSeconds": 0}}),
        json!({"prestop": {"sleepSeconds": 3601}}),
        json!({"prestop": {"minDrainSeconds": 0}}),
        json!({"prestop": {"mode": "signal"}}),
        json!({"lease": {"mode": "cluster"}}),
        json!({"lease": {"flags": ["lease-selector"]}}),
        json!({"lease": {"flags": ["--lease-selector=x"]}}),
        json!({"lease": {"annotations": [""]}}),
        json!({"lease": {"envNames": [""]}}),
        json!({"rolloutHistory": {"hotRolloutsPerHour": -1}}),
        json!({"rollout": {"maxSurge": 1}}),
        json!({"leases": {}}),
    ];
    let accepted = [
        json!({}),
        json!({"dns": {"ndots": 15, "override": true, "singleRequestReopen": false}}),
        json!({"prestop": {"mode": "exec", "sleepSeconds": 3600, "minDrainSeconds": 1}}),
        json!({"lease": {"mode": "pod", "flags": ["-l"], "envNames": [], "annotations": []}}),
        json!({"rolloutHistory": {"hotRolloutsPerHour": 0, "enforcement": "report"}}),
        json!({"rollout": {"enabled": false}}),
    ];
    for policy in &refused {
        let full = merged(&defaults, policy);
        assert!(
            calmplane_accepts(&full).is_err(),
            "calmplane accepts {policy}: not a case for the schema"
        );
        let err = template_fails(&helm, &json!({"policy": policy}));
        assert!(err.contains("at '/policy"), "{policy}: {err}");
    }
    for policy in &accepted {
        let r = template(&helm, &json!({"policy": policy}), &[]);
        let text = find(&r.objects, "ConfigMap", "calmplane-policy")["data"]["policy.yaml"]
            .as_str()
            .expect("policy.yaml")
            .to_string();
        let rendered: Value = calmplane::yaml::from_str(&text).expect("YAML");
        assert_eq!(rendered, merged(&defaults, policy), "{policy}");
        calmplane_accepts(&rendered).unwrap_or_else(|e| panic!("{policy}: {e}"));
    }

    // reportMode puts every section in report, and calmplane loads it.
    let r = template(&helm, &json!({"reportMode": true}), &[]);
    let text = find(&r.objects, "ConfigMap", "calmplane-policy")["data"]["policy.yaml"]
        .as_str()
        .expect("policy.yaml")
        .to_string();
    let policy: Value = calmplane::yaml::from_str(&text).expect("YAML");
    calmplane_accepts(&policy).expect("loads");
    for (section, settings) in policy.as_object().expect("sections") {
        assert_eq!(settings["enforcement"], "report", "{section}");
    }
    assert_eq!(
        policy.as_object().map(|m| m.len()),
        defaults.as_object().map(|m| m.len())
    );

    // The other values the schema guards.
    for (values, at) in [
        (
            json!({"webhook": {"timeoutSeconds": 31}}),
            "/webhook/timeoutSeconds",
        ),
        (
            json!({"webhook": {"failurePolicy": {"pods": "Maybe"}}}),
            "/webhook/failurePolicy/pods",
        ),
        (
            json!({"webhook": {"url": "http://127.0.0.1:8443"}}),
            "/webhook/url",
        ),
        (
            json!({"webhook": {"url": "https://h/path"}}),
            "/webhook/url",
        ),
        (
            json!({"certificates": {"mode": "vault"}}),
            "/certificates/mode",
        ),
        (
            json!({"certificates": {"mode": "existingSecret"}}),
            "/certificates",
        ),
        (
            json!({"networkPolicy": {"enabled": true}}),
            "/networkPolicy",
        ),
        (json!({"image": {"digest": "sha256:abc"}}), "/image/digest"),
        (json!({"replica": 2}), "additional properties 'replica'"),
    ] {
        let err = template_fails(&helm, &values);
        assert!(err.contains(at), "{values}: {err}");
    }
}

/// Markdown for a default value.
fn shown_default(v: &Value) -> String {
    let text = match v {
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    };
    format!("`{}`", text.replace('|', "\\|"))
}

fn type_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_i64() || n.is_u64() => "int",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "list",
        Value::Object(_) => "object",
    }
}

/// The table of values, as README.md has it between its markers.
pub(crate) fn values_table(text: &str) -> String {
    let values: Value = calmplane::yaml::from_str(text).expect("values.yaml");
    let all = documented_keys(text);
    let sections = sections(&all);
    let mut out = String::from("| Key | Type | Default | Description |\n|---|---|---|---|\n");
    for k in values_and_sections(&all) {
        let section = sections.contains(&k.path);
        if section && k.doc.is_empty() {
            continue;
        }
        let v = at(&values, &k.path);
        let default = if section {
            String::new()
        } else {
            shown_default(v)
        };
        out.push_str(&format!(
            "| `{}` | {} | {} | {} |\n",
            k.path.join("."),
            type_of(v),
            default,
            k.doc.replace('|', "\\|")
        ));
    }
    out
}

const BEGIN: &str = "<!-- values: generated from values.yaml by tests/helm (cargo test --test helm chart_readme) -->\n";
const END: &str = "<!-- end of values -->\n";

#[test]
fn chart_readme_is_generated_from_values_yaml() {
    let path = chart_dir().join("README.md");
    let readme = std::fs::read_to_string(&path).expect("charts/calmplane/README.md");
    let (head, rest) = readme
        .split_once(BEGIN)
        .expect("README.md has the begin marker");
    let (_, tail) = rest.split_once(END).expect("README.md has the end marker");
    let expected = format!("{head}{BEGIN}{}{END}{tail}", values_table(&values_text()));
    if std::env::var_os("CALMPLANE_UPDATE_CHART_README").is_some() {
        std::fs::write(&path, &expected).expect("write README.md");
        return;
    }
    assert!(
        readme == expected,
        "charts/calmplane/README.md is out of date with values.yaml: run \
         CALMPLANE_UPDATE_CHART_README=1 cargo test --test helm chart_readme"
    );
}

#[test]
fn the_readme_generator_reads_comments_and_nesting() {
    let text = "# header, not a key's\n\n# Top.\ntop: 1\nsection:\n  # A leaf\n  # on two lines.\n  leaf: \"x\"\n  list:\n    - a: 1\n\n  # After a list.\n  after: {}\nnext: true\n";
    let keys = documented_keys(text);
    let paths: Vec<(String, &str)> = keys
        .iter()
        .map(|k| (k.path.join("."), k.doc.as_str()))
        .collect();
    assert_eq!(
        paths,
        [
            ("top".to_string(), "Top."),
            ("section".to_string(), ""),
            ("section.leaf".to_string(), "A leaf on two lines."),
            ("section.list".to_string(), ""),
            ("section.after".to_string(), "After a list."),
            ("next".to_string(), ""),
        ]
    );
    let table = values_table(text);
    assert!(
        table.contains("| `section.leaf` | string | `\"x\"` | A leaf on two lines. |"),
        "{table}"
    );
    assert!(!table.contains("| `section` |"), "{table}");
}
