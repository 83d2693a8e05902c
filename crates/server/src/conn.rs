//! The connection layer: an accept loop over tokio's `TcpListener` serving HTTP/1.1 (with
//! upgrades, for WebSocket) or HTTP/2 (prior knowledge, or ALPN `h2` under TLS) through hyper
//! on each connection, optionally behind TLS (tokio-rustls, the handshake bounded by the header
//! timeout), with the limits `axum::serve` does not offer:
//!
//! - **a connection cap**: at most `max_connections` are open; one more is answered `503` at
//!   once and closed, so idle sockets can never exhaust the process's file descriptors (the cap
//!   is lowered at start to fit the open-file limit, which is first raised to its hard limit);
//! - **a header timeout**: a new connection must send a whole request head within
//!   `header_timeout`, and so must a keep-alive connection once the first byte of its next
//!   request arrived (slow-header clients are closed);
//! - **an idle timeout**: a keep-alive connection waiting for its next request, or one whose
//!   client stopped reading the response (its writes make no progress), is closed after
//!   `idle_timeout`. A request being answered (a long prefill, a stream) is never cut by it;
//!   the body timeout is the [guard](crate::guard)'s.
//!
//! Each connection's socket is wrapped in [`Tracked`], which records when bytes move; a
//! watchdog in the connection's task applies the timeouts. The connection's slot in the cap is
//! held by the socket itself, so an upgraded WebSocket keeps it for its whole life.

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderValue, Request};
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tower::ServiceExt;

/// The connection limits (from [`ServerConfig`](crate::ServerConfig)).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Open connections at most.
    pub max_connections: usize,
    /// Time for a whole request head.
    pub header_timeout: Duration,
    /// Time a connection may wait for its next request, or a write may make no progress.
    pub idle_timeout: Duration,
}

/// Descriptors kept free for the models, logs and the process itself when the cap is fitted
/// to the open-file limit.
const RESERVED_FDS: u64 = 64;

/// Raises the open-file soft limit to the hard limit (where the OS allows it; the `rlimit`
/// crate) and returns the connection cap that fits it: `wanted`, or less when the limit is
/// lower. Prints a note when the cap had to be lowered.
pub(crate) fn fit_to_fd_limit(wanted: usize) -> usize {
    let soft = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => n,
        // Not supported here (or refused): keep the cap.
        Err(_) => return wanted,
    };
    let room = soft.saturating_sub(RESERVED_FDS).max(1);
    if (wanted as u64) > room {
        eprintln!(
            "fluent-ai-candle: the open-file limit is {soft}: at most {room} connections (asked {wanted})"
        );
        room as usize
    } else {
        wanted
    }
}

/// Connection counters for `/metrics`.
#[derive(Debug, Default)]
pub(crate) struct ConnStats {
    /// Connections open now.
    pub open: AtomicUsize,
    /// Connections refused past the cap.
    pub refused: AtomicU64,
    /// Connections closed by the header or idle timeout.
    pub timed_out: AtomicU64,
}

/// When bytes last moved on a connection and whether a request is being answered.
/// Times are milliseconds since `epoch` plus one (0 = never).
#[derive(Debug)]
pub(crate) struct Activity {
    epoch: Instant,
    /// Requests being answered (service called, response body not yet dropped).
    active: AtomicUsize,
    /// When the connection last became idle (accepted, or its last response ended).
    idle_since: AtomicU64,
    /// When the first byte of a request head arrived while idle (0: none yet).
    head_started: AtomicU64,
    /// When a write started waiting without progress (0: writes are flowing).
    write_blocked: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        let a = Self {
            epoch: Instant::now(),
            active: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            head_started: AtomicU64::new(0),
            write_blocked: AtomicU64::new(0),
        };
        // A fresh connection owes its first request head: the header timeout runs from now.
        let now = a.now();
        a.idle_since.store(now, Ordering::Relaxed);
        a.head_started.store(now, Ordering::Relaxed);
        a
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    fn begin(self: &Arc<Self>) -> RequestGuard {
        self.active.fetch_add(1, Ordering::SeqCst);
        RequestGuard(self.clone())
    }

    /// Why the connection should be closed now, if it should.
    fn expired(&self, limits: &Limits) -> Option<&'static str> {
        let now = self.now();
        let over = |since: u64, limit: Duration| {
            since != 0 && now.saturating_sub(since) > limit.as_millis() as u64
        };
        if over(
            self.write_blocked.load(Ordering::Relaxed),
            limits.idle_timeout,
        ) {
            return Some("the client stopped reading");
        }
        if self.active.load(Ordering::SeqCst) == 0 {
            if over(
                self.head_started.load(Ordering::Relaxed),
                limits.header_timeout,
            ) {
                return Some("request head too slow");
            }
            if over(self.idle_since.load(Ordering::Relaxed), limits.idle_timeout) {
                return Some("idle");
            }
        }
        None
    }
}

/// One request being answered; dropped with its response body.
struct RequestGuard(Arc<Activity>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let a = &self.0;
        if a.active.fetch_sub(1, Ordering::SeqCst) == 1 {
            a.head_started.store(0, Ordering::Relaxed);
            a.idle_since.store(a.now(), Ordering::Relaxed);
        }
    }
}

/// A response body that holds its request's [`RequestGuard`] until hyper drops it.
struct GuardedBody {
    inner: Body,
    _guard: RequestGuard,
}

impl hyper::body::Body for GuardedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, axum::Error>>> {
        hyper::body::Body::poll_frame(Pin::new(&mut self.inner), cx)
    }

    fn is_end_stream(&self) -> bool {
        hyper::body::Body::is_end_stream(&self.inner)
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::Body::size_hint(&self.inner)
    }
}

/// A socket that records its traffic in an [`Activity`] and holds its slot in the cap.
struct Tracked {
    io: TcpStream,
    activity: Arc<Activity>,
    stats: Arc<ConnStats>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.stats.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            let a = &self.activity;
            if a.active.load(Ordering::SeqCst) == 0 && a.head_started.load(Ordering::Relaxed) == 0 {
                a.head_started.store(a.now(), Ordering::Relaxed);
            }
        }
        r
    }
}

impl Tracked {
    fn wrote<T>(&self, r: &Poll<io::Result<T>>) {
        let a = &self.activity;
        match r {
            Poll::Pending => {
                if a.write_blocked.load(Ordering::Relaxed) == 0 {
                    a.write_blocked.store(a.now(), Ordering::Relaxed);
                }
            }
            Poll::Ready(_) => a.write_blocked.store(0, Ordering::Relaxed),
        }
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        self.wrote(&r);
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.io).poll_flush(cx);
        self.wrote(&r);
        r
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.wrote(&r);
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// The answer to a connection past the cap, written without waiting before closing it.
fn over_cap_response() -> Vec<u8> {
    let body = crate::error::ApiError::unavailable("too many open connections").to_json();
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         retry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// What a TCP connection speaks besides plain HTTP/1.1 and h2c.
#[derive(Clone, Default)]
pub(crate) struct Transport {
    /// TLS on every connection (HTTP/2 or HTTP/1.1 chosen by ALPN).
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// `alt-svc` added to every response (HTTP/3 advertised on TLS connections).
    pub alt_svc: Option<HeaderValue>,
}

/// One connection builder for both protocols: hyper-util's `auto` reads the first bytes and
/// serves HTTP/2 when they are its preface (prior knowledge, or after ALPN `h2`), else
/// HTTP/1.1 with hyper's own HTTP/1 connection, configured as before.
type AutoBuilder = auto::Builder<TokioExecutor>;

fn builder() -> AutoBuilder {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // The watchdog applies the header timeout (hyper's own would also close idle keep-alive
    // connections at the same bound).
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None::<Duration>);
    builder.http2().timer(TokioTimer::new());
    builder
}

/// Serves `app` on `listener` until `close` turns true; then stops accepting, asks every
/// connection to finish its request in flight and close, and returns when all have (the caller
/// bounds the wait). Counts connections in `stats`. With TLS in `transport`, every connection
/// first completes its handshake within the header timeout.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    mut close: watch::Receiver<bool>,
    stats: Arc<ConnStats>,
    transport: Transport,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let over_cap = over_cap_response();
    let mut connections = JoinSet::new();
    let builder = Arc::new(builder());
    let tick = (limits.header_timeout.min(limits.idle_timeout) / 4)
        .clamp(Duration::from_millis(5), Duration::from_millis(500));
    loop {
        let accepted = tokio::select! {
            biased;
            _ = close.wait_for(|c| *c) => break,
            // Reap finished connections so the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            a = listener.accept() => a,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors (or a transient error): back off instead of spinning.
                if !matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
                ) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            stats.refused.fetch_add(1, Ordering::Relaxed);
            // The socket buffer of a fresh connection is empty: this never blocks.
            let _ = stream.try_write(&over_cap);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let activity = Arc::new(Activity::new());
        stats.open.fetch_add(1, Ordering::Relaxed);
        let io = Tracked {
            io: stream,
            activity: activity.clone(),
            stats: stats.clone(),
            _permit: permit,
        };
        let conn = Conn {
            builder: builder.clone(),
            app: app.clone(),
            activity,
            limits,
            tick,
            close: close.clone(),
            stats: stats.clone(),
            alt_svc: transport.alt_svc.clone(),
        };
        let tls = transport.tls.clone();
        connections.spawn(async move {
            match tls {
                None => conn.run(io).await,
                Some(acceptor) => {
                    let handshake =
                        tokio::time::timeout(limits.header_timeout, acceptor.accept(io)).await;
                    match handshake {
                        Ok(Ok(tls_io)) => conn.run(tls_io).await,
                        // A failed handshake: rustls already answered with an alert.
                        Ok(Err(_)) => {}
                        Err(_) => {
                            conn.stats.timed_out.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        });
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
}

/// One accepted connection's service and watchdog.
struct Conn {
    builder: Arc<AutoBuilder>,
    app: Router,
    activity: Arc<Activity>,
    limits: Limits,
    tick: Duration,
    close: watch::Receiver<bool>,
    stats: Arc<ConnStats>,
    alt_svc: Option<HeaderValue>,
}

impl Conn {
    /// Serves HTTP/1.1 (with upgrades) or HTTP/2 on `io` until the client closes, the
    /// watchdog expires, or the server closes (then the request in flight finishes first).
    async fn run<I>(self, io: I)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Conn {
            builder,
            app,
            activity,
            limits,
            tick,
            mut close,
            stats,
            alt_svc,
        } = self;
        let service_activity = activity.clone();
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let guard = service_activity.begin();
            let app = app.clone();
            let alt_svc = alt_svc.clone();
            async move {
                let mut response = match app.oneshot(req.map(Body::new)).await {
                    Ok(r) => r,
                    Err(never) => match never {},
                };
                if let Some(v) = alt_svc {
                    response.headers_mut().insert(header::ALT_SVC, v);
                }
                Ok::<_, Infallible>(response.map(|inner| GuardedBody {
                    inner,
                    _guard: guard,
                }))
            }
        });
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(io), service)
            .into_owned();
        tokio::pin!(conn);
        let watchdog = async {
            loop {
                tokio::time::sleep(tick).await;
                if activity.expired(&limits).is_some() {
                    stats.timed_out.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        };
        tokio::pin!(watchdog);
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = &mut watchdog => return,
            _ = close.wait_for(|c| *c) => conn.as_mut().graceful_shutdown(),
        }
        tokio::select! {
            _ = conn.as_mut() => {}
            _ = watchdog => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_over_cap_answer_is_well_formed() {
        let bytes = over_cap_response();
        let text = std::str::from_utf8(&bytes).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(body.len(), len);
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["type"], "overloaded_error");
    }

    #[test]
    fn watchdog_rules() {
        let limits = Limits {
            max_connections: 1,
            header_timeout: Duration::from_millis(30),
            idle_timeout: Duration::from_millis(60),
        };
        let a = Arc::new(Activity::new());
        assert_eq!(a.expired(&limits), None);
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(a.expired(&limits), Some("request head too slow"));
        // Answering a request: neither timeout applies.
        let g = a.begin();
        std::thread::sleep(Duration::from_millis(80));
        assert_eq!(a.expired(&limits), None);
        drop(g);
        // Idle after the response: the idle timeout, not the header timeout.
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(a.expired(&limits), None);
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(a.expired(&limits), Some("idle"));
    }
}
