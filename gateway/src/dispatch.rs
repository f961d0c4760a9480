//! Where each request goes: [`ClassifyLayer`] names its protocol and RPC
//! before any other layer runs, [`Dispatch`] sends it to tonic (gRPC,
//! gRPC-Web) or to the [`Gateway`], and the gateway as a tower service
//! sends it on to the protocol that serves it, or to its documentation.

use std::convert::Infallible;
use std::task::{Context, Poll};

use axum::body::Body;
use futures_util::future::BoxFuture;
use http::{Request, Response};

use crate::docs;
use crate::gateway::{Gateway, Protocol};
use crate::protocol::{self, deadline::Deadline};

impl tower::Service<Request<Body>> for Gateway {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        if req.extensions().get::<Protocol>().is_none() {
            self.classify(&mut req);
        }
        let gateway = self.clone();
        Box::pin(async move {
            Ok(match req.extensions().get::<Protocol>() {
                _ if req.method() == http::Method::GET
                    && gateway.openapi().is_some()
                    && matches!(req.uri().path(), "/openapi.json" | "/openapi.yaml") =>
                {
                    let (json, yaml) = gateway.openapi().cloned().unwrap_or_default();
                    match req.uri().path() {
                        "/openapi.json" => docs::openapi_response(json, "application/json"),
                        _ => docs::openapi_response(yaml, "application/yaml"),
                    }
                }
                _ if req.method() == http::Method::GET
                    && gateway.openapi().is_some()
                    && (req.uri().path().starts_with("/docs") || req.uri().path() == "/favicon.ico") =>
                {
                    match docs::swagger_ui(req.uri().path()) {
                        Some(response) => response,
                        None => protocol::http::serve(&gateway, req).await,
                    }
                }
                Some(Protocol::Connect) => protocol::connect::serve(&gateway, req).await,
                Some(Protocol::GrpcWeb) if protocol::grpc_web::is_json(&req) => {
                    protocol::grpc_web::serve(&gateway, req).await
                }
                _ => protocol::http::serve(&gateway, req).await,
            })
        })
    }
}

/// Tags each request with its [`Protocol`] and [`RpcMethod`](crate::RpcMethod) before any
/// other layer runs.
#[derive(Clone, Debug)]
pub struct ClassifyLayer {
    gateway: Gateway,
}

impl ClassifyLayer {
    /// Classifies against the methods and routes of `gateway`.
    pub fn new(gateway: Gateway) -> Self {
        Self { gateway }
    }
}

impl<S> tower::Layer<S> for ClassifyLayer {
    type Service = Classify<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Classify { gateway: self.gateway.clone(), inner }
    }
}

/// The service of [`ClassifyLayer`].
#[derive(Clone, Debug)]
pub struct Classify<S> {
    gateway: Gateway,
    inner: S,
}

impl<S> tower::Service<Request<Body>> for Classify<S>
where
    S: tower::Service<Request<Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        self.gateway.classify(&mut req);
        self.inner.call(req)
    }
}

/// Sends each protocol to what serves it: gRPC to tonic (with its
/// `grpc-timeout` enforced), gRPC-Web to tonic through `tonic-web` (the JSON
/// codec to the [`Gateway`]), Connect and JSON to the [`Gateway`], and
/// Connect calls of methods it has no typed handler for (reflection, health,
/// client and bidirectional streams) to tonic, relayed as gRPC.
#[derive(Clone, Debug)]
pub struct Dispatch<G> {
    grpc: Deadline<G>,
    grpc_web: tonic_web::GrpcWebService<Deadline<G>>,
    gateway: Gateway,
}

impl<G: Clone> Dispatch<G> {
    /// Splits between `grpc` (tonic's routes) and `gateway`.
    pub fn new(grpc: G, gateway: Gateway) -> Self {
        let grpc = Deadline::new(grpc);
        let grpc_web = tower::Layer::layer(&tonic_web::GrpcWebLayer::new(), grpc.clone());
        Self { grpc, grpc_web, gateway }
    }
}

impl<G> tower::Service<Request<Body>> for Dispatch<G>
where
    G: tower::Service<Request<tonic::body::Body>, Response = Response<Body>, Error = Infallible>
        + tower::Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    <G as tower::Service<Request<tonic::body::Body>>>::Future: Send + 'static,
    <G as tower::Service<Request<Body>>>::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        use tower::ServiceExt;
        let protocol = match req.extensions().get::<Protocol>() {
            Some(p) => *p,
            None => {
                self.gateway.classify(&mut req);
                req.extensions().get::<Protocol>().copied().unwrap_or(Protocol::Json)
            }
        };
        match protocol {
            Protocol::Grpc => Box::pin(ServiceExt::<Request<Body>>::oneshot(self.grpc.clone(), req)),
            Protocol::GrpcWeb if protocol::grpc_web::is_json(&req) => tower::Service::call(&mut self.gateway, req),
            Protocol::GrpcWeb => {
                let grpc_web = self.grpc_web.clone();
                Box::pin(async move {
                    let response = ServiceExt::<Request<Body>>::oneshot(grpc_web, req).await?;
                    Ok(response.map(Body::new))
                })
            }
            Protocol::Connect if !self.gateway.serves_connect(req.uri().path()) => {
                let (gateway, grpc) = (self.gateway.clone(), self.grpc.clone());
                Box::pin(async move {
                    let relayed = match protocol::bridge::to_grpc(&gateway, req).await {
                        Ok(relayed) => relayed,
                        Err(response) => return Ok(response),
                    };
                    let response = ServiceExt::<Request<Body>>::oneshot(grpc, relayed.request).await?;
                    Ok(protocol::bridge::from_grpc(relayed.shape, response, relayed.timeout).await)
                })
            }
            Protocol::Connect | Protocol::Json => tower::Service::call(&mut self.gateway, req),
        }
    }
}
