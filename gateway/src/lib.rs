//! Serves tonic services as gRPC, gRPC-Web, Connect and JSON/HTTP on one
//! port, from one protobuf definition, in process.
//!
//! The crate is generic: it knows `google.api.http` rules, proto3 JSON, the
//! Connect and gRPC-Web protocols and gRPC status codes, and nothing of any
//! particular API.
//!
//! # How an API plugs in
//!
//! 1. Its `build.rs` calls `gateway-build` (the build-time half of this
//!    crate), which compiles the protos and writes per package the prost
//!    messages, tonic services, proto3-JSON serde, and a `<package>.gateway.rs`
//!    with a [`MethodSpec`] per RPC, a `<service>_gateway_methods(Arc<impl
//!    Service>)` per service and the package's `HTTP_ROUTES`. Options in the
//!    proto tune it: `google.api.http` rules (the whole grammar: templates,
//!    custom verbs, `body`, `response_body`, `additional_bindings`),
//!    `(gateway.v1.http_response).success_code`, `(gateway.v1.event_id)` on
//!    a streamed message's cursor field, and `option idempotency_level =
//!    NO_SIDE_EFFECTS` for methods Connect may call with `GET`.
//! 2. At start-up it builds a [`Gateway`] from those methods and routes, with
//!    an [`ErrorRenderer`] if its JSON errors have their own shape, and a
//!    [`Dispatch`] that also holds the tonic routes:
//!
//! ```ignore
//! let gateway = Gateway::builder()
//!     .methods(pb::things_gateway_methods(service.clone()))
//!     .routes(pb::HTTP_ROUTES)
//!     .build()?;
//! let grpc = tonic::service::Routes::new(ThingsServer::from_arc(service)).into_axum_router();
//! let app = tower::ServiceBuilder::new()
//!     .layer(ClassifyLayer::new(gateway.clone()))
//!     // layers here see every protocol, keyed by RpcMethod and Protocol
//!     .service(Dispatch::new(grpc, gateway));
//! ```
//!
//! # What happens to a request
//!
//! [`ClassifyLayer`] names its [`Protocol`] and [`RpcMethod`] (from the gRPC
//! path or the matched HTTP rule, matched once) in the request extensions, so
//! that every layer between it and [`Dispatch`] sees all four protocols
//! alike. [`Dispatch`] sends gRPC to tonic (enforcing `grpc-timeout`),
//! gRPC-Web to tonic through `tonic-web`, and Connect, JSON and gRPC-Web
//! with the JSON codec to the [`Gateway`], which decodes the request straight
//! into the generated message, calls the same service method gRPC calls (no
//! network hop, no protobuf re-encoding for JSON) and encodes the answer:
//! one message, or a stream as NDJSON, Server-Sent Events, Connect or
//! gRPC-Web frames. Connect calls of methods without a typed handler
//! (reflection, health, client and bidirectional streams) are relayed to
//! tonic as gRPC: with the protobuf codec the two carry the same bytes.
//!
//! # Layout
//!
//! - [`Gateway`] and its builder (`gateway.rs`): the methods and rules served;
//! - `dispatch.rs`: [`ClassifyLayer`] and [`Dispatch`];
//! - `protocol/`: JSON/HTTP, Connect, gRPC-Web, the Connect-to-gRPC bridge,
//!   their shared framing and deadlines (with [`TimeoutLayer`]), `HEAD` (with
//!   [`HeadLayer`]);
//! - `rule/`: rule specs, path templates, the router, request binding;
//! - `message/`: typed handlers, proto3 JSON, [`wkt`], [`validate`];
//! - `status.rs`: the gRPC→HTTP table, Connect codes, [`ErrorRenderer`];
//! - `gate.rs`: [`GateLayer`] and [`AroundLayer`], the two shapes of the
//!   layers an application adds between classification and dispatch;
//! - `docs/`: the OpenAPI document and Swagger UI.

/// Includes what `gateway-build` wrote for one proto package: the prost
/// messages and tonic services, their proto3 JSON, and the gateway's
/// tables. Use it inside the module the package lives in (`pub mod pb {
/// gateway::include_proto!("things.v1"); }`); modules mirror the package
/// names when packages refer to each other, as prost expects.
#[macro_export]
macro_rules! include_proto {
    ($package:literal) => {
        include!(concat!(env!("OUT_DIR"), "/", $package, ".rs"));
        include!(concat!(env!("OUT_DIR"), "/", $package, ".serde.rs"));
        include!(concat!(env!("OUT_DIR"), "/", $package, ".gateway.rs"));
    };
}

mod dispatch;
mod docs;
mod gate;
mod gateway;
mod message;
mod protocol;
mod rule;
mod status;

pub use dispatch::{Classify, ClassifyLayer, Dispatch};
pub use gate::{Admission, Around, AroundLayer, AroundService, Gate, GateLayer};
pub use gateway::{DEFAULT_BODY_LIMIT, Gateway, GatewayBuilder, Protocol, RouteTemplate, RpcMethod};
pub use message::method::Method;
pub use message::{protojson, validate, wkt};
pub use protocol::deadline::{Deadline, Timeout, TimeoutLayer};
pub use protocol::envelope::check_grpc_body;
pub use protocol::head::{Head, HeadLayer};
pub use rule::binding::invalid_field;
pub use rule::router::{Match, Router};
pub use rule::spec::{FieldKind, FieldSpec, MessageSpec, MethodKind, MethodSpec, RouteSpec, lower_camel};
pub use rule::template::{PathTemplate, TemplateError};
pub use status::{ErrorRenderer, RpcStatusRenderer, code_for_http_status, code_name, connect_code, http_status};
