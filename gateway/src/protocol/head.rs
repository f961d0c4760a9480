//! `HEAD` answered wherever `GET` is (RFC 9110 §9.3.2): the same status and
//! headers, no content. Uptime and link checkers ask with `HEAD`.
//!
//! The request goes on as a `GET`, so every route, rule, layer and cache
//! treats it as the `GET` it stands for; only the body of the answer is
//! dropped, and its length, when known, is kept in `Content-Length`.

use std::convert::Infallible;
use std::task::{Context, Poll};

use axum::body::Body;
use futures_util::future::{BoxFuture, Either};
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body::Body as _;

/// Serves `HEAD` as `GET` without the body; see the [module](self).
#[derive(Clone, Copy, Debug, Default)]
pub struct HeadLayer;

impl<S> tower::Layer<S> for HeadLayer {
    type Service = Head<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Head { inner }
    }
}

/// The service of [`HeadLayer`].
#[derive(Clone, Debug)]
pub struct Head<S> {
    inner: S,
}

impl<S, B> tower::Service<Request<B>> for Head<S>
where
    S: tower::Service<Request<B>, Response = Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Either<S::Future, BoxFuture<'static, Result<Response<Body>, Infallible>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        if req.method() != Method::HEAD {
            return Either::Left(self.inner.call(req));
        }
        *req.method_mut() = Method::GET;
        let answer = self.inner.call(req);
        Either::Right(Box::pin(async move {
            let (mut parts, body) = answer.await?.into_parts();
            // As the `GET` would have been sent; 204 and 304 carry no length.
            let has_length = !matches!(parts.status, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED);
            if has_length
                && !parts.headers.contains_key(header::CONTENT_LENGTH)
                && let Some(length) = body.size_hint().exact()
            {
                parts.headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
            }
            Ok(Response::from_parts(parts, Body::empty()))
        }))
    }
}
