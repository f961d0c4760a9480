//! The connection loop: HTTP/1.1 and HTTP/2 (prior knowledge) on one
//! listener, with bounds on slow or oversized request heads, keep-alive
//! settings, and a drain that stops accepting, lets open calls finish
//! until a deadline, then gives up on what is left.

use std::future::Future;
use std::time::Duration;

use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
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
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 64 * 1024,
            http2_max_concurrent_streams: 256,
            http2_keep_alive: Duration::from_secs(20),
            drain_timeout: Duration::from_secs(20),
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

/// Serves `app` on `listener` until `stop` completes, then stops accepting,
/// asks every open connection to finish (HTTP/2 GOAWAY; HTTP/1.1 closes
/// after its current answer) and waits for them up to
/// `limits.drain_timeout`; calls still open then are dropped.
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    limits: ConnectionLimits,
    tls: Option<crate::server::tls::Tls>,
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
    let graceful = GracefulShutdown::new();
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
            () = &mut stop => break,
        };
        // The peer's address identifies anonymous callers for rate limits.
        let service = app.clone().map_request(move |mut req: http::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            req
        });
        let service = TowerToHyperService::new(service);
        let Some(tls) = &tls else {
            let connection = builder.serve_connection(TokioIo::new(tcp), service).into_owned();
            let connection = graceful.watch(connection);
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, %peer, "connection ended with an error");
                }
            });
            continue;
        };
        let (acceptor, builder, watcher) = (tls.acceptor(), builder.clone(), graceful.watcher());
        tokio::spawn(async move {
            // The handshake is bounded like a request head.
            let stream = match tokio::time::timeout(limits.header_read_timeout, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => return tracing::debug!(error = %e, %peer, "TLS handshake failed"),
                Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
            };
            let connection = builder.serve_connection(TokioIo::new(stream), service).into_owned();
            if let Err(e) = watcher.watch(connection).await {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
        });
    }
    drop(listener);
    let open = graceful.count();
    tracing::info!(connections = open, "stopped accepting; finishing calls in flight");
    if tokio::time::timeout(limits.drain_timeout, graceful.shutdown()).await.is_err() {
        tracing::warn!("the drain deadline passed with calls still in flight; they are dropped");
    }
}
