//! conduit: the RealWorld "Conduit" API, defined once in protobuf and served
//! as typed gRPC, gRPC-Web, Connect and the RealWorld JSON API on one port.
//!
//! A tour of the layout, by what you would change:
//! - [`pb`]: the code generated from `proto/` by `build.rs` (messages, tonic
//!   services, proto3 JSON, and the HTTP routes of every `google.api.http`
//!   rule);
//! - the `gateway` crate (a workspace member): the generic transcoder and
//!   protocol adapters (gRPC-Web, Connect, JSON/HTTP); it knows nothing of
//!   Conduit, and `gateway-build` generates its tables at build time;
//! - [`domain`]: the RealWorld services and their stores; no HTTP;
//! - [`middleware`]: the layers every protocol passes through;
//! - [`observability`]: metrics, traces, logs and health;
//! - [`server`]: the connection loop, TLS, shutdown, the admin listener;
//! - [`postgres`]: pools, migrations, the private server, `LISTEN`, the job
//!   queue;
//! - [`demo`]: the sample data of `conduit demo`, written through the
//!   services;
//! - [`config`] (settings), [`startup`] (the [`startup::Application`] that
//!   `main` and the tests build) and [`stack`] (the order of the layers, with
//!   why).

pub mod config;
pub mod demo;
pub mod domain;
pub mod middleware;
pub mod observability;
pub mod pb;
pub mod postgres;
pub mod server;
pub mod stack;
pub mod startup;
