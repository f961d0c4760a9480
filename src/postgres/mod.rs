//! PostgreSQL plumbing, below the domain: the pools, the embedded
//! migrations, the private server started when no `DATABASE_URL` is given,
//! the `LISTEN` loop every cross-replica signal uses, the coalescing sender
//! of those signals, the durable job queue, and the read replicas.

pub mod jobs;
pub mod listen;
pub mod private;
pub mod replicas;
pub mod signal;

use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

/// The migrations in `migrations/`, embedded in the binary. Migrations a
/// newer release applied are left alone rather than refused: during a
/// rolling update, a scale-up or a rollback (`kubectl rollout undo`), the
/// previous release starts against the newer schema, which migrations keep
/// compatible with the release before them, and readiness accepts it too.
pub fn migrator() -> sqlx::migrate::Migrator {
    let mut migrator = sqlx::migrate!();
    migrator.set_ignore_missing(true);
    migrator
}

/// A pooled connection idle at least this long is checked (one round trip)
/// before it is handed out; one in steady use is not.
const CHECK_IF_IDLE_FOR: std::time::Duration = std::time::Duration::from_secs(1);

/// Pool options shared by both pools. sqlx checks a connection with a round
/// trip when it goes back to the pool and, by default, again when it is
/// taken: two round trips besides the query itself for every request (the
/// list's PostgreSQL CPU went to them as much as to its statement). The
/// check on release stays; the one on acquisition is made only for
/// connections that sat idle, which the server may have closed meanwhile.
fn pool_options(max_connections: u32, acquire_timeout: std::time::Duration) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(acquire_timeout)
        // Each acquisition's wait goes to the log at TRACE, which the
        // metrics read (conduit_db_pool_acquire_duration_seconds).
        .acquire_time_level(log::LevelFilter::Trace)
        .test_before_acquire(false)
        .before_acquire(|connection, meta| {
            Box::pin(async move {
                check_if_idle(connection, meta.idle_for).await?;
                Ok(true)
            })
        })
}

/// The check [`pool_options`] makes of a connection about to be handed out:
/// one round trip, only if it sat idle for [`CHECK_IF_IDLE_FOR`].
async fn check_if_idle(connection: &mut sqlx::PgConnection, idle_for: std::time::Duration) -> Result<(), sqlx::Error> {
    if idle_for >= CHECK_IF_IDLE_FOR {
        sqlx::Connection::ping(connection).await?;
    }
    Ok(())
}

/// Opens a pool to the database, whose statements are planned once per
/// connection (`plan_cache_mode = force_generic_plan`).
///
/// PostgreSQL otherwise plans a prepared statement again on every execution
/// whenever its generic plan looks dearer than the custom ones, which
/// `LIMIT $n` always makes it (an unknown limit is costed as a tenth of the
/// rows): the article list spent as long planning (0.18 ms) as executing,
/// every time, for the same plan. The statements are written so that one
/// plan serves every parameter (one text per combination of list filters,
/// no `$n IS NULL OR …`); the one that needs its parameters' values to be
/// planned well asks for custom plans in its own transaction
/// ([`CUSTOM_PLANS`]).
///
/// JIT compilation is off: it starts above an estimated cost, and a generic
/// plan's estimates (a tenth of the rows for an unknown limit, the branch a
/// `CASE` will skip) crossed it for the feed, which then spent 42 ms
/// compiling a 1 ms statement at every execution.
pub async fn connect(
    url: &str,
    max_connections: u32,
    acquire_timeout: std::time::Duration,
) -> Result<PgPool, sqlx::Error> {
    pool_options(max_connections, acquire_timeout).connect_with(planned_once(url)?).await
}

/// `url`'s options, asking for statements planned once per connection and no JIT.
fn planned_once(url: &str) -> Result<sqlx::postgres::PgConnectOptions, sqlx::Error> {
    Ok(url
        .parse::<sqlx::postgres::PgConnectOptions>()?
        .options([("plan_cache_mode", "force_generic_plan"), ("jit", "off")]))
}

/// A pool of one lazily opened connection for [`listen::listen_all`],
/// to `url` directly: a transaction-mode pooler lends a server connection
/// to whichever client runs a transaction next, so a `LISTEN` made through
/// it would deliver its notifications into other clients' requests. Idle
/// and lifetime limits are off: the connection listens for as long as the
/// process runs.
pub fn listener_pool(url: &str) -> Result<PgPool, sqlx::Error> {
    let options = url.parse::<sqlx::postgres::PgConnectOptions>()?;
    Ok(PgPoolOptions::new()
        .max_connections(1)
        .min_connections(0)
        .idle_timeout(None)
        .max_lifetime(None)
        .connect_lazy_with(options))
}

/// Applies the migrations over a connection of its own to `url`: the
/// migrator holds a session advisory lock, which needs a direct
/// connection, never one through a transaction-mode pooler.
pub async fn migrate(url: &str, acquire_timeout: std::time::Duration) -> Result<(), sqlx::migrate::MigrateError> {
    let db = connect(url, 1, acquire_timeout).await?;
    let migrated = migrator().run(&db).await;
    db.close().await;
    migrated
}

/// Run first in a transaction whose statements must be planned with their
/// parameters' values (a `LIKE` prefix, which only a known pattern turns
/// into an index range).
pub const CUSTOM_PLANS: &str = "SET LOCAL plan_cache_mode = force_custom_plan";

/// Opens the job workers' pool. Their bookkeeping (claims, retries,
/// rescues) commits asynchronously, without waiting for the WAL flush: a
/// crash may lose the last of it, which only means a job runs again
/// (attempts commit synchronously; see [`crate::postgres::jobs`]). A session idle in
/// a transaction for longer than an attempt may take is ended, so that a
/// worker whose host vanished does not hold its job's row for hours. Each
/// running job holds a connection; two more serve claims and batches (and,
/// in `conduit worker`, the wake-up listener and the queue's figures).
pub async fn connect_workers(
    url: &str,
    workers: &crate::postgres::jobs::WorkerSettings,
    acquire_timeout: std::time::Duration,
) -> Result<PgPool, sqlx::Error> {
    let max_connections = u32::try_from(workers.concurrency).unwrap_or(u32::MAX).saturating_add(2);
    let idle = (workers.lease + std::time::Duration::from_secs(10)).as_millis().to_string();
    let options = url
        .parse::<sqlx::postgres::PgConnectOptions>()?
        .options([("synchronous_commit", "off"), ("idle_in_transaction_session_timeout", idle.as_str())]);
    pool_options(max_connections, acquire_timeout).connect_with(options).await
}

/// A `timestamptz` read straight into the protobuf `Timestamp` answers
/// carry. PostgreSQL sends it as microseconds since 2000-01-01 UTC; going
/// through the `time` crate's calendar types and back to Unix seconds cost
/// ~450 instructions a value, 5% of an article list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timestamptz(pub gateway::wkt::Timestamp);

/// Seconds from the Unix epoch to PostgreSQL's, 2000-01-01T00:00:00Z.
const POSTGRES_EPOCH_SECONDS: i64 = 946_684_800;

impl sqlx::Type<sqlx::Postgres> for Timestamptz {
    fn type_info() -> sqlx::postgres::PgTypeInfo {
        <time::OffsetDateTime as sqlx::Type<sqlx::Postgres>>::type_info()
    }
}

impl<'r> sqlx::Decode<'r, sqlx::Postgres> for Timestamptz {
    fn decode(value: sqlx::postgres::PgValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
        match value.format() {
            sqlx::postgres::PgValueFormat::Binary => {
                let micros = i64::from_be_bytes(value.as_bytes()?.try_into()?);
                // ±infinity are i64::MAX and i64::MIN: no Timestamp holds them.
                if micros == i64::MAX || micros == i64::MIN {
                    return Err("an infinite timestamp has no protobuf Timestamp".into());
                }
                let seconds = micros.div_euclid(1_000_000) + POSTGRES_EPOCH_SECONDS;
                let nanos = micros.rem_euclid(1_000_000) as i32 * 1_000;
                Ok(Self(gateway::wkt::Timestamp::new(seconds, nanos)))
            }
            sqlx::postgres::PgValueFormat::Text => {
                let time = <time::OffsetDateTime as sqlx::Decode<sqlx::Postgres>>::decode(value)?;
                Ok(Self(time.into()))
            }
        }
    }
}

impl From<Timestamptz> for gateway::wkt::Timestamp {
    fn from(t: Timestamptz) -> Self {
        t.0
    }
}
