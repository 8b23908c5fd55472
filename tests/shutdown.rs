//! Graceful shutdown of the real binary: SIGTERM during a stream of requests.
//!
//! ```text
//! SIGTERM ─▶ /readyz 503 at once ─▶ serve for --shutdown-delay ─▶ stop accepting
//!        ─▶ drain in-flight requests (at most --drain-timeout) ─▶ exit 0
//! ```
//!
//! The clients model the apiserver: they send a steady stream until shortly
//! before the delay ends (by then, endpoints no longer list the pod), and one
//! slow request is still uploading when the listener closes; it must complete.

use calmplane_testkit::harness::*;
use calmplane_testkit::process::Process;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The binary under test, built by cargo for this test.
const CALMPLANE: &str = env!("CARGO_BIN_EXE_calmplane");
use tokio::io::AsyncWriteExt;

fn pod_review(uid: &str) -> Vec<u8> {
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "ns"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]}});
    serde_json::to_vec(&review(uid, "CREATE", "ns", &pod, None)).unwrap()
}

#[derive(Default)]
struct Tally {
    ok: usize,
    failures: Vec<String>,
}

/// Send reviews until `stop`; on a kept-alive connection, or on a new
/// connection per request. Every request must succeed.
async fn stream(addr: SocketAddr, ca: String, fresh: bool, stop: Arc<AtomicBool>) -> Tally {
    let mut tally = Tally::default();
    let mut kept: Option<TlsClient> = None;
    let mut n = 0;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        let uid = format!("{}-{n}", if fresh { "fresh" } else { "kept" });
        if fresh || kept.is_none() {
            match TlsClient::try_connect(addr, client_config(&ca)).await {
                Ok(c) => kept = Some(c),
                Err(e) => {
                    tally.failures.push(format!("{uid}: connect: {e}"));
                    continue;
                }
            }
        }
        let client = kept.as_mut().unwrap();
        match client
            .try_request("POST", "/mutate", "application/json", pod_review(&uid))
            .await
        {
            Ok(r) if r.status == 200 && r.json()["response"]["uid"] == uid.as_str() => {
                tally.ok += 1
            }
            Ok(r) => tally
                .failures
                .push(format!("{uid}: {} {}", r.status, r.text())),
            Err(e) => tally.failures.push(format!("{uid}: {e}")),
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tally
}

/// One request whose body is uploaded in `pieces` over `over`: it is still in
/// flight when the listener closes. Returns the status, or the error.
async fn slow_request(addr: SocketAddr, ca: String, over: Duration) -> Result<u16, String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(client_config(&ca))
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (mut read, mut write) = tokio::io::split(tls);
    let mut body = pod_review("slow");
    body.resize(body.len() + 2000, b' ');
    let head = format!(
        "POST /mutate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    write
        .write_all(head.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let pieces = 20;
    for chunk in body.chunks(body.len().div_ceil(pieces)) {
        tokio::time::sleep(over / pieces as u32).await;
        write.write_all(chunk).await.map_err(|e| e.to_string())?;
        write.flush().await.map_err(|e| e.to_string())?;
    }
    let mut reply = Vec::new();
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 4096];
    loop {
        match read.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => reply.extend_from_slice(&buf[..n]),
            Err(e) if !reply.is_empty() => {
                // A close without close_notify after a complete reply is fine here.
                let _ = e;
                break;
            }
            Err(e) => return Err(e.to_string()),
        }
        if reply.windows(4).any(|w| w == b"\r\n\r\n") && reply.ends_with(b"}") {
            break;
        }
    }
    let text = String::from_utf8_lossy(&reply);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no response: {text:?}"))?;
    if status == 200 {
        assert!(text.contains(r#""uid":"slow""#), "{text}");
    }
    Ok(status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_fails_readiness_keeps_serving_then_drains_and_exits_zero() {
    const DELAY: Duration = Duration::from_secs(2);
    const DRAIN: Duration = Duration::from_secs(10);
    let mut process = Process::start(
        CALMPLANE.as_ref(),
        "json",
        &["--shutdown-delay", "2s", "--drain-timeout", "10s"],
    )
    .await;
    let (addr, ca) = (process.addr, process.ca_pem.clone());

    let stop = Arc::new(AtomicBool::new(false));
    let streams: Vec<_> = [false, false, true]
        .into_iter()
        .map(|fresh| tokio::spawn(stream(addr, ca.clone(), fresh, stop.clone())))
        .collect();
    let mut probe = TlsClient::connect(addr, &ca).await;
    // An idle kept-alive connection: the server must close it when it drains,
    // not wait for the drain timeout because of it.
    let mut idle = TlsClient::connect(addr, &ca).await;
    assert_eq!(idle.get("/healthz").await.status, 200);
    assert_eq!(probe.get("/readyz").await.status, 200);
    tokio::time::sleep(Duration::from_millis(500)).await;

    process.sigterm();
    let t0 = Instant::now();
    let mut readyz_503 = None;
    while t0.elapsed() < Duration::from_secs(1) {
        if probe.get("/readyz").await.status == 503 {
            readyz_503 = Some(t0.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let readyz_503 = readyz_503.expect("/readyz did not turn 503 within 1 s of SIGTERM");
    println!("/readyz 503 after {readyz_503:?}");
    // Liveness is unaffected, and so is a new connection during the delay.
    assert_eq!(probe.get("/healthz").await.status, 200);

    // The slow request starts before the delay ends and finishes after it.
    tokio::time::sleep(DELAY.saturating_sub(Duration::from_millis(600))).await;
    let slow = tokio::spawn(slow_request(addr, ca.clone(), Duration::from_millis(1500)));
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The clients' endpoints have updated: they stop sending.
    stop.store(true, Ordering::SeqCst);

    // After the delay, new connections are refused.
    let mut refused_at = None;
    while t0.elapsed() < DELAY + Duration::from_secs(3) {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            refused_at = Some(t0.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let refused_at = refused_at.expect("still accepting connections after the shutdown delay");
    println!("listener closed {refused_at:?} after SIGTERM (delay {DELAY:?})");
    assert!(refused_at >= DELAY.saturating_sub(Duration::from_millis(50)));

    let slow = slow.await.unwrap();
    println!("in-flight slow request across the listener close: {slow:?}");
    assert_eq!(slow, Ok(200), "an accepted request failed during the drain");

    let status = process
        .wait_exit(DELAY + DRAIN + Duration::from_secs(5))
        .await;
    let exited = t0.elapsed();
    let log = process.log_text();
    let status =
        status.unwrap_or_else(|| panic!("no exit within delay + drain + 5 s; log:\n{log}"));
    println!("exited {status} {exited:?} after SIGTERM");
    assert!(status.success(), "exit status {status}; log:\n{log}");
    // Nothing was left to wait for: the exit comes soon after the slow request,
    // well before the drain timeout.
    assert!(
        exited < DELAY + Duration::from_secs(6),
        "exit took {exited:?}"
    );

    let mut total = 0;
    for s in streams {
        let tally = s.await.unwrap();
        total += tally.ok;
        assert!(
            tally.failures.is_empty(),
            "requests failed during shutdown: {:?}",
            tally.failures
        );
    }
    println!("{total} requests during the stream, none failed");
    assert!(
        total > 20,
        "the stream was too thin to prove anything: {total}"
    );
    assert!(log.contains("shutdown: /readyz now fails"), "{log}");
    assert!(log.contains("\"drained\":true"), "{log}");
    // The idle connection was closed by the server.
    assert!(idle
        .try_request("GET", "/healthz", "text/plain", Vec::new())
        .await
        .is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_longer_than_the_drain_timeout_does_not_hold_the_exit() {
    let mut process = Process::start(
        CALMPLANE.as_ref(),
        "json",
        &["--shutdown-delay", "200ms", "--drain-timeout", "1s"],
    )
    .await;
    let (addr, ca) = (process.addr, process.ca_pem.clone());
    // Uploads for 6 s: far longer than delay + drain.
    let slow = tokio::spawn(slow_request(addr, ca, Duration::from_secs(6)));
    tokio::time::sleep(Duration::from_millis(300)).await;
    process.sigterm();
    let t0 = Instant::now();
    let status = process.wait_exit(Duration::from_secs(10)).await;
    let exited = t0.elapsed();
    let log = process.log_text();
    let status = status.unwrap_or_else(|| panic!("no exit; log:\n{log}"));
    println!("exited {status} {exited:?} after SIGTERM with a request still uploading");
    assert!(status.success(), "exit status {status}; log:\n{log}");
    assert!(exited >= Duration::from_millis(1100), "{exited:?}");
    assert!(exited < Duration::from_secs(5), "{exited:?}");
    assert!(log.contains("\"drained\":false"), "{log}");
    assert!(slow.await.unwrap().is_err());
}
