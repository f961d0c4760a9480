//! `conduit.v1.Users`: registration, login and the caller's own account.

mod store;

use tonic::{Request, Response, Status};

use super::auth::Caller;
use super::auth::{ClientAddress, UserSlot};
use super::context::Ctx;
use super::error::{ConduitError, ConduitResult};
use super::idempotent::{Begun, Intent};
use super::validate::Check;
use crate::pb::conduit::v1::{
    GetCurrentUserRequest, LoginRequest, RegisterRequest, UpdateCurrentUserRequest, User, UserResponse, users_server,
};
use store::{UserChanges, UserRow};

/// The Users service.
#[derive(Debug, Clone)]
pub struct Users {
    ctx: Ctx,
}

impl Users {
    /// The service on a shared context.
    pub fn new(ctx: Ctx) -> Self {
        Self { ctx }
    }

    fn reply(row: UserRow, token: String) -> UserResponse {
        UserResponse {
            user: Some(User { email: row.email, token, username: row.username, bio: row.bio, image: row.image }),
        }
    }

    // POST /users/login
    async fn login(&self, request: Request<LoginRequest>) -> ConduitResult<UserResponse> {
        let from = request.extensions().get::<ClientAddress>().map(|a| a.0);
        let user = request.into_inner().user.unwrap_or_default();
        Check::new().text("user.email", &user.email).text("user.password", &user.password).finish()?;
        // Attempts at one account from one address are limited; a success
        // forgets them, so only failures add up (unknown emails included,
        // so that the answer says nothing of which accounts exist).
        let guard = self.ctx.logins.as_deref().zip(from);
        if let Some((logins, from)) = guard {
            logins.attempt(&user.email, from).await.map_err(ConduitError::TooManyAttempts)?;
        }
        let invalid = ConduitError::Unauthenticated {
            key: "credentials",
            problem: "invalid",
            message: "email or password is invalid",
        };
        let Some(row) = store::by_email(&self.ctx.db, &user.email).await? else {
            self.ctx.passwords.verify_nothing(user.password).await?;
            return Err(invalid);
        };
        if !self.ctx.passwords.verify(user.password, row.password_hash.clone()).await? {
            return Err(invalid);
        }
        if let Some((logins, from)) = guard {
            logins.succeeded(&user.email, from).await;
        }
        let mut db = self.ctx.db.acquire().await?;
        let session = self.ctx.tokens.sessions().open(&mut db, row.id).await?;
        let token = self.ctx.tokens.issue(row.id, session)?;
        Ok(Self::reply(row, token))
    }

    // POST /users
    async fn register(&self, request: Request<RegisterRequest>) -> ConduitResult<UserResponse> {
        let slot = request.extensions().get::<UserSlot>().cloned();
        let user = request.into_inner().user.unwrap_or_default();
        Check::new()
            .username("user.username", &user.username)
            .text("user.email", &user.email)
            .text("user.password", &user.password)
            .finish()?;
        store::ensure_free(&self.ctx.db, Some(&user.username), Some(&user.email), None).await?;
        let hash = self.ctx.passwords.hash(user.password).await?;
        let mut tx = self.ctx.db.begin().await?;
        let row = store::insert(&mut tx, &user.username, &user.email, &hash).await?;
        let session = self.ctx.tokens.sessions().open(&mut tx, row.id).await?;
        tx.commit().await?;
        // The new user is whom this call acted for: the request log names
        // them, and read routing keeps where their account was written.
        if let Some(slot) = slot {
            let _ = slot.0.set(row.id);
        }
        let token = self.ctx.tokens.issue(row.id, session)?;
        Ok(Self::reply(row, token))
    }

    // GET /user
    async fn current(&self, request: Request<GetCurrentUserRequest>) -> ConduitResult<UserResponse> {
        let caller = self.ctx.tokens.require(&request)?;
        let row = store::by_id(&self.ctx.reader(&request), caller.user_id)
            .await?
            .ok_or_else(crate::domain::auth::user_gone)?;
        Ok(Self::reply(row, caller.token))
    }

    // PUT /user
    async fn update(&self, request: Request<UpdateCurrentUserRequest>) -> ConduitResult<UserResponse> {
        let caller = self.ctx.tokens.require(&request)?;
        let intent = Intent::of(&request);
        let request = request.into_inner();
        let user = request.user.unwrap_or_default();
        // A field named by the update mask but unset was sent as null.
        let paths = request.update_mask.map(|m| m.paths).unwrap_or_default();
        let nulled = |field: &str| paths.iter().any(|p| p.strip_prefix("user.") == Some(field));
        let mut check = Check::new();
        for (field, value) in [("username", &user.username), ("email", &user.email), ("password", &user.password)] {
            if value.is_none() && nulled(field) {
                check.fail(&format!("user.{field}"), "can't be blank".into());
            }
        }
        if let Some(username) = &user.username {
            check.username("user.username", username);
        }
        for (field, value) in [("user.email", &user.email), ("user.password", &user.password), ("user.bio", &user.bio)]
        {
            if let Some(value) = value {
                check.text(field, value);
            }
        }
        if let Some(image) = &user.image {
            check.text("user.image", image);
        }
        check.finish()?;
        if user.username.is_some() || user.email.is_some() {
            store::ensure_free(&self.ctx.db, user.username.as_deref(), user.email.as_deref(), Some(caller.user_id))
                .await?;
        }
        let password_hash = match user.password {
            Some(password) => Some(self.ctx.passwords.hash(password).await?),
            None => None,
        };
        // null and "" both clear (stored as NULL); left out keeps.
        let clear_or = |value: Option<String>, field: &str| value.or_else(|| nulled(field).then(String::new));
        let changes = UserChanges {
            email: user.email,
            username: user.username,
            password_hash,
            bio: clear_or(user.bio, "bio"),
            image: clear_or(user.image, "image"),
        };
        // A new password, or a new email, ends every other session: whoever
        // held the old credentials is signed out everywhere but here.
        let sessions = self.ctx.tokens.sessions();
        let mut write = match self.ctx.write_as(intent, caller.user_id).await? {
            Begun::Replay(answer) => return self.with_token(answer, &caller),
            Begun::Run(write) => write,
        };
        let mut tx = sqlx::Connection::begin(&mut *write).await?;
        let updated =
            store::update(&mut tx, caller.user_id, changes).await?.ok_or_else(crate::domain::auth::user_gone)?;
        let ended = if updated.credentials_changed {
            sessions.end_others(&mut tx, caller.user_id, caller.session).await?
        } else {
            Default::default()
        };
        tx.commit().await?;
        // Kept without the token: a replay signs a fresh one for the session.
        let answer = Self::reply(updated.row, String::new());
        write.finish(&answer).await?;
        sessions.ended(ended);
        self.with_token(answer, &caller)
    }

    /// `answer` with a token of the caller's session.
    fn with_token(&self, mut answer: UserResponse, caller: &Caller) -> ConduitResult<UserResponse> {
        if let Some(user) = answer.user.as_mut() {
            user.token = self.ctx.tokens.issue(caller.user_id, caller.session)?;
        }
        Ok(answer)
    }
}

#[tonic::async_trait]
impl users_server::Users for Users {
    async fn login(&self, request: Request<LoginRequest>) -> Result<Response<UserResponse>, Status> {
        Ok(Response::new(Users::login(self, request).await?))
    }

    async fn register(&self, request: Request<RegisterRequest>) -> Result<Response<UserResponse>, Status> {
        Ok(Response::new(Users::register(self, request).await?))
    }

    async fn get_current_user(
        &self,
        request: Request<GetCurrentUserRequest>,
    ) -> Result<Response<UserResponse>, Status> {
        Ok(Response::new(self.current(request).await?))
    }

    async fn update_current_user(
        &self,
        request: Request<UpdateCurrentUserRequest>,
    ) -> Result<Response<UserResponse>, Status> {
        Ok(Response::new(self.update(request).await?))
    }
}
