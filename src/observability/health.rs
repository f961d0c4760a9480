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
