//! `grpc.health.v1` statuses: one per service plus the server's (`""`).
//! Every service is SERVING while the database answers and the process is
//! not draining; NOT_SERVING otherwise, so probes and balancers stop
//! sending work that could only fail.
//!
//! The database is watched over a connection of its own, never the pool's,
//! so that a pool with no connection free (overload) is not taken for an
//! outage. Between checks the watcher waits on that connection: when the
//! server closes or resets it (a crash, a kill, a restart) a new connection
//! is tried at once, and a refused one marks the database down within
//! milliseconds. While down it is probed every `HEALTH_PROBE_INTERVAL`,
//! and service resumes at the first probe that succeeds. A call that met
//! an unreachable database ([`Health::suspect`]) has it checked at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sqlx::{Connection, PgPool};
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::observability::metrics::Metrics;

/// The `grpc.health.v1` service name that answers SERVING for as long as
/// the process serves at all, whatever the database: what a liveness probe
/// asks (restarting a replica cannot bring a database back).
pub const LIVENESS_SERVICE: &str = "liveness";

/// How the database is watched.
#[derive(Debug, Clone, Copy)]
pub struct DatabaseWatch {
    /// How often a database that answers is checked (`HEALTH_CHECK_INTERVAL`).
    pub interval: Duration,
    /// How often a database found down is probed, and the soonest a
    /// suspicion is checked after the last check (`HEALTH_PROBE_INTERVAL`).
    pub probe: Duration,
    /// With `Some(n)`, the database counts as up only once `n` migrations
    /// are applied (when the service does not apply them itself).
    pub migrations: Option<i64>,
}

/// Longest a probe may take to connect and answer; longer is down (a server
/// that accepts and never answers, or a network that drops packets).
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Reports the health of a fixed set of services.
#[derive(Clone)]
pub struct Health {
    reporter: HealthReporter,
    services: Arc<Vec<String>>,
    draining: Arc<AtomicBool>,
    /// Read on every call: an atomic, not the channel.
    database_down: Arc<AtomicBool>,
    /// The same state, for calls in flight to wait on.
    down: Arc<tokio::sync::watch::Sender<bool>>,
    suspicion: Arc<tokio::sync::Notify>,
    metrics: Option<Metrics>,
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
            down: Arc::new(tokio::sync::watch::Sender::new(false)),
            suspicion: Arc::default(),
            metrics: None,
        }
    }

    /// Records the database's state in `metrics` (`conduit_database_up`,
    /// `conduit_database_outages_total`).
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Whether the database is known to be unreachable.
    pub fn database_down(&self) -> bool {
        self.database_down.load(Ordering::Relaxed)
    }

    /// Completes when the database is found down (at once if it is): what a
    /// call in flight races, so that it need not wait out a pool timeout.
    pub fn until_database_down(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut down = self.down.subscribe();
        async move {
            // An error means the sender is gone: then it never goes down.
            if down.wait_for(|down| *down).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Has the database checked as soon as the probe interval allows: a call
    /// found it unreachable, or waited for a connection in vain (which the
    /// check, on a connection of its own, tells apart from overload).
    pub fn suspect(&self) {
        self.suspicion.notify_one();
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

    /// Watches the database `db` connects to (see the module documentation)
    /// and reports SERVING or NOT_SERVING accordingly, until the process
    /// drains.
    pub async fn watch_database(self, db: PgPool, watch: DatabaseWatch) {
        self.reporter.set_service_status(LIVENESS_SERVICE, ServingStatus::Serving).await;
        let options = PgConnectOptions::clone(&db.connect_options());
        // The pool of one that the watching connection lives in (a listener
        // needs a pool); it never takes a connection from the service's pool.
        let own = PgPoolOptions::new()
            .max_connections(1)
            .min_connections(0)
            .acquire_timeout(PROBE_TIMEOUT)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_lazy_with(options.clone());
        let check_timeout = watch.interval.max(PROBE_TIMEOUT);
        let mut held: Option<PgListener> = None;
        let mut last = None;
        loop {
            if self.draining.load(Ordering::SeqCst) {
                return;
            }
            let up = match held.as_mut() {
                Some(listener) => {
                    matches!(tokio::time::timeout(check_timeout, check(listener, watch.migrations)).await, Ok(Ok(true)))
                }
                None => probe(&options, watch.migrations).await,
            };
            if !up {
                held = None;
            } else if held.is_none() {
                held = match PgListener::connect_with(&own).await {
                    Ok(mut listener) => {
                        // A lost connection is reported, not quietly replaced.
                        listener.eager_reconnect(false);
                        Some(listener)
                    }
                    Err(_) => None,
                };
            }
            self.report(up, &mut last).await;
            let wait = if up { watch.interval } else { watch.probe };
            let lost = tokio::select! {
                _ = tokio::time::sleep(wait) => false,
                _ = async {
                    tokio::time::sleep(watch.probe).await;
                    self.suspicion.notified().await;
                } => false,
                _ = until_lost(held.as_mut()) => true,
            };
            if lost {
                // Try a new connection at once: a refused one is an outage.
                held = None;
            }
        }
    }

    /// Publishes a check's answer; statuses, logs and metrics change only
    /// when the answer does, and a drain that began meanwhile wins.
    async fn report(&self, up: bool, last: &mut Option<bool>) {
        self.database_down.store(!up, Ordering::Relaxed);
        // Waiters wake only on a change: `down` was the opposite of what it becomes.
        self.down.send_if_modified(|down| std::mem::replace(down, !up) == up);
        if *last == Some(up) || self.draining.load(Ordering::SeqCst) {
            return;
        }
        if !up {
            tracing::warn!("the database does not answer or lacks migrations: health is NOT_SERVING");
        } else if last.is_some() {
            tracing::info!("the database answers again: health is SERVING");
        }
        if let Some(metrics) = &self.metrics
            && (last.is_some() || !up)
        {
            metrics.database(up);
        }
        *last = Some(up);
        self.set_all(if up { ServingStatus::Serving } else { ServingStatus::NotServing }).await;
    }
}

/// Whether the database answers over `conn` (with `migrations` applied).
async fn check<'c>(conn: impl sqlx::PgExecutor<'c>, migrations: Option<i64>) -> Result<bool, sqlx::Error> {
    match migrations {
        None => sqlx::query_scalar::<_, i64>("SELECT 1::int8").fetch_one(conn).await.map(|_| true),
        Some(expected) => {
            let applied = "SELECT count(*) FROM _sqlx_migrations WHERE success";
            let applied = sqlx::query_scalar::<_, i64>(applied).fetch_one(conn).await;
            // No migrations table: the schema is missing altogether.
            applied.map(|n| n >= expected).or_else(|e| match e {
                sqlx::Error::Database(_) => Ok(false),
                other => Err(other),
            })
        }
    }
}

/// One attempt on a new connection, without the pool's retries: a refused
/// connection answers at once.
async fn probe(options: &PgConnectOptions, migrations: Option<i64>) -> bool {
    let attempt = async {
        let mut conn = sqlx::PgConnection::connect_with(options).await?;
        let answer = check(&mut conn, migrations).await;
        let _ = conn.close().await;
        answer
    };
    matches!(tokio::time::timeout(PROBE_TIMEOUT, attempt).await, Ok(Ok(true)))
}

/// Completes when the held connection is closed or reset by the server;
/// never without one.
async fn until_lost(held: Option<&mut PgListener>) {
    let Some(listener) = held else { return std::future::pending().await };
    loop {
        match listener.try_recv().await {
            // Nothing is listened for; a notification would be someone else's.
            Ok(Some(_)) => continue,
            Ok(None) | Err(_) => return,
        }
    }
}
