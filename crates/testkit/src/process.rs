//! The real `calmplane` binary as a child process: `calmplane serve` on
//! loopback ports with its own dev certificates, its stderr (the log) in a
//! file, killed on drop if a test fails half-way.

use crate::harness::{client_config, TlsClient};
use std::net::{SocketAddr, TcpListener};
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process that is killed and reaped on drop, so that a test or a
/// driver that panics half-way leaves no server behind.
pub struct KillOnDrop(pub Child);

impl Deref for KillOnDrop {
    type Target = Child;

    fn deref(&self) -> &Child {
        &self.0
    }
}

impl DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The calmplane binary, killed on drop.
pub struct Process {
    child: KillOnDrop,
    /// The HTTPS address the child was told to listen on.
    pub addr: SocketAddr,
    /// The plaintext /metrics port.
    pub metrics: SocketAddr,
    /// The CA of the child's dev certificates: clients trust only this.
    pub ca_pem: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Process {
    /// Start `BIN --log-format LOG_FORMAT serve --listen .. --metrics-listen ..
    /// --cert .. --key .. SERVE_ARGS` at log level info, and wait for
    /// /healthz. `bin` is the calmplane binary under test
    /// (`env!("CARGO_BIN_EXE_calmplane")` in an integration test). The ports
    /// are picked here and bound by the child; another process could take one
    /// in between, so a failed start is retried with new ports.
    pub async fn start(bin: &Path, log_format: &str, serve_args: &[&str]) -> Process {
        Process::start_logging(bin, log_format, serve_args, true).await
    }

    /// [`Process::start`], its log kept in a file when `keep_log`, else
    /// discarded: a soak at thousands of requests a second writes gigabytes
    /// of it, and the log path is exercised all the same.
    pub async fn start_logging(
        bin: &Path,
        log_format: &str,
        serve_args: &[&str],
        keep_log: bool,
    ) -> Process {
        for attempt in 1..=5 {
            let mut process = Process::spawn(bin, log_format, serve_args, keep_log);
            if process.wait_healthy().await {
                return process;
            }
            eprintln!("start attempt {attempt} failed: {}", process.log_text());
        }
        panic!("calmplane did not start");
    }

    fn spawn(bin: &Path, log_format: &str, serve_args: &[&str], keep_log: bool) -> Process {
        let dir = tempfile::tempdir().unwrap();
        let certs =
            calmplane::certs::generate(&calmplane::certs::serving_names("calmplane", "calmplane"))
                .unwrap();
        calmplane::certs::write(dir.path(), &certs).unwrap();
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let metrics: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let log = dir.path().join("calmplane.log");
        let child = Command::new(bin)
            .args(["--log-format", log_format, "serve"])
            .args(["--listen", &addr.to_string()])
            .args(["--metrics-listen", &metrics.to_string()])
            .arg("--cert")
            .arg(dir.path().join("tls.crt"))
            .arg("--key")
            .arg(dir.path().join("tls.key"))
            .args(serve_args)
            .env("CALMPLANE_LOG", "info")
            // As the image and the manifests run it (calmplane::budget::ALLOCATOR_ENV).
            .env(
                calmplane::budget::ALLOCATOR_ENV.0,
                calmplane::budget::ALLOCATOR_ENV.1,
            )
            .env_remove("CALMPLANE_LOG_FORMAT")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(if keep_log {
                Stdio::from(std::fs::File::create(&log).unwrap())
            } else {
                Stdio::null()
            })
            .spawn()
            .expect("start calmplane");
        Process {
            child: KillOnDrop(child),
            addr,
            metrics,
            ca_pem: certs.ca_pem,
            log,
            _dir: dir,
        }
    }

    /// Poll /healthz for up to 30 s; false if the child exits first.
    pub async fn wait_healthy(&mut self) -> bool {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if let Ok(mut c) = TlsClient::try_connect(self.addr, client_config(&self.ca_pem)).await
            {
                if let Ok(r) = c
                    .try_request("GET", "/healthz", "text/plain", Vec::new())
                    .await
                {
                    return r.status == 200;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// The child's process id, for `/proc`.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Lines are written by a background writer: poll for the one wanted.
    pub async fn wait_for_line(&self, needle: &str) -> String {
        let start = Instant::now();
        loop {
            if let Some(line) = self.log_text().lines().find(|l| l.contains(needle)) {
                return line.to_string();
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "no log line with {needle:?}; log:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Send a signal by name (`STOP`, `CONT`, `TERM`...) with the shell's `kill`.
    pub fn signal(&self, name: &str) {
        let status = Command::new("sh")
            .args(["-c", &format!("kill -{name} {}", self.child.id())])
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    /// Send SIGTERM to the child, as the kubelet does on pod deletion.
    pub fn sigterm(&self) {
        // The shell's own `kill`: no dependency on procps or libc.
        let status = Command::new("sh")
            .args(["-c", &format!("kill -TERM {}", self.child.id())])
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    /// Wait for the exit, at most `limit`.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }
}
