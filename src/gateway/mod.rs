//! The JSON/HTTP transcoding gateway.
//!
//! Generic: it knows `google.api.http` rules, proto3 JSON and gRPC status,
//! and nothing of any particular API. `build.rs` turns every HTTP rule into a
//! [`Route`] that calls the tonic service implementation in process, with the
//! same typed request a gRPC call gets (no network hop, no protobuf
//! encoding). An API plugs in with its routes and an [`ErrorRenderer`].
//!
//! One listener serves both protocols: [`ClassifyLayer`] names the RPC of
//! every request (from the gRPC path or the matched HTTP rule) so that layers
//! between it and [`Dispatch`] can key on it; [`Dispatch`] sends gRPC to tonic
//! and everything else to the [`Gateway`].

mod binding;
mod route;
mod router;
mod status;
mod template;

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use futures_util::future::BoxFuture;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use tonic::{Code, Status};

pub use binding::{Input, invalid_field};
pub use route::{FieldKind, FieldSpec, MessageSpec, Reply, Route, RouteSpec};
pub use router::{Match, Router};
pub use status::{ErrorRenderer, RpcStatusRenderer, http_status};
pub use template::{PathTemplate, TemplateError};

/// Default largest request body: 1 MiB.
pub const DEFAULT_BODY_LIMIT: usize = 1024 * 1024;

/// The RPC a request calls, as `/package.Service/Method`; set by
/// [`ClassifyLayer`] for gRPC requests to declared methods and for HTTP
/// requests that match a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RpcMethod(pub &'static str);

/// The HTTP route a request matched, cached so the gateway matches once.
#[derive(Debug, Clone)]
struct Matched {
    route: usize,
    params: Vec<String>,
}

struct Inner {
    router: Router,
    routes: Vec<Route>,
    grpc_methods: std::collections::HashSet<&'static str>,
    renderer: Arc<dyn ErrorRenderer>,
    body_limit: usize,
}

/// The transcoding service: serves HTTP requests by their routes.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").field("routes", &self.inner.routes.len()).finish()
    }
}

/// Collects routes and settings for a [`Gateway`].
pub struct GatewayBuilder {
    routes: Vec<Route>,
    grpc_methods: Vec<&'static str>,
    renderer: Arc<dyn ErrorRenderer>,
    body_limit: usize,
}

impl Default for GatewayBuilder {
    fn default() -> Self {
        Self {
            routes: Vec::new(),
            grpc_methods: Vec::new(),
            renderer: Arc::new(RpcStatusRenderer),
            body_limit: DEFAULT_BODY_LIMIT,
        }
    }
}

impl GatewayBuilder {
    /// Adds the routes of one service.
    pub fn routes(mut self, routes: impl IntoIterator<Item = Route>) -> Self {
        self.routes.extend(routes);
        self
    }

    /// Declares gRPC method paths (`/package.Service/Method`) so that
    /// [`ClassifyLayer`] names gRPC requests too.
    pub fn grpc_methods(mut self, paths: impl IntoIterator<Item = &'static str>) -> Self {
        self.grpc_methods.extend(paths);
        self
    }

    /// Sets how errors are written (default: `google.rpc.Status` JSON).
    pub fn renderer(mut self, renderer: impl ErrorRenderer) -> Self {
        self.renderer = Arc::new(renderer);
        self
    }

    /// Sets the largest request body accepted, in bytes.
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.body_limit = bytes;
        self
    }

    /// Indexes the routes. Fails on a malformed template or method.
    pub fn build(self) -> Result<Gateway, TemplateError> {
        let mut router = Router::new();
        for route in &self.routes {
            let method = http::Method::from_bytes(route.spec.http_method.as_bytes()).map_err(|_| TemplateError {
                template: route.spec.template.to_owned(),
                reason: "invalid HTTP method",
            })?;
            router.add(method, route.spec.template)?;
        }
        Ok(Gateway {
            inner: Arc::new(Inner {
                router,
                routes: self.routes,
                grpc_methods: self.grpc_methods.into_iter().collect(),
                renderer: self.renderer,
                body_limit: self.body_limit,
            }),
        })
    }
}

impl Gateway {
    /// A builder with no routes.
    pub fn builder() -> GatewayBuilder {
        GatewayBuilder::default()
    }

    fn find(&self, req: &Request<Body>) -> Match {
        self.inner.router.find(req.method(), req.uri().path())
    }

    /// Writes an error as the installed renderer wants it.
    pub fn error_response(&self, http_status: Option<StatusCode>, status: &Status) -> Response<Body> {
        let renderer = &self.inner.renderer;
        let mut response = Response::new(Body::from(renderer.body(status)));
        *response.status_mut() = http_status.unwrap_or_else(|| renderer.http_status(status.code()));
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        renderer.headers(status, headers);
        response
    }

    async fn serve(self, mut req: Request<Body>) -> Response<Body> {
        let matched = match req.extensions_mut().remove::<Matched>() {
            Some(m) => m,
            None => match self.find(&req) {
                Match::Found { route, params } => Matched { route, params },
                other => return self.unmatched(&req, other),
            },
        };
        let route = &self.inner.routes[matched.route];
        let template = self.inner.router.template(matched.route);
        let params = template.variables.iter().map(|v| v.field_path.clone()).zip(matched.params).collect();

        let (parts, body) = req.into_parts();
        let body = if route.spec.body.is_empty() {
            bytes::Bytes::new()
        } else {
            match self.read_body(&parts.headers, body).await {
                Ok(bytes) => bytes,
                Err(response) => return response,
            }
        };
        let input = Input {
            metadata: tonic::metadata::MetadataMap::from_headers(parts.headers),
            extensions: parts.extensions,
            params,
            query: parts.uri.query().map(str::to_owned),
            body,
        };
        match route.call(input).await {
            Ok(reply) => {
                let code = StatusCode::from_u16(route.spec.success_code).unwrap_or(StatusCode::OK);
                let body = if code == StatusCode::NO_CONTENT { Body::empty() } else { Body::from(reply.body) };
                let mut response = Response::new(body);
                *response.status_mut() = code;
                let headers = response.headers_mut();
                *headers = reply.metadata.into_headers();
                if code != StatusCode::NO_CONTENT {
                    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
                }
                response
            }
            Err(status) => self.error_response(None, &status),
        }
    }

    /// Reads the body up to the limit; a larger one is refused with 413
    /// before (from `Content-Length`) or while reading, never read to the end.
    async fn read_body(&self, headers: &http::HeaderMap, body: Body) -> Result<bytes::Bytes, Response<Body>> {
        let limit = self.inner.body_limit;
        let too_large = || {
            let status = Status::new(Code::ResourceExhausted, format!("the request body is larger than {limit} bytes"));
            self.error_response(Some(StatusCode::PAYLOAD_TOO_LARGE), &status)
        };
        let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(too_large());
        }
        match http_body_util::Limited::new(body, limit).collect().await {
            Ok(collected) => Ok(collected.to_bytes()),
            Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => Err(too_large()),
            Err(e) => {
                let status = Status::new(Code::InvalidArgument, format!("cannot read the request body: {e}"));
                Err(self.error_response(Some(StatusCode::BAD_REQUEST), &status))
            }
        }
    }

    fn unmatched(&self, req: &Request<Body>, outcome: Match) -> Response<Body> {
        match outcome {
            Match::MethodNotAllowed(methods) => {
                let status = Status::new(
                    Code::Unimplemented,
                    format!("method {} is not allowed on {}", req.method(), req.uri().path()),
                );
                let mut response = self.error_response(Some(StatusCode::METHOD_NOT_ALLOWED), &status);
                let allow: Vec<&str> = methods.iter().map(http::Method::as_str).collect();
                if let Ok(value) = HeaderValue::from_str(&allow.join(", ")) {
                    response.headers_mut().insert(header::ALLOW, value);
                }
                response
            }
            _ => {
                let status = Status::new(Code::NotFound, format!("no route for {} {}", req.method(), req.uri().path()));
                self.error_response(Some(StatusCode::NOT_FOUND), &status)
            }
        }
    }
}

impl tower::Service<Request<Body>> for Gateway {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let gateway = self.clone();
        Box::pin(async move { Ok(gateway.serve(req).await) })
    }
}

/// Whether a request speaks gRPC (any `application/grpc*` content type) rather than JSON.
pub fn is_grpc<B>(req: &Request<B>) -> bool {
    req.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// Tags each request with its [`RpcMethod`] before any other layer runs.
#[derive(Clone, Debug)]
pub struct ClassifyLayer {
    gateway: Gateway,
}

impl ClassifyLayer {
    /// Classifies against the routes of `gateway`.
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
        if is_grpc(&req) {
            if let Some(rpc) = self.gateway.inner.grpc_methods.get(req.uri().path()) {
                req.extensions_mut().insert(RpcMethod(rpc));
            }
        } else if let Match::Found { route, params } = self.gateway.find(&req) {
            let rpc = self.gateway.inner.routes[route].spec.rpc;
            req.extensions_mut().insert(RpcMethod(rpc));
            req.extensions_mut().insert(Matched { route, params });
        }
        self.inner.call(req)
    }
}

/// Sends gRPC requests to the tonic routes and all others to the gateway.
#[derive(Clone, Debug)]
pub struct Dispatch<G> {
    grpc: G,
    gateway: Gateway,
}

impl<G> Dispatch<G> {
    /// Splits between `grpc` (tonic's routes) and `gateway`.
    pub fn new(grpc: G, gateway: Gateway) -> Self {
        Self { grpc, gateway }
    }
}

impl<G> tower::Service<Request<Body>> for Dispatch<G>
where
    G: tower::Service<Request<Body>, Response = Response<Body>, Error = Infallible> + Clone + Send + 'static,
    G::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        if is_grpc(&req) {
            let mut grpc = self.grpc.clone();
            Box::pin(async move {
                use tower::ServiceExt;
                grpc.ready().await?.call(req).await
            })
        } else {
            tower::Service::call(&mut self.gateway, req)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};
    use tower::ServiceExt;

    static ECHO_INPUT: MessageSpec = MessageSpec {
        name: "test.EchoRequest",
        fields: &[
            FieldSpec { name: "name", json_name: "name", kind: FieldKind::String, repeated: false, message: None },
            FieldSpec { name: "count", json_name: "count", kind: FieldKind::Int32, repeated: false, message: None },
        ],
    };
    static ECHO: RouteSpec = RouteSpec {
        rpc: "/test.Echo/Echo",
        http_method: "POST",
        template: "/v1/echo/{name}",
        body: "*",
        response_body: "",
        success_code: 201,
        input: &ECHO_INPUT,
    };
    static ECHO_FIELD: RouteSpec = RouteSpec {
        rpc: "/test.Echo/EchoField",
        http_method: "GET",
        template: "/v1/echo/{name}/headers",
        body: "",
        response_body: "headers",
        success_code: 0,
        input: &ECHO_INPUT,
    };

    #[derive(Debug, Default, Deserialize)]
    #[serde(default)]
    struct EchoRequest {
        name: String,
        count: i32,
    }

    #[derive(Debug, Serialize)]
    struct EchoReply {
        name: String,
        count: i32,
        headers: Vec<String>,
    }

    async fn echo(request: tonic::Request<EchoRequest>) -> Result<tonic::Response<EchoReply>, Status> {
        let metadata = request.metadata();
        let headers = ["authorization", "traceparent", "x-request-id"]
            .iter()
            .filter_map(|h| Some(format!("{h}={}", metadata.get(*h)?.to_str().ok()?)))
            .collect();
        let message = request.into_inner();
        if message.count < 0 {
            return Err(Status::failed_precondition("count must not be negative"));
        }
        Ok(tonic::Response::new(EchoReply { name: message.name, count: message.count, headers }))
    }

    fn gateway() -> Gateway {
        Gateway::builder().routes([Route::unary(&ECHO, echo), Route::unary(&ECHO_FIELD, echo)]).build().unwrap()
    }

    async fn call(request: Request<Body>) -> (StatusCode, serde_json::Value) {
        let response = gateway().oneshot(request).await.unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&body).unwrap_or_default())
    }

    #[tokio::test]
    async fn headers_reach_the_service_as_metadata() {
        let request = Request::get("/v1/echo/x/headers")
            .header("authorization", "Bearer t")
            .header("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
            .header("x-request-id", "r-1")
            .body(Body::empty())
            .unwrap();
        let (status, body) = call(request).await;
        assert_eq!(status, StatusCode::OK, "success code 0 means 200");
        assert_eq!(
            body,
            serde_json::json!([
                "authorization=Bearer t",
                "traceparent=00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                "x-request-id=r-1"
            ]),
            "response_body selects one field"
        );
    }

    #[tokio::test]
    async fn path_variables_override_the_body_and_success_code_is_declared() {
        let request = Request::post("/v1/echo/from-path").body(Body::from(r#"{"name":"body","count":3}"#)).unwrap();
        let (status, body) = call(request).await;
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(body["name"], "from-path");
        assert_eq!(body["count"], 3);
    }

    #[tokio::test]
    async fn errors_use_the_standard_table_and_rpc_status_json_by_default() {
        let request = Request::post("/v1/echo/x").body(Body::from(r#"{"count":-1}"#)).unwrap();
        let (status, body) = call(request).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["code"], 9);
        assert_eq!(body["message"], "count must not be negative");
        let request = Request::post("/v1/echo/x").body(Body::from(r#"{"count":"many"}"#)).unwrap();
        let (status, body) = call(request).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["details"][0]["fieldViolations"][0]["field"], "count");
        let (status, body) = call(Request::get("/v2/nothing").body(Body::empty()).unwrap()).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body["code"], 5);
    }

    #[tokio::test]
    async fn classify_names_the_rpc_of_json_and_grpc_requests() {
        let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
        let record = seen.clone();
        let inner = tower::service_fn(move |req: Request<Body>| {
            *record.lock().unwrap() = req.extensions().get::<RpcMethod>().copied();
            async { Ok::<_, Infallible>(Response::new(Body::empty())) }
        });
        let gateway = Gateway::builder()
            .routes([Route::unary(&ECHO, echo)])
            .grpc_methods(["/test.Echo/Echo", "/test.Echo/Stream"])
            .build()
            .unwrap();
        let mut service = tower::Layer::layer(&ClassifyLayer::new(gateway), inner);
        let cases = [
            (Request::post("/v1/echo/x").body(Body::empty()).unwrap(), Some(RpcMethod("/test.Echo/Echo"))),
            (
                Request::post("/test.Echo/Stream")
                    .header("content-type", "application/grpc")
                    .body(Body::empty())
                    .unwrap(),
                Some(RpcMethod("/test.Echo/Stream")),
            ),
            (
                Request::post("/test.Echo/Nope")
                    .header("content-type", "application/grpc")
                    .body(Body::empty())
                    .unwrap(),
                None,
            ),
            (Request::get("/v1/other").body(Body::empty()).unwrap(), None),
        ];
        for (request, expected) in cases {
            let label = format!("{} {}", request.method(), request.uri());
            (&mut service).oneshot(request).await.unwrap();
            assert_eq!(*seen.lock().unwrap(), expected, "{label}");
        }
    }
}
