//! The gateway's own tests (`tests/lab.rs`), against a test-only API
//! (`proto/gatewaytest/v1/lab.proto`) that exercises the `google.api.http`
//! grammar, the proto3 JSON mapping, field presence, update masks and
//! streaming, and `conformance.proto`, every kind of proto3 field for the
//! differential tests of the JSON mapping (`tests/protojson`). This library
//! is only that API's generated code, compiled by `build.rs` with
//! `gateway-build` exactly as a service using the gateway compiles its own.

/// The test API's packages, in modules named as the packages are, so that
/// the generated code of one finds the types of the other.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod gatewaytest {
    /// `gatewaytest.v1`: messages, the `Lab` and `Conformance` services, JSON and HTTP routes.
    pub mod v1 {
        gateway::include_proto!("gatewaytest.v1");
    }
    /// `gatewaytest.common.v1`: messages the lab's methods take from another package.
    pub mod common {
        /// Version 1.
        pub mod v1 {
            gateway::include_proto!("gatewaytest.common.v1");
        }
    }
}

/// The lab's own package.
pub use gatewaytest::v1 as pb;

pub mod fuzz;
