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
//! - for an authenticated caller, it has replayed the caller's last write:
//!   after each successful write the caller's commit position
//!   (`pg_current_wal_lsn()`, taken once the write committed) is kept on the
//!   primary in `write_positions`, where every conduit replica finds it, and
//!   it has replayed a commit made after the caller's token was issued (the
//!   write that made the session: registration or login, whose caller was
//!   not known yet).
//!
//! Otherwise the primary serves the read. Positions are polled, never
//! waited for: a writer's reads go to the primary until a poll has seen a
//! replica pass their write (at most one poll interval on a healthy
//! replica).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::PgPool;

use crate::config::Secret;

/// The pool a call declared free of side effects reads from, put in the
/// request's extensions by the routing layer; calls without one read from
/// the primary.
#[derive(Debug, Clone)]
pub struct ReadPool(pub PgPool);

/// `READ_DATABASE_URL` and its limits.
#[derive(Debug, Clone)]
pub struct ReadSettings {
    /// The replicas' URLs; empty: no replica.
    pub urls: Vec<Secret>,
    /// Most replication lag a read accepts.
    pub max_lag: Duration,
    /// Connections per replica's pool.
    pub max_connections: u32,
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

/// What a writer's reads must see: their last write, and the session
/// their token began.
#[derive(Debug, Clone, Copy)]
struct Needs {
    lsn: u64,
    /// Microseconds since the Unix epoch.
    commit_after: i64,
}

struct Replica {
    pool: PgPool,
    up: AtomicBool,
    /// `pg_last_wal_replay_lsn()`, as a byte position.
    replayed: AtomicU64,
    /// `pg_last_xact_replay_timestamp()`, microseconds since the Unix epoch.
    replayed_commit: AtomicU64,
    /// Replication lag in microseconds; `u64::MAX` unknown.
    lag_micros: AtomicU64,
}

struct Inner {
    primary: PgPool,
    replicas: Vec<Replica>,
    max_lag: Duration,
    interval: Duration,
    next: AtomicUsize,
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

/// The primary's position and a replica's replay, as byte positions and
/// microseconds (`pg_lsn` minus `0/0` is its byte position).
///
/// With the position, a heartbeat: the primary writes complete WAL pages
/// in the background and the rest only when a commit needs it, so after
/// its last commit its written position can stay inside a record no
/// replica can replay yet (one begun on a page it wrote, ending on one it
/// did not), and an idle primary's replicas would look behind it for as
/// long as it stays idle. One commit per poll interval, shared by every
/// conduit process (the others find the row fresh and change nothing),
/// writes that record out.
const PRIMARY_POSITION: &str = "WITH beat AS (UPDATE read_heartbeat SET at = now() \
     WHERE at < now() - make_interval(secs => $1) RETURNING 1) \
     SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::int8 FROM (SELECT count(*) FROM beat) AS beaten";
const REPLAY_POSITION: &str = "SELECT (pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::int8, \
     (extract(epoch FROM pg_last_xact_replay_timestamp()) * 1000000)::int8";

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
        let replicas = settings
            .urls
            .iter()
            .map(|url| {
                Ok(Replica {
                    pool: super::connect_lazy(url.expose(), settings.max_connections, acquire_timeout)?,
                    up: AtomicBool::new(false),
                    replayed: AtomicU64::new(0),
                    replayed_commit: AtomicU64::new(0),
                    lag_micros: AtomicU64::new(u64::MAX),
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
            samples: Mutex::new(VecDeque::new()),
        }))))
    }

    /// Polls the primary's position and every replica's replay until the
    /// primary's pool closes, reporting each replica to `metrics`.
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
    }

    /// One poll: the primary's position first, so that a replica's replay
    /// read after it is compared with a sample no newer than itself.
    async fn poll(&self) {
        let position = sqlx::query_scalar::<_, i64>(PRIMARY_POSITION).bind(self.0.interval.as_secs_f64());
        let primary = tokio::time::timeout(POLL_TIMEOUT, position.fetch_one(&self.0.primary));
        if let Ok(Ok(position)) = primary.await {
            let now = Instant::now();
            let keep = (self.0.max_lag * 2).max(Duration::from_secs(2));
            let mut samples = self.0.samples.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            samples.push_back((now, position as u64));
            while samples.front().is_some_and(|(at, _)| now.duration_since(*at) > keep) {
                samples.pop_front();
            }
        }
        for replica in &self.0.replicas {
            let replay = sqlx::query_as::<_, (Option<i64>, Option<i64>)>(REPLAY_POSITION).fetch_one(&replica.pool);
            match tokio::time::timeout(POLL_TIMEOUT, replay).await {
                Ok(Ok((Some(replayed), commit))) => {
                    replica.replayed.store(replayed as u64, Ordering::Relaxed);
                    replica.replayed_commit.store(commit.unwrap_or(0).max(0) as u64, Ordering::Relaxed);
                    replica.lag_micros.store(self.lag(replayed as u64), Ordering::Relaxed);
                    replica.up.store(true, Ordering::Relaxed);
                }
                // Not in recovery: the URL names a primary, which replicates nothing.
                Ok(Ok((None, _))) | Ok(Err(_)) | Err(_) => {
                    replica.up.store(false, Ordering::Relaxed);
                    replica.lag_micros.store(u64::MAX, Ordering::Relaxed);
                }
            }
        }
    }

    /// How long the primary has held WAL past `replayed`: since the newest
    /// sample the replay had reached (zero when it has every sample).
    fn lag(&self, replayed: u64) -> u64 {
        let samples = self.0.samples.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match samples.back() {
            None => u64::MAX,
            Some((_, newest)) if replayed >= *newest => 0,
            Some(_) => samples
                .iter()
                .rev()
                .find(|(_, position)| *position <= replayed)
                .map_or(u64::MAX, |(at, _)| at.elapsed().as_micros() as u64),
        }
    }

    /// The replication lag of each replica, `None` while it is down (a
    /// replica behind every sample kept counts as that far behind).
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
            .map(|r| {
                r.up.load(Ordering::Relaxed).then(|| match r.lag_micros.load(Ordering::Relaxed) {
                    u64::MAX => kept.unwrap_or_default(),
                    micros => Duration::from_micros(micros),
                })
            })
            .collect()
    }

    /// Where an anonymous read goes.
    pub fn for_anyone(&self) -> Route {
        self.choose(None)
    }

    /// Where a read by `user` goes, whose token was issued at `since`
    /// (seconds since the Unix epoch).
    pub async fn for_writer(&self, user: i64, since: u64) -> Route {
        let lsn = sqlx::query_scalar::<_, i64>("SELECT lsn FROM write_positions WHERE user_id = $1")
            .bind(user)
            .fetch_optional(&self.0.primary)
            .await;
        match lsn {
            // A token's seconds are whole: its session may have committed
            // up to a second after `since`, clocks a little apart.
            Ok(lsn) => self.choose(Some(Needs {
                lsn: lsn.unwrap_or(0).max(0) as u64,
                commit_after: (since as i64 + 1).saturating_mul(1_000_000),
            })),
            Err(_) => Route { replica: None, reason: Reason::PositionUnknown, replayed: 0 },
        }
    }

    fn choose(&self, needs: Option<Needs>) -> Route {
        let max_lag = self.0.max_lag.as_micros() as u64;
        let mut reason = Reason::Down;
        let count = self.0.replicas.len();
        let start = self.0.next.fetch_add(1, Ordering::Relaxed);
        for offset in 0..count {
            let replica = &self.0.replicas[(start + offset) % count];
            if !replica.up.load(Ordering::Relaxed) {
                continue;
            }
            if replica.lag_micros.load(Ordering::Relaxed) > max_lag {
                reason = Reason::Lagging;
                continue;
            }
            if let Some(needs) = needs
                && (replica.replayed.load(Ordering::Relaxed) < needs.lsn
                    || (replica.replayed_commit.load(Ordering::Relaxed) as i64) < needs.commit_after)
            {
                reason = Reason::OwnWrites;
                continue;
            }
            let replayed = replica.replayed.load(Ordering::Relaxed);
            return Route { replica: Some(replica.pool.clone()), reason: Reason::Replica, replayed };
        }
        Route { replica: None, reason, replayed: 0 }
    }

    /// What an answer read through `route` carries for the response cache.
    pub fn read_from(&self, route: &Route) -> Option<ReadFrom> {
        route.replica.as_ref().map(|_| ReadFrom { replicas: self.clone(), replayed: route.replayed })
    }

    /// Keeps `user`'s position after a write of theirs committed, where
    /// every conduit replica reads it.
    pub async fn wrote(&self, user: i64) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO write_positions (user_id, lsn) VALUES ($1, (pg_current_wal_lsn() - '0/0'::pg_lsn)::int8) \
             ON CONFLICT (user_id) DO UPDATE SET lsn = EXCLUDED.lsn",
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
        let settings = ReadSettings {
            urls: vec![Secret::from("postgres://replica.invalid/db".to_owned())],
            max_lag,
            max_connections: 1,
        };
        let primary =
            sqlx::postgres::PgPoolOptions::new().connect_lazy("postgres://primary.invalid/db").expect("a valid URL");
        Replicas::new(primary, &settings, Duration::from_secs(1)).unwrap().unwrap()
    }

    #[tokio::test]
    async fn a_replica_serves_only_within_the_lag_and_past_the_writers_position() {
        let replicas = replicas(Duration::from_secs(1));
        assert_eq!(replicas.for_anyone().reason, Reason::Down, "never polled: not known to answer");
        let replica = &replicas.0.replicas[0];
        replica.up.store(true, Ordering::Relaxed);
        replica.replayed.store(100, Ordering::Relaxed);
        replica.replayed_commit.store(2_000_000, Ordering::Relaxed);
        replica.lag_micros.store(5_000_000, Ordering::Relaxed);
        assert_eq!(replicas.for_anyone().reason, Reason::Lagging);
        replica.lag_micros.store(1_000, Ordering::Relaxed);
        assert_eq!(replicas.for_anyone().reason, Reason::Replica);
        let own = |lsn, since: i64| replicas.choose(Some(Needs { lsn, commit_after: since * 1_000_000 })).reason;
        assert_eq!(own(100, 2), Reason::Replica);
        assert_eq!(own(101, 2), Reason::OwnWrites, "the writer's last write not replayed");
        assert_eq!(own(50, 3), Reason::OwnWrites, "no commit replayed since the session began");
    }

    #[tokio::test]
    async fn lag_is_the_age_of_the_newest_sample_the_replay_has_reached() {
        let replicas = replicas(Duration::from_secs(1));
        assert_eq!(replicas.lag(10), u64::MAX, "no sample yet");
        let now = Instant::now();
        {
            let mut samples = replicas.0.samples.lock().unwrap();
            samples.push_back((now - Duration::from_millis(300), 10));
            samples.push_back((now - Duration::from_millis(200), 20));
            samples.push_back((now - Duration::from_millis(100), 30));
        }
        assert_eq!(replicas.lag(30), 0, "caught up");
        let lag = Duration::from_micros(replicas.lag(25));
        assert!(lag >= Duration::from_millis(200) && lag < Duration::from_millis(300), "{lag:?}");
        assert_eq!(replicas.lag(5), u64::MAX, "behind every sample kept");
    }
}
