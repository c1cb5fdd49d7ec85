//! Pooled mode's shared master connections: `--pool` of them per worker thread, each carrying the
//! requests of many clients, written in one batch per wake-up, with the replies handed back to
//! their clients in order.
//!
//! Everything here lives on one worker thread (its `LocalSet`), so clients and connections share
//! state through `Rc`/`RefCell` without locks. A client appends complete requests to its
//! connection's `out` and a waiter (itself, how many replies) to its queue; the connection's task
//! writes `out` when it next runs, so the requests of every client served in that tick leave in
//! one write. It reads replies into the thread's scratch buffer, splits them by counting replies
//! (`ReplyTracker::feed_replies`) against the head waiter, and writes each run of replies straight
//! to its client's socket; only what a client's socket cannot take now is kept (in that client's
//! `out`). Shared connections speak RESP2 on db 0 with no other state: a client that would change
//! that is pinned to a connection of its own first (`resp/pinning.rs`).
//!
//! One task per thread watches the route and shutdown for all of them and wakes the clients and
//! connections (`Pool::wake_all`), so a waiting client holds no timer or notification future and
//! takes no lock per request.
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
use std::net::SocketAddr;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::Duration;

use tokio::io::AsyncRead;
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::time::{Instant, sleep_until, timeout};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::Close;
use super::io::{Pending, SCRATCH, exchange};
use crate::Shared;
use crate::resp::ReplyTracker;

/// The part of a pooled client that its connection's task touches.
pub(super) struct Client {
    /// Replies go straight to this socket from the connection's task (`try_write`); the
    /// client's task flushes what it could not take (`poll_write`).
    pub(super) write: RefCell<OwnedWriteHalf>,
    /// Replies the client's socket could not take yet; the client's task flushes them.
    pub(super) out: RefCell<Pending>,
    /// Replies still to come on its connection.
    pub(super) owed: Cell<u64>,
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
}

impl Client {
    pub(super) fn new(write: OwnedWriteHalf) -> Client {
        Client {
            write: RefCell::new(write),
            id: Cell::new(usize::MAX),
            out: RefCell::new(Pending::default()),
            owed: Cell::new(0),
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
    fn deliver(&self, bytes: &[u8], shared: &Shared) {
        if self.broken.get().is_some() {
            return; // closing: the client is owed nothing more
        }
        let mut out = self.out.borrow_mut();
        let mut w = 0;
        if out.is_empty() {
            w = match super::io::write_now_half(&self.write.borrow(), bytes) {
                Ok(w) => w,
                Err(_) => {
                    drop(out);
                    self.fail(Close::ClientClosed);
                    return;
                }
            };
            shared.metrics.client_bytes_sent_total.inc_by(w as u64);
        }
        if w < bytes.len() {
            let was_empty = out.is_empty();
            out.push(&bytes[w..]);
            drop(out);
            if was_empty {
                self.wake(); // its task now waits for the socket to take the rest
            }
        }
    }
}

struct Waiter {
    client: Rc<Client>,
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
}

impl Conn {
    /// Commit complete requests (`replies` of them) of `client` to this connection.
    pub(super) fn push(&self, client: &Rc<Client>, parts: &[&[u8]], replies: u64) {
        let mut out = self.out.borrow_mut();
        let was_empty = out.is_empty();
        for p in parts {
            out.extend_from_slice(p);
        }
        drop(out);
        if replies > 0 {
            self.waiters.borrow_mut().push_back(Waiter {
                client: client.clone(),
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
    fn wake(&self) {
        self.kicked.set(true);
        if let Some(w) = self.task.borrow_mut().take() {
            w.wake();
        }
    }

    /// Close every client owed a reply here (`why`) and take nothing more.
    fn fail_all(&self, why: Close) {
        self.dead.set(true);
        let waiters = std::mem::take(&mut *self.waiters.borrow_mut());
        for w in waiters {
            w.client
                .owed
                .set(w.client.owed.get().saturating_sub(w.replies));
            w.client.fail(why);
        }
        self.unwritten.set(0);
        self.out.borrow_mut().clear();
        self.written.set(0);
    }
}

enum Slot {
    Empty,
    /// A connect to the master of this generation is under way.
    Connecting(u64),
    Ready(Rc<Conn>),
}

/// This thread's shared connections, and its pooled clients.
pub(super) struct Pool {
    slots: RefCell<Vec<Slot>>,
    /// Every pooled client of the thread (a free list of places), woken by `wake_all`.
    clients: RefCell<Vec<Weak<Client>>>,
    free: RefCell<Vec<usize>>,
    /// The last connect failed then: clients wait `RETRY_EVERY` before the next.
    failed_at: Cell<Option<Instant>>,
    next_slot: Cell<usize>,
    /// Shutdown began: clients close at their next boundary.
    pub(super) shutting_down: Cell<bool>,
    /// Clients between reading a request that pins them and sending it on their own connection
    /// (the pin barrier, see `PinGuard`), since when, and the clients holding requests meanwhile.
    pinning: Cell<u32>,
    pinning_since: Cell<Option<Instant>>,
    pin_waiters: RefCell<Vec<Weak<Client>>>,
    /// A connection kept ready for the next client to pin (see `take_spare`).
    spare: RefCell<Option<Spare>>,
    spare_pending: Cell<bool>,
}

/// A master connection Redis has accepted and answered on (a `PING`), waiting for a client to pin.
struct Spare {
    stream: TcpStream,
    generation: u64,
    addr: SocketAddr,
}

/// The pin barrier. Through an L4 splice, a request another client sends after a pinning one
/// (a `DEL` after an `XREADGROUP … BLOCK`) reaches Redis after it, and Redis's own suite relies on
/// that. A pinned client's request goes out only once its earlier replies are in and its own
/// connection is up, so meanwhile the thread's pooled clients hold their new requests: from the
/// read of the pinning request until it is written (when the guard is dropped), at most
/// `PIN_BARRIER_MAX`.
pub(super) struct PinGuard(Rc<Pool>);

impl Drop for PinGuard {
    fn drop(&mut self) {
        let pool = &self.0;
        let left = pool.pinning.get().saturating_sub(1);
        pool.pinning.set(left);
        if left == 0 {
            pool.pinning_since.set(None);
            let waiters = std::mem::take(&mut *pool.pin_waiters.borrow_mut());
            for c in waiters.iter().filter_map(Weak::upgrade) {
                c.wake();
            }
        }
    }
}

/// The longest the pin barrier holds other clients' requests.
const PIN_BARRIER_MAX: Duration = Duration::from_millis(50);

/// Why a client cannot have a connection now.
pub(super) enum Wait {
    /// A connect is under way (or just failed): the pool wakes the client when it ends; or look
    /// again then.
    Connecting(Option<Instant>),
}

thread_local! {
    static POOL: RefCell<Option<Rc<Pool>>> = const { RefCell::new(None) };
}

const RETRY_EVERY: Duration = Duration::from_millis(100);

impl Pool {
    /// This thread's pool of `size` connections, and the task that wakes its clients and
    /// connections when the route changes or shutdown begins. Call on the thread's `LocalSet`.
    pub(super) fn for_thread(
        size: usize,
        shared: &Arc<Shared>,
        shutdown: &CancellationToken,
    ) -> Rc<Pool> {
        POOL.with_borrow_mut(|p| {
            p.get_or_insert_with(|| {
                let pool = Rc::new(Pool {
                    slots: RefCell::new((0..size.max(1)).map(|_| Slot::Empty).collect()),
                    clients: RefCell::new(Vec::new()),
                    free: RefCell::new(Vec::new()),
                    failed_at: Cell::new(None),
                    next_slot: Cell::new(0),
                    shutting_down: Cell::new(false),
                    pinning: Cell::new(0),
                    pinning_since: Cell::new(None),
                    pin_waiters: RefCell::new(Vec::new()),
                    spare: RefCell::new(None),
                    spare_pending: Cell::new(false),
                });
                pool.refill(shared);
                tokio::task::spawn_local(watch(
                    Rc::downgrade(&pool),
                    shared.clone(),
                    shutdown.clone(),
                ));
                pool
            })
            .clone()
        })
    }

    /// The spare connection for a client being pinned, if it is to the routed master, the route
    /// is open and Redis has not closed it meanwhile; a new spare is made for the next one.
    /// With it, the pinning request leaves in the same turn as it was read, as in 1:1 mode, so it
    /// stays ahead of what other clients send after it (whether pooled or pinned already);
    /// without it, connecting takes a round trip, covered only by the barrier.
    pub(super) fn take_spare(
        self: &Rc<Self>,
        shared: &Arc<Shared>,
    ) -> Option<(TcpStream, u64, SocketAddr)> {
        let spare = self.spare.borrow_mut().take();
        self.refill(shared);
        let spare = spare?;
        let route = shared.route.load();
        let open = !route.paused
            && route.generation == spare.generation
            && route.target() == Some(spare.addr)
            && shared.route.carriers_elsewhere(route.generation) == 0;
        let mut byte = [0u8; 1];
        let quiet = matches!(spare.stream.try_read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
        (open && quiet).then_some((spare.stream, spare.generation, spare.addr))
    }

    /// Make a spare connection unless there is one or one is being made.
    fn refill(self: &Rc<Self>, shared: &Arc<Shared>) {
        if self.spare_pending.get() || self.spare.borrow().is_some() {
            return;
        }
        self.spare_pending.set(true);
        let (pool, shared) = (Rc::downgrade(self), shared.clone());
        tokio::task::spawn_local(async move {
            let route = shared.route.load();
            let config = shared.config();
            let made = async {
                let addr = route.target()?;
                let connect = async {
                    let mut stream = TcpStream::connect(addr).await?;
                    exchange(&mut stream, b"*1\r\n$4\r\nPING\r\n").await?;
                    Ok::<_, std::io::Error>(stream)
                };
                let stream = timeout(config.connect_timeout, connect).await.ok()?.ok()?;
                super::tune(&stream, config.tcp_keepalive);
                Some(Spare {
                    stream,
                    generation: route.generation,
                    addr,
                })
            }
            .await;
            if let Some(pool) = pool.upgrade() {
                pool.spare_pending.set(false);
                *pool.spare.borrow_mut() = made;
            }
        });
    }

    /// A client read a request that pins it: raise the barrier until the guard is dropped.
    pub(super) fn pin_begin(self: &Rc<Self>) -> PinGuard {
        if self.pinning.get() == 0 {
            self.pinning_since.set(Some(Instant::now()));
        }
        self.pinning.set(self.pinning.get() + 1);
        PinGuard(self.clone())
    }

    /// While the barrier stands: until when it holds at most.
    pub(super) fn barrier(&self) -> Option<Instant> {
        let until = self.pinning_since.get()? + PIN_BARRIER_MAX;
        (self.pinning.get() > 0 && until > Instant::now()).then_some(until)
    }

    /// Wake `client` when the barrier falls.
    pub(super) fn wait_barrier(&self, client: &Rc<Client>) {
        let mut waiters = self.pin_waiters.borrow_mut();
        let me = Rc::downgrade(client);
        if !waiters.iter().any(|c| c.ptr_eq(&me)) {
            waiters.push(me);
        }
    }

    /// Count `client` among those `wake_all` wakes.
    pub(super) fn register(&self, client: &Rc<Client>) {
        let weak = Rc::downgrade(client);
        let id = match self.free.borrow_mut().pop() {
            Some(id) => {
                self.clients.borrow_mut()[id] = weak;
                id
            }
            None => {
                let mut clients = self.clients.borrow_mut();
                clients.push(weak);
                clients.len() - 1
            }
        };
        client.id.set(id);
    }

    pub(super) fn deregister(&self, client: &Client) {
        let id = client.id.replace(usize::MAX);
        if id != usize::MAX {
            self.clients.borrow_mut()[id] = Weak::new();
            self.free.borrow_mut().push(id);
        }
    }

    /// Wake every client and connection of the thread to look at the route again.
    fn wake_all(&self) {
        // Collected first: a woken client may register or deregister others.
        let clients: Vec<Rc<Client>> = self
            .clients
            .borrow()
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        for c in clients {
            c.wake();
        }
        for slot in self.slots.borrow().iter() {
            if let Slot::Ready(c) = slot {
                c.wake();
            }
        }
    }

    /// The slot a new client uses (round robin over the pool).
    pub(super) fn assign(&self) -> usize {
        let n = self.next_slot.get();
        self.next_slot.set(n.wrapping_add(1));
        n % self.slots.borrow().len()
    }

    /// The connection of `slot` to `addr`, the master of `generation`, connecting one if there
    /// is none (or only one to an older master).
    pub(super) fn conn(
        self: &Rc<Self>,
        slot: usize,
        generation: u64,
        addr: SocketAddr,
        shared: &Arc<Shared>,
    ) -> Result<Rc<Conn>, Wait> {
        let mut slots = self.slots.borrow_mut();
        match &slots[slot] {
            Slot::Ready(c) if c.generation == generation && !c.dead.get() => return Ok(c.clone()),
            Slot::Connecting(g) if *g == generation => return Err(Wait::Connecting(None)),
            _ => {}
        }
        if let Some(at) = self.failed_at.get()
            && at.elapsed() < RETRY_EVERY
        {
            return Err(Wait::Connecting(Some(at + RETRY_EVERY)));
        }
        slots[slot] = Slot::Connecting(generation);
        drop(slots);
        tokio::task::spawn_local(connect(
            self.clone(),
            slot,
            generation,
            addr,
            shared.clone(),
        ));
        Err(Wait::Connecting(None))
    }

    fn set(&self, slot: usize, generation: u64, to: Option<Rc<Conn>>) {
        let mut slots = self.slots.borrow_mut();
        let mine = match &slots[slot] {
            Slot::Connecting(g) => *g == generation,
            Slot::Ready(c) => c.generation == generation,
            Slot::Empty => false,
        };
        if mine || to.is_some() {
            slots[slot] = to.map_or(Slot::Empty, Slot::Ready);
        }
        drop(slots);
        self.wake_all(); // clients waiting for a connection look again
    }
}

/// The thread's watcher: wakes clients and connections at every route change, and when shutdown
/// begins.
async fn watch(pool: Weak<Pool>, shared: Arc<Shared>, shutdown: CancellationToken) {
    let mut changes = shared.route.subscribe();
    loop {
        let stopping = pool.upgrade().is_none_or(|p| p.shutting_down.get());
        tokio::select! {
            r = changes.changed() => {
                if r.is_err() {
                    return;
                }
            }
            _ = shutdown.cancelled(), if !stopping => {
                if let Some(p) = pool.upgrade() {
                    p.shutting_down.set(true);
                }
            }
        }
        match pool.upgrade() {
            Some(p) => p.wake_all(),
            None => return,
        }
    }
}

/// Connect `slot` to the master and serve the connection until it ends.
async fn connect(
    pool: Rc<Pool>,
    slot: usize,
    generation: u64,
    addr: SocketAddr,
    shared: Arc<Shared>,
) {
    let config = shared.config();
    let began = Instant::now();
    let stream = match timeout(config.connect_timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        failed => {
            if let Ok(Err(e)) = failed {
                debug!(backend = %addr, error = %e, "pool connect failed");
            }
            shared.metrics.backend_connect_failures_total.inc();
            shared.route.request_recheck();
            pool.failed_at.set(Some(Instant::now()));
            pool.set(slot, generation, None);
            return;
        }
    };
    let mut stream = stream;
    // Named, so `CLIENT LIST` on the master tells the proxy's shared connections apart. Any
    // answer will do (`-NOAUTH` when Redis wants a password: the name is only a courtesy).
    let setname = b"*3\r\n$6\r\nCLIENT\r\n$7\r\nSETNAME\r\n$19\r\nsentinel-proxy-pool\r\n";
    if !matches!(
        timeout(config.connect_timeout, exchange(&mut stream, setname)).await,
        Ok(Ok(()))
    ) {
        shared.metrics.backend_connect_failures_total.inc();
        pool.failed_at.set(Some(Instant::now()));
        pool.set(slot, generation, None);
        return;
    }
    shared
        .metrics
        .backend_connect_seconds
        .observe(began.elapsed().as_secs_f64());
    pool.failed_at.set(None);
    super::tune(&stream, config.tcp_keepalive);
    let conn = Rc::new(Conn {
        generation,
        out: RefCell::new(Vec::new()),
        written: Cell::new(0),
        waiters: RefCell::new(VecDeque::new()),
        unwritten: Cell::new(0),
        dead: Cell::new(false),
        task: RefCell::new(None),
        kicked: Cell::new(false),
    });
    if shared.route.generation() != generation {
        pool.set(slot, generation, None); // moved on while connecting
        return;
    }
    pool.set(slot, generation, Some(conn.clone()));
    shared.metrics.pool_connections.inc();
    // Counted like a session on this master, so the watcher knows when the old one is drained.
    shared.route.attach(generation);
    let why = drive(&conn, stream, &shared).await;
    debug!(backend = %addr, reason = why.label(), "pool connection ended");
    conn.fail_all(why);
    shared.route.detach(generation);
    shared.metrics.pool_connections.dec();
    pool.set(slot, generation, None);
}

enum Event {
    Readable,
    /// The thread's watcher saw a route change.
    Kicked,
    Deadline,
}

/// Serve one shared connection: write what clients append, hand replies back. Returns why it
/// ended; the caller closes the clients still owed replies with that reason.
async fn drive(conn: &Conn, mut stream: TcpStream, shared: &Shared) -> Close {
    let mut rep = ReplyTracker::new();
    let mut retired = false;
    let mut rechecked = false;
    let mut deadline: Option<Instant> = None;
    loop {
        // The thread's watcher wakes this task at every route change.
        if !retired && shared.route.generation() != conn.generation {
            retired = true;
            conn.dead.set(true);
            let route = shared.route.load();
            if route.previous_down {
                // A hung or cut-off master may run these when it comes back, after its
                // replacement was promoted: their outcome is unknown.
                return Close::SwitchMasterDown;
            }
            deadline = Some(Instant::now() + shared.config().drain_timeout);
        }
        if retired && conn.written.get() == 0 && conn.unwritten.get() > 0 {
            // Appended just before the switch and never sent: they must not reach the old
            // master. Their clients close, having been sent nowhere.
            let n = conn.unwritten.replace(0);
            let mut waiters = conn.waiters.borrow_mut();
            let keep = waiters.len() - n;
            for w in waiters.drain(keep..) {
                w.client
                    .owed
                    .set(w.client.owed.get().saturating_sub(w.replies));
                w.client.fail(Close::SwitchMidRequest);
            }
            conn.out.borrow_mut().clear();
        }
        if retired && conn.waiters.borrow().is_empty() && conn.out.borrow().is_empty() {
            return Close::BackendClosed; // drained: no client is owed anything
        }
        let wake = deadline;
        let event = {
            let stream = &mut stream;
            let io = std::future::poll_fn(|cx| {
                // Write what is appended (one write for every client served this tick).
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
                        let ok = SCRATCH.with_borrow(|s| dispatch(conn, &mut rep, &s[..n], shared));
                        if !ok {
                            return Close::ProtocolError;
                        }
                        if rep.saw_not_master && !rechecked {
                            rechecked = true;
                            shared.metrics.not_master_replies_total.inc();
                            shared.route.request_recheck();
                        }
                    }
                }
            }
        }
    }
}

/// Hand a chunk of replies to the clients they answer, in order. False: bytes no client is owed,
/// or not RESP (the connection must end).
fn dispatch(conn: &Conn, rep: &mut ReplyTracker, mut bytes: &[u8], shared: &Shared) -> bool {
    let mut waiters = conn.waiters.borrow_mut();
    while !bytes.is_empty() {
        let Some(head) = waiters.front_mut() else {
            return false;
        };
        let before = rep.replies;
        let Ok(n) = rep.feed_replies(bytes, before + head.replies) else {
            return false;
        };
        let done = rep.replies - before;
        head.client.deliver(&bytes[..n], shared);
        bytes = &bytes[n..];
        if done > 0 {
            head.replies -= done;
            let client = &head.client;
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
