//! One RPC behind a type-erased handler: it decodes a request from any of
//! the gateway's forms (an HTTP rule's binding, a whole JSON message, a
//! protobuf message), calls the tonic service method in process with the
//! typed request a gRPC call would get, and encodes the answer (one message
//! or a stream of them) as JSON or protobuf.

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::{BoxStream, Stream, StreamExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::Status;
use tonic::metadata::MetadataMap;

use crate::message::validate::Validate;
use crate::rule::binding;
use crate::rule::spec::{MethodKind, MethodSpec, RouteSpec, lower_camel};

/// How the request message arrives.
#[derive(Debug)]
pub(crate) enum Payload {
    /// An HTTP request matched by one of the method's rules.
    Http {
        /// The rule that matched.
        route: &'static RouteSpec,
        /// (field path, decoded value) of each path variable.
        params: Vec<(String, String)>,
        /// The raw query string.
        query: Option<String>,
        /// The body (empty when the rule has none).
        body: Bytes,
    },
    /// The whole message as proto3 JSON.
    Json(Bytes),
    /// The whole message in protobuf binary.
    Proto(Bytes),
}

/// How answers are written.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Encoding {
    /// proto3 JSON of the message, or of its `response_body` field when set.
    Json {
        /// Field path of the rule's `response_body`, or `""`.
        response_body: &'static str,
    },
    /// Protobuf binary.
    Proto,
}

/// One call of a method.
#[derive(Debug)]
pub(crate) struct Call {
    /// Request headers as gRPC metadata.
    pub(crate) metadata: MetadataMap,
    /// Request extensions, handed to the service.
    pub(crate) extensions: http::Extensions,
    /// The request message.
    pub(crate) payload: Payload,
    /// How to write the answer.
    pub(crate) encoding: Encoding,
}

/// The encoded answer of a call.
pub(crate) enum Output {
    /// One message.
    One(Bytes),
    /// Messages as the service produces them; a status ends the stream.
    Stream(BoxStream<'static, Result<Bytes, Status>>),
}

/// A successful call: response metadata and its message(s).
pub(crate) struct Answer {
    /// Response metadata set by the service.
    pub(crate) metadata: MetadataMap,
    /// The encoded message or stream.
    pub(crate) output: Output,
}

type Handler = Arc<dyn Fn(Call) -> BoxFuture<'static, Result<Answer, Status>> + Send + Sync>;

/// An RPC the gateway can call in process: its spec and typed handler.
#[derive(Clone)]
pub struct Method {
    /// The method's description.
    pub spec: &'static MethodSpec,
    handler: Option<Handler>,
    ignore_unknown_fields: bool,
}

impl std::fmt::Debug for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Method").field("spec", &self.spec).finish_non_exhaustive()
    }
}

impl Method {
    /// A unary method: `call` is the service method itself.
    pub fn unary<I, O, F, Fut>(spec: &'static MethodSpec, call: F) -> Self
    where
        I: prost::Message + Default + DeserializeOwned + Validate + Send + 'static,
        O: prost::Message + Serialize + Send + 'static,
        F: Fn(tonic::Request<I>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<tonic::Response<O>, Status>> + Send + 'static,
    {
        Self::typed(spec, call, |message: O, encoding| Ok(Output::One(encode(&message, encoding)?)))
    }

    /// A server-streaming method: `call` is the service method itself.
    pub fn server_streaming<I, O, S, F, Fut>(spec: &'static MethodSpec, call: F) -> Self
    where
        I: prost::Message + Default + DeserializeOwned + Validate + Send + 'static,
        O: prost::Message + Serialize + Send + 'static,
        S: Stream<Item = Result<O, Status>> + Send + 'static,
        F: Fn(tonic::Request<I>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<tonic::Response<S>, Status>> + Send + 'static,
    {
        Self::typed(spec, call, |messages: S, encoding| {
            Ok(Output::Stream(messages.map(move |m| m.and_then(|m| encode(&m, encoding))).boxed()))
        })
    }

    /// Erases a typed method: decode the request, call, then `output`
    /// encodes what the service answered (a message or a stream).
    fn typed<I, R, F, Fut>(
        spec: &'static MethodSpec,
        call: F,
        output: fn(R, Encoding) -> Result<Output, Status>,
    ) -> Self
    where
        I: prost::Message + Default + DeserializeOwned + Validate + Send + 'static,
        R: Send + 'static,
        F: Fn(tonic::Request<I>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<tonic::Response<R>, Status>> + Send + 'static,
    {
        let handler = move |c: Call| -> BoxFuture<'static, Result<Answer, Status>> {
            let encoding = c.encoding;
            let request = match request::<I>(c) {
                Ok(r) => r,
                Err(status) => return Box::pin(std::future::ready(Err(status))),
            };
            let answer = call(request);
            Box::pin(async move {
                let (metadata, reply, _) = answer.await?.into_parts();
                Ok(Answer { metadata, output: output(reply, encoding)? })
            })
        };
        Self { spec, handler: Some(Arc::new(handler)), ignore_unknown_fields: false }
    }

    /// A client- or bidirectional-streaming method: served over gRPC only.
    pub fn grpc_only(spec: &'static MethodSpec) -> Self {
        Self { spec, handler: None, ignore_unknown_fields: false }
    }

    /// Ignores unknown JSON fields (`true`) or refuses them.
    pub(crate) fn ignoring_unknown_fields(mut self, ignore: bool) -> Self {
        self.ignore_unknown_fields = ignore;
        self
    }

    pub(crate) fn call(&self, call: Call) -> BoxFuture<'static, Result<Answer, Status>> {
        match &self.handler {
            // The request is decoded before the handler's future is made.
            Some(handler) => crate::protojson::with_unknown_fields(self.ignore_unknown_fields, || handler(call)),
            None => {
                let kind = match self.spec.kind {
                    MethodKind::ClientStreaming => "client-streaming",
                    _ => "bidirectional-streaming",
                };
                let status = Status::unimplemented(format!(
                    "{} is a {kind} method: it is served over gRPC only",
                    self.spec.rpc.trim_start_matches('/')
                ));
                Box::pin(std::future::ready(Err(status)))
            }
        }
    }
}

fn request<I: prost::Message + Default + DeserializeOwned + Validate>(call: Call) -> Result<tonic::Request<I>, Status> {
    let message = match call.payload {
        Payload::Http { route, params, query, body } => binding::decode_http(route, &params, query.as_deref(), &body)?,
        Payload::Json(body) => binding::decode_json(&body)?,
        Payload::Proto(body) => I::decode(body)
            .map_err(|e| binding::invalid_field("", format!("cannot decode the request message: {e}")))?,
    };
    message.validate()?;
    Ok(tonic::Request::from_parts(call.metadata, call.extensions, message))
}

/// A message's proto3 JSON: the generated `Serialize` writes the mapping
/// (non-finite floats as strings included), serde_json only the text, in
/// a buffer sized from the binary encoding's length (JSON runs about twice
/// as long) rather than grown by doubling.
fn to_json<O: prost::Message + Serialize>(message: &O) -> Result<Vec<u8>, super::json::Error> {
    super::json::to_vec(message, message.encoded_len() * 2 + 64)
}

fn encode<O: prost::Message + Serialize>(message: &O, encoding: Encoding) -> Result<Bytes, Status> {
    let failed = |e: &dyn std::fmt::Display| Status::internal(format!("cannot encode the response as JSON: {e}"));
    match encoding {
        Encoding::Proto => Ok(message.encode_to_vec().into()),
        Encoding::Json { response_body: "" } => to_json(message).map(Bytes::from).map_err(|e| failed(&e)),
        Encoding::Json { response_body } => {
            let mut value = serde_json::to_value(message).map_err(|e| failed(&e))?;
            for part in response_body.split('.') {
                value = match value {
                    serde_json::Value::Object(mut map) => {
                        map.remove(&lower_camel(part)).or_else(|| map.remove(part)).unwrap_or_default()
                    }
                    _ => serde_json::Value::Null,
                };
            }
            serde_json::to_vec(&value).map(Bytes::from).map_err(|e| failed(&e))
        }
    }
}
