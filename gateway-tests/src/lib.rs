//! The gateway's own tests (`tests/lab.rs`), against a test-only API
//! (`proto/gatewaytest/v1/lab.proto`) that exercises the `google.api.http`
//! grammar, the proto3 JSON mapping, field presence, update masks and
//! streaming, and `conformance.proto`, every kind of proto3 field for the
//! differential tests of the JSON mapping (`tests/protojson`). This library
//! is only that API's generated code, compiled by `build.rs` with
//! `gateway-build` exactly as a service using the gateway compiles its own.

/// The `gatewaytest.v1` package: messages, the `Lab` service, JSON and HTTP routes.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/gatewaytest.v1.rs"));
    include!(concat!(env!("OUT_DIR"), "/gatewaytest.v1.serde.rs"));
    include!(concat!(env!("OUT_DIR"), "/gatewaytest.v1.gateway.rs"));
}
