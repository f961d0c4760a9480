//! Users: registration, login, the current user.

use conduit::pb::conduit::v1 as pb;
use serde_json::{Value, json};
use tonic::Code;

use crate::helpers::{JWT_SECRET, authed, errors, spawn_app, spawn_app_with};

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
        let claims = json!({"sub": "1", "sid": 1, "iat": 0, "nbf": 0, "exp": exp});
        conduit::domain::auth::Hs256::new(secret).sign(&claims).unwrap()
    };
    (sign(b"another-secret-another-secret-another", 4_000_000_000), sign(JWT_SECRET.as_bytes(), 1_000))
}

/// The claims of a token, unverified.
fn claims_of(token: &str) -> Value {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

/// Tokens carry a session and a not-before time, both checked; a token of
/// ours without a session (as issued before sessions) is refused.
#[tokio::test]
async fn tokens_name_their_session_and_are_not_valid_before_nbf() {
    let app = spawn_app().await;
    let token = app.register("jake").await;
    let claims = claims_of(&token);
    assert!(claims["sid"].as_i64().unwrap() > 0, "{claims}");
    assert_eq!(claims["nbf"], claims["iat"]);
    let keys = conduit::domain::auth::Hs256::new(JWT_SECRET.as_bytes());
    let now = std::time::SystemTime::UNIX_EPOCH.elapsed().unwrap().as_secs();
    let early = json!({"sub": claims["sub"], "sid": claims["sid"], "iat": now, "nbf": now + 600, "exp": now + 3600});
    let reply = app.get("/api/user", Some(&keys.sign(&early).unwrap())).await;
    assert_eq!(reply.status, 401);
    assert_eq!(reply.body["errors"]["token"], json!(["is invalid"]));
    let sessionless = json!({"sub": claims["sub"], "iat": now, "exp": now + 3600});
    assert_eq!(app.get("/api/user", Some(&keys.sign(&sessionless).unwrap())).await.status, 401);
    let none = format!("{}.{}.", "eyJhbGciOiJub25lIn0", token.split('.').nth(1).unwrap());
    assert_eq!(app.get("/api/user", Some(&none)).await.status, 401, "alg none");
    assert_eq!(app.get("/api/user", Some(&token)).await.status, 200);
}

/// Signs in and returns the token.
async fn sign_in(app: &crate::helpers::TestApp, email: &str, password: &str) -> String {
    let body = json!({"user": {"email": email, "password": password}});
    let reply = app.json("POST", "/api/users/login", None, Some(body)).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    reply.body["user"]["token"].as_str().unwrap().to_owned()
}

/// A new password, or an email changed to another address, ends every
/// other session at once, on every protocol and on every replica; the
/// session that made the change goes on (as the upstream suites expect),
/// and re-sending the same email ends nothing.
#[tokio::test]
async fn a_password_or_email_change_revokes_the_other_sessions() {
    let a = spawn_app().await;
    let b =
        spawn_app_with(|s| s.database_url = conduit::config::Secret::from(crate::helpers::url_for(&a.db_name))).await;
    let here = a.register("jake").await;
    let elsewhere = sign_in(&a, "jake@example.com", "secret-password").await;
    let other_replica = sign_in(&b, "jake@example.com", "secret-password").await;
    assert_ne!(claims_of(&here)["sid"], claims_of(&elsewhere)["sid"]);
    // The same email again (as the Postman suite sends it) and a bio end nothing.
    let same = json!({"user": {"email": "JAKE@example.com", "bio": "hi"}});
    assert_eq!(a.json("PUT", "/api/user", Some(&here), Some(same)).await.status, 200);
    for token in [&here, &elsewhere, &other_replica] {
        assert_eq!(a.get("/api/user", Some(token)).await.status, 200);
    }

    let change = json!({"user": {"password": "new-password"}});
    let reply = a.json("PUT", "/api/user", Some(&here), Some(change.clone())).await;
    let changed = std::time::Instant::now();
    assert_eq!(reply.status, 200);
    let refreshed = reply.body["user"]["token"].as_str().unwrap().to_owned();
    assert_eq!(claims_of(&refreshed)["sid"], claims_of(&here)["sid"], "the changing session goes on");
    // The changing session may change it again at once (Bruno's errors-auth 19-20).
    assert_eq!(a.json("PUT", "/api/user", Some(&here), Some(change)).await.status, 200);
    assert_eq!(a.get("/api/user", Some(&refreshed)).await.status, 200);
    let reply = a.get("/api/user", Some(&elsewhere)).await;
    assert_eq!(reply.status, 401, "revoked in this replica at once");
    assert_eq!(reply.body["errors"]["token"], json!(["is invalid"]));
    let mut users = a.users().await;
    let status = users.get_current_user(authed(pb::GetCurrentUserRequest {}, &elsewhere)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "over gRPC too");
    // The other replica hears of it through NOTIFY, without a restart.
    while b.get("/api/user", Some(&other_replica)).await.status != 401 {
        assert!(changed.elapsed() < std::time::Duration::from_secs(10), "replica B still accepts a revoked session");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    eprintln!("revoked on the other replica {:?} after the change's answer", changed.elapsed());
    assert_eq!(b.get("/api/user", Some(&here)).await.status, 200);
    assert_eq!(b.get("/api/articles", Some(&elsewhere)).await.status, 200, "a public read ignores a revoked token");

    // A new email ends the sessions opened since, too.
    let fresh = sign_in(&b, "jake@example.com", "new-password").await;
    let email = json!({"user": {"email": "jacob@example.com"}});
    assert_eq!(b.json("PUT", "/api/user", Some(&fresh), Some(email)).await.status, 200);
    assert_eq!(b.get("/api/user", Some(&here)).await.status, 401);
    assert_eq!(b.get("/api/user", Some(&fresh)).await.status, 200);
    // A replica that starts later knows of every revocation from the database.
    let c =
        spawn_app_with(|s| s.database_url = conduit::config::Secret::from(crate::helpers::url_for(&a.db_name))).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while c.get("/api/user", Some(&elsewhere)).await.status != 401 {
        assert!(std::time::Instant::now() < deadline, "a new replica accepts a revoked session");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(c.get("/api/user", Some(&fresh)).await.status, 200);
}

/// User names are unique without regard to case, and names that hide
/// characters or are path steps are refused naming the field.
#[tokio::test]
async fn user_names_cannot_impersonate() {
    let app = spawn_app().await;
    let token = app.register("jake").await;
    let reply = app.json("POST", "/api/users", None, Some(new_user("JAKE", "other@example.com", "password"))).await;
    assert_eq!(reply.status, 409);
    assert_eq!(errors(&reply), ["username has already been taken"]);
    app.register("jane").await;
    let reply = app.json("PUT", "/api/user", Some(&token), Some(json!({"user": {"username": "Jane"}}))).await;
    assert_eq!(errors(&reply), ["username has already been taken"]);
    let reply = app.json("PUT", "/api/user", Some(&token), Some(json!({"user": {"username": "Jake"}}))).await;
    assert_eq!(reply.status, 200, "one's own name in another case is no conflict");
    assert_eq!(reply.body["user"]["username"], "Jake");
    for (name, problem) in [
        (".", "username must not be only dots"),
        ("..", "username must not be only dots"),
        ("jake\u{200B}", "username must not contain control or invisible formatting characters"),
        ("\u{202E}ekaj", "username must not contain control or invisible formatting characters"),
    ] {
        let reply = app.json("POST", "/api/users", None, Some(new_user(name, "x@example.com", "password"))).await;
        assert_eq!((reply.status, errors(&reply)), (422, vec![problem.to_owned()]), "{name:?}");
        let reply = app.json("PUT", "/api/user", Some(&token), Some(json!({"user": {"username": name}}))).await;
        assert_eq!((reply.status, errors(&reply)), (422, vec![problem.to_owned()]), "{name:?}");
    }
    let mut users = app.users().await;
    let request = pb::RegisterRequest {
        user: Some(pb::NewUser { username: "..".into(), email: "y@example.com".into(), password: "password".into() }),
    };
    let status = users.register(request).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
}

/// The migration that makes names unique without regard to case keeps
/// the oldest account's name and renames each younger twin, saying so.
#[tokio::test]
async fn the_case_migration_renames_younger_twins() {
    let name = format!("conduit_test_twins_{}", std::process::id());
    let url = crate::helpers::create_database(&name).await;
    let db = sqlx::PgPool::connect(&url).await.unwrap();
    // The migrations before it, from a directory holding only those.
    let earlier = std::env::temp_dir().join(&name);
    std::fs::create_dir_all(&earlier).unwrap();
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations")).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().unwrap().to_str().unwrap() < "20261202000002" {
            std::fs::copy(&path, earlier.join(path.file_name().unwrap())).unwrap();
        }
    }
    sqlx::migrate::Migrator::new(earlier.as_path()).await.unwrap().run(&db).await.unwrap();
    std::fs::remove_dir_all(&earlier).unwrap();
    for (username, email) in [("jake", "a@x"), ("Jake", "b@x"), ("JAKE", "c@x"), ("Jake-2", "d@x"), ("jane", "e@x")] {
        sqlx::query("INSERT INTO users (username, email, password_hash) VALUES ($1, $2, 'x')")
            .bind(username)
            .bind(email)
            .execute(&db)
            .await
            .unwrap();
    }
    conduit::postgres::migrator().run(&db).await.unwrap();
    let names: Vec<String> = sqlx::query_scalar("SELECT username FROM users ORDER BY id").fetch_all(&db).await.unwrap();
    assert_eq!(names, ["jake", "Jake-2-2", "JAKE-3", "Jake-2", "jane"]);
    let twin = sqlx::query("INSERT INTO users (username, email, password_hash) VALUES ('JANE', 'f@x', 'x')")
        .execute(&db)
        .await;
    assert!(twin.is_err(), "the index now refuses case twins");
    db.close().await;
    crate::helpers::drop_database(&name).await;
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
