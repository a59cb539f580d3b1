//! Termination signals: Kubernetes sends SIGTERM; a terminal sends SIGINT.

/// Completes on the first SIGTERM or SIGINT. If a handler cannot be installed (no signal
/// support), that signal is simply never seen and the other still works.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %err, "Cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(err) => {
                tracing::warn!(error = %err, "Cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = ctrl_c => tracing::info!(signal = "SIGINT", "Shutting down"),
        () = term => tracing::info!(signal = "SIGTERM", "Shutting down"),
    }
}
