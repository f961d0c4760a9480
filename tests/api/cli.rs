//! The `conduit` binary: help, refusal to start, `migrate`.

use std::process::Command;

use sqlx::Connection;

use crate::helpers::{create_database, drop_database};

fn conduit(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_conduit"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .output()
        .expect("the binary runs")
}

#[test]
fn help_explains_every_setting() {
    let out = conduit(&["--help"], &[]);
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for needle in [
        "serve",
        "migrate",
        "DATABASE_URL",
        "CONDUIT_LISTEN",
        "JWT_SECRET",
        "JWT_TTL",
        "BODY_LIMIT",
        "LOG_LEVEL",
        "LOG_FORMAT",
        "DB_MAX_CONNECTIONS",
        "DB_ACQUIRE_TIMEOUT",
        "PASSWORD_HASH_CONCURRENCY",
        "MIGRATE_ON_START",
        "CORS_ALLOWED_ORIGINS",
    ] {
        assert!(help.contains(needle), "--help does not mention {needle}:\n{help}");
    }
}

#[test]
fn serve_refuses_to_start_with_one_clear_line() {
    let secret = ("JWT_SECRET", "0123456789abcdef0123456789abcdef");
    let url = ("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres");
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[secret], "DATABASE_URL (or --database-url) is required"),
        (&[url], "JWT_SECRET (or --jwt-secret) is required"),
        (&[url, ("JWT_SECRET", "short")], "JWT_SECRET must be at least 32 bytes long"),
        (&[url, secret, ("DATABASE_URL", "mysql://x")], "DATABASE_URL must be a postgres:// URL"),
        (&[url, secret, ("JWT_TTL", "soon")], "invalid value 'soon' for '--jwt-ttl <JWT_TTL>'"),
        (&[url, secret, ("JWT_TTL", "99999999999d")], "JWT_TTL must be longer than zero and at most 366d"),
        (&[url, secret, ("CONDUIT_LISTEN", "nowhere")], "invalid value 'nowhere' for '--listen <LISTEN>'"),
    ];
    for (env, message) in cases {
        let out = conduit(&["serve"], env);
        assert_eq!(out.status.code(), Some(2), "{env:?}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(stderr.starts_with("conduit: ") && stderr.contains(message), "{env:?}: {stderr}");
    }
}

#[tokio::test]
async fn migrate_applies_the_schema_and_exits() {
    let name = format!("conduit_test_migrate_{}", std::process::id());
    drop_database(&name).await;
    let url = create_database(&name).await;
    let out = conduit(&["migrate"], &[("DATABASE_URL", &url), ("LOG_LEVEL", "error")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut db = sqlx::PgConnection::connect(&url).await.unwrap();
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'
         AND table_name IN ('users', 'follows', 'articles', 'tags', 'article_tags', 'favorites', 'comments')",
    )
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert_eq!(tables, 7);
    // Running it again is a no-op.
    assert!(conduit(&["migrate"], &[("DATABASE_URL", &url)]).status.success());
    db.close().await.unwrap();
    drop_database(&name).await;
}
