//! Profiles and following.

use conduit::pb::conduit::v1 as pb;
use tonic::Code;

use crate::helpers::{authed, errors, spawn_app};

#[tokio::test]
async fn profiles_show_following_for_the_caller_only() {
    let app = spawn_app().await;
    let jake = app.register("jake").await;
    app.register("celeb").await;

    let reply = app.get("/api/profiles/celeb", None).await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.body["profile"],
        serde_json::json!({"username": "celeb", "bio": null, "image": null, "following": false})
    );

    let reply = app.json("POST", "/api/profiles/celeb/follow", Some(&jake), None).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body["profile"]["following"], true);
    // Following twice is no error.
    assert_eq!(
        app.json("POST", "/api/profiles/celeb/follow", Some(&jake), None).await.body["profile"]["following"],
        true
    );
    assert_eq!(app.get("/api/profiles/celeb", Some(&jake)).await.body["profile"]["following"], true);
    assert_eq!(app.get("/api/profiles/celeb", None).await.body["profile"]["following"], false);

    let reply = app.json("DELETE", "/api/profiles/celeb/follow", Some(&jake), None).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body["profile"]["following"], false);
    assert_eq!(app.get("/api/profiles/celeb", Some(&jake)).await.body["profile"]["following"], false);
}

#[tokio::test]
async fn profile_errors_are_404_401_and_422() {
    let app = spawn_app().await;
    let jake = app.register("jake").await;
    let reply = app.get("/api/profiles/nobody", None).await;
    assert_eq!(reply.status, 404);
    assert_eq!(errors(&reply), ["profile not found"]);
    assert_eq!(app.json("POST", "/api/profiles/nobody/follow", Some(&jake), None).await.status, 404);
    assert_eq!(app.json("POST", "/api/profiles/jake/follow", None, None).await.status, 401);
    assert_eq!(app.json("DELETE", "/api/profiles/jake/follow", None, None).await.status, 401);
    let reply = app.json("POST", "/api/profiles/jake/follow", Some(&jake), None).await;
    assert_eq!(reply.status, 422);
    assert_eq!(errors(&reply), ["username cannot be followed by yourself"]);
}

#[tokio::test]
async fn profiles_service_works_over_grpc() {
    let app = spawn_app().await;
    let jake = app.register("jake").await;
    app.register("celeb").await;
    let mut profiles = app.profiles().await;
    let followed = profiles
        .follow_user(authed(pb::FollowUserRequest { username: "celeb".into() }, &jake))
        .await
        .unwrap()
        .into_inner();
    assert!(followed.profile.unwrap().following);
    let seen = profiles.get_profile(authed(pb::GetProfileRequest { username: "celeb".into() }, &jake)).await.unwrap();
    assert!(seen.into_inner().profile.unwrap().following);
    let unfollowed = profiles
        .unfollow_user(authed(pb::UnfollowUserRequest { username: "celeb".into() }, &jake))
        .await
        .unwrap()
        .into_inner();
    assert!(!unfollowed.profile.unwrap().following);
    let missing = profiles.get_profile(pb::GetProfileRequest { username: "nobody".into() }).await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    let anonymous = profiles.follow_user(pb::FollowUserRequest { username: "celeb".into() }).await.unwrap_err();
    assert_eq!(anonymous.code(), Code::Unauthenticated);
}
