//! One shared master connection of pooled mode: the requests of many clients, written in one
//! batch per wake-up, with the replies handed back to their clients in order.
//!
//! A client appends complete requests to its connection's `out` and a waiter (itself, how many
//! replies) to its queue; the connection's task writes `out` when it next runs, so the requests
//! of every client served in that tick leave in one write. It reads replies into the thread's
//! scratch buffer, splits them by counting replies (`ReplyTracker::feed_replies`) against the
//! head waiter, and writes each run of replies straight to its client's socket; only what a
//! client's socket cannot take now is kept (in that client's `out`). A shared connection is in
//! its pool's connection state (`pool.rs`: the user, protocol and database its clients share,
//! set when it was opened) and no other: a client that would change it borrows a connection of
//! its own first, or is pinned to one (the command table, `command/`).
//!
//! The fence, per connection: a connection serves one route generation. Clients append only
//! while the route is open on it (`pooled.rs` checks); after a switch it takes nothing new,
//! delivers the replies in flight and ends. Requests appended just before a switch and not yet
//! written are never written to the old master: their clients are closed, having been sent
//! nowhere. When the old master is known to be down, its in-flight requests are failed at once
//! (their outcome is unknown, and a late reply must not pass for an acknowledgement). A connection
//! that breaks closes exactly the clients it owed replies; no client ever gets another's reply.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::task::{Poll, Waker};

use tokio::io::AsyncRead;

use crate::tls::Link;
use tokio::time::{Instant, sleep_until};

use super::Close;
use super::fence;

mod acked;

use super::io::{Pending, SCRATCH};
use crate::Group;
use crate::resp::ReplyTracker;
pub(super) use acked::Acked;

/// The part of a pooled client that its connection's task touches.
pub(super) struct Client {
    /// Replies go straight to this socket from the connection's task (`try_write`); the
    /// client's task flushes what it could not take (`poll_write`).
    /// The client's socket, read by the client's task and written by both (unsplit: splitting
    /// costs an allocation per client).
    pub(super) stream: RefCell<Link>,
    /// Replies the client's socket could not take yet; the client's task flushes them.
    pub(super) out: RefCell<Pending>,
    /// Replies still to come on its connection (or held there for the replicas: `acked.rs`).
    pub(super) owed: Cell<u64>,
    /// Of those, replies received and held until the master confirms its replicas have the
    /// writes before them (`ack = replicas:N`).
    pub(super) held: Cell<u32>,
    /// Why the client must close: its connection broke with replies owed (their outcome is
    /// unknown), or its socket failed.
    pub(super) broken: Cell<Option<Close>>,
    /// The client's task waits for `owed` to reach zero (otherwise it is not woken for that).
    pub(super) want_idle: Cell<bool>,
    /// Bumped when something the client's task waits for happened.
    pub(super) events: Cell<u64>,
    pub(super) waker: RefCell<Option<Waker>>,
    /// Its place in the pool's list of clients (woken at route changes and shutdown).
    pub(super) id: Cell<usize>,
    /// When bytes last moved either way (kept only with `--idle-timeout`): replies count, as
    /// they do for Redis's `timeout`.
    pub(super) last_active: Cell<Option<Instant>>,
}

impl Client {
    pub(super) fn new(stream: Link) -> Client {
        Client {
            stream: RefCell::new(stream),
            id: Cell::new(usize::MAX),
            last_active: Cell::new(None),
            out: RefCell::new(Pending::default()),
            owed: Cell::new(0),
            held: Cell::new(0),
            broken: Cell::new(None),
            want_idle: Cell::new(false),
            events: Cell::new(0),
            waker: RefCell::new(None),
        }
    }

    pub(super) fn wake(&self) {
        self.events.set(self.events.get() + 1);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    fn fail(&self, why: Close) {
        if self.broken.get().is_none() {
            self.broken.set(Some(why));
        }
        self.wake();
    }

    /// Replies for this client: written now as far as its socket takes them.
    pub(super) fn deliver(&self, bytes: &[u8], group: &Group) {
        if self.broken.get().is_some() {
            return; // closing: the client is owed nothing more
        }
        if self.last_active.get().is_some() {
            self.last_active.set(Some(Instant::now()));
        }
        let mut out = self.out.borrow_mut();
        let mut w = 0;
        if out.is_empty() {
            w = match super::io::write_now(&mut self.stream.borrow_mut(), bytes) {
                Ok(w) => w,
                Err(_) => {
                    drop(out);
                    self.fail(Close::ClientClosed);
                    return;
                }
            };
            group.metrics.client_bytes_sent_total.inc_by(w as u64);
        }
        if w < bytes.len() {
            let was_empty = out.is_empty();
            out.push(&bytes[w..]);
            drop(out);
            if was_empty {
                self.wake(); // its task now waits for the socket to take the rest
            }
        } else if out.is_empty() && self.stream.borrow().wants_flush() {
            drop(out);
            self.wake(); // TLS records of these replies wait for the socket: the same
        }
    }
}

struct Waiter {
    /// None: the `WAIT` the connection sent itself (`acked.rs`).
    client: Option<Rc<Client>>,
    replies: u64,
}

/// One shared connection to the master of one route generation.
pub(super) struct Conn {
    pub(super) generation: u64,
    /// Requests appended and not yet written.
    out: RefCell<Vec<u8>>,
    /// Bytes of `out` already written (its socket was full).
    written: Cell<usize>,
    /// Clients owed replies, in the order their requests were appended.
    waiters: RefCell<VecDeque<Waiter>>,
    /// Waiters at the back whose requests are still in `out`, wholly unwritten.
    unwritten: Cell<usize>,
    /// The connection ended: nothing more may be appended.
    pub(super) dead: Cell<bool>,
    task: RefCell<Option<Waker>>,
    kicked: Cell<bool>,
    /// Durable acknowledgements, when the group asks for them.
    acked: Option<RefCell<Acked>>,
}

impl Conn {
    pub(super) fn new(generation: u64, acked: Option<Acked>) -> Conn {
        Conn {
            acked: acked.map(RefCell::new),
            generation,
            out: RefCell::new(Vec::new()),
            written: Cell::new(0),
            waiters: RefCell::new(VecDeque::new()),
            unwritten: Cell::new(0),
            dead: Cell::new(false),
            task: RefCell::new(None),
            kicked: Cell::new(false),
        }
    }

    /// Commit complete requests (`replies` of them) of `client` to this connection; `marks`:
    /// what each reply answers (`RequestTracker::marks`), read only with durable acks.
    pub(super) fn push(&self, client: &Rc<Client>, parts: &[&[u8]], replies: u64, marks: &[u8]) {
        let mut out = self.out.borrow_mut();
        let was_empty = out.is_empty();
        for p in parts {
            out.extend_from_slice(p);
        }
        drop(out);
        if replies > 0 {
            if let Some(a) = &self.acked {
                a.borrow_mut().owe(replies, marks);
            }
            self.waiters.borrow_mut().push_back(Waiter {
                client: Some(client.clone()),
                replies,
            });
            self.unwritten.set(self.unwritten.get() + 1);
            client.owed.set(client.owed.get() + replies);
        }
        if was_empty && let Some(w) = self.task.borrow_mut().take() {
            w.wake();
        }
    }

    /// Have the task look at the route again.
    pub(super) fn wake(&self) {
        self.kicked.set(true);
        if let Some(w) = self.task.borrow_mut().take() {
            w.wake();
        }
    }

    /// Close every client owed a reply here (`why`) and take nothing more.
    pub(super) fn fail_all(&self, why: Close) {
        self.dead.set(true);
        let waiters = std::mem::take(&mut *self.waiters.borrow_mut());
        for w in waiters {
            if let Some(client) = w.client {
                client.owed.set(client.owed.get().saturating_sub(w.replies));
                client.fail(why);
            }
        }
        if let Some(a) = &self.acked {
            a.borrow_mut().fail_held(why);
        }
        self.unwritten.set(0);
        self.out.borrow_mut().clear();
        self.written.set(0);
    }
}

enum Event {
    Readable,
    /// The thread's watcher saw a route change.
    Kicked,
    Deadline,
}

/// Serve one shared connection: write what clients append, hand replies back. Returns why it
/// ended; the caller closes the clients still owed replies with that reason.
pub(super) async fn drive(conn: &Conn, mut stream: Link, group: &Group) -> Close {
    let mut rep = ReplyTracker::new();
    let mut retired = false;
    let mut rechecked = false;
    let mut deadline: Option<Instant> = None;
    loop {
        // Closed by its idle pool (`pool.rs`): once no reply is owed and nothing waits to go.
        if !retired
            && conn.dead.get()
            && conn.waiters.borrow().is_empty()
            && conn.out.borrow().is_empty()
        {
            return Close::IdleTimeout;
        }
        // The thread's watcher wakes this task at every route change.
        // The generation alone first (one load): the fence is asked only when it moved.
        if !retired && group.route.generation() != conn.generation {
            let asker = fence::Asker {
                backend: Some(conn.generation),
                served: true,
                carrier: false,
            };
            let route = group.route.load();
            if let fence::Admit::Retired { master_down } =
                fence::admit(&route, asker, 0, &mut fence::Clock::lazy())
            {
                retired = true;
                conn.dead.set(true);
                if master_down {
                    // A hung or cut-off master may run these when it comes back, after its
                    // replacement was promoted: their outcome is unknown.
                    return Close::SwitchMasterDown;
                }
                deadline = Some(Instant::now() + group.config().drain_timeout);
            }
        }
        if retired && conn.written.get() == 0 && conn.unwritten.get() > 0 {
            // Appended just before the switch and never sent: they must not reach the old
            // master. Their clients close, having been sent nowhere.
            let n = conn.unwritten.replace(0);
            let mut waiters = conn.waiters.borrow_mut();
            let keep = waiters.len() - n;
            for w in waiters.drain(keep..) {
                if let Some(client) = w.client {
                    client.owed.set(client.owed.get().saturating_sub(w.replies));
                    client.fail(Close::SwitchMidRequest);
                }
            }
            conn.out.borrow_mut().clear();
            if let Some(a) = &conn.acked {
                a.borrow_mut().unwritten_dropped();
            }
        }
        if retired && conn.waiters.borrow().is_empty() && conn.out.borrow().is_empty() {
            return Close::BackendClosed; // drained: no client is owed anything
        }
        let wake = deadline;
        let event = {
            let stream = &mut stream;
            let io = std::future::poll_fn(|cx| {
                // Write what is appended (one write for every client served this tick), and
                // after writes, a WAIT for their replicas.
                if let Some(a) = &conn.acked
                    && let Some(wait) = a.borrow_mut().take_wait()
                {
                    conn.out.borrow_mut().extend_from_slice(wait);
                    conn.waiters.borrow_mut().push_back(Waiter {
                        client: None,
                        replies: 1,
                    });
                    conn.unwritten.set(conn.unwritten.get() + 1);
                    group.metrics.ack_waits_total.inc();
                }
                loop {
                    let out = conn.out.borrow();
                    if out.is_empty() {
                        break;
                    }
                    let from = conn.written.get();
                    match stream.try_write(&out[from..]) {
                        Ok(n) if from + n == out.len() => {
                            drop(out);
                            conn.out.borrow_mut().clear();
                            conn.written.set(0);
                            conn.unwritten.set(0);
                        }
                        Ok(n) => {
                            conn.written.set(from + n);
                            conn.unwritten.set(0);
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            drop(out);
                            if stream.poll_write_ready(cx).is_ready() {
                                continue;
                            }
                            break;
                        }
                        Err(_) => return Poll::Ready(Err(())),
                    }
                }
                // On TLS, the records of what was taken may wait for room too.
                while stream.wants_flush() {
                    if stream.flush_now().is_err() {
                        return Poll::Ready(Err(()));
                    }
                    if stream.wants_flush() && stream.poll_write_ready(cx).is_pending() {
                        break;
                    }
                }
                if conn.kicked.replace(false) {
                    return Poll::Ready(Ok(false));
                }
                let waker = cx.waker();
                let mut task = conn.task.borrow_mut();
                if !task.as_ref().is_some_and(|w| w.will_wake(waker)) {
                    *task = Some(waker.clone());
                }
                drop(task);
                match stream.poll_read_ready(cx) {
                    Poll::Ready(_) => Poll::Ready(Ok(true)),
                    Poll::Pending => Poll::Pending,
                }
            });
            let timer = async {
                match wake {
                    Some(d) => sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                r = io => match r {
                    Ok(true) => Event::Readable,
                    Ok(false) => Event::Kicked,
                    Err(()) => return Close::IoError,
                },
                _ = timer => Event::Deadline,
            }
        };
        match event {
            Event::Kicked => {}
            Event::Deadline => return Close::DrainDeadline,
            Event::Readable => {
                let read = std::future::poll_fn(|cx| {
                    SCRATCH.with_borrow_mut(|scratch| {
                        let mut rb = tokio::io::ReadBuf::new(scratch);
                        match std::pin::Pin::new(&mut stream).poll_read(cx, &mut rb) {
                            Poll::Pending => Poll::Ready(None),
                            Poll::Ready(r) => Poll::Ready(Some(r.map(|()| rb.filled().len()))),
                        }
                    })
                })
                .await;
                match read {
                    None => {}
                    Some(Ok(0)) | Some(Err(_)) => return Close::BackendClosed,
                    Some(Ok(n)) => {
                        let ok = SCRATCH.with_borrow(|s| match &conn.acked {
                            Some(a) => {
                                acked::dispatch(conn, &mut a.borrow_mut(), &mut rep, &s[..n], group)
                            }
                            None => dispatch(conn, &mut rep, &s[..n], group),
                        });
                        if !ok {
                            return Close::ProtocolError;
                        }
                        if rep.saw_not_master && !rechecked {
                            rechecked = true;
                            group.metrics.not_master_replies_total.inc();
                            group.route.request_recheck();
                        }
                    }
                }
            }
        }
    }
}

/// Hand a chunk of replies to the clients they answer, in order. False: bytes no client is owed,
/// or not RESP (the connection must end).
fn dispatch(conn: &Conn, rep: &mut ReplyTracker, mut bytes: &[u8], group: &Group) -> bool {
    let mut waiters = conn.waiters.borrow_mut();
    while !bytes.is_empty() {
        let Some(head) = waiters.front_mut() else {
            return false;
        };
        let Some(client) = &head.client else {
            return false; // only a connection with durable acks sends its own WAIT
        };
        let before = rep.replies;
        let Ok(n) = rep.feed_replies(bytes, before + head.replies) else {
            return false;
        };
        let done = rep.replies - before;
        client.deliver(&bytes[..n], group);
        bytes = &bytes[n..];
        if done > 0 {
            head.replies -= done;
            client.owed.set(client.owed.get() - done);
            if client.owed.get() == 0 && client.want_idle.get() {
                client.wake();
            }
            if head.replies == 0 {
                waiters.pop_front();
            }
        }
    }
    true
}
