//! Rate limiting: token buckets per identity — the user when the request is
//! authenticated, else the client's address — and per route class, checked
//! once above the protocol split. Login and registration have their own,
//! stricter class (against credential stuffing).
//!
//! A refused call gets RESOURCE_EXHAUSTED with a `google.rpc.RetryInfo`
//! (429 + `Retry-After` over HTTP) and the `RateLimit-Policy` and
//! `RateLimit` headers of the IETF draft, in its own protocol.
//!
//! Buckets live in the process, or in Redis when `REDIS_URL` is set, so
//! that replicas share them: one atomic script per check, timed by the
//! Redis server's clock. If Redis fails, calls are let through or refused
//! (`RATE_LIMIT_REDIS_FAILURE`), and the failure is logged.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use http::{HeaderValue, Request, Response};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::conduit::auth::Caller;

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
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Identity {
    User(i64),
    Address(IpAddr),
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Most buckets kept; past it, buckets that have refilled (and so hold no
/// information) are dropped.
const MAX_BUCKETS: usize = 100_000;

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

/// Buckets shared through Redis.
#[derive(Clone)]
pub struct SharedBuckets {
    connection: redis::aio::ConnectionManager,
    script: Arc<redis::Script>,
    prefix: String,
    fail_open: bool,
}

impl SharedBuckets {
    /// Connects to `url`; keys start with `prefix`. When Redis fails later,
    /// calls pass if `fail_open`, else they are refused.
    pub async fn connect(url: &str, prefix: &str, fail_open: bool) -> Result<Self, redis::RedisError> {
        let client = redis::Client::open(url)?;
        let connection = redis::aio::ConnectionManager::new(client).await?;
        Ok(Self { connection, script: Arc::new(redis::Script::new(SCRIPT)), prefix: prefix.to_owned(), fail_open })
    }

    async fn take(&self, class: Class, identity: Identity, rate: Rate) -> Result<(), Duration> {
        let key = match identity {
            Identity::User(id) => format!("{}{}:u{id}", self.prefix, class.name()),
            Identity::Address(ip) => format!("{}{}:a{ip}", self.prefix, class.name()),
        };
        let per_ms = f64::from(rate.count) / rate.period.as_millis() as f64;
        let mut connection = self.connection.clone();
        let answer: Result<(i64, i64), _> =
            self.script.key(key).arg(rate.count).arg(per_ms).invoke_async(&mut connection).await;
        match answer {
            Ok((1, _)) => Ok(()),
            Ok((_, wait)) => Err(Duration::from_millis(wait.max(1) as u64)),
            Err(error) => {
                tracing::warn!(%error, fail_open = self.fail_open, "the rate-limit store (Redis) failed");
                if self.fail_open { Ok(()) } else { Err(Duration::from_secs(1)) }
            }
        }
    }
}

/// The rate-limit layer; see the module documentation.
#[derive(Clone)]
pub struct RateLimit {
    gateway: gateway::Gateway,
    default: Rate,
    credentials: Rate,
    buckets: Arc<Mutex<HashMap<(Class, Identity), Bucket>>>,
    shared: Option<SharedBuckets>,
}

impl RateLimit {
    /// Limits calls to `default`, and logins and registrations to
    /// `credentials`, with buckets in `shared` (Redis) or in the process.
    pub fn new(gateway: gateway::Gateway, default: Rate, credentials: Rate, shared: Option<SharedBuckets>) -> Self {
        Self { gateway, default, credentials, buckets: Arc::default(), shared }
    }

    fn rate(&self, class: Class) -> Rate {
        match class {
            Class::Credentials => self.credentials,
            Class::Default => self.default,
        }
    }

    /// Takes a token from the process's bucket; `Err(wait)` when it is empty.
    fn take(&self, class: Class, identity: Identity, now: Instant) -> Result<u32, Duration> {
        let rate = self.rate(class);
        let per_second = f64::from(rate.count) / rate.period.as_secs_f64();
        let capacity = f64::from(rate.count);
        let mut buckets = self.buckets.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if buckets.len() >= MAX_BUCKETS {
            buckets.retain(|(class, _), b| {
                let rate = self.rate(*class);
                let refill = now.duration_since(b.at).as_secs_f64() * f64::from(rate.count) / rate.period.as_secs_f64();
                b.tokens + refill < f64::from(rate.count)
            });
        }
        let bucket = buckets.entry((class, identity)).or_insert(Bucket { tokens: capacity, at: now });
        bucket.tokens = (bucket.tokens + now.duration_since(bucket.at).as_secs_f64() * per_second).min(capacity);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(bucket.tokens as u32)
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / per_second))
        }
    }

    /// The refusal of a call that must wait `wait`.
    fn refusal<B>(&self, req: &Request<B>, class: Class, wait: Duration) -> Response<Body> {
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

impl<S> tower::Layer<S> for RateLimit {
    type Service = RateLimited<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimited { limit: self.clone(), inner }
    }
}

/// The service of [`RateLimit`].
#[derive(Clone)]
pub struct RateLimited<S> {
    limit: RateLimit,
    inner: S,
}

impl<S> tower::Service<Request<Body>> for RateLimited<S>
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

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let Some((class, identity)) = self.limit.subject(&req) else { return Box::pin(self.inner.call(req)) };
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

impl RateLimit {
    /// The class and identity of a call to one of the gateway's methods.
    fn subject<B>(&self, req: &Request<B>) -> Option<(Class, Identity)> {
        let rpc = req.extensions().get::<gateway::RpcMethod>()?;
        self.gateway.method(rpc.0)?;
        let identity = match req.extensions().get::<Caller>() {
            Some(caller) => Identity::User(caller.user_id),
            None => Identity::Address(req.extensions().get::<axum::extract::ConnectInfo<SocketAddr>>()?.0.ip()),
        };
        Some((Class::of(rpc.0), identity))
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
        let limit = RateLimit::new(gateway, Rate::parse("2/s").unwrap(), Rate::parse("1/min").unwrap(), None);
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
}
