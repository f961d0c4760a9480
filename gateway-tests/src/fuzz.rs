//! Entry points for fuzzing what a stranger controls, shared by the fuzz
//! targets (`fuzz/`) and by the test that replays every input they kept
//! (`tests/lab.rs`). Each takes arbitrary bytes and panics only when an
//! invariant breaks: a panic inside the gateway, a 500, an answer that does
//! not come within seconds, or a decoding that does not round-trip.
//!
//! Requests go through the whole in-process stack (classification, the
//! gateway's protocols, tonic) to an echo of the lab API, as a service
//! using the gateway would serve them.

use std::sync::OnceLock;
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use futures_util::StreamExt;
use gateway::{ClassifyLayer, Dispatch, Gateway};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Limited};
use tonic::Status;
use tower::ServiceExt;

use crate::gatewaytest::common::v1 as common;
use crate::pb;

/// How long one input may take before it counts as a hang.
const ANSWER_WITHIN: Duration = Duration::from_secs(5);

/// The most bytes of an answer read (a streamed answer is cut there).
const ANSWER_BYTES: usize = 1 << 20;

/// The lab API answering with what it was sent, with every stream bounded.
struct Echo;

type TickStream = futures_util::stream::BoxStream<'static, Result<pb::Tick, Status>>;
type ThingStream = futures_util::stream::BoxStream<'static, Result<pb::Thing, Status>>;

#[tonic::async_trait]
impl pb::lab_server::Lab for Echo {
    async fn echo(&self, request: tonic::Request<pb::Thing>) -> Result<tonic::Response<pb::Thing>, Status> {
        Ok(tonic::Response::new(request.into_inner()))
    }

    async fn echo_note(&self, request: tonic::Request<pb::Thing>) -> Result<tonic::Response<pb::Thing>, Status> {
        Ok(tonic::Response::new(request.into_inner()))
    }

    async fn update_thing(
        &self,
        request: tonic::Request<pb::UpdateThingRequest>,
    ) -> Result<tonic::Response<pb::UpdateThingRequest>, Status> {
        Ok(tonic::Response::new(request.into_inner()))
    }

    async fn nothing(
        &self,
        _: tonic::Request<gateway::wkt::Empty>,
    ) -> Result<tonic::Response<gateway::wkt::Empty>, Status> {
        Ok(tonic::Response::new(gateway::wkt::Empty {}))
    }

    async fn fail(&self, request: tonic::Request<pb::FailRequest>) -> Result<tonic::Response<pb::Thing>, Status> {
        // The codes HTTP calls 500 are the service's own failures, which no
        // input should cause; any other code is answered as asked.
        let code = match tonic::Code::from_i32(request.into_inner().code) {
            tonic::Code::Unknown | tonic::Code::Internal | tonic::Code::DataLoss => tonic::Code::FailedPrecondition,
            code => code,
        };
        Err(Status::new(code, "failed as asked"))
    }

    type CountStream = TickStream;

    async fn count(&self, request: tonic::Request<pb::CountRequest>) -> Result<tonic::Response<TickStream>, Status> {
        let to = request.into_inner().to.clamp(0, 3);
        let ticks = (1..=to).map(|n| Ok(pb::Tick { n, pad: String::new() }));
        Ok(tonic::Response::new(futures_util::stream::iter(ticks).boxed()))
    }

    async fn upload(
        &self,
        request: tonic::Request<tonic::Streaming<pb::Thing>>,
    ) -> Result<tonic::Response<pb::Thing>, Status> {
        let mut things = request.into_inner();
        let mut last = pb::Thing::default();
        while let Some(thing) = things.next().await {
            last = thing?;
        }
        Ok(tonic::Response::new(last))
    }

    async fn stamp(&self, request: tonic::Request<pb::parcel::Label>) -> Result<tonic::Response<common::Note>, Status> {
        Ok(tonic::Response::new(common::Note { text: request.into_inner().text, parts: Vec::new() }))
    }

    async fn first_part(
        &self,
        request: tonic::Request<common::Note>,
    ) -> Result<tonic::Response<common::note::Part>, Status> {
        request.into_inner().parts.into_iter().next().map(tonic::Response::new).ok_or_else(|| Status::not_found("none"))
    }

    type ChatStream = ThingStream;

    async fn chat(
        &self,
        request: tonic::Request<tonic::Streaming<pb::Thing>>,
    ) -> Result<tonic::Response<ThingStream>, Status> {
        Ok(tonic::Response::new(request.into_inner().take(3).boxed()))
    }
}

type App = tower::util::BoxCloneSyncService<Request<Body>, http::Response<Body>, std::convert::Infallible>;

/// One runtime and one app for the whole run.
fn stack() -> &'static (tokio::runtime::Runtime, App) {
    static STACK: OnceLock<(tokio::runtime::Runtime, App)> = OnceLock::new();
    STACK.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        // Some layers start timers as they are built.
        let _inside = runtime.enter();
        let echo = std::sync::Arc::new(Echo);
        let gateway = Gateway::builder()
            .methods(pb::lab_gateway_methods(echo.clone()))
            .routes(pb::HTTP_ROUTES)
            .any_types(pb::ANY_TYPES)
            .body_limit(64 * 1024)
            .build()
            .expect("the lab's rules are valid");
        let grpc = tonic::service::Routes::new(pb::lab_server::LabServer::from_arc(echo)).into_axum_router();
        let app = tower::ServiceBuilder::new()
            .layer(ClassifyLayer::new(gateway.clone()))
            .service(Dispatch::new(grpc, gateway))
            .map_err(|e| -> std::convert::Infallible { panic!("the stack failed: {e:?}") });
        let app = tower::util::BoxCloneSyncService::new(app);
        drop(_inside);
        (runtime, app)
    })
}

/// Serves `request`; panics if no answer (headers and body) comes in time
/// or the answer is a 500.
fn call(request: Request<Body>) {
    let (runtime, app) = stack();
    let what = format!("{} {}", request.method(), request.uri());
    // The timer is made inside the runtime, which it needs.
    let answer = runtime.block_on(async {
        tokio::time::timeout(ANSWER_WITHIN, async {
            let response = app.clone().oneshot(request).await.unwrap_or_else(|never| match never {});
            let (parts, body) = response.into_parts();
            // A body cut at the limit is fine: only its arrival is checked.
            let _ = Limited::new(body, ANSWER_BYTES).collect().await;
            parts.status
        })
        .await
    });
    let status = answer.unwrap_or_else(|_| panic!("no answer within {ANSWER_WITHIN:?}: {what}"));
    assert!(status != StatusCode::INTERNAL_SERVER_ERROR, "500 for {what}");
}

/// HTTP-rule binding: the first byte picks the method, the rest up to a
/// newline is the request target (path and query), the rest the JSON body.
pub fn binding(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else { return };
    let method = ["GET", "POST", "PUT", "PATCH", "DELETE"][usize::from(selector) % 5];
    let (target, body) = match rest.iter().position(|&b| b == b'\n') {
        Some(at) => (&rest[..at], &rest[at + 1..]),
        None => (rest, &[][..]),
    };
    let mut uri = Vec::with_capacity(target.len() + 1);
    if target.first() != Some(&b'/') {
        uri.push(b'/');
    }
    uri.extend_from_slice(target);
    // What an HTTP server would refuse before any service saw it.
    let Ok(uri) = http::Uri::try_from(uri) else { return };
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(Body::from(Bytes::copy_from_slice(body)))
        .expect("a valid request");
    call(request);
}

/// proto3 JSON decoding of `AllKinds` (every kind of field): what decodes
/// encodes, and that encoding decodes to the same message (compared by its
/// encoding as a JSON value, since NaN is not equal to itself and map keys
/// have no order). The first byte says
/// whether unknown fields are ignored.
pub fn protojson(data: &[u8]) {
    let Some((&selector, text)) = data.split_first() else { return };
    let ignore = selector & 1 == 1;
    let decoded = gateway::protojson::with_unknown_fields(ignore, || serde_json::from_slice::<pb::AllKinds>(text));
    let Ok(message) = decoded else { return };
    let encoded = serde_json::to_string(&message).expect("a decoded message encodes");
    let again: pb::AllKinds = gateway::protojson::with_unknown_fields(false, || serde_json::from_str(&encoded))
        .unwrap_or_else(|e| panic!("our own encoding does not decode ({e}): {encoded}"));
    // Compared as JSON values: maps and Struct keys come out in no fixed order.
    let value = |json: &str| serde_json::from_str::<serde_json::Value>(json).expect("our encoding is JSON");
    assert_eq!(value(&serde_json::to_string(&again).unwrap()), value(&encoded), "the encoding does not round-trip");
}

/// Connect: the first byte picks a unary JSON or binary POST, a GET with
/// the message in the query (the rest is the query string), or a
/// server-streaming call in the Connect envelope; the rest is the body.
pub fn connect(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else { return };
    let unary = "/gatewaytest.v1.Lab/Echo";
    let request = match selector % 4 {
        0 | 1 => Request::post(unary)
            .header("content-type", if selector % 4 == 0 { "application/json" } else { "application/proto" })
            .header("connect-protocol-version", "1")
            .body(Body::from(Bytes::copy_from_slice(rest))),
        2 => {
            let Ok(query) = std::str::from_utf8(rest) else { return };
            let Ok(uri) = http::Uri::try_from(format!("{unary}?{query}")) else { return };
            Request::get(uri).body(Body::empty())
        }
        _ => Request::post("/gatewaytest.v1.Lab/Count")
            .header(
                "content-type",
                if selector & 4 == 0 { "application/connect+json" } else { "application/connect+proto" },
            )
            .header("connect-protocol-version", "1")
            .body(Body::from(Bytes::copy_from_slice(rest))),
    };
    call(request.expect("a valid request"));
}

/// gRPC-Web framing, binary and text: the framing check's own invariants,
/// then the body served whole through the stack. The first byte picks the
/// content type and the method.
pub fn grpc_web(data: &[u8]) {
    let Some((&selector, body)) = data.split_first() else { return };
    let text = selector & 1 == 1;
    if let Ok(binary) = gateway::check_grpc_body(body, text) {
        // A body that passes is whole frames; as canonical text it passes again, unchanged.
        use base64::Engine as _;
        let canonical = base64::engine::general_purpose::STANDARD.encode(&binary);
        let again = gateway::check_grpc_body(canonical.as_bytes(), true).expect("canonical text passes");
        assert_eq!(again, binary, "the text round trip changed the messages");
    }
    let content_type = match (text, selector & 2 == 2) {
        (true, _) => "application/grpc-web-text",
        (false, false) => "application/grpc-web+proto",
        (false, true) => "application/grpc-web+json",
    };
    let path = if selector & 4 == 4 { "/gatewaytest.v1.Lab/Count" } else { "/gatewaytest.v1.Lab/Echo" };
    let request = Request::post(path)
        .header("content-type", content_type)
        .header("x-grpc-web", "1")
        .body(Body::from(Bytes::copy_from_slice(body)))
        .expect("a valid request");
    call(request);
}
