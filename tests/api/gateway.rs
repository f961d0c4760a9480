//! The transcoding layer as an HTTP client sees it: binding, limits, errors,
//! protocols.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::json;

use crate::helpers::{errors, spawn_app, spawn_app_with};

#[tokio::test]
async fn oversize_bodies_get_413_without_being_read() {
    let app = spawn_app_with(|s| s.body_limit = 1024).await;
    let token = app.register("jake").await;
    let auth = format!("Token {token}");
    let big = json!({"article": {"title": "t", "description": "d", "body": "x".repeat(2000)}});
    let reply = app
        .send("POST", "/api/articles", &[("authorization", &auth)], Bytes::from(serde_json::to_vec(&big).unwrap()))
        .await;
    assert_eq!(reply.status, 413);
    assert_eq!(errors(&reply), ["body the request body is larger than 1024 bytes"]);
    // A declared length over the limit is answered at once: were the server
    // to read first, this request (which sends no body) would never finish.
    let headers = [("authorization", auth.as_str()), ("content-length", "999999999")];
    let declared = app.send("POST", "/api/articles", &headers, Bytes::new());
    let reply = tokio::time::timeout(std::time::Duration::from_secs(10), declared).await.expect("answered at once");
    assert_eq!(reply.status, 413);
    // Without a declared length (chunked), reading stops at the limit.
    let head = format!(
        "POST /api/articles HTTP/1.1\r\nhost: x\r\nauthorization: {auth}\r\ntransfer-encoding: chunked\r\n\r\n"
    );
    let chunk = format!("{:x}\r\n{}\r\n", 600, "x".repeat(600));
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", app.port)).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(chunk.as_bytes()).await.unwrap();
    stream.write_all(chunk.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 1024];
    let n = tokio::time::timeout(std::time::Duration::from_secs(10), stream.read(&mut answer)).await.unwrap().unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM articles").fetch_one(&app.db).await.unwrap();
    assert_eq!(count, 0, "nothing was created");
}

#[tokio::test]
async fn trailing_data_after_the_json_body_is_refused() {
    let app = spawn_app().await;
    let body = r#"{"user": {"email": "a@b.c", "password": "x"}} garbage"#;
    let reply = app.send("POST", "/api/users/login", &[], Bytes::from(body)).await;
    assert_eq!(reply.status, 422);
    assert_eq!(errors(&reply), ["body malformed JSON request: trailing characters at line 1 column 47"]);
}

#[tokio::test]
async fn malformed_json_and_wrong_types_get_422_naming_the_field() {
    let app = spawn_app().await;
    let cases: &[(&str, &str)] = &[
        (r#"{"user": {"email": "a@b.c", "password": "#, "password EOF while parsing a value at line 1 column 40"),
        (
            r#"{"user": {"email": 5, "password": "x"}}"#,
            "email invalid type: integer `5`, expected a string at line 1 column 20",
        ),
        (
            r#"{"user": []}"#,
            "user invalid type: sequence, expected a JSON object (conduit.v1.LoginUser) at line 1 column 9",
        ),
        ("not json", "body malformed JSON request: expected ident at line 1 column 2"),
    ];
    for (body, message) in cases {
        let reply = app.send("POST", "/api/users/login", &[], Bytes::from(body.to_string())).await;
        assert_eq!(reply.status, 422, "{body}");
        assert_eq!(errors(&reply), [*message], "{body}");
    }
}

#[tokio::test]
async fn input_accepts_proto_names_and_ignores_unknown_fields() {
    let app = spawn_app().await;
    let token = app.register("jake").await;
    let body = json!({"article": {"title": "Names", "description": "d", "body": "b", "tag_list": ["snake"], "unknown": {"x": 1}}, "extra": true});
    let reply = app.json("POST", "/api/articles", Some(&token), Some(body)).await;
    assert_eq!(reply.status, 201, "{:?}", reply.body);
    assert_eq!(reply.body["article"]["tagList"], json!(["snake"]));
}

#[tokio::test]
async fn unknown_routes_get_404_and_wrong_methods_405() {
    let app = spawn_app().await;
    let reply = app.get("/api/nothing/here", None).await;
    assert_eq!(reply.status, 404);
    assert_eq!(errors(&reply), ["body no route for GET /api/nothing/here"]);
    let reply = app.json("PATCH", "/api/articles/some-slug", None, None).await;
    assert_eq!(reply.status, 405);
    assert_eq!(reply.headers["allow"], "GET, PUT, DELETE");
    // The literal `feed` does not hide `{slug}` for other methods.
    let token = app.register("jake").await;
    let reply = app.json("PUT", "/api/articles/feed", Some(&token), Some(json!({"article": {}}))).await;
    assert_eq!(reply.status, 404);
    assert_eq!(errors(&reply), ["article not found"]);
}

#[tokio::test]
async fn percent_encoded_path_segments_are_decoded() {
    let app = spawn_app().await;
    let token = app.register("jake").await;
    let slug = app.article(&token, "Héllo wörld", &[]).await;
    assert_eq!(slug, "héllo-wörld");
    let reply = app.get("/api/articles/h%C3%A9llo-w%C3%B6rld", None).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body["article"]["title"], "Héllo wörld");
}

#[tokio::test]
async fn json_is_served_over_http2_cleartext_too() {
    let app = spawn_app().await;
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).http2_only(true).build_http();
    let response = client.get(app.url("/api/tags").parse().unwrap()).await.unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], br#"{"tags":[]}"#);
}

/// Broken framing of a whole gRPC or gRPC-Web message — a length prefix
/// longer than the data, a header cut short, flags that mean nothing,
/// grpc-web-text that is not base64 — is INVALID_ARGUMENT, not INTERNAL;
/// grpc-web-text sent as separately padded messages is still served.
/// A raw HTTP/2 call of `path` with `content_type`, as a gRPC-family client
/// sends it: the grpc-status and grpc-message (from the headers or the
/// trailers) and the body as text.
async fn raw_call(
    app: &crate::helpers::TestApp,
    path: &str,
    content_type: &str,
    extra: &[(&str, &str)],
    body: Vec<u8>,
) -> (Option<String>, Option<String>, String, u16) {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).http2_only(true).build_http();
    let mut request = http::Request::post(app.url(path)).header("content-type", content_type).header("te", "trailers");
    for (name, value) in extra {
        request = request.header(*name, *value);
    }
    let response = client.request(request.body(Full::new(Bytes::from(body))).unwrap()).await.unwrap();
    let code = response.status().as_u16();
    let headers = response.headers().clone();
    let collected = response.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().unwrap_or_default();
    let body = String::from_utf8_lossy(&collected.to_bytes()).into_owned();
    let field = |name: &str| headers.get(name).or_else(|| trailers.get(name)).map(|v| v.to_str().unwrap().to_owned());
    (field("grpc-status"), field("grpc-message"), body, code)
}

/// Broken framing of a whole gRPC or gRPC-Web message — a length prefix
/// longer than the data, a header cut short, flags that mean nothing,
/// grpc-web-text that is not base64 — is INVALID_ARGUMENT, not INTERNAL;
/// grpc-web-text sent as separately padded messages is still served.
#[tokio::test]
async fn broken_grpc_framing_is_the_clients_mistake() {
    let app = spawn_app().await;
    let call = |content_type: &'static str, body: Vec<u8>| {
        let app = &app;
        async move {
            let (status, message, body, _) = raw_call(app, "/conduit.v1.Tags/ListTags", content_type, &[], body).await;
            (status, message, body)
        }
    };
    for (content_type, body, why) in [
        ("application/grpc", vec![0, 0, 0, 0, 10, 1, 2], "length prefix longer than the data"),
        ("application/grpc", vec![0, 0, 0], "header cut short"),
        ("application/grpc", vec![7, 0, 0, 0, 0], "flags"),
        ("application/grpc-web+proto", vec![0, 0, 0, 0, 10, 1, 2], "length prefix longer than the data"),
        ("application/grpc-web-text", b"!!!!".to_vec(), "not base64"),
        ("application/grpc-web-text", b"AAAAAA".to_vec(), "not a multiple of 4"),
    ] {
        let (status, message, _) = call(content_type, body).await;
        assert_eq!(status.as_deref(), Some("3"), "{content_type}, {why}: {message:?}");
    }
    // One empty message written as two groups ("AAAA" then the padded
    // "AAA="): base64 in groups of four, served (the status travels in the
    // text body's trailer frame, not in the headers).
    let (status, message, body) = call("application/grpc-web-text", b"AAAAAAA=".to_vec()).await;
    assert!(status.is_none() || status.as_deref() == Some("0"), "{status:?} {message:?}");
    assert!(!body.is_empty(), "a text answer");
}

#[tokio::test]
async fn success_codes_come_from_the_proto_options() {
    let app = spawn_app().await;
    let token = app.register("jake").await;
    let slug = app.article(&token, "Codes", &[]).await;
    let reply = app.json("DELETE", &format!("/api/articles/{slug}"), Some(&token), None).await;
    assert_eq!(reply.status, 204);
    assert!(reply.headers.get("content-type").is_none());
}

/// The gateway with a body-bound message of the real generated
/// types: numbers out of range and wrong types name the field.
#[tokio::test]
async fn generated_json_types_report_out_of_range_numbers_by_field() {
    use conduit::pb::conduit::v1 as pb;
    use gateway::{Gateway, Method, MethodKind, MethodSpec, RouteSpec};
    use tower::ServiceExt;

    static METHOD: MethodSpec = MethodSpec {
        rpc: "/conduit.v1.Articles/ListArticles",
        kind: MethodKind::Unary,
        no_side_effects: true,
        input: &pb::MESSAGE_CONDUIT_V1_LIST_ARTICLES_REQUEST,
        event_id: "",
        authenticated: false,
        changes_no_data: false,
    };
    static ROUTES: [RouteSpec; 1] = [RouteSpec {
        rpc: "/conduit.v1.Articles/ListArticles",
        http_method: "POST",
        template: "/list",
        body: "*",
        response_body: "",
        success_code: 200,
        input: &pb::MESSAGE_CONDUIT_V1_LIST_ARTICLES_REQUEST,
        update_mask: false,
    }];
    let method = Method::unary(&METHOD, |request: tonic::Request<pb::ListArticlesRequest>| async move {
        let r = request.into_inner();
        Ok(tonic::Response::new(pb::MultipleArticlesResponse {
            articles: vec![],
            articles_count: r.limit.unwrap_or(-1),
        }))
    });
    let gateway = Gateway::builder().methods([method]).routes(&ROUTES).build().unwrap();
    for (body, status, expected) in [
        (r#"{"limit": 7}"#, 200, json!({"articles": [], "articlesCount": 7})),
        (r#"{"limit": "8", "tag": "x"}"#, 200, json!({"articles": [], "articlesCount": 8})),
        (r#"{"limit": 3000000000}"#, 400, json!("limit")),
        (r#"{"limit": 1.5}"#, 400, json!("limit")),
        (r#"{"tag": 5}"#, 400, json!("tag")),
    ] {
        let request = http::Request::post("/list").body(axum::body::Body::from(body)).unwrap();
        let response = gateway.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status().as_u16(), status, "{body}");
        let got: serde_json::Value =
            serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes()).unwrap();
        if status == 200 {
            assert_eq!(got, expected, "{body}");
        } else {
            assert_eq!(got["details"][0]["fieldViolations"][0]["field"], expected, "{body}: {got}");
        }
    }
}

#[tokio::test]
async fn browsers_get_cors_answers_from_any_origin_by_default() {
    let app = spawn_app().await;
    let preflight = app
        .send(
            "OPTIONS",
            "/api/articles",
            &[
                ("origin", "http://localhost:4200"),
                ("access-control-request-method", "POST"),
                ("access-control-request-headers", "authorization,content-type"),
            ],
            Bytes::new(),
        )
        .await;
    assert_eq!(preflight.status, 200);
    assert_eq!(preflight.headers["access-control-allow-origin"], "*");
    let listed = |name: &str| -> Vec<String> {
        preflight.headers[name].to_str().unwrap().split(',').map(|h| h.trim().to_ascii_lowercase()).collect()
    };
    assert!(listed("access-control-allow-methods").contains(&"post".to_owned()));
    let headers = listed("access-control-allow-headers");
    for needed in
        ["authorization", "content-type", "x-grpc-web", "x-user-agent", "grpc-timeout", "connect-protocol-version"]
    {
        assert!(headers.contains(&needed.to_owned()), "{needed} allowed: {headers:?}");
    }
    assert_eq!(preflight.headers["access-control-max-age"], "3600");
    let reply = app.send("GET", "/api/tags", &[("origin", "http://localhost:4200")], Bytes::new()).await;
    assert_eq!(reply.headers["access-control-allow-origin"], "*");
    let exposed = reply.headers["access-control-expose-headers"].to_str().unwrap();
    for needed in ["grpc-status", "grpc-message", "grpc-status-details-bin"] {
        assert!(exposed.contains(needed), "{needed} exposed: {exposed}");
    }
}

#[tokio::test]
async fn cors_can_be_limited_to_listed_origins() {
    let app = spawn_app_with(|s| s.cors_allowed_origins = Some(vec!["https://app.example".parse().unwrap()])).await;
    let allowed = app.send("GET", "/api/tags", &[("origin", "https://app.example")], Bytes::new()).await;
    assert_eq!(allowed.headers["access-control-allow-origin"], "https://app.example");
    let other = app.send("GET", "/api/tags", &[("origin", "https://evil.example")], Bytes::new()).await;
    assert!(other.headers.get("access-control-allow-origin").is_none());
}

/// Each call's time, sorted: `calls` sequential calls of `call`.
async fn latencies<F, Fut>(calls: usize, mut call: F) -> Vec<std::time::Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut times = Vec::with_capacity(calls);
    for _ in 0..calls {
        let start = std::time::Instant::now();
        call().await;
        times.push(start.elapsed());
    }
    times.sort();
    times
}

/// A unary gRPC call on a reused connection costs about what the same
/// call over JSON costs. With Nagle's algorithm on the accepted socket the
/// trailers waited for the client's delayed ACK: ~40 ms against ~1 ms.
#[tokio::test]
async fn unary_grpc_calls_are_not_held_back_by_nagle() {
    let app = spawn_app().await;
    let mut tags = app.tags().await;
    let grpc = latencies(30, || {
        let mut client = tags.clone();
        async move {
            client.list_tags(conduit::pb::conduit::v1::ListTagsRequest {}).await.unwrap();
        }
    })
    .await;
    let json = latencies(30, || async {
        assert_eq!(app.get("/api/tags", None).await.status, 200);
    })
    .await;
    tags.list_tags(conduit::pb::conduit::v1::ListTagsRequest {}).await.unwrap();
    let (grpc_median, json_median) = (grpc[15], json[15]);
    assert!(
        grpc_median < json_median * 10,
        "gRPC median {grpc_median:?} against JSON median {json_median:?}: something holds gRPC answers back"
    );
}

#[tokio::test]
async fn grpc_health_reports_serving_then_not_serving_when_the_database_goes_away() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let app = spawn_app().await;
    let health = HealthClient::new(app.channel().await);
    let status = |service: &str| {
        let mut health = health.clone();
        let request = HealthCheckRequest { service: service.to_owned() };
        async move { health.check(request).await.map(|r| r.into_inner().status()) }
    };
    let wait_for = |service: &'static str, wanted: ServingStatus| {
        let status = &status;
        async move {
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
            loop {
                let got = status(service).await;
                if got.as_ref().ok() == Some(&wanted) {
                    return;
                }
                assert!(tokio::time::Instant::now() < deadline, "{service:?} is {got:?}, not {wanted:?}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    };
    wait_for("", ServingStatus::Serving).await;
    wait_for("conduit.v1.Articles", ServingStatus::Serving).await;
    // The HTTP probes on the admin listener agree.
    let probe = |path: &'static str| {
        let url = format!("http://127.0.0.1:{}{path}", app.admin_port);
        async move {
            let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
            client.get(url.parse().unwrap()).await.unwrap().status().as_u16()
        }
    };
    assert_eq!((probe("/healthz").await, probe("/readyz").await), (200, 200));
    let unknown = health.clone().check(HealthCheckRequest { service: "no.such.Service".into() }).await.unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    crate::helpers::drop_database(&app.db_name).await;
    wait_for("", ServingStatus::NotServing).await;
    wait_for("conduit.v1.Users", ServingStatus::NotServing).await;
    assert_eq!((probe("/healthz").await, probe("/readyz").await), (200, 503), "alive, not ready");
    // The liveness service (what Kubernetes' gRPC liveness probe asks) stays SERVING.
    assert_eq!(status(conduit::observability::health::LIVENESS_SERVICE).await.unwrap(), ServingStatus::Serving);

    // Calls now fail fast, in every protocol, saying when to retry.
    let started = std::time::Instant::now();
    let reply = app.get("/api/articles", None).await;
    assert!(started.elapsed() < std::time::Duration::from_secs(1), "no wait for a pooled connection");
    assert_eq!(reply.status, 503, "{:?}", reply.body);
    assert!(reply.headers.get("retry-after").is_some(), "{:?}", reply.headers);
    let mut tags = app.tags().await;
    let status = tags.list_tags(conduit::pb::conduit::v1::ListTagsRequest {}).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    use tonic_types::StatusExt;
    assert!(status.get_details_retry_info().and_then(|r| r.retry_delay).is_some(), "RetryInfo: {status:?}");
}

/// Every accepted socket of the service's listener has `TCP_NODELAY` set.
#[tokio::test]
async fn accepted_sockets_send_without_delay() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let _client = tokio::net::TcpStream::connect(address).await.unwrap();
    let (socket, _) = conduit::server::accept(&listener).await.unwrap();
    assert!(socket.nodelay().unwrap(), "TCP_NODELAY is set on accepted sockets");
}

/// Past the concurrency limit a request is refused at once (503, UNAVAILABLE
/// over gRPC) with `Retry-After`, not queued; capacity comes back when the
/// request holding it ends. A body still arriving holds no place: it is read
/// before the call is admitted.
#[tokio::test]
async fn requests_past_the_concurrency_limit_are_shed_with_retry_after() {
    use tokio::io::AsyncWriteExt;
    let app = spawn_app_with(|s| s.max_concurrent_requests = 1).await;
    let mut trickling = tokio::net::TcpStream::connect(("127.0.0.1", app.port)).await.unwrap();
    let head =
        "POST /api/users HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";
    trickling.write_all(head.as_bytes()).await.unwrap();
    trickling.write_all(b"5\r\n{\"use\r\n").await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(app.get("/api/tags", None).await.status, 200, "a trickling body holds no place");

    // A call the database holds (its table locked) holds the only place.
    let mut lock = app.db.begin().await.unwrap();
    sqlx::query("LOCK TABLE tags IN ACCESS EXCLUSIVE MODE").execute(&mut *lock).await.unwrap();
    let mut held = tokio::net::TcpStream::connect(("127.0.0.1", app.port)).await.unwrap();
    held.write_all(b"GET /api/tags HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;

    let started = std::time::Instant::now();
    let reply = app.get("/api/articles", None).await;
    assert!(started.elapsed() < std::time::Duration::from_secs(2), "refused at once, not queued");
    assert_eq!(reply.status, 503);
    assert_eq!(reply.headers.get("retry-after").map(|v| v.to_str().unwrap()), Some("1"));
    let status = app.tags().await.list_tags(conduit::pb::conduit::v1::ListTagsRequest {}).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);

    // The held call ends; the place is free again.
    lock.commit().await.unwrap();
    let answer = read_some(&mut held).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(app.get("/api/tags", None).await.status, 200);
}

/// What a raw connection has received within 10 s, as text.
async fn read_some(stream: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut answer = vec![0u8; 2048];
    let n = tokio::time::timeout(std::time::Duration::from_secs(10), stream.read(&mut answer)).await.unwrap().unwrap();
    String::from_utf8_lossy(&answer[..n]).into_owned()
}

/// GETs carry a strong ETag and answer If-None-Match with 304 and no body,
/// over JSON and Connect GET; a change makes a new tag; answers with
/// credentials are never stored, answers to a caller are private.
#[tokio::test]
async fn gets_are_conditional_and_say_how_they_may_be_cached() {
    let app = spawn_app().await;
    let first = app.get("/api/tags", None).await;
    assert_eq!(first.status, 200);
    let tag = first.headers["etag"].to_str().unwrap().to_owned();
    assert!(tag.starts_with('"'), "a strong tag: {tag}");
    let again = app.send("GET", "/api/tags", &[("if-none-match", &tag)], Bytes::new()).await;
    assert_eq!((again.status, again.raw.len()), (304, 0));
    assert_eq!(again.headers["etag"].to_str().unwrap(), tag);

    let token = app.register("jake").await;
    app.article(&token, "Tagged", &["dragons"]).await;
    let changed = app.send("GET", "/api/tags", &[("if-none-match", &tag)], Bytes::new()).await;
    assert_eq!(changed.status, 200, "a new tag list is a new representation");
    assert_ne!(changed.headers["etag"].to_str().unwrap(), tag);

    // Connect GET too.
    let path = "/conduit.v1.Tags/ListTags?encoding=json&message=%7B%7D";
    let connect = app.get(path, None).await;
    let connect_tag = connect.headers["etag"].to_str().unwrap().to_owned();
    assert_eq!(app.send("GET", path, &[("if-none-match", &connect_tag)], Bytes::new()).await.status, 304);

    // Caching directives.
    assert_eq!(app.get("/api/user", Some(&token)).await.headers["cache-control"], "no-store");
    assert_eq!(app.get("/api/articles", Some(&token)).await.headers["cache-control"], "private, no-cache");
    assert_eq!(app.get("/api/articles", None).await.headers["cache-control"], "no-cache");
    let login = json!({"user": {"email": "jake@example.com", "password": "secret-password"}});
    let reply = app.json("POST", "/api/users/login", None, Some(login)).await;
    assert_eq!((reply.status, reply.headers["cache-control"].to_str().unwrap()), (200, "no-store"));
}

/// A call still pending at the server's REQUEST_TIMEOUT is answered with
/// 504 / DEADLINE_EXCEEDED; a body that has not arrived within
/// BODY_READ_TIMEOUT gets 408 and the connection is closed. Neither hangs.
#[tokio::test]
async fn calls_past_the_request_timeout_get_504_and_bodies_past_theirs_408() {
    use tokio::io::AsyncWriteExt;
    let app = spawn_app_with(|s| {
        s.request_timeout = std::time::Duration::from_millis(300);
        s.body_read_timeout = std::time::Duration::from_millis(300);
    })
    .await;
    let mut lock = app.db.begin().await.unwrap();
    sqlx::query("LOCK TABLE tags IN ACCESS EXCLUSIVE MODE").execute(&mut *lock).await.unwrap();
    let started = std::time::Instant::now();
    let mut held = tokio::net::TcpStream::connect(("127.0.0.1", app.port)).await.unwrap();
    held.write_all(b"GET /api/tags HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    let answer = read_some(&mut held).await;
    assert!(answer.starts_with("HTTP/1.1 504"), "{answer}");
    assert!(answer.contains("within the server's limit of 300 ms"), "{answer}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    lock.commit().await.unwrap();

    let mut slow = tokio::net::TcpStream::connect(("127.0.0.1", app.port)).await.unwrap();
    let head =
        "POST /api/users HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";
    slow.write_all(head.as_bytes()).await.unwrap();
    slow.write_all(b"5\r\n{\"use\r\n").await.unwrap();
    let started = std::time::Instant::now();
    let answer = read_some(&mut slow).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("connection: close"), "{answer}");
    assert!(answer.contains("did not arrive within 300 ms"), "{answer}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    // Quick calls are not affected.
    assert_eq!(app.get("/api/tags", None).await.status, 200);
}

/// Logins and registrations have their own, small budget per client: past
/// it, 429 with Retry-After and the RateLimit headers over JSON,
/// RESOURCE_EXHAUSTED with RetryInfo over gRPC; other calls keep theirs.
#[tokio::test]
async fn credential_calls_are_rate_limited_per_client_in_every_protocol() {
    let app =
        spawn_app_with(|s| s.rate_limit_credentials = conduit::middleware::ratelimit::Rate::parse("3/min").unwrap())
            .await;
    let login = json!({"user": {"email": "nobody@example.com", "password": "wrong-password"}});
    for _ in 0..3 {
        assert_eq!(app.json("POST", "/api/users/login", None, Some(login.clone())).await.status, 401);
    }
    let refused = app.json("POST", "/api/users/login", None, Some(login.clone())).await;
    assert_eq!(refused.status, 429, "{:?}", refused.body);
    let retry: u64 = refused.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=20).contains(&retry), "a token comes back within 60/3 s: {retry}");
    assert_eq!(refused.headers["ratelimit-policy"], "\"credentials\";q=3;w=60");
    assert!(refused.headers["ratelimit"].to_str().unwrap().starts_with("\"credentials\";r=0;t="));
    let mut users = app.users().await;
    let request = conduit::pb::conduit::v1::LoginRequest {
        user: Some(conduit::pb::conduit::v1::LoginUser { email: "a@b.c".into(), password: "whatever-pw".into() }),
    };
    let status = users.login(request).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    use tonic_types::StatusExt;
    assert!(status.get_details_retry_info().and_then(|r| r.retry_delay).is_some());
    assert_eq!(app.get("/api/tags", None).await.status, 200, "the default class has its own budget");
}

/// A token does not open a fresh allowance: logins and registrations count
/// against the client's address whichever token (or none) they carry, over
/// JSON and gRPC alike.
#[tokio::test]
async fn tokens_do_not_reset_the_credential_allowance() {
    let app =
        spawn_app_with(|s| s.rate_limit_credentials = conduit::middleware::ratelimit::Rate::parse("4/min").unwrap())
            .await;
    let (jake, jane) = (app.register("jake").await, app.register("jane").await);
    let login = json!({"user": {"email": "jake@example.com", "password": "wrong-password"}});
    let statuses = [
        app.json("POST", "/api/users/login", Some(&jake), Some(login.clone())).await.status,
        app.json("POST", "/api/users/login", Some(&jane), Some(login.clone())).await.status,
        app.json("POST", "/api/users/login", Some(&jake), Some(login.clone())).await.status,
        app.json("POST", "/api/users/login", Some(&jane), Some(login.clone())).await.status,
    ];
    assert_eq!(statuses, [401, 401, 429, 429], "two registrations and two logins spend the address's four");
    let register = json!({"user": {"username": "joe", "email": "joe@example.com", "password": "password-joe"}});
    assert_eq!(app.json("POST", "/api/users", Some(&jake), Some(register)).await.status, 429);
    let request = conduit::pb::conduit::v1::LoginRequest {
        user: Some(conduit::pb::conduit::v1::LoginUser { email: "a@b.c".into(), password: "whatever-pw".into() }),
    };
    let status = app.users().await.login(crate::helpers::authed(request, &jane)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    // Other calls keep the token's own budget.
    assert_eq!(app.json("GET", "/api/user", Some(&jake), None).await.status, 200);
}

/// Failed logins are limited per account and client address: guessing
/// one account's password from one address stops after
/// RATE_LIMIT_LOGIN_FAILURES (even with the right password, which the
/// guesser must not be able to tell), while the owner, from another
/// address, still logs in; a success forgets the failures; other accounts
/// have their own count; gRPC answers RESOURCE_EXHAUSTED with RetryInfo.
#[tokio::test]
async fn failed_logins_are_limited_per_account_and_address() {
    let app = spawn_app_with(|s| {
        s.rate_limit_login_failures = conduit::middleware::ratelimit::Rate::parse("3/h").unwrap();
        s.trusted_proxies = vec![conduit::middleware::client::Network::parse("127.0.0.1/32").unwrap()];
    })
    .await;
    app.register("jake").await;
    app.register("jane").await;
    let login = |from: &'static str, email: &'static str, password: &'static str| {
        let body = json!({"user": {"email": email, "password": password}});
        let app = &app;
        async move {
            let headers = [("content-type", "application/json"), ("x-forwarded-for", from)];
            app.send("POST", "/api/users/login", &headers, body.to_string().into()).await
        }
    };
    let (a, b) = ("203.0.113.1", "203.0.113.2");
    for _ in 0..3 {
        assert_eq!(login(a, "jake@example.com", "guess-guess").await.status, 401);
    }
    let refused = login(a, "JAKE@example.com", "secret-password").await;
    assert_eq!(refused.status, 429, "the account's budget at this address is spent, whatever the case of the email");
    assert!(refused.headers.get("retry-after").is_some());
    assert_eq!(login(b, "jake@example.com", "secret-password").await.status, 200, "the owner is not locked out");
    assert_eq!(login(a, "jane@example.com", "guess-guess").await.status, 401, "other accounts count apart");
    // A success forgets the failures before it.
    for _ in 0..2 {
        assert_eq!(login(b, "jake@example.com", "guess-guess").await.status, 401);
    }
    assert_eq!(login(b, "jake@example.com", "secret-password").await.status, 200);
    let after: Vec<u16> = [
        login(b, "jake@example.com", "x-guess-1").await.status,
        login(b, "jake@example.com", "x-guess-2").await.status,
    ]
    .to_vec();
    assert_eq!(after, [401, 401]);

    let mut users = app.users().await;
    let guess = |password: &str| conduit::pb::conduit::v1::LoginRequest {
        user: Some(conduit::pb::conduit::v1::LoginUser { email: "jane@example.com".into(), password: password.into() }),
    };
    for _ in 0..3 {
        assert_eq!(users.login(guess("grpc-guess")).await.unwrap_err().code(), tonic::Code::Unauthenticated);
    }
    let status = users.login(guess("secret-password")).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    use tonic_types::StatusExt;
    assert!(status.get_details_retry_info().and_then(|r| r.retry_delay).is_some());
}

/// BODY_LIMIT bounds every protocol's message, with one gRPC code
/// (RESOURCE_EXHAUSTED, as grpc-go and connect-go answer) that each
/// protocol maps to HTTP by its own table; the JSON API answers 413.
/// Compressed messages are bounded as they decompress.
#[tokio::test]
async fn grpc_messages_follow_the_body_limit() {
    use prost::Message;
    let app = spawn_app_with(|s| s.body_limit = 1024).await;
    let token = app.register("jake").await;
    let mut articles = app.articles().await;
    let article = conduit::pb::conduit::v1::NewArticle {
        title: "Big".into(),
        description: "d".into(),
        body: "x".repeat(2000),
        tag_list: Vec::new(),
    };
    let request = conduit::pb::conduit::v1::CreateArticleRequest { article: Some(article) };
    let status = articles.create_article(crate::helpers::authed(request.clone(), &token)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "gRPC: {status:?}");
    assert!(status.message().contains("1024 bytes"), "{status:?}");
    // gzip makes the message small on the wire; it is bounded as it decompresses.
    let mut compressed = app.articles().await.send_compressed(tonic::codec::CompressionEncoding::Gzip);
    let status = compressed.create_article(crate::helpers::authed(request.clone(), &token)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "gRPC gzip: {status:?}");

    let auth = format!("Token {token}");
    let encoded = request.encode_to_vec();
    let mut framed = vec![0u8];
    framed.extend_from_slice(&(encoded.len() as u32).to_be_bytes());
    framed.extend_from_slice(&encoded);
    let path = "/conduit.v1.Articles/CreateArticle";
    let headers = [("authorization", auth.as_str())];
    for content_type in ["application/grpc", "application/grpc-web+proto"] {
        let (status, message, _, _) = raw_call(&app, path, content_type, &headers, framed.clone()).await;
        assert_eq!(status.as_deref(), Some("8"), "{content_type}: {message:?}");
    }
    // Declared over the limit: refused unread.
    let declared = [("authorization", auth.as_str()), ("content-length", "99999")];
    let (status, why, _, _) = raw_call(&app, path, "application/grpc", &declared, framed.clone()).await;
    assert_eq!(status.as_deref(), Some("8"), "declared: {why:?}");
    let (_, _, body, http) = raw_call(&app, path, "application/proto", &headers, encoded.clone()).await;
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["code"], "resource_exhausted", "Connect: {body}");
    assert_eq!(http, 429, "Connect maps resource_exhausted to 429");
    let big = json!({"article": {"title": "t", "description": "d", "body": "x".repeat(2000)}});
    assert_eq!(app.json("POST", "/api/articles", Some(&token), Some(big)).await.status, 413, "JSON");
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM articles").fetch_one(&app.db).await.unwrap();
    assert_eq!(count, 0);
}

/// With REDIS_URL, replicas share one budget: two instances against the
/// real Redis on 127.0.0.1:6379 refuse the call past the limit, wherever
/// the earlier calls went.
#[tokio::test]
async fn replicas_share_rate_limits_through_redis() {
    let prefix = format!(
        "conduit:test:{}:{}:",
        std::process::id(),
        std::time::SystemTime::UNIX_EPOCH.elapsed().unwrap().as_nanos()
    );
    let tune = |s: &mut conduit::config::ServeSettings| {
        s.redis_url = Some(conduit::config::Secret::from("redis://127.0.0.1:6379".to_owned()));
        s.rate_limit_redis_prefix = prefix.clone();
        s.rate_limit_credentials = conduit::middleware::ratelimit::Rate::parse("3/min").unwrap();
    };
    let (a, b) = (spawn_app_with(tune).await, spawn_app_with(tune).await);
    let login = json!({"user": {"email": "nobody@example.com", "password": "wrong-password"}});
    let statuses = [
        a.json("POST", "/api/users/login", None, Some(login.clone())).await.status,
        b.json("POST", "/api/users/login", None, Some(login.clone())).await.status,
        a.json("POST", "/api/users/login", None, Some(login.clone())).await.status,
        b.json("POST", "/api/users/login", None, Some(login.clone())).await.status,
        a.json("POST", "/api/users/login", None, Some(login.clone())).await.status,
    ];
    assert_eq!(statuses, [401, 401, 401, 429, 429]);
    let refused = b.json("POST", "/api/users/login", None, Some(login)).await;
    assert!(refused.headers.get("retry-after").is_some() && refused.headers.get("ratelimit-policy").is_some());

    // Failed logins per account and address are shared too, and a success
    // on one replica forgets them on all.
    let tune = |s: &mut conduit::config::ServeSettings| {
        s.redis_url = Some(conduit::config::Secret::from("redis://127.0.0.1:6379".to_owned()));
        s.rate_limit_redis_prefix = format!("{prefix}logins:");
        s.rate_limit_login_failures = conduit::middleware::ratelimit::Rate::parse("2/h").unwrap();
    };
    let (a, b) = (spawn_app_with(tune).await, spawn_app_with(tune).await);
    // One database per app: the account exists on both, as it would behind one database.
    a.register("jake").await;
    b.register("jake").await;
    let attempt = |password: &str| json!({"user": {"email": "jake@example.com", "password": password}});
    assert_eq!(a.json("POST", "/api/users/login", None, Some(attempt("guess-1"))).await.status, 401);
    assert_eq!(b.json("POST", "/api/users/login", None, Some(attempt("secret-password"))).await.status, 200);
    assert_eq!(a.json("POST", "/api/users/login", None, Some(attempt("guess-2"))).await.status, 401);
    assert_eq!(b.json("POST", "/api/users/login", None, Some(attempt("guess-3"))).await.status, 401);
    assert_eq!(a.json("POST", "/api/users/login", None, Some(attempt("secret-password"))).await.status, 429);
}
