//! What the service tells about itself: metrics ([`metrics`]), the metrics
//! and spans of every call and statement ([`observe`]), logs and the trace
//! export ([`logs`]), and the health that probes and `grpc.health.v1`
//! report ([`health`]). They are served on the admin listener
//! ([`crate::server::admin`]).

pub mod health;
pub mod logs;
pub mod metrics;
pub mod observe;
