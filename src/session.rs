//! One client connection: wait for a verified master, connect to it, and forward bytes both ways
//! until either side closes, the route moves to another master, or the proxy shuts down.
//!
//! The safety rule lives here: client bytes are written to the backend only after checking that
//! the route generation is still the one the backend was chosen under (a lock-free load). Once the
//! watcher has swapped the route, no further client byte reaches the old master; the session is
//! then closed so the client reconnects and lands on the new master.
//!
//! Everything that can fail ends this task only; the listener never sees it.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tokio_util::sync::CancellationToken;
use tracing::{Span, debug};

use crate::Shared;

/// Per-direction buffer, allocated once per connection (not per request).
const BUF_SIZE: usize = 16 * 1024;
/// After a failed connect, look again at least this often while waiting for the watcher.
const RETRY_EVERY: Duration = Duration::from_millis(100);

/// Why a session ended (the label of `sentinel_proxy_sessions_closed_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Close {
    ClientClosed,
    BackendClosed,
    IoError,
    MasterSwitched,
    NoMaster,
    Shutdown,
}

impl Close {
    pub fn label(self) -> &'static str {
        match self {
            Close::ClientClosed => "client_closed",
            Close::BackendClosed => "backend_closed",
            Close::IoError => "io_error",
            Close::MasterSwitched => "master_switched",
            Close::NoMaster => "no_master",
            Close::Shutdown => "shutdown",
        }
    }
}

/// Serve one client until it ends. Runs inside the connection's tracing span.
pub async fn serve(mut client: TcpStream, shared: Arc<Shared>, shutdown: CancellationToken) {
    let m = &shared.metrics;
    m.client_connections.inc();
    m.client_connections_total.inc();
    let _ = client.set_nodelay(true);
    let close = match acquire_backend(&shared, &shutdown).await {
        Ok((backend, generation, addr)) => {
            Span::current().record("backend", tracing::field::display(addr));
            forward(&mut client, backend, generation, &shared, &shutdown).await
        }
        Err(close) => {
            if close == Close::NoMaster {
                m.no_master_rejections_total.inc();
                let msg = format!(
                    "-ERR sentinel-proxy: no master available for '{}'\r\n",
                    shared.config.master_name
                );
                let _ = timeout(Duration::from_secs(1), client.write_all(msg.as_bytes())).await;
            }
            close
        }
    };
    let _ = timeout(Duration::from_secs(1), client.shutdown()).await;
    debug!(reason = close.label(), "session closed");
    m.sessions_closed_total
        .with_label_values(&[close.label()])
        .inc();
    m.client_connections.dec();
}

/// Connect to the current verified master, waiting up to `connect-wait` for one to exist.
async fn acquire_backend(
    shared: &Shared,
    shutdown: &CancellationToken,
) -> Result<(TcpStream, u64, SocketAddr), Close> {
    let deadline = Instant::now() + shared.config.connect_wait;
    let mut changes = shared.route.subscribe();
    loop {
        changes.borrow_and_update();
        let route = shared.route.load();
        let mut failed = false;
        if let Some(addr) = route.target() {
            match timeout(shared.config.connect_timeout, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => {
                    // The route may have moved while we connected; never hand out a stale master.
                    if shared.route.generation() == route.generation {
                        let _ = stream.set_nodelay(true);
                        return Ok((stream, route.generation, addr));
                    }
                    continue;
                }
                Ok(Err(e)) => debug!(backend = %addr, error = %e, "backend connect failed"),
                Err(_) => debug!(backend = %addr, "backend connect timed out"),
            }
            shared.metrics.backend_connect_failures_total.inc();
            shared.route.request_recheck();
            failed = true;
        }
        let retry = async {
            if failed {
                sleep(RETRY_EVERY).await
            } else {
                std::future::pending::<()>().await
            }
        };
        tokio::select! {
            _ = changes.changed() => {}
            _ = retry => {}
            _ = sleep_until(deadline) => return Err(Close::NoMaster),
            _ = shutdown.cancelled() => return Err(Close::Shutdown),
        }
    }
}

enum Stop {
    Switched,
    Io(io::Error),
}

impl From<io::Error> for Stop {
    fn from(e: io::Error) -> Self {
        Stop::Io(e)
    }
}

async fn forward(
    client: &mut TcpStream,
    mut backend: TcpStream,
    generation: u64,
    shared: &Shared,
    shutdown: &CancellationToken,
) -> Close {
    let (cr, cw) = client.split();
    let (br, bw) = backend.split();
    let mut changes = shared.route.subscribe();
    let switched = async {
        loop {
            if changes.changed().await.is_err() {
                return std::future::pending().await;
            }
            if shared.route.generation() != generation {
                return;
            }
        }
    };
    let up = client_to_backend(cr, bw, generation, shared);
    let down = backend_to_client(br, cw);
    tokio::pin!(up, down, switched);
    let mut client_eof = false;
    loop {
        tokio::select! {
            r = &mut up, if !client_eof => match r {
                // The client half-closed: keep relaying until the backend closes in turn.
                Ok(()) => client_eof = true,
                Err(Stop::Switched) => return Close::MasterSwitched,
                Err(Stop::Io(e)) => {
                    debug!(error = %e, "client-side i/o error");
                    return Close::IoError;
                }
            },
            r = &mut down => return match r {
                Ok(_) if client_eof => Close::ClientClosed,
                Ok(close) => close,
                Err(e) => {
                    debug!(error = %e, "backend-side i/o error");
                    Close::IoError
                }
            },
            _ = &mut switched => return Close::MasterSwitched,
            _ = shutdown.cancelled() => return Close::Shutdown,
        }
    }
}

async fn client_to_backend(
    mut from: ReadHalf<'_>,
    mut to: WriteHalf<'_>,
    generation: u64,
    shared: &Shared,
) -> Result<(), Stop> {
    let mut buf = vec![0u8; BUF_SIZE];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            // Half-close: pass the client's FIN on and keep relaying replies.
            to.shutdown().await?;
            return Ok(());
        }
        if shared.route.generation() != generation {
            return Err(Stop::Switched);
        }
        to.write_all(&buf[..n]).await?;
    }
}

/// Relays replies; returns which side's end finished the session.
async fn backend_to_client(mut from: ReadHalf<'_>, mut to: WriteHalf<'_>) -> io::Result<Close> {
    let mut buf = vec![0u8; BUF_SIZE];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return Ok(Close::BackendClosed);
        }
        if let Err(e) = to.write_all(&buf[..n]).await {
            // The client went away: that is the client closing, not a proxy fault.
            return if matches!(
                e.kind(),
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
            ) {
                Ok(Close::ClientClosed)
            } else {
                Err(e)
            };
        }
    }
}
