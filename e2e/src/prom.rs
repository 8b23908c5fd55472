//! Reading the apiserver's Prometheus text exposition: one sample by name
//! and labels, and quantiles of a histogram the way PromQL's
//! `histogram_quantile` estimates them (linear within a bucket).

use anyhow::{bail, Result};

/// Samples named `name` whose labels include every `labels` pair, as
/// (the sample's full label text, value).
pub fn samples<'a>(text: &'a str, name: &str, labels: &[(&str, &str)]) -> Vec<(&'a str, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let (label_text, value) = match rest.strip_prefix('{') {
                Some(r) => {
                    let end = r.find('}')?;
                    (&r[..end], r[end + 1..].trim())
                }
                None if rest.starts_with(' ') => ("", rest.trim()),
                None => return None,
            };
            let has_all = labels
                .iter()
                .all(|(k, v)| label_text.split(',').any(|kv| kv == format!("{k}=\"{v}\"")));
            let value = value.split_whitespace().next()?.parse().ok()?;
            has_all.then_some((label_text, value))
        })
        .collect()
}

/// The sum of the samples [`samples`] finds (0 when there are none, as for a
/// counter the apiserver has not created yet).
pub fn sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    samples(text, name, labels).iter().map(|(_, v)| v).sum()
}

/// Cumulative histogram buckets (upper bound, count) of `name`, summed over
/// the series that match `labels`.
pub fn buckets(text: &str, name: &str, labels: &[(&str, &str)]) -> Vec<(f64, f64)> {
    let mut out: Vec<(f64, f64)> = Vec::new();
    for (label_text, value) in samples(text, &format!("{name}_bucket"), labels) {
        let Some(le) = label_text
            .split(',')
            .find_map(|kv| kv.strip_prefix("le=\""))
            .and_then(|v| v.strip_suffix('"'))
        else {
            continue;
        };
        let le = if le == "+Inf" {
            f64::INFINITY
        } else {
            le.parse().unwrap_or(f64::NAN)
        };
        match out.iter_mut().find(|(b, _)| *b == le) {
            Some((_, c)) => *c += value,
            None => out.push((le, value)),
        }
    }
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

/// Per-bucket difference `after - before` (the observations in between).
pub fn delta(before: &[(f64, f64)], after: &[(f64, f64)]) -> Vec<(f64, f64)> {
    after
        .iter()
        .map(|(le, c)| {
            let was = before
                .iter()
                .find(|(b, _)| b == le)
                .map_or(0.0, |(_, c)| *c);
            (*le, c - was)
        })
        .collect()
}

/// The `q` quantile of cumulative `buckets`, interpolated linearly within
/// the bucket it falls in (PromQL's estimate; its precision is the bucket
/// layout's).
pub fn quantile(q: f64, buckets: &[(f64, f64)]) -> Result<f64> {
    let Some(&(_, total)) = buckets.last() else {
        bail!("no buckets");
    };
    if total <= 0.0 {
        bail!("no observations");
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return Ok(lower.0);
            }
            let in_bucket = count - lower.1;
            let frac = if in_bucket > 0.0 {
                (rank - lower.1) / in_bucket
            } else {
                1.0
            };
            return Ok(lower.0 + (le - lower.0) * frac);
        }
        lower = (le, count);
    }
    bail!("rank {rank} beyond the last bucket")
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP x_seconds a histogram
x_seconds_bucket{name="a",le="0.005"} 6
x_seconds_bucket{name="a",le="0.025"} 9
x_seconds_bucket{name="a",le="+Inf"} 10
x_seconds_bucket{name="b",le="0.005"} 100
x_seconds_bucket{name="b",le="0.025"} 100
x_seconds_bucket{name="b",le="+Inf"} 100
fails_total{name="a"} 3
fails_total{name="b"} 4
"#;

    #[test]
    fn reads_one_series_by_label() {
        assert_eq!(sum(TEXT, "fails_total", &[("name", "a")]), 3.0);
        assert_eq!(sum(TEXT, "fails_total", &[]), 7.0);
        assert_eq!(sum(TEXT, "fails_total", &[("name", "c")]), 0.0);
    }

    #[test]
    fn quantiles_interpolate_within_the_bucket() {
        let b = buckets(TEXT, "x_seconds", &[("name", "a")]);
        assert_eq!(b, vec![(0.005, 6.0), (0.025, 9.0), (f64::INFINITY, 10.0)]);
        // rank 5 of 6 in [0, 0.005]
        assert!((quantile(0.5, &b).unwrap() - 0.005 * 5.0 / 6.0).abs() < 1e-12);
        // rank 7.5: 1.5 of the 3 in (0.005, 0.025]
        assert!((quantile(0.75, &b).unwrap() - 0.015).abs() < 1e-12);
        // in +Inf: the highest finite bound, as PromQL answers
        assert_eq!(quantile(0.99, &b).unwrap(), 0.025);
        let d = delta(&b, &b);
        assert!(quantile(0.5, &d).is_err());
    }
}
