//! The two engines calmplane's policies run on: the webhook, and the
//! MutatingAdmissionPolicies of `calmplane export mutating-admission-policy`,
//! which the apiserver runs itself in namespaces labelled
//! `calmplane.dev/enabled: apiserver`.
//!
//! - c14 (same result): every corpus object and every special path the CEL
//!   has to get right, created once through the webhook alone and once
//!   through the policies alone, is stored identically.
//! - c14 (idempotent): with both engines on, the policies run first and the
//!   webhook finds nothing left to do for them; the stored objects are the
//!   webhook's.
//! - c14 (follow config): `calmplane register --admission-policies --config`
//!   changes the policies the apiserver runs, and deletes a disabled one.
//! - c16: what each engine costs the apiserver per admission (reported, not
//!   asserted).

use crate::corpus::{corpus_objects, fixture, objects, CORPUS};
use crate::deployments::deployment_object;
use crate::latency::LATENCY_PODS;
use crate::{
    annotation, fail_open, is_mutated, pod_object, wait_for_probe, Env, IMAGE, PODS_WEBHOOK,
};
use anyhow::{bail, ensure, Context as _, Result};
use calmplane::annotations::{enabled, ENABLED, LEASE_SELECTOR, ROLLOUTS, SKIP};
use calmplane_e2e::{run, run_with_input};
use calmplane_testkit::prom;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use kube::Api;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The policies calmplane exports with the default policy file.
const EXPORTED: [&str; 3] = ["dns", "prestop", "rollout"];
/// What the webhook side of c14's first case turns off, so that it runs
/// exactly the policies that are exported.
const NOT_EXPORTED: &str = "lease,rollout-history";
/// The kinds c14 compares.
const WORKLOADS: &[&str] = &[
    "Pod",
    "Deployment",
    "ReplicaSet",
    "StatefulSet",
    "DaemonSet",
    "Job",
    "CronJob",
];
/// Where the cases wait for the apiserver to run the exported policies.
const PROBE_NAMESPACE: &str = "e2e-map-probe";

// --- installing the policies --------------------------------------------------

/// The apiserver's count of successful runs of the exported policy `policy`.
fn policy_checks(metrics: &str, policy: &str) -> f64 {
    prom::sum(
        metrics,
        "apiserver_mutating_admission_policy_check_total",
        &[
            ("policy", &format!("calmplane-{policy}")),
            ("error_type", "no_error"),
        ],
    )
}

/// `calmplane register --admission-policies` (with `--config config` when
/// given): the webhook configuration and the exported policies, server-side
/// applied. What it said on stderr.
async fn register_policies(env: &Env, config: Option<&Path>) -> Result<String> {
    let ca = env.calmplane.lock().await.ca_bundle();
    let mut extra: Vec<&OsStr> = vec!["--admission-policies".as_ref()];
    if let Some(config) = config {
        extra.push("--config".as_ref());
        extra.push(config.as_os_str());
    }
    env.register(&ca, &extra).await
}

/// Register the default export and return once the apiserver runs every
/// exported policy: a dry-run Pod and Deployment in an `apiserver`
/// namespace are checked by each (`apiserver_mutating_admission_policy_check_total`).
/// The apiserver loads policies and bindings asynchronously, as it loads
/// webhook configurations.
async fn install_default_policies(env: &Env) -> Result<()> {
    register_policies(env, None).await?;
    let ns = env
        .namespace(PROBE_NAMESPACE, &[(ENABLED, enabled::APISERVER)])
        .await?;
    let pods: Api<Pod> = Api::namespaced(env.client(), &ns);
    let deployments: Api<Deployment> = Api::namespaced(env.client(), &ns);
    let dry_run = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let rolling = json!({"type": "RollingUpdate"});
    let start = Instant::now();
    loop {
        let before = env.metrics().await?;
        pods.create(&dry_run, &pod_object("probe", &[])).await?;
        deployments
            .create(&dry_run, &deployment_object("probe", rolling.clone(), 0)?)
            .await?;
        let after = env.metrics().await?;
        let missing: Vec<&str> = EXPORTED
            .into_iter()
            .filter(|p| policy_checks(&after, p) <= policy_checks(&before, p))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(60) {
            bail!("after 60 s the apiserver still does not run the exported {missing:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// An exported object by kind and name, if it exists.
async fn exported_object(env: &Env, kind: &str, name: &str) -> Result<Option<DynamicObject>> {
    let gvk = GroupVersionKind::gvk("admissionregistration.k8s.io", "v1", kind);
    let api: Api<DynamicObject> = Api::all_with(env.client(), &ApiResource::from_gvk(&gvk));
    Ok(api.get_opt(name).await?)
}

// --- the objects ------------------------------------------------------------------

/// Pods and Deployments for every path of the exported CEL that the corpus
/// may not take: options a Pod brings, hooks it has, grace periods on both
/// sides of sleep plus drain, Windows both ways, a skip list and `all`, a
/// mirror Pod, every form of a zero maxSurge and maxUnavailable, Recreate.
/// `updated` is updated later.
fn special_objects() -> Value {
    let pod = |name: &str, spec: Value| {
        let mut spec = spec;
        if spec.get("containers").is_none() {
            spec["containers"] = json!([{"name": "app", "image": IMAGE}]);
        }
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "annotations": {LEASE_SELECTOR: format!("metadata.name={name}")}},
               "spec": spec})
    };
    let hook = json!({"preStop": {"exec": {"command": ["sh", "-c", "sleep 1"]}}});
    let deployment = |name: &str, strategy: Option<Value>| {
        let mut d = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}},
                                  "spec": {"containers": [{"name": "app", "image": IMAGE}]}}}});
        if let Some(strategy) = strategy {
            d["spec"]["strategy"] = strategy;
        }
        d
    };
    let rolling = |surge: Value, unavailable: Value| {
        Some(json!({"type": "RollingUpdate",
                    "rollingUpdate": {"maxSurge": surge, "maxUnavailable": unavailable}}))
    };
    json!({"apiVersion": "v1", "kind": "List", "items": [
        pod("plain", json!({"terminationGracePeriodSeconds": 2})),
        pod("own-ndots", json!({"dnsConfig": {"options": [
            {"name": "ndots", "value": "5"}, {"name": "timeout", "value": "2"}]}})),
        pod("own-reopen", json!({"dnsConfig": {"options": [{"name": "single-request-reopen"}]}})),
        pod("dns-without-options", json!({"dnsConfig": {"searches": ["example.com"]}})),
        pod("one-of-two-hooked", json!({"terminationGracePeriodSeconds": 3, "containers": [
            {"name": "hooked", "image": IMAGE, "lifecycle": hook},
            {"name": "bare", "image": IMAGE}]})),
        pod("post-start-only", json!({"containers": [{"name": "app", "image": IMAGE,
            "lifecycle": {"postStart": {"exec": {"command": ["true"]}}}}]})),
        pod("all-hooked", json!({"terminationGracePeriodSeconds": 1, "containers": [
            {"name": "app", "image": IMAGE, "lifecycle": hook}]})),
        pod("long-grace", json!({"terminationGracePeriodSeconds": 60})),
        pod("native-sidecar", json!({"terminationGracePeriodSeconds": 2,
            "initContainers": [{"name": "sidecar", "image": IMAGE, "restartPolicy": "Always"}]})),
        pod("windows", json!({"os": {"name": "windows"}})),
        pod("windows-by-selector", json!({"nodeSelector": {"kubernetes.io/os": "windows"}})),
        with_annotation(pod("skips-dns", json!({"terminationGracePeriodSeconds": 2})), SKIP, "dns"),
        with_annotation(pod("skips-all", json!({"terminationGracePeriodSeconds": 2})), SKIP, "all"),
        with_annotation(
            pod("mirror", json!({"terminationGracePeriodSeconds": 2, "nodeName": "e2e-node"})),
            "kubernetes.io/config.mirror",
            "e2e",
        ),
        deployment("defaulted", None),
        deployment("surge-zero", rolling(json!(0), json!(1))),
        deployment("surge-zero-percent", rolling(json!("0%"), json!("25%"))),
        deployment("unavailable-zero", rolling(json!(2), json!(0))),
        deployment("unavailable-zero-percent", rolling(json!("25%"), json!("0%"))),
        deployment("both-zero", rolling(json!(0), json!("0%"))),
        deployment("recreate", Some(json!({"type": "Recreate"}))),
        deployment("updated", rolling(json!(1), json!(1))),
    ]})
}

/// `object` with annotation `key: value`.
fn with_annotation(mut object: Value, key: &str, value: &str) -> Value {
    object["metadata"]["annotations"][key] = json!(value);
    object
}

/// The UPDATE of `updated`: a new template and a maxUnavailable that the
/// rollout policy sets back to 0.
fn special_update() -> Value {
    json!({"spec": {
        "strategy": {"rollingUpdate": {"maxUnavailable": "50%"}},
        "template": {"spec": {"containers": [
            {"name": "app", "env": [{"name": "VERSION", "value": "2"}]}]}}}})
}

/// Add `skip` to the `calmplane.dev/skip` list of every object of `list`,
/// and of its pod template (a CronJob's too).
fn with_skip(list: &mut Value, skip: &str) {
    let add = |annotations: &mut Value| {
        let list = match annotations[SKIP].as_str() {
            Some(own) => format!("{own},{skip}"),
            None => skip.to_string(),
        };
        annotations[SKIP] = json!(list);
    };
    for item in list["items"].as_array_mut().into_iter().flatten() {
        add(&mut item["metadata"]["annotations"]);
        let template = if item["spec"]["template"].is_object() {
            Some(&mut item["spec"]["template"])
        } else if item["spec"]["jobTemplate"]["spec"]["template"].is_object() {
            Some(&mut item["spec"]["jobTemplate"]["spec"]["template"])
        } else {
            None
        };
        if let Some(template) = template {
            add(&mut template["metadata"]["annotations"]);
        }
    }
}

/// A stored object, minus what differs between two creations of the same
/// object in two namespaces: the server's bookkeeping in `metadata`, the
/// status, the Deployment controller's revision, the random suffix of the
/// service account token volume, the object's uid and the namespace's name
/// anywhere (a Job's selector holds the one, lease selectors the other) and
/// the times in calmplane's rollout history (how many it holds is kept).
fn normalized(object: &Value, ns: &str) -> Result<Value> {
    let mut o = object.clone();
    // A Job's generated selector and template labels hold its uid.
    let uid = o["metadata"]["uid"].as_str().map(str::to_string);
    if let Some(meta) = o["metadata"].as_object_mut() {
        for field in [
            "uid",
            "resourceVersion",
            "creationTimestamp",
            "managedFields",
            "namespace",
            "generation",
            "selfLink",
        ] {
            meta.remove(field);
        }
        if let Some(annotations) = meta.get_mut("annotations").and_then(Value::as_object_mut) {
            annotations.remove("deployment.kubernetes.io/revision");
            if let Some(history) = annotations.get_mut(ROLLOUTS) {
                let count = history.as_str().map_or(0, |h| h.split(',').count());
                *history = json!(format!("{count} rollout(s)"));
            }
        }
    }
    if let Some(o) = o.as_object_mut() {
        o.remove("status");
    }
    let text = serde_json::to_string(&o)?;
    let token_volume = token_volume(&text);
    let mut text = text.replace(&format!("\"{ns}\""), "\"NAMESPACE\"");
    if let Some(uid) = uid {
        text = text.replace(&uid, "UID");
    }
    text = text.replace(&format!("={ns}"), "=NAMESPACE");
    if let Some(volume) = token_volume {
        text = text.replace(&volume, "kube-api-access-XXXXX");
    }
    Ok(serde_json::from_str(&text)?)
}

/// The name of the service account token volume in a Pod's JSON text
/// (`kube-api-access-` and five random characters), if it has one.
fn token_volume(text: &str) -> Option<String> {
    let at = text.find("\"kube-api-access-")?;
    let name = &text[at + 1..];
    let end = name.find('"')?;
    Some(name[..end].to_string())
}

/// Where two values differ, as JSON pointers with both sides.
fn differences(a: &Value, b: &Value, path: &str, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for key in x.keys().chain(y.keys().filter(|k| !x.contains_key(*k))) {
                let path = format!("{path}/{}", key.replace('~', "~0").replace('/', "~1"));
                match (x.get(key), y.get(key)) {
                    (Some(x), Some(y)) => differences(x, y, &path, out),
                    (x, y) => out.push(format!("{path}: {x:?} | {y:?}")),
                }
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (x, y)) in x.iter().zip(y).enumerate() {
                differences(x, y, &format!("{path}/{i}"), out);
            }
        }
        _ if a != b => out.push(format!("{path}: {a} | {b}")),
        _ => {}
    }
}

/// Stored objects by `<set>/<kind>/<name>`, normalized.
type Stored = BTreeMap<String, Value>;

/// `kubectl create -o json` of a List; the stored objects.
fn kubectl_create(env: &Env, list: &Value, what: &str) -> Result<Vec<Value>> {
    let out = run_with_input(
        env.kubectl().args(["create", "-o", "json", "-f", "-"]),
        &serde_json::to_vec(list)?,
    )
    .with_context(|| format!("kubectl create {what}"))?;
    objects(&out)
}

/// Keep the Pods and workloads of `created` (calmplane changes Pods and
/// Deployments, and must leave the others alone), normalized, under
/// `<set>/<kind>/<name>`.
fn keep(stored: &mut Stored, set: &str, ns: &str, created: &[Value]) -> Result<()> {
    for o in created {
        let kind = o["kind"].as_str().unwrap_or_default();
        if WORKLOADS.contains(&kind) {
            let name = o["metadata"]["name"].as_str().unwrap_or_default();
            stored.insert(format!("{set}/{kind}/{name}"), normalized(o, ns)?);
        }
    }
    Ok(())
}

/// Create the special objects in `<prefix>-sp` and update `updated`, and
/// every corpus file in a namespace `<prefix>-NN` of its own (files reuse
/// names), all labelled `calmplane.dev/enabled: label`; with `skip`, every
/// object carries `calmplane.dev/skip: skip`. What was stored.
async fn create_everything(
    env: &Env,
    prefix: &str,
    label: &str,
    skip: Option<&str>,
) -> Result<Stored> {
    let mut stored = Stored::new();
    let ns = env
        .namespace(&format!("{prefix}-sp"), &[(ENABLED, label)])
        .await?;
    let mut list = special_objects();
    if let Some(skip) = skip {
        with_skip(&mut list, skip);
    }
    for o in &mut list["items"].as_array_mut().context("items")?.iter_mut() {
        o["metadata"]["namespace"] = json!(ns);
    }
    let created = kubectl_create(env, &list, "the special objects")?;
    keep(&mut stored, "special", &ns, &created)?;
    let api: Api<Deployment> = Api::namespaced(env.client(), &ns);
    let updated = api
        .patch(
            "updated",
            &PatchParams::default(),
            &Patch::Strategic(&special_update()),
        )
        .await?;
    stored.insert(
        "special/Deployment/updated (after its UPDATE)".into(),
        normalized(&serde_json::to_value(&updated)?, &ns)?,
    );
    let cluster_scoped: Vec<String> =
        run(env
            .kubectl()
            .args(["api-resources", "--namespaced=false", "--no-headers"]))?
        .lines()
        .filter_map(|l| l.split_whitespace().last().map(str::to_string))
        .collect();
    for (i, name) in CORPUS.iter().enumerate() {
        let ns = env
            .namespace(&format!("{prefix}-{i:02}"), &[(ENABLED, label)])
            .await?;
        let mut list = corpus_objects(env, &fixture(name), &ns)?;
        // Each file is created in several namespaces, and cluster-scoped
        // objects (RBAC, an IngressClass, a webhook configuration) cannot be
        // created twice: they are left out. Admitting a Pod or a Deployment
        // needs none of them.
        if let Some(items) = list["items"].as_array_mut() {
            items.retain(|o| !cluster_scoped.iter().any(|k| o["kind"] == k.as_str()));
        }
        if let Some(skip) = skip {
            with_skip(&mut list, skip);
        }
        let created = kubectl_create(env, &list, name)?;
        keep(&mut stored, &format!("{i:02}"), &ns, &created)?;
    }
    Ok(stored)
}

/// Both sets hold the same objects, field by field.
fn compare(left: (&str, &Stored), right: (&str, &Stored)) -> Result<()> {
    let keys = |s: &Stored| s.keys().cloned().collect::<Vec<_>>();
    ensure!(
        keys(left.1) == keys(right.1),
        "{} stored {:?}\n{} stored {:?}",
        left.0,
        keys(left.1),
        right.0,
        keys(right.1)
    );
    let mut report = Vec::new();
    for (key, a) in left.1 {
        let mut found = Vec::new();
        differences(a, &right.1[key], "", &mut found);
        if !found.is_empty() {
            report.push(format!("{key}:\n  {}", found.join("\n  ")));
        }
    }
    ensure!(
        report.is_empty(),
        "{} of {} objects differ ({} | {}):\n{}",
        report.len(),
        left.1.len(),
        left.0,
        right.0,
        report.join("\n")
    );
    Ok(())
}

/// The special Pod `plain` as stored in `set`.
fn plain(set: &Stored) -> Result<&Value> {
    set.get("special/Pod/plain")
        .context("no special/Pod/plain stored")
}

// --- c14 ----------------------------------------------------------------------------

/// The webhook alone (namespaces labelled `"true"`, which the policies'
/// bindings do not select) and the exported policies alone (namespaces
/// labelled `apiserver`, calmplane's webhook configuration deleted) store
/// the same objects: every Pod and workload of the corpus and of
/// [`special_objects`], and an UPDATE. Every object turns off
/// `lease,rollout-history`, so that the webhook runs exactly what is
/// exported.
pub(crate) async fn c14_engines_same_result(env: &Env) -> Result<()> {
    install_default_policies(env).await?;
    let webhook = create_everything(env, "c14-w", enabled::WEBHOOK, Some(NOT_EXPORTED)).await?;

    env.unregister_calmplane().await?;
    let policies: Result<Stored> = async {
        // The policies run, the webhook does not: dns, and the lease
        // selector as sent.
        let ns = env
            .namespace("c14-m-probe", &[(ENABLED, enabled::APISERVER)])
            .await?;
        wait_for_probe(env.client(), &ns, |pod| {
            let v = serde_json::to_value(pod).unwrap_or_default();
            is_mutated(&v) && annotation(&v, LEASE_SELECTOR) == Some("metadata.name=probe")
        })
        .await
        .context("the policies never ran without the webhook")?;
        let requests = |m: &str| prom::sum(m, "calmplane_admission_requests_total", &[]);
        let before = requests(&env.calmplane_metrics().await?);
        let stored =
            create_everything(env, "c14-m", enabled::APISERVER, Some(NOT_EXPORTED)).await?;
        let after = requests(&env.calmplane_metrics().await?);
        ensure!(
            after == before,
            "calmplane answered {} requests while it was not registered",
            after - before
        );
        Ok(stored)
    }
    .await;
    env.register_calmplane().await?;
    let policies = policies?;

    // Both did something: the comparison below is not of two untouched sets.
    let pod = plain(&webhook)?;
    ensure!(
        is_mutated(pod)
            && pod
                .pointer("/spec/containers/0/lifecycle/preStop")
                .is_some()
            && annotation(pod, LEASE_SELECTOR) == Some("metadata.name=plain"),
        "the webhook did not run exactly dns and prestop: {pod}"
    );
    compare(("webhook", &webhook), ("admission policies", &policies))?;
    eprintln!(
        "c14: {} Pods and workloads stored identically by both engines",
        webhook.len()
    );
    Ok(())
}

/// With the webhook registered and the policies installed, in namespaces
/// labelled `apiserver` the policies run first: calmplane counts no change
/// of theirs (`calmplane_policy_changes_total`), only its own (lease, and
/// rollout-history on the UPDATE), and the stored objects are the ones the
/// webhook alone stores.
pub(crate) async fn c14_engines_idempotent(env: &Env) -> Result<()> {
    install_default_policies(env).await?;
    // Both engines on in the probe namespace: dns, and the lease rewritten.
    wait_for_probe(env.client(), PROBE_NAMESPACE, |pod| {
        let v = serde_json::to_value(pod).unwrap_or_default();
        is_mutated(&v)
            && annotation(&v, LEASE_SELECTOR)
                == Some(&format!("metadata.namespace={PROBE_NAMESPACE}"))
    })
    .await
    .context("the webhook never ran in an apiserver namespace")?;
    env.quiesce().await?;
    let changes = |m: &str, policy: &str| {
        prom::sum(m, "calmplane_policy_changes_total", &[("policy", policy)])
    };
    let before = env.calmplane_metrics().await?;
    let both = create_everything(env, "c14i-b", enabled::APISERVER, None).await?;
    let after = env.calmplane_metrics().await?;
    let delta = |policy: &str| changes(&after, policy) - changes(&before, policy);
    let counted: Vec<String> = ["dns", "prestop", "rollout", "lease", "rollout-history"]
        .iter()
        .map(|p| format!("{p} {}", delta(p)))
        .collect();
    eprintln!("c14: calmplane_policy_changes_total with both engines on: {counted:?}");
    for policy in EXPORTED {
        ensure!(
            delta(policy) == 0.0,
            "the webhook still made {} {policy} changes after the admission policies ({counted:?})",
            delta(policy)
        );
    }
    ensure!(
        delta("lease") >= 1.0,
        "the webhook made no lease change ({counted:?})"
    );
    ensure!(
        delta("rollout-history") >= 1.0,
        "the webhook recorded no rollout ({counted:?})"
    );

    let webhook = create_everything(env, "c14i-w", enabled::WEBHOOK, None).await?;
    compare(("webhook", &webhook), ("both engines", &both))
}

/// A policy file with `ndots: 3`, `override: true`, `sleepSeconds: 7` and
/// `minDrainSeconds: 4`, registered with `calmplane register
/// --admission-policies --config`: the apiserver then stores ndots 3 (in
/// place of a Pod's own), a 7 s sleep and an 11 s grace period.
/// With `rollout: {enabled: false}`, register deletes the rollout policy and
/// its binding. The default export is registered again at the end.
pub(crate) async fn c14_engines_follow_config(env: &Env) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ns = env
        .namespace("c14c", &[(ENABLED, enabled::APISERVER)])
        .await?;
    let result: Result<()> = async {
        let file = dir.path().join("policy.yaml");
        std::fs::write(
            &file,
            "dns:\n  ndots: 3\n  override: true\nprestop:\n  sleepSeconds: 7\n  minDrainSeconds: 4\n",
        )?;
        // What `calmplane manifests --admission-policies` prints for this
        // file, the webhook configuration and the policies, is accepted as a
        // whole (a server-side dry run: the apiserver compiles the CEL).
        let manifests = {
            let calmplane = env.calmplane.lock().await;
            run(calmplane
                .command()
                .args(["manifests", "--admission-policies", "--config"])
                .arg(&file)
                .arg("--url")
                .arg(calmplane.url())
                .arg("--ca-bundle")
                .arg(calmplane.ca_bundle()))?
        };
        let accepted = run_with_input(
            env.kubectl()
                .args(["apply", "--dry-run=server", "-f", "-"]),
            manifests.as_bytes(),
        )
        .context("kubectl apply --dry-run=server of calmplane manifests --admission-policies")?;
        ensure!(
            accepted.lines().count() == 7,
            "want the webhook configuration and three policies with their bindings:\n{accepted}"
        );
        register_policies(env, Some(&file)).await?;
        wait_for_probe(env.client(), &ns, |pod| {
            let v = serde_json::to_value(pod).unwrap_or_default();
            v.pointer("/spec/dnsConfig/options/0/value") == Some(&json!("3"))
                && v.pointer("/spec/containers/0/lifecycle/preStop/sleep/seconds")
                    == Some(&json!(7))
        })
        .await
        .context("the apiserver never ran the policies of the new file")?;
        let stored = env.create_pod(&ns, &pod_object("configured", &[])).await?;
        let options = stored.pointer("/spec/dnsConfig/options");
        ensure!(
            options
                .and_then(Value::as_array)
                .is_some_and(|o| o.contains(&json!({"name": "ndots", "value": "3"}))),
            "dns options {options:?}"
        );
        let sleep = stored.pointer("/spec/containers/0/lifecycle/preStop/sleep/seconds");
        ensure!(sleep == Some(&json!(7)), "preStop sleep {sleep:?}");
        let grace = stored["spec"]["terminationGracePeriodSeconds"].as_i64();
        ensure!(grace >= Some(11), "grace period {grace:?}");
        // `override: true`: a Pod's own ndots is replaced in place (the
        // webhook, on its default file, would keep it).
        let mut own = serde_json::to_value(pod_object("own-ndots", &[]))?;
        own["spec"]["dnsConfig"] =
            json!({"options": [{"name": "timeout", "value": "2"}, {"name": "ndots", "value": "5"}]});
        let stored = env
            .create_pod(&ns, &serde_json::from_value(own)?)
            .await?;
        let options = &stored["spec"]["dnsConfig"]["options"];
        ensure!(
            options
                == &json!([{"name": "timeout", "value": "2"}, {"name": "ndots", "value": "3"},
                           {"name": "single-request-reopen"}]),
            "override: dns options {options}"
        );

        std::fs::write(
            &file,
            "dns:\n  ndots: 3\n  override: true\nprestop:\n  sleepSeconds: 7\n  minDrainSeconds: 4\nrollout:\n  enabled: false\n",
        )?;
        let said = register_policies(env, Some(&file)).await?;
        for kind in ["MutatingAdmissionPolicyBinding", "MutatingAdmissionPolicy"] {
            ensure!(
                said.contains(&format!("deleted {kind}/calmplane-rollout")),
                "register did not say it deleted {kind}/calmplane-rollout:\n{said}"
            );
            ensure!(
                exported_object(env, kind, "calmplane-rollout")
                    .await?
                    .is_none(),
                "{kind} calmplane-rollout is still there"
            );
            for kept in ["calmplane-dns", "calmplane-prestop"] {
                ensure!(
                    exported_object(env, kind, kept).await?.is_some(),
                    "{kind} {kept} was deleted too"
                );
            }
        }
        Ok(())
    }
    .await;
    install_default_policies(env).await?;
    wait_for_probe(env.client(), &ns, |pod| {
        let v = serde_json::to_value(pod).unwrap_or_default();
        v.pointer("/spec/dnsConfig/options/0/value") == Some(&json!("2"))
    })
    .await
    .context("the default export never took effect again")?;
    result
}

// --- c16 ----------------------------------------------------------------------------

/// One histogram between two readings of the apiserver's /metrics.
struct Observed {
    count: f64,
    /// Exact: from `_sum` and `_count`.
    mean: f64,
    /// Estimates within the bucket layout.
    p50: Option<f64>,
    p99: Option<f64>,
}

impl Observed {
    fn of(before: &str, after: &str, name: &str, labels: &[(&str, &str)]) -> Observed {
        let total = |text: &str, suffix: &str| prom::sum(text, &format!("{name}_{suffix}"), labels);
        let count = total(after, "count") - total(before, "count");
        let sum = total(after, "sum") - total(before, "sum");
        let delta = prom::delta(
            &prom::buckets(before, name, labels),
            &prom::buckets(after, name, labels),
        );
        Observed {
            count,
            mean: if count > 0.0 { sum / count } else { 0.0 },
            p50: prom::quantile(0.5, &delta),
            p99: prom::quantile(0.99, &delta),
        }
    }

    /// `p50 / p99 / mean` in ms, and how many.
    fn cell(&self) -> String {
        if self.count == 0.0 {
            return "–".into();
        }
        let ms = |v: Option<f64>| v.map_or("–".into(), |v| format!("{:.2}", v * 1e3));
        format!(
            "{} / {} / {:.3} (n={})",
            ms(self.p50),
            ms(self.p99),
            self.mean * 1e3,
            self.count
        )
    }
}

/// Create [`LATENCY_PODS`] Pods in `ns`, 4 at a time: the client's round
/// trips, and how many were stored with calmplane's DNS options.
async fn burst(env: &Env, ns: &str, prefix: &str) -> Result<(Vec<Duration>, usize)> {
    let api: Api<Pod> = Api::namespaced(env.client(), ns);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let api = api.clone();
        let next = next.clone();
        let prefix = prefix.to_string();
        workers.push(tokio::spawn(async move {
            let (mut times, mut mutated) = (Vec::new(), 0);
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if i >= LATENCY_PODS {
                    return anyhow::Ok((times, mutated));
                }
                let pod = pod_object(&format!("{prefix}{i}"), &[]);
                let t = Instant::now();
                let stored = api.create(&PostParams::default(), &pod).await?;
                times.push(t.elapsed());
                mutated += usize::from(is_mutated(&serde_json::to_value(stored)?));
            }
        }));
    }
    let (mut times, mut mutated) = (Vec::new(), 0);
    for w in workers {
        let (t, m) = w.await??;
        times.extend(t);
        mutated += m;
    }
    Ok((times, mutated))
}

/// The `q` quantile of exact durations, in ms.
fn exact_quantile(times: &mut [Duration], q: f64) -> f64 {
    times.sort();
    let rank = ((times.len() as f64 * q).ceil() as usize).clamp(1, times.len());
    times[rank - 1].as_secs_f64() * 1e3
}

/// One way of serving the same Pods, and what it cost.
struct Mode {
    name: &'static str,
    label: Option<&'static str>,
    /// Whether calmplane's webhook configuration is registered.
    webhook: bool,
    times: Vec<Duration>,
    before: String,
    after: String,
}

/// The same 1,000 Pods four ways: no engine (an unlabelled namespace), the
/// webhook alone (`"true"`), the exported policies alone (`apiserver`, the
/// webhook configuration deleted), both (`apiserver`). Reported, not
/// asserted: the apiserver's admit step, its MutatingAdmissionPolicy and
/// MutatingAdmissionWebhook plugins, calmplane's webhook call and the
/// policies' CEL, with the client's round trip; the table goes to stderr
/// and to target/e2e-map-latency.md. Asserted: every Pod an engine serves
/// is stored mutated, and none fails open.
pub(crate) async fn c16_engine_latency(env: &Env) -> Result<()> {
    install_default_policies(env).await?;
    // What the controllers still create from earlier cases would count too.
    env.quiesce().await?;
    let mut modes = vec![
        Mode::new("no engine", None, true),
        Mode::new("webhook", Some(enabled::WEBHOOK), true),
        Mode::new("both", Some(enabled::APISERVER), true),
        Mode::new("policies", Some(enabled::APISERVER), false),
    ];
    let fails_before = fail_open(&env.metrics().await?);
    let mut unregistered = false;
    let result: Result<()> = async {
        for (i, mode) in modes.iter_mut().enumerate() {
            let labels: Vec<(&str, &str)> = mode.label.map(|l| (ENABLED, l)).into_iter().collect();
            let ns = env.namespace(&format!("c16-{i}"), &labels).await?;
            if !mode.webhook && !unregistered {
                env.unregister_calmplane().await?;
                unregistered = true;
            }
            if mode.label.is_some() {
                wait_for_probe(env.client(), &ns, |pod| {
                    is_mutated(&serde_json::to_value(pod).unwrap_or_default())
                })
                .await
                .with_context(|| format!("{}: never mutated", mode.name))?;
            }
            mode.before = env.metrics().await?;
            let start = Instant::now();
            let (times, mutated) = burst(env, &ns, "p").await?;
            mode.after = env.metrics().await?;
            eprintln!(
                "c16: {}: {LATENCY_PODS} Pods in {:.1} s",
                mode.name,
                start.elapsed().as_secs_f64()
            );
            mode.times = times;
            let want = if mode.label.is_some() {
                LATENCY_PODS
            } else {
                0
            };
            ensure!(
                mutated == want,
                "{}: {mutated} of {LATENCY_PODS} Pods stored mutated, want {want}",
                mode.name
            );
        }
        Ok(())
    }
    .await;
    if unregistered {
        env.register_calmplane().await?;
    }
    result?;
    ensure!(
        fail_open(&env.metrics().await?) == fails_before,
        "admissions failed open"
    );
    let table = latency_table(&mut modes);
    eprintln!("{table}");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    std::fs::create_dir_all(&target)?;
    std::fs::write(target.join("e2e-map-latency.md"), &table)?;
    Ok(())
}

impl Mode {
    fn new(name: &'static str, label: Option<&'static str>, webhook: bool) -> Mode {
        Mode {
            name,
            label,
            webhook,
            times: Vec::new(),
            before: String::new(),
            after: String::new(),
        }
    }
}

/// The markdown table of c16, with what its numbers mean.
fn latency_table(modes: &mut [Mode]) -> String {
    let admit = [("type", "admit"), ("operation", "CREATE")];
    let plugin = |name: &'static str| {
        move |m: &Mode| {
            Observed::of(
                &m.before,
                &m.after,
                "apiserver_admission_controller_admission_duration_seconds",
                &[("name", name), ("type", "admit"), ("operation", "CREATE")],
            )
            .cell()
        }
    };
    let check = |policy: &'static str| {
        move |m: &Mode| {
            Observed::of(
                &m.before,
                &m.after,
                "apiserver_mutating_admission_policy_check_duration_seconds",
                &[("policy", policy)],
            )
            .cell()
        }
    };
    type Row<'a> = (&'a str, Box<dyn Fn(&Mode) -> String + 'a>);
    let rows: Vec<Row> = vec![
        (
            "admit step: `apiserver_admission_step_admission_duration_seconds{type=\"admit\",operation=\"CREATE\"}`",
            Box::new(move |m: &Mode| {
                Observed::of(
                    &m.before,
                    &m.after,
                    "apiserver_admission_step_admission_duration_seconds",
                    &admit,
                )
                .cell()
            }),
        ),
        (
            "plugin MutatingAdmissionPolicy: `apiserver_admission_controller_admission_duration_seconds`",
            Box::new(plugin("MutatingAdmissionPolicy")),
        ),
        (
            "plugin MutatingAdmissionWebhook: same metric",
            Box::new(plugin("MutatingAdmissionWebhook")),
        ),
        (
            "calmplane's webhook call: `apiserver_admission_webhook_admission_duration_seconds{name=\"pods.calmplane.dev\"}`",
            Box::new(move |m: &Mode| {
                Observed::of(
                    &m.before,
                    &m.after,
                    "apiserver_admission_webhook_admission_duration_seconds",
                    &[("name", PODS_WEBHOOK), ("type", "admit"), ("operation", "CREATE")],
                )
                .cell()
            }),
        ),
        (
            "policy calmplane-dns: `apiserver_mutating_admission_policy_check_duration_seconds`",
            Box::new(check("calmplane-dns")),
        ),
        (
            "policy calmplane-prestop: same metric",
            Box::new(check("calmplane-prestop")),
        ),
    ];
    let mut out = String::new();
    out.push_str(&format!(
        "# Pod admission: webhook, MutatingAdmissionPolicies, both (e2e c16)\n\n\
         {LATENCY_PODS} Pods per column, 4 concurrent clients, the same Pod each time; \
         release calmplane; kube-apiserver v1.36.3 on loopback. Each cell: \
         p50 / p99 / mean in ms (n = observations).\n\n"
    ));
    out.push_str("| measured by |");
    for m in modes.iter() {
        out.push_str(&format!(" {} |", m.name));
    }
    out.push_str("\n|---|");
    for _ in modes.iter() {
        out.push_str("---|");
    }
    out.push('\n');
    out.push_str("| Pod create round trip, at the client (exact) |");
    for m in modes.iter_mut() {
        let p50 = exact_quantile(&mut m.times, 0.5);
        let p99 = exact_quantile(&mut m.times, 0.99);
        let mean = m.times.iter().map(Duration::as_secs_f64).sum::<f64>() * 1e3
            / m.times.len().max(1) as f64;
        out.push_str(&format!(" {p50:.2} / {p99:.2} / {mean:.3} |"));
    }
    out.push('\n');
    for (label, cell) in &rows {
        out.push_str(&format!("| {label} |"));
        for m in modes.iter() {
            out.push_str(&format!(" {} |", cell(m)));
        }
        out.push('\n');
    }
    out.push_str(
        "\nThe apiserver's p50 and p99 are estimates, as PromQL's `histogram_quantile` \
         gives them: linear interpolation inside a bucket. The admission histograms' \
         buckets are 5, 25, 100 ms...: below 5 ms a quantile only says where the rank \
         falls in 0 to 5 ms. The policy check histogram's are 0.5 µs, 1 ms, 10 ms...: \
         its quantiles say nothing below 1 ms. The means (`_sum` / `_count`) are exact, \
         and so are the client's round trips. The columns ran one after another on a \
         shared 2-core machine, so the load differs between them. With the policies \
         alone, the lease policy does not run (it stays in the webhook).\n",
    );
    out
}
