//! One client connection: wait for a verified master, connect, and forward bytes both ways
//! unchanged, while tracking RESP request/reply boundaries (`resp.rs`) so the proxy always knows
//! whether a request is in flight.
//!
//! The safety rules live here:
//! - **Fence.** Client bytes go to the backend only while the route generation is the one the
//!   backend was chosen under *and* the route is not paused. Otherwise the chunk is held (and the
//!   client is not read further, so memory stays bounded) while replies still in flight are
//!   relayed. No client byte ever reaches an old master after the swap.
//! - **Migration.** When the route moves to a new master, a session at a clean request boundary
//!   (no reply owed, not mid-request, not in MULTI/WATCH) reconnects to the new master, replays its
//!   connection state (AUTH, HELLO, SELECT, CLIENT SETNAME), and releases the held requests there:
//!   the client sees latency, not an error. The same happens when the master dies under an idle
//!   session. A session that cannot be moved (pub/sub, MONITOR, a blocking command in flight, an
//!   open transaction, state it cannot replay) is closed, at a boundary where there is one, and at
//!   the latest after `--drain-timeout`; requests it held were never sent anywhere.
//! - **Bad input.** Malformed RESP (or a bulk over `--max-request-bytes`) gets Redis's own
//!   `-ERR Protocol error: …` after the replies to the valid requests before it, then the
//!   connection is closed.
//!
//! Everything that can fail ends this task only; the listener never sees it.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tokio_util::sync::CancellationToken;
use tracing::{Span, debug, info};

use crate::Shared;
use crate::resp::{ProtocolError, ReplyTracker, RequestTracker};

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
    NoMaster,
    Shutdown,
    ProtocolError,
    BackendProtocolError,
    /// Moved masters while in pub/sub, MONITOR, a blocking command, or a transaction; or with
    /// state that cannot be replayed.
    SwitchPubSub,
    SwitchMonitor,
    SwitchBlocking,
    SwitchTransaction,
    SwitchMidRequest,
    SwitchUnmigratable,
    /// No request boundary before `--drain-timeout`.
    DrainDeadline,
    MigrateFailed,
    /// Idle longer than `--idle-timeout`.
    IdleTimeout,
}

impl Close {
    pub fn label(self) -> &'static str {
        match self {
            Close::ClientClosed => "client_closed",
            Close::BackendClosed => "backend_closed",
            Close::IoError => "io_error",
            Close::NoMaster => "no_master",
            Close::Shutdown => "shutdown",
            Close::ProtocolError => "protocol_error",
            Close::BackendProtocolError => "backend_protocol_error",
            Close::SwitchPubSub => "switch_pubsub",
            Close::SwitchMonitor => "switch_monitor",
            Close::SwitchBlocking => "switch_blocking",
            Close::SwitchTransaction => "switch_transaction",
            Close::SwitchMidRequest => "switch_mid_request",
            Close::SwitchUnmigratable => "switch_unmigratable",
            Close::DrainDeadline => "drain_deadline",
            Close::MigrateFailed => "migrate_failed",
            Close::IdleTimeout => "idle_timeout",
        }
    }
}

/// Serve one client until it ends. Runs inside the connection's tracing span.
pub async fn serve(mut client: TcpStream, shared: Arc<Shared>, shutdown: CancellationToken) {
    let m = &shared.metrics;
    m.client_connections.inc();
    m.client_connections_total.inc();
    tune(&client, shared.config().tcp_keepalive);
    let close = match acquire_backend(&shared, &shutdown, shared.config().connect_wait).await {
        Ok((backend, generation, addr)) => {
            Span::current().record("backend", tracing::field::display(addr));
            shared.route.attach(generation);
            let session = Session::new(client, backend, generation, &shared);
            let (close, generation, mut client) = session.run(&shutdown).await;
            shared.route.detach(generation);
            let _ = timeout(Duration::from_secs(1), client.shutdown()).await;
            close
        }
        Err(close) => {
            if close == Close::NoMaster {
                m.no_master_rejections_total.inc();
                let msg = format!(
                    "-ERR sentinel-proxy: no master available for '{}'\r\n",
                    shared.config().master_name
                );
                let _ = timeout(Duration::from_secs(1), client.write_all(msg.as_bytes())).await;
            }
            let _ = timeout(Duration::from_secs(1), client.shutdown()).await;
            close
        }
    };
    debug!(reason = close.label(), "session closed");
    m.sessions_closed_total
        .with_label_values(&[close.label()])
        .inc();
    m.client_connections.dec();
}

/// TCP_NODELAY (requests and replies are small and latency-bound) and keepalive (so a peer that
/// vanished without a FIN is noticed) on a client or backend socket. Failures are harmless.
fn tune(stream: &TcpStream, keepalive: Duration) {
    let _ = stream.set_nodelay(true);
    if !keepalive.is_zero() {
        let ka = socket2::TcpKeepalive::new()
            .with_time(keepalive)
            .with_interval(Duration::from_secs(10));
        let _ = socket2::SockRef::from(stream).set_tcp_keepalive(&ka);
    }
}

/// Connect to the current verified master, waiting up to `wait` for one to exist.
async fn acquire_backend(
    shared: &Shared,
    shutdown: &CancellationToken,
    wait: Duration,
) -> Result<(TcpStream, u64, SocketAddr), Close> {
    let deadline = Instant::now() + wait;
    let mut changes = shared.route.subscribe();
    loop {
        changes.borrow_and_update();
        let route = shared.route.load();
        let mut failed = false;
        if let Some(addr) = route.target() {
            let began = Instant::now();
            match timeout(shared.config().connect_timeout, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => {
                    shared
                        .metrics
                        .backend_connect_seconds
                        .observe(began.elapsed().as_secs_f64());
                    // The route may have moved while we connected; never hand out a stale master.
                    if shared.route.generation() == route.generation {
                        tune(&stream, shared.config().tcp_keepalive);
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

/// The request tracker's state just before the chunk that is held, i.e. of the stream actually
/// forwarded so far.
#[derive(Clone, Copy)]
struct Forwarded {
    at_boundary: bool,
    expected_replies: u64,
    in_transaction: bool,
    requests: u64,
}

struct Session<'a> {
    shared: &'a Shared,
    client: TcpStream,
    backend: TcpStream,
    generation: u64,
    req: RequestTracker,
    rep: ReplyTracker,
    /// Replies received from earlier backends of this session.
    reply_base: u64,
    up: Box<[u8]>,
    /// `up[..held]` was read from the client and not yet forwarded.
    held: usize,
    held_since: Option<Instant>,
    forwarded: Forwarded,
    down: Box<[u8]>,
    client_eof: bool,
    backend_gone: bool,
    protocol_error: Option<ProtocolError>,
    /// Set when the session must reach a boundary by then (after a switch, or a dead backend).
    deadline: Option<Instant>,
    shutting_down: bool,
    rechecked: bool,
    /// Last time bytes moved either way (only kept when `--idle-timeout` is on).
    last_active: Instant,
}

enum Step {
    /// Nothing more to do until something happens.
    Continue,
    /// The state changed (e.g. the session moved): act on it again before waiting.
    Again,
    Close(Close),
}

impl<'a> Session<'a> {
    fn new(client: TcpStream, backend: TcpStream, generation: u64, shared: &'a Shared) -> Self {
        let req = RequestTracker::new(shared.config().max_request_bytes);
        let forwarded = Forwarded {
            at_boundary: true,
            expected_replies: 0,
            in_transaction: false,
            requests: 0,
        };
        Session {
            shared,
            client,
            backend,
            generation,
            req,
            rep: ReplyTracker::new(),
            reply_base: 0,
            up: vec![0u8; BUF_SIZE].into_boxed_slice(),
            held: 0,
            held_since: None,
            forwarded,
            down: vec![0u8; BUF_SIZE].into_boxed_slice(),
            client_eof: false,
            backend_gone: false,
            protocol_error: None,
            deadline: None,
            shutting_down: false,
            rechecked: false,
            last_active: Instant::now(),
        }
    }

    /// Replies the current forwarded stream still owes the client.
    fn in_flight(&self) -> u64 {
        self.forwarded
            .expected_replies
            .saturating_sub(self.reply_base + self.rep.replies)
    }

    /// The state of the stream actually forwarded: before the held chunk if one is held.
    fn forwarded_state(&self) -> Forwarded {
        if self.held > 0 {
            self.forwarded
        } else {
            self.snapshot()
        }
    }

    fn snapshot(&self) -> Forwarded {
        Forwarded {
            at_boundary: self.req.at_request_boundary(),
            expected_replies: self.req.expected_replies,
            in_transaction: self.req.in_transaction,
            requests: self.req.requests,
        }
    }

    /// Returns why it ended, the generation it ended on, and the client socket.
    async fn run(mut self, shutdown: &CancellationToken) -> (Close, u64, TcpStream) {
        let mut changes = self.shared.route.subscribe();
        changes.borrow_and_update();
        // One coarse timer per session, not one per request: checks idleness a few times per
        // timeout period.
        let idle = self.shared.config().idle_timeout;
        let mut idle_check = (!idle.is_zero()).then(|| {
            let mut i = tokio::time::interval_at(Instant::now() + idle / 4, idle / 4);
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            i
        });
        let close = loop {
            match self.step().await {
                Step::Close(c) => break c,
                Step::Again => continue,
                Step::Continue => {}
            }
            if let Step::Close(c) = self
                .wait(&mut changes, shutdown, idle_check.as_mut(), idle)
                .await
            {
                break c;
            }
        };
        if self.held > 0 {
            self.count_held("dropped");
        }
        (close, self.generation, self.client)
    }

    /// Wait for the next thing to happen: client bytes, backend bytes, a route change, a
    /// deadline, shutdown.
    async fn wait(
        &mut self,
        changes: &mut watch::Receiver<u64>,
        shutdown: &CancellationToken,
        idle_check: Option<&mut tokio::time::Interval>,
        idle: Duration,
    ) -> Step {
        let idle_on = idle_check.is_some();
        let idle_tick = async {
            match idle_check {
                Some(i) => {
                    i.tick().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        let read_client = self.held == 0
            && !self.client_eof
            && self.protocol_error.is_none()
            && !self.shutting_down;
        let read_backend = !self.backend_gone;
        let deadline = self.deadline;
        // Backend first: a reply (or the backend's end) that is already there is handled before
        // the next client bytes, so a request is never written to a backend known to be gone.
        tokio::select! {
            biased;
            r = self.backend.read(&mut self.down), if read_backend => match r {
                Ok(0) | Err(_) => self.backend_lost(),
                Ok(n) => {
                    if idle_on {
                        self.last_active = Instant::now();
                    }
                    self.relay_reply(n).await
                }
            },
            r = self.client.read(&mut self.up), if read_client => match r {
                Ok(0) => {
                    self.client_eof = true;
                    // Half-close: pass the FIN on and keep relaying replies.
                    if !self.backend_gone {
                        let _ = self.backend.shutdown().await;
                    }
                    Step::Continue
                }
                Ok(n) => {
                    if idle_on {
                        self.last_active = Instant::now();
                    }
                    self.shared.metrics.client_bytes_received_total.inc_by(n as u64);
                    self.forwarded = self.snapshot();
                    match self.req.feed(&self.up[..n]) {
                        Ok(()) => self.held = n,
                        Err((e, valid)) => {
                            self.held = valid;
                            self.protocol_error = Some(e);
                        }
                    }
                    Step::Continue
                }
                Err(e) => {
                    debug!(error = %e, "client read error");
                    Step::Close(Close::IoError)
                }
            },
            _ = changes.changed() => Step::Continue,
            _ = idle_tick => {
                // Like Redis's `timeout`: never a client owed a reply, blocked, or subscribed.
                let quiet = self.last_active.elapsed() >= idle
                    && self.held == 0
                    && self.in_flight() == 0
                    && self.req.at_request_boundary()
                    && !self.req.pubsub
                    && !self.req.monitor;
                if quiet { Step::Close(Close::IdleTimeout) } else { Step::Continue }
            }
            _ = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                if self.backend_gone && !self.shutting_down {
                    Step::Close(Close::BackendClosed)
                } else if self.shutting_down {
                    Step::Close(Close::Shutdown)
                } else {
                    Step::Close(Close::DrainDeadline)
                }
            }
            _ = shutdown.cancelled(), if !self.shutting_down => {
                self.shutting_down = true;
                self.deadline = Some(Instant::now() + self.shared.config().shutdown_timeout);
                Step::Continue
            }
        }
    }

    async fn relay_reply(&mut self, n: usize) -> Step {
        if self.rep.feed(&self.down[..n]).is_err() {
            debug!("backend sent bytes that are not RESP");
            return Step::Close(Close::BackendProtocolError);
        }
        if self.rep.saw_not_master && !self.rechecked {
            // A partitioned or demoted master: have the watcher look now.
            self.rechecked = true;
            self.shared.metrics.not_master_replies_total.inc();
            self.shared.route.request_recheck();
        }
        if let Err(e) = self.client.write_all(&self.down[..n]).await {
            debug!(error = %e, "client write error");
            return Step::Close(Close::ClientClosed);
        }
        self.shared.metrics.client_bytes_sent_total.inc_by(n as u64);
        Step::Continue
    }

    fn backend_lost(&mut self) -> Step {
        self.backend_gone = true;
        let generation_moved = self.shared.route.generation() != self.generation;
        if self.client_eof {
            return Step::Close(Close::ClientClosed);
        }
        // A reply was owed, or the session cannot be moved: the client must see the loss.
        if self.in_flight() > 0 || !self.movable() {
            return Step::Close(Close::BackendClosed);
        }
        // Idle on a master that went away: wait for the next verified master and move there.
        if !generation_moved {
            self.shared.route.request_recheck();
        }
        if self.deadline.is_none() {
            self.deadline = Some(Instant::now() + self.shared.config().connect_wait);
        }
        Step::Continue
    }

    /// Whether the forwarded stream is at a clean boundary from which the session can move.
    fn movable(&self) -> bool {
        let f = self.forwarded_state();
        f.at_boundary
            && !f.in_transaction
            && !self.req.pubsub
            && !self.req.monitor
            && !self.req.unmigratable
    }

    /// Act on the current state: forward held bytes, migrate, close.
    async fn step(&mut self) -> Step {
        let route = self.shared.route.load();
        let switched = route.generation != self.generation;

        if switched || self.backend_gone {
            if switched && !self.backend_gone {
                if self.req.pubsub {
                    return Step::Close(Close::SwitchPubSub);
                }
                if self.req.monitor {
                    return Step::Close(Close::SwitchMonitor);
                }
                let replies = self.reply_base + self.rep.replies;
                if replies < self.req.blocking_seq && self.in_flight() > 0 {
                    return Step::Close(Close::SwitchBlocking);
                }
            }
            let f = self.forwarded_state();
            if !f.at_boundary {
                // Part of a request went to the old master; nothing can complete it now.
                return Step::Close(Close::SwitchMidRequest);
            }
            if self.deadline.is_none() {
                self.deadline = Some(Instant::now() + self.shared.config().drain_timeout);
            }
            if self.in_flight() > 0 {
                return Step::Continue; // let the old master finish its replies
            }
            if f.in_transaction {
                return Step::Close(Close::SwitchTransaction);
            }
            if self.req.unmigratable {
                return Step::Close(Close::SwitchUnmigratable);
            }
            if self.shutting_down {
                return Step::Close(Close::Shutdown);
            }
            if self.held > 0 && self.held_since.is_none() {
                self.held_since = Some(Instant::now());
            }
            let Some(addr) = route.target() else {
                return Step::Continue; // no verified master yet: hold until one, or the deadline
            };
            return match self.migrate(addr, route.generation).await {
                Ok(()) => {
                    self.shared
                        .metrics
                        .migrations_total
                        .with_label_values(&["ok"])
                        .inc();
                    self.deadline = None;
                    Step::Again // release what is held to the new master now
                }
                Err(None) => {
                    // Could not connect: the watcher re-checks; wait for it or the deadline.
                    self.shared.route.request_recheck();
                    Step::Continue
                }
                Err(Some(close)) => {
                    self.shared
                        .metrics
                        .migrations_total
                        .with_label_values(&["failed"])
                        .inc();
                    Step::Close(close)
                }
            };
        }

        if self.shutting_down {
            // Two-phase shutdown: nothing new is forwarded; close at the first boundary.
            let f = self.forwarded_state();
            if f.at_boundary && self.in_flight() == 0 {
                return Step::Close(Close::Shutdown);
            }
            return Step::Continue;
        }

        if self.held > 0 {
            if route.paused {
                if self.held_since.is_none() {
                    self.held_since = Some(Instant::now());
                }
                return Step::Continue;
            }
            if self.held_since.is_some() {
                self.count_held("same_master");
            }
            if let Err(e) = self.backend.write_all(&self.up[..self.held]).await {
                debug!(error = %e, "backend write error");
                return Step::Close(Close::IoError);
            }
            self.held = 0;
            self.forwarded = self.snapshot();
        }

        if let Some(e) = self.protocol_error
            && self.in_flight() == 0
        {
            self.shared.metrics.protocol_errors_total.inc();
            let msg = format!("-ERR Protocol error: {}\r\n", e.message());
            let _ = timeout(
                Duration::from_secs(1),
                self.client.write_all(msg.as_bytes()),
            )
            .await;
            return Step::Close(Close::ProtocolError);
        }
        Step::Continue
    }

    /// Move to the new master: connect, replay connection state, swallow its replies.
    /// `Err(None)`: the connect failed (worth another try); `Err(Some(_))`: give up.
    async fn migrate(&mut self, addr: SocketAddr, generation: u64) -> Result<(), Option<Close>> {
        let cfg = &self.shared.config();
        let began = Instant::now();
        let mut backend = match timeout(cfg.connect_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => {
                let m = &self.shared.metrics;
                m.backend_connect_seconds
                    .observe(began.elapsed().as_secs_f64());
                s
            }
            _ => {
                self.shared.metrics.backend_connect_failures_total.inc();
                return Err(None);
            }
        };
        tune(&backend, cfg.tcp_keepalive);
        if self.req.replay_count > 0 {
            let replay = async {
                backend.write_all(&self.req.replay).await?;
                let mut tracker = ReplyTracker::new();
                let mut buf = [0u8; 1024];
                while tracker.replies < self.req.replay_count as u64 {
                    let n = backend.read(&mut buf).await?;
                    if n == 0 {
                        return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
                    }
                    tracker.feed(&buf[..n]).map_err(|_| {
                        io::Error::new(io::ErrorKind::InvalidData, "reply is not RESP")
                    })?;
                    if tracker.errors > 0 {
                        return Err(io::Error::other("replayed command failed"));
                    }
                }
                Ok::<(), io::Error>(())
            };
            if let Err(e) = timeout(cfg.connect_timeout, replay)
                .await
                .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))
            {
                info!(backend = %addr, error = %e, "could not replay connection state on the new master");
                return Err(Some(Close::MigrateFailed));
            }
        }
        self.reply_base += self.rep.replies;
        self.rep = ReplyTracker::new();
        self.backend = backend;
        self.backend_gone = false;
        self.shared.route.attach(generation);
        self.shared.route.detach(self.generation);
        self.generation = generation;
        self.rechecked = false;
        Span::current().record("backend", tracing::field::display(addr));
        debug!(backend = %addr, "session moved to the new master");
        if self.held > 0 {
            self.count_held("new_master");
        }
        Ok(())
    }

    fn count_held(&mut self, outcome: &str) {
        let requests = self.req.requests - self.forwarded.requests;
        let m = &self.shared.metrics;
        m.held_requests_total
            .with_label_values(&[outcome])
            .inc_by(requests);
        if let Some(since) = self.held_since.take() {
            m.hold_seconds.observe(since.elapsed().as_secs_f64());
        }
    }
}
