//! The real application on a free port with its own fresh database, and
//! clients for both protocols.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use conduit::config::{Secret, ServeSettings, Settings};
use conduit::middleware::ratelimit::Rate;
use conduit::pb::conduit::v1 as pb;
use conduit::startup::Application;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use sqlx::Connection;
use tonic::transport::Channel;

pub(crate) const JWT_SECRET: &str = "test-secret-test-secret-test-secret!";

/// The server-level URL once known (see [`admin_url`]).
static ADMIN_URL: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();

/// Server-level Postgres URL: the maintenance database, where test
/// databases are created and dropped. `TEST_DATABASE_URL`, else the server
/// on 127.0.0.1:5432 if it answers, else a private PostgreSQL the tests
/// start from the machine's server binaries, as `conduit serve` does
/// without `DATABASE_URL` (it dies with the test process).
async fn admin_url() -> String {
    ADMIN_URL
        .get_or_init(|| async {
            if let Ok(url) = std::env::var("TEST_DATABASE_URL") {
                return url;
            }
            let default = "postgres://postgres@127.0.0.1:5432/postgres";
            let probe = tokio::time::timeout(Duration::from_secs(3), sqlx::PgConnection::connect(default)).await;
            if let Ok(Ok(conn)) = probe {
                let _ = conn.close().await;
                return default.to_owned();
            }
            use std::os::unix::fs::PermissionsExt;
            let root = std::env::temp_dir().join(format!("conduit-tests-{}", std::process::id()));
            std::fs::create_dir_all(&root).unwrap();
            std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
            let pg_bin = std::env::var_os("CONDUIT_PG_BIN").map(std::path::PathBuf::from);
            let bin = conduit::postgres::private::find_binaries(pg_bin.as_deref()).unwrap_or_else(|e| panic!("{e}"));
            let local =
                conduit::postgres::private::LocalPostgres::start(&bin, &root).await.unwrap_or_else(|e| panic!("{e}"));
            let url = local.url_for("postgres");
            // Kept for the whole run; the server dies with this process.
            Box::leak(Box::new(local));
            url
        })
        .await
        .clone()
}

/// The URL of database `db` on the tests' server (known once a database was created).
pub(crate) fn url_for(db: &str) -> String {
    let admin = ADMIN_URL.get().expect("a database was created first");
    let (path, query) = admin.split_once('?').map_or((admin.as_str(), None), |(p, q)| (p, Some(q)));
    let base = path.rsplit_once('/').map(|(b, _)| b).unwrap_or(path);
    match query {
        Some(query) => format!("{base}/{db}?{query}"),
        None => format!("{base}/{db}"),
    }
}

/// Creates an empty database; returns its URL.
pub(crate) async fn create_database(name: &str) -> String {
    let mut admin =
        sqlx::PgConnection::connect(&admin_url().await).await.expect("Postgres must be running for the tests");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut admin).await.unwrap();
    admin.close().await.ok();
    url_for(name)
}

/// Drops a database, connected or not; a failure only leaves it behind.
pub(crate) async fn drop_database(name: &str) {
    if let Ok(mut admin) = sqlx::PgConnection::connect(&admin_url().await).await {
        let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
        let _ = sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut admin).await;
    }
}

/// A running application and what tests need to talk to it.
pub(crate) struct TestApp {
    pub(crate) port: u16,
    /// The admin listener's port (probes).
    pub(crate) admin_port: u16,
    pub(crate) db_name: String,
    pub(crate) db: sqlx::PgPool,
    http: Client<HttpConnector, Full<Bytes>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

/// A JSON response.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) headers: http::HeaderMap,
    pub(crate) body: Value,
    pub(crate) raw: Bytes,
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

pub(crate) async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Starts the app on port 0 with a new migrated database; `tune` may change settings.
pub(crate) async fn spawn_app_with(tune: impl FnOnce(&mut ServeSettings)) -> TestApp {
    let db_name = format!(
        "conduit_test_{}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos()
    );
    let url = create_database(&db_name).await;

    // The documented defaults, and what the tests need otherwise: a free
    // port, a known secret, limits no test trips by accident, fast health
    // checks and workers, no cache, and no drain delay.
    let mut base = Settings::defaults();
    base.database_url = Some(Secret::from(url));
    base.jwt_secret = Some(Secret::from(JWT_SECRET.to_owned()));
    base.listen = "127.0.0.1:0".parse().unwrap();
    base.admin_listen = "127.0.0.1:0".parse().unwrap();
    base.jwt_ttl = Duration::from_secs(3600);
    base.max_concurrent_requests = 64;
    base.rate_limit = Rate::parse("100000/s").unwrap();
    base.rate_limit_credentials = Rate::parse("100000/s").unwrap();
    base.rate_limit_login_failures = Rate::parse("100000/s").unwrap();
    base.rate_limit_redis_prefix = "conduit:test:".into();
    base.db_max_connections = 5;
    base.password_hash_concurrency = 2;
    base.health_check_interval = Duration::from_millis(200);
    base.drain_delay = Duration::ZERO;
    base.cache_ttl = Duration::ZERO;
    base.cache_max_bytes = 16 * 1024 * 1024;
    base.job_workers = 2;
    base.job_poll_interval = Duration::from_millis(100);
    base.job_retry_base = Duration::from_millis(50);
    base.job_retry_max = Duration::from_secs(1);
    base.export_batch = 100;
    let mut settings = base.for_serve().expect("the test settings are valid");
    settings.jobs.drain_timeout = Duration::from_secs(5);
    tune(&mut settings);
    let app = Application::build(&settings).await.expect("the app starts");
    let port = app.port();
    let admin_port = app.admin_port();
    let db = app.db().clone();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(app.run_until_stopped(async {
        let _ = rx.await;
    }));
    TestApp {
        port,
        admin_port,
        db_name,
        db,
        http: Client::builder(TokioExecutor::new()).build_http(),
        shutdown: Some(tx),
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        // Drop the database from a separate runtime: Drop cannot await.
        let name = self.db_name.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(drop_database(&name));
        })
        .join();
    }
}

impl TestApp {
    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    /// Sends a request with raw body bytes and extra headers.
    pub(crate) async fn send(&self, method: &str, path: &str, headers: &[(&str, &str)], body: Bytes) -> Reply {
        let mut builder = http::Request::builder().method(method).uri(self.url(path));
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        let response = self.http.request(builder.body(Full::new(body)).unwrap()).await.expect("request sent");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let raw = response.into_body().collect().await.unwrap().to_bytes();
        let body = if raw.is_empty() { Value::Null } else { serde_json::from_slice(&raw).unwrap_or(Value::Null) };
        Reply { status, headers, body, raw }
    }

    /// Sends JSON, with `Authorization: Token <token>` when given.
    pub(crate) async fn json(&self, method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> Reply {
        let auth = token.map(|t| format!("Token {t}"));
        let mut headers = vec![("content-type", "application/json")];
        if let Some(auth) = &auth {
            headers.push(("authorization", auth.as_str()));
        }
        let body = body.map(|b| Bytes::from(serde_json::to_vec(&b).unwrap())).unwrap_or_default();
        self.send(method, path, &headers, body).await
    }

    pub(crate) async fn get(&self, path: &str, token: Option<&str>) -> Reply {
        self.json("GET", path, token, None).await
    }

    /// Registers a user over JSON; returns its token.
    pub(crate) async fn register(&self, username: &str) -> String {
        let reply = self
            .json(
                "POST",
                "/api/users",
                None,
                Some(json!({"user": {"username": username, "email": format!("{username}@example.com"), "password": "secret-password"}})),
            )
            .await;
        assert_eq!(reply.status, 201, "{:?}", reply.body);
        reply.body["user"]["token"].as_str().unwrap().to_owned()
    }

    /// Creates an article over JSON; returns its slug.
    pub(crate) async fn article(&self, token: &str, title: &str, tags: &[&str]) -> String {
        let reply = self
            .json(
                "POST",
                "/api/articles",
                Some(token),
                Some(json!({"article": {"title": title, "description": "about it", "body": "the body", "tagList": tags}})),
            )
            .await;
        assert_eq!(reply.status, 201, "{:?}", reply.body);
        reply.body["article"]["slug"].as_str().unwrap().to_owned()
    }

    pub(crate) async fn channel(&self) -> Channel {
        Channel::from_shared(self.url("")).unwrap().connect().await.expect("gRPC connects")
    }

    pub(crate) async fn users(&self) -> pb::users_client::UsersClient<Channel> {
        pb::users_client::UsersClient::new(self.channel().await)
    }

    pub(crate) async fn profiles(&self) -> pb::profiles_client::ProfilesClient<Channel> {
        pb::profiles_client::ProfilesClient::new(self.channel().await)
    }

    pub(crate) async fn articles(&self) -> pb::articles_client::ArticlesClient<Channel> {
        pb::articles_client::ArticlesClient::new(self.channel().await)
    }

    pub(crate) async fn comments(&self) -> pb::comments_client::CommentsClient<Channel> {
        pb::comments_client::CommentsClient::new(self.channel().await)
    }

    pub(crate) async fn tags(&self) -> pb::tags_client::TagsClient<Channel> {
        pb::tags_client::TagsClient::new(self.channel().await)
    }
}

/// A gRPC request carrying a token.
pub(crate) fn authed<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("authorization", format!("Token {token}").parse().unwrap());
    request
}

/// The messages of a RealWorld v2 error body, each prefixed with its key
/// (`{"errors":{"title":["can't be blank"]}}` → `title can't be blank`), in
/// key order.
pub(crate) fn errors(reply: &Reply) -> Vec<String> {
    let errors = reply.body["errors"]
        .as_object()
        .unwrap_or_else(|| panic!("not a RealWorld error body: {}", String::from_utf8_lossy(&reply.raw)));
    let mut out = Vec::new();
    for (key, messages) in errors {
        for message in messages.as_array().expect("a list of messages per key") {
            let message = message.as_str().expect("messages are strings");
            out.push(format!("{key} {message}"));
        }
    }
    out
}
