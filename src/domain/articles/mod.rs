//! `conduit.v1.Articles` and `conduit.v1.Tags`: lists, the feed, single
//! articles, writing and favorites. Every answer that shows articles is built
//! from [`store::ArticleRow`], the one read model, which each of `store`'s
//! reading statements (one article, a page, a favorite's answer) selects.

pub(crate) mod store;

use tonic::{Request, Response, Status};

use super::context::Ctx;
use super::error::{ConduitError, ConduitResult};
use super::idempotent::{Begun, Intent};
use super::validate::{self, Check};
use crate::pb::conduit::v1::{
    Article, ArticleSummary, CreateArticleRequest, DeleteArticleRequest, DeleteArticleResponse, ExportArticlesRequest,
    FavoriteArticleRequest, FeedArticlesRequest, GetArticleRequest, ListArticlesRequest, ListTagsRequest,
    MultipleArticlesResponse, Profile, SingleArticleResponse, TagsResponse, UnfavoriteArticleRequest,
    UpdateArticleRequest, articles_server, tags_server,
};
use store::{ArticleChanges, ArticleRow, Filter, Key, NewArticle};

/// The Articles service.
#[derive(Debug, Clone)]
pub struct Articles {
    ctx: Ctx,
    exports_config: super::context::Exports,
    /// Each export holds a database connection for as long as its client
    /// reads: their number is bounded so that slow readers cannot take the pool.
    exports: std::sync::Arc<tokio::sync::Semaphore>,
}

type ExportStream = futures_util::stream::BoxStream<'static, Result<Article, Status>>;

fn author(row: &mut ArticleRow) -> Profile {
    super::profiles::profile_of(
        std::mem::take(&mut row.username),
        std::mem::take(&mut row.bio),
        std::mem::take(&mut row.image),
        row.following,
    )
}

impl From<ArticleRow> for Article {
    fn from(mut row: ArticleRow) -> Self {
        Article {
            author: Some(author(&mut row)),
            slug: row.slug,
            title: row.title,
            description: row.description,
            body: row.body,
            tag_list: row.tag_list,
            created_at: Some(row.created_at.into()),
            updated_at: Some(row.updated_at.into()),
            favorited: row.favorited,
            favorites_count: row.favorites_count,
        }
    }
}

impl From<ArticleRow> for ArticleSummary {
    /// The list form: the article without its body (lists read no body).
    fn from(row: ArticleRow) -> Self {
        let a = Article::from(row);
        ArticleSummary {
            slug: a.slug,
            title: a.title,
            description: a.description,
            tag_list: a.tag_list,
            created_at: a.created_at,
            updated_at: a.updated_at,
            favorited: a.favorited,
            favorites_count: a.favorites_count,
            author: a.author,
        }
    }
}

/// Empty filter values mean "no filter", as clients send `?tag=` for none.
/// A page of articles with the total matching.
fn page(total: i64, rows: Vec<ArticleRow>) -> MultipleArticlesResponse {
    MultipleArticlesResponse {
        articles: rows.into_iter().map(Into::into).collect(),
        articles_count: i32::try_from(total).unwrap_or(i32::MAX),
    }
}

fn filter_value(value: &Option<String>) -> Option<&str> {
    value.as_deref().filter(|v| !v.is_empty())
}

/// The list filters of a request (lists and exports take the same ones).
fn filters<'a>(tag: &'a Option<String>, author: &'a Option<String>, favorited: &'a Option<String>) -> Filter<'a> {
    Filter { tag: filter_value(tag), author: filter_value(author), favorited: filter_value(favorited) }
}

impl Articles {
    /// The service on a shared context, exporting as `exports` says.
    pub fn new(ctx: Ctx, exports: super::context::Exports) -> Self {
        let running = std::sync::Arc::new(tokio::sync::Semaphore::new(exports.max_concurrent.max(1)));
        let exports_config = super::context::Exports { batch: exports.batch.max(1), ..exports };
        Self { ctx, exports_config, exports: running }
    }

    // GET /articles:export
    fn export(&self, request: Request<ExportArticlesRequest>) -> Result<ExportStream, Status> {
        use futures_util::StreamExt;
        let Ok(permit) = self.exports.clone().try_acquire_owned() else {
            return Err(super::error::unavailable(
                "too many exports are running; try again shortly",
                std::time::Duration::from_secs(5),
            ));
        };
        let viewer = self.ctx.tokens.viewer(&request);
        let r = request.into_inner();
        validate::list_filters(r.tag.as_deref(), r.author.as_deref(), r.favorited.as_deref())?;
        let (db, batch, stall) = (self.ctx.db.clone(), self.exports_config.batch, self.exports_config.stall_timeout);
        // A batch waits here while the next is fetched: the reader's pace is
        // the query's pace, with about two batches in memory.
        let (tx, rx) = tokio::sync::mpsc::channel(batch);
        // How the export ended, given after the last article: a stream that
        // just stops would look complete.
        let (end, ended) = tokio::sync::oneshot::channel::<Result<(), Status>>();
        tokio::spawn(async move {
            let filter = filters(&r.tag, &r.author, &r.favorited);
            let outcome = match store::export(&db, viewer, filter, batch, stall, &tx).await {
                Ok(true) => Ok(()),
                Ok(false) => Err(Status::deadline_exceeded(format!(
                    "the export stopped: the client read nothing for {} s",
                    stall.as_secs()
                ))),
                Err(e) => Err(Status::from(e)),
            };
            let _ = end.send(outcome);
            drop((tx, permit));
        });
        let articles = futures_util::stream::unfold((rx, Some(ended)), |(mut rx, ended)| async move {
            match rx.recv().await {
                Some(row) => Some((Ok(Article::from(row)), (rx, ended))),
                None => match ended?.await {
                    Ok(Err(status)) => Some((Err(status), (rx, None))),
                    _ => None,
                },
            }
        });
        Ok(articles.boxed())
    }

    async fn single(
        &self,
        db: impl sqlx::PgExecutor<'_>,
        viewer: Option<i64>,
        key: Key<'_>,
    ) -> ConduitResult<SingleArticleResponse> {
        if let Key::Slug(slug) = key {
            validate::lookup_key("slug", slug)?;
        }
        let row = store::read_one(db, viewer, key).await?;
        Ok(SingleArticleResponse { article: Some(row.into()) })
    }

    // GET /articles
    async fn list(&self, request: Request<ListArticlesRequest>) -> ConduitResult<MultipleArticlesResponse> {
        let viewer = self.ctx.tokens.viewer(&request);
        let db = self.ctx.reader(&request);
        let r = request.into_inner();
        let (limit, offset) = validate::page(r.limit, r.offset);
        validate::list_filters(r.tag.as_deref(), r.author.as_deref(), r.favorited.as_deref())?;
        let filter = filters(&r.tag, &r.author, &r.favorited);
        let (total, rows) = store::list(&db, viewer, filter, limit, offset).await?;
        Ok(page(total, rows))
    }

    // GET /articles/feed
    async fn feed(&self, request: Request<FeedArticlesRequest>) -> ConduitResult<MultipleArticlesResponse> {
        let caller = self.ctx.tokens.require(&request)?;
        let db = self.ctx.reader(&request);
        let r = request.into_inner();
        let (limit, offset) = validate::page(r.limit, r.offset);
        let (total, rows) = store::feed(&db, caller.user_id, limit, offset).await?;
        Ok(page(total, rows))
    }

    // POST /articles
    async fn create(&self, request: Request<CreateArticleRequest>) -> ConduitResult<SingleArticleResponse> {
        let caller = self.ctx.tokens.require(&request)?;
        let intent = Intent::of(&request);
        let article = request.into_inner().article.unwrap_or_default();
        let mut check = Check::new();
        check
            .required("article.title", &article.title)
            .required("article.description", &article.description)
            .required("article.body", &article.body);
        let tags = validate::tags("article.tagList", &article.tag_list, &mut check);
        check.finish()?;
        // A connection only for a valid request.
        let mut write = match self.ctx.write_as(intent, caller.user_id).await? {
            Begun::Replay(answer) => return Ok(answer),
            Begun::Run(write) => write,
        };
        let base = validate::slugify(&article.title);
        let new = NewArticle { title: article.title, description: article.description, body: article.body, tags };
        let id = store::create(&mut write, caller.user_id, &base, &new).await?;
        let answer = self.single(&mut *write, Some(caller.user_id), Key::Id(id)).await?;
        write.finish(&answer).await?;
        self.ctx.jobs.enqueued();
        Ok(answer)
    }

    /// The id of the article with `slug`, if the caller wrote it.
    async fn own(db: &mut sqlx::PgConnection, caller: i64, slug: &str) -> ConduitResult<i64> {
        let (id, author) = store::owner(db, slug).await?;
        if author != caller {
            return Err(ConduitError::Forbidden {
                resource: "article",
                message: "only the author may change this article",
            });
        }
        Ok(id)
    }

    // PUT /articles/{slug}
    async fn update(&self, request: Request<UpdateArticleRequest>) -> ConduitResult<SingleArticleResponse> {
        let caller = self.ctx.tokens.require(&request)?;
        let intent = Intent::of(&request);
        let r = request.into_inner();
        let changes = r.article.unwrap_or_default();
        let tags_meant = match &r.update_mask {
            Some(mask) => mask.paths.iter().any(|p| p == "article.tag_list"),
            None => !changes.tag_list.is_empty(),
        };
        let mut check = Check::new();
        if let Some(title) = &changes.title {
            check.required("article.title", title);
        }
        if let Some(description) = &changes.description {
            check.required("article.description", description);
        }
        if let Some(body) = &changes.body {
            check.required("article.body", body);
        }
        let tags = tags_meant.then(|| validate::tags("article.tagList", &changes.tag_list, &mut check));
        check.finish()?;
        let mut write = match self.ctx.write_as(intent, caller.user_id).await? {
            Begun::Replay(answer) => return Ok(answer),
            Begun::Run(write) => write,
        };
        let id = Self::own(&mut write, caller.user_id, &r.slug).await?;
        let changes = ArticleChanges {
            title: changes.title.map(|t| {
                let base = validate::slugify(&t);
                (t, base)
            }),
            description: changes.description,
            body: changes.body,
            tags,
        };
        store::update(&mut write, id, &changes).await?;
        let answer = self.single(&mut *write, Some(caller.user_id), Key::Id(id)).await?;
        write.finish(&answer).await?;
        Ok(answer)
    }

    // DELETE /articles/{slug}
    async fn delete(&self, request: Request<DeleteArticleRequest>) -> ConduitResult<DeleteArticleResponse> {
        let caller = self.ctx.tokens.require(&request)?;
        let mut write = match self.ctx.write(&request, caller.user_id).await? {
            Begun::Replay(answer) => return Ok(answer),
            Begun::Run(write) => write,
        };
        let id = Self::own(&mut write, caller.user_id, &request.get_ref().slug).await?;
        store::delete(&mut write, id).await?;
        write.finish(&DeleteArticleResponse {}).await?;
        Ok(DeleteArticleResponse {})
    }

    // POST and DELETE /articles/{slug}/favorite
    async fn favorite<Q: prost::Message>(
        &self,
        request: Request<Q>,
        slug: impl Fn(&Q) -> &str,
        favorite: bool,
    ) -> ConduitResult<SingleArticleResponse> {
        let caller = self.ctx.tokens.require(&request)?;
        let slug = slug(request.get_ref());
        validate::lookup_key("slug", slug)?;
        let mut write = match self.ctx.write(&request, caller.user_id).await? {
            Begun::Replay(answer) => return Ok(answer),
            Begun::Run(write) => write,
        };
        let row = store::set_favorite(&mut *write, caller.user_id, slug, favorite).await?;
        let answer = SingleArticleResponse { article: Some(row.into()) };
        write.finish(&answer).await?;
        if favorite {
            self.ctx.jobs.enqueued();
        }
        Ok(answer)
    }
}

#[tonic::async_trait]
impl articles_server::Articles for Articles {
    type ExportArticlesStream = ExportStream;

    async fn export_articles(&self, request: Request<ExportArticlesRequest>) -> Result<Response<ExportStream>, Status> {
        Ok(Response::new(self.export(request)?))
    }

    async fn list_articles(
        &self,
        request: Request<ListArticlesRequest>,
    ) -> Result<Response<MultipleArticlesResponse>, Status> {
        Ok(Response::new(self.list(request).await?))
    }

    async fn feed_articles(
        &self,
        request: Request<FeedArticlesRequest>,
    ) -> Result<Response<MultipleArticlesResponse>, Status> {
        Ok(Response::new(self.feed(request).await?))
    }

    // GET /articles/{slug}
    async fn get_article(
        &self,
        request: Request<GetArticleRequest>,
    ) -> Result<Response<SingleArticleResponse>, Status> {
        let viewer = self.ctx.tokens.viewer(&request);
        let db = self.ctx.reader(&request);
        Ok(Response::new(self.single(&db, viewer, Key::Slug(&request.get_ref().slug)).await?))
    }

    async fn create_article(
        &self,
        request: Request<CreateArticleRequest>,
    ) -> Result<Response<SingleArticleResponse>, Status> {
        Ok(Response::new(self.create(request).await?))
    }

    async fn update_article(
        &self,
        request: Request<UpdateArticleRequest>,
    ) -> Result<Response<SingleArticleResponse>, Status> {
        Ok(Response::new(self.update(request).await?))
    }

    async fn delete_article(
        &self,
        request: Request<DeleteArticleRequest>,
    ) -> Result<Response<DeleteArticleResponse>, Status> {
        Ok(Response::new(self.delete(request).await?))
    }

    async fn favorite_article(
        &self,
        request: Request<FavoriteArticleRequest>,
    ) -> Result<Response<SingleArticleResponse>, Status> {
        Ok(Response::new(self.favorite(request, |r| r.slug.as_str(), true).await?))
    }

    async fn unfavorite_article(
        &self,
        request: Request<UnfavoriteArticleRequest>,
    ) -> Result<Response<SingleArticleResponse>, Status> {
        Ok(Response::new(self.favorite(request, |r| r.slug.as_str(), false).await?))
    }
}

/// The Tags service.
#[derive(Debug, Clone)]
pub struct Tags {
    ctx: Ctx,
}

impl Tags {
    /// The service on a shared context.
    pub fn new(ctx: Ctx) -> Self {
        Self { ctx }
    }
}

#[tonic::async_trait]
impl tags_server::Tags for Tags {
    // GET /tags
    async fn list_tags(&self, request: Request<ListTagsRequest>) -> Result<Response<TagsResponse>, Status> {
        Ok(Response::new(TagsResponse { tags: store::tags(&self.ctx.reader(&request)).await? }))
    }
}
