//! The smallest service on the gateway, exactly as README's "Using the
//! gateway in another service" shows it (a test checks that README quotes
//! these files): one tonic service, served as gRPC, gRPC-Web, Connect and
//! JSON/HTTP on one port.

use std::sync::Arc;

/// The `greeter.v1` package, as `gateway-build` wrote it.
#[allow(missing_docs, clippy::all)]
pub mod pb {
    gateway::include_proto!("greeter.v1");
}

/// The service: an ordinary tonic service, knowing nothing of HTTP.
pub struct Greeter;

#[tonic::async_trait]
impl pb::greeter_service_server::GreeterService for Greeter {
    async fn say_hello(
        &self,
        request: tonic::Request<pb::SayHelloRequest>,
    ) -> Result<tonic::Response<pb::SayHelloResponse>, tonic::Status> {
        let message = format!("Hello, {}!", request.into_inner().name);
        Ok(tonic::Response::new(pb::SayHelloResponse { message }))
    }
}

/// Every protocol on one router: gRPC to tonic, the rest to the gateway.
pub fn app() -> Result<axum::Router, gateway::TemplateError> {
    let service = Arc::new(Greeter);
    let gateway = gateway::Gateway::builder()
        .methods(pb::greeter_service_gateway_methods(service.clone()))
        .routes(pb::HTTP_ROUTES)
        .any_types(pb::ANY_TYPES)
        .build()?;
    let grpc = tonic::service::Routes::new(pb::greeter_service_server::GreeterServiceServer::from_arc(service))
        .into_axum_router();
    Ok(axum::Router::new().fallback_service(gateway::Dispatch::new(grpc, gateway)))
}
