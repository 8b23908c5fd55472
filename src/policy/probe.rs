//! `probe`: a sixth policy that exists only in this crate's unit tests, to
//! prove the recipe in CONTRIBUTING.md: a new policy is one module and one
//! line in [`ALL`](super::ALL), and the policy file, enforcement, the skip
//! annotation, the view `/mutate` builds, `/report`'s counts and `calmplane
//! audit` all pick it up with no other edit.
//!
//! It stamps `probe.calmplane.dev/seen` on Pods labelled
//! `probe.calmplane.dev/mark`. The label is a member no shipped policy reads,
//! so the view only holds it because this policy declares it.

use super::{Context, Definition, Kind, Policy, Reads};
use crate::patch::{str_at, Mutation};
use crate::view::Shape;
use kube::core::admission::Operation;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The label this policy acts on.
const MARK: &str = "probe.calmplane.dev/mark";
/// The annotation it writes.
const SEEN: &str = "probe.calmplane.dev/seen";

/// The `probe` section.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Settings {
    /// What the annotation says.
    pub stamp: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            stamp: "seen".to_string(),
        }
    }
}

impl super::Settings for Settings {
    fn check(&self) -> Result<(), (&'static str, String)> {
        if self.stamp.is_empty() {
            return Err(("stamp", "must not be empty".to_string()));
        }
        Ok(())
    }
}

/// The policy.
pub struct Probe {
    cfg: Settings,
}

impl Definition for Probe {
    const NAME: &'static str = "probe";
    const SECTION: &'static str = "probe";
    const COUNTS: &'static str = "pods stamped by the test-only probe";
    type Settings = Settings;

    fn new(cfg: Settings) -> Self {
        Probe { cfg }
    }
}

impl Policy for Probe {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn handles(&self, kind: Kind, operation: &Operation) -> bool {
        kind == Kind::Pod && *operation == Operation::Create
    }

    fn in_apiserver(&self) -> super::apiserver::InApiserver {
        super::apiserver::InApiserver::Stays("the test-only probe is never exported")
    }

    fn reads(&self, reads: &mut Reads) {
        reads.shape(Kind::Pod, Shape::at(&["metadata", "labels"], Shape::All));
        reads.keys([SEEN.to_string()], []);
    }

    fn apply(&self, _ctx: &Context<'_>, m: &mut Mutation) {
        if str_at(m.doc(), &["metadata", "labels", MARK]).is_none() {
            return;
        }
        m.set(
            &["metadata", "annotations", SEEN],
            Value::String(self.cfg.stamp.clone()),
            "stamped by the probe",
        );
    }
}

#[cfg(test)]
mod tests {
    use crate::audit::{self, input::Inventory, Options};
    use crate::config::Config;
    use crate::pipeline::{FixedClock, Pipeline};
    use crate::policy::{Context, Kind};
    use crate::review;
    use kube::core::admission::Operation;
    use serde_json::{json, Value};
    use std::sync::Arc;

    fn pipeline(yaml: &str) -> Pipeline {
        let config = Config::from_yaml(yaml, "policy.yaml").unwrap();
        Pipeline::new(&config, Arc::new(FixedClock(0))).unwrap()
    }

    fn marked(skip: Option<&str>) -> Value {
        let mut pod = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "ns", "labels": {super::MARK: "x"}},
            "spec": {"containers": [{"name": "c", "image": "i"}]}});
        if let Some(skip) = skip {
            pod["metadata"]["annotations"] = json!({crate::annotations::SKIP: skip});
        }
        pod
    }

    /// `/mutate`'s path: a view built with the pipeline's merged reads.
    fn admit_view(pipeline: &Pipeline, pod: &Value) -> crate::pipeline::Outcome {
        let review = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": "u", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                        "operation": "CREATE", "namespace": "ns", "object": pod}});
        let body = serde_json::to_vec(&review).unwrap();
        let request = review::parse(&body, pipeline.reads()).unwrap();
        review::admit(pipeline, request).outcome
    }

    #[test]
    fn the_policy_file_takes_its_section_and_checks_it() {
        let p = pipeline("probe: {stamp: hello}\n");
        let out = p.run(&Context::new(Kind::Pod, Operation::Create), marked(None));
        assert_eq!(out.object["metadata"]["annotations"][super::SEEN], "hello");
        let e = Config::from_yaml("probe: {stamp: ''}\n", "policy.yaml")
            .map(|c| Pipeline::new(&c, Arc::new(FixedClock(0))))
            .unwrap()
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("probe.stamp") && e.contains("must not be empty"),
            "{e}"
        );
        let e = Config::from_yaml("probe: {stamps: x}\n", "policy.yaml")
            .map(|c| Pipeline::new(&c, Arc::new(FixedClock(0))))
            .unwrap()
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("unknown field `stamps`"), "{e}");
        // Disabled, it does not run.
        let p = pipeline("probe: {enabled: false}\n");
        let out = p.run(&Context::new(Kind::Pod, Operation::Create), marked(None));
        assert!(!out.policies.contains(&"probe"), "{:?}", out.policies);
    }

    #[test]
    fn the_view_holds_what_it_reads_and_the_patch_is_the_whole_object_s() {
        let p = pipeline("");
        let pod = marked(None);
        let view = admit_view(&p, &pod);
        let whole = p.run(
            &Context::new(Kind::Pod, Operation::Create).in_namespace(Some("ns")),
            pod,
        );
        assert!(view.policies.contains(&"probe"), "{:?}", view.warnings);
        assert_eq!(view.patch, whole.patch);
        assert_eq!(view.warnings, whole.warnings);
    }

    #[test]
    fn a_report_only_probe_never_patches_and_is_reported() {
        let p = pipeline("probe: {enforcement: report}\n");
        for out in [
            admit_view(&p, &marked(None)),
            p.run(&Context::new(Kind::Pod, Operation::Create), marked(None)),
        ] {
            assert!(!out.policies.contains(&"probe"));
            assert!(out.object["metadata"]["annotations"]
                .get(super::SEEN)
                .is_none());
            assert_eq!(out.reported.policies, ["probe"]);
            let ops = serde_json::to_string(&out.patch).unwrap();
            assert!(!ops.contains("probe.calmplane.dev"), "{ops}");
        }
    }

    #[test]
    fn the_skip_annotation_knows_its_name() {
        let p = pipeline("");
        let out = p.run(
            &Context::new(Kind::Pod, Operation::Create),
            marked(Some("probe")),
        );
        assert!(!out.policies.contains(&"probe"));
        assert!(
            out.warnings.iter().all(|w| !w.contains("unknown")),
            "{:?}",
            out.warnings
        );
        assert!(!out.policies.is_empty(), "the other policies still run");
    }

    #[test]
    fn audit_counts_it_and_gives_it_a_column() {
        let list = json!({"apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "v1", "kind": "Namespace",
             "metadata": {"name": "ns", "labels": {"calmplane.dev/enabled": "true"}}},
            marked(None),
        ]});
        let inventory = Inventory::from_bytes(list.to_string().as_bytes()).unwrap();
        let report = audit::audit(inventory, &Config::default(), &Options::default()).unwrap();
        assert_eq!(report.changes.get("probe"), 1);
        let json: Value = serde_json::from_str(&audit::render::json(&report).unwrap()).unwrap();
        assert_eq!(json["changes"]["probe"], 1);
        let table = audit::render::table(&report);
        assert!(table.lines().next().unwrap().contains("PROBE"), "{table}");
        assert!(
            table.contains("pods stamped by the test-only probe"),
            "{table}"
        );
        // A report-only probe is counted the same: audit forecasts.
        let config = Config::from_yaml("probe: {enforcement: report}\n", "p").unwrap();
        let inventory = Inventory::from_bytes(list.to_string().as_bytes()).unwrap();
        let report = audit::audit(inventory, &config, &Options::default()).unwrap();
        assert_eq!(report.changes.get("probe"), 1);
    }
}
