//! Property tests of the policy pipeline on generated Pods and Deployments:
//! arbitrary extra fields, odd annotation keys (`/`, `~`), empty or missing
//! containers, nulls where objects are expected, and huge lists.
//!
//! For every generated object and request:
//! 1. the pipeline does not panic;
//! 2. its patch applies to the input (json-patch crate) and gives exactly the
//!    pipeline's output object;
//! 3. a second pass over the output (same request) yields no patch;
//! 4. nothing outside the paths the policies own differs between input and
//!    output.
//!
//! The owned paths, exactly (`*` is any index, `K` any key starting with
//! `calmplane.dev/`):
//!
//! | kind       | owned                                                              |
//! |------------|--------------------------------------------------------------------|
//! | Pod        | `/metadata/annotations/K`                                          |
//! | Pod        | `/spec/dnsConfig/options` and below                                |
//! | Pod        | `/spec/containers/*/lifecycle/preStop` and below                   |
//! | Pod        | `/spec/terminationGracePeriodSeconds`                              |
//! | Pod        | `/spec/{containers,initContainers}/*/env/*/value` where that env's `name` is `LEASE_SELECTOR` in the input |
//! | Pod        | `/spec/{containers,initContainers}/*/args/*` where that arg is `--lease-selector=...`, or the previous arg is `--lease-selector`, in the input |
//! | Deployment | `/metadata/annotations/K`, `/spec/template/metadata/annotations/K` |
//! | Deployment | `/spec/strategy/rollingUpdate` and below                           |
//!
//! A parent of an owned path (`/metadata/annotations`, `/spec/dnsConfig`,
//! `/spec/containers/*/lifecycle`, `/spec/strategy`, ...) may go from missing,
//! `null` or `{}` to an object holding owned members, and nothing else; an
//! empty container object (`{}` in `/spec/containers`) may gain `lifecycle`.
//!
//! A replay of the fuzz target's seed corpus, plus mutated variants, runs
//! the same check as `fuzz/fuzz_targets/mutate.rs` on stable Rust.

use calmplane::config::Config;
use calmplane::pipeline::{FixedClock, Pipeline};
use calmplane::policy::{Context, Kind};
use calmplane_testkit::{fuzz_check, review, seeds as fuzz_seeds};
use kube::core::admission::Operation;
use proptest::prelude::*;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

const NOW: i64 = 1_800_000_000;
const LEASE_ENV: &str = "LEASE_SELECTOR";
const LEASE_FLAG: &str = "--lease-selector";

// ---------------------------------------------------------------- generators

/// A member that may be missing, `null`, or hold a value.
#[derive(Debug, Clone)]
enum Slot {
    Missing,
    Null,
    Set(Value),
}

fn slot(value: impl Strategy<Value = Value> + 'static) -> BoxedStrategy<Slot> {
    prop_oneof![
        1 => Just(Slot::Missing),
        1 => Just(Slot::Null),
        4 => value.prop_map(Slot::Set),
    ]
    .boxed()
}

fn put(map: &mut Map<String, Value>, key: &str, slot: Slot) {
    match slot {
        Slot::Missing => {}
        Slot::Null => {
            map.insert(key.to_string(), Value::Null);
        }
        Slot::Set(v) => {
            map.insert(key.to_string(), v);
        }
    }
}

/// Keys with the characters JSON Pointer escapes, and ones the policies know.
fn odd_key() -> BoxedStrategy<String> {
    prop_oneof![
        Just("calmplane.dev/lease-selector".to_string()),
        Just("calmplane.dev/skip".to_string()),
        Just("calmplane.dev/lease-scope".to_string()),
        Just("calmplane.dev/rollouts".to_string()),
        Just("calmplane.dev/".to_string()),
        Just("a/b~c".to_string()),
        Just("~0~1".to_string()),
        Just("~".to_string()),
        Just("/".to_string()),
        Just("".to_string()),
        Just("-".to_string()),
        Just("0".to_string()),
        "[a-z0-9./~_-]{0,24}",
        "\\PC{0,8}",
    ]
    .boxed()
}

/// Any JSON, a few levels deep, with odd keys.
fn any_json() -> BoxedStrategy<Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        (-1e9f64..1e9).prop_map(|f| json!(f)),
        "\\PC{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec((odd_key(), inner), 0..5)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
    .boxed()
}

/// Extra members that no policy knows about.
fn extras() -> BoxedStrategy<Vec<(String, Value)>> {
    prop::collection::vec(("x-[a-z/~]{0,6}", any_json()), 0..3).boxed()
}

fn with_extras(mut map: Map<String, Value>, extras: Vec<(String, Value)>) -> Value {
    for (k, v) in extras {
        map.entry(k).or_insert(v);
    }
    Value::Object(map)
}

/// Field selectors: valid, rewritable, already scoped, malformed.
fn selector() -> BoxedStrategy<String> {
    prop_oneof![
        Just("metadata.name=pod-1".to_string()),
        Just("metadata.name==pod-1,app=web".to_string()),
        Just("metadata.name!=pod-1".to_string()),
        Just("metadata.namespace=ns".to_string()),
        Just("metadata.name=web".to_string()),
        Just("metadata.name=x,,metadata.name=y".to_string()),
        Just("metadata.name=a\\,b\\=c".to_string()),
        Just("metadata.name=x=y".to_string()),
        Just("metadata.name=\\q".to_string()),
        Just("metadata.name=\\".to_string()),
        Just("no operator".to_string()),
        Just(String::new()),
        Just(",".to_string()),
        "(metadata\\.name|metadata\\.namespace|spec\\.x)(=|==|!=)[a-z0-9\\\\,=-]{0,8}(,[a-z.]{0,6}=[a-z]{0,4}){0,2}",
        "\\PC{0,16}",
    ]
    .boxed()
}

fn annotation_value() -> BoxedStrategy<Value> {
    prop_oneof![
        6 => selector().prop_map(Value::String),
        1 => Just(json!("all")),
        1 => Just(json!("dns,prestop")),
        1 => Just(json!("lease, rollout ,bogus")),
        1 => Just(json!("deployment/web")),
        1 => Just(json!("deployment/")),
        1 => Just(json!("statefulset/x")),
        1 => history().prop_map(Value::String),
        1 => any_json(),
    ]
    .boxed()
}

fn annotations() -> BoxedStrategy<Value> {
    prop_oneof![
        8 => prop::collection::vec((odd_key(), annotation_value()), 0..6)
            .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        1 => any_json(),
    ]
    .boxed()
}

fn metadata() -> BoxedStrategy<Value> {
    (
        slot("[a-z0-9-]{0,12}".prop_map(Value::String)),
        slot(prop_oneof![
            Just(json!("ns")),
            Just(json!("")),
            Just(json!(7))
        ]),
        slot(annotations()),
        slot(prop::collection::btree_map(odd_key(), any_json(), 0..3).prop_map(|m| json!(m))),
        extras(),
    )
        .prop_map(|(name, namespace, annotations, labels, extras)| {
            let mut m = Map::new();
            put(&mut m, "name", name);
            put(&mut m, "namespace", namespace);
            put(&mut m, "annotations", annotations);
            put(&mut m, "labels", labels);
            with_extras(m, extras)
        })
        .boxed()
}

fn env_var() -> BoxedStrategy<Value> {
    (
        slot(prop_oneof![
            3 => Just(json!(LEASE_ENV)),
            1 => "[A-Z_]{1,8}".prop_map(Value::String),
            1 => any_json(),
        ]),
        slot(prop_oneof![
            3 => selector().prop_map(Value::String),
            1 => any_json(),
        ]),
        extras(),
    )
        .prop_map(|(name, value, extras)| {
            let mut m = Map::new();
            put(&mut m, "name", name);
            put(&mut m, "value", value);
            with_extras(m, extras)
        })
        .boxed()
}

fn arg() -> BoxedStrategy<Value> {
    prop_oneof![
        3 => Just(json!(LEASE_FLAG)),
        3 => selector().prop_map(|s| json!(format!("{LEASE_FLAG}={s}"))),
        3 => selector().prop_map(Value::String),
        1 => Just(json!(format!("{LEASE_FLAG}x=metadata.name=a"))),
        1 => "[a-z=-]{0,10}".prop_map(Value::String),
        1 => any_json(),
    ]
    .boxed()
}

/// Mostly small lists, sometimes huge ones.
fn list<T: std::fmt::Debug + Clone + 'static>(
    item: BoxedStrategy<T>,
    small: usize,
    huge: usize,
) -> BoxedStrategy<Vec<T>> {
    prop_oneof![
        20 => prop::collection::vec(item.clone(), 0..small),
        1 => prop::collection::vec(item, huge..huge + 1),
    ]
    .boxed()
}

fn lifecycle() -> BoxedStrategy<Value> {
    prop_oneof![
        Just(json!({})),
        Just(json!({"preStop": null})),
        Just(json!({"preStop": {"exec": {"command": ["drain"]}}})),
        Just(
            json!({"preStop": {"sleep": {"seconds": 3}}, "postStart": {"exec": {"command": ["x"]}}})
        ),
        Just(json!({"postStart": {"exec": {"command": ["x"]}}})),
        Just(json!("not an object")),
        any_json(),
    ]
    .boxed()
}

fn container() -> BoxedStrategy<Value> {
    let object = (
        slot("[a-z0-9-]{0,8}".prop_map(Value::String)),
        slot(list(env_var(), 5, 400).prop_map(Value::Array)),
        slot(list(arg(), 6, 400).prop_map(Value::Array)),
        slot(lifecycle()),
        extras(),
    )
        .prop_map(|(name, env, args, lifecycle, extras)| {
            let mut m = Map::new();
            put(&mut m, "name", name);
            m.insert("image".into(), json!("busybox"));
            put(&mut m, "env", env);
            put(&mut m, "args", args);
            put(&mut m, "lifecycle", lifecycle);
            with_extras(m, extras)
        });
    prop_oneof![
        12 => object,
        1 => any_json(),
    ]
    .boxed()
}

fn containers() -> BoxedStrategy<Value> {
    prop_oneof![
        10 => list(container(), 4, 300).prop_map(Value::Array),
        1 => Just(json!([])),
        1 => any_json(),
    ]
    .boxed()
}

fn dns_option() -> BoxedStrategy<Value> {
    prop_oneof![
        Just(json!({"name": "ndots", "value": "5"})),
        Just(json!({"name": "ndots", "value": "2"})),
        Just(json!({"name": "ndots", "value": 5})),
        Just(json!({"name": "ndots", "value": null})),
        Just(json!({"name": "ndots"})),
        Just(json!({"name": "single-request-reopen"})),
        Just(json!({"name": "edns0"})),
        Just(json!({"name": null})),
        any_json(),
    ]
    .boxed()
}

fn dns_config() -> BoxedStrategy<Value> {
    (
        slot(prop_oneof![
            8 => list(dns_option(), 4, 500).prop_map(Value::Array),
            1 => any_json(),
        ]),
        slot(Just(json!(["1.1.1.1"]))),
        extras(),
    )
        .prop_map(|(options, nameservers, extras)| {
            let mut m = Map::new();
            put(&mut m, "options", options);
            put(&mut m, "nameservers", nameservers);
            with_extras(m, extras)
        })
        .boxed()
}

fn grace() -> BoxedStrategy<Value> {
    prop_oneof![
        (0i64..100).prop_map(|n| json!(n)),
        Just(json!(-5)),
        Just(json!(3.5)),
        Just(json!("30")),
        Just(json!(i64::MAX)),
        Just(json!(u64::MAX)),
        Just(json!(i64::MIN)),
    ]
    .boxed()
}

fn pod_spec() -> BoxedStrategy<Value> {
    (
        slot(containers()),
        slot(containers()),
        slot(prop_oneof![8 => dns_config(), 1 => any_json()]),
        slot(grace()),
        slot(prop_oneof![
            Just(json!({"kubernetes.io/os": "windows"})),
            Just(json!({"kubernetes.io/os": "linux"})),
        ]),
        slot(prop_oneof![
            Just(json!({"name": "windows"})),
            Just(json!({"name": "linux"}))
        ]),
        extras(),
    )
        .prop_map(
            |(containers, init, dns, grace, node_selector, os, extras)| {
                let mut m = Map::new();
                put(&mut m, "containers", containers);
                put(&mut m, "initContainers", init);
                put(&mut m, "dnsConfig", dns);
                put(&mut m, "terminationGracePeriodSeconds", grace);
                put(&mut m, "nodeSelector", node_selector);
                put(&mut m, "os", os);
                with_extras(m, extras)
            },
        )
        .boxed()
}

fn pod() -> BoxedStrategy<Value> {
    (
        slot(metadata()),
        slot(prop_oneof![12 => pod_spec(), 1 => any_json()]),
        extras(),
    )
        .prop_map(|(metadata, spec, extras)| {
            let mut m = Map::new();
            m.insert("apiVersion".into(), json!("v1"));
            m.insert("kind".into(), json!("Pod"));
            put(&mut m, "metadata", metadata);
            put(&mut m, "spec", spec);
            with_extras(m, extras)
        })
        .boxed()
}

/// `calmplane.dev/rollouts`: unix times around NOW, and garbage.
fn history() -> BoxedStrategy<String> {
    prop_oneof![
        prop::collection::vec(NOW - 7200..NOW + 100, 0..5).prop_map(|ts| ts
            .iter()
            .map(i64::to_string)
            .collect::<Vec<_>>()
            .join(",")),
        Just(format!("{NOW}, x,,{}", NOW - 10)),
        "[0-9, x]{0,20}",
    ]
    .boxed()
}

fn int_or_string() -> BoxedStrategy<Value> {
    prop_oneof![
        Just(json!(0)),
        Just(json!("0")),
        Just(json!("0%")),
        Just(json!("00%")),
        Just(json!("25%")),
        Just(json!(1)),
        Just(json!(-1)),
        Just(json!(true)),
        "[0-9%]{0,4}".prop_map(Value::String),
    ]
    .boxed()
}

fn strategy() -> BoxedStrategy<Value> {
    (
        slot(prop_oneof![
            Just(json!("RollingUpdate")),
            Just(json!("Recreate")),
            Just(json!("typeValue")),
        ]),
        slot(prop_oneof![
            8 => (slot(int_or_string()), slot(int_or_string()), extras()).prop_map(
                |(surge, unavailable, extras)| {
                    let mut m = Map::new();
                    put(&mut m, "maxSurge", surge);
                    put(&mut m, "maxUnavailable", unavailable);
                    with_extras(m, extras)
                }
            ),
            1 => any_json(),
        ]),
    )
        .prop_map(|(kind, rolling)| {
            let mut m = Map::new();
            put(&mut m, "type", kind);
            put(&mut m, "rollingUpdate", rolling);
            Value::Object(m)
        })
        .boxed()
}

fn template() -> BoxedStrategy<Value> {
    (slot(metadata()), slot(pod_spec()), extras())
        .prop_map(|(metadata, spec, extras)| {
            let mut m = Map::new();
            put(&mut m, "metadata", metadata);
            put(&mut m, "spec", spec);
            with_extras(m, extras)
        })
        .boxed()
}

fn deployment() -> BoxedStrategy<Value> {
    (
        slot(metadata()),
        slot(prop_oneof![
            (
                slot(strategy()),
                slot(template()),
                slot(Just(json!(3))),
                extras()
            )
                .prop_map(|(strategy, template, replicas, extras)| {
                    let mut m = Map::new();
                    put(&mut m, "strategy", strategy);
                    put(&mut m, "template", template);
                    put(&mut m, "replicas", replicas);
                    with_extras(m, extras)
                }),
            any_json(),
        ]),
        extras(),
    )
        .prop_map(|(metadata, spec, extras)| {
            let mut m = Map::new();
            m.insert("apiVersion".into(), json!("apps/v1"));
            m.insert("kind".into(), json!("Deployment"));
            put(&mut m, "metadata", metadata);
            put(&mut m, "spec", spec);
            with_extras(m, extras)
        })
        .boxed()
}

/// The old object of an UPDATE: none, the same, the same with another
/// template, or an unrelated Deployment.
fn with_old(object: BoxedStrategy<Value>) -> BoxedStrategy<(Value, Option<Value>)> {
    (object.clone(), object, 0..4u8)
        .prop_map(|(new, other, how)| {
            let old = match how {
                0 => None,
                1 => Some(new.clone()),
                2 => {
                    let mut old = new.clone();
                    if let Some(spec) = old.get_mut("spec").and_then(Value::as_object_mut) {
                        spec.insert(
                            "template".into(),
                            json!({"spec": {"containers": [{"name": "old"}]}}),
                        );
                    }
                    Some(old)
                }
                _ => Some(other),
            };
            (new, old)
        })
        .boxed()
}

fn operation() -> BoxedStrategy<Operation> {
    prop_oneof![
        6 => Just(Operation::Create),
        3 => Just(Operation::Update),
        1 => Just(Operation::Delete),
        1 => Just(Operation::Connect),
    ]
    .boxed()
}

fn namespace() -> BoxedStrategy<Option<&'static str>> {
    prop_oneof![
        Just(None),
        Just(Some("")),
        Just(Some("ns")),
        Just(Some("team-a"))
    ]
    .boxed()
}

// ---------------------------------------------------------------- pipelines

/// The default policy, and two variants that take other branches.
fn pipelines() -> &'static [Pipeline; 3] {
    static PIPELINES: OnceLock<[Pipeline; 3]> = OnceLock::new();
    PIPELINES.get_or_init(|| {
        let pipeline = |yaml: &str| {
            let config = Config::from_yaml(yaml, "test.yaml").expect("a valid policy file");
            Pipeline::new(&config, Arc::new(FixedClock(NOW))).expect("a valid policy file")
        };
        [
            pipeline(""),
            pipeline("dns: {override: true, ndots: 3}\nrolloutHistory: {hotRolloutsPerHour: 2}\n"),
            pipeline(
                "prestop: {mode: exec, sleepSeconds: 40}\ndns: {singleRequestReopen: false}\n",
            ),
        ]
    })
}

// ---------------------------------------------------------------- ownership

fn is_ours(key: &str) -> bool {
    key.starts_with("calmplane.dev/")
}

/// Whether the policies own `path` (see the table at the top). Env and arg
/// ownership is decided on the input object.
fn owned(path: &[&str], kind: Kind, input: &Value) -> bool {
    match (kind, path) {
        (_, ["metadata", "annotations", key, ..]) => is_ours(key),
        (Kind::Pod, ["spec", "dnsConfig", "options", ..])
        | (Kind::Pod, ["spec", "containers", _, "lifecycle", "preStop", ..])
        | (Kind::Pod, ["spec", "terminationGracePeriodSeconds", ..]) => true,
        (Kind::Pod, ["spec", list @ ("containers" | "initContainers"), i, "env", j, "value"]) => {
            input["spec"][list][idx(i)]["env"][idx(j)]["name"] == LEASE_ENV
        }
        (Kind::Pod, ["spec", list @ ("containers" | "initContainers"), i, "args", k]) => {
            let args = &input["spec"][list][idx(i)]["args"];
            let k = idx(k);
            let this = args[k].as_str().unwrap_or("");
            let previous = k.checked_sub(1).and_then(|p| args[p].as_str());
            this.strip_prefix(LEASE_FLAG)
                .is_some_and(|rest| rest.starts_with('='))
                || previous == Some(LEASE_FLAG)
        }
        (Kind::Deployment, ["spec", "template", "metadata", "annotations", key, ..]) => {
            is_ours(key)
        }
        (Kind::Deployment, ["spec", "strategy", "rollingUpdate", ..]) => true,
        _ => false,
    }
}

fn idx(token: &str) -> usize {
    token.parse().unwrap_or(usize::MAX)
}

/// Parents that a policy may create (from missing, `null` or `{}`) to hold an
/// owned member.
fn creatable(path: &[&str], kind: Kind) -> bool {
    matches!(
        (kind, path),
        (_, ["metadata"] | ["metadata", "annotations"] | ["spec"])
            | (
                Kind::Pod,
                ["spec", "dnsConfig"] | ["spec", "containers", _, "lifecycle"]
            )
            | (
                Kind::Deployment,
                ["spec", "strategy"]
                    | ["spec", "template"]
                    | ["spec", "template", "metadata"]
                    | ["spec", "template", "metadata", "annotations"]
            )
    )
}

/// Objects that exist in the input and may gain an owned member: a
/// container gains `lifecycle`.
fn holds_owned(path: &[&str], kind: Kind) -> bool {
    matches!((kind, path), (Kind::Pod, ["spec", "containers", _]))
}

/// Every leaf outside the owned paths, by JSON Pointer. Empty objects and
/// arrays are leaves, except where a policy may add owned members to them.
fn unowned(doc: &Value, kind: Kind, input: &Value) -> BTreeMap<String, Value> {
    fn walk(
        v: &Value,
        path: &mut Vec<String>,
        kind: Kind,
        input: &Value,
        out: &mut BTreeMap<String, Value>,
    ) {
        let p: Vec<&str> = path.iter().map(String::as_str).collect();
        if owned(&p, kind, input) {
            return;
        }
        let empty = match v {
            Value::Object(m) => m.is_empty(),
            Value::Array(a) => a.is_empty(),
            _ => true,
        };
        if empty {
            // `null` may become an object only at a creatable parent; `{}`
            // may also gain owned members where it is a container.
            let may_grow = match v {
                Value::Null => creatable(&p, kind),
                Value::Object(_) => creatable(&p, kind) || holds_owned(&p, kind),
                _ => false,
            };
            if !may_grow {
                out.insert(
                    jsonptr::PointerBuf::from_tokens(p.iter().copied()).to_string(),
                    v.clone(),
                );
            }
            return;
        }
        match v {
            Value::Object(m) => {
                for (k, child) in m {
                    path.push(k.clone());
                    walk(child, path, kind, input, out);
                    path.pop();
                }
            }
            Value::Array(a) => {
                for (i, child) in a.iter().enumerate() {
                    path.push(i.to_string());
                    walk(child, path, kind, input, out);
                    path.pop();
                }
            }
            _ => unreachable!(),
        }
    }
    let mut out = BTreeMap::new();
    walk(doc, &mut Vec::new(), kind, input, &mut out);
    out
}

// ---------------------------------------------------------------- the properties

fn check(
    pipeline: &Pipeline,
    kind: Kind,
    operation: Operation,
    namespace: Option<&str>,
    input: &Value,
    old: Option<&Value>,
) -> Result<(), TestCaseError> {
    let request = Context::new(kind, operation.clone())
        .in_namespace(namespace)
        .replacing(old, None);
    // 1. No panic (proptest reports a panic as a failure with the input).
    let first = pipeline.run(&request, input.clone());

    // 1b. `/mutate` reads only the view of the object, and must do the same.
    review::view_matches_whole(
        pipeline,
        kind,
        calmplane::review::operation_str(&operation),
        namespace,
        input,
        old,
        &first,
    )
    .map_err(TestCaseError::fail)?;

    // 2. The patch applies to the input and gives the output object, also
    //    after a round trip through JSON, as the apiserver receives it.
    let wire: json_patch::Patch =
        serde_json::from_slice(&serde_json::to_vec(&first.patch).unwrap()).unwrap();
    let mut patched = input.clone();
    if let Err(e) = json_patch::patch(&mut patched, &wire) {
        return Err(TestCaseError::fail(format!(
            "patch does not apply: {e}\npatch: {}",
            serde_json::to_string(&first.patch).unwrap()
        )));
    }
    prop_assert_eq!(&patched, &first.object, "patched input != pipeline output");
    prop_assert_eq!(
        first.patch.is_empty(),
        first.policies.is_empty(),
        "policies {:?} vs patch {:?}",
        first.policies,
        first.patch
    );

    // 3. A second pass is clean.
    let second = pipeline.run(&request, first.object.clone());
    prop_assert!(
        second.patch.is_empty(),
        "second pass patched again: {}\nafter first: {}",
        serde_json::to_string(&second.patch).unwrap(),
        serde_json::to_string(&first.patch).unwrap()
    );

    // 4. Nothing outside the owned paths changed.
    let before = unowned(input, kind, input);
    let after = unowned(&first.object, kind, input);
    if before != after {
        let changed: Vec<_> = before
            .iter()
            .filter(|(k, v)| after.get(*k) != Some(v))
            .map(|(k, _)| k.clone())
            .chain(after.keys().filter(|k| !before.contains_key(*k)).cloned())
            .collect();
        return Err(TestCaseError::fail(format!(
            "unowned paths changed: {changed:?}\npatch: {}",
            serde_json::to_string(&first.patch).unwrap()
        )));
    }
    Ok(())
}

/// 256 cases per property by default; `PROPTEST_CASES=5000` for a deeper run.
fn config() -> ProptestConfig {
    ProptestConfig {
        // Huge lists make shrinking slow; a minimal-enough case within a
        // minute beats a perfect one after an hour.
        max_shrink_time: 60_000,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn pods(
        pod in pod(),
        which in 0..3usize,
        operation in operation(),
        namespace in namespace(),
    ) {
        check(&pipelines()[which], Kind::Pod, operation, namespace, &pod, None)?;
    }

    #[test]
    fn deployments(
        (deployment, old) in with_old(deployment()),
        which in 0..3usize,
        operation in operation(),
        namespace in namespace(),
    ) {
        check(&pipelines()[which], Kind::Deployment, operation, namespace, &deployment, old.as_ref())?;
    }

    /// Pod templates of Deployments are Pods too (what a ReplicaSet creates).
    #[test]
    fn pods_from_templates(
        (deployment, _) in with_old(deployment()),
        namespace in namespace(),
    ) {
        let pod = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": deployment["spec"]["template"]["metadata"].clone(),
            "spec": deployment["spec"]["template"]["spec"].clone(),
        });
        check(&pipelines()[0], Kind::Pod, Operation::Create, namespace, &pod, None)?;
    }
}

// ---------------------------------------------------------------- fixed cases

/// The properties hold on hand-picked shapes too, so that a change in the
/// generators cannot silently stop covering them.
#[test]
fn hand_picked_shapes() {
    let pods = [
        json!({"apiVersion": "v1", "kind": "Pod"}),
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": null, "spec": null}),
        json!({"apiVersion": "v1", "kind": "Pod", "spec": {"containers": []}}),
        json!({"apiVersion": "v1", "kind": "Pod", "spec": {"containers": null, "dnsConfig": null}}),
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"annotations": {"a/b~c": "x", "calmplane.dev/lease-selector": "metadata.name=p"}},
            "spec": {"containers": [null, 1, {"name": "c", "lifecycle": null, "env": [{"name": LEASE_ENV, "value": "metadata.name=p"}],
            "args": [LEASE_FLAG, "metadata.name=p", "--lease-selector=metadata.name=q,app=x"]}],
            "initContainers": [{"name": "i", "env": [{"name": LEASE_ENV, "value": "metadata.name=p"}]}],
            "dnsConfig": {"options": [{"name": "ndots", "value": "5"}]}, "terminationGracePeriodSeconds": 3}}),
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"annotations": {"calmplane.dev/lease-scope": "deployment/web",
            "calmplane.dev/lease-selector": "metadata.name=p"}}, "spec": {"containers": [{"name": "c"}]}}),
    ];
    for pod in &pods {
        for (i, pipeline) in pipelines().iter().enumerate() {
            for ns in [None, Some("ns")] {
                check(pipeline, Kind::Pod, Operation::Create, ns, pod, None)
                    .unwrap_or_else(|e| panic!("pipeline {i}, {pod}: {e}"));
            }
        }
    }
    let hot = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "annotations": {"calmplane.dev/rollouts": format!("{},{}", NOW - 100, NOW - 50)}},
        "spec": {"strategy": {"rollingUpdate": {"maxSurge": 0}}, "template": {"spec": {"containers": [{"name": "new"}]}}}});
    let old = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "annotations": {"calmplane.dev/rollouts": format!("{},{}", NOW - 100, NOW - 50)}},
        "spec": {"template": {"spec": {"containers": [{"name": "old"}]}}}});
    for pipeline in pipelines() {
        check(
            pipeline,
            Kind::Deployment,
            Operation::Update,
            Some("ns"),
            &hot,
            Some(&old),
        )
        .unwrap();
    }
}

/// The fuzz target's check over its seed corpus (built from
/// `tests/fixtures/upstream/`) and mutated variants of each seed, on stable Rust.
#[test]
fn fuzz_seed_corpus_replay() {
    let seeds = fuzz_seeds::seeds().expect("seed corpus");
    assert!(seeds.len() >= 40, "only {} seeds", seeds.len());
    let mut runs = 0usize;
    let mut rng = fuzz_seeds::XorShift::new(0x5eed_5eed);
    for (name, seed) in &seeds {
        fuzz_check::check_mutate_body(seed);
        runs += 1;
        for variant in fuzz_seeds::variants(seed, &mut rng, 24) {
            let result = std::panic::catch_unwind(|| fuzz_check::check_mutate_body(&variant));
            if result.is_err() {
                let path = std::env::temp_dir()
                    .join(format!("calmplane-fuzz-crash-{}", std::process::id()));
                std::fs::write(&path, &variant).unwrap();
                panic!(
                    "variant of seed {name} failed; input saved to {}",
                    path.display()
                );
            }
            runs += 1;
        }
    }
    println!("replayed {} seeds and {runs} inputs in all", seeds.len());
}
