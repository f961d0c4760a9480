//! Compiles the test-only API (`proto/gatewaytest`) with `gateway-build`, as
//! any service using the gateway would; `google/api` comes from the
//! workspace's vendored copy.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    gateway_build::Builder::new("proto").include("../proto").compile()
}
