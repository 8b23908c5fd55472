//! `make soak`: drive the release server over TLS for a bounded time with
//! 90% valid AdmissionReviews built from the corpus and 10% bad inputs, plus
//! a trickle of hostile connections; then check that
//!
//! * every valid request got a 200 with its own uid (zero errors),
//! * every bad input got a 4xx (never a 5xx, never a dropped connection),
//! * the server's RSS (VmRSS) grew by at most 10% between the first and the
//!   last minute,
//! * the server exits 0 on SIGTERM.
//!
//! Traffic goes to 127.0.0.1 only, and everything stops after `--seconds`.
//!
//! ```text
//! target/release/examples/soak --server target/release/calmplane --seconds 180
//! ```
//!
//! The valid reviews are the fuzz seeds (`calmplane_testkit::seeds`), built
//! from the upstream fixtures committed in `tests/fixtures/upstream`.

use bytes::Bytes;
use calmplane_testkit::harness::client_config;
use calmplane_testkit::process::Process;
use calmplane_testkit::seeds;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use rustls::pki_types::ServerName;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Fixed-width placeholder for the uid, overwritten per request.
const UID_PLACEHOLDER: &str = "soak-uid-0000000000000";

struct Args {
    server: PathBuf,
    seconds: u64,
    concurrency: usize,
}

fn args() -> Args {
    let mut a = Args {
        server: "target/release/calmplane".into(),
        seconds: 180,
        concurrency: 4,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--server" => a.server = value.into(),
            "--seconds" => a.seconds = value.parse().expect("--seconds N"),
            "--concurrency" => a.concurrency = value.parse().expect("--concurrency N"),
            _ => panic!("unknown flag {flag}"),
        }
    }
    a
}

// ---------------------------------------------------------------- inputs

/// A valid review with the uid placeholder, and where the placeholder is.
struct Valid {
    name: String,
    body: Vec<u8>,
    uid_at: usize,
}

fn valid_inputs() -> Vec<Valid> {
    let mut out = Vec::new();
    let reads = calmplane::policy::Reads::everything();
    for (name, body) in seeds::seeds().expect("read the corpus") {
        if calmplane::review::parse(&body, &reads).is_err() {
            continue;
        }
        let mut review: serde_json::Value = serde_json::from_slice(&body).unwrap();
        review["request"]["uid"] = UID_PLACEHOLDER.into();
        let body = serde_json::to_vec(&review).unwrap();
        let needle = format!("\"{UID_PLACEHOLDER}\"");
        let uid_at = body
            .windows(needle.len())
            .position(|w| w == needle.as_bytes())
            .expect("placeholder")
            + 1;
        out.push(Valid { name, body, uid_at });
    }
    out
}

/// A bad input: what it is, method, path, body, the statuses that are right.
struct Bad {
    name: &'static str,
    method: &'static str,
    path: &'static str,
    body: Bytes,
    expect: &'static [u16],
}

fn bad_inputs(valid: &[Valid]) -> Vec<Bad> {
    let sample = &valid[0].body;
    let review = |request: serde_json::Value| {
        Bytes::from(
            serde_json::to_vec(&serde_json::json!({
                "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}))
            .unwrap(),
        )
    };
    let mut garbage = Vec::with_capacity(4096);
    let mut rng = seeds::XorShift::new(42);
    for _ in 0..4096 {
        garbage.push(rng.next_u64() as u8);
    }
    vec![
        Bad { name: "empty", method: "POST", path: "/mutate", body: Bytes::new(), expect: &[400] },
        Bad { name: "array", method: "POST", path: "/mutate", body: Bytes::from_static(b"[1,2]"), expect: &[400] },
        Bad { name: "truncated", method: "POST", path: "/mutate", body: Bytes::copy_from_slice(&sample[..sample.len() / 2]), expect: &[400] },
        Bad { name: "garbage", method: "POST", path: "/mutate", body: Bytes::from(garbage), expect: &[400] },
        Bad { name: "v1beta1", method: "POST", path: "/mutate", body: Bytes::from_static(br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{"uid":"x"}}"#), expect: &[400] },
        Bad { name: "no-request", method: "POST", path: "/mutate", body: Bytes::from_static(br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#), expect: &[400] },
        Bad { name: "empty-uid", method: "POST", path: "/mutate", body: review(serde_json::json!({"uid": "", "kind": {"group": "", "version": "v1", "kind": "Pod"}, "operation": "CREATE"})), expect: &[400] },
        Bad { name: "huge-string", method: "POST", path: "/mutate", body: review(serde_json::json!({"uid": "u", "kind": "x".repeat(256 * 1024), "operation": "CREATE"})), expect: &[400] },
        Bad { name: "deep-nesting", method: "POST", path: "/mutate", body: Bytes::from(format!(r#"{{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{{"uid":"u","kind":{{"group":"","version":"v1","kind":"Pod"}},"operation":"CREATE","object":{}{}}}}}"#, "[".repeat(100_000), "]".repeat(100_000))), expect: &[400] },
        Bad { name: "oversized", method: "POST", path: "/mutate", body: Bytes::from(vec![b' '; 9 * 1024 * 1024]), expect: &[413] },
        Bad { name: "get-mutate", method: "GET", path: "/mutate", body: Bytes::new(), expect: &[405] },
        Bad { name: "unknown-path", method: "POST", path: "/nope", body: Bytes::from_static(b"{}"), expect: &[404] },
        Bad { name: "preview-garbage", method: "POST", path: "/preview", body: Bytes::from_static(b"kind: [\n"), expect: &[400] },
    ]
}

// ---------------------------------------------------------------- client

async fn connect(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> Result<SendRequest<Full<Bytes>>, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    Ok(send)
}

async fn send(
    client: &mut SendRequest<Full<Bytes>>,
    method: &str,
    path: &str,
    body: Bytes,
) -> Result<(u16, Bytes), String> {
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Full::new(body))
        .unwrap();
    client.ready().await.map_err(|e| e.to_string())?;
    let resp = client.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, body))
}

/// An oversized body, written while the answer is read: the server answers
/// 413 from the Content-Length alone and closes, so a client that only reads
/// after writing everything (hyper's) sees a write error instead of the 413.
async fn oversized(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    body: Bytes,
) -> Result<(u16, Bytes), String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (mut reader, mut writer) = tokio::io::split(tls);
    let head = format!(
        "POST /mutate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let write = tokio::spawn(async move {
        if writer.write_all(head.as_bytes()).await.is_ok() {
            let _ = writer.write_all(&body).await;
        }
    });
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    let status = loop {
        let n = reader.read(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err(format!("closed after {} bytes", reply.len()));
        }
        reply.extend_from_slice(&buf[..n]);
        if reply.windows(4).any(|w| w == b"\r\n\r\n") {
            let text = String::from_utf8_lossy(&reply);
            break text
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
        }
    };
    write.abort();
    Ok((status, Bytes::from(reply)))
}

// ---------------------------------------------------------------- tallies

#[derive(Default)]
struct Tally {
    valid_ok: AtomicU64,
    valid_errors: AtomicU64,
    bad_ok: AtomicU64,
    bad_wrong: AtomicU64,
    hostile: AtomicU64,
    hostile_wrong: AtomicU64,
    errors: Mutex<Vec<String>>,
    bad_statuses: Mutex<BTreeMap<(&'static str, u16), u64>>,
    latencies: Mutex<Vec<Duration>>,
}

impl Tally {
    fn error(&self, what: String) {
        let mut errors = self.errors.lock().unwrap();
        if errors.len() < 20 {
            errors.push(what);
        }
    }
}

struct Shared {
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    valid: Vec<Valid>,
    bad: Vec<Bad>,
    tally: Tally,
    uids: AtomicU64,
    end: Instant,
}

async fn worker(shared: Arc<Shared>, seed: u64) {
    let mut rng = seeds::XorShift::new(seed);
    let mut conn: Option<SendRequest<Full<Bytes>>> = None;
    let t = &shared.tally;
    while Instant::now() < shared.end {
        if rng.below(10) == 0 {
            // Bad input, on a connection of its own: the server may close it
            // (a 413 leaves the body unread), which must not touch the valid stream.
            let bad = &shared.bad[rng.below(shared.bad.len())];
            let result = if bad.name == "oversized" {
                oversized(shared.addr, shared.config.clone(), bad.body.clone()).await
            } else {
                match connect(shared.addr, shared.config.clone()).await {
                    Ok(mut c) => send(&mut c, bad.method, bad.path, bad.body.clone()).await,
                    Err(e) => Err(format!("connect: {e}")),
                }
            };
            match result {
                Ok((status, _)) if bad.expect.contains(&status) => {
                    t.bad_ok.fetch_add(1, Ordering::Relaxed);
                    *t.bad_statuses
                        .lock()
                        .unwrap()
                        .entry((bad.name, status))
                        .or_default() += 1;
                }
                Ok((status, body)) => {
                    t.bad_wrong.fetch_add(1, Ordering::Relaxed);
                    t.error(format!(
                        "bad input {}: {status} {}",
                        bad.name,
                        String::from_utf8_lossy(&body[..body.len().min(200)])
                    ));
                }
                Err(e) => {
                    t.bad_wrong.fetch_add(1, Ordering::Relaxed);
                    t.error(format!("bad input {}: {e}", bad.name));
                }
            }
            continue;
        }
        let valid = &shared.valid[rng.below(shared.valid.len())];
        let n = shared.uids.fetch_add(1, Ordering::Relaxed);
        let uid = format!("soak-uid-{n:013}");
        let mut body = valid.body.clone();
        body[valid.uid_at..valid.uid_at + uid.len()].copy_from_slice(uid.as_bytes());
        if conn.is_none() {
            match connect(shared.addr, shared.config.clone()).await {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    t.valid_errors.fetch_add(1, Ordering::Relaxed);
                    t.error(format!("valid {}: connect: {e}", valid.name));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            }
        }
        let start = Instant::now();
        let result = send(conn.as_mut().unwrap(), "POST", "/mutate", Bytes::from(body)).await;
        let elapsed = start.elapsed();
        let ok = match &result {
            Ok((200, body)) => serde_json::from_slice::<serde_json::Value>(body)
                .map(|r| r["response"]["uid"] == uid.as_str() && r["response"]["allowed"] == true)
                .unwrap_or(false),
            _ => false,
        };
        if ok {
            t.valid_ok.fetch_add(1, Ordering::Relaxed);
            t.latencies.lock().unwrap().push(elapsed);
        } else {
            t.valid_errors.fetch_add(1, Ordering::Relaxed);
            let what = match result {
                Ok((status, body)) => {
                    format!(
                        "{status} {}",
                        String::from_utf8_lossy(&body[..body.len().min(200)])
                    )
                }
                Err(e) => e,
            };
            t.error(format!("valid {}: {what}", valid.name));
            conn = None;
        }
    }
}

/// Hostile connections, a few a second: plaintext HTTP, a silent TCP
/// connection, a TLS handshake abandoned half-way.
async fn hostile(shared: Arc<Shared>) {
    let t = &shared.tally;
    let mut i = 0u64;
    while Instant::now() < shared.end {
        i += 1;
        let ok = match i % 3 {
            0 => {
                let mut reply = Vec::new();
                match TcpStream::connect(shared.addr).await {
                    Ok(mut tcp) => {
                        let _ = tcp
                            .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
                            .await;
                        let _ = tokio::time::timeout(
                            Duration::from_secs(5),
                            tcp.read_to_end(&mut reply),
                        )
                        .await;
                        reply.starts_with(b"HTTP/1.1 400 ")
                    }
                    Err(_) => false,
                }
            }
            1 => match TcpStream::connect(shared.addr).await {
                Ok(tcp) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    drop(tcp);
                    true
                }
                Err(_) => false,
            },
            _ => match TcpStream::connect(shared.addr).await {
                Ok(mut tcp) => {
                    // A ClientHello record header and then nothing.
                    let _ = tcp.write_all(&[0x16, 0x03, 0x01, 0x01, 0x00, 0x01]).await;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    true
                }
                Err(_) => false,
            },
        };
        t.hostile.fetch_add(1, Ordering::Relaxed);
        if !ok {
            t.hostile_wrong.fetch_add(1, Ordering::Relaxed);
            t.error(format!("hostile connection {} misbehaved", i % 3));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// ---------------------------------------------------------------- server

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1e3
}

fn main() {
    let args = args();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    std::process::exit(runtime.block_on(run(args)));
}

async fn run(args: Args) -> i32 {
    let valid = valid_inputs();
    assert!(
        !valid.is_empty(),
        "no valid reviews from {}",
        calmplane_testkit::corpus::corpus_dir().display()
    );
    let bad = bad_inputs(&valid);
    // Every admission logs a line at info: the log path is part of the soak,
    // its lines are discarded.
    let serve_args = [
        "--shutdown-delay",
        "1s",
        "--drain-timeout",
        "10s",
        "--handshake-timeout",
        "2s",
        "--header-timeout",
        "5s",
    ];
    let mut server = Process::start_logging(&args.server, "json", &serve_args, false).await;
    let pid = server.id();
    let config = client_config(&server.ca_pem);

    let total = Duration::from_secs(args.seconds);
    let window = Duration::from_secs((args.seconds / 3).clamp(1, 60));
    println!(
        "soak: {}s against pid {pid} on {} with {} valid reviews from the corpus, {} kinds of bad input, {} workers; RSS windows of {}s",
        args.seconds,
        server.addr,
        valid.len(),
        bad.len(),
        args.concurrency,
        window.as_secs()
    );
    let start = Instant::now();
    let shared = Arc::new(Shared {
        addr: server.addr,
        config,
        valid,
        bad,
        tally: Tally::default(),
        uids: AtomicU64::new(0),
        end: start + total,
    });
    let mut tasks = Vec::new();
    for i in 0..args.concurrency {
        tasks.push(tokio::spawn(worker(shared.clone(), 0x9e37_79b9 + i as u64)));
    }
    tasks.push(tokio::spawn(hostile(shared.clone())));

    // RSS once a second, progress every 10 s.
    let mut samples: Vec<(Duration, u64)> = Vec::new();
    let mut last_count = 0;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    while start.elapsed() < total {
        tick.tick().await;
        let t = start.elapsed();
        if let Some(rss) = rss_kib(pid) {
            samples.push((t, rss));
        }
        let s = t.as_secs();
        if s > 0 && s.is_multiple_of(10) && samples.last().is_some_and(|(at, _)| at.as_secs() == s)
        {
            let count = shared.tally.valid_ok.load(Ordering::Relaxed);
            println!(
                "  t={s:>4}s  valid ok {count:>8}  ({:>5}/s)  valid errors {}  bad ok {}  bad wrong {}  RSS {} KiB",
                (count - last_count) / 10,
                shared.tally.valid_errors.load(Ordering::Relaxed),
                shared.tally.bad_ok.load(Ordering::Relaxed),
                shared.tally.bad_wrong.load(Ordering::Relaxed),
                samples.last().map_or(0, |s| s.1),
            );
            last_count = count;
        }
    }
    for task in tasks {
        task.await.unwrap();
    }
    let elapsed = start.elapsed();

    // Graceful stop.
    server.sigterm();
    let stop = Instant::now();
    let exit = server.wait_exit(Duration::from_secs(20)).await;

    let t = &shared.tally;
    let (valid_ok, valid_errors) = (
        t.valid_ok.load(Ordering::Relaxed),
        t.valid_errors.load(Ordering::Relaxed),
    );
    let (bad_ok, bad_wrong) = (
        t.bad_ok.load(Ordering::Relaxed),
        t.bad_wrong.load(Ordering::Relaxed),
    );
    let mut latencies = std::mem::take(&mut *t.latencies.lock().unwrap());
    latencies.sort();
    let first: Vec<u64> = samples
        .iter()
        .filter(|(at, _)| *at <= window)
        .map(|s| s.1)
        .collect();
    let last: Vec<u64> = samples
        .iter()
        .filter(|(at, _)| *at + window >= elapsed)
        .map(|s| s.1)
        .collect();
    let (first_max, last_max) = (
        first.iter().copied().max().unwrap_or(0),
        last.iter().copied().max().unwrap_or(0),
    );
    let growth = if first_max > 0 {
        (last_max as f64 / first_max as f64 - 1.0) * 100.0
    } else {
        f64::NAN
    };

    println!("soak results after {:.0}s:", elapsed.as_secs_f64());
    println!(
        "  valid reviews: {valid_ok} ok, {valid_errors} errors ({:.0}/s)",
        valid_ok as f64 / elapsed.as_secs_f64()
    );
    println!(
        "  valid latency: p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        percentile(&latencies, 0.999),
        percentile(&latencies, 1.0)
    );
    println!("  bad inputs: {bad_ok} answered as expected, {bad_wrong} not");
    for ((name, status), n) in t.bad_statuses.lock().unwrap().iter() {
        println!("    {name:<16} {status}  x{n}");
    }
    println!(
        "  hostile connections: {} ({} misbehaved)",
        t.hostile.load(Ordering::Relaxed),
        t.hostile_wrong.load(Ordering::Relaxed)
    );
    println!(
        "  RSS first {}s: min {} max {} KiB; last {}s: min {} max {} KiB; growth {growth:+.1}% (limit +10%)",
        window.as_secs(),
        first.iter().min().unwrap_or(&0),
        first_max,
        window.as_secs(),
        last.iter().min().unwrap_or(&0),
        last_max
    );
    println!(
        "  exit after SIGTERM: {} in {:.2}s",
        exit.map_or("none (killed)".to_string(), |s| s.to_string()),
        stop.elapsed().as_secs_f64()
    );
    for e in t.errors.lock().unwrap().iter() {
        println!("  error: {e}");
    }

    let mut failed = Vec::new();
    if valid_errors > 0 {
        failed.push("valid requests failed");
    }
    if valid_ok == 0 {
        failed.push("no valid request succeeded");
    }
    if bad_wrong > 0 || t.hostile_wrong.load(Ordering::Relaxed) > 0 {
        failed.push("bad inputs were not answered with the expected 4xx");
    }
    if growth.is_nan() || growth > 10.0 {
        failed.push("RSS grew by more than 10%");
    }
    if !exit.is_some_and(|s| s.success()) {
        failed.push("the server did not exit 0 on SIGTERM");
    }
    if failed.is_empty() {
        println!("soak: PASS");
        0
    } else {
        println!("soak: FAIL: {}", failed.join("; "));
        1
    }
}
