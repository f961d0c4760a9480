//! Durable background jobs in PostgreSQL: the database the service already
//! has is the broker.
//!
//! - **Enqueue** with an `INSERT INTO jobs` in the transaction of the write
//!   that causes the job ([`enqueue`], or the same insert inside a
//!   statement): a rolled-back write leaves no job, a committed one always
//!   has its job. A trigger sends `NOTIFY conduit_jobs` at commit, which
//!   wakes idle workers at once; they also poll, for retries that come due.
//! - **Claim**: a worker marks up to as many due jobs as it has free slots
//!   `running` (`FOR UPDATE SKIP LOCKED`, so workers never wait on each
//!   other) with a lease: `run_at` becomes the time by which it must finish.
//! - **Batch**: kinds whose handler says so ([`Handler::batches`]: a few
//!   statements, no slow calls) skip the claim on their first attempt: one
//!   transaction deletes up to `batch` due jobs (`FOR UPDATE SKIP
//!   LOCKED`), runs their handlers and commits, so a burst of writes costs
//!   the workers one transaction, not two per job. If that transaction
//!   fails, it rolls back whole and each of its jobs is claimed and
//!   attempted alone as below, so one bad job costs only its own attempts.
//!   A worker that dies mid-batch leaves the jobs queued as they were.
//!   After a wake-up, workers wait until `batch_window` has passed since
//!   their previous look, so that jobs arriving together are done together
//!   and the workers' share of the CPU stays bounded under a write load.
//! - **Run**: each attempt is one transaction that first deletes the job's
//!   row (checking that this attempt still owns it), then runs the handler
//!   on that transaction, then commits. Success is the commit: the handler's
//!   database work and the job's completion land together or not at all.
//! - **Fail**: a handler error rolls back and schedules a retry after an
//!   exponential backoff with jitter, or marks the job `dead` after its last
//!   attempt; dead jobs stay for inspection (`conduit jobs list`) and can be
//!   re-queued (`conduit jobs requeue`).
//! - **Crash**: a worker that dies mid-job takes its transaction with it;
//!   the row is back as it was (`running`), and once the lease is over any
//!   worker re-queues it (counting the lost attempt).
//! - **Stop**: on shutdown a worker claims nothing more, lets running jobs
//!   finish until the drain deadline, then rolls back the rest and gives
//!   them back to the queue at once (the cut-off attempt is not counted).
//!
//! Delivery is at least once: an attempt that fails or dies is run again.
//! What a handler does in the transaction it is given commits with the
//! job's deletion, so it happens exactly once; effects outside it (mail,
//! HTTP calls) may repeat and must be idempotent.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use sqlx::{PgConnection, PgPool};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;

use crate::observability::metrics::Metrics;
use crate::postgres::signal::Signals;

/// The channel that wakes workers (see [`Wake`] and [`notify_workers`]).
pub const CHANNEL: &str = "conduit_jobs";

/// One claimed job, as its handler sees it.
#[derive(Debug, Clone)]
pub struct Job {
    /// Its id (stable across attempts: a natural idempotency key).
    pub id: i64,
    /// Which handler runs it.
    pub kind: String,
    /// Its arguments.
    pub payload: serde_json::Value,
    /// This attempt's number, from 1.
    pub attempt: i32,
    /// Attempts allowed before the job is dead (its own limit, else the
    /// workers' setting).
    pub max_attempts: i32,
}

/// A claimed row: id, kind, payload, attempt, attempts allowed.
type ClaimedRow = (i64, String, sqlx::types::Json<serde_json::Value>, i32, i32);

/// Claims the queued jobs `condition` picks (`$2` the lease, `$3` the
/// worker's name, `$4` the default attempt limit), returning [`ClaimedRow`]s.
fn claim_sql(condition: &str) -> String {
    format!(
        "UPDATE jobs SET state = 'running', attempts = attempts + 1, run_at = now() + $2, \
                         locked_by = $3, updated_at = now() \
         WHERE {condition} \
         RETURNING id, kind, payload, attempts, COALESCE(max_attempts, $4)"
    )
}

/// The claim of due jobs: up to `$1` of the kinds `$5`, except first
/// attempts of the batched kinds `$6`.
static CLAIM_DUE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    claim_sql(
        "id IN (SELECT id FROM jobs WHERE state = 'queued' AND run_at <= now() AND kind = ANY($5) \
                  AND NOT (attempts = 0 AND kind = ANY($6)) \
                ORDER BY run_at, id LIMIT $1 FOR UPDATE SKIP LOCKED)",
    )
});

/// The claim of the queued jobs among the ids `$1` (a failed batch's).
static CLAIM_IDS: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| claim_sql("id = ANY($1) AND state = 'queued'"));

impl From<ClaimedRow> for Job {
    fn from((id, kind, payload, attempt, max_attempts): ClaimedRow) -> Self {
        Self { id, kind, payload: payload.0, attempt, max_attempts }
    }
}

/// Why an attempt failed; the message is kept as the job's `last_error`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct JobError(pub String);

impl From<sqlx::Error> for JobError {
    fn from(e: sqlx::Error) -> Self {
        Self(format!("database: {e}"))
    }
}

/// Runs jobs of one kind. The work done on `tx` commits together with the
/// job's completion; an error rolls it back and the job is retried.
pub trait Handler: Send + Sync + 'static {
    /// Does one attempt of `job`.
    fn run<'a>(&'a self, job: &'a Job, tx: &'a mut PgConnection) -> BoxFuture<'a, Result<(), JobError>>;

    /// Whether first attempts of this handler's jobs may be done several
    /// at a time in one transaction ([`Handler::run_batch`]): only for
    /// handlers whose work is a few statements, never a slow call.
    fn batches(&self) -> bool {
        false
    }

    /// Does the first attempt of each of `jobs` (all of kinds this handler
    /// is registered for) on one transaction; an error rolls back all of
    /// them, and each is then attempted alone with [`Handler::run`].
    fn run_batch<'a>(&'a self, jobs: &'a [Job], tx: &'a mut PgConnection) -> BoxFuture<'a, Result<(), JobError>> {
        Box::pin(async move {
            for job in jobs {
                self.run(job, tx).await?;
            }
            Ok(())
        })
    }
}

/// Handlers by job kind.
#[derive(Clone, Default)]
pub struct Handlers(HashMap<String, Arc<dyn Handler>>);

impl std::fmt::Debug for Handlers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.keys()).finish()
    }
}

impl Handlers {
    /// No handlers but the [`Canary`].
    pub fn new() -> Self {
        let mut handlers = Self(HashMap::new());
        handlers.register(Canary::KIND, Canary);
        handlers
    }

    /// Adds (or replaces) the handler of `kind`.
    pub fn register(&mut self, kind: &str, handler: impl Handler) -> &mut Self {
        self.register_kinds(&[kind], handler)
    }

    /// Adds one handler for several kinds: a batch of jobs of these kinds
    /// is given to it in one call.
    pub fn register_kinds(&mut self, kinds: &[&str], handler: impl Handler) -> &mut Self {
        let handler: Arc<dyn Handler> = Arc::new(handler);
        for kind in kinds {
            self.0.insert((*kind).to_owned(), handler.clone());
        }
        self
    }
}

/// Wakes job workers after a commit that enqueued jobs: this process's at
/// once, every other replica's by a coalesced signal (cheap to clone).
#[derive(Debug, Clone)]
pub struct Wake {
    local: Arc<Notify>,
    signals: Signals,
}

impl Wake {
    /// Wakes this process's workers (those made [`Workers::woken_by`] it)
    /// and, through `signals`, the other replicas'.
    pub fn new(signals: Signals) -> Self {
        Self { local: Arc::new(Notify::new()), signals }
    }

    /// Says that a transaction that enqueued jobs has committed.
    pub fn enqueued(&self) {
        self.local.notify_one();
        self.signals.raise(CHANNEL, "");
    }
}

/// Wakes every replica's workers at once, without coalescing: for tools
/// that enqueue outside the service (`conduit jobs canary`, tests).
pub async fn notify_workers<'e, E>(executor: E) -> Result<(), sqlx::Error>
where
    E: sqlx::PgExecutor<'e>,
{
    sqlx::query("SELECT pg_notify($1, '')").bind(CHANNEL).execute(executor).await?;
    Ok(())
}

/// A job that does nothing but what its payload asks, to check that the
/// queue works end to end (`conduit jobs canary`) and to measure it:
/// `{"sleep_ms": n}` takes n ms, `{"fail_attempts": k}` fails its first k
/// attempts.
#[derive(Debug, Clone, Copy)]
pub struct Canary;

impl Canary {
    /// Its kind.
    pub const KIND: &'static str = "canary";

    /// Enqueues `count` canaries, each taking `sleep_ms` and failing its
    /// first `fail_attempts` attempts; returns how many.
    pub async fn enqueue(db: &PgPool, count: u32, sleep_ms: u64, fail_attempts: u32) -> Result<i64, sqlx::Error> {
        let payload = serde_json::json!({ "sleep_ms": sleep_ms, "fail_attempts": fail_attempts });
        let n = sqlx::query_scalar(
            "WITH ins AS (INSERT INTO jobs (kind, payload) SELECT $1, $2 FROM generate_series(1, $3) RETURNING 1) \
             SELECT count(*) FROM ins",
        )
        .bind(Self::KIND)
        .bind(sqlx::types::Json(&payload))
        .bind(i64::from(count))
        .fetch_one(db)
        .await?;
        notify_workers(db).await?;
        Ok(n)
    }
}

impl Handler for Canary {
    fn run<'a>(&'a self, job: &'a Job, _tx: &'a mut PgConnection) -> BoxFuture<'a, Result<(), JobError>> {
        Box::pin(async move {
            let number = |key: &str| job.payload.get(key).and_then(serde_json::Value::as_u64).unwrap_or(0);
            let sleep = number("sleep_ms");
            if sleep > 0 {
                tokio::time::sleep(Duration::from_millis(sleep)).await;
            }
            if u64::try_from(job.attempt).unwrap_or(0) <= number("fail_attempts") {
                return Err(JobError(format!("canary: failing attempt {} as asked", job.attempt)));
            }
            Ok(())
        })
    }
}

/// Enqueues a job in the caller's transaction (or alone, on a pool). Once
/// that has committed, [`Wake::enqueued`] (or [`notify_workers`]) runs it at
/// once; otherwise the workers' poll finds it.
pub async fn enqueue<'e, E>(executor: E, kind: &str, payload: &serde_json::Value) -> Result<i64, sqlx::Error>
where
    E: sqlx::PgExecutor<'e>,
{
    sqlx::query_scalar("INSERT INTO jobs (kind, payload) VALUES ($1, $2) RETURNING id")
        .bind(kind)
        .bind(sqlx::types::Json(payload))
        .fetch_one(executor)
        .await
}

/// How workers behave.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// Jobs run at once by one process.
    pub concurrency: usize,
    /// The longest an attempt may take (it then fails and is retried),
    /// and how long a crashed or vanished worker's jobs wait before running
    /// again. A live attempt keeps its row locked, so nobody takes it over.
    pub lease: Duration,
    /// How often to look for due retries and expired leases when no
    /// notification arrives.
    pub poll_interval: Duration,
    /// Attempts a job gets unless it sets its own `max_attempts`.
    pub max_attempts: i32,
    /// First retry delay; each further one doubles, up to `retry_max`.
    pub retry_base: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
    /// How long running jobs get to finish once a stop is asked.
    pub drain_timeout: Duration,
    /// Most jobs done in one batch transaction (see the module doc).
    pub batch: usize,
    /// Shortest time between two looks at the queue after wake-ups.
    pub batch_window: Duration,
}

/// The delay before retry number `attempt` (from 1): exponential from
/// `base`, capped at `max`, with "equal jitter" (between half and all of
/// it) so that jobs failing together do not retry together.
pub fn backoff(attempt: i32, base: Duration, max: Duration) -> Duration {
    let exponent = u32::try_from(attempt.saturating_sub(1)).unwrap_or(0).min(30);
    let full = base.saturating_mul(1 << exponent).min(max);
    let delay = full / 2 + full.mul_f64(fastrand::f64() / 2.0);
    // PostgreSQL intervals hold microseconds.
    Duration::from_micros(u64::try_from(delay.as_micros()).unwrap_or(u64::MAX))
}

/// What one attempt came to.
enum Outcome {
    Succeeded,
    Failed(String),
    /// The job was no longer ours (its lease ran out and it was taken over).
    Lost,
    /// Cut off by shutdown.
    Released,
}

/// A pool of workers in one process.
#[derive(Clone)]
pub struct Workers {
    db: PgPool,
    handlers: Handlers,
    settings: WorkerSettings,
    metrics: Option<Metrics>,
    name: String,
    kinds: Vec<String>,
    /// Kinds whose first attempts are batched.
    batch_kinds: Vec<String>,
    wake: Arc<Notify>,
    /// The pool whose connection the workers listen on for other
    /// processes' wake-ups; `None`: the process's shared listener does.
    own_listener: Option<PgPool>,
    /// When the earliest retry this process scheduled comes due.
    retry_due: Arc<std::sync::Mutex<Option<tokio::time::Instant>>>,
}

impl std::fmt::Debug for Workers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workers").field("name", &self.name).field("settings", &self.settings).finish()
    }
}

impl Workers {
    /// Workers on `db` running `handlers`.
    pub fn new(db: PgPool, handlers: Handlers, settings: WorkerSettings, metrics: Option<Metrics>) -> Self {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into());
        let name = format!("{host}:{}", std::process::id());
        let kinds = handlers.0.keys().cloned().collect();
        let batch_kinds = match settings.batch {
            0 | 1 => Vec::new(),
            _ => handlers.0.iter().filter(|(_, h)| h.batches()).map(|(k, _)| k.clone()).collect(),
        };
        Self {
            db: db.clone(),
            handlers,
            settings,
            metrics,
            name,
            kinds,
            batch_kinds,
            wake: Arc::new(Notify::new()),
            own_listener: Some(db.clone()),
            retry_due: Arc::default(),
        }
    }

    /// Makes these workers wake when `wake` says jobs were enqueued in
    /// this process.
    #[must_use]
    pub fn woken_by(mut self, wake: &Wake) -> Self {
        self.wake = wake.local.clone();
        self
    }

    /// Leaves listening for other processes' wake-ups to the process's
    /// shared listener, which hears [`wake_channel`] for `wake`: one
    /// connection fewer.
    #[must_use]
    pub fn without_own_listener(mut self) -> Self {
        self.own_listener = None;
        self
    }

    /// Listens for other processes' wake-ups on a connection of
    /// `listener` (a direct one, see [`crate::postgres::listener_pool`])
    /// rather than of the workers' own pool.
    #[must_use]
    pub fn listening_on(mut self, listener: PgPool) -> Self {
        self.own_listener = Some(listener);
        self
    }

    /// Runs jobs until `stop` completes, then drains (see the module doc).
    pub async fn run(self, stop: impl Future<Output = ()> + Send) {
        let listener = self.own_listener.clone().map(|pool| tokio::spawn(listen(pool, self.wake.clone())));
        let (cancel, cancelled) = watch::channel(false);
        let mut running: JoinSet<()> = JoinSet::new();
        // The batch under way, if any (at most one per process).
        let mut batching: JoinSet<usize> = JoinSet::new();
        let mut batch_wanted = true;
        let mut poll = tokio::time::interval(self.settings.poll_interval);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_rescue: Option<Instant> = None;
        let mut last_look: Option<tokio::time::Instant> = None;
        // When a retry comes due, if before the next poll.
        let mut retry_at: Option<tokio::time::Instant> = None;
        let mut stop = std::pin::pin!(stop);
        tracing::info!(worker = %self.name, concurrency = self.settings.concurrency, "job workers started");
        loop {
            // Jobs arriving together wait for each other a little, so that
            // a write load costs the workers a bounded number of looks.
            if let Some(last) = last_look {
                tokio::select! {
                    _ = &mut stop => break,
                    () = tokio::time::sleep_until(last + self.settings.batch_window) => {}
                }
            }
            let now = tokio::time::Instant::now();
            last_look = Some(now);
            if let Some(due) = self.retry_due.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take() {
                retry_at = Some(retry_at.map_or(due, |at| at.min(due)));
            }
            // A retry came due: claimed below; the next one is asked for
            // then (the earliest time kept here hides any later one).
            let retry_came_due = retry_at.is_some_and(|at| at <= now);
            if retry_came_due {
                retry_at = None;
            }
            while running.try_join_next().is_some() {}
            // A full batch means more may be waiting: another at once.
            while let Some(taken) = batching.try_join_next() {
                batch_wanted |= taken.unwrap_or(0) >= self.settings.batch;
            }
            if batch_wanted && batching.is_empty() && !self.batch_kinds.is_empty() {
                batch_wanted = false;
                let this = self.clone();
                batching.spawn(async move { this.batch().await });
            }
            let free = self.settings.concurrency.saturating_sub(running.len());
            let mut full = free == 0;
            if free > 0 {
                let polling = last_rescue.is_none_or(|t| t.elapsed() >= self.settings.poll_interval);
                if polling {
                    last_rescue = Some(Instant::now());
                    if let Err(e) = self.rescue().await {
                        tracing::warn!(error = %e, "cannot re-queue jobs whose lease ran out");
                    }
                    self.analyze_if_stale().await;
                }
                match self.claim(free).await {
                    Ok(jobs) => {
                        if (polling || retry_came_due)
                            && let Some(due) = self.next_due().await
                        {
                            retry_at = Some(retry_at.map_or(due, |at| at.min(due)));
                        }
                        full = jobs.len() == free;
                        for job in jobs {
                            let this = self.clone();
                            let cancelled = cancelled.clone();
                            running.spawn(async move { this.attempt(job, cancelled).await });
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot claim jobs; retrying");
                        tokio::select! {
                            _ = &mut stop => break,
                            _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                        }
                    }
                }
            }
            tokio::select! {
                _ = &mut stop => break,
                // Enqueued jobs: a batch (if one is under way, another
                // after it) and a claim, or a claim when slots free up.
                _ = self.wake.notified(), if !full || !self.batch_kinds.is_empty() => batch_wanted = true,
                Some(taken) = batching.join_next(), if !batching.is_empty() => {
                    batch_wanted |= taken.unwrap_or(0) >= self.settings.batch;
                }
                Some(_) = running.join_next(), if !running.is_empty() => {}
                _ = poll.tick() => batch_wanted = true,
                () = tokio::time::sleep_until(retry_at.unwrap_or_else(tokio::time::Instant::now)), if retry_at.is_some() => {}
            }
        }
        if let Some(listener) = listener {
            listener.abort();
        }
        // A batch is a few statements: it commits or rolls back soon.
        let batch_done = tokio::time::timeout(self.settings.drain_timeout, batching.join_next()).await;
        if batch_done.is_err() {
            tracing::warn!("a job batch outlived the drain deadline; its jobs stay queued");
            batching.abort_all();
        }
        if !running.is_empty() {
            tracing::info!(running = running.len(), "job workers stopping; waiting for running jobs");
            let drained = tokio::time::timeout(self.settings.drain_timeout, async {
                while running.join_next().await.is_some() {}
            })
            .await;
            if drained.is_err() {
                // Each cut-off job rolls back and gives itself back; one
                // stuck on a dead connection is left to its lease.
                let _ = cancel.send(true);
                let released = tokio::time::timeout(Duration::from_secs(5), async {
                    while running.join_next().await.is_some() {}
                })
                .await;
                if released.is_err() {
                    running.abort_all();
                }
            }
        }
        tracing::info!("job workers stopped");
    }

    /// Claims up to `n` due jobs of the kinds this process runs (during a
    /// rolling deploy, older replicas leave newer kinds to newer ones),
    /// except the first attempts of batched kinds.
    async fn claim(&self, n: usize) -> Result<Vec<Job>, sqlx::Error> {
        let rows: Vec<ClaimedRow> = sqlx::query_as(sqlx::AssertSqlSafe(CLAIM_DUE.as_str()))
            .bind(i64::try_from(n).unwrap_or(i64::MAX))
            .bind(self.settings.lease)
            .bind(&self.name)
            .bind(self.settings.max_attempts)
            .bind(&self.kinds)
            .bind(&self.batch_kinds)
            .fetch_all(&self.db)
            .await?;
        Ok(rows.into_iter().map(Job::from).collect())
    }

    /// Does one batch of first attempts (see the module doc); returns how
    /// many jobs it took.
    async fn batch(self) -> usize {
        let started = Instant::now();
        let taken = match self.try_batch().await {
            Ok(Ok(jobs)) => {
                if let Some(m) = self.metrics.as_ref().filter(|_| !jobs.is_empty()) {
                    m.job_batch();
                    let elapsed = started.elapsed().as_secs_f64();
                    for job in &jobs {
                        m.job_finished(&job.kind, "succeeded", elapsed);
                    }
                }
                return jobs.len();
            }
            Ok(Err((jobs, error))) => {
                tracing::warn!(jobs = jobs.len(), %error, "a job batch failed; attempting its jobs one by one");
                jobs
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot run a job batch");
                return 0;
            }
        };
        let ids: Vec<i64> = taken.iter().map(|j| j.id).collect();
        let claimed: Result<Vec<ClaimedRow>, _> = sqlx::query_as(sqlx::AssertSqlSafe(CLAIM_IDS.as_str()))
            .bind(&ids)
            .bind(self.settings.lease)
            .bind(&self.name)
            .bind(self.settings.max_attempts)
            .fetch_all(&self.db)
            .await;
        match claimed {
            Ok(rows) => {
                for job in rows.into_iter().map(Job::from) {
                    // Alone now, each under its own lease; never cut off.
                    self.clone().attempt(job, watch::channel(false).1).await;
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot claim a failed batch's jobs; the poll will"),
        }
        taken.len()
    }

    /// Takes up to `batch` due first attempts of batched kinds and runs
    /// them in one transaction: the jobs committed (`Ok(Ok)`), or the jobs
    /// rolled back with the handler's error (`Ok(Err)`).
    async fn try_batch(&self) -> Result<Result<Vec<Job>, (Vec<Job>, String)>, sqlx::Error> {
        let mut tx = self.db.begin().await?;
        // Completion first, as for a single attempt; it commits durably.
        let rows: Vec<ClaimedRow> = sqlx::query_as(
            "WITH done AS (DELETE FROM jobs WHERE id IN \
                 (SELECT id FROM jobs WHERE state = 'queued' AND run_at <= now() AND attempts = 0 \
                    AND kind = ANY($2) ORDER BY run_at, id LIMIT $1 FOR UPDATE SKIP LOCKED) \
               RETURNING id, kind, payload, max_attempts) \
             SELECT id, kind, payload, 1, COALESCE(max_attempts, $3) FROM done \
             WHERE set_config('synchronous_commit', 'on', true) = 'on' ORDER BY id",
        )
        .bind(i64::try_from(self.settings.batch).unwrap_or(i64::MAX))
        .bind(&self.batch_kinds)
        .bind(self.settings.max_attempts)
        .fetch_all(&mut *tx)
        .await?;
        let jobs: Vec<Job> = rows.into_iter().map(Job::from).collect();
        if jobs.is_empty() {
            tx.rollback().await?;
            return Ok(Ok(jobs));
        }
        // One call per handler, jobs in queue order within it.
        let mut groups: Vec<(Arc<dyn Handler>, Vec<Job>)> = Vec::new();
        for job in &jobs {
            // Batched kinds come from the handlers; were one missing, its
            // job must not be deleted undone: the batch fails instead.
            let Some(handler) = self.handlers.0.get(&job.kind) else {
                tx.rollback().await?;
                return Ok(Err((jobs.clone(), format!("no handler for jobs of kind {:?}", job.kind))));
            };
            match groups.iter_mut().find(|(h, _)| Arc::ptr_eq(h, handler)) {
                Some((_, group)) => group.push(job.clone()),
                None => groups.push((handler.clone(), vec![job.clone()])),
            }
        }
        let work = async {
            for (handler, group) in &groups {
                std::panic::AssertUnwindSafe(handler.run_batch(group, &mut tx))
                    .catch_unwind()
                    .await
                    .unwrap_or_else(|_| Err(JobError("the handler panicked".into())))?;
            }
            Ok::<(), JobError>(())
        };
        let result = tokio::time::timeout(self.settings.lease, work).await.unwrap_or_else(|_| {
            Err(JobError(format!("timed out: a batch may take at most JOB_LEASE ({:?})", self.settings.lease)))
        });
        match result {
            Ok(()) => match tx.commit().await {
                Ok(()) => Ok(Ok(jobs)),
                Err(e) => Ok(Err((jobs, format!("cannot commit: {e}")))),
            },
            Err(e) => {
                tx.rollback().await?;
                Ok(Err((jobs, e.0)))
            }
        }
    }

    /// When the earliest queued job not yet due (a retry backing off) will
    /// be, if that is before the next poll.
    async fn next_due(&self) -> Option<tokio::time::Instant> {
        let wait: Option<f64> = sqlx::query_scalar(
            "SELECT EXTRACT(EPOCH FROM min(run_at) - now())::float8 FROM jobs WHERE state = 'queued'",
        )
        .fetch_one(&self.db)
        .await
        .ok()
        .flatten();
        // Due rows still locked by another claimer: look again shortly, not in a spin.
        let wait = Duration::try_from_secs_f64(wait?.max(0.02)).ok()?;
        (wait < self.settings.poll_interval).then(|| tokio::time::Instant::now() + wait)
    }

    /// Gives jobs whose lease ran out (their worker died) back to the
    /// queue, or to the dead when that was their last attempt. Rows still
    /// locked by a live attempt are skipped, however long it runs.
    async fn rescue(&self) -> Result<(), sqlx::Error> {
        let rescued = sqlx::query(
            "UPDATE jobs SET state = CASE WHEN attempts >= COALESCE(max_attempts, $1) THEN 'dead' ELSE 'queued' END, \
                             run_at = now(), locked_by = NULL, updated_at = now(), \
                             last_error = 'the worker stopped before finishing (lease expired)' \
             WHERE id IN (SELECT id FROM jobs WHERE state = 'running' AND run_at < now() \
                          FOR UPDATE SKIP LOCKED)",
        )
        .bind(self.settings.max_attempts)
        .execute(&self.db)
        .await?
        .rows_affected();
        if rescued > 0 {
            tracing::warn!(jobs = rescued, "re-queued jobs whose worker stopped before finishing");
        }
        Ok(())
    }

    /// Refreshes the planner's statistics of the queue once a thousand rows
    /// changed since the last time. A burst of jobs into a table the
    /// planner believes nearly empty makes it sort the whole backlog for
    /// every claim instead of reading the queue's index in order (5 ms a
    /// claim at 20,000 jobs, measured); autovacuum may take a minute to notice.
    async fn analyze_if_stale(&self) {
        let stale: Result<bool, _> = sqlx::query_scalar(
            "SELECT COALESCE((SELECT n_mod_since_analyze > 1000 FROM pg_stat_user_tables \
                              WHERE relid = 'jobs'::regclass), false)",
        )
        .fetch_one(&self.db)
        .await;
        if let Ok(true) = stale
            && let Err(e) = sqlx::query("ANALYZE jobs").execute(&self.db).await
        {
            tracing::debug!(error = %e, "cannot analyze the job queue");
        }
    }

    /// Runs one attempt and records how it ended.
    async fn attempt(self, job: Job, cancelled: watch::Receiver<bool>) {
        let started = Instant::now();
        if let Some(m) = &self.metrics {
            m.job_running(true);
        }
        let outcome = match self.execute(&job, cancelled).await {
            Ok(outcome) => outcome,
            Err(e) => Outcome::Failed(format!("database: {e}")),
        };
        let elapsed = started.elapsed().as_secs_f64();
        let recorded = match outcome {
            Outcome::Succeeded => Ok("succeeded"),
            Outcome::Lost => Ok("lost"),
            Outcome::Released => self.release(&job).await.map(|()| "released"),
            Outcome::Failed(error) => self.fail(&job, &error).await,
        };
        match recorded {
            Ok(outcome) => {
                tracing::debug!(job = job.id, kind = %job.kind, attempt = job.attempt, outcome, "job attempt finished");
                if let Some(m) = &self.metrics {
                    m.job_finished(&job.kind, outcome, elapsed);
                }
            }
            // The row stays `running`: the lease brings it back.
            Err(e) => tracing::warn!(job = job.id, error = %e, "cannot record a job's outcome; its lease will"),
        }
        if let Some(m) = &self.metrics {
            m.job_running(false);
        }
    }

    async fn execute(&self, job: &Job, mut cancelled: watch::Receiver<bool>) -> Result<Outcome, sqlx::Error> {
        let Some(handler) = self.handlers.0.get(&job.kind).cloned() else {
            return Ok(Outcome::Failed(format!("no handler for jobs of kind {:?} in this version", job.kind)));
        };
        let mut tx = self.db.begin().await?;
        // Completion first: it locks the row for the whole attempt and
        // proves the attempt still owns the job. The attempt commits
        // synchronously (unlike the pool's bookkeeping): what a handler
        // makes may be seen by clients at once, so it must survive a crash.
        let owned: i64 = sqlx::query_scalar(
            "WITH done AS (DELETE FROM jobs WHERE id = $1 AND attempts = $2 AND state = 'running' RETURNING 1) \
             SELECT (SELECT count(*) FROM done) FROM (SELECT set_config('synchronous_commit', 'on', true)) AS durable",
        )
        .bind(job.id)
        .bind(job.attempt)
        .fetch_one(&mut *tx)
        .await?;
        if owned == 0 {
            tx.rollback().await?;
            return Ok(Outcome::Lost);
        }
        // An attempt may take as long as the lease: past it, its worker
        // counts as stuck (its database session would be ended too).
        let result = tokio::select! {
            r = tokio::time::timeout(
                self.settings.lease,
                std::panic::AssertUnwindSafe(handler.run(job, &mut tx)).catch_unwind(),
            ) => Some(r.unwrap_or_else(|_| Ok(Err(JobError(format!(
                "timed out: an attempt may take at most JOB_LEASE ({:?})",
                self.settings.lease
            )))))),
            () = async { let _ = cancelled.wait_for(|c| *c).await; } => None,
        };
        match result {
            Some(Ok(Ok(()))) => match tx.commit().await {
                Ok(()) => Ok(Outcome::Succeeded),
                Err(e) => Ok(Outcome::Failed(format!("cannot commit: {e}"))),
            },
            Some(Ok(Err(e))) => {
                tx.rollback().await?;
                Ok(Outcome::Failed(e.0))
            }
            Some(Err(panic)) => {
                tx.rollback().await?;
                let text = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                Ok(Outcome::Failed(format!("the handler panicked: {text}")))
            }
            None => {
                tx.rollback().await?;
                Ok(Outcome::Released)
            }
        }
    }

    /// Schedules a retry, or buries the job after its last attempt. The
    /// row is this attempt's while `attempts` is its number (only a claim
    /// raises it), whether or not a rescue re-queued it meanwhile.
    async fn fail(&self, job: &Job, error: &str) -> Result<&'static str, sqlx::Error> {
        let dead = job.attempt >= job.max_attempts;
        let delay = backoff(job.attempt, self.settings.retry_base, self.settings.retry_max);
        tracing::warn!(job = job.id, kind = %job.kind, attempt = job.attempt, dead, error, "job attempt failed");
        sqlx::query(
            "UPDATE jobs SET state = CASE WHEN $3 THEN 'dead' ELSE 'queued' END, run_at = now() + $4, \
                             last_error = $5, locked_by = NULL, updated_at = now() \
             WHERE id = $1 AND attempts = $2",
        )
        .bind(job.id)
        .bind(job.attempt)
        .bind(dead)
        .bind(delay)
        .bind(error)
        .execute(&self.db)
        .await?;
        if !dead && delay < self.settings.poll_interval {
            // The row's time was taken before now: due by then at the latest.
            let due = tokio::time::Instant::now() + delay + Duration::from_millis(5);
            let mut retry = self.retry_due.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            *retry = Some(retry.map_or(due, |at| at.min(due)));
        }
        Ok(if dead { "dead" } else { "retried" })
    }

    /// Gives a job cut off by shutdown back to the queue, due now.
    async fn release(&self, job: &Job) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE jobs SET state = 'queued', attempts = attempts - 1, run_at = now(), locked_by = NULL, \
                             last_error = 'interrupted by a worker shutting down', updated_at = now() \
             WHERE id = $1 AND attempts = $2",
        )
        .bind(job.id)
        .bind(job.attempt)
        .execute(&self.db)
        .await?;
        notify_workers(&self.db).await
    }
}

/// Wakes the workers on every `NOTIFY conduit_jobs`, and on (re)connecting:
/// anything enqueued while not listening is found by that look.
async fn listen(db: PgPool, wake: Arc<Notify>) {
    crate::postgres::listen::listen_all(db, vec![woken(wake)]).await;
}

/// The job channel for a process's shared listener, waking the workers
/// made [`Workers::woken_by`] `wake` (and [`Workers::without_own_listener`]).
pub fn wake_channel(wake: &Wake) -> crate::postgres::listen::Channel {
    woken(wake.local.clone())
}

fn woken(wake: Arc<Notify>) -> crate::postgres::listen::Channel {
    crate::postgres::listen::Channel::new(CHANNEL, move |_| wake.notify_one())
}

/// The queue's figures for the metrics: counts by state and the age of
/// the oldest due job, read every `interval` until the pool closes.
pub async fn watch_queue(db: PgPool, metrics: Metrics, interval: Duration) {
    loop {
        let figures: Result<(i64, i64, i64, f64), _> = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE state = 'queued'), count(*) FILTER (WHERE state = 'running'), \
                    count(*) FILTER (WHERE state = 'dead'), \
                    COALESCE(EXTRACT(EPOCH FROM now() - min(run_at) \
                        FILTER (WHERE state = 'queued' AND run_at <= now()))::float8, 0) \
             FROM jobs",
        )
        .fetch_one(&db)
        .await;
        match figures {
            Ok((queued, running, dead, oldest)) => metrics.job_queue(queued, running, dead, oldest),
            Err(_) if db.is_closed() => return,
            Err(e) => tracing::debug!(error = %e, "cannot read the job queue's figures"),
        }
        tokio::time::sleep(interval).await;
    }
}

/// One row of `conduit jobs list`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct JobRow {
    /// Id.
    pub id: i64,
    /// Kind.
    pub kind: String,
    /// queued, running or dead.
    pub state: String,
    /// Attempts made.
    pub attempts: i32,
    /// Its own attempt limit, if it has one.
    pub max_attempts: Option<i32>,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// When it was enqueued.
    pub created_at: time::OffsetDateTime,
    /// When it runs next (queued) or its lease ends (running).
    pub run_at: time::OffsetDateTime,
}

/// Jobs in `state`, oldest first.
pub async fn list(db: &PgPool, state: &str, limit: i64) -> Result<Vec<JobRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, kind, state, attempts, max_attempts, last_error, created_at, run_at \
         FROM jobs WHERE state = $1 ORDER BY id LIMIT $2",
    )
    .bind(state)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// Puts dead jobs back in the queue with a fresh set of attempts: those
/// in `ids`, or every dead job when `ids` is `None`. Returns how many.
pub async fn requeue(db: &PgPool, ids: Option<&[i64]>) -> Result<u64, sqlx::Error> {
    let mut tx = db.begin().await?;
    let n = sqlx::query(
        "UPDATE jobs SET state = 'queued', attempts = 0, run_at = now(), locked_by = NULL, updated_at = now() \
         WHERE state = 'dead' AND ($1::int8[] IS NULL OR id = ANY($1))",
    )
    .bind(ids)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    notify_workers(&mut *tx).await?;
    tx.commit().await?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter_in_whole_microseconds() {
        let (base, max) = (Duration::from_millis(100), Duration::from_secs(1));
        for _ in 0..100 {
            for (attempt, full) in [(1, 100), (2, 200), (3, 400), (4, 800), (5, 1000), (40, 1000)] {
                let delay = backoff(attempt, base, max);
                let full = Duration::from_millis(full);
                assert!(delay >= full / 2 && delay <= full, "attempt {attempt}: {delay:?}");
                assert_eq!(delay.subsec_nanos() % 1000, 0);
            }
        }
    }
}
