//! Fail fast while the database is down: calls are refused at once in their
//! own protocol instead of each waiting for a pooled connection that will
//! not come, and calls already in flight when it goes down are answered
//! then rather than at the end of their pool wait. The database's state is
//! [`Health`]'s; a call the service answers with UNAVAILABLE has it
//! checked at once.

use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use futures_util::future::BoxFuture;
use http::{Request, Response};

use crate::observability::health::Health;

/// Fails the gateway's methods fast while the database is known to be down:
/// UNAVAILABLE (503 over HTTP) with `Retry-After` and a
/// `google.rpc.RetryInfo`, in the request's own protocol. Health and
/// reflection keep answering; calls flow again as soon as a probe finds the
/// database back.
#[derive(Clone)]
pub struct AvailabilityLayer {
    health: Health,
    gateway: gateway::Gateway,
    retry_after: Duration,
}

impl AvailabilityLayer {
    /// Refuses calls while `health` sees the database down; clients are
    /// told to retry after `retry_after`.
    pub fn new(health: Health, gateway: gateway::Gateway, retry_after: Duration) -> Self {
        Self { health, gateway, retry_after }
    }

    fn refusal<B>(&self, req: &Request<B>) -> Response<Body> {
        let status =
            crate::domain::error::unavailable("the database is unavailable; try again shortly", self.retry_after);
        self.gateway.reject(req, &status)
    }
}

impl<S> tower::Layer<S> for AvailabilityLayer {
    type Service = Availability<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Availability { layer: self.clone(), inner }
    }
}

/// The service of [`AvailabilityLayer`].
#[derive(Clone)]
pub struct Availability<S> {
    layer: AvailabilityLayer,
    inner: S,
}

impl<S> tower::Service<Request<Body>> for Availability<S>
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
        let serves =
            req.extensions().get::<gateway::RpcMethod>().is_some_and(|rpc| self.layer.gateway.method(rpc.0).is_some());
        if !serves {
            return Box::pin(self.inner.call(req));
        }
        if self.layer.health.database_down() {
            return Box::pin(std::future::ready(Ok(self.layer.refusal(&req))));
        }
        let head = gateway::Gateway::refusal_head(&req);
        let down = self.layer.health.until_database_down();
        let answer = self.inner.call(req);
        let layer = self.layer.clone();
        Box::pin(async move {
            tokio::select! {
                biased;
                answer = answer => {
                    if answer.as_ref().is_ok_and(is_unavailable) {
                        layer.health.suspect();
                    }
                    answer
                }
                // Found down meanwhile: whatever the call waits for (a pooled
                // connection, most likely) will not come.
                () = down => Ok(layer.refusal(&head)),
            }
        })
    }
}

/// Whether the service answered UNAVAILABLE (the only code it gives when
/// the database cannot be reached), in any protocol.
fn is_unavailable(response: &Response<Body>) -> bool {
    response.status() == http::StatusCode::SERVICE_UNAVAILABLE
        || response.headers().get("grpc-status").is_some_and(|code| code == "14")
}
