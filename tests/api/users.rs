//! Users: registration, login, the current user.

use conduit::pb::conduit::v1 as pb;
use serde_json::{Value, json};
use tonic::Code;

use crate::helpers::{JWT_SECRET, authed, errors, spawn_app};

fn new_user(username: &str, email: &str, password: &str) -> serde_json::Value {
    json!({"user": {"username": username, "email": email, "password": password}})
}

#[tokio::test]
async fn register_returns_201_with_the_user_and_a_token() {
    let app = spawn_app().await;
    let reply = app.json("POST", "/api/users", None, Some(new_user("jake", "jake@jake.jake", "jakejake"))).await;
    assert_eq!(reply.status, 201);
    let user = &reply.body["user"];
    assert_eq!(user["username"], "jake");
    assert_eq!(user["email"], "jake@jake.jake");
    assert_eq!((&user["bio"], &user["image"]), (&Value::Null, &Value::Null), "nullable, present: {user}");
    assert!(user["token"].as_str().unwrap().split('.').count() == 3);
    assert!(user.get("password").is_none());
    let stored: String = sqlx::query_scalar("SELECT password_hash FROM users").fetch_one(&app.db).await.unwrap();
    assert!(stored.starts_with("$argon2id$"), "{stored}");
}

#[tokio::test]
async fn register_returns_409_when_username_or_email_is_taken() {
    let app = spawn_app().await;
    app.register("jake").await;
    let reply = app.json("POST", "/api/users", None, Some(new_user("jake", "JAKE@example.com", "password"))).await;
    assert_eq!(reply.status, 409);
    assert_eq!(errors(&reply), ["email has already been taken", "username has already been taken"]);
    let reply = app.json("POST", "/api/users", None, Some(new_user("other", "Jake@Example.COM", "password"))).await;
    assert_eq!(errors(&reply), ["email has already been taken"]);
}

#[tokio::test]
async fn register_returns_422_naming_each_invalid_field() {
    let app = spawn_app().await;
    let reply = app.json("POST", "/api/users", None, Some(json!({"user": {"username": "", "email": "nope"}}))).await;
    assert_eq!(reply.status, 422);
    assert_eq!(errors(&reply), ["email is invalid", "password can't be blank", "username can't be blank"]);
    let reply = app.json("POST", "/api/users", None, Some(json!({"user": {}}))).await;
    assert_eq!(errors(&reply), ["email can't be blank", "password can't be blank", "username can't be blank"]);
    let reply = app.json("POST", "/api/users", None, Some(json!({}))).await;
    assert_eq!(errors(&reply), ["user can't be blank"]);
    // The same rules over Connect: invalid_argument with the field violations.
    let connect = app
        .send(
            "POST",
            "/conduit.v1.Users/Register",
            &[("content-type", "application/json")],
            r#"{"user":{"username":"x","email":"x@y.z","password":"short"}}"#.into(),
        )
        .await;
    assert_eq!((connect.status, &connect.body["code"]), (400, &json!("invalid_argument")));
    assert_eq!(connect.body["message"], "user.password is too short (minimum is 8 characters)");
    let long = "x".repeat(65);
    let reply = app.json("POST", "/api/users", None, Some(new_user(&long, "a@b.c", "password"))).await;
    assert_eq!(errors(&reply), ["username is too long (maximum is 64 characters)"]);
    let reply = app.json("POST", "/api/users", None, Some(new_user("a b", "a@b.c", "password"))).await;
    assert_eq!(reply.status, 422);
    let reply = app.json("POST", "/api/users", None, Some(new_user("short", "s@b.c", "seven77"))).await;
    assert_eq!(errors(&reply), ["password is too short (minimum is 8 characters)"]);
}

#[tokio::test]
async fn update_tells_null_empty_and_absent_apart() {
    let app = spawn_app().await;
    let token = app.register("jake").await;
    let put = |user: Value| app.json("PUT", "/api/user", Some(&token), Some(json!({ "user": user })));
    let reply = put(json!({"bio": "I fly", "image": "https://example.com/j.png"})).await;
    assert_eq!(reply.body["user"]["bio"], "I fly");
    // Left out keeps; "" and null clear, to null.
    assert_eq!(put(json!({"email": "jake2@example.com"})).await.body["user"]["bio"], "I fly");
    assert_eq!(put(json!({"bio": ""})).await.body["user"]["bio"], Value::Null);
    let reply = put(json!({"image": null})).await;
    assert_eq!((reply.status, &reply.body["user"]["image"]), (200, &Value::Null));
    let stored: (Option<String>, Option<String>) =
        sqlx::query_as("SELECT bio, image FROM users").fetch_one(&app.db).await.unwrap();
    assert_eq!(stored, (None, None), "none is stored as NULL");
    // Required fields cannot be nulled or emptied; passwords have a minimum.
    for (field, value) in [("email", Value::Null), ("username", json!("")), ("password", Value::Null)] {
        let reply = put(json!({ field: value })).await;
        assert_eq!(reply.status, 422, "{field}: {value}");
        assert_eq!(errors(&reply), [format!("{field} can't be blank")]);
    }
    assert_eq!(put(json!({"password": "short"})).await.status, 422);
}

/// A key named twice in a JSON body is refused with 422 on every route,
/// the partial updates (whose keys say what changes) included, and
/// nothing is written.
#[tokio::test]
async fn a_key_named_twice_is_refused_on_every_route() {
    let app = spawn_app().await;
    let token = app.register("jake").await;
    let slug = app.article(&token, "Twice", &[]).await;
    let auth = format!("Token {token}");
    let headers = [("content-type", "application/json"), ("authorization", auth.as_str())];
    for (method, path, body) in [
        ("PUT", "/api/user".to_owned(), r#"{"user": {"bio": "a", "bio": "b"}}"#),
        ("PUT", "/api/user".to_owned(), r#"{"user": {"bio": "a"}, "user": {"bio": "b"}}"#),
        ("PUT", format!("/api/articles/{slug}"), r#"{"article": {"title": "x", "title": "y"}}"#),
        (
            "POST",
            "/api/articles".to_owned(),
            r#"{"article": {"title": "t", "description": "d", "body": "b", "body": "c"}}"#,
        ),
        ("POST", format!("/api/articles/{slug}/comments"), r#"{"comment": {"body": "a", "body": "b"}}"#),
    ] {
        let reply = app.send(method, &path, &headers, body.to_owned().into()).await;
        assert_eq!(reply.status, 422, "{method} {path} {body}: {:?}", reply.body);
        assert!(format!("{:?}", reply.body).contains("more than once"), "{method} {path}: {:?}", reply.body);
    }
    let stored: (Option<String>, String) =
        sqlx::query_as("SELECT u.bio, a.title FROM users u JOIN articles a ON a.author_id = u.id")
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(stored, (None, "Twice".to_owned()));
}

#[tokio::test]
async fn login_accepts_the_email_in_any_case_and_rejects_a_wrong_password() {
    let app = spawn_app().await;
    app.register("jake").await;
    let ok = json!({"user": {"email": "JAKE@example.com", "password": "secret-password"}});
    let reply = app.json("POST", "/api/users/login", None, Some(ok)).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body["user"]["username"], "jake");
    for bad in [
        json!({"user": {"email": "jake@example.com", "password": "wrong"}}),
        json!({"user": {"email": "nobody@example.com", "password": "secret-password"}}),
    ] {
        let reply = app.json("POST", "/api/users/login", None, Some(bad)).await;
        assert_eq!(reply.status, 401);
        assert_eq!(errors(&reply), ["credentials invalid"]);
        assert_eq!(reply.headers["www-authenticate"], "Token");
    }
    let reply = app.json("POST", "/api/users/login", None, Some(json!({"user": {"email": ""}}))).await;
    assert_eq!(reply.status, 422);
}

/// A token signed with another secret, and one of ours that expired long ago.
fn bad_tokens() -> (String, String) {
    let sign = |secret: &[u8], exp: u64| {
        let claims = json!({"sub": "1", "iat": 0, "exp": exp});
        let key = jsonwebtoken::EncodingKey::from_secret(secret);
        jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
    };
    (sign(b"another-secret-another-secret-another", 4_000_000_000), sign(JWT_SECRET.as_bytes(), 1_000))
}

#[tokio::test]
async fn current_user_needs_a_valid_token() {
    let app = spawn_app().await;
    let token = app.register("jake").await;
    let reply = app.get("/api/user", Some(&token)).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body["user"]["token"], token.as_str());
    let bearer = format!("Bearer {token}");
    let reply = app.send("GET", "/api/user", &[("authorization", &bearer)], Default::default()).await;
    assert_eq!(reply.status, 200, "Bearer is accepted too");

    assert_eq!(app.get("/api/user", None).await.status, 401);
    let (forged, expired) = bad_tokens();
    for bad in [forged.as_str(), expired.as_str(), "garbage"] {
        let reply = app.get("/api/user", Some(bad)).await;
        assert_eq!(reply.status, 401, "{bad}");
        assert_eq!(errors(&reply), ["token is invalid"]);
    }
    let reply = app.send("GET", "/api/user", &[("authorization", "Basic abc")], Default::default()).await;
    assert_eq!(reply.status, 401);
    let reply = app.get("/api/user", None).await;
    assert_eq!(errors(&reply), ["token is missing"]);
}

#[tokio::test]
async fn a_stale_token_on_a_public_read_counts_as_no_token() {
    let app = spawn_app().await;
    let (forged, expired) = bad_tokens();
    for bad in [forged.as_str(), expired.as_str(), "garbage"] {
        for path in ["/api/articles", "/api/tags", "/api/profiles/nobody-here"] {
            let reply = app.get(path, Some(bad)).await;
            assert_ne!(reply.status, 401, "{path} with {bad}");
        }
        assert_eq!(app.get("/api/articles", Some(bad)).await.status, 200);
        // Where a token is required, a bad one is still refused.
        assert_eq!(app.get("/api/articles/feed", Some(bad)).await.status, 401);
    }
}

#[tokio::test]
async fn update_user_changes_only_the_fields_given() {
    let app = spawn_app().await;
    let token = app.register("jake").await;
    app.register("taken").await;
    let reply = app
        .json(
            "PUT",
            "/api/user",
            Some(&token),
            Some(json!({"user": {"bio": "I like to skateboard", "image": "https://i.stack.imgur.com/xHWG8.jpg"}})),
        )
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body["user"]["bio"], "I like to skateboard");
    assert_eq!(reply.body["user"]["username"], "jake");
    assert_eq!(reply.body["user"]["email"], "jake@example.com");

    let reply = app.json("PUT", "/api/user", Some(&token), Some(json!({"user": {"username": "taken"}}))).await;
    assert_eq!(reply.status, 409);
    assert_eq!(errors(&reply), ["username has already been taken"]);
    let reply = app.json("PUT", "/api/user", Some(&token), Some(json!({"user": {"email": "bad"}}))).await;
    assert_eq!(errors(&reply), ["email is invalid"]);
    // Keeping one's own email is no conflict.
    let reply = app
        .json(
            "PUT",
            "/api/user",
            Some(&token),
            Some(json!({"user": {"email": "JAKE@example.com", "password": "new-password"}})),
        )
        .await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let login = json!({"user": {"email": "jake@example.com", "password": "new-password"}});
    assert_eq!(app.json("POST", "/api/users/login", None, Some(login)).await.status, 200);
    assert_eq!(app.json("PUT", "/api/user", None, Some(json!({"user": {}}))).await.status, 401);
}

#[tokio::test]
async fn users_service_works_over_grpc() {
    let app = spawn_app().await;
    let mut users = app.users().await;
    let registered = users
        .register(pb::RegisterRequest {
            user: Some(pb::NewUser {
                username: "jake".into(),
                email: "jake@jake.jake".into(),
                password: "jakejake".into(),
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(registered.username, "jake");

    let login =
        pb::LoginRequest { user: Some(pb::LoginUser { email: "jake@jake.jake".into(), password: "jakejake".into() }) };
    let token = users.login(login).await.unwrap().into_inner().user.unwrap().token;
    let me = users.get_current_user(authed(pb::GetCurrentUserRequest {}, &token)).await.unwrap().into_inner();
    assert_eq!(me.user.unwrap().email, "jake@jake.jake");

    let update = pb::UpdateCurrentUserRequest {
        user: Some(pb::UpdateUser { bio: Some("hi".into()), ..Default::default() }),
        update_mask: None,
    };
    let updated = users.update_current_user(authed(update, &token)).await.unwrap().into_inner().user.unwrap();
    assert_eq!(updated.bio.as_deref(), Some("hi"));

    let status = users.get_current_user(pb::GetCurrentUserRequest {}).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let (forged, expired) = bad_tokens();
    for bad in [forged.as_str(), expired.as_str(), "garbage"] {
        let status = users.get_current_user(authed(pb::GetCurrentUserRequest {}, bad)).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{bad}");
    }
    let dup = pb::RegisterRequest {
        user: Some(pb::NewUser { username: "jake".into(), email: "x@y.z".into(), password: "password".into() }),
    };
    let status = users.register(dup).await.unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists);
    let bad =
        pb::LoginRequest { user: Some(pb::LoginUser { email: "jake@jake.jake".into(), password: "nope".into() }) };
    assert_eq!(users.login(bad).await.unwrap_err().code(), Code::Unauthenticated);
    // The proto's rules hold over gRPC too, before the service runs: field
    // paths, the rule broken, and a description.
    use tonic_types::StatusExt;
    let violations = |status: tonic::Status| -> Vec<(String, String)> {
        assert_eq!(status.code(), Code::InvalidArgument);
        status.get_details_bad_request().unwrap().field_violations.into_iter().map(|v| (v.field, v.reason)).collect()
    };
    let empty = pb::RegisterRequest { user: Some(pb::NewUser::default()) };
    assert_eq!(
        violations(users.register(empty).await.unwrap_err()),
        [("user.username", "REQUIRED"), ("user.email", "REQUIRED"), ("user.password", "REQUIRED")]
            .map(|(f, r)| (f.to_owned(), r.to_owned()))
    );
    let short = pb::RegisterRequest {
        user: Some(pb::NewUser { username: "x".into(), email: "x@y.z".into(), password: "short".into() }),
    };
    assert_eq!(
        violations(users.register(short).await.unwrap_err()),
        [("user.password".to_owned(), "STRING_MIN_LEN".to_owned())]
    );
    let missing = pb::RegisterRequest { user: None };
    assert_eq!(violations(users.register(missing).await.unwrap_err()), [("user".to_owned(), "REQUIRED".to_owned())]);
}

#[tokio::test]
async fn concurrent_registrations_of_one_name_let_exactly_one_win() {
    let app = spawn_app().await;
    let attempts = (0..6).map(|i| {
        let body = new_user("racer", &format!("racer{i}@example.com"), "password");
        app.json("POST", "/api/users", None, Some(body))
    });
    let replies = futures_util::future::join_all(attempts).await;
    let created = replies.iter().filter(|r| r.status == 201).count();
    assert_eq!(created, 1, "{:?}", replies.iter().map(|r| r.status).collect::<Vec<_>>());
    for reply in replies.iter().filter(|r| r.status != 201) {
        assert_eq!(reply.status, 409);
        assert_eq!(errors(reply), ["username has already been taken"]);
    }
}
