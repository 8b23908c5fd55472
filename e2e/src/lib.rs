//! The harness of calmplane's end-to-end suite: a real control plane
//! ([`cluster`]) and calmplane as a local process registered with
//! `clientConfig.url` ([`webhook`]). Metrics are read with
//! `calmplane_testkit::prom`. The cases are in `tests/control_plane/`.

#![deny(missing_docs)]

pub mod cluster;
pub mod pki;
pub mod webhook;

use anyhow::{bail, Context as _, Result};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A port that was free a moment ago.
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Poll `check` every 100 ms until it says true, fails, or `limit` passes.
pub async fn wait_until<F, Fut>(limit: Duration, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool>>,
{
    let start = Instant::now();
    let mut last_error = None;
    loop {
        match check().await {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last_error = Some(e),
        }
        if start.elapsed() > limit {
            match last_error {
                Some(e) => bail!("not done after {limit:?}; last error: {e:#}"),
                None => bail!("not done after {limit:?}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A child process whose stdout and stderr go to `<dir>/<name>.log`, killed
/// on drop so a failed case leaves nothing running.
pub struct Child {
    child: Option<std::process::Child>,
    log: PathBuf,
}

impl Child {
    /// Start `cmd`, logging to `<dir>/<name>.log`.
    pub fn spawn(name: &str, mut cmd: Command, dir: &Path) -> Result<Child> {
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {name} ({cmd:?})"))?;
        Ok(Child {
            child: Some(child),
            log,
        })
    }

    /// A placeholder for a process not started yet.
    pub fn none() -> Child {
        Child {
            child: None,
            log: PathBuf::new(),
        }
    }

    /// Its exit status, if it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// The last 40 lines of its log.
    pub fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Kill it and wait for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Run `cmd` and return its stdout; an error with its stderr if it fails.
pub fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    stdout_of(cmd, out)
}

/// Run `cmd` with `stdin` as its standard input; stdout, or an error with stderr.
pub fn run_with_input(cmd: &mut Command, stdin: &[u8]) -> Result<String> {
    use std::io::Write as _;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {cmd:?}"))?;
    child.stdin.take().context("stdin")?.write_all(stdin)?;
    let out = child.wait_with_output()?;
    stdout_of(cmd, out)
}

/// The stdout of a finished `cmd`, or an error with both outputs if it failed.
fn stdout_of(cmd: &Command, out: std::process::Output) -> Result<String> {
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}
