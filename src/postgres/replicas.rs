//! Reads served by PostgreSQL streaming replicas (`READ_DATABASE_URL`),
//! with read-your-writes for every writer and bounded staleness for
//! everyone else.
//!
//! Which calls may read from a replica is the API's to say (a method
//! declared `idempotency_level = NO_SIDE_EFFECTS`); the routing layer asks
//! [`Replicas`] for a pool per call and hands it to the service as a
//! [`ReadPool`]. A replica serves a call only while
//! - it answers, and its replay is within `READ_MAX_LAG` of the primary
//!   (lag is measured against samples of the primary's WAL position, taken
//!   as often as the replicas are polled);
//! - for a caller known by their token, it has replayed the caller's last
//!   write: after each write the caller made (and after a registration, for
//!   the new user) the primary's position (`pg_current_wal_insert_lsn()`,
//!   taken once the write ended) is kept on the primary in
//!   `write_positions`, where every conduit replica finds it.
//!
//! Otherwise the primary serves the read. Positions are polled, never
//! waited for: a writer's reads go to the primary until a poll has seen a
//! replica pass their write (at most one poll interval on a healthy
//! replica). Each URL must name one server: behind a load balancer, the
//! connection a read uses may reach another replica than the one polled.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::PgPool;

/// The pool a call declared free of side effects reads from, put in the
/// request's extensions by the routing layer; calls without one read from
/// the primary.
#[derive(Debug, Clone)]
pub struct ReadPool(pub PgPool);

/// `READ_DATABASE_URL` and its limits.
#[derive(Clone)]
pub struct ReadSettings {
    /// The replicas' URLs (credentials included: never printed); empty: no replica.
    pub urls: Vec<String>,
    /// Most replication lag a read accepts.
    pub max_lag: Duration,
    /// Connections per replica's pool.
    pub max_connections: u32,
}

impl std::fmt::Debug for ReadSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadSettings")
            .field("replicas", &self.urls.len())
            .field("max_lag", &self.max_lag)
            .field("max_connections", &self.max_connections)
            .finish()
    }
}

/// Why a read went where it went (the metrics' `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// A replica that passed every condition.
    Replica,
    /// Every replica is down or not a standby.
    Down,
    /// Every answering replica lags more than `READ_MAX_LAG`.
    Lagging,
    /// No answering replica has replayed the caller's writes yet.
    OwnWrites,
    /// The caller's position could not be read.
    PositionUnknown,
}

impl Reason {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Replica => "replica",
            Self::Down => "replica_down",
            Self::Lagging => "replica_lagging",
            Self::OwnWrites => "own_writes",
            Self::PositionUnknown => "position_unknown",
        }
    }
}

/// Where one read goes.
#[derive(Debug, Clone)]
pub struct Route {
    /// The replica's pool, or `None` for the primary.
    pub replica: Option<PgPool>,
    /// Why.
    pub reason: Reason,
    /// How far the chosen replica had replayed when last polled.
    pub replayed: u64,
}

/// On an answer read from a replica: how far that replica had replayed,
/// for the response cache, which keeps such an answer only if it saw every
/// write that cleared the cache before it ([`ReadFrom::has_writes_before`]).
#[derive(Debug, Clone)]
pub struct ReadFrom {
    replicas: Replicas,
    replayed: u64,
}

impl ReadFrom {
    /// Whether the replica had replayed every write committed before
    /// `instant`: it had reached the primary's position at a sample taken
    /// at or after it (no such sample yet: not known to).
    pub fn has_writes_before(&self, instant: Instant) -> bool {
        let samples = self.replicas.0.samples.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        samples.iter().find(|(at, _)| *at >= instant).is_some_and(|(_, position)| self.replayed >= *position)
    }
}

/// One replica and what its last poll found.
struct Replica {
    pool: PgPool,
    up: AtomicBool,
    /// `pg_last_wal_replay_lsn()`, as a byte position.
    replayed: AtomicU64,
    /// When the primary was at the newest of its sampled positions that
    /// this replica had replayed at its last poll, in microseconds after
    /// [`Inner::base`]; `u64::MAX` unknown. The replica holds everything the
    /// primary had then: its data are at most that old, however long ago
    /// the poll was.
    caught_up_to: AtomicU64,
}

struct Inner {
    primary: PgPool,
    replicas: Vec<Replica>,
    max_lag: Duration,
    interval: Duration,
    next: AtomicUsize,
    /// The instants above count from here.
    base: Instant,
    /// The primary's WAL position, sampled at each poll, oldest first.
    samples: Mutex<VecDeque<(Instant, u64)>>,
}

/// The replicas of one primary, and what is known of how far each has
/// replayed.
#[derive(Clone)]
pub struct Replicas(Arc<Inner>);

impl std::fmt::Debug for Replicas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replicas").field("count", &self.0.replicas.len()).finish_non_exhaustive()
    }
}

/// Longest a poll may wait for one server.
const POLL_TIMEOUT: Duration = Duration::from_secs(1);

/// Longest a read waits for a replica's connection: a replica that stopped
/// answering costs a call this much before the next poll leaves it out.
const REPLICA_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(1);

/// The primary's position, and with it a heartbeat.
///
/// The position is where the next WAL record goes (`pg_current_wal_insert_lsn`),
/// so it is past the commit of every transaction that committed before,
/// even one that committed without waiting for its WAL to be written
/// (`synchronous_commit = off`). The primary writes complete WAL pages in
/// the background and the rest only when a commit needs it, so after its
/// last commit it may have written WAL only up to the middle of a record
/// no replica can replay yet, and an idle primary's replicas would look
/// behind it for as long as it stays idle. One commit per poll interval,
/// shared by every conduit process (the others find the row fresh and
/// change nothing), writes it out.
const PRIMARY_POSITION: &str = "WITH beat AS (UPDATE read_heartbeat SET at = now() \
     WHERE at < now() - make_interval(secs => $1) RETURNING 1) \
     SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::int8 FROM (SELECT count(*) FROM beat) AS beaten";

/// A replica's replay position, `NULL` unless it is a standby in recovery
/// (a promoted one replicates nothing).
const REPLAY_POSITION: &str =
    "SELECT CASE WHEN pg_is_in_recovery() THEN (pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::int8 END";

impl Replicas {
    /// The replicas in `settings` of the primary `primary`, connected
    /// lazily (a replica down at start-up is a replica down, not a failed
    /// start); `None` when there are none.
    pub fn new(
        primary: PgPool,
        settings: &ReadSettings,
        acquire_timeout: Duration,
    ) -> Result<Option<Self>, sqlx::Error> {
        if settings.urls.is_empty() {
            return Ok(None);
        }
        let acquire_timeout = acquire_timeout.min(REPLICA_ACQUIRE_TIMEOUT);
        let replicas = settings
            .urls
            .iter()
            .map(|url| {
                Ok(Replica {
                    pool: super::connect_lazy(url, settings.max_connections, acquire_timeout)?,
                    up: AtomicBool::new(false),
                    replayed: AtomicU64::new(0),
                    caught_up_to: AtomicU64::new(u64::MAX),
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        // Several polls within the lag allowed, but not a busy loop.
        let interval = (settings.max_lag / 4).clamp(Duration::from_millis(20), Duration::from_millis(500));
        Ok(Some(Self(Arc::new(Inner {
            primary,
            replicas,
            max_lag: settings.max_lag,
            interval,
            next: AtomicUsize::new(0),
            base: Instant::now(),
            samples: Mutex::new(VecDeque::new()),
        }))))
    }

    /// Polls the primary's position and every replica's replay until the
    /// primary's pool closes, reporting each replica to `metrics`; then
    /// closes the replicas' pools.
    pub async fn watch(self, metrics: crate::observability::metrics::Metrics) {
        let mut tick = tokio::time::interval(self.0.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !self.0.primary.is_closed() {
            tick.tick().await;
            self.poll().await;
            for (index, lag) in self.lags().into_iter().enumerate() {
                metrics.replica(index, lag);
            }
        }
        for replica in &self.0.replicas {
            replica.pool.close().await;
        }
    }

    /// One poll: the primary's position first, so that each replica's
    /// replay, read after it, is compared with a sample no newer than itself;
    /// the replicas at once, so that one that hangs delays none of the others.
    async fn poll(&self) {
        // The instant before asking: the position answered is at least the
        // primary's at this instant (taken after, a write committed meanwhile
        // could look older than the sample).
        let asked = Instant::now();
        let position = sqlx::query_scalar::<_, i64>(PRIMARY_POSITION).bind(self.0.interval.as_secs_f64());
        if let Ok(Ok(position)) = tokio::time::timeout(POLL_TIMEOUT, position.fetch_one(&self.0.primary)).await {
            let keep = (self.0.max_lag * 2).max(Duration::from_secs(2));
            let mut samples = self.0.samples.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            samples.push_back((asked, position as u64));
            while samples.front().is_some_and(|(at, _)| asked.duration_since(*at) > keep) {
                samples.pop_front();
            }
        }
        futures_util::future::join_all(self.0.replicas.iter().map(|replica| async move {
            let replay = sqlx::query_scalar::<_, Option<i64>>(REPLAY_POSITION).fetch_one(&replica.pool);
            match tokio::time::timeout(POLL_TIMEOUT, replay).await {
                Ok(Ok(Some(replayed))) => {
                    let replayed = replayed as u64;
                    replica.replayed.store(replayed, Ordering::Relaxed);
                    replica.caught_up_to.store(self.caught_up_to(replayed), Ordering::Relaxed);
                    replica.up.store(true, Ordering::Relaxed);
                }
                // Not in recovery: the URL names a primary (or a promoted
                // standby), which replicates nothing.
                Ok(Ok(None)) | Ok(Err(_)) | Err(_) => {
                    replica.up.store(false, Ordering::Relaxed);
                    replica.caught_up_to.store(u64::MAX, Ordering::Relaxed);
                }
            }
        }))
        .await;
    }

    /// When the primary was at the newest sampled position `replayed` has
    /// reached (microseconds after `base`; `u64::MAX` when it has reached
    /// none of the samples kept).
    fn caught_up_to(&self, replayed: u64) -> u64 {
        let samples = self.0.samples.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        samples
            .iter()
            .rev()
            .find(|(_, position)| *position <= replayed)
            .map_or(u64::MAX, |(at, _)| at.duration_since(self.0.base).as_micros() as u64)
    }

    /// How old a replica's data may be now: since the instant it had caught
    /// up to (`None` when unknown).
    fn staleness(&self, replica: &Replica) -> Option<Duration> {
        match replica.caught_up_to.load(Ordering::Relaxed) {
            u64::MAX => None,
            micros => Some(self.0.base.elapsed().saturating_sub(Duration::from_micros(micros))),
        }
    }

    /// The replication lag of each replica as a read would see it now,
    /// `None` while it is down (one behind every sample kept counts as
    /// that far behind).
    pub fn lags(&self) -> Vec<Option<Duration>> {
        let kept = self
            .0
            .samples
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .front()
            .map(|(at, _)| at.elapsed());
        self.0
            .replicas
            .iter()
            .map(|r| r.up.load(Ordering::Relaxed).then(|| self.staleness(r).or(kept).unwrap_or_default()))
            .collect()
    }

    /// Where an anonymous read goes.
    pub fn for_anyone(&self) -> Route {
        self.choose(None)
    }

    /// Where a read by `user` goes: a replica only once it has replayed
    /// their last write (looked up on the primary only when some replica
    /// could serve at all).
    pub async fn for_writer(&self, user: i64) -> Route {
        let route = self.choose(None);
        if route.replica.is_none() {
            return route;
        }
        let lookup = sqlx::query_scalar::<_, i64>("SELECT lsn FROM write_positions WHERE user_id = $1")
            .bind(user)
            .fetch_optional(&self.0.primary);
        match tokio::time::timeout(REPLICA_ACQUIRE_TIMEOUT, lookup).await {
            Ok(Ok(lsn)) => self.choose(Some(lsn.unwrap_or(0).max(0) as u64)),
            Ok(Err(_)) | Err(_) => Route { replica: None, reason: Reason::PositionUnknown, replayed: 0 },
        }
    }

    /// A replica within the lag allowed that has replayed `needs` (a
    /// writer's position), in turn; else the primary and why. The reason
    /// reported is the closest any replica came: own writes, then lag,
    /// then down.
    fn choose(&self, needs: Option<u64>) -> Route {
        let mut reason = Reason::Down;
        let count = self.0.replicas.len();
        let start = self.0.next.fetch_add(1, Ordering::Relaxed);
        for offset in 0..count {
            let replica = &self.0.replicas[start.wrapping_add(offset) % count];
            if !replica.up.load(Ordering::Relaxed) {
                continue;
            }
            if self.staleness(replica).is_none_or(|stale| stale > self.0.max_lag) {
                if reason == Reason::Down {
                    reason = Reason::Lagging;
                }
                continue;
            }
            let replayed = replica.replayed.load(Ordering::Relaxed);
            if needs.is_some_and(|lsn| replayed < lsn) {
                reason = Reason::OwnWrites;
                continue;
            }
            return Route { replica: Some(replica.pool.clone()), reason: Reason::Replica, replayed };
        }
        Route { replica: None, reason, replayed: 0 }
    }

    /// What an answer read through `route` carries for the response cache.
    pub fn read_from(&self, route: &Route) -> Option<ReadFrom> {
        route.replica.as_ref().map(|_| ReadFrom { replicas: self.clone(), replayed: route.replayed })
    }

    /// Keeps `user`'s position after a write of theirs, where every
    /// conduit replica reads it: the primary's insert position, past the
    /// write's commit record. Never lowered by a slower concurrent upsert.
    pub async fn wrote(&self, user: i64) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO write_positions (user_id, lsn) \
             VALUES ($1, (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::int8) \
             ON CONFLICT (user_id) DO UPDATE SET lsn = greatest(write_positions.lsn, EXCLUDED.lsn)",
        )
        .bind(user)
        .execute(&self.0.primary)
        .await
        .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replicas(max_lag: Duration) -> Replicas {
        let settings =
            ReadSettings { urls: vec!["postgres://replica.invalid/db".to_owned()], max_lag, max_connections: 1 };
        let primary =
            sqlx::postgres::PgPoolOptions::new().connect_lazy("postgres://primary.invalid/db").expect("a valid URL");
        Replicas::new(primary, &settings, Duration::from_secs(1)).unwrap().unwrap()
    }

    #[tokio::test]
    async fn a_replica_serves_only_within_the_lag_and_past_the_writers_position() {
        let replicas = replicas(Duration::from_millis(100));
        assert_eq!(replicas.for_anyone().reason, Reason::Down, "never polled: not known to answer");
        let replica = &replicas.0.replicas[0];
        replica.up.store(true, Ordering::Relaxed);
        replica.replayed.store(100, Ordering::Relaxed);
        assert_eq!(replicas.for_anyone().reason, Reason::Lagging, "caught up to nothing known");
        // Instants after the replicas' base, as every sample is.
        tokio::time::sleep(Duration::from_millis(350)).await;
        let caught_up = |ago: Duration| replicas.0.base.elapsed().saturating_sub(ago).as_micros() as u64;
        replica.caught_up_to.store(caught_up(Duration::from_millis(300)), Ordering::Relaxed);
        assert_eq!(replicas.for_anyone().reason, Reason::Lagging);
        replica.caught_up_to.store(caught_up(Duration::from_millis(10)), Ordering::Relaxed);
        assert_eq!(replicas.for_anyone().reason, Reason::Replica);
        assert_eq!(replicas.choose(Some(100)).reason, Reason::Replica);
        assert_eq!(replicas.choose(Some(101)).reason, Reason::OwnWrites, "the writer's last write not replayed");
    }

    #[tokio::test]
    async fn a_replica_is_as_old_as_the_newest_sample_it_has_reached() {
        let replicas = replicas(Duration::from_secs(1));
        assert_eq!(replicas.caught_up_to(10), u64::MAX, "no sample yet");
        tokio::time::sleep(Duration::from_millis(350)).await;
        let now = Instant::now();
        {
            let mut samples = replicas.0.samples.lock().unwrap();
            samples.push_back((now - Duration::from_millis(300), 10));
            samples.push_back((now - Duration::from_millis(200), 20));
            samples.push_back((now - Duration::from_millis(100), 30));
        }
        let age = |replayed| {
            Duration::from_micros(replicas.0.base.elapsed().as_micros() as u64 - replicas.caught_up_to(replayed))
        };
        assert!(age(30) >= Duration::from_millis(100) && age(30) < Duration::from_millis(200), "{:?}", age(30));
        assert!(age(25) >= Duration::from_millis(200) && age(25) < Duration::from_millis(300), "{:?}", age(25));
        assert_eq!(replicas.caught_up_to(5), u64::MAX, "behind every sample kept");
    }
}
