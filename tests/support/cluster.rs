//! A cluster dump, as `kubectl get pods,deployments,replicasets,leases,namespaces,poddisruptionbudgets -A -o json`
//! would print it, built from real manifests in tests/fixtures/upstream.
//! Shared by the audit tests and (through `#[path]`) the audit bench.
#![allow(dead_code)]

use serde_json::{json, Value};
use std::path::Path;

/// A fixed "now" for every dump: 2027-01-15T08:00:00Z.
pub const NOW: i64 = 1_800_000_000;

/// A fixture's objects of `kind`.
pub fn fixture(name: &str, kind: &str) -> Vec<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/upstream")
        .join(name);
    let body = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    calmplane::preview::parse_documents(&body)
        .expect("fixture parses")
        .into_iter()
        .filter(|d| d["kind"] == kind)
        .collect()
}

/// RFC 3339 for `NOW - seconds_ago`.
pub fn ago(seconds_ago: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(NOW - seconds_ago)
        .expect("time")
        .format(&time::format_description::well_known::Rfc3339)
        .expect("format")
}

/// The items of the List being built.
#[derive(Default)]
pub struct Dump {
    pub items: Vec<Value>,
}

impl Dump {
    pub fn list(&self) -> Value {
        json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""}, "items": self.items})
    }

    pub fn bytes(&self) -> Vec<u8> {
        serde_json::to_vec(&self.list()).expect("serialise")
    }

    /// A Namespace with `calmplane.dev/enabled: <opt_in>` when given.
    pub fn namespace(&mut self, name: &str, opt_in: Option<&str>) {
        let mut labels = json!({"kubernetes.io/metadata.name": name});
        if let Some(v) = opt_in {
            labels["calmplane.dev/enabled"] = json!(v);
        }
        self.items.push(json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": labels, "creationTimestamp": ago(86_400)},
            "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"},
        }));
    }

    /// `deployment` in `namespace`, with one ReplicaSet per entry of
    /// `replicasets` (`(seconds ago created, revision)`, oldest first) and
    /// `pods` pods from its template owned by the last ReplicaSet. Returns the
    /// pods' names.
    pub fn deployment(
        &mut self,
        namespace: &str,
        deployment: &Value,
        replicasets: &[(i64, u64)],
        pods: usize,
    ) -> Vec<String> {
        let mut d = deployment.clone();
        let name = d["metadata"]["name"].as_str().expect("name").to_string();
        let uid = format!("uid-{namespace}-{name}");
        d["metadata"]["namespace"] = json!(namespace);
        d["metadata"]["uid"] = json!(uid);
        let revision = replicasets.iter().map(|r| r.1).max().unwrap_or(1);
        d["metadata"]["annotations"]["deployment.kubernetes.io/revision"] =
            json!(revision.to_string());
        let mut rs_name = String::new();
        for (i, (seconds_ago, rev)) in replicasets.iter().enumerate() {
            rs_name = format!("{name}-{:x}", 0x5f00 + i);
            let mut rs = json!({
                "apiVersion": "apps/v1", "kind": "ReplicaSet",
                "metadata": {
                    "name": rs_name, "namespace": namespace,
                    "creationTimestamp": ago(*seconds_ago),
                    "annotations": {"deployment.kubernetes.io/revision": rev.to_string()},
                    "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": name,
                                         "uid": uid, "controller": true, "blockOwnerDeletion": true}],
                },
                "spec": {"selector": d["spec"]["selector"].clone(), "template": d["spec"]["template"].clone()},
            });
            rs["spec"]["replicas"] = json!(if i + 1 == replicasets.len() { pods } else { 0 });
            self.items.push(rs);
        }
        let template_pod = calmplane::preview::pod_from_template(&d).expect("pod template");
        let mut names = Vec::new();
        for p in 0..pods {
            let mut pod = template_pod.clone();
            let pod_name = format!("{rs_name}-p{p}");
            pod["metadata"]["name"] = json!(pod_name);
            pod["metadata"]["namespace"] = json!(namespace);
            pod["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                "name": rs_name, "uid": format!("uid-{rs_name}"), "controller": true}]);
            self.items.push(pod);
            names.push(pod_name);
        }
        self.items.push(d);
        names
    }

    /// A standalone pod in `namespace`.
    pub fn pod(&mut self, namespace: &str, pod: &Value) {
        let mut pod = pod.clone();
        pod["metadata"]["namespace"] = json!(namespace);
        self.items.push(pod);
    }

    /// A Lease; `holder` None leaves it released.
    pub fn lease(&mut self, namespace: &str, name: &str, duration: i64, holder: Option<&str>) {
        let mut spec =
            json!({"leaseDurationSeconds": duration, "renewTime": "2027-01-15T07:59:58.000000Z"});
        if let Some(h) = holder {
            spec["holderIdentity"] = json!(h);
        }
        self.items.push(json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        }));
    }

    /// A PodDisruptionBudget with this selector.
    pub fn pdb(&mut self, namespace: &str, name: &str, selector: Value) {
        self.items.push(json!({
            "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"maxUnavailable": 1, "selector": selector},
        }));
    }

    /// Set an annotation on the last item of `kind` named `name`.
    pub fn annotate(&mut self, kind: &str, name: &str, key: &str, value: &str) {
        let item = self
            .items
            .iter_mut()
            .rev()
            .find(|i| i["kind"] == kind && i["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name}"));
        item["metadata"]["annotations"][key] = json!(value);
    }
}

/// A dump of `pods` pods and `deployments` Deployments spread over
/// `namespaces` opted-in namespaces, from the microservices-demo manifests:
/// every fifth pod has a lease selector and a Lease, every tenth Deployment is
/// hot. For the bench.
pub fn generated(namespaces: usize, deployments: usize, pods: usize) -> Dump {
    let templates = fixture(
        "GoogleCloudPlatform__microservices-demo__release__kubernetes-manifests.yaml",
        "Deployment",
    );
    let mut dump = Dump::default();
    for n in 0..namespaces {
        dump.namespace(
            &format!("ns-{n}"),
            Some(if n % 2 == 0 { "true" } else { "report" }),
        );
    }
    let per_deployment = pods / deployments;
    let mut pod_count = 0;
    for i in 0..deployments {
        let ns = format!("ns-{}", i % namespaces);
        let mut d = templates[i % templates.len()].clone();
        d["metadata"]["name"] = json!(format!(
            "{}-{i}",
            d["metadata"]["name"].as_str().unwrap_or("d")
        ));
        let history: &[(i64, u64)] = if i % 10 == 0 {
            &[(7200, 1), (1800, 2), (600, 3)]
        } else {
            &[(7200, 1)]
        };
        let names = dump.deployment(&ns, &d, history, per_deployment);
        for name in names {
            if pod_count % 5 == 0 {
                dump.annotate(
                    "Pod",
                    &name,
                    "calmplane.dev/lease-selector",
                    &format!("metadata.name={name}"),
                );
                dump.lease(&ns, &name, 10, Some(&name));
            }
            pod_count += 1;
        }
        if i % 3 == 0 {
            let app = d["spec"]["template"]["metadata"]["labels"].clone();
            dump.pdb(&ns, &format!("pdb-{i}"), json!({"matchLabels": app}));
        }
    }
    dump
}
