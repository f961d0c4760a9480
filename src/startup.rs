//! Builds the application from settings: database pool, migrations, the
//! service stack on one listener. Shared by `main` and the tests.

use std::future::Future;
use std::net::SocketAddr;

use sqlx::PgPool;
use tokio::net::TcpListener;

use crate::config::ServeSettings;
use crate::domain::auth::{Passwords, Tokens};
use crate::domain::{self, Ctx};
use crate::middleware::ratelimit::SharedBuckets;
use crate::observability::health::{DatabaseWatch, Health};
use crate::postgres::replicas::Replicas;
use crate::postgres::{connect, connect_workers, listener_pool, migrate, migrator};

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// The database is unreachable or refused us.
    #[error("cannot connect to the database: {0}")]
    Database(#[from] sqlx::Error),
    /// A migration failed.
    #[error("cannot migrate the database: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A listen address is unusable; names the setting that chose it.
    #[error("cannot listen on {address} ({setting}): {error}")]
    Listen {
        /// The address.
        address: SocketAddr,
        /// The setting it came from, as the environment and the command line name it.
        setting: &'static str,
        /// Why not.
        error: std::io::Error,
    },
    /// The service stack cannot be assembled (a malformed HTTP rule, or
    /// descriptors that do not decode).
    #[error(transparent)]
    Stack(#[from] crate::stack::StackError),
    /// `REDIS_URL` is set and Redis does not answer.
    #[error("cannot connect to Redis (REDIS_URL): {0}")]
    Redis(redis::RedisError),
    /// The TLS certificate or key is unusable.
    #[error("cannot serve TLS: {0}")]
    Tls(String),
    /// A setting is missing or wrong.
    #[error("{0}")]
    Settings(String),
}

/// The settings of the two listen addresses, as errors name them.
const LISTEN_SETTING: &str = "CONDUIT_LISTEN or --listen";
const ADMIN_LISTEN_SETTING: &str = "CONDUIT_ADMIN_LISTEN or --admin-listen";

/// Whether both listen addresses can be bound now, checked before anything
/// slow starts (the private database, migrations), so that a taken port is
/// reported at once rather than after them. The listeners themselves are
/// bound later, by [`Application::build`].
pub fn check_listen_addresses(settings: &crate::config::Settings) -> Result<(), StartupError> {
    for (address, setting) in [(settings.listen, LISTEN_SETTING), (settings.admin_listen, ADMIN_LISTEN_SETTING)] {
        std::net::TcpListener::bind(address).map_err(|error| StartupError::Listen { address, setting, error })?;
    }
    Ok(())
}

/// A listener on `address`; an error names `setting`, so that a taken port
/// says how to choose another.
async fn bind(address: SocketAddr, setting: &'static str) -> Result<TcpListener, StartupError> {
    TcpListener::bind(address).await.map_err(|error| StartupError::Listen { address, setting, error })
}

/// A built application, listening but not yet serving.
pub struct Application {
    listener: TcpListener,
    admin: TcpListener,
    app: axum::Router,
    db: PgPool,
    /// A direct connection for the LISTENs when `db` goes through a
    /// pooler; `None`: one of `db`'s connections listens.
    listen_db: Option<PgPool>,
    /// The read replicas, polled while the process serves.
    replicas: Option<Replicas>,
    health: Health,
    metrics: crate::observability::metrics::Metrics,
    health_check_interval: std::time::Duration,
    limits: crate::server::ConnectionLimits,
    drain_delay: std::time::Duration,
    cache: crate::middleware::cache::CacheLayer,
    /// How the database is watched; readiness waits for migrations not applied at start.
    database_watch: DatabaseWatch,
    tls: Option<crate::server::tls::Tls>,
    hub: crate::domain::notifications::Hub,
    jobs: crate::postgres::jobs::WorkerSettings,
    /// The workers' own connections (each running job holds one), so that
    /// a busy queue never starves the API's pool; `None` without workers.
    jobs_db: Option<PgPool>,
    /// Wakes this process's workers after its own writes.
    wake: crate::postgres::jobs::Wake,
    /// Revoked sessions, followed across replicas while serving.
    sessions: crate::domain::auth::Sessions,
}

impl Application {
    /// Connects, migrates if asked, binds the listener and assembles the stack.
    pub async fn build(settings: &ServeSettings) -> Result<Self, StartupError> {
        let db =
            connect(settings.database_url.expose(), settings.db_max_connections, settings.db_acquire_timeout).await?;
        if settings.migrate_on_start {
            match &settings.database_direct_url {
                Some(direct) => migrate(direct.expose(), settings.db_acquire_timeout).await?,
                None => migrator().run(&db).await?,
            }
        }
        let listen_db =
            settings.database_direct_url.as_ref().map(|direct| listener_pool(direct.expose())).transpose()?;
        let shared = match &settings.redis_url {
            Some(url) => Some(
                SharedBuckets::connect(
                    url.expose(),
                    &settings.rate_limit_redis_prefix,
                    settings.rate_limit_redis_fail_open,
                    settings.rate_limit_redis_timings,
                )
                .await
                .map_err(StartupError::Redis)?,
            ),
            None => None,
        };
        let logins =
            crate::middleware::ratelimit::LoginFailures::new(settings.rate_limit_login_failures, shared.clone());
        let signals = crate::postgres::signal::Signals::new(db.clone(), settings.signal_interval);
        let wake = crate::postgres::jobs::Wake::new(signals.clone());
        let ctx = Ctx {
            jobs: wake.clone(),
            db: db.clone(),
            tokens: Tokens::new(settings.jwt_secret.expose().as_bytes(), settings.jwt_ttl),
            passwords: Passwords::new(settings.password_hash_concurrency),
            logins: Some(std::sync::Arc::new(logins)),
            keys: crate::domain::idempotent::Keys::new(
                settings.jwt_secret.expose().as_bytes(),
                settings.idempotency_key_retention,
                // Short of the request timeout, so that a waiting retry is
                // told to try again rather than timed out.
                settings.request_timeout * 3 / 4,
            ),
        };
        let sessions = ctx.tokens.sessions().clone();
        let tls = match &settings.tls {
            Some((cert, key)) => Some(crate::server::tls::Tls::load(cert, key).map_err(StartupError::Tls)?),
            None => None,
        };
        let metrics = crate::observability::metrics::Metrics::new(db.clone());
        let jobs_db = match settings.jobs.concurrency {
            0 => None,
            _ => Some(
                connect_workers(settings.database_url.expose(), &settings.jobs, settings.db_acquire_timeout).await?,
            ),
        };
        let hub = crate::domain::notifications::Hub::new(settings.watch_max_per_user, settings.watch_keep_alive);
        let replicas = Replicas::new(db.clone(), &settings.reads, settings.db_acquire_timeout)?;
        let crate::stack::Stack { app, health, cache } =
            crate::stack::build(ctx, settings, shared, metrics.clone(), hub.clone(), signals, replicas.clone())?;
        let listener = bind(settings.listen, LISTEN_SETTING).await?;
        let admin = bind(settings.admin_listen, ADMIN_LISTEN_SETTING).await?;
        Ok(Self {
            listener,
            admin,
            app,
            db,
            listen_db,
            replicas,
            health,
            metrics,
            health_check_interval: settings.health_check_interval,
            limits: settings.connection_limits,
            drain_delay: settings.drain_delay,
            cache,
            database_watch: database_watch(
                settings.health_check_interval,
                settings.health_probe_interval,
                settings.migrate_on_start,
            ),
            tls,
            hub,
            jobs: settings.jobs.clone(),
            jobs_db,
            wake,
            sessions,
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
        let watcher = tokio::spawn(self.health.clone().watch_database(self.db.clone(), self.database_watch));
        // Every channel this process follows, on one connection.
        let mut channels = vec![self.hub.clone().channel(), self.sessions.clone().channel(self.db.clone())];
        channels.extend(self.cache.clone().channel());
        if self.jobs_db.is_some() {
            channels.push(crate::postgres::jobs::wake_channel(&self.wake));
        }
        let listen_db = self.listen_db.clone().unwrap_or_else(|| self.db.clone());
        let listener = tokio::spawn(crate::postgres::listen::listen_all(listen_db, channels));
        let replicas = self.replicas.clone().map(|replicas| tokio::spawn(replicas.watch(self.metrics.clone())));
        let queue = tokio::spawn(crate::postgres::jobs::watch_queue(
            self.db.clone(),
            self.metrics.clone(),
            self.health_check_interval,
        ));
        let (stopping, stop_workers) = tokio::sync::watch::channel(false);
        let workers = self.jobs_db.clone().map(|jobs_db| {
            let workers = crate::postgres::jobs::Workers::new(
                jobs_db,
                domain::job_handlers(),
                self.jobs.clone(),
                Some(self.metrics.clone()),
            )
            .woken_by(&self.wake)
            .without_own_listener();
            let mut stop = stop_workers;
            tokio::spawn(workers.run(async move {
                let _ = stop.wait_for(|s| *s).await;
            }))
        });
        let (health, hub) = (self.health.clone(), self.hub.clone());
        let stopping_rx = stopping.subscribe();
        let delay = self.drain_delay;
        let drain = async move {
            shutdown.await;
            health.drain().await;
            let _ = stopping.send(true);
            tracing::info!(delay_ms = delay.as_millis() as u64, "not ready; draining");
            tokio::time::sleep(delay).await;
            hub.close();
        };
        let admin_app = crate::server::admin::admin_routes(self.health.clone(), self.metrics.clone());
        let (admin_stop, admin_stopped) = tokio::sync::oneshot::channel::<()>();
        // Probes keep their connections while the process drains.
        let never = tokio::sync::watch::channel(false).1;
        let admin = tokio::spawn(crate::server::serve(self.admin, admin_app, self.limits, None, never, async move {
            let _ = admin_stopped.await;
        }));
        let reloads = self.tls.clone().map(|tls| tokio::spawn(tls.watch()));
        let draining = stopping_rx;
        crate::server::serve(self.listener, self.app, self.limits, self.tls, draining, drain).await;
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
        listener.abort();
        queue.abort();
        if let Some(replicas) = replicas {
            replicas.abort();
        }
        // Only a pool of its own: the shared one closes below, within a bound.
        if let Some(listen_db) = &self.listen_db {
            listen_db.close().await;
        }
        if tokio::time::timeout(std::time::Duration::from_secs(5), self.db.close()).await.is_err() {
            tracing::warn!("database connections still busy after 5 s; closing anyway");
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// `conduit worker`: job workers only, with probes and metrics on the admin
/// listener, until `shutdown`; then running jobs get until the drain
/// deadline (see [`crate::postgres::jobs`]).
pub async fn run_worker(
    settings: &crate::config::Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartupError> {
    let url = settings.require_database_url().map_err(StartupError::Settings)?;
    let direct = settings.require_direct_url().map_err(StartupError::Settings)?;
    let jobs = settings.workers().map_err(StartupError::Settings)?;
    if jobs.concurrency == 0 {
        return Err(StartupError::Settings("JOB_WORKERS must be at least 1 for `conduit worker`".into()));
    }
    let db = connect_workers(url.expose(), &jobs, settings.db_acquire_timeout).await?;
    if settings.migrate_on_start {
        match &direct {
            Some(direct) => migrate(direct.expose(), settings.db_acquire_timeout).await?,
            None => migrator().run(&db).await?,
        }
    }
    let listen_db = direct.as_ref().map(|direct| listener_pool(direct.expose())).transpose()?;
    let metrics = crate::observability::metrics::Metrics::new(db.clone());
    let health = Health::new(tonic_health::server::health_reporter().0, Vec::new()).with_metrics(metrics.clone());
    let admin = bind(settings.admin_listen, ADMIN_LISTEN_SETTING).await?;
    tracing::info!(admin = %settings.admin_listen, "serving probes and metrics");
    let watch =
        database_watch(settings.health_check_interval, settings.health_probe_interval, settings.migrate_on_start);
    let watcher = tokio::spawn(health.clone().watch_database(db.clone(), watch));
    let queue =
        tokio::spawn(crate::postgres::jobs::watch_queue(db.clone(), metrics.clone(), settings.health_check_interval));
    let (admin_stop, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    let admin = tokio::spawn(crate::server::serve(
        admin,
        crate::server::admin::admin_routes(health.clone(), metrics.clone()),
        settings.connection_limits(),
        None,
        tokio::sync::watch::channel(false).1,
        async move {
            let _ = admin_stopped.await;
        },
    ));
    let mut workers = crate::postgres::jobs::Workers::new(db.clone(), domain::job_handlers(), jobs, Some(metrics));
    if let Some(listen_db) = &listen_db {
        workers = workers.listening_on(listen_db.clone());
    }
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
    if let Some(listen_db) = listen_db {
        listen_db.close().await;
    }
    db.close().await;
    Ok(())
}

/// How the database is watched: readiness waits for the migrations when
/// the process does not apply them itself.
fn database_watch(interval: std::time::Duration, probe: std::time::Duration, migrates: bool) -> DatabaseWatch {
    DatabaseWatch { interval, probe, migrations: (!migrates).then(|| migrator().iter().count() as i64) }
}
