//! Reading the Prometheus text exposition format, the one way every test
//! does it: calmplane's `/metrics`, the lease monitor's and the apiserver's.
//! One sample by name and labels, sums over series, and quantiles of a
//! histogram the way PromQL's `histogram_quantile` estimates them (linear
//! within a bucket).

/// One sample line: its name, its labels as written, and its value.
fn sample(line: &str) -> Option<(&str, &str, f64)> {
    if line.starts_with('#') || line.trim().is_empty() {
        return None;
    }
    let (name, rest) = match line.find(['{', ' ']) {
        Some(i) => (&line[..i], &line[i..]),
        None => return None,
    };
    let (labels, value) = match rest.strip_prefix('{') {
        Some(r) => {
            // Label values may hold `}` only escaped inside quotes; the
            // exposition writes `"}` as the end of the labels.
            let end = r.rfind('}')?;
            (&r[..end], r[end + 1..].trim())
        }
        None => ("", rest.trim()),
    };
    let value = match value.split_whitespace().next()? {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some((name, labels, value))
}

/// The `(key, value)` pairs of a label text such as `a="x",b="y"`.
fn pairs(labels: &str) -> Vec<(&str, &str)> {
    let mut out = Vec::new();
    let mut rest = labels;
    while let Some((key, after)) = rest.split_once("=\"") {
        let key = key.trim_start_matches(',').trim();
        // The value ends at the first quote not escaped with a backslash.
        let mut end = None;
        let mut escaped = false;
        for (i, c) in after.char_indices() {
            match c {
                '\\' if !escaped => escaped = true,
                '"' if !escaped => {
                    end = Some(i);
                    break;
                }
                _ => escaped = false,
            }
        }
        let Some(end) = end else { break };
        out.push((key, &after[..end]));
        rest = &after[end + 1..];
    }
    out
}

/// Samples named `name` whose labels include every `labels` pair, as
/// (the sample's full label text, value).
pub fn samples<'a>(text: &'a str, name: &str, labels: &[(&str, &str)]) -> Vec<(&'a str, f64)> {
    text.lines()
        .filter_map(sample)
        .filter(|(n, _, _)| *n == name)
        .filter(|(_, l, _)| {
            let have = pairs(l);
            labels.iter().all(|want| have.contains(want))
        })
        .map(|(_, l, v)| (l, v))
        .collect()
}

/// The sum of the samples [`samples`] finds (0 when there are none, as for a
/// counter not created yet).
pub fn sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    samples(text, name, labels).iter().map(|(_, v)| v).sum()
}

/// The value of the one series named `name` whose labels are exactly
/// `labels` (in any order).
pub fn exact(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter_map(sample)
        .find(|(n, l, _)| {
            let have = pairs(l);
            *n == name && have.len() == labels.len() && labels.iter().all(|w| have.contains(w))
        })
        .map(|(_, _, v)| v)
}

/// The value of a series written as it appears in the text, such as
/// `calmplane_tls_handshakes_total{outcome="success"}`; 0 when it is absent.
pub fn metric(text: &str, series: &str) -> u64 {
    let (name, labels) = match series.split_once('{') {
        Some((name, rest)) => (name, rest.trim_end_matches('}')),
        None => (series, ""),
    };
    exact(text, name, &pairs(labels)).map_or(0, |v| v as u64)
}

/// Cumulative histogram buckets (upper bound, count) of `name`, summed over
/// the series that match `labels`.
pub fn buckets(text: &str, name: &str, labels: &[(&str, &str)]) -> Vec<(f64, f64)> {
    let mut out: Vec<(f64, f64)> = Vec::new();
    for (label_text, value) in samples(text, &format!("{name}_bucket"), labels) {
        let Some(le) = pairs(label_text)
            .into_iter()
            .find(|(k, _)| *k == "le")
            .map(|(_, v)| v)
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
/// layout's). `None` without observations.
pub fn quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let &(_, total) = buckets.last()?;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return Some(lower.0);
            }
            let in_bucket = count - lower.1;
            let frac = if in_bucket > 0.0 {
                (rank - lower.1) / in_bucket
            } else {
                1.0
            };
            return Some(lower.0 + (le - lower.0) * frac);
        }
        lower = (le, count);
    }
    None
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
up 1
odd{path="a\"b,c",x="}"} 2
"#;

    #[test]
    fn reads_series_by_label() {
        assert_eq!(sum(TEXT, "fails_total", &[("name", "a")]), 3.0);
        assert_eq!(sum(TEXT, "fails_total", &[]), 7.0);
        assert_eq!(sum(TEXT, "fails_total", &[("name", "c")]), 0.0);
        assert_eq!(exact(TEXT, "up", &[]), Some(1.0));
        assert_eq!(exact(TEXT, "fails_total", &[]), None);
        assert_eq!(metric(TEXT, r#"fails_total{name="b"}"#), 4);
        assert_eq!(metric(TEXT, "absent_total"), 0);
        assert_eq!(
            exact(TEXT, "odd", &[("x", "}"), ("path", r#"a\"b,c"#)]),
            Some(2.0)
        );
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
        assert!(quantile(0.5, &d).is_none());
    }
}
