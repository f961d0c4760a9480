//! Generated code, and the only place it is included (see `build.rs`).
#![allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]

/// The `conduit.v1` package: messages, services, JSON and HTTP routes.
pub mod conduit {
    /// Version 1 of the Conduit API.
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/conduit.v1.rs"));
        include!(concat!(env!("OUT_DIR"), "/conduit.v1.serde.rs"));
        include!(concat!(env!("OUT_DIR"), "/conduit.v1.gateway.rs"));
    }
}

/// Encoded descriptors of every proto file, custom options included (for
/// reflection and documentation).
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptor.bin"));

/// The OpenAPI 3.1 document of the JSON API, generated from the protos.
pub const OPENAPI: &str = include_str!(concat!(env!("OUT_DIR"), "/openapi.json"));
