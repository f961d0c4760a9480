//! Idempotency keys: a write whose outcome the client does not know is sent
//! again with the same `Idempotency-Key` and takes effect once.

use std::time::Duration;

use bytes::Bytes;
use conduit::pb::conduit::v1 as pb;
use serde_json::{Value, json};

use crate::helpers::{TestApp, authed, errors, spawn_app, spawn_app_with};

/// Sends JSON with a token and an idempotency key.
async fn keyed(app: &TestApp, method: &str, path: &str, token: &str, key: &str, body: Value) -> crate::helpers::Reply {
    let auth = format!("Token {token}");
    let headers = [("content-type", "application/json"), ("authorization", auth.as_str()), ("idempotency-key", key)];
    app.send(method, path, &headers, Bytes::from(serde_json::to_vec(&body).unwrap())).await
}

fn new_article(title: &str) -> Value {
    json!({"article": {"title": title, "description": "d", "body": "b", "tagList": ["retry"]}})
}

async fn count(app: &TestApp, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned())).fetch_one(&app.db).await.unwrap()
}

/// Makes every commit of a new article take `seconds` (a deferred trigger
/// runs during COMMIT), so that a test can lose the answer, or the
/// connection, while the commit is under way.
async fn slow_article_commits(app: &TestApp, seconds: f64) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS
             $$ BEGIN PERFORM pg_sleep({seconds}); RETURN NULL; END $$;
         CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT ON articles
             DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION slow_commit();"
    )))
    .execute(&app.db)
    .await
    .unwrap();
}

/// Waits until one of the app's backends sleeps in a slow commit.
async fn committing(app: &TestApp) {
    crate::background::eventually(Duration::from_secs(5), "a write to be committing", || async {
        let sleeping: i64 =
            sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND wait_event = 'PgSleep'")
                .bind(&app.db_name)
                .fetch_one(&app.db)
                .await
                .unwrap();
        sleeping > 0
    })
    .await;
}

/// Sends `body` to create an article and gives up on the answer once the
/// write is committing: the client cannot know whether it committed.
async fn lose_answer(app: &TestApp, token: &str, key: Option<&str>, body: Value) {
    let auth = format!("Token {token}");
    let mut headers = vec![("content-type", "application/json"), ("authorization", auth.as_str())];
    if let Some(key) = key {
        headers.push(("idempotency-key", key));
    }
    let send = app.send("POST", "/api/articles", &headers, Bytes::from(serde_json::to_vec(&body).unwrap()));
    tokio::select! {
        reply = send => panic!("the answer came before the commit was slow: {}", reply.body),
        () = committing(app) => {}
    }
}

#[tokio::test]
async fn a_write_whose_answer_was_lost_is_answered_once_when_retried_with_its_key() {
    let app = spawn_app().await;
    let token = app.register("retrier").await;
    slow_article_commits(&app, 1.0).await;

    // Without a key, giving up on the answer and sending again writes twice.
    lose_answer(&app, &token, None, new_article("Unkeyed")).await;
    let again = app.json("POST", "/api/articles", Some(&token), Some(new_article("Unkeyed"))).await;
    assert_eq!(again.status, 201, "{}", again.body);
    crate::background::eventually(Duration::from_secs(5), "both unkeyed articles to commit", || async {
        count(&app, "SELECT count(*) FROM articles WHERE title = 'Unkeyed'").await == 2
    })
    .await;

    // With a key, the retry waits for the first call's commit and gets its answer.
    let key = "6f1d0c1e-9d55-4a44-9a8e-0b7c1f3e2a10";
    lose_answer(&app, &token, Some(key), new_article("Keyed")).await;
    let retried = keyed(&app, "POST", "/api/articles", &token, key, new_article("Keyed")).await;
    assert_eq!(retried.status, 201, "{}", retried.body);
    let again = keyed(&app, "POST", "/api/articles", &token, key, new_article("Keyed")).await;
    assert_eq!(again.status, 201, "{}", again.body);
    assert_eq!(retried.body, again.body, "every retry gets the same answer");
    assert_eq!(count(&app, "SELECT count(*) FROM articles WHERE title = 'Keyed'").await, 1, "written once");
    let slug = retried.body["article"]["slug"].as_str().unwrap();
    let stored = app.get(&format!("/api/articles/{slug}"), Some(&token)).await;
    assert_eq!(stored.body["article"]["createdAt"], retried.body["article"]["createdAt"]);
}

#[tokio::test]
async fn a_retry_waits_for_a_running_first_call_only_so_long() {
    let app = spawn_app_with(|s| s.request_timeout = Duration::from_secs(2)).await;
    let token = app.register("impatient").await;
    slow_article_commits(&app, 3.0).await;
    let key = "still-running";
    let first = keyed(&app, "POST", "/api/articles", &token, key, new_article("Slow"));
    let retry = async {
        committing(&app).await;
        let started = std::time::Instant::now();
        let retry = keyed(&app, "POST", "/api/articles", &token, key, new_article("Slow")).await;
        (retry, started.elapsed())
    };
    let (first, (retry, waited)) = tokio::join!(first, retry);
    assert_eq!(retry.status, 409, "the first call still runs: try again: {}", retry.body);
    assert!(waited < Duration::from_secs(2), "waited {waited:?}, within the request timeout");
    // The first call outlives its timeout (its commit takes 3 s): whatever
    // it was answered, the key now gives the committed article.
    assert!([201, 504].contains(&first.status), "{}", first.body);
    crate::background::eventually(Duration::from_secs(5), "the first call to commit", || async {
        count(&app, "SELECT count(*) FROM articles").await == 1
    })
    .await;
    sqlx::raw_sql("DROP TRIGGER slow_commit ON articles").execute(&app.db).await.unwrap();
    let later = keyed(&app, "POST", "/api/articles", &token, key, new_article("Slow")).await;
    assert_eq!(later.status, 201, "{}", later.body);
    assert_eq!(count(&app, "SELECT count(*) FROM articles").await, 1, "written once");
}

#[tokio::test]
async fn a_write_cut_during_its_commit_is_unavailable_and_its_keyed_retry_writes_once() {
    let app = spawn_app().await;
    let token = app.register("cut").await;
    slow_article_commits(&app, 5.0).await;
    let key = "cut-during-commit-1";
    let first = {
        let app = &app;
        let token = token.clone();
        async move { keyed(app, "POST", "/api/articles", &token, key, new_article("Cut")).await }
    };
    let cut = async {
        // The write's backend, sleeping in its COMMIT, is terminated: the
        // transaction does not commit, and conduit cannot know either way.
        crate::background::eventually(Duration::from_secs(5), "the write to be committing", || async {
            let cut: Vec<bool> = sqlx::query_scalar(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND wait_event = 'PgSleep'",
            )
            .bind(&app.db_name)
            .fetch_all(&app.db)
            .await
            .unwrap();
            cut.contains(&true)
        })
        .await;
    };
    let (first, ()) = tokio::join!(first, cut);
    assert_eq!(first.status, 503, "a lost connection is a condition to retry: {}", first.body);
    assert!(first.headers.contains_key("retry-after"), "{:?}", first.headers);
    assert_eq!(count(&app, "SELECT count(*) FROM articles").await, 0, "the cut commit wrote nothing");
    sqlx::raw_sql("DROP TRIGGER slow_commit ON articles").execute(&app.db).await.unwrap();
    let mut retried = keyed(&app, "POST", "/api/articles", &token, key, new_article("Cut")).await;
    for _ in 0..50 {
        if retried.status != 503 {
            break;
        }
        // The database is judged again after the cut connection.
        tokio::time::sleep(Duration::from_millis(100)).await;
        retried = keyed(&app, "POST", "/api/articles", &token, key, new_article("Cut")).await;
    }
    assert_eq!(retried.status, 201, "{}", retried.body);
    let again = keyed(&app, "POST", "/api/articles", &token, key, new_article("Cut")).await;
    assert_eq!(again.status, 201, "{}", again.body);
    assert_eq!(again.body, retried.body, "the second retry is the first retry's answer again");
    assert_eq!(count(&app, "SELECT count(*) FROM articles").await, 1, "written once");
}

#[tokio::test]
async fn a_key_belongs_to_one_request_of_one_caller() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let key = "shared-key";
    let first = keyed(&app, "POST", "/api/articles", &alice, key, new_article("First")).await;
    assert_eq!(first.status, 201, "{}", first.body);

    // The same key with another request: refused, nothing written.
    let other = keyed(&app, "POST", "/api/articles", &alice, key, new_article("Second")).await;
    assert_eq!(other.status, 422, "{}", other.body);
    assert_eq!(
        errors(&other),
        ["idempotencyKey was already used with a different request; use a new key for a new request"]
    );
    assert_eq!(count(&app, "SELECT count(*) FROM articles").await, 1);

    // Another caller's key, or another RPC's, is another key.
    let bobs = keyed(&app, "POST", "/api/articles", &bob, key, new_article("First")).await;
    assert_eq!(bobs.status, 201, "{}", bobs.body);
    assert_ne!(bobs.body["article"]["slug"], first.body["article"]["slug"]);
    let slug = first.body["article"]["slug"].as_str().unwrap().to_owned();
    let comment = keyed(
        &app,
        "POST",
        &format!("/api/articles/{slug}/comments"),
        &alice,
        key,
        json!({"comment": {"body": "mine"}}),
    )
    .await;
    assert_eq!(comment.status, 201, "{}", comment.body);

    // A malformed key is refused naming the header; reads ignore keys.
    for bad in ["", "has space", &"k".repeat(256)] {
        let refused = keyed(&app, "POST", "/api/articles", &alice, bad, new_article("Bad")).await;
        assert_eq!(refused.status, 400, "{bad:?}: {}", refused.body);
        assert!(String::from_utf8_lossy(&refused.raw).contains("idempotency-key"), "{}", refused.body);
    }
    let read = keyed(&app, "GET", &format!("/api/articles/{slug}"), &alice, "has space", Value::Null).await;
    assert_eq!(read.status, 200, "{}", read.body);

    // A failed write keeps no key: after the cause is fixed, the same key writes.
    let missing = keyed(&app, "DELETE", "/api/articles/no-such-article", &alice, "delete-1", Value::Null).await;
    assert_eq!(missing.status, 404, "{}", missing.body);
    assert_eq!(count(&app, "SELECT count(*) FROM idempotency_keys WHERE key = 'delete-1'").await, 0);
    let unknown = app.article(&alice, "Deleted later", &[]).await;
    let found = keyed(&app, "DELETE", &format!("/api/articles/{unknown}"), &alice, "delete-1", Value::Null).await;
    assert_eq!(found.status, 204, "the failed call's key was free: {}", found.body);
    let deleted = keyed(&app, "DELETE", &format!("/api/articles/{slug}"), &alice, "delete-2", Value::Null).await;
    assert_eq!(deleted.status, 204, "{}", deleted.body);
    let repeated = keyed(&app, "DELETE", &format!("/api/articles/{slug}"), &alice, "delete-2", Value::Null).await;
    assert_eq!(repeated.status, 204, "a repeated delete is answered as the first, not 404: {}", repeated.body);
    assert_eq!(
        keyed(&app, "DELETE", &format!("/api/articles/{slug}"), &alice, "delete-3", Value::Null).await.status,
        404,
        "a new key is a new delete"
    );
}

#[tokio::test]
async fn a_keyed_answer_is_given_again_in_any_protocol() {
    let app = spawn_app().await;
    let token = app.register("polyglot").await;
    let slug = app.article(&token, "Talked about", &[]).await;
    let mut comments = app.comments().await;
    let create = |body: &str| {
        let mut request = authed(
            pb::CreateCommentRequest { slug: slug.clone(), comment: Some(pb::NewComment { body: body.into() }) },
            &token,
        );
        request.metadata_mut().insert("idempotency-key", "grpc-comment-1".parse().unwrap());
        request
    };
    let first = comments.create_comment(create("once")).await.unwrap().into_inner();
    let again = comments.create_comment(create("once")).await.unwrap().into_inner();
    assert_eq!(first, again);
    let refused = comments.create_comment(create("twice")).await.expect_err("another request");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    let over_json = keyed(
        &app,
        "POST",
        &format!("/api/articles/{slug}/comments"),
        &token,
        "grpc-comment-1",
        json!({"comment": {"body": "once"}}),
    )
    .await;
    assert_eq!(over_json.status, 201, "{}", over_json.body);
    assert_eq!(over_json.body["comment"]["id"], first.comment.as_ref().unwrap().id);
    assert_eq!(count(&app, "SELECT count(*) FROM comments").await, 1);

    // The caller's own update: a replay carries a working token, never a stored one.
    let bio = json!({"user": {"bio": "retried"}});
    let updated = keyed(&app, "PUT", "/api/user", &token, "bio-1", bio.clone()).await;
    assert_eq!(updated.status, 200, "{}", updated.body);
    let replayed = keyed(&app, "PUT", "/api/user", &token, "bio-1", bio).await;
    assert_eq!(replayed.status, 200, "{}", replayed.body);
    assert_eq!(replayed.body["user"]["bio"], "retried");
    let fresh = replayed.body["user"]["token"].as_str().unwrap();
    assert_eq!(app.get("/api/user", Some(fresh)).await.status, 200);
    let stored: Vec<u8> =
        sqlx::query_scalar("SELECT answer FROM idempotency_keys WHERE key = 'bio-1'").fetch_one(&app.db).await.unwrap();
    let first = updated.body["user"]["token"].as_str().unwrap();
    assert!(!stored.is_empty() && !String::from_utf8_lossy(&stored).contains("eyJ"), "no token is stored");
    assert!(!String::from_utf8_lossy(&stored).contains(first) && !String::from_utf8_lossy(&stored).contains(fresh));
}

#[tokio::test]
async fn a_key_is_remembered_for_its_retention_only() {
    let app = spawn_app_with(|s| s.idempotency_key_retention = Duration::from_secs(1)).await;
    let token = app.register("forgetful").await;
    let first = keyed(&app, "POST", "/api/articles", &token, "k", new_article("Again")).await;
    assert_eq!(first.status, 201, "{}", first.body);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let later = keyed(&app, "POST", "/api/articles", &token, "k", new_article("Again")).await;
    assert_eq!(later.status, 201, "{}", later.body);
    assert_ne!(later.body["article"]["slug"], first.body["article"]["slug"], "an expired key writes again");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let other = keyed(&app, "POST", "/api/articles", &token, "other", new_article("Third")).await;
    assert_eq!(other.status, 201, "{}", other.body);
    assert_eq!(
        count(&app, "SELECT count(*) FROM idempotency_keys").await,
        1,
        "expired keys went with the next keyed write"
    );
    // A key on a call that needs no token is not taken (registration).
    let headers = [("content-type", "application/json"), ("idempotency-key", "has space")];
    let body = json!({"user": {"username": "keyless", "email": "keyless@example.com", "password": "secret-password"}});
    let registered = app.send("POST", "/api/users", &headers, Bytes::from(body.to_string())).await;
    assert_eq!(registered.status, 201, "{}", registered.body);
}
