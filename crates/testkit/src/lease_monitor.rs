//! The real `calmplane lease-monitor` as a child process, fed by the
//! [`crate::fake_apiserver`] through a kubeconfig, and a reader for its
//! Prometheus text output. Used by the lease-monitor and monitoring tests.

use crate::fake_apiserver::FakeApiServer;
use crate::process::{free_port, KillOnDrop};
use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `calmplane lease-monitor`, killed on drop.
pub struct Monitor {
    child: KillOnDrop,
    /// Its /metrics, /healthz and /readyz address.
    pub addr: SocketAddr,
    /// Its stderr, for the failure messages of the tests.
    log: PathBuf,
    /// Holds the kubeconfig and the log until the monitor is dropped.
    _dir: tempfile::TempDir,
}

impl Monitor {
    /// Start the binary against `server` (KUBECONFIG pointing at it, HOME
    /// in a temp dir so no real ~/.kube/config is read) with
    /// `--sample-interval 100ms` and `args`, and wait for /healthz.
    /// `bin` is the calmplane binary (`env!("CARGO_BIN_EXE_calmplane")` in
    /// a test crate).
    pub async fn start(bin: &Path, server: &FakeApiServer, args: &[&str]) -> Monitor {
        for attempt in 1..=5 {
            let dir = tempfile::tempdir().unwrap();
            let kubeconfig = server.write_kubeconfig(dir.path()).unwrap();
            let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
            let log = dir.path().join("lease-monitor.log");
            let child = Command::new(bin)
                .args(["--log-format", "text", "lease-monitor"])
                .args(["--metrics-listen", &addr.to_string()])
                .args(["--sample-interval", "100ms"])
                .args(args)
                .env("KUBECONFIG", &kubeconfig)
                .env("HOME", dir.path())
                .env("CALMPLANE_LOG", "info,kube_runtime=debug")
                .env_remove("KUBERNETES_SERVICE_HOST")
                .env_remove("KUBERNETES_SERVICE_PORT")
                .env_remove("CALMPLANE_LEASE_NAMESPACE")
                .env_remove("CALMPLANE_LEASE_SELECTOR")
                .env_remove("CALMPLANE_SAMPLE_INTERVAL")
                .env_remove("CALMPLANE_METRICS_LISTEN")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .expect("start calmplane lease-monitor");
            let mut monitor = Monitor {
                child: KillOnDrop(child),
                addr,
                log,
                _dir: dir,
            };
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(status)) = monitor.child.try_wait() {
                    eprintln!("lease-monitor exited with {status}: {}", monitor.log_text());
                    break;
                }
                if let Some((200, _)) = http_get(addr, "/healthz").await {
                    return monitor;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            eprintln!("start attempt {attempt} failed: {}", monitor.log_text());
        }
        panic!("calmplane lease-monitor did not start");
    }

    /// Wait for /readyz: the first complete list has been applied.
    pub async fn wait_ready(&self) {
        let ready = eventually_within(Duration::from_secs(20), || async {
            self.get("/readyz").await.0 == 200
        })
        .await;
        assert!(ready, "never ready; log:\n{}", self.log_text());
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GET `path`: (status, body).
    pub async fn get(&self, path: &str) -> (u16, String) {
        http_get(self.addr, path)
            .await
            .unwrap_or_else(|| panic!("GET {path} failed; log:\n{}", self.log_text()))
    }

    /// /metrics, parsed.
    pub async fn metrics(&self) -> Metrics {
        let (status, body) = self.get("/metrics").await;
        assert_eq!(status, 200, "{body}");
        Metrics::parse(&body)
    }

    /// Poll /metrics until `check` holds, or panic after `timeout` with the
    /// last metrics and the log.
    pub async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        check: impl Fn(&Metrics) -> bool,
    ) -> Metrics {
        let deadline = Instant::now() + timeout;
        loop {
            let m = self.metrics().await;
            if check(&m) {
                return m;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what}\nmetrics:\n{}\nlog:\n{}",
                    m.text,
                    self.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A plain HTTP/1.1 GET with `Connection: close`; `None` if the connection fails.
pub async fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.ok()?;
    let mut raw = Vec::new();
    tcp.read_to_end(&mut raw).await.ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

/// One sample of the text exposition format.
#[derive(Debug, Clone)]
pub struct Sample {
    /// The metric name, with its `_bucket`/`_sum`/`_count` suffix if any.
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its value.
    pub value: f64,
}

/// A parsed /metrics page.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// The page as served, for failure messages.
    pub text: String,
    /// Every sample on it, in order.
    pub samples: Vec<Sample>,
}

impl Metrics {
    /// Parse the text format (no escapes in label values: ours are namespaces).
    pub fn parse(text: &str) -> Metrics {
        let mut samples = Vec::new();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        {
            let (series, value) = line.rsplit_once(' ').expect(line);
            let value: f64 = value.parse().expect(line);
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => {
                    let inner = rest.strip_suffix('}').expect(line);
                    let labels = inner
                        .split(',')
                        .filter(|p| !p.is_empty())
                        .map(|pair| {
                            let (k, v) = pair.split_once('=').expect(line);
                            (k.to_string(), v.trim_matches('"').to_string())
                        })
                        .collect();
                    (name.to_string(), labels)
                }
                None => (series.to_string(), BTreeMap::new()),
            };
            samples.push(Sample {
                name,
                labels,
                value,
            });
        }
        Metrics {
            text: text.to_string(),
            samples,
        }
    }

    /// The value of the series `name` whose labels include `labels`.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
    }

    /// `get` for a namespace-labelled series.
    pub fn ns(&self, name: &str, namespace: &str) -> Option<f64> {
        self.get(name, &[("namespace", namespace)])
    }

    /// Whether any series `name` carries namespace `namespace`.
    pub fn has_ns(&self, name: &str, namespace: &str) -> bool {
        self.ns(name, namespace).is_some()
    }
}

/// Poll `check` every 50 ms until it holds (true) or `timeout` passes (false).
pub async fn eventually_within<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
