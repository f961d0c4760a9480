//! The `conduit` binary: help, refusal to start, `migrate`.

use std::process::Command;

use sqlx::Connection;

use crate::helpers::{create_database, drop_database};

/// The binary with `args`, only `PATH` and `env` in its environment.
fn conduit_command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_conduit"));
    command.args(args).env_clear().env("PATH", std::env::var("PATH").unwrap_or_default()).envs(env.iter().copied());
    command
}

fn conduit(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    conduit_command(args, env).output().expect("the binary runs")
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
        "DATABASE_DIRECT_URL",
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
        "CONDUIT_DATA_DIR",
        "CONDUIT_PG_BIN",
        "HEADER_READ_TIMEOUT",
        "MAX_HEADER_BYTES",
        "DRAIN_DELAY",
        "DRAIN_TIMEOUT",
        "TRUSTED_PROXIES",
    ] {
        assert!(help.contains(needle), "--help does not mention {needle}:\n{help}");
    }
}

#[test]
fn serve_refuses_to_start_with_one_clear_line() {
    let secret = ("JWT_SECRET", "0123456789abcdef0123456789abcdef");
    let url = ("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres");
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[url], "JWT_SECRET (or --jwt-secret) is required"),
        (&[url, ("JWT_SECRET", "short")], "JWT_SECRET must be at least 32 bytes long"),
        (&[url, secret, ("DATABASE_URL", "mysql://x")], "DATABASE_URL must be a postgres:// URL"),
        (&[url, secret, ("DATABASE_DIRECT_URL", "mysql://x")], "DATABASE_DIRECT_URL must be a postgres:// URL"),
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
    // Running it again is a no-op, and says nothing of the tables that already exist.
    let again = conduit(&["migrate"], &[("DATABASE_URL", &url)]);
    assert!(again.status.success());
    let log = String::from_utf8_lossy(&again.stderr);
    assert!(!log.contains("already exists"), "a harmless NOTICE is logged: {log}");
    // A newer release's migration is there (a rollback, or the previous
    // release's pods starting during a rollout): this release's init
    // container still succeeds, applying nothing, and serves.
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
         VALUES (29991231000000, 'a newer release', true, '\\x00', 1)",
    )
    .execute(&mut db)
    .await
    .unwrap();
    let older = conduit(&["migrate"], &[("DATABASE_URL", &url)]);
    assert!(
        older.status.success(),
        "an older release refused a newer schema: {}",
        String::from_utf8_lossy(&older.stderr)
    );
    db.close().await.unwrap();
    drop_database(&name).await;
}

/// A listen address already taken stops the start with an error naming the
/// setting to change, for either listener.
#[tokio::test]
async fn a_taken_port_names_the_setting_that_chose_it() {
    let name = format!("conduit_test_taken_{}", std::process::id());
    drop_database(&name).await;
    let url = create_database(&name).await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let cases = [
        ("CONDUIT_ADMIN_LISTEN", "127.0.0.1:0", "CONDUIT_ADMIN_LISTEN or --admin-listen"),
        ("CONDUIT_LISTEN", "127.0.0.1:0", "CONDUIT_LISTEN or --listen"),
    ];
    for (setting, other, named) in cases {
        let other_setting = if setting == "CONDUIT_LISTEN" { "CONDUIT_ADMIN_LISTEN" } else { "CONDUIT_LISTEN" };
        let env = [
            ("DATABASE_URL", url.as_str()),
            ("JWT_SECRET", "0123456789abcdef0123456789abcdef"),
            (setting, address.as_str()),
            (other_setting, other),
            ("LOG_LEVEL", "error"),
        ];
        let out = conduit(&["serve"], &env);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{setting}: started on a taken port");
        assert!(stderr.contains(&format!("cannot listen on {address} ({named})")), "{setting}: {stderr}");
    }
    // Found before anything slow starts: the private database is not even created.
    let data = std::env::temp_dir().join(format!("conduit-test-taken-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let env = [
        ("CONDUIT_DATA_DIR", data.to_str().unwrap()),
        ("CONDUIT_LISTEN", address.as_str()),
        ("CONDUIT_ADMIN_LISTEN", "127.0.0.1:0"),
    ];
    let out = conduit(&["serve"], &env);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("(CONDUIT_LISTEN or --listen)"), "{stderr}");
    assert!(!data.join("postgres").exists(), "PostgreSQL was started before the port was checked");
    let _ = std::fs::remove_dir_all(&data);
    drop(taken);
    drop_database(&name).await;
}

/// One HTTP/1.1 exchange on a new connection: (status, head, body).
fn exchange(port: u16, request: &str) -> (u16, String, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, head.to_owned(), body.to_owned())
}

fn json_request(method: &str, path: &str, headers: &str, body: &str) -> String {
    format!(
        "{method} {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-type: application/json\r\n{headers}content-length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// A full run of the binary with JSON logs: one line per request with its
/// route, status, request id and user, and no password, token or
/// `authorization` anywhere in the output.
#[tokio::test]
async fn request_logs_are_structured_and_never_hold_secrets() {
    let (url, name) = {
        let name = format!("conduit_logs_{}", std::process::id());
        (create_database(&name).await, name)
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new(env!("CARGO_BIN_EXE_conduit"))
        .arg("serve")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs([
            ("DATABASE_URL", url.as_str()),
            ("JWT_SECRET", "logs-secret-logs-secret-logs-secret-0"),
            ("CONDUIT_LISTEN", &format!("127.0.0.1:{port}")),
            ("CONDUIT_ADMIN_LISTEN", "127.0.0.1:0"),
            ("LOG_FORMAT", "json"),
            ("LOG_LEVEL", "info,conduit=debug"),
            ("DRAIN_DELAY", "0s"),
        ])
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "the server did not start");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let password = "correct-horse-battery-staple";
    let body = format!(r#"{{"user":{{"username":"logger","email":"logger@example.com","password":"{password}"}}}}"#);
    let (status, _, answer) = exchange(port, &json_request("POST", "/api/users", "", &body));
    assert_eq!(status, 201, "{answer}");
    let token =
        serde_json::from_str::<serde_json::Value>(&answer).unwrap()["user"]["token"].as_str().unwrap().to_owned();
    let login = format!(r#"{{"user":{{"email":"logger@example.com","password":"{password}"}}}}"#);
    assert_eq!(exchange(port, &json_request("POST", "/api/users/login", "", &login)).0, 200);
    let auth = format!(
        "authorization: Token {token}\r\nx-request-id: trace-me-42\r\n\
         traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n"
    );
    let (status, head, _) = exchange(port, &json_request("GET", "/api/user", &auth, ""));
    assert_eq!(status, 200);
    assert!(head.to_lowercase().contains("x-request-id: trace-me-42"), "the request id is echoed: {head}");
    let connect = format!("authorization: Token {token}\r\n");
    assert_eq!(exchange(port, &json_request("POST", "/conduit.v1.Users/GetCurrentUser", &connect, "{}")).0, 200);

    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let output = tokio::task::spawn_blocking(move || child.wait_with_output()).await.unwrap().unwrap();
    drop_database(&name).await;
    let logs = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    for secret in [password, token.as_str(), "authorization", "Authorization"] {
        assert!(!logs.contains(secret), "{secret:?} appears in the logs:\n{logs}");
    }
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|l: &serde_json::Value| l["fields"]["message"] == "request")
        .collect();
    let me = lines.iter().find(|l| l["fields"]["request_id"] == "trace-me-42").expect("a line for GET /api/user");
    assert_eq!(me["fields"]["route"], "/api/user");
    assert_eq!(me["fields"]["rpc"], "/conduit.v1.Users/GetCurrentUser");
    assert_eq!((me["fields"]["protocol"].as_str(), me["fields"]["status"].as_u64()), (Some("json"), Some(200)));
    assert!(me["fields"]["user_id"].as_i64().is_some(), "{me}");
    assert!(me["fields"]["latency_ms"].as_f64().is_some(), "{me}");
    assert_eq!(me["fields"]["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736", "the caller's trace id: {me}");
    let connect = lines.iter().find(|l| l["fields"]["protocol"] == "connect").expect("a Connect line");
    assert!(connect["fields"]["request_id"].as_str().is_some_and(|id| id.len() >= 16), "{connect}");
    assert_eq!(lines.len(), 4, "one line per request: {lines:?}");
}

/// docs/configuration.md is checked against `--help`, so it cannot drift:
/// every setting the binary takes has a row with its variable, its flag
/// and its default, and every row with a flag names a setting the binary
/// takes.
#[test]
fn the_configuration_reference_matches_help() {
    let out = conduit(&["--help"], &[]);
    let help = String::from_utf8(out.stdout).unwrap();
    // One entry per option: its flag, variable and default, the lines of each joined.
    let mut options = Vec::new();
    for block in help.split("\n      --").skip(1) {
        let text = block.split_whitespace().collect::<Vec<_>>().join(" ");
        let flag = format!("--{}", text.split([' ', '=']).next().unwrap());
        let env = text.split("[env: ").nth(1).map(|rest| rest.split([']', '=']).next().unwrap().to_owned());
        let default = text.split("[default: ").nth(1).map(|rest| rest.split(']').next().unwrap().to_owned());
        if let Some(env) = env {
            options.push((flag, env, default));
        }
    }
    assert!(options.len() > 40, "the options of --help were read: {options:?}");

    let root = env!("CARGO_MANIFEST_DIR");
    let page = std::fs::read_to_string(format!("{root}/docs/configuration.md")).unwrap();
    let rows: Vec<Vec<&str>> = page
        .lines()
        .filter(|line| line.starts_with("| `"))
        .map(|line| line.trim_matches('|').split(" | ").map(str::trim).collect())
        .collect();
    for (flag, env, default) in &options {
        let row = rows
            .iter()
            .find(|row| row[0].split(", ").any(|cell| cell.trim_matches('`') == env))
            .unwrap_or_else(|| panic!("docs/configuration.md has no row for {env} ({flag})"));
        assert!(row[1].contains(&format!("`{flag}`")), "{env}'s row names {flag}: {row:?}");
        match default.as_deref() {
            None => {}
            Some("" | "\"\"") => assert!(row[2].starts_with("none"), "{env}'s row gives no default: {row:?}"),
            Some(default) => {
                assert!(row[2].contains(&format!("`{default}`")), "{env}'s row gives the default {default}: {row:?}")
            }
        }
    }
    for row in rows.iter().filter(|row| row[1].starts_with("`--")) {
        for flag in row[1].split(", ") {
            let flag = flag.trim_matches('`');
            assert!(
                options.iter().any(|(f, ..)| f == flag),
                "docs/configuration.md names {flag}, which --help does not"
            );
        }
    }
}

/// A child process killed when dropped, so that a failing test leaves no
/// server behind (holding the test harness's output open).
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until `port` accepts connections, at most `seconds`.
fn wait_for_port(port: u16, seconds: u64) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    while std::time::Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    false
}

/// Waits for `child` to exit, at most `seconds`; its exit code if it did.
fn exit_within(child: &mut std::process::Child, seconds: u64) -> Option<Option<i32>> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    while std::time::Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status.code());
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn interrupt(pid: u32) {
    assert!(Command::new("kill").args(["-INT", &pid.to_string()]).status().unwrap().success());
}

/// A second Ctrl-C exits at once, whatever DRAIN_DELAY is left.
#[tokio::test]
async fn a_second_ctrl_c_exits_at_once() {
    let name = format!("conduit_test_twice_{}", std::process::id());
    drop_database(&name).await;
    let url = create_database(&name).await;
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let env = [
        ("DATABASE_URL", url.as_str()),
        ("JWT_SECRET", "0123456789abcdef0123456789abcdef"),
        ("CONDUIT_LISTEN", listen.as_str()),
        ("CONDUIT_ADMIN_LISTEN", "127.0.0.1:0"),
        ("DRAIN_DELAY", "60s"),
        ("LOG_LEVEL", "warn"),
    ];
    let mut child = conduit_command(&["serve"], &env).stdin(std::process::Stdio::null()).spawn().unwrap();
    assert!(wait_for_port(port, 60), "conduit serves");
    interrupt(child.id());
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(child.try_wait().unwrap(), None, "the first Ctrl-C drains for DRAIN_DELAY");
    interrupt(child.id());
    assert_eq!(exit_within(&mut child, 10), Some(Some(130)), "the second Ctrl-C exits at once");
    drop_database(&name).await;
}

/// At a terminal, with the private database, Ctrl-C stops without waiting
/// for DRAIN_DELAY (load balancers are what it waits for).
#[test]
fn at_a_terminal_with_the_private_database_ctrl_c_stops_at_once() {
    let data = std::env::temp_dir().join(format!("conduit-test-tty-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let port = free_port();
    // `script` gives the command a terminal for its standard input.
    let command = format!("exec {} serve", env!("CARGO_BIN_EXE_conduit"));
    let mut script = Command::new("script")
        .args(["-qfec", &command, "/dev/null"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("SHELL", "/bin/sh")
        .env("CONDUIT_DATA_DIR", &data)
        .env("CONDUIT_LISTEN", format!("127.0.0.1:{port}"))
        .env("CONDUIT_ADMIN_LISTEN", "127.0.0.1:0")
        .env("DRAIN_DELAY", "60s")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("script (util-linux) runs");
    assert!(wait_for_port(port, 120), "conduit serves on its private database");
    let children = Command::new("pgrep").args(["-P", &script.id().to_string()]).output().unwrap();
    let pid: u32 = String::from_utf8_lossy(&children.stdout).lines().next().expect("conduit runs").parse().unwrap();
    let asked = std::time::Instant::now();
    interrupt(pid);
    let exited = exit_within(&mut script, 30);
    assert!(exited.is_some(), "stopped within 30 s of Ctrl-C, not after DRAIN_DELAY's 60 s");
    assert!(asked.elapsed() < std::time::Duration::from_secs(30));
    let _ = std::fs::remove_dir_all(&data);
}

/// One instance per data directory: with no DATABASE_URL, a second `serve`
/// on the directory another conduit holds stops at once, naming the
/// directory and the running one's address; `migrate` and `jobs list` join
/// the running one's database and say so; once it stops, they start the
/// private server themselves and stop it again.
#[test]
fn a_data_directory_has_one_instance_and_the_other_commands_join_it() {
    let data = std::env::temp_dir().join(format!("conduit-test-shared-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let data_dir = data.to_string_lossy().into_owned();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    fn on<'a>(data: &'a str, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
        let mut env = vec![("CONDUIT_DATA_DIR", data), ("CONDUIT_ADMIN_LISTEN", "127.0.0.1:0")];
        env.extend_from_slice(extra);
        env
    }
    let private = |extra: &[(&'static str, &'static str)]| on(&data_dir, extra);
    let mut first = Running(
        conduit_command(&["serve"], &on(&data_dir, &[("CONDUIT_LISTEN", &listen), ("LOG_LEVEL", "warn")]))
            .stdin(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    assert!(wait_for_port(port, 120), "the first conduit serves");

    let second = conduit(&["serve"], &private(&[("CONDUIT_LISTEN", "127.0.0.1:0")]));
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(2), "the second conduit refuses: {stderr}");
    assert!(stderr.contains(&data_dir) && stderr.contains(&format!(":{port}")), "names both: {stderr}");
    assert!(!stderr.contains("private PostgreSQL stopped"), "it stopped nothing: {stderr}");

    let migrate = conduit(&["migrate"], &private(&[("LOG_LEVEL", "info"), ("LOG_FORMAT", "text")]));
    let log = String::from_utf8_lossy(&migrate.stderr);
    assert!(migrate.status.success(), "migrate joins: {log}");
    assert!(log.contains("joining the private PostgreSQL"), "and says so: {log}");
    let jobs = conduit(&["jobs", "list"], &private(&[("LOG_LEVEL", "warn")]));
    assert!(jobs.status.success(), "jobs list joins: {}", String::from_utf8_lossy(&jobs.stderr));
    assert!(String::from_utf8_lossy(&jobs.stdout).contains("job(s)"));
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(), "the first conduit still serves");

    // `demo` joins too, and its printed commands call the running conduit
    // with a token it accepts.
    let demo = conduit(&["demo"], &private(&[("LOG_LEVEL", "warn")]));
    let printed = String::from_utf8_lossy(&demo.stdout);
    assert!(demo.status.success(), "demo joins: {printed}{}", String::from_utf8_lossy(&demo.stderr));
    let curl = printed.lines().map(str::trim).find(|l| l.starts_with("curl ")).expect("a curl command is printed");
    assert!(curl.contains(&format!("http://127.0.0.1:{port}/api/articles/feed")), "the running one's URL: {curl}");
    let token = curl.split("Token ").nth(1).unwrap().trim_end_matches('\'');
    let feed =
        exchange(port, &json_request("GET", "/api/articles/feed", &format!("authorization: Token {token}\r\n"), ""));
    assert_eq!(feed.0, 200, "{feed:?}");
    let feed: serde_json::Value = serde_json::from_str(&feed.2).unwrap();
    assert_eq!(feed["articlesCount"], 4, "amara follows chen and dana, two articles each: {feed}");
    assert!(printed.lines().any(|l| l.trim().starts_with("npx -y @bufbuild/buf curl --protocol grpc")), "{printed}");

    assert!(Command::new("kill").args(["-TERM", &first.0.id().to_string()]).status().unwrap().success());
    assert!(exit_within(&mut first.0, 60).is_some(), "the first conduit stops");
    let alone = conduit(&["migrate"], &private(&[("LOG_LEVEL", "info"), ("LOG_FORMAT", "text")]));
    let log = String::from_utf8_lossy(&alone.stderr);
    assert!(alone.status.success(), "migrate alone starts the private server: {log}");
    assert!(log.contains("private PostgreSQL stopped"), "and stops it: {log}");
    let _ = std::fs::remove_dir_all(&data);
}

/// `conduit demo` on a database of one's own: the data set once, whatever
/// the number of runs; a clear refusal without the token secret.
#[tokio::test]
async fn demo_seeds_once_and_prints_a_working_token() {
    let name = format!("conduit_test_demo_{}", std::process::id());
    drop_database(&name).await;
    let url = create_database(&name).await;
    let secret = ("JWT_SECRET", "0123456789abcdef0123456789abcdef");
    let env = [("DATABASE_URL", url.as_str()), secret, ("LOG_LEVEL", "warn")];

    let refused = conduit(&["demo"], &env[..1]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("JWT_SECRET (or --jwt-secret) is required"), "{stderr}");

    let first = conduit(&["demo", "--url", "http://conduit.test:1234/"], &env);
    let printed = String::from_utf8_lossy(&first.stdout);
    assert!(first.status.success(), "{printed}{}", String::from_utf8_lossy(&first.stderr));
    assert!(printed.contains("(39 added now"), "{printed}");
    assert!(
        printed.contains("curl -s http://conduit.test:1234/api/articles/feed -H 'authorization: Token ey"),
        "{printed}"
    );
    let mut db = sqlx::PgConnection::connect(&url).await.unwrap();
    let seeded = demo_counts(&mut db).await;
    assert_eq!(&seeded[..5], &[4, 8, 9, 8, 10], "users, articles, comments, follows, favorites");
    assert!(seeded[5] >= 8, "every article is tagged: {seeded:?}");

    let again = conduit(&["demo"], &env);
    let printed = String::from_utf8_lossy(&again.stdout);
    assert!(again.status.success() && printed.contains("(0 added now"), "{printed}");
    assert!(printed.contains("http://localhost:8080/api/articles/feed"), "the default URL: {printed}");
    assert_eq!(demo_counts(&mut db).await, seeded, "a second run adds nothing");
    db.close().await.unwrap();
    drop_database(&name).await;
}

/// Users, articles, comments, follows, favorites and article tags in `db`.
async fn demo_counts(db: &mut sqlx::PgConnection) -> Vec<i64> {
    let statement = "SELECT ARRAY[(SELECT count(*) FROM users), (SELECT count(*) FROM articles), \
         (SELECT count(*) FROM comments), (SELECT count(*) FROM follows), (SELECT count(*) FROM favorites), \
         (SELECT count(*) FROM article_tags)]";
    sqlx::query_scalar(statement).fetch_one(db).await.unwrap()
}
