//! Rate limiting: token buckets per identity — the user when the request is
//! authenticated, else the client's address — and per route class, checked
//! once above the protocol split. Login and registration have their own,
//! stricter class (against credential stuffing).
//!
//! A refused call gets RESOURCE_EXHAUSTED with a `google.rpc.RetryInfo`
//! (429 + `Retry-After` over HTTP) and the `RateLimit-Policy` and
//! `RateLimit` headers of the IETF draft, in its own protocol.

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

/// The rate-limit check (used as `gateway::GateLayer::new(RateLimit::new(…))`).
#[derive(Clone)]
pub struct RateLimit {
    gateway: gateway::Gateway,
    default: Rate,
    credentials: Rate,
    buckets: Arc<Mutex<HashMap<(Class, Identity), Bucket>>>,
}

impl RateLimit {
    /// Limits calls to `default`, and logins and registrations to `credentials`.
    pub fn new(gateway: gateway::Gateway, default: Rate, credentials: Rate) -> Self {
        Self { gateway, default, credentials, buckets: Arc::default() }
    }

    fn rate(&self, class: Class) -> Rate {
        match class {
            Class::Credentials => self.credentials,
            Class::Default => self.default,
        }
    }

    /// Takes a token; `Err(wait)` when the bucket is empty.
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
}

impl gateway::Admission for RateLimit {
    fn refuse(&self, req: &mut Request<Body>) -> Option<Response<Body>> {
        let rpc = req.extensions().get::<gateway::RpcMethod>()?;
        self.gateway.method(rpc.0)?;
        let class = Class::of(rpc.0);
        let identity = match req.extensions().get::<Caller>() {
            Some(caller) => Identity::User(caller.user_id),
            None => Identity::Address(req.extensions().get::<axum::extract::ConnectInfo<SocketAddr>>()?.0.ip()),
        };
        let wait = self.take(class, identity, Instant::now()).err()?;
        let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        let status = Status::with_error_details(
            Code::ResourceExhausted,
            format!("too many calls; try again in {seconds} s"),
            ErrorDetails::with_retry_info(Some(Duration::from_secs(seconds))),
        );
        let mut response = self.gateway.reject(req, &status);
        gateway::retry_after(&status, response.headers_mut());
        let rate = self.rate(class);
        let (name, quota, window) = (class.name(), rate.count, rate.period.as_secs());
        let headers = response.headers_mut();
        if let Ok(policy) = HeaderValue::from_str(&format!("\"{name}\";q={quota};w={window}")) {
            headers.insert("ratelimit-policy", policy);
        }
        if let Ok(state) = HeaderValue::from_str(&format!("\"{name}\";r=0;t={seconds}")) {
            headers.insert("ratelimit", state);
        }
        Some(response)
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
        let limit = RateLimit::new(gateway, Rate::parse("2/s").unwrap(), Rate::parse("1/min").unwrap());
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
