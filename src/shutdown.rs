//! Signals. SIGHUP reloads the configuration (see [`reload_on_sighup`]).
//!
//! Shutdown: SIGTERM or SIGINT cancels the proxy's `CancellationToken`. What happens next is in
//! `lib.rs` (`Server::serve`): stop accepting; each session holds new requests and closes at its
//! next request boundary (`session/dedicated.rs`); their tasks are waited for at most
//! `--shutdown-timeout`, exit 0.

use std::sync::Arc;

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use tokio::sync::mpsc;

use crate::{Config, Reloader, Shared};

/// On every SIGHUP, build a new configuration with `reload` and hand it to the server to apply
/// (`Server::serve`). An invalid one is rejected with a log line and the running configuration
/// stays; the clients of groups the reload keeps are never touched.
pub fn reload_on_sighup(
    shared: Arc<Shared>,
    apply: mpsc::Sender<Config>,
    reload: Reloader,
    shutdown: CancellationToken,
) {
    // Installed before returning, so a SIGHUP sent right after start-up is never fatal.
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        warn!("cannot install the SIGHUP handler; configuration reload disabled");
        return;
    };
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = hup.recv() => {}
                _ = shutdown.cancelled() => return,
            }
            match reload() {
                Ok(config) => {
                    if apply.send(config).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    shared
                        .metrics
                        .config_reloads_total
                        .with_label_values(&["rejected"])
                        .inc();
                    error!(error = %format!("{e:#}"), "configuration reload rejected; the running configuration stays");
                }
            }
        }
    });
}

/// Cancel `token` at the first SIGTERM or SIGINT.
pub fn cancel_on_signal(token: CancellationToken) {
    // Installed before returning (not in the task), so the handlers are in place before the
    // proxy announces that it started.
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        _ => {
            warn!(
                "cannot install signal handlers; only the process manager's SIGKILL stops the proxy"
            );
            return;
        }
    };
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        info!(signal = name, "shutting down");
        token.cancel();
    });
}
