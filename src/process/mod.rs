//! What every long-running calmplane process sets up the same way: its log,
//! its async runtime, its file-descriptor limit, its shutdown signal and its
//! admin port. `calmplane serve` and `calmplane lease-monitor` both start
//! here, as kubert's `admin` and `shutdown` modules serve every binary built
//! on it.

pub mod admin;
pub mod batch_log;

use crate::budget;
use tokio::runtime::Runtime;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line, for a log collector.
    Json,
    /// Human-readable lines.
    Text,
}

/// Why the log could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("starting the log writer thread: {0}")]
pub struct LogError(#[from] std::io::Error);

/// Log to stderr in `format`, at the level `CALMPLANE_LOG` names (`info`
/// by default). Logging must never block a request, nor wake a thread per
/// line: lines are gathered and written by a background thread
/// ([`batch_log`]). Hold the guard until the process ends.
pub fn init_logging(format: LogFormat) -> Result<batch_log::FlushGuard, LogError> {
    use tracing_subscriber::EnvFilter;
    let (writer, guard) = batch_log::BatchWriter::new(std::io::stderr())?;
    let filter =
        EnvFilter::try_from_env("CALMPLANE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only for a terminal: a log collector would store the escape codes.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(writer);
    match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
        LogFormat::Text => builder.init(),
    }
    Ok(guard)
}

/// The multi-threaded runtime, with the blocking pool capped at
/// [`budget::MAX_BLOCKING_THREADS`] (tokio's default, 512 threads, each with
/// a stack and an allocator cache, is memory no container limit allows for).
pub fn runtime() -> std::io::Result<Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(budget::MAX_BLOCKING_THREADS)
        .build()
}

/// Raise the soft limit on open files to the hard limit, so that the
/// connection caps, not the descriptor limit, are what a flood of
/// connections runs into (a soft limit of 1024 is common, and is shared
/// with the admin port, the certificate and policy files and the log).
/// Returns the limit now in force, if it could be read.
pub fn raise_fd_limit() -> Option<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current.is_some() && limit.current != limit.maximum {
        let raised = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if let Err(error) = setrlimit(Resource::Nofile, raised) {
            tracing::warn!(%error, "could not raise the open-file limit to the hard limit");
        }
    }
    // `None` is unlimited.
    getrlimit(Resource::Nofile).current.or(Some(u64::MAX))
}

/// The mimalloc setting the memory bounds of [`crate::budget`] assume:
/// freed memory goes back to the OS at once. mimalloc reads it from the
/// environment when the process starts, so the image and the manifests set
/// it; see [`crate::budget::ALLOCATOR_ENV`].
pub fn check_allocator_env() {
    let (name, wanted) = budget::ALLOCATOR_ENV;
    match std::env::var(name) {
        Ok(value) if value == wanted => {}
        value => tracing::warn!(
            variable = name,
            value = value.as_deref().unwrap_or("(unset)"),
            "{name} is not {wanted}: freed memory may stay resident for up to a second, and a client sending large bodies at line rate can hold tens of MiB of it; the memory bounds in src/budget.rs assume {name}={wanted} (the image and the manifests set it)"
        ),
    }
}

/// Completes on SIGTERM (the kubelet stopping the pod) or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => tracing::info!("received SIGTERM"),
                _ = tokio::signal::ctrl_c() => tracing::info!("received SIGINT"),
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
    tracing::info!("received SIGINT");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_file_limit_is_raised_to_the_hard_one() {
        use rustix::process::{getrlimit, Resource};
        let after = raise_fd_limit().unwrap();
        let now = getrlimit(Resource::Nofile);
        assert_eq!(now.current, now.maximum);
        assert_eq!(Some(after), now.current.or(Some(u64::MAX)));
    }
}
