//! Bodies before places: the one request message of a unary or
//! server-streaming call is read whole before any layer below admits the
//! call, so a client that trickles its body in holds no shed place, rate-limit
//! token or database connection while it does. Reading is bounded in time
//! (`BODY_READ_TIMEOUT`: 408, or DEADLINE_EXCEEDED in the call's protocol)
//! and, per client address, in number (`BODY_READS_PER_ADDRESS`: beyond it,
//! RESOURCE_EXHAUSTED / 429 at once), so that one address cannot hold an
//! unbounded share of memory either. A gRPC or gRPC-Web message read whole
//! is checked for broken framing (a length prefix longer than the data,
//! `grpc-web-text` that is not base64), the client's mistake:
//! INVALID_ARGUMENT, where tonic's framing would answer INTERNAL. Client and
//! bidirectional streams pass untouched: their messages arrive over the
//! call's life, under its deadline.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::{Buf, Bytes};
use futures_util::future::BoxFuture;
use gateway::{Gateway, MethodKind, Protocol, RpcMethod};
use http::{Request, Response, StatusCode};
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::BodyExt;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::middleware::client::ClientAddresses;

/// Reads unary request bodies before admission; see the module documentation.
#[derive(Clone)]
pub struct ReadBodyLayer {
    gateway: Gateway,
    timeout: Duration,
    /// Bytes read before the rest is left to the service's own size check.
    limit: usize,
    per_address: usize,
    clients: ClientAddresses,
    reading: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl ReadBodyLayer {
    /// Reads bodies of up to `limit` bytes within `timeout`, at most
    /// `per_address` at once per client address.
    pub fn new(
        gateway: Gateway,
        timeout: Duration,
        limit: usize,
        per_address: usize,
        clients: ClientAddresses,
    ) -> Self {
        Self { gateway, timeout, limit, per_address, clients, reading: Arc::default() }
    }

    /// Whether the call's body is one message to read before admission.
    fn reads_first(&self, req: &Request<Body>) -> bool {
        if req.body().is_end_stream() {
            return false;
        }
        // A declared length over the limit is the service's to refuse at once, unread.
        if self.declared_over_limit(req) {
            return false;
        }
        let Some(rpc) = req.extensions().get::<RpcMethod>() else { return false };
        self.gateway.method(rpc.0).is_some_and(|m| matches!(m.kind, MethodKind::Unary | MethodKind::ServerStreaming))
    }

    /// Whether the body declares a length over the limit.
    fn declared_over_limit<B>(&self, req: &Request<B>) -> bool {
        let declared =
            req.headers().get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        declared.is_some_and(|n| n > self.limit as u64)
    }

    /// Whether the call is gRPC or gRPC-Web, whose size check would
    /// otherwise be tonic's (OUT_OF_RANGE, where the gateway's Connect and
    /// JSON answers and grpc-go say RESOURCE_EXHAUSTED).
    fn is_grpc<B>(&self, req: &Request<B>) -> bool {
        matches!(req.extensions().get::<Protocol>(), Some(Protocol::Grpc | Protocol::GrpcWeb))
    }

    /// RESOURCE_EXHAUSTED for a body over the limit, in the call's protocol.
    fn too_large<B>(&self, req: &Request<B>) -> Response<Body> {
        let status = Status::resource_exhausted(format!(
            "the request message is larger than the {} bytes this server accepts (BODY_LIMIT)",
            self.limit
        ));
        self.gateway.reject_as(req, StatusCode::PAYLOAD_TOO_LARGE, &status)
    }

    /// Takes one of `address`'s reading places, if one is free.
    fn enter(&self, address: IpAddr) -> Option<Reading> {
        let mut reading = self.reading.lock().unwrap_or_else(|e| e.into_inner());
        let count = reading.entry(address).or_insert(0);
        if *count >= self.per_address {
            return None;
        }
        *count += 1;
        Some(Reading { address, reading: self.reading.clone() })
    }
}

/// One body being read from an address; the place is given back on drop.
struct Reading {
    address: IpAddr,
    reading: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Drop for Reading {
    fn drop(&mut self) {
        let mut reading = self.reading.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = reading.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                reading.remove(&self.address);
            }
        }
    }
}

impl<S> tower::Layer<S> for ReadBodyLayer {
    type Service = ReadBody<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ReadBody { layer: self.clone(), inner }
    }
}

/// The service of [`ReadBodyLayer`].
#[derive(Clone)]
pub struct ReadBody<S> {
    layer: ReadBodyLayer,
    inner: S,
}

impl<S> tower::Service<Request<Body>> for ReadBody<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        if self.layer.is_grpc(&req) && self.layer.declared_over_limit(&req) {
            return Box::pin(std::future::ready(Ok(self.layer.too_large(&req))));
        }
        if !self.layer.reads_first(&req) {
            return Box::pin(self.inner.call(req));
        }
        let place = match self.layer.clients.of(&req) {
            Some(address) => match self.layer.enter(address) {
                Some(place) => Some(place),
                None => {
                    let status = Status::with_error_details(
                        Code::ResourceExhausted,
                        format!(
                            "more than {} request bodies are being sent at once from this address; \
                             finish one before starting another",
                            self.layer.per_address
                        ),
                        ErrorDetails::with_retry_info(Some(Duration::from_secs(1))),
                    );
                    let refusal = self.layer.gateway.reject_as(&req, StatusCode::TOO_MANY_REQUESTS, &status);
                    return Box::pin(std::future::ready(Ok(refusal)));
                }
            },
            None => None,
        };
        // The service that was made ready is the one called; a clone takes its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let read = tokio::time::timeout(layer.timeout, read_up_to(body, layer.limit)).await;
            drop(place);
            let req = Request::from_parts(parts, ());
            match read {
                Ok(Ok(body)) if body.rest.is_some() && layer.is_grpc(&req) => Ok(layer.too_large(&req)),
                Ok(Ok(mut body)) => {
                    // A whole gRPC or gRPC-Web message whose framing is broken is the
                    // client's mistake; tonic's framing would call it INTERNAL.
                    if let Err(problem) = body.check_grpc_framing(&req) {
                        let status = Status::invalid_argument(problem);
                        return Ok(layer.gateway.reject_as(&req, StatusCode::BAD_REQUEST, &status));
                    }
                    inner.call(req.map(|()| Body::new(body))).await
                }
                Ok(Err(e)) => {
                    let status = Status::invalid_argument(format!("cannot read the request body: {e}"));
                    Ok(layer.gateway.reject_as(&req, StatusCode::BAD_REQUEST, &status))
                }
                Err(_) => {
                    let status = Status::deadline_exceeded(format!(
                        "the request body did not arrive within {} ms",
                        layer.timeout.as_millis()
                    ));
                    let mut refusal = layer.gateway.reject_as(&req, StatusCode::REQUEST_TIMEOUT, &status);
                    // The rest of the body is never read: the connection cannot carry another request.
                    if req.version() < http::Version::HTTP_2 {
                        refusal.headers_mut().insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
                    }
                    Ok(refusal)
                }
            }
        })
    }
}

/// Reads `body` until its end, or until more than `limit` bytes came (the
/// rest is then left unread, for the service's own size check to refuse).
async fn read_up_to(mut body: Body, limit: usize) -> Result<Replay, axum::Error> {
    let mut frames = VecDeque::new();
    let mut size = 0;
    while size <= limit {
        match body.frame().await {
            None => return Ok(Replay { frames, size, rest: None }),
            Some(frame) => {
                let frame = frame?;
                size += frame.data_ref().map_or(0, Bytes::remaining);
                frames.push_back(frame);
            }
        }
    }
    Ok(Replay { frames, size, rest: Some(body) })
}

/// A body read ahead: the frames already read (data and trailers alike),
/// then whatever was left unread.
struct Replay {
    frames: VecDeque<Frame<Bytes>>,
    /// Data bytes in `frames`.
    size: usize,
    rest: Option<Body>,
}

impl Replay {
    /// For a gRPC or gRPC-Web request read whole: its messages must be
    /// whole frames (flags 0 or 1, then as many bytes as the length prefix
    /// says), and `grpc-web-text` must be base64 (padded groups of four, as
    /// the spec lets a client send each message's text apart; the body is
    /// then handed on as one canonical text). `Err` says what is wrong.
    fn check_grpc_framing(&mut self, req: &Request<()>) -> Result<(), String> {
        let content_type = req.headers().get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        let is_grpc = content_type.starts_with("application/grpc");
        if !is_grpc || self.rest.is_some() || self.frames.iter().any(|f| !f.is_data()) {
            return Ok(());
        }
        let mut body = Vec::with_capacity(self.size);
        for frame in &self.frames {
            if let Some(data) = frame.data_ref() {
                body.extend_from_slice(data.chunk());
            }
        }
        let text = content_type.starts_with("application/grpc-web-text");
        let binary = gateway::check_grpc_body(&body, text)?;
        if text {
            use base64::Engine as _;
            let canonical = Bytes::from(base64::engine::general_purpose::STANDARD.encode(&binary));
            self.size = canonical.len();
            self.frames = VecDeque::from([Frame::data(canonical)]);
        }
        Ok(())
    }
}

impl http_body::Body for Replay {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        if let Some(frame) = self.frames.pop_front() {
            self.size -= frame.data_ref().map_or(0, Bytes::remaining);
            return Poll::Ready(Some(Ok(frame)));
        }
        match self.rest.as_mut() {
            Some(rest) => Pin::new(rest).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_empty() && self.rest.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        let size = self.size as u64;
        match &self.rest {
            None => SizeHint::with_exact(size),
            Some(rest) => {
                let rest = rest.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(size + rest.lower());
                if let Some(upper) = rest.upper() {
                    hint.set_upper(size + upper);
                }
                hint
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_body_read_ahead_replays_every_frame_and_leaves_an_overlong_rest_unread() {
        let body = || {
            let frames: [Result<Frame<Bytes>, axum::Error>; 3] = [
                Ok(Frame::data(Bytes::from_static(b"abc"))),
                Ok(Frame::data(Bytes::from_static(b"defg"))),
                Ok(Frame::trailers(http::HeaderMap::new())),
            ];
            Body::new(http_body_util::StreamBody::new(futures_util::stream::iter(frames)))
        };
        let whole = read_up_to(body(), 100).await.unwrap();
        assert!(whole.rest.is_none());
        assert_eq!(whole.size_hint().exact(), Some(7));
        let collected = whole.collect().await.unwrap();
        assert!(collected.trailers().is_some(), "trailers are kept");
        assert_eq!(collected.to_bytes(), "abcdefg");

        let cut = read_up_to(body(), 2).await.unwrap();
        assert!(cut.rest.is_some(), "reading stops past the limit");
        assert_eq!(cut.size_hint().lower(), 3);
        assert_eq!(cut.collect().await.unwrap().to_bytes(), "abcdefg", "and the rest still follows");
    }
}
