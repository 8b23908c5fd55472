//! Is a Deployment hot? Rollouts in the last hour, from two sources.
//!
//! * **ReplicaSets.** Every template change creates a ReplicaSet and gives it
//!   the next `deployment.kubernetes.io/revision`; a rollback re-uses an old
//!   ReplicaSet and gives it the next revision too. So the revisions handed out
//!   since the oldest ReplicaSet created in the last hour are the rollouts of
//!   that hour: `highest revision - lowest revision created in the hour + 1`.
//!   Revision 1 is the Deployment's creation, not a rollout (the webhook's
//!   `rollout-history` does not count a CREATE either). This is a lower bound:
//!   a rollback to a ReplicaSet created earlier in the hour hides that
//!   ReplicaSet's first revision, and a rollback with no ReplicaSet created in
//!   the hour is not seen at all.
//! * **calmplane's annotation** `calmplane.dev/rollouts`: the unix times the
//!   webhook recorded, when calmplane already watches the Deployment.
//!
//! The larger count decides, and the judgement says which source it came from.

use crate::annotations::{RolloutHistory, ROLLOUTS};
use crate::patch::str_at;
use serde_json::Value;
/// The annotation the Deployment controller numbers ReplicaSets with.
pub const REVISION_ANNOTATION: &str = "deployment.kubernetes.io/revision";

/// Which source gave the rollout count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// No rollout in the last hour by either source.
    None,
    /// The ReplicaSets' creation times and revisions.
    ReplicaSets,
    /// calmplane's `calmplane.dev/rollouts` annotation.
    Annotation,
    /// Both sources agree.
    Both,
}

impl Source {
    /// How the table names the source.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::None => "none",
            Source::ReplicaSets => "replicasets",
            Source::Annotation => "calmplane.dev/rollouts",
            Source::Both => "replicasets and calmplane.dev/rollouts",
        }
    }
}

/// The verdict on one Deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Judgement {
    /// Rollouts in the last hour, by the deciding source.
    pub rollouts: usize,
    /// Which source decided.
    pub source: Source,
    /// More rollouts than `hotRolloutsPerHour`.
    pub hot: bool,
}

/// Judge `deployment` from its ReplicaSets (already matched by owner) at `now`.
pub fn judge(deployment: &Value, replicasets: &[&Value], now: i64, limit: u32) -> Judgement {
    let from_rs = replicaset_rollouts(deployment, replicasets, now);
    let from_annotation = annotation_rollouts(deployment, now);
    let (rollouts, source) = match from_rs.cmp(&from_annotation) {
        _ if from_rs == 0 && from_annotation == 0 => (0, Source::None),
        std::cmp::Ordering::Greater => (from_rs, Source::ReplicaSets),
        std::cmp::Ordering::Less => (from_annotation, Source::Annotation),
        std::cmp::Ordering::Equal => (from_rs, Source::Both),
    };
    Judgement {
        rollouts,
        source,
        hot: rollouts > limit as usize,
    }
}

fn in_window(t: i64, now: i64) -> bool {
    RolloutHistory::in_window(t, now)
}

fn revision(obj: &Value) -> Option<u64> {
    str_at(obj, &["metadata", "annotations", REVISION_ANNOTATION])?
        .trim()
        .parse()
        .ok()
}

/// Unix seconds of an RFC 3339 timestamp, as the apiserver writes them.
pub fn unix_seconds(timestamp: &str) -> Option<i64> {
    time::OffsetDateTime::parse(timestamp, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(|t| t.unix_timestamp())
}

fn replicaset_rollouts(deployment: &Value, replicasets: &[&Value], now: i64) -> usize {
    let created_in_window: Vec<&Value> = replicasets
        .iter()
        .copied()
        .filter(|rs| {
            str_at(rs, &["metadata", "creationTimestamp"])
                .and_then(unix_seconds)
                .is_some_and(|t| in_window(t, now))
        })
        .collect();
    if created_in_window.is_empty() {
        return 0;
    }
    let revisions: Option<Vec<u64>> = created_in_window.iter().map(|rs| revision(rs)).collect();
    let Some(revisions) = revisions else {
        // Without revisions, each new ReplicaSet is one template change.
        return created_in_window.len();
    };
    let lowest = revisions.iter().copied().min().unwrap_or(1).max(2);
    let highest = replicasets
        .iter()
        .filter_map(|rs| revision(rs))
        .chain(revision(deployment))
        .max()
        .unwrap_or(0);
    (highest + 1).saturating_sub(lowest) as usize
}

fn annotation_rollouts(deployment: &Value, now: i64) -> usize {
    let history = str_at(deployment, &["metadata", "annotations", ROLLOUTS]).unwrap_or("");
    RolloutHistory::parse(history).count_at(now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: i64 = 1_800_000_000;

    fn rs(minutes_ago: i64, revision: u64) -> Value {
        let t = time::OffsetDateTime::from_unix_timestamp(NOW - minutes_ago * 60).unwrap();
        let ts = t
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap();
        json!({"metadata": {"creationTimestamp": ts,
            "annotations": {REVISION_ANNOTATION: revision.to_string()}}})
    }

    #[test]
    fn revisions_handed_out_in_the_hour_are_rollouts() {
        let d = json!({"metadata": {"name": "web"}});
        let (a, b, c) = (rs(180, 1), rs(50, 2), rs(20, 3));
        let j = judge(&d, &[&a, &b, &c], NOW, 1);
        assert_eq!(
            (j.rollouts, j.source, j.hot),
            (2, Source::ReplicaSets, true)
        );
        // Created in the hour, but revision 1 is the Deployment's creation.
        let (a, b) = (rs(30, 1), rs(10, 2));
        let j = judge(&d, &[&a, &b], NOW, 1);
        assert_eq!((j.rollouts, j.hot), (1, false));
        // A rollback to an old ReplicaSet bumps its revision.
        let (a, b, c) = (rs(300, 4), rs(120, 2), rs(40, 3));
        assert_eq!(judge(&d, &[&a, &b, &c], NOW, 1).rollouts, 2);
        // Nothing in the hour.
        let (a, b) = (rs(300, 1), rs(120, 2));
        let j = judge(&d, &[&a, &b], NOW, 1);
        assert_eq!((j.rollouts, j.source), (0, Source::None));
    }

    #[test]
    fn the_annotation_decides_when_it_counts_more() {
        let stamps = format!(
            "{},{},{},garbage,{}",
            NOW - 7200,
            NOW - 100,
            NOW - 50,
            NOW + 10
        );
        let d = json!({"metadata": {"annotations": {ROLLOUTS: stamps}}});
        let j = judge(&d, &[], NOW, 1);
        assert_eq!((j.rollouts, j.source, j.hot), (2, Source::Annotation, true));
        let (a, b, c) = (rs(180, 1), rs(50, 2), rs(20, 3));
        let j = judge(&d, &[&a, &b, &c], NOW, 1);
        assert_eq!(j.source, Source::Both);
    }
}
