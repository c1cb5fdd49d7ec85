//! Shutdown: SIGTERM or SIGINT cancels the proxy's `CancellationToken`. What happens next is in
//! `lib.rs` (`Server::serve`): stop accepting; each session holds new requests and closes at its
//! next request boundary (`session.rs`); their tasks are waited for at most
//! `--shutdown-timeout`, exit 0.

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Cancel `token` at the first SIGTERM or SIGINT.
pub fn cancel_on_signal(token: CancellationToken) {
    tokio::spawn(async move {
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
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        info!(signal = name, "shutting down");
        token.cancel();
    });
}
