//! The connection loop: HTTP/1.1 and HTTP/2 (prior knowledge) on one
//! listener, with bounds on slow or oversized request heads, keep-alive
//! settings, and a drain that first moves clients off their connections
//! (`Connection: close`, GOAWAY), then stops accepting, lets open calls
//! finish until a deadline, and gives up on what is left.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::ServiceExt;

/// How connections are served.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Longest a client may take to send a request's head (HTTP/1.1); an
    /// idle keep-alive connection is closed after it too.
    pub header_read_timeout: Duration,
    /// Largest request head accepted, in bytes (431 over HTTP/1.1; the
    /// HTTP/2 header list limit).
    pub max_header_bytes: usize,
    /// Most concurrent streams per HTTP/2 connection.
    pub http2_max_concurrent_streams: u32,
    /// HTTP/2 keep-alive ping interval (a peer that does not answer within
    /// the same time is dropped).
    pub http2_keep_alive: Duration,
    /// Longest in-flight calls may take to finish once draining stops
    /// accepting connections.
    pub drain_timeout: Duration,
    /// Most connections open at once (0: from the open-files limit).
    pub max_connections: usize,
    /// Most connections open at once from one peer address (0: no bound).
    pub max_connections_per_address: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 64 * 1024,
            http2_max_concurrent_streams: 256,
            http2_keep_alive: Duration::from_secs(20),
            drain_timeout: Duration::from_secs(20),
            max_connections: 0,
            max_connections_per_address: 1024,
        }
    }
}

/// Accepts one connection, set to send at once (`TCP_NODELAY`): a gRPC
/// answer is written as headers, data and trailers, and Nagle's algorithm
/// held the last write until the client's delayed ACK (~40 ms a call).
pub async fn accept(listener: &TcpListener) -> std::io::Result<(tokio::net::TcpStream, std::net::SocketAddr)> {
    let (tcp, peer) = listener.accept().await?;
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::warn!(error = %e, "cannot set TCP_NODELAY on an accepted socket");
    }
    Ok((tcp, peer))
}

/// hyper's smallest read buffer for HTTP/1.1.
const MIN_HTTP1_BUFFER: usize = 8192;

/// Descriptors kept free of connections when their bound comes from the
/// open-files limit: the admin listener, the database pools, files.
const RESERVED_DESCRIPTORS: usize = 512;

/// The bound on open connections: as set, or the open-files limit less
/// what the rest of the process needs.
fn connection_bound(limits: &ConnectionLimits) -> usize {
    if limits.max_connections > 0 {
        return limits.max_connections;
    }
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit only writes the struct it is given.
    let soft = match unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } {
        0 => usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX),
        _ => 1024,
    };
    soft.saturating_sub(RESERVED_DESCRIPTORS).max(64)
}

/// Connections open now, in all and by peer address.
#[derive(Default)]
struct OpenConnections {
    total: usize,
    by_address: std::collections::HashMap<std::net::IpAddr, usize>,
}

/// A connection's place in [`OpenConnections`], given back when it closes.
struct Place {
    open: Arc<std::sync::Mutex<OpenConnections>>,
    address: std::net::IpAddr,
}

impl Place {
    /// A place for a connection from `address`, unless either bound is reached.
    fn take(
        open: &Arc<std::sync::Mutex<OpenConnections>>,
        address: std::net::IpAddr,
        bound: usize,
        per_address: usize,
    ) -> Option<Self> {
        let mut counts = open.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let from_address = counts.by_address.get(&address).copied().unwrap_or(0);
        if counts.total >= bound || (per_address > 0 && from_address >= per_address) {
            return None;
        }
        counts.total += 1;
        counts.by_address.insert(address, from_address + 1);
        Some(Self { open: open.clone(), address })
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut counts = self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        counts.total = counts.total.saturating_sub(1);
        if let std::collections::hash_map::Entry::Occupied(mut entry) = counts.by_address.entry(self.address) {
            *entry.get_mut() -= 1;
            if *entry.get() == 0 {
                entry.remove();
            }
        }
    }
}

/// The HTTP/2 connection preface and the header of the SETTINGS frame that
/// must follow it: what a client sends before anything else.
const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HTTP2_OPENING: usize = HTTP2_PREFACE.len() + 9;

/// What a connection has sent so far: enough to tell whether it opened
/// HTTP/2 properly, and whether it sent a whole request.
#[derive(Default)]
struct Opening {
    /// Bytes read, up to [`HTTP2_OPENING`].
    start: std::sync::Mutex<Vec<u8>>,
    /// A request head was complete (the service saw a request).
    request: AtomicBool,
}

impl Opening {
    /// Whether the peer has done what a client must within the header
    /// timeout: sent a request, or the whole HTTP/2 preface and SETTINGS.
    fn opened(&self) -> bool {
        if self.request.load(Ordering::Relaxed) {
            return true;
        }
        let start = self.start.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        start.len() >= HTTP2_OPENING && start.starts_with(HTTP2_PREFACE)
    }
}

/// An IO that records the first bytes its peer sends in an [`Opening`].
struct Watched<I> {
    io: I,
    opening: Arc<Opening>,
    /// Bytes recorded so far: once the opening is complete, reads no
    /// longer touch the shared record.
    recorded: usize,
}

impl<I: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Watched<I> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.io).poll_read(cx, buf);
        if self.recorded < HTTP2_OPENING {
            let new = &buf.filled()[before..];
            let wanted = (HTTP2_OPENING - self.recorded).min(new.len());
            self.opening
                .start
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .extend_from_slice(&new[..wanted]);
            self.recorded += wanted;
        }
        polled
    }
}

impl<I: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Watched<I> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// A plain or TLS connection.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Io for T {}

/// Completes once `draining` turns true; never if its sender is gone first.
async fn drain_started(draining: &mut watch::Receiver<bool>) {
    if draining.wait_for(|d| *d).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Serves `app` on `listener` until `stop` completes. Once `draining` turns
/// true (readiness has dropped; connections are still accepted while load
/// balancers notice), every HTTP/1.1 answer carries `Connection: close` and
/// HTTP/2 connections get GOAWAY, so clients move to new connections
/// instead of reusing one that is about to close under a request they are
/// sending. When `stop` completes, accepting stops, every open connection
/// is asked to finish (HTTP/2 GOAWAY; HTTP/1.1 closes after its current
/// answer) and waited for up to `limits.drain_timeout`; calls still open
/// then are dropped.
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    limits: ConnectionLimits,
    tls: Option<crate::server::tls::Tls>,
    draining: watch::Receiver<bool>,
    stop: impl Future<Output = ()>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(MIN_HTTP1_BUFFER))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(limits.http2_max_concurrent_streams)
        .keep_alive_interval(limits.http2_keep_alive)
        .keep_alive_timeout(limits.http2_keep_alive);
    let (stopping, stopped) = watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    let (bound, open) = (connection_bound(&limits), Arc::new(std::sync::Mutex::new(OpenConnections::default())));
    tokio::pin!(stop);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = accept(&listener) => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait, do not spin.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            // Finished connections are reaped as they end.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            () = &mut stop => break,
        };
        // Beyond either bound a connection is closed at once: its
        // descriptor is what the process and every other client need.
        let Some(place) = Place::take(&open, peer.ip(), bound, limits.max_connections_per_address) else {
            tracing::debug!(%peer, bound, per_address = limits.max_connections_per_address, "too many connections; closed");
            continue;
        };
        let opening = Arc::new(Opening::default());
        let http2 = Arc::new(AtomicBool::new(false));
        let (seen, speaks_h2, closing, requested) = (http2.clone(), http2.clone(), draining.clone(), opening.clone());
        // Each request carries the peer's address (anonymous callers are
        // rate-limited by it); the connection remembers whether it speaks
        // HTTP/2; while draining, HTTP/1.1 answers say `Connection: close`.
        let service = app
            .clone()
            .map_request(move |mut req: http::Request<hyper::body::Incoming>| {
                if req.version() == http::Version::HTTP_2 {
                    seen.store(true, Ordering::Relaxed);
                }
                requested.request.store(true, Ordering::Relaxed);
                req.extensions_mut().insert(ConnectInfo(peer));
                req
            })
            .map_response(move |mut response: axum::response::Response| {
                // HTTP/2 has no such header (it is told with GOAWAY).
                if *closing.borrow() && !speaks_h2.load(Ordering::Relaxed) {
                    response.headers_mut().insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
                }
                response
            });
        let service = TowerToHyperService::new(service);
        let (builder, tls) = (builder.clone(), tls.as_ref().map(|tls| tls.acceptor()));
        let (mut draining, mut stopped) = (draining.clone(), stopped.clone());
        connections.spawn(async move {
            let _place = place;
            let io: Box<dyn Io> = match tls {
                None => Box::new(tcp),
                Some(acceptor) => {
                    // The handshake is bounded like a request head.
                    match tokio::time::timeout(limits.header_read_timeout, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => Box::new(stream),
                        Ok(Err(e)) => return tracing::debug!(error = %e, %peer, "TLS handshake failed"),
                        Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            };
            let io = Watched { io, opening: opening.clone(), recorded: 0 };
            let connection = builder.serve_connection(TokioIo::new(io), service);
            tokio::pin!(connection);
            // A peer that sends no request head (nor the HTTP/2 opening) in
            // the header timeout is closed: silent sockets hold descriptors.
            let opening_deadline = tokio::time::sleep(limits.header_read_timeout);
            tokio::pin!(opening_deadline);
            let (mut goaway_sent, mut finishing, mut opened) = (false, false, false);
            loop {
                tokio::select! {
                    () = &mut opening_deadline, if !opened => {
                        opened = true;
                        if !opening.opened() {
                            return tracing::debug!(%peer, "no request head within the header timeout; closed");
                        }
                    }
                    ended = connection.as_mut() => {
                        if let Err(e) = ended {
                            tracing::debug!(error = %e, %peer, "connection ended with an error");
                        }
                        return;
                    }
                    () = drain_started(&mut draining), if !goaway_sent && !finishing => {
                        // HTTP/1.1 is told to close by its answers instead.
                        goaway_sent = true;
                        if http2.load(Ordering::Relaxed) {
                            connection.as_mut().graceful_shutdown();
                        }
                    }
                    () = drain_started(&mut stopped), if !finishing => {
                        finishing = true;
                        connection.as_mut().graceful_shutdown();
                    }
                }
            }
        });
    }
    drop(listener);
    let _ = stopping.send(true);
    tracing::info!(connections = connections.len(), "stopped accepting; finishing calls in flight");
    let finished = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(limits.drain_timeout, finished).await.is_err() {
        tracing::warn!("the drain deadline passed with calls still in flight; they are dropped");
        connections.abort_all();
    }
}
