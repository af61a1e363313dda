//! The one place a binary reads its signals (the server's and the agent's `main.rs`
//! both run [`run`]): SIGINT or SIGTERM tells the service manager `STOPPING=1` and
//! cancels the one shutdown token; each SIGHUP runs the binary's reload in its own task,
//! one at a time, between `RELOADING=1` and `READY=1`, so a slow reload never holds up
//! a shutdown.

use std::future::Future;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::sd_notify::Notifier;

/// Until `token` is cancelled (by us on SIGINT/SIGTERM, or by the process itself).
/// `reload` returns the status line the service manager shows once it is done.
pub async fn run<F, Fut>(notifier: Arc<Notifier>, token: CancellationToken, reload: F)
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = String> + Send + 'static,
{
    let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::error!(error = %e, "cannot install the SIGHUP handler; reload by restarting");
            None
        }
    };
    let reload = Arc::new(reload);
    let one_at_a_time = Arc::new(tokio::sync::Mutex::new(()));
    // Made once, not per turn of the loop: a SIGTERM between two turns is not missed.
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = token.cancelled() => return,
            Some(()) = async { hup.as_mut()?.recv().await } => {
                let (reload, notifier, one) = (reload.clone(), notifier.clone(), one_at_a_time.clone());
                tokio::spawn(async move {
                    let _one = one.lock().await;
                    notifier.reloading();
                    tracing::info!("SIGHUP: reading the config file again");
                    let status = reload().await;
                    notifier.ready(&status);
                });
            }
        }
    }
    tracing::info!("shutdown requested; draining");
    notifier.stopping();
    token.cancel();
}

/// SIGINT or SIGTERM.
async fn shutdown_signal() {
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
    let mut term = match term {
        Ok(t) => Some(t),
        Err(e) => {
            tracing::error!(error = %e, "cannot install the SIGTERM handler; only SIGINT stops gracefully");
            None
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        Some(()) = async { term.as_mut()?.recv().await } => {}
    }
}
