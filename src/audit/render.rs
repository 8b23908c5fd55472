//! The audit for humans (a table per namespace) and for machines (JSON).

use super::{AuditError, Report};
use crate::policy;
use std::fmt::Write as _;

/// The stable JSON (keys documented in docs/src/adoption/audit.md), pretty-printed.
pub fn json(report: &Report) -> Result<String, AuditError> {
    let mut out =
        serde_json::to_string_pretty(report).map_err(|e| AuditError::Other(e.to_string()))?;
    out.push('\n');
    Ok(out)
}

/// Left-aligned columns, two spaces apart.
fn columns(rows: &[Vec<String>]) -> String {
    let width = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..width)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}  ", w = widths[c]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// A list cut to `max` names.
fn names(list: &[String], max: usize) -> String {
    if list.len() <= max {
        return list.join(", ");
    }
    format!("{}, and {} more", list[..max].join(", "), list.len() - max)
}

const MAX_NAMES: usize = 10;
/// Hot Deployments listed with their evidence before the table cuts off.
const MAX_HOT_LINES: usize = 25;

/// The human table.
pub fn table(report: &Report) -> String {
    let mut out = String::new();
    if report.namespaces.is_empty() {
        out.push_str("No namespace is opted in (label one calmplane.dev/enabled=report, or pass --all-namespaces).\n");
    } else {
        // A column per policy, from the one list of them.
        let mut header: Vec<String> = ["NAMESPACE", "OPTED-IN", "PODS", "CHANGED"]
            .map(String::from)
            .to_vec();
        header.extend(policy::ALL.iter().map(|e| e.name.to_uppercase()));
        header.extend(["SELECTORS", "HOT", "NO-PDB"].map(String::from));
        let mut rows = vec![header];
        let row = |name: &str,
                   opted: &str,
                   pods: usize,
                   changed: usize,
                   c: &super::Changes,
                   sel: usize,
                   hot: usize,
                   nopdb: usize| {
            let mut row = vec![
                name.to_string(),
                opted.to_string(),
                pods.to_string(),
                changed.to_string(),
            ];
            row.extend(c.iter().map(|(_, n)| n.to_string()));
            row.extend([sel.to_string(), hot.to_string(), nopdb.to_string()]);
            row
        };
        for n in &report.namespaces {
            rows.push(row(
                &n.name,
                n.opted_in,
                n.pods,
                n.pods_changed,
                &n.changes,
                n.lease_selectors,
                n.hot_deployments.len(),
                n.deployments_without_pdb.len(),
            ));
        }
        let sum = |f: fn(&super::NamespaceReport) -> usize| {
            report.namespaces.iter().map(f).sum::<usize>()
        };
        rows.push(row(
            "TOTAL",
            "",
            sum(|n| n.pods),
            sum(|n| n.pods_changed),
            &report.changes,
            sum(|n| n.lease_selectors),
            sum(|n| n.hot_deployments.len()),
            sum(|n| n.deployments_without_pdb.len()),
        ));
        out.push_str(&columns(&rows));
        out.push_str("\nCHANGED: pods some policy would change.");
        for entry in policy::ALL {
            let _ = write!(out, " {}: {}.", entry.name.to_uppercase(), entry.counts);
        }
        out.push_str(" SELECTORS: lease selectors found in pods.\n");
    }

    let d = &report.details;
    if !d.hot.is_empty() {
        let _ = writeln!(
            out,
            "\nHot Deployments (more than {} rollout(s) in the last hour; their pods share one Lease per Deployment):",
            d.hot_limit
        );
        let mut hot: Vec<&super::HotDeployment> = d.hot.iter().collect();
        hot.sort_by(|a, b| a.namespace.cmp(&b.namespace));
        for h in hot.iter().take(MAX_HOT_LINES) {
            let _ = writeln!(
                out,
                "  {}/{}: {} rollouts, decided by {}",
                h.namespace,
                h.name,
                h.judgement.rollouts,
                h.judgement.source.as_str()
            );
        }
    }
    if d.hot.len() > MAX_HOT_LINES {
        let _ = writeln!(
            out,
            "  ... and {} more (-o json lists them all)",
            d.hot.len() - MAX_HOT_LINES
        );
    }
    let without: Vec<&super::NamespaceReport> = report
        .namespaces
        .iter()
        .filter(|n| !n.deployments_without_pdb.is_empty())
        .collect();
    if !without.is_empty() {
        out.push_str("\nDeployments without a PodDisruptionBudget (maxUnavailable: 0 does not hold back voluntary evictions):\n");
        for n in without {
            let _ = writeln!(
                out,
                "  {}: {}",
                n.name,
                names(&n.deployments_without_pdb, MAX_NAMES)
            );
        }
    }

    let l = &report.leases;
    out.push_str("\nLease writes:\n");
    let _ = writeln!(
        out,
        "  before: {:>6} Leases  {:>10.3} writes/s   {}",
        l.before.objects, l.before.writes_per_second, l.before.source
    );
    let _ = writeln!(
        out,
        "  after:  {:>6} Leases  {:>10.3} writes/s   {}",
        l.after.objects, l.after.writes_per_second, l.after.source
    );

    if !d.not_opted_in.is_empty() {
        let _ = writeln!(
            out,
            "\nNot opted in, not audited ({}): {} (--all-namespaces audits them too)",
            d.not_opted_in.len(),
            names(&d.not_opted_in, MAX_NAMES)
        );
    }
    if !report.warnings.is_empty() {
        let _ = writeln!(out, "\nWarnings ({}):", report.warnings.len());
        for w in &report.warnings {
            let _ = writeln!(out, "  {w}");
        }
    }
    out
}
