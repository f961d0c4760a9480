//! Compiles `proto/` with `gateway-build`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    gateway_build::Builder::new("proto").compile()
}
