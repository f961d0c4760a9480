//! The `conduit` binary: settings → logging → build → serve until a stop signal.

use conduit::config::Secret;
use conduit::config::{Cli, Command, JobsCommand};
use conduit::postgres::private::{self, LocalPostgres};
use conduit::postgres::{connect, migrator};
use conduit::startup::Application;

/// mimalloc: a request allocates and frees hundreds of small blocks, which
/// cost glibc's allocator about a sixth of the request's instructions.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Prints one line and exits with status 2: the service refuses to start.
fn refuse(message: impl std::fmt::Display) -> ! {
    eprintln!("conduit: {message}");
    std::process::exit(2)
}

/// Makes glibc serve large allocations (argon2's 19 MiB blocks) from
/// `mmap` and give them back on free. Its default threshold adapts upwards
/// after the first such free, after which every hash leaves its blocks in
/// a heap arena: 80 concurrent logins grew the process to 1.4 GB.
fn return_large_allocations() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

/// Starts the private PostgreSQL (no DATABASE_URL) and points `settings`
/// at it; a missing JWT_SECRET is generated and kept beside it. `serve`
/// must hold the data directory; the commands that use the database and
/// exit (`join`) share the server of the conduit that holds it, if any.
async fn start_private_database(settings: &mut conduit::config::Settings, join: bool) -> LocalPostgres {
    let root = private::data_dir(settings.data_dir.as_deref());
    let bin = private::find_binaries(settings.pg_bin.as_deref()).unwrap_or_else(|e| refuse(e));
    let local =
        if join { LocalPostgres::join_or_start(&bin, &root).await } else { LocalPostgres::start(&bin, &root).await }
            .unwrap_or_else(|e| refuse(e));
    if local.started_here() {
        tracing::info!(
            data = %local.data_dir().display(),
            server = %bin.display(),
            "no DATABASE_URL: using a private PostgreSQL on a Unix socket (set DATABASE_URL to use your own server)"
        );
    }
    settings.database_url = Some(Secret::from(local.url()));
    if settings.jwt_secret.is_none() {
        match private::jwt_secret(&root) {
            Ok(secret) => settings.jwt_secret = Some(Secret::from(secret)),
            Err(e) => {
                local.stop().await;
                refuse(e)
            }
        }
    }
    local
}

/// `settings` with their database: with no DATABASE_URL, the private
/// PostgreSQL, joined (`join`, for commands that use it and exit) or started.
async fn database_settings(
    settings: &conduit::config::Settings,
    join: bool,
) -> (conduit::config::Settings, Option<LocalPostgres>) {
    let mut settings = settings.clone();
    let local = match settings.database_url {
        Some(_) => None,
        None => Some(start_private_database(&mut settings, join).await),
    };
    (settings, local)
}

/// The pool of a command that uses the database and exits, with the
/// settings it was made from and the private server it started or joined,
/// if any ([`close_command_pool`] ends both).
async fn command_pool(
    settings: &conduit::config::Settings,
    connections: u32,
) -> (conduit::config::Settings, sqlx::PgPool, Option<LocalPostgres>) {
    let (settings, local) = database_settings(settings, true).await;
    let url = settings.require_database_url().unwrap_or_else(|e| refuse(e));
    let db = connect(url.expose(), connections, settings.db_acquire_timeout).await.unwrap_or_else(|e| refuse(e));
    (settings, db, local)
}

/// Closes a command's pool, then the private server if it started one.
async fn close_command_pool(db: sqlx::PgPool, local: Option<LocalPostgres>) {
    db.close().await;
    stop_private_database(local).await;
}

/// Stops the private PostgreSQL if this process started it.
async fn stop_private_database(local: Option<LocalPostgres>) {
    if let Some(local) = local {
        local.stop().await;
    }
}

/// Says where the service listens, for a person starting it; returns the
/// base URL.
fn announce(settings: &conduit::config::ServeSettings, app: &Application) -> String {
    let host = |addr: std::net::SocketAddr| match addr.ip() {
        ip if ip.is_unspecified() => "localhost".to_owned(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    };
    let base = format!("http://{}:{}", host(settings.listen), app.port());
    tracing::info!(
        listen = %settings.listen,
        api = %format!("{base}/api"),
        docs = %format!("{base}/docs"),
        admin = %format!("http://{}:{}", host(settings.admin_listen), app.admin_port()),
        "serving gRPC, gRPC-Web, Connect and JSON"
    );
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        eprintln!(
            "\n  conduit is serving on {base}\n  API docs:  {base}/docs\n  probes and metrics: http://{}:{}/metrics\n",
            host(settings.admin_listen),
            app.admin_port()
        );
    }
    base
}

/// `conduit jobs …`: prints to stdout what it did.
async fn jobs_command(db: &sqlx::PgPool, action: JobsCommand) -> Result<(), sqlx::Error> {
    use conduit::postgres::jobs;
    match action {
        JobsCommand::List { state, limit } => {
            let rows = jobs::list(db, &state, limit).await?;
            println!(
                "{:>10}  {:<16} {:<8} {:>8}  {:<25}  {:<25}  LAST ERROR",
                "ID", "KIND", "STATE", "ATTEMPTS", "CREATED", "RUN AT"
            );
            for job in &rows {
                let attempts = match job.max_attempts {
                    Some(max) => format!("{}/{max}", job.attempts),
                    None => job.attempts.to_string(),
                };
                println!(
                    "{:>10}  {:<16} {:<8} {:>8}  {:<25}  {:<25}  {}",
                    job.id,
                    job.kind,
                    job.state,
                    attempts,
                    job.created_at.to_string(),
                    job.run_at.to_string(),
                    job.last_error.as_deref().unwrap_or("")
                );
            }
            println!("{} {state} job(s)", rows.len());
        }
        JobsCommand::Requeue { ids, all_dead } => {
            let n = jobs::requeue(db, if all_dead { None } else { Some(&ids) }).await?;
            println!("re-queued {n} dead job(s)");
        }
        JobsCommand::Canary { count, sleep_ms, fail_attempts } => {
            let n = jobs::Canary::enqueue(db, count, sleep_ms, fail_attempts).await?;
            println!("enqueued {n} canary job(s)");
        }
    }
    Ok(())
}

/// `conduit demo`: migrates, adds what is missing of the demo data, and
/// prints two commands to try with a demo user's token.
async fn demo(settings: &conduit::config::Settings, url: Option<String>) {
    // It migrates: every statement goes to PostgreSQL directly.
    settings.require_direct_url().unwrap_or_else(|e| refuse(e));
    let (settings, db, local) = command_pool(&settings.direct(), 2).await;
    let seeded = async {
        // Tokens must verify where the API checks them: same secret, same rules.
        let secret = settings.require_jwt_secret()?;
        migrator().run(&db).await.map_err(|e| e.to_string())?;
        conduit::demo::seed(&db, secret.expose().as_bytes(), settings.jwt_ttl).await
    }
    .await;
    let joined = local.as_ref().and_then(LocalPostgres::joined_url);
    let started_here = local.as_ref().is_some_and(LocalPostgres::started_here);
    close_command_pool(db, local).await;
    let seeded = seeded.unwrap_or_else(|e| refuse(format!("demo: {e}")));
    let base = url.or(joined).unwrap_or_else(|| "http://localhost:8080".to_owned());
    let base = base.trim_end_matches('/');
    let [users, articles, comments, follows, favorites] = seeded.counts;
    println!(
        "Demo data: {users} users, {articles} articles, {comments} comments, {follows} follows and {favorites} \
         favorites ({} added now; running `conduit demo` again adds nothing).",
        seeded.added
    );
    println!(
        "The demo users log in as NAME@example.com with the password {} (NAME: amara, bruno, chen or dana).",
        conduit::demo::PASSWORD
    );
    if started_here {
        println!("No conduit serves this data directory yet: start one (`cargo run --release`), then try:");
    } else {
        println!("Try {}'s feed over JSON, then over gRPC (the token is a fresh one of {0}'s):", seeded.username);
    }
    let auth = format!("'authorization: Token {}'", seeded.token);
    let h2c = if base.starts_with("http://") { " --http2-prior-knowledge" } else { "" };
    println!("\n  curl -s {base}/api/articles/feed -H {auth}\n");
    println!(
        "  npx -y @bufbuild/buf curl --protocol grpc{h2c} -H {auth} -d '{{}}' {base}/conduit.v1.Articles/FeedArticles\n"
    );
}

/// Raises the soft open-files limit to the hard one: every connection is a
/// descriptor, and distributions default the soft limit to 1,024. Returns
/// the limit in force.
fn raise_open_files_limit() -> Option<libc::rlim_t> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit only read and write the struct given.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return None;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    Some(limit.rlim_cur)
}

fn main() {
    return_large_allocations();
    let open_files = raise_open_files_limit();
    let cli = match Cli::parse_from_args(std::env::args_os()) {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            // clap's message spans several lines; keep the first sentence.
            let text = e.render().to_string();
            let line = text.lines().map(str::trim).filter(|l| !l.is_empty()).take_while(|l| !l.starts_with("Usage:"));
            refuse(line.collect::<Vec<_>>().join(" ").trim_start_matches("error: "))
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap_or_else(|e| refuse(e));
    let telemetry = {
        let _entered = runtime.enter();
        conduit::observability::logs::init(&cli.settings.log_level, &cli.settings.log_format)
            .unwrap_or_else(|e| refuse(e))
    };
    tracing::debug!(open_files, "open-files limit");
    match cli.command.unwrap_or(Command::Serve) {
        Command::Worker => runtime.block_on(async {
            let (settings, local) = database_settings(&cli.settings, true).await;
            let worked = conduit::startup::run_worker(&settings, conduit::server::shutdown::signal()).await;
            stop_private_database(local).await;
            if let Err(e) = worked {
                refuse(e);
            }
        }),
        Command::Jobs { action } => runtime.block_on(async {
            let (_, db, local) = command_pool(&cli.settings, 1).await;
            let done = jobs_command(&db, action).await;
            close_command_pool(db, local).await;
            if let Err(e) = done {
                refuse(e);
            }
        }),
        Command::Demo { url } => runtime.block_on(demo(&cli.settings, url)),
        Command::Migrate => runtime.block_on(async {
            cli.settings.require_direct_url().unwrap_or_else(|e| refuse(e));
            let (_, db, local) = command_pool(&cli.settings.direct(), 1).await;
            let migrated = migrator().run(&db).await;
            close_command_pool(db, local).await;
            migrated.unwrap_or_else(|e| refuse(e));
            tracing::info!("migrations applied");
        }),
        Command::Serve => runtime.block_on(async {
            conduit::startup::check_listen_addresses(&cli.settings).unwrap_or_else(|e| refuse(e));
            let (mut settings, local) = database_settings(&cli.settings, false).await;
            // DRAIN_DELAY gives load balancers time to stop sending; someone
            // at a terminal with the private database has none to wait for.
            if local.is_some() && std::io::IsTerminal::is_terminal(&std::io::stdin()) && !settings.drain_delay.is_zero()
            {
                tracing::info!("at a terminal with the private database: Ctrl-C stops without DRAIN_DELAY");
                settings.drain_delay = std::time::Duration::ZERO;
            }
            let settings = settings.for_serve().unwrap_or_else(|e| refuse(e));
            let app = match Application::build(&settings).await {
                Ok(app) => app,
                Err(e) => {
                    if let Some(local) = local {
                        local.stop().await;
                    }
                    refuse(e)
                }
            };
            let base = announce(&settings, &app);
            if let Some(local) = &local {
                local.serving(&base);
            }
            let served = app.run_until_stopped(conduit::server::shutdown::signal()).await;
            if let Some(local) = local {
                local.stop().await;
            }
            if let Err(e) = served {
                refuse(e);
            }
        }),
    }
    runtime.block_on(async { tokio::task::spawn_blocking(move || telemetry.shutdown()).await.ok() });
}
