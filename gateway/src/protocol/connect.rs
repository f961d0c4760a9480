//! The Connect protocol (connectrpc.com/docs/protocol), unary and server
//! streaming, with the JSON and protobuf codecs.
//!
//! - Unary: `POST /pkg.Service/Method` with `application/json` or
//!   `application/proto`; `GET` with `?message=…&encoding=…[&base64=1]` for
//!   methods marked `NO_SIDE_EFFECTS`. Errors are the Connect error JSON with
//!   the HTTP status of the code.
//! - Server streaming: `POST` with `application/connect+json` or
//!   `application/connect+proto`; messages are enveloped (flags byte and
//!   32-bit big-endian length) and the stream ends with an end-of-stream
//!   envelope carrying the error, if any, and trailers.
//!
//! `connect-timeout-ms` sets a deadline (`deadline_exceeded` when it
//! passes). Compressed messages are refused with `unimplemented`.

use std::time::Duration;

use axum::body::Body;
use base64::Engine as _;
use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use serde_json::{Map, Value, json};
use tonic::Status;
use tonic::metadata::MetadataMap;

use crate::gateway::Gateway;
use crate::message::method::{Answer, Call, Encoding, Method, Output, Payload};
use crate::protocol::deadline::{deadline_exceeded, next_before, with_deadline};
use crate::protocol::envelope::{envelope, unwrap_envelope};
use crate::protocol::media_type;
use crate::rule::spec::MethodKind;
use crate::status::{connect_code, http_status};

/// Largest `connect-timeout-ms` the spec allows (10 digits).
const MAX_TIMEOUT_MS: u64 = 9_999_999_999;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Codec {
    Json,
    Proto,
}

impl Codec {
    /// The call of a request whose message, in this codec, is `message`.
    fn call(self, parts: http::request::Parts, message: Bytes) -> Call {
        Call {
            metadata: MetadataMap::from_headers(parts.headers),
            extensions: parts.extensions,
            payload: match self {
                Self::Json => Payload::Json(message),
                Self::Proto => Payload::Proto(message),
            },
            encoding: match self {
                Self::Json => Encoding::Json { response_body: "" },
                Self::Proto => Encoding::Proto,
            },
        }
    }
}

/// Serves one Connect request to a known method.
pub(crate) async fn serve(gateway: &Gateway, req: Request<Body>) -> Response<Body> {
    let Some(method) = gateway.handler(req.uri().path()).cloned() else {
        return unknown_procedure(req.uri().path());
    };
    if method.spec.kind == MethodKind::ServerStreaming && stream_content_type(req.headers()).is_none() {
        return unsupported_media("application/connect+json, application/connect+proto");
    }
    let timeout = match check_version(req.headers()).and_then(|()| timeout(req.headers())) {
        Ok(t) => t,
        Err(status) if method.spec.kind == MethodKind::ServerStreaming => return refuse(req.headers(), &status),
        Err(status) => return error(&status),
    };
    match method.spec.kind {
        MethodKind::Unary => unary(gateway, &method, req, timeout).await,
        MethodKind::ServerStreaming => streaming(gateway, &method, req, timeout).await,
        _ => error(&Status::unimplemented(format!(
            "{} streams requests: it is served over gRPC only",
            method.spec.rpc.trim_start_matches('/')
        ))),
    }
}

/// A `connect-protocol-version`, when sent, must be 1.
pub(crate) fn check_version(headers: &HeaderMap) -> Result<(), Status> {
    match headers.get("connect-protocol-version") {
        Some(version) if version != "1" => Err(Status::invalid_argument("connect-protocol-version must be 1")),
        _ => Ok(()),
    }
}

/// Messages arrive uncompressed: `name` (the encoding header) is absent or
/// `identity`.
pub(crate) fn check_identity(headers: &HeaderMap, name: &str) -> Result<(), Status> {
    match headers.get(name) {
        Some(encoding) if encoding != "identity" => {
            Err(unsupported_compression(name, &String::from_utf8_lossy(encoding.as_bytes())))
        }
        _ => Ok(()),
    }
}

/// The spec's answer to a compression the server lacks: `unimplemented`,
/// listing the ones it supports.
fn unsupported_compression(name: &str, encoding: &str) -> Status {
    Status::unimplemented(format!("{name} {encoding:?} is not supported; supported compression: identity"))
}

/// The content type of a streaming request (`application/connect+json` or
/// `+proto`), if it is one.
pub(crate) fn stream_content_type(headers: &HeaderMap) -> Option<&'static str> {
    match crate::protocol::media_type(headers) {
        "application/connect+json" => Some("application/connect+json"),
        "application/connect+proto" => Some("application/connect+proto"),
        _ => None,
    }
}

/// The answer to a call refused before it ran, in the shape its client
/// reads: for a stream, HTTP 200 with the error in the end-of-stream
/// message (the spec's only place for it); else a unary error.
pub(crate) fn refuse(headers: &HeaderMap, status: &Status) -> Response<Body> {
    match stream_content_type(headers) {
        Some(content_type) => {
            let mut response = end_only(status, MetadataMap::new());
            response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
            response
        }
        None => error(status),
    }
}

/// The answer for a procedure no service has: 404, in the Connect error
/// shape, with code `unimplemented` (the code the spec maps 404 to).
pub(crate) fn unknown_procedure(path: &str) -> Response<Body> {
    let mut response = error(&Status::unimplemented(format!("no procedure {}", path.trim_start_matches('/'))));
    *response.status_mut() = StatusCode::NOT_FOUND;
    response
}

/// Whether a request no route took was meant as a Connect call: its path
/// is a procedure's (`/package.Service/Method`) and it carries a Connect
/// header or one of Connect's content types.
pub(crate) fn looks_like_connect<B>(req: &Request<B>) -> bool {
    let procedure = req
        .uri()
        .path()
        .strip_prefix('/')
        .and_then(|p| p.split_once('/'))
        .is_some_and(|(service, method)| service.contains('.') && !method.is_empty() && !method.contains('/'));
    let headers = req.headers();
    procedure
        && (headers.contains_key("connect-protocol-version")
            || matches!(
                crate::protocol::media_type(headers),
                "application/proto" | "application/connect+proto" | "application/connect+json"
            )
            || (req.method() == http::Method::GET
                && req.uri().query().is_some_and(|q| q.split('&').any(|p| p.starts_with("encoding=")))))
}

/// The `connect-timeout-ms` deadline, if any.
pub(crate) fn timeout(headers: &HeaderMap) -> Result<Option<Duration>, Status> {
    let Some(value) = headers.get("connect-timeout-ms") else { return Ok(None) };
    let ms = value
        .to_str()
        .ok()
        .filter(|s| !s.is_empty() && s.len() <= 10 && s.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|s| s.parse::<u64>().ok())
        .filter(|ms| *ms <= MAX_TIMEOUT_MS)
        .ok_or_else(|| {
            Status::invalid_argument("connect-timeout-ms must be a positive integer of at most 10 digits")
        })?;
    Ok(Some(Duration::from_millis(ms)))
}

pub(crate) fn unsupported_media(accepted: &'static str) -> Response<Body> {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::UNSUPPORTED_MEDIA_TYPE;
    response.headers_mut().insert("accept-post", HeaderValue::from_static(accepted));
    response
}

async fn unary(gateway: &Gateway, method: &Method, req: Request<Body>, timeout: Option<Duration>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let (codec, message) = if parts.method == http::Method::GET {
        if !method.spec.no_side_effects {
            let mut response =
                error(&Status::unimplemented("GET is only for methods with idempotency_level NO_SIDE_EFFECTS"));
            *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
            response.headers_mut().insert(header::ALLOW, HeaderValue::from_static("POST"));
            return response;
        }
        match get_message(parts.uri.query().unwrap_or_default()) {
            Ok(decoded) => decoded,
            Err((code, status)) => {
                let mut response = error(&status);
                *response.status_mut() = code;
                return response;
            }
        }
    } else {
        let codec = match media_type(&parts.headers) {
            "application/json" => Codec::Json,
            "application/proto" => Codec::Proto,
            _ => return unsupported_media("application/json, application/proto"),
        };
        if let Err(status) = check_identity(&parts.headers, header::CONTENT_ENCODING.as_str()) {
            return error(&status);
        }
        match gateway.read_body(&parts.headers, body).await {
            Ok(bytes) => (codec, bytes),
            Err((_, status)) => return error(&status),
        }
    };
    match with_deadline(timeout, method.call(codec.call(parts, message))).await {
        Ok(Answer { metadata, output: Output::One(bytes) }) => {
            let mut response = Response::new(Body::from(bytes));
            *response.headers_mut() = metadata.into_headers();
            let content_type = if codec == Codec::Json { "application/json" } else { "application/proto" };
            response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
            response
        }
        Ok(_) => error(&Status::internal("a unary method answered with a stream")),
        Err(status) => error(&status),
    }
}

/// Decodes the query of a Connect `GET`: `message`, `encoding`, `base64`,
/// `compression`; `Err` is the error to send, with its HTTP status.
fn get_message(query: &str) -> Result<(Codec, Bytes), (StatusCode, Status)> {
    let mut message = None;
    let mut codec = None;
    let mut base64 = false;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value: Vec<u8> = percent_encoding::percent_decode_str(value).collect();
        match key {
            "message" => message = Some(value),
            "encoding" => {
                codec = Some(match value.as_slice() {
                    b"json" => Codec::Json,
                    b"proto" => Codec::Proto,
                    // As an unsupported Content-Type is on POST.
                    other => {
                        let status = Status::unimplemented(format!(
                            "encoding {:?} is not supported; use json or proto",
                            String::from_utf8_lossy(other)
                        ));
                        return Err((StatusCode::UNSUPPORTED_MEDIA_TYPE, status));
                    }
                })
            }
            "base64" => base64 = value == b"1",
            "compression" if !value.is_empty() && value != b"identity" => {
                return Err(with_http_status(unsupported_compression("compression", &String::from_utf8_lossy(&value))));
            }
            _ => {}
        }
    }
    let missing =
        |name: &str| with_http_status(Status::invalid_argument(format!("the {name} query parameter is missing")));
    let codec = codec.ok_or_else(|| missing("encoding"))?;
    let message = message.ok_or_else(|| missing("message"))?;
    let message = if base64 {
        let text: Vec<u8> = message.into_iter().filter(|b| *b != b'=').collect();
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&text)
            .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(&text))
            .map_err(|e| with_http_status(Status::invalid_argument(format!("message is not base64: {e}"))))?
    } else {
        message
    };
    Ok((codec, Bytes::from(message)))
}

/// A status with the HTTP status its code maps to.
fn with_http_status(status: Status) -> (StatusCode, Status) {
    (http_status(status.code()), status)
}

async fn streaming(
    gateway: &Gateway,
    method: &Method,
    req: Request<Body>,
    timeout: Option<Duration>,
) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let codec = match (parts.method == http::Method::POST, media_type(&parts.headers)) {
        (true, "application/connect+json") => Codec::Json,
        (true, "application/connect+proto") => Codec::Proto,
        _ => return unsupported_media("application/connect+json, application/connect+proto"),
    };
    let content_type = if codec == Codec::Json { "application/connect+json" } else { "application/connect+proto" };
    let answer = async {
        check_identity(&parts.headers, "connect-content-encoding")?;
        let bytes = gateway.read_body(&parts.headers, body).await.map_err(|(_, status)| status)?;
        let message = unwrap_envelope(bytes)?;
        with_deadline(timeout, method.call(codec.call(parts, message))).await
    };
    let mut response = match answer.await {
        Err(status) => end_only(&status, MetadataMap::new()),
        Ok(Answer { metadata, output }) => {
            let messages = match output {
                Output::Stream(messages) => messages,
                Output::One(bytes) => futures_util::stream::once(async move { Ok(bytes) }).boxed(),
            };
            let mut response = Response::new(envelopes(messages, timeout));
            *response.headers_mut() = metadata.into_headers();
            response
        }
    };
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// The end-of-stream envelope: the error (if any) and trailers.
pub(crate) fn end_of_stream(status: Option<&Status>, trailers: &MetadataMap) -> Bytes {
    let mut end = Map::new();
    if let Some(status) = status {
        end.insert("error".into(), error_json(status));
    }
    let metadata = headers_json(&trailers.clone().into_headers());
    if !metadata.is_empty() {
        end.insert("metadata".into(), Value::Object(metadata));
    }
    envelope(0x02, &serde_json::to_vec(&Value::Object(end)).unwrap_or_default())
}

fn end_only(status: &Status, trailers: MetadataMap) -> Response<Body> {
    Response::new(Body::from(end_of_stream(Some(status), &trailers)))
}

/// The response body of a stream: each message enveloped, then the end.
/// It is pulled as the client reads, so a slow reader slows the service.
fn envelopes(
    messages: futures_util::stream::BoxStream<'static, Result<Bytes, Status>>,
    timeout: Option<Duration>,
) -> Body {
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    let stream = futures_util::stream::unfold(Some(messages), move |state| async move {
        let mut messages = state?;
        let next = next_before(deadline, &mut messages, || Err(deadline_exceeded())).await;
        match next {
            Some(Ok(message)) => Some((Ok::<_, Status>(envelope(0, &message)), Some(messages))),
            Some(Err(status)) => Some((Ok(end_of_stream(Some(&status), &MetadataMap::new())), None)),
            None => Some((Ok(end_of_stream(None, &MetadataMap::new())), None)),
        }
    });
    Body::from_stream(futures_util::StreamExt::fuse(stream))
}

/// The Connect error body of a status.
fn error_json(status: &Status) -> Value {
    let mut error = Map::new();
    error.insert("code".into(), Value::from(connect_code(status.code())));
    if !status.message().is_empty() {
        error.insert("message".into(), Value::from(status.message()));
    }
    let details = details_json(status);
    if !details.is_empty() {
        error.insert("details".into(), Value::Array(details));
    }
    Value::Object(error)
}

/// `details` of a status (a packed `google.rpc.Status`): each `Any` as
/// `{"type": …, "value": base64}`.
fn details_json(status: &Status) -> Vec<Value> {
    use prost::Message as _;
    let Ok(rpc) = tonic_types::pb::Status::decode(status.details()) else { return Vec::new() };
    rpc.details
        .iter()
        .map(|any| {
            let type_name = any.type_url.rsplit('/').next().unwrap_or(&any.type_url);
            json!({
                "type": type_name,
                "value": base64::engine::general_purpose::STANDARD_NO_PAD.encode(&any.value),
            })
        })
        .collect()
}

fn headers_json(headers: &HeaderMap) -> Map<String, Value> {
    let mut out = Map::new();
    for (name, value) in headers {
        if let Ok(text) = value.to_str()
            && let Value::Array(values) = out.entry(name.as_str()).or_insert_with(|| Value::Array(Vec::new()))
        {
            values.push(Value::from(text));
        }
    }
    out
}

/// A unary error response: Connect error JSON with the code's HTTP status.
pub(crate) fn error(status: &Status) -> Response<Body> {
    let mut response = Response::new(Body::from(serde_json::to_vec(&error_json(status)).unwrap_or_default()));
    *response.status_mut() = http_status(status.code());
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    crate::status::retry_after(status, response.headers_mut());
    let mut trailers = status.metadata().clone().into_headers();
    for name in ["grpc-status", "grpc-message", "grpc-status-details-bin"] {
        trailers.remove(name);
    }
    response.headers_mut().extend(trailers);
    response
}
