//! Connect calls of methods the gateway has no typed handler for — services
//! only tonic serves (reflection, health) and client- or bidirectional-
//! streaming methods — relayed to tonic as gRPC, in process.
//!
//! With the protobuf codec both protocols carry the same bytes: a gRPC
//! length-prefixed message is a Connect envelope. A unary message gains or
//! loses the 5-byte prefix; a stream passes through as it is; the gRPC
//! status and trailers become the Connect error or end-of-stream message.
//! The JSON codec needs a typed message, so such methods take protobuf only.

use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, BodyStream};
use tonic::Status;
use tonic::metadata::MetadataMap;

use crate::gateway::Gateway;
use crate::protocol::connect::{self, end_of_stream, error, timeout, unsupported_media};
use crate::protocol::deadline::{deadline_exceeded, grpc_timeout_header, next_before};
use crate::protocol::envelope::{envelope, unwrap_envelope};
use crate::protocol::media_type;

/// What the Connect client sent: a unary message or an enveloped stream.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Shape {
    Unary,
    Stream,
}

/// A Connect request rewritten as gRPC, and what the answer must become.
pub(crate) struct Relayed {
    pub(crate) request: Request<Body>,
    pub(crate) shape: Shape,
    pub(crate) timeout: Option<Duration>,
}

/// Connect headers that have no meaning to the gRPC side.
const CONNECT_HEADERS: [&str; 8] = [
    "content-type",
    "content-length",
    "content-encoding",
    "accept-encoding",
    "connect-protocol-version",
    "connect-timeout-ms",
    "connect-content-encoding",
    "connect-accept-encoding",
];

/// Rewrites a Connect request as a gRPC request; `Err` is the Connect
/// answer to send instead (bad headers, wrong codec, body too large).
pub(crate) async fn to_grpc(gateway: &Gateway, req: Request<Body>) -> Result<Relayed, Response<Body>> {
    let (mut parts, body) = req.into_parts();
    if parts.method != http::Method::POST {
        let mut response = error(&Status::unimplemented(format!(
            "{} takes POST: GET is only for methods with idempotency_level NO_SIDE_EFFECTS",
            parts.uri.path().trim_start_matches('/')
        )));
        *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
        response.headers_mut().insert(header::ALLOW, HeaderValue::from_static("POST"));
        return Err(response);
    }
    let (shape, encoding_header) = match media_type(&parts.headers) {
        "application/proto" => (Shape::Unary, header::CONTENT_ENCODING.as_str()),
        "application/connect+proto" => (Shape::Stream, "connect-content-encoding"),
        "application/json" | "application/connect+json" => {
            return Err(connect::refuse(
                &parts.headers,
                &Status::unimplemented(format!(
                    "{} takes the protobuf codec only (application/proto, application/connect+proto)",
                    parts.uri.path().trim_start_matches('/')
                )),
            ));
        }
        _ => return Err(unsupported_media("application/proto, application/connect+proto")),
    };
    // Found in the headers, before the call: a stream's client still reads
    // them from the end-of-stream message.
    let checked = connect::check_version(&parts.headers)
        .and_then(|()| connect::check_identity(&parts.headers, encoding_header))
        .and_then(|()| timeout(&parts.headers));
    let timeout = checked.map_err(|status| connect::refuse(&parts.headers, &status))?;
    let body = match shape {
        Shape::Unary => {
            let message = gateway.read_body(&parts.headers, body).await.map_err(|(_, status)| error(&status))?;
            Body::from(envelope(0, &message))
        }
        Shape::Stream => body,
    };
    for name in CONNECT_HEADERS {
        parts.headers.remove(name);
    }
    parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    parts.headers.insert(header::TE, HeaderValue::from_static("trailers"));
    if let Some(limit) = timeout {
        parts.headers.insert("grpc-timeout", grpc_timeout_header(limit));
    }
    Ok(Relayed { request: Request::from_parts(parts, body), shape, timeout })
}

/// Turns tonic's gRPC answer into the Connect answer of `shape`.
pub(crate) async fn from_grpc(shape: Shape, response: Response<Body>, timeout: Option<Duration>) -> Response<Body> {
    let (parts, body) = response.into_parts();
    let mut headers = parts.headers;
    headers.remove(header::CONTENT_TYPE);
    headers.remove(header::CONTENT_LENGTH);
    // A trailers-only answer: its status and metadata are all in the headers.
    if let Some(status) = Status::from_header_map(&headers) {
        return match shape {
            Shape::Unary => error(failure(&status).unwrap_or(&Status::internal("a unary method answered no message"))),
            Shape::Stream => {
                connect_stream(HeaderMap::new(), Body::from(end_of_stream(failure(&status), &metadata(&status))))
            }
        };
    }
    strip_status(&mut headers);
    match shape {
        Shape::Unary => unary(headers, body).await,
        Shape::Stream => connect_stream(headers, stream(body, timeout)),
    }
}

fn connect_stream(headers: HeaderMap, body: Body) -> Response<Body> {
    let mut response = Response::new(body);
    *response.headers_mut() = headers;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/connect+proto"));
    response
}

fn strip_status(headers: &mut HeaderMap) {
    for name in ["grpc-status", "grpc-message", "grpc-status-details-bin", "grpc-encoding", "grpc-accept-encoding"] {
        headers.remove(name);
    }
}

/// `None` for OK, the status otherwise.
fn failure(status: &Status) -> Option<&Status> {
    (status.code() != tonic::Code::Ok).then_some(status)
}

async fn unary(headers: HeaderMap, body: Body) -> Response<Body> {
    let (message, status) = match body.collect().await {
        Ok(collected) => {
            let status = collected
                .trailers()
                .and_then(Status::from_header_map)
                .unwrap_or_else(|| Status::internal("the gRPC answer ended without a status"));
            (collected.to_bytes(), status)
        }
        Err(e) => (Bytes::new(), Status::internal(format!("the gRPC answer failed: {e}"))),
    };
    if let Some(status) = failure(&status) {
        let mut response = error(status);
        response.headers_mut().extend(headers);
        return response;
    }
    let Ok(message) = unwrap_envelope(message) else {
        return error(&Status::internal("a unary method did not answer exactly one message"));
    };
    let mut response = Response::new(Body::from(message));
    *response.headers_mut() = headers;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/proto"));
    // Connect carries unary trailers as `trailer-` headers.
    for (name, value) in &metadata(&status).into_headers() {
        if let Ok(name) = http::HeaderName::from_bytes(format!("trailer-{name}").as_bytes()) {
            response.headers_mut().append(name, value.clone());
        }
    }
    response
}

/// gRPC frames pass through as Connect envelopes; the trailers become the
/// end-of-stream envelope. Pulled as the client reads.
fn stream(body: Body, timeout: Option<Duration>) -> Body {
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    let frames = futures_util::stream::unfold(Some(BodyStream::new(body)), move |state| async move {
        let mut body = state?;
        let timed_out = || Err(axum::Error::new(deadline_exceeded()));
        let next = next_before(deadline, &mut body, timed_out).await;
        let end = |status: Status| Some((Ok::<_, Status>(end_of_stream(failure(&status), &metadata(&status))), None));
        match next {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => Some((Ok(data), Some(body))),
                Err(frame) => end(frame
                    .into_trailers()
                    .ok()
                    .and_then(|t| Status::from_header_map(&t))
                    .unwrap_or_else(|| Status::internal("the gRPC answer ended without a status"))),
            },
            Some(Err(e)) => match e.into_inner().downcast::<Status>() {
                Ok(status) => end(*status),
                Err(e) => end(Status::internal(format!("the gRPC answer failed: {e}"))),
            },
            None => end(Status::internal("the gRPC answer ended without a status")),
        }
    });
    // Fused: a layer above (compression) may poll once more after the end.
    Body::from_stream(futures_util::StreamExt::fuse(frames))
}

/// Metadata of a status without its own `grpc-*` fields.
fn metadata(status: &Status) -> MetadataMap {
    let mut headers = status.metadata().clone().into_headers();
    strip_status(&mut headers);
    MetadataMap::from_headers(headers)
}
