//! SIGINT/SIGTERM as a cancellation token.
//!
//! Order on the first signal: readiness goes 503, then the token is cancelled so that every
//! task stops taking new work, drains, flushes and returns. A second signal exits at once.

use tokio_util::sync::CancellationToken;

use crate::ops::Health;

/// Spawns the signal watcher. Cancelling `token` from elsewhere (tests) works the same way.
pub fn watch_signals(token: CancellationToken, health: Health) {
    tokio::spawn(async move {
        let signal = tokio::select! {
            name = wait_for_signal() => name,
            () = token.cancelled() => return,
        };
        tracing::info!(signal, "shutting down: readiness is now 503, draining");
        health.set_stopping();
        token.cancel();
        let again = wait_for_signal().await;
        tracing::warn!(signal = again, "second signal: exiting without draining");
        std::process::exit(130);
    });
}

#[cfg(unix)]
async fn wait_for_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("cannot install signal handlers; stop the service with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() -> &'static str {
    let _ = tokio::signal::ctrl_c().await;
    "ctrl-c"
}
