//! The `conduit` binary: settings → logging → build → serve until a stop signal.

use clap::Parser;
use conduit::config::{Cli, Command};
use conduit::startup::{Application, MIGRATOR, connect};

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

fn main() {
    return_large_allocations();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            // clap's message spans several lines; keep the first sentence.
            let text = e.render().to_string();
            let line = text.lines().map(str::trim).filter(|l| !l.is_empty()).take_while(|l| !l.starts_with("Usage:"));
            refuse(line.collect::<Vec<_>>().join(" ").trim_start_matches("error: "))
        }
    };
    if let Err(e) = conduit::telemetry::init(&cli.settings.log_level, &cli.settings.log_format) {
        refuse(e);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap_or_else(|e| refuse(e));
    match cli.command.unwrap_or(Command::Serve) {
        Command::Migrate => runtime.block_on(async {
            let url = cli.settings.require_database_url().unwrap_or_else(|e| refuse(e));
            let db = connect(url.expose(), 1, cli.settings.db_acquire_timeout).await.unwrap_or_else(|e| refuse(e));
            MIGRATOR.run(&db).await.unwrap_or_else(|e| refuse(e));
            tracing::info!("migrations applied");
        }),
        Command::Serve => runtime.block_on(async {
            let settings = cli.settings.for_serve().unwrap_or_else(|e| refuse(e));
            let app = Application::build(&settings).await.unwrap_or_else(|e| refuse(e));
            tracing::info!(listen = %settings.listen, port = app.port(), "serving gRPC and JSON");
            if let Err(e) = app.run_until_stopped(conduit::shutdown::signal()).await {
                refuse(e);
            }
        }),
    }
}
