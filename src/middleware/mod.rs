//! The cross-cutting layers every protocol passes through, keyed by the RPC
//! that [`gateway::ClassifyLayer`] names; [`crate::stack`] puts them in
//! order. None of them knows the protocol it serves: each refuses in the
//! request's own protocol through [`gateway::Gateway::reject`].
//!
//! - [`authenticate`]: tokens checked once, callers handed to the services;
//! - [`body`]: a unary call's body read before it is admitted;
//! - [`availability`]: fail fast while the database is down;
//! - [`shed`]: a bound on the calls served at once;
//! - [`idempotency`]: idempotency keys checked and handed to the writes;
//! - [`ratelimit`]: token buckets per caller and route class, shared
//!   through Redis;
//! - [`cache`]: hot anonymous reads served from memory;
//! - [`reads`]: reads routed to replicas, writers' positions kept;
//! - [`client`]: the client address every per-address limit counts;
//! - [`conditional`]: entity tags, 304s and cache directives;
//! - [`compress`]: response compression with tags that stay strong;
//! - [`cors`]: browser clients of every protocol;
//! - [`request_log`]: one line per request, and its request id.
//!
//! Shapes: a layer with a service of its own is a `FooLayer` making a
//! `Foo<S>` ([`shed::ShedLayer`], [`ratelimit::RateLimitLayer`],
//! [`cache::CacheLayer`]). A check that only refuses or lets pass is a
//! [`gateway::Admission`] under [`gateway::GateLayer`] (authenticate,
//! idempotency), and work before a call and after its answer is a
//! [`gateway::Around`] under [`gateway::AroundLayer`] (request log,
//! conditional, entity tags): the tower plumbing of those two shapes is
//! written once, in the gateway. CORS and compression are tower-http's.

pub mod authenticate;
pub mod availability;
pub mod body;
pub mod cache;
pub mod client;
pub mod compress;
pub mod conditional;
pub mod cors;
pub mod idempotency;
pub mod ratelimit;
pub mod reads;
pub mod request_log;
pub mod shed;
