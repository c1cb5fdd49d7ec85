//! A client in pooled mode (`--pool`): its requests go on one of its thread's shared master
//! connections (`pool.rs`; scripts on the pool's connection for scripts, `Lane`) until it sends
//! one that needs a connection of its own (`command/`; a transaction that arrives whole does not:
//! `RequestTracker::feed`). Then, once
//! every reply it is owed has been delivered, it leaves the pool and continues as a dedicated
//! session (`dedicated.rs`), starting with that request: for the span of a transaction or a
//! blocking call on a connection lent to it (after which it comes back here, `mod.rs`), or for
//! the rest of its life (pinned).
//!
//! Only complete requests go on a shared connection (the start of one is kept until its end
//! arrives), and all of a client's requests in flight are on the same connection, so Redis runs
//! them in the order sent. The fence is the dedicated session's: requests are held while the
//! route is paused, while there is no verified master, and while carriers move after a switch
//! (the gate); after a switch, a client owed replies on the old master waits for them before its
//! next requests go to a connection to the new one.
//!
//! Here: a step (what the client's requests may do now) and the request side; `held.rs`:
//! requests held and released, and those a dead connection hands back; `wait.rs`: what the
//! client waits for between steps, and what each event changes.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use crate::tls::Link;
use std::pin::Pin;
use tokio::io::AsyncWrite;
use tokio::sync::watch;

use tokio::time::{Instant, Interval, Sleep, timeout};
use tracing::debug;

use super::Close;
use super::conn::{Client, Conn};
use super::fence::{self, Admit, Clock};
use super::io::Pending;
use super::pool::{Lane, PinGuard, Pool, Wait};
use crate::Group;
use crate::command::Pin as PinReason;
use crate::resp::{Mode, ProtocolError, RequestTracker};

mod held;
mod local;
mod wait;

pub(super) use local::{hello_setname, setname};

use wait::Waiting;

/// A request still incomplete at this size pins its client: it streams on a connection of its
/// own rather than being kept whole here (a 100 MB value must not cost 100 MB of the proxy).
const MAX_KEPT_REQUEST: usize = 1 << 20;

/// How a pooled client's time in the pool ended.
pub(super) enum Outcome {
    Closed(Close),
    /// A request pins the client: take it out with `pinned()`.
    Pin,
    /// Continue as a dedicated session: the socket, the pinning request and what the client sent
    /// after it, and the client's name (`CLIENT SETNAME`, kept here: `local.rs`).
    Pinned(Link, Vec<u8>, PinReason, Option<PinGuard>, Option<Vec<u8>>),
}

enum Step {
    Continue,
    Close(Close),
    Refuse(ProtocolError),
    Pin,
}

/// A pooled client at rest at its shutdown boundary (`Pooled::at_rest`): its socket, its name,
/// and the requests it had read and not sent.
pub(super) struct AtRest {
    pub client: Link,
    pub name: Option<Vec<u8>>,
    pub first: Vec<u8>,
}

/// Why held requests cannot go now.
enum Hold {
    Paused,
    /// The operator's pause: at most its wait, then the no-master error.
    Operator,
    NoMaster,
    Gate(Instant),
    /// Replies are owed on a connection to an older master: they come first.
    Draining,
    Connecting(Option<Instant>),
    /// Another client of the thread is being pinned (`PinGuard`).
    Barrier(Instant),
}

pub(super) struct Pooled<'a> {
    group: &'a Arc<Group>,
    client: Rc<Client>,
    pool: Rc<Pool>,
    slot: usize,
    /// The connection its requests go on (the one its owed replies come from, if any), and its
    /// lane.
    conn: Option<Rc<Conn>>,
    lane: Lane,
    req: RequestTracker,
    /// Made the first time the client leaves the steady state, and kept (no allocation per
    /// request); most clients never need it, and an idle one is the smaller for it.
    slow: Option<Box<Slow>>,
    /// Raised when the pinning request was read; dropped once it is sent (or the client ends).
    pin_guard: Option<PinGuard>,
    protocol_error: Option<ProtocolError>,
    client_eof: bool,
    shutting_down: bool,
    /// `step()` found the route open on `conn`: requests may go straight on while `changes`
    /// shows no change.
    open: bool,
    changes: watch::Receiver<u64>,
    /// The timer of `deadline`/`wake_at`, boxed and only while there is one.
    timer: Option<Pin<Box<Sleep>>>,
    /// `--idle-timeout`'s check, a few times per period (only when it is on).
    idle_check: Option<Box<Interval>>,
    /// Between polls: what the client waits for (`wait_for`), until an event comes.
    waiting: Option<Waiting>,
    /// The client's name (`CLIENT SETNAME`, answered here: `local.rs`).
    name: Option<Vec<u8>>,
    /// A step answered a request itself: step again before waiting (what followed it may be
    /// ready to go, or be another such request).
    again: bool,
}

/// A pooled client's state away from the steady state: a request split across reads, requests
/// held by the fence, a pin under way, a deadline.
#[derive(Default)]
struct Slow {
    /// The start of a request whose end has not arrived.
    partial: Pending,
    /// Complete requests not yet sent (the fence holds them, or no connection is ready).
    held: Pending,
    held_replies: u64,
    /// A script is among them.
    held_scripts: bool,
    /// What their replies answer (`RequestTracker::marks`).
    held_marks: Vec<u8>,
    /// Among them, requests sent once already (`Client::retry`): not sent a third time.
    held_again: bool,
    held_since: Option<Instant>,
    /// The request that pins the client, and what followed it.
    pin: Option<(PinReason, Pending)>,
    /// A request the session answers itself (`local.rs`), from its start, and what followed it
    /// (read on until the request is whole).
    local: Option<Pending>,
    /// Held requests give up then.
    deadline: Option<Instant>,
    /// Look again then (the gate opens, a connect may be retried).
    wake_at: Option<Instant>,
}

impl<'a> Pooled<'a> {
    pub(super) fn new(
        stream: Link,
        group: &'a Arc<Group>,
        pool: Rc<Pool>,
        name: Option<Vec<u8>>,
    ) -> Self {
        let mut req = RequestTracker::new(group.config().max_request_bytes);
        req.mode = Mode::Pool;
        // What each reply answers: a read may be sent again if the master dies before answering
        // it, a write's reply may wait for the replicas (`conn.rs`, `ack.rs`).
        req.marking = true;
        let slot = pool.assign();
        let client = Rc::new(Client::new(stream));
        if !group.config().idle_timeout.is_zero() {
            client.last_active.set(Some(Instant::now()));
        }
        Pooled {
            group,
            client,
            pool,
            slot,
            conn: None,
            lane: Lane::Plain,
            req,
            slow: None,
            pin_guard: None,
            protocol_error: None,
            client_eof: false,
            shutting_down: false,
            open: false,
            changes: group.route.subscribe(),
            timer: None,
            idle_check: None,
            waiting: None,
            name,
            again: false,
        }
    }

    pub(super) async fn run(&mut self) -> Outcome {
        let idle = self.group.config().idle_timeout;
        if !idle.is_zero() {
            let mut i = tokio::time::interval_at(Instant::now() + idle / 4, idle / 4);
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            self.idle_check = Some(Box::new(i));
        }
        self.pool.register(&self.client);
        // The whole loop is one poll function: an idle client's task holds no future of its own
        // beyond this one (its state is in `self`).
        let close = match std::future::poll_fn(|cx| self.poll_loop(cx)).await {
            Step::Close(c) => c,
            Step::Refuse(e) => {
                self.group.metrics.protocol_errors_total.inc();
                let msg = format!("-ERR Protocol error: {}\r\n", e.message());
                write_all(&self.client, msg.into_bytes()).await;
                Close::ProtocolError
            }
            Step::Pin | Step::Continue => {
                self.pool.deregister(&self.client);
                return Outcome::Pin;
            }
        };
        self.pool.deregister(&self.client);
        self.client.broken.set(Some(close)); // replies still to come are dropped
        if close == Close::NoMaster {
            self.group.metrics.no_master_rejections_total.inc();
            let msg = format!(
                "-ERR sentinel-proxy: no master available for '{}'\r\n",
                self.group.master_name
            );
            write_all(&self.client, msg.into_bytes()).await;
        } else {
            // Not kept across the write: the task would carry its size while idle.
            let out = std::mem::take(&mut *self.client.out.borrow_mut())
                .bytes()
                .to_vec();
            if !out.is_empty() || self.client.stream.borrow().wants_flush() {
                write_all(&self.client, out).await;
            }
        }
        if !self.held_empty() {
            self.count_held("dropped");
        }
        Outcome::Closed(close)
    }

    /// After `run` returned `Outcome::Pin`: the client's socket, whole again, with the pinning
    /// request and what followed it.
    pub(super) fn pinned(self) -> Outcome {
        let Pooled {
            client,
            slow,
            pin_guard,
            name,
            ..
        } = self;
        let Some((why, rest)) = slow.and_then(|s| s.pin) else {
            return Outcome::Closed(Close::IoError);
        };
        let client = match Rc::try_unwrap(client) {
            Ok(c) => c,
            Err(c) => {
                debug!(
                    refs = Rc::strong_count(&c),
                    "pinning: the client is still referred to"
                );
                return Outcome::Closed(Close::IoError);
            }
        };
        Outcome::Pinned(
            client.stream.into_inner(),
            rest.bytes().to_vec(),
            why,
            pin_guard,
            name,
        )
    }

    /// At its shutdown boundary, in the pool with nothing owed, on a plain socket: the socket,
    /// the client's name and the requests read and not sent (held, then the start of the next),
    /// to hand over (`handover.rs`); `Err` if not.
    pub(super) fn at_rest(self: Box<Self>) -> Option<AtRest> {
        let quiet = self
            .slow
            .as_ref()
            .is_none_or(|s| s.pin.is_none() && s.local.is_none())
            && self.protocol_error.is_none()
            && !self.client_eof
            && self.req.replies_on()
            && self.client.owed.get() == 0
            && self.client.out.borrow().is_empty()
            // (`run` marks the client closed for shutdown: no connection writes to it any more.)
            && matches!(self.client.broken.get(), None | Some(Close::Shutdown))
            && matches!(*self.client.stream.borrow(), Link::Plain(_));
        if !quiet {
            debug!(
                pin = self.slow.as_ref().is_some_and(|s| s.pin.is_some()),
                local = self.slow.as_ref().is_some_and(|s| s.local.is_some()),
                eof = self.client_eof,
                replies_on = self.req.replies_on(),
                owed = self.client.owed.get(),
                broken = ?self.client.broken.get(),
                "not handed over: a pin, a local answer or replies owed at its boundary"
            );
            return None;
        }
        let Pooled {
            client, name, slow, ..
        } = *self;
        let first = match slow {
            Some(s) => [s.held.bytes(), s.partial.bytes()].concat(),
            None => Vec::new(),
        };
        let client = Rc::try_unwrap(client).ok()?.stream.into_inner();
        Some(AtRest {
            client,
            name,
            first,
        })
    }

    /// A client handed over by the predecessor: the requests it had read and not sent, taken as
    /// if just read (`take`), before anything else.
    pub(super) fn take_first(&mut self, bytes: &[u8]) {
        self.take(bytes);
    }

    fn held_empty(&self) -> bool {
        self.slow.as_ref().is_none_or(|s| s.held.is_empty())
    }

    /// A request answered here waits with as much after it as is kept of a request.
    fn local_full(&self) -> bool {
        self.slow
            .as_ref()
            .and_then(|s| s.local.as_ref())
            .is_some_and(|l| l.bytes().len() > MAX_KEPT_REQUEST)
    }

    /// A request that pins the client was read.
    fn pinning(&self) -> bool {
        self.slow.as_ref().is_some_and(|s| s.pin.is_some())
    }

    fn step(&mut self) -> Step {
        if let Some(why) = self.client.broken.get() {
            return Step::Close(why);
        }
        if let Some(again) = self.client.retry.take() {
            self.send_again(*again);
        }
        if !self.shutting_down && self.pool.shutting_down.get() {
            // Two-phase shutdown: nothing new goes on; close at the first boundary.
            self.shutting_down = true;
            self.open = false;
            self.slow.get_or_insert_default().deadline =
                Some(Instant::now() + self.group.config().shutdown_timeout);
        }
        // The steady state: the route was open on `conn` and nothing changed since.
        if self.open
            && self.held_empty()
            && matches!(self.changes.has_changed(), Ok(false))
            && self.pool.barrier().is_none()
            && self.conn.as_ref().is_some_and(|c| !c.dead.get())
        {
            return Step::Continue;
        }
        self.open = false;
        if let Some(s) = &mut self.slow {
            s.wake_at = None;
        }
        self.changes.mark_unchanged();
        if self.shutting_down && self.client.owed.get() == 0 && self.client.out.borrow().is_empty()
        {
            return Step::Close(Close::Shutdown);
        }
        if !self.held_empty() && !self.shutting_down {
            self.release();
        }
        let owed = self.client.owed.get();
        let out_empty = self.client.out.borrow().is_empty();
        if self.held_empty() && owed == 0 && out_empty {
            self.answer_local();
            if self.again {
                return Step::Continue;
            }
            if self.pinning() {
                return Step::Pin;
            }
            if let Some(e) = self.protocol_error {
                return Step::Refuse(e);
            }
            if self.client_eof {
                return Step::Close(Close::ClientClosed);
            }
        }
        let waiting = self.pinning()
            || self.slow.as_ref().is_some_and(|s| s.local.is_some())
            || self.protocol_error.is_some()
            || self.client_eof
            || self.shutting_down
            || !self.held_empty();
        self.client.want_idle.set(owed > 0 && waiting);
        if self.held_empty() && !waiting {
            self.open = self.usable(false).is_ok();
        }
        Step::Continue
    }

    /// The lane of the next requests (`pool::Lane`): scripts' if they hold one or follow one
    /// whose reply is owed, else the plain lane.
    fn lane_for(&self, scripts: bool) -> Lane {
        if scripts || (self.lane == Lane::Scripts && self.client.owed.get() > 0) {
            Lane::Scripts
        } else {
            Lane::Plain
        }
    }

    /// The connection requests may go on now, or why they must wait. `create`: there are
    /// requests to send, so open the slot's connection if it never had one.
    fn usable(&mut self, create: bool) -> Result<Rc<Conn>, Hold> {
        // No request held: the lane it is in (an idle client does not move).
        let lane = match &self.slow {
            Some(s) if !s.held.is_empty() => self.lane_for(s.held_scripts),
            _ => self.lane,
        };
        let slot = self.pool.lane(self.slot, lane);
        let route = self.group.route.load();
        // A master the watcher cannot reach right now (a long script, a busy moment) keeps the
        // connections it has, as 1:1 sessions keep theirs; only a new one waits.
        let live = |c: &Rc<Conn>| c.generation == route.generation && !c.dead.get();
        let asker = fence::Asker {
            backend: None,
            served: self.conn.as_ref().is_some_and(live) || self.pool.ready(slot, route.generation),
            carrier: false,
        };
        let carriers = self.group.route.carriers_elsewhere(route.generation);
        let addr = match fence::admit(&route, asker, carriers, &mut Clock::lazy()) {
            Admit::Go(addr) => addr,
            Admit::Hold(fence::Hold::Paused) => return Err(Hold::Paused),
            Admit::Hold(fence::Hold::Operator) => return Err(Hold::Operator),
            Admit::Hold(fence::Hold::Gate(until)) => return Err(Hold::Gate(until)),
            Admit::Hold(fence::Hold::NoMaster) | Admit::Retired { .. } => {
                return Err(Hold::NoMaster);
            }
        };
        // A client's own pin does not hold the requests it sent before it.
        if self.pin_guard.is_none()
            && let Some(until) = self.pool.barrier()
        {
            return Err(Hold::Barrier(until));
        }
        if let Some(c) = &self.conn {
            if live(c) && self.lane == lane {
                return Ok(c.clone());
            }
            if self.client.owed.get() > 0 {
                return Err(Hold::Draining);
            }
            self.conn = None;
        }
        match self
            .pool
            .conn(slot, route.generation, addr, self.group, create)
        {
            Ok(c) => {
                self.conn = Some(c.clone());
                self.lane = lane;
                Ok(c)
            }
            Err(Wait::Connecting(at)) => Err(Hold::Connecting(at)),
        }
    }

    /// The client is owed nothing and holds nothing: answer the request the framer stopped at
    /// for us (`local.rs`) once it is whole, then take what followed it. One too long to keep,
    /// or not a well-formed command, goes to Redis on a connection of its own instead.
    fn answer_local(&mut self) {
        let Some(s) = self.slow.as_mut() else {
            return;
        };
        let Some(local) = &s.local else {
            return;
        };
        match super::gate::parse(local.bytes()) {
            Ok(None) if local.bytes().len() <= MAX_KEPT_REQUEST => {} // read on
            Ok(None) | Err(_) => {
                let bytes = s.local.take().unwrap_or_default();
                s.pin = Some((PinReason::Client, bytes));
                self.pin_guard = Some(self.pool.pin_begin());
            }
            Ok(Some((args, used))) => {
                let local = s.local.take().unwrap_or_default();
                let reply = local::answer(&args, &mut self.name, self.pool.resp3());
                self.client.deliver(&reply, self.group);
                self.req.resume();
                let rest = local.bytes()[used..].to_vec();
                self.take_requests(&rest);
                self.again = true;
                self.open = false;
            }
        }
    }

    /// Bytes just read from the client: complete requests go on (or are held), the start of an
    /// incomplete one is kept, a pinning request stops the reading.
    fn take(&mut self, bytes: &[u8]) {
        // Kept only with `--idle-timeout` (set at the start then).
        if self.client.last_active.get().is_some() {
            self.client.last_active.set(Some(Instant::now()));
        }
        self.group
            .metrics
            .client_bytes_received_total
            .inc_by(bytes.len() as u64);
        if let Some(local) = self.slow.as_mut().and_then(|s| s.local.as_mut()) {
            local.push(bytes);
            self.open = false;
            return;
        }
        self.take_requests(bytes);
    }

    /// Requests read from the client (or what followed one answered here): complete ones go on
    /// (or are held), the start of an incomplete one is kept, a pinning request stops the
    /// reading.
    fn take_requests(&mut self, bytes: &[u8]) {
        let before = self.req.expected_replies;
        let end = match self.req.feed(bytes) {
            Ok(()) => self.req.boundary as usize,
            Err((e, valid)) => {
                self.protocol_error = Some(e);
                valid
            }
        };
        let replies = self.req.expected_replies - before;
        if self.protocol_error.is_some() || self.req.pin.is_some() {
            self.open = false; // `step()` must look at it
        }
        let (complete, rest) = bytes.split_at(end);
        // The kept start belongs to the first complete request, unless none completed.
        let carried = match &mut self.slow {
            Some(s) if end > 0 || replies > 0 => std::mem::take(&mut s.partial),
            _ => Pending::default(),
        };
        if let Some(why) = self.req.pin {
            let start = self.req.pin_start();
            let s = self.slow.get_or_insert_default();
            let mut pinned = Pending::default();
            if start.is_none() {
                pinned.push(s.partial.bytes());
                s.partial = Pending::default();
            }
            pinned.push(rest);
            if why == PinReason::Name {
                s.local = Some(pinned);
            } else {
                s.pin = Some((why, pinned));
            }
        } else if self.protocol_error.is_none() && !rest.is_empty() {
            let s = self.slow.get_or_insert_default();
            s.partial.push(rest);
            if s.partial.bytes().len() > MAX_KEPT_REQUEST {
                // The tracker is dropped with the pool; the dedicated session parses the request
                // again from its start, which `partial` holds.
                let large = std::mem::take(&mut s.partial);
                s.pin = Some((PinReason::Large, large));
                self.open = false;
            }
        }
        let scripts = std::mem::take(&mut self.req.scripts);
        // Taken and put back: the tracker keeps its buffer.
        let marks = self.req.take_marks();
        self.push_complete(carried.bytes(), complete, replies, scripts, &marks);
        self.req.restore_marks(marks);
        if self.pinning() && self.pin_guard.is_none() {
            // Raised after this client's own requests before the pin went on (or were held).
            self.pin_guard = Some(self.pool.pin_begin());
        }
    }
}

/// Write `bytes` to the client, waiting at most a second (used when closing). Boxed: its timer
/// would otherwise make every idle client's `run` future larger.
fn write_all(
    client: &Client,
    bytes: Vec<u8>,
) -> Pin<Box<dyn std::future::Future<Output = ()> + '_>> {
    Box::pin(write_all_now(client, bytes))
}

async fn write_all_now(client: &Client, bytes: Vec<u8>) {
    let mut bytes = &bytes[..];
    // The write half is borrowed only inside each poll: the connection's task may write to it
    // between polls.
    let write = async {
        while !bytes.is_empty() {
            let n = std::future::poll_fn(|cx| {
                std::pin::Pin::new(&mut *client.stream.borrow_mut()).poll_write(cx, bytes)
            })
            .await;
            match n {
                Ok(n) if n > 0 => bytes = &bytes[n..],
                _ => return,
            }
        }
        // On TLS, the last records too.
        let _ = std::future::poll_fn(|cx| {
            std::pin::Pin::new(&mut *client.stream.borrow_mut()).poll_flush(cx)
        })
        .await;
    };
    let _ = timeout(Duration::from_secs(1), write).await;
}
