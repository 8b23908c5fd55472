//! One connection's request cycle and its timers.
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
//! It is turned off, and the phases are tracked by [`PhasedIo`] (which sees
//! the first byte) and [`PhasedService`] (which sees the head parsed and the
//! response ready), both on the connection's own task.

use super::shed::Shed;
use super::{Limits, Stop};
use crate::server::endpoint::Endpoint;
use crate::server::tls::ClientCheck;
use axum::response::Response;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::service::TowerToHyperService;
use std::convert::Infallible;
use std::future::{poll_fn, Future};
use std::io;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};

/// Why a connection ended, for the log.
#[derive(Debug)]
pub(super) enum Ended {
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

/// Poll the connection, its timers and the server's stop signal, until one
/// of them ends it.
pub(super) async fn drive<I, S, B>(
    conn: hyper::server::conn::http1::Connection<I, S>,
    clock: &PhaseClock,
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
pub(super) struct PhaseClock {
    epoch: Instant,
    phase: AtomicU8,
    since_nanos: AtomicU64,
}

impl PhaseClock {
    pub(super) fn new() -> PhaseClock {
        PhaseClock {
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

    fn poll(&mut self, cx: &mut Context<'_>, clock: &PhaseClock, limits: &Limits) -> Option<Ended> {
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

/// The connection's stream (TLS or plain TCP), noting the first byte read
/// while idle: a request begins.
pub(super) struct PhasedIo<S> {
    pub(super) inner: S,
    pub(super) clock: Arc<PhaseClock>,
}

impl<S: AsyncRead + Unpin> AsyncRead for PhasedIo<S> {
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

impl<S: AsyncWrite + Unpin> AsyncWrite for PhasedIo<S> {
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
        // Over TLS, sends close_notify before the TCP FIN.
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// The router, noting when a request's head is parsed (hyper calls the
/// service then) and when its response is ready; and the first to see a
/// request, so where load is shed and a missing client certificate noted.
pub(super) struct PhasedService {
    pub(super) inner: TowerToHyperService<Router>,
    pub(super) clock: Arc<PhaseClock>,
    /// `None` on a port that never sheds (the admin port).
    pub(super) shed: Option<Arc<Shed>>,
    /// Why this connection's client may not use the endpoints that cost
    /// work, under `--client-ca`; the Guard answers 403 for them.
    pub(super) denied: Option<ClientCheck>,
}

type BoxedResponse = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

impl hyper::service::Service<hyper::Request<Incoming>> for PhasedService {
    type Response = Response;
    type Error = Infallible;
    type Future = BoxedResponse;

    fn call(&self, mut request: hyper::Request<Incoming>) -> Self::Future {
        self.clock.enter(Phase::Busy);
        let clock = self.clock.clone();
        let endpoint = Endpoint::of(request.uri().path());
        if let Some(overloaded) = self.shed.as_ref().and_then(|s| s.check(endpoint)) {
            clock.enter(Phase::Idle);
            return Box::pin(std::future::ready(Ok(overloaded)));
        }
        if let Some(denied) = &self.denied {
            request.extensions_mut().insert(denied.clone());
        }
        let response = hyper::service::Service::call(&self.inner, request);
        Box::pin(async move {
            let response = response.await;
            clock.enter(Phase::Idle);
            response
        })
    }
}
