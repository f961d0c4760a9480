//! Articles in Postgres: the one read model every article-returning call
//! uses, the page queries of lists and the feed, and the writes.

use sqlx::{AssertSqlSafe, Connection, PgConnection, PgPool, Postgres, Transaction};

use crate::domain::error::{ConduitError, ConduitResult};
use crate::domain::notifications;
use crate::domain::validate::RESERVED_SLUGS;
use crate::postgres::Timestamptz;

/// An article as the API shows it to one viewer.
#[derive(Debug)]
pub(crate) struct ArticleRow {
    /// Slug.
    pub(crate) slug: String,
    /// Title.
    pub(crate) title: String,
    /// Description.
    pub(crate) description: String,
    /// Body; empty when not asked for.
    pub(crate) body: String,
    /// Tags in the author's order.
    pub(crate) tag_list: Vec<String>,
    /// Published.
    pub(crate) created_at: Timestamptz,
    /// Last changed.
    pub(crate) updated_at: Timestamptz,
    /// Number of favorites.
    pub(crate) favorites_count: i32,
    /// Author's user name.
    pub(crate) username: String,
    /// Author's biography.
    pub(crate) bio: Option<String>,
    /// Author's picture.
    pub(crate) image: Option<String>,
    /// Whether the viewer favorited it.
    pub(crate) favorited: bool,
    /// Whether the viewer follows the author.
    pub(crate) following: bool,
}

/// Which article to read.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Key<'a> {
    /// The article with this id.
    Id(i64),
    /// The article with this slug.
    Slug(&'a str),
}

/// The read model: one article with author, counts and the viewer's
/// `favorited`/`following`, or NOT_FOUND. The viewer flags are primary-key
/// probes (scalar subqueries), not `EXISTS`: Postgres may hash an `EXISTS`
/// by reading all of the viewer's favorites, which grows with the viewer's
/// history instead of the answer. One statement per key: planned once for
/// both (`id = ANY($n) OR slug = $m`), the generic plan expected eleven rows
/// and hashed every user to join them (0.11 ms against 0.04 ms for a key
/// probe, `EXPLAIN ANALYZE` on 300 users).
pub(crate) async fn read_one(
    db: impl sqlx::PgExecutor<'_>,
    viewer: Option<i64>,
    key: Key<'_>,
) -> ConduitResult<ArticleRow> {
    let viewer = crate::domain::context::viewer_id(viewer);
    let row = match key {
        Key::Id(id) => sqlx::query(AssertSqlSafe(ONE_BY_ID.as_str())).bind(viewer).bind(id).fetch_optional(db).await?,
        Key::Slug(slug) => {
            sqlx::query(AssertSqlSafe(ONE_BY_SLUG.as_str())).bind(viewer).bind(slug).fetch_optional(db).await?
        }
    };
    row.as_ref().map(|row| article_row(row, 0, true)).transpose()?.flatten().ok_or(ConduitError::NotFound("article"))
}

/// One article by `$2`, `id` or `slug`, as the viewer `$1` sees it.
fn one_by(key: &str) -> String {
    format!("SELECT {} FROM articles a JOIN users u ON u.id = a.author_id WHERE a.{key} = $2", article_columns(1, true))
}

/// [`read_one`] by id.
static ONE_BY_ID: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| one_by("id"));

/// [`read_one`] by slug.
static ONE_BY_SLUG: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| one_by("slug"));

/// Filters of the article list; they combine.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Filter<'a> {
    /// Carrying this tag.
    pub(crate) tag: Option<&'a str>,
    /// Written by this user name.
    pub(crate) author: Option<&'a str>,
    /// Favorited by this user name.
    pub(crate) favorited: Option<&'a str>,
}

/// The SQL of a list page for one combination of filters. Each combination
/// is its own statement, so Postgres plans each for what it filters on (one
/// statement with "filter may be null" conditions gets a generic plan that
/// cannot use the right index). One index drives the page, newest first, in
/// a fixed order of preference: a tag's entries, else a user's favorites,
/// else the author's or all articles; other filters are probes per row. Single filters read
/// their total from the counters the triggers keep; combined ones count.
/// Parameters are bound in the order tag, favorited, author, limit, offset.
fn page_sql(filter: &Filter<'_>) -> String {
    let d = Driving::of(filter, "d");
    let (limit, offset) = (d.params + 1, d.params + 2);
    let filtered = d.filtered();
    let (id, order) = (d.id, d.order);
    let total = match (filter.tag, filter.favorited, filter.author) {
        (None, None, None) => "(SELECT count FROM article_totals)".to_owned(),
        (Some(_), None, None) => "(SELECT article_count FROM tags WHERE name = $1)".to_owned(),
        (None, Some(_), None) => "(SELECT favorites_count FROM users WHERE username = $1)".to_owned(),
        (None, None, Some(_)) => "(SELECT articles_count FROM users WHERE username = $1)".to_owned(),
        _ => format!("(SELECT count(*) FROM {filtered})"),
    };
    format!(
        "SELECT COALESCE({total}, 0)::int8 AS total, \
         ARRAY(SELECT {id} FROM {filtered} ORDER BY {order} LIMIT ${limit} OFFSET ${offset}) AS ids"
    )
}

/// The table that drives a filtered list, newest first (see [`page_sql`]),
/// with the other filters as conditions. Parameters are numbered from 1 in
/// the order tag, favorited, author.
struct Driving {
    from: String,
    /// The article id column.
    id: String,
    order: String,
    conditions: Vec<String>,
    /// How many parameters the filters take.
    params: usize,
}

impl Driving {
    /// The driving table aliased `alias`; when it is the articles table
    /// itself, `alias` stands for the article row.
    fn of(filter: &Filter<'_>, alias: &str) -> Self {
        let mut n = 0;
        let mut next = || {
            n += 1;
            n
        };
        let tag = filter.tag.map(|_| next());
        let favorited = filter.favorited.map(|_| next());
        let author = filter.author.map(|_| next());
        let user = |p: usize| format!("(SELECT id FROM users WHERE username = ${p})");
        let d = alias;
        let (from, id, order, mut conditions) = match (tag, favorited) {
            (Some(t), _) => (
                format!("article_tags {d}"),
                format!("{d}.article_id"),
                format!("{d}.created_at DESC, {d}.article_id DESC"),
                vec![format!("{d}.tag_id = (SELECT id FROM tags WHERE name = ${t})")],
            ),
            (None, Some(f)) => (
                format!("favorites {d}"),
                format!("{d}.article_id"),
                format!("{d}.article_created_at DESC, {d}.article_id DESC"),
                vec![format!("{d}.user_id = {}", user(f))],
            ),
            (None, None) => {
                (format!("articles {d}"), format!("{d}.id"), format!("{d}.created_at DESC, {d}.id DESC"), Vec::new())
            }
        };
        if let (Some(f), Some(_)) = (favorited, tag) {
            conditions.push(format!(
                "EXISTS (SELECT 1 FROM favorites f WHERE f.article_id = {id} AND f.user_id = {})",
                user(f)
            ));
        }
        if let Some(a) = author {
            if from.starts_with("articles ") {
                conditions.push(format!("{d}.author_id = {}", user(a)));
            } else {
                conditions
                    .push(format!("EXISTS (SELECT 1 FROM articles a WHERE a.id = {id} AND a.author_id = {})", user(a)));
            }
        }
        Self { from, id, order, conditions, params: n }
    }

    fn filtered(&self) -> String {
        if self.conditions.is_empty() {
            self.from.clone()
        } else {
            format!("{} WHERE {}", self.from, self.conditions.join(" AND "))
        }
    }
}

/// The read model's columns of article `a` and author `u` as the viewer
/// bound at `$viewer` sees them, with or without the body.
fn article_columns(viewer: usize, with_body: bool) -> String {
    let following = format!(
        "COALESCE((SELECT true FROM follows fo WHERE fo.follower_id = ${viewer} AND fo.followee_id = a.author_id), false)"
    );
    columns_with(viewer, with_body, &following)
}

/// [`article_columns`] with `following` given as an expression.
fn columns_with(viewer: usize, with_body: bool, following: &str) -> String {
    format!(
        "a.id, a.slug, a.title, a.description, {body}a.tag_list, a.created_at, a.updated_at, \
         a.favorites_count, u.username, u.bio, u.image, \
         COALESCE((SELECT true FROM favorites f WHERE f.user_id = ${viewer} AND f.article_id = a.id), false) \
             AS favorited, \
         {following} AS following",
        body = if with_body { "a.body, " } else { "" }
    )
}

/// The SQL of an export: every article matching, bodies included, newest
/// first, as `viewer` (the parameter after the filters) sees them.
pub(crate) fn export_sql(filter: &Filter<'_>) -> String {
    let articles_driven = filter.tag.is_none() && filter.favorited.is_none();
    let d = Driving::of(filter, if articles_driven { "a" } else { "d" });
    let viewer = d.params + 1;
    let join = if articles_driven { String::new() } else { format!("JOIN articles a ON a.id = {}", d.id) };
    let condition =
        if d.conditions.is_empty() { String::new() } else { format!("WHERE {}", d.conditions.join(" AND ")) };
    format!(
        "SELECT {columns} FROM {from} {join} JOIN users u ON u.id = a.author_id {condition} ORDER BY {order}",
        columns = article_columns(viewer, true),
        from = d.from,
        order = d.order,
    )
}

/// An article of an export or list row whose columns from `first` on are
/// [`article_columns`]'s, read by position without type checks, as the
/// query macros read theirs (by name, with checks, it took ~500
/// instructions a column: a quarter of a list request's CPU).
fn article_row(row: &sqlx::postgres::PgRow, first: usize, with_body: bool) -> Result<Option<ArticleRow>, sqlx::Error> {
    use sqlx::Row;
    debug_assert_eq!(sqlx::Column::name(&row.columns()[first]), "id");
    // A page's row without an article (an empty page) has a NULL id.
    if row.try_get_unchecked::<Option<i64>, _>(first)?.is_none() {
        return Ok(None);
    }
    let (body, rest) =
        if with_body { (row.try_get_unchecked(first + 4)?, first + 5) } else { (String::new(), first + 4) };
    Ok(Some(ArticleRow {
        slug: row.try_get_unchecked(first + 1)?,
        title: row.try_get_unchecked(first + 2)?,
        description: row.try_get_unchecked(first + 3)?,
        body,
        tag_list: row.try_get_unchecked(rest)?,
        created_at: row.try_get_unchecked(rest + 1)?,
        updated_at: row.try_get_unchecked(rest + 2)?,
        favorites_count: row.try_get_unchecked(rest + 3)?,
        username: row.try_get_unchecked(rest + 4)?,
        bio: row.try_get_unchecked(rest + 5)?,
        image: row.try_get_unchecked(rest + 6)?,
        favorited: row.try_get_unchecked(rest + 7)?,
        following: row.try_get_unchecked(rest + 8)?,
    }))
}

/// Streams the articles of an export into `out`, `batch` rows at a time,
/// from a cursor in one read-only snapshot. Stops (closing the cursor and
/// its transaction) as soon as `out` is closed by the reader going away;
/// returns `false` when the reader took nothing for `stall`, which ends
/// the export too (it holds a connection and a snapshot while it waits).
pub(crate) async fn export(
    db: &PgPool,
    viewer: Option<i64>,
    filter: Filter<'_>,
    batch: usize,
    stall: std::time::Duration,
    out: &tokio::sync::mpsc::Sender<ArticleRow>,
) -> ConduitResult<bool> {
    let mut tx = db.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY").execute(&mut *tx).await?;
    let mut declare =
        sqlx::query(AssertSqlSafe(format!("DECLARE export NO SCROLL CURSOR FOR {}", export_sql(&filter))));
    for value in [filter.tag, filter.favorited, filter.author].into_iter().flatten() {
        declare = declare.bind(value);
    }
    declare.bind(crate::domain::context::viewer_id(viewer)).execute(&mut *tx).await?;
    let fetch = format!("FETCH {batch} FROM export");
    let mut read_on = true;
    'batches: loop {
        let rows = tokio::select! {
            rows = sqlx::query(AssertSqlSafe(fetch.clone())).fetch_all(&mut *tx) => rows?,
            // Gone while the batch was read: the rollback below ends it.
            () = out.closed() => break,
        };
        let last = rows.len() < batch;
        for row in &rows {
            let Some(article) = article_row(row, 0, true)? else { continue };
            match out.send_timeout(article, stall).await {
                Ok(()) => {}
                Err(tokio::sync::mpsc::error::SendTimeoutError::Timeout(_)) => {
                    read_on = false;
                    break 'batches;
                }
                Err(tokio::sync::mpsc::error::SendTimeoutError::Closed(_)) => break 'batches,
            }
        }
        if last {
            break;
        }
    }
    tx.rollback().await?;
    Ok(read_on)
}

/// The SQL of a whole list page in one statement: the page of ids (see
/// [`page_sql`]) and its articles as the read model shows them, in page
/// order; one row with NULL article columns when the page is empty. The
/// viewer is the parameter after limit and offset.
fn list_sql(filter: &Filter<'_>) -> String {
    let viewer = [filter.tag, filter.favorited, filter.author].iter().flatten().count() + 3;
    with_articles(&page_sql(filter), viewer)
}

/// [`list_sql`] of each combination of filters, built once (the text
/// depends only on which filters are given), indexed by [`list_shape`].
static LIST_SQL: std::sync::LazyLock<[String; 8]> = std::sync::LazyLock::new(|| {
    std::array::from_fn(|shape| {
        let given = |bit: usize| (shape & bit != 0).then_some("");
        list_sql(&Filter { tag: given(1), favorited: given(2), author: given(4) })
    })
});

/// Which filters are given, as an index into [`LIST_SQL`].
fn list_shape(filter: &Filter<'_>) -> usize {
    usize::from(filter.tag.is_some())
        | usize::from(filter.favorited.is_some()) << 1
        | usize::from(filter.author.is_some()) << 2
}

/// A page statement (one row: `total`, `ids`) joined to its articles as
/// `$viewer` sees them, in page order.
fn with_articles(page: &str, viewer: usize) -> String {
    with_columns(page, &article_columns(viewer, false), true)
}

/// A page statement joined to its articles, read as `columns`.
///
/// For lists (`probe_authors`), the page is `MATERIALIZED`: inlined, its id
/// array was computed twice, once for the join and once for the order; and
/// each article's author is probed by key (`OFFSET 0` keeps the subquery
/// from being flattened into a join): the generic plan expects ten
/// articles and, with few users, hashed all of them instead, which took half
/// of the list's execution (`EXPLAIN ANALYZE` with 300 users; 0.38 against
/// 0.45 ms per list by pgbench). The feed's plan computes its page once and
/// was no faster either way (0.47 against 0.45 ms).
fn with_columns(page: &str, columns: &str, probe_authors: bool) -> String {
    let (materialized, authors) = if probe_authors {
        (
            "MATERIALIZED ",
            "LEFT JOIN LATERAL (SELECT username, bio, image FROM users WHERE users.id = a.author_id OFFSET 0) AS u ON true",
        )
    } else {
        ("", "LEFT JOIN users u ON u.id = a.author_id")
    };
    format!(
        "WITH page AS {materialized}({page}) \
         SELECT page.total, {columns} \
         FROM page LEFT JOIN articles a ON a.id = ANY(page.ids) {authors} \
         ORDER BY array_position(page.ids, a.id)"
    )
}

/// The feed of `$1` in one statement. The total adds up the followed
/// authors' article counters; both it and the page are read one of two
/// ways, whichever the number of followed authors makes bounded (PostgreSQL
/// evaluates only the branch taken). The total: up to
/// [`FEED_PER_AUTHOR_MAX`] authors each counter by its key (a join let the
/// planner scan every user), more by a join. The page:
/// - up to [`FEED_PER_AUTHOR_MAX`] authors: at most limit + offset of each
///   one's newest articles from the (author, newest first) index, the
///   newest of those kept, so a prolific author costs no more than any
///   other (one author of 3,000 articles made reading them all 6× slower);
/// - more: all articles newest first until the page is full, each checked
///   against the follows (1,000 authors × 5 articles took 5,000 index
///   entries the first way, 20 this way). The check is a scalar subquery,
///   not `EXISTS`: the statement's one generic plan
///   ([`crate::postgres::connect`]) is made for the average user, who
///   follows few, and would join an `EXISTS` by hashing the follows and
///   sorting every article they wrote (16,800 rows, 24 ms, for a user
///   following 1,000 authors); a per-row check can only walk the index.
static FEED_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    // Every article of the page is by an author the reader follows, in the
    // statement's one snapshot: `following` needs no probe.
    with_columns(
        &format!(
            "WITH followed AS (SELECT count(*) <= {FEED_PER_AUTHOR_MAX} AS few \
                               FROM (SELECT 1 FROM follows WHERE follower_id = $1 \
                                     LIMIT {FEED_PER_AUTHOR_MAX} + 1) AS counted) \
             SELECT COALESCE(CASE WHEN (SELECT few FROM followed) \
                      THEN (SELECT sum((SELECT u.articles_count FROM users u WHERE u.id = f.followee_id)) \
                            FROM follows f WHERE f.follower_id = $1) \
                      ELSE (SELECT sum(u.articles_count) FROM follows f JOIN users u ON u.id = f.followee_id \
                            WHERE f.follower_id = $1) END, 0)::int8 AS total, \
                    CASE WHEN (SELECT few FROM followed) \
                    THEN ARRAY(SELECT n.id FROM follows f, \
                                 LATERAL (SELECT a.id, a.created_at FROM articles a \
                                          WHERE a.author_id = f.followee_id \
                                          ORDER BY a.created_at DESC, a.id DESC LIMIT $2 + $3) AS n \
                               WHERE f.follower_id = $1 \
                               ORDER BY n.created_at DESC, n.id DESC LIMIT $2 OFFSET $3) \
                    ELSE ARRAY(SELECT a.id FROM articles a \
                               WHERE (SELECT true FROM follows f \
                                      WHERE f.follower_id = $1 AND f.followee_id = a.author_id) \
                               ORDER BY a.created_at DESC, a.id DESC LIMIT $2 OFFSET $3) END AS ids"
        ),
        &columns_with(1, false, "true"),
        false,
    )
});

/// Followed authors up to which the feed reads each one's newest articles.
const FEED_PER_AUTHOR_MAX: i64 = 50;

/// Rows of a page statement ([`with_articles`]): the total and the articles.
fn page_rows(rows: &[sqlx::postgres::PgRow]) -> ConduitResult<(i64, Vec<ArticleRow>)> {
    use sqlx::Row;
    let total = match rows.first() {
        Some(row) => row.try_get::<i64, _>("total")?,
        None => 0,
    };
    let mut articles = Vec::with_capacity(rows.len());
    for row in rows {
        if let Some(article) = article_row(row, 1, false)? {
            articles.push(article);
        }
    }
    Ok((total, articles))
}

/// A page of the article list as `viewer` sees it, with the total
/// matching, in one round trip.
pub(crate) async fn list(
    db: &PgPool,
    viewer: Option<i64>,
    filter: Filter<'_>,
    limit: i64,
    offset: i64,
) -> ConduitResult<(i64, Vec<ArticleRow>)> {
    let mut query = sqlx::query(AssertSqlSafe(LIST_SQL[list_shape(&filter)].as_str()));
    for value in [filter.tag, filter.favorited, filter.author].into_iter().flatten() {
        query = query.bind(value);
    }
    let rows = query.bind(limit).bind(offset).bind(crate::domain::context::viewer_id(viewer)).fetch_all(db).await?;
    page_rows(&rows)
}

/// A page of the feed of `user` (articles by the users it follows, as it
/// sees them) with the total, in one round trip.
pub(crate) async fn feed(db: &PgPool, user: i64, limit: i64, offset: i64) -> ConduitResult<(i64, Vec<ArticleRow>)> {
    let rows = sqlx::query(AssertSqlSafe(FEED_SQL.as_str())).bind(user).bind(limit).bind(offset).fetch_all(db).await?;
    page_rows(&rows)
}

/// A slug for `base` that no other article has and no route shadows:
/// `base`, else `base-2`, `base-3`, …
async fn free_slug(tx: &mut Transaction<'_, Postgres>, base: &str, except: Option<i64>) -> ConduitResult<String> {
    // Writers of the same base slug take turns until they commit, so they
    // do not all pick the same free suffix and retry.
    sqlx::query!("SELECT 1 AS locked FROM pg_advisory_xact_lock(hashtext($1))", base).fetch_one(&mut **tx).await?;
    sqlx::query(crate::postgres::CUSTOM_PLANS).execute(&mut **tx).await?;
    let taken: std::collections::HashSet<String> = sqlx::query_scalar!(
        "SELECT slug FROM articles WHERE (slug = $1 OR slug LIKE $1 || '-%') AND id IS DISTINCT FROM $2",
        base,
        except
    )
    .fetch_all(&mut **tx)
    .await?
    .into_iter()
    .collect();
    let free = |slug: &str| !taken.contains(slug) && !RESERVED_SLUGS.contains(&slug);
    if free(base) {
        return Ok(base.to_owned());
    }
    Ok((2u64..).map(|n| format!("{base}-{n}")).find(|s| free(s)).expect("some suffix is free"))
}

fn is_slug_race(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.constraint() == Some("articles_slug_key"))
}

/// How many times a write retries after losing a slug race.
const SLUG_ATTEMPTS: usize = 5;

/// A new article's fields, validated.
#[derive(Debug)]
pub(crate) struct NewArticle {
    /// Title.
    pub(crate) title: String,
    /// Description.
    pub(crate) description: String,
    /// Body.
    pub(crate) body: String,
    /// Tags, de-duplicated.
    pub(crate) tags: Vec<String>,
}

/// Inserts an article with its tags; returns its id.
pub(crate) async fn create(
    db: &mut PgConnection,
    author: i64,
    base_slug: &str,
    article: &NewArticle,
) -> ConduitResult<i64> {
    for _ in 0..SLUG_ATTEMPTS {
        // A savepoint inside a keyed write's transaction: a lost slug race
        // rolls back to it.
        let mut tx = db.begin().await?;
        lock_totals(&mut tx).await?;
        let slug = free_slug(&mut tx, base_slug, None).await?;
        let inserted = sqlx::query!(
            "INSERT INTO articles (slug, title, description, body, tag_list, author_id)
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING id, created_at",
            slug,
            article.title,
            article.description,
            article.body,
            &article.tags,
            author
        )
        .fetch_one(&mut *tx)
        .await;
        let (id, created_at) = match inserted {
            Ok(row) => (row.id, row.created_at),
            Err(e) if is_slug_race(&e) => continue,
            Err(e) => return Err(e.into()),
        };
        link_tags(&mut tx, id, created_at, &article.tags).await?;
        // The author's followers are told by a job, committed with the article.
        let payload = serde_json::json!({ "actor": author, "article": id });
        crate::postgres::jobs::enqueue(&mut *tx, notifications::kinds::ARTICLE, &payload).await?;
        tx.commit().await?;
        return Ok(id);
    }
    Err(ConduitError::Internal("could not find a free slug".into()))
}

/// Links an article (created at `created_at`) to its tags, creating those
/// that are new.
async fn link_tags(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    id: i64,
    created_at: time::OffsetDateTime,
    tags: &[String],
) -> ConduitResult<()> {
    if tags.is_empty() {
        return Ok(());
    }
    // DO UPDATE (not DO NOTHING) so that existing tags return their id too;
    // sorted so that concurrent writers lock tag rows in one order.
    sqlx::query!(
        "WITH t AS (
             INSERT INTO tags (name) SELECT t FROM unnest($1::text[]) AS t ORDER BY t
             ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name RETURNING id)
         INSERT INTO article_tags (tag_id, article_id, created_at) SELECT id, $2, $3 FROM t",
        tags,
        id,
        created_at
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Who wrote the article with this slug, and its id.
pub(crate) async fn owner(db: impl sqlx::PgExecutor<'_>, slug: &str) -> ConduitResult<(i64, i64)> {
    crate::domain::validate::lookup_key("slug", slug)?;
    let row = sqlx::query!("SELECT id, author_id FROM articles WHERE slug = $1", slug)
        .fetch_optional(db)
        .await?
        .ok_or(ConduitError::NotFound("article"))?;
    Ok((row.id, row.author_id))
}

/// Changes of an article; `None` keeps a value.
#[derive(Debug, Default)]
pub(crate) struct ArticleChanges {
    /// New title, with the slug base derived from it.
    pub(crate) title: Option<(String, String)>,
    /// New description.
    pub(crate) description: Option<String>,
    /// New body.
    pub(crate) body: Option<String>,
    /// New tags, de-duplicated; `Some([])` removes them all.
    pub(crate) tags: Option<Vec<String>>,
}

/// Applies changes; a new title moves the slug.
pub(crate) async fn update(db: &mut PgConnection, id: i64, changes: &ArticleChanges) -> ConduitResult<()> {
    for _ in 0..SLUG_ATTEMPTS {
        let mut tx = db.begin().await?;
        let (title, slug) = match &changes.title {
            Some((title, base)) => (Some(title.as_str()), Some(free_slug(&mut tx, base, Some(id)).await?)),
            None => (None, None),
        };
        let updated = sqlx::query!(
            "UPDATE articles SET
                 title = COALESCE($2, title),
                 slug = COALESCE($3, slug),
                 description = COALESCE($4, description),
                 body = COALESCE($5, body),
                 tag_list = COALESCE($6, tag_list),
                 updated_at = now()
             WHERE id = $1 RETURNING created_at",
            id,
            title,
            slug,
            changes.description,
            changes.body,
            changes.tags.as_deref()
        )
        .fetch_one(&mut *tx)
        .await;
        match updated {
            Ok(row) => {
                if let Some(tags) = &changes.tags {
                    sqlx::query!("DELETE FROM article_tags WHERE article_id = $1", id).execute(&mut *tx).await?;
                    link_tags(&mut tx, id, row.created_at, tags).await?;
                }
                tx.commit().await?;
                return Ok(());
            }
            Err(e) if is_slug_race(&e) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ConduitError::Internal("could not find a free slug".into()))
}

/// Deletes an article; comments, favorites and tag links go with it.
pub(crate) async fn delete(db: &mut PgConnection, id: i64) -> ConduitResult<()> {
    let mut tx = db.begin().await?;
    lock_totals(&mut tx).await?;
    sqlx::query!("DELETE FROM articles WHERE id = $1", id).execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(())
}

/// Takes the article-total counter row first. Creating and deleting an
/// article both end up locking it, the author's or favoriters' user rows
/// and tag rows through the counting triggers, in different orders (a
/// delete's cascades run before its own trigger); taking this one row first
/// orders them and rules out deadlocks between the two.
async fn lock_totals(tx: &mut Transaction<'_, Postgres>) -> ConduitResult<()> {
    sqlx::query!("SELECT count FROM article_totals FOR UPDATE").fetch_one(&mut **tx).await?;
    Ok(())
}

/// Adds or removes a favorite and answers with the article as the caller
/// now sees it, in one statement. When there is something to change, the
/// article row is locked first, as a delete of the article locks it before
/// its favorites (the other order can deadlock). A no-op (favoriting twice)
/// locks and writes nothing.
///
/// The statement's own snapshot precedes its writes and the counting
/// trigger's, so the count is the locked (newest) row's count moved by what
/// this statement changed; without a change it is the snapshot's.
pub(crate) async fn set_favorite(
    db: impl sqlx::PgExecutor<'_>,
    user: i64,
    slug: &str,
    favorite: bool,
) -> ConduitResult<ArticleRow> {
    sqlx::query_as!(
        ArticleRow,
        r#"WITH target AS (SELECT id FROM articles WHERE slug = $2),
                -- The article, locked, when the change is not a no-op.
                l AS (SELECT id, created_at, favorites_count FROM articles
                      WHERE id = (SELECT id FROM target)
                        AND EXISTS (SELECT 1 FROM favorites WHERE user_id = $1 AND article_id = articles.id) <> $3
                      FOR NO KEY UPDATE),
                ins AS (INSERT INTO favorites (user_id, article_id, article_created_at)
                        SELECT $1, id, created_at FROM l WHERE $3 ON CONFLICT DO NOTHING
                        RETURNING user_id, article_id),
                del AS (DELETE FROM favorites WHERE NOT $3 AND user_id = $1 AND article_id IN (SELECT id FROM l)
                        RETURNING article_id),
                -- Only a favorite that was not there already tells the author.
                job AS (INSERT INTO jobs (kind, payload)
                        SELECT $4, jsonb_build_object('actor', user_id, 'article', article_id) FROM ins)
           SELECT a.slug, a.title, a.description, a.body, a.tag_list,
                  a.created_at AS "created_at: _", a.updated_at AS "updated_at: _",
                  COALESCE((SELECT favorites_count FROM l) + (SELECT count(*) FROM ins)::int - (SELECT count(*) FROM del)::int,
                           a.favorites_count) AS "favorites_count!",
                  u.username, u.bio, u.image, $3 AS "favorited!",
                  COALESCE((SELECT true FROM follows fo WHERE fo.follower_id = $1 AND fo.followee_id = a.author_id), false)
                      AS "following!"
           FROM articles a JOIN users u ON u.id = a.author_id
           WHERE a.id = (SELECT id FROM target)"#,
        user,
        slug,
        favorite,
        notifications::kinds::FAVORITE
    )
    .fetch_optional(db)
    .await?
    .ok_or(ConduitError::NotFound("article"))
}

/// Tags carried by at least one article, alphabetically.
pub(crate) async fn tags(db: &PgPool) -> ConduitResult<Vec<String>> {
    Ok(sqlx::query_scalar!("SELECT name FROM tags WHERE article_count > 0 ORDER BY name").fetch_all(db).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_sql_numbers_parameters_and_picks_the_driving_index() {
        let none = page_sql(&Filter::default());
        assert!(none.contains("article_totals") && none.contains("LIMIT $1 OFFSET $2"), "{none}");
        assert!(none.contains("FROM articles d ORDER BY d.created_at DESC"), "{none}");
        let tag = page_sql(&Filter { tag: Some("x"), ..Filter::default() });
        assert!(tag.contains("article_count FROM tags WHERE name = $1") && tag.contains("LIMIT $2 OFFSET $3"), "{tag}");
        assert!(tag.contains("FROM article_tags d"), "{tag}");
        let fav = page_sql(&Filter { favorited: Some("f"), author: Some("a"), ..Filter::default() });
        assert!(
            fav.contains("FROM favorites d")
                && fav.contains("a.author_id = (SELECT id FROM users WHERE username = $2)"),
            "{fav}"
        );
        assert!(fav.contains("count(*)"), "{fav}");
        let all = page_sql(&Filter { tag: Some("x"), author: Some("a"), favorited: Some("f") });
        assert!(
            all.contains("count(*)") && all.contains("username = $3") && all.contains("LIMIT $4 OFFSET $5"),
            "{all}"
        );
        // The whole page in one statement: the viewer follows limit and offset.
        let list = list_sql(&Filter { tag: Some("x"), ..Filter::default() });
        assert!(list.starts_with("WITH page AS MATERIALIZED (SELECT") && list.contains("f.user_id = $4"), "{list}");
        assert!(list_sql(&Filter::default()).contains("fo.follower_id = $3"));
        // Built once per combination of filters, each the statement of its combination.
        for tag in [None, Some("t")] {
            for favorited in [None, Some("f")] {
                for author in [None, Some("a")] {
                    let filter = Filter { tag, favorited, author };
                    assert_eq!(LIST_SQL[list_shape(&filter)], list_sql(&filter));
                }
            }
        }
    }

    #[test]
    fn export_sql_reads_the_articles_table_itself_unless_a_tag_or_favorites_drive() {
        let all = export_sql(&Filter::default());
        assert!(
            all.contains("FROM articles a") && all.contains("JOIN users u") && all.contains("f.user_id = $1"),
            "{all}"
        );
        let author = export_sql(&Filter { author: Some("a"), ..Filter::default() });
        assert!(author.contains("WHERE a.author_id = (SELECT id FROM users WHERE username = $1)"), "{author}");
        assert!(author.contains("ORDER BY a.created_at DESC, a.id DESC"), "{author}");
        let tag = export_sql(&Filter { tag: Some("t"), author: Some("a"), ..Filter::default() });
        assert!(tag.contains("FROM article_tags d JOIN articles a ON a.id = d.article_id"), "{tag}");
        assert!(tag.contains("username = $2") && tag.contains("f.user_id = $3"), "{tag}");
    }
}
