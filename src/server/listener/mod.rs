//! The accept loops of the TLS port and the plaintext admin port, with the
//! limits that keep bad clients from hurting good ones, and the connection
//! lifecycle the kube-apiserver relies on.
//!
//! * a connection cap: past it, a new connection waits a moment for a slot
//!   (connections churn), then is closed;
//! * a handshake timeout (TLS port): a client that connects and sends
//!   nothing is dropped;
//! * plaintext HTTP on the TLS port gets a one-line 400 and is closed;
//! * a cap on the request head: hyper's read buffer and its header limit are
//!   both [`budget::MAX_HEADER_BYTES`] (431 past it), where hyper's default
//!   buffer would grow to about 400 KiB per connection;
//! * a header-read timeout (slowloris) from the first byte of a request until
//!   its headers are complete (for a connection's first request, from the end
//!   of the handshake, as Go's `net/http` does);
//! * an idle timeout between requests, longer than the apiserver's own (Go's
//!   `http.Transport` keeps idle connections 90 s), so that the client, not
//!   calmplane, decides when an idle connection ends;
//! * graceful shutdown: stop accepting, let in-flight requests finish for up
//!   to the drain timeout, then close what is left;
//! * every close calmplane initiates sends a TLS close_notify first, so a
//!   client sees a clean end of stream, never a truncation.
//!
//! The admin port (`/metrics`, `/healthz`, `/readyz`, for Prometheus and the
//! kubelet) takes the same timers with a smaller cap ([`serve_admin`]).
//! `phases.rs` tracks a connection's request cycle, `shed.rs` turns work
//! away when the CPU is saturated.

mod phases;
mod shed;

use super::tls::TlsStore;
use crate::budget;
use crate::metrics::{HandshakeOutcome, Metrics};
use axum::Router;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use phases::{drive, Ended, PhaseClock, PhasedIo, PhasedService};
use shed::{Lag, Shed};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// What one client may take from the server. Defaults live in the `#[arg]`
/// attributes; [`Limits::default`] reads them from there.
#[derive(Debug, Clone, clap::Args)]
pub struct Limits {
    /// Most concurrent connections on the TLS port; more are closed at once,
    /// so that a flood of connections cannot exhaust file descriptors or
    /// memory. The default is what the container's memory limit allows
    /// (src/budget.rs).
    #[arg(long, env = "CALMPLANE_MAX_CONNECTIONS", default_value_t = budget::MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// Drop a connection that has not finished the TLS handshake in this
    /// time: a client that connects and says nothing must not hold a slot.
    #[arg(long, env = "CALMPLANE_HANDSHAKE_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub handshake_timeout: Duration,
    /// A request's headers must be complete this long after its first byte
    /// (after the handshake, for a connection's first request): slowloris.
    #[arg(long = "header-timeout", env = "CALMPLANE_HEADER_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub header_read_timeout: Duration,
    /// A kept-alive connection with no request in progress is closed after
    /// this. Longer than the apiserver's 90 s, so the client closes first and
    /// never writes a request into a connection calmplane is closing.
    #[arg(long, env = "CALMPLANE_IDLE_TIMEOUT", default_value = "120s", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,
    /// On shutdown, wait at most this long for in-flight requests.
    #[arg(long, env = "CALMPLANE_DRAIN_TIMEOUT", default_value = "20s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,
    /// When the runtime runs tasks this late (the CPU is saturated and
    /// requests wait in line for it), `/mutate`, `/report` and `/preview`
    /// answer a fast 503 instead of adding to the line. Half the
    /// apiserver's 2 s webhook timeout: a request served after waiting longer
    /// would likely come back too late to be used, and its work would be
    /// wasted.
    #[arg(long, env = "CALMPLANE_MAX_QUEUE_DELAY", default_value = "1s", value_parser = humantime::parse_duration)]
    pub max_queue_delay: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        super::ServeOptions::default().limits
    }
}

/// How long a close may take to deliver its close_notify (and, over the cap,
/// to see the client's end) before the socket is simply dropped: a client
/// that does not read must not hold a task.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Connections over the cap that are closed politely at the same time; past
/// this, during a flood, they are dropped without ceremony.
const MAX_POLITE_REFUSALS: usize = 256;

/// At the cap, how long the next connection waits in the kernel's accept
/// queue for a slot before it is refused. Connections churn (a probe, a
/// scrape, a client whose bad request was answered), so a slot freed a
/// moment later serves it; one that stays full costs it no more than this.
const SLOT_WAIT: Duration = Duration::from_millis(250);

/// How often a port at its cap says so in the log: a flood must not write a
/// line per refused connection.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// TLS handshake record type: the first byte of every TLS connection.
const TLS_HANDSHAKE: u8 = 0x16;
const PLAINTEXT_ANSWER: &[u8] = b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\nContent-Length: 48\r\n\r\nClient sent an HTTP request to an HTTPS server.\n";

/// What the server asks of its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Stop {
    Running,
    /// Finish the request in progress, then close.
    Drain,
    /// The drain timeout passed: close now.
    Abort,
}

/// The sizes hyper may buffer on one connection.
#[derive(Debug, Clone, Copy)]
struct Caps {
    /// hyper's read buffer and its request head limit.
    max_header_bytes: usize,
}

impl Caps {
    fn http1(self) -> hyper::server::conn::http1::Builder {
        let mut http = hyper::server::conn::http1::Builder::new();
        // Our header and idle timers replace hyper's (see `phases`).
        http.header_read_timeout(None)
            .keep_alive(true)
            .max_buf_size(self.max_header_bytes)
            .max_header_size(self.max_header_bytes);
        http
    }
}

/// The connection slots of one port, and the closing of connections past them.
struct Slots {
    open: Arc<Semaphore>,
    max: usize,
    /// Closes in progress of connections refused at the cap.
    polite: Arc<Semaphore>,
    /// Refusals since the last log line, and when that was.
    refused: u64,
    logged: Option<tokio::time::Instant>,
}

impl Slots {
    fn new(max: usize) -> Slots {
        Slots {
            open: Arc::new(Semaphore::new(max)),
            max,
            polite: Arc::new(Semaphore::new(MAX_POLITE_REFUSALS)),
            refused: 0,
            logged: None,
        }
    }

    /// A slot for the next connection: at once, or within [`SLOT_WAIT`].
    async fn next_slot(&self) -> Option<OwnedSemaphorePermit> {
        if let Ok(permit) = self.open.clone().try_acquire_owned() {
            return Some(permit);
        }
        tokio::time::timeout(SLOT_WAIT, self.open.clone().acquire_owned())
            .await
            .ok()
            .and_then(Result::ok)
    }

    /// Close a connection that found no slot with `farewell` (a TLS
    /// close_notify, or nothing) when a polite close is affordable, else
    /// drop it; say so in the log at most every [`REFUSAL_LOG_EVERY`].
    fn refuse(&mut self, tcp: TcpStream, peer: SocketAddr, farewell: &Arc<[u8]>) {
        self.refused += 1;
        let now = tokio::time::Instant::now();
        if self.logged.is_none_or(|at| now - at >= REFUSAL_LOG_EVERY) {
            tracing::warn!(
                %peer,
                max = self.max,
                refused = self.refused,
                "connection cap reached; closing new connections"
            );
            self.refused = 0;
            self.logged = Some(now);
        }
        if let Ok(polite) = self.polite.clone().try_acquire_owned() {
            let farewell = farewell.clone();
            tokio::spawn(async move {
                refuse(tcp, &farewell).await;
                drop(polite);
            });
        }
    }

    /// Wait until every connection has given its slot back.
    async fn all_closed(&self) {
        let _ = self.open.acquire_many(self.max as u32).await;
    }
}

/// Accept on `listener` until `shutdown` completes, passing each connection
/// with its slot to `serve_one`. The slot is found before the connection is
/// accepted: at the cap, connections wait in the kernel's queue for up to
/// [`SLOT_WAIT`], then are refused one by one.
async fn accept_loop(
    listener: &TcpListener,
    slots: &mut Slots,
    farewell: &Arc<[u8]>,
    shutdown: impl Future<Output = ()>,
    mut serve_one: impl FnMut(TcpStream, SocketAddr, OwnedSemaphorePermit),
) {
    let mut shutdown = pin!(shutdown);
    loop {
        let slot = tokio::select! {
            _ = &mut shutdown => break,
            slot = slots.next_slot() => slot,
        };
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
        match slot {
            Some(permit) => {
                let _ = tcp.set_nodelay(true);
                serve_one(tcp, peer, permit);
            }
            None => slots.refuse(tcp, peer, farewell),
        }
    }
}

/// Serve `app` over TLS on `listener` until `shutdown` completes, then drain.
/// Returns whether every connection finished within the drain timeout.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<TlsStore>,
    app: Router,
    limits: Limits,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) -> bool {
    let mut slots = Slots::new(limits.max_connections);
    let farewell = close_notify_record(&tls);
    let (stop, stop_rx) = watch::channel(Stop::Running);
    let lag = Arc::new(Lag::new());
    let probe = tokio::spawn(lag.clone().probe());
    let shed = Arc::new(Shed {
        lag,
        limit: limits.max_queue_delay,
        metrics: metrics.clone(),
    });
    let caps = Caps {
        max_header_bytes: budget::MAX_HEADER_BYTES,
    };
    let limits = Arc::new(limits);
    accept_loop(
        &listener,
        &mut slots,
        &farewell,
        shutdown,
        |tcp, peer, permit| {
            let acceptor = TlsAcceptor::from(tls.config());
            let service = TowerToHyperService::new(app.clone());
            let (limits, metrics, stop) = (limits.clone(), metrics.clone(), stop_rx.clone());
            let (shed, tls) = (shed.clone(), tls.clone());
            tokio::spawn(async move {
                let _permit = permit;
                let handshake =
                    tokio::time::timeout(limits.handshake_timeout, handshake(tcp, acceptor));
                let outcome = match handshake.await {
                    Ok(Ok(stream)) => Ok(stream),
                    Ok(Err(outcome)) => Err(outcome),
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        Err(HandshakeOutcome::Timeout)
                    }
                };
                metrics.handshake(match &outcome {
                    Ok(_) => HandshakeOutcome::Success,
                    Err(failed) => *failed,
                });
                let Ok(stream) = outcome else { return };
                let denied = if tls.checks_clients() {
                    tls.check_client(stream.get_ref().1.peer_certificates())
                        .err()
                } else {
                    None
                };
                if let Some(why) = &denied {
                    tracing::debug!(%peer, reason = %why, "client may use the probes only");
                }
                let service = PhasedService {
                    inner: service,
                    clock: Arc::new(PhaseClock::new()),
                    shed: Some(shed),
                    denied,
                };
                connection(stream, peer, service, caps, &limits, stop).await;
            });
        },
    )
    .await;
    drop(listener);
    let drained = drain(&slots, &stop, &limits).await;
    probe.abort();
    drained
}

/// Serve `app` in plaintext on the admin port (`/metrics`, `/healthz`,
/// `/readyz`) with the same timers as the TLS port and a cap of its own,
/// until `shutdown` completes; then drain like [`serve`].
pub async fn serve_admin(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) -> bool {
    let mut slots = Slots::new(budget::ADMIN_MAX_CONNECTIONS);
    let farewell: Arc<[u8]> = Arc::from(Vec::new());
    let (stop, stop_rx) = watch::channel(Stop::Running);
    let caps = Caps {
        max_header_bytes: budget::ADMIN_MAX_HEADER_BYTES,
    };
    let limits = Arc::new(limits);
    accept_loop(
        &listener,
        &mut slots,
        &farewell,
        shutdown,
        |tcp, peer, permit| {
            let service = PhasedService {
                inner: TowerToHyperService::new(app.clone()),
                clock: Arc::new(PhaseClock::new()),
                shed: None,
                denied: None,
            };
            let (limits, stop) = (limits.clone(), stop_rx.clone());
            tokio::spawn(async move {
                let _permit = permit;
                connection(tcp, peer, service, caps, &limits, stop).await;
            });
        },
    )
    .await;
    drop(listener);
    drain(&slots, &stop, &limits).await
}

/// Ask every connection to finish, wait up to the drain timeout, then close
/// what is left. Returns whether all finished in time.
async fn drain(slots: &Slots, stop: &watch::Sender<Stop>, limits: &Limits) -> bool {
    let _ = stop.send(Stop::Drain);
    // Each connection task holds its slot until its close is done.
    let drained = tokio::time::timeout(limits.drain_timeout, slots.all_closed())
        .await
        .is_ok();
    if !drained {
        tracing::warn!("drain timeout reached with connections still open; closing them");
        let _ = stop.send(Stop::Abort);
        let _ = tokio::time::timeout(CLOSE_GRACE * 2, slots.all_closed()).await;
    }
    drained
}

async fn handshake(
    mut tcp: TcpStream,
    acceptor: TlsAcceptor,
) -> Result<TlsStream<TcpStream>, HandshakeOutcome> {
    let mut first = [0u8; 1];
    match tcp.peek(&mut first).await {
        Ok(1) if first[0] == TLS_HANDSHAKE => {}
        Ok(1) if first[0].is_ascii_uppercase() => {
            // Looks like an HTTP method: say what is wrong, as Go's net/http does.
            let _ = tcp.write_all(PLAINTEXT_ANSWER).await;
            let _ = tcp.shutdown().await;
            return Err(HandshakeOutcome::Plaintext);
        }
        Ok(1) => return Err(HandshakeOutcome::Plaintext),
        _ => return Err(HandshakeOutcome::Closed),
    }
    acceptor.accept(tcp).await.map_err(|e| {
        // rustls has already sent the alert that says why.
        tracing::debug!(error = %e, "TLS handshake failed");
        HandshakeOutcome::Error
    })
}

/// The TLS close_notify alert as it is sent before a handshake (a plaintext
/// record), made by rustls rather than written out by hand.
fn close_notify_record(tls: &TlsStore) -> Arc<[u8]> {
    let mut record = Vec::new();
    if let Ok(mut conn) = rustls::ServerConnection::new(tls.config()) {
        conn.send_close_notify();
        let _ = conn.write_tls(&mut record);
    }
    record.into()
}

/// Close a connection over the cap: `farewell` (close_notify on the TLS
/// port) and our end of the stream, then wait (briefly) for the client's, so
/// that its unread request does not make the kernel answer with a reset.
async fn refuse(mut tcp: TcpStream, farewell: &[u8]) {
    let polite = async {
        tcp.write_all(farewell).await?;
        tcp.shutdown().await?;
        let mut sink = [0u8; 1024];
        while tokio::io::AsyncReadExt::read(&mut tcp, &mut sink).await? > 0 {}
        io::Result::Ok(())
    };
    let _ = tokio::time::timeout(CLOSE_GRACE, polite).await;
}

/// Serve HTTP/1.1 on one connection (TLS or plain), enforce its timers, and
/// close it (with a close_notify over TLS) however it ends.
async fn connection<S>(
    stream: S,
    peer: SocketAddr,
    service: PhasedService,
    caps: Caps,
    limits: &Limits,
    mut stop: watch::Receiver<Stop>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let clock = service.clock.clone();
    let mut io = PhasedIo {
        inner: stream,
        clock: clock.clone(),
    };
    let ended = {
        let conn = caps
            .http1()
            .serve_connection(TokioIo::new(&mut io), service);
        drive(conn, &clock, limits, &mut stop).await
    };
    match &ended {
        Ended::Done(Ok(())) => tracing::trace!(%peer, "connection closed"),
        Ended::Done(Err(e)) => tracing::debug!(%peer, error = %e, "connection ended with an error"),
        other => tracing::debug!(%peer, reason = ?other, "closing connection"),
    }
    // close_notify, then our end of the TCP stream. After hyper's own
    // shutdown this sends nothing more.
    let _ = tokio::time::timeout(CLOSE_GRACE, io.inner.shutdown()).await;
}
