//! A response cache for hot anonymous reads (tags, an article, pages of
//! the article list — any `GET` of a method declared free of side effects,
//! by JSON or Connect), bounded in memory and in age.
//!
//! A write clears it once it has succeeded (a failed call, a login, which
//! is declared `(gateway.v1.effects).changes_no_data`, changes nothing
//! cached), in this process at once and in every replica through
//! PostgreSQL `NOTIFY` on one channel: the database every replica already
//! shares, so no other component is needed. The writer's transaction has
//! committed by then; invalidations are coalesced (one `NOTIFY` per
//! `SIGNAL_INTERVAL` at most, see [`crate::postgres::signal`]), so other
//! replicas clear that much later, and writes never wait for one. A
//! replica whose listening connection drops clears its cache when it
//! reconnects (notifications may have been missed), and
//! no entry outlives `CACHE_TTL`, whatever happens to notifications.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;

use crate::observability::metrics::Metrics;
use crate::postgres::listen::{Channel, Heard};
use crate::postgres::signal::Signals;

/// The notification channel shared by the replicas.
const CHANNEL: &str = "conduit_cache";

/// Largest single answer kept.
const MAX_ENTRY_BYTES: u64 = 256 * 1024;

struct Entry {
    status: http::StatusCode,
    headers: http::HeaderMap,
    body: Bytes,
    stored: Instant,
}

impl Entry {
    fn size(&self) -> usize {
        self.body.len() + self.headers.iter().map(|(k, v)| k.as_str().len() + v.len()).sum::<usize>()
    }

    fn response(&self) -> Response<Body> {
        let mut response = Response::new(Body::from(self.body.clone()));
        *response.status_mut() = self.status;
        *response.headers_mut() = self.headers.clone();
        response
    }
}

#[derive(Default)]
struct Store {
    entries: HashMap<String, Entry>,
    /// Keys in insertion order: the oldest is evicted first.
    order: VecDeque<String>,
    bytes: usize,
}

impl Store {
    fn clear(&mut self) {
        self.entries.clear();
        self.order.clear();
        self.bytes = 0;
    }
}

/// The cache layer, and the handle of the cache it fills: one per process,
/// shared by every connection; [`CacheLayer::listen`] keeps it in step with
/// the other replicas.
#[derive(Clone)]
pub struct CacheLayer {
    store: Arc<Mutex<Store>>,
    /// Bumped by every invalidation: an answer computed across one is not kept.
    generation: Arc<AtomicU64>,
    /// When the cache was last cleared: an answer read from a replica is
    /// kept only if that replica had replayed every write before then.
    cleared: Arc<Mutex<Instant>>,
    ttl: Duration,
    max_bytes: usize,
    gateway: gateway::Gateway,
    metrics: Metrics,
    /// Where invalidations are heard and published, and this replica's id in them.
    notify: Option<(sqlx::PgPool, Signals, Arc<str>)>,
}

impl std::fmt::Debug for CacheLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheLayer").field("ttl", &self.ttl).field("max_bytes", &self.max_bytes).finish()
    }
}

impl CacheLayer {
    /// A cache of at most `max_bytes` whose entries live at most `ttl`;
    /// with a pool and its signals, invalidations are shared with the other replicas.
    pub fn new(
        gateway: gateway::Gateway,
        ttl: Duration,
        max_bytes: usize,
        metrics: Metrics,
        shared: Option<(sqlx::PgPool, Signals)>,
    ) -> Self {
        let id: Arc<str> = format!("{}-{}", std::process::id(), start_nanos()).into();
        Self {
            store: Arc::default(),
            generation: Arc::default(),
            cleared: Arc::new(Mutex::new(Instant::now())),
            ttl,
            max_bytes,
            gateway,
            metrics,
            notify: shared.map(|(db, signals)| (db, signals, id)),
        }
    }

    fn enabled(&self) -> bool {
        !self.ttl.is_zero() && self.max_bytes > 0
    }

    /// Drops every entry.
    pub fn clear(&self) {
        *self.cleared.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Instant::now();
        self.generation.fetch_add(1, Ordering::SeqCst);
        let mut store = self.store.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if !store.entries.is_empty() {
            self.metrics.cache("invalidation");
        }
        store.clear();
    }

    /// Clears here and tells the other replicas.
    fn invalidate(&self) {
        self.clear();
        if let Some((_, signals, id)) = &self.notify {
            signals.raise(CHANNEL, id);
        }
    }

    /// The channel of the other replicas' invalidations, for the process's
    /// shared listener; none when the cache does not tell other replicas.
    pub fn channel(self) -> Option<Channel> {
        let (_, _, id) = self.notify.clone()?;
        Some(Channel::new(CHANNEL, move |heard| match heard {
            // Whatever was missed while not listening is unknown: start clean.
            Heard::Connected => self.clear(),
            Heard::Payload(from) if from != &*id => self.clear(),
            Heard::Payload(_) => {}
        }))
    }

    fn lookup(&self, key: &str) -> Option<Response<Body>> {
        let mut store = self.store.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let entry = store.entries.get(key)?;
        if entry.stored.elapsed() <= self.ttl {
            return Some(entry.response());
        }
        let size = entry.size();
        store.entries.remove(key);
        store.bytes -= size;
        store.order.retain(|k| k != key);
        self.metrics.cache("expired");
        None
    }

    fn insert(&self, key: String, entry: Entry, generation: u64) {
        let size = entry.size();
        if size > self.max_bytes {
            return;
        }
        let mut store = self.store.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // A write finished while this answer was computed: it may be stale.
        if self.generation.load(Ordering::SeqCst) != generation {
            return;
        }
        while store.bytes + size > self.max_bytes {
            let Some(oldest) = store.order.pop_front() else { break };
            if let Some(old) = store.entries.remove(&oldest) {
                store.bytes -= old.size();
                self.metrics.cache("eviction");
            }
        }
        if let Some(old) = store.entries.insert(key.clone(), entry) {
            store.bytes -= old.size();
            store.order.retain(|k| *k != key);
        }
        store.bytes += size;
        store.order.push_back(key);
    }

    /// The key of a cacheable request, or `None`: anonymous `GET` of a
    /// method free of side effects, asking for no position of its own (a
    /// read carrying a write's position must see it, and another process
    /// learns of that write's invalidation only later).
    fn key<B>(&self, req: &Request<B>) -> Option<String> {
        let headers = req.headers();
        if req.method() != http::Method::GET
            || headers.contains_key(http::header::AUTHORIZATION)
            || super::reads::position_in(headers).flatten().is_some()
        {
            return None;
        }
        let rpc = req.extensions().get::<gateway::RpcMethod>()?;
        let spec = self.gateway.method(rpc.0)?;
        if !spec.no_side_effects || spec.authenticated {
            return None;
        }
        Some(req.uri().path_and_query().map_or_else(|| req.uri().path().to_owned(), |p| p.as_str().to_owned()))
    }

    /// Whether a call may change data (clears the cache once it succeeded).
    fn writes<B>(&self, req: &Request<B>) -> bool {
        let Some(rpc) = req.extensions().get::<gateway::RpcMethod>() else { return false };
        self.gateway.method(rpc.0).is_some_and(|spec| !spec.no_side_effects && !spec.changes_no_data)
    }
}

/// Whether an answer reports success in its protocol: a 2xx status, and
/// for gRPC and gRPC-Web no error status in the headers, where a failed
/// unary call (a trailers-only answer) carries it. A write that fails
/// committed nothing (the services write in one transaction), so it must
/// not cost every replica its cache.
fn succeeded(response: &Response<Body>) -> bool {
    response.status().is_success()
        && response.headers().get("grpc-status").is_none_or(|status| status.as_bytes() == b"0")
}

/// Tells this process's notifications from other replicas' (with the pid).
fn start_nanos() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or_default()
}

impl<S> tower::Layer<S> for CacheLayer {
    type Service = Cache<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Cache { cache: self.clone(), inner }
    }
}

/// The service of [`CacheLayer`].
#[derive(Clone, Debug)]
pub struct Cache<S> {
    cache: CacheLayer,
    inner: S,
}

impl<S> tower::Service<Request<Body>> for Cache<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = futures_util::future::BoxFuture<'static, Result<Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let cache = self.cache.clone();
        if !cache.enabled() {
            return Box::pin(self.inner.call(req));
        }
        if cache.writes(&req) {
            let answer = self.inner.call(req);
            return Box::pin(async move {
                let response = answer.await?;
                if succeeded(&response) {
                    cache.invalidate();
                }
                Ok(response)
            });
        }
        let Some(key) = cache.key(&req) else { return Box::pin(self.inner.call(req)) };
        if let Some(hit) = cache.lookup(&key) {
            cache.metrics.cache("hit");
            return Box::pin(std::future::ready(Ok(hit)));
        }
        cache.metrics.cache("miss");
        let generation = cache.generation.load(Ordering::SeqCst);
        let answer = self.inner.call(req);
        Box::pin(async move {
            let response = answer.await?;
            let small = http_body::Body::size_hint(response.body()).exact().is_some_and(|n| n <= MAX_ENTRY_BYTES);
            if response.status() != http::StatusCode::OK || !small {
                return Ok(response);
            }
            // Read from a replica that may not have the write that last
            // cleared the cache: served (it is within READ_MAX_LAG), not kept.
            if let Some(from) = response.extensions().get::<crate::postgres::replicas::ReadFrom>()
                && !from.has_writes_before(*cache.cleared.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
            {
                cache.metrics.cache("not_kept");
                return Ok(response);
            }
            let (parts, body) = response.into_parts();
            let body = match body.collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read an answer to cache it");
                    return Ok(Response::from_parts(parts, Body::empty()));
                }
            };
            let entry = Entry {
                status: parts.status,
                headers: parts.headers.clone(),
                body: body.clone(),
                stored: Instant::now(),
            };
            cache.insert(key, entry, generation);
            Ok(Response::from_parts(parts, Body::from(body)))
        })
    }
}

/// Makes every replica listening on `db` drop its cached answers, for
/// writes made outside the API (`conduit demo`).
pub async fn clear_everywhere(db: &sqlx::PgPool) -> Result<(), sqlx::Error> {
    // No replica's own id: every one of them clears.
    sqlx::query("SELECT pg_notify($1, 'outside')").bind(CHANNEL).execute(db).await?;
    Ok(())
}
