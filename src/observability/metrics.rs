//! Prometheus metrics, served as text at `/metrics` on the admin listener.
//!
//! Labels are RPC names, route templates, protocols and status codes —
//! never raw paths or user input — so their number stays fixed.

use std::sync::{Arc, LazyLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use sqlx::PgPool;

/// Latency buckets, 1 ms to 10 s, fine enough for p50/p95/p99 estimates.
const LATENCY_BUCKETS: [f64; 14] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 7.5, 10.0];

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// One finished call.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    /// Full RPC name (`/conduit.v1.Articles/GetArticle`), or `unmatched`.
    pub rpc: &'static str,
    /// The HTTP rule's template for JSON calls, else empty.
    pub route: &'static str,
    /// grpc, grpc-web, connect or json.
    pub protocol: &'static str,
    /// HTTP status of the answer.
    pub status: u16,
    /// gRPC status code name (from the answer's `grpc-status`, else from the HTTP status).
    pub code: &'static str,
}

/// A call's RPC and protocol.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    /// Full RPC name, or `unmatched`.
    pub rpc: &'static str,
    /// grpc, grpc-web, connect or json.
    pub protocol: &'static str,
}

/// Which rate-limit class refused a call.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClassLabels {
    /// `default` or `credentials`.
    pub class: &'static str,
}

/// Where a read went, and why (see [`crate::postgres::replicas::Reason`]).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReadLabels {
    /// replica, or why the primary served it.
    pub reason: &'static str,
}

/// One read replica, by its place in READ_DATABASE_URL.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReplicaLabels {
    /// 0 for the first URL, and so on.
    pub replica: String,
}

/// What happened in the response cache.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    /// hit, miss, eviction, invalidation, expired, or not_kept (read from a replica behind the last invalidation).
    pub event: &'static str,
}

/// A job's kind and how one attempt ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobLabels {
    /// The job's kind (a registered handler's name).
    pub kind: String,
    /// succeeded, retried, dead, released (given back at shutdown) or lost
    /// (taken over by another worker before it started).
    pub outcome: &'static str,
}

/// A state of the job queue.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabels {
    /// queued, running or dead.
    pub state: &'static str,
}

/// Database timings, fed by the statement log of sqlx (see
/// [`crate::observability::observe::DatabaseObserver`]); process-wide because the log is.
#[derive(Debug)]
pub struct DatabaseTimings {
    /// Time each statement took.
    pub statement: Histogram,
    /// Time each call waited for a pooled connection.
    pub acquire: Histogram,
}

/// The process-wide database timings.
pub static DATABASE: LazyLock<DatabaseTimings> =
    LazyLock::new(|| DatabaseTimings { statement: latency_histogram(), acquire: latency_histogram() });

/// Every metric of one application.
#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

struct Inner {
    registry: Registry,
    calls: Family<CallLabels, Counter>,
    duration: Family<RpcLabels, Histogram, fn() -> Histogram>,
    in_flight: Family<RpcLabels, Gauge>,
    rate_limited: Family<ClassLabels, Counter>,
    rate_limit_store_errors: Counter,
    rate_limit_store_up: Gauge,
    database_outages: Counter,
    database_up: Gauge,
    cache: Family<CacheLabels, Counter>,
    shed: Counter,
    jobs: Family<JobLabels, Counter>,
    job_duration: Histogram,
    job_batches: Counter,
    jobs_running: Gauge,
    queue: Family<QueueLabels, Gauge>,
    oldest_queued: Gauge<f64, std::sync::atomic::AtomicU64>,
    reads: Family<ReadLabels, Counter>,
    replica_up: Family<ReplicaLabels, Gauge>,
    replica_lag: Family<ReplicaLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    /// A registry with every metric, reading pool and process figures at
    /// each scrape.
    pub fn new(pool: PgPool) -> Self {
        let mut registry = Registry::with_prefix("conduit");
        let calls = Family::<CallLabels, Counter>::default();
        let duration = Family::<RpcLabels, Histogram, fn() -> Histogram>::new_with_constructor(latency_histogram);
        let in_flight = Family::<RpcLabels, Gauge>::default();
        let rate_limited = Family::<ClassLabels, Counter>::default();
        let rate_limit_store_errors = Counter::default();
        let rate_limit_store_up = Gauge::default();
        rate_limit_store_up.set(1);
        let database_outages = Counter::default();
        let database_up = Gauge::default();
        database_up.set(1);
        let cache = Family::<CacheLabels, Counter>::default();
        let shed = Counter::default();
        let jobs = Family::<JobLabels, Counter>::default();
        let job_duration = latency_histogram();
        let job_batches = Counter::default();
        let jobs_running = Gauge::default();
        let queue = Family::<QueueLabels, Gauge>::default();
        let oldest_queued = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        let reads = Family::<ReadLabels, Counter>::default();
        let replica_up = Family::<ReplicaLabels, Gauge>::default();
        let replica_lag = Family::<ReplicaLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register(
            "db_reads",
            "Calls free of side effects by where they read: replica, or the primary and why (replica_down, replica_lagging, own_writes: no replica has replayed the caller's writes, position_unknown; replica_failed: the replica failed the read and the primary served it)",
            reads.clone(),
        );
        registry.register(
            "db_replica_up",
            "1 while a read replica answers as a standby, by its place in READ_DATABASE_URL",
            replica_up.clone(),
        );
        registry.register(
            "db_replica_lag_seconds",
            "How far a read replica's replay is behind the primary (as polled; while up)",
            replica_lag.clone(),
        );
        registry.register("jobs", "Job attempts finished in this process, by kind and outcome", jobs.clone());
        registry.register("job_duration_seconds", "Time each job attempt took", job_duration.clone());
        registry.register(
            "job_batches",
            "Batches of first attempts that committed together in one transaction",
            job_batches.clone(),
        );
        registry.register("jobs_running", "Jobs this process is running now", jobs_running.clone());
        registry.register("job_queue", "Jobs in the queue, by state (read from the database)", queue.clone());
        registry.register(
            "job_oldest_queued_age_seconds",
            "How long the oldest due job has waited to be claimed (0 when none waits)",
            oldest_queued.clone(),
        );
        registry.register(
            "requests",
            "Calls answered, by RPC, route, protocol, HTTP status and gRPC code",
            calls.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from a call's arrival to the end of its answer (streams included)",
            duration.clone(),
        );
        registry.register("requests_in_flight", "Calls being answered now", in_flight.clone());
        registry.register("rate_limited", "Calls refused by a rate limit, by route class", rate_limited.clone());
        registry.register(
            "rate_limit_store_errors",
            "Times the rate-limit store (Redis) was found failing; checks then pass or are refused (RATE_LIMIT_REDIS_FAILURE) without asking it until a probe finds it answering",
            rate_limit_store_errors.clone(),
        );
        registry.register(
            "rate_limit_store_up",
            "1 while the rate-limit store (Redis) is believed to answer, 0 while checks do without it",
            rate_limit_store_up.clone(),
        );
        registry.register(
            "database_outages",
            "Times the database was found unreachable (or without its migrations); calls then fail at once with UNAVAILABLE until a probe finds it back",
            database_outages.clone(),
        );
        registry.register(
            "database_up",
            "1 while the database answers, 0 while it is found down (readiness follows)",
            database_up.clone(),
        );
        registry.register(
            "cache_events",
            "Response cache hits, misses, evictions, invalidations and expiries",
            cache.clone(),
        );
        registry.register("shed", "Calls refused because MAX_CONCURRENT_REQUESTS were being answered", shed.clone());
        registry.register_collector(Box::new(PoolCollector(pool)));
        registry.register_collector(Box::new(DatabaseCollector));
        Self(Arc::new(Inner {
            registry,
            calls,
            duration,
            in_flight,
            rate_limited,
            rate_limit_store_errors,
            rate_limit_store_up,
            database_outages,
            database_up,
            cache,
            shed,
            jobs,
            job_duration,
            job_batches,
            jobs_running,
            queue,
            oldest_queued,
            reads,
            replica_up,
            replica_lag,
        }))
    }

    /// Counts a read routed for `reason`.
    pub fn read_routed(&self, reason: &'static str) {
        self.0.reads.get_or_create(&ReadLabels { reason }).inc();
    }

    /// A read replica's state as last polled: its lag, or down.
    pub fn replica(&self, index: usize, lag: Option<std::time::Duration>) {
        let labels = ReplicaLabels { replica: index.to_string() };
        self.0.replica_up.get_or_create(&labels).set(i64::from(lag.is_some()));
        if let Some(lag) = lag {
            self.0.replica_lag.get_or_create(&labels).set(lag.as_secs_f64());
        }
    }

    /// Counts a call as started; the returned guard counts it as finished.
    pub fn start(&self, rpc: &'static str, protocol: &'static str) -> InFlight {
        let labels = RpcLabels { rpc, protocol };
        self.0.in_flight.get_or_create(&labels).inc();
        InFlight { metrics: self.clone(), labels, started: std::time::Instant::now() }
    }

    /// Records the database going down (counted) or coming back.
    pub fn database(&self, up: bool) {
        if !up {
            self.0.database_outages.inc();
        }
        self.0.database_up.set(i64::from(up));
    }

    /// Counts a call refused by the rate limit of `class`.
    pub fn rate_limited(&self, class: &'static str) {
        self.0.rate_limited.get_or_create(&ClassLabels { class }).inc();
    }

    /// Records the rate-limit store (Redis) going down (counted) or up.
    pub fn rate_limit_store(&self, up: bool) {
        if !up {
            self.0.rate_limit_store_errors.inc();
        }
        self.0.rate_limit_store_up.set(i64::from(up));
    }

    /// Counts a response-cache event.
    pub fn cache(&self, event: &'static str) {
        self.0.cache.get_or_create(&CacheLabels { event }).inc();
    }

    /// Counts a call shed under load.
    pub fn shed(&self) {
        self.0.shed.inc();
    }

    /// Counts a job attempt that ended as `outcome` after `seconds`.
    pub fn job_finished(&self, kind: &str, outcome: &'static str, seconds: f64) {
        self.0.jobs.get_or_create(&JobLabels { kind: kind.to_owned(), outcome }).inc();
        self.0.job_duration.observe(seconds);
    }

    /// Counts a batch of jobs that committed together.
    pub fn job_batch(&self) {
        self.0.job_batches.inc();
    }

    /// Jobs running in this process: one more (`true`) or one fewer.
    pub fn job_running(&self, started: bool) {
        if started {
            self.0.jobs_running.inc();
        } else {
            self.0.jobs_running.dec();
        }
    }

    /// The queue as last read from the database.
    pub fn job_queue(&self, queued: i64, running: i64, dead: i64, oldest_queued_seconds: f64) {
        for (state, n) in [("queued", queued), ("running", running), ("dead", dead)] {
            self.0.queue.get_or_create(&QueueLabels { state }).set(n);
        }
        self.0.oldest_queued.set(oldest_queued_seconds);
    }

    /// The Prometheus text exposition (format 0.0.4), what Prometheus and
    /// `promtool` read by default.
    pub fn render_prometheus(&self) -> String {
        openmetrics_to_prometheus(&self.render())
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        if prometheus_client::encoding::text::encode_registry(&mut out, &self.0.registry).is_err()
            || ProcessCollector::render(&mut out).is_err()
        {
            tracing::error!("cannot encode metrics");
        }
        let _ = prometheus_client::encoding::text::encode_eof(&mut out);
        out
    }
}

/// Rewrites OpenMetrics text as Prometheus text: a counter's family is
/// named with its `_total` suffix in HELP and TYPE, and the `# EOF` and
/// `# UNIT` lines go.
fn openmetrics_to_prometheus(text: &str) -> String {
    let counters: std::collections::HashSet<&str> =
        text.lines().filter_map(|l| l.strip_prefix("# TYPE ")).filter_map(|l| l.strip_suffix(" counter")).collect();
    let mut out = String::with_capacity(text.len() + 256);
    for line in text.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters.contains(name).then(|| format!("{prefix}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// A call being answered; [`InFlight::finish`] records it.
pub struct InFlight {
    metrics: Metrics,
    labels: RpcLabels,
    started: std::time::Instant,
}

impl InFlight {
    /// Records the finished call with its answer's status.
    pub fn finish(self, route: &'static str, status: u16, code: &'static str) {
        let elapsed = self.started.elapsed().as_secs_f64();
        let inner = &self.metrics.0;
        inner.duration.get_or_create(&self.labels).observe(elapsed);
        inner
            .calls
            .get_or_create(&CallLabels { rpc: self.labels.rpc, route, protocol: self.labels.protocol, status, code })
            .inc();
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.metrics.0.in_flight.get_or_create(&self.labels).dec();
    }
}

/// The connection pool, read at each scrape.
#[derive(Debug)]
struct PoolCollector(PgPool);

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: f64) -> std::fmt::Result {
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn counter(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: f64) -> std::fmt::Result {
    let metric = ConstCounter::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

impl Collector for PoolCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let size = f64::from(self.0.size());
        let idle = self.0.num_idle() as f64;
        gauge(&mut encoder, "db_pool_connections", "Open database connections", size)?;
        gauge(&mut encoder, "db_pool_idle_connections", "Open database connections not in use", idle)?;
        gauge(&mut encoder, "db_pool_busy_connections", "Database connections in use", (size - idle).max(0.0))?;
        gauge(
            &mut encoder,
            "db_pool_max_connections",
            "Most database connections (DB_MAX_CONNECTIONS)",
            f64::from(self.0.options().get_max_connections()),
        )
    }
}

/// The process-wide database timings as histograms.
#[derive(Debug)]
struct DatabaseCollector;

impl Collector for DatabaseCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let statement = &DATABASE.statement;
        statement.encode(encoder.encode_descriptor(
            "db_statement_duration_seconds",
            "Time each database statement took",
            None,
            statement.metric_type(),
        )?)?;
        let acquire = &DATABASE.acquire;
        acquire.encode(encoder.encode_descriptor(
            "db_pool_acquire_duration_seconds",
            "Time calls waited for a pooled database connection",
            None,
            acquire.metric_type(),
        )?)
    }
}

/// The standard `process_*` metrics, read from `/proc` (Linux); elsewhere
/// none are written.
#[derive(Debug)]
struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let Some(process) = ProcessStats::read() else { return Ok(()) };
        counter(&mut encoder, "process_cpu_seconds", "User and system CPU time spent", process.cpu_seconds)?;
        gauge(&mut encoder, "process_resident_memory_bytes", "Resident memory size", process.resident_bytes)?;
        gauge(&mut encoder, "process_virtual_memory_bytes", "Virtual memory size", process.virtual_bytes)?;
        gauge(&mut encoder, "process_open_fds", "Open file descriptors", process.open_fds)?;
        gauge(&mut encoder, "process_max_fds", "Most open file descriptors allowed", process.max_fds)?;
        gauge(&mut encoder, "process_threads", "OS threads", process.threads)?;
        gauge(&mut encoder, "process_start_time_seconds", "Start time since the Unix epoch", process.start_time)
    }
}

impl ProcessCollector {
    /// Writes the process metrics without a prefix, as Prometheus names them.
    fn render(out: &mut String) -> std::fmt::Result {
        static PLAIN: LazyLock<Registry> = LazyLock::new(|| {
            let mut registry = Registry::default();
            registry.register_collector(Box::new(ProcessCollector));
            registry
        });
        prometheus_client::encoding::text::encode_registry(out, &PLAIN)
    }
}

struct ProcessStats {
    cpu_seconds: f64,
    resident_bytes: f64,
    virtual_bytes: f64,
    open_fds: f64,
    max_fds: f64,
    threads: f64,
    start_time: f64,
}

impl ProcessStats {
    #[cfg(target_os = "linux")]
    fn read() -> Option<Self> {
        // SAFETY: sysconf only reads a system constant.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        // SAFETY: as above.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as f64;
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the command name, which is in parentheses and may hold spaces.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<f64>().ok());
        let boot_time = std::fs::read_to_string("/proc/stat")
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("btime ").and_then(|v| v.trim().parse::<f64>().ok()))?;
        let open_fds = std::fs::read_dir("/proc/self/fd").map(|d| d.count() as f64).unwrap_or(0.0);
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit writes into the struct it is given.
        let max_fds =
            if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 { limit.rlim_cur as f64 } else { 0.0 };
        Some(Self {
            cpu_seconds: (field(14)? + field(15)?) / ticks,
            threads: field(20)?,
            start_time: boot_time + field(22)? / ticks,
            virtual_bytes: field(23)?,
            resident_bytes: field(24)? * page,
            open_fds,
            max_fds,
        })
    }

    #[cfg(not(target_os = "linux"))]
    fn read() -> Option<Self> {
        None
    }
}
