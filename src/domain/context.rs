//! What the services share: the pool, the token and password services, and
//! how exports read; and the id read queries bind for the caller.

use sqlx::PgPool;

use super::auth;

/// What every service shares.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// The database pool.
    pub db: PgPool,
    /// Token issuer and checker.
    pub tokens: auth::Tokens,
    /// Password hasher.
    pub passwords: auth::Passwords,
    /// Failed logins per account and address, when they are limited.
    pub logins: Option<std::sync::Arc<dyn auth::LoginAttempts>>,
    /// Wakes the job workers once a write that enqueued jobs has committed.
    pub jobs: crate::postgres::jobs::Wake,
    /// How keyed writes' answers are kept ([`super::idempotent`]).
    pub keys: super::idempotent::Keys,
}

impl Ctx {
    /// The pool a call free of side effects reads from: the replica the
    /// routing layer chose for it, if any (a
    /// [`crate::postgres::replicas::ReadPool`] in its extensions), else the
    /// primary. Writes, and reads inside them, use `db`.
    pub(crate) fn reader<T>(&self, request: &tonic::Request<T>) -> PgPool {
        request
            .extensions()
            .get::<crate::postgres::replicas::ReadPool>()
            .map_or_else(|| self.db.clone(), |read| read.0.clone())
    }

    /// Starts a write of `caller`: the answer of an earlier call with the
    /// same idempotency key, or the connection to write on
    /// ([`super::idempotent`]).
    pub(crate) async fn write<Q: prost::Message, A: prost::Message + Default>(
        &self,
        request: &tonic::Request<Q>,
        caller: i64,
    ) -> super::error::ConduitResult<super::idempotent::Begun<A>> {
        self.write_as(super::idempotent::Intent::of(request), caller).await
    }

    /// [`Ctx::write`] for a request taken apart already.
    pub(crate) async fn write_as<A: prost::Message + Default>(
        &self,
        intent: super::idempotent::Intent,
        caller: i64,
    ) -> super::error::ConduitResult<super::idempotent::Begun<A>> {
        super::idempotent::Write::begin(&self.db, &self.keys, intent, caller).await
    }
}

/// How article exports read.
#[derive(Debug, Clone, Copy)]
pub struct Exports {
    /// Rows fetched from the cursor at a time.
    pub batch: usize,
    /// Exports running at once.
    pub max_concurrent: usize,
    /// Longest a client may leave an export unread before it is ended.
    pub stall_timeout: std::time::Duration,
}

/// The user id read queries bind for the caller: 0 for anonymous callers,
/// which no user has (ids start at 1). Binding NULL instead lets Postgres
/// fold the caller's probes away in a custom plan, judge that cheaper than
/// the generic plan, and so plan the statement again on every call (a
/// quarter of the list endpoint's throughput, measured).
pub(crate) fn viewer_id(caller: Option<i64>) -> i64 {
    caller.unwrap_or(0)
}
