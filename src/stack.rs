//! The service stack: every layer a request passes, outermost first, with
//! one line of why per layer. Read this file to know what happens to a call
//! before it reaches a service.
//!
//! Every protocol passes the same chain: [`ClassifyLayer`] names each
//! request's protocol and RPC first, so that the layers below it are
//! written once and keyed by the RPC, and [`Dispatch`] splits gRPC and
//! gRPC-Web (tonic) from Connect and JSON (the gateway) last.
//!
//! Layer shapes: a tower layer of our own is a `FooLayer` that makes a
//! `Foo<S>` service. Two shapes recur and are written once, in the gateway:
//! a check that refuses a call or lets it pass is a [`gateway::Admission`]
//! under [`GateLayer`], and work before a call and after its answer is a
//! [`gateway::Around`] under [`AroundLayer`] (whose service is
//! `AroundService`, the trait having the short name). CORS and compression are
//! tower-http's own layers, configured in [`middleware::cors`] and
//! [`middleware::compress`].

use crate::config::ServeSettings;
use crate::domain::error::RealWorldErrors;
use crate::domain::notifications::Hub;
use crate::domain::{self, Ctx};
use crate::middleware::{
    self, authenticate::Authenticate, availability::AvailabilityLayer, body::ReadBodyLayer, cache::CacheLayer,
    client::ClientAddresses, compress::EncodedTags, conditional::Conditional, idempotency::Idempotency,
    ratelimit::RateLimitLayer, ratelimit::SharedBuckets, reads::ReadRoutingLayer, request_log::RequestLog,
    shed::ShedLayer,
};
use crate::observability::{health::Health, metrics::Metrics, observe::ObserveLayer};
use gateway::{AroundLayer, ClassifyLayer, Dispatch, GateLayer, Gateway, HeadLayer, TimeoutLayer};

/// Why the stack could not be assembled.
#[derive(Debug, thiserror::Error)]
pub enum StackError {
    /// An HTTP rule is malformed.
    #[error("invalid HTTP rule: {0}")]
    Route(#[from] gateway::TemplateError),
    /// The descriptors for reflection do not decode.
    #[error("cannot serve reflection: {0}")]
    Reflection(tonic_reflection::server::Error),
}

/// What the stack is made of, beside the service itself, that the
/// application runs or reports on.
pub(crate) struct Stack {
    /// The whole service, every protocol on one router.
    pub(crate) app: axum::Router,
    /// The statuses the probes and `grpc.health.v1` report.
    pub(crate) health: Health,
    /// The response cache, whose invalidations are listened for.
    pub(crate) cache: CacheLayer,
}

/// The gRPC methods served by tonic alone: health and both reflection versions.
const INFRA_METHODS: &[&str] = &[
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
    "/grpc.health.v1.Health/List",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
];

/// Builds the gateway, the tonic services and the stack of layers around them.
pub(crate) fn build(
    ctx: Ctx,
    settings: &ServeSettings,
    shared: Option<SharedBuckets>,
    metrics: Metrics,
    hub: Hub,
    signals: crate::postgres::signal::Signals,
    replicas: Option<crate::postgres::replicas::Replicas>,
) -> Result<Stack, StackError> {
    let tokens = ctx.tokens.clone();
    let db = ctx.db.clone();
    let (grpc, methods) = domain::services(ctx, settings.body_limit, hub, settings.exports);
    let gateway = Gateway::builder()
        .methods(methods)
        .routes(crate::pb::conduit::v1::HTTP_ROUTES)
        .grpc_methods(INFRA_METHODS.iter().copied())
        .any_types(crate::pb::conduit::v1::ANY_TYPES)
        .renderer(RealWorldErrors)
        .openapi(crate::pb::OPENAPI)
        .body_limit(settings.body_limit)
        // RealWorld clients send fields the contract does not name; they are ignored.
        .ignore_unknown_fields(true)
        .build()?;

    let (reporter, health_service) = tonic_health::server::health_reporter();
    let mut services: Vec<String> = gateway
        .methods()
        .filter_map(|m| m.rpc.trim_start_matches('/').split_once('/').map(|(service, _)| service.to_owned()))
        .collect();
    services.sort();
    services.dedup();
    let health = Health::new(reporter, services).with_metrics(metrics.clone());

    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let grpc = grpc
        .add_service(health_service)
        .add_service(reflection().build_v1().map_err(StackError::Reflection)?)
        .add_service(reflection().build_v1alpha().map_err(StackError::Reflection)?);

    let cache = CacheLayer::new(
        gateway.clone(),
        settings.cache_ttl,
        settings.cache_max_bytes,
        metrics.clone(),
        Some((db, signals)),
    );
    if settings.minimal_middleware {
        // Only what the API's behaviour needs, to measure the layers' cost.
        let bare = tower::ServiceBuilder::new()
            .layer(HeadLayer)
            .layer(ClassifyLayer::new(gateway.clone()))
            .layer(GateLayer::new(Authenticate::new(gateway.clone(), tokens)))
            .layer(GateLayer::new(Idempotency::new(gateway.clone())))
            .service(Dispatch::new(grpc.into_axum_router(), gateway));
        return Ok(Stack { app: axum::Router::new().fallback_service(bare), health, cache });
    }
    let clients = ClientAddresses::new(&settings.trusted_proxies);
    let reads = replicas.map(|replicas| ReadRoutingLayer::new(gateway.clone(), replicas, metrics.clone()));
    let service = tower::ServiceBuilder::new()
        // HEAD is served as GET without the body: every layer below sees the GET it stands for.
        .layer(HeadLayer)
        // Browsers' preflights are answered before anything else is spent on them.
        .layer(middleware::cors::layer(
            settings.cors_allowed_origins.as_deref(),
            &settings.cors_allowed_headers,
            settings.cors_max_age,
        ))
        // Names the protocol and RPC once, so every layer below is keyed by the RPC.
        .layer(ClassifyLayer::new(gateway.clone()))
        // Counts, times and traces every call, refused ones included, to its last byte.
        .layer(ObserveLayer::new(metrics.clone()))
        // One log line per request, with the request id it is echoed with.
        .layer(AroundLayer::new(RequestLog))
        // Compressed answers get tags of their own; outside compression so it sees its coding.
        .layer(AroundLayer::new(EncodedTags))
        // One body type for the layers above, whatever compression answers with.
        .map_response(|response: http::Response<_>| response.map(axum::body::Body::new))
        // Compresses what is worth it, never gRPC or streams.
        .layer(middleware::compress::layer(settings.compression_min_bytes))
        // ETags and 304s on the uncompressed bytes, so every replica tags alike.
        .layer(AroundLayer::new(Conditional))
        // A unary call's body is read before it is admitted, so trickling one in holds no place.
        .layer(ReadBodyLayer::new(
            gateway.clone(),
            settings.body_read_timeout,
            settings.body_limit,
            settings.body_reads_per_address,
            clients.clone(),
        ))
        // Bounds the calls served at once; beyond it, refused at once rather than queued.
        .layer(ShedLayer::new(settings.max_concurrent_requests, gateway.clone(), metrics.clone()))
        // Refuses calls that need a token before they are decoded; finds the caller.
        .layer(GateLayer::new(Authenticate::new(gateway.clone(), tokens)))
        // A write's idempotency key checked once and handed to the service.
        .layer(GateLayer::new(Idempotency::new(gateway.clone())))
        // Rate limits per caller (known only now) or address, per route class.
        .layer(
            RateLimitLayer::new(gateway.clone(), settings.rate_limit, settings.rate_limit_credentials, shared)
                .with_metrics(metrics)
                .with_client_addresses(clients),
        )
        // Serves hot anonymous reads from memory; a write clears it on every replica.
        // Above availability: while the database is down no write can change what it holds.
        .layer(cache.clone())
        // Fails fast while the database is down, and calls in flight when it goes, instead
        // of each waiting for a pooled connection.
        .layer(AvailabilityLayer::new(health.clone(), gateway.clone(), retry_after(settings.health_probe_interval)))
        // The request timeout, below everything that answers without the service.
        .layer(TimeoutLayer::new(gateway.clone(), settings.request_timeout))
        // With READ_DATABASE_URL: reads go to a replica that has the caller's writes,
        // and each write's position is kept; within the deadline, as both may wait.
        .option_layer(reads)
        // gRPC and gRPC-Web to tonic, Connect and JSON to the gateway.
        .service(Dispatch::new(grpc.into_axum_router(), gateway));
    Ok(Stack { app: axum::Router::new().fallback_service(service), health, cache })
}

/// What clients are told to wait while the database is down: the probe
/// interval in whole seconds, at least one.
fn retry_after(probe: std::time::Duration) -> std::time::Duration {
    std::time::Duration::from_secs(probe.as_secs() + u64::from(probe.subsec_nanos() > 0))
        .max(std::time::Duration::from_secs(1))
}
