//! CORS for browser clients of every protocol: tower-http's layer, with the
//! request and response headers that JSON, gRPC-Web and Connect clients
//! need (no type of our own is needed).

use std::time::Duration;

use tower_http::cors::{AllowOrigin, CorsLayer};

/// Request headers every protocol may need from a browser.
const CORS_HEADERS: &[&str] = &[
    "authorization",
    "content-type",
    "accept",
    "x-requested-with",
    "x-grpc-web",
    "x-user-agent",
    "grpc-timeout",
    "connect-protocol-version",
    "connect-timeout-ms",
    "connect-accept-encoding",
    "connect-content-encoding",
    "last-event-id",
    "traceparent",
    "tracestate",
    "x-request-id",
    crate::postgres::replicas::WAL_POSITION,
    super::idempotency::IDEMPOTENCY_KEY,
];

/// Response headers browser code may read: gRPC-Web status trailers (sent
/// as headers when a call fails at once), tracing ids and the consistency
/// token of read replicas.
const CORS_EXPOSED: &[&str] = &[
    "grpc-status",
    "grpc-message",
    "grpc-status-details-bin",
    "x-request-id",
    crate::postgres::replicas::WAL_POSITION,
];

/// CORS for browser clients of every protocol (JSON, gRPC-Web, Connect):
/// frontends are served from another origin; tokens travel in the
/// Authorization header, never in cookies. `origins` are those allowed
/// (`None`: any), `extra_headers` request headers allowed beyond those the
/// protocols need, and `max_age` how long a preflight's answer is kept.
pub fn layer(
    origins: Option<&[http::HeaderValue]>,
    extra_headers: &[http::HeaderName],
    max_age: Duration,
) -> CorsLayer {
    let origins = match origins {
        None => AllowOrigin::any(),
        Some(list) => AllowOrigin::list(list.iter().cloned()),
    };
    let mut headers: Vec<http::HeaderName> = CORS_HEADERS.iter().map(|h| http::HeaderName::from_static(h)).collect();
    headers.extend(extra_headers.iter().cloned());
    CorsLayer::new()
        .allow_origin(origins)
        .allow_methods([
            http::Method::GET,
            http::Method::POST,
            http::Method::PUT,
            http::Method::PATCH,
            http::Method::DELETE,
            http::Method::HEAD,
        ])
        .allow_headers(headers)
        .expose_headers(CORS_EXPOSED.iter().map(|h| http::HeaderName::from_static(h)).collect::<Vec<_>>())
        .max_age(max_age)
}
