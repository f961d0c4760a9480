//! The admin listener: probes and the metrics scrape, on a port of their own
//! so that they never compete with API traffic nor leave the cluster.

use crate::observability::health::Health;

/// The admin listener's routes: `/metrics` is the Prometheus scrape;
/// `/healthz` answers 200 while the process
/// serves; `/readyz` answers 200 when [`Health::ready`], 503 otherwise (the
/// database is down or the process drains), as `grpc.health.v1` reports.
pub fn admin_routes(health: Health, metrics: crate::observability::metrics::Metrics) -> axum::Router {
    use axum::routing::get;
    let probe = |ok: bool| {
        let status = if ok { http::StatusCode::OK } else { http::StatusCode::SERVICE_UNAVAILABLE };
        (status, [(http::header::CACHE_CONTROL, "no-store")], if ok { "ok\n" } else { "not ready\n" })
    };
    // OpenMetrics to scrapers that ask for it, Prometheus text otherwise.
    let scrape = move |headers: http::HeaderMap| {
        let open = headers
            .get(http::header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("application/openmetrics-text"));
        let (kind, text) = if open {
            ("application/openmetrics-text; version=1.0.0; charset=utf-8", metrics.render())
        } else {
            ("text/plain; version=0.0.4; charset=utf-8", metrics.render_prometheus())
        };
        async move { ([(http::header::CONTENT_TYPE, kind), (http::header::CACHE_CONTROL, "no-store")], text) }
    };
    axum::Router::new().route("/metrics", get(scrape)).route("/healthz", get(move || async move { probe(true) })).route(
        "/readyz",
        get(move || {
            let ready = health.ready();
            async move { probe(ready) }
        }),
    )
}
