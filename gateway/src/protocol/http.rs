//! JSON/HTTP: serves a request by the `google.api.http` rule it matched.
//! Unary answers are one JSON document; server streams are newline-delimited
//! JSON, or Server-Sent Events when the client accepts `text/event-stream`.

use axum::body::Body;
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use http::{HeaderValue, Request, Response, StatusCode, header};
use tonic::{Code, Status};

use crate::gateway::{Gateway, Matched};
use crate::message::method::{Call, Encoding, Output, Payload};
use crate::rule::binding::invalid_field;
use crate::rule::router::Match;

/// The answer to a request that matched no rule: 405 with `Allow` when the
/// path matches under other methods, else 404.
fn unmatched(gateway: &Gateway, req: &Request<Body>, outcome: Match) -> Response<Body> {
    match outcome {
        Match::MethodNotAllowed(methods) => {
            let status = Status::new(
                Code::Unimplemented,
                format!("method {} is not allowed on {}", req.method(), req.uri().path()),
            );
            let mut response = gateway.error_response(Some(StatusCode::METHOD_NOT_ALLOWED), &status);
            let allow: Vec<&str> = methods.iter().map(http::Method::as_str).collect();
            if let Ok(value) = HeaderValue::from_str(&allow.join(", ")) {
                response.headers_mut().insert(header::ALLOW, value);
            }
            response
        }
        _ if crate::protocol::connect::looks_like_connect(req) => {
            crate::protocol::connect::unknown_procedure(req.uri().path())
        }
        _ => {
            let status = Status::new(Code::NotFound, format!("no route for {} {}", req.method(), req.uri().path()));
            gateway.error_response(Some(StatusCode::NOT_FOUND), &status)
        }
    }
}

/// Serves one JSON/HTTP request.
pub(crate) async fn serve(gateway: &Gateway, mut req: Request<Body>) -> Response<Body> {
    let matched = match req.extensions_mut().remove::<Matched>() {
        Some(m) => m,
        None => match Matched::of(gateway.find(req.method(), req.uri().path())) {
            Ok(matched) => matched,
            Err(other) => return unmatched(gateway, &req, other),
        },
    };
    let (route, template) = gateway.route(matched.route);
    let Some(method) = gateway.handler(route.rpc) else {
        return unmatched(gateway, &req, Match::NotFound);
    };
    let params = match matched.params {
        Ok(values) => template.variables.iter().map(|v| v.field_path.clone()).zip(values).collect(),
        Err(variable) => {
            let field = &template.variables[variable].field_path;
            let status = invalid_field(field, "the path segment is not UTF-8 once percent-decoded".into());
            return gateway.error_response(None, &status);
        }
    };
    let sse = accepts_event_stream(req.headers());

    let (parts, body) = req.into_parts();
    let body = if route.body.is_empty() {
        Bytes::new()
    } else {
        match gateway.read_body(&parts.headers, body).await {
            Ok(bytes) => bytes,
            Err((code, status)) => return gateway.error_response(Some(code), &status),
        }
    };
    let call = Call {
        metadata: tonic::metadata::MetadataMap::from_headers(parts.headers),
        extensions: parts.extensions,
        payload: Payload::Http { route, params, query: parts.uri.query().map(str::to_owned), body },
        encoding: Encoding::Json { response_body: route.response_body },
    };
    let answer = match method.call(call).await {
        Ok(answer) => answer,
        Err(status) => return gateway.error_response(None, &status),
    };
    let code = StatusCode::from_u16(route.success_code).unwrap_or(StatusCode::OK);
    let (body, content_type) = match answer.output {
        Output::One(_) if code == StatusCode::NO_CONTENT => (Body::empty(), None),
        Output::One(bytes) => (Body::from(bytes), Some("application/json")),
        Output::Stream(messages) if sse => {
            let (gateway, event_id) = (gateway.clone(), method.spec.event_id);
            let events = messages.map(move |m| Ok::<_, Status>(sse_event(&gateway, m, event_id)));
            (Body::from_stream(futures_util::StreamExt::fuse(events)), Some("text/event-stream"))
        }
        Output::Stream(messages) => {
            let gateway = gateway.clone();
            let lines = messages.map(move |m| Ok::<_, Status>(ndjson_line(&gateway, m)));
            (Body::from_stream(futures_util::StreamExt::fuse(lines)), Some("application/x-ndjson"))
        }
    };
    let mut response = Response::new(body);
    *response.status_mut() = code;
    *response.headers_mut() = answer.metadata.into_headers();
    if let Some(content_type) = content_type {
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        if content_type != "application/json" {
            // Streams must reach the client as they are written, past proxies too.
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
        }
    }
    response
}

fn accepts_event_stream(headers: &http::HeaderMap) -> bool {
    headers.get_all(header::ACCEPT).iter().filter_map(|v| v.to_str().ok()).any(|v| v.contains("text/event-stream"))
}

/// One NDJSON line: the message, or `{"error": …}` (the renderer's error
/// body) when the stream ends with a status.
fn ndjson_line(gateway: &Gateway, message: Result<Bytes, Status>) -> Bytes {
    let json = match message {
        Ok(json) => json,
        Err(status) => error_object(gateway, &status),
    };
    let mut line = BytesMut::with_capacity(json.len() + 1);
    line.put_slice(&json);
    line.put_u8(b'\n');
    line.freeze()
}

fn error_object(gateway: &Gateway, status: &Status) -> Bytes {
    let body = gateway.renderer().body(status);
    let mut out = BytesMut::with_capacity(body.len() + 10);
    out.put_slice(b"{\"error\":");
    out.put_slice(if body.is_empty() { b"null" } else { &body });
    out.put_u8(b'}');
    out.freeze()
}

/// One Server-Sent Event: `data:` the message (with `id:` its cursor when
/// the message declares one and it is set; an event without `id:` leaves
/// the client's last event id as it was), or an `error` event that ends
/// the stream.
fn sse_event(gateway: &Gateway, message: Result<Bytes, Status>, event_id: &str) -> Bytes {
    let mut event = BytesMut::new();
    match message {
        Ok(json) => {
            if !event_id.is_empty()
                && let Ok(serde_json::Value::Object(object)) = serde_json::from_slice(&json)
                && let Some(id) = object.get(event_id).filter(|id| !id.is_null())
            {
                let id = match id {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                // An id with a line break would end the field early.
                if !id.is_empty() && !id.contains(['\n', '\r', '\0']) {
                    event.put_slice(b"id: ");
                    event.put_slice(id.as_bytes());
                    event.put_u8(b'\n');
                }
            }
            event.put_slice(b"data: ");
            event.put_slice(&json);
        }
        Err(status) => {
            event.put_slice(b"event: error\ndata: ");
            event.put_slice(&error_object(gateway, &status));
        }
    }
    event.put_slice(b"\n\n");
    event.freeze()
}
