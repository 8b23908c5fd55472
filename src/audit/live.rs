//! `--live` and `--sample`: the same lists, read from the cluster.
//!
//! Read-only. The ClusterRole this needs is exactly:
//!
//! ```yaml
//! rules:
//!   - apiGroups: [""]
//!     resources: [pods, namespaces]
//!     verbs: [get, list]
//!   - apiGroups: [apps]
//!     resources: [deployments, replicasets]
//!     verbs: [get, list]
//!   - apiGroups: [coordination.k8s.io]
//!     resources: [leases]
//!     verbs: [get, list]          # --sample also needs watch on leases
//!   - apiGroups: [policy]
//!     resources: [poddisruptionbudgets]
//!     verbs: [get, list]
//! ```
//!
//! Objects are listed untyped (`DynamicObject`), so the pipeline sees every
//! field the apiserver returned, as the webhook would.

use super::input::Inventory;
use super::leases::{LeaseKey, Sample};
use super::AuditError;
use futures::StreamExt as _;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams};
use kube::runtime::watcher;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The lists `kubectl get pods,deployments,replicasets,leases,namespaces,poddisruptionbudgets -A` reads.
pub const RESOURCES: [(&str, &str, &str, &str); 6] = [
    ("", "v1", "Namespace", "namespaces"),
    ("", "v1", "Pod", "pods"),
    ("apps", "v1", "Deployment", "deployments"),
    ("apps", "v1", "ReplicaSet", "replicasets"),
    ("coordination.k8s.io", "v1", "Lease", "leases"),
    (
        "policy",
        "v1",
        "PodDisruptionBudget",
        "poddisruptionbudgets",
    ),
];

/// Page size: large lists are read in chunks, as kubectl does.
const PAGE: u32 = 500;

fn kube_error(context: impl Into<String>) -> impl FnOnce(kube::Error) -> AuditError {
    let context = context.into();
    move |source| AuditError::Kube { context, source }
}

/// Read the lists (and sample Lease writes) from the current context.
pub fn collect(sample: Option<Duration>) -> Result<(Inventory, Option<Sample>), AuditError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| AuditError::Other(format!("starting the async runtime: {e}")))?;
    runtime.block_on(async {
        let client = kube::Client::try_default().await.map_err(kube_error(
            "connecting to the cluster (kubeconfig or in-cluster service account)",
        ))?;
        let items = list_all(&client).await?;
        let inventory = Inventory::from_documents(vec![json!({
            "apiVersion": "v1", "kind": "List", "items": items,
        })])?;
        let sample = match sample {
            Some(duration) => Some(sample_leases(client, duration).await?),
            None => None,
        };
        Ok((inventory, sample))
    })
}

/// Every object of [`RESOURCES`], as the items of a v1 List.
pub async fn list_all(client: &kube::Client) -> Result<Vec<Value>, AuditError> {
    let mut items = Vec::new();
    for (group, version, kind, plural) in RESOURCES {
        let gvk = GroupVersionKind::gvk(group, version, kind);
        let resource = ApiResource::from_gvk_with_plural(&gvk, plural);
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
        let mut params = ListParams::default().limit(PAGE);
        loop {
            let page = api
                .list(&params)
                .await
                .map_err(kube_error(format!("listing {plural}")))?;
            let next = page.metadata.continue_.clone().filter(|c| !c.is_empty());
            for object in page.items {
                let mut value = serde_json::to_value(&object)
                    .map_err(|e| AuditError::Other(format!("{plural}: {e}")))?;
                // List items come without their type; the List needs it.
                if let Some(map) = value.as_object_mut() {
                    map.insert("apiVersion".into(), json!(resource.api_version));
                    map.insert("kind".into(), json!(kind));
                }
                items.push(value);
            }
            match next {
                Some(token) => params = params.continue_token(&token),
                None => break,
            }
        }
    }
    Ok(items)
}

/// The fields whose change is a Lease write worth counting.
#[derive(PartialEq)]
struct Written {
    renew_time: Option<String>,
    holder: Option<String>,
    transitions: Option<i32>,
}

fn written(lease: &Lease) -> Written {
    let spec = lease.spec.as_ref();
    Written {
        renew_time: spec
            .and_then(|s| s.renew_time.as_ref())
            .and_then(|t| serde_json::to_string(t).ok()),
        holder: spec.and_then(|s| s.holder_identity.clone()),
        transitions: spec.and_then(|s| s.lease_transitions),
    }
}

fn lease_key(lease: &Lease) -> LeaseKey {
    (
        lease.metadata.namespace.clone().unwrap_or_default(),
        lease.metadata.name.clone().unwrap_or_default(),
    )
}

/// Watch every Lease for `duration` and count writes: a create, or a change
/// of renewTime, holderIdentity or leaseTransitions. Objects listed when the
/// watch (re)starts are not writes unless they changed since last seen.
pub async fn sample_leases(client: kube::Client, duration: Duration) -> Result<Sample, AuditError> {
    let api: Api<Lease> = Api::all(client);
    let mut stream = watcher(api, watcher::Config::default()).boxed();
    let mut last: HashMap<LeaseKey, Written> = HashMap::new();
    let mut writes: HashMap<LeaseKey, u64> = HashMap::new();
    let mut listed = false;
    let start = Instant::now();
    let deadline = tokio::time::Instant::now() + duration;
    loop {
        let event = tokio::select! {
            _ = tokio::time::sleep_until(deadline) => break,
            event = stream.next() => event,
        };
        let event = match event {
            Some(Ok(event)) => event,
            Some(Err(e)) => {
                // The watcher retries on its own; a first failure is fatal
                // (no permission, no API), later ones are a reconnect.
                if !listed {
                    return Err(AuditError::Other(format!("watching leases: {e}")));
                }
                continue;
            }
            None => break,
        };
        match event {
            watcher::Event::InitApply(lease) => {
                let key = lease_key(&lease);
                let now = written(&lease);
                if listed && last.get(&key).is_some_and(|w| *w != now) {
                    *writes.entry(key.clone()).or_default() += 1;
                }
                last.insert(key, now);
            }
            watcher::Event::InitDone => listed = true,
            watcher::Event::Apply(lease) => {
                let key = lease_key(&lease);
                let now = written(&lease);
                if last.get(&key) != Some(&now) {
                    *writes.entry(key.clone()).or_default() += 1;
                }
                last.insert(key, now);
            }
            watcher::Event::Delete(lease) => {
                last.remove(&lease_key(&lease));
            }
            watcher::Event::Init => {}
        }
    }
    Ok(Sample {
        seconds: start.elapsed().as_secs_f64(),
        writes,
    })
}
