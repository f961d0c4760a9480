//! Rate limiting: token buckets per identity — the user when the request is
//! authenticated, else the client's address — and per route class, checked
//! once above the protocol split. Login and registration have their own,
//! stricter class (against credential stuffing), always per address: a
//! token, which anyone can get by registering, never opens a new allowance.
//!
//! A refused call gets RESOURCE_EXHAUSTED with a `google.rpc.RetryInfo`
//! (429 + `Retry-After` over HTTP) and the `RateLimit-Policy` and
//! `RateLimit` headers of the IETF draft, in its own protocol.
//!
//! Buckets live in the process, or in Redis when `REDIS_URL` is set, so
//! that replicas share them: one atomic script per check, timed by the
//! Redis server's clock. A dead or hung Redis costs a call at most
//! `RATE_LIMIT_REDIS_TIMEOUT`, and only until it is noticed: a check that
//! fails or times out opens a breaker, checks then pass or are refused at
//! once (`RATE_LIMIT_REDIS_FAILURE`) without asking Redis, and one
//! background probe pings it every `RATE_LIMIT_REDIS_PROBE` until it
//! answers. Each transition is logged and counted once, not each call.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use http::{HeaderValue, Request, Response};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::domain::auth::{Caller, ClientAddress};
use crate::middleware::client::ClientAddresses;

/// `count` calls per `period`, in bursts of up to `count`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Calls allowed per period (the bucket's size).
    pub count: u32,
    /// The period.
    pub period: Duration,
}

impl Rate {
    /// Parses `N/s`, `N/min` or `N/h`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (count, unit) = text.trim().split_once('/').ok_or_else(|| format!("{text:?} is not N/s, N/min or N/h"))?;
        let count: u32 = count.trim().parse().map_err(|_| format!("{text:?}: {count:?} is not a count"))?;
        let period = match unit.trim() {
            "s" => Duration::from_secs(1),
            "min" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            other => return Err(format!("{text:?}: the unit {other:?} is not s, min or h")),
        };
        if count == 0 {
            return Err(format!("{text:?}: allow at least one call"));
        }
        Ok(Self { count, period })
    }
}

/// Which bucket a call draws from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Class {
    /// Login and registration.
    Credentials,
    /// Everything else.
    Default,
    /// Failed logins, per account and address.
    LoginFailures,
}

impl Class {
    fn of(rpc: &str) -> Self {
        match rpc {
            "/conduit.v1.Users/Login" | "/conduit.v1.Users/Register" => Self::Credentials,
            _ => Self::Default,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Credentials => "credentials",
            Self::Default => "default",
            Self::LoginFailures => "login-failures",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Identity {
    User(i64),
    Address(IpAddr),
    /// An account (a stable hash of its login name) tried from an address.
    Account(u64, IpAddr),
    /// Every identity new while the table is full: one shared budget.
    Overflow,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Most buckets kept; past it, buckets that have refilled (and so hold no
/// information) are dropped, at most once per [`SWEEP_EVERY`] so that a
/// full table does not cost a scan per call; identities that still find no
/// room share one overflow bucket until there is.
const MAX_BUCKETS: usize = 100_000;

/// Least time between two sweeps of a full table.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// The process's buckets.
#[derive(Debug, Default)]
struct Buckets {
    map: HashMap<(Class, Identity), Bucket>,
    swept: Option<Instant>,
}

impl Buckets {
    /// Takes a token from the bucket of `(class, identity)`, refilled at
    /// `rate`; `rate_of` gives the rate of any class (to sweep a full table
    /// of at most `max` buckets). `Err(wait)` when it is empty.
    fn take(
        &mut self,
        (class, identity): (Class, Identity),
        rate_of: &dyn Fn(Class) -> Rate,
        max: usize,
        now: Instant,
    ) -> Result<u32, Duration> {
        let rate = rate_of(class);
        let per_second = f64::from(rate.count) / rate.period.as_secs_f64();
        let capacity = f64::from(rate.count);
        let mut key = (class, identity);
        if self.map.len() >= max && !self.map.contains_key(&key) {
            if self.swept.is_none_or(|at| now.duration_since(at) >= SWEEP_EVERY) {
                self.swept = Some(now);
                self.map.retain(|(class, _), b| {
                    let rate = rate_of(*class);
                    let refill =
                        now.duration_since(b.at).as_secs_f64() * f64::from(rate.count) / rate.period.as_secs_f64();
                    b.tokens + refill < f64::from(rate.count)
                });
            }
            if self.map.len() >= max {
                key = (class, Identity::Overflow);
            }
        }
        let bucket = self.map.entry(key).or_insert(Bucket { tokens: capacity, at: now });
        bucket.tokens = (bucket.tokens + now.duration_since(bucket.at).as_secs_f64() * per_second).min(capacity);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(bucket.tokens as u32)
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / per_second))
        }
    }
}

/// The token-bucket script: refill by the time passed (Redis's clock), take
/// one token if there is one; returns {allowed, wait in ms}.
const SCRIPT: &str = r"
local capacity = tonumber(ARGV[1])
local per_ms = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = clock[1] * 1000 + math.floor(clock[2] / 1000)
local saved = redis.call('HMGET', KEYS[1], 't', 'at')
local tokens = tonumber(saved[1]) or capacity
local at = tonumber(saved[2]) or now
tokens = math.min(capacity, tokens + math.max(0, now - at) * per_ms)
local allowed, wait = 0, 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  wait = math.ceil((1 - tokens) / per_ms)
end
redis.call('HSET', KEYS[1], 't', tostring(tokens), 'at', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(capacity / per_ms) + 1000)
return {allowed, wait}
";

/// How long Redis may take, and how often a down Redis is probed.
#[derive(Debug, Clone, Copy)]
pub struct StoreTimings {
    /// Longest a check (or a probe) waits for Redis before it counts as failed.
    pub timeout: Duration,
    /// How often a Redis found failing is pinged until it answers.
    pub probe_interval: Duration,
}

/// Buckets shared through Redis.
#[derive(Clone)]
pub struct SharedBuckets {
    connection: redis::aio::ConnectionManager,
    script: Arc<redis::Script>,
    prefix: String,
    fail_open: bool,
    timings: StoreTimings,
    /// Set while Redis is believed down: checks do not ask it, one probe does.
    down: Arc<AtomicBool>,
    metrics: Option<crate::observability::metrics::Metrics>,
}

impl SharedBuckets {
    /// Connects to `url`; keys start with `prefix`. When Redis fails later,
    /// calls pass if `fail_open`, else they are refused, without waiting
    /// for it longer than `timings.timeout`.
    pub async fn connect(
        url: &str,
        prefix: &str,
        fail_open: bool,
        timings: StoreTimings,
    ) -> Result<Self, redis::RedisError> {
        let client = redis::Client::open(url)?;
        // Connecting may take a little longer than a command (a new TCP or
        // TLS session), but never long: the probe retries anyway.
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_response_timeout(timings.timeout)
            .set_connection_timeout(timings.timeout.max(Duration::from_secs(1)))
            .set_number_of_retries(1);
        let connection = redis::aio::ConnectionManager::new_with_config(client, config).await?;
        Ok(Self {
            connection,
            script: Arc::new(redis::Script::new(SCRIPT)),
            prefix: prefix.to_owned(),
            fail_open,
            timings,
            down: Arc::new(AtomicBool::new(false)),
            metrics: None,
        })
    }

    async fn take(&self, class: Class, identity: Identity, rate: Rate) -> Result<(), Duration> {
        if self.down.load(Ordering::Acquire) {
            return self.unchecked();
        }
        let key = self.key(class, identity);
        let per_ms = f64::from(rate.count) / rate.period.as_millis() as f64;
        let mut connection = self.connection.clone();
        let mut invocation = self.script.key(key);
        let call = invocation.arg(rate.count).arg(per_ms).invoke_async::<(i64, i64)>(&mut connection);
        match tokio::time::timeout(self.timings.timeout, call).await {
            Ok(Ok((1, _))) => Ok(()),
            Ok(Ok((_, wait))) => Err(Duration::from_millis(wait.max(1) as u64)),
            Ok(Err(error)) => {
                self.trip(&error);
                self.unchecked()
            }
            Err(_) => {
                self.trip(&format_args!("no answer within {:?}", self.timings.timeout));
                self.unchecked()
            }
        }
    }

    fn key(&self, class: Class, identity: Identity) -> String {
        match identity {
            Identity::User(id) => format!("{}{}:u{id}", self.prefix, class.name()),
            Identity::Address(ip) => format!("{}{}:a{ip}", self.prefix, class.name()),
            Identity::Account(account, ip) => format!("{}{}:{account:016x}:{ip}", self.prefix, class.name()),
            Identity::Overflow => format!("{}{}:overflow", self.prefix, class.name()),
        }
    }

    /// Refills a bucket (deletes its key); a failure is only logged, as the
    /// bucket refills by itself anyway.
    async fn forget(&self, class: Class, identity: Identity) {
        if self.down.load(Ordering::Acquire) {
            return;
        }
        let mut connection = self.connection.clone();
        let mut command = redis::cmd("DEL");
        command.arg(self.key(class, identity));
        let delete = command.query_async::<i64>(&mut connection);
        if !matches!(tokio::time::timeout(self.timings.timeout, delete).await, Ok(Ok(_))) {
            tracing::debug!("could not refill a login-failure bucket in Redis");
        }
    }

    /// The answer while Redis cannot be asked.
    fn unchecked(&self) -> Result<(), Duration> {
        if self.fail_open { Ok(()) } else { Err(Duration::from_secs(1)) }
    }

    /// Marks Redis down (once, however many calls fail together) and
    /// starts the probe that marks it up again.
    fn trip(&self, error: &dyn std::fmt::Display) {
        if self.down.swap(true, Ordering::AcqRel) {
            return;
        }
        tracing::warn!(
            %error,
            fail_open = self.fail_open,
            "the rate-limit store (Redis) failed; checks {} without asking it until it answers again",
            if self.fail_open { "pass" } else { "are refused" }
        );
        if let Some(metrics) = &self.metrics {
            metrics.rate_limit_store(false);
        }
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(this.timings.probe_interval).await;
                let mut connection = this.connection.clone();
                let ping = redis::cmd("PING");
                let answer = ping.query_async::<String>(&mut connection);
                if let Ok(Ok(_)) = tokio::time::timeout(this.timings.timeout, answer).await {
                    break;
                }
            }
            this.down.store(false, Ordering::Release);
            tracing::info!("the rate-limit store (Redis) answers again; checks ask it again");
            if let Some(metrics) = &this.metrics {
                metrics.rate_limit_store(true);
            }
        });
    }
}

/// The rate-limit layer; see the module documentation.
#[derive(Clone)]
pub struct RateLimitLayer {
    gateway: gateway::Gateway,
    default: Rate,
    credentials: Rate,
    buckets: Arc<Mutex<Buckets>>,
    max_buckets: usize,
    shared: Option<SharedBuckets>,
    metrics: Option<crate::observability::metrics::Metrics>,
    clients: ClientAddresses,
}

impl RateLimitLayer {
    /// Limits calls to `default`, and logins and registrations to
    /// `credentials`, with buckets in `shared` (Redis) or in the process.
    pub fn new(gateway: gateway::Gateway, default: Rate, credentials: Rate, shared: Option<SharedBuckets>) -> Self {
        Self {
            gateway,
            default,
            credentials,
            buckets: Arc::default(),
            max_buckets: MAX_BUCKETS,
            shared,
            metrics: None,
            clients: ClientAddresses::default(),
        }
    }

    /// Tells callers without a token apart by `clients`' addresses.
    pub fn with_client_addresses(mut self, clients: ClientAddresses) -> Self {
        self.clients = clients;
        self
    }

    /// Counts refusals and Redis failures in `metrics`.
    pub fn with_metrics(mut self, metrics: crate::observability::metrics::Metrics) -> Self {
        if let Some(shared) = &mut self.shared {
            shared.metrics = Some(metrics.clone());
        }
        self.metrics = Some(metrics);
        self
    }

    fn rate(&self, class: Class) -> Rate {
        match class {
            Class::Credentials | Class::LoginFailures => self.credentials,
            Class::Default => self.default,
        }
    }

    /// Takes a token from the process's bucket; `Err(wait)` when it is empty.
    fn take(&self, class: Class, identity: Identity, now: Instant) -> Result<u32, Duration> {
        let mut buckets = self.buckets.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        buckets.take((class, identity), &|class| self.rate(class), self.max_buckets, now)
    }

    /// The refusal of a call that must wait `wait`.
    fn refusal<B>(&self, req: &Request<B>, class: Class, wait: Duration) -> Response<Body> {
        if let Some(metrics) = &self.metrics {
            metrics.rate_limited(class.name());
        }
        let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        let status = Status::with_error_details(
            Code::ResourceExhausted,
            format!("too many calls; try again in {seconds} s"),
            ErrorDetails::with_retry_info(Some(Duration::from_secs(seconds))),
        );
        let mut response = self.gateway.reject(req, &status);
        let rate = self.rate(class);
        let (name, quota, window) = (class.name(), rate.count, rate.period.as_secs());
        let headers = response.headers_mut();
        if let Ok(policy) = HeaderValue::from_str(&format!("\"{name}\";q={quota};w={window}")) {
            headers.insert("ratelimit-policy", policy);
        }
        if let Ok(state) = HeaderValue::from_str(&format!("\"{name}\";r=0;t={seconds}")) {
            headers.insert("ratelimit", state);
        }
        response
    }
}

impl<S> tower::Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit { limit: self.clone(), inner }
    }
}

/// The service of [`RateLimitLayer`].
#[derive(Clone)]
pub struct RateLimit<S> {
    limit: RateLimitLayer,
    inner: S,
}

impl<S> tower::Service<Request<Body>> for RateLimit<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = futures_util::future::BoxFuture<'static, Result<Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let address = self.limit.clients.of(&req);
        if let Some(address) = address {
            // The services may limit by it too (failed logins per account and address).
            req.extensions_mut().insert(ClientAddress(address));
        }
        let Some((class, identity)) = self.limit.subject(&req, address) else { return Box::pin(self.inner.call(req)) };
        match self.limit.shared.clone() {
            None => match self.limit.take(class, identity, Instant::now()) {
                Ok(_) => Box::pin(self.inner.call(req)),
                Err(wait) => Box::pin(std::future::ready(Ok(self.limit.refusal(&req, class, wait)))),
            },
            Some(shared) => {
                // The checked service is the one that was made ready.
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                let limit = self.limit.clone();
                Box::pin(async move {
                    match shared.take(class, identity, limit.rate(class)).await {
                        Ok(()) => inner.call(req).await,
                        Err(wait) => Ok(limit.refusal(&req, class, wait)),
                    }
                })
            }
        }
    }
}

impl RateLimitLayer {
    /// The class and identity of a call to one of the gateway's methods.
    fn subject<B>(&self, req: &Request<B>, address: Option<IpAddr>) -> Option<(Class, Identity)> {
        let rpc = req.extensions().get::<gateway::RpcMethod>()?;
        self.gateway.method(rpc.0)?;
        let class = Class::of(rpc.0);
        // Logins and registrations count against the address whatever token
        // they carry: a token of one's own must not open a fresh allowance.
        let identity = match req.extensions().get::<Caller>() {
            Some(caller) if class != Class::Credentials => Identity::User(caller.user_id),
            _ => Identity::Address(address?),
        };
        Some((class, identity))
    }
}

/// Failed logins per account and client address (`RATE_LIMIT_LOGIN_FAILURES`),
/// in the process or in Redis with the other buckets: each attempt at an
/// account takes a token from its bucket for that address, and a
/// successful login refills it, so only failures add up.
#[derive(Clone)]
pub struct LoginFailures {
    rate: Rate,
    buckets: Arc<Mutex<Buckets>>,
    shared: Option<SharedBuckets>,
}

impl std::fmt::Debug for LoginFailures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginFailures").field("rate", &self.rate).field("shared", &self.shared.is_some()).finish()
    }
}

impl LoginFailures {
    /// `rate` failures per account and address, kept in `shared` (Redis) or
    /// in the process.
    pub fn new(rate: Rate, shared: Option<SharedBuckets>) -> Self {
        Self { rate, buckets: Arc::default(), shared }
    }

    /// The bucket of `account` (case-insensitive) tried from `from`: a hash
    /// that is the same on every replica.
    fn identity(account: &str, from: IpAddr) -> Identity {
        // FNV-1a: stable across processes, unlike the standard hasher.
        let hash = account
            .to_lowercase()
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3));
        Identity::Account(hash, from)
    }
}

impl crate::domain::auth::LoginAttempts for LoginFailures {
    fn attempt(&self, account: &str, from: IpAddr) -> futures_util::future::BoxFuture<'_, Result<(), Duration>> {
        let identity = Self::identity(account, from);
        Box::pin(async move {
            match &self.shared {
                Some(shared) => shared.take(Class::LoginFailures, identity, self.rate).await,
                None => {
                    let mut buckets = self.buckets.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    let rate = self.rate;
                    buckets.take((Class::LoginFailures, identity), &|_| rate, MAX_BUCKETS, Instant::now()).map(drop)
                }
            }
        })
    }

    fn succeeded(&self, account: &str, from: IpAddr) -> futures_util::future::BoxFuture<'_, ()> {
        let identity = Self::identity(account, from);
        Box::pin(async move {
            match &self.shared {
                Some(shared) => shared.forget(Class::LoginFailures, identity).await,
                None => {
                    let mut buckets = self.buckets.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    buckets.map.remove(&(Class::LoginFailures, identity));
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_and_buckets_refill_at_their_rate() {
        assert_eq!(Rate::parse("10/min").unwrap(), Rate { count: 10, period: Duration::from_secs(60) });
        for bad in ["10", "0/s", "x/s", "5/day"] {
            assert!(Rate::parse(bad).is_err(), "{bad}");
        }
        let gateway = gateway::Gateway::builder().build().unwrap();
        let limit = RateLimitLayer::new(gateway, Rate::parse("2/s").unwrap(), Rate::parse("1/min").unwrap(), None);
        let (who, now) = (Identity::User(1), Instant::now());
        assert_eq!(limit.take(Class::Default, who, now), Ok(1));
        assert_eq!(limit.take(Class::Default, who, now), Ok(0));
        let wait = limit.take(Class::Default, who, now).unwrap_err();
        assert!(wait <= Duration::from_millis(500) && wait > Duration::ZERO, "{wait:?}");
        assert!(limit.take(Class::Default, who, now + Duration::from_millis(500)).is_ok(), "refilled");
        assert!(limit.take(Class::Credentials, who, now).is_ok(), "classes have their own buckets");
        assert!(limit.take(Class::Credentials, Identity::User(2), now).is_ok(), "so do identities");
        assert!(limit.take(Class::Credentials, who, now).is_err());
    }

    #[test]
    fn a_full_table_is_swept_at_most_once_a_second_and_overflows_into_one_bucket() {
        let gateway = gateway::Gateway::builder().build().unwrap();
        let mut limit =
            RateLimitLayer::new(gateway, Rate::parse("2/min").unwrap(), Rate::parse("1/min").unwrap(), None);
        limit.max_buckets = 2;
        let now = Instant::now();
        assert!(limit.take(Class::Default, Identity::User(1), now).is_ok());
        assert!(limit.take(Class::Default, Identity::User(2), now).is_ok());
        // Full of buckets still in use: newcomers share the overflow bucket.
        assert!(limit.take(Class::Default, Identity::User(3), now).is_ok());
        assert!(limit.take(Class::Default, Identity::User(4), now).is_ok());
        assert!(limit.take(Class::Default, Identity::User(5), now).is_err(), "the overflow budget is shared");
        // Once the first buckets have refilled, a sweep (a second later) makes room.
        let later = now + Duration::from_secs(120);
        assert!(limit.take(Class::Default, Identity::User(6), later).is_ok());
        assert!(limit.take(Class::Default, Identity::User(6), later).is_ok());
        assert!(limit.take(Class::Default, Identity::User(6), later).is_err(), "user 6 has its own bucket now");
    }
}
