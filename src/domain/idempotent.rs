//! Writes a client may retry safely. A signed-in caller's write sent with an
//! idempotency key (the `Idempotency-Key` header or metadata, which
//! [`crate::middleware::idempotency`] checks and hands over as a [`Key`])
//! runs in one transaction with a row holding the key, a digest of the
//! request and the answer. The row commits exactly when the write does, so a
//! client that does not know whether its write committed (the connection was
//! lost during COMMIT, the call timed out, the database failed over) sends
//! it again with the same key and either gets the first answer again, with
//! nothing written twice, or has it written once. A retry that arrives while
//! the first call still runs waits for it on the row's lock.
//!
//! Without a key a write runs as before, on one pooled connection.

use hmac::{Hmac, KeyInit, Mac};
use prost::Message;
use sqlx::{PgConnection, Postgres, pool::PoolConnection};
use tonic::Request;

use super::error::{ConduitError, ConduitResult, FieldError};

/// An idempotency key as the client sent it, and the RPC it came with; put
/// in a call's extensions by the idempotency layer.
#[derive(Debug, Clone)]
pub struct Key {
    /// The full gRPC method name: a key is the caller's own per RPC.
    pub rpc: &'static str,
    /// The client's key.
    pub key: String,
}

/// How keyed writes are kept and told apart.
#[derive(Clone)]
pub struct Keys {
    /// How long a key's answer is given again.
    retention: std::time::Duration,
    /// Longest a retry waits for a first call with its key still running.
    wait: std::time::Duration,
    /// Digests are keyed by a server secret: a request may hold a new
    /// password, which a plain hash in the table would expose to guessing.
    mac: Hmac<sha2::Sha256>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys").field("retention", &self.retention).field("wait", &self.wait).finish_non_exhaustive()
    }
}

/// Prefixed to every digested request: no token's signing input (base64
/// and dots) starts with it, so digests and tokens never share a MAC input.
const DIGEST_LABEL: &[u8] = b"conduit idempotency digest\0";

impl Keys {
    /// Answers kept for `retention`; a retry waits at most `wait` for a
    /// call still running with its key; digests keyed with `secret` (the
    /// token secret, shared by every replica).
    pub fn new(secret: &[u8], retention: std::time::Duration, wait: std::time::Duration) -> Self {
        let mac = Hmac::new_from_slice(secret).unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        Self { retention, wait, mac }
    }

    fn digest(&self, request: &[u8]) -> Vec<u8> {
        let mut mac = self.mac.clone();
        mac.update(DIGEST_LABEL);
        mac.update(request);
        mac.finalize().into_bytes().to_vec()
    }
}

/// What a write needs of its request to be keyed: the key, if the client
/// sent one, and then the request message, encoded. Taken before a service
/// consumes the request.
#[derive(Debug)]
pub(crate) struct Intent {
    keyed: Option<(Key, Vec<u8>)>,
}

impl Intent {
    /// The key and encoded message of `request`.
    pub(crate) fn of<Q: Message>(request: &Request<Q>) -> Self {
        let keyed = request.extensions().get::<Key>().map(|key| (key.clone(), request.get_ref().encode_to_vec()));
        Self { keyed }
    }
}

/// How a write starts.
pub(crate) enum Begun<T> {
    /// An earlier call with the same key and request committed: its answer.
    Replay(T),
    /// Run the write on this connection, then [`Write::finish`] it.
    Run(Write),
}

/// The connection a write runs on: a transaction holding the key's row for
/// a keyed call, else a pooled connection (each statement its own
/// transaction, or one the write begins). Every statement of the write goes
/// through it, reads included, so that it sees its own changes and never
/// waits for a second connection while holding one.
pub(crate) struct Write {
    conn: Conn,
}

enum Conn {
    Pooled(PoolConnection<Postgres>),
    Keyed { tx: sqlx::Transaction<'static, Postgres>, user: i64, key: Key },
}

/// Takes the key for this caller and RPC unless a live row holds it; a row
/// older than the retention (`$5` seconds) is taken over.
const CLAIM: &str = "INSERT INTO idempotency_keys AS k (user_id, rpc, key, request_digest) VALUES ($1, $2, $3, $4)
     ON CONFLICT (user_id, rpc, key) DO UPDATE
         SET request_digest = EXCLUDED.request_digest, answer = '', created_at = now()
         WHERE k.created_at < now() - make_interval(secs => $5)
     RETURNING 1";

/// Deletes a few expired keys, anyone's, skipping rows other calls hold:
/// each keyed write clears more than it adds while any are expired, and
/// never waits for another.
const PURGE: &str = "DELETE FROM idempotency_keys WHERE ctid = ANY(ARRAY(
         SELECT ctid FROM idempotency_keys WHERE created_at < now() - make_interval(secs => $1)
         ORDER BY created_at LIMIT 8 FOR UPDATE SKIP LOCKED))";

impl Write {
    /// Starts a write of `caller` on `db`: keyed when the call carries a
    /// [`Key`], in which case an earlier committed call with the same key
    /// answers instead, or one with another request is refused.
    pub(crate) async fn begin<A: Message + Default>(
        db: &sqlx::PgPool,
        keys: &Keys,
        intent: Intent,
        caller: i64,
    ) -> ConduitResult<Begun<A>> {
        let Some((key, request)) = intent.keyed else {
            return Ok(Begun::Run(Write { conn: Conn::Pooled(db.acquire().await?) }));
        };
        let digest = keys.digest(&request);
        let retention = keys.retention.as_secs_f64();
        // Committed at once, apart from the write: its row locks are not
        // held while the write runs.
        sqlx::query(PURGE).bind(retention).execute(db).await?;
        // A row found by the claim but gone before it is read (its
        // retention ran out in between) is claimed again.
        for _ in 0..3 {
            let mut tx = db.begin().await?;
            // A retry waits for a first call still running with its key (the
            // row's lock) for `wait` at most; then 409 / ABORTED, try again.
            sqlx::query("SELECT set_config('lock_timeout', $1, true)")
                .bind(format!("{}ms", keys.wait.as_millis().max(1)))
                .execute(&mut *tx)
                .await?;
            let claimed = sqlx::query(CLAIM)
                .bind(caller)
                .bind(key.rpc)
                .bind(&key.key)
                .bind(digest.as_slice())
                .bind(retention)
                .fetch_optional(&mut *tx)
                .await?
                .is_some();
            if claimed {
                return Ok(Begun::Run(Write { conn: Conn::Keyed { tx, user: caller, key } }));
            }
            // Held by a committed call (the claim waited for it if it was
            // running): a new statement sees its row.
            let earlier: Option<(Vec<u8>, Vec<u8>)> = sqlx::query_as(
                "SELECT request_digest, answer FROM idempotency_keys WHERE user_id = $1 AND rpc = $2 AND key = $3",
            )
            .bind(caller)
            .bind(key.rpc)
            .bind(&key.key)
            .fetch_optional(&mut *tx)
            .await?;
            let Some((earlier_digest, answer)) = earlier else { continue };
            if earlier_digest != digest {
                return Err(ConduitError::Invalid(vec![FieldError::new(
                    "idempotency_key",
                    "was already used with a different request; use a new key for a new request",
                )]));
            }
            let answer = A::decode(answer.as_slice())
                .map_err(|e| ConduitError::Internal(format!("a stored answer does not decode: {e}")))?;
            return Ok(Begun::Replay(answer));
        }
        Err(ConduitError::Busy)
    }

    /// Ends the write: a keyed one records `answer` with its key and
    /// commits; otherwise everything is committed already.
    pub(crate) async fn finish<A: Message>(self, answer: &A) -> ConduitResult<()> {
        let Conn::Keyed { mut tx, user, key } = self.conn else { return Ok(()) };
        sqlx::query("UPDATE idempotency_keys SET answer = $4 WHERE user_id = $1 AND rpc = $2 AND key = $3")
            .bind(user)
            .bind(key.rpc)
            .bind(&key.key)
            .bind(answer.encode_to_vec())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }
}

impl std::ops::Deref for Write {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        match &self.conn {
            Conn::Pooled(conn) => conn,
            Conn::Keyed { tx, .. } => tx,
        }
    }
}

impl std::ops::DerefMut for Write {
    fn deref_mut(&mut self) -> &mut PgConnection {
        match &mut self.conn {
            Conn::Pooled(conn) => conn,
            Conn::Keyed { tx, .. } => tx,
        }
    }
}
