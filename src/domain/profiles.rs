//! `conduit.v1.Profiles`: public profiles and following.

use tonic::{Request, Response, Status};

use super::context::Ctx;
use super::error::{ConduitError, ConduitResult, FieldError};
use super::idempotent::Begun;
use crate::pb::conduit::v1::{
    FollowUserRequest, GetProfileRequest, Profile, ProfileResponse, UnfollowUserRequest, profiles_server,
};

/// The Profiles service.
#[derive(Debug, Clone)]
pub struct Profiles {
    ctx: Ctx,
}

struct ProfileRow {
    id: i64,
    username: String,
    bio: Option<String>,
    image: Option<String>,
    following: bool,
}

/// A profile from its stored columns.
pub(crate) fn profile_of(username: String, bio: Option<String>, image: Option<String>, following: bool) -> Profile {
    Profile { username, bio, image, following }
}

impl From<ProfileRow> for ProfileResponse {
    fn from(r: ProfileRow) -> Self {
        ProfileResponse { profile: Some(profile_of(r.username, r.bio, r.image, r.following)) }
    }
}

/// A profile as `viewer` sees it.
async fn profile(db: impl sqlx::PgExecutor<'_>, username: &str, viewer: Option<i64>) -> ConduitResult<ProfileRow> {
    super::validate::lookup_key("username", username)?;
    sqlx::query_as!(
        ProfileRow,
        r#"SELECT u.id, u.username, u.bio, u.image,
                  EXISTS (SELECT 1 FROM follows f WHERE f.follower_id = $2 AND f.followee_id = u.id) AS "following!"
           FROM users u WHERE u.username = $1"#,
        username,
        super::context::viewer_id(viewer)
    )
    .fetch_optional(db)
    .await?
    .ok_or(ConduitError::NotFound("profile"))
}

impl Profiles {
    /// The service on a shared context.
    pub fn new(ctx: Ctx) -> Self {
        Self { ctx }
    }

    // POST and DELETE /profiles/{username}/follow
    async fn set_following<Q: prost::Message>(
        &self,
        request: Request<Q>,
        username: impl Fn(&Q) -> &str,
        follow: bool,
    ) -> ConduitResult<ProfileResponse> {
        let caller = self.ctx.tokens.require(&request)?;
        let username = username(request.get_ref());
        super::validate::lookup_key("username", username)?;
        let mut write = match self.ctx.write(&request, caller.user_id).await? {
            Begun::Replay(answer) => return Ok(answer),
            Begun::Run(write) => write,
        };
        let mut row = profile(&mut *write, username, Some(caller.user_id)).await?;
        if row.id == caller.user_id {
            return Err(ConduitError::Invalid(vec![FieldError::new("username", "cannot be followed by yourself")]));
        }
        if follow {
            // A new follow (not a repeated one) tells the followed user.
            sqlx::query!(
                "WITH ins AS (INSERT INTO follows (follower_id, followee_id) VALUES ($1, $2)
                              ON CONFLICT DO NOTHING RETURNING follower_id, followee_id)
                 INSERT INTO jobs (kind, payload)
                 SELECT $3, jsonb_build_object('actor', follower_id, 'recipient', followee_id) FROM ins",
                caller.user_id,
                row.id,
                super::notifications::kinds::FOLLOW
            )
            .execute(&mut *write)
            .await?;
        } else {
            sqlx::query!("DELETE FROM follows WHERE follower_id = $1 AND followee_id = $2", caller.user_id, row.id)
                .execute(&mut *write)
                .await?;
        }
        row.following = follow;
        let answer = ProfileResponse::from(row);
        write.finish(&answer).await?;
        if follow {
            self.ctx.jobs.enqueued();
        }
        Ok(answer)
    }
}

#[tonic::async_trait]
impl profiles_server::Profiles for Profiles {
    // GET /profiles/{username}
    async fn get_profile(&self, request: Request<GetProfileRequest>) -> Result<Response<ProfileResponse>, Status> {
        let viewer = self.ctx.tokens.viewer(&request);
        let row = profile(&self.ctx.reader(&request), &request.get_ref().username, viewer).await?;
        Ok(Response::new(row.into()))
    }

    async fn follow_user(&self, request: Request<FollowUserRequest>) -> Result<Response<ProfileResponse>, Status> {
        Ok(Response::new(self.set_following(request, |r| r.username.as_str(), true).await?))
    }

    async fn unfollow_user(&self, request: Request<UnfollowUserRequest>) -> Result<Response<ProfileResponse>, Status> {
        Ok(Response::new(self.set_following(request, |r| r.username.as_str(), false).await?))
    }
}
