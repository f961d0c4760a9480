//! conduit: the RealWorld "Conduit" API, defined once in protobuf and served
//! as typed gRPC and as the RealWorld JSON API on one port.
//!
//! A tour of the layout:
//! - [`pb`]: the code generated from `proto/` by `build.rs` (messages, tonic
//!   services, proto3 JSON, and the HTTP routes of every `google.api.http` rule);
//! - [`gateway`]: the generic JSON/HTTP transcoder (routing, binding, status
//!   mapping); it knows nothing of Conduit;
//! - [`conduit`]: the domain services on Postgres; they know nothing of HTTP;
//! - [`wkt`]: well-known types with the JSON form the gateway wants;
//! - [`config`], [`startup`], [`shutdown`], [`telemetry`]: settings, wiring
//!   and process life.

pub mod conduit;
pub mod config;
pub mod gateway;
pub mod pb;
pub mod shutdown;
pub mod startup;
pub mod telemetry;
pub mod wkt;
