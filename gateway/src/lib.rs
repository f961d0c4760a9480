//! Serves tonic services as gRPC, gRPC-Web, Connect and JSON/HTTP on one
//! port, from one protobuf definition, in process.
//!
//! The crate is generic: it knows `google.api.http` rules, proto3 JSON, the
//! Connect and gRPC-Web protocols and gRPC status codes, and nothing of any
//! particular API.
//!
//! # How an API plugs in
//!
//! 1. Its `build.rs` calls `gateway-build` (the build-time half of this
//!    crate), which compiles the protos and writes per package the prost
//!    messages, tonic services, proto3-JSON serde, and a `<package>.gateway.rs`
//!    with a [`MethodSpec`] per RPC, a `<service>_gateway_methods(Arc<impl
//!    Service>)` per service and the package's `HTTP_ROUTES`. Options in the
//!    proto tune it: `google.api.http` rules (the whole grammar: templates,
//!    custom verbs, `body`, `response_body`, `additional_bindings`),
//!    `(gateway.v1.http_response).success_code`, `(gateway.v1.event_id)` on
//!    a streamed message's cursor field, and `option idempotency_level =
//!    NO_SIDE_EFFECTS` for methods Connect may call with `GET`.
//! 2. At start-up it builds a [`Gateway`] from those methods and routes, with
//!    an [`ErrorRenderer`] if its JSON errors have their own shape, and a
//!    [`Dispatch`] that also holds the tonic routes:
//!
//! ```ignore
//! let gateway = Gateway::builder()
//!     .methods(pb::things_gateway_methods(service.clone()))
//!     .routes(pb::HTTP_ROUTES)
//!     .build()?;
//! let grpc = tonic::service::Routes::new(ThingsServer::from_arc(service)).into_axum_router();
//! let app = tower::ServiceBuilder::new()
//!     .layer(ClassifyLayer::new(gateway.clone()))
//!     // layers here see every protocol, keyed by RpcMethod and Protocol
//!     .service(Dispatch::new(grpc, gateway));
//! ```
//!
//! # What happens to a request
//!
//! [`ClassifyLayer`] names its [`Protocol`] and [`RpcMethod`] (from the gRPC
//! path or the matched HTTP rule, matched once) in the request extensions, so
//! that every layer between it and [`Dispatch`] sees all four protocols
//! alike. [`Dispatch`] sends gRPC to tonic (enforcing `grpc-timeout`),
//! gRPC-Web to tonic through `tonic-web`, and Connect, JSON and gRPC-Web
//! with the JSON codec to the [`Gateway`], which decodes the request straight
//! into the generated message, calls the same service method gRPC calls (no
//! network hop, no protobuf re-encoding for JSON) and encodes the answer:
//! one message, or a stream as NDJSON, Server-Sent Events, Connect or
//! gRPC-Web frames. Connect calls of methods without a typed handler
//! (reflection, health, client and bidirectional streams) are relayed to
//! tonic as gRPC: with the protobuf codec the two carry the same bytes.

mod binding;
mod bridge;
mod connect;
mod deadline;
mod docs;
mod gate;
mod grpc_web;
mod json;
mod method;
mod openapi;
mod router;
mod serve;
mod spec;
mod status;
mod template;
pub mod validate;
pub mod wkt;

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use futures_util::future::BoxFuture;
use http::{Request, Response, header};
use tonic::Status;

pub use binding::invalid_field;
pub use deadline::{Deadline, Timeout, TimeoutLayer};
pub use gate::{Admission, Around, AroundLayer, AroundService, Gate, GateLayer};
pub use method::Method;
pub use router::{Match, Router};
pub use spec::{FieldKind, FieldSpec, MessageSpec, MethodKind, MethodSpec, RouteSpec, lower_camel};
pub use status::{ErrorRenderer, RpcStatusRenderer, code_for_http_status, code_name, connect_code, http_status};
pub use template::{PathTemplate, TemplateError};

/// Default largest request body: 1 MiB.
pub const DEFAULT_BODY_LIMIT: usize = 1024 * 1024;

/// The RPC a request calls, as `/package.Service/Method`; set by
/// [`ClassifyLayer`] for requests to declared methods in every protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RpcMethod(pub &'static str);

/// The path template of the HTTP rule a JSON request matched
/// (`/api/articles/{slug}`); set by [`ClassifyLayer`]. A label for logs and
/// metrics that, unlike the raw path, has few values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RouteTemplate(pub &'static str);

/// The protocol a request speaks; set by [`ClassifyLayer`] on every request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// gRPC over HTTP/2 (`application/grpc*`).
    Grpc,
    /// gRPC-Web (`application/grpc-web*`), over HTTP/1.1 or HTTP/2.
    GrpcWeb,
    /// Connect (`POST /package.Service/Method` with a Connect content type,
    /// or `GET` of a side-effect-free method).
    Connect,
    /// JSON/HTTP transcoded from `google.api.http` rules.
    Json,
}

impl Protocol {
    /// Lower-case name, for labels and logs: `grpc`, `grpc-web`, `connect`, `json`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Grpc => "grpc",
            Self::GrpcWeb => "grpc-web",
            Self::Connect => "connect",
            Self::Json => "json",
        }
    }
}

/// The HTTP route a request matched, cached so the gateway matches once.
#[derive(Debug, Clone)]
struct Matched {
    route: usize,
    params: Vec<String>,
}

struct Inner {
    router: Router,
    routes: Vec<&'static RouteSpec>,
    methods: HashMap<&'static str, Method>,
    grpc_methods: HashSet<&'static str>,
    renderer: Arc<dyn ErrorRenderer>,
    body_limit: usize,
    /// The OpenAPI document as JSON and as YAML.
    openapi: Option<(bytes::Bytes, bytes::Bytes)>,
}

/// The in-process server of Connect and JSON requests.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("methods", &self.inner.methods.len())
            .field("routes", &self.inner.routes.len())
            .finish()
    }
}

/// Collects methods, routes and settings for a [`Gateway`].
pub struct GatewayBuilder {
    methods: Vec<Method>,
    routes: Vec<&'static RouteSpec>,
    grpc_methods: Vec<&'static str>,
    renderer: Arc<dyn ErrorRenderer>,
    body_limit: usize,
    openapi: Option<&'static str>,
}

impl Default for GatewayBuilder {
    fn default() -> Self {
        Self {
            methods: Vec::new(),
            routes: Vec::new(),
            grpc_methods: Vec::new(),
            renderer: Arc::new(RpcStatusRenderer),
            body_limit: DEFAULT_BODY_LIMIT,
            openapi: None,
        }
    }
}

impl GatewayBuilder {
    /// Adds the methods of one service (`<service>_gateway_methods`).
    pub fn methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.methods.extend(methods);
        self
    }

    /// Adds HTTP rules (a package's `HTTP_ROUTES`); rules of methods that
    /// were not added are left out.
    pub fn routes(mut self, routes: impl IntoIterator<Item = &'static RouteSpec>) -> Self {
        self.routes.extend(routes);
        self
    }

    /// Declares more gRPC method paths (`/package.Service/Method`) served
    /// by tonic only (health, reflection), so that [`ClassifyLayer`] names
    /// them too.
    pub fn grpc_methods(mut self, paths: impl IntoIterator<Item = &'static str>) -> Self {
        self.grpc_methods.extend(paths);
        self
    }

    /// Makes message types known to `google.protobuf.Any` in JSON (a
    /// package's generated `ANY_TYPES`); see [`wkt::register_any_types`].
    pub fn any_types(self, types: &[wkt::AnyType]) -> Self {
        wkt::register_any_types(types);
        self
    }

    /// Sets how JSON errors are written (default: `google.rpc.Status` JSON).
    pub fn renderer(mut self, renderer: impl ErrorRenderer) -> Self {
        self.renderer = Arc::new(renderer);
        self
    }

    /// Serves the OpenAPI document `gateway-build` wrote (`openapi.json`) at
    /// `GET /openapi.json` and `GET /openapi.yaml`, completed with the error
    /// responses of the installed renderer, and interactive documentation
    /// of it at `GET /docs` (Swagger UI, compiled in: it works offline).
    pub fn openapi(mut self, document: &'static str) -> Self {
        self.openapi = Some(document);
        self
    }

    /// Sets the largest request body accepted, in bytes.
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.body_limit = bytes;
        self
    }

    /// Indexes the routes. Fails on a malformed template or method, or on
    /// two rules that match the same requests.
    pub fn build(self) -> Result<Gateway, TemplateError> {
        let methods: HashMap<&'static str, Method> = self.methods.into_iter().map(|m| (m.spec.rpc, m)).collect();
        let mut router = Router::new();
        let mut routes = Vec::new();
        for route in self.routes.into_iter().filter(|r| methods.contains_key(r.rpc)) {
            let method = http::Method::from_bytes(route.http_method.as_bytes())
                .map_err(|_| TemplateError { template: route.template.to_owned(), reason: "invalid HTTP method" })?;
            router.add(method, route.template)?;
            routes.push(route);
        }
        let mut grpc_methods: HashSet<&'static str> = self.grpc_methods.into_iter().collect();
        grpc_methods.extend(methods.keys().copied());
        let openapi = match self.openapi {
            Some(text) => {
                let invalid = |reason| TemplateError { template: "openapi.json".to_owned(), reason };
                let json = openapi::complete(text, self.renderer.as_ref()).map_err(invalid)?;
                let yaml = openapi::yaml(&json).map_err(invalid)?;
                Some((json, yaml))
            }
            None => None,
        };
        Ok(Gateway {
            inner: Arc::new(Inner {
                router,
                routes,
                methods,
                grpc_methods,
                renderer: self.renderer,
                body_limit: self.body_limit,
                openapi,
            }),
        })
    }
}

impl Gateway {
    /// A builder with no methods.
    pub fn builder() -> GatewayBuilder {
        GatewayBuilder::default()
    }

    /// The specs of the methods it serves.
    pub fn methods(&self) -> impl Iterator<Item = &'static MethodSpec> + '_ {
        self.inner.methods.values().map(|m| m.spec)
    }

    /// The spec of a method it serves, by gRPC path (`/pkg.Service/Method`).
    pub fn method(&self, rpc: &str) -> Option<&'static MethodSpec> {
        self.inner.methods.get(rpc).map(|m| m.spec)
    }

    /// A failed answer to `req` in the request's own protocol (classified by
    /// [`ClassifyLayer`]): trailers-only gRPC or gRPC-Web, the Connect error
    /// JSON, or the JSON error of the installed renderer; with `Retry-After`
    /// when the status carries a `google.rpc.RetryInfo`. For layers that
    /// refuse a call before it reaches a service (authentication, limits).
    pub fn reject<B>(&self, req: &Request<B>, status: &Status) -> Response<Body> {
        let mut response = self.rejection(req, status);
        status::retry_after(status, response.headers_mut());
        response
    }

    fn rejection<B>(&self, req: &Request<B>, status: &Status) -> Response<Body> {
        match req.extensions().get::<Protocol>() {
            Some(Protocol::Grpc) => status.clone().into_http(),
            Some(Protocol::GrpcWeb) => {
                let mut response: Response<Body> = status.clone().into_http();
                let content_type = req
                    .headers()
                    .get(header::CONTENT_TYPE)
                    .cloned()
                    .unwrap_or(http::HeaderValue::from_static("application/grpc-web+proto"));
                response.headers_mut().insert(header::CONTENT_TYPE, content_type);
                response
            }
            Some(Protocol::Connect) => connect::error(status),
            _ => self.error_response(None, status),
        }
    }

    /// Whether a typed handler serves `path` to Connect clients (unary and
    /// server-streaming methods added with [`GatewayBuilder::methods`]).
    fn serves_connect(&self, path: &str) -> bool {
        self.inner
            .methods
            .get(path)
            .is_some_and(|m| matches!(m.spec.kind, MethodKind::Unary | MethodKind::ServerStreaming))
    }

    /// Names the protocol and RPC of a request, matching its HTTP rule once.
    fn classify(&self, req: &mut Request<Body>) {
        let path = req.uri().path();
        let protocol = match content_type(req) {
            ct if ct.starts_with("application/grpc-web") => Protocol::GrpcWeb,
            ct if ct.starts_with("application/grpc") => Protocol::Grpc,
            _ if (req.method() == http::Method::POST || req.method() == http::Method::GET)
                && self.inner.grpc_methods.contains(path) =>
            {
                Protocol::Connect
            }
            _ => Protocol::Json,
        };
        let rpc = match protocol {
            Protocol::Json => match self.inner.router.find(req.method(), path) {
                Match::Found { route, params } => {
                    let rpc = self.inner.routes[route].rpc;
                    req.extensions_mut().insert(RouteTemplate(self.inner.routes[route].template));
                    req.extensions_mut().insert(Matched { route, params });
                    Some(rpc)
                }
                _ => None,
            },
            _ => self.inner.grpc_methods.get(path).copied(),
        };
        if let Some(rpc) = rpc {
            req.extensions_mut().insert(RpcMethod(rpc));
        }
        req.extensions_mut().insert(protocol);
    }
}

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
                    && gateway.inner.openapi.is_some()
                    && matches!(req.uri().path(), "/openapi.json" | "/openapi.yaml") =>
                {
                    let (json, yaml) = gateway.inner.openapi.clone().unwrap_or_default();
                    match req.uri().path() {
                        "/openapi.json" => openapi::response(json, "application/json"),
                        _ => openapi::response(yaml, "application/yaml"),
                    }
                }
                _ if req.method() == http::Method::GET
                    && gateway.inner.openapi.is_some()
                    && req.uri().path().starts_with("/docs") =>
                {
                    match docs::serve(req.uri().path()) {
                        Some(response) => response,
                        None => serve::json(&gateway, req).await,
                    }
                }
                Some(Protocol::Connect) => connect::serve(&gateway, req).await,
                Some(Protocol::GrpcWeb) if grpc_web::is_json(&req) => grpc_web::serve(&gateway, req).await,
                _ => serve::json(&gateway, req).await,
            })
        })
    }
}

fn content_type<B>(req: &Request<B>) -> &str {
    req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default()
}

/// Tags each request with its [`Protocol`] and [`RpcMethod`] before any
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
            Protocol::GrpcWeb if grpc_web::is_json(&req) => tower::Service::call(&mut self.gateway, req),
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
                    let relayed = match bridge::to_grpc(&gateway, req).await {
                        Ok(relayed) => relayed,
                        Err(response) => return Ok(response),
                    };
                    let response = ServiceExt::<Request<Body>>::oneshot(grpc, relayed.request).await?;
                    Ok(bridge::from_grpc(relayed.shape, response, relayed.timeout).await)
                })
            }
            Protocol::Connect | Protocol::Json => tower::Service::call(&mut self.gateway, req),
        }
    }
}
