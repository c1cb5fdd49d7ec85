//! A client in pooled mode (`--pool`): its requests go on one of its thread's shared master
//! connections (`pool.rs`) until it sends one that needs a connection of its own
//! (`resp/pinning.rs`). Then it is pinned: once every reply it is owed has been delivered, it
//! leaves the pool and continues as a dedicated session (`dedicated.rs`), starting with that
//! request, for the rest of its life.
//!
//! Only complete requests go on a shared connection (the start of one is kept until its end
//! arrives), and all of a client's requests in flight are on the same connection, so Redis runs
//! them in the order sent. The fence is the dedicated session's: requests are held while the
//! route is paused, while there is no verified master, and while carriers move after a switch
//! (the gate); after a switch, a client owed replies on the old master waits for them before its
//! next requests go to a connection to the new one.

use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use std::pin::Pin;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;
use tokio::sync::watch;

use tokio::time::{Instant, Interval, Sleep, timeout};
use tracing::debug;

use super::Close;
use super::conn::{Client, Conn};
use super::fence::gate_until;
use super::io::{Pending, SCRATCH, arm};
use super::pool::{PinGuard, Pool, Wait};
use crate::Shared;
use crate::resp::pinning::Pin as PinReason;
use crate::resp::{ProtocolError, RequestTracker};

/// A request still incomplete at this size pins its client: it streams on a connection of its
/// own rather than being kept whole here (a 100 MB value must not cost 100 MB of the proxy).
const MAX_KEPT_REQUEST: usize = 1 << 20;

/// How a pooled client's time in the pool ended.
pub(super) enum Outcome {
    Closed(Close),
    /// A request pins the client: take it out with `pinned()`.
    Pin,
    /// Continue as a dedicated session: the socket, the pinning request and what the client sent
    /// after it.
    Pinned(TcpStream, Vec<u8>, PinReason, Option<PinGuard>),
}

enum Step {
    Continue,
    Close(Close),
    Refuse(ProtocolError),
    Pin,
}

/// Why held requests cannot go now.
enum Hold {
    Paused,
    NoMaster,
    Gate(Instant),
    /// Replies are owed on a connection to an older master: they come first.
    Draining,
    Connecting(Option<Instant>),
    /// Another client of the thread is being pinned (`PinGuard`).
    Barrier(Instant),
}

pub(super) struct Pooled<'a> {
    shared: &'a Arc<Shared>,
    read: OwnedReadHalf,
    client: Rc<Client>,
    pool: Rc<Pool>,
    slot: usize,
    /// The connection its requests go on (the one its owed replies come from, if any).
    conn: Option<Rc<Conn>>,
    req: RequestTracker,
    /// The start of a request whose end has not arrived.
    partial: Pending,
    /// Complete requests not yet sent (the fence holds them, or no connection is ready).
    held: Pending,
    held_replies: u64,
    held_since: Option<Instant>,
    /// The request that pins the client, and what followed it.
    pin: Option<(PinReason, Pending)>,
    /// Raised when the pinning request was read; dropped once it is sent (or the client ends).
    pin_guard: Option<PinGuard>,
    protocol_error: Option<ProtocolError>,
    client_eof: bool,
    shutting_down: bool,
    /// `step()` found the route open on `conn`: requests may go straight on while `changes`
    /// shows no change.
    open: bool,
    changes: watch::Receiver<u64>,
    /// Held requests give up then.
    deadline: Option<Instant>,
    /// Look again then (the gate opens, a connect may be retried).
    wake_at: Option<Instant>,
    /// The timer of `deadline`/`wake_at`, boxed and only while there is one.
    timer: Option<Pin<Box<Sleep>>>,
    /// `--idle-timeout`'s check, a few times per period (only when it is on).
    idle_check: Option<Box<Interval>>,
}

enum Event {
    Read(std::io::Result<usize>),
    Flushed(usize),
    WriteFailed,
    Woken,
    Timer,
    IdleTick,
}

impl<'a> Pooled<'a> {
    pub(super) fn new(stream: TcpStream, shared: &'a Arc<Shared>, pool: Rc<Pool>) -> Self {
        let (read, write) = stream.into_split();
        let mut req = RequestTracker::new(shared.config().max_request_bytes);
        req.pool = true;
        let slot = pool.assign();
        let client = Rc::new(Client::new(write));
        if !shared.config().idle_timeout.is_zero() {
            client.last_active.set(Some(Instant::now()));
        }
        Pooled {
            shared,
            read,
            client,
            pool,
            slot,
            conn: None,
            req,
            partial: Pending::default(),
            held: Pending::default(),
            held_replies: 0,
            held_since: None,
            pin: None,
            pin_guard: None,
            protocol_error: None,
            client_eof: false,
            shutting_down: false,
            open: false,
            changes: shared.route.subscribe(),
            deadline: None,
            wake_at: None,
            timer: None,
            idle_check: None,
        }
    }

    pub(super) async fn run(&mut self) -> Outcome {
        let idle = self.shared.config().idle_timeout;
        if !idle.is_zero() {
            let mut i = tokio::time::interval_at(Instant::now() + idle / 4, idle / 4);
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            self.idle_check = Some(Box::new(i));
        }
        self.pool.register(&self.client);
        let close = loop {
            match self.step() {
                Step::Continue => {}
                Step::Close(c) => break c,
                Step::Refuse(e) => {
                    self.shared.metrics.protocol_errors_total.inc();
                    let msg = format!("-ERR Protocol error: {}\r\n", e.message());
                    write_all(&self.client, msg.as_bytes()).await;
                    break Close::ProtocolError;
                }
                Step::Pin => {
                    self.pool.deregister(&self.client);
                    return Outcome::Pin;
                }
            }
            if let Some(c) = self.wait().await {
                break c;
            }
        };
        self.pool.deregister(&self.client);
        self.client.broken.set(Some(close)); // replies still to come are dropped
        if close == Close::NoMaster {
            self.shared.metrics.no_master_rejections_total.inc();
            let msg = format!(
                "-ERR sentinel-proxy: no master available for '{}'\r\n",
                self.shared.config().master_name
            );
            write_all(&self.client, msg.as_bytes()).await;
        } else {
            let out = std::mem::take(&mut *self.client.out.borrow_mut());
            write_all(&self.client, out.bytes()).await;
        }
        if !self.held.is_empty() {
            self.count_held("dropped");
        }
        Outcome::Closed(close)
    }

    /// After `run` returned `Outcome::Pin`: the client's socket, whole again, with the pinning
    /// request and what followed it.
    pub(super) fn pinned(self) -> Outcome {
        let Pooled {
            read,
            client,
            pin,
            pin_guard,
            ..
        } = self;
        let Some((why, rest)) = pin else {
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
        match read.reunite(client.write.into_inner()) {
            Ok(stream) => Outcome::Pinned(stream, rest.bytes().to_vec(), why, pin_guard),
            Err(_) => Outcome::Closed(Close::IoError),
        }
    }

    fn step(&mut self) -> Step {
        if let Some(why) = self.client.broken.get() {
            return Step::Close(why);
        }
        if !self.shutting_down && self.pool.shutting_down.get() {
            // Two-phase shutdown: nothing new goes on; close at the first boundary.
            self.shutting_down = true;
            self.open = false;
            self.deadline = Some(Instant::now() + self.shared.config().shutdown_timeout);
        }
        // The steady state: the route was open on `conn` and nothing changed since.
        if self.open
            && self.held.is_empty()
            && matches!(self.changes.has_changed(), Ok(false))
            && self.pool.barrier().is_none()
            && self.conn.as_ref().is_some_and(|c| !c.dead.get())
        {
            return Step::Continue;
        }
        self.open = false;
        self.wake_at = None;
        self.changes.mark_unchanged();
        if self.shutting_down && self.client.owed.get() == 0 && self.client.out.borrow().is_empty()
        {
            return Step::Close(Close::Shutdown);
        }
        if !self.held.is_empty() && !self.shutting_down {
            self.release();
        }
        let owed = self.client.owed.get();
        let out_empty = self.client.out.borrow().is_empty();
        if self.held.is_empty() && owed == 0 && out_empty {
            if self.pin.is_some() {
                return Step::Pin;
            }
            if let Some(e) = self.protocol_error {
                return Step::Refuse(e);
            }
            if self.client_eof {
                return Step::Close(Close::ClientClosed);
            }
        }
        let waiting = self.pin.is_some()
            || self.protocol_error.is_some()
            || self.client_eof
            || self.shutting_down
            || !self.held.is_empty();
        self.client.want_idle.set(owed > 0 && waiting);
        if self.held.is_empty() && !waiting {
            self.open = self.usable().is_ok();
        }
        Step::Continue
    }

    /// The connection requests may go on now, or why they must wait.
    fn usable(&mut self) -> Result<Rc<Conn>, Hold> {
        let route = self.shared.route.load();
        if route.paused {
            return Err(Hold::Paused);
        }
        // A master the watcher cannot reach right now (a long script, a busy moment) keeps the
        // connections it has, as 1:1 sessions keep theirs; only a new one waits.
        let live = |c: &Rc<Conn>| c.generation == route.generation && !c.dead.get();
        let connected =
            self.conn.as_ref().is_some_and(live) || self.pool.ready(self.slot, route.generation);
        let Some(addr) = route.target().or(route.master.filter(|_| connected)) else {
            return Err(Hold::NoMaster);
        };
        if self.shared.route.carriers_elsewhere(route.generation) > 0 {
            let until = gate_until(&route);
            if until > Instant::now() {
                return Err(Hold::Gate(until));
            }
        }
        // A client's own pin does not hold the requests it sent before it.
        if self.pin_guard.is_none()
            && let Some(until) = self.pool.barrier()
        {
            return Err(Hold::Barrier(until));
        }
        if let Some(c) = &self.conn {
            if live(c) {
                return Ok(c.clone());
            }
            if self.client.owed.get() > 0 {
                return Err(Hold::Draining);
            }
            self.conn = None;
        }
        match self
            .pool
            .conn(self.slot, route.generation, addr, self.shared)
        {
            Ok(c) => {
                self.conn = Some(c.clone());
                Ok(c)
            }
            Err(Wait::Connecting(at)) => Err(Hold::Connecting(at)),
        }
    }

    /// Send the held requests if the route allows, else note what to wait for.
    fn release(&mut self) {
        let now = Instant::now();
        match self.usable() {
            Ok(conn) => {
                conn.push(&self.client, &[self.held.bytes()], self.held_replies);
                self.held = Pending::default();
                self.held_replies = 0;
                self.deadline = None;
                if self.held_since.is_some() {
                    self.count_held("released");
                }
            }
            Err(hold) => {
                self.held_since.get_or_insert(now);
                match hold {
                    Hold::Paused => {}
                    Hold::NoMaster => {
                        self.deadline
                            .get_or_insert(now + self.shared.config().connect_wait);
                    }
                    Hold::Gate(until) => self.wake_at = Some(until),
                    Hold::Barrier(until) => {
                        self.pool.wait_barrier(&self.client);
                        self.wake_at = Some(until);
                    }
                    Hold::Draining => {}
                    Hold::Connecting(at) => {
                        self.wake_at = at;
                        self.deadline
                            .get_or_insert(now + self.shared.config().connect_wait);
                    }
                }
            }
        }
    }

    fn count_held(&mut self, outcome: &str) {
        let m = &self.shared.metrics;
        m.held_requests_total.with_label_values(&[outcome]).inc();
        if let Some(since) = self.held_since.take() {
            m.hold_seconds.observe(since.elapsed().as_secs_f64());
        }
    }

    /// Bytes just read from the client: complete requests go on (or are held), the start of an
    /// incomplete one is kept, a pinning request stops the reading.
    fn take(&mut self, bytes: &[u8]) {
        // Kept only with `--idle-timeout` (set at the start then).
        if self.client.last_active.get().is_some() {
            self.client.last_active.set(Some(Instant::now()));
        }
        self.shared
            .metrics
            .client_bytes_received_total
            .inc_by(bytes.len() as u64);
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
        let carried = if end > 0 || replies > 0 {
            std::mem::take(&mut self.partial)
        } else {
            Pending::default()
        };
        if let Some(why) = self.req.pin {
            let start = self.req.pin_start();
            let mut pinned = Pending::default();
            if start.is_none() {
                pinned.push(self.partial.bytes());
                self.partial = Pending::default();
            }
            pinned.push(rest);
            self.pin = Some((why, pinned));
        } else if self.protocol_error.is_none() {
            self.partial.push(rest);
            if self.partial.bytes().len() > MAX_KEPT_REQUEST {
                // The tracker is dropped with the pool; the dedicated session parses the request
                // again from its start, which `partial` holds.
                let large = std::mem::take(&mut self.partial);
                self.pin = Some((PinReason::Large, large));
                self.open = false;
            }
        }
        self.push_complete(carried.bytes(), complete, replies);
        if self.pin.is_some() && self.pin_guard.is_none() {
            // Raised after this client's own requests before the pin went on (or were held).
            self.pin_guard = Some(self.pool.pin_begin());
        }
    }

    /// Complete requests: on the connection now if the route is open, else held.
    fn push_complete(&mut self, carried: &[u8], complete: &[u8], replies: u64) {
        if complete.is_empty() && carried.is_empty() {
            return;
        }
        let parts = [carried, complete];
        if self.open
            && matches!(self.changes.has_changed(), Ok(false))
            && self.pool.barrier().is_none()
            && let Some(conn) = self.conn.as_ref().filter(|c| !c.dead.get())
        {
            conn.push(&self.client, &parts, replies);
            return;
        }
        for p in parts {
            self.held.push(p);
        }
        self.held_replies += replies;
        self.open = false;
    }

    /// Wait for the next thing to happen: client bytes, room for its pending replies, an event
    /// from its connection or the thread's watcher (route change, shutdown, a connect ended), a
    /// deadline. One small future, no timer unless one is set, no lock.
    async fn wait(&mut self) -> Option<Close> {
        let flush = !self.client.out.borrow().is_empty();
        let read_client = self.held.is_empty()
            && self.pin.is_none()
            && self.protocol_error.is_none()
            && !self.client_eof
            && !self.shutting_down
            && !flush;
        arm(&mut self.timer, self.deadline, self.wake_at);
        let seen = self.client.events.get();
        let (client, read, timer, idle) = (
            &self.client,
            &mut self.read,
            &mut self.timer,
            &mut self.idle_check,
        );
        let event = std::future::poll_fn(|cx| {
            if read_client {
                let r = SCRATCH.with_borrow_mut(|scratch| {
                    let mut rb = tokio::io::ReadBuf::new(scratch);
                    match std::pin::Pin::new(&mut *read).poll_read(cx, &mut rb) {
                        Poll::Pending => None,
                        Poll::Ready(r) => Some(r.map(|()| rb.filled().len())),
                    }
                });
                if let Some(r) = r {
                    return Poll::Ready(Event::Read(r));
                }
            }
            if flush {
                let mut out = client.out.borrow_mut();
                let mut write = client.write.borrow_mut();
                if let Poll::Ready(r) = std::pin::Pin::new(&mut *write).poll_write(cx, out.bytes())
                {
                    return Poll::Ready(match r {
                        Ok(n) => {
                            out.consume(n);
                            Event::Flushed(n)
                        }
                        Err(_) => Event::WriteFailed,
                    });
                }
            }
            if client.events.get() != seen || client.broken.get().is_some() {
                return Poll::Ready(Event::Woken);
            }
            let mut w = client.waker.borrow_mut();
            if !w.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *w = Some(cx.waker().clone());
            }
            drop(w);
            if let Some(t) = timer
                && t.as_mut().poll(cx).is_ready()
            {
                return Poll::Ready(Event::Timer);
            }
            if let Some(i) = idle
                && i.poll_tick(cx).is_ready()
            {
                return Poll::Ready(Event::IdleTick);
            }
            Poll::Pending
        })
        .await;
        match event {
            Event::Read(Ok(0)) => {
                self.client_eof = true;
                self.open = false;
            }
            Event::Read(Ok(n)) => SCRATCH.with_borrow(|s| self.take(&s[..n])),
            Event::Read(Err(e)) => {
                debug!(error = %e, "client read error");
                return Some(Close::IoError);
            }
            Event::Flushed(n) => {
                self.shared.metrics.client_bytes_sent_total.inc_by(n as u64);
                self.open = false;
            }
            Event::WriteFailed => return Some(Close::ClientClosed),
            // What `step()` looks at changed: it must not take its fast path.
            Event::Woken => self.open = false,
            Event::Timer => {
                self.open = false;
                if self.deadline.is_some_and(|d| Instant::now() >= d) {
                    if self.shutting_down {
                        return Some(Close::Shutdown);
                    }
                    let owed = self.client.owed.get();
                    return Some(if owed == 0 {
                        Close::NoMaster
                    } else {
                        Close::DrainDeadline
                    });
                }
            }
            Event::IdleTick => {
                let idle = self.shared.config().idle_timeout;
                let since = self.client.last_active.get().map(|t| t.elapsed());
                let quiet = since.is_some_and(|d| d >= idle)
                    && self.client.owed.get() == 0
                    && self.client.out.borrow().is_empty()
                    && self.held.is_empty()
                    && self.partial.is_empty();
                if quiet {
                    return Some(Close::IdleTimeout);
                }
            }
        }
        None
    }
}

/// Write `bytes` to the client, waiting at most a second (used when closing).
async fn write_all(client: &Client, mut bytes: &[u8]) {
    // The write half is borrowed only inside each poll: the connection's task may write to it
    // between polls.
    let write = async {
        while !bytes.is_empty() {
            let n = std::future::poll_fn(|cx| {
                std::pin::Pin::new(&mut *client.write.borrow_mut()).poll_write(cx, bytes)
            })
            .await;
            match n {
                Ok(n) if n > 0 => bytes = &bytes[n..],
                _ => return,
            }
        }
    };
    let _ = timeout(Duration::from_secs(1), write).await;
}
