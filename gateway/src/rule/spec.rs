//! What `gateway-build` reads off the descriptors and generates as statics:
//! one [`MethodSpec`] per RPC, one [`RouteSpec`] per HTTP binding, and the
//! [`MessageSpec`] field tables used to bind path and query parameters.

/// How a method streams, as declared in its `rpc` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MethodKind {
    /// One request, one response.
    Unary,
    /// One request, a stream of responses.
    ServerStreaming,
    /// A stream of requests, one response (gRPC only).
    ClientStreaming,
    /// Streams both ways (gRPC only).
    BidiStreaming,
}

/// One RPC of a service.
#[derive(Debug)]
pub struct MethodSpec {
    /// gRPC path of the method: `/package.Service/Method`.
    pub rpc: &'static str,
    /// How it streams.
    pub kind: MethodKind,
    /// `option idempotency_level = NO_SIDE_EFFECTS`: it may be called with
    /// Connect's `GET` (cacheable by browsers and CDNs).
    pub no_side_effects: bool,
    /// Field table of the request message.
    pub input: &'static MessageSpec,
    /// JSON name of the response field marked `(gateway.v1.event_id)`, or
    /// `""`: Server-Sent Events send its value as the event `id:`.
    pub event_id: &'static str,
    /// `(gateway.v1.access).authenticated`: callers must present valid
    /// credentials (an API's authentication layer enforces it).
    pub authenticated: bool,
    /// `(gateway.v1.effects).changes_no_data`: though not free of side
    /// effects, it changes no data the API serves (caches stay valid).
    pub changes_no_data: bool,
}

/// An HTTP rule of one method, as read from its descriptor.
#[derive(Debug)]
pub struct RouteSpec {
    /// gRPC path of the method: `/package.Service/Method`.
    pub rpc: &'static str,
    /// HTTP method (`GET`, `POST`, … or a custom rule's kind).
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
    /// The request has a top-level `google.protobuf.FieldMask update_mask`
    /// that no path variable binds: the gateway fills it from the keys of
    /// the JSON body (partial updates, as grpc-gateway does).
    pub update_mask: bool,
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
    /// Whether it is a wrapper (`google.protobuf.Int32Value`, …), whose
    /// `value` a query parameter may name: `?f.value=5` is `?f=5`.
    pub wrapper: bool,
}

/// The type of a field as far as binding text values goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    /// `double`, `float` and their wrappers.
    Float,
    /// `int32`, `sint32`, `sfixed32` and `Int32Value`.
    Int32,
    /// `uint32`, `fixed32` and `UInt32Value`.
    Uint32,
    /// `int64`, `sint64`, `sfixed64` and `Int64Value`.
    Int64,
    /// `uint64`, `fixed64` and `UInt64Value`.
    Uint64,
    /// `bool` and `BoolValue`.
    Bool,
    /// `string` and `StringValue`.
    String,
    /// `bytes` and `BytesValue` (base64 text).
    Bytes,
    /// An enum (value name or number).
    Enum,
    /// A well-known message with a string JSON form (Timestamp, Duration, FieldMask).
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

/// `tag_list` → `tagList`, the proto3 JSON name rule.
pub fn lower_camel(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = false;
    for c in name.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.push(c.to_ascii_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lower_camel_follows_proto3_json_names() {
        assert_eq!(lower_camel("tag_list"), "tagList");
        assert_eq!(lower_camel("a_b_c"), "aBC");
        assert_eq!(lower_camel("slug"), "slug");
    }
}
