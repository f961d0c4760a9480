//! conduit: the RealWorld "Conduit" API, defined once in protobuf and served
//! as typed gRPC and as the RealWorld JSON API on one port.
//!
//! A tour of the layout:
//! - [`pb`]: the code generated from `proto/` by `build.rs` (messages, tonic
//!   services, proto3 JSON, and the HTTP routes of every `google.api.http` rule);
//! - the `gateway` crate (a workspace member): the generic transcoder and
//!   protocol adapters (gRPC-Web, Connect, JSON/HTTP); it knows nothing of
//!   Conduit, and `gateway-build` generates its tables at build time;
//! - [`conduit`]: the domain services on Postgres; they know nothing of HTTP;
//! - [`config`], [`startup`], [`health`], [`shutdown`], [`telemetry`],
//!   [`metrics`], [`observe`], [`ratelimit`], [`conditional`]: settings,
//!   wiring, probes, process life, logs, metrics and traces, limits and
//!   conditional responses.

pub mod cache;
pub mod compress;
pub mod conditional;
pub mod conduit;
pub mod config;
pub mod health;
pub mod jobs;
pub mod listen;
pub mod localdb;
pub mod metrics;
pub mod observe;
pub mod pb;
pub mod ratelimit;
pub mod server;
pub mod shutdown;
pub mod startup;
pub mod telemetry;
pub mod tls;
