//! Putting the server together: bind, load TLS and policy, watch files, run, drain.
//!
//! [`ServeOptions`] is both the `calmplane serve` command line and the options
//! struct the library takes, as kubert's `ServerArgs` is: every default is
//! written once, in its `#[arg]` attribute, and tests start from
//! [`ServeOptions::default`], which is what the command line gives with no flags.

use super::listener::{self, Limits};
use super::tls::{TlsError, TlsPaths, TlsStore};
use super::{router, AppState};
use crate::config::{Config, ConfigError};
use crate::metrics::Metrics;
use crate::pipeline::{Pipeline, SystemClock};
use clap::Parser as _;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A port could not be bound (in use, or not allowed).
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The certificate or key could not be loaded.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The policy file could not be loaded.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// Everything `calmplane serve` can be told, with its defaults.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeOptions {
    /// Address of the TLS port (use 0.0.0.0:8443 in a cluster).
    #[arg(long, env = "CALMPLANE_LISTEN", default_value = "127.0.0.1:8443")]
    pub listen: SocketAddr,
    /// Address of the plaintext admin port: /metrics, /healthz, /readyz.
    #[arg(
        long,
        env = "CALMPLANE_METRICS_LISTEN",
        default_value = "127.0.0.1:9090"
    )]
    pub metrics_listen: SocketAddr,
    /// The serving certificate and, for mTLS, the client CA.
    #[command(flatten)]
    pub tls: TlsPaths,
    /// Policy file (YAML). Built-in defaults apply without one.
    #[arg(long, env = "CALMPLANE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Connection limits against bad clients.
    #[command(flatten)]
    pub limits: Limits,
    /// Answer 408 to a request not done in this time.
    #[arg(long, env = "CALMPLANE_REQUEST_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,
    /// After SIGTERM, keep serving this long with /readyz failing.
    #[arg(long, env = "CALMPLANE_SHUTDOWN_DELAY", default_value = "5s", value_parser = humantime::parse_duration)]
    pub shutdown_delay: Duration,
    /// How often certificate and policy files are checked for changes.
    #[arg(long, env = "CALMPLANE_RELOAD_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub reload_interval: Duration,
}

/// Parses nothing but [`ServeOptions`], to read its defaults.
#[derive(clap::Parser)]
struct DefaultsOnly {
    #[command(flatten)]
    opts: ServeOptions,
}

impl Default for ServeOptions {
    /// What `calmplane serve` uses with no flags (environment variables
    /// included), taken from the `#[arg]` attributes, the one place the
    /// defaults are written.
    fn default() -> Self {
        DefaultsOnly::parse_from(["calmplane"]).opts
    }
}

impl ServeOptions {
    /// Bind the ports and load the certificate and the policy file.
    pub async fn bind(self) -> Result<Server, ServeError> {
        let (loaded, config_bytes) = match self.config.as_deref() {
            Some(path) => {
                let (config, bytes) = Config::load_with_bytes(path)?;
                (config, Some(bytes))
            }
            None => (Config::default(), None),
        };
        let tls = Arc::new(TlsStore::load(self.tls.clone())?);
        let (listener, addr) = bind(self.listen).await?;
        let (metrics_listener, metrics_addr) = bind(self.metrics_listen).await?;
        let metrics = Arc::new(Metrics::new());
        metrics.tls_expiry.set(tls.not_after() as f64);
        let state = AppState::new(Pipeline::new(&loaded, Arc::new(SystemClock))?, metrics);
        Ok(Server {
            opts: self,
            addr,
            metrics_addr,
            listener,
            metrics_listener,
            tls,
            config_bytes,
            state,
        })
    }
}

/// A bound, loaded server, ready to run.
pub struct Server {
    opts: ServeOptions,
    /// Where the TLS port really is (the options may have asked for port 0).
    addr: SocketAddr,
    /// Where the metrics port really is.
    metrics_addr: SocketAddr,
    listener: TcpListener,
    metrics_listener: TcpListener,
    tls: Arc<TlsStore>,
    /// The policy file as it was when loaded: the watcher's baseline, so a
    /// change made between `bind` and `run` is not mistaken for the start.
    config_bytes: Option<Vec<u8>>,
    /// Shared with every request; tests swap its pipeline and read its metrics.
    pub state: Arc<AppState>,
}

async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), ServeError> {
    let error = |source| ServeError::Bind { addr, source };
    let listener = TcpListener::bind(addr).await.map_err(error)?;
    let bound = listener.local_addr().map_err(error)?;
    Ok((listener, bound))
}

impl Server {
    /// The address of the TLS port.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address of the plaintext metrics port.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    /// Serve until `shutdown` completes; then fail readiness, keep serving for
    /// the shutdown delay, stop accepting and drain. Returns whether the drain
    /// finished in time.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> bool {
        let Server {
            opts,
            addr,
            listener,
            metrics_listener,
            tls,
            config_bytes,
            state,
            ..
        } = self;
        let metrics = state.metrics.clone();
        let tls_watch = tls.clone().watch(opts.reload_interval, metrics.clone());
        let config_watch = opts
            .config
            .clone()
            .map(|path| watch_config(path, config_bytes, opts.reload_interval, state.clone()));
        // The admin port serves until the process ends: Prometheus may
        // scrape the last counts during the drain.
        let admin = tokio::spawn(super::listener::serve_admin(
            metrics_listener,
            crate::process::admin::router(state.clone()),
            opts.limits.clone(),
            std::future::pending(),
        ));

        let app = router(state.clone(), opts.request_timeout);
        let delay = opts.shutdown_delay;
        let ready = state.clone();
        let shutdown = async move {
            shutdown.await;
            ready.ready.store(false, Ordering::SeqCst);
            tracing::info!(
                delay_ms = delay.as_millis() as u64,
                "shutdown: /readyz now fails; still serving while endpoints update"
            );
            tokio::time::sleep(delay).await;
            tracing::info!("shutdown: no longer accepting; draining in-flight requests");
        };
        tracing::info!(listen = %addr, "calmplane serving");
        let drained = listener::serve(
            listener,
            tls,
            app,
            opts.limits.clone(),
            state.metrics.clone(),
            shutdown,
        )
        .await;
        tls_watch.abort();
        if let Some(t) = config_watch {
            t.abort();
        }
        admin.abort();
        tracing::info!(drained, "calmplane stopped");
        drained
    }
}

/// Reload the policy file when it differs from `loaded`, the bytes the
/// current policy came from. An invalid file keeps the old policy.
fn watch_config(
    path: PathBuf,
    loaded: Option<Vec<u8>>,
    interval: Duration,
    state: Arc<AppState>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut last = loaded;
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Ok(bytes) = tokio::fs::read(&path).await else {
                continue;
            };
            if last.as_deref() == Some(&bytes[..]) {
                continue;
            }
            let result = Config::from_bytes(&bytes, &path.display().to_string())
                .and_then(|config| Pipeline::new(&config, Arc::new(SystemClock)));
            last = Some(bytes);
            match result {
                Ok(pipeline) => {
                    state.pipeline.store(Arc::new(pipeline));
                    state
                        .metrics
                        .config_reloads
                        .with_label_values(&["success"])
                        .inc();
                    tracing::info!(path = %path.display(), "reloaded policy file");
                }
                Err(e) => {
                    state
                        .metrics
                        .config_reloads
                        .with_label_values(&["error"])
                        .inc();
                    tracing::warn!(error = %e, "policy file is invalid; keeping the previous policy");
                }
            }
        }
    })
}
