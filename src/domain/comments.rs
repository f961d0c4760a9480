//! `conduit.v1.Comments`: comments on articles.

use sqlx::PgPool;
use tonic::{Request, Response, Status};

use super::articles::store::owner;
use super::context::Ctx;
use super::error::{ConduitError, ConduitResult};
use super::idempotent::Begun;
use super::validate::Check;
use crate::pb::conduit::v1::{
    Comment, CreateCommentRequest, DeleteCommentRequest, DeleteCommentResponse, ListCommentsRequest,
    MultipleCommentsResponse, SingleCommentResponse, comments_server,
};
use crate::postgres::Timestamptz;

/// The Comments service.
#[derive(Debug, Clone)]
pub struct Comments {
    ctx: Ctx,
}

struct CommentRow {
    id: i32,
    created_at: Timestamptz,
    updated_at: Timestamptz,
    body: String,
    username: String,
    bio: Option<String>,
    image: Option<String>,
    following: bool,
}

impl From<CommentRow> for Comment {
    fn from(r: CommentRow) -> Self {
        Comment {
            id: r.id,
            created_at: Some(r.created_at.into()),
            updated_at: Some(r.updated_at.into()),
            body: r.body,
            author: Some(super::profiles::profile_of(r.username, r.bio, r.image, r.following)),
        }
    }
}

/// The read model of comments: those of an article, oldest first, with
/// authors as `viewer` sees them.
async fn read(db: &PgPool, viewer: Option<i64>, article: i64) -> ConduitResult<Vec<Comment>> {
    let rows = sqlx::query_as!(
        CommentRow,
        r#"SELECT c.id, c.created_at AS "created_at: _", c.updated_at AS "updated_at: _", c.body, u.username, u.bio, u.image,
                  EXISTS (SELECT 1 FROM follows f WHERE f.follower_id = $2 AND f.followee_id = u.id) AS "following!"
           FROM comments c JOIN users u ON u.id = c.author_id
           WHERE c.article_id = $1
           ORDER BY c.id"#,
        article,
        super::context::viewer_id(viewer)
    )
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(Into::into).collect())
}

impl Comments {
    /// The service on a shared context.
    pub fn new(ctx: Ctx) -> Self {
        Self { ctx }
    }

    // GET /articles/{slug}/comments
    async fn list(&self, request: Request<ListCommentsRequest>) -> ConduitResult<MultipleCommentsResponse> {
        let viewer = self.ctx.tokens.viewer(&request);
        let db = self.ctx.reader(&request);
        let (article, _) = owner(&db, &request.get_ref().slug).await?;
        Ok(MultipleCommentsResponse { comments: read(&db, viewer, article).await? })
    }

    // POST /articles/{slug}/comments
    async fn create(&self, request: Request<CreateCommentRequest>) -> ConduitResult<SingleCommentResponse> {
        let caller = self.ctx.tokens.require(&request)?;
        let body = request.get_ref().comment.as_ref().map_or("", |c| c.body.as_str());
        Check::new().required("comment.body", body).finish()?;
        let mut write = match self.ctx.write(&request, caller.user_id).await? {
            Begun::Replay(answer) => return Ok(answer),
            Begun::Run(write) => write,
        };
        let r = request.into_inner();
        let comment = r.comment.unwrap_or_default();
        // One statement finds the article, adds the comment, enqueues the job
        // that tells the article's author (committed with the comment) and
        // answers with the comment: a concurrent delete of the article reads
        // as "not found". The author is the caller, who cannot follow
        // themselves (`follows` forbids it): `following` is false.
        let row = sqlx::query!(
            r#"WITH c AS (INSERT INTO comments (article_id, author_id, body)
                          SELECT id, $2, $3 FROM articles WHERE slug = $1
                          RETURNING id, article_id, author_id, created_at, updated_at),
                    job AS (INSERT INTO jobs (kind, payload)
                            SELECT $4, jsonb_build_object('actor', author_id, 'article', article_id, 'comment', id)
                            FROM c)
               SELECT c.id AS "id!", c.created_at AS "created_at!: Timestamptz",
                      c.updated_at AS "updated_at!: Timestamptz", u.username, u.bio, u.image
               FROM c JOIN users u ON u.id = c.author_id"#,
            r.slug,
            caller.user_id,
            comment.body,
            super::notifications::kinds::COMMENT
        )
        .fetch_optional(&mut *write)
        .await?
        .ok_or(ConduitError::NotFound("article"))?;
        let answer = SingleCommentResponse {
            comment: Some(Comment {
                id: row.id,
                created_at: Some(row.created_at.into()),
                updated_at: Some(row.updated_at.into()),
                body: comment.body,
                author: Some(super::profiles::profile_of(row.username, row.bio, row.image, false)),
            }),
        };
        write.finish(&answer).await?;
        self.ctx.jobs.enqueued();
        Ok(answer)
    }

    // DELETE /articles/{slug}/comments/{id}
    async fn delete(&self, request: Request<DeleteCommentRequest>) -> ConduitResult<DeleteCommentResponse> {
        let caller = self.ctx.tokens.require(&request)?;
        let mut write = match self.ctx.write(&request, caller.user_id).await? {
            Begun::Replay(answer) => return Ok(answer),
            Begun::Run(write) => write,
        };
        let r = request.into_inner();
        // No row: no such article; a row without an author: no such comment on it.
        let author = sqlx::query_scalar!(
            r#"SELECT c.author_id AS "author_id?" FROM articles a
               LEFT JOIN comments c ON c.article_id = a.id AND c.id = $1 WHERE a.slug = $2"#,
            r.id,
            r.slug
        )
        .fetch_optional(&mut *write)
        .await?
        .ok_or(ConduitError::NotFound("article"))?
        .ok_or(ConduitError::NotFound("comment"))?;
        if author != caller.user_id {
            return Err(ConduitError::Forbidden {
                resource: "comment",
                message: "only the author may delete this comment",
            });
        }
        sqlx::query!("DELETE FROM comments WHERE id = $1", r.id).execute(&mut *write).await?;
        write.finish(&DeleteCommentResponse {}).await?;
        Ok(DeleteCommentResponse {})
    }
}

#[tonic::async_trait]
impl comments_server::Comments for Comments {
    async fn list_comments(
        &self,
        request: Request<ListCommentsRequest>,
    ) -> Result<Response<MultipleCommentsResponse>, Status> {
        Ok(Response::new(self.list(request).await?))
    }

    async fn create_comment(
        &self,
        request: Request<CreateCommentRequest>,
    ) -> Result<Response<SingleCommentResponse>, Status> {
        Ok(Response::new(self.create(request).await?))
    }

    async fn delete_comment(
        &self,
        request: Request<DeleteCommentRequest>,
    ) -> Result<Response<DeleteCommentResponse>, Status> {
        Ok(Response::new(self.delete(request).await?))
    }
}
