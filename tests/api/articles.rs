//! Articles, the feed, favorites and tags.

use conduit::pb::conduit::v1 as pb;
use serde_json::{Value, json};
use tonic::Code;

use crate::helpers::{authed, errors, spawn_app};

#[tokio::test]
async fn create_article_returns_201_with_slug_tags_in_order_and_timestamps() {
    let app = spawn_app().await;
    let token = app.register("jake").await;
    let body = json!({"article": {"title": "How to train your dragon", "description": "Ever wonder how?",
        "body": "You have to believe", "tagList": ["training", "dragons", "training", " dragons "]}});
    let reply = app.json("POST", "/api/articles", Some(&token), Some(body)).await;
    assert_eq!(reply.status, 201);
    let article = &reply.body["article"];
    assert_eq!(article["slug"], "how-to-train-your-dragon");
    assert_eq!(article["tagList"], json!(["training", "dragons"]));
    assert_eq!(article["body"], "You have to believe");
    assert_eq!(article["favorited"], false);
    assert_eq!(article["favoritesCount"], 0);
    assert_eq!(article["author"], json!({"username": "jake", "bio": null, "image": null, "following": false}));
    for field in ["createdAt", "updatedAt"] {
        let text = article[field].as_str().unwrap();
        // RFC 3339 in UTC with a fraction of 3, 6 or 9 digits.
        let (seconds, fraction) = text.strip_suffix('Z').unwrap().split_once('.').unwrap();
        assert_eq!(seconds.len(), "2026-01-02T03:04:05".len(), "{text}");
        assert!([3, 6, 9].contains(&fraction.len()) && fraction.chars().all(|c| c.is_ascii_digit()), "{text}");
        assert!(text.parse::<gateway::wkt::Timestamp>().is_ok(), "{text}");
    }
    // No tags at all is an empty list, not a missing field.
    let reply = app
        .json(
            "POST",
            "/api/articles",
            Some(&token),
            Some(json!({"article": {"title": "t", "description": "d", "body": "b"}})),
        )
        .await;
    assert_eq!(reply.body["article"]["tagList"], json!([]));
}

#[tokio::test]
async fn slugs_stay_unique_and_follow_title_changes() {
    let app = spawn_app().await;
    let token = app.register("jake").await;
    assert_eq!(app.article(&token, "Same Title", &[]).await, "same-title");
    assert_eq!(app.article(&token, "Same title!", &[]).await, "same-title-2");
    assert_eq!(app.article(&token, "same  TITLE", &[]).await, "same-title-3");

    let reply = app
        .json("PUT", "/api/articles/same-title-2", Some(&token), Some(json!({"article": {"title": "Fresh Start"}})))
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body["article"]["slug"], "fresh-start");
    assert_eq!(reply.body["article"]["title"], "Fresh Start");
    assert_eq!(reply.body["article"]["description"], "about it", "untouched fields stay");
    assert_eq!(app.get("/api/articles/same-title-2", None).await.status, 404);
    assert_eq!(app.get("/api/articles/fresh-start", None).await.status, 200);
    // A title that slugs to the article's own slug keeps it.
    let reply = app
        .json("PUT", "/api/articles/fresh-start", Some(&token), Some(json!({"article": {"title": "Fresh start"}})))
        .await;
    assert_eq!(reply.body["article"]["slug"], "fresh-start");
    // Taking a freed slug back is fine.
    assert_eq!(app.article(&token, "Same Title", &[]).await, "same-title-2");

    // The API's statements are planned once per connection; the slug
    // search, which needs its pattern to use the index, is planned with it
    // inside its own transaction and leaves the connection as it was.
    let mut tx = app.db.begin().await.unwrap();
    let mode: String = sqlx::query_scalar("SHOW plan_cache_mode").fetch_one(&mut *tx).await.unwrap();
    assert_eq!(mode, "force_generic_plan");
    let jit: String = sqlx::query_scalar("SHOW jit").fetch_one(&mut *tx).await.unwrap();
    assert_eq!(jit, "off", "no JIT compilation for the API's short statements");
    sqlx::query(conduit::postgres::CUSTOM_PLANS).execute(&mut *tx).await.unwrap();
    let statement =
        "EXPLAIN SELECT slug FROM articles WHERE (slug = $1 OR slug LIKE $1 || '-%') AND id IS DISTINCT FROM $2";
    let plan: Vec<String> =
        sqlx::query_scalar(statement).bind("same-title").bind(None::<i64>).fetch_all(&mut *tx).await.unwrap();
    assert!(plan.iter().any(|line| line.contains("articles_slug_key")), "the prefix uses the slug index: {plan:?}");
    tx.rollback().await.unwrap();
    for _ in 0..5 {
        let mode: String = sqlx::query_scalar("SHOW plan_cache_mode").fetch_one(&app.db).await.unwrap();
        assert_eq!(mode, "force_generic_plan", "SET LOCAL ended with its transaction");
    }
}

#[tokio::test]
async fn article_validation_returns_422_naming_each_field() {
    let app = spawn_app().await;
    let token = app.register("jake").await;
    let reply = app.json("POST", "/api/articles", Some(&token), Some(json!({"article": {"title": ""}}))).await;
    assert_eq!(reply.status, 422);
    assert_eq!(errors(&reply), ["body can't be blank", "description can't be blank", "title can't be blank"]);
    // Only whitespace is blank too (a domain rule, checked once the proto's rules pass).
    let article = json!({"article": {"title": " ", "description": "d", "body": "b"}});
    let reply = app.json("POST", "/api/articles", Some(&token), Some(article)).await;
    assert_eq!(errors(&reply), ["title can't be blank"]);
    let reply = app.json("POST", "/api/articles", Some(&token), Some(json!({}))).await;
    assert_eq!(errors(&reply), ["article can't be blank"]);
    let long = "x".repeat(257);
    let reply = app
        .json(
            "POST",
            "/api/articles",
            Some(&token),
            Some(json!({"article": {"title": long, "description": "d", "body": "b"}})),
        )
        .await;
    assert_eq!(errors(&reply), ["title is too long (maximum is 256 characters)"]);
    let slug = app.article(&token, "Good", &[]).await;
    let reply =
        app.json("PUT", &format!("/api/articles/{slug}"), Some(&token), Some(json!({"article": {"body": ""}}))).await;
    assert_eq!(errors(&reply), ["body can't be blank"]);
    // Authentication comes first: no token is 401 whatever the body holds,
    // over JSON and gRPC alike.
    let reply = app.json("POST", "/api/articles", None, Some(json!({"article": {}}))).await;
    assert_eq!((reply.status, errors(&reply)), (401, vec!["token is missing".to_owned()]));
    let mut articles = app.articles().await;
    let status = articles.create_article(pb::CreateArticleRequest { article: None }).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
}

#[tokio::test]
async fn only_the_author_may_update_or_delete_an_article() {
    let app = spawn_app().await;
    let jake = app.register("jake").await;
    let other = app.register("other").await;
    let slug = app.article(&jake, "Mine", &["a"]).await;
    let path = format!("/api/articles/{slug}");
    let reply = app.json("PUT", &path, Some(&other), Some(json!({"article": {"body": "hacked"}}))).await;
    assert_eq!(reply.status, 403);
    assert_eq!(errors(&reply), ["article forbidden"]);
    assert_eq!(app.json("DELETE", &path, Some(&other), None).await.status, 403);
    assert_eq!(app.json("DELETE", &path, None, None).await.status, 401);
    assert_eq!(app.json("PUT", "/api/articles/nope", Some(&jake), Some(json!({"article": {}}))).await.status, 404);
    assert_eq!(app.json("DELETE", "/api/articles/nope", Some(&jake), None).await.status, 404);

    let reply = app.json("DELETE", &path, Some(&jake), None).await;
    assert_eq!(reply.status, 204);
    assert!(reply.raw.is_empty());
    assert_eq!(app.get(&path, None).await.status, 404);
    // Its tag is no longer listed.
    assert_eq!(app.get("/api/tags", None).await.body, json!({"tags": []}));
}

#[tokio::test]
async fn tag_list_on_update_is_kept_when_left_out_replaced_cleared_by_empty_and_never_null() {
    let app = spawn_app().await;
    let jake = app.register("jake").await;
    let slug = app.article(&jake, "Tagged", &["a", "b"]).await;
    let path = format!("/api/articles/{slug}");
    let put = |article: Value| app.json("PUT", &path, Some(&jake), Some(json!({ "article": article })));
    let created = app.get(&path, None).await.body["article"].clone();

    let kept = put(json!({"description": "new"})).await;
    assert_eq!(kept.body["article"]["tagList"], json!(["a", "b"]));
    let replaced = put(json!({"tagList": ["c", "a", "c"]})).await;
    assert_eq!(replaced.body["article"]["tagList"], json!(["c", "a"]));
    assert_eq!(app.get("/api/tags", None).await.body["tags"].as_array().unwrap().len(), 2, "b is gone, c came");
    assert_eq!(app.get("/api/articles?tag=c", None).await.body["articlesCount"], 1);
    assert_eq!(app.get("/api/articles?tag=b", None).await.body["articlesCount"], 0);
    let cleared = put(json!({"tagList": []})).await;
    assert_eq!(cleared.body["article"]["tagList"], json!([]));
    assert_eq!(app.get("/api/tags", None).await.body, json!({"tags": []}));
    let null = put(json!({"tagList": null})).await;
    assert_eq!(null.status, 422, "{:?}", null.body);
    assert!(null.body["errors"]["tagList"].is_array(), "{:?}", null.body);

    // createdAt never moves; updatedAt moves on every change.
    let last = app.get(&path, None).await.body["article"].clone();
    assert_eq!(last["createdAt"], created["createdAt"]);
    assert!(last["updatedAt"].as_str().unwrap() > created["updatedAt"].as_str().unwrap());
}

#[tokio::test]
async fn favorites_count_and_personalise() {
    let app = spawn_app().await;
    let jake = app.register("jake").await;
    let fan = app.register("fan").await;
    let slug = app.article(&jake, "Loved", &[]).await;
    let path = format!("/api/articles/{slug}/favorite");
    let reply = app.json("POST", &path, Some(&fan), None).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body["article"]["favorited"], true);
    assert_eq!(reply.body["article"]["favoritesCount"], 1);
    assert_eq!(app.json("POST", &path, Some(&fan), None).await.body["article"]["favoritesCount"], 1, "idempotent");
    assert_eq!(app.json("POST", &path, Some(&jake), None).await.body["article"]["favoritesCount"], 2);

    let single = app.get(&format!("/api/articles/{slug}"), Some(&fan)).await;
    assert_eq!(single.body["article"]["favorited"], true);
    assert_eq!(app.get(&format!("/api/articles/{slug}"), None).await.body["article"]["favorited"], false);

    let reply = app.json("DELETE", &path, Some(&fan), None).await;
    assert_eq!(reply.body["article"]["favorited"], false);
    assert_eq!(reply.body["article"]["favoritesCount"], 1);
    assert_eq!(app.json("DELETE", &path, Some(&fan), None).await.body["article"]["favoritesCount"], 1, "idempotent");
    assert_eq!(app.json("POST", "/api/articles/nope/favorite", Some(&fan), None).await.status, 404);
    assert_eq!(app.json("POST", &path, None, None).await.status, 401);

    // The answer is the whole article as the caller now sees it.
    app.json("POST", "/api/profiles/jake/follow", Some(&fan), None).await;
    let reply = app.json("POST", &path, Some(&fan), None).await;
    let mut read = app.get(&format!("/api/articles/{slug}"), Some(&fan)).await.body;
    assert_eq!(read["article"]["author"]["following"], true);
    assert_eq!(reply.body, read, "a favorite answers what a read then shows");
    let reply = app.json("DELETE", &path, Some(&fan), None).await;
    read["article"]["favorited"] = json!(false);
    read["article"]["favoritesCount"] = json!(1);
    assert_eq!(reply.body, read);
}

#[tokio::test]
async fn concurrent_favorites_each_answer_the_count_their_change_made() {
    let app = spawn_app().await;
    let author = app.register("author").await;
    let slug = app.article(&author, "Popular", &[]).await;
    let path = format!("/api/articles/{slug}/favorite");
    let mut fans = Vec::new();
    for n in 0..12 {
        fans.push(app.register(&format!("fan{n}")).await);
    }
    // Each change locks the article in turn, so the answers' counts are
    // every value from one to twelve once, then from eleven down to zero.
    for (method, expected) in [("POST", (1..=12).collect::<Vec<i64>>()), ("DELETE", (0..12).collect())] {
        let changes = fans.iter().map(|fan| app.json(method, &path, Some(fan), None));
        let mut counts: Vec<i64> = futures_util::future::join_all(changes)
            .await
            .iter()
            .map(|r| {
                assert_eq!(r.status, 200, "{:?}", r.body);
                assert_eq!(r.body["article"]["favorited"], method == "POST");
                r.body["article"]["favoritesCount"].as_i64().unwrap()
            })
            .collect();
        counts.sort();
        assert_eq!(counts, expected, "{method}");
    }
    assert_eq!(app.get(&format!("/api/articles/{slug}"), None).await.body["article"]["favoritesCount"], 0);
}

fn slugs(reply: &crate::helpers::Reply) -> Vec<String> {
    reply.body["articles"].as_array().unwrap().iter().map(|a| a["slug"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test]
async fn list_filters_combine_and_paginate_newest_first() {
    let app = spawn_app().await;
    let jake = app.register("jake").await;
    let anne = app.register("anne").await;
    let j1 = app.article(&jake, "J one", &["rust", "db"]).await;
    let a1 = app.article(&anne, "A one", &["rust"]).await;
    let j2 = app.article(&jake, "J two", &["db"]).await;
    let a2 = app.article(&anne, "A two", &["rust", "web"]).await;
    for slug in [&j1, &a2] {
        app.json("POST", &format!("/api/articles/{slug}/favorite"), Some(&anne), None).await;
    }

    let cases: &[(&str, &[&String], i64)] = &[
        ("", &[&a2, &j2, &a1, &j1], 4),
        ("?tag=rust", &[&a2, &a1, &j1], 3),
        ("?author=jake", &[&j2, &j1], 2),
        ("?favorited=anne", &[&a2, &j1], 2),
        ("?tag=rust&author=jake", &[&j1], 1),
        ("?tag=db&favorited=anne", &[&j1], 1),
        ("?tag=rust&author=anne&favorited=anne", &[&a2], 1),
        ("?author=jake&favorited=anne", &[&j1], 1),
        ("?author=nobody", &[], 0),
        ("?tag=nothing", &[], 0),
        ("?favorited=jake", &[], 0),
        ("?limit=2", &[&a2, &j2], 4),
        ("?limit=2&offset=2", &[&a1, &j1], 4),
        ("?offset=10", &[], 4),
        ("?tag=rust&limit=1&offset=1", &[&a1], 3),
        ("?tag=&author=", &[&a2, &j2, &a1, &j1], 4),
    ];
    for (query, expected, count) in cases {
        let reply = app.get(&format!("/api/articles{query}"), None).await;
        assert_eq!(reply.status, 200, "{query}");
        let expected: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
        assert_eq!(slugs(&reply), expected, "{query}");
        assert_eq!(reply.body["articlesCount"], *count, "{query}");
        for article in reply.body["articles"].as_array().unwrap() {
            assert!(article.get("body").is_none(), "lists omit the body");
        }
    }
    let reply = app.get("/api/articles?favorited=anne", Some(&anne)).await;
    assert!(reply.body["articles"].as_array().unwrap().iter().all(|a| a["favorited"] == true));

    // `author.following` is personalised in lists and single reads alike.
    app.json("POST", "/api/profiles/jake/follow", Some(&anne), None).await;
    let reply = app.get("/api/articles", Some(&anne)).await;
    for article in reply.body["articles"].as_array().unwrap() {
        let by_jake = article["author"]["username"] == "jake";
        assert_eq!(article["author"]["following"], by_jake, "{article}");
    }
    assert_eq!(app.get(&format!("/api/articles/{j1}"), Some(&anne)).await.body["article"]["author"]["following"], true);
    assert_eq!(app.get(&format!("/api/articles/{j1}"), None).await.body["article"]["author"]["following"], false);
}

#[tokio::test]
async fn an_article_titled_feed_gets_a_slug_the_feed_route_does_not_shadow() {
    let app = spawn_app().await;
    let token = app.register("jake").await;
    let slug = app.article(&token, "Feed", &[]).await;
    assert_eq!(slug, "feed-2");
    assert_eq!(app.get("/api/articles/feed-2", None).await.body["article"]["title"], "Feed");
}

#[tokio::test]
async fn nul_characters_are_refused_with_422_never_a_500() {
    let app = spawn_app().await;
    let token = app.register("jake").await;
    let reply = app
        .json(
            "POST",
            "/api/articles",
            Some(&token),
            Some(json!({"article": {"title": "a\0b", "description": "d", "body": "b"}})),
        )
        .await;
    assert_eq!(reply.status, 422);
    assert_eq!(errors(&reply), ["title must not contain NUL characters"]);
    let reply = app
        .json(
            "POST",
            "/api/users",
            None,
            Some(json!({"user": {"username": "x\0", "email": "x@y.z", "password": "password"}})),
        )
        .await;
    assert_eq!(errors(&reply), ["username must not contain NUL characters"]);
    // In the path or the query: named by the field, on reads and writes.
    for (method, path, field) in [
        ("GET", "/api/articles/a%00b", "slug"),
        ("GET", "/api/articles?tag=%00", "tag"),
        ("GET", "/api/articles?author=a%00", "author"),
        ("GET", "/api/articles?favorited=%00x", "favorited"),
        ("GET", "/api/profiles/a%00", "username"),
        ("GET", "/api/articles/x%00/comments", "slug"),
        ("POST", "/api/articles/x%00/favorite", "slug"),
        ("DELETE", "/api/articles/x%00/favorite", "slug"),
        ("PUT", "/api/articles/x%00", "slug"),
        ("DELETE", "/api/articles/x%00", "slug"),
        ("POST", "/api/profiles/a%00/follow", "username"),
    ] {
        let body = (method == "PUT").then(|| json!({"article": {"title": "t"}}));
        let reply = app.json(method, path, Some(&token), body).await;
        assert_eq!(reply.status, 422, "{method} {path}");
        assert_eq!(errors(&reply), [format!("{field} must not contain NUL characters")], "{method} {path}");
    }
    let mut articles = app.articles().await;
    let request = conduit::pb::conduit::v1::ListArticlesRequest { tag: Some("a\0".into()), ..Default::default() };
    let status = articles.list_articles(request).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    use tonic_types::StatusExt;
    let violations = status.get_details_bad_request().map(|b| b.field_violations).unwrap_or_default();
    assert_eq!(violations.first().map(|v| v.field.as_str()), Some("tag"), "{status:?}");
}

#[tokio::test]
async fn a_token_of_a_vanished_user_gets_401_or_404_never_a_500() {
    let app = spawn_app().await;
    let jake = app.register("jake").await;
    let other = app.register("other").await;
    let slug = app.article(&other, "Still here", &[]).await;
    sqlx::query("DELETE FROM users WHERE username = 'jake'").execute(&app.db).await.unwrap();
    assert_eq!(app.get("/api/user", Some(&jake)).await.status, 401);
    let create = json!({"article": {"title": "t", "description": "d", "body": "b"}});
    assert_eq!(app.json("POST", "/api/articles", Some(&jake), Some(create)).await.status, 404);
    assert_eq!(app.json("POST", &format!("/api/articles/{slug}/favorite"), Some(&jake), None).await.status, 404);
    let comment = json!({"comment": {"body": "hi"}});
    assert_eq!(
        app.json("POST", &format!("/api/articles/{slug}/comments"), Some(&jake), Some(comment)).await.status,
        404
    );
}

#[tokio::test]
async fn list_paging_parameters_are_validated_with_422() {
    let app = spawn_app().await;
    for (query, message) in [
        ("?limit=0", "limit must be at least 1"),
        ("?limit=101", "limit must be at most 100"),
        ("?offset=-1", "offset must be at least 0"),
        ("?limit=ten", "limit \"ten\" is not a 32-bit integer"),
        ("?offset=99999999999", "offset \"99999999999\" is not a 32-bit integer"),
    ] {
        let reply = app.get(&format!("/api/articles{query}"), None).await;
        assert_eq!(reply.status, 422, "{query}");
        assert_eq!(errors(&reply), [message], "{query}");
    }
    assert_eq!(app.get("/api/articles?limit=100", None).await.status, 200);
}

#[tokio::test]
async fn feed_shows_followed_authors_newest_first() {
    let app = spawn_app().await;
    let reader = app.register("reader").await;
    let jake = app.register("jake").await;
    let anne = app.register("anne").await;
    let other = app.register("other").await;
    let j1 = app.article(&jake, "J1", &[]).await;
    app.article(&other, "Unseen", &[]).await;
    let a1 = app.article(&anne, "A1", &[]).await;
    let j2 = app.article(&jake, "J2", &[]).await;
    assert_eq!(app.get("/api/articles/feed", Some(&reader)).await.body, json!({"articles": [], "articlesCount": 0}));
    for name in ["jake", "anne"] {
        app.json("POST", &format!("/api/profiles/{name}/follow"), Some(&reader), None).await;
    }
    let reply = app.get("/api/articles/feed", Some(&reader)).await;
    assert_eq!(slugs(&reply), [j2.clone(), a1.clone(), j1.clone()]);
    assert_eq!(reply.body["articlesCount"], 3);
    assert!(reply.body["articles"].as_array().unwrap().iter().all(|a| a["author"]["following"] == true));
    assert!(
        reply.body["articles"].as_array().unwrap().iter().all(|a| a.get("body").is_none()),
        "the feed omits bodies"
    );
    let reply = app.get("/api/articles/feed?limit=1&offset=1", Some(&reader)).await;
    assert_eq!(slugs(&reply), [a1]);
    assert_eq!(reply.body["articlesCount"], 3);
    assert_eq!(app.get("/api/articles/feed", None).await.status, 401);
    assert_eq!(app.get("/api/articles/feed?limit=500", Some(&reader)).await.status, 422);
}

#[tokio::test]
async fn the_feed_pages_alike_whether_few_or_many_authors_are_followed() {
    let app = spawn_app().await;
    let reader = app.register("reader").await;
    // 60 authors (more than the feed reads one by one), one of them
    // prolific, their articles a minute apart; and one author not followed.
    sqlx::query(
        "WITH authors AS (INSERT INTO users (username, email, password_hash) \
                          SELECT 'author' || g, 'author' || g || '@example.test', 'x' FROM generate_series(0, 60) g \
                          RETURNING id, username) \
         INSERT INTO articles (slug, title, description, body, tag_list, author_id, created_at, updated_at) \
         SELECT a.username || '-' || g, 't', 'd', 'b', '{}', a.id, \
                now() - make_interval(mins => (g * 61 + right(a.username, -6)::int)), now() \
         FROM authors a, generate_series(1, CASE WHEN a.username = 'author7' THEN 40 ELSE 2 END) g",
    )
    .execute(&app.db)
    .await
    .unwrap();
    let follow = |count: i32| {
        let db = app.db.clone();
        async move {
            sqlx::query("DELETE FROM follows").execute(&db).await.unwrap();
            sqlx::query(
                "INSERT INTO follows SELECT r.id, u.id FROM users r, users u \
                 WHERE r.username = 'reader' AND u.username ~ '^author[0-9]+$' \
                   AND right(u.username, -6)::int BETWEEN 1 AND $1",
            )
            .bind(count)
            .execute(&db)
            .await
            .unwrap();
        }
    };
    let expected = |count: i32, limit: i64, offset: i64| {
        let db = app.db.clone();
        async move {
            let slugs: Vec<String> = sqlx::query_scalar(
                "SELECT a.slug FROM articles a JOIN users u ON u.id = a.author_id \
                 WHERE right(u.username, -6)::int BETWEEN 1 AND $1 AND u.username ~ '^author[0-9]+$' \
                 ORDER BY a.created_at DESC, a.id DESC LIMIT $2 OFFSET $3",
            )
            .bind(count)
            .bind(limit)
            .bind(offset)
            .fetch_all(&db)
            .await
            .unwrap();
            slugs
        }
    };
    // 60 followed (the newest-first walk), then 10 (each author's newest).
    for (count, total) in [(60, 40 + 59 * 2), (10, 40 + 9 * 2)] {
        follow(count).await;
        for (limit, offset) in [(20, 0), (20, 25), (5, 45), (20, 500)] {
            let reply = app.get(&format!("/api/articles/feed?limit={limit}&offset={offset}"), Some(&reader)).await;
            assert_eq!(reply.status, 200, "{:?}", reply.body);
            assert_eq!(slugs(&reply), expected(count, limit, offset).await, "{count} followed, {limit}@{offset}");
            assert_eq!(reply.body["articlesCount"], total, "{count} followed");
        }
    }
}

#[tokio::test]
async fn tags_lists_tags_in_use_alphabetically() {
    let app = spawn_app().await;
    let jake = app.register("jake").await;
    assert_eq!(app.get("/api/tags", None).await.body, json!({"tags": []}));
    app.article(&jake, "One", &["zeta", "alpha"]).await;
    app.article(&jake, "Two", &["alpha", "mid"]).await;
    assert_eq!(app.get("/api/tags", None).await.body, json!({"tags": ["alpha", "mid", "zeta"]}));
    let tags = app.tags().await.list_tags(pb::ListTagsRequest {}).await.unwrap().into_inner().tags;
    assert_eq!(tags, ["alpha", "mid", "zeta"]);
}

#[tokio::test]
async fn articles_service_works_over_grpc() {
    let app = spawn_app().await;
    let jake = app.register("jake").await;
    let fan = app.register("fan").await;
    let mut articles = app.articles().await;
    let created = articles
        .create_article(authed(
            pb::CreateArticleRequest {
                article: Some(pb::NewArticle {
                    title: "Over gRPC".into(),
                    description: "d".into(),
                    body: "b".into(),
                    tag_list: vec!["x".into(), "y".into()],
                }),
            },
            &jake,
        ))
        .await
        .unwrap()
        .into_inner()
        .article
        .unwrap();
    assert_eq!(created.slug, "over-grpc");
    assert_eq!(created.tag_list, ["x", "y"]);
    assert!(created.created_at.unwrap().seconds > 1_700_000_000);

    let got = articles.get_article(pb::GetArticleRequest { slug: "over-grpc".into() }).await.unwrap().into_inner();
    assert_eq!(got.article.unwrap().body, "b");
    let fav = articles
        .favorite_article(authed(pb::FavoriteArticleRequest { slug: "over-grpc".into() }, &fan))
        .await
        .unwrap()
        .into_inner()
        .article
        .unwrap();
    assert!(fav.favorited);
    assert_eq!(fav.favorites_count, 1);
    let unfav = articles
        .unfavorite_article(authed(pb::UnfavoriteArticleRequest { slug: "over-grpc".into() }, &fan))
        .await
        .unwrap()
        .into_inner()
        .article
        .unwrap();
    assert_eq!(unfav.favorites_count, 0);

    let list = articles
        .list_articles(pb::ListArticlesRequest { tag: Some("y".into()), limit: Some(5), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.articles_count, 1);
    assert_eq!(list.articles[0].slug, "over-grpc");
    let bad =
        articles.list_articles(pb::ListArticlesRequest { limit: Some(0), ..Default::default() }).await.unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);

    app.json("POST", "/api/profiles/jake/follow", Some(&fan), None).await;
    let feed = articles.feed_articles(authed(pb::FeedArticlesRequest::default(), &fan)).await.unwrap().into_inner();
    assert_eq!(feed.articles_count, 1);
    assert_eq!(
        articles.feed_articles(pb::FeedArticlesRequest::default()).await.unwrap_err().code(),
        Code::Unauthenticated
    );

    let update = pb::UpdateArticleRequest {
        slug: "over-grpc".into(),
        article: Some(pb::UpdateArticle { title: Some("Renamed".into()), ..Default::default() }),
        update_mask: None,
    };
    let denied = articles.update_article(authed(update.clone(), &fan)).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let renamed = articles.update_article(authed(update, &jake)).await.unwrap().into_inner().article.unwrap();
    assert_eq!(renamed.slug, "renamed");
    let delete = pb::DeleteArticleRequest { slug: "renamed".into() };
    assert_eq!(articles.delete_article(authed(delete.clone(), &fan)).await.unwrap_err().code(), Code::PermissionDenied);
    articles.delete_article(authed(delete, &jake)).await.unwrap();
    let gone = articles.get_article(pb::GetArticleRequest { slug: "renamed".into() }).await.unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
}

#[tokio::test]
async fn concurrent_articles_with_one_title_all_get_distinct_slugs() {
    let app = spawn_app().await;
    let token = app.register("jake").await;
    let creates = (0..8).map(|_| {
        let body = json!({"article": {"title": "Hot Take", "description": "d", "body": "b"}});
        app.json("POST", "/api/articles", Some(&token), Some(body))
    });
    let replies = futures_util::future::join_all(creates).await;
    let mut slugs: Vec<String> = replies
        .iter()
        .map(|r| {
            assert_eq!(r.status, 201, "{:?}", r.body);
            r.body["article"]["slug"].as_str().unwrap().to_owned()
        })
        .collect();
    slugs.sort();
    let mut expected: Vec<String> =
        std::iter::once("hot-take".to_owned()).chain((2..=8).map(|n| format!("hot-take-{n}"))).collect();
    expected.sort();
    assert_eq!(slugs, expected);
}

#[tokio::test]
async fn concurrent_creates_favorites_and_deletes_never_fail_the_server() {
    let app = spawn_app().await;
    let mut tokens = Vec::new();
    for name in ["w0", "w1", "w2", "w3"] {
        tokens.push(app.register(name).await);
    }
    let tokens = &tokens;
    let app = &app;
    // Each writer publishes articles sharing tags (in opposite orders), has
    // the next writer favorite them, unfavorites, and deletes them, all at once.
    let writers = (0..4).map(|w| async move {
        let mut statuses = Vec::new();
        for round in 0..6 {
            let tags = if w % 2 == 0 { json!(["shared", "other"]) } else { json!(["other", "shared"]) };
            let body = json!({"article": {"title": format!("W{w} R{round}"), "description": "d", "body": "b", "tagList": tags}});
            let created = app.json("POST", "/api/articles", Some(&tokens[w]), Some(body)).await;
            statuses.push(created.status);
            let Some(slug) = created.body["article"]["slug"].as_str() else { continue };
            let fan = &tokens[(w + 1) % 4];
            let favorite = format!("/api/articles/{slug}/favorite");
            let article = format!("/api/articles/{slug}");
            let (a, b) = tokio::join!(
                app.json("POST", &favorite, Some(fan), None),
                app.json("DELETE", &article, Some(&tokens[w]), None),
            );
            statuses.extend([a.status, b.status]);
            statuses.push(app.json("DELETE", &favorite, Some(fan), None).await.status);
        }
        statuses
    });
    let statuses: Vec<u16> = futures_util::future::join_all(writers).await.into_iter().flatten().collect();
    assert!(statuses.iter().all(|s| [200, 201, 204, 404].contains(s)), "{statuses:?}");
    let left: (i64, i64) = sqlx::query_as("SELECT (SELECT count FROM article_totals), (SELECT count(*) FROM articles)")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(left, (0, 0), "the counter matches the table");
    let tag_counts: Vec<i32> = sqlx::query_scalar("SELECT article_count FROM tags").fetch_all(&app.db).await.unwrap();
    assert!(tag_counts.iter().all(|c| *c == 0), "{tag_counts:?}");
    let favorites: Vec<i32> = sqlx::query_scalar("SELECT favorites_count FROM users").fetch_all(&app.db).await.unwrap();
    assert!(favorites.iter().all(|c| *c == 0), "{favorites:?}");
}
