//! Read routing: a unary call whose method is declared free of side
//! effects gets the pool it reads from ([`ReadPool`]: a replica's when one
//! may serve it, see [`crate::postgres::replicas`]); after a write by an
//! authenticated caller, the caller's commit position is kept before the
//! answer leaves, so that their next read, through any conduit replica,
//! sees it, and the answer carries it ([`WAL_POSITION`]) for clients that
//! would rather send it back than have it looked up.
//!
//! Streams read from the primary: an export holds one snapshot for as long
//! as its client reads, which a standby cancels once it holds back replay
//! (`max_standby_streaming_delay`), and a notification watch reads the rows
//! a `NOTIFY` from the primary announced, which a replica may not have yet.

use std::task::{Context, Poll};

use axum::body::Body;
use http::{Request, Response};
use http_body_util::BodyExt as _;

use crate::domain::auth::{Caller, UserSlot};
use crate::observability::metrics::Metrics;
use crate::postgres::replicas::{ReadPool, Reason, Replicas, WAL_POSITION, format_position, parse_position};
use tower::ServiceExt as _;

/// What the layer does with a call of a method.
enum Role {
    /// Reads: choose the pool.
    Read,
    /// May change data: keep the writer's position once it succeeded.
    Write,
    /// Neither (streams, logins).
    Pass,
}

/// Routes reads between the primary and its replicas, per RPC.
#[derive(Clone)]
pub struct ReadRoutingLayer {
    gateway: gateway::Gateway,
    replicas: Replicas,
    metrics: Metrics,
}

impl ReadRoutingLayer {
    /// Routes by the methods `gateway` describes, over `replicas`.
    pub fn new(gateway: gateway::Gateway, replicas: Replicas, metrics: Metrics) -> Self {
        Self { gateway, replicas, metrics }
    }

    fn role<B>(&self, req: &Request<B>) -> Role {
        let Some(spec) = req.extensions().get::<gateway::RpcMethod>().and_then(|rpc| self.gateway.method(rpc.0)) else {
            return Role::Pass;
        };
        let unary = matches!(spec.kind, gateway::MethodKind::Unary);
        match (spec.no_side_effects, unary) {
            (true, true) => Role::Read,
            (true, false) => Role::Pass,
            (false, _) if spec.changes_no_data => Role::Pass,
            (false, _) => Role::Write,
        }
    }
}

impl<S> tower::Layer<S> for ReadRoutingLayer {
    type Service = ReadRouting<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ReadRouting { layer: self.clone(), inner }
    }
}

/// The service of [`ReadRoutingLayer`].
#[derive(Clone)]
pub struct ReadRouting<S> {
    layer: ReadRoutingLayer,
    inner: S,
}

impl<S> tower::Service<Request<Body>> for ReadRouting<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = futures_util::future::BoxFuture<'static, Result<Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let role = self.layer.role(&req);
        let caller = req.extensions().get::<Caller>().map(|c| c.user_id);
        let layer = self.layer.clone();
        // The clone that was made ready is the one called.
        let ready = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, ready);
        match role {
            Role::Pass => Box::pin(inner.call(req)),
            Role::Read => Box::pin(read(layer, inner, req, caller)),
            Role::Write => Box::pin(write(layer, inner, req, caller)),
        }
    }
}

/// The consistency token a request carries ([`WAL_POSITION`]): `None`
/// without one, `Some(None)` for one that is not a position.
pub(crate) fn position_in(headers: &http::HeaderMap) -> Option<Option<u64>> {
    headers.get(WAL_POSITION).map(|v| v.to_str().ok().and_then(parse_position))
}

/// A read: routed by the client's token, else the caller's last write,
/// else the lag allowed; read again from the primary if the replica fails it.
async fn read<S>(
    layer: ReadRoutingLayer,
    mut inner: S,
    req: Request<Body>,
    caller: Option<i64>,
) -> Result<Response<Body>, S::Error>
where
    S: tower::Service<Request<Body>, Response = Response<Body>> + Clone,
{
    let route = match (position_in(req.headers()), caller) {
        (Some(None), _) => {
            let status = tonic::Status::invalid_argument(format!(
                "the {WAL_POSITION} header must be a WAL position as answers to writes carry it (like 16/B374D848)"
            ));
            return Ok(layer.gateway.reject_as(&req, http::StatusCode::BAD_REQUEST, &status));
        }
        (Some(Some(position)), _) => layer.replicas.for_position(position),
        (None, Some(user)) => layer.replicas.for_writer(user).await,
        (None, None) => layer.replicas.for_anyone(),
    };
    layer.metrics.read_routed(route.reason.as_str());
    let Some(pool) = route.replica.clone() else {
        return inner.call(req).await;
    };
    // Kept to be read again from the primary should the replica fail it:
    // the body is already in memory (`ReadBodyLayer`), and a read changes nothing.
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(body) => body.to_bytes(),
        Err(error) => {
            let status = tonic::Status::invalid_argument(format!("cannot read the request body: {error}"));
            let req = Request::from_parts(parts, ());
            return Ok(layer.gateway.reject_as(&req, http::StatusCode::BAD_REQUEST, &status));
        }
    };
    let again = inner.clone();
    let mut req = Request::from_parts(parts.clone(), Body::from(body.clone()));
    req.extensions_mut().insert(ReadPool(pool));
    let mut response = layer.replicas.read_through(&route, inner.call(req)).await?;
    if !is_server_failure(&response) {
        if let Some(from) = layer.replicas.read_from(&route) {
            response.extensions_mut().insert(from);
        }
        return Ok(response);
    }
    layer.metrics.read_routed(Reason::ReplicaFailed.as_str());
    drop(response);
    again.oneshot(Request::from_parts(parts, Body::from(body))).await
}

/// A write: run apart from the caller's future (a client that goes away or
/// a deadline that passes once the write committed must not skip keeping
/// its position), then the position of the user it acted for kept and
/// carried by the answer, whatever the answer (a write may commit and its
/// answer still fail).
async fn write<S>(
    layer: ReadRoutingLayer,
    mut inner: S,
    mut req: Request<Body>,
    caller: Option<i64>,
) -> Result<Response<Body>, S::Error>
where
    S: tower::Service<Request<Body>, Response = Response<Body>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    // The caller, or the user a registration made (which the service leaves in the slot).
    let slot = match req.extensions().get::<UserSlot>() {
        Some(slot) => slot.clone(),
        None => {
            let slot = UserSlot::default();
            req.extensions_mut().insert(slot.clone());
            slot
        }
    };
    let call = tokio::spawn(async move {
        let mut response = inner.call(req).await;
        let Some(user) = caller.or_else(|| slot.0.get().copied()) else {
            return response;
        };
        match layer.replicas.wrote(user).await {
            Ok(position) => {
                if let Ok(response) = response.as_mut()
                    && let Ok(value) = http::HeaderValue::try_from(format_position(position))
                {
                    response.headers_mut().insert(WAL_POSITION, value);
                }
            }
            // The write stands; this writer's reads may lag it (within
            // READ_MAX_LAG) until their next write.
            Err(error) => tracing::warn!(user, %error, "cannot keep a writer's position"),
        }
        response
    });
    match call.await {
        Ok(response) => response,
        Err(failed) if failed.is_panic() => std::panic::resume_unwind(failed.into_panic()),
        // Cancelled: the runtime is shutting down.
        Err(_) => {
            let mut response = Response::new(Body::empty());
            *response.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
            Ok(response)
        }
    }
}

/// Whether a read failed in a way the primary may not: the replica was
/// unreachable or went away (UNAVAILABLE), cancelled the statement for a
/// conflict with replay (ABORTED), or failed otherwise (INTERNAL), in any
/// protocol. A read declared free of side effects is never refused with
/// these for the client's own mistake.
fn is_server_failure(response: &Response<Body>) -> bool {
    matches!(response.status().as_u16(), 409 | 500 | 503)
        || response.headers().get("grpc-status").is_some_and(|code| matches!(code.as_bytes(), b"10" | b"13" | b"14"))
}
