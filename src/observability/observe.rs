//! Metrics and traces of every call, whatever its protocol: one tower
//! layer that counts and times each call until its answer's last byte and,
//! when OpenTelemetry export is configured, opens its server span (child of
//! the caller's W3C `traceparent`); and one tracing layer that turns sqlx's
//! statement log into database metrics and child spans.

use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use axum::body::Body;
use http::{HeaderMap, Request, Response};
use http_body::Frame;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{Span as _, SpanKind, Status, TraceContextExt, Tracer as _};
use opentelemetry::{Context as OtelContext, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracer;

use crate::observability::metrics::{DATABASE, InFlight, Metrics};

/// The tracer of the OTLP export, set once at start-up when it is configured.
static TRACER: OnceLock<SdkTracer> = OnceLock::new();

/// Makes `tracer` the one every call's span comes from.
pub fn set_tracer(tracer: SdkTracer) {
    let _ = TRACER.set(tracer);
}

/// The W3C trace id of a call (the caller's, or a new one when spans are
/// exported), for the request log.
#[derive(Debug, Clone, Copy)]
pub struct TraceId(pub opentelemetry::trace::TraceId);

/// Reads W3C trace context from request headers (HTTP headers and gRPC
/// metadata alike).
struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// The layer; see the module documentation.
#[derive(Clone, Debug)]
pub struct ObserveLayer {
    metrics: Metrics,
}

impl ObserveLayer {
    /// Records into `metrics`; spans go to the tracer of [`set_tracer`], if any.
    pub fn new(metrics: Metrics) -> Self {
        Self { metrics }
    }
}

impl<S> tower::Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Observe { metrics: self.metrics.clone(), tracer: TRACER.get().cloned(), inner }
    }
}

/// The service of [`ObserveLayer`].
#[derive(Clone, Debug)]
pub struct Observe<S> {
    metrics: Metrics,
    tracer: Option<SdkTracer>,
    inner: S,
}

/// What a call is, as the classifying layer found it.
#[derive(Clone, Copy)]
struct CallKind {
    rpc: &'static str,
    route: &'static str,
    protocol: gateway::Protocol,
}

impl CallKind {
    fn of<B>(req: &Request<B>) -> Self {
        let ext = req.extensions();
        Self {
            rpc: ext.get::<gateway::RpcMethod>().map_or("unmatched", |r| r.0),
            route: ext.get::<gateway::RouteTemplate>().map_or("", |r| r.0),
            protocol: ext.get::<gateway::Protocol>().copied().unwrap_or(gateway::Protocol::Json),
        }
    }

    /// The span name: `service/Method` for an RPC, `METHOD route` otherwise.
    fn span_name(&self, method: &http::Method) -> String {
        match (self.rpc, self.route) {
            ("unmatched", _) => method.as_str().to_owned(),
            (rpc, "") => rpc.trim_start_matches('/').to_owned(),
            (_, route) => format!("{method} {route}"),
        }
    }
}

impl<S> tower::Service<Request<Body>> for Observe<S>
where
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
        let kind = CallKind::of(&req);
        let flight = self.metrics.start(kind.rpc, kind.protocol.as_str());
        let parent = if req.headers().contains_key("traceparent") {
            TraceContextPropagator::new().extract(&Headers(req.headers()))
        } else {
            OtelContext::new()
        };
        let cx = match &self.tracer {
            Some(tracer) => {
                let span = tracer
                    .span_builder(kind.span_name(req.method()))
                    .with_kind(SpanKind::Server)
                    .with_attributes(request_attributes(&req, &kind))
                    .start_with_context(tracer, &parent);
                parent.with_span(span)
            }
            None => parent,
        };
        let span_context = cx.span().span_context().clone();
        if span_context.is_valid() {
            req.extensions_mut().insert(TraceId(span_context.trace_id()));
        }
        if !cx.has_active_span() {
            let answer = self.inner.call(req);
            return Box::pin(async move {
                let response = answer.await?;
                Ok(observed(response, Finish { flight, route: kind.route, trace: None }))
            });
        }
        let answer = {
            // Work done while calling (the layers' `before` parts) sees the span too.
            let _attached = cx.clone().attach();
            self.inner.call(req)
        };
        Box::pin(async move {
            use opentelemetry::context::FutureExt;
            let response = answer.with_context(cx.clone()).await?;
            Ok(observed(response, Finish { flight, route: kind.route, trace: Some(cx) }))
        })
    }
}

/// Semantic-convention attributes known when the call arrives.
fn request_attributes<B>(req: &Request<B>, kind: &CallKind) -> Vec<KeyValue> {
    let mut attributes = vec![
        KeyValue::new("http.request.method", req.method().as_str().to_owned()),
        KeyValue::new("url.path", req.uri().path().to_owned()),
        KeyValue::new("conduit.protocol", kind.protocol.as_str()),
    ];
    if let Some((service, method)) = kind.rpc.trim_start_matches('/').split_once('/') {
        let system = match kind.protocol {
            gateway::Protocol::Connect => "connect_rpc",
            _ => "grpc",
        };
        attributes.push(KeyValue::new("rpc.system", system));
        attributes.push(KeyValue::new("rpc.service", service.to_owned()));
        attributes.push(KeyValue::new("rpc.method", method.to_owned()));
    }
    if !kind.route.is_empty() {
        attributes.push(KeyValue::new("http.route", kind.route));
    }
    if let Some(agent) = req.headers().get(http::header::USER_AGENT).and_then(|v| v.to_str().ok()) {
        attributes.push(KeyValue::new("user_agent.original", agent.to_owned()));
    }
    attributes
}

/// What is recorded when an answer's body ends.
struct Finish {
    flight: InFlight,
    route: &'static str,
    trace: Option<OtelContext>,
}

/// Wraps the answer's body so that the call is recorded at its end (or
/// when the client goes away), with the gRPC status of its trailers.
fn observed(response: Response<Body>, finish: Finish) -> Response<Body> {
    let status = response.status().as_u16();
    let code = response.headers().get("grpc-status").map(|v| grpc_code_name(v.as_bytes()));
    response.map(|inner| Body::new(Observed { inner, status, code, finish: Some(finish) }))
}

struct Observed {
    inner: Body,
    status: u16,
    code: Option<&'static str>,
    finish: Option<Finish>,
}

impl Observed {
    fn finish(&mut self, failed: bool) {
        let Some(finish) = self.finish.take() else { return };
        let code = match (self.code, failed) {
            (Some(code), _) => code,
            (None, true) => "CANCELLED",
            (None, false) => gateway::code_name(gateway::code_for_http_status(self.status)),
        };
        if let Some(cx) = finish.trace {
            let span = cx.span();
            span.set_attribute(KeyValue::new("http.response.status_code", i64::from(self.status)));
            span.set_attribute(KeyValue::new("rpc.grpc.status_code", code));
            if self.status >= 500
                || matches!(
                    code,
                    "UNKNOWN" | "DEADLINE_EXCEEDED" | "UNIMPLEMENTED" | "INTERNAL" | "UNAVAILABLE" | "DATA_LOSS"
                )
            {
                span.set_status(Status::error(code));
            }
            span.end();
        }
        finish.flight.finish(finish.route, self.status, code);
    }
}

impl http_body::Body for Observed {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(status) = frame.trailers_ref().and_then(|t| t.get("grpc-status")) {
                    self.code = Some(grpc_code_name(status.as_bytes()));
                }
            }
            Poll::Ready(None) => self.finish(false),
            Poll::Ready(Some(Err(_))) => self.finish(true),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Observed {
    fn drop(&mut self) {
        // Dropped unfinished: the body was empty, or the client went away.
        let failed = !http_body::Body::is_end_stream(&self.inner);
        self.finish(failed);
    }
}

/// The code of a `grpc-status` value.
fn grpc_code_name(value: &[u8]) -> &'static str {
    let number = std::str::from_utf8(value).ok().and_then(|v| v.parse::<i32>().ok()).unwrap_or(2);
    gateway::code_name(tonic::Code::from(number))
}

/// Feeds sqlx's statement and pool-acquire log into the database metrics
/// and, when spans are exported, one client span per statement under the
/// call that ran it (timed from the statement's own measurement).
#[derive(Debug, Default, Clone, Copy)]
pub struct DatabaseObserver;

impl DatabaseObserver {
    /// The log targets this observer reads, at every level.
    pub fn targets() -> tracing_subscriber::filter::Targets {
        tracing_subscriber::filter::Targets::new()
            .with_target("sqlx::query", tracing::Level::TRACE)
            .with_target("sqlx::pool::acquire", tracing::Level::TRACE)
    }
}

#[derive(Default)]
struct StatementFields {
    /// Whether the texts are wanted (a span will be made): copying the SQL
    /// of every statement for metrics alone would be waste.
    texts: bool,
    summary: Option<String>,
    statement: Option<String>,
    elapsed: Option<f64>,
    acquired_after: Option<f64>,
    rows: Option<u64>,
}

impl tracing::field::Visit for StatementFields {
    fn record_f64(&mut self, field: &tracing::field::Field, value: f64) {
        match field.name() {
            "elapsed_secs" => self.elapsed = Some(value),
            "acquired_after_secs" => self.acquired_after = Some(value),
            _ => {}
        }
    }

    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        if field.name() == "rows_returned" {
            self.rows = Some(value);
        }
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if !self.texts {
            return;
        }
        match field.name() {
            "summary" => self.summary = Some(value.to_owned()),
            "db.statement" if !value.is_empty() => self.statement = Some(value.trim().to_owned()),
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if self.texts && field.name() == "summary" && self.summary.is_none() {
            self.summary = Some(format!("{value:?}"));
        }
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for DatabaseObserver {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: tracing_subscriber::layer::Context<'_, S>) {
        // A span is made only under a call's span, when spans are exported.
        let parent = OtelContext::current();
        let tracer = TRACER.get().filter(|_| parent.has_active_span());
        let mut fields = StatementFields { texts: tracer.is_some(), ..StatementFields::default() };
        event.record(&mut fields);
        if let Some(waited) = fields.acquired_after {
            DATABASE.acquire.observe(waited);
            return;
        }
        let Some(elapsed) = fields.elapsed else { return };
        DATABASE.statement.observe(elapsed);
        let Some(tracer) = tracer else { return };
        let end = SystemTime::now();
        let start = end.checked_sub(Duration::from_secs_f64(elapsed)).unwrap_or(end);
        let summary = fields.summary.unwrap_or_else(|| "statement".to_owned());
        let mut attributes =
            vec![KeyValue::new("db.system.name", "postgresql"), KeyValue::new("db.query.summary", summary.clone())];
        attributes.push(KeyValue::new("db.query.text", fields.statement.unwrap_or_else(|| summary.clone())));
        if let Some(rows) = fields.rows {
            attributes.push(KeyValue::new("db.response.returned_rows", rows as i64));
        }
        let mut span = tracer
            .span_builder(summary)
            .with_kind(SpanKind::Client)
            .with_start_time(start)
            .with_attributes(attributes)
            .start_with_context(tracer, &parent);
        span.end_with_timestamp(end);
    }
}
