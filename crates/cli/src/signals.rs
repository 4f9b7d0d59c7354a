//! Ctrl-C and SIGTERM, for the commands that stop gracefully on either.

use std::future::Future;

/// Registers for SIGTERM and Ctrl-C at once and returns a future that resolves on either.
///
/// Call it before announcing readiness: a handler registered only when the future is
/// first polled leaves a window in which a stop sent right after start-up kills the
/// process instead of stopping it gracefully. Must be called inside a Tokio runtime.
pub(crate) fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    let registered = {
        use tokio::signal::unix::{SignalKind, signal};
        (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    };
    async move {
        #[cfg(unix)]
        match registered {
            (Ok(mut term), Ok(mut interrupt)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = interrupt.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
