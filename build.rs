//! Compiles `proto/` (the Conduit API) with `gateway-build`: prost messages,
//! tonic services, proto3 JSON, the gateway's method and route tables and
//! the OpenAPI document. See the `gateway-build` crate; the gateway's own
//! test API is compiled by `gateway-tests`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // RealWorld clients read every field: defaults are written out, and
    // nullable fields (bio, image) as null when unset.
    let openapi = gateway_build::OpenApi {
        title: "Conduit API".into(),
        version: "2.0.0".into(),
        description: "The RealWorld Conduit API, generated from the protos in `proto/conduit/v1`.".into(),
        security: Some((
            "Token".into(),
            serde_json::json!({
                "type": "apiKey",
                "in": "header",
                "name": "Authorization",
                "description": "`Token <jwt>` (or `Bearer <jwt>`), the token that registering or logging in returns.",
            }),
        )),
    };
    gateway_build::Builder::new("proto").emit_defaults(true).null_for_unset(true).openapi(openapi).compile()
}
