//! Build-time half of the `gateway` crate, called from a `build.rs` as
//! `tonic-prost-build` is.
//!
//! It compiles `.proto` files with a pure-Rust compiler (no system `protoc`)
//! and writes, into `OUT_DIR`, per package:
//! - `<package>.rs`: prost messages, tonic clients and servers;
//! - `<package>.serde.rs`: proto3-JSON serde implementations, on `gateway::protojson`;
//! - `<package>.gateway.rs`: a [`gateway::MethodSpec`] per RPC, a
//!   `<service>_gateway_methods(Arc<impl Service>)` function per service that
//!   gives the gateway its typed in-process handlers, the package's
//!   `HTTP_ROUTES` (one `RouteSpec` per `google.api.http` binding, additional
//!   bindings included) and the field tables used to bind path and query
//!   parameters;
//!
//! and one encoded descriptor set with custom options kept (for reflection
//! and documentation). Well-known types map to `::gateway::wkt`.
//!
//! Rules are checked here, so a mistake fails the build: a malformed
//! template, a variable or body naming no field, two rules that would match
//! the same requests (the message names both methods), a `buf.validate`
//! rule the runtime does not implement.
//!
//! Layout: [`Builder`] (`builder.rs`) runs the compilers and writes the
//! files; `generate.rs` writes the gateway tables, `validation.rs` the
//! checks and `openapi.rs` the OpenAPI document, the last two from the one
//! model of `buf.validate` rules in `rules.rs`; `names.rs` has the naming
//! and field-path helpers they share. Path templates, the router and the
//! gRPC code names are the runtime's own, from the `gateway-rules` crate.
//!
//! ```no_run
//! // build.rs
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     gateway_build::Builder::new("proto").emit_defaults(true).compile()
//! }
//! ```
//!
//! [`gateway::MethodSpec`]: https://docs.rs/gateway

mod builder;
mod generate;
mod json;
mod names;
mod openapi;
mod rules;
mod validation;

pub use builder::Builder;
pub use openapi::OpenApi;

/// The protos every API compiled with this builder may import without
/// vendoring them: the gateway's own options and `google.api.http` (from
/// googleapis, unmodified), by import path.
pub const SHIPPED_PROTOS: [(&str, &str); 3] = [
    ("gateway/v1/options.proto", include_str!("../../gateway/proto/gateway/v1/options.proto")),
    ("google/api/annotations.proto", include_str!("../../gateway/proto/google/api/annotations.proto")),
    ("google/api/http.proto", include_str!("../../gateway/proto/google/api/http.proto")),
];

/// What a build failed on.
pub type BuildError = Box<dyn std::error::Error>;
