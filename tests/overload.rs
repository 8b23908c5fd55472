//! Admission control: when requests wait for a CPU longer than
//! `--max-queue-delay`, `/mutate` answers a fast 503 with a JSON error
//! instead of adding to the line, and counts it; probes are still served.
//!
//! The CPU is taken away for real: the server process is stopped (SIGSTOP)
//! while requests arrive, as CFS throttling or a noisy neighbour would, then
//! resumed. Throughput under load is measured by `make overload`, not here.

use calmplane_testkit::harness::*;
use calmplane_testkit::process::Process;
use serde_json::json;
use std::time::{Duration, Instant};

/// The binary under test.
const CALMPLANE: &str = env!("CARGO_BIN_EXE_calmplane");

fn pod_review(uid: &str) -> Vec<u8> {
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "ns"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]}});
    serde_json::to_vec(&review(uid, "CREATE", "ns", &pod, None)).unwrap()
}

async fn metrics(process: &Process) -> String {
    let tcp = tokio::net::TcpStream::connect(process.metrics)
        .await
        .unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::get("/metrics")
        .header("host", "localhost")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    use http_body_util::BodyExt;
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_waited_past_the_queue_limit_get_a_fast_503_and_are_counted() {
    let process = Process::start(CALMPLANE.as_ref(), "json", &["--max-queue-delay", "200ms"]).await;
    let (addr, ca) = (process.addr, process.ca_pem.clone());
    let mut mutate = TlsClient::connect(addr, &ca).await;
    let mut probe = TlsClient::connect(addr, &ca).await;
    let ok = mutate
        .request("POST", "/mutate", "application/json", pod_review("before"))
        .await;
    assert_eq!(ok.status, 200, "{}", ok.text());

    // The CPU goes away for a second while a review and a probe arrive.
    process.signal("STOP");
    let queued = tokio::spawn(async move {
        let reply = mutate
            .request("POST", "/mutate", "application/json", pod_review("queued"))
            .await;
        (reply, mutate)
    });
    let probed = tokio::spawn(async move {
        let reply = probe.get("/healthz").await;
        (reply, probe)
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    process.signal("CONT");
    let (reply, mut mutate) = queued.await.unwrap();
    assert_eq!(reply.status, 503, "{}", reply.text());
    assert_eq!(reply.content_type, "application/json");
    let error = reply.json()["error"].as_str().unwrap().to_string();
    assert!(error.starts_with("overloaded"), "{error}");
    let (health, _probe) = probed.await.unwrap();
    assert_eq!(health.status, 200, "a busy pod must not fail its probes");

    // The line is gone: reviews are served again, on the same connection.
    let start = Instant::now();
    loop {
        let reply = mutate
            .request("POST", "/mutate", "application/json", pod_review("after"))
            .await;
        if reply.status == 200 {
            break;
        }
        assert_eq!(reply.status, 503);
        assert!(start.elapsed() < Duration::from_secs(1), "still shedding");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!("served again {:?} after the CPU came back", start.elapsed());
    let text = metrics(&process).await;
    assert!(
        metric(
            &text,
            r#"calmplane_overloaded_requests_total{path="mutate"}"#
        ) >= 1,
        "{text}"
    );
    assert!(
        metric(
            &text,
            r#"calmplane_admission_requests_total{kind="unknown",operation="unknown",result="overloaded"}"#
        ) >= 1,
        "{text}"
    );
}
