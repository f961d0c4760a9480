//! Background work on a real PostgreSQL: the job queue (retries, crashes,
//! shutdown, wake-ups, batches, dead jobs), coalesced signals, notifications made by jobs under
//! concurrent writes and delivered live across two replicas over SSE,
//! NDJSON, gRPC and gRPC-Web, resumption with `Last-Event-ID`, and the
//! streamed export and its cancellation.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use conduit::pb::conduit::v1 as pb;
use conduit::postgres::jobs::{Handler, Handlers, Job, JobError, Wake, WorkerSettings, Workers};
use conduit::postgres::signal::Signals;
use futures_util::future::BoxFuture;
use http_body_util::{BodyExt, Full};
use prost::Message;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::helpers::{TestApp, authed, create_database, drop_database, spawn_app_with, url_for};
use crate::ops::Served;

/// A fresh migrated database and a pool on it.
async fn database(name: &str) -> (String, PgPool) {
    let name = format!("conduit_jobs_{name}_{}", std::process::id());
    let url = create_database(&name).await;
    let db = conduit::postgres::connect(&url, 8, Duration::from_secs(5)).await.unwrap();
    conduit::postgres::migrator().run(&db).await.unwrap();
    (name, db)
}

fn settings(poll: Duration) -> WorkerSettings {
    WorkerSettings {
        concurrency: 4,
        lease: Duration::from_secs(30),
        poll_interval: poll,
        max_attempts: 10,
        retry_base: Duration::from_millis(40),
        retry_max: Duration::from_millis(400),
        drain_timeout: Duration::from_secs(5),
        batch: 200,
        batch_window: Duration::from_millis(10),
    }
}

/// Runs workers in this process until the returned sender fires; their
/// metrics are the returned registry's.
fn run_workers(
    db: &PgPool,
    handlers: Handlers,
    settings: WorkerSettings,
) -> (tokio::sync::oneshot::Sender<()>, conduit::observability::metrics::Metrics) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let metrics = conduit::observability::metrics::Metrics::new(db.clone());
    let workers = Workers::new(db.clone(), handlers, settings, Some(metrics.clone()));
    tokio::spawn(workers.run(async move {
        let _ = stopped.await;
    }));
    (stop, metrics)
}

/// Polls `check` every 20 ms until it is true or `limit` passes.
pub(crate) async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn job_row(db: &PgPool, id: i64) -> Option<(String, i32, Option<String>)> {
    sqlx::query_as("SELECT state, attempts, last_error FROM jobs WHERE id = $1")
        .bind(id)
        .fetch_optional(db)
        .await
        .unwrap()
}

/// Fails its first `failures` attempts; records each attempt's number.
struct Flaky {
    failures: i32,
    attempts: Arc<Mutex<Vec<(i32, Instant)>>>,
}

impl Handler for Flaky {
    fn run<'a>(&'a self, job: &'a Job, tx: &'a mut sqlx::PgConnection) -> BoxFuture<'a, Result<(), JobError>> {
        Box::pin(async move {
            self.attempts.lock().unwrap().push((job.attempt, Instant::now()));
            // Work done in the job's transaction commits only with success.
            sqlx::query("CREATE TABLE IF NOT EXISTS effects (job bigint, attempt int)").execute(&mut *tx).await?;
            sqlx::query("INSERT INTO effects VALUES ($1, $2)").bind(job.id).bind(job.attempt).execute(&mut *tx).await?;
            if job.attempt <= self.failures {
                return Err(JobError(format!("failure number {}", job.attempt)));
            }
            Ok(())
        })
    }
}

#[tokio::test]
async fn a_job_that_fails_twice_then_succeeds_backs_off_and_its_work_commits_once() {
    let (name, db) = database("flaky").await;
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let mut handlers = Handlers::new();
    handlers.register("flaky", Flaky { failures: 2, attempts: attempts.clone() });
    let mut patient = settings(Duration::from_secs(3600));
    patient.retry_base = Duration::from_secs(1);
    patient.retry_max = Duration::from_secs(2);
    let (stop, metrics) = run_workers(&db, handlers, patient);

    let id = conduit::postgres::jobs::enqueue(&db, "flaky", &json!({})).await.unwrap();
    conduit::postgres::jobs::notify_workers(&db).await.unwrap();
    // After the first failure the job waits, queued, with the error kept.
    eventually(Duration::from_secs(5), "the first failure", || async {
        matches!(job_row(&db, id).await, Some((state, 1, Some(error))) if state == "queued" && error == "failure number 1")
    })
    .await;
    eventually(Duration::from_secs(10), "the job to succeed", || async { job_row(&db, id).await.is_none() }).await;
    let seen = attempts.lock().unwrap().clone();
    assert_eq!(seen.iter().map(|(n, _)| *n).collect::<Vec<_>>(), [1, 2, 3]);
    // Backoff: at least half of 1 s, then of 2 s, between attempts (woken
    // when due, though the workers poll only once an hour).
    assert!(seen[1].1 - seen[0].1 >= Duration::from_millis(500), "{seen:?}");
    assert!(seen[2].1 - seen[1].1 >= Duration::from_millis(1000), "{seen:?}");
    assert!(seen[2].1 - seen[0].1 < Duration::from_secs(20), "{seen:?}");
    // Only the successful attempt's work is there.
    let effects: Vec<(i64, i32)> = sqlx::query_as("SELECT job, attempt FROM effects").fetch_all(&db).await.unwrap();
    assert_eq!(effects, [(id, 3)]);
    let counted = metrics.render();
    for line in [
        r#"conduit_jobs_total{kind="flaky",outcome="retried"} 2"#,
        r#"conduit_jobs_total{kind="flaky",outcome="succeeded"} 1"#,
    ] {
        assert!(counted.contains(line), "{line} is missing from:\n{counted}");
    }
    let _ = stop.send(());
    db.close().await;
    drop_database(&name).await;
}

#[tokio::test]
async fn jobs_exist_only_for_committed_writes_wake_workers_at_once_and_dead_ones_can_be_requeued() {
    let (name, db) = database("wake").await;
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let mut handlers = Handlers::new();
    handlers.register("flaky", Flaky { failures: 3, attempts: attempts.clone() });
    // Polling once an hour: only NOTIFY can wake these workers in time.
    let mut slow = settings(Duration::from_secs(3600));
    slow.max_attempts = 3;
    let (stop, metrics) = run_workers(&db, handlers, slow);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // A rolled-back write leaves no job behind.
    let mut tx = db.begin().await.unwrap();
    conduit::postgres::jobs::enqueue(&mut *tx, conduit::postgres::jobs::Canary::KIND, &json!({})).await.unwrap();
    tx.rollback().await.unwrap();
    let jobs: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs").fetch_one(&db).await.unwrap();
    assert_eq!(jobs, 0);

    // A committed one runs at once, woken by a signal as another replica's
    // writes wake these workers.
    let wake = Wake::new(Signals::new(db.clone(), Duration::from_millis(10)));
    let mut tx = db.begin().await.unwrap();
    let canary =
        conduit::postgres::jobs::enqueue(&mut *tx, conduit::postgres::jobs::Canary::KIND, &json!({})).await.unwrap();
    tx.commit().await.unwrap();
    wake.enqueued();
    let started = Instant::now();
    eventually(Duration::from_secs(3), "the canary to run", || async { job_row(&db, canary).await.is_none() }).await;
    assert!(started.elapsed() < Duration::from_secs(2), "woken in {:?}", started.elapsed());

    // A job failing every attempt dies after the third and stays.
    let id = conduit::postgres::jobs::enqueue(&db, "flaky", &json!({})).await.unwrap();
    wake.enqueued();
    eventually(Duration::from_secs(10), "the job to die", || async {
        matches!(job_row(&db, id).await, Some((state, 3, _)) if state == "dead")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(attempts.lock().unwrap().len(), 3, "a dead job is not run again");
    assert!(metrics.render().contains(r#"conduit_jobs_total{kind="flaky",outcome="dead"} 1"#));

    // The operator sees it and puts it back: it runs with fresh attempts
    // (the fourth run overall, attempt 1 again; it fails while attempt <= 3).
    let url = url_for(&name);
    // On a blocking thread: the workers under test share this runtime.
    let cli = |args: Vec<String>| {
        let url = url.clone();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_conduit"))
                .args(args)
                .env("DATABASE_URL", url)
                .env("LOG_LEVEL", "warn")
                .output()
                .unwrap()
        })
    };
    let list = cli(["jobs", "list", "--state", "dead"].map(String::from).to_vec()).await.unwrap();
    let listed = String::from_utf8_lossy(&list.stdout);
    assert!(list.status.success(), "{listed} {}", String::from_utf8_lossy(&list.stderr));
    assert!(
        listed.contains("flaky") && listed.contains("failure number 3") && listed.contains("1 dead job(s)"),
        "{listed}"
    );
    let requeue = cli(vec!["jobs".into(), "requeue".into(), id.to_string()]).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&requeue.stdout).trim(), "re-queued 1 dead job(s)");
    eventually(Duration::from_secs(3), "the re-queued job to run", || async { attempts.lock().unwrap().len() == 4 })
        .await;
    assert_eq!(attempts.lock().unwrap()[3].0, 1);
    let _ = stop.send(());
    db.close().await;
    drop_database(&name).await;
}

/// Records each job's work in its transaction; fails the jobs whose
/// payload says `bad`. Batched.
struct Tally;

impl Handler for Tally {
    fn run<'a>(&'a self, job: &'a Job, tx: &'a mut sqlx::PgConnection) -> BoxFuture<'a, Result<(), JobError>> {
        Box::pin(async move {
            sqlx::query("INSERT INTO effects VALUES ($1, $2)").bind(job.id).bind(job.attempt).execute(&mut *tx).await?;
            if job.payload["bad"] == true {
                return Err(JobError(format!("job {} is bad", job.id)));
            }
            Ok(())
        })
    }

    fn batches(&self) -> bool {
        true
    }
}

#[tokio::test]
async fn quick_jobs_enqueued_together_commit_in_one_batch_and_a_failing_one_is_retried_alone() {
    let (name, db) = database("batch").await;
    sqlx::query("CREATE TABLE effects (job bigint, attempt int)").execute(&db).await.unwrap();
    let mut handlers = Handlers::new();
    handlers.register("tally", Tally);
    let mut patient = settings(Duration::from_secs(3600));
    patient.max_attempts = 2;
    let (stop, metrics) = run_workers(&db, handlers, patient);
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Thirty jobs committed together: one batch, each job's work once.
    let mut tx = db.begin().await.unwrap();
    for _ in 0..30 {
        conduit::postgres::jobs::enqueue(&mut *tx, "tally", &json!({})).await.unwrap();
    }
    tx.commit().await.unwrap();
    conduit::postgres::jobs::notify_workers(&db).await.unwrap();
    let left = || async { sqlx::query_scalar::<_, i64>("SELECT count(*) FROM jobs").fetch_one(&db).await.unwrap() };
    eventually(Duration::from_secs(5), "the batch", || async { left().await == 0 }).await;
    let counted = metrics.render();
    for line in ["conduit_job_batches_total 1", r#"conduit_jobs_total{kind="tally",outcome="succeeded"} 30"#] {
        assert!(counted.contains(line), "{line} is missing from:\n{counted}");
    }

    // Ten more, one of them bad: the batch rolls back whole, then each job
    // runs alone; the nine good ones commit once, the bad one retries and dies.
    let mut tx = db.begin().await.unwrap();
    let mut bad = 0;
    for i in 0..10 {
        let id = conduit::postgres::jobs::enqueue(&mut *tx, "tally", &json!({ "bad": i == 4 })).await.unwrap();
        if i == 4 {
            bad = id;
        }
    }
    tx.commit().await.unwrap();
    conduit::postgres::jobs::notify_workers(&db).await.unwrap();
    eventually(Duration::from_secs(10), "the bad job to die", || async {
        matches!(job_row(&db, bad).await, Some((state, 2, Some(error))) if state == "dead" && error.ends_with("is bad"))
    })
    .await;
    assert_eq!(left().await, 1, "only the bad job is left");
    let effects: Vec<(i64, i64, i32)> =
        sqlx::query_as("SELECT job, count(*), max(attempt) FROM effects GROUP BY job ORDER BY job")
            .fetch_all(&db)
            .await
            .unwrap();
    assert_eq!(effects.len(), 39, "{effects:?}");
    assert!(effects.iter().all(|&(job, n, attempt)| job != bad && n == 1 && attempt == 1), "{effects:?}");
    let counted = metrics.render();
    for line in [
        "conduit_job_batches_total 1",
        r#"conduit_jobs_total{kind="tally",outcome="succeeded"} 39"#,
        r#"conduit_jobs_total{kind="tally",outcome="retried"} 1"#,
        r#"conduit_jobs_total{kind="tally",outcome="dead"} 1"#,
    ] {
        assert!(counted.contains(line), "{line} is missing from:\n{counted}");
    }
    let _ = stop.send(());
    db.close().await;
    drop_database(&name).await;
}

#[tokio::test]
async fn signals_raised_in_a_burst_go_out_as_a_few_notifies_and_the_last_one_always_arrives() {
    let (name, db) = database("signals").await;
    let mut listener = sqlx::postgres::PgListener::connect_with(&db).await.unwrap();
    listener.listen("burst").await.unwrap();
    let signals = Signals::new(db.clone(), Duration::from_millis(50));
    let started = Instant::now();
    for i in 0..1000 {
        signals.raise("burst", &i.to_string());
        if i % 100 == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let raising = started.elapsed();
    let mut heard = Vec::new();
    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(500), listener.recv()).await {
        heard.push(n.payload().to_owned());
    }
    // One NOTIFY per 50 ms at most, the first at once.
    let most = 2 + (raising.as_millis() / 50) as usize;
    assert!(!heard.is_empty() && heard.len() <= most, "{} notifies in {raising:?}: {heard:?}", heard.len());
    assert_eq!(heard.last().map(String::as_str), Some("999"), "{heard:?}");
    drop(listener);
    db.close().await;
    drop_database(&name).await;
}

#[tokio::test]
async fn an_attempt_longer_than_the_lease_fails_and_is_retried() {
    let (name, db) = database("slow").await;
    let mut short = settings(Duration::from_millis(50));
    short.lease = Duration::from_millis(300);
    short.max_attempts = 2;
    let (stop, _) = run_workers(&db, Handlers::new(), short);
    let id = conduit::postgres::jobs::enqueue(&db, conduit::postgres::jobs::Canary::KIND, &json!({"sleep_ms": 5000}))
        .await
        .unwrap();
    eventually(Duration::from_secs(10), "the job to time out twice", || async {
        matches!(job_row(&db, id).await, Some((state, 2, Some(error)))
            if state == "dead" && error.starts_with("timed out: an attempt may take at most JOB_LEASE"))
    })
    .await;
    let _ = stop.send(());
    db.close().await;
    drop_database(&name).await;
}

/// `conduit worker` on `url` with a 2 s lease.
async fn worker(url: &str, extra: &[(&str, &str)]) -> Served {
    let mut env = vec![
        ("DATABASE_URL", url),
        ("JOB_WORKERS", "2"),
        ("JOB_LEASE", "2s"),
        ("JOB_POLL_INTERVAL", "100ms"),
        ("DRAIN_DELAY", "0s"),
    ];
    env.extend_from_slice(extra);
    Served::start_as("worker", &env).await
}

#[tokio::test]
async fn a_worker_killed_mid_job_leaves_it_to_another_after_the_lease() {
    let (name, db) = database("kill").await;
    let url = url_for(&name);
    let id = conduit::postgres::jobs::enqueue(&db, conduit::postgres::jobs::Canary::KIND, &json!({"sleep_ms": 1500}))
        .await
        .unwrap();
    let first = worker(&url, &[]).await;
    eventually(Duration::from_secs(10), "the job to start", || async {
        matches!(job_row(&db, id).await, Some((state, 1, _)) if state == "running")
    })
    .await;
    first.signal(libc::SIGKILL);
    drop(first);
    let lease_end: time::OffsetDateTime =
        sqlx::query_scalar("SELECT run_at FROM jobs WHERE id = $1").bind(id).fetch_one(&db).await.unwrap();
    // Nobody finishes it: the row is back as claimed, with its lease.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(matches!(job_row(&db, id).await, Some((state, 1, _)) if state == "running"));

    let second = worker(&url, &[]).await;
    eventually(Duration::from_secs(15), "the job to be done by the second worker", || async {
        job_row(&db, id).await.is_none()
    })
    .await;
    // Not before the lease ran out and the sleep (1.5 s) ran again.
    let done: time::OffsetDateTime = sqlx::query_scalar("SELECT now()").fetch_one(&db).await.unwrap();
    assert!(done - lease_end >= time::Duration::milliseconds(1500), "done {done}, lease ended {lease_end}");
    let (code, log) = second.stop().await;
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("re-queued jobs whose worker stopped before finishing"), "{log}");
    db.close().await;
    drop_database(&name).await;
}

/// `conduit worker` listens for wake-ups on DATABASE_DIRECT_URL when it is
/// set (its pool may go through a transaction-mode pooler, which cannot
/// carry a LISTEN): told apart here by the application name it gives, and
/// woken through it long before its next poll.
#[tokio::test]
async fn a_worker_listens_on_the_direct_url() {
    let (name, db) = database("direct").await;
    let url = url_for(&name);
    let direct = format!("{url}{}application_name=conduit-direct", if url.contains('?') { '&' } else { '?' });
    let served = worker(&url, &[("DATABASE_DIRECT_URL", &direct), ("JOB_POLL_INTERVAL", "60s")]).await;
    eventually(Duration::from_secs(10), "the worker to listen on the direct connection", || async {
        let listening: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
             AND application_name = 'conduit-direct' AND query LIKE 'LISTEN \"conduit_jobs\"%'",
        )
        .fetch_one(&db)
        .await
        .unwrap();
        listening == 1
    })
    .await;
    let id = conduit::postgres::jobs::enqueue(&db, conduit::postgres::jobs::Canary::KIND, &json!({"sleep_ms": 0}))
        .await
        .unwrap();
    conduit::postgres::jobs::notify_workers(&db).await.unwrap();
    eventually(Duration::from_secs(10), "the woken worker to run the job", || async {
        job_row(&db, id).await.is_none()
    })
    .await;
    let (code, log) = served.stop().await;
    assert_eq!(code, Some(0), "{log}");
    db.close().await;
    drop_database(&name).await;
}

#[tokio::test]
async fn a_worker_stopped_mid_job_gives_it_back_within_the_drain_deadline() {
    let (name, db) = database("drain").await;
    let url = url_for(&name);
    let short =
        conduit::postgres::jobs::enqueue(&db, conduit::postgres::jobs::Canary::KIND, &json!({"sleep_ms": 3000}))
            .await
            .unwrap();
    let long =
        conduit::postgres::jobs::enqueue(&db, conduit::postgres::jobs::Canary::KIND, &json!({"sleep_ms": 60000}))
            .await
            .unwrap();
    // A lease longer than the long job: only the drain deadline cuts it.
    let served = worker(&url, &[("DRAIN_TIMEOUT", "5s"), ("JOB_LEASE", "90s")]).await;
    eventually(Duration::from_secs(10), "both jobs to start", || async {
        let running: i64 =
            sqlx::query_scalar("SELECT count(*) FROM jobs WHERE state = 'running'").fetch_one(&db).await.unwrap();
        running == 2
    })
    .await;
    let asked = Instant::now();
    let (code, log) = served.stop().await;
    assert_eq!(code, Some(0), "{log}");
    assert!(asked.elapsed() < Duration::from_secs(15), "stopped in {:?}", asked.elapsed());
    // The short one finished during the drain; the long one is queued
    // again, due now, its cut-off attempt not counted.
    assert!(job_row(&db, short).await.is_none());
    let (state, attempts, error) = job_row(&db, long).await.expect("never lost");
    assert_eq!((state.as_str(), attempts), ("queued", 0));
    assert_eq!(error.as_deref(), Some("interrupted by a worker shutting down"));
    db.close().await;
    drop_database(&name).await;
}

/// A user's notifications as (id, kind, actor), oldest first.
async fn notifications_of(app: &TestApp, token: &str) -> Vec<(i64, String, String)> {
    let mut all = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let path = match &before {
            Some(b) => format!("/api/notifications?limit=100&before={b}"),
            None => "/api/notifications?limit=100".to_owned(),
        };
        let page = app.get(&path, Some(token)).await;
        assert_eq!(page.status, 200, "{:?}", page.body);
        for n in page.body["notifications"].as_array().unwrap() {
            all.push((
                n["id"].as_str().unwrap().parse().unwrap(),
                n["kind"].as_str().unwrap().to_owned(),
                n["actor"]["username"].as_str().unwrap().to_owned(),
            ));
        }
        match page.body["nextBefore"].as_str() {
            Some(next) => before = Some(next.to_owned()),
            None => break,
        }
    }
    all.reverse();
    all
}

#[tokio::test]
async fn concurrent_writes_make_exactly_the_expected_notifications() {
    let app = Arc::new(
        spawn_app_with(|s| {
            s.db_max_connections = 12;
            s.max_concurrent_requests = 512;
        })
        .await,
    );
    let author = app.register("author").await;
    let slug = app.article(&author, "Much liked", &[]).await;
    let mut fans = Vec::new();
    for i in 0..100 {
        fans.push(app.register(&format!("fan{i}")).await);
    }
    // Each fan follows and favorites twice, all at once: repeats are no-ops.
    let mut writes = tokio::task::JoinSet::new();
    for token in fans.clone() {
        let (app, slug) = (app.clone(), slug.clone());
        writes.spawn(async move {
            for _ in 0..2 {
                let follow = app.json("POST", "/api/profiles/author/follow", Some(&token), None).await;
                assert_eq!(follow.status, 200, "{:?}", follow.body);
                let favorite = app.json("POST", &format!("/api/articles/{slug}/favorite"), Some(&token), None).await;
                assert_eq!(favorite.status, 200, "{:?}", favorite.body);
            }
        });
    }
    while let Some(done) = writes.join_next().await {
        done.unwrap();
    }
    eventually(Duration::from_secs(20), "200 notifications", || async {
        app.get("/api/notifications?limit=1", Some(&author)).await.body["unreadCount"] == 200
    })
    .await;
    let seen = notifications_of(&app, &author).await;
    // Numbered 1..=200 without gaps; one follow and one favorite per fan.
    assert_eq!(seen.iter().map(|n| n.0).collect::<Vec<_>>(), (1..=200).collect::<Vec<_>>());
    let mut per_fan: HashMap<&str, BTreeSet<&str>> = HashMap::new();
    for (_, kind, actor) in &seen {
        assert!(per_fan.entry(actor).or_default().insert(kind), "{actor} twice with {kind}");
    }
    assert_eq!(per_fan.len(), 100);
    assert!(per_fan.values().all(|kinds| kinds.len() == 2));

    // One article by the author: each of the 100 followers is told once.
    app.article(&author, "For my followers", &[]).await;
    for token in [&fans[0], &fans[57], &fans[99]] {
        eventually(Duration::from_secs(10), "the article notification", || async {
            !notifications_of(&app, token).await.is_empty()
        })
        .await;
    }
    let told: i64 = sqlx::query_scalar("SELECT count(*) FROM notifications WHERE kind = 'article'")
        .fetch_one(&app.db)
        .await
        .unwrap();
    let distinct: i64 =
        sqlx::query_scalar("SELECT count(DISTINCT recipient_id) FROM notifications WHERE kind = 'article'")
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!((told, distinct), (100, 100));
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs").fetch_one(&app.db).await.unwrap();
    assert_eq!(left, 0, "every job done and gone");
    // One job per effective write, each counted once.
    let (_, _, metrics) = crate::ops::http(app.admin_port, "GET", "/metrics", &[], "").await;
    for line in [
        r#"conduit_jobs_total{kind="notify.follow",outcome="succeeded"} 100"#,
        r#"conduit_jobs_total{kind="notify.favorite",outcome="succeeded"} 100"#,
        r#"conduit_jobs_total{kind="notify.article",outcome="succeeded"} 2"#,
        "conduit_job_duration_seconds_count 202",
        "conduit_jobs_running 0",
        r#"conduit_job_queue{state="dead"} 0"#,
        "conduit_job_oldest_queued_age_seconds ",
    ] {
        assert!(metrics.contains(line), "{line} is missing from:\n{metrics}");
    }

    // Marking read: the first ten, then everything up to 150.
    let ids: Vec<String> = (1..=10).map(|n| n.to_string()).collect();
    let marked = app.json("POST", "/api/notifications:markRead", Some(&author), Some(json!({"ids": ids}))).await;
    assert_eq!((marked.body["marked"].as_i64(), marked.body["unreadCount"].as_i64()), (Some(10), Some(190)));
    let marked = app.json("POST", "/api/notifications:markRead", Some(&author), Some(json!({"upTo": "150"}))).await;
    assert_eq!((marked.body["marked"].as_i64(), marked.body["unreadCount"].as_i64()), (Some(140), Some(50)));
    let unread = app.get("/api/notifications?unread=true&limit=100", Some(&author)).await;
    let unread = unread.body["notifications"].as_array().unwrap().clone();
    assert_eq!(unread.len(), 50);
    assert!(unread.iter().all(|n| n["read"] == false));
    let neither = app.json("POST", "/api/notifications:markRead", Some(&author), Some(json!({}))).await;
    assert_eq!(neither.status, 422, "{:?}", neither.body);
}

/// A streaming HTTP answer read piece by piece.
struct Stream {
    status: u16,
    body: axum::body::Body,
    buffer: BytesMut,
}

impl Stream {
    async fn open(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: Bytes) -> Self {
        let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
        let mut request = http::Request::builder().method(method).uri(format!("http://127.0.0.1:{port}{path}"));
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let response = client.request(request.body(Full::new(body)).unwrap()).await.unwrap();
        let status = response.status().as_u16();
        Self { status, body: axum::body::Body::new(response.into_body()), buffer: BytesMut::new() }
    }

    /// More bytes, or `None` at the end (or after `limit`).
    async fn more(&mut self, limit: Duration) -> Option<()> {
        loop {
            match tokio::time::timeout(limit, self.body.frame()).await.ok()?? {
                Ok(frame) => {
                    if let Ok(data) = frame.into_data() {
                        self.buffer.extend_from_slice(&data);
                        return Some(());
                    }
                }
                Err(_) => return None,
            }
        }
    }

    /// The next Server-Sent Event as (id, data).
    async fn event(&mut self, limit: Duration) -> Option<(Option<String>, Value)> {
        loop {
            if let Some(end) = self.buffer.windows(2).position(|w| w == b"\n\n") {
                let event = self.buffer.split_to(end + 2);
                let text = String::from_utf8_lossy(&event).into_owned();
                let id = text.lines().find_map(|l| l.strip_prefix("id: ")).map(str::to_owned);
                let data = text.lines().find_map(|l| l.strip_prefix("data: ")).unwrap_or("null");
                return Some((id, serde_json::from_str(data).unwrap()));
            }
            self.more(limit).await?;
        }
    }

    /// The id of the next SSE event that carries a notification
    /// (keep-alives, sent whenever the stream is quiet, are skipped).
    async fn next_id(&mut self, limit: Duration) -> Option<String> {
        loop {
            if let (Some(id), _) = self.event(limit).await? {
                return Some(id);
            }
        }
    }

    /// The id of the next NDJSON line that carries a notification.
    async fn next_line_id(&mut self, limit: Duration) -> Option<String> {
        loop {
            if let Some(id) = self.line(limit).await?["id"].as_str() {
                return Some(id.to_owned());
            }
        }
    }

    /// The next NDJSON line.
    async fn line(&mut self, limit: Duration) -> Option<Value> {
        loop {
            if let Some(end) = self.buffer.iter().position(|b| *b == b'\n') {
                let line = self.buffer.split_to(end + 1);
                return Some(serde_json::from_slice(&line[..end]).unwrap());
            }
            self.more(limit).await?;
        }
    }

    /// The next gRPC-Web data frame as a watch message (`None` at trailers).
    async fn grpc_web(&mut self, limit: Duration) -> Option<pb::WatchNotificationsResponse> {
        loop {
            if self.buffer.len() >= 5 {
                let len = u32::from_be_bytes(self.buffer[1..5].try_into().unwrap()) as usize;
                if self.buffer.len() >= 5 + len {
                    let flag = self.buffer[0];
                    self.buffer.advance(5);
                    let message = self.buffer.split_to(len);
                    if flag & 0x80 != 0 {
                        return None;
                    }
                    return Some(pb::WatchNotificationsResponse::decode(message.freeze()).unwrap());
                }
            }
            self.more(limit).await?;
        }
    }
}

/// A watch over SSE, with `Last-Event-ID` when resuming.
async fn sse_watch(port: u16, token: &str, last: Option<&str>) -> Stream {
    let auth = format!("Token {token}");
    let mut headers = vec![("authorization", auth.as_str()), ("accept", "text/event-stream")];
    if let Some(last) = last {
        headers.push(("last-event-id", last));
    }
    let stream = Stream::open(port, "GET", "/api/notifications:watch", &headers, Bytes::new()).await;
    assert_eq!(stream.status, 200);
    stream
}

const SECOND: Duration = Duration::from_secs(1);

#[tokio::test]
async fn a_notification_made_on_one_replica_reaches_watches_on_another_over_every_protocol() {
    let writer = spawn_app_with(|_| {}).await;
    let url = url_for(&writer.db_name);
    // The watching replica runs no workers: what it delivers was made elsewhere.
    let watcher = spawn_app_with(move |s| {
        s.database_url = conduit::config::Secret::from(url);
        s.jobs.concurrency = 0;
    })
    .await;
    let star = writer.register("star").await;
    let fans: Vec<String> = {
        let mut fans = Vec::new();
        for i in 0..5 {
            fans.push(writer.register(&format!("follower{i}")).await);
        }
        fans
    };
    let mut sse = sse_watch(watcher.port, &star, None).await;
    let auth = format!("Token {star}");
    let mut ndjson = Stream::open(
        watcher.port,
        "GET",
        "/api/notifications:watch",
        &[("authorization", auth.as_str())],
        Bytes::new(),
    )
    .await;
    let mut frame = vec![0u8];
    let request = pb::WatchNotificationsRequest::default().encode_to_vec();
    frame.extend_from_slice(&(request.len() as u32).to_be_bytes());
    frame.extend_from_slice(&request);
    let mut grpc_web = Stream::open(
        watcher.port,
        "POST",
        "/conduit.v1.Notifications/WatchNotifications",
        &[("authorization", auth.as_str()), ("content-type", "application/grpc-web+proto"), ("x-grpc-web", "1")],
        Bytes::from(frame),
    )
    .await;
    assert_eq!(grpc_web.status, 200);
    let mut grpc = pb::notifications_client::NotificationsClient::new(watcher.channel().await)
        .watch_notifications(authed(pb::WatchNotificationsRequest::default(), &star))
        .await
        .unwrap()
        .into_inner();
    tokio::time::sleep(Duration::from_millis(200)).await;

    for (n, fan) in fans.iter().enumerate() {
        let follow = writer.json("POST", "/api/profiles/star/follow", Some(fan), None).await;
        assert_eq!(follow.status, 200);
        let id = (n + 1).to_string();
        // Delivery time is measured by bench/background.py; here, delivery.
        let (event_id, data) = sse.event(5 * SECOND).await.expect("an SSE event");
        assert_eq!((event_id.as_deref(), data["id"].as_str()), (Some(id.as_str()), Some(id.as_str())));
        assert_eq!(data["notification"]["kind"], "NOTIFICATION_KIND_FOLLOW");
        assert_eq!(data["notification"]["actor"]["username"], format!("follower{n}"));
        let line = ndjson.line(5 * SECOND).await.expect("an NDJSON line");
        assert_eq!(line["id"].as_str(), Some(id.as_str()));
        let message = grpc_web.grpc_web(5 * SECOND).await.expect("a gRPC-Web message");
        assert_eq!(message.id, Some(n as i64 + 1));
        assert_eq!(message.notification.unwrap().actor.unwrap().username, format!("follower{n}"));
        let message = tokio::time::timeout(5 * SECOND, grpc.message()).await.unwrap().unwrap().unwrap();
        assert_eq!(message.notification.unwrap().kind(), pb::NotificationKind::Follow);
    }
    // Workers switched off on the watching replica: every job ran on the writer.
    let (_, _, watched) = crate::ops::http(watcher.admin_port, "GET", "/metrics", &[], "").await;
    assert!(!watched.contains("conduit_jobs_total{"), "{watched}");
    let (_, _, wrote) = crate::ops::http(writer.admin_port, "GET", "/metrics", &[], "").await;
    assert!(wrote.contains(r#"conduit_jobs_total{kind="notify.follow",outcome="succeeded"} 5"#), "{wrote}");
}

#[tokio::test]
async fn an_sse_client_resuming_with_last_event_id_misses_nothing_and_watches_are_bounded() {
    let app = spawn_app_with(|s| {
        s.watch_keep_alive = Duration::from_millis(300);
        s.watch_max_per_user = 2;
    })
    .await;
    let author = app.register("writer").await;
    let slug = app.article(&author, "Talked about", &[]).await;
    let reader = app.register("reader").await;
    let comment = |n: usize| {
        let (app, slug, reader) = (&app, slug.clone(), reader.clone());
        async move {
            let body = json!({"comment": {"body": format!("comment {n}")}});
            let reply = app.json("POST", &format!("/api/articles/{slug}/comments"), Some(&reader), Some(body)).await;
            assert_eq!(reply.status, 201);
        }
    };
    let mut first = sse_watch(app.port, &author, None).await;
    for n in 1..=2 {
        comment(n).await;
        assert_eq!(first.next_id(5 * SECOND).await, Some(n.to_string()));
    }
    // Quiet: a keep-alive without an id (the client's last id stays 2).
    let (id, data) = first.event(5 * SECOND).await.unwrap();
    assert_eq!((id, data), (None, json!({"id": null, "notification": null})));
    drop(first);

    // Three more while disconnected, then a reconnect saying where it was.
    for n in 3..=5 {
        comment(n).await;
    }
    eventually(Duration::from_secs(5), "five notifications", || async {
        app.get("/api/notifications?limit=1", Some(&author)).await.body["unreadCount"] == 5
    })
    .await;
    let mut resumed = sse_watch(app.port, &author, Some("2")).await;
    let mut ids = Vec::new();
    for _ in 3..=5 {
        ids.push(resumed.next_id(5 * SECOND).await.unwrap());
    }
    comment(6).await;
    ids.push(resumed.next_id(5 * SECOND).await.unwrap());
    assert_eq!(ids, ["3", "4", "5", "6"]);
    drop(resumed);
    // `after` does the same for clients that cannot set headers.
    let token = format!("Token {author}");
    // Opens a watch once the server has let go of closed ones (at most two).
    let watch = |path: &'static str, last: Option<&'static str>| {
        let token = token.clone();
        async move {
            let mut headers = vec![("authorization", token.as_str())];
            headers.extend(last.map(|last| ("last-event-id", last)));
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let stream = Stream::open(app.port, "GET", path, &headers, Bytes::new()).await;
                if stream.status != 429 || Instant::now() > deadline {
                    return stream;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let mut after = watch("/api/notifications:watch?after=4", None).await;
    assert_eq!(after.next_line_id(5 * SECOND).await.as_deref(), Some("5"));
    assert_eq!(after.next_line_id(5 * SECOND).await.as_deref(), Some("6"));
    drop(after);
    // An EventSource reconnecting keeps its URL's `after` and adds the
    // header: the later position wins.
    let mut both = watch("/api/notifications:watch?after=1", Some("5")).await;
    assert_eq!(both.next_line_id(5 * SECOND).await.as_deref(), Some("6"));
    drop(both);
    // A position from the future counts as now: what comes next arrives.
    let mut ahead = watch("/api/notifications:watch?after=1000", None).await;
    comment(7).await;
    assert_eq!(ahead.next_line_id(5 * SECOND).await.as_deref(), Some("7"));
    let second = watch("/api/notifications:watch", None).await;
    assert_eq!(second.status, 200);

    // Two watches are open: a third is refused; closing one frees a place.
    let third = app.get("/api/notifications:watch", Some(&author)).await;
    assert_eq!(third.status, 429, "{:?}", third.body);
    drop(ahead);
    eventually(Duration::from_secs(3), "a free watch", || async {
        let mut again = Stream::open(
            app.port,
            "GET",
            "/api/notifications:watch",
            &[("authorization", &format!("Token {author}")), ("accept", "text/event-stream")],
            Bytes::new(),
        )
        .await;
        again.status == 200 && again.event(5 * SECOND).await.is_some()
    })
    .await;
    let bad = Stream::open(
        app.port,
        "GET",
        "/api/notifications:watch",
        &[("authorization", &format!("Token {author}")), ("last-event-id", "soon")],
        Bytes::new(),
    )
    .await;
    assert_eq!(bad.status, 422);
    let anonymous = app.get("/api/notifications:watch", None).await;
    assert_eq!(anonymous.status, 401);
}

/// Backends of `database` running or holding an export's cursor.
async fn export_sessions(db: &PgPool, database: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid() \
         AND (query LIKE 'FETCH % FROM export' OR query LIKE 'DECLARE export %') \
         AND state IN ('active', 'idle in transaction')",
    )
    .bind(database)
    .fetch_one(db)
    .await
    .unwrap()
}

#[tokio::test]
async fn an_export_streams_every_match_and_stops_its_query_when_the_client_leaves() {
    let app = spawn_app_with(|s| {
        s.exports = conduit::domain::Exports { batch: 50, max_concurrent: 1, stall_timeout: Duration::from_secs(2) }
    })
    .await;
    app.register("prolific").await;
    let other = app.register("quiet").await;
    app.article(&other, "Not mine", &["x"]).await;
    // Many articles quickly, by SQL: the export reads whatever is there.
    sqlx::query(
        "INSERT INTO articles (slug, title, description, body, tag_list, author_id, created_at) \
         SELECT 'bulk-' || n, 'Bulk ' || n, 'about ' || n, repeat('text ', 1000), \
                CASE WHEN n % 2 = 0 THEN ARRAY['even'] ELSE ARRAY[]::text[] END, \
                (SELECT id FROM users WHERE username = 'prolific'), now() - n * interval '1 second' \
         FROM generate_series(1, 6000) AS n",
    )
    .execute(&app.db)
    .await
    .unwrap();
    sqlx::query("INSERT INTO tags (name) VALUES ('even') ON CONFLICT DO NOTHING; ").execute(&app.db).await.unwrap();
    sqlx::query(
        "INSERT INTO article_tags (tag_id, article_id, created_at) \
         SELECT (SELECT id FROM tags WHERE name = 'even'), id, created_at FROM articles WHERE 'even' = ANY(tag_list)",
    )
    .execute(&app.db)
    .await
    .unwrap();

    // Everything by an author, newest first, bodies included.
    let mut export = Stream::open(app.port, "GET", "/api/articles:export?author=prolific", &[], Bytes::new()).await;
    assert_eq!(export.status, 200);
    let mut slugs = Vec::new();
    while let Some(line) = export.line(5 * SECOND).await {
        assert_eq!(line["body"].as_str().map(str::len), Some(5000));
        slugs.push(line["slug"].as_str().unwrap().to_owned());
    }
    assert_eq!(slugs.len(), 6000);
    assert_eq!(slugs[0], "bulk-1");
    assert_eq!(slugs[5999], "bulk-6000");
    // A tag filter over gRPC's server stream.
    let mut grpc = app
        .articles()
        .await
        .export_articles(pb::ExportArticlesRequest { tag: Some("even".into()), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let mut count = 0;
    while let Some(article) = grpc.message().await.unwrap() {
        assert!(article.tag_list == ["even"]);
        count += 1;
    }
    assert_eq!(count, 3000);

    // A client that reads a little and leaves: its query is gone soon after.
    // (30 MB to send: more than socket buffers hold, so the export is
    // still reading when the client leaves.)
    let admin = conduit::postgres::connect(&url_for("postgres"), 1, Duration::from_secs(5)).await.unwrap();
    let mut export = Stream::open(app.port, "GET", "/api/articles:export", &[], Bytes::new()).await;
    export.line(5 * SECOND).await.unwrap();
    assert_eq!(export_sessions(&admin, &app.db_name).await, 1, "the export holds its cursor while the client reads");
    // One export at a time here: a second one is refused, to retry later.
    let second = app.get("/api/articles:export", None).await;
    assert_eq!(second.status, 503, "{:?}", second.body);
    assert!(second.headers.contains_key("retry-after"));
    drop(export);
    eventually(Duration::from_secs(5), "the export's query to stop", || async {
        export_sessions(&admin, &app.db_name).await == 0
    })
    .await;
    admin.close().await;

    // A client that stops reading for longer than the stall timeout (2 s
    // here): the export ends, and says so after what was sent.
    let mut stalled = loop {
        let stream = Stream::open(app.port, "GET", "/api/articles:export", &[], Bytes::new()).await;
        if stream.status == 200 {
            break stream;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    stalled.line(5 * SECOND).await.unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (mut articles, mut last) = (1, Value::Null);
    while let Some(line) = stalled.line(5 * SECOND).await {
        articles += 1;
        last = line;
    }
    assert!(articles < 6001, "the export went on after the stall ({articles} lines)");
    let message = last["error"]["errors"]["body"][0].as_str().unwrap_or_default();
    assert!(message.contains("the client read nothing for 2 s"), "{last}");
}
