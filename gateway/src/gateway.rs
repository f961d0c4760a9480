//! The gateway itself: the methods and HTTP rules it serves, how it is
//! built, and what every protocol asks of it (the handler of a method, the
//! rule a request matched, the error renderer, the body limit). It depends
//! on the rules and message handling below it and on no protocol: the
//! protocols ([`crate::protocol`]) and the dispatch ([`crate::dispatch`])
//! are built on it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use axum::body::Body;
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use tonic::{Code, Status};

use crate::message::method::Method;
use crate::message::wkt;
use crate::rule::router::{Match, Router};
use crate::rule::spec::{MethodKind, MethodSpec, RouteSpec};
use crate::rule::template::{PathTemplate, TemplateError};
use crate::status::{ErrorRenderer, RpcStatusRenderer};

/// Default largest request body: 1 MiB.
pub const DEFAULT_BODY_LIMIT: usize = 1024 * 1024;

/// The RPC a request calls, as `/package.Service/Method`; set by
/// [`ClassifyLayer`](crate::ClassifyLayer) for requests to declared methods in every protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RpcMethod(pub &'static str);

/// The path template of the HTTP rule a JSON request matched
/// (`/api/articles/{slug}`); set by [`ClassifyLayer`](crate::ClassifyLayer). A label for logs and
/// metrics that, unlike the raw path, has few values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RouteTemplate(pub &'static str);

/// The protocol a request speaks; set by [`ClassifyLayer`](crate::ClassifyLayer) on every request.
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
pub(crate) struct Matched {
    /// Index of the route in the gateway's table.
    pub(crate) route: usize,
    /// The values of the route's variables, in template order, or the index
    /// of the first variable whose value is not UTF-8.
    pub(crate) params: Result<Vec<String>, usize>,
}

impl Matched {
    /// The route a match found, if it found one.
    pub(crate) fn of(outcome: Match) -> Result<Self, Match> {
        match outcome {
            Match::Found { route, params } => Ok(Self { route, params: Ok(params) }),
            Match::Undecodable { route, variable } => Ok(Self { route, params: Err(variable) }),
            other => Err(other),
        }
    }
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
    ignore_unknown_fields: bool,
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
            ignore_unknown_fields: false,
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
    /// by tonic only (health, reflection), so that [`ClassifyLayer`](crate::ClassifyLayer) names
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

    /// Ignores JSON keys that name no field, and enum value names that name
    /// no value, instead of refusing the request (the default, as the
    /// ProtoJSON specification has it). For clients that send more than
    /// the API declares.
    pub fn ignore_unknown_fields(mut self, ignore: bool) -> Self {
        self.ignore_unknown_fields = ignore;
        self
    }

    /// Indexes the routes. Fails on a malformed template or method, or on
    /// two rules that match the same requests.
    pub fn build(self) -> Result<Gateway, TemplateError> {
        let ignore = self.ignore_unknown_fields;
        let methods: HashMap<&'static str, Method> =
            self.methods.into_iter().map(|m| (m.spec.rpc, m.ignoring_unknown_fields(ignore))).collect();
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
                let json = crate::docs::complete_openapi(text, self.renderer.as_ref()).map_err(invalid)?;
                let yaml = crate::docs::openapi_yaml(&json).map_err(invalid)?;
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

    /// Writes an error as the installed renderer wants it.
    pub fn error_response(&self, http_status: Option<StatusCode>, status: &Status) -> Response<Body> {
        let renderer = &self.inner.renderer;
        let mut response = Response::new(Body::from(renderer.body(status)));
        *response.status_mut() = http_status.unwrap_or_else(|| renderer.http_status(status.code()));
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        crate::status::retry_after(status, headers);
        renderer.headers(status, headers);
        response
    }

    /// Reads the body up to the limit; a larger one is refused (resource
    /// exhausted, 413) before (from `Content-Length`) or while reading,
    /// never read to the end.
    pub(crate) async fn read_body(&self, headers: &http::HeaderMap, body: Body) -> Result<Bytes, (StatusCode, Status)> {
        let limit = self.inner.body_limit;
        let too_large = || {
            let status = Status::new(Code::ResourceExhausted, format!("the request body is larger than {limit} bytes"));
            (StatusCode::PAYLOAD_TOO_LARGE, status)
        };
        let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(too_large());
        }
        match http_body_util::Limited::new(body, limit).collect().await {
            Ok(collected) => Ok(collected.to_bytes()),
            Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => Err(too_large()),
            Err(e) => Err((
                StatusCode::BAD_REQUEST,
                Status::new(Code::InvalidArgument, format!("cannot read the request body: {e}")),
            )),
        }
    }

    /// The typed handler of a method, by gRPC path.
    pub(crate) fn handler(&self, rpc: &str) -> Option<&Method> {
        self.inner.methods.get(rpc)
    }

    /// Matches a JSON request's method and path against the HTTP rules.
    pub(crate) fn find(&self, method: &http::Method, path: &str) -> Match {
        self.inner.router.find(method, path)
    }

    /// The rule at `index` of the route table, with its parsed template.
    pub(crate) fn route(&self, index: usize) -> (&'static RouteSpec, &PathTemplate) {
        (self.inner.routes[index], self.inner.router.template(index))
    }

    /// How JSON errors are written.
    pub(crate) fn renderer(&self) -> &dyn ErrorRenderer {
        self.inner.renderer.as_ref()
    }

    /// The OpenAPI document as JSON and as YAML, when it is served.
    pub(crate) fn openapi(&self) -> Option<&(Bytes, Bytes)> {
        self.inner.openapi.as_ref()
    }

    /// Whether a typed handler serves `path` to Connect clients (unary and
    /// server-streaming methods added with [`GatewayBuilder::methods`]).
    pub(crate) fn serves_connect(&self, path: &str) -> bool {
        self.inner
            .methods
            .get(path)
            .is_some_and(|m| matches!(m.spec.kind, MethodKind::Unary | MethodKind::ServerStreaming))
    }

    /// Names the protocol and RPC of a request, matching its HTTP rule once.
    pub(crate) fn classify(&self, req: &mut Request<Body>) {
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
            Protocol::Json => match Matched::of(self.inner.router.find(req.method(), path)) {
                Ok(matched) => {
                    let rpc = self.inner.routes[matched.route].rpc;
                    req.extensions_mut().insert(RouteTemplate(self.inner.routes[matched.route].template));
                    req.extensions_mut().insert(matched);
                    Some(rpc)
                }
                Err(_) => None,
            },
            _ => self.inner.grpc_methods.get(path).copied(),
        };
        if let Some(rpc) = rpc {
            req.extensions_mut().insert(RpcMethod(rpc));
        }
        req.extensions_mut().insert(protocol);
    }
}

fn content_type<B>(req: &Request<B>) -> &str {
    req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default()
}
