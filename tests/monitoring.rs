//! `manifests/monitoring/`: the rules, the dashboard and the lease monitor's
//! install, proven four ways:
//! * promtool: `check rules` on the rule file, `test rules` with a unit test
//!   per alert (tests/prometheus/calmplane.rules.test.yaml);
//! * a real Prometheus scrapes the real `calmplane lease-monitor`, fed by the
//!   fake apiserver, evaluates the rule file, and answers over its HTTP API
//!   with the SLO values and the write rate that the script produces;
//! * the manifests render with `kubectl kustomize`, pass
//!   `kubernetes-validate --strict` where schemas exist (the operator's CRDs
//!   are checked structurally), and grant the monitor nothing but reading
//!   Leases;
//! * every metric the rules and the dashboard query is one that calmplane
//!   exports (or the apiserver's own).
//!
//! promtool and prometheus come from Debian's `prometheus` package (`make
//! test` installs it). Without them these tests say so and pass, except
//! under CI=true, where they fail.

use calmplane_testkit::fake_apiserver::FakeApiServer;
use calmplane_testkit::harness::python;
use calmplane_testkit::lease_monitor::{http_get, Monitor};
use calmplane_testkit::process::free_port;
use calmplane_testkit::tools::{find, required, run_ok, yaml_docs};
use serde_json::Value;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The binary under test.
const CALMPLANE: &str = env!("CARGO_BIN_EXE_calmplane");

const K8S_VERSION: &str = "1.34.0";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn monitoring() -> PathBuf {
    repo().join("manifests/monitoring")
}

fn rule_file() -> PathBuf {
    monitoring().join("rules/calmplane.rules.yaml")
}

/// `tool` from PATH, or `None` after saying why this test is skipped (a
/// failure in CI, where nothing may be skipped silently).
fn tool(name: &str, test: &str) -> Option<PathBuf> {
    required(
        name,
        test,
        "install Debian's `prometheus` package (`make test` does)",
    )
}

fn read_yaml(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut docs = yaml_docs(&text);
    assert_eq!(docs.len(), 1, "{}", path.display());
    docs.remove(0)
}

fn run(cmd: &mut Command) -> String {
    let out = run_ok(cmd);
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

// ------------------------------------------------------------- promtool

#[test]
fn promtool_checks_the_rule_file() {
    let Some(promtool) = tool("promtool", "promtool_checks_the_rule_file") else {
        return;
    };
    let out = run(Command::new(promtool)
        .arg("check")
        .arg("rules")
        .arg(rule_file()));
    assert!(out.contains("SUCCESS: 15 rules found"), "{out}");
}

#[test]
fn promtool_unit_tests_fire_and_spare_every_alert() {
    let Some(promtool) = tool("promtool", "promtool_unit_tests_fire_and_spare_every_alert") else {
        return;
    };
    let tests = repo().join("tests/prometheus/calmplane.rules.test.yaml");
    let out = run(Command::new(promtool).arg("test").arg("rules").arg(&tests));
    assert!(out.contains("SUCCESS"), "{out}");

    // Every alert of the rule file has a case where it fires and one where
    // it does not.
    let rules = read_yaml(&rule_file());
    let unit = read_yaml(&tests);
    for alert in alert_names(&rules) {
        let cases: Vec<Value> = unit["tests"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|t| t["alert_rule_test"].as_array().cloned().unwrap_or_default())
            .filter(|c| c["alertname"] == alert.as_str())
            .collect();
        let fires = cases
            .iter()
            .any(|c| c["exp_alerts"].as_array().is_some_and(|a| !a.is_empty()));
        let spares = cases
            .iter()
            .any(|c| c["exp_alerts"].as_array().is_some_and(Vec::is_empty));
        assert!(fires && spares, "{alert}: fires {fires}, spares {spares}");
    }
}

fn alert_names(rules: &Value) -> Vec<String> {
    rules["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().iter())
        .filter_map(|r| r["alert"].as_str().map(str::to_string))
        .collect()
}

fn all_exprs(rules: &Value) -> Vec<String> {
    rules["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().iter())
        .map(|r| r["expr"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn the_prometheusrule_carries_exactly_the_rule_file() {
    let rules = read_yaml(&rule_file());
    let crd = read_yaml(&monitoring().join("prometheusrule.yaml"));
    assert_eq!(crd["kind"], "PrometheusRule");
    assert_eq!(
        crd["spec"]["groups"], rules["groups"],
        "manifests/monitoring/prometheusrule.yaml and rules/calmplane.rules.yaml differ: edit both"
    );
    assert_eq!(
        alert_names(&rules),
        [
            "CalmplaneLeaseStale",
            "CalmplaneLeaseWriteRateHigh",
            "CalmplaneLeasesExpired",
            "CalmplaneWebhookFailOpen",
            "CalmplaneWebhookSlow",
            "CalmplaneWebhookDown",
            "CalmplaneLeaseMonitorDown",
            "CalmplaneCertificateExpiringSoon",
            "CalmplaneCertificateExpiryImminent",
            "CalmplaneCertificateReloadFailed",
            "CalmplanePolicyReloadFailed"
        ]
    );
    // Every alert links its runbook section in the book, under the
    // placeholder base that runbook-url.yaml (and an overlay) replaces; the
    // section exists (tests/docs/ checks the anchor as mdBook writes it).
    let runbook = std::fs::read_to_string(repo().join(RUNBOOK_PAGE)).expect(RUNBOOK_PAGE);
    for group in rules["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            let Some(alert) = rule["alert"].as_str() else {
                assert!(
                    rule["annotations"].is_null(),
                    "a recording rule has no annotations"
                );
                continue;
            };
            assert!(
                rule["annotations"]["runbook"].is_null(),
                "{alert}: `runbook` is runbook_url now"
            );
            let link = rule["annotations"]["runbook_url"].as_str().expect(alert);
            assert_eq!(link, format!("{RUNBOOK_URL}#{}", alert.to_lowercase()));
            assert!(
                runbook.contains(&format!("\n## {alert}\n")),
                "{RUNBOOK_PAGE} has no section {alert}"
            );
        }
    }
}

/// The runbook page in the book's sources.
const RUNBOOK_PAGE: &str = "docs/src/observability/runbook.md";

/// Where the rule files point each alert's runbook_url before anyone sets
/// the base: the runbook page under a placeholder host (`.example` is
/// reserved), replaced by manifests/monitoring/runbook-url.yaml.
const RUNBOOK_URL: &str = "https://calmplane.example/book/observability/runbook.html";

/// The overlay of docs/src/observability/alerts.md that sets another base:
/// the page's first `yaml` block that patches the ConfigMap calmplane-docs.
fn documented_runbook_overlay() -> String {
    let page = std::fs::read_to_string(repo().join("docs/src/observability/alerts.md"))
        .expect("docs/src/observability/alerts.md");
    page.split("```yaml\n")
        .skip(1)
        .filter_map(|b| b.split("```").next())
        .find(|b| b.contains("calmplane-docs") && b.contains("replacements:"))
        .expect("alerts.md shows an overlay that sets the runbook URL")
        .to_string()
}

#[test]
fn runbook_urls_follow_the_configmap_and_the_documented_overlay() {
    let Some(kubectl) = kubectl() else {
        return;
    };
    let runbook_urls = |dir: &Path| -> Vec<String> {
        let text = run(Command::new(&kubectl).arg("kustomize").arg(dir));
        let docs = yaml_docs(&text);
        assert!(
            !docs
                .iter()
                .any(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == "calmplane-docs"),
            "calmplane-docs is local-config: never applied"
        );
        let rule = find(&docs, "PrometheusRule", "calmplane");
        let urls: Vec<String> = rule["spec"]["groups"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|g| g["rules"].as_array().unwrap().iter())
            .filter_map(|r| r["annotations"]["runbook_url"].as_str().map(str::to_string))
            .collect();
        assert_eq!(urls.len(), alert_names(&read_yaml(&rule_file())).len());
        urls
    };
    // As shipped: the placeholder, from runbook-url.yaml.
    let configured = read_yaml(&monitoring().join("runbook-url.yaml"));
    assert_eq!(configured["data"]["runbook"], RUNBOOK_URL);
    for url in runbook_urls(&monitoring()) {
        assert!(url.starts_with(&format!("{RUNBOOK_URL}#")), "{url}");
    }
    // The overlay the alerts page documents, next to a copy of manifests/.
    let tmp = tempfile::tempdir().expect("tempdir");
    let copy = tmp.path().join("manifests/monitoring");
    std::fs::create_dir_all(copy.join("dashboards")).unwrap();
    std::fs::create_dir_all(copy.join("rules")).unwrap();
    for file in [
        "kustomization.yaml",
        "lease-monitor.yaml",
        "servicemonitors.yaml",
        "prometheusrule.yaml",
        "runbook-url.yaml",
        "dashboards/calmplane.json",
        "rules/calmplane.rules.yaml",
    ] {
        std::fs::copy(monitoring().join(file), copy.join(file)).expect(file);
    }
    let overlay = tmp.path().join("monitoring-overlay");
    std::fs::create_dir_all(&overlay).unwrap();
    let snippet = documented_runbook_overlay();
    let wanted = snippet
        .lines()
        .find_map(|l| l.trim().strip_prefix("value: "))
        .expect("the overlay sets a value")
        .trim()
        .to_string();
    assert_ne!(wanted, RUNBOOK_URL);
    std::fs::write(overlay.join("kustomization.yaml"), &snippet).unwrap();
    for (url, alert) in runbook_urls(&overlay)
        .iter()
        .zip(alert_names(&read_yaml(&rule_file())))
    {
        assert_eq!(url, &format!("{wanted}#{}", alert.to_lowercase()));
    }
}

// --------------------------------------------- metric names in queries

/// Metric names in a PromQL expression: identifiers followed by `{`, `[`,
/// `)` or whitespace that are not functions, keywords or label names.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    // Drop string literals (label values, regexes).
    let mut cleaned = String::new();
    let mut in_string = false;
    for c in rest.chars() {
        if c == '"' {
            in_string = !in_string;
            continue;
        }
        if !in_string {
            cleaned.push(c);
        }
    }
    rest = &cleaned;
    let bytes: Vec<char> = rest.chars().collect();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c.is_ascii_digit() {
            // A number or a duration (`3600`, `0.99`, `1e3`, `offset 15m`):
            // its letters are no metric name.
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < bytes.len()
                && (bytes[i].is_ascii_alphanumeric() || bytes[i] == '_' || bytes[i] == ':')
            {
                i += 1;
            }
            let word: String = bytes[start..i].iter().collect();
            let next = bytes[i..].iter().find(|c| !c.is_whitespace());
            let is_call = next == Some(&'(');
            let is_label = matches!(next, Some('=') | Some('!') | Some(',')) || {
                // inside by (...) / on (...)
                let before: String = bytes[..start].iter().collect();
                let open = before.rfind('(');
                let close = before.rfind(')');
                open.is_some_and(|o| {
                    close.is_none_or(|c| c < o)
                        && [
                            "by",
                            "on",
                            "without",
                            "ignoring",
                            "group_left",
                            "group_right",
                        ]
                        .iter()
                        .any(|k| before[..o].trim_end().ends_with(k))
                })
            };
            let keyword = matches!(
                word.as_str(),
                "by" | "on" | "without" | "ignoring" | "group_left" | "group_right" | "or" | "and" | "unless" | "offset" | "bool"
                    // aggregation operators may take `by (...)` before their parentheses
                    | "sum" | "min" | "max" | "avg" | "group" | "stddev" | "stdvar" | "count" | "count_values" | "bottomk" | "topk" | "quantile"
            );
            let in_matcher = {
                let before: String = bytes[..start].iter().collect();
                before
                    .rfind('{')
                    .is_some_and(|o| before.rfind('}').is_none_or(|c| c < o))
            };
            let in_range = {
                let before: String = bytes[..start].iter().collect();
                before
                    .rfind('[')
                    .is_some_and(|o| before.rfind(']').is_none_or(|c| c < o))
            };
            if !is_call && !is_label && !keyword && !in_matcher && !in_range {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

/// The metric names calmplane's two processes export, with histogram
/// series names, and the names the rule file records.
fn known_metrics() -> BTreeSet<String> {
    let mut text = String::new();
    let webhook = calmplane::metrics::Metrics::new();
    webhook.admission(
        calmplane::server::endpoint::Endpoint::Mutate,
        "Pod",
        "CREATE",
        calmplane::metrics::Result::Answered(calmplane::review::Verdict::Mutated),
    );
    webhook.admitted(std::time::Duration::from_micros(50), &["lease"]);
    webhook.tls_reloads.with_label_values(&["success"]).inc();
    webhook.config_reloads.with_label_values(&["success"]).inc();
    text.push_str(&webhook.render());
    let leases = calmplane::lease_monitor::metrics::LeaseMetrics::new().unwrap();
    leases.writes.with_label_values(&["ns"]).inc();
    leases.age.with_label_values(&["ns"]).observe(1.0);
    leases.leases.with_label_values(&["ns"]).set(1);
    leases.oldest_age.with_label_values(&["ns"]).set(1.0);
    leases.expired.with_label_values(&["ns"]).set(1);
    text.push_str(&leases.render());
    let mut names: BTreeSet<String> = calmplane_testkit::lease_monitor::Metrics::parse(&text)
        .samples
        .into_iter()
        .map(|s| s.name)
        .collect();
    for group in read_yaml(&rule_file())["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            if let Some(r) = rule["record"].as_str() {
                names.insert(r.to_string());
            }
        }
    }
    names
}

/// The apiserver's metrics the rules use, the documented override series,
/// and `up`, which Prometheus records for every scrape target.
const EXTERNAL: &[&str] = &[
    "apiserver_admission_webhook_fail_open_count",
    "apiserver_admission_webhook_admission_duration_seconds_bucket",
    "apiserver_admission_webhook_request_total",
    "apiserver_request_duration_seconds_bucket",
    "calmplane_lease_stale_threshold_seconds",
    "up",
];

fn dashboard() -> Value {
    let path = monitoring().join("dashboards/calmplane.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).expect("dashboard JSON")
}

fn dashboard_exprs() -> Vec<(String, String)> {
    dashboard()["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| {
            let title = p["title"].as_str().unwrap().to_string();
            p["targets"]
                .as_array()
                .unwrap()
                .iter()
                .map(move |t| (title.clone(), t["expr"].as_str().unwrap().to_string()))
        })
        .collect()
}

#[test]
fn the_metric_name_parser_finds_metrics_and_only_metrics() {
    let names = metric_names(
        r#"sum by (namespace) (rate(lease_age_seconds_bucket{le="1", namespace=~"a|b"}[5m])) / on (namespace) x:y:z or vector(1)"#,
    );
    assert_eq!(
        names,
        ["lease_age_seconds_bucket", "x:y:z"]
            .map(String::from)
            .into()
    );
    let names = metric_names(
        r#"max without (result) (c{result="error"} > 0 unless c offset 15m) or min(e) - time() < 14 * 24 * 3600 + 1e3 * 0.5"#,
    );
    assert_eq!(names, ["c", "e"].map(String::from).into());
}

/// The runbook's queries, with its label variables filled in as an alert
/// would: `(section, query)`.
fn runbook_queries() -> Vec<(String, String)> {
    let values = [
        ("NAMESPACE", "shop"),
        ("WEBHOOK", "pods.calmplane.dev"),
        ("INSTANCE", "10.0.0.1:9090"),
    ];
    calmplane_testkit::runbook::sections()
        .into_iter()
        .flat_map(|s| {
            let place = format!("runbook, {}", s.alert);
            s.queries.into_iter().map(move |q| {
                (
                    place.clone(),
                    calmplane_testkit::runbook::substitute(&q, &values),
                )
            })
        })
        .collect()
}

/// `metric{label...}` selectors in a PromQL expression: each metric name
/// followed by a `{...}`, with the label names its matchers use.
fn selectors(expr: &str) -> Vec<(String, Vec<String>)> {
    let names = metric_names(expr);
    let mut out = Vec::new();
    for name in names {
        for (at, _) in expr.match_indices(name.as_str()) {
            let after = &expr[at + name.len()..];
            let before_ok = expr[..at]
                .chars()
                .last()
                .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'));
            let Some(inner) = after.strip_prefix('{') else {
                continue;
            };
            if !before_ok {
                continue;
            }
            let Some(end) = inner.find('}') else { continue };
            let labels = inner[..end]
                .split(',')
                .filter_map(|m| {
                    let label = m.split(['=', '!']).next()?.trim();
                    (!label.is_empty()).then(|| label.to_string())
                })
                .collect();
            out.push((name.clone(), labels));
        }
    }
    out
}

/// The label names each series of calmplane's two processes may carry:
/// its family's labels, `le` on histogram buckets, and the target labels
/// Prometheus adds.
fn known_labels() -> std::collections::BTreeMap<String, BTreeSet<String>> {
    let mut families = calmplane::metrics::Metrics::new().families();
    families.extend(
        calmplane::lease_monitor::metrics::LeaseMetrics::new()
            .unwrap()
            .families(),
    );
    let mut out = std::collections::BTreeMap::new();
    for f in families {
        let mut labels: BTreeSet<String> = f.labels.iter().cloned().collect();
        labels.extend(["job", "instance"].map(String::from));
        if f.kind == "histogram" {
            for suffix in ["_sum", "_count"] {
                out.insert(format!("{}{suffix}", f.name), labels.clone());
            }
            let mut bucket = labels.clone();
            bucket.insert("le".to_string());
            out.insert(format!("{}_bucket", f.name), bucket);
        } else {
            out.insert(f.name.clone(), labels);
        }
    }
    out
}

#[test]
fn the_label_selector_parser_finds_matchers() {
    assert_eq!(
        selectors(
            r#"sum by (le) (rate(a_bucket{resource="leases", verb=~"PUT|PATCH"}[5m])) / b{x!="1"} + c"#
        ),
        vec![
            (
                "a_bucket".to_string(),
                vec!["resource".to_string(), "verb".to_string()]
            ),
            ("b".to_string(), vec!["x".to_string()]),
        ]
    );
}

#[test]
fn runbook_queries_select_only_labels_calmplane_s_metrics_carry() {
    let known = known_labels();
    let queries = runbook_queries();
    assert!(queries.len() >= 10, "{queries:?}");
    let mut checked = 0;
    for (place, query) in &queries {
        for (metric, labels) in selectors(query) {
            let Some(allowed) = known.get(&metric) else {
                // The apiserver's: checked against a real one by the e2e suite.
                assert!(
                    metric.starts_with("apiserver_"),
                    "{place}: {metric} in {query}"
                );
                continue;
            };
            for label in labels {
                assert!(
                    allowed.contains(&label),
                    "{place}: {metric} has no label {label:?} ({allowed:?}): {query}"
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 0);
}

#[test]
fn rules_and_dashboard_query_only_metrics_that_exist() {
    let known = known_metrics();
    let mut exprs: Vec<(String, String)> = all_exprs(&read_yaml(&rule_file()))
        .into_iter()
        .map(|e| ("rule file".to_string(), e))
        .collect();
    exprs.extend(dashboard_exprs());
    exprs.extend(runbook_queries());
    let mut used = BTreeSet::new();
    for (place, expr) in &exprs {
        for name in metric_names(expr) {
            assert!(
                known.contains(&name) || EXTERNAL.contains(&name.as_str()),
                "{place}: {name} in {expr} is not a metric calmplane exports"
            );
            used.insert(name);
        }
    }
    for needed in [
        "calmplane_lease_writes_total",
        "lease_age_seconds_bucket",
        "lease_age_seconds_count",
        "calmplane_lease_oldest_age_seconds",
        "calmplane_lease_expired",
        "calmplane_admission_duration_seconds_bucket",
        "calmplane_policy_changes_total",
        "apiserver_admission_webhook_fail_open_count",
        "calmplane_tls_certificate_expiry_timestamp_seconds",
        "calmplane_tls_reloads_total",
        "calmplane_config_reloads_total",
        "up",
    ] {
        assert!(used.contains(needed), "nothing queries {needed}");
    }
}

#[test]
fn the_dashboard_has_the_panels_of_the_issue() {
    let d = dashboard();
    let titles: Vec<&str> = d["panels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["title"].as_str().unwrap())
        .collect();
    for wanted in [
        "Lease writes/s (cluster)",
        "Lease writes/s, top 10 namespaces",
        "Lease age p99",
        "Lease age <= 1 s, fraction of samples",
        "Oldest lease per namespace",
        "Expired leases",
        "Admission latency",
        "Mutations by policy",
        "Fail-open events",
    ] {
        assert!(
            titles.contains(&wanted),
            "no panel {wanted:?} in {titles:?}"
        );
    }
    let ids: BTreeSet<u64> = d["panels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids.len(), titles.len(), "panel ids are unique");
}

// ------------------------------------------------------------ manifests

fn kubectl() -> Option<PathBuf> {
    required(
        "kubectl",
        "manifests/monitoring",
        "install it to render the kustomization",
    )
}

fn rendered() -> Option<(String, Vec<Value>)> {
    let kubectl = kubectl()?;
    let text = run(Command::new(kubectl).arg("kustomize").arg(monitoring()));
    let docs = yaml_docs(&text);
    Some((text, docs))
}

/// Only these fields, recursively for the listed paths: a structural check
/// of the prometheus-operator objects, which kubernetes-validate has no
/// schema for (field names from monitoring.coreos.com/v1).
fn check_operator_object(doc: &Value) {
    let keys = |v: &Value, allowed: &[&str], what: &str| {
        for k in v
            .as_object()
            .unwrap_or_else(|| panic!("{what} is an object"))
            .keys()
        {
            assert!(allowed.contains(&k.as_str()), "{what}: unknown field {k}");
        }
    };
    keys(doc, &["apiVersion", "kind", "metadata", "spec"], "object");
    keys(
        &doc["metadata"],
        &["name", "namespace", "labels", "annotations"],
        "metadata",
    );
    match doc["kind"].as_str().unwrap() {
        "ServiceMonitor" => {
            keys(
                &doc["spec"],
                &["selector", "namespaceSelector", "endpoints", "jobLabel"],
                "ServiceMonitor.spec",
            );
            for e in doc["spec"]["endpoints"].as_array().expect("endpoints") {
                keys(
                    e,
                    &["port", "path", "scheme", "interval", "scrapeTimeout"],
                    "endpoint",
                );
                assert!(e["port"].is_string());
            }
        }
        "PrometheusRule" => {
            keys(&doc["spec"], &["groups"], "PrometheusRule.spec");
            for g in doc["spec"]["groups"].as_array().expect("groups") {
                keys(g, &["name", "interval", "rules"], "group");
                for r in g["rules"].as_array().expect("rules") {
                    keys(
                        r,
                        &["record", "alert", "expr", "for", "labels", "annotations"],
                        "rule",
                    );
                    assert!(
                        r["record"].is_string() != r["alert"].is_string(),
                        "record xor alert"
                    );
                }
            }
        }
        other => panic!("no structural check for {other}"),
    }
}

#[test]
fn the_monitoring_manifests_render_and_validate() {
    let Some((text, docs)) = rendered() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("monitoring.yaml");
    std::fs::write(&file, &text).unwrap();
    let out = Command::new(python())
        .args(["-m", "kubernetes_validate", "--strict", "-k", K8S_VERSION])
        .arg(&file)
        .output()
        .unwrap_or_else(|e| panic!("cannot run kubernetes_validate (run `make venv`): {e}"));
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "kubernetes-validate failed:\n{report}"
    );
    let passed = report
        .lines()
        .filter(|l| l.starts_with("INFO ") && l.contains(" passed for resource "))
        .count();
    let no_schema: Vec<&str> = report.lines().filter(|l| l.starts_with("WARN ")).collect();
    for line in &no_schema {
        assert!(
            line.contains("with api version monitoring.coreos.com/v1"),
            "schema-less object that is not the prometheus-operator's: {line}"
        );
    }
    let operator: Vec<&Value> = docs
        .iter()
        .filter(|d| d["apiVersion"] == "monitoring.coreos.com/v1")
        .collect();
    for doc in &operator {
        check_operator_object(doc);
    }
    assert_eq!(no_schema.len(), operator.len(), "{report}");
    assert_eq!(
        passed + operator.len(),
        docs.len(),
        "every document validated:\n{report}"
    );

    let kinds: BTreeSet<String> = docs
        .iter()
        .map(|d| {
            format!(
                "{}/{}",
                d["kind"].as_str().unwrap(),
                d["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect();
    for wanted in [
        "ServiceAccount/calmplane-lease-monitor",
        "ClusterRole/calmplane-lease-monitor",
        "ClusterRoleBinding/calmplane-lease-monitor",
        "Service/calmplane-lease-monitor",
        "Deployment/calmplane-lease-monitor",
        "ServiceMonitor/calmplane",
        "ServiceMonitor/calmplane-lease-monitor",
        "PrometheusRule/calmplane",
        "ConfigMap/calmplane-dashboard",
    ] {
        assert!(kinds.contains(wanted), "{wanted} missing from {kinds:?}");
    }
    assert!(
        !kinds
            .iter()
            .any(|k| k.starts_with("Namespace/") || k.starts_with("MutatingWebhookConfiguration/")),
        "the component does not repeat the base"
    );

    // The dashboard ConfigMap: Grafana's sidecar label, and the JSON file as is.
    let cm = find(&docs, "ConfigMap", "calmplane-dashboard");
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    let json = cm["data"]["calmplane.json"]
        .as_str()
        .expect("calmplane.json");
    assert_eq!(serde_json::from_str::<Value>(json).unwrap(), dashboard());

    // The rendered PrometheusRule is still the rule file.
    assert_eq!(
        find(&docs, "PrometheusRule", "calmplane")["spec"]["groups"],
        read_yaml(&rule_file())["groups"]
    );
}

#[test]
fn the_lease_monitor_may_only_read_leases() {
    let Some((_, docs)) = rendered() else {
        return;
    };
    let roles: Vec<&Value> = docs
        .iter()
        .filter(|d| matches!(d["kind"].as_str(), Some("ClusterRole" | "Role")))
        .collect();
    assert_eq!(roles.len(), 1, "one role, the monitor's");
    let rules = roles[0]["rules"].as_array().unwrap();
    assert_eq!(rules.len(), 1, "{rules:?}");
    let rule = &rules[0];
    let list = |v: &Value| -> BTreeSet<String> {
        v.as_array().map_or_else(BTreeSet::new, |a| {
            a.iter().map(|s| s.as_str().unwrap().to_string()).collect()
        })
    };
    assert_eq!(
        list(&rule["apiGroups"]),
        ["coordination.k8s.io".to_string()].into()
    );
    assert_eq!(list(&rule["resources"]), ["leases".to_string()].into());
    assert_eq!(
        list(&rule["verbs"]),
        ["get", "list", "watch"].map(String::from).into()
    );
    for key in rule.as_object().unwrap().keys() {
        assert!(
            matches!(key.as_str(), "apiGroups" | "resources" | "verbs"),
            "unexpected {key}"
        );
    }
    assert!(roles[0].get("aggregationRule").is_none());

    // The binding gives that role to the Deployment's ServiceAccount, and to nothing else.
    let bindings: Vec<&Value> = docs
        .iter()
        .filter(|d| {
            matches!(
                d["kind"].as_str(),
                Some("ClusterRoleBinding" | "RoleBinding")
            )
        })
        .collect();
    assert_eq!(bindings.len(), 1);
    let b = bindings[0];
    assert_eq!(b["roleRef"]["name"], roles[0]["metadata"]["name"]);
    assert_eq!(b["roleRef"]["kind"], roles[0]["kind"]);
    let d = find(&docs, "Deployment", "calmplane-lease-monitor");
    let sa = d["spec"]["template"]["spec"]["serviceAccountName"]
        .as_str()
        .unwrap();
    assert_eq!(
        b["subjects"],
        serde_json::json!([{"kind": "ServiceAccount", "name": sa, "namespace": d["metadata"]["namespace"]}])
    );
}

#[test]
fn the_lease_monitor_deployment_is_hardened_like_the_webhook() {
    let Some((_, docs)) = rendered() else {
        return;
    };
    let webhook_text =
        std::fs::read_to_string(repo().join("manifests/base/deployment.yaml")).unwrap();
    let webhook = yaml_docs(&webhook_text).remove(0);
    let wpod = &webhook["spec"]["template"]["spec"];
    let d = find(&docs, "Deployment", "calmplane-lease-monitor");
    let pod = &d["spec"]["template"]["spec"];
    for key in ["runAsNonRoot", "runAsUser", "runAsGroup", "seccompProfile"] {
        assert_eq!(
            pod["securityContext"][key], wpod["securityContext"][key],
            "pod securityContext.{key}"
        );
    }
    assert_eq!(pod["dnsConfig"], wpod["dnsConfig"]);
    let c = &pod["containers"][0];
    assert_eq!(
        c["securityContext"],
        wpod["containers"][0]["securityContext"]
    );
    assert!(
        c["resources"]["requests"]["cpu"].is_string()
            && c["resources"]["limits"]["memory"].is_string()
    );
    assert!(
        c["resources"]["limits"].get("cpu").is_none(),
        "no CPU limit, as for the webhook"
    );
    assert_eq!(d["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"], 0);

    // Its flags are the binary's, and the probes and Service reach its port.
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(args[0], "lease-monitor");
    let help = run(Command::new(env!("CARGO_BIN_EXE_calmplane")).args(["lease-monitor", "--help"]));
    for arg in &args[1..] {
        let flag = arg.split('=').next().unwrap();
        assert!(
            help.contains(flag),
            "{flag} is not a lease-monitor flag:\n{help}"
        );
    }
    let listen = args
        .iter()
        .find_map(|a| a.strip_prefix("--metrics-listen="))
        .unwrap();
    let port: u64 = listen.rsplit(':').next().unwrap().parse().unwrap();
    let cport = c["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "metrics")
        .unwrap();
    assert_eq!(cport["containerPort"], port);
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], "metrics");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    let svc = find(&docs, "Service", "calmplane-lease-monitor");
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], "metrics");
    assert_eq!(
        &svc["spec"]["selector"],
        &d["spec"]["template"]["metadata"]["labels"]
    );

    // Each ServiceMonitor selects its Service (the webhook's from the base)
    // by labels, on a port that Service has.
    let base_service =
        yaml_docs(&std::fs::read_to_string(repo().join("manifests/base/service.yaml")).unwrap())
            .remove(0);
    for (sm, service) in [
        ("calmplane", &base_service),
        ("calmplane-lease-monitor", svc),
    ] {
        let sm = find(&docs, "ServiceMonitor", sm);
        for (k, v) in sm["spec"]["selector"]["matchLabels"].as_object().unwrap() {
            assert_eq!(&service["metadata"]["labels"][k], v, "{k}");
        }
        let port = &sm["spec"]["endpoints"][0]["port"];
        assert!(service["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| &p["name"] == port));
    }
    // ...and not the other one.
    let webhook_sm = find(&docs, "ServiceMonitor", "calmplane");
    assert_ne!(
        webhook_sm["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"],
        svc["metadata"]["labels"]["app.kubernetes.io/name"]
    );
}

// ------------------------------------------------- a real Prometheus

/// `prometheus`, killed on drop.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
    log: PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    fn start(binary: &Path, target: SocketAddr) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {rules}\nscrape_configs:\n  - job_name: lease-monitor\n    static_configs:\n      - targets: ['{target}']\n",
                rules = rule_file().display()
            ),
        )
        .unwrap();
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let log = dir.path().join("prometheus.log");
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start prometheus");
        Prometheus {
            child,
            addr,
            _dir: dir,
            log,
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// An instant query: `Err` carries Prometheus's error for a bad query.
    async fn query(&self, promql: &str) -> Result<Vec<Value>, String> {
        let path = format!("/api/v1/query?query={}", encode(promql));
        let Some((_, body)) = http_get(self.addr, &path).await else {
            return Err("no connection".into());
        };
        let v: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
        if v["status"] != "success" {
            return Err(body);
        }
        Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
    }

    /// The value of each series of an instant query, keyed by `label`.
    async fn values(&self, promql: &str, label: &str) -> Vec<(String, f64)> {
        self.query(promql)
            .await
            .unwrap_or_default()
            .iter()
            .map(|s| {
                let key = s["metric"][label].as_str().unwrap_or("").to_string();
                let v: f64 = s["value"][1].as_str().unwrap().parse().unwrap();
                (key, v)
            })
            .collect()
    }
}

/// Percent-encoding for a query parameter.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_sees_the_slo_and_the_scripted_write_rate() {
    let Some(binary) = tool(
        "prometheus",
        "a_real_prometheus_sees_the_slo_and_the_scripted_write_rate",
    ) else {
        return;
    };
    let server = FakeApiServer::start().await.unwrap();
    // "fresh": two leases renewed every 100 ms and 200 ms: every sample <= 1 s.
    // "half": one renewed every 100 ms, one whose holder died an hour ago:
    // exactly half of the samples <= 1 s.
    server.create_lease("fresh", "a", "pod-1", 15).unwrap();
    server.create_lease("fresh", "b", "pod-2", 15).unwrap();
    server.create_lease("half", "live", "pod-3", 15).unwrap();
    server.create_lease("half", "dead", "pod-4", 15).unwrap();
    let hour_ago =
        k8s_openapi::jiff::Timestamp::now() - k8s_openapi::jiff::SignedDuration::from_secs(3600);
    server.renew_lease_at("half", "dead", hour_ago).unwrap();
    let monitor = Monitor::start(CALMPLANE.as_ref(), &server, &[]).await;
    monitor.wait_ready().await;
    // 10 + 5 + 10 = 25 writes/s.
    let scripted_rate = 25.0;
    let renewers = [
        server.renew_every("fresh", "a", Duration::from_millis(100)),
        server.renew_every("fresh", "b", Duration::from_millis(200)),
        server.renew_every("half", "live", Duration::from_millis(100)),
    ];
    let prometheus = Prometheus::start(&binary, monitor.addr);

    // The rate window must lie inside the data: 10 s, once 15 s are scraped.
    let rate_query = "sum(max by (namespace) (rate(calmplane_lease_writes_total[10s])))";
    let slo_rule = "namespace:calmplane_lease_age_le_1s:ratio_rate5m";
    let p99_rule = "calmplane:lease_age_seconds:p99_rate5m";
    let started = Instant::now();
    let mut last = String::new();
    let mut done = false;
    while started.elapsed() < Duration::from_secs(50) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let up = prometheus.values("up", "job").await;
        if up.first().map(|(_, v)| *v) != Some(1.0) || started.elapsed() < Duration::from_secs(15) {
            last = format!("up: {up:?}");
            continue;
        }
        let slo: std::collections::BTreeMap<String, f64> = prometheus
            .values(slo_rule, "namespace")
            .await
            .into_iter()
            .collect();
        let p99 = prometheus.values(p99_rule, "").await;
        let rate = prometheus.values(rate_query, "").await;
        last = format!("slo {slo:?}, p99 {p99:?}, rate {rate:?}");
        if slo.len() == 2 && !p99.is_empty() && !rate.is_empty() {
            done = true;
            assert_eq!(slo["fresh"], 1.0, "{last}");
            // Scrapes never split a sample, so every scrape adds exactly
            // one <= 1 s observation per two: 0.5 up to rounding.
            assert!((slo["half"] - 0.5).abs() < 1e-9, "{last}");
            // A quarter of all samples (the dead lease) lie in the +Inf
            // bucket, past the 0.99 quantile: Prometheus then answers the
            // largest finite bucket bound.
            let largest = *calmplane::lease_monitor::metrics::AGE_BUCKETS
                .last()
                .unwrap();
            assert_eq!(p99[0].1, largest, "{last}");
            let rate = rate[0].1;
            eprintln!("after {:?}: {last}", started.elapsed());
            assert!(
                (rate - scripted_rate).abs() <= 0.1 * scripted_rate,
                "write rate {rate}/s, scripted {scripted_rate}/s"
            );
            break;
        }
    }
    assert!(
        done,
        "Prometheus never had the values; last: {last}\nprometheus log:\n{}\nmonitor log:\n{}",
        prometheus.log_text(),
        monitor.log_text()
    );

    // Every dashboard query, every rule and every query of the runbook
    // parses and runs in Prometheus.
    let mut exprs = dashboard_exprs();
    exprs.extend(runbook_queries());
    exprs.extend(
        all_exprs(&read_yaml(&rule_file()))
            .into_iter()
            .map(|e| ("rule".to_string(), e)),
    );
    for (place, expr) in exprs {
        if let Err(e) = prometheus.query(&expr).await {
            panic!("{place}: Prometheus refuses {expr}: {e}");
        }
    }
    // The recording rules are evaluated, not just parsed: the series exist.
    assert!(!prometheus
        .values("calmplane:lease_writes:rate1m", "")
        .await
        .is_empty());
    for r in renewers {
        r.stop().await;
    }
}
