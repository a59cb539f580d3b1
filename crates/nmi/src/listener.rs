//! The NMI listener: HTTP/1.1 only (as IMDS), each connection counted against the node's and
//! its pod's connection caps, and its reads bounded by the header read and idle timeouts
//! ([`HeadClock`]). A slow or greedy pod exhausts only its own share.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};
use tower::ServiceExt;

use crate::limits::{ConnectionSlots, HeadClock, Limits};

/// Request heads larger than this are refused (an SDK's is well under 2 KiB).
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Serves `router` (NMI's routes, [`crate::server::router`], with any layers) on `listener`
/// until the task is dropped, within `limits`. Accept errors (such as running out of file
/// descriptors) are logged and retried; they never end the listener.
pub async fn serve(listener: TcpListener, router: axum::Router, limits: Limits) -> io::Result<()> {
    let slots = Arc::new(Mutex::new(ConnectionSlots::new(limits.max_connections, limits.max_connections_per_pod)));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "Accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(slot) = Slot::take(&slots, peer.ip()) else {
            tracing::debug!(%peer, "Connection refused: over the connection cap");
            continue;
        };
        let router = router.clone();
        let limits = limits.clone();
        tokio::spawn(async move {
            serve_connection(stream, peer, router, &limits).await;
            drop(slot);
        });
    }
}

async fn serve_connection(stream: TcpStream, peer: SocketAddr, router: axum::Router, limits: &Limits) {
    let _ = stream.set_nodelay(true);
    let io = TimedIo::new(stream, limits.header_read_timeout, limits.idle_timeout);
    let service = router.map_request(move |mut req: http::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        req
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        // A backstop only: hyper's timer runs from the end of the last answer to the end of the
        // next head, so it covers both of [`HeadClock`]'s deadlines.
        .header_read_timeout(limits.idle_timeout + limits.header_read_timeout)
        .max_buf_size(MAX_HEAD_BYTES);
    let conn = builder.serve_connection(TokioIo::new(io), TowerToHyperService::new(service));
    if let Err(error) = conn.await {
        tracing::debug!(%peer, %error, "Connection ended with an error");
    }
}

/// A connection's place under the caps, given back when the connection ends.
struct Slot {
    slots: Arc<Mutex<ConnectionSlots>>,
    ip: IpAddr,
}

impl Slot {
    fn take(slots: &Arc<Mutex<ConnectionSlots>>, ip: IpAddr) -> Option<Self> {
        let taken = slots.lock().unwrap_or_else(PoisonError::into_inner).try_open(ip);
        taken.then(|| Self { slots: slots.clone(), ip })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner).close(self.ip);
    }
}

/// A socket whose reads fail with `TimedOut` once [`HeadClock`]'s deadline passes.
struct TimedIo {
    inner: TcpStream,
    clock: HeadClock,
    sleep: Pin<Box<Sleep>>,
}

impl TimedIo {
    fn new(inner: TcpStream, header: Duration, idle: Duration) -> Self {
        let now = Instant::now();
        let clock = HeadClock::new(now.into_std(), header, idle);
        Self { inner, clock, sleep: Box::pin(tokio::time::sleep_until(now + idle)) }
    }
}

impl AsyncRead for TimedIo {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                this.clock.on_read(&buf.filled()[before..], Instant::now().into_std());
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let Some(deadline) = this.clock.deadline() else { return Poll::Pending };
                this.sleep.as_mut().reset(Instant::from_std(deadline));
                match this.sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "request read timed out")))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl AsyncWrite for TimedIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let written = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = written
            && n > 0
        {
            this.clock.on_write(Instant::now().into_std());
        }
        written
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let written = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = written
            && n > 0
        {
            this.clock.on_write(Instant::now().into_std());
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
