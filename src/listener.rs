//! The accept loop of one group's listener: one task per client connection, each in its own
//! tracing span and tracked for shutdown. An accept error (e.g. out of file descriptors) is logged and retried after a growing
//! back-off; it never ends the loop. Only shutdown does. Each session holds a permit of the
//! `--max-clients` semaphore (one for all groups); a client over the limit gets Redis's own
//! `-ERR max number of clients reached` and is closed. Each session runs on one of the worker
//! threads (`workers.rs`), which owns its socket from then on.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use crate::tls::Link;
use tokio::sync::Semaphore;
use tokio::time::{sleep, timeout};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, debug_span, info, info_span, warn};

use crate::config::ReadFallback;
use crate::read::ReadPort;
use crate::tls::TlsServer;
use crate::workers::Workers;
use crate::{Group, session};

/// A client a predecessor handed over (`upgrade.rs`): its socket, and how to resume its session.
pub type Resumed = (std::net::TcpStream, crate::session::Handed);

/// What a listener serves: a group's own port, or its read port.
pub enum Target {
    Group(Arc<Group>),
    Read(Arc<ReadPort>),
}

const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn run(
    listener: TcpListener,
    target: Target,
    mut resumed: Option<tokio::sync::mpsc::UnboundedReceiver<Resumed>>,
    permits: Arc<Semaphore>,
    workers: Arc<Workers>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(5);
    let group = match &target {
        Target::Group(g) => g.clone(),
        Target::Read(r) => r.group.clone(),
    };
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            Some((stream, handed)) = async { resumed.as_mut()?.recv().await } => {
                resume(stream, handed, &group, &permits, &workers, &tracker, &shutdown);
                continue;
            }
            _ = shutdown.cancelled() => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = Duration::from_millis(5);
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    group.metrics.max_clients_rejections_total.inc();
                    tracker.spawn(refuse(stream, group.config().tls.clone()));
                    continue;
                };
                // The socket moves to the worker's own I/O driver.
                let stream = match stream.into_std() {
                    Ok(s) => s,
                    Err(e) => {
                        warn!(error = %e, "could not hand a connection to a worker");
                        continue;
                    }
                };
                let shutdown = shutdown.clone();
                // A read client: the replica with the fewest, as a 1:1 session on its lane.
                let (group, lane) = match &target {
                    Target::Group(g) => (g.clone(), None),
                    Target::Read(r) => match r.pick() {
                        Some(lane) => (lane.group().clone(), Some(lane)),
                        None if r.group.config().read_fallback == ReadFallback::Master => {
                            (r.group.clone(), None)
                        }
                        None => {
                            let msg = format!(
                                "-ERR sentinel-proxy: no healthy replica for '{}'\r\n",
                                r.group.master_name
                            );
                            let tls = r.group.config().tls.clone();
                            tracker.spawn(async move {
                                if let Ok(stream) = TcpStream::from_std(stream) {
                                    refuse_with(stream, msg, tls).await;
                                }
                            });
                            continue;
                        }
                    },
                };
                if group.config().pool > 0 && matches!(target, Target::Group(_)) {
                    // Pooled clients share connections with the other clients of their thread
                    // (`session/pool.rs`), through `Rc`s: they run on its `LocalSet`.
                    let tracked = tracker.token();
                    // A pooled client's span is at debug level, as everything it logs is: at the
                    // default level it costs nothing (an idle pooled client is ~1.4 KiB, and the
                    // span's fields and slot would be 0.3 of it). A client that pins runs its
                    // dedicated session in an info-level span (`session::serve_pooled`).
                    let span = debug_span!("conn", group = %group.name, client = %peer);
                    // A task of its own kind for TLS clients: a plain client's task (kept for
                    // its whole life, and tokio rounds a task up to 128 bytes) has no room for
                    // a handshake, nor an `Option` of what it left.
                    let tls = group.config().tls.clone();
                    workers.spawn_local_for(
                        peer.ip(),
                        Box::new(move || match tls {
                            None => {
                                tokio::task::spawn_local(
                                    async move {
                                        session::serve_pooled(stream, group, shutdown, None).await;
                                        drop(permit);
                                        drop(tracked);
                                    }
                                    .instrument(span),
                                );
                            }
                            Some(tls) => {
                                tokio::task::spawn_local(
                                    async move {
                                        let s = Box::pin(handshake(stream, tls, &group)).await;
                                        if let Some(s) = s {
                                            session::serve_pooled(s, group, shutdown, None).await;
                                        }
                                        drop(permit);
                                        drop(tracked);
                                    }
                                    .instrument(span),
                                );
                            }
                        }),
                    );
                    continue;
                }
                let span = info_span!(
                    "conn",
                    group = %group.name,
                    client = %peer,
                    backend = tracing::field::Empty
                );
                let runtime = workers.for_client(peer.ip());
                // As in pooled mode, TLS clients' tasks are of their own kind.
                match group.config().tls.clone() {
                    None => tracker.spawn_on(
                        async move {
                            match TcpStream::from_std(stream) {
                                Ok(stream) => session::serve(stream.into(), group, shutdown).await,
                                Err(e) => warn!(error = %e, "could not register a connection"),
                            }
                            drop(lane);
                            drop(permit);
                        }
                        .instrument(span),
                        runtime,
                    ),
                    Some(tls) => tracker.spawn_on(
                        async move {
                            let s = Box::pin(handshake(stream, tls, &group)).await;
                            if let Some(s) = s {
                                session::serve(s, group, shutdown).await;
                            }
                            drop(lane);
                            drop(permit);
                        }
                        .instrument(span),
                        runtime,
                    ),
                };
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

/// Serve a client a predecessor handed over, as an accepted one is (a permit, a worker, a span).
fn resume(
    stream: std::net::TcpStream,
    handed: crate::session::Handed,
    group: &Arc<Group>,
    permits: &Arc<Semaphore>,
    workers: &Workers,
    tracker: &TaskTracker,
    shutdown: &CancellationToken,
) {
    let Ok(permit) = permits.clone().try_acquire_owned() else {
        group.metrics.max_clients_rejections_total.inc();
        warn!("a session handed over is over --max-clients: closed");
        return;
    };
    let Ok(peer) = stream.peer_addr() else {
        return; // gone meanwhile
    };
    if let Err(e) = stream.set_nonblocking(true) {
        warn!(error = %e, "could not take a session handed over");
        return;
    }
    let (group, shutdown, tracked) = (group.clone(), shutdown.clone(), tracker.token());
    let span = info_span!(
        "conn",
        group = %group.name,
        client = %peer,
        backend = tracing::field::Empty
    );
    workers.spawn_local_for(
        peer.ip(),
        Box::new(move || {
            tokio::task::spawn_local(
                async move {
                    session::resume(stream, handed, group, shutdown).await;
                    drop(permit);
                    drop(tracked);
                }
                .instrument(span),
            );
        }),
    );
}

/// On a TLS port, the connection a session serves, once the handshake is done (bounded, so a
/// silent client costs nothing for long). A client certificate refused (expired, revoked, not
/// the CA's, none) is logged at info level with the reason; other failures at debug.
async fn handshake(
    stream: std::net::TcpStream,
    tls: Arc<TlsServer>,
    group: &Group,
) -> Option<Link> {
    let tcp = TcpStream::from_std(stream)
        .inspect_err(|e| warn!(error = %e, "could not register a connection"))
        .ok()?;
    let peer = tcp.peer_addr().ok();
    match timeout(
        HANDSHAKE_TIMEOUT,
        crate::tls::accept(&tls, tcp, group.config().tcp_keepalive),
    )
    .await
    {
        Ok(Ok(s)) => Some(s),
        failed => {
            let error = match failed {
                Ok(Err(e)) => match crate::tls::certificate_refused(&e) {
                    Some(why) => {
                        let client = peer.map_or_else(|| "?".into(), |p| p.to_string());
                        info!(%client, reason = %why, "TLS handshake refused: the client's certificate");
                        why
                    }
                    None => e.to_string(),
                },
                _ => "timed out".to_string(),
            };
            debug!(%error, "TLS handshake failed");
            group.metrics.tls_handshake_failures_total.inc();
            None
        }
    }
}

async fn refuse(stream: TcpStream, tls: Option<Arc<TlsServer>>) {
    let msg = "-ERR max number of clients reached\r\n".into();
    refuse_with(stream, msg, tls).await
}

/// Answer `msg` and close; on a TLS port, over TLS (a client reads no plain text there).
async fn refuse_with(stream: TcpStream, msg: String, tls: Option<Arc<TlsServer>>) {
    let mut stream = match tls {
        None => Link::Plain(stream),
        Some(tls) => {
            match timeout(
                Duration::from_secs(2),
                crate::tls::accept(&tls, stream, Duration::ZERO),
            )
            .await
            {
                Ok(Ok(s)) => s,
                _ => return,
            }
        }
    };
    let write = stream.write_all(msg.as_bytes());
    let _ = tokio::time::timeout(Duration::from_secs(1), write).await;
    let _ = stream.shutdown().await;
}
