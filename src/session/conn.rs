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
//! written are never written to the old master: they go back to their clients, for the new one.
//! When the old master is known to be down, its in-flight requests end at once (a late reply
//! must not pass for an acknowledgement). A connection that ends with replies owed (the master
//! died, hung, or closed it) hands back to their clients the requests that can be asked again of
//! the next master: those never sent, and reads none of whose reply was handed on (by the
//! master's own `readonly` flag; sent again once at most). Every other client owed a reply is
//! closed: a write's outcome is unknown. Written requests are kept until answered for that,
//! in the buffer they were written from. No client ever gets another's reply.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;
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
    pub(super) id: Cell<u32>,
    /// Requests its connection hands back to be sent again on the next one: reads in flight
    /// when the master died, requests never sent (`Conn::fail_all`). Its task takes them.
    pub(super) retry: Cell<Option<Box<Retry>>>,
    /// When bytes last moved either way (kept only with `--idle-timeout`): replies count, as
    /// they do for Redis's `timeout`.
    pub(super) last_active: Cell<Option<Instant>>,
}

impl Client {
    pub(super) fn new(stream: Link) -> Client {
        Client {
            stream: RefCell::new(stream),
            id: Cell::new(u32::MAX),
            retry: Cell::new(None),
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
        self.retry.set(None);
        self.wake();
    }

    /// Requests (`replies` owed for them) to send again, after any handed back before.
    fn retry_later(&self, bytes: &[u8], replies: u64) {
        let mut r = self.retry.take().unwrap_or_default();
        r.bytes.extend_from_slice(bytes);
        r.replies += replies;
        self.retry.set(Some(r));
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

/// Requests handed back to their client to be sent again (`Client::retry`).
#[derive(Default)]
pub(super) struct Retry {
    pub(super) bytes: Vec<u8>,
    pub(super) replies: u64,
}

struct Waiter {
    /// None: the `WAIT` the connection sent itself (`acked.rs`).
    client: Option<Rc<Client>>,
    replies: u64,
    /// Where its requests are in the connection's stream (`out` from `Conn::base`).
    start: u64,
    end: u64,
    /// They only read (`Learned::read_rows`), and are not already sent a second time.
    reads: bool,
    /// Some of its replies were handed on (or held): it cannot be asked again.
    started: bool,
}

/// One shared connection to the master of one route generation.
pub(super) struct Conn {
    pub(super) generation: u64,
    /// Requests appended: those written are kept until answered (a read is sent again if the
    /// master dies before answering), then dropped in bulk (`trim`).
    out: RefCell<Vec<u8>>,
    /// Where `out` begins in the stream of everything appended (waiters' offsets count from it).
    base: Cell<u64>,
    /// Bytes of `out` already written.
    written: Cell<usize>,
    /// Where in `out` the requests appended since the last write began.
    fresh: Cell<Option<usize>>,
    /// The master's address, and which commands only read by its word (`None` until it has
    /// listed them: nothing is sent twice on the proxy's guess).
    addr: std::net::SocketAddr,
    reads: RefCell<Option<Arc<crate::command::Rows>>>,
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
    pub(super) fn new(generation: u64, acked: Option<Acked>, addr: std::net::SocketAddr) -> Conn {
        Conn {
            acked: acked.map(RefCell::new),
            generation,
            out: RefCell::new(Vec::new()),
            base: Cell::new(0),
            written: Cell::new(0),
            fresh: Cell::new(None),
            addr,
            reads: RefCell::new(None),
            waiters: RefCell::new(VecDeque::new()),
            unwritten: Cell::new(0),
            dead: Cell::new(false),
            task: RefCell::new(None),
            kicked: Cell::new(false),
        }
    }

    /// Commit complete requests (`replies` of them) of `client` to this connection; `marks`:
    /// what each reply answers (`RequestTracker::marks`); `again`: they were sent once already
    /// (`Client::retry`), so they are not sent a third time.
    pub(super) fn push(
        &self,
        client: &Rc<Client>,
        parts: &[&[u8]],
        replies: u64,
        marks: &[u8],
        again: bool,
        group: &Group,
    ) {
        let mut out = self.out.borrow_mut();
        let idle = self.written.get() == out.len();
        if self.fresh.get().is_none() {
            self.fresh.set(Some(out.len()));
        }
        let start = self.base.get() + out.len() as u64;
        for p in parts {
            out.extend_from_slice(p);
        }
        let end = self.base.get() + out.len() as u64;
        drop(out);
        let mut waiters = self.waiters.borrow_mut();
        if replies > 0 {
            if let Some(a) = &self.acked {
                a.borrow_mut().owe(replies, marks);
            }
            waiters.push_back(Waiter {
                client: Some(client.clone()),
                replies,
                start,
                end,
                reads: !again && self.only_reads(replies, marks, group),
                started: false,
            });
            self.unwritten.set(self.unwritten.get() + 1);
            client.owed.set(client.owed.get() + replies);
        } else if let Some(last) = waiters.back_mut() {
            // Requests no reply answers go with the waiter before them, never again.
            last.end = end;
            last.reads = false;
        }
        drop(waiters);
        if idle && let Some(w) = self.task.borrow_mut().take() {
            w.wake();
        }
    }

    /// Whether every one of `replies` replies answers a command that only reads (a whole
    /// transaction is not: its `EXEC` runs what it queued).
    fn only_reads(&self, replies: u64, marks: &[u8], group: &Group) -> bool {
        if self.reads.borrow().is_none() {
            // Until the master has listed its commands (asked when it was verified).
            match &*group.commands.load() {
                Some(learned) if learned.master == self.addr => {
                    *self.reads.borrow_mut() = Some(learned.reads.clone());
                }
                _ => return false,
            }
        }
        let reads = self.reads.borrow();
        let Some(reads) = reads.as_ref() else {
            return false;
        };
        marks.len() as u64 == replies * 2
            && marks.chunks_exact(2).all(|m| {
                let m = u16::from_le_bytes([m[0], m[1]]);
                // (A row the table lacks, `u16::MAX`, has the queued bit too.)
                m & crate::resp::MARK_QUEUED == 0 && reads.has(m)
            })
    }

    /// Something appended is not yet written.
    fn unsent(&self) -> bool {
        self.written.get() < self.out.borrow().len()
    }

    /// Drop what is written and answered from `out`: all of it when nothing is owed, else the
    /// answered part once it is large (no move of bytes per request).
    fn trim(&self, waiters: &VecDeque<Waiter>) {
        let mut out = self.out.borrow_mut();
        let base = self.base.get();
        // (Never past what is written: a request no reply answers may lie unsent before the
        // first one owed.)
        let answered = match waiters.front() {
            Some(w) => ((w.start - base) as usize).min(self.written.get()),
            None => self.written.get(),
        };
        if answered == out.len() {
            self.base.set(base + answered as u64);
            out.clear();
            self.written.set(0);
            self.fresh.set(None);
        } else if answered >= TRIM_AT {
            out.drain(..answered);
            self.base.set(base + answered as u64);
            self.written.set(self.written.get() - answered);
            self.fresh.set(self.fresh.get().map(|f| f - answered));
        }
    }

    /// Have the task look at the route again.
    pub(super) fn wake(&self) {
        self.kicked.set(true);
        if let Some(w) = self.task.borrow_mut().take() {
            w.wake();
        }
    }

    /// The connection ended (`why`): take nothing more. Each client owed replies here is
    /// closed, unless what it is owed can be asked again of the next master: requests never
    /// sent, and, when the master went away (not a reply it sent), reads none of whose reply
    /// was handed on. Those go back to their client (`Client::retry`).
    pub(super) fn fail_all(&self, why: Close) {
        self.dead.set(true);
        if let Some(a) = &self.acked {
            a.borrow_mut().fail_held(why); // their writes' fate is unknown
        }
        let gone = matches!(
            why,
            Close::BackendClosed | Close::IoError | Close::SwitchMasterDown | Close::DrainDeadline
        );
        let waiters = std::mem::take(&mut *self.waiters.borrow_mut());
        let sent = waiters.len() - self.unwritten.get().min(waiters.len());
        let out = self.out.borrow();
        let base = self.base.get();
        for (i, w) in waiters.into_iter().enumerate() {
            let Some(client) = w.client else { continue };
            client.owed.set(client.owed.get().saturating_sub(w.replies));
            if client.broken.get().is_some() {
                continue;
            }
            if !w.started && (i >= sent || (gone && w.reads)) {
                let bytes = &out[(w.start - base) as usize..(w.end - base) as usize];
                client.retry_later(bytes, w.replies);
            } else {
                client.fail(why);
            }
        }
        drop(out);
        self.unwritten.set(0);
        self.out.borrow_mut().clear();
        self.written.set(0);
        self.fresh.set(None);
    }
}

/// `out`'s answered part is dropped once it is this large (else when nothing is owed).
const TRIM_AT: usize = 64 * 1024;

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
        if !retired && conn.dead.get() && conn.waiters.borrow().is_empty() && !conn.unsent() {
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
        if retired && let Some(fresh) = conn.fresh.take() {
            // Appended just before the switch and never sent: they must not reach the old
            // master. They go back to their clients, for the new one (after what these are
            // still owed here).
            let n = conn.unwritten.replace(0);
            let mut waiters = conn.waiters.borrow_mut();
            let keep = waiters.len() - n;
            let mut out = conn.out.borrow_mut();
            let base = conn.base.get();
            for w in waiters.drain(keep..) {
                if let Some(client) = w.client {
                    client.owed.set(client.owed.get().saturating_sub(w.replies));
                    if client.broken.get().is_none() {
                        let bytes = &out[(w.start - base) as usize..(w.end - base) as usize];
                        client.retry_later(bytes, w.replies);
                    }
                }
            }
            out.truncate(fresh.max(conn.written.get()));
            if let Some(a) = &conn.acked {
                a.borrow_mut().unwritten_dropped();
            }
        }
        if retired && conn.waiters.borrow().is_empty() && !conn.unsent() {
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
                    let mut out = conn.out.borrow_mut();
                    if conn.fresh.get().is_none() {
                        conn.fresh.set(Some(out.len()));
                    }
                    let start = conn.base.get() + out.len() as u64;
                    out.extend_from_slice(wait);
                    conn.waiters.borrow_mut().push_back(Waiter {
                        client: None,
                        replies: 1,
                        start,
                        end: conn.base.get() + out.len() as u64,
                        reads: false,
                        started: false,
                    });
                    conn.unwritten.set(conn.unwritten.get() + 1);
                    group.metrics.ack_waits_total.inc();
                }
                loop {
                    let out = conn.out.borrow();
                    let from = conn.written.get();
                    if from == out.len() {
                        break;
                    }
                    match stream.try_write(&out[from..]) {
                        Ok(n) => {
                            drop(out);
                            conn.written.set(from + n);
                            conn.unwritten.set(0);
                            conn.fresh.set(None);
                            let waiters = conn.waiters.borrow();
                            if waiters.is_empty() {
                                conn.trim(&waiters); // nothing owed: none of it is kept
                            }
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
            client.owed.set(client.owed.get() - done);
            if client.owed.get() == 0 && client.want_idle.get() {
                client.wake();
            }
        }
        head.started = true;
        head.replies -= done;
        if head.replies == 0 {
            waiters.pop_front();
        }
    }
    conn.trim(&waiters);
    true
}
