//! The seed corpus, built from the manifests and AdmissionReviews in
//! `tests/fixtures/upstream` ([`crate::corpus`]), and cheap mutations of it
//! for the stable replay test.
//!
//! Every AdmissionReview file is a seed as it is. Every object in a manifest
//! (JSON or YAML, several documents, `List`s) becomes a CREATE review; a
//! Deployment also an UPDATE with a changed template; a workload's pod
//! template becomes the Pod CREATE its controller would send.

use serde_json::{json, Value};

/// `(name, body)` pairs, sorted by name.
pub fn seeds() -> std::io::Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    for path in crate::corpus::corpus_files()? {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let bytes = std::fs::read(&path)?;
        let text = String::from_utf8_lossy(&bytes);
        let docs = documents(&text);
        for (d, doc) in docs.iter().enumerate() {
            if doc["kind"] == "AdmissionReview" {
                out.push((name.clone(), bytes.clone()));
                continue;
            }
            for (i, object) in objects(doc).into_iter().enumerate() {
                for (what, review) in reviews(&object) {
                    let body = serde_json::to_vec(&review).unwrap();
                    out.push((format!("{name}#{d}.{i}.{what}"), body));
                }
            }
        }
    }
    for (name, body) in [
        ("empty", &b""[..]),
        ("array", b"[]"),
        ("object", b"{}"),
        ("v1beta1", br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{"uid":"u"}}"#),
        ("no-object", br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","kind":{"group":"","version":"v1","kind":"Pod"},"operation":"CREATE"}}"#),
    ] {
        out.push((format!("handmade-{name}"), body.to_vec()));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out.dedup_by(|a, b| a.0 == b.0);
    Ok(out)
}

/// JSON, or YAML documents converted to JSON. Documents that are not
/// JSON-compatible (non-string keys) are skipped.
fn documents(text: &str) -> Vec<Value> {
    if let Ok(v) = serde_json::from_str::<Value>(text) {
        return vec![v];
    }
    // A file the YAML reader refuses (a duplicate key) gives no seeds.
    calmplane::yaml::documents(text)
        .unwrap_or_default()
        .into_iter()
        .filter(Value::is_object)
        .collect()
}

fn objects(doc: &Value) -> Vec<Value> {
    match doc["items"].as_array() {
        Some(items) if doc["kind"].as_str().is_some_and(|k| k.ends_with("List")) => {
            items.iter().filter(|i| i.is_object()).cloned().collect()
        }
        _ => vec![doc.clone()],
    }
}

/// An AdmissionReview v1 request for `object`.
pub fn review(uid: &str, operation: &str, object: &Value, old: Option<&Value>) -> Value {
    let api_version = object["apiVersion"].as_str().unwrap_or("v1");
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let kind = object["kind"].as_str().unwrap_or("");
    let resource = format!("{}s", kind.to_lowercase());
    let namespace = object["metadata"]["namespace"]
        .as_str()
        .unwrap_or("default");
    let mut request = json!({
        "uid": uid,
        "kind": {"group": group, "version": version, "kind": kind},
        "resource": {"group": group, "version": version, "resource": resource},
        "name": object["metadata"]["name"].as_str().unwrap_or(""),
        "namespace": namespace,
        "operation": operation,
        "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
        "object": object,
        "dryRun": false,
    });
    if let Some(old) = old {
        request["oldObject"] = old.clone();
    }
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request})
}

fn reviews(object: &Value) -> Vec<(&'static str, Value)> {
    let mut out = vec![("create", review("seed-create", "CREATE", object, None))];
    if object["kind"] == "Deployment" {
        let mut old = object.clone();
        old["spec"]["template"]["metadata"]["labels"]["calmplane-seed"] = json!("old");
        out.push((
            "update",
            review("seed-update", "UPDATE", object, Some(&old)),
        ));
    }
    if let Some(mut pod) = calmplane::preview::pod_from_template(object) {
        let name = object["metadata"]["name"].as_str().unwrap_or("workload");
        pod["metadata"]["name"] = json!(format!("{name}-7d9f8b6c5-x2x4q"));
        out.push(("pod", review("seed-pod", "CREATE", &pod, None)));
    }
    out
}

/// A small deterministic PRNG (no dependency for the replay test).
pub struct XorShift(u64);

impl XorShift {
    /// A generator started at `seed` (0 is replaced by 1: xorshift stays at 0).
    pub fn new(seed: u64) -> Self {
        XorShift(seed.max(1))
    }

    /// The next 64 pseudo-random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }
}

/// Values a fuzzer would try in place of any member.
fn odd_value(rng: &mut XorShift) -> Value {
    match rng.below(12) {
        0 => Value::Null,
        1 => json!([]),
        2 => json!({}),
        3 => json!(""),
        4 => json!("~1/~0"),
        5 => json!(u64::MAX),
        6 => json!(-1),
        7 => json!(1.5e300),
        8 => json!([null, 1, "x", {}]),
        9 => json!({"name": "LEASE_SELECTOR", "value": "metadata.name=x"}),
        10 => json!("metadata.name=x"),
        _ => json!(true),
    }
}

/// The JSON Pointer-free way to reach a random member: its index in a
/// pre-order walk.
fn nth_member(v: &mut Value, mut n: usize) -> Option<&mut Value> {
    fn walk<'a>(v: &'a mut Value, n: &mut usize) -> Option<&'a mut Value> {
        if *n == 0 {
            return Some(v);
        }
        *n -= 1;
        match v {
            Value::Object(m) => m.values_mut().find_map(|c| walk(c, n)),
            Value::Array(a) => a.iter_mut().find_map(|c| walk(c, n)),
            _ => None,
        }
    }
    walk(v, &mut n)
}

fn count(v: &Value) -> usize {
    1 + match v {
        Value::Object(m) => m.values().map(count).sum(),
        Value::Array(a) => a.iter().map(count).sum(),
        _ => 0,
    }
}

/// `n` variants of `seed`: structural (a member replaced by an odd value, a
/// list grown huge, an annotation with `/` and `~` added) and byte-level
/// (truncation, bit flips, spliced bytes).
pub fn variants(seed: &[u8], rng: &mut XorShift, n: usize) -> Vec<Vec<u8>> {
    let parsed: Option<Value> = serde_json::from_slice(seed).ok();
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        match (&parsed, i % 2) {
            (Some(v), 0) => {
                let mut v = v.clone();
                let total = count(&v);
                let target = rng.below(total);
                let choice = rng.below(4);
                if let Some(m) = nth_member(&mut v, target) {
                    match choice {
                        0 => *m = odd_value(rng),
                        1 => {
                            if let Value::Array(a) = m {
                                if let Some(first) = a.first().cloned() {
                                    a.resize(a.len() + 500, first);
                                }
                            } else {
                                *m = odd_value(rng);
                            }
                        }
                        2 => {
                            if let Value::Object(o) = m {
                                o.insert("calmplane.dev/a~b/c".into(), odd_value(rng));
                                o.insert(
                                    "calmplane.dev/lease-selector".into(),
                                    json!("metadata.name=p"),
                                );
                            } else {
                                *m = odd_value(rng);
                            }
                        }
                        _ => {
                            if let Value::Object(o) = m {
                                if let Some(k) = o.keys().nth(rng.below(o.len())).cloned() {
                                    o.remove(&k);
                                }
                            }
                        }
                    }
                }
                out.push(serde_json::to_vec(&v).unwrap());
            }
            _ => {
                let mut bytes = seed.to_vec();
                match rng.below(3) {
                    0 => bytes.truncate(rng.below(bytes.len() + 1)),
                    1 => {
                        for _ in 0..1 + rng.below(8) {
                            if !bytes.is_empty() {
                                let at = rng.below(bytes.len());
                                bytes[at] ^= 1 << rng.below(8);
                            }
                        }
                    }
                    _ => {
                        let at = rng.below(bytes.len() + 1);
                        let from = rng.below(bytes.len() + 1);
                        let len = rng.below(64).min(bytes.len() - from);
                        let splice: Vec<u8> = bytes[from..from + len].to_vec();
                        bytes.splice(at..at, splice);
                    }
                }
                out.push(bytes);
            }
        }
    }
    out
}
