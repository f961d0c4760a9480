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
//! Otherwise the primary serves the read, and a read a replica fails is
//! read again from the primary (it changes nothing).
//!
//! Positions are polled, never waited for: a writer's reads go to the
//! primary until a poll has seen a replica pass their write (at most one
//! poll interval on a healthy replica).
//!
//! What a poll learns is true of a server, and a URL may lead to several:
//! a load-balanced read-only endpoint (CloudNativePG's `-ro` Service,
//! HAProxy routing by Patroni's `/replica` check) hands each new connection
//! to whichever standby it likes. So the unit routed and polled is one
//! connection ([`Slot`]: a pool of one per connection allowed), and every
//! poll of a slot reads the replay position of the very server that
//! slot's connection reaches. A slot whose connection is replaced learns
//! the new server's position as it connects, and a read takes the slot's
//! connection only if its server is known to have replayed as far as the
//! read was routed on; else the connection is opened again (perhaps to
//! another standby) until the read's wait ends and the primary serves it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
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
    /// The replicas' URLs (credentials included: never printed), each one
    /// server or a load-balanced endpoint; empty: no replica.
    pub urls: Vec<String>,
    /// Most replication lag a read accepts.
    pub max_lag: Duration,
    /// Connections per URL, each routed and polled on its own.
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
    /// The replica chosen failed the read, which the primary then served
    /// (counted besides [`Reason::Replica`]).
    ReplicaFailed,
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
            Self::ReplicaFailed => "replica_failed",
        }
    }
}

/// Where one read goes.
#[derive(Debug, Clone)]
pub struct Route {
    /// The replica connection's pool, or `None` for the primary.
    pub replica: Option<PgPool>,
    /// Which slot that pool is.
    slot: usize,
    /// Why.
    pub reason: Reason,
    /// How far the chosen connection's server had replayed when last looked at.
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
        let samples = self.replicas.0.timeline.samples.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        samples.iter().find(|(at, _)| *at >= instant).is_some_and(|(_, position)| self.replayed >= *position)
    }
}

/// The primary's WAL position, sampled at each poll.
struct Timeline {
    /// The instants kept as numbers count from here.
    base: Instant,
    /// Oldest first.
    samples: Mutex<VecDeque<(Instant, u64)>>,
}

impl Timeline {
    /// When the primary was at the newest sampled position `replayed` has
    /// reached (microseconds after `base`; `u64::MAX` when it has reached
    /// none of the samples kept).
    fn caught_up_to(&self, replayed: u64) -> u64 {
        let samples = self.samples.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        samples
            .iter()
            .rev()
            .find(|(_, position)| *position <= replayed)
            .map_or(u64::MAX, |(at, _)| at.duration_since(self.base).as_micros() as u64)
    }
}

/// What one look at the server a slot's connection reaches found.
#[derive(Debug, Clone, Copy)]
struct Look {
    up: bool,
    /// `pg_last_wal_replay_lsn()`, as a byte position (0 while down).
    replayed: u64,
    /// When the primary was at the newest of its sampled positions that
    /// the server had replayed, in microseconds after [`Timeline::base`];
    /// `u64::MAX` unknown. The server holds everything the primary had
    /// then: its data are at most that old, however long ago the look was.
    caught_up_to: u64,
}

impl Look {
    const DOWN: Self = Self { up: false, replayed: 0, caught_up_to: u64::MAX };
}

/// The last [`Look`] of a slot, kept whole: a read must never pair one
/// server's position with another's freshness.
struct Seen(Mutex<Look>);

impl Seen {
    fn new() -> Self {
        Self(Mutex::new(Look::DOWN))
    }

    fn look(&self) -> Look {
        *self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn set(&self, look: Look) {
        *self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = look;
    }

    /// Keeps a look's answer: a replay position, or `None` for a server
    /// that is not a standby in recovery or did not answer.
    fn record(&self, replayed: Option<u64>, timeline: &Timeline) {
        self.set(match replayed {
            Some(replayed) => Look { up: true, replayed, caught_up_to: timeline.caught_up_to(replayed) },
            None => Look::DOWN,
        });
    }
}

/// One connection to a replica URL: a pool of one, so that what is known
/// of its server is known of the connection a read through it uses.
struct Slot {
    /// Which URL of `READ_DATABASE_URL`.
    url: usize,
    pool: PgPool,
    seen: Arc<Seen>,
    /// Reads routed to it and not yet answered.
    reading: AtomicUsize,
}

/// A read in progress on a slot, counted until dropped.
struct SlotUse {
    replicas: Replicas,
    slot: usize,
}

impl Drop for SlotUse {
    fn drop(&mut self) {
        self.replicas.0.slots[self.slot].reading.fetch_sub(1, Ordering::Relaxed);
    }
}

struct Inner {
    primary: PgPool,
    slots: Vec<Slot>,
    urls: usize,
    max_lag: Duration,
    interval: Duration,
    next: AtomicUsize,
    timeline: Arc<Timeline>,
}

/// The replicas of one primary, and what is known of how far each has
/// replayed.
#[derive(Clone)]
pub struct Replicas(Arc<Inner>);

impl std::fmt::Debug for Replicas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replicas").field("urls", &self.0.urls).finish_non_exhaustive()
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

tokio::task_local! {
    /// The replay position the read in progress was routed on.
    static ROUTED_ON: u64;
}

/// The pool of one connection of a slot. As a connection opens, its
/// server's replay position is read and kept. A read routed on a position
/// (see [`Replicas::read_through`]) takes the connection only if its server is known to
/// have replayed that far: the connection may have been replaced since
/// the read was routed (by the poll, or for another read), and may now
/// reach another standby. Refused, an idle connection is closed and a new
/// one opened, until one reaches a server far enough or the read's wait
/// ends (and the primary serves it). The poll takes whatever it reaches.
fn slot_pool(
    url: &str,
    acquire_timeout: Duration,
    seen: Arc<Seen>,
    timeline: Arc<Timeline>,
) -> Result<PgPool, sqlx::Error> {
    let options = super::planned_once(url)?;
    let seen_on_acquire = seen.clone();
    Ok(super::pool_options(1, acquire_timeout)
        .after_connect(move |connection, _| {
            let (seen, timeline) = (seen.clone(), timeline.clone());
            Box::pin(async move {
                let replayed = sqlx::query_scalar::<_, Option<i64>>(REPLAY_POSITION)
                    .fetch_one(&mut *connection)
                    .await?
                    .map(|replayed| replayed as u64);
                seen.record(replayed, &timeline);
                let Ok(routed_on) = ROUTED_ON.try_with(|position| *position) else {
                    return Ok(());
                };
                match replayed {
                    None => Err(sqlx::Error::Protocol("the read URL reached a server that is not a standby".into())),
                    Some(replayed) if replayed < routed_on => Err(sqlx::Error::Protocol(format!(
                        "the read URL reached a standby at {replayed}, behind the {routed_on} the read was routed on"
                    ))),
                    Some(_) => Ok(()),
                }
            })
        })
        .before_acquire(move |connection, meta| {
            let seen = seen_on_acquire.clone();
            Box::pin(async move {
                super::check_if_idle(connection, meta.idle_for).await?;
                let routed_on = ROUTED_ON.try_with(|position| *position).unwrap_or(0);
                Ok(routed_on <= seen.look().replayed)
            })
        })
        .connect_lazy_with(options))
}

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
        let timeline = Arc::new(Timeline { base: Instant::now(), samples: Mutex::new(VecDeque::new()) });
        let mut slots = Vec::new();
        for (url_index, url) in settings.urls.iter().enumerate() {
            for _ in 0..settings.max_connections.max(1) {
                let seen = Arc::new(Seen::new());
                let pool = slot_pool(url, acquire_timeout, seen.clone(), timeline.clone())?;
                slots.push(Slot { url: url_index, pool, seen, reading: AtomicUsize::new(0) });
            }
        }
        // Several polls within the lag allowed, but not a busy loop.
        let interval = (settings.max_lag / 4).clamp(Duration::from_millis(20), Duration::from_millis(500));
        Ok(Some(Self(Arc::new(Inner {
            primary,
            slots,
            urls: settings.urls.len(),
            max_lag: settings.max_lag,
            interval,
            next: AtomicUsize::new(0),
            timeline,
        }))))
    }

    /// Polls the primary's position and every slot's server until the
    /// primary's pool closes, reporting each replica URL to `metrics`;
    /// then closes the slots' pools.
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
        for slot in &self.0.slots {
            slot.pool.close().await;
        }
    }

    /// One poll: the primary's position first, so that each server's
    /// replay, read after it, is compared with a sample no newer than itself;
    /// the slots at once, so that one that hangs delays none of the others.
    async fn poll(&self) {
        // The instant before asking: the position answered is at least the
        // primary's at this instant (taken after, a write committed meanwhile
        // could look older than the sample).
        let asked = Instant::now();
        let position = sqlx::query_scalar::<_, i64>(PRIMARY_POSITION).bind(self.0.interval.as_secs_f64());
        if let Ok(Ok(position)) = tokio::time::timeout(POLL_TIMEOUT, position.fetch_one(&self.0.primary)).await {
            let keep = (self.0.max_lag * 2).max(Duration::from_secs(2));
            let mut samples = self.0.timeline.samples.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            samples.push_back((asked, position as u64));
            while samples.front().is_some_and(|(at, _)| asked.duration_since(*at) > keep) {
                samples.pop_front();
            }
        }
        futures_util::future::join_all(self.0.slots.iter().map(|slot| async move {
            // Kept while the connection is held: a connection that replaced
            // it meanwhile would otherwise have its server's look overwritten.
            let look = async {
                let mut connection = slot.pool.acquire().await?;
                let replayed =
                    sqlx::query_scalar::<_, Option<i64>>(REPLAY_POSITION).fetch_one(&mut *connection).await?;
                slot.seen.record(replayed.map(|replayed| replayed as u64), &self.0.timeline);
                Ok::<_, sqlx::Error>(())
            };
            if !matches!(tokio::time::timeout(POLL_TIMEOUT, look).await, Ok(Ok(()))) {
                slot.seen.record(None, &self.0.timeline);
            }
        }))
        .await;
    }

    /// How old a server's data may be now: since the instant it had caught
    /// up to (`None` when unknown).
    fn staleness(&self, look: &Look) -> Option<Duration> {
        match look.caught_up_to {
            u64::MAX => None,
            micros => Some(self.0.timeline.base.elapsed().saturating_sub(Duration::from_micros(micros))),
        }
    }

    /// The replication lag of each replica URL as a read would see it now
    /// (the most of its connections' servers), `None` while none of them
    /// answers (one behind every sample kept counts as that far behind).
    pub fn lags(&self) -> Vec<Option<Duration>> {
        let kept = self
            .0
            .timeline
            .samples
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .front()
            .map(|(at, _)| at.elapsed());
        let mut lags = vec![None; self.0.urls];
        for slot in &self.0.slots {
            let look = slot.seen.look();
            if !look.up {
                continue;
            }
            let lag = self.staleness(&look).or(kept).unwrap_or_default();
            lags[slot.url] = Some(lags[slot.url].map_or(lag, |most: Duration| most.max(lag)));
        }
        lags
    }

    /// Where an anonymous read goes.
    pub fn for_anyone(&self) -> Route {
        self.choose(None)
    }

    /// Where a read that must see the primary's state at `position` (a
    /// client's consistency token, [`WAL_POSITION`]) goes: no lookup.
    pub fn for_position(&self, position: u64) -> Route {
        self.choose(Some(position))
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
            Ok(Err(_)) | Err(_) => Route { replica: None, slot: 0, reason: Reason::PositionUnknown, replayed: 0 },
        }
    }

    /// A replica connection within the lag allowed whose server has
    /// replayed `needs` (a writer's position): an idle one, in turn, else
    /// the one with the fewest reads waiting; else the primary and why. The
    /// reason reported is the closest any came: own writes, then lag, then
    /// down.
    fn choose(&self, needs: Option<u64>) -> Route {
        let mut reason = Reason::Down;
        let mut least: Option<(usize, usize, u64)> = None;
        let count = self.0.slots.len();
        let start = self.0.next.fetch_add(1, Ordering::Relaxed);
        for offset in 0..count {
            let slot = &self.0.slots[start.wrapping_add(offset) % count];
            let look = slot.seen.look();
            if !look.up {
                continue;
            }
            if self.staleness(&look).is_none_or(|stale| stale > self.0.max_lag) {
                if reason == Reason::Down {
                    reason = Reason::Lagging;
                }
                continue;
            }
            let replayed = look.replayed;
            if needs.is_some_and(|lsn| replayed < lsn) {
                reason = Reason::OwnWrites;
                continue;
            }
            let index = start.wrapping_add(offset) % count;
            let reading = slot.reading.load(Ordering::Relaxed);
            if reading == 0 && slot.pool.num_idle() > 0 {
                return self.route_to(index, replayed);
            }
            if least.is_none_or(|(_, fewest, _)| reading < fewest) {
                least = Some((index, reading, replayed));
            }
        }
        match least {
            // Every fit connection is in use: queue where fewest wait.
            Some((index, _, replayed)) => self.route_to(index, replayed),
            None => Route { replica: None, slot: 0, reason, replayed: 0 },
        }
    }

    fn route_to(&self, slot: usize, replayed: u64) -> Route {
        Route { replica: Some(self.0.slots[slot].pool.clone()), slot, reason: Reason::Replica, replayed }
    }

    /// Runs `read`, a call routed through `route`: counted as waiting on
    /// its slot meanwhile (for [`Replicas::choose`]), and taking the slot's
    /// connection only from a server that has replayed as far as the route
    /// assumed (see [`slot_pool`]).
    pub async fn read_through<F: std::future::Future>(&self, route: &Route, read: F) -> F::Output {
        let _waiting = self.enter(route);
        ROUTED_ON.scope(route.replayed, read).await
    }

    /// Counts a read routed through `route` as waiting on its slot until
    /// the guard is dropped; nothing for the primary.
    fn enter(&self, route: &Route) -> Option<SlotUse> {
        route.replica.as_ref()?;
        self.0.slots[route.slot].reading.fetch_add(1, Ordering::Relaxed);
        Some(SlotUse { replicas: self.clone(), slot: route.slot })
    }

    /// What an answer read through `route` carries for the response cache.
    pub fn read_from(&self, route: &Route) -> Option<ReadFrom> {
        route.replica.as_ref().map(|_| ReadFrom { replicas: self.clone(), replayed: route.replayed })
    }

    /// Keeps `user`'s position after a write of theirs, where every
    /// conduit replica reads it: the primary's insert position, past the
    /// write's commit record. Never lowered by a slower concurrent upsert.
    /// Answers the position kept, which the client may carry instead.
    pub async fn wrote(&self, user: i64) -> Result<u64, sqlx::Error> {
        sqlx::query_scalar::<_, i64>(
            "INSERT INTO write_positions (user_id, lsn) \
             VALUES ($1, (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::int8) \
             ON CONFLICT (user_id) DO UPDATE SET lsn = greatest(write_positions.lsn, EXCLUDED.lsn) \
             RETURNING lsn",
        )
        .bind(user)
        .fetch_one(&self.0.primary)
        .await
        .map(|lsn| lsn.max(0) as u64)
    }
}

/// The header (gRPC metadata) that carries a consistency token: a WAL
/// position in PostgreSQL's notation (`16/B374D848`). Answers to writes
/// carry the writer's position; a read that carries one is served only by
/// a replica that has replayed that far, with no lookup of the caller's
/// position.
pub const WAL_POSITION: &str = "x-wal-position";

/// `position` in PostgreSQL's `pg_lsn` notation.
pub fn format_position(position: u64) -> String {
    format!("{:X}/{:X}", position >> 32, position & 0xFFFF_FFFF)
}

/// A position in PostgreSQL's `pg_lsn` notation (`16/B374D848`).
pub fn parse_position(text: &str) -> Option<u64> {
    let (high, low) = text.split_once('/')?;
    let part = |hex: &str| {
        (!hex.is_empty() && hex.len() <= 8 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| u64::from_str_radix(hex, 16).ok())
            .flatten()
    };
    Some(part(high)? << 32 | part(low)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replicas(max_lag: Duration) -> Replicas {
        replicas_of(1, 1, max_lag)
    }

    fn replicas_of(urls: usize, max_connections: u32, max_lag: Duration) -> Replicas {
        let urls = (0..urls).map(|n| format!("postgres://replica{n}.invalid/db")).collect();
        let settings = ReadSettings { urls, max_lag, max_connections };
        let primary =
            sqlx::postgres::PgPoolOptions::new().connect_lazy("postgres://primary.invalid/db").expect("a valid URL");
        Replicas::new(primary, &settings, Duration::from_secs(1)).unwrap().unwrap()
    }

    #[tokio::test]
    async fn a_replica_serves_only_within_the_lag_and_past_the_writers_position() {
        let replicas = replicas(Duration::from_millis(100));
        assert_eq!(replicas.for_anyone().reason, Reason::Down, "never polled: not known to answer");
        let replica = &replicas.0.slots[0].seen;
        replica.set(Look { up: true, replayed: 100, caught_up_to: u64::MAX });
        assert_eq!(replicas.for_anyone().reason, Reason::Lagging, "caught up to nothing known");
        // Instants after the replicas' base, as every sample is.
        tokio::time::sleep(Duration::from_millis(350)).await;
        let caught_up = |ago: Duration| replicas.0.timeline.base.elapsed().saturating_sub(ago).as_micros() as u64;
        replica.set(Look { up: true, replayed: 100, caught_up_to: caught_up(Duration::from_millis(300)) });
        assert_eq!(replicas.for_anyone().reason, Reason::Lagging);
        replica.set(Look { up: true, replayed: 100, caught_up_to: caught_up(Duration::from_millis(10)) });
        assert_eq!(replicas.for_anyone().reason, Reason::Replica);
        assert_eq!(replicas.choose(Some(100)).reason, Reason::Replica);
        assert_eq!(replicas.choose(Some(101)).reason, Reason::OwnWrites, "the writer's last write not replayed");
    }

    #[tokio::test]
    async fn a_replica_is_as_old_as_the_newest_sample_it_has_reached() {
        let replicas = replicas(Duration::from_secs(1));
        assert_eq!(replicas.0.timeline.caught_up_to(10), u64::MAX, "no sample yet");
        tokio::time::sleep(Duration::from_millis(350)).await;
        let now = Instant::now();
        {
            let mut samples = replicas.0.timeline.samples.lock().unwrap();
            samples.push_back((now - Duration::from_millis(300), 10));
            samples.push_back((now - Duration::from_millis(200), 20));
            samples.push_back((now - Duration::from_millis(100), 30));
        }
        let age = |replayed| {
            Duration::from_micros(
                replicas.0.timeline.base.elapsed().as_micros() as u64 - replicas.0.timeline.caught_up_to(replayed),
            )
        };
        assert!(age(30) >= Duration::from_millis(100) && age(30) < Duration::from_millis(200), "{:?}", age(30));
        assert!(age(25) >= Duration::from_millis(200) && age(25) < Duration::from_millis(300), "{:?}", age(25));
        assert_eq!(replicas.0.timeline.caught_up_to(5), u64::MAX, "behind every sample kept");
    }

    #[test]
    fn positions_read_and_print_as_postgresql_does() {
        assert_eq!(parse_position("16/B374D848"), Some(0x16_B374_D848));
        assert_eq!(format_position(0x16_B374_D848), "16/B374D848");
        assert_eq!(parse_position("0/0"), Some(0));
        assert_eq!(format_position(u64::MAX), "FFFFFFFF/FFFFFFFF");
        for bad in ["", "16", "/1", "1/", "g/1", "1/2/3", "123456789/0", "+1/0", " 1/0"] {
            assert_eq!(parse_position(bad), None, "{bad:?}");
        }
    }

    #[tokio::test]
    async fn each_connection_is_judged_by_its_own_server_and_a_url_reports_its_worst() {
        let replicas = replicas_of(2, 2, Duration::from_secs(1));
        assert_eq!(replicas.0.slots.len(), 4, "one slot per connection allowed, per URL");
        assert_eq!(replicas.lags(), vec![None, None]);
        tokio::time::sleep(Duration::from_millis(350)).await;
        let now = replicas.0.timeline.base.elapsed();
        let at = |ago: u64| now.saturating_sub(Duration::from_millis(ago)).as_micros() as u64;
        // The first URL balances over two servers, one of them behind.
        for (slot, (replayed, ago)) in replicas.0.slots[..2].iter().zip([(50, 100), (90, 20)]) {
            slot.seen.set(Look { up: true, replayed, caught_up_to: at(ago) });
        }
        let lags = replicas.lags();
        assert!(lags[0].is_some_and(|lag| lag >= Duration::from_millis(100)), "the worst server: {lags:?}");
        assert_eq!(lags[1], None, "no connection of the second URL answers");
        // A writer at 60 is served only through the connection that reached 90.
        for _ in 0..4 {
            let route = replicas.choose(Some(60));
            assert_eq!((route.reason, route.replayed), (Reason::Replica, 90));
        }
        assert_eq!(replicas.choose(Some(91)).reason, Reason::OwnWrites);
        // With no connection idle, a read queues where the fewest wait.
        let route_to_first = replicas.choose(Some(10));
        let _held = [replicas.enter(&route_to_first), replicas.enter(&route_to_first), replicas.enter(&route_to_first)];
        for _ in 0..4 {
            assert_ne!(replicas.choose(Some(10)).replayed, route_to_first.replayed, "the busier one is left");
        }
    }
}
