//! The stop signal: SIGTERM (what Kubernetes sends) or Ctrl-C; a second
//! Ctrl-C exits at once.

/// Completes when the process is asked to stop.
pub async fn signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("stop signal received, draining (Ctrl-C again to exit at once)");
    // Whoever presses Ctrl-C twice does not want to wait for the drain. The
    // private PostgreSQL stops with the process (parent-death signal).
    tokio::spawn(async {
        let _ = tokio::signal::ctrl_c().await;
        tracing::warn!("second stop signal: exiting without finishing the drain");
        std::process::exit(130);
    });
}
