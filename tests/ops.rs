//! Operational polish: structured logs from the real binary (JSON and text),
//! nothing from the object at info, bounded log lines for hostile input, and
//! the policy file reloading on change with an invalid file keeping the old
//! policy.

use calmplane_testkit::harness::*;
use calmplane_testkit::process::Process;
use serde_json::{json, Value};
use std::time::Duration;

/// The binary under test, built by cargo for this test.
const CALMPLANE: &str = env!("CARGO_BIN_EXE_calmplane");

/// Strings that appear only inside the admitted object: they must never
/// reach the log.
const MARKERS: [&str; 3] = [
    "image-marker-5c1f",
    "env-marker-9d2e",
    "annotation-marker-77ab",
];

fn marked_pod() -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web-1", "namespace": "team-a", "annotations": {"note": MARKERS[2]}},
        "spec": {"containers": [{"name": "c", "image": MARKERS[0],
            "env": [{"name": "SECRET", "value": MARKERS[1]}]}]}})
}

/// A Pod CREATE in `team-a` of [`marked_pod`].
fn marked_review(uid: &str) -> Value {
    review(uid, "CREATE", "team-a", &marked_pod(), None)
}

/// Nothing of the admitted objects reached `log`.
fn assert_no_marker(log: &str) {
    for marker in MARKERS {
        assert!(
            !log.contains(marker),
            "the object leaked into the log: {marker}\n{log}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_the_admission_fields_and_never_the_object() {
    let process = Process::start(CALMPLANE.as_ref(), "json", &["--shutdown-delay", "0s"]).await;
    let mut client = TlsClient::connect(process.addr, &process.ca_pem).await;
    let reply = client.mutate(&marked_review("uid-json-1")).await;
    assert!(decode_response(&reply).1.is_some());
    // A Deployment UPDATE and an unhandled kind log the same fields.
    let deployment = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "team-a"},
        "spec": {"template": {"spec": {"containers": [{"name": "c", "image": MARKERS[0]}]}}}});
    let old = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "team-a"},
        "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "old"}]}}}});
    client
        .mutate(&review(
            "uid-json-2",
            "UPDATE",
            "team-a",
            &deployment,
            Some(&old),
        ))
        .await;
    let config_map = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"},
        "data": {"k": MARKERS[1]}});
    client
        .mutate(&review("uid-json-3", "CREATE", "team-a", &config_map, None))
        .await;

    let line = process.wait_for_line("uid-json-1").await;
    println!("{line}");
    let entry: Value = serde_json::from_str(&line).expect("a JSON log line");
    assert_eq!(entry["level"], "INFO");
    assert_eq!(entry["message"], "admission");
    assert_eq!(entry["uid"], "uid-json-1");
    assert_eq!(entry["kind"], "Pod");
    assert_eq!(entry["namespace"], "team-a");
    assert_eq!(entry["operation"], "CREATE");
    assert_eq!(entry["result"], "mutated");
    assert_eq!(entry["policies"], "dns,prestop");
    assert!(entry["duration_us"].as_u64().is_some(), "{entry}");
    assert!(entry["timestamp"].is_string(), "{entry}");

    let line = process.wait_for_line("uid-json-2").await;
    let entry: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(
        (&entry["kind"], &entry["operation"], &entry["policies"]),
        (
            &json!("Deployment"),
            &json!("UPDATE"),
            &json!("rollout-history,rollout")
        )
    );
    let line = process.wait_for_line("uid-json-3").await;
    let entry: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(
        (&entry["kind"], &entry["result"], &entry["policies"]),
        (&json!("ConfigMap"), &json!("skipped"), &json!(""))
    );

    let log = process.log_text();
    for line in log.lines() {
        serde_json::from_str::<Value>(line)
            .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
    }
    assert_no_marker(&log);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_logs_are_one_line_per_admission() {
    let process = Process::start(CALMPLANE.as_ref(), "text", &["--shutdown-delay", "0s"]).await;
    let mut client = TlsClient::connect(process.addr, &process.ca_pem).await;
    client.mutate(&marked_review("uid-text-1")).await;
    let line = process.wait_for_line("uid-text-1").await;
    println!("{line}");
    assert!(serde_json::from_str::<Value>(&line).is_err(), "{line}");
    for field in [
        "admission",
        "uid=uid-text-1",
        "kind=Pod",
        "namespace=team-a",
        "operation=\"CREATE\"",
        "policies=dns,prestop",
        "duration_us=",
    ] {
        assert!(line.contains(field), "{field} missing: {line}");
    }
    let log = process.log_text();
    assert_no_marker(&log);
}

/// A hostile body whose error message would echo a huge value: the log line
/// (and the 400 answer) stay short.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_bodies_do_not_flood_the_log() {
    let process = Process::start(CALMPLANE.as_ref(), "json", &["--shutdown-delay", "0s"]).await;
    let mut client = TlsClient::connect(process.addr, &process.ca_pem).await;
    let huge = format!("{}{}", MARKERS[0], "x".repeat(512 * 1024));
    let bodies = [
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": "u", "kind": huge, "operation": "CREATE"}}),
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": huge}),
        json!({"apiVersion": huge, "kind": "AdmissionReview"}),
        json!({"apiVersion": "admission.k8s.io/v1", "kind": huge}),
    ];
    for body in &bodies {
        let reply = client
            .request(
                "POST",
                "/mutate",
                "application/json",
                serde_json::to_vec(body).unwrap(),
            )
            .await;
        assert_eq!(reply.status, 400, "{:.300}", reply.text());
        let error = reply.json()["error"].as_str().unwrap().to_string();
        println!("400: {} bytes: {:.120}", error.len(), error);
        assert!(error.len() < 2048, "400 body echoes {} bytes", error.len());
    }
    // A review that is valid but whose uid, kind, namespace and name are
    // hundreds of KiB long: admitted, and logged clipped.
    let long = |c: &str| c.repeat(200 * 1024);
    let mut pod = marked_pod();
    pod["metadata"]["name"] = json!(long("n"));
    let mut accepted = review(&long("u"), "CREATE", &long("s"), &pod, None);
    accepted["request"]["kind"]["kind"] = json!(long("K"));
    let reply = client.mutate(&accepted).await;
    assert_eq!(reply.status, 200, "{:.300}", reply.text());
    // Report mode logs the object's name too.
    let mut reported = review(&long("r"), "CREATE", &long("s"), &pod, None);
    reported["request"]["name"] = json!(long("n"));
    let reply = client
        .request(
            "POST",
            "/report",
            "application/json",
            serde_json::to_vec(&reported).unwrap(),
        )
        .await;
    assert_eq!(reply.status, 200, "{:.300}", reply.text());
    client
        .mutate(&review("uid-after", "CREATE", "ns", &marked_pod(), None))
        .await;
    process.wait_for_line("uid-after").await;
    let log = process.log_text();
    let longest = log.lines().map(str::len).max().unwrap_or(0);
    println!("longest log line: {longest} bytes");
    assert!(longest < 4096, "a log line of {longest} bytes");
    assert_eq!(
        log.lines()
            .filter(|l| l.contains("rejected admission request"))
            .count(),
        bodies.len()
    );
    let clipped = log
        .lines()
        .filter(|l| {
            l.contains(&format!(
                "{}... ({} more bytes)",
                "u".repeat(256),
                200 * 1024 - 256
            ))
        })
        .count();
    assert_eq!(
        clipped, 1,
        "the long uid, clipped, in one admission line:\n{log:.2000}"
    );
    assert!(
        log.contains(&format!("{}... (", "r".repeat(256))),
        "the report line"
    );
}

// ---------------------------------------------------------------- policy file reload

async fn config_reloads(server: &TestServer) -> (u64, u64) {
    let text = server.metrics().await;
    (
        metric(&text, r#"calmplane_config_reloads_total{result="success"}"#),
        metric(&text, r#"calmplane_config_reloads_total{result="error"}"#),
    )
}

/// What the current policy does to a plain pod: (preStop sleep seconds, has dnsConfig).
async fn behaviour(client: &mut TlsClient) -> (Option<i64>, bool) {
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "ns"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]}});
    let (_, patch) = decode_response(
        &client
            .mutate(&review("u", "CREATE", "ns", &pod, None))
            .await,
    );
    let patched = apply_patch(&pod, &patch.unwrap_or(json!([])));
    (
        patched["spec"]["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"].as_i64(),
        patched["spec"]["dnsConfig"].is_object(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_policy_file_reloads_and_an_invalid_one_keeps_the_old_policy() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.yaml");
    std::fs::write(&path, "prestop:\n  sleepSeconds: 5\n").unwrap();
    let server = TestServer::start_with(|opts| opts.config = Some(path.clone())).await;
    let mut client = server.client().await;
    assert_eq!(behaviour(&mut client).await, (Some(5), true));
    assert_eq!(config_reloads(&server).await, (0, 0));

    write_atomic(&path, "prestop:\n  sleepSeconds: 7\n");
    eventually("the new sleep applies", || async {
        behaviour(&mut server.client().await).await == (Some(7), true)
    })
    .await;
    assert_eq!(config_reloads(&server).await, (1, 0));

    let invalid = [
        ("out of range", "prestop:\n  sleepSeconds: 0\n"),
        ("not YAML", "prestop: [\n"),
        ("a typo", "dns:\n  ndot: 3\n"),
        ("a wrong type", "dns:\n  enabled: sometimes\n"),
    ];
    for (errors, (what, text)) in (1u64..).zip(invalid) {
        write_atomic(&path, text);
        eventually(&format!("{what} counted as an error"), || async {
            config_reloads(&server).await.1 >= errors
        })
        .await;
        assert_eq!(config_reloads(&server).await, (1, errors), "{what}");
        assert_eq!(
            behaviour(&mut client).await,
            (Some(7), true),
            "{what}: the previous policy must still apply"
        );
    }

    // A ConfigMap volume update: the file is replaced through a symlink swap.
    let real = dir.path().join("..2026_01_01");
    std::fs::create_dir(&real).unwrap();
    std::fs::write(
        real.join("policy.yaml"),
        "dns:\n  enabled: false\nprestop:\n  sleepSeconds: 9\n",
    )
    .unwrap();
    let tmp = dir.path().join("policy.yaml.tmp-link");
    std::os::unix::fs::symlink(real.join("policy.yaml"), &tmp).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    eventually("the swapped file applies", || async {
        behaviour(&mut server.client().await).await == (Some(9), false)
    })
    .await;
    assert_eq!(config_reloads(&server).await, (2, 4));

    // A file that is missing for a while keeps the policy and is not an error.
    std::fs::remove_file(&path).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(behaviour(&mut client).await, (Some(9), false));
    assert_eq!(config_reloads(&server).await, (2, 4));
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_change_between_load_and_run_is_not_missed() {
    let dir = tempfile::tempdir().unwrap();
    let generated =
        calmplane::certs::generate(&calmplane::certs::serving_names("calmplane", "calmplane"))
            .unwrap();
    calmplane::certs::write(dir.path(), &generated).unwrap();
    let path = dir.path().join("policy.yaml");
    std::fs::write(&path, "prestop:\n  sleepSeconds: 5\n").unwrap();
    let mut opts = calmplane::server::ServeOptions::default();
    opts.tls.cert = dir.path().join("tls.crt");
    opts.tls.key = dir.path().join("tls.key");
    opts.listen = ([127, 0, 0, 1], 0).into();
    opts.metrics_listen = ([127, 0, 0, 1], 0).into();
    opts.shutdown_delay = Duration::ZERO;
    opts.reload_interval = Duration::from_millis(100);
    opts.config = Some(path.clone());
    let server = opts.bind().await.unwrap();
    // Loaded with 5; the file changes before the server runs (a ConfigMap
    // update landing during start-up).
    write_atomic(&path, "prestop:\n  sleepSeconds: 8\n");
    let addr = server.local_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));
    let ca = generated.ca_pem.clone();
    eventually("the change made before run applies", || async {
        behaviour(&mut TlsClient::connect(addr, &ca).await).await == (Some(8), true)
    })
    .await;
    let _ = stop.send(());
    assert!(running.await.unwrap());
}
