//! Reads served by a streaming replica: a private primary and its standby
//! (`pg_basebackup -R`) on loopback ports, started here (as `postgres`
//! when the tests run as root: PostgreSQL refuses root), and conduit
//! replicas reading from the standby.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::json;
use sqlx::Connection;

use crate::background::eventually;
use crate::helpers::{TestApp, authed, spawn_app_with};
use crate::ops::sample;

/// A primary and standbys of it, stopped and removed when dropped.
struct Pair {
    dir: PathBuf,
    bin: PathBuf,
    primary: u16,
    standbys: Vec<u16>,
    /// The account the servers run as, when the tests run as root.
    account: Option<(u32, u32)>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The uid and gid of `postgres`, to run the servers as when root.
fn postgres_account() -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let name = std::ffi::CString::new("postgres").unwrap();
    // SAFETY: a valid C string; the entry is read before any other call.
    let entry = unsafe { libc::getpwnam(name.as_ptr()) };
    assert!(!entry.is_null(), "the tests run as root and there is no postgres account to run PostgreSQL as");
    // SAFETY: checked non-null above.
    Some(unsafe { ((*entry).pw_uid, (*entry).pw_gid) })
}

impl Pair {
    fn run(&self, program: &str, args: &[&str]) {
        let out = Command::new(self.bin.join(program))
            .args(args)
            .env_remove("PGDATA")
            .uid_if(self.account)
            .output()
            .unwrap_or_else(|e| panic!("{program}: {e}"));
        assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_string_lossy().into_owned()
    }

    fn append(&self, file: &str, text: &str) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(self.dir.join(file)).unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    /// Starts a fresh primary and a standby streaming from it.
    fn start() -> Self {
        Self::with_standbys(1)
    }

    /// Starts a fresh primary and `count` standbys streaming from it.
    fn with_standbys(count: usize) -> Self {
        let bin = conduit::postgres::private::find_binaries(None).expect("PostgreSQL's server binaries");
        let dir = std::env::temp_dir().join(format!("conduit-replicas-{}-{}", std::process::id(), free_port()));
        std::fs::create_dir_all(&dir).unwrap();
        let account = postgres_account();
        if let Some((uid, gid)) = account {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).unwrap();
        }
        let standbys = (0..count).map(|_| free_port()).collect();
        let pair = Self { dir, bin, primary: free_port(), standbys, account };
        pair.run("initdb", &["-D", &pair.path("primary"), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"]);
        // Fast and disposable: nothing here must survive a crash.
        pair.append(
            "primary/postgresql.conf",
            &format!(
                "\nport = {}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\nfsync = off\n\
                 full_page_writes = off\nmax_wal_senders = 4\nshared_buffers = 32MB\n",
                pair.primary,
                pair.dir.display()
            ),
        );
        pair.run("pg_ctl", &["-D", &pair.path("primary"), "-l", &pair.path("primary.log"), "-w", "start"]);
        for (n, port) in pair.standbys.iter().enumerate() {
            let node = format!("standby{n}");
            let primary = pair.primary.to_string();
            let args =
                ["-h", "127.0.0.1", "-p", &primary, "-U", "postgres", "-D", &pair.path(&node), "-R", "-X", "stream"];
            pair.run("pg_basebackup", &[&args[..], &["--no-sync"]].concat());
            pair.append(&format!("{node}/postgresql.conf"), &format!("\nport = {port}\nhot_standby = on\n"));
            pair.run("pg_ctl", &["-D", &pair.path(&node), "-l", &pair.path(&format!("{node}.log")), "-w", "start"]);
        }
        pair
    }

    fn url(&self, port: u16, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{port}/{db}")
    }

    /// Runs `sql` on the first standby.
    async fn on_standby(&self, sql: &str) {
        self.on_standby_n(0, sql).await;
    }

    /// Runs `sql` on standby `n`.
    async fn on_standby_n(&self, n: usize, sql: &str) {
        let mut conn = sqlx::PgConnection::connect(&self.url(self.standbys[n], "postgres")).await.unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned())).execute(&mut conn).await.unwrap();
        conn.close().await.unwrap();
    }

    /// Transactions the standby has ended in `db` (reads count there).
    async fn standby_transactions(&self, db: &str) -> i64 {
        let mut conn = sqlx::PgConnection::connect(&self.url(self.standbys[0], "postgres")).await.unwrap();
        let n: i64 = sqlx::query_scalar("SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = $1")
            .bind(db)
            .fetch_one(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
        n
    }

    /// Pauses the standby's replay and waits until it has stopped (a pause
    /// is only requested at first, and replay goes on to a stopping point).
    async fn pause_replay(&self) {
        self.pause_replay_n(0).await;
    }

    /// Pauses standby `n`'s replay, as [`Pair::pause_replay`] does the first's.
    async fn pause_replay_n(&self, n: usize) {
        self.on_standby_n(n, "SELECT pg_wal_replay_pause()").await;
        let mut conn = sqlx::PgConnection::connect(&self.url(self.standbys[n], "postgres")).await.unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while sqlx::query_scalar::<_, String>("SELECT pg_get_wal_replay_pause_state()")
            .fetch_one(&mut conn)
            .await
            .unwrap()
            != "paused"
        {
            assert!(std::time::Instant::now() < deadline, "the standby's replay did not pause");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        conn.close().await.unwrap();
    }

    fn stop_standby(&self) {
        self.run("pg_ctl", &["-D", &self.path("standby0"), "-m", "immediate", "-w", "stop"]);
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        let standbys = (0..self.standbys.len()).map(|n| format!("standby{n}"));
        for node in standbys.chain(["primary".to_owned()]) {
            let _ = Command::new(self.bin.join("pg_ctl"))
                .args(["-D", &self.path(&node), "-m", "immediate", "-w", "stop"])
                .uid_if(self.account)
                .output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

trait UidIf {
    fn uid_if(&mut self, account: Option<(u32, u32)>) -> &mut Self;
}

impl UidIf for Command {
    fn uid_if(&mut self, account: Option<(u32, u32)>) -> &mut Self {
        if let Some((uid, gid)) = account {
            std::os::unix::process::CommandExt::uid(self, uid);
            std::os::unix::process::CommandExt::gid(self, gid);
        }
        self
    }
}

/// A conduit on the pair's database `db`, reading from its standby.
async fn conduit_on(pair: &Pair, db: &str, max_lag: Duration) -> TestApp {
    let (primary, standby) = (pair.url(pair.primary, db), pair.url(pair.standbys[0], db));
    spawn_app_with(move |s| {
        s.database_url = conduit::config::Secret::from(primary);
        s.reads.urls = vec![standby];
        s.reads.max_lag = max_lag;
    })
    .await
}

/// Creates `db` on the primary and waits until the standby has it.
async fn database(pair: &Pair, db: &str) {
    let mut conn = sqlx::PgConnection::connect(&pair.url(pair.primary, "postgres")).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}"))).execute(&mut conn).await.unwrap();
    conn.close().await.unwrap();
    for port in &pair.standbys {
        eventually(Duration::from_secs(10), "the standbys to have the database", || async {
            sqlx::PgConnection::connect(&pair.url(*port, db)).await.is_ok()
        })
        .await;
    }
}

/// Routed reads land on the standby; with its replay paused, a writer
/// whose earlier reads the standby served reads their own writes at once
/// through another conduit replica over JSON, Connect and gRPC (none
/// stale, each sent to the primary because the standby lacks their
/// writes); an anonymous reader gets data no older than READ_MAX_LAG (from
/// the primary once the standby lags more); with the standby stopped,
/// reads still succeed and readiness holds.
#[tokio::test]
async fn reads_go_to_the_standby_and_writers_read_their_own_writes_everywhere() {
    let pair = Pair::start();
    database(&pair, "conduit").await;
    // a and b tolerate any lag the test makes: only the writers' positions
    // can send their reads to the primary. c allows 400 ms.
    let a = conduit_on(&pair, "conduit", Duration::from_secs(60)).await;
    let b = conduit_on(&pair, "conduit", Duration::from_secs(60)).await;
    let max_lag = Duration::from_millis(400);
    let c = conduit_on(&pair, "conduit", max_lag).await;
    let routed = |reason: &str| format!("conduit_db_reads_total{{reason=\"{reason}\"}} ");
    let replica = routed("replica");

    // Anonymous reads: on the standby, which counts them.
    let author = a.register("author").await;
    a.article(&author, "On the primary", &["replicated"]).await;
    eventually(Duration::from_secs(10), "b's reads to go to the replica", || async {
        let before = sample(b.admin_port, &replica).await;
        b.get("/api/tags", None).await;
        sample(b.admin_port, &replica).await > before
    })
    .await;
    let before = pair.standby_transactions("conduit").await;
    let routed_before = sample(b.admin_port, &replica).await;
    for _ in 0..40 {
        assert_eq!(b.get("/api/articles?limit=5", None).await.status, 200);
    }
    assert!(sample(b.admin_port, &replica).await - routed_before >= 40.0, "the reads were routed to the replica");
    eventually(Duration::from_secs(10), "the standby to count the reads", || async {
        pair.standby_transactions("conduit").await - before >= 40
    })
    .await;

    // A writer whose reads the standby serves, until it holds still.
    let writer = a.register("writer").await;
    eventually(Duration::from_secs(10), "the standby to serve the writer's reads", || async {
        let before = sample(b.admin_port, &replica).await;
        b.get("/api/user", Some(&writer)).await.status == 200 && sample(b.admin_port, &replica).await > before
    })
    .await;
    pair.pause_replay().await;
    let own = routed("own_writes");
    let own_before = sample(b.admin_port, &own).await;
    let mut stale = Vec::new();
    let mut reads = 0.0;
    for n in 0..3 {
        let title = format!("Written through a, read through b {n}");
        let slug = a.article(&writer, &title, &[]).await;
        let json = b.get(&format!("/api/articles/{slug}"), Some(&writer)).await;
        if json.status != 200 {
            stale.push(format!("JSON article {n}: {}", json.status));
        }
        let count = b.get("/api/articles?author=writer", Some(&writer)).await;
        if count.body["articlesCount"] != json!(n + 1) {
            stale.push(format!("JSON count after {n}: {}", count.body["articlesCount"]));
        }
        let connect = b
            .send(
                "POST",
                "/conduit.v1.Articles/GetArticle",
                &[("content-type", "application/json"), ("authorization", &format!("Token {writer}"))],
                serde_json::to_vec(&json!({"slug": slug})).unwrap().into(),
            )
            .await;
        if connect.status != 200 {
            stale.push(format!("Connect article {n}: {} {:?}", connect.status, connect.body));
        }
        let mut articles = b.articles().await;
        let grpc = articles
            .get_article(authed(conduit::pb::conduit::v1::GetArticleRequest { slug: slug.clone() }, &writer))
            .await;
        if let Err(status) = grpc {
            stale.push(format!("gRPC article {n}: {status:?}"));
        }
        reads += 4.0;
    }
    let bio = json!({"user": {"bio": "updated on a"}});
    let update = a.json("PUT", "/api/user", Some(&writer), Some(bio)).await;
    assert_eq!(update.status, 200);
    // The answer carries the write's position: any reader that sends it back
    // reads no older state, with no lookup (here one without a token, whom the
    // paused standby would otherwise serve).
    let position = update.headers.get("x-wal-position").expect("a write answers with its position").clone();
    let without = b.get("/api/profiles/writer", None).await;
    assert_ne!(without.body["profile"]["bio"], json!("updated on a"), "without it, the paused standby serves");
    let own_before_token = sample(b.admin_port, &own).await;
    let with_token = b
        .send("GET", "/api/profiles/writer", &[("x-wal-position", position.to_str().unwrap())], Default::default())
        .await;
    if with_token.body["profile"]["bio"] != json!("updated on a") {
        stale.push(format!("profile read with the write's position: {}", with_token.body));
    }
    assert_eq!(sample(b.admin_port, &own).await - own_before_token, 1.0, "sent to the primary for the token");
    let bad = b.send("GET", "/api/tags", &[("x-wal-position", "yesterday")], Default::default()).await;
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert!(bad.raw.windows(14).any(|w| w == b"x-wal-position"), "the refusal names the header: {}", bad.body);
    let mut articles = a.articles().await;
    let created = articles
        .create_article(authed(
            conduit::pb::conduit::v1::CreateArticleRequest {
                article: Some(conduit::pb::conduit::v1::NewArticle {
                    title: "Over gRPC".into(),
                    description: "d".into(),
                    body: "b".into(),
                    tag_list: vec![],
                }),
            },
            &writer,
        ))
        .await
        .expect("created over gRPC");
    assert!(created.metadata().get("x-wal-position").is_some(), "gRPC answers carry it as metadata");
    articles
        .delete_article(authed(
            conduit::pb::conduit::v1::DeleteArticleRequest { slug: created.into_inner().article.unwrap().slug },
            &writer,
        ))
        .await
        .expect("deleted");
    let me = b.get("/api/user", Some(&writer)).await;
    if me.body["user"]["bio"] != json!("updated on a") {
        stale.push(format!("current user: {}", me.body));
    }
    let profile = b.get("/api/profiles/writer", Some(&writer)).await;
    if profile.body["profile"]["bio"] != json!("updated on a") {
        stale.push(format!("profile: {}", profile.body));
    }
    // A user registered while the standby holds still: their account is
    // their write too (the registration keeps its position).
    let newcomer = a.register("newcomer").await;
    let first = b.get("/api/user", Some(&newcomer)).await;
    if first.status != 200 {
        stale.push(format!("a new user's first read: {} {}", first.status, first.body));
    }
    reads += 3.0;
    assert!(stale.is_empty(), "stale reads of one's own writes: {stale:?}");
    assert!(
        sample(b.admin_port, &own).await - own_before >= reads,
        "each of the writer's {reads} reads went to the primary because the replica lacked their writes"
    );

    // An anonymous reader: once the standby lags more than c's READ_MAX_LAG,
    // the primary serves c, so the writer's articles are there.
    let lagging = routed("replica_lagging");
    let lagging_before = sample(c.admin_port, &lagging).await;
    tokio::time::sleep(max_lag * 3).await;
    let anonymous = c.get("/api/articles?author=writer", None).await;
    assert_eq!(anonymous.body["articlesCount"], json!(3), "an anonymous read older than READ_MAX_LAG");
    assert!(sample(c.admin_port, &lagging).await > lagging_before, "the lagging replica was left out");
    pair.on_standby("SELECT pg_wal_replay_resume()").await;

    // The standby stopped: reads succeed from the primary, readiness holds.
    pair.stop_standby();
    let up = "conduit_db_replica_up{replica=\"0\"} ";
    eventually(Duration::from_secs(10), "b to find the standby down", || async {
        sample(b.admin_port, up).await == 0.0
    })
    .await;
    assert_eq!(b.get("/api/articles?author=writer", None).await.body["articlesCount"], json!(3));
    assert_eq!(b.get("/api/user", Some(&writer)).await.status, 200);
    let (status, _, _) = crate::ops::http(b.admin_port, "GET", "/readyz", &[], "").await;
    assert_eq!(status, 200, "a replica down does not make conduit unready");
}

/// The response cache is not refilled from a replica that has not replayed
/// the write that cleared it: such an answer is served (it is within
/// READ_MAX_LAG) but not kept, so once the replica catches up the next
/// read is fresh, long before the cache's own age bound.
#[tokio::test]
async fn the_cache_is_not_refilled_from_a_replica_behind_the_write_that_cleared_it() {
    let pair = Pair::start();
    database(&pair, "conduit").await;
    let on = |pair: &Pair| {
        let (primary, standby) = (pair.url(pair.primary, "conduit"), pair.url(pair.standbys[0], "conduit"));
        spawn_app_with(move |s| {
            s.database_url = conduit::config::Secret::from(primary);
            s.reads.urls = vec![standby];
            s.reads.max_lag = Duration::from_secs(5);
            s.cache_ttl = Duration::from_secs(120);
        })
    };
    let a = on(&pair).await;
    let b = on(&pair).await;
    let author = a.register("author").await;
    a.article(&author, "First", &[]).await;
    let page = "/api/articles?limit=5";
    let hits = "conduit_cache_events_total{event=\"hit\"} ";
    eventually(Duration::from_secs(10), "b to hold the page with the first article", || async {
        let before = sample(b.admin_port, hits).await;
        b.get(page, None).await.body["articlesCount"] == json!(1) && sample(b.admin_port, hits).await > before
    })
    .await;

    pair.pause_replay().await;
    let invalidations = "conduit_cache_events_total{event=\"invalidation\"} ";
    let cleared = sample(b.admin_port, invalidations).await;
    a.article(&author, "Second", &[]).await;
    eventually(Duration::from_secs(5), "a's write to clear b's cache", || async {
        sample(b.admin_port, invalidations).await > cleared
    })
    .await;
    let not_kept = "conduit_cache_events_total{event=\"not_kept\"} ";
    let before = sample(b.admin_port, not_kept).await;
    let stale = b.get(page, None).await;
    assert_eq!(stale.body["articlesCount"], json!(1), "served by the paused replica, within READ_MAX_LAG");
    assert!(sample(b.admin_port, not_kept).await > before, "and not kept");

    pair.on_standby("SELECT pg_wal_replay_resume()").await;
    eventually(Duration::from_secs(10), "b to read the second article (the cache lives 120 s)", || async {
        b.get(page, None).await.body["articlesCount"] == json!(2)
    })
    .await;
}

/// A TCP balancer on loopback handing each new connection to the next of
/// its servers in turn, as a read-only Service or HAProxy's replica port
/// does; stops accepting when dropped.
struct Balancer {
    port: u16,
    accepting: tokio::task::JoinHandle<()>,
}

impl Balancer {
    async fn over(ports: Vec<u16>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepting = tokio::spawn(async move {
            for turn in 0usize.. {
                let Ok((mut client, _)) = listener.accept().await else { return };
                let server = ports[turn % ports.len()];
                tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(("127.0.0.1", server)).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        Self { port, accepting }
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

/// The writer's article count, read six times at once, so that every
/// connection a pool may open is in use.
async fn six_counts(app: &TestApp, token: Option<&str>) -> Vec<serde_json::Value> {
    let read = || async move { app.get("/api/articles?author=writer", token).await.body["articlesCount"].clone() };
    futures_util::future::join_all((0..6).map(|_| read())).await
}

/// Behind one URL that balances connections over two standbys (a
/// read-only Service, HAProxy's replica port), each connection is judged
/// by the server it reaches. With one standby's replay paused: a writer
/// reads their own writes at once, and soon from the standby that kept up;
/// an anonymous reader never gets data older than READ_MAX_LAG. With every
/// standby connection cut, the reads they fail are read again from the
/// primary, and the connections opened again are judged anew. No stale
/// read, no failed read.
#[tokio::test]
async fn behind_a_balanced_endpoint_each_connection_is_judged_by_its_own_server() {
    let pair = Pair::with_standbys(2);
    database(&pair, "conduit").await;
    let balancer = Balancer::over(pair.standbys.clone()).await;
    let through = |max_lag: Duration| {
        let (primary, reads) = (pair.url(pair.primary, "conduit"), pair.url(balancer.port, "conduit"));
        spawn_app_with(move |s| {
            s.database_url = conduit::config::Secret::from(primary);
            s.reads.urls = vec![reads];
            s.reads.max_lag = max_lag;
            s.reads.max_connections = 4;
        })
    };
    // a writes; b serves the writer (any lag: only their position matters);
    // c serves anonymous readers within 400 ms.
    let a = through(Duration::from_secs(60)).await;
    let b = through(Duration::from_secs(60)).await;
    let max_lag = Duration::from_millis(400);
    let c = through(max_lag).await;
    let replica = "conduit_db_reads_total{reason=\"replica\"} ";
    let writer = a.register("writer").await;
    eventually(Duration::from_secs(10), "b to serve the writer from a standby", || async {
        let before = sample(b.admin_port, replica).await;
        b.get("/api/user", Some(&writer)).await.status == 200 && sample(b.admin_port, replica).await > before
    })
    .await;
    pair.pause_replay_n(0).await;

    let mut stale = Vec::new();
    let (b_before, c_before) = (sample(b.admin_port, replica).await, sample(c.admin_port, replica).await);
    let writes = 8;
    for n in 1..=writes {
        a.article(&writer, &format!("Balanced {n}"), &[]).await;
        // At once (the primary serves, until a poll sees a standby pass the
        // write), then after b's poll interval (the standby that kept up).
        for wait in [0, 700] {
            tokio::time::sleep(Duration::from_millis(wait)).await;
            for count in six_counts(&b, Some(&writer)).await {
                if count != json!(n) {
                    stale.push(format!("the writer after {n} writes and {wait} ms: {count}"));
                }
            }
        }
        // Over READ_MAX_LAG after the write, anyone reads it.
        for count in six_counts(&c, None).await {
            if count != json!(n) {
                stale.push(format!("anonymous, 700 ms after write {n}: {count}"));
            }
        }
    }
    assert!(stale.is_empty(), "stale reads: {stale:?}");
    // The balancer spread the conduits' connections over both standbys.
    for n in 0..2 {
        let mut conn = sqlx::PgConnection::connect(&pair.url(pair.standbys[n], "postgres")).await.unwrap();
        let held: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE datname = 'conduit'")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert!(held >= 2, "standby {n} holds {held} of the conduits' connections");
        conn.close().await.unwrap();
    }
    let served = |before: f64, app: &TestApp| {
        let port = app.admin_port;
        async move { sample(port, replica).await - before }
    };
    assert!(served(b_before, &b).await >= f64::from(writes) * 3.0, "the standby that kept up served the writer");
    assert!(served(c_before, &c).await >= f64::from(writes) * 3.0, "and the anonymous reader");

    // Every standby connection cut: the reads that meet a dead connection
    // are read again from the primary; the connections opened again,
    // through the balancer, are judged by the server each reaches.
    let failed = "conduit_db_reads_total{reason=\"replica_failed\"} ";
    let mut retried = 0.0;
    for _ in 0..5 {
        let before = sample(c.admin_port, failed).await + sample(b.admin_port, failed).await;
        for n in 0..2 {
            pair.on_standby_n(
                n,
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE datname = 'conduit' AND pid <> pg_backend_pid()",
            )
            .await;
        }
        let (b, c, writer) = (&b, &c, writer.as_str());
        let reads = (0..8).map(|n| async move {
            let (app, token) = if n % 2 == 0 { (b, Some(writer)) } else { (c, None) };
            let reply = app.get("/api/articles?author=writer", token).await;
            (reply.status, reply.body["articlesCount"].clone())
        });
        for (status, count) in futures_util::future::join_all(reads).await {
            assert_eq!((status, count), (200, json!(writes)), "a read after the standby connections were cut");
        }
        retried += sample(c.admin_port, failed).await + sample(b.admin_port, failed).await - before;
        if retried > 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(retried > 0.0, "no read met a cut connection (each time a poll found them first)");
    pair.on_standby_n(0, "SELECT pg_wal_replay_resume()").await;
}
