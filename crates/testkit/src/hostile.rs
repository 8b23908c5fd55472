//! Hostile clients against a running `calmplane serve`, with the probes a
//! cluster would run meanwhile and the server's memory sampled from `/proc`.
//!
//! ```text
//!  attack (one of Attack)  ──▶ TLS port, admin port          for `duration`
//!  kubelet-like probe      ──▶ GET /healthz, a new TLS connection every 200 ms (2 s timeout)
//!  Prometheus-like scrape  ──▶ GET /metrics on the admin port every 500 ms (2 s timeout)
//!  apiserver-like client   ──▶ POST /mutate of a typical Pod, kept alive, every 100 ms (2 s timeout)
//!  /proc/PID/status        ──▶ VmRSS every 10 ms, and VmHWM (reset before each attack)
//! ```
//!
//! `tests/hostile.rs` runs every attack against the release binary and holds
//! it to the container's memory limit and the probes' timeouts;
//! `cargo run --release --example hostile -- BIN` prints the same table for
//! any binary, to compare two builds.

use crate::harness::{client_config, review};
use crate::process::Process;
use bytes::Bytes;
use serde_json::json;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const MIB: usize = 1024 * 1024;

/// What a kubelet allows a probe (`timeoutSeconds: 2` in the manifests).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// What the apiserver allows calmplane (`timeoutSeconds: 2` in the webhook).
pub const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(2);

/// One kind of abuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attack {
    /// Many concurrent reviews of the largest size the server accepts,
    /// sent whole, again and again.
    BigBodies,
    /// Bodies that are small as text and large as a tree, or large where the
    /// policies read: a lease selector of megabytes, millions of empty
    /// `args`, a `metadata` of nested empty lists, unread environment
    /// variables, a preview of `[{}, ...]`.
    ExpandingBodies,
    /// Connections that send a long, unfinished header line and stall, on
    /// the TLS port and the admin port.
    SlowHeaders,
    /// `/preview` bodies built to be slow: thousands of octal-looking lines
    /// that all appear as strings, aliases, long lists; at the preview cap
    /// and at four times it.
    WorstPreview,
    /// Connections opened and dropped as fast as possible, and idle TCP
    /// connections that never start TLS, on both ports.
    ConnectionFlood,
    /// All of the above at once, each at a smaller scale so that the held
    /// connections stay under the TLS port's cap.
    Everything,
}

impl Attack {
    /// Every attack, in the order the suite runs them.
    pub const ALL: [Attack; 6] = [
        Attack::BigBodies,
        Attack::ExpandingBodies,
        Attack::SlowHeaders,
        Attack::WorstPreview,
        Attack::ConnectionFlood,
        Attack::Everything,
    ];

    /// A short name for the report.
    pub fn name(self) -> &'static str {
        match self {
            Attack::BigBodies => "big bodies",
            Attack::ExpandingBodies => "expanding bodies",
            Attack::SlowHeaders => "slow headers",
            Attack::WorstPreview => "worst preview",
            Attack::ConnectionFlood => "connection flood",
            Attack::Everything => "everything at once",
        }
    }

    /// Whether the attack opens connections to the admin port, whose 64
    /// slots Prometheus shares, first come first served, with anyone who
    /// can reach the port: a scrape may then queue behind the attackers'
    /// connections, or be refused when no slot frees within 250 ms.
    pub fn reaches_the_admin_port(self) -> bool {
        matches!(
            self,
            Attack::SlowHeaders | Attack::ConnectionFlood | Attack::Everything
        )
    }
}

/// The server under attack.
#[derive(Clone)]
pub struct Target {
    /// The TLS port.
    pub tls: SocketAddr,
    /// The plaintext admin (metrics) port.
    pub admin: SocketAddr,
    /// The CA that signed the serving certificate.
    pub ca_pem: String,
    /// The server's process id, for `/proc`.
    pub pid: u32,
}

impl Target {
    /// The target of a [`Process`].
    pub fn of(process: &Process) -> Target {
        Target {
            tls: process.addr,
            admin: process.metrics,
            ca_pem: process.ca_pem.clone(),
            pid: process.id(),
        }
    }
}

/// What one attack did to the server and to its well-behaved clients.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The attack.
    pub attack: Attack,
    /// The largest resident set seen during the attack (VmHWM, reset before
    /// it, or the largest VmRSS sample where the reset is not allowed), in bytes.
    pub peak_rss: u64,
    /// The slowest `/healthz` over a new TLS connection, failures aside.
    pub healthz_worst: Duration,
    /// `/healthz` probes that failed or took longer than [`PROBE_TIMEOUT`].
    pub healthz_failures: usize,
    /// `/healthz` probes sent.
    pub healthz_probes: usize,
    /// The slowest scrape of the admin port, failures aside.
    pub scrape_worst: Duration,
    /// Scrapes that failed or took longer than [`PROBE_TIMEOUT`].
    pub scrape_failures: usize,
    /// Scrapes sent.
    pub scrape_probes: usize,
    /// The slowest answer to the well-behaved `/mutate` client.
    pub mutate_worst: Duration,
    /// Its answers by status; `0` for no answer within [`WEBHOOK_TIMEOUT`]
    /// or a broken connection.
    pub mutate_statuses: BTreeMap<u16, usize>,
    /// What the attackers' requests were answered, by status (`0`: closed
    /// or timed out without an answer).
    pub attack_statuses: BTreeMap<u16, usize>,
}

impl Outcome {
    /// One line of the report table.
    pub fn row(&self) -> String {
        format!(
            "| {:<18} | {:>6.1} MiB | {:>7.1} ms ({}/{} failed) | {:>7.1} ms ({}/{} failed) | {:>7.1} ms {:?} | {:?} |",
            self.attack.name(),
            self.peak_rss as f64 / MIB as f64,
            self.healthz_worst.as_secs_f64() * 1e3,
            self.healthz_failures,
            self.healthz_probes,
            self.scrape_worst.as_secs_f64() * 1e3,
            self.scrape_failures,
            self.scrape_probes,
            self.mutate_worst.as_secs_f64() * 1e3,
            self.mutate_statuses,
            self.attack_statuses,
        )
    }

    /// The header of [`Outcome::row`]'s table.
    pub fn header() -> &'static str {
        "| attack             | peak RSS   | worst /healthz (TLS, new conn) | worst scrape (admin) | well-behaved /mutate: worst, statuses | attackers' answers |\n|---|---|---|---|---|---|"
    }
}

/// Statuses counted from many tasks.
#[derive(Default, Clone)]
struct Tally(Arc<Mutex<BTreeMap<u16, usize>>>);

impl Tally {
    fn add(&self, status: u16) {
        *self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(status)
            .or_default() += 1;
    }

    fn take(&self) -> BTreeMap<u16, usize> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// The largest RSS sampled, and the reset of the kernel's high-water mark.
struct Memory {
    pid: u32,
    peak_kib: Arc<AtomicU64>,
}

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

impl Memory {
    fn start(pid: u32, stop: Arc<AtomicBool>) -> Memory {
        // The high-water mark since this attack began (Linux >= 4.0).
        let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
        let peak_kib = Arc::new(AtomicU64::new(0));
        let peak = peak_kib.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Some(rss) = status_kib(pid, "VmRSS:") {
                    peak.fetch_max(rss, Ordering::Relaxed);
                }
                // A sampler thread of the test, not a runtime worker.
                #[allow(clippy::disallowed_methods)]
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        Memory { pid, peak_kib }
    }

    fn peak_bytes(&self) -> u64 {
        let sampled = self.peak_kib.load(Ordering::Relaxed);
        let hwm = status_kib(self.pid, "VmHWM:").unwrap_or(0);
        sampled.max(hwm) * 1024
    }
}

/// A typical Pod review, as the apiserver sends it.
fn typical_review() -> Bytes {
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web-0", "namespace": "shop", "labels": {"app": "web"},
                     "annotations": {"calmplane.dev/lease-selector": "metadata.name=web-0"}},
        "spec": {"containers": [{"name": "web", "image": "nginx:1.27",
                                 "env": [{"name": "LEASE_SELECTOR", "value": "metadata.name=web-0"}],
                                 "ports": [{"containerPort": 80}]}]}
    });
    Bytes::from(serde_json::to_vec(&review("hostile", "CREATE", "shop", &pod, None)).expect("JSON"))
}

/// A Pod review of about `size` bytes, large the way real objects are: one
/// large annotation that no policy reads (as `last-applied-configuration` is).
fn big_review(size: usize) -> Bytes {
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "big", "namespace": "shop",
                     "annotations": {"example.com/blob": "x".repeat(size)}},
        "spec": {"containers": [{"name": "c", "image": "i"}]}
    });
    Bytes::from(serde_json::to_vec(&review("hostile", "CREATE", "shop", &pod, None)).expect("JSON"))
}

/// Reviews that expand when parsed, each about `size` bytes of text.
fn expanding_reviews(size: usize) -> Vec<Bytes> {
    let review_of = |spec_or_meta: serde_json::Value| {
        let text = serde_json::to_vec(&review("hostile", "CREATE", "shop", &spec_or_meta, None))
            .expect("JSON");
        Bytes::from(text)
    };
    let args = vec![""; size / 3];
    let nested = vec![json!([]); size / 3];
    let env = vec![json!(1); size / 2];
    vec![
        review_of(
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a"},
                         "spec": {"containers": [{"name": "c", "args": args}]}}),
        ),
        review_of(json!({"apiVersion": "v1", "kind": "Pod", "metadata": nested})),
        review_of(
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "e"},
                         "spec": {"containers": [{"name": "c", "env": env}]}}),
        ),
    ]
}

/// A JSON preview body that expands: `[{}, {}, ...]`.
fn expanding_preview(size: usize) -> Bytes {
    let mut body = String::with_capacity(size + 2);
    body.push('[');
    while body.len() + 4 < size {
        body.push_str("{},");
    }
    body.push_str("{}]");
    Bytes::from(body)
}

/// YAML previews built to be slow or large, each about `size` bytes.
pub fn worst_previews(size: usize) -> Vec<Bytes> {
    // Many strings, and as many comment lines that look like octal values
    // but match none of them: the old check walked every string once per
    // such line.
    let mut octal = String::from("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: o}\ndata:\n");
    let mut i = 0;
    while octal.len() < size / 2 {
        octal.push_str(&format!("  k{i}: v{i}\n"));
        i += 1;
    }
    while octal.len() < size {
        octal.push_str(&format!("# x: 0{:o}\n", i % 4096 + 1));
        i += 1;
    }
    // Aliases of an anchored list, within the parser's alias budget.
    let mut aliases =
        String::from("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\ndata:\n  base: &b [");
    aliases.push_str(&vec!["x"; 500].join(", "));
    aliases.push_str("]\n  more:\n");
    while aliases.len() < size {
        aliases.push_str("  - *b\n");
    }
    // A long list of tiny items.
    let mut list = String::from("apiVersion: v1\nkind: List\nitems:\n");
    while list.len() < size {
        list.push_str("- {}\n");
    }
    vec![Bytes::from(octal), Bytes::from(aliases), Bytes::from(list)]
}

/// Send one request over a new TLS connection and read the status; `0` when
/// there is no answer within `limit`.
async fn one_request(
    target: &Target,
    path: &str,
    content_type: &str,
    body: &Bytes,
    limit: Duration,
) -> u16 {
    let exchange = async {
        let tcp = TcpStream::connect(target.tls).await.ok()?;
        let _ = tcp.set_nodelay(true);
        let connector = tokio_rustls::TlsConnector::from(client_config(&target.ca_pem));
        let name = rustls::pki_types::ServerName::try_from("localhost").ok()?;
        let mut tls = connector.connect(name, tcp).await.ok()?;
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        tls.write_all(head.as_bytes()).await.ok()?;
        // The server may answer (413, 503) before the body is all sent.
        let _ = tls.write_all(body).await;
        let mut answer = Vec::new();
        let mut chunk = [0u8; 4096];
        while answer.len() < 64 {
            match tls.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&chunk[..n]),
            }
        }
        std::str::from_utf8(answer.get(9..12)?).ok()?.parse().ok()
    };
    tokio::time::timeout(limit, exchange)
        .await
        .ok()
        .flatten()
        .unwrap_or(0)
}

/// Repeat `body` to `path` from `clients` tasks until `until`.
fn send_loop(
    target: &Target,
    path: &'static str,
    content_type: &'static str,
    bodies: Vec<Bytes>,
    clients: usize,
    until: Instant,
    tally: &Tally,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..clients)
        .map(|i| {
            let (target, bodies, tally) = (target.clone(), bodies.clone(), tally.clone());
            tokio::spawn(async move {
                let mut n = i;
                while Instant::now() < until {
                    let body = &bodies[n % bodies.len()];
                    n += 1;
                    tally.add(
                        one_request(&target, path, content_type, body, Duration::from_secs(15))
                            .await,
                    );
                }
            })
        })
        .collect()
}

/// Hold `count` connections that each send `prefix` then a long header line
/// and stall; reconnect when closed, until `until`.
fn slow_headers(
    target: &Target,
    tls: bool,
    count: usize,
    until: Instant,
    tally: &Tally,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..count)
        .map(|_| {
            let (target, tally) = (target.clone(), tally.clone());
            tokio::spawn(async move {
                // Longer than any header cap, shorter than hyper's default buffer.
                let mut line = b"POST /mutate HTTP/1.1\r\nHost: localhost\r\nX-Pad: ".to_vec();
                line.extend(std::iter::repeat_n(b'a', 300 * 1024));
                while Instant::now() < until {
                    let held = async {
                        let tcp = TcpStream::connect(if tls { target.tls } else { target.admin })
                            .await
                            .ok()?;
                        let mut stream: Box<dyn Stream> = if tls {
                            let connector =
                                tokio_rustls::TlsConnector::from(client_config(&target.ca_pem));
                            let name = rustls::pki_types::ServerName::try_from("localhost").ok()?;
                            Box::new(connector.connect(name, tcp).await.ok()?)
                        } else {
                            Box::new(tcp)
                        };
                        let _ = stream.write_all(&line).await;
                        let _ = stream.flush().await;
                        // Stall until the server gives up on us.
                        let mut sink = [0u8; 1024];
                        let mut answer = Vec::new();
                        loop {
                            match stream.read(&mut sink).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => answer.extend_from_slice(&sink[..n.min(64)]),
                            }
                        }
                        Some(
                            std::str::from_utf8(answer.get(9..12)?)
                                .ok()?
                                .parse()
                                .unwrap_or(0),
                        )
                    };
                    let left = until.saturating_duration_since(Instant::now());
                    match tokio::time::timeout(left, held).await {
                        Ok(status) => tally.add(status.unwrap_or(0)),
                        Err(_) => break,
                    }
                }
            })
        })
        .collect()
}

/// A stream a slow-header attacker writes to: TLS or plain TCP.
trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}

/// Open and drop connections as fast as possible from `clients` tasks, and
/// hold `idle` TCP connections that never send a byte, until `until`.
fn flood(
    target: &Target,
    clients: usize,
    idle: usize,
    until: Instant,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    for i in 0..clients {
        let addr = if i % 2 == 0 { target.tls } else { target.admin };
        tasks.push(tokio::spawn(async move {
            while Instant::now() < until {
                if let Ok(tcp) = TcpStream::connect(addr).await {
                    drop(tcp);
                } else {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }));
    }
    for i in 0..idle {
        let addr = if i % 8 == 0 { target.admin } else { target.tls };
        tasks.push(tokio::spawn(async move {
            while Instant::now() < until {
                let Ok(mut tcp) = TcpStream::connect(addr).await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let mut sink = [0u8; 64];
                let left = until.saturating_duration_since(Instant::now());
                if tokio::time::timeout(left, tcp.read(&mut sink))
                    .await
                    .is_err()
                {
                    break;
                }
            }
        }));
    }
    tasks
}

/// The bodies the attacks send, built before an attack starts: building
/// them takes seconds in a debug build, time the attack must not lose.
struct Payloads {
    big: Vec<Bytes>,
    expanding: Vec<Bytes>,
    expanding_preview: Vec<Bytes>,
    previews: Vec<Bytes>,
}

impl Payloads {
    fn new() -> Payloads {
        let mut previews = worst_previews(512 * 1024);
        previews.extend(worst_previews(2 * MIB));
        Payloads {
            big: vec![big_review(6 * MIB)],
            expanding: expanding_reviews(6 * MIB),
            expanding_preview: vec![expanding_preview(512 * 1024)],
            previews,
        }
    }
}

/// Start the attackers of `attack` until `until`, tallying their answers.
fn launch(
    attack: Attack,
    target: &Target,
    payloads: &Payloads,
    until: Instant,
    tally: &Tally,
) -> Vec<tokio::task::JoinHandle<()>> {
    let json = "application/json";
    let yaml = "application/yaml";
    let big = || payloads.big.clone();
    let previews = || payloads.previews.clone();
    match attack {
        Attack::BigBodies => send_loop(target, "/mutate", json, big(), 24, until, tally),
        Attack::ExpandingBodies => {
            let mut tasks = send_loop(
                target,
                "/mutate",
                json,
                payloads.expanding.clone(),
                6,
                until,
                tally,
            );
            tasks.extend(send_loop(
                target,
                "/preview",
                json,
                payloads.expanding_preview.clone(),
                2,
                until,
                tally,
            ));
            tasks
        }
        Attack::SlowHeaders => {
            let mut tasks = slow_headers(target, true, 400, until, tally);
            tasks.extend(slow_headers(target, false, 300, until, tally));
            tasks
        }
        Attack::WorstPreview => send_loop(target, "/preview", yaml, previews(), 4, until, tally),
        Attack::ConnectionFlood => flood(target, 4, 300, until),
        Attack::Everything => {
            let mut tasks = send_loop(target, "/mutate", json, big(), 8, until, tally);
            tasks.extend(send_loop(
                target,
                "/mutate",
                json,
                payloads.expanding.clone(),
                3,
                until,
                tally,
            ));
            tasks.extend(slow_headers(target, true, 150, until, tally));
            tasks.extend(slow_headers(target, false, 100, until, tally));
            tasks.extend(send_loop(
                target,
                "/preview",
                yaml,
                previews(),
                2,
                until,
                tally,
            ));
            tasks.extend(flood(target, 2, 150, until));
            tasks
        }
    }
}

/// Probe `/healthz` over new TLS connections until `until`: (worst latency,
/// failures, probes).
async fn probe_healthz(target: Target, until: Instant) -> (Duration, usize, usize) {
    let (mut worst, mut failures, mut probes) = (Duration::ZERO, 0, 0);
    let config = client_config(&target.ca_pem);
    while Instant::now() < until {
        let start = Instant::now();
        let ok = tokio::time::timeout(PROBE_TIMEOUT, async {
            let mut c = crate::harness::TlsClient::try_connect(target.tls, config.clone())
                .await
                .ok()?;
            let r = c
                .try_request("GET", "/healthz", "text/plain", Vec::new())
                .await
                .ok()?;
            (r.status == 200).then_some(())
        })
        .await;
        probes += 1;
        match ok {
            Ok(Some(())) => worst = worst.max(start.elapsed()),
            _ => failures += 1,
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    (worst, failures, probes)
}

/// Scrape `/metrics` on the admin port over new connections until `until`.
async fn probe_scrape(target: Target, until: Instant) -> (Duration, usize, usize) {
    let (mut worst, mut failures, mut probes) = (Duration::ZERO, 0, 0);
    while Instant::now() < until {
        probes += 1;
        let start = Instant::now();
        let ok = tokio::time::timeout(PROBE_TIMEOUT, async {
            let mut tcp = TcpStream::connect(target.admin).await.ok()?;
            tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .await
                .ok()?;
            let mut answer = Vec::new();
            tcp.read_to_end(&mut answer).await.ok()?;
            answer.starts_with(b"HTTP/1.1 200").then_some(())
        })
        .await;
        match ok {
            Ok(Some(())) => worst = worst.max(start.elapsed()),
            _ => failures += 1,
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    (worst, failures, probes)
}

/// A kept-alive `/mutate` client, as the apiserver is, until `until`.
async fn probe_mutate(target: Target, until: Instant) -> (Duration, BTreeMap<u16, usize>) {
    let body = typical_review();
    let config = client_config(&target.ca_pem);
    let mut worst = Duration::ZERO;
    let mut statuses = BTreeMap::new();
    let mut client = None;
    while Instant::now() < until {
        let start = Instant::now();
        let status = tokio::time::timeout(WEBHOOK_TIMEOUT, async {
            if client.is_none() {
                client = crate::harness::TlsClient::try_connect(target.tls, config.clone())
                    .await
                    .ok();
            }
            let c = client.as_mut()?;
            match c
                .try_request("POST", "/mutate", "application/json", body.clone())
                .await
            {
                Ok(r) => Some(r.status),
                Err(_) => {
                    client = None;
                    None
                }
            }
        })
        .await
        .ok()
        .flatten();
        let status = status.unwrap_or_else(|| {
            client = None;
            0
        });
        *statuses.entry(status).or_insert(0) += 1;
        if status != 0 {
            worst = worst.max(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (worst, statuses)
}

/// What the probes saw.
type Probes = (
    (Duration, usize, usize),
    (Duration, usize, usize),
    (Duration, BTreeMap<u16, usize>),
);

/// Run `attack` against `target` for `duration`, with the probes running.
/// The probes run on a runtime and a thread of their own: on the caller's,
/// the attackers would delay them, and the delay would be counted against
/// the server.
pub async fn run(target: &Target, attack: Attack, duration: Duration) -> Outcome {
    let stop = Arc::new(AtomicBool::new(false));
    let payloads = Payloads::new();
    let memory = Memory::start(target.pid, stop.clone());
    let until = Instant::now() + duration;
    let tally = Tally::default();
    let attackers = launch(attack, target, &payloads, until, &tally);
    let probes = {
        let target = target.clone();
        std::thread::spawn(move || -> Probes {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("probe runtime");
            runtime.block_on(async {
                tokio::join!(
                    probe_healthz(target.clone(), until),
                    probe_scrape(target.clone(), until),
                    probe_mutate(target, until),
                )
            })
        })
    };
    let probes = tokio::task::spawn_blocking(move || probes.join().expect("probe thread"));
    let (
        (healthz_worst, healthz_failures, healthz_probes),
        (scrape_worst, scrape_failures, scrape_probes),
        (mutate_worst, mutate_statuses),
    ) = probes.await.expect("probe thread");
    // Requests in flight at the end finish within their timeouts.
    for task in attackers {
        let _ = tokio::time::timeout(Duration::from_secs(20), task).await;
    }
    let peak_rss = memory.peak_bytes();
    stop.store(true, Ordering::Relaxed);
    Outcome {
        attack,
        peak_rss,
        healthz_worst,
        healthz_failures,
        healthz_probes,
        scrape_worst,
        scrape_failures,
        scrape_probes,
        mutate_worst,
        mutate_statuses,
        attack_statuses: tally.take(),
    }
}
