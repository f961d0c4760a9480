//! gRPC-Web with the JSON codec (`application/grpc-web+json`), which
//! tonic-web does not speak: served by the gateway's typed handlers, unary
//! and server streaming, over HTTP/1.1 and HTTP/2.
//!
//! The request is one length-prefixed JSON message; the answer is the
//! messages, each length-prefixed, then a trailer frame (flag `0x80`) with
//! `grpc-status`, `grpc-message` and `grpc-status-details-bin`. A call that
//! fails before its first message answers trailers-only (the status in the
//! response headers), as tonic-web does.

use axum::body::Body;
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use http::{HeaderMap, HeaderValue, Request, Response, header};
use tonic::Status;
use tonic::metadata::MetadataMap;

use crate::gateway::Gateway;
use crate::message::method::{Answer, Call, Encoding, Output, Payload};
use crate::protocol::deadline::{deadline_exceeded, grpc_timeout, next_before, with_deadline};
use crate::protocol::envelope::{envelope, unwrap_envelope};
use crate::protocol::media_type;
use crate::rule::spec::MethodKind;

/// The content type of requests and answers.
pub(crate) const CONTENT_TYPE: &str = "application/grpc-web+json";

/// Whether a request is gRPC-Web with the JSON codec.
pub(crate) fn is_json<B>(req: &Request<B>) -> bool {
    media_type(req.headers()) == CONTENT_TYPE
}

/// Serves one `application/grpc-web+json` request.
pub(crate) async fn serve(gateway: &Gateway, req: Request<Body>) -> Response<Body> {
    let path = req.uri().path();
    let method = match gateway.handler(path) {
        Some(m) if matches!(m.spec.kind, MethodKind::Unary | MethodKind::ServerStreaming) => m.clone(),
        Some(m) => {
            return trailers_only(&Status::unimplemented(format!(
                "{} streams requests: over gRPC-Web it takes application/grpc-web+proto",
                m.spec.rpc.trim_start_matches('/')
            )));
        }
        None => return trailers_only(&Status::unimplemented(format!("no method {}", path.trim_start_matches('/')))),
    };
    let timeout = grpc_timeout(req.headers());
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    let (parts, body) = req.into_parts();
    let answer = async {
        let bytes = gateway.read_body(&parts.headers, body).await.map_err(|(_, status)| status)?;
        let call = Call {
            metadata: MetadataMap::from_headers(parts.headers),
            extensions: parts.extensions,
            payload: Payload::Json(unwrap_envelope(bytes)?),
            encoding: Encoding::Json { response_body: "" },
        };
        with_deadline(timeout, method.call(call)).await
    };
    let Answer { metadata, output } = match answer.await {
        Ok(answer) => answer,
        Err(status) => return trailers_only(&status),
    };
    let messages = match output {
        Output::Stream(messages) => messages,
        Output::One(bytes) => futures_util::stream::once(async move { Ok(bytes) }).boxed(),
    };
    let frames = futures_util::stream::unfold(Some(messages), move |state| async move {
        let mut messages = state?;
        let timed_out = || Err(deadline_exceeded());
        match next_before(deadline, &mut messages, timed_out).await {
            Some(Ok(message)) => Some((Ok::<_, Status>(envelope(0, &message)), Some(messages))),
            Some(Err(status)) => Some((Ok(trailer_frame(&status)), None)),
            None => Some((Ok(trailer_frame(&Status::ok(""))), None)),
        }
    });
    let mut response = Response::new(Body::from_stream(futures_util::StreamExt::fuse(frames)));
    *response.headers_mut() = metadata.into_headers();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    response
}

/// The status and its metadata as headers.
fn status_headers(status: &Status) -> HeaderMap {
    let mut headers = status.metadata().clone().into_headers();
    if status.add_header(&mut headers).is_err() {
        headers.insert("grpc-status", HeaderValue::from(status.code() as i32));
    }
    headers
}

/// The last frame of an answer: the status as an HTTP/1 header block.
fn trailer_frame(status: &Status) -> Bytes {
    let mut block = BytesMut::new();
    for (name, value) in &status_headers(status) {
        block.put_slice(name.as_str().as_bytes());
        block.put_u8(b':');
        block.put_slice(value.as_bytes());
        block.put_slice(b"\r\n");
    }
    envelope(0x80, &block)
}

/// An answer with no message: the status in the headers, an empty body.
fn trailers_only(status: &Status) -> Response<Body> {
    let mut response = Response::new(Body::empty());
    *response.headers_mut() = status_headers(status);
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    response
}
