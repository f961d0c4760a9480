//! Builds the application from settings: database pool, migrations, the
//! service stack on one listener. Shared by `main` and the tests.

use std::future::Future;
use std::net::SocketAddr;

use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio::net::TcpListener;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::conduit::auth::{Passwords, Tokens};
use crate::conduit::{self, Ctx, auth::Authenticate, error::RealWorldErrors};
use crate::config::ServeSettings;
use crate::health::{Availability, Health, ShedLayer};
use crate::ratelimit::{RateLimit, SharedBuckets};
use crate::telemetry::RequestLog;
use gateway::{AroundLayer, ClassifyLayer, Dispatch, GateLayer, Gateway, TimeoutLayer};

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// The database is unreachable or refused us.
    #[error("cannot connect to the database: {0}")]
    Database(#[from] sqlx::Error),
    /// A migration failed.
    #[error("cannot migrate the database: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The listen address is unusable.
    #[error("cannot listen on {0}: {1}")]
    Listen(SocketAddr, std::io::Error),
    /// An HTTP rule is malformed.
    #[error("invalid HTTP rule: {0}")]
    Route(#[from] gateway::TemplateError),
    /// `REDIS_URL` is set and Redis does not answer.
    #[error("cannot connect to Redis (REDIS_URL): {0}")]
    Redis(redis::RedisError),
    /// The TLS certificate or key is unusable.
    #[error("cannot serve TLS: {0}")]
    Tls(String),
    /// A setting is missing or wrong.
    #[error("{0}")]
    Settings(String),
    /// The descriptors for reflection do not decode.
    #[error("cannot serve reflection: {0}")]
    Reflection(tonic_reflection::server::Error),
}

/// The migrations in `migrations/`, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();

/// Opens a pool to the database.
pub async fn connect(
    url: &str,
    max_connections: u32,
    acquire_timeout: std::time::Duration,
) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(acquire_timeout)
        // Each acquisition's wait goes to the log at TRACE, which the
        // metrics read (conduit_db_pool_acquire_duration_seconds).
        .acquire_time_level(log::LevelFilter::Trace)
        .connect(url)
        .await
}

/// Opens the job workers' pool. Their bookkeeping (claims, retries,
/// rescues) commits asynchronously, without waiting for the WAL flush: a
/// crash may lose the last of it, which only means a job runs again
/// (attempts commit synchronously; see [`crate::jobs`]). A session idle in
/// a transaction for longer than an attempt may take is ended, so that a
/// worker whose host vanished does not hold its job's row for hours. Each
/// running job holds a connection; two more serve claims and the queue's
/// figures.
pub async fn connect_workers(
    url: &str,
    workers: &crate::jobs::WorkerSettings,
    acquire_timeout: std::time::Duration,
) -> Result<PgPool, sqlx::Error> {
    let max_connections = u32::try_from(workers.concurrency).unwrap_or(u32::MAX).saturating_add(2);
    let idle = (workers.lease + std::time::Duration::from_secs(10)).as_millis().to_string();
    let options = url
        .parse::<sqlx::postgres::PgConnectOptions>()?
        .options([("synchronous_commit", "off"), ("idle_in_transaction_session_timeout", idle.as_str())]);
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(acquire_timeout)
        .acquire_time_level(log::LevelFilter::Trace)
        .connect_with(options)
        .await
}

/// A built application, listening but not yet serving.
pub struct Application {
    listener: TcpListener,
    admin: TcpListener,
    app: axum::Router,
    db: PgPool,
    health: Health,
    metrics: crate::metrics::Metrics,
    health_check_interval: std::time::Duration,
    limits: crate::server::ConnectionLimits,
    drain_delay: std::time::Duration,
    cache: crate::cache::ResponseCache,
    /// Set when migrations are not applied at start: readiness waits for them.
    expected_migrations: Option<i64>,
    tls: Option<crate::tls::Tls>,
    hub: crate::conduit::notifications::Hub,
    jobs: crate::jobs::WorkerSettings,
    /// The workers' own connections (each running job holds one), so that
    /// a busy queue never starves the API's pool; `None` without workers.
    jobs_db: Option<PgPool>,
}

impl Application {
    /// Connects, migrates if asked, binds the listener and assembles the stack.
    pub async fn build(settings: &ServeSettings) -> Result<Self, StartupError> {
        let db =
            connect(settings.database_url.expose(), settings.db_max_connections, settings.db_acquire_timeout).await?;
        if settings.migrate_on_start {
            MIGRATOR.run(&db).await?;
        }
        let ctx = Ctx {
            db: db.clone(),
            tokens: Tokens::new(settings.jwt_secret.expose().as_bytes(), settings.jwt_ttl),
            passwords: Passwords::new(settings.password_hash_concurrency),
        };
        let shared = match &settings.redis_url {
            Some(url) => Some(
                SharedBuckets::connect(
                    url.expose(),
                    &settings.rate_limit_redis_prefix,
                    settings.rate_limit_redis_fail_open,
                )
                .await
                .map_err(StartupError::Redis)?,
            ),
            None => None,
        };
        let tls = match &settings.tls {
            Some((cert, key)) => Some(crate::tls::Tls::load(cert, key).map_err(StartupError::Tls)?),
            None => None,
        };
        let metrics = crate::metrics::Metrics::new(db.clone());
        let jobs_db = match settings.jobs.concurrency {
            0 => None,
            _ => Some(
                connect_workers(settings.database_url.expose(), &settings.jobs, settings.db_acquire_timeout).await?,
            ),
        };
        let hub = crate::conduit::notifications::Hub::new(settings.watch_max_per_user, settings.watch_keep_alive);
        let (app, health, cache) = stack(ctx, settings, shared, metrics.clone(), hub.clone())?;
        let listener =
            TcpListener::bind(settings.listen).await.map_err(|e| StartupError::Listen(settings.listen, e))?;
        let admin = TcpListener::bind(settings.admin_listen)
            .await
            .map_err(|e| StartupError::Listen(settings.admin_listen, e))?;
        Ok(Self {
            listener,
            admin,
            app,
            db,
            health,
            metrics,
            health_check_interval: settings.health_check_interval,
            limits: settings.connection_limits,
            drain_delay: settings.drain_delay,
            cache,
            expected_migrations: (!settings.migrate_on_start).then(|| MIGRATOR.iter().count() as i64),
            tls,
            hub,
            jobs: settings.jobs.clone(),
            jobs_db,
        })
    }

    /// The port it listens on (useful with port 0).
    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or_default()
    }

    /// The port of the admin listener (probes).
    pub fn admin_port(&self) -> u16 {
        self.admin.local_addr().map(|a| a.port()).unwrap_or_default()
    }

    /// The database pool.
    pub fn db(&self) -> &PgPool {
        &self.db
    }

    /// Serves until `shutdown` completes, then drains: readiness and gRPC
    /// health turn NOT_SERVING at once and job workers claim nothing more;
    /// connections are still accepted for the drain delay (while load
    /// balancers notice), then accepting stops, watch streams end (their
    /// clients reconnect elsewhere and resume), and calls and jobs in
    /// flight get until the drain deadline; the pool closes last.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
        let watcher = tokio::spawn(self.health.clone().watch_database(
            self.db.clone(),
            self.health_check_interval,
            self.expected_migrations,
        ));
        let invalidations = tokio::spawn(self.cache.clone().listen());
        let notifications = tokio::spawn(self.hub.clone().listen(self.db.clone()));
        let queue =
            tokio::spawn(crate::jobs::watch_queue(self.db.clone(), self.metrics.clone(), self.health_check_interval));
        let (stopping, stop_workers) = tokio::sync::watch::channel(false);
        let workers = self.jobs_db.clone().map(|jobs_db| {
            let workers = crate::jobs::Workers::new(
                jobs_db,
                conduit::job_handlers(),
                self.jobs.clone(),
                Some(self.metrics.clone()),
            );
            let mut stop = stop_workers;
            tokio::spawn(workers.run(async move {
                let _ = stop.wait_for(|s| *s).await;
            }))
        });
        let (health, hub) = (self.health.clone(), self.hub.clone());
        let delay = self.drain_delay;
        let drain = async move {
            shutdown.await;
            health.drain().await;
            let _ = stopping.send(true);
            tracing::info!(delay_ms = delay.as_millis() as u64, "not ready; draining");
            tokio::time::sleep(delay).await;
            hub.close();
        };
        let admin_app = crate::health::admin_routes(self.health.clone(), self.metrics.clone());
        let (admin_stop, admin_stopped) = tokio::sync::oneshot::channel::<()>();
        let admin = tokio::spawn(crate::server::serve(self.admin, admin_app, self.limits, None, async move {
            let _ = admin_stopped.await;
        }));
        let reloads = self.tls.clone().map(|tls| tokio::spawn(tls.watch()));
        crate::server::serve(self.listener, self.app, self.limits, self.tls, drain).await;
        if let Some(reloads) = reloads {
            reloads.abort();
        }
        if let Some(workers) = workers {
            let _ = workers.await;
        }
        if let Some(jobs_db) = &self.jobs_db
            && tokio::time::timeout(std::time::Duration::from_secs(5), jobs_db.close()).await.is_err()
        {
            tracing::warn!("job connections still busy after 5 s; closing anyway");
        }
        let _ = admin_stop.send(());
        let _ = admin.await;
        watcher.abort();
        invalidations.abort();
        notifications.abort();
        queue.abort();
        if tokio::time::timeout(std::time::Duration::from_secs(5), self.db.close()).await.is_err() {
            tracing::warn!("database connections still busy after 5 s; closing anyway");
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// `conduit worker`: job workers only, with probes and metrics on the admin
/// listener, until `shutdown`; then running jobs get until the drain
/// deadline (see [`crate::jobs`]).
pub async fn run_worker(
    settings: &crate::config::Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartupError> {
    let url = settings.require_database_url().map_err(StartupError::Settings)?;
    let jobs = settings.workers().map_err(StartupError::Settings)?;
    if jobs.concurrency == 0 {
        return Err(StartupError::Settings("JOB_WORKERS must be at least 1 for `conduit worker`".into()));
    }
    let db = connect_workers(url.expose(), &jobs, settings.db_acquire_timeout).await?;
    if settings.migrate_on_start {
        MIGRATOR.run(&db).await?;
    }
    let metrics = crate::metrics::Metrics::new(db.clone());
    let health = Health::new(tonic_health::server::health_reporter().0, Vec::new());
    let admin =
        TcpListener::bind(settings.admin_listen).await.map_err(|e| StartupError::Listen(settings.admin_listen, e))?;
    tracing::info!(admin = %settings.admin_listen, "serving probes and metrics");
    let watcher = tokio::spawn(health.clone().watch_database(
        db.clone(),
        settings.health_check_interval,
        (!settings.migrate_on_start).then(|| MIGRATOR.iter().count() as i64),
    ));
    let queue = tokio::spawn(crate::jobs::watch_queue(db.clone(), metrics.clone(), settings.health_check_interval));
    let (admin_stop, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    let admin = tokio::spawn(crate::server::serve(
        admin,
        crate::health::admin_routes(health.clone(), metrics.clone()),
        settings.connection_limits(),
        None,
        async move {
            let _ = admin_stopped.await;
        },
    ));
    let workers = crate::jobs::Workers::new(db.clone(), conduit::job_handlers(), jobs, Some(metrics));
    workers
        .run(async move {
            shutdown.await;
            health.drain().await;
        })
        .await;
    let _ = admin_stop.send(());
    let _ = admin.await;
    watcher.abort();
    queue.abort();
    db.close().await;
    Ok(())
}

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
];

/// Response headers browser code may read: gRPC-Web status trailers (sent
/// as headers when a call fails at once) and tracing ids.
const CORS_EXPOSED: &[&str] = &["grpc-status", "grpc-message", "grpc-status-details-bin", "x-request-id"];

/// CORS for browser clients of every protocol (JSON, gRPC-Web, Connect):
/// frontends are served from another origin; tokens travel in the
/// Authorization header, never in cookies.
fn cors(settings: &ServeSettings) -> CorsLayer {
    let origins = match &settings.cors_allowed_origins {
        None => AllowOrigin::any(),
        Some(list) => AllowOrigin::list(list.iter().cloned()),
    };
    let mut headers: Vec<http::HeaderName> = CORS_HEADERS.iter().map(|h| http::HeaderName::from_static(h)).collect();
    headers.extend(settings.cors_allowed_headers.iter().cloned());
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
        .max_age(settings.cors_max_age)
}

/// The gRPC methods served by tonic alone: health and both reflection versions.
const INFRA_METHODS: &[&str] = &[
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
    "/grpc.health.v1.Health/List",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
];

/// The service stack, outermost first: CORS, then classify each request by
/// protocol and RPC (so that layers added between it and the split see
/// every protocol alike), then split gRPC and gRPC-Web (tonic) from Connect
/// and JSON (the gateway).
fn stack(
    ctx: Ctx,
    settings: &ServeSettings,
    shared: Option<SharedBuckets>,
    metrics: crate::metrics::Metrics,
    hub: crate::conduit::notifications::Hub,
) -> Result<(axum::Router, Health, crate::cache::ResponseCache), StartupError> {
    let tokens = ctx.tokens.clone();
    let db = ctx.db.clone();
    let (grpc, methods) = conduit::services(ctx, settings.body_limit, hub, settings.exports);
    let gateway = Gateway::builder()
        .methods(methods)
        .routes(crate::pb::conduit::v1::HTTP_ROUTES)
        .grpc_methods(INFRA_METHODS.iter().copied())
        .any_types(crate::pb::conduit::v1::ANY_TYPES)
        .renderer(RealWorldErrors)
        .openapi(crate::pb::OPENAPI)
        .body_limit(settings.body_limit)
        .build()?;

    let (reporter, health_service) = tonic_health::server::health_reporter();
    let mut services: Vec<String> = gateway
        .methods()
        .filter_map(|m| m.rpc.trim_start_matches('/').split_once('/').map(|(service, _)| service.to_owned()))
        .collect();
    services.sort();
    services.dedup();
    let health = Health::new(reporter, services);

    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let grpc = grpc
        .add_service(health_service)
        .add_service(reflection().build_v1().map_err(StartupError::Reflection)?)
        .add_service(reflection().build_v1alpha().map_err(StartupError::Reflection)?);

    let cache = crate::cache::ResponseCache::new(
        gateway.clone(),
        settings.cache_ttl,
        settings.cache_max_bytes,
        metrics.clone(),
        Some(db),
    );
    if settings.minimal_middleware {
        let bare = tower::ServiceBuilder::new()
            .layer(ClassifyLayer::new(gateway.clone()))
            .layer(GateLayer::new(Authenticate::new(gateway.clone(), tokens)))
            .service(Dispatch::new(grpc.into_axum_router(), gateway));
        return Ok((axum::Router::new().fallback_service(bare), health, cache));
    }
    let service = tower::ServiceBuilder::new()
        .layer(cors(settings))
        .layer(ClassifyLayer::new(gateway.clone()))
        .layer(crate::observe::ObserveLayer::new(metrics.clone()))
        .layer(AroundLayer::new(RequestLog))
        .layer(AroundLayer::new(crate::compress::EncodedTags))
        .map_response(|response: http::Response<_>| response.map(axum::body::Body::new))
        .layer(crate::compress::layer(settings.compression_min_bytes))
        .layer(AroundLayer::new(crate::conditional::Conditional))
        .layer(ShedLayer::new(settings.max_concurrent_requests, gateway.clone(), metrics.clone()))
        .layer(GateLayer::new(Availability::new(health.clone(), gateway.clone(), settings.health_check_interval)))
        .layer(GateLayer::new(Authenticate::new(gateway.clone(), tokens)))
        .layer(
            RateLimit::new(gateway.clone(), settings.rate_limit, settings.rate_limit_credentials, shared)
                .with_metrics(metrics)
                .with_trusted_proxies(&settings.trusted_proxies),
        )
        .layer(cache.clone())
        .layer(TimeoutLayer::new(gateway.clone(), settings.request_timeout))
        .service(Dispatch::new(grpc.into_axum_router(), gateway));
    Ok((axum::Router::new().fallback_service(service), health, cache))
}
