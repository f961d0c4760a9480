//! The protocols the gateway answers in process, one module each:
//! JSON/HTTP by `google.api.http` rules ([`http`]), Connect ([`connect`]),
//! gRPC-Web with the JSON codec ([`grpc_web`]), Connect calls relayed to
//! tonic as gRPC ([`bridge`]); the length-prefixed framing they share
//! ([`envelope`]), deadlines ([`deadline`]), `HEAD` as `GET` ([`head`]); and [`reject`], the
//! answer of a refused call in its own protocol. Each depends on
//! [`crate::gateway`], never the other way round.

pub(crate) mod bridge;
pub(crate) mod connect;
pub(crate) mod deadline;
pub(crate) mod envelope;
pub(crate) mod grpc_web;
pub(crate) mod head;
pub(crate) mod http;
mod reject;

use ::http::{HeaderMap, header};

/// The media type of a request, without parameters.
pub(crate) fn media_type(headers: &HeaderMap) -> &str {
    let value = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    value.split(';').next().unwrap_or_default().trim()
}
