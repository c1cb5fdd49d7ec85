//! The accept loop: one task per client connection, each in its own tracing span and tracked for
//! shutdown. An accept error (e.g. out of file descriptors) is logged and retried after a growing
//! back-off; it never ends the loop. Only shutdown does.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::time::sleep;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info_span, warn};

use crate::{Shared, session};

const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

pub async fn run(
    listener: TcpListener,
    shared: Arc<Shared>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.cancelled() => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = Duration::from_millis(5);
                let span = info_span!("conn", client = %peer, backend = tracing::field::Empty);
                tracker.spawn(
                    session::serve(stream, shared.clone(), shutdown.clone()).instrument(span),
                );
            }
            Err(e) => {
                warn!(error = %e, backoff_ms = backoff.as_millis() as u64, "accept failed; backing off");
                tokio::select! {
                    _ = sleep(backoff) => {}
                    _ = shutdown.cancelled() => return,
                }
                backoff = (backoff * 2).min(MAX_ACCEPT_BACKOFF);
            }
        }
    }
}
