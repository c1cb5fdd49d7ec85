//! One client connection, from accept to close: wait for a verified master, connect, run the
//! session (`dedicated.rs`: one backend connection per client, with the byte-pipe and QUIT
//! rules; `fence.rs`: when its bytes may go and when it moves; `carry.rs`: what the client built
//! that a move re-creates; `migrate.rs`: the move itself; `compose.rs`: the commands and frames
//! the proxy composes or inspects there), and count why it ended (`tally.rs` keeps it per switch
//! for /status). `io.rs` holds the byte-moving primitives (one scratch buffer per thread, bytes
//! kept only while a peer cannot take them).
//!
//! In pooled mode (`--pool`) a client starts in `pooled.rs`: its requests go on its thread's
//! shared connections (`pool.rs`, each served by `conn.rs`) until one needs a connection of its
//! own (the command table, `command/`); then it continues here as a dedicated session, on a
//! connection lent for a span (a transaction, a blocking call: back to the pool after it, the
//! connection kept as a spare) or pinned to it for good.
//!
//! Everything that can fail ends this task only; the listener never sees it.

mod ack;
mod backend;
pub(crate) mod barrier;
mod carry;
mod compose;
mod conn;
mod dedicated;
mod fence;
mod gate;
mod handover;
mod io;
mod migrate;
mod pool;
mod pooled;
pub mod tally;

pub use carry::Carried;
pub use handover::{Handed, Handoff, Outgoing, Resume, resume};

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::tls::Link;
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, Span, debug, info_span, warn};

use crate::Group;
use crate::command::Pin;
// Every real socket's options (nodelay, keepalive): one rule for plain and TLS (`sockopt.rs`).
use crate::sockopt::tune;
use dedicated::Session;

/// After a failed connect, look again at least this often while waiting for the watcher.
const RETRY_EVERY: Duration = Duration::from_millis(100);

/// Why a session ended (the label of `sentinel_proxy_sessions_closed_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Close {
    ClientClosed,
    BackendClosed,
    IoError,
    NoMaster,
    Shutdown,
    ProtocolError,
    /// The client sent QUIT and got its reply.
    Quit,
    /// Moved masters while in pub/sub, MONITOR, a blocking command, or a transaction; or with
    /// state that cannot be replayed.
    SwitchPubSub,
    SwitchMonitor,
    SwitchBlocking,
    SwitchTransaction,
    SwitchMidRequest,
    SwitchUnmigratable,
    /// Moved masters while a byte pipe (a replication stream or untracked replies).
    SwitchPipe,
    /// Requests were in flight on a master that had stopped answering when it was replaced:
    /// their outcome is unknown, and a late reply from it must not pass for an acknowledgement.
    SwitchMasterDown,
    /// No request boundary before `--drain-timeout`.
    DrainDeadline,
    MigrateFailed,
    /// Idle longer than `--idle-timeout`.
    IdleTimeout,
    /// Handed to the process that took over from this one (a live upgrade): the client's socket
    /// stays open there.
    HandedOver,
}

impl Close {
    /// Closed because the route moved and the session could not follow.
    pub fn at_switch(self) -> bool {
        matches!(
            self,
            Close::SwitchPubSub
                | Close::SwitchMonitor
                | Close::SwitchBlocking
                | Close::SwitchTransaction
                | Close::SwitchMidRequest
                | Close::SwitchUnmigratable
                | Close::SwitchPipe
                | Close::SwitchMasterDown
                | Close::DrainDeadline
                | Close::MigrateFailed
        )
    }

    pub fn label(self) -> &'static str {
        match self {
            Close::ClientClosed => "client_closed",
            Close::BackendClosed => "backend_closed",
            Close::IoError => "io_error",
            Close::NoMaster => "no_master",
            Close::Shutdown => "shutdown",
            Close::ProtocolError => "protocol_error",
            Close::Quit => "quit",
            Close::SwitchPipe => "switch_pipe",
            Close::SwitchPubSub => "switch_pubsub",
            Close::SwitchMonitor => "switch_monitor",
            Close::SwitchBlocking => "switch_blocking",
            Close::SwitchTransaction => "switch_transaction",
            Close::SwitchMidRequest => "switch_mid_request",
            Close::SwitchUnmigratable => "switch_unmigratable",
            Close::SwitchMasterDown => "switch_master_down",
            Close::DrainDeadline => "drain_deadline",
            Close::MigrateFailed => "migrate_failed",
            Close::IdleTimeout => "idle_timeout",
            Close::HandedOver => "handed_over",
        }
    }
}

/// Why a session stopped tracking RESP and became a byte pipe (the label of
/// `sentinel_proxy_pipe_sessions_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pipe {
    /// `SYNC`/`PSYNC`: the client is a replica (or `redis-cli --rdb`/`--replica`).
    Replication,
    /// The backend sent bytes the reply tracker could not follow.
    UntrackedReply,
}

impl Pipe {
    pub fn label(self) -> &'static str {
        match self {
            Pipe::Replication => "replication",
            Pipe::UntrackedReply => "untracked_reply",
        }
    }
}

/// Serve one client until it ends (1:1 mode). Runs inside the connection's tracing span.
pub async fn serve(client: Link, group: Arc<Group>, shutdown: CancellationToken) {
    let m = &group.metrics;
    m.client_connections.inc();
    m.client_connections_total.inc();
    if let Link::Plain(tcp) = &client {
        tune(tcp, group.config().tcp_keepalive); // a TLS client's was, before its handshake
    }
    // (An `if`: its condition's temporary, the configuration, is not kept across the await.)
    let close = if group.config().users.is_none() {
        closed_only(
            dedicated(
                client,
                &group,
                &shutdown,
                (&[], false),
                || {},
                None,
                &Lend::NONE,
            )
            .await,
        )
    } else {
        // Boxed: what the gate leaves (a HELLO to send first) is not carried by every session.
        Box::pin(authenticated(client, &group, &shutdown)).await
    };
    closed(&group, close);
}

/// A pooled client a predecessor handed over (`handover.rs`): the state of its pool (its user,
/// protocol, database), its name, and the requests it had read and not sent.
pub type Resumed = (Vec<Vec<u8>>, Option<Vec<u8>>, Vec<u8>);

/// A client's connection as the listener hands it to a pooled session.
pub trait Accepted {
    /// The connection, registered on this thread and set up (`sockopt.rs`); `None` if it can't be.
    fn link(self, group: &Group) -> Option<Link>;
}

impl Accepted for std::net::TcpStream {
    fn link(self, group: &Group) -> Option<Link> {
        match TcpStream::from_std(self) {
            Ok(c) => {
                tune(&c, group.config().tcp_keepalive);
                Some(Link::Plain(c))
            }
            Err(e) => {
                warn!(error = %e, "could not register a connection");
                None
            }
        }
    }
}

/// A TLS client's (set up before its handshake).
impl Accepted for Link {
    fn link(self, _: &Group) -> Option<Link> {
        Some(self)
    }
}

/// A 1:1 session behind the proxy's own authentication (`gate.rs`).
async fn authenticated(
    mut client: Link,
    group: &Arc<Group>,
    shutdown: &CancellationToken,
) -> Close {
    match gate::pass(&mut client, group, shutdown).await {
        Ok(first) => closed_only(
            dedicated(
                client,
                group,
                shutdown,
                (&first, false),
                || {},
                None,
                &Lend::NONE,
            )
            .await,
        ),
        Err(close) => close,
    }
}

/// A session that was never lent ends closed.
fn closed_only(served: Served) -> Close {
    match served {
        Served::Closed(close) => close,
        Served::Returned(..) => Close::IoError,
    }
}

/// How a dedicated session ended: closed, or (lent to a pooled client for a span) returned with
/// the client's socket, its connection to the master of that generation, the connection state
/// the client left it in (the pool it goes back to: `Carry::pool_state`), the client's name
/// after the span (`pinned` sets it), and whether the connection was given a name.
enum Served {
    Closed(Close),
    Returned(
        Link,
        Option<Box<(Link, u64, SocketAddr)>>,
        Vec<Vec<u8>>,
        Option<Vec<u8>>,
        bool,
    ),
}

/// A pooled client's dedicated session: whether its connection is lent for a span (else the
/// client keeps it), and the state of the pool it came from, which its connection was opened
/// with (a move must open the next one with it).
#[derive(Clone, Copy)]
struct Lend<'s> {
    span: bool,
    state: &'s [Vec<u8>],
    /// The client's name (`CLIENT SETNAME` in the pool): the connection has it while it is the
    /// client's, and a move re-creates it where the connection is the client's for good.
    name: Option<&'s [u8]>,
    /// A change of the client's own state: it waits for a turn (`Pool::state_spans`) to open a
    /// connection when no spare is ready.
    turns: Option<&'s tokio::sync::Semaphore>,
    /// A session the predecessor handed over (`handover.rs`): what it carried, re-created on
    /// the new connection before anything else.
    carried: Option<&'s Carried>,
}

impl Lend<'_> {
    /// A 1:1 session.
    const NONE: Lend<'static> = Lend {
        span: false,
        state: &[],
        name: None,
        turns: None,
        carried: None,
    };
}

/// Serve one client in pooled mode, on its worker's `LocalSet`: in the pool until a request pins
/// it, then as a dedicated session. It takes the socket as the listener accepted it (registered
/// here, on the worker's own I/O driver): the task keeps its arguments for its whole life, and
/// this one is 4 bytes. A client of a TLS port comes as its [`Link`], its handshake done on this
/// worker. A client a predecessor handed over (`resumed`) starts in the pool of its state, with
/// its name.
pub async fn serve_pooled<C: Accepted>(
    client: C,
    group: Arc<Group>,
    shutdown: CancellationToken,
    resumed: Option<Box<Resumed>>,
) {
    let Some(client) = client.link(&group) else {
        return;
    };
    let m = &group.metrics;
    m.client_connections.inc();
    m.client_connections_total.inc();
    let state = resumed.as_ref().map_or(&[][..], |r| &r.0[..]);
    let pool = pool::Pool::for_thread(group.config().pool, &group, &shutdown, state);
    let client = if group.config().users.is_none() || resumed.is_some() {
        client
    } else {
        // Boxed, so an idle pooled client's task does not carry the gate's space.
        match Box::pin(pooled_gate(client, &group, &shutdown, &pool)).await {
            Some(client) => client,
            None => return,
        }
    };
    let (group, shutdown) = (&group, &shutdown);
    let mut client = client;
    let mut pool = pool;
    // The client's name, answered in the pool (`pooled/local.rs`) and lent with the connection.
    // Boxed: this task's future is most of an idle pooled client's memory.
    let mut resumed = resumed;
    let mut name: Option<Box<[u8]>> = resumed
        .as_mut()
        .and_then(|r| r.1.take())
        .map(Vec::into_boxed_slice);
    let close = loop {
        // In a block, so that only the boxed future is kept across its await: not `outcome`,
        // whose parts it owns (a moved-from local keeps its space in the task until its scope
        // ends).
        let next = 'next: {
            let mut session = Box::new(pooled::Pooled::new(
                client,
                group,
                pool.clone(),
                name.take().map(Vec::from),
            ));
            if let Some(r) = resumed.take().filter(|r| !r.2.is_empty()) {
                session.take_first(&r.2);
            }
            let outcome = session.run().await;
            let outcome = match outcome {
                // A successor that takes sessions serves now (a live upgrade).
                pooled::Outcome::Closed(Close::Shutdown) if group.shared.handoff.on() => {
                    break 'next Ok(hand_over_pooled(session, group, pool.state().to_vec()));
                }
                pooled::Outcome::Pin => session.pinned(),
                outcome => outcome,
            };
            match outcome {
                pooled::Outcome::Closed(close) => Err(close),
                pooled::Outcome::Pin => Err(Close::IoError),
                pooled::Outcome::Pinned(client, first, why, barrier, named) => {
                    name = named.map(Vec::into_boxed_slice);
                    Ok(pinned(
                        client,
                        first,
                        barrier,
                        &pool,
                        why,
                        (group, shutdown),
                        name.as_deref().map(<[u8]>::to_vec),
                    ))
                }
            }
        };
        match next {
            Ok(session) => match session.await {
                Served::Closed(close) => break close,
                Served::Returned(c, conn, state, after, named) => {
                    name = after.map(Vec::into_boxed_slice);
                    if state != pool.state() {
                        // AUTH, HELLO or SELECT in the span: the pool of its new state.
                        pool = pool::Pool::for_thread(group.config().pool, group, shutdown, &state);
                    }
                    match conn {
                        Some(conn) if named => pool.give_back_unnamed(*conn),
                        Some(conn) => pool.give_back(*conn),
                        None => {}
                    }
                    client = c;
                }
            },
            Err(close) => break close,
        }
    };
    closed(group, close);
}

/// A pooled client handed to a successor (`handover.rs`), boxed: the task of every pooled
/// client has room only for a pointer to it.
fn hand_over_pooled<'a>(
    session: Box<pooled::Pooled<'a>>,
    group: &'a Group,
    state: Vec<Vec<u8>>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Served> + 'a>> {
    Box::pin(
        async move { Served::Closed(handover::hand_over_pooled(session, group, &state).await) },
    )
}

/// Pooled mode behind the proxy's own authentication (`gate.rs`): `Some(client)` to serve in the
/// pool, `None` once the client is done with.
async fn pooled_gate(
    mut client: Link,
    group: &Arc<Group>,
    shutdown: &CancellationToken,
    pool: &std::rc::Rc<pool::Pool>,
) -> Option<Link> {
    let close = match gate::pass(&mut client, group, shutdown).await {
        Ok(first) if first.is_empty() => return Some(client),
        // `HELLO … AUTH`: the HELLO goes on a connection of the client's own, as it would from
        // the pool (it pins).
        Ok(first) => closed_only(
            pinned(
                client,
                first,
                None,
                pool,
                Pin::Auth,
                (group, shutdown),
                None,
            )
            .await,
        ),
        Err(close) => close,
    };
    closed(group, close);
    None
}

/// A pinned client's dedicated session, boxed with everything it owns: an idle pooled client's
/// task does not carry a dedicated session's space. Pinned for a span (`Pin::spans`: a
/// transaction, a blocking call, the answer to AUTH, HELLO, SELECT or CLIENT
/// MAINT_NOTIFICATIONS), the connection is lent: the session returns the client and the
/// connection once the span is over, unless the client made the connection its own meanwhile.
fn pinned<'a>(
    client: Link,
    first: Vec<u8>,
    barrier: Option<pool::PinGuard>,
    pool: &std::rc::Rc<pool::Pool>,
    why: Pin,
    (group, shutdown): (&'a Arc<Group>, &'a CancellationToken),
    mut name: Option<Vec<u8>>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Served> + 'a>> {
    // `HELLO … SETNAME`: the name is the client's (as `CLIENT SETNAME`'s), put on the lent
    // connection before the HELLO, which goes without it; kept only if the HELLO succeeds.
    let (first, hello) = match (why, pooled::hello_setname(&first)) {
        (Pin::Auth, Some((request, new, hello))) => {
            let before = name.replace(new);
            (request, Some((hello, before)))
        }
        _ => (first, None),
    };
    let turns = why.sets_state().then(|| pool.state_spans());
    let spare = pool.take_spare(group).map(Box::new);
    // The connection was opened with the pool's state: the session starts from it.
    let state = pool.state().to_vec();
    let m = &group.metrics;
    // The proxy's own authentication (`--users-file`) answers AUTH itself: its `HELLO … AUTH`
    // keeps its connection.
    let lent = why.spans() && !(why == Pin::Auth && group.config().users.is_some());
    if lent {
        debug!(reason = why.label(), "a master connection lent for a span");
        m.borrowed_connections.inc();
    } else {
        debug!(
            reason = why.label(),
            "pinned to a master connection of its own"
        );
        m.pinned_sessions_total
            .with_label_values(&[why.label()])
            .inc();
    }
    // Its own span from here, at info level as in 1:1 mode (the pooled phase's is at debug
    // level: see `listener.rs`).
    let span = match client.peer_addr() {
        Ok(peer) => {
            info_span!(parent: None, "conn", client = %peer, backend = tracing::field::Empty)
        }
        Err(_) => info_span!(parent: None, "conn", backend = tracing::field::Empty),
    };
    Box::pin(
        async move {
            // The pin barrier falls once the pinning request is written (`dedicated` runs the
            // session's first step, which sends it, before this task next yields).
            let sent = move || drop(barrier);
            let began = Instant::now();
            let lend = Lend {
                span: lent,
                state: &state,
                name: name.as_deref(),
                turns: turns.as_deref(),
                carried: None,
            };
            let served =
                dedicated(client, group, shutdown, (&first, true), sent, spare, &lend).await;
            let served = match served {
                Served::Returned(client, conn, state, _, _) => {
                    let named = name.is_some();
                    let name = match hello {
                        Some((hello, before)) if !state.contains(&hello) => before,
                        _ => name,
                    };
                    Served::Returned(client, conn, state, name, named)
                }
                closed => closed,
            };
            if lent {
                let m = &group.metrics;
                m.borrowed_connections.dec();
                let outcome = match &served {
                    Served::Returned(..) => "returned",
                    Served::Closed(_) => "closed",
                };
                m.borrow_seconds
                    .with_label_values(&[why.label(), outcome])
                    .observe(began.elapsed().as_secs_f64());
            }
            served
        }
        .instrument(span),
    )
}

fn closed(group: &Group, close: Close) {
    debug!(reason = close.label(), "session closed");
    if close.at_switch() {
        group.tally.closed(group.route.generation(), close.label());
    }
    let m = &group.metrics;
    m.sessions_closed_total
        .with_label_values(&[close.label()])
        .inc();
    m.client_connections.dec();
}

/// The dedicated (1:1) session of `client`, whose first bytes (`first`, already read) are
/// forwarded before anything else it sends. `pinned`: a pooled client that needed a connection
/// of its own (`first` is the request that pinned it); else a new client (`first`, if any, is
/// what the gate let through). `lend`: whether the connection is lent to a pooled client for a
/// span (the session then returns it once the span is over: `Served::Returned`), and the state
/// of the pool the client came from.
async fn dedicated(
    mut client: Link,
    group: &Arc<Group>,
    shutdown: &CancellationToken,
    (first, pinned): (&[u8], bool),
    sent: impl FnOnce(),
    spare: Option<Box<(Link, u64, SocketAddr)>>,
    lend: &Lend<'_>,
) -> Served {
    // Memory per idle connection is mostly this task's future, so: the connect futures (large,
    // short-lived) are boxed and freed once connected, the session lives in one box, and no
    // temporary is kept across the session's life.
    let connect_wait = group.config().connect_wait;
    let fresh = spare.is_none();
    // A turn to open a connection (`Lend::turns`), held until Redis has answered on it: the
    // connect alone takes microseconds on a LAN, the round trips after it (the pool's state,
    // the first answer) the most under a storm of new clients, which would otherwise open
    // hundreds of connections side by side.
    let (acquired, turn) = match spare {
        Some(spare) => (Ok(*spare), None),
        None => {
            // A pinned client is not new: like a 1:1 session that already has its connection, it
            // is not held back by a master the watcher cannot reach right now.
            Box::pin(async {
                let turn = match lend.turns {
                    Some(turns) => turns.acquire().await.ok(),
                    None => None,
                };
                (
                    acquire_backend(group, shutdown, connect_wait, pinned).await,
                    turn,
                )
            })
            .await
        }
    };
    match acquired {
        Ok((mut backend, generation, addr)) => {
            Span::current().record("backend", tracing::field::display(addr));
            if pinned && (fresh || lend.name.is_some()) {
                // A pinned client: its request must reach Redis before what other clients send
                // after it (the pin barrier), and Redis reads a connection it has not accepted
                // yet only after the established ones. An answer means it has. First, the
                // connection state of the pool it came from (a spare has it already), and the
                // client's name.
                let state = if fresh { lend.state } else { &[] };
                let ready = Box::pin(async {
                    if !io::set_up(&mut backend, state).await? {
                        return Err(std::io::ErrorKind::PermissionDenied.into());
                    }
                    if let Some(setname) = lend.name.map(pooled::setname)
                        && io::exchange(&mut backend, &setname).await? != b'+'
                    {
                        return Err(std::io::ErrorKind::PermissionDenied.into());
                    }
                    if !fresh {
                        return Ok(b'+');
                    }
                    io::exchange(&mut backend, io::ACCEPTED).await
                });
                if !matches!(
                    timeout(group.config().connect_timeout, ready).await,
                    Ok(Ok(_))
                ) {
                    debug!(backend = %addr, "no answer on a new connection, or its state refused");
                    group.metrics.backend_connect_failures_total.inc();
                    let _ = timeout(Duration::from_secs(1), client.shutdown()).await;
                    return Served::Closed(Close::BackendClosed);
                }
            }
            drop(turn);
            group.route.attach(generation);
            let mut session = Box::new(Session::new(client, backend, generation, group));
            if lend.span {
                session.req.mode = crate::resp::Mode::Lent;
            }
            session.preload(lend.state);
            match (lend.span, lend.name) {
                (false, Some(name)) => session.preload(&[pooled::setname(name)]),
                // Not the connection's own state (it goes back to the pool without it), but
                // re-created by a move, in the span or after the client made it its own.
                (true, Some(name)) => session.lend_name(pooled::setname(name)),
                _ => {}
            }
            let ended = match lend.carried {
                None => {
                    if !first.is_empty() {
                        session.take_request_bytes(first);
                    }
                    session.run(shutdown, sent).await
                }
                // A session the predecessor handed over: what it carried first.
                Some(c) => Box::pin(session.resume(c, addr, first, shutdown)).await,
            };
            // A successor that takes sessions serves now (a live upgrade).
            let ended = match ended {
                dedicated::Ended::Closed(Close::Shutdown) if group.shared.handoff.on() => {
                    match Box::pin(session.hand_over(lend)).await {
                        true => dedicated::Ended::Closed(Close::HandedOver),
                        false => dedicated::Ended::Closed(Close::Shutdown),
                    }
                }
                ended => ended,
            };
            let state = match ended {
                dedicated::Ended::Returned => session.pool_state(),
                dedicated::Ended::Closed(_) => Vec::new(),
            };
            let Session {
                mut client,
                backend,
                generation,
                carrier,
                ..
            } = *session;
            group.route.detach(generation);
            if carrier {
                group.route.carrier_detach(generation);
            }
            match ended {
                // Returned only while `generation` is the route's: its target is the backend's.
                dedicated::Ended::Returned => {
                    let conn = group
                        .route
                        .load()
                        .target()
                        .map(|addr| Box::new((backend, generation, addr)));
                    Served::Returned(client, conn, state, None, false)
                }
                // Handed over: the socket is the successor's now, only this descriptor closes.
                dedicated::Ended::Closed(Close::HandedOver) => Served::Closed(Close::HandedOver),
                dedicated::Ended::Closed(close) => {
                    let _ = timeout(Duration::from_secs(1), client.shutdown()).await;
                    Served::Closed(close)
                }
            }
        }
        Err(close) => {
            if close == Close::NoMaster {
                Box::pin(no_master(&mut client, group)).await;
            }
            let _ = timeout(Duration::from_secs(1), client.shutdown()).await;
            Served::Closed(close)
        }
    }
}

/// Tell the client there is no master to send its requests to (Redis-style, one line; a second
/// at most), counted. (Boxed where awaited: a session's future has no room for its timer.)
pub(super) async fn no_master(client: &mut Link, group: &Group) {
    group.metrics.no_master_rejections_total.inc();
    let msg = format!(
        "-ERR sentinel-proxy: no master available for '{}'\r\n",
        group.master_name
    );
    let _ = timeout(Duration::from_secs(1), client.write_all(msg.as_bytes())).await;
}

/// Connect to the current verified master, waiting up to `wait` for one to exist (during an
/// operator's pause, up to the pause's wait if that is longer).
async fn acquire_backend(
    group: &Group,
    shutdown: &CancellationToken,
    wait: Duration,
    existing: bool,
) -> Result<(Link, u64, SocketAddr), Close> {
    let began = Instant::now();
    let mut deadline = began + wait;
    let mut changes = group.route.subscribe();
    loop {
        changes.borrow_and_update();
        let route = group.route.load();
        if route.held {
            // The operator's pause: a new client waits as long as a held request does.
            deadline = deadline.max(began + group.operator.wait());
        }
        let mut failed = false;
        // Just after a switch, a new client waits for the gate too (`fence.rs`): subscribers
        // re-subscribe on the new master before anyone can publish there.
        let asker = fence::Asker {
            backend: None,
            served: existing,
            carrier: false,
        };
        let carriers = group.route.carriers_elsewhere(route.generation);
        let (addr, gate) = match fence::admit(&route, asker, carriers, &mut fence::Clock::lazy()) {
            fence::Admit::Go(addr) => (Some(addr), None),
            fence::Admit::Hold(fence::Hold::Gate(until)) => (None, Some(until)),
            _ => (None, None),
        };
        if let Some(addr) = addr {
            let began = Instant::now();
            let connect = backend::open(group, addr);
            match timeout(group.config().connect_timeout, connect).await {
                Ok(Ok(stream)) => {
                    group
                        .metrics
                        .backend_connect_seconds
                        .observe(began.elapsed().as_secs_f64());
                    // The route may have moved while we connected; never hand out a stale master.
                    if group.route.generation() == route.generation {
                        return Ok((stream, route.generation, addr));
                    }
                    continue;
                }
                Ok(Err(e)) => debug!(backend = %addr, error = %e, "backend connect failed"),
                Err(_) => debug!(backend = %addr, "backend connect timed out"),
            }
            group.metrics.backend_connect_failures_total.inc();
            group.route.request_recheck();
            failed = true;
        }
        let retry = async {
            match (failed, gate) {
                (true, _) => sleep(RETRY_EVERY).await,
                (false, Some(until)) => sleep_until(until).await,
                (false, None) => std::future::pending::<()>().await,
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
#[cfg(test)]
mod tests {
    use super::*;

    fn size_of<F>(_: &F) -> usize {
        std::mem::size_of::<F>()
    }

    /// An idle connection's memory is its task (the `serve` or `serve_pooled` future) plus the
    /// boxed session, and no buffer (docs/PERFORMANCE.md). This fails if a change puts a buffer,
    /// or a large future alive for the whole connection, back into either.
    #[test]
    fn an_idle_session_stays_small() {
        let config = crate::Config::new(vec![], "m");
        let settings = config.groups().remove(0);
        let shared = Arc::new(crate::Shared::new(config));
        let group = Arc::new(Group::new(shared, settings));
        let shutdown = CancellationToken::new();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = l.local_addr().unwrap();
            let socket = || TcpStream::connect(addr);
            let session = Session::new(
                socket().await.unwrap().into(),
                socket().await.unwrap().into(),
                1,
                &group,
            );
            let serve = serve(socket().await.unwrap().into(), group.clone(), shutdown);
            let (session, serve) = (std::mem::size_of_val(&session), size_of(&serve));
            assert!(session <= 768, "Session is {session} bytes");
            // What every 1:1 session allocates once its master named its read-only commands
            // (`dedicated::Extra`: its reads in flight; the replies held for acks boxed apart).
            let extra = std::mem::size_of::<dedicated::Extra>();
            assert!(extra <= 72, "Extra is {extra} bytes");
            assert!(serve <= 1024, "the serve future is {serve} bytes");
            let sd = CancellationToken::new();
            let local = tokio::task::LocalSet::new();
            local
                .run_until(async {
                    let pool = pool::Pool::for_thread(1, &group, &sd, &[]);
                    let mut pooled =
                        pooled::Pooled::new(socket().await.unwrap().into(), &group, pool, None);
                    let pooled_size = std::mem::size_of_val(&pooled);
                    let run_size = size_of(&pooled.run());
                    let serve_pooled = serve_pooled(
                        socket().await.unwrap().into_std().unwrap(),
                        group.clone(),
                        sd.clone(),
                        None,
                    );
                    let serve_size = size_of(&serve_pooled);
                    // A pooled client's memory: the task (`serve_pooled`), the boxed session and
                    // its `run` future; no buffer, no backend socket.
                    // 10 000 idle pooled clients in ≤ 1.5 KiB each (pooled mode's target): the session
                    // 328 B today, its run future 80, the task's future 184 (docs/PERFORMANCE.md).
                    assert!(pooled_size <= 352, "Pooled is {pooled_size} bytes");
                    assert!(run_size <= 96, "the pooled run future is {run_size} bytes");
                    assert!(
                        serve_size <= 208,
                        "the serve_pooled future is {serve_size} bytes"
                    );
                    let client = std::mem::size_of::<conn::Client>();
                    assert!(client <= 168, "Client is {client} bytes");
                })
                .await;
        });
    }
}
