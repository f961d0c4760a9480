//! Load shedding: a bound on the requests served at once, beyond which a
//! request is refused at once rather than queued without limit.

use std::sync::Arc;
use std::time::Duration;

/// Sheds load: at most `limit` requests are served at once; one more is
/// refused at once with UNAVAILABLE (503 over HTTP) and `Retry-After: 1`, in
/// its own protocol, instead of waiting in an unbounded queue. A request
/// holds its place until its answer starts (a stream, once started, is not
/// counted).
#[derive(Clone)]
pub struct ShedLayer {
    permits: Arc<tokio::sync::Semaphore>,
    gateway: gateway::Gateway,
    metrics: crate::observability::metrics::Metrics,
}

impl ShedLayer {
    /// Serves at most `limit` requests at once, counting refusals in `metrics`.
    pub fn new(limit: usize, gateway: gateway::Gateway, metrics: crate::observability::metrics::Metrics) -> Self {
        Self { permits: Arc::new(tokio::sync::Semaphore::new(limit)), gateway, metrics }
    }
}

impl<S> tower::Layer<S> for ShedLayer {
    type Service = Shed<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Shed { layer: self.clone(), inner }
    }
}

/// The service of [`ShedLayer`].
#[derive(Clone)]
pub struct Shed<S> {
    layer: ShedLayer,
    inner: S,
}

impl<S> tower::Service<http::Request<axum::body::Body>> for Shed<S>
where
    S: tower::Service<http::Request<axum::body::Body>, Response = http::Response<axum::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures_util::future::BoxFuture<'static, Result<http::Response<axum::body::Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<axum::body::Body>) -> Self::Future {
        let Ok(permit) = self.layer.permits.clone().try_acquire_owned() else {
            self.layer.metrics.shed();
            let status = crate::domain::error::unavailable(
                "the server is at capacity; try again shortly",
                Duration::from_secs(1),
            );
            return Box::pin(std::future::ready(Ok(self.layer.gateway.reject(&req, &status))));
        };
        let answer = self.inner.call(req);
        Box::pin(async move {
            let response = answer.await;
            drop(permit);
            response
        })
    }
}
