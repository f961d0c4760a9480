//! Compiles the test-only API (`proto/gatewaytest`) with `gateway-build`, as
//! any service using the gateway would: `google/api/annotations.proto` and
//! the gateway's options come with `gateway-build`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    gateway_build::Builder::new("proto").compile()
}
