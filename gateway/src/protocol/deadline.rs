//! Call deadlines: `grpc-timeout` (gRPC, gRPC-Web) and the helpers the
//! Connect and gRPC-Web streams use to stop at theirs.
//!
//! tonic enforces `grpc-timeout` only inside `tonic::transport::Server`;
//! its routes served by another HTTP server (as here, on axum) do not, so
//! [`Deadline`] does it for them.

use std::convert::Infallible;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use futures_util::future::BoxFuture;
use futures_util::{Stream, StreamExt};
use http::{HeaderMap, HeaderValue, Request, Response};
use tokio::time::Instant;
use tonic::Status;

/// The status of a call that outlived its timeout.
pub(crate) fn deadline_exceeded() -> Status {
    Status::deadline_exceeded("the call did not finish within its timeout")
}

/// The deadline a client set with `grpc-timeout` (at most 8 digits and a
/// unit: `H`, `M`, `S`, `m`, `u`, `n`). A malformed value is ignored, as
/// tonic's own server does.
pub(crate) fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    let text = headers.get("grpc-timeout")?.to_str().ok()?;
    if text.len() < 2 || text.len() > 9 {
        return None;
    }
    let (digits, unit) = text.split_at(text.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let value: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(value * 3600),
        "M" => Duration::from_secs(value * 60),
        "S" => Duration::from_secs(value),
        "m" => Duration::from_millis(value),
        "u" => Duration::from_micros(value),
        "n" => Duration::from_nanos(value),
        _ => return None,
    })
}

/// `limit` as a `grpc-timeout` value, in the finest unit that fits 8 digits.
pub(crate) fn grpc_timeout_header(limit: Duration) -> HeaderValue {
    const MAX: u128 = 99_999_999;
    let value = [(limit.as_millis(), "m"), (u128::from(limit.as_secs()), "S"), (u128::from(limit.as_secs() / 60), "M")]
        .into_iter()
        .find(|(n, _)| *n <= MAX)
        .map(|(n, unit)| format!("{n}{unit}"))
        .unwrap_or_else(|| format!("{}H", (limit.as_secs() / 3600).min(MAX as u64)));
    HeaderValue::from_str(&value).expect("digits and a unit letter are a valid header value")
}

/// `work`, or `DEADLINE_EXCEEDED` once `timeout` passes.
pub(crate) async fn with_deadline<T>(
    timeout: Option<Duration>,
    work: impl std::future::Future<Output = Result<T, Status>>,
) -> Result<T, Status> {
    match timeout {
        None => work.await,
        Some(limit) => match tokio::time::timeout(limit, work).await {
            Ok(result) => result,
            Err(_) => {
                Err(Status::deadline_exceeded(format!("the call did not finish within {} ms", limit.as_millis())))
            }
        },
    }
}

/// The next item of `stream`, or `timed_out()` once `deadline` passes.
pub(crate) async fn next_before<S: Stream + Unpin>(
    deadline: Option<Instant>,
    stream: &mut S,
    timed_out: impl FnOnce() -> S::Item,
) -> Option<S::Item> {
    match deadline {
        Some(at) => tokio::time::timeout_at(at, stream.next()).await.unwrap_or_else(|_| Some(timed_out())),
        None => stream.next().await,
    }
}

/// Answers `DEADLINE_EXCEEDED` to a gRPC call that has no answer when its
/// `grpc-timeout` passes. Like tonic's server, it bounds the wait for the
/// answer's headers: a stream that has started is the service's to end.
#[derive(Clone, Debug)]
pub struct Deadline<S> {
    inner: S,
}

impl<S> Deadline<S> {
    /// Wraps a gRPC service.
    pub fn new(inner: S) -> Self {
        Self { inner }
    }
}

impl<S, B> tower::Service<Request<B>> for Deadline<S>
where
    S: tower::Service<Request<B>, Response = Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let limit = grpc_timeout(req.headers());
        let answer = self.inner.call(req);
        Box::pin(async move {
            match limit {
                None => answer.await,
                Some(limit) => match tokio::time::timeout(limit, answer).await {
                    Ok(response) => response,
                    Err(_) => Ok(Status::deadline_exceeded(format!(
                        "the call did not finish within its grpc-timeout ({} ms)",
                        limit.as_millis()
                    ))
                    .into_http()),
                },
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(value: &str) -> Option<Duration> {
        let mut headers = HeaderMap::new();
        headers.insert("grpc-timeout", HeaderValue::from_str(value).unwrap());
        grpc_timeout(&headers)
    }

    #[test]
    fn parses_every_unit_and_ignores_malformed_values() {
        assert_eq!(parse("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse("4S"), Some(Duration::from_secs(4)));
        assert_eq!(parse("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse("7u"), Some(Duration::from_micros(7)));
        assert_eq!(parse("99999999n"), Some(Duration::from_nanos(99_999_999)));
        for bad in ["", "m", "123456789m", "-1S", "1s", "1.5S", " 1S"] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn writes_the_finest_unit_that_fits() {
        assert_eq!(grpc_timeout_header(Duration::from_millis(1500)), "1500m");
        assert_eq!(grpc_timeout_header(Duration::from_secs(200_000)), "200000S");
        assert_eq!(grpc_timeout_header(Duration::from_millis(9_999_999_999)), "9999999S");
        assert_eq!(
            parse(grpc_timeout_header(Duration::from_secs(40)).to_str().unwrap()),
            Some(Duration::from_secs(40))
        );
    }
}

/// The server's own bound on every call, whatever deadline the client set:
/// a call without an answer after `limit` gets DEADLINE_EXCEEDED (504 over
/// HTTP) in its own protocol. Like [`Deadline`], it bounds the wait for the
/// answer to start; a started stream is the service's to end.
#[derive(Clone, Debug)]
pub struct TimeoutLayer {
    gateway: crate::gateway::Gateway,
    limit: Duration,
}

impl TimeoutLayer {
    /// Answers calls still pending after `limit`.
    pub fn new(gateway: crate::gateway::Gateway, limit: Duration) -> Self {
        Self { gateway, limit }
    }
}

impl<S> tower::Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Timeout { layer: self.clone(), inner }
    }
}

/// The service of [`TimeoutLayer`].
#[derive(Clone, Debug)]
pub struct Timeout<S> {
    layer: TimeoutLayer,
    inner: S,
}

impl<S> tower::Service<Request<Body>> for Timeout<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>>,
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
        let shadow = crate::Gateway::refusal_head(&req);
        let (gateway, limit) = (self.layer.gateway.clone(), self.layer.limit);
        let answer = self.inner.call(req);
        Box::pin(async move {
            match tokio::time::timeout(limit, answer).await {
                Ok(response) => response,
                Err(_) => {
                    let status = Status::deadline_exceeded(format!(
                        "the call did not finish within the server's limit of {} ms",
                        limit.as_millis()
                    ));
                    Ok(gateway.reject(&shadow, &status))
                }
            }
        })
    }
}
