//! `grpc.health.v1` statuses: one per service plus the server's (`""`).
//! Every service is SERVING while the database answers and the process is
//! not draining; NOT_SERVING otherwise, so probes and balancers stop
//! sending work that could only fail.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::PgPool;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// The `grpc.health.v1` service name that answers SERVING for as long as
/// the process serves at all, whatever the database: what a liveness probe
/// asks (restarting a replica cannot bring a database back).
pub const LIVENESS_SERVICE: &str = "liveness";

/// Reports the health of a fixed set of services.
#[derive(Clone)]
pub struct Health {
    reporter: HealthReporter,
    services: Arc<Vec<String>>,
    draining: Arc<AtomicBool>,
    database_down: Arc<AtomicBool>,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health").field("services", &self.services).finish_non_exhaustive()
    }
}

impl Health {
    /// Reports for `services` (full names) and the server as a whole.
    pub fn new(reporter: HealthReporter, services: impl IntoIterator<Item = String>) -> Self {
        let mut services: Vec<String> = services.into_iter().collect();
        services.push(String::new());
        Self {
            reporter,
            services: Arc::new(services),
            draining: Arc::new(AtomicBool::new(false)),
            database_down: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Whether the last check found the database unreachable.
    pub fn database_down(&self) -> bool {
        self.database_down.load(Ordering::Relaxed)
    }

    /// Ready for traffic: the database answers (with every migration
    /// applied, which the start-up checks) and the process is not draining.
    pub fn ready(&self) -> bool {
        !self.database_down() && !self.draining.load(Ordering::SeqCst)
    }

    async fn set_all(&self, status: ServingStatus) {
        for service in self.services.iter() {
            self.reporter.set_service_status(service.as_str(), status).await;
        }
    }

    /// Marks every service NOT_SERVING for good: the process is draining.
    pub async fn drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.set_all(ServingStatus::NotServing).await;
    }

    /// Checks the database every `interval` (and once now) and reports
    /// SERVING or NOT_SERVING accordingly, until the process drains. With
    /// `migrations`, the database counts as up only once that many
    /// migrations are applied (when the service does not apply them itself).
    pub async fn watch_database(self, db: PgPool, interval: Duration, migrations: Option<i64>) {
        self.reporter.set_service_status(LIVENESS_SERVICE, ServingStatus::Serving).await;
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last = None;
        loop {
            ticks.tick().await;
            if self.draining.load(Ordering::SeqCst) {
                return;
            }
            let check = async {
                match migrations {
                    None => sqlx::query_scalar::<_, i64>("SELECT 1::int8").fetch_one(&db).await.map(|_| true),
                    Some(expected) => {
                        let applied = "SELECT count(*) FROM _sqlx_migrations WHERE success";
                        let applied = sqlx::query_scalar::<_, i64>(applied).fetch_one(&db).await;
                        // No migrations table: the schema is missing altogether.
                        applied.map(|n| n >= expected).or_else(|e| match e {
                            sqlx::Error::Database(_) => Ok(false),
                            other => Err(other),
                        })
                    }
                }
            };
            let up = matches!(tokio::time::timeout(interval.max(Duration::from_secs(1)), check).await, Ok(Ok(true)));
            self.database_down.store(!up, Ordering::Relaxed);
            // Statuses change only when the answer does; a drain that began
            // during the check wins.
            if last == Some(up) || self.draining.load(Ordering::SeqCst) {
                continue;
            }
            if !up {
                tracing::warn!("the database does not answer or lacks migrations: health is NOT_SERVING");
            } else if last.is_some() {
                tracing::info!("the database answers again: health is SERVING");
            }
            last = Some(up);
            self.set_all(if up { ServingStatus::Serving } else { ServingStatus::NotServing }).await;
        }
    }
}

/// Fails calls fast while the database is known to be down (used as
/// `gateway::GateLayer::new(Availability::new(…))`): UNAVAILABLE (503 over
/// HTTP) with `Retry-After` and a `google.rpc.RetryInfo`, in the request's
/// own protocol, instead of waiting for a pooled connection that will not
/// come. Health and reflection keep answering; calls flow again as soon as a
/// check finds the database back.
#[derive(Clone)]
pub struct Availability {
    health: Health,
    gateway: gateway::Gateway,
    retry_after: Duration,
}

impl Availability {
    /// Refuses the gateway's methods while `health` sees the database down;
    /// clients are told to retry after `retry_after`.
    pub fn new(health: Health, gateway: gateway::Gateway, retry_after: Duration) -> Self {
        Self { health, gateway, retry_after }
    }
}

impl gateway::Admission for Availability {
    fn refuse(&self, req: &mut http::Request<axum::body::Body>) -> Option<http::Response<axum::body::Body>> {
        if !self.health.database_down() {
            return None;
        }
        self.gateway.method(req.extensions().get::<gateway::RpcMethod>()?.0)?;
        let status =
            crate::conduit::error::unavailable("the database is unavailable; try again shortly", self.retry_after);
        Some(self.gateway.reject(req, &status))
    }
}

/// Sheds load: at most `limit` requests are served at once; one more is
/// refused at once with UNAVAILABLE (503 over HTTP) and `Retry-After: 1`, in
/// its own protocol, instead of waiting in an unbounded queue. A request
/// holds its place until its answer starts (a stream, once started, is not
/// counted).
#[derive(Clone)]
pub struct ShedLayer {
    permits: Arc<tokio::sync::Semaphore>,
    gateway: gateway::Gateway,
    metrics: crate::metrics::Metrics,
}

impl ShedLayer {
    /// Serves at most `limit` requests at once, counting refusals in `metrics`.
    pub fn new(limit: usize, gateway: gateway::Gateway, metrics: crate::metrics::Metrics) -> Self {
        Self { permits: Arc::new(tokio::sync::Semaphore::new(limit)), gateway, metrics }
    }
}

impl<S> tower::Layer<S> for ShedLayer {
    type Service = Shed<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Shed { layer: self.clone(), inner }
    }
}

/// The service of [`ShedLayer`].
#[derive(Clone)]
pub struct Shed<S> {
    layer: ShedLayer,
    inner: S,
}

impl<S> tower::Service<http::Request<axum::body::Body>> for Shed<S>
where
    S: tower::Service<http::Request<axum::body::Body>, Response = http::Response<axum::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures_util::future::BoxFuture<'static, Result<http::Response<axum::body::Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<axum::body::Body>) -> Self::Future {
        let Ok(permit) = self.layer.permits.clone().try_acquire_owned() else {
            self.layer.metrics.shed();
            let status = crate::conduit::error::unavailable(
                "the server is at capacity; try again shortly",
                Duration::from_secs(1),
            );
            return Box::pin(std::future::ready(Ok(self.layer.gateway.reject(&req, &status))));
        };
        let answer = self.inner.call(req);
        Box::pin(async move {
            let response = answer.await;
            drop(permit);
            response
        })
    }
}

/// The admin listener's routes: `/metrics` is the Prometheus scrape;
/// `/healthz` answers 200 while the process
/// serves; `/readyz` answers 200 when [`Health::ready`], 503 otherwise (the
/// database is down or the process drains), as `grpc.health.v1` reports.
pub fn admin_routes(health: Health, metrics: crate::metrics::Metrics) -> axum::Router {
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
