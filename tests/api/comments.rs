//! Comments.

use conduit::pb::conduit::v1 as pb;
use serde_json::json;
use tonic::Code;

use crate::helpers::{authed, errors, spawn_app};

#[tokio::test]
async fn comments_are_added_listed_oldest_first_and_deleted_by_their_author() {
    let app = spawn_app().await;
    let jake = app.register("jake").await;
    let anne = app.register("anne").await;
    let slug = app.article(&jake, "Talk", &[]).await;
    let path = format!("/api/articles/{slug}/comments");

    let first = app.json("POST", &path, Some(&anne), Some(json!({"comment": {"body": "First!"}}))).await;
    assert_eq!(first.status, 201);
    let comment = &first.body["comment"];
    assert_eq!(comment["body"], "First!");
    assert_eq!(comment["author"]["username"], "anne");
    assert!(comment["id"].is_i64(), "ids are JSON numbers");
    let second = app.json("POST", &path, Some(&jake), Some(json!({"comment": {"body": "Second"}}))).await;

    app.json("POST", "/api/profiles/anne/follow", Some(&jake), None).await;
    let list = app.get(&path, Some(&jake)).await;
    assert_eq!(list.status, 200);
    let comments = list.body["comments"].as_array().unwrap();
    assert_eq!(comments.iter().map(|c| c["body"].as_str().unwrap()).collect::<Vec<_>>(), ["First!", "Second"]);
    assert_eq!(comments[0]["author"]["following"], true);
    let anonymous = app.get(&path, None).await.body;
    assert_eq!(anonymous["comments"][0]["author"]["following"], false);
    // A new comment answers what the list then shows (its author never follows themselves).
    assert_eq!(anonymous["comments"][0], first.body["comment"]);
    assert_eq!(anonymous["comments"][1], second.body["comment"]);

    let id = first.body["comment"]["id"].as_i64().unwrap();
    let reply = app.json("DELETE", &format!("{path}/{id}"), Some(&jake), None).await;
    assert_eq!(reply.status, 403);
    assert_eq!(errors(&reply), ["comment forbidden"]);
    let reply = app.json("DELETE", &format!("{path}/{id}"), Some(&anne), None).await;
    assert_eq!(reply.status, 204);
    assert!(reply.raw.is_empty());
    assert_eq!(app.json("DELETE", &format!("{path}/{id}"), Some(&anne), None).await.status, 404);
    let left = app.get(&path, None).await;
    assert_eq!(left.body["comments"].as_array().unwrap().len(), 1);
    assert_eq!(left.body["comments"][0]["id"], second.body["comment"]["id"]);
}

#[tokio::test]
async fn comment_errors_are_401_404_and_422() {
    let app = spawn_app().await;
    let jake = app.register("jake").await;
    let slug = app.article(&jake, "Talk", &[]).await;
    let path = format!("/api/articles/{slug}/comments");
    assert_eq!(app.get("/api/articles/nope/comments", None).await.status, 404);
    assert_eq!(
        app.json("POST", "/api/articles/nope/comments", Some(&jake), Some(json!({"comment": {"body": "x"}})))
            .await
            .status,
        404
    );
    assert_eq!(app.json("POST", &path, None, Some(json!({"comment": {"body": "x"}}))).await.status, 401);
    let reply = app.json("POST", &path, Some(&jake), Some(json!({"comment": {"body": ""}}))).await;
    assert_eq!(reply.status, 422);
    assert_eq!(errors(&reply), ["body can't be blank"]);
    let reply = app.json("DELETE", &format!("{path}/999"), Some(&jake), None).await;
    assert_eq!((reply.status, errors(&reply)), (404, vec!["comment not found".to_owned()]));
    let reply = app.json("DELETE", "/api/articles/nope/comments/999", Some(&jake), None).await;
    assert_eq!((reply.status, errors(&reply)), (404, vec!["article not found".to_owned()]));
    assert_eq!(app.json("DELETE", &format!("{path}/1"), None, None).await.status, 401);
    let reply = app.json("DELETE", &format!("{path}/abc"), Some(&jake), None).await;
    assert_eq!(reply.status, 422);
    assert_eq!(errors(&reply), ["id \"abc\" is not a 32-bit integer"]);
    // A comment is only found under its own article.
    let other = app.article(&jake, "Other", &[]).await;
    let id = app.json("POST", &path, Some(&jake), Some(json!({"comment": {"body": "x"}}))).await.body["comment"]["id"]
        .clone();
    assert_eq!(
        app.json("DELETE", &format!("/api/articles/{other}/comments/{id}"), Some(&jake), None).await.status,
        404
    );
}

#[tokio::test]
async fn comments_service_works_over_grpc() {
    let app = spawn_app().await;
    let jake = app.register("jake").await;
    let anne = app.register("anne").await;
    let slug = app.article(&jake, "Talk", &[]).await;
    let mut comments = app.comments().await;
    let created = comments
        .create_comment(authed(
            pb::CreateCommentRequest { slug: slug.clone(), comment: Some(pb::NewComment { body: "hi".into() }) },
            &anne,
        ))
        .await
        .unwrap()
        .into_inner()
        .comment
        .unwrap();
    assert_eq!(created.author.unwrap().username, "anne");
    let listed = comments.list_comments(pb::ListCommentsRequest { slug: slug.clone() }).await.unwrap().into_inner();
    assert_eq!(listed.comments.len(), 1);
    let delete = pb::DeleteCommentRequest { slug: slug.clone(), id: created.id };
    assert_eq!(
        comments.delete_comment(authed(delete.clone(), &jake)).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    comments.delete_comment(authed(delete.clone(), &anne)).await.unwrap();
    assert_eq!(comments.delete_comment(authed(delete, &anne)).await.unwrap_err().code(), Code::NotFound);
    let missing = comments.list_comments(pb::ListCommentsRequest { slug: "nope".into() }).await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
}
