//! Hard limits against bad clients, each with a real socket: a slowloris that
//! trickles headers, a slow body, a connection that never finishes the TLS
//! handshake, a 20 MiB body, plaintext HTTP on the TLS port and the connection
//! cap. Then all of them at once while a well-behaved client measures its
//! latency.

use calmplane_testkit::harness::*;
use serde_json::json;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(1);
const HEADER_TIMEOUT: Duration = Duration::from_secs(1);
/// Longer than the header timeout: an idle connection is not a slow one.
const IDLE_TIMEOUT: Duration = Duration::from_secs(3);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How late a timeout may fire on two busy CI cores and still pass.
const SLACK: Duration = Duration::from_secs(4);

async fn limited_server(max_connections: usize) -> TestServer {
    TestServer::start_with(|opts| {
        opts.limits.max_connections = max_connections;
        opts.limits.handshake_timeout = HANDSHAKE_TIMEOUT;
        opts.limits.header_read_timeout = HEADER_TIMEOUT;
        opts.limits.idle_timeout = IDLE_TIMEOUT;
        opts.request_timeout = REQUEST_TIMEOUT;
    })
    .await
}

async fn tls_connect(addr: SocketAddr, ca_pem: &str) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(client_config(ca_pem))
        .connect(name, tcp)
        .await
}

/// A response read off a raw stream.
#[derive(Debug)]
struct RawResponse {
    status: u16,
    head: String,
    body: Vec<u8>,
}

/// Read one HTTP/1.1 response with a Content-Length body.
async fn read_response(stream: &mut (impl AsyncRead + Unpin)) -> Result<RawResponse, String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("reading response head: {e}"))?;
        if n == 0 {
            return Err(format!(
                "closed after {} bytes of response head: {:?}",
                buf.len(),
                String::from_utf8_lossy(&buf)
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line: {head:?}"))?;
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < length {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("reading response body: {e}"))?;
        if n == 0 {
            return Err(format!(
                "closed after {} of {length} body bytes",
                body.len()
            ));
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Ok(RawResponse { status, head, body })
}

/// Wait until the peer closes: EOF or an error. Returns what was read.
async fn wait_closed(stream: &mut (impl AsyncRead + Unpin), limit: Duration) -> Option<Vec<u8>> {
    let mut seen = Vec::new();
    let mut chunk = [0u8; 4096];
    tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .ok()
    .map(|_| seen)
}

fn pod() -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "ns"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]}})
}

fn assert_within(what: &str, elapsed: Duration, limit: Duration) {
    println!("{what}: dropped after {elapsed:?} (limit {limit:?})");
    assert!(
        elapsed >= limit.saturating_sub(Duration::from_millis(100)),
        "{what}: dropped after {elapsed:?}, before the {limit:?} limit"
    );
    assert!(
        elapsed <= limit + SLACK,
        "{what}: still open after {elapsed:?}, limit {limit:?}"
    );
}

/// Trickle an endless header block one byte every 100 ms; returns how long
/// the server kept the connection open after the first header byte.
async fn slowloris(addr: SocketAddr, ca_pem: &str) -> Duration {
    let tls = tls_connect(addr, ca_pem)
        .await
        .expect("slowloris handshake");
    let (mut reader, mut writer) = tokio::io::split(tls);
    let start = Instant::now();
    let trickle = tokio::spawn(async move {
        let head = b"POST /mutate HTTP/1.1\r\nHost: localhost\r\nX-Slow: ";
        for byte in head.iter().chain(std::iter::repeat(&b'a')) {
            if writer.write_all(&[*byte]).await.is_err() || writer.flush().await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let read = wait_closed(&mut reader, HEADER_TIMEOUT + SLACK * 2).await;
    trickle.abort();
    assert!(read.is_some(), "slowloris was never dropped");
    start.elapsed()
}

/// Connect, send `prefix` (nothing, or the start of a ClientHello) and stall.
/// Returns how long the server kept the connection open.
async fn stalled_handshake(addr: SocketAddr, prefix: &[u8]) -> Duration {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let start = Instant::now();
    tcp.write_all(prefix).await.unwrap();
    let read = wait_closed(&mut tcp, HANDSHAKE_TIMEOUT + SLACK * 2).await;
    assert_eq!(
        read.as_deref(),
        Some(&b""[..]),
        "a stalled handshake must be closed without a reply"
    );
    start.elapsed()
}

/// Send a 20 MiB body while reading the answer at the same time (a client
/// that only reads after writing everything would deadlock or see a reset).
async fn oversized(addr: SocketAddr, ca_pem: &str, chunked: bool) -> (RawResponse, u64) {
    const SIZE: usize = 20 * 1024 * 1024;
    let tls = tls_connect(addr, ca_pem).await.expect("handshake");
    let (mut reader, mut writer) = tokio::io::split(tls);
    let framing = if chunked {
        "Transfer-Encoding: chunked".to_string()
    } else {
        format!("Content-Length: {SIZE}")
    };
    let head = format!(
        "POST /mutate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n{framing}\r\n\r\n"
    );
    let send = tokio::spawn(async move {
        let mut sent = 0u64;
        if writer.write_all(head.as_bytes()).await.is_err() {
            return sent;
        }
        let chunk = vec![b' '; 64 * 1024];
        for _ in 0..SIZE / chunk.len() {
            let ok = if chunked {
                let mut framed = format!("{:x}\r\n", chunk.len()).into_bytes();
                framed.extend_from_slice(&chunk);
                framed.extend_from_slice(b"\r\n");
                writer.write_all(&framed).await
            } else {
                writer.write_all(&chunk).await
            };
            if ok.is_err() {
                return sent;
            }
            sent += chunk.len() as u64;
        }
        if chunked {
            let _ = writer.write_all(b"0\r\n\r\n").await;
        }
        let _ = writer.flush().await;
        sent
    });
    let response = tokio::time::timeout(Duration::from_secs(30), read_response(&mut reader))
        .await
        .expect("no answer to a 20 MiB body within 30 s")
        .unwrap_or_else(|e| panic!("20 MiB body: {e}"));
    let sent = tokio::time::timeout(Duration::from_secs(30), send)
        .await
        .expect("writer never stopped")
        .unwrap();
    (response, sent)
}

/// Plaintext HTTP on the TLS port: the whole reply, read until the server closes.
async fn plaintext(addr: SocketAddr) -> Result<String, String> {
    let mut tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    tcp.write_all(
        b"POST /mutate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
    )
    .await
    .map_err(|e| e.to_string())?;
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut reply))
        .await
        .map_err(|_| "plaintext connection not closed within 10 s".to_string())?
        .map_err(|e| {
            format!(
                "{e} after {} bytes: {:?}",
                reply.len(),
                String::from_utf8_lossy(&reply)
            )
        })?;
    Ok(String::from_utf8_lossy(&reply).into_owned())
}

fn assert_plaintext_answer(reply: &str) {
    assert!(
        reply.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{reply:?}"
    );
    assert!(
        reply.ends_with("\r\n\r\nClient sent an HTTP request to an HTTPS server.\n"),
        "{reply:?}"
    );
}

// ---------------------------------------------------------------- one limit at a time

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_headers_are_dropped_after_the_header_timeout() {
    let server = limited_server(1024).await;
    let elapsed = slowloris(server.addr, &server.ca_pem).await;
    assert_within("slowloris", elapsed, HEADER_TIMEOUT);
    // A client that finishes the handshake and then says nothing falls under
    // the same timer, as in Go's net/http. An idle kept-alive connection after
    // its first answer does not: it waits for the (longer) idle timeout.
    let mut silent = tls_connect(server.addr, &server.ca_pem).await.unwrap();
    let start = Instant::now();
    let read = wait_closed(&mut silent, HEADER_TIMEOUT + SLACK * 2).await;
    assert_eq!(read.as_deref(), Some(&b""[..]), "{read:?}");
    assert_within(
        "silent after the handshake",
        start.elapsed(),
        HEADER_TIMEOUT,
    );
    let mut idle = tls_connect(server.addr, &server.ca_pem).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut idle).await.unwrap().status, 200);
    let start = Instant::now();
    assert!(wait_closed(&mut idle, IDLE_TIMEOUT + SLACK * 2)
        .await
        .is_some());
    assert_within("idle keep-alive", start.elapsed(), IDLE_TIMEOUT);
    let mut client = server.client().await;
    assert_eq!(client.get("/healthz").await.status, 200);
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_body_gets_408_after_the_request_timeout() {
    let server = limited_server(1024).await;
    let tls = tls_connect(server.addr, &server.ca_pem).await.unwrap();
    let (mut reader, mut writer) = tokio::io::split(tls);
    writer
        .write_all(b"POST /mutate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")
        .await
        .unwrap();
    let start = Instant::now();
    let trickle = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if writer.write_all(b" ").await.is_err() {
                return;
            }
        }
    });
    let response = tokio::time::timeout(REQUEST_TIMEOUT + SLACK, read_response(&mut reader))
        .await
        .expect("a slow body must be answered by the request timeout")
        .unwrap();
    let elapsed = start.elapsed();
    trickle.abort();
    assert_eq!(response.status, 408, "{response:?}");
    assert_within("slow body (408)", elapsed, REQUEST_TIMEOUT);
    // The same JSON error body as every other error, and counted.
    assert!(
        response
            .head
            .to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{response:?}"
    );
    let body: serde_json::Value = serde_json::from_slice(&response.body).expect("JSON body");
    let message = body["error"].as_str().expect("an error message");
    assert!(message.contains("not completed within"), "{message}");
    let errors = metric(
        &server.metrics().await,
        r#"calmplane_admission_requests_total{kind="unknown",operation="unknown",result="error"}"#,
    );
    assert_eq!(errors, 1);
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_that_never_finish_are_dropped_after_the_handshake_timeout() {
    let server = limited_server(1024).await;
    let silent = stalled_handshake(server.addr, b"").await;
    assert_within("silent connection", silent, HANDSHAKE_TIMEOUT);
    // A TLS record header announcing a ClientHello that never comes.
    let partial = stalled_handshake(server.addr, &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).await;
    assert_within("half a ClientHello", partial, HANDSHAKE_TIMEOUT);
    let mut client = server.client().await;
    assert_eq!(client.get("/healthz").await.status, 200);
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_20_mib_body_gets_413_with_a_json_error() {
    let server = limited_server(1024).await;
    for chunked in [false, true] {
        let (response, sent) = oversized(server.addr, &server.ca_pem, chunked).await;
        println!(
            "20 MiB body ({}): {} after the client had written {:.1} MiB",
            if chunked { "chunked" } else { "content-length" },
            response.status,
            sent as f64 / 1048576.0
        );
        assert_eq!(response.status, 413, "{response:?}");
        assert!(
            response
                .head
                .to_ascii_lowercase()
                .contains("content-type: application/json"),
            "{}",
            response.head
        );
        let body: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
        assert_eq!(
            body["error"],
            format!(
                "request body is larger than {} bytes",
                calmplane::budget::MAX_REVIEW_BODY
            )
        );
    }
    // An announced size over the cap is refused from the header alone: the
    // answer comes although not one byte of the body is sent (reading the
    // body first would wait for the request timeout and answer 408).
    let mut tls = tls_connect(server.addr, &server.ca_pem).await.unwrap();
    tls.write_all(
        b"POST /mutate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 20971520\r\n\r\n",
    )
    .await
    .unwrap();
    let start = Instant::now();
    let response = tokio::time::timeout(REQUEST_TIMEOUT, read_response(&mut tls))
        .await
        .expect("no answer before the body: the server waited to read it")
        .unwrap();
    println!(
        "20 MiB announced, nothing sent: {} after {:?}",
        response.status,
        start.elapsed()
    );
    assert_eq!(response.status, 413);

    // The server is fine afterwards.
    let mut client = server.client().await;
    let (_, patch) = decode_response(
        &client
            .mutate(&review("u", "CREATE", "ns", &pod(), None))
            .await,
    );
    assert!(patch.is_some());
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_http_gets_a_400_and_is_closed() {
    let server = limited_server(1024).await;
    for _ in 0..50 {
        let reply = plaintext(server.addr).await.expect("plaintext reply");
        assert_plaintext_answer(&reply);
    }
    let mut client = server.client().await;
    assert_eq!(client.get("/healthz").await.status, 200);
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_cap_closes_new_connections_and_frees_slots() {
    const CAP: usize = 4;
    let server = TestServer::start_with(|opts| {
        opts.limits.max_connections = CAP;
        opts.limits.header_read_timeout = Duration::from_secs(60);
    })
    .await;
    let mut clients = Vec::new();
    for _ in 0..CAP {
        let mut c = server.client().await;
        assert_eq!(c.get("/healthz").await.status, 200);
        clients.push(c);
    }
    // Over the cap: closed at once, before the handshake.
    for _ in 0..3 {
        let start = Instant::now();
        let refused = tls_connect(server.addr, &server.ca_pem).await;
        let err = refused.expect_err("a connection over the cap completed its handshake");
        println!("over the cap: {err} after {:?}", start.elapsed());
        assert!(start.elapsed() < Duration::from_secs(2));
    }
    // The connections inside the cap are unaffected.
    for c in &mut clients {
        assert_eq!(c.get("/healthz").await.status, 200);
    }
    // Closing one frees its slot.
    clients.pop();
    let start = Instant::now();
    loop {
        if let Ok(mut tls) = tls_connect(server.addr, &server.ca_pem).await {
            tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
                .await
                .unwrap();
            if let Ok(r) = read_response(&mut tls).await {
                assert_eq!(r.status, 200);
                break;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "a freed slot was never reused"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("slot reused {:?} after a client left", start.elapsed());
    drop(clients);
    assert!(server.stop().await);
}

// ---------------------------------------------------------------- all at once

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

fn summary(label: &str, samples: &mut [Duration]) -> (Duration, Duration, Duration) {
    samples.sort();
    let (p50, p99, max) = (
        percentile(samples, 0.5),
        percentile(samples, 0.99),
        *samples.last().unwrap(),
    );
    println!(
        "{label}: {} requests, p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        samples.len(),
        p50.as_secs_f64() * 1e3,
        percentile(samples, 0.9).as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3
    );
    (p50, p99, max)
}

/// Time `/mutate` round trips on one kept-alive connection until `until`.
async fn measure(client: &mut TlsClient, until: Instant) -> Vec<Duration> {
    let body = serde_json::to_vec(&review("good", "CREATE", "ns", &pod(), None)).unwrap();
    let mut samples = Vec::new();
    while Instant::now() < until || samples.len() < 50 {
        let start = Instant::now();
        let reply = client
            .try_request("POST", "/mutate", "application/json", body.clone())
            .await
            .expect("the well-behaved client's request failed");
        samples.push(start.elapsed());
        assert_eq!(reply.status, 200, "{}", reply.text());
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    samples
}

/// Every attack at once, from `attack_for`, on a runtime of its own (one
/// thread), so that the attackers' own work (encrypting 20 MiB bodies in a
/// debug build) competes with the server as another process would, through
/// the OS scheduler, and not inside the server's runtime.
fn attack(addr: SocketAddr, ca: String, attack_for: Duration) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let attack_end = Instant::now() + attack_for;
            let mut attacks = tokio::task::JoinSet::new();
            for _ in 0..20 {
                let ca = ca.clone();
                attacks.spawn(async move {
                    assert_within("slowloris", slowloris(addr, &ca).await, HEADER_TIMEOUT);
                });
                attacks.spawn(async move {
                    assert_within(
                        "stalled handshake",
                        stalled_handshake(addr, &[0x16, 0x03, 0x01]).await,
                        HANDSHAKE_TIMEOUT,
                    );
                });
            }
            for chunked in [false, true] {
                let ca = ca.clone();
                attacks.spawn(async move {
                    let mut n = 0;
                    while Instant::now() < attack_end {
                        let (response, _) = oversized(addr, &ca, chunked).await;
                        assert_eq!(response.status, 413);
                        n += 1;
                    }
                    println!("20 MiB bodies (chunked: {chunked}): {n} sent, each got 413");
                });
            }
            attacks.spawn(async move {
                let mut n = 0;
                while Instant::now() < attack_end {
                    assert_plaintext_answer(&plaintext(addr).await.expect("plaintext"));
                    n += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                println!("plaintext requests: {n}, each got the 400");
            });
            while let Some(result) = attacks.join_next().await {
                result.expect("attack task");
            }
        });
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_well_behaved_client_stays_fast_while_every_attack_runs() {
    let server = limited_server(1024).await;
    let mut good = server.client().await;
    let mut baseline = measure(&mut good, Instant::now() + Duration::from_secs(1)).await;

    let attack_for = Duration::from_secs(4);
    let attackers = attack(server.addr, server.ca_pem.clone(), attack_for);
    let mut under_attack = measure(&mut good, Instant::now() + attack_for).await;
    tokio::task::spawn_blocking(move || attackers.join())
        .await
        .unwrap()
        .expect("an attack's expectation failed");

    let (base_p50, _, _) = summary("baseline", &mut baseline);
    let (p50, p99, max) = summary("under attack", &mut under_attack);
    // The goal is under 10 ms. The bounds below leave room for a debug build
    // on two CI cores that also run the attackers and the other tests.
    assert!(
        base_p50 < Duration::from_millis(10),
        "baseline p50 {base_p50:?}"
    );
    assert!(p50 < Duration::from_millis(25), "p50 under attack {p50:?}");
    assert!(p99 < Duration::from_millis(250), "p99 under attack {p99:?}");
    assert!(max < Duration::from_secs(1), "max under attack {max:?}");
    assert!(server.stop().await);
}

// ------------------------------------------------ the plaintext admin port

/// Send `bytes` to the admin port and read what comes back until the
/// server closes (or `limit` passes): the answer and how long it took.
async fn admin_exchange(addr: SocketAddr, bytes: &[u8], limit: Duration) -> (String, Duration) {
    let start = Instant::now();
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(bytes).await.unwrap();
    let seen = wait_closed(&mut tcp, limit).await.unwrap_or_else(|| {
        panic!(
            "still open after {limit:?}: {:?}",
            String::from_utf8_lossy(bytes)
        )
    });
    (String::from_utf8_lossy(&seen).into_owned(), start.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_port_has_the_limits_of_the_tls_port() {
    let server = limited_server(16).await;
    let admin = server.metrics_addr.unwrap();
    // Half a request line is dropped after the header timeout, as on the TLS
    // port (it used to stay open for good).
    let (answer, took) = admin_exchange(admin, b"GET /metr", HEADER_TIMEOUT + SLACK * 2).await;
    assert!(answer.is_empty(), "{answer}");
    assert_within("half a request line", took, HEADER_TIMEOUT);
    // A request head past the cap is refused with 431.
    let mut huge = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Pad: ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 64 * 1024));
    huge.extend_from_slice(b"\r\n\r\n");
    let (answer, _) = admin_exchange(admin, &huge, SLACK).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    // Its routes read no body: one sent is refused before it is read.
    let (answer, _) = admin_exchange(
        admin,
        b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 1048576\r\nConnection: close\r\n\r\n",
        SLACK,
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    // The probes answer there too, for probes that cannot present a client
    // certificate.
    for path in ["/healthz", "/readyz", "/metrics"] {
        let (status, body) = server.metrics_get(path).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    // Its connections are capped: 64 held, the next is closed once no slot
    // frees within a moment, and a freed slot is served.
    let mut held = Vec::new();
    for _ in 0..calmplane::budget::ADMIN_MAX_CONNECTIONS {
        let mut tcp = TcpStream::connect(admin).await.unwrap();
        tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let answer = read_response(&mut tcp).await.unwrap();
        assert_eq!(answer.status, 200);
        held.push(tcp);
    }
    let (answer, took) =
        admin_exchange(admin, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", SLACK).await;
    assert!(answer.is_empty(), "over the cap: {answer}");
    assert!(took < SLACK, "refused after {took:?}");
    held.pop();
    assert_eq!(server.metrics_get("/healthz").await.0, 200);
    drop(held);
    assert!(server.stop().await);
}
