//! Who is calling: tokens (JWT, HS256), sessions and passwords (argon2id).
//!
//! Transport-neutral: the token is the `authorization` header (gRPC
//! metadata), whichever protocol carried it. Both the RealWorld
//! `Token <jwt>` scheme and `Bearer <jwt>` are accepted. The authentication
//! layer (`crate::middleware::authenticate`) checks it once per request, for
//! every method declared `(gateway.v1.access).authenticated` in the protos,
//! and hands the [`Caller`] to the service.

mod jwt;
mod sessions;

pub use jwt::{Hs256, JwtError, MAX_TOKEN_BYTES};
pub use sessions::Sessions;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use serde::{Deserialize, Serialize};
use tonic::metadata::MetadataMap;

use super::error::{ConduitError, ConduitResult};

/// Where the id of the user a call acts for is left for the layers around
/// it, which would not see the request's extensions afterwards (the
/// request log, read routing): set by the authentication layer from the
/// token, or by the call that makes the user (registration, login).
#[derive(Debug, Clone, Default)]
pub struct UserSlot(pub std::sync::Arc<std::sync::OnceLock<i64>>);

/// Claims of a Conduit token.
#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    /// The user's id.
    pub sub: String,
    /// The session the token belongs to (see [`Sessions`]).
    pub sid: i64,
    /// Issued at, seconds since the epoch.
    pub iat: u64,
    /// Not valid before, seconds since the epoch.
    pub nbf: u64,
    /// Expires at, seconds since the epoch.
    pub exp: u64,
}

/// Clock difference between replicas tolerated on `exp` and `nbf`.
const LEEWAY_SECONDS: u64 = 5;

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The user's id.
    pub user_id: i64,
    /// The session of the token.
    pub session: i64,
    /// The token it presented, handed back by calls that return the user.
    pub token: String,
}

/// The address a call came from, as the layers found it (through trusted
/// proxies), when they know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddress(pub std::net::IpAddr);

/// Counts login attempts per account and client address, so that guessing
/// one account's password is limited per address without anyone else's
/// failures locking its owner out.
pub trait LoginAttempts: Send + Sync + std::fmt::Debug {
    /// Spends one attempt at `account` from `from`; `Err(wait)` when none
    /// is left.
    fn attempt(
        &self,
        account: &str,
        from: std::net::IpAddr,
    ) -> futures_util::future::BoxFuture<'_, Result<(), Duration>>;
    /// The right password was given: the attempts of `account` from `from`
    /// are forgotten, so that only failures add up.
    fn succeeded(&self, account: &str, from: std::net::IpAddr) -> futures_util::future::BoxFuture<'_, ()>;
}

/// Issues and checks tokens.
#[derive(Clone)]
pub struct Tokens {
    inner: Arc<TokenKeys>,
}

struct TokenKeys {
    keys: Hs256,
    sessions: Sessions,
    ttl: Duration,
    verified: Verified,
}

/// How many verified tokens are remembered; past it the memory starts over.
/// About 300 bytes each, so 3 MB at most.
const VERIFIED_TOKENS_MAX: usize = 10_000;

/// The claims of tokens whose signature was already checked. Checking one
/// (HMAC-SHA256 and its JSON) costs about 20,000 instructions, a twentieth
/// of an article list; a lookup costs a few hundred. Only verified tokens
/// go in, so a client cannot fill it with tokens of its own making; time
/// (`exp`, `nbf`) and revocation are still checked on every use.
#[derive(Default)]
struct Verified {
    claims: std::sync::RwLock<std::collections::HashMap<Box<str>, TokenClaims>>,
}

/// What a verified token says.
#[derive(Clone, Copy)]
struct TokenClaims {
    user: i64,
    session: i64,
    nbf: u64,
    exp: u64,
}

impl Verified {
    fn get(&self, token: &str) -> Option<TokenClaims> {
        self.claims.read().unwrap_or_else(std::sync::PoisonError::into_inner).get(token).copied()
    }

    fn insert(&self, token: &str, claims: TokenClaims) {
        let mut map = self.claims.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.len() >= VERIFIED_TOKENS_MAX {
            map.clear();
        }
        map.insert(token.into(), claims);
    }
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens").field("ttl", &self.inner.ttl).finish_non_exhaustive()
    }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}

impl Tokens {
    /// Tokens signed with `secret`, valid for `ttl`.
    pub fn new(secret: &[u8], ttl: Duration) -> Self {
        Self {
            inner: Arc::new(TokenKeys {
                keys: Hs256::new(secret),
                sessions: Sessions::new(ttl),
                ttl,
                verified: Verified::default(),
            }),
        }
    }

    /// The sessions the tokens belong to.
    pub fn sessions(&self) -> &Sessions {
        &self.inner.sessions
    }

    /// A fresh token for a user's session.
    pub fn issue(&self, user_id: i64, session: i64) -> ConduitResult<String> {
        let iat = now();
        let claims =
            Claims { sub: user_id.to_string(), sid: session, iat, nbf: iat, exp: iat + self.inner.ttl.as_secs() };
        self.inner.keys.sign(&claims).map_err(|e| ConduitError::Internal(format!("cannot sign a token: {e}")))
    }

    /// The user and session of a token that is ours, current and not revoked.
    fn verify(&self, token: &str) -> ConduitResult<TokenClaims> {
        let claims = match self.inner.verified.get(token) {
            Some(claims) => claims,
            None => {
                let claims: Claims =
                    self.inner.keys.verify(token).map_err(|_| token_invalid("the token is invalid or expired"))?;
                let user = claims.sub.parse().map_err(|_| token_invalid("the token is invalid or expired"))?;
                let claims = TokenClaims { user, session: claims.sid, nbf: claims.nbf, exp: claims.exp };
                self.inner.verified.insert(token, claims);
                claims
            }
        };
        let now = now();
        if claims.exp.saturating_add(LEEWAY_SECONDS) < now {
            return Err(token_invalid("the token is invalid or expired"));
        }
        if claims.nbf > now.saturating_add(LEEWAY_SECONDS) {
            return Err(token_invalid("the token is not valid yet"));
        }
        if self.inner.sessions.is_revoked(claims.session) {
            return Err(token_invalid("this session was ended by a change of password or email; sign in again"));
        }
        Ok(claims)
    }

    /// The caller, if the request carries credentials; an error if they are bad.
    pub fn caller(&self, metadata: &MetadataMap) -> ConduitResult<Option<Caller>> {
        self.caller_of(metadata.get("authorization").map(|v| v.as_bytes()))
    }

    /// The caller of an `authorization` value, if there is one.
    pub(crate) fn caller_of(&self, value: Option<&[u8]>) -> ConduitResult<Option<Caller>> {
        let Some(value) = value else { return Ok(None) };
        let text = std::str::from_utf8(value).map_err(|_| token_invalid("the authorization header is malformed"))?;
        let token = match text.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("token") || scheme.eq_ignore_ascii_case("bearer") => {
                token.trim()
            }
            _ => return Err(token_invalid("use the Token or Bearer authorization scheme")),
        };
        let claims = self.verify(token)?;
        Ok(Some(Caller { user_id: claims.user, session: claims.session, token: token.to_owned() }))
    }

    /// The caller where a token is optional: a bad or expired token counts
    /// as none, so that a stale token never breaks public reads (RealWorld
    /// clients log the user out on any 401).
    pub fn viewer<T>(&self, request: &tonic::Request<T>) -> Option<i64> {
        if let Some(caller) = request.extensions().get::<Caller>() {
            return Some(caller.user_id);
        }
        self.caller(request.metadata()).ok().flatten().map(|c| c.user_id)
    }

    /// The caller, who must be authenticated: the one the authentication layer found,
    /// or (when the service is used without it) read from the metadata.
    pub fn require<T>(&self, request: &tonic::Request<T>) -> ConduitResult<Caller> {
        if let Some(caller) = request.extensions().get::<Caller>() {
            return Ok(caller.clone());
        }
        self.caller(request.metadata())?.ok_or_else(token_missing)
    }
}

/// A call that needs a token came without one.
pub(crate) fn token_missing() -> ConduitError {
    ConduitError::Unauthenticated { key: "token", problem: "is missing", message: "this call requires a token" }
}

/// A token that cannot be used; `message` says why.
fn token_invalid(message: &'static str) -> ConduitError {
    ConduitError::Unauthenticated { key: "token", problem: "is invalid", message }
}

/// A token whose user no longer exists.
pub fn user_gone() -> ConduitError {
    token_invalid("the user of this token no longer exists")
}

/// Password hashing and checking with argon2id, on the blocking pool (a
/// hash takes tens of milliseconds by design) and at most `concurrency` at a
/// time: each one holds 19 MiB of working memory, so an unbounded burst of
/// logins would grow the process by that much per request.
#[derive(Debug, Clone)]
pub struct Passwords {
    permits: Arc<tokio::sync::Semaphore>,
}

impl Passwords {
    /// At most `concurrency` hashes at once (at least one).
    pub fn new(concurrency: usize) -> Self {
        Self { permits: Arc::new(tokio::sync::Semaphore::new(concurrency.max(1))) }
    }

    async fn run<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> ConduitResult<T> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ConduitError::Internal("password hashing is shut down".into()))?;
        // The permit moves into the blocking task: a cancelled request must
        // not free its slot while its hash still runs.
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            work()
        })
        .await
        .map_err(|e| ConduitError::Internal(format!("password hashing task failed: {e}")))
    }

    /// The PHC string of a new salted hash of `password`.
    pub async fn hash(&self, password: String) -> ConduitResult<String> {
        self.run(move || {
            let hash: PasswordHash = Argon2::default()
                .hash_password(password.as_bytes())
                .map_err(|e| ConduitError::Internal(format!("cannot hash a password: {e}")))?;
            Ok(hash.to_string())
        })
        .await?
    }

    /// Whether `password` matches the stored PHC string `hash`.
    pub async fn verify(&self, password: String, hash: String) -> ConduitResult<bool> {
        self.run(move || {
            PasswordVerifier::<str>::verify_password(&Argon2::default(), password.as_bytes(), &hash).is_ok()
        })
        .await
    }

    /// Spends the time of a verification without a stored hash, so that an
    /// unknown email takes as long to refuse as a wrong password.
    pub async fn verify_nothing(&self, password: String) -> ConduitResult<()> {
        self.run(move || {
            let hash = DECOY_HASH.get_or_init(|| {
                Argon2::default().hash_password(b"decoy").map(|h: PasswordHash| h.to_string()).unwrap_or_default()
            });
            let _ = PasswordVerifier::<str>::verify_password(&Argon2::default(), password.as_bytes(), hash);
        })
        .await
    }
}

/// A hash of nothing in particular, made once, for [`Passwords::verify_nothing`].
static DECOY_HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_remembered_token_is_checked_for_time_on_every_use() {
        let tokens = Tokens::new(b"a-test-secret-of-thirty-two-bytes!", Duration::from_secs(3600));
        let token = tokens.issue(7, 1).unwrap();
        let claims = tokens.verify(&token).unwrap();
        assert_eq!((claims.user, claims.session), (7, 1));
        let again = tokens.verify(&token).unwrap();
        assert_eq!((again.user, again.session), (7, 1), "the second time from memory");
        // The remembered claims of a token past its expiry are refused.
        tokens.inner.verified.insert(&token, TokenClaims { user: 7, session: 1, nbf: 0, exp: 1 });
        assert!(tokens.verify(&token).is_err());
        // A forged token is never remembered, however often it is shown.
        let forged = format!("{}x", &token[..token.len() - 1]);
        for _ in 0..2 {
            assert!(tokens.verify(&forged).is_err());
        }
        assert!(tokens.inner.verified.get(&forged).is_none());
    }

    #[test]
    fn the_memory_of_verified_tokens_is_bounded() {
        let verified = Verified::default();
        let claims = TokenClaims { user: 1, session: 1, nbf: 0, exp: u64::MAX };
        for i in 0..VERIFIED_TOKENS_MAX + 10 {
            verified.insert(&format!("token-{i}"), claims);
        }
        let remembered = verified.claims.read().unwrap().len();
        assert!((1..=VERIFIED_TOKENS_MAX).contains(&remembered), "{remembered}");
    }
}
