//! What `build.rs` generates for every HTTP rule, and the type-erased handler
//! that decodes a request into the method's message, calls the service in
//! process and encodes the answer as proto3 JSON.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::Status;
use tonic::metadata::MetadataMap;

use super::binding::{self, Input};

/// An HTTP rule of one method, as read from its descriptor.
#[derive(Debug)]
pub struct RouteSpec {
    /// gRPC path of the method: `/package.Service/Method`.
    pub rpc: &'static str,
    /// HTTP method (`GET`, `POST`, … or a custom verb's kind).
    pub http_method: &'static str,
    /// Path template.
    pub template: &'static str,
    /// `body` of the rule: `""` (none), `"*"` (the whole message) or a field path.
    pub body: &'static str,
    /// `response_body` of the rule: `""` (the whole message) or a field path.
    pub response_body: &'static str,
    /// HTTP status of a success (`gateway.v1.http_response`), 200 by default.
    pub success_code: u16,
    /// Field table of the request message.
    pub input: &'static MessageSpec,
}

/// The fields of a message, for binding path and query parameters.
#[derive(Debug)]
pub struct MessageSpec {
    /// Full protobuf name.
    pub name: &'static str,
    /// Its fields in declaration order.
    pub fields: &'static [FieldSpec],
}

/// One field of a message.
#[derive(Debug)]
pub struct FieldSpec {
    /// Name in the .proto file.
    pub name: &'static str,
    /// lowerCamelCase JSON name.
    pub json_name: &'static str,
    /// How a text value converts into it.
    pub kind: FieldKind,
    /// Whether it is `repeated`.
    pub repeated: bool,
    /// Field table of its message type, for nested paths.
    pub message: Option<&'static MessageSpec>,
}

/// The type of a field as far as binding text values goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    /// `double`, `float`.
    Float,
    /// `int32`, `sint32`, `sfixed32`.
    Int32,
    /// `uint32`, `fixed32`.
    Uint32,
    /// `int64`, `sint64`, `sfixed64`.
    Int64,
    /// `uint64`, `fixed64`.
    Uint64,
    /// `bool`.
    Bool,
    /// `string`.
    String,
    /// `bytes` (base64 text).
    Bytes,
    /// An enum (value name or number).
    Enum,
    /// A well-known message with a string JSON form (Timestamp, Duration, …).
    StringValued,
    /// Any other message.
    Message,
    /// A map field.
    Map,
}

impl MessageSpec {
    /// Finds a field by its proto name or its JSON name.
    pub fn field(&self, name: &str) -> Option<&'static FieldSpec> {
        self.fields.iter().find(|f| f.name == name || f.json_name == name)
    }
}

/// The successful answer of a handler.
#[derive(Debug)]
pub struct Reply {
    /// Response metadata set by the service, sent as HTTP headers.
    pub metadata: MetadataMap,
    /// proto3 JSON of the response (or of its `response_body` field).
    pub body: Vec<u8>,
}

/// A boxed future of a handler.
pub(crate) type ReplyFuture = Pin<Box<dyn Future<Output = Result<Reply, Status>> + Send>>;

type Handler = Arc<dyn Fn(Input) -> ReplyFuture + Send + Sync>;

/// An HTTP route: its rule and the handler that serves it.
#[derive(Clone)]
pub struct Route {
    /// The rule.
    pub spec: &'static RouteSpec,
    handler: Handler,
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Route").field("spec", &self.spec).finish_non_exhaustive()
    }
}

impl Route {
    /// A route to a unary method: `call` is the service method itself, taking
    /// the same typed request a gRPC call would get.
    pub fn unary<I, O, F, Fut>(spec: &'static RouteSpec, call: F) -> Self
    where
        I: DeserializeOwned + Send + 'static,
        O: Serialize + Send + 'static,
        F: Fn(tonic::Request<I>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<tonic::Response<O>, Status>> + Send + 'static,
    {
        let handler = move |input: Input| -> ReplyFuture {
            let request = match binding::decode::<I>(spec, input) {
                Ok(request) => request,
                Err(status) => return Box::pin(std::future::ready(Err(status))),
            };
            let answer = call(request);
            Box::pin(async move {
                let (metadata, message, _) = answer.await?.into_parts();
                let body = encode(spec, &message)?;
                Ok(Reply { metadata, body })
            })
        };
        Self { spec, handler: Arc::new(handler) }
    }

    /// Serves one request.
    pub(crate) fn call(&self, input: Input) -> ReplyFuture {
        (self.handler)(input)
    }
}

fn encode<O: Serialize>(spec: &RouteSpec, message: &O) -> Result<Vec<u8>, Status> {
    let failed = |e: serde_json::Error| Status::internal(format!("cannot encode the response as JSON: {e}"));
    if spec.response_body.is_empty() {
        return serde_json::to_vec(message).map_err(failed);
    }
    let mut value = serde_json::to_value(message).map_err(failed)?;
    for part in spec.response_body.split('.') {
        let camel = binding::lower_camel(part);
        value = match value {
            serde_json::Value::Object(mut map) => map.remove(&camel).or_else(|| map.remove(part)).unwrap_or_default(),
            _ => serde_json::Value::Null,
        };
    }
    serde_json::to_vec(&value).map_err(failed)
}
