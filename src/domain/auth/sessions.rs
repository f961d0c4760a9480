//! Sessions: every login and registration opens one, named in its tokens
//! (`sid`). Changing the password, or the email to another address, ends
//! every other session of the user. The ended sessions whose tokens could
//! still be unexpired are held in memory on every replica — loaded when
//! its listener connects, kept current by a `NOTIFY` sent in the revoking
//! transaction — so that checking a token never waits for the database.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use sqlx::{PgConnection, PgPool};

use crate::domain::error::ConduitResult;
use crate::postgres::listen::{Channel, Heard};

/// The channel on which revocations are announced; the payload is the user id.
const CHANNEL: &str = "conduit_sessions";

/// Revoked sessions, as every replica knows them.
#[derive(Debug, Clone)]
pub struct Sessions {
    /// Session id → when it opened (seconds since the epoch): a session
    /// older than the token lifetime has no live token left and is dropped.
    revoked: Arc<RwLock<HashMap<i64, i64>>>,
    ttl: Duration,
}

impl Sessions {
    /// No session revoked yet; tokens live for `ttl`.
    pub fn new(ttl: Duration) -> Self {
        Self { revoked: Arc::default(), ttl }
    }

    /// Whether session `sid` was ended.
    pub fn is_revoked(&self, sid: i64) -> bool {
        self.revoked.read().unwrap_or_else(std::sync::PoisonError::into_inner).contains_key(&sid)
    }

    fn remember(&self, ended: impl IntoIterator<Item = (i64, i64)>) {
        let horizon = super::now() as i64 - self.ttl.as_secs() as i64;
        let mut revoked = self.revoked.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        revoked.extend(ended);
        revoked.retain(|_, opened| *opened >= horizon);
    }

    fn ttl_seconds(&self) -> f64 {
        self.ttl.as_secs_f64()
    }

    /// Opens a session for `user`: its id, for the tokens. The user's
    /// sessions old enough that no token of theirs can be alive are
    /// deleted on the way, so the table holds about one row per live token.
    pub(crate) async fn open(&self, db: &mut PgConnection, user: i64) -> ConduitResult<i64> {
        let opened = sqlx::query_scalar!(
            r#"WITH expired AS (
                 DELETE FROM sessions WHERE user_id = $1 AND created_at < now() - make_interval(secs => $2)
               )
               INSERT INTO sessions (user_id) VALUES ($1) RETURNING id"#,
            user,
            self.ttl_seconds()
        )
        .fetch_one(db)
        .await?;
        Ok(opened)
    }

    /// Ends every session of `user` but `keep`, in the caller's transaction,
    /// and tells every replica; [`Sessions::ended`] then applies the
    /// result here once the transaction has committed.
    pub(crate) async fn end_others(&self, db: &mut PgConnection, user: i64, keep: i64) -> ConduitResult<Ended> {
        let rows = sqlx::query!(
            r#"UPDATE sessions SET revoked_at = now()
               WHERE user_id = $1 AND id <> $2 AND revoked_at IS NULL
               RETURNING id, extract(epoch FROM created_at)::bigint AS "opened!""#,
            user,
            keep
        )
        .fetch_all(&mut *db)
        .await?;
        if !rows.is_empty() {
            sqlx::query!("SELECT pg_notify($1, $2)", CHANNEL, user.to_string()).execute(&mut *db).await?;
        }
        Ok(Ended(rows.into_iter().map(|r| (r.id, r.opened)).collect()))
    }

    /// Applies sessions ended by a committed transaction.
    pub(crate) fn ended(&self, ended: Ended) {
        if !ended.0.is_empty() {
            self.remember(ended.0);
        }
    }

    /// Loads the revoked sessions that may still have live tokens: all of
    /// them, or `user`'s.
    async fn load(&self, db: &PgPool, user: Option<i64>) -> Result<(), sqlx::Error> {
        let rows = sqlx::query!(
            r#"SELECT id, extract(epoch FROM created_at)::bigint AS "opened!" FROM sessions
               WHERE revoked_at IS NOT NULL AND created_at >= now() - make_interval(secs => $1)
                 AND ($2::bigint IS NULL OR user_id = $2)"#,
            self.ttl_seconds(),
            user
        )
        .fetch_all(db)
        .await?;
        self.remember(rows.into_iter().map(|r| (r.id, r.opened)));
        Ok(())
    }

    /// The channel of every replica's revocations, for the process's shared
    /// listener: all of them loaded again whenever the listener
    /// (re)connects, since it may have missed some, and one user's on each
    /// notification.
    pub fn channel(self, db: PgPool) -> Channel {
        let (loader, pool) = (self, db);
        Channel::new(CHANNEL, move |heard| {
            let user = match heard {
                Heard::Connected => None,
                Heard::Payload(user) => match user.parse() {
                    Ok(user) => Some(user),
                    Err(_) => return,
                },
            };
            let (loader, pool) = (loader.clone(), pool.clone());
            tokio::spawn(async move {
                if let Err(e) = loader.load(&pool, user).await {
                    tracing::warn!(error = %e, "cannot load revoked sessions; they are loaded again on reconnection");
                }
            });
        })
    }
}

/// Sessions ended by a transaction not yet known to have committed.
#[derive(Debug, Default)]
#[must_use = "apply with Sessions::ended once the transaction commits"]
pub(crate) struct Ended(Vec<(i64, i64)>);
