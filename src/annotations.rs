//! calmplane's annotations and its namespace label: each format is read and
//! written here, and only here. The policies, the pipeline, `calmplane audit` and the e2e suite all
//! use these types, so a format cannot drift between its writer and its
//! readers.
//!
//! | annotation | on | format | type |
//! |---|---|---|---|
//! | `calmplane.dev/skip` | any object | `all`, or policy names separated by commas | [`Skip`] |
//! | `calmplane.dev/rollouts` | Deployment | unix seconds separated by commas, the last hour | [`RolloutHistory`] |
//! | `calmplane.dev/lease-scope` | pod template, Pod | `deployment/<name>` | [`LeaseScope`] |
//! | `calmplane.dev/lease-selector` | Pod | a field selector (the `lease` policy's default key) | [`LEASE_SELECTOR`] |
//! | `kubernetes.io/config.mirror` (the kubelet's) | Pod | present on mirror Pods | [`MIRROR`] |
//!
//! | label | on | values |
//! |---|---|---|
//! | `calmplane.dev/enabled` | Namespace | `true`: the webhook runs every policy; `apiserver`: the exported MutatingAdmissionPolicies run theirs, the webhook the rest; `report`: the webhook reports, never patches ([`ENABLED`]) |

/// Namespace label that opts a namespace in, and says which engine runs the
/// policies the apiserver can run (see [`enabled`]).
pub const ENABLED: &str = "calmplane.dev/enabled";

/// The values of [`ENABLED`]. The webhook configuration and the exported
/// MutatingAdmissionPolicyBindings select on them.
pub mod enabled {
    /// The webhook runs every policy.
    pub const WEBHOOK: &str = "true";
    /// The apiserver runs the policies calmplane exports as
    /// MutatingAdmissionPolicies, before any webhook; the webhook runs the
    /// rest and finds nothing left to do for those.
    pub const APISERVER: &str = "apiserver";
    /// The webhook's report mode: counted and logged, never patched.
    pub const REPORT: &str = "report";
}

/// Object annotation: `all`, or a comma list of policy names to turn off.
pub const SKIP: &str = "calmplane.dev/skip";
/// Deployment annotation: unix times of the template changes in the last hour.
pub const ROLLOUTS: &str = "calmplane.dev/rollouts";
/// Pod (template) annotation `deployment/<name>`: this pod's Deployment is hot.
pub const LEASE_SCOPE: &str = "calmplane.dev/lease-scope";
/// The kubelet's annotation on a mirror Pod, the API's copy of a static Pod.
/// The kubelet runs the static manifest, not this object, so a change to
/// it would never take effect: no policy runs on one, and the webhook
/// configuration's `not-a-mirror-pod` condition keeps the call from being
/// made at all.
pub const MIRROR: &str = "kubernetes.io/config.mirror";
/// Pod annotation holding a lease selector: the default of `lease.annotations`.
pub const LEASE_SELECTOR: &str = "calmplane.dev/lease-selector";

/// `calmplane.dev/skip`: which policies an object turns off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip<'a> {
    /// No annotation, or an empty one: every policy runs.
    None,
    /// `all` is in the list: no policy runs.
    All,
    /// A comma list of policy names.
    Some(&'a str),
}

impl<'a> Skip<'a> {
    /// The annotation's value, if the object has one.
    pub fn parse(value: Option<&'a str>) -> Skip<'a> {
        match value.map(str::trim) {
            None | Some("") => Skip::None,
            Some(v) if v.split(',').any(|p| p.trim() == "all") => Skip::All,
            Some(v) => Skip::Some(v),
        }
    }

    /// The skip annotation of `object`.
    pub fn of(object: &'a serde_json::Value) -> Skip<'a> {
        Skip::parse(crate::patch::str_at(
            object,
            &["metadata", "annotations", SKIP],
        ))
    }

    /// Whether the policy named `policy` is turned off.
    pub fn skips(&self, policy: &str) -> bool {
        match self {
            Skip::None => false,
            Skip::All => true,
            Skip::Some(list) => list.split(',').any(|p| p.trim() == policy),
        }
    }

    /// The names in the list that are not `all` and not in `known`: likely typos.
    pub fn unknown(&self, known: impl Fn(&str) -> bool) -> Vec<&'a str> {
        match self {
            Skip::Some(list) => list
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty() && *p != "all" && !known(p))
                .collect(),
            Skip::None | Skip::All => Vec::new(),
        }
    }
}

/// `calmplane.dev/lease-scope: deployment/<name>`: the pods of this hot
/// Deployment share one Lease, named after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseScope<'a> {
    /// The Deployment's name.
    pub deployment: &'a str,
}

impl<'a> LeaseScope<'a> {
    /// The scope a value names; `None` for anything but `deployment/<name>`.
    pub fn parse(value: &'a str) -> Option<LeaseScope<'a>> {
        match value.strip_prefix("deployment/") {
            Some(name) if !name.is_empty() => Some(LeaseScope { deployment: name }),
            _ => None,
        }
    }

    /// The annotation's value for the Deployment named `deployment`.
    pub fn format(deployment: &str) -> String {
        format!("deployment/{deployment}")
    }
}

/// `calmplane.dev/rollouts`: when a Deployment's template changed, in the
/// last hour. Stateless webhook replicas share it through the object.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RolloutHistory {
    /// Unix seconds, in the order they were recorded.
    stamps: Vec<i64>,
}

impl RolloutHistory {
    /// How far back a rollout counts: a Deployment is hot for its rollouts
    /// in the last hour.
    pub const WINDOW_SECONDS: i64 = 3600;

    /// The history an annotation value holds. Entries that are not numbers
    /// are dropped, not fatal: the annotation is user-editable.
    pub fn parse(value: &str) -> RolloutHistory {
        RolloutHistory {
            stamps: value
                .split(',')
                .filter_map(|t| t.trim().parse().ok())
                .collect(),
        }
    }

    /// Whether `stamp` is in the window that ends at `now`: not in the
    /// future, less than an hour old.
    pub fn in_window(stamp: i64, now: i64) -> bool {
        stamp <= now && now - stamp < Self::WINDOW_SECONDS
    }

    /// Drop what is outside the window that ends at `now`.
    pub fn prune(&mut self, now: i64) {
        self.stamps.retain(|t| Self::in_window(*t, now));
    }

    /// Record a template change at `now`.
    pub fn record(&mut self, now: i64) {
        self.stamps.push(now);
    }

    /// Rollouts in the window that ends at `now`.
    pub fn count_at(&self, now: i64) -> usize {
        self.stamps
            .iter()
            .filter(|t| Self::in_window(**t, now))
            .count()
    }

    /// Rollouts held.
    pub fn len(&self) -> usize {
        self.stamps.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.stamps.is_empty()
    }

    /// The annotation's value.
    pub fn format(&self) -> String {
        self.stamps
            .iter()
            .map(i64::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skip_lists() {
        assert_eq!(Skip::parse(None), Skip::None);
        assert_eq!(Skip::parse(Some(" ")), Skip::None);
        assert_eq!(Skip::parse(Some("dns, all")), Skip::All);
        let s = Skip::parse(Some(" dns ,prestop"));
        assert!(s.skips("dns") && s.skips("prestop") && !s.skips("lease"));
        assert!(Skip::All.skips("anything"));
        let known = |p: &str| ["dns", "prestop"].contains(&p);
        assert_eq!(
            Skip::parse(Some("dns,dsn, ,all2")).unknown(known),
            ["dsn", "all2"]
        );
    }

    #[test]
    fn lease_scopes() {
        assert_eq!(
            LeaseScope::parse("deployment/web"),
            Some(LeaseScope { deployment: "web" })
        );
        assert_eq!(LeaseScope::parse("deployment/"), None);
        assert_eq!(LeaseScope::parse("web"), None);
        assert_eq!(LeaseScope::format("web"), "deployment/web");
    }

    #[test]
    fn rollout_histories() {
        let mut h = RolloutHistory::parse("1, 2,x,,3700");
        assert_eq!(h.format(), "1,2,3700");
        // At 3,700 the window holds 101..=3,700: only the last one.
        assert_eq!(h.count_at(3700), 1);
        // A stamp from the future is not in the window either.
        assert_eq!(h.count_at(1), 1);
        h.prune(3700);
        h.record(3800);
        assert_eq!(h.format(), "3700,3800");
        assert!(RolloutHistory::parse("").is_empty());
    }
}
