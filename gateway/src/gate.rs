//! A layer that lets a request through or answers it at once: the shape of
//! every check that may refuse a call before it reaches a service
//! (authentication, availability, limits), written once.

use std::task::{Context, Poll};

use axum::body::Body;
use futures_util::future::Either;
use http::{Request, Response};

/// Decides, per request, whether it goes on.
pub trait Admission: Clone + Send + Sync + 'static {
    /// `None` lets the request through (it may be annotated on the way);
    /// `Some` is the answer to send instead.
    fn refuse(&self, req: &mut Request<Body>) -> Option<Response<Body>>;
}

/// Applies an [`Admission`] to every request.
#[derive(Clone, Debug)]
pub struct GateLayer<A> {
    admission: A,
}

impl<A> GateLayer<A> {
    /// A gate deciding with `admission`.
    pub fn new(admission: A) -> Self {
        Self { admission }
    }
}

impl<A: Clone, S> tower::Layer<S> for GateLayer<A> {
    type Service = Gate<A, S>;

    fn layer(&self, inner: S) -> Self::Service {
        Gate { admission: self.admission.clone(), inner }
    }
}

/// The service of [`GateLayer`].
#[derive(Clone, Debug)]
pub struct Gate<A, S> {
    admission: A,
    inner: S,
}

impl<A, S> tower::Service<Request<Body>> for Gate<A, S>
where
    A: Admission,
    S: tower::Service<Request<Body>, Response = Response<Body>>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Either<S::Future, std::future::Ready<Result<Response<Body>, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        match self.admission.refuse(&mut req) {
            None => Either::Left(self.inner.call(req)),
            Some(response) => Either::Right(std::future::ready(Ok(response))),
        }
    }
}

/// Work done around each call: `before` sees (and may change) the request
/// and keeps what `after` needs to finish the answer.
pub trait Around: Clone + Send + Sync + 'static {
    /// What `before` hands to `after`.
    type State: Send + 'static;

    /// Runs before the call.
    fn before(&self, req: &mut Request<Body>) -> Self::State;

    /// Finishes the answer.
    fn after(state: Self::State, response: Response<Body>) -> futures_util::future::BoxFuture<'static, Response<Body>>;
}

/// Applies an [`Around`] to every call.
#[derive(Clone, Debug)]
pub struct AroundLayer<A> {
    around: A,
}

impl<A> AroundLayer<A> {
    /// A layer running `around`.
    pub fn new(around: A) -> Self {
        Self { around }
    }
}

impl<A: Clone, S> tower::Layer<S> for AroundLayer<A> {
    type Service = AroundService<A, S>;

    fn layer(&self, inner: S) -> Self::Service {
        AroundService { around: self.around.clone(), inner }
    }
}

/// The service of [`AroundLayer`].
#[derive(Clone, Debug)]
pub struct AroundService<A, S> {
    around: A,
    inner: S,
}

impl<A, S> tower::Service<Request<Body>> for AroundService<A, S>
where
    A: Around,
    S: tower::Service<Request<Body>, Response = Response<Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = futures_util::future::BoxFuture<'static, Result<Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let state = self.around.before(&mut req);
        let answer = self.inner.call(req);
        Box::pin(async move { Ok(A::after(state, answer.await?).await) })
    }
}
