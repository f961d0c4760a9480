//! Settings, from flags and the environment (flags win). Secrets never print.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// conduit: the RealWorld API as gRPC and JSON on one port.
#[derive(Debug, Parser)]
#[command(name = "conduit", version, about, long_about = None)]
pub struct Cli {
    /// What to do; `serve` when left out.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Settings shared by all commands.
    #[command(flatten)]
    pub settings: Settings,
}

/// The subcommands.
#[derive(Debug, Clone, Subcommand, PartialEq, Eq)]
pub enum Command {
    /// Serve gRPC and JSON/HTTP on one listener (the default), with
    /// JOB_WORKERS background job workers.
    Serve,
    /// Apply pending database migrations, then exit.
    Migrate,
    /// Run background job workers only (no API; probes and metrics on the
    /// admin listener) until SIGTERM/SIGINT.
    Worker,
    /// Inspect and operate the job queue.
    Jobs {
        /// What to do.
        #[command(subcommand)]
        action: JobsCommand,
    },
    /// Fill the database with a small sample (users, articles, tags,
    /// comments, follows, favorites), idempotently, and print commands to
    /// try with a demo user's token.
    Demo {
        /// Base URL of the API the printed commands call [default: the
        /// running private conduit's, else http://localhost:8080]
        #[arg(long)]
        url: Option<String>,
    },
}

/// `conduit jobs …`.
#[derive(Debug, Clone, Subcommand, PartialEq, Eq)]
pub enum JobsCommand {
    /// List jobs in one state, oldest first, with their last error.
    List {
        /// queued, running or dead.
        #[arg(long, default_value = "dead", value_parser = ["queued", "running", "dead"])]
        state: String,
        /// Most jobs listed.
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// Put dead jobs back in the queue with a fresh set of attempts.
    Requeue {
        /// Ids of the dead jobs to re-queue.
        #[arg(required_unless_present = "all_dead")]
        ids: Vec<i64>,
        /// Re-queue every dead job.
        #[arg(long, conflicts_with = "ids")]
        all_dead: bool,
    },
    /// Enqueue canary jobs: they check that workers run jobs end to end.
    Canary {
        /// How many.
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// How long each takes, in milliseconds.
        #[arg(long, default_value_t = 0)]
        sleep_ms: u64,
        /// How many of each one's first attempts fail (to see retries work).
        #[arg(long, default_value_t = 0)]
        fail_attempts: u32,
    },
}

/// Help headings: the settings in groups.
const LISTENING: &str = "Listening and connections";
const DATABASE: &str = "Database";
const TOKENS: &str = "Tokens";
const REQUESTS: &str = "Requests";
const RATE_LIMITS: &str = "Rate limits";
const RESPONSES: &str = "Responses and browsers";
const STREAMS: &str = "Streams";
const JOBS: &str = "Background jobs";
const PROBES: &str = "Probes, start and stop";
const LOGGING: &str = "Logging";

/// The subcommands that read each group of settings besides `serve`, which
/// reads them all (unlisted groups are `serve`'s alone). A subcommand's help
/// shows only the settings it reads, and it refuses the others' flags.
const READERS: &[(&str, &[&str])] = &[
    (DATABASE, &["migrate", "worker", "jobs", "demo"]),
    (LOGGING, &["migrate", "worker", "jobs", "demo"]),
    (TOKENS, &["demo"]),
    (JOBS, &["worker"]),
    (PROBES, &["worker"]),
];

/// The settings `-h` shows (`--help` shows them all): the ones a first run
/// or a first deployment sets.
const SHORT_HELP: &[&str] = &[
    "listen",
    "admin_listen",
    "database_url",
    "data_dir",
    "jwt_secret",
    "redis_url",
    "tls_cert",
    "tls_key",
    "job_workers",
    "log_level",
    "log_format",
];

/// Whether `subcommand` reads the setting `arg`.
fn reads(subcommand: &str, arg: &clap::Arg) -> bool {
    subcommand == "serve"
        || arg.get_help_heading().is_some_and(|heading| {
            READERS.iter().any(|(group, readers)| *group == heading && readers.contains(&subcommand))
        })
}

impl Cli {
    /// The command line: [`Cli`]'s, where every subcommand but `serve`
    /// shows only the settings it reads. The others are hidden copies, not
    /// global, so that clap does not spread the visible ones into them.
    pub fn command_line() -> clap::Command {
        use clap::CommandFactory as _;
        let mut command = Self::command().mut_args(|arg| {
            let short = SHORT_HELP.contains(&arg.get_id().as_str()) || !arg.is_global_set();
            arg.hide_short_help(!short)
        });
        let settings: Vec<clap::Arg> = command.get_arguments().filter(|arg| arg.is_global_set()).cloned().collect();
        let names: Vec<String> = command.get_subcommands().map(|sub| sub.get_name().to_owned()).collect();
        for name in names {
            command = command.mut_subcommand(&name, |mut sub| {
                for arg in settings.iter().filter(|arg| !reads(&name, arg)) {
                    sub = sub.arg(arg.clone().global(false).hide(true));
                }
                sub
            });
        }
        command
    }

    /// Parses a command line (and the environment), refusing a setting
    /// given to a subcommand that does not read it.
    pub fn parse_from_args<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        use clap::FromArgMatches as _;
        let mut command = Self::command_line();
        let matches = command.try_get_matches_from_mut(args)?;
        if let Some((name, _)) = matches.subcommand() {
            // clap copies a global setting's value to every level, so the
            // top level sees the flag wherever it was given.
            let given = |arg: &&clap::Arg| {
                matches.value_source(arg.get_id().as_str()) == Some(clap::parser::ValueSource::CommandLine)
            };
            let refused = command.get_arguments().filter(|arg| arg.is_global_set() && !reads(name, arg)).find(given);
            if let Some(flag) = refused.map(|arg| arg.get_long().unwrap_or_default().to_owned()) {
                let message =
                    format!("`conduit {name}` has no setting --{flag} (`conduit {name} --help` lists its settings)");
                return Err(command.error(clap::error::ErrorKind::ArgumentConflict, message));
            }
        }
        Self::from_arg_matches(&matches)
    }
}

/// Everything the service can be configured with.
#[derive(Debug, Clone, Args)]
pub struct Settings {
    /// Address to listen on for gRPC and HTTP (HTTP/1.1 and HTTP/2, cleartext).
    #[arg(long, env = "CONDUIT_LISTEN", default_value = "0.0.0.0:8080", global = true, help_heading = LISTENING)]
    pub listen: SocketAddr,

    /// PEM certificate chain: with TLS_KEY, the main listener speaks TLS
    /// (HTTP/2 or HTTP/1.1 by ALPN); both files are read again on SIGHUP
    /// or when they change.
    #[arg(long, env = "TLS_CERT", global = true, help_heading = LISTENING)]
    pub tls_cert: Option<std::path::PathBuf>,

    /// PEM private key of TLS_CERT.
    #[arg(long, env = "TLS_KEY", global = true, help_heading = LISTENING)]
    pub tls_key: Option<std::path::PathBuf>,

    /// Most connections open at once; 0 sizes it from the open-files limit
    /// (raised to its hard limit at start), keeping 512 descriptors for the
    /// admin listener, the database pools and files. More are closed at once.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 0, global = true, help_heading = LISTENING)]
    pub max_connections: usize,

    /// Most connections open at once from one peer address; 0 turns the
    /// bound off (set it above a proxy's connection pool when one is in front).
    #[arg(long, env = "MAX_CONNECTIONS_PER_ADDRESS", default_value_t = 1024, global = true, help_heading = LISTENING)]
    pub max_connections_per_address: usize,

    /// Longest a client may take to send a request's head (HTTP/1.1) or the
    /// HTTP/2 preface and SETTINGS; a new connection that sends neither in
    /// time is closed, and idle keep-alive connections are closed after it too.
    #[arg(long, env = "HEADER_READ_TIMEOUT", default_value = "10s", value_parser = parse_duration, global = true, help_heading = LISTENING)]
    pub header_read_timeout: Duration,

    /// Largest request head (request line and headers) accepted, in bytes:
    /// 431 over HTTP/1.1, the HTTP/2 header list limit.
    #[arg(long, env = "MAX_HEADER_BYTES", default_value_t = 64 * 1024, global = true, help_heading = LISTENING)]
    pub max_header_bytes: usize,

    /// Most concurrent streams (calls) on one HTTP/2 connection.
    #[arg(long, env = "HTTP2_MAX_CONCURRENT_STREAMS", default_value_t = 256, global = true, help_heading = LISTENING)]
    pub http2_max_concurrent_streams: u32,

    /// HTTP/2 keep-alive ping interval; a peer silent for as long again is dropped.
    #[arg(long, env = "HTTP2_KEEP_ALIVE", default_value = "20s", value_parser = parse_duration, global = true, help_heading = LISTENING)]
    pub http2_keep_alive: Duration,

    /// Networks of reverse proxies whose `X-Forwarded-For`/`Forwarded`
    /// headers name the client (comma-separated CIDRs such as
    /// 10.0.0.0/8,127.0.0.1/32); from any other peer they are ignored.
    #[arg(long, env = "TRUSTED_PROXIES", default_value = "", global = true, help_heading = LISTENING)]
    pub trusted_proxies: String,

    /// PostgreSQL connection URL, e.g. postgres://user@127.0.0.1:5432/conduit.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true, help_heading = DATABASE)]
    pub database_url: Option<Secret>,

    /// A direct connection to the same PostgreSQL, for what a
    /// transaction-mode pooler (PgBouncer) in DATABASE_URL cannot carry:
    /// the one connection that LISTENs and the migrations (which hold a
    /// session lock). Unset: DATABASE_URL serves both.
    #[arg(long, env = "DATABASE_DIRECT_URL", global = true, hide_env_values = true, help_heading = DATABASE)]
    pub database_direct_url: Option<Secret>,

    /// Where conduit keeps its own files (the private PostgreSQL started when
    /// DATABASE_URL is unset, and its generated JWT secret).
    #[arg(long, env = "CONDUIT_DATA_DIR", global = true, help_heading = DATABASE)]
    pub data_dir: Option<std::path::PathBuf>,

    /// Directory holding PostgreSQL's initdb and postgres, for the private
    /// server started when DATABASE_URL is unset (searched for otherwise).
    #[arg(long, env = "CONDUIT_PG_BIN", global = true, help_heading = DATABASE)]
    pub pg_bin: Option<std::path::PathBuf>,

    /// How long to wait for a free database connection before failing a call.
    #[arg(long, env = "DB_ACQUIRE_TIMEOUT", default_value = "5s", value_parser = parse_duration, global = true, help_heading = DATABASE)]
    pub db_acquire_timeout: Duration,

    /// PostgreSQL streaming replicas of DATABASE_URL's server
    /// (comma-separated URLs, each one standby or a load-balanced read-only
    /// endpoint) that calls declared free of side effects may read from; every other call, and every read of a caller whose writes
    /// a replica has not replayed yet, goes to DATABASE_URL. Unset: every
    /// call goes to DATABASE_URL.
    #[arg(long, env = "READ_DATABASE_URL", global = true, hide_env_values = true, help_heading = REQUESTS)]
    pub read_database_url: Option<Secret>,

    /// Most replication lag a read accepts: a replica further behind the
    /// primary is left out until it catches up.
    #[arg(long, env = "READ_MAX_LAG", default_value = "1s", value_parser = parse_duration, global = true, help_heading = REQUESTS)]
    pub read_max_lag: Duration,

    /// Connections to each replica URL (each polled and routed on its own).
    #[arg(long, env = "READ_DB_MAX_CONNECTIONS", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1000), global = true, help_heading = REQUESTS)]
    pub read_db_max_connections: u32,

    /// Secret that signs and checks tokens (HS256), at least 32 bytes.
    #[arg(long, env = "JWT_SECRET", global = true, hide_env_values = true, help_heading = TOKENS)]
    pub jwt_secret: Option<Secret>,

    /// How long a token stays valid, e.g. 3600s, 90m, 24h, 7d.
    #[arg(long, env = "JWT_TTL", default_value = "24h", value_parser = parse_duration, global = true, help_heading = TOKENS)]
    pub jwt_ttl: Duration,

    /// Largest request body accepted, in bytes, on every protocol: a larger
    /// JSON body gets 413, a larger gRPC, gRPC-Web or Connect message
    /// RESOURCE_EXHAUSTED (compressed ones counted as they decompress).
    #[arg(long, env = "BODY_LIMIT", default_value_t = 1024 * 1024, global = true, help_heading = REQUESTS)]
    pub body_limit: usize,

    /// Longest a client may take to send the body of a unary or
    /// server-streaming call, which is read before the call is admitted;
    /// longer gets 408 / DEADLINE_EXCEEDED (10 s carry BODY_LIMIT at 1 Mbit/s).
    #[arg(long, env = "BODY_READ_TIMEOUT", default_value = "10s", value_parser = parse_duration, global = true, help_heading = REQUESTS)]
    pub body_read_timeout: Duration,

    /// Most request bodies read at once from one client address (see
    /// TRUSTED_PROXIES); more get 429 / RESOURCE_EXHAUSTED at once. 0 turns
    /// the bound off.
    #[arg(long, env = "BODY_READS_PER_ADDRESS", default_value_t = 64, global = true, help_heading = REQUESTS)]
    pub body_reads_per_address: usize,

    /// How long a signed-in write sent with an `Idempotency-Key` is
    /// remembered: a retry with the same key within it gets the first
    /// answer again instead of writing twice.
    #[arg(long, env = "IDEMPOTENCY_KEY_RETENTION", default_value = "24h", value_parser = parse_duration, global = true, help_heading = REQUESTS)]
    pub idempotency_key_retention: Duration,

    /// Longest a call may take before its answer starts; longer ones get
    /// 504 / DEADLINE_EXCEEDED (client deadlines that are shorter win).
    #[arg(long, env = "REQUEST_TIMEOUT", default_value = "30s", value_parser = parse_duration, global = true, help_heading = REQUESTS)]
    pub request_timeout: Duration,

    /// Most requests served at once; more are refused at once with 503 /
    /// UNAVAILABLE and `Retry-After` rather than queued without bound.
    #[arg(long, env = "MAX_CONCURRENT_REQUESTS", default_value_t = 1024, global = true, help_heading = REQUESTS)]
    pub max_concurrent_requests: usize,

    /// Most database connections in the API's pool. `serve` holds one of
    /// them for its `LISTEN`s (cache invalidation, notifications, revoked
    /// sessions, job wake-ups), so at least two.
    #[arg(long, env = "DB_MAX_CONNECTIONS", default_value_t = 16, value_parser = clap::value_parser!(u32).range(2..=1000), global = true, help_heading = REQUESTS)]
    pub db_max_connections: u32,

    /// Most password hashes computed at once (each holds 19 MiB for ~20 ms);
    /// 0 means one per CPU core.
    #[arg(long, env = "PASSWORD_HASH_CONCURRENCY", default_value_t = 0, global = true, help_heading = REQUESTS)]
    pub password_hash_concurrency: usize,

    /// `full` (every layer) or `minimal` (only what the API's behaviour
    /// needs: classification, authentication, dispatch), to measure what
    /// the operational layers cost; not for production.
    #[arg(long, env = "MIDDLEWARE", default_value = "full", value_parser = ["full", "minimal"], global = true, help_heading = REQUESTS)]
    pub middleware: String,

    /// Calls allowed per identity (user, else client address), as N/s,
    /// N/min or N/h; more get 429 / RESOURCE_EXHAUSTED.
    #[arg(long, env = "RATE_LIMIT", default_value = "600/min", value_parser = crate::middleware::ratelimit::Rate::parse, global = true, help_heading = RATE_LIMITS)]
    pub rate_limit: crate::middleware::ratelimit::Rate,

    /// Logins and registrations allowed per identity (against credential
    /// stuffing), as N/s, N/min or N/h.
    #[arg(long, env = "RATE_LIMIT_CREDENTIALS", default_value = "10/min", value_parser = crate::middleware::ratelimit::Rate::parse, global = true, help_heading = RATE_LIMITS)]
    pub rate_limit_credentials: crate::middleware::ratelimit::Rate,

    /// Failed logins allowed per account and client address, as N/s, N/min
    /// or N/h (a bucket of N refilled over the period; a successful login
    /// empties the count): guessing one account's password from many
    /// addresses gets N per address, and the owner, from their own address,
    /// is never locked out by someone else's failures.
    #[arg(long, env = "RATE_LIMIT_LOGIN_FAILURES", default_value = "10/h", value_parser = crate::middleware::ratelimit::Rate::parse, global = true, help_heading = RATE_LIMITS)]
    pub rate_limit_login_failures: crate::middleware::ratelimit::Rate,

    /// Redis URL (redis://host:port/db): rate-limit buckets are shared
    /// through it by every replica; unset, each process keeps its own.
    #[arg(long, env = "REDIS_URL", global = true, help_heading = RATE_LIMITS)]
    pub redis_url: Option<String>,

    /// What rate limiting does when Redis fails: `open` lets calls through,
    /// `closed` refuses them.
    #[arg(long, env = "RATE_LIMIT_REDIS_FAILURE", default_value = "open", value_parser = ["open", "closed"], global = true, help_heading = RATE_LIMITS)]
    pub rate_limit_redis_failure: String,

    /// Prefix of the rate-limit keys in Redis.
    #[arg(long, env = "RATE_LIMIT_REDIS_PREFIX", default_value = "conduit:ratelimit:", global = true, help_heading = RATE_LIMITS)]
    pub rate_limit_redis_prefix: String,

    /// Longest a rate-limit check waits for Redis; a check that fails or
    /// takes longer makes checks do without Redis until it answers again.
    #[arg(long, env = "RATE_LIMIT_REDIS_TIMEOUT", default_value = "25ms", value_parser = parse_duration, global = true, help_heading = RATE_LIMITS)]
    pub rate_limit_redis_timeout: Duration,

    /// How often a Redis found failing is pinged until it answers.
    #[arg(long, env = "RATE_LIMIT_REDIS_PROBE", default_value = "500ms", value_parser = parse_duration, global = true, help_heading = RATE_LIMITS)]
    pub rate_limit_redis_probe: Duration,

    /// Longest an anonymous read stays in the response cache (writes clear
    /// it at once, in every replica); 0s turns the cache off.
    #[arg(long, env = "CACHE_TTL", default_value = "5s", value_parser = parse_duration, global = true, help_heading = RESPONSES)]
    pub cache_ttl: Duration,

    /// Memory the response cache may hold, in bytes (oldest entries go first).
    #[arg(long, env = "CACHE_MAX_BYTES", default_value_t = 64 * 1024 * 1024, global = true, help_heading = RESPONSES)]
    pub cache_max_bytes: usize,

    /// Smallest answer compressed (gzip, br or zstd, as the client accepts),
    /// in bytes; answers of unknown length are compressed too.
    #[arg(long, env = "COMPRESSION_MIN_BYTES", default_value_t = 1024, global = true, help_heading = RESPONSES)]
    pub compression_min_bytes: u64,

    /// Shortest time between two cross-replica signals (cache
    /// invalidations, job wake-ups) sent by this process: the signals
    /// raised meanwhile go out together in one NOTIFY, so writes never pay
    /// a NOTIFY each; other replicas hear of them up to this late.
    #[arg(long, env = "SIGNAL_INTERVAL", default_value = "10ms", value_parser = parse_duration, global = true, help_heading = RESPONSES)]
    pub signal_interval: Duration,

    /// Origins browsers may call the JSON API from: `*` for any, or a
    /// comma-separated list such as https://app.example.com,http://localhost:4200.
    #[arg(long, env = "CORS_ALLOWED_ORIGINS", default_value = "*", global = true, help_heading = RESPONSES)]
    pub cors_allowed_origins: String,

    /// Request headers browsers may send cross-origin, beyond the ones every
    /// protocol needs (authorization, content-type, x-grpc-web, x-user-agent,
    /// grpc-timeout, connect-protocol-version, connect-timeout-ms, …);
    /// comma-separated.
    #[arg(long, env = "CORS_ALLOWED_HEADERS", default_value = "", global = true, help_heading = RESPONSES)]
    pub cors_allowed_headers: String,

    /// How long browsers may cache a CORS preflight answer.
    #[arg(long, env = "CORS_MAX_AGE", default_value = "1h", value_parser = parse_duration, global = true, help_heading = RESPONSES)]
    pub cors_max_age: Duration,

    /// Notification watch streams one user may have open at once.
    #[arg(long, env = "WATCH_MAX_PER_USER", default_value_t = 8, global = true, help_heading = STREAMS)]
    pub watch_max_per_user: usize,

    /// Silence after which a watch stream sends a keep-alive message (so
    /// that proxies and clients do not time it out).
    #[arg(long, env = "WATCH_KEEP_ALIVE", default_value = "15s", value_parser = parse_duration, global = true, help_heading = STREAMS)]
    pub watch_keep_alive: Duration,

    /// Rows an export reads from its cursor at a time (its memory bound).
    #[arg(long, env = "EXPORT_BATCH", default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=100_000), global = true, help_heading = STREAMS)]
    pub export_batch: u32,

    /// Article exports running at once (each holds a database connection
    /// while its client reads); more get 503 / UNAVAILABLE.
    #[arg(long, env = "EXPORT_MAX_CONCURRENT", default_value_t = 4, global = true, help_heading = STREAMS)]
    pub export_max_concurrent: usize,

    /// Longest a client may read nothing of an export before it is ended
    /// (with DEADLINE_EXCEEDED after the articles sent).
    #[arg(long, env = "EXPORT_STALL_TIMEOUT", default_value = "30s", value_parser = parse_duration, global = true, help_heading = STREAMS)]
    pub export_stall_timeout: Duration,

    /// Background jobs run at once by this process (`serve` and `worker`);
    /// 0 runs none in `serve` (leave them to `conduit worker` processes).
    #[arg(long, env = "JOB_WORKERS", default_value_t = 4, global = true, help_heading = JOBS)]
    pub job_workers: usize,

    /// How long a worker may hold a job before another may take it over: a
    /// crashed worker's jobs run again this long after it took them.
    #[arg(long, env = "JOB_LEASE", default_value = "30s", value_parser = parse_duration, global = true, help_heading = JOBS)]
    pub job_lease: Duration,

    /// How often idle workers look for due retries and expired leases (new
    /// jobs wake them at once by LISTEN/NOTIFY).
    #[arg(long, env = "JOB_POLL_INTERVAL", default_value = "1s", value_parser = parse_duration, global = true, help_heading = JOBS)]
    pub job_poll_interval: Duration,

    /// Attempts a job gets before it is dead (kept for `conduit jobs`).
    #[arg(long, env = "JOB_MAX_ATTEMPTS", default_value_t = 10, value_parser = clap::value_parser!(i32).range(1..), global = true, help_heading = JOBS)]
    pub job_max_attempts: i32,

    /// Delay before a failed job's first retry; each next one doubles (with jitter).
    #[arg(long, env = "JOB_RETRY_BASE", default_value = "1s", value_parser = parse_duration, global = true, help_heading = JOBS)]
    pub job_retry_base: Duration,

    /// Longest delay between retries.
    #[arg(long, env = "JOB_RETRY_MAX", default_value = "10m", value_parser = parse_duration, global = true, help_heading = JOBS)]
    pub job_retry_max: Duration,

    /// Most first attempts of quick jobs (notifications) done together in
    /// one transaction; 1 does every job alone.
    #[arg(long, env = "JOB_BATCH", default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..), global = true, help_heading = JOBS)]
    pub job_batch: u32,

    /// Shortest time between two looks at the queue when jobs keep coming:
    /// jobs enqueued within it are done in one batch, and the workers' CPU
    /// stays bounded under a write load (notifications arrive up to this late).
    #[arg(long, env = "JOB_BATCH_WINDOW", default_value = "10ms", value_parser = parse_duration, global = true, help_heading = JOBS)]
    pub job_batch_window: Duration,

    /// Address of the admin listener: the Prometheus scrape `/metrics` and
    /// the probes `/healthz` and `/readyz`. Port 8079 sits beside the API's
    /// 8080 and is no common tool's default (Prometheus has 9090).
    #[arg(long, env = "CONDUIT_ADMIN_LISTEN", default_value = "0.0.0.0:8079", global = true, help_heading = PROBES)]
    pub admin_listen: SocketAddr,

    /// How often readiness (gRPC health) checks that the database answers,
    /// over a connection of its own (a lost one is noticed at once).
    #[arg(long, env = "HEALTH_CHECK_INTERVAL", default_value = "5s", value_parser = parse_duration, global = true, help_heading = PROBES)]
    pub health_check_interval: Duration,

    /// How often a database found down is probed; service resumes at the
    /// first probe that succeeds.
    #[arg(long, env = "HEALTH_PROBE_INTERVAL", default_value = "250ms", value_parser = parse_duration, global = true, help_heading = PROBES)]
    pub health_probe_interval: Duration,

    /// Apply pending migrations when `serve` starts.
    #[arg(long, env = "MIGRATE_ON_START", default_value_t = true, action = clap::ArgAction::Set, global = true, help_heading = PROBES)]
    pub migrate_on_start: bool,

    /// After SIGTERM/SIGINT, how long the process stays not-ready but still
    /// accepts connections, so that load balancers stop sending work first.
    #[arg(long, env = "DRAIN_DELAY", default_value = "5s", value_parser = parse_duration, global = true, help_heading = PROBES)]
    pub drain_delay: Duration,

    /// After the drain delay, how long calls in flight get to finish before
    /// the process exits anyway.
    #[arg(long, env = "DRAIN_TIMEOUT", default_value = "20s", value_parser = parse_duration, global = true, help_heading = PROBES)]
    pub drain_timeout: Duration,

    /// Log filter, e.g. info or conduit=debug,sqlx=warn.
    #[arg(long, env = "LOG_LEVEL", default_value = "info", global = true, help_heading = LOGGING)]
    pub log_level: String,

    /// Log format: auto (JSON lines unless stderr is a terminal), text or json.
    #[arg(long, env = "LOG_FORMAT", default_value = "auto", value_parser = ["auto", "text", "json"], global = true, help_heading = LOGGING)]
    pub log_format: String,
}

/// A setting that must not appear in logs or debug output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret text, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Self(s)
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

/// `url` if it is a PostgreSQL URL, else an error naming `setting`.
fn postgres_url(url: &Secret, setting: &str) -> Result<Secret, String> {
    if url.expose().starts_with("postgres://") || url.expose().starts_with("postgresql://") {
        Ok(url.clone())
    } else {
        Err(format!("{setting} must be a postgres:// URL"))
    }
}

/// Longest token lifetime accepted: a year, and far from any overflow.
const MAX_JWT_TTL: Duration = Duration::from_secs(366 * 86_400);

/// Settings checked for `serve`: required values present and sane.
#[derive(Debug, Clone)]
pub struct ServeSettings {
    /// Database URL.
    pub database_url: Secret,
    /// A direct connection for the listener and migrations when
    /// `database_url` goes through a pooler; `None`: `database_url`.
    pub database_direct_url: Option<Secret>,
    /// Listen address.
    pub listen: SocketAddr,
    /// Admin listen address (probes).
    pub admin_listen: SocketAddr,
    /// Token signing secret.
    pub jwt_secret: Secret,
    /// Token lifetime.
    pub jwt_ttl: Duration,
    /// Body limit in bytes.
    pub body_limit: usize,
    /// Most requests served at once.
    pub max_concurrent_requests: usize,
    /// Longest wait for a unary call's body.
    pub body_read_timeout: Duration,
    /// How long keyed writes' answers are kept.
    pub idempotency_key_retention: Duration,
    /// Most bodies read at once per client address (`usize::MAX`: no bound).
    pub body_reads_per_address: usize,
    /// Server-side bound of a call.
    pub request_timeout: Duration,
    /// Calls per identity.
    pub rate_limit: crate::middleware::ratelimit::Rate,
    /// Logins and registrations per identity.
    pub rate_limit_credentials: crate::middleware::ratelimit::Rate,
    /// Failed logins per account and client address.
    pub rate_limit_login_failures: crate::middleware::ratelimit::Rate,
    /// Redis for shared rate limits.
    pub redis_url: Option<Secret>,
    /// Whether calls pass when Redis fails.
    pub rate_limit_redis_fail_open: bool,
    /// Prefix of the rate-limit keys.
    pub rate_limit_redis_prefix: String,
    /// How long Redis may take, and how often it is probed while down.
    pub rate_limit_redis_timings: crate::middleware::ratelimit::StoreTimings,
    /// Pool size.
    pub db_max_connections: u32,
    /// Pool acquire timeout.
    pub db_acquire_timeout: Duration,
    /// Where reads free of side effects may be served (empty: the primary).
    pub reads: crate::postgres::replicas::ReadSettings,
    /// Concurrent password hashes.
    pub password_hash_concurrency: usize,
    /// Browser origins allowed by CORS; `None` means any.
    pub cors_allowed_origins: Option<Vec<http::HeaderValue>>,
    /// Extra request headers allowed by CORS.
    pub cors_allowed_headers: Vec<http::HeaderName>,
    /// How long browsers may cache a preflight answer.
    pub cors_max_age: Duration,
    /// Period of the database check behind gRPC health.
    pub health_check_interval: Duration,
    /// Probe interval while the database is down.
    pub health_probe_interval: Duration,
    /// Migrate at start-up.
    pub migrate_on_start: bool,
    /// How connections are served (head limits, HTTP/2, drain deadline).
    pub connection_limits: crate::server::ConnectionLimits,
    /// Not-ready time before accepting stops, when draining.
    pub drain_delay: Duration,
    /// Proxies whose forwarding headers are believed.
    pub trusted_proxies: Vec<crate::middleware::client::Network>,
    /// Age bound of the response cache (zero: off).
    pub cache_ttl: Duration,
    /// Shortest time between two cross-replica signals from this process.
    pub signal_interval: Duration,
    /// Memory bound of the response cache.
    pub cache_max_bytes: usize,
    /// Smallest answer compressed.
    pub compression_min_bytes: u64,
    /// Only the layers the API's behaviour needs (for measurements).
    pub minimal_middleware: bool,
    /// Certificate and key files, when the main listener speaks TLS.
    pub tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// Background job workers (none when concurrency is 0).
    pub jobs: crate::postgres::jobs::WorkerSettings,
    /// Watch streams per user.
    pub watch_max_per_user: usize,
    /// Keep-alive period of watch streams.
    pub watch_keep_alive: Duration,
    /// How exports read.
    pub exports: crate::domain::Exports,
}

impl Settings {
    /// The documented defaults, whatever the environment says (the `env`
    /// of every setting is ignored): what tests and tools start from before
    /// changing the few settings they care about.
    pub fn defaults() -> Self {
        use clap::FromArgMatches as _;
        let command = Self::augment_args(clap::Command::new("conduit")).mut_args(|arg| arg.env(None));
        let matches = command.try_get_matches_from(["conduit"]).expect("every setting has a default or is optional");
        Self::from_arg_matches(&matches).expect("the defaults parse")
    }

    /// The database URL, or why it is missing.
    pub fn require_database_url(&self) -> Result<Secret, String> {
        match &self.database_url {
            Some(url) => postgres_url(url, "DATABASE_URL"),
            None => Err("DATABASE_URL (or --database-url) is required".into()),
        }
    }

    /// The direct database URL when one is set, checked; it only makes
    /// sense beside a DATABASE_URL.
    pub fn require_direct_url(&self) -> Result<Option<Secret>, String> {
        match (&self.database_direct_url, &self.database_url) {
            (None, _) => Ok(None),
            (Some(_), None) => Err("DATABASE_DIRECT_URL is set without DATABASE_URL".into()),
            (Some(url), Some(_)) => postgres_url(url, "DATABASE_DIRECT_URL").map(Some),
        }
    }

    /// These settings with DATABASE_URL replaced by DATABASE_DIRECT_URL
    /// when it is set: for commands whose every statement must bypass a
    /// pooler (`migrate`, `demo`, which migrates).
    #[must_use]
    pub fn direct(&self) -> Self {
        let mut direct = self.clone();
        if let Some(url) = direct.database_direct_url.take() {
            direct.database_url = Some(url);
        }
        direct
    }

    /// The token secret, or why it is missing or unusable; the token
    /// lifetime is checked with it.
    pub fn require_jwt_secret(&self) -> Result<Secret, String> {
        if self.jwt_ttl.is_zero() || self.jwt_ttl > MAX_JWT_TTL {
            return Err("JWT_TTL must be longer than zero and at most 366d".into());
        }
        match &self.jwt_secret {
            Some(s) if s.expose().len() >= 32 => Ok(s.clone()),
            Some(_) => Err("JWT_SECRET must be at least 32 bytes long".into()),
            None => Err("JWT_SECRET (or --jwt-secret) is required".into()),
        }
    }

    /// How connections are served (head limits, HTTP/2, drain deadline).
    pub fn connection_limits(&self) -> crate::server::ConnectionLimits {
        crate::server::ConnectionLimits {
            header_read_timeout: self.header_read_timeout,
            max_header_bytes: self.max_header_bytes,
            max_connections: self.max_connections,
            max_connections_per_address: self.max_connections_per_address,
            http2_max_concurrent_streams: self.http2_max_concurrent_streams,
            http2_keep_alive: self.http2_keep_alive,
            drain_timeout: self.drain_timeout,
        }
    }

    /// The read replicas' settings, checked.
    pub fn read_settings(&self) -> Result<crate::postgres::replicas::ReadSettings, String> {
        let urls = match &self.read_database_url {
            None => Vec::new(),
            Some(list) => list
                .expose()
                .split(',')
                .map(str::trim)
                .filter(|url| !url.is_empty())
                .map(|url| {
                    postgres_url(&Secret::from(url.to_owned()), "READ_DATABASE_URL").map(|u| u.expose().to_owned())
                })
                .collect::<Result<Vec<_>, _>>()?,
        };
        if !urls.is_empty() && self.read_max_lag.is_zero() {
            return Err("READ_MAX_LAG must be longer than zero".into());
        }
        Ok(crate::postgres::replicas::ReadSettings {
            urls,
            max_lag: self.read_max_lag,
            max_connections: self.read_db_max_connections,
        })
    }

    /// The job workers' settings, checked.
    pub fn workers(&self) -> Result<crate::postgres::jobs::WorkerSettings, String> {
        for (name, value) in [
            ("JOB_LEASE", self.job_lease),
            ("JOB_POLL_INTERVAL", self.job_poll_interval),
            ("JOB_RETRY_BASE", self.job_retry_base),
        ] {
            if value.is_zero() {
                return Err(format!("{name} must be longer than zero"));
            }
        }
        if self.job_retry_max < self.job_retry_base {
            return Err("JOB_RETRY_MAX must be at least JOB_RETRY_BASE".into());
        }
        Ok(crate::postgres::jobs::WorkerSettings {
            concurrency: self.job_workers,
            lease: self.job_lease,
            poll_interval: self.job_poll_interval,
            max_attempts: self.job_max_attempts,
            retry_base: self.job_retry_base,
            retry_max: self.job_retry_max,
            drain_timeout: self.drain_delay + self.drain_timeout,
            batch: self.job_batch as usize,
            batch_window: self.job_batch_window,
        })
    }

    /// Checks what `serve` needs.
    pub fn for_serve(&self) -> Result<ServeSettings, String> {
        let database_url = self.require_database_url()?;
        let database_direct_url = self.require_direct_url()?;
        let jobs = self.workers()?;
        if self.watch_max_per_user == 0 {
            return Err("WATCH_MAX_PER_USER must be at least 1".into());
        }
        if self.export_stall_timeout.is_zero() {
            return Err("EXPORT_STALL_TIMEOUT must be longer than zero".into());
        }
        if self.export_max_concurrent == 0 {
            return Err("EXPORT_MAX_CONCURRENT must be at least 1".into());
        }
        if self.watch_keep_alive.is_zero() {
            return Err("WATCH_KEEP_ALIVE must be longer than zero".into());
        }
        let jwt_secret = self.require_jwt_secret()?;
        if self.body_limit == 0 {
            return Err("BODY_LIMIT must be at least 1 byte".into());
        }
        if self.request_timeout.is_zero() {
            return Err("REQUEST_TIMEOUT must be longer than zero".into());
        }
        if self.rate_limit_redis_timeout.is_zero() || self.rate_limit_redis_probe.is_zero() {
            return Err("RATE_LIMIT_REDIS_TIMEOUT and RATE_LIMIT_REDIS_PROBE must be longer than zero".into());
        }
        if self.body_read_timeout.is_zero() {
            return Err("BODY_READ_TIMEOUT must be longer than zero".into());
        }
        if self.max_concurrent_requests == 0 {
            return Err("MAX_CONCURRENT_REQUESTS must be at least 1".into());
        }
        let cors_allowed_origins = match self.cors_allowed_origins.trim() {
            "*" => None,
            list => Some(
                list.split(',')
                    .map(str::trim)
                    .filter(|o| !o.is_empty())
                    .map(|o| {
                        http::HeaderValue::from_str(o)
                            .ok()
                            .filter(|_| o.starts_with("http://") || o.starts_with("https://"))
                            .ok_or_else(|| format!("CORS_ALLOWED_ORIGINS: {o:?} is not an origin like https://host"))
                    })
                    .collect::<Result<Vec<_>, String>>()?,
            ),
        };
        let cors_allowed_headers = self
            .cors_allowed_headers
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(|h| {
                http::HeaderName::from_bytes(h.as_bytes())
                    .map_err(|_| format!("CORS_ALLOWED_HEADERS: {h:?} is not a header name"))
            })
            .collect::<Result<Vec<_>, String>>()?;
        if self.health_check_interval.is_zero() || self.health_probe_interval.is_zero() {
            return Err("HEALTH_CHECK_INTERVAL and HEALTH_PROBE_INTERVAL must be longer than zero".into());
        }
        if self.header_read_timeout.is_zero() {
            return Err("HEADER_READ_TIMEOUT must be longer than zero".into());
        }
        if self.idempotency_key_retention < Duration::from_secs(1) {
            return Err("IDEMPOTENCY_KEY_RETENTION must be at least 1s".into());
        }
        if self.max_header_bytes < 1024 {
            return Err("MAX_HEADER_BYTES must be at least 1024".into());
        }
        if self.http2_max_concurrent_streams == 0 {
            return Err("HTTP2_MAX_CONCURRENT_STREAMS must be at least 1".into());
        }
        if self.http2_keep_alive.is_zero() {
            return Err("HTTP2_KEEP_ALIVE must be longer than zero".into());
        }
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
            (None, None) => None,
            _ => return Err("TLS_CERT and TLS_KEY go together: set both or neither".into()),
        };
        let trusted_proxies = self
            .trusted_proxies
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(|n| crate::middleware::client::Network::parse(n).map_err(|e| format!("TRUSTED_PROXIES: {e}")))
            .collect::<Result<Vec<_>, String>>()?;
        Ok(ServeSettings {
            database_url,
            database_direct_url,
            listen: self.listen,
            admin_listen: self.admin_listen,
            jwt_secret,
            jwt_ttl: self.jwt_ttl,
            body_limit: self.body_limit,
            max_concurrent_requests: self.max_concurrent_requests,
            body_read_timeout: self.body_read_timeout,
            idempotency_key_retention: self.idempotency_key_retention,
            body_reads_per_address: match self.body_reads_per_address {
                0 => usize::MAX,
                n => n,
            },
            request_timeout: self.request_timeout,
            rate_limit: self.rate_limit,
            rate_limit_credentials: self.rate_limit_credentials,
            rate_limit_login_failures: self.rate_limit_login_failures,
            redis_url: self.redis_url.clone().map(Secret::from),
            rate_limit_redis_fail_open: self.rate_limit_redis_failure == "open",
            rate_limit_redis_prefix: self.rate_limit_redis_prefix.clone(),
            rate_limit_redis_timings: crate::middleware::ratelimit::StoreTimings {
                timeout: self.rate_limit_redis_timeout,
                probe_interval: self.rate_limit_redis_probe,
            },
            db_max_connections: self.db_max_connections,
            db_acquire_timeout: self.db_acquire_timeout,
            reads: self.read_settings()?,
            password_hash_concurrency: match self.password_hash_concurrency {
                0 => std::thread::available_parallelism().map(usize::from).unwrap_or(1),
                n => n,
            },
            cors_allowed_origins,
            cors_allowed_headers,
            cors_max_age: self.cors_max_age,
            health_check_interval: self.health_check_interval,
            health_probe_interval: self.health_probe_interval,
            migrate_on_start: self.migrate_on_start,
            connection_limits: self.connection_limits(),
            drain_delay: self.drain_delay,
            trusted_proxies,
            cache_ttl: self.cache_ttl,
            signal_interval: self.signal_interval,
            cache_max_bytes: self.cache_max_bytes,
            compression_min_bytes: self.compression_min_bytes,
            minimal_middleware: self.middleware == "minimal",
            tls,
            jobs,
            watch_max_per_user: self.watch_max_per_user,
            watch_keep_alive: self.watch_keep_alive,
            exports: crate::domain::Exports {
                batch: self.export_batch as usize,
                max_concurrent: self.export_max_concurrent,
                stall_timeout: self.export_stall_timeout,
            },
        })
    }
}

/// Parses `500ms`, `30s`, `15m`, `24h`, `7d` or plain seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().map_err(|_| format!("{text:?} is not a duration like 30s, 15m or 24h"))?;
    let seconds = match unit {
        "ms" => return Ok(Duration::from_millis(n)),
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("{text:?} has an unknown unit (use ms, s, m, h or d)")),
    };
    Ok(Duration::from_secs(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5y").is_err());
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let defaults = Settings::defaults();
        assert_eq!(defaults.listen, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(defaults.jwt_ttl, Duration::from_secs(86_400));
        assert_eq!(defaults.job_workers, 4);
        assert!(defaults.database_url.is_none());
        assert_eq!(
            defaults.for_serve().err().as_deref(),
            Some("DATABASE_URL (or --database-url) is required"),
            "everything but the database has a usable default"
        );
    }

    /// The help `args` print.
    fn help(args: &[&str]) -> String {
        let error = Cli::command_line().try_get_matches_from(args).expect_err("help is printed as an early exit");
        assert_eq!(error.kind(), clap::error::ErrorKind::DisplayHelp);
        error.to_string()
    }

    #[test]
    fn each_subcommand_shows_only_the_settings_it_reads() {
        let jobs = help(&["conduit", "jobs", "list", "--help"]);
        for shown in ["--state", "--database-url", "--data-dir", "--log-level"] {
            assert!(jobs.contains(shown), "jobs list shows {shown}:\n{jobs}");
        }
        for hidden in ["--tls-cert", "--cors-max-age", "--job-workers", "--jwt-secret", "--listen"] {
            assert!(!jobs.contains(hidden), "jobs list hides {hidden}:\n{jobs}");
        }
        let worker = help(&["conduit", "worker", "--help"]);
        for shown in ["--job-workers", "--admin-listen", "--drain-timeout", "--database-url"] {
            assert!(worker.contains(shown), "worker shows {shown}:\n{worker}");
        }
        assert!(!worker.contains("--cors-max-age") && !worker.contains("--body-limit"), "{worker}");
        let demo = help(&["conduit", "demo", "--help"]);
        assert!(demo.contains("--jwt-secret") && demo.contains("--url") && !demo.contains("--job-workers"), "{demo}");
        let short = Cli::command_line().try_get_matches_from(["conduit", "-h"]).unwrap_err().to_string();
        assert!(short.contains("--database-url") && !short.contains("--cors-max-age"), "{short}");
        assert!(short.lines().count() < 80, "-h is short: {short}");
        let migrate = help(&["conduit", "migrate", "--help"]);
        assert!(migrate.contains("--database-url") && !migrate.contains("--jwt-secret"), "{migrate}");
        for everything in [help(&["conduit", "--help"]), help(&["conduit", "serve", "--help"])] {
            for shown in ["--cors-max-age", "--job-workers", "--jwt-secret", "--database-url", "Rate limits:"] {
                assert!(everything.contains(shown), "serve shows {shown}:\n{everything}");
            }
        }
    }

    #[test]
    fn a_setting_given_to_a_subcommand_that_does_not_read_it_is_refused() {
        for args in [
            &["conduit", "migrate", "--tls-cert", "cert.pem"][..],
            &["conduit", "--tls-cert", "cert.pem", "migrate"],
            &["conduit", "jobs", "list", "--cors-max-age", "1s"],
            &["conduit", "worker", "--body-limit", "10"],
        ] {
            let error = Cli::parse_from_args(args).expect_err("refused");
            let text = error.to_string();
            assert!(
                text.contains("--tls-cert") || text.contains("--cors-max-age") || text.contains("--body-limit"),
                "{args:?}: {text}"
            );
        }
        let cli = Cli::parse_from_args(["conduit", "--database-url", "postgres://db/x", "jobs", "list"]).unwrap();
        assert_eq!(cli.settings.database_url.as_ref().map(Secret::expose), Some("postgres://db/x"));
        assert!(matches!(cli.command, Some(Command::Jobs { action: JobsCommand::List { .. } })));
        let cli = Cli::parse_from_args(["conduit", "worker", "--job-workers", "2", "--log-level", "debug"]).unwrap();
        assert_eq!((cli.settings.job_workers, cli.settings.log_level.as_str()), (2, "debug"));
        let cli = Cli::parse_from_args(["conduit", "--listen", "127.0.0.1:1", "--cors-max-age", "2s"]).unwrap();
        assert_eq!((cli.command, cli.settings.cors_max_age), (None, Duration::from_secs(2)));
    }

    #[test]
    fn a_pool_too_small_for_the_listeners_is_refused() {
        let error = Cli::parse_from_args(["conduit", "--db-max-connections", "1"]).expect_err("refused");
        assert!(error.to_string().contains("--db-max-connections"), "{error}");
        let cli = Cli::parse_from_args(["conduit", "--db-max-connections", "2"]).unwrap();
        assert_eq!(cli.settings.db_max_connections, 2);
    }

    #[test]
    fn every_setting_is_in_a_group() {
        let command = Cli::command_line();
        for arg in command.get_arguments().filter(|arg| arg.is_global_set()) {
            assert!(
                arg.get_help_heading().is_some(),
                "{} has no help heading, so no command but serve reads it",
                arg.get_id()
            );
        }
    }

    #[test]
    fn secrets_do_not_print() {
        assert_eq!(format!("{:?}", Secret::from("hunter2".to_owned())), "Secret([redacted])");
    }
}
