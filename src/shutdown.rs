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

use crate::{Group, Reloader, Shared};

/// On every SIGHUP, build a new configuration with `reload` and apply it. An invalid one is
/// rejected with a log line and the running configuration stays; client connections are never
/// touched by a reload.
pub fn reload_on_sighup(
    shared: Arc<Shared>,
    groups: Vec<Arc<Group>>,
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
                    let restart = shared.reload(&groups, config);
                    info!("configuration reloaded");
                    if !restart.is_empty() {
                        warn!(settings = ?restart, "changed settings need a restart to take effect; kept their running values");
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
