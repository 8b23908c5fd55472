//! Putting the server together: bind, load TLS and policy, watch files, run, drain.

use super::listener::{self, Limits};
use super::tls::{TlsError, TlsPaths, TlsStore};
use super::{metrics_router, router, AppState};
use crate::config::{Config, ConfigError};
use crate::metrics::Metrics;
use crate::pipeline::{Pipeline, SystemClock};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Config(#[from] ConfigError),
}

#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub listen: SocketAddr,
    pub metrics_listen: Option<SocketAddr>,
    pub tls: TlsPaths,
    pub config: Option<PathBuf>,
    pub limits: Limits,
    pub request_timeout: Duration,
    /// How long to keep serving after SIGTERM with `/readyz` failing.
    pub shutdown_delay: Duration,
    /// How often certificate and policy files are checked for changes.
    pub reload_interval: Duration,
}

impl ServeOptions {
    /// Defaults for the given certificate paths; used by tests and benches.
    pub fn new(cert: PathBuf, key: PathBuf) -> Self {
        ServeOptions {
            listen: ([127, 0, 0, 1], 8443).into(),
            metrics_listen: Some(([127, 0, 0, 1], 9090).into()),
            tls: TlsPaths {
                cert,
                key,
                client_ca: None,
            },
            config: None,
            limits: Limits::default(),
            request_timeout: Duration::from_secs(10),
            shutdown_delay: Duration::from_secs(5),
            reload_interval: Duration::from_secs(1),
        }
    }
}

/// A bound, loaded server, ready to run.
pub struct Server {
    opts: ServeOptions,
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    tls: Arc<TlsStore>,
    /// The policy file as it was when loaded: the watcher's baseline.
    config_bytes: Option<Vec<u8>>,
    pub state: Arc<AppState>,
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })
}

impl Server {
    pub async fn bind(opts: ServeOptions) -> Result<Server, ServeError> {
        let (config, config_bytes) = match &opts.config {
            Some(path) => {
                let (config, bytes) = Config::load_with_bytes(path)?;
                (config, Some(bytes))
            }
            None => (Config::default(), None),
        };
        let tls = Arc::new(TlsStore::load(opts.tls.clone())?);
        let listener = bind(opts.listen).await?;
        let metrics_listener = match opts.metrics_listen {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        let metrics = Arc::new(Metrics::new());
        let state = AppState::new(Pipeline::new(&config, Arc::new(SystemClock)), metrics);
        Ok(Server {
            opts,
            listener,
            metrics_listener,
            tls,
            config_bytes,
            state,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("bound listener has an address")
    }

    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// Serve until `shutdown` completes; then fail readiness, keep serving for
    /// the shutdown delay, stop accepting and drain. Returns whether the drain
    /// finished in time.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> bool {
        let Server {
            opts,
            listener,
            metrics_listener,
            tls,
            config_bytes,
            state,
        } = self;
        let metrics = state.metrics.clone();
        let tls_watch = tls.clone().watch(opts.reload_interval, metrics.clone());
        let config_watch = opts
            .config
            .clone()
            .map(|path| watch_config(path, config_bytes, opts.reload_interval, state.clone()));
        let metrics_task = metrics_listener.map(|l| {
            tokio::spawn(async move {
                if let Err(e) = axum::serve(l, metrics_router(metrics)).await {
                    tracing::error!(error = %e, "metrics server failed");
                }
            })
        });

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
        tracing::info!(listen = %opts.listen, "calmplane serving");
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
        if let Some(t) = metrics_task {
            t.abort();
        }
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
            let parsed = Config::from_bytes(&bytes, &path.display().to_string());
            last = Some(bytes);
            match parsed {
                Ok(config) => {
                    state
                        .pipeline
                        .store(Arc::new(Pipeline::new(&config, Arc::new(SystemClock))));
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
