//! The TLS accept loop, with the limits that keep bad clients from hurting
//! good ones, and the connection lifecycle the kube-apiserver relies on.
//!
//! * a connection cap: past it, new connections are closed at once;
//! * a handshake timeout: a client that connects and sends nothing is dropped;
//! * plaintext HTTP on the TLS port gets a one-line 400 and is closed;
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
//! ```text
//!              first byte          headers parsed        response ready
//!   Headers ───────────────▶ ... ──────────────▶ Busy ──────────────────▶ Idle
//!   (header timer)                         (request timeout)   (idle timer) │
//!      ▲                                                                    │
//!      └──────────────────────────── first byte of the next request ───────┘
//! ```
//!
//! hyper's own `header_read_timeout` cannot do this: it starts whenever hyper
//! waits for a request head, idle or not, so an idle keep-alive connection
//! would be closed after it (hyper 1.x, `proto/h1/conn.rs`, `poll_read_head`).
//! It is turned off here, and the phases above are tracked by [`PhasedIo`]
//! (which sees the first byte) and [`PhasedService`] (which sees the head
//! parsed and the response ready), both on the connection's own task.

use super::tls::TlsStore;
use crate::metrics::Metrics;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use std::convert::Infallible;
use std::future::{poll_fn, Future};
use std::io;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::time::{Instant, Sleep};
use tokio_rustls::server::TlsStream;
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
    /// requests wait in line for it), `/mutate` and `/preview` answer a fast
    /// 503 instead of adding to the line. Half the apiserver's 2 s webhook
    /// timeout: a request served after waiting longer would likely come back
    /// too late to be used, and its work would be wasted.
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
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let refusals = Arc::new(Semaphore::new(MAX_POLITE_REFUSALS));
    let refusal = close_notify_record(&tls);
    let (stop, stop_rx) = watch::channel(Stop::Running);
    let lag = Arc::new(Lag::new());
    let probe = tokio::spawn(lag.clone().probe());
    let shed = Arc::new(Shed {
        lag,
        limit: limits.max_queue_delay,
        metrics: metrics.clone(),
    });
    let limits = Arc::new(limits);
    let mut shutdown = pin!(shutdown);
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
            if let Ok(polite) = refusals.clone().try_acquire_owned() {
                let record = refusal.clone();
                tokio::spawn(async move {
                    refuse(tcp, &record).await;
                    drop(polite);
                });
            }
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = TlsAcceptor::from(tls.config());
        let service = TowerToHyperService::new(app.clone());
        let (limits, metrics, stop) = (limits.clone(), metrics.clone(), stop_rx.clone());
        let shed = shed.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let handshake =
                tokio::time::timeout(limits.handshake_timeout, handshake(tcp, acceptor));
            let outcome = match handshake.await {
                Ok(Ok(stream)) => Ok(stream),
                Ok(Err(outcome)) => Err(outcome),
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    Err(Handshake::Timeout)
                }
            };
            let label = match &outcome {
                Ok(_) => "success",
                Err(failed) => failed.label(),
            };
            metrics.tls_handshakes.with_label_values(&[label]).inc();
            if let Ok(stream) = outcome {
                connection(stream, peer, service, shed, &limits, stop).await;
            }
        });
    }
    drop(listener);
    let _ = stop.send(Stop::Drain);
    let all_closed = || async {
        // Each connection task holds its slot until its close is done.
        let _ = slots.acquire_many(limits.max_connections as u32).await;
    };
    let drained = tokio::time::timeout(limits.drain_timeout, all_closed())
        .await
        .is_ok();
    if !drained {
        tracing::warn!("drain timeout reached with connections still open; closing them");
        let _ = stop.send(Stop::Abort);
        let _ = tokio::time::timeout(CLOSE_GRACE * 2, all_closed()).await;
    }
    probe.abort();
    drained
}

/// How a handshake failed, for `calmplane_tls_handshakes_total{outcome}`.
enum Handshake {
    /// Not TLS: plaintext HTTP (answered with a 400) or other bytes.
    Plaintext,
    /// Closed before sending anything (a TCP probe, a port scan).
    Closed,
    /// TLS that rustls refused: bad version, no shared cipher, a client
    /// certificate from another CA...
    Error,
    /// Not finished within the handshake timeout.
    Timeout,
}

impl Handshake {
    fn label(&self) -> &'static str {
        match self {
            Handshake::Plaintext => "plaintext",
            Handshake::Closed => "closed",
            Handshake::Error => "error",
            Handshake::Timeout => "timeout",
        }
    }
}

/// Every label value of `calmplane_tls_handshakes_total`, so that each
/// series exists from the start.
pub const HANDSHAKE_OUTCOMES: &[&str] = &["success", "error", "timeout", "plaintext", "closed"];

async fn handshake(
    mut tcp: TcpStream,
    acceptor: TlsAcceptor,
) -> Result<TlsStream<TcpStream>, Handshake> {
    let mut first = [0u8; 1];
    match tcp.peek(&mut first).await {
        Ok(1) if first[0] == TLS_HANDSHAKE => {}
        Ok(1) if first[0].is_ascii_uppercase() => {
            // Looks like an HTTP method: say what is wrong, as Go's net/http does.
            let _ = tcp.write_all(PLAINTEXT_ANSWER).await;
            let _ = tcp.shutdown().await;
            return Err(Handshake::Plaintext);
        }
        Ok(1) => return Err(Handshake::Plaintext),
        _ => return Err(Handshake::Closed),
    }
    acceptor.accept(tcp).await.map_err(|e| {
        // rustls has already sent the alert that says why.
        tracing::debug!(error = %e, "TLS handshake failed");
        Handshake::Error
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

/// Close a connection over the cap: close_notify and our end of the stream,
/// then wait (briefly) for the client's, so that its ClientHello, unread,
/// does not make the kernel answer with a reset.
async fn refuse(mut tcp: TcpStream, close_notify: &[u8]) {
    let polite = async {
        tcp.write_all(close_notify).await?;
        tcp.shutdown().await?;
        let mut sink = [0u8; 1024];
        while tokio::io::AsyncReadExt::read(&mut tcp, &mut sink).await? > 0 {}
        io::Result::Ok(())
    };
    let _ = tokio::time::timeout(CLOSE_GRACE, polite).await;
}

/// Why a connection ended, for the log.
#[derive(Debug)]
enum Ended {
    /// hyper finished: the client closed, or a drain closed it after its
    /// last response (hyper has already sent close_notify).
    Done(Result<(), hyper::Error>),
    /// Idle longer than the idle timeout.
    Idle,
    /// Headers not complete within the header-read timeout.
    Headers,
    /// Still open when the drain timeout passed.
    Aborted,
}

/// Serve HTTP/1.1 on one TLS connection, enforce its timers, and close it
/// with a close_notify however it ends.
async fn connection(
    stream: TlsStream<TcpStream>,
    peer: SocketAddr,
    service: TowerToHyperService<Router>,
    shed: Arc<Shed>,
    limits: &Limits,
    mut stop: watch::Receiver<Stop>,
) {
    let clock = Arc::new(Clock::new());
    let mut io = PhasedIo {
        inner: stream,
        clock: clock.clone(),
    };
    let ended = {
        let mut http = hyper::server::conn::http1::Builder::new();
        // Our header and idle timers replace hyper's (see the module docs).
        http.header_read_timeout(None).keep_alive(true);
        let service = PhasedService {
            inner: service,
            clock: clock.clone(),
            shed,
        };
        let conn = http.serve_connection(TokioIo::new(&mut io), service);
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

/// Poll the connection, its timers and the server's stop signal, until one
/// of them ends it.
async fn drive<I, S, B>(
    conn: hyper::server::conn::http1::Connection<I, S>,
    clock: &Clock,
    limits: &Limits,
    stop: &mut watch::Receiver<Stop>,
) -> Ended
where
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut conn = pin!(conn);
    let mut timer = Timer::new(Instant::now() + limits.header_read_timeout);
    let mut draining = false;
    loop {
        if !draining && *stop.borrow_and_update() >= Stop::Drain {
            // Closes at once when idle, after the response otherwise.
            conn.as_mut().graceful_shutdown();
            draining = true;
        }
        if *stop.borrow() == Stop::Abort {
            return Ended::Aborted;
        }
        let event = {
            let changed = stop.changed();
            let mut changed = pin!(changed);
            poll_fn(|cx| {
                if let Poll::Ready(done) = conn.as_mut().poll(cx) {
                    return Poll::Ready(Some(Ended::Done(done)));
                }
                // The phase may have moved during that poll.
                if let Some(expired) = timer.poll(cx, clock, limits) {
                    return Poll::Ready(Some(expired));
                }
                match changed.as_mut().poll(cx) {
                    Poll::Ready(Ok(())) => Poll::Ready(None),
                    // The server is gone: nothing will drain us.
                    Poll::Ready(Err(_)) => Poll::Ready(Some(Ended::Aborted)),
                    Poll::Pending => Poll::Pending,
                }
            })
            .await
        };
        if let Some(ended) = event {
            return ended;
        }
    }
}

/// Where a connection is in its request cycle: see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Phase {
    /// Waiting for the headers of a request that has started (or, on a new
    /// connection, for the first request).
    Headers = 0,
    /// A request is being served; the request timeout bounds it.
    Busy = 1,
    /// Between requests.
    Idle = 2,
}

/// The phase and when it began. Shared by the IO and the service of one
/// connection, both polled on that connection's task: atomics only because
/// the task may move between threads.
struct Clock {
    epoch: Instant,
    phase: AtomicU8,
    since_nanos: AtomicU64,
}

impl Clock {
    fn new() -> Clock {
        Clock {
            epoch: Instant::now(),
            phase: AtomicU8::new(Phase::Headers as u8),
            since_nanos: AtomicU64::new(0),
        }
    }

    fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Relaxed) {
            0 => Phase::Headers,
            1 => Phase::Busy,
            _ => Phase::Idle,
        }
    }

    /// Enter `phase` now.
    fn enter(&self, phase: Phase) {
        if phase != Phase::Busy {
            let since = self.epoch.elapsed().as_nanos() as u64;
            self.since_nanos.store(since, Ordering::Relaxed);
        }
        self.phase.store(phase as u8, Ordering::Relaxed);
    }

    /// When the current phase times out, and how; `None` while busy.
    fn deadline(&self, limits: &Limits) -> Option<(Instant, Ended)> {
        let since = self.epoch + Duration::from_nanos(self.since_nanos.load(Ordering::Relaxed));
        match self.phase() {
            Phase::Headers => Some((since + limits.header_read_timeout, Ended::Headers)),
            Phase::Idle => Some((since + limits.idle_timeout, Ended::Idle)),
            Phase::Busy => None,
        }
    }
}

/// One sleep per connection, moved only when a deadline comes earlier than
/// the one armed (a request's first byte); a later deadline is re-armed when
/// the earlier one fires. So a request costs at most one timer reset.
struct Timer {
    sleep: Pin<Box<Sleep>>,
    armed: Instant,
}

impl Timer {
    fn new(at: Instant) -> Timer {
        Timer {
            sleep: Box::pin(tokio::time::sleep_until(at)),
            armed: at,
        }
    }

    fn poll(&mut self, cx: &mut Context<'_>, clock: &Clock, limits: &Limits) -> Option<Ended> {
        let (at, expiry) = clock.deadline(limits)?;
        if at < self.armed {
            self.arm(at);
        }
        while self.sleep.as_mut().poll(cx).is_ready() {
            if Instant::now() >= at {
                return Some(expiry);
            }
            self.arm(at);
        }
        None
    }

    fn arm(&mut self, at: Instant) {
        self.sleep.as_mut().reset(at);
        self.armed = at;
    }
}

/// The TLS stream, noting the first byte read while idle: a request begins.
struct PhasedIo {
    inner: TlsStream<TcpStream>,
    clock: Arc<Clock>,
}

impl AsyncRead for PhasedIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before && this.clock.phase() == Phase::Idle {
            this.clock.enter(Phase::Headers);
        }
        read
    }
}

impl AsyncWrite for PhasedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Sends close_notify before the TCP FIN.
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// The router, noting when a request's head is parsed (hyper calls the
/// service then) and when its response is ready; and the first to see a
/// request, so where load is shed.
struct PhasedService {
    inner: TowerToHyperService<Router>,
    clock: Arc<Clock>,
    shed: Arc<Shed>,
}

type BoxedResponse = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

impl hyper::service::Service<hyper::Request<Incoming>> for PhasedService {
    type Response = Response;
    type Error = Infallible;
    type Future = BoxedResponse;

    fn call(&self, request: hyper::Request<Incoming>) -> Self::Future {
        self.clock.enter(Phase::Busy);
        let clock = self.clock.clone();
        if let Some(overloaded) = self.shed.check(&request) {
            clock.enter(Phase::Idle);
            return Box::pin(std::future::ready(Ok(overloaded)));
        }
        let response = hyper::service::Service::call(&self.inner, request);
        Box::pin(async move {
            let response = response.await;
            clock.enter(Phase::Idle);
            response
        })
    }
}

/// How late the runtime runs a task that asked to wake at a given time. When
/// the CPU is saturated, every request that has arrived waits in the same
/// line of runnable tasks, so this is how long they wait before any of their
/// bytes are read: a queue that cannot be seen from inside a request.
struct Lag {
    epoch: Instant,
    /// When the probe is due to wake next, from `epoch`.
    due_nanos: AtomicU64,
    /// How late it woke last time.
    last_nanos: AtomicU64,
}

/// How often [`Lag`] looks: often enough to see a line build up within a
/// few requests' time, rare enough to cost nothing.
const LAG_PROBE_EVERY: Duration = Duration::from_millis(10);

impl Lag {
    fn new() -> Lag {
        Lag {
            epoch: Instant::now(),
            due_nanos: AtomicU64::new(u64::MAX),
            last_nanos: AtomicU64::new(0),
        }
    }

    fn nanos(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_nanos() as u64
    }

    async fn probe(self: Arc<Self>) {
        loop {
            let due = Instant::now() + LAG_PROBE_EVERY;
            self.due_nanos.store(self.nanos(due), Ordering::Relaxed);
            tokio::time::sleep_until(due).await;
            let late = Instant::now().saturating_duration_since(due);
            self.last_nanos
                .store(late.as_nanos() as u64, Ordering::Relaxed);
        }
    }

    /// The wait now: how late the probe was last time, or, if it is overdue
    /// now, how overdue (a line still growing).
    fn current(&self) -> Duration {
        let overdue = self
            .nanos(Instant::now())
            .saturating_sub(self.due_nanos.load(Ordering::Relaxed));
        Duration::from_nanos(overdue.max(self.last_nanos.load(Ordering::Relaxed)))
    }
}

/// Admission control: past [`Limits::max_queue_delay`], the requests that
/// cost work get a fast 503; probes (`/healthz`, `/readyz`) never do, so that
/// a busy pod is not restarted for being busy.
struct Shed {
    lag: Arc<Lag>,
    limit: Duration,
    metrics: Arc<Metrics>,
}

impl Shed {
    fn check(&self, request: &hyper::Request<Incoming>) -> Option<Response> {
        let path = request.uri().path();
        if !matches!(path, "/mutate" | "/preview") {
            return None;
        }
        let waited = self.lag.current();
        if waited <= self.limit {
            return None;
        }
        self.metrics
            .overloaded
            .with_label_values(&[path.trim_start_matches('/')])
            .inc();
        if path == "/mutate" {
            self.metrics
                .requests
                .with_label_values(&["unknown", "unknown", "overloaded"])
                .inc();
        }
        // Shed before the router, so the router's `observe` layer never sees
        // it: counted above, and the body is the same `ApiError` as any other.
        let mut response = super::ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "overloaded: requests are waiting {} ms for a CPU (limit {} ms); try again",
                waited.as_millis(),
                self.limit.as_millis()
            ),
        )
        .into_response();
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        Some(response)
    }
}
