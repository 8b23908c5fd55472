//! The TLS accept loop, with the limits that keep bad clients from hurting good ones.
//!
//! * a connection cap: past it, new connections are closed at once;
//! * a handshake timeout: a client that connects and sends nothing is dropped;
//! * plaintext HTTP on the TLS port gets a one-line 400 and is closed;
//! * a header read timeout (slowloris) from hyper;
//! * graceful shutdown: stop accepting, let in-flight requests finish for up
//!   to the drain timeout, then return.

use super::tls::TlsStore;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

/// What one client may take from the server. Defaults live in the `#[arg]`
/// attributes; [`Limits::default`] reads them from there.
#[derive(Debug, Clone, clap::Args)]
pub struct Limits {
    /// Most concurrent connections; more are closed at once, so that a flood
    /// of connections cannot exhaust file descriptors or memory.
    #[arg(long, env = "CALMPLANE_MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,
    /// Drop a connection that has not finished the TLS handshake in this
    /// time: a client that connects and says nothing must not hold a slot.
    #[arg(long, env = "CALMPLANE_HANDSHAKE_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub handshake_timeout: Duration,
    /// Drop a connection that has not sent complete headers in this time
    /// (slowloris).
    #[arg(long = "header-timeout", env = "CALMPLANE_HEADER_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub header_read_timeout: Duration,
    /// On shutdown, wait at most this long for in-flight requests.
    #[arg(long, env = "CALMPLANE_DRAIN_TIMEOUT", default_value = "20s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        super::ServeOptions::default().limits
    }
}

/// TLS handshake record type: the first byte of every TLS connection.
const TLS_HANDSHAKE: u8 = 0x16;
const PLAINTEXT_ANSWER: &[u8] = b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\nContent-Length: 48\r\n\r\nClient sent an HTTP request to an HTTPS server.\n";

/// Serve `app` over TLS on `listener` until `shutdown` completes, then drain.
/// Returns whether every connection finished within the drain timeout.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<TlsStore>,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) -> bool {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, max = limits.max_connections, "connection cap reached; closing new connection");
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = TlsAcceptor::from(tls.config());
        let service = TowerToHyperService::new(app.clone());
        let watcher = graceful.watcher();
        let limits = limits.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let handshake =
                tokio::time::timeout(limits.handshake_timeout, handshake(tcp, acceptor));
            let stream = match handshake.await {
                Ok(Some(stream)) => stream,
                Ok(None) => return,
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .keep_alive(true);
            let conn = http.serve_connection(TokioIo::new(stream), service);
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => true,
        _ = tokio::time::sleep(limits.drain_timeout) => {
            tracing::warn!("drain timeout reached with connections still open");
            false
        }
    }
}

async fn handshake(
    mut tcp: TcpStream,
    acceptor: TlsAcceptor,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    let mut first = [0u8; 1];
    match tcp.peek(&mut first).await {
        Ok(1) if first[0] == TLS_HANDSHAKE => {}
        Ok(1) if first[0].is_ascii_uppercase() => {
            // Looks like an HTTP method: say what is wrong, as Go's net/http does.
            let _ = tcp.write_all(PLAINTEXT_ANSWER).await;
            let _ = tcp.shutdown().await;
            return None;
        }
        _ => return None,
    }
    match acceptor.accept(tcp).await {
        Ok(stream) => Some(stream),
        Err(e) => {
            tracing::debug!(error = %e, "TLS handshake failed");
            None
        }
    }
}
