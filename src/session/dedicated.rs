//! The dedicated (1:1) session: one client, one backend connection, bytes forwarded both ways
//! unchanged while RESP request/reply boundaries are tracked (`resp/`), so the proxy always
//! knows whether a request is in flight.
//!
//! The safety rules live here:
//! - **Fence.** Client bytes go to the backend only while the route generation is the one the
//!   backend was chosen under *and* the route is not paused. Otherwise the chunk is held (and the
//!   client is not read further, so memory stays bounded) while replies still in flight are
//!   relayed. No client byte ever reaches an old master after the swap.
//! - **Migration.** When the route moves to a new master, a session at a clean request boundary
//!   (no reply owed, not mid-request) reconnects to the new master, re-creates what the client
//!   built on its connection (`carry.rs`: state, subscriptions, an open MULTI, WATCH, tracking,
//!   MONITOR, a blocking command in flight; `migrate.rs` does it), and releases the held requests
//!   there: the client sees latency, not an error. The same happens when the master dies under
//!   the session. A session whose state cannot be carried is closed, at a boundary where there is
//!   one, and at the latest after `--drain-timeout`; requests it held were never sent anywhere.
//!   When to move is decided in `fence.rs`, acted on in `dedicated/step.rs`.
//! - **A master that dies.** Reads in flight are sent again to the next master (`again.rs`,
//!   `lost.rs`); a write in flight closes the client (its outcome is unknown).
//! - **Durable acknowledgements** (`ack = replicas:N`): a write's reply, and what follows it,
//!   waits for the group's barrier (`hold.rs`, `session/barrier.rs`).
//! - **Byte pipe.** After `SYNC`/`PSYNC` (a replication stream: an RDB payload, then commands)
//!   or a reply the tracker cannot follow, the session stops tracking and passes bytes through
//!   unchanged for the rest of its life, like an L4 splice. The fence still holds its bytes while
//!   the route is paused; it is never moved, and is closed at a switch.
//! - **QUIT.** Redis answers `+OK` and closes; the client connection closes with it (never moved
//!   to a new backend). So does a connection the master closes while it still accepts new ones
//!   (`CLIENT KILL`, its `timeout`): only a master that went away makes an idle session move.
//! - **Bad input.** Malformed RESP (or a bulk over `--max-request-bytes`) gets Redis's own
//!   `-ERR Protocol error: …` after the replies to the valid requests before it, then the
//!   connection is closed.
//! - **Memory.** A session keeps bytes only while a peer's socket is full or the fence holds
//!   them, and does not read a side whose bytes are still pending (`io.rs`); and a copy of the
//!   reads in flight (up to 64 KiB), and the replies held for the replicas.

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use crate::tls::Link;
use tokio::sync::watch;
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::carry::Carry;
use super::fence::{self, gate_until};
use super::io::{Pending, SCRATCH, arm, read_scratch, write_now};
use super::{Close, Pipe};
use crate::Group;
use crate::resp::{Mode, ProtocolError, ReplyTracker, RequestTracker};

mod again;
mod hold;
mod lost;
mod replies;
mod step;

/// What a session keeps beyond forwarding, in one box (an idle session stays small): the
/// replies waiting for the replicas (`ack = replicas:N`), and its reads in flight, to send
/// again if the master dies before answering them (once it said which commands read).
pub(super) struct Extra {
    /// Boxed again: most sessions have no acks, and every 1:1 session has an `Extra`.
    hold: Option<Box<hold::Hold>>,
    again: Option<again::Again>,
}

/// The request tracker's state just before the chunk that is held, i.e. of the stream actually
/// forwarded so far.
#[derive(Clone, Copy)]
pub(super) struct Forwarded {
    pub(super) at_boundary: bool,
    pub(super) expected_replies: u64,
    pub(super) requests: u64,
}

pub(super) struct Session<'a> {
    pub(super) group: &'a Group,
    pub(super) client: Link,
    pub(super) backend: Link,
    pub(super) generation: u64,
    pub(super) req: RequestTracker,
    pub(super) rep: ReplyTracker,
    /// Replies received from earlier backends of this session.
    pub(super) reply_base: u64,
    /// What the client built on its connection that a move must re-create (`carry.rs`); only for
    /// sessions that sent such a request.
    pub(super) carry: Option<Box<Carry>>,
    /// Counted in the route's carriers (a subscriber, MONITOR or blocked command) on `generation`.
    pub(super) carrier: bool,
    /// Waiting for carriers to move (the gate), at most `GATE_MAX` after the switch.
    pub(super) gated: bool,
    pub(super) changes: watch::Receiver<u64>,
    /// Read from the client and not yet forwarded: the fence holds it, or the route moved.
    pub(super) held: Pending,
    pub(super) held_since: Option<Instant>,
    pub(super) forwarded: Forwarded,
    /// Forwarded to this backend (counted in `forwarded`) but not yet written: its socket was full.
    pub(super) unsent: Pending,
    /// Read from the backend and not yet written to the client: the client's socket was full.
    pub(super) replies: Pending,
    /// `step()` found the route open to this session's backend (same generation, no pause, not
    /// shutting down), so client bytes may go straight on while `changes` shows no change.
    pub(super) open: bool,
    /// `--idle-timeout` is on: keep `last_active`.
    pub(super) idle_on: bool,
    pub(super) client_eof: bool,
    pub(super) backend_gone: bool,
    pub(super) protocol_error: Option<ProtocolError>,
    /// Set when the session must reach a boundary by then (after a switch, or a dead backend).
    pub(super) deadline: Option<Instant>,
    /// The timer of `deadline`, boxed and only while there is one: idle sessions stay small.
    pub(super) deadline_timer: Option<Pin<Box<tokio::time::Sleep>>>,
    pub(super) shutting_down: bool,
    pub(super) rechecked: bool,
    /// No longer tracking RESP: bytes pass through unchanged.
    pub(super) pipe: Option<Pipe>,
    /// Last time bytes moved either way (only kept when `--idle-timeout` is on).
    pub(super) last_active: Instant,
    /// What the session keeps beyond forwarding ([`Extra`]); the tracker marks each request for
    /// it.
    pub(super) extra: Option<Box<Extra>>,
}

/// Which socket is ready for what (see `Session::wait`).
enum Ready {
    BackendReadable,
    ClientWritable,
    BackendWritable,
    ClientReadable,
}

/// How a dedicated session's run ended.
pub(super) enum Ended {
    Closed(Close),
    /// A span borrowed from the pool is over (`returnable`): the client goes back to the pool
    /// and its connection is given back, as it was lent.
    Returned,
}

pub(super) enum Step {
    /// Nothing more to do until something happens.
    Continue,
    /// The state changed (e.g. the session moved): act on it again before waiting.
    Again,
    /// Move to this master (of this generation).
    Move(SocketAddr, u64),
    /// Answer the client's malformed input and close.
    Refuse(ProtocolError),
    Close(Close),
}

impl<'a> Session<'a> {
    pub(super) fn new(client: Link, backend: Link, generation: u64, group: &'a Group) -> Self {
        let mut req = RequestTracker::new(group.config().max_request_bytes);
        let (hold, again) = (
            hold::Hold::new(group).map(Box::new),
            again::Again::new(group),
        );
        let extra = (hold.is_some() || again.is_some()).then(|| Box::new(Extra { hold, again }));
        req.marking = extra.is_some();
        let forwarded = Forwarded {
            at_boundary: true,
            expected_replies: 0,
            requests: 0,
        };
        Session {
            group,
            client,
            backend,
            generation,
            req,
            rep: ReplyTracker::new(),
            reply_base: 0,
            carry: None,
            carrier: false,
            gated: false,
            changes: group.route.subscribe(),
            held: Pending::default(),
            held_since: None,
            forwarded,
            unsent: Pending::default(),
            replies: Pending::default(),
            open: false,
            idle_on: !group.config().idle_timeout.is_zero(),
            client_eof: false,
            backend_gone: false,
            protocol_error: None,
            deadline: None,
            deadline_timer: None,
            shutting_down: false,
            rechecked: false,
            pipe: None,
            last_active: Instant::now(),
            extra,
        }
    }

    /// The replies waiting for the replicas, if the group asks for durable acknowledgements.
    fn hold(&self) -> Option<&hold::Hold> {
        self.extra.as_ref().and_then(|x| x.hold.as_deref())
    }

    /// No reply waits for the replicas.
    pub(super) fn hold_empty(&self) -> bool {
        self.hold().is_none_or(|h| h.is_empty())
    }

    /// Replies the current forwarded stream still owes the client.
    pub(super) fn in_flight(&self) -> u64 {
        self.forwarded
            .expected_replies
            .saturating_sub(self.reply_base + self.rep.replies)
    }

    /// The state of the stream actually forwarded: before the held chunk if one is held.
    pub(super) fn forwarded_state(&self) -> Forwarded {
        if !self.held.is_empty() {
            self.forwarded
        } else {
            self.snapshot()
        }
    }

    pub(super) fn snapshot(&self) -> Forwarded {
        Forwarded {
            at_boundary: self.req.at_request_boundary(),
            expected_replies: self.req.expected_replies,
            requests: self.req.requests,
        }
    }

    /// Serve until the session ends; returns why. `sent` is called after the first step (which
    /// forwards what the session holds, when the route allows) and before anything waits.
    pub(super) async fn run(&mut self, shutdown: &CancellationToken, sent: impl FnOnce()) -> Ended {
        let mut sent = Some(sent);
        // One coarse timer per session, not one per request: checks idleness a few times per
        // timeout period.
        let idle = self.group.config().idle_timeout;
        let mut idle_check = (!idle.is_zero()).then(|| {
            let mut i = tokio::time::interval_at(Instant::now() + idle / 4, idle / 4);
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            i
        });
        let close = loop {
            // The rare steps that wait on I/O run boxed, so the session's own future (alive as
            // long as the connection) stays small.
            let step = match self.step() {
                Step::Move(addr, generation) => Box::pin(self.move_to(addr, generation)).await,
                Step::Refuse(e) => Box::pin(self.refuse(e)).await,
                step => step,
            };
            if let Some(sent) = sent.take() {
                sent();
            }
            match step {
                Step::Close(c) => break c,
                Step::Again => continue,
                _ => {}
            }
            if self.req.mode == Mode::Lent && self.returnable() {
                return Ended::Returned;
            }
            if let Step::Close(c) = self.wait(shutdown, idle_check.as_mut(), idle).await {
                break c;
            }
        };
        // Replies already read are the client's, whatever the reason for closing.
        if !self.replies.is_empty() || self.client.wants_flush() {
            Box::pin(self.deliver_replies()).await;
        }
        if !self.held.is_empty() {
            self.count_held("dropped");
        }
        if close == Close::NoMaster {
            // Held by the operator's pause past its wait: told why, as a new client would be.
            Box::pin(super::no_master(&mut self.client, self.group)).await;
        }
        Ended::Closed(close)
    }

    /// The connection was opened with a pool's state (`Carry::pool_state`: its user, protocol,
    /// database): a move opens the next one with it too.
    pub(super) fn preload(&mut self, state: &[Vec<u8>]) {
        if state.is_empty() {
            return;
        }
        let carry = self.carry.get_or_insert_with(|| Box::new(Carry::new()));
        carry.preload(state);
        self.req.resp3 = carry.resp3;
    }

    /// The connection is lent to a pooled client named with `setname`: a move re-creates it.
    pub(super) fn lend_name(&mut self, setname: Vec<u8>) {
        self.carry
            .get_or_insert_with(|| Box::new(Carry::new()))
            .lend_name(setname);
    }

    /// The pool state the client leaves a lent connection with (`returnable`).
    pub(super) fn pool_state(&self) -> Vec<Vec<u8>> {
        self.carry
            .as_ref()
            .and_then(|c| c.pool_state())
            .unwrap_or_default()
    }

    /// A connection lent for a span can go back to the pool: the span is over (no transaction
    /// or WATCH open, nothing blocked, no reply owed, not mid-request, nothing held or pending
    /// either way), the client set nothing of its own on it but what a pool can share (its
    /// user, protocol, database: `Carry::pool_state`; no name, subscription, MONITOR, tracking,
    /// reply mode, unknown command: `RequestTracker::pin`), and it is to the routed master with
    /// no move or deadline under way.
    fn returnable(&self) -> bool {
        let req = &self.req;
        req.pin.is_none()
            && req.at_request_boundary()
            && !req.in_transaction
            && !req.pubsub
            && !req.monitor
            && !req.quit
            && !req.replication
            && self.in_flight() == 0
            && self.held.is_empty()
            && self.unsent.is_empty()
            && self.replies.is_empty()
            && self.carry.as_ref().is_none_or(|c| c.poolable())
            && self.pipe.is_none()
            && !self.client_eof
            && !self.backend_gone
            && self.protocol_error.is_none()
            && !self.shutting_down
            && self.deadline.is_none()
            && !self.carrier
            && self.hold().is_none_or(|h| h.is_empty())
            && self.group.route.generation() == self.generation
    }

    /// Wait for the next thing to happen: client bytes, backend bytes, room to write what is
    /// pending, a route change, a deadline, shutdown.
    async fn wait(
        &mut self,
        shutdown: &CancellationToken,
        idle_check: Option<&mut tokio::time::Interval>,
        idle: Duration,
    ) -> Step {
        let idle_tick = async {
            match idle_check {
                Some(i) => {
                    i.tick().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        // Neither side is read while what it sent earlier is still pending: that is the
        // backpressure that keeps a session's memory at one read per direction.
        let read_client = self.held.is_empty()
            && self.unsent.is_empty()
            && !self.client_eof
            && self.protocol_error.is_none()
            && !self.shutting_down;
        let read_backend =
            !self.backend_gone && self.replies.is_empty() && self.hold().is_none_or(|h| !h.full());
        let flush_backend =
            !self.backend_gone && (!self.unsent.is_empty() || self.backend.wants_flush());
        let flush_client = !self.replies.is_empty() || self.client.wants_flush();
        let gate = self
            .gated
            .then(|| gate_until(&self.group.route.load(), fence::Now::get()));
        arm(&mut self.deadline_timer, self.deadline, gate);
        let deadline_timer = &mut self.deadline_timer;
        let mut barrier = self
            .extra
            .as_deref_mut()
            .and_then(|x| x.hold.as_deref_mut())
            .filter(|h| h.waiting());
        let barrier_moved = std::future::poll_fn(|cx| match &mut barrier {
            Some(h) => h.poll_barrier(cx),
            None => Poll::Pending,
        });
        let deadline_passed = std::future::poll_fn(|cx| match deadline_timer {
            Some(timer) => timer.as_mut().poll(cx),
            None => Poll::Pending,
        });
        // Socket readiness is polled in place (no readiness future is stored: an idle session
        // stays small). Backend first: a reply (or the backend's end) that is already there is
        // handled before the next client bytes, so a request is never written to a backend
        // known to be gone. A readiness error is reported as ready: the I/O call then sees it.
        let (client, backend) = (&self.client, &self.backend);
        let ready = std::future::poll_fn(|cx| {
            if read_backend && backend.poll_read_ready(cx).is_ready() {
                Poll::Ready(Ready::BackendReadable)
            } else if flush_client && client.poll_write_ready(cx).is_ready() {
                Poll::Ready(Ready::ClientWritable)
            } else if flush_backend && backend.poll_write_ready(cx).is_ready() {
                Poll::Ready(Ready::BackendWritable)
            } else if read_client && client.poll_read_ready(cx).is_ready() {
                Poll::Ready(Ready::ClientReadable)
            } else {
                Poll::Pending
            }
        });
        tokio::select! {
            biased;
            ready = ready => match ready {
                Ready::BackendReadable => match read_scratch(&mut self.backend).await {
                    None => Step::Continue,
                    Some(Ok(0)) | Some(Err(_)) => self.backend_lost(),
                    Some(Ok(n)) => SCRATCH.with_borrow(|s| self.relay_reply(&s[..n])),
                },
                Ready::ClientWritable => self.flush_replies(),
                Ready::BackendWritable => self.flush_unsent(),
                Ready::ClientReadable => match read_scratch(&mut self.client).await {
                    None => Step::Continue,
                    Some(Ok(0)) => {
                        self.client_eof = true;
                        // Half-close: pass the FIN on and keep relaying replies.
                        if !self.backend_gone {
                            let _ = self.backend.shutdown().await;
                        }
                        Step::Continue
                    }
                    Some(Ok(n)) => SCRATCH.with_borrow(|s| self.take_request_bytes(&s[..n])),
                    Some(Err(e)) => {
                        debug!(error = %e, "client read error");
                        Step::Close(Close::IoError)
                    }
                },
            },
            _ = self.changes.changed() => Step::Continue,
            moved = barrier_moved => match moved {
                true => self.released(),
                false => Step::Continue,
            },
            _ = idle_tick => {
                // Like Redis's `timeout`: never a client owed a reply, blocked, or subscribed.
                let quiet = self.last_active.elapsed() >= idle
                    && self.held.is_empty()
                    && self.unsent.is_empty()
                    && self.replies.is_empty()
                    && self.in_flight() == 0
                    && self.req.at_request_boundary()
                    && !self.req.pubsub
                    && !self.req.monitor
                    && self.pipe.is_none()
                    && self.hold().is_none_or(|h| h.is_empty());
                if quiet { Step::Close(Close::IdleTimeout) } else { Step::Continue }
            }
            // The gate's time or the deadline: the fence decides which (`fence.rs`).
            _ = deadline_passed => Step::Continue,
            _ = shutdown.cancelled(), if !self.shutting_down => {
                self.shutting_down = true;
                self.deadline = Some(Instant::now() + self.group.config().shutdown_timeout);
                Step::Continue
            }
        }
    }

    /// Bytes just read from the client: track them, then forward them at once if the route is
    /// open (the common case: no copy), else keep them as held for `step()` to decide.
    pub(super) fn take_request_bytes(&mut self, bytes: &[u8]) -> Step {
        if self.idle_on {
            self.last_active = Instant::now();
        }
        let m = &self.group.metrics;
        m.client_bytes_received_total.inc_by(bytes.len() as u64);
        self.forwarded = self.snapshot();
        let valid = match self.pipe {
            Some(_) => bytes.len(),
            None => match self.req.feed(bytes) {
                Ok(()) => bytes.len(),
                Err((e, valid)) => {
                    self.protocol_error = Some(e);
                    valid
                }
            },
        };
        if self.req.replication && self.pipe.is_none() {
            self.become_pipe(Pipe::Replication);
        }
        if !self.req.captured.is_empty() {
            self.take_captures();
        }
        let chunk = &bytes[..valid];
        // `held` and `unsent` are empty here: the client is read only then.
        if self.open && !self.backend_gone && matches!(self.changes.has_changed(), Ok(false)) {
            return self.forward(chunk);
        }
        self.held.push(chunk);
        Step::Continue
    }

    /// Requests the tracker captured go to the carry (created at the first), which resolves them
    /// as their replies pass.
    pub(super) fn take_captures(&mut self) {
        if let Some(x) = self.extra.as_deref_mut() {
            let unaligned = (self.req.pubsub && !self.req.resp3) || self.req.monitor;
            self.req.captured.retain(|c| match c.kind {
                crate::resp::CaptureKind::Mark(m) => {
                    if let Some(h) = &mut x.hold {
                        h.mark(m, c.before, unaligned);
                    }
                    if let Some(a) = &mut x.again {
                        a.note(m);
                    }
                    false
                }
                _ => true,
            });
            if self.req.captured.is_empty() {
                return;
            }
        }
        let carry = self.carry.get_or_insert_with(|| Box::new(Carry::new()));
        carry.capture(&self.req.captured, &self.req.captured_bytes);
        self.req.captured.clear();
        self.req.captured_bytes.clear();
        self.sync_carrier();
    }

    /// Count this session in the route's carriers while it subscribes, MONITORs or waits in a
    /// blocking command: at a switch, other sessions are held until it has moved, so nothing a
    /// producer sends on the new master comes before its subscription, MONITOR or re-issued pop
    /// (an `XREAD … $` would miss it).
    pub(super) fn sync_carrier(&mut self) {
        let carrying = self.req.pubsub
            || self.req.monitor
            || self.carry.as_ref().is_some_and(|c| c.blocked.is_some());
        if carrying != self.carrier {
            self.carrier = carrying;
            if carrying {
                self.group.route.carrier_attach(self.generation);
            } else {
                self.group.route.carrier_detach(self.generation);
            }
        }
    }

    /// Commit client bytes to the backend: written now as far as its socket takes them, the
    /// rest kept in `unsent`. Either way they count as forwarded from here on.
    pub(super) fn forward(&mut self, bytes: &[u8]) -> Step {
        if let Some(a) = self.extra.as_deref_mut().and_then(|x| x.again.as_mut()) {
            let quiet = self.forwarded.at_boundary
                && self.forwarded.expected_replies == self.reply_base + self.rep.replies;
            a.forwarded(bytes, quiet, self.forwarded.expected_replies);
        }
        match write_now(&mut self.backend, bytes) {
            Ok(w) => self.unsent.push(&bytes[w..]),
            Err(e) => {
                debug!(error = %e, "backend write error");
                return Step::Close(Close::IoError);
            }
        }
        self.forwarded = self.snapshot();
        Step::Continue
    }

    fn flush_unsent(&mut self) -> Step {
        // On TLS, the records of requests already taken go first.
        let flushed = self.backend.flush_now();
        match flushed.and_then(|()| write_now(&mut self.backend, self.unsent.bytes())) {
            Ok(w) => {
                self.unsent.consume(w);
                Step::Continue
            }
            Err(e) => {
                debug!(error = %e, "backend write error");
                Step::Close(Close::IoError)
            }
        }
    }

    /// Like Redis: the replies to the valid requests before it, the error, then close.
    async fn refuse(&mut self, e: ProtocolError) -> Step {
        self.deliver_replies().await;
        self.group.metrics.protocol_errors_total.inc();
        let msg = format!("-ERR Protocol error: {}\r\n", e.message());
        let write = async {
            self.client.write_all(msg.as_bytes()).await?;
            self.client.flush().await
        };
        let _ = timeout(Duration::from_secs(1), write).await;
        Step::Close(Close::ProtocolError)
    }

    pub(super) fn count_held(&mut self, outcome: &str) {
        let requests = self.req.requests - self.forwarded.requests;
        let m = &self.group.metrics;
        m.held_requests_total
            .with_label_values(&[outcome])
            .inc_by(requests);
        if let Some(since) = self.held_since.take() {
            m.hold_seconds.observe(since.elapsed().as_secs_f64());
        }
    }
}
