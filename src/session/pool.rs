//! Pooled mode's connections of one worker thread, one pool per connection state its clients
//! are in (the user, protocol and database they set with AUTH, HELLO and SELECT; the first pool
//! has none): `--pool` shared master connections and one for scripts (`Lane`; each one served by
//! `conn.rs`), opened with that state on demand to the routed master and replaced after a switch;
//! the registry of the thread's pooled clients and the watcher task that wakes them and the
//! connections at every route change and at shutdown (so a waiting client holds no timer or
//! notification future and takes no lock per request); the pin barrier and the spare connection
//! that keep a pinning request ahead of what other clients send after it.
//!
//! Everything here lives on one worker thread (its `LocalSet`), so clients and connections share
//! state through `Rc`/`RefCell` without locks.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::Duration;

use crate::tls::Link;
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::conn::{Client, Conn, drive};
use super::fence;
use super::io::{ACCEPTED, exchange, set_up};
use crate::Group;

enum Slot {
    Empty,
    /// A connect to the master of this generation is under way.
    Connecting(u64),
    Ready(Rc<Conn>),
}

/// This thread's shared connections, and its pooled clients.
pub(super) struct Pool {
    /// `size` connections for clients that send no script, then one for scripts
    /// (`Lane::Scripts`), each opened when a client first has a request for it.
    slots: RefCell<Vec<Slot>>,
    size: usize,
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
    /// Connections kept ready for the next clients to pin or borrow (see `take_spare`), at most
    /// `SPARES_KEPT`, the most recently used last.
    spares: RefCell<Vec<Spare>>,
    spare_pending: Cell<bool>,
    /// The connection state its clients share (`Carry::pool_state`: AUTH, HELLO, SELECT as
    /// their clients sent them, so a secret): every connection of the pool is opened with it.
    /// Empty for the group's first pool. Never logged.
    state: Vec<Vec<u8>>,
    /// Its state includes `HELLO 3`.
    resp3: bool,
    /// Connections being opened for spans that change a client's state (`Pin::sets_state`), at
    /// most `STATE_SPANS` at once: a thousand clients connecting at once with AUTH or SELECT
    /// open a few connections in turn (each answered in one round trip and then a spare for the
    /// next), not a thousand at once. Only the opening waits: a span holds no turn while it runs.
    state_spans: Rc<tokio::sync::Semaphore>,
}

/// A master connection Redis has accepted and answered on (`io::ACCEPTED`), waiting for a client
/// to pin.
struct Spare {
    stream: Link,
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
        if let Some(since) = pool.pinning_since.get()
            && since.elapsed() > PIN_BARRIER_MAX
        {
            // Other clients' requests may have gone ahead of the pinning one.
            debug!(
                ms = since.elapsed().as_millis() as u64,
                "the pin barrier ran out before the pinning request was sent"
            );
        }
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

/// Which of the pool's connections requests go on: the client's slot's, or the pool's one for
/// scripts. A script holds its connection for as long as it runs (a script past
/// `busy-reply-threshold` until `SCRIPT KILL`, and Redis answers other connections `-BUSY`
/// meanwhile, as Redis's own suite checks): requests queued behind it on a shared connection
/// would wait with it. So scripts, and what their client sends while it is owed their replies,
/// go on the connection for scripts; a client moves between the two only when it is owed
/// nothing, and one that sends no script never queues behind one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Lane {
    Plain,
    Scripts,
}

/// Why a client cannot have a connection now.
pub(super) enum Wait {
    /// A connect is under way (or just failed): the pool wakes the client when it ends; or look
    /// again then.
    Connecting(Option<Instant>),
}

thread_local! {
    /// This thread's pools of each group (by `Group::id`), one per connection state its clients
    /// are in: a few, looked up linearly.
    static POOLS: RefCell<Vec<(usize, Rc<Pool>)>> = const { RefCell::new(Vec::new()) };
}

const RETRY_EVERY: Duration = Duration::from_millis(100);

/// Spare connections a thread keeps: what clients borrowing for short spans (a worker's `BRPOP`
/// after `BRPOP`) give back is taken again at once, without a connect.
const SPARES_KEPT: usize = 2;

/// Connections opened at once per pool for spans that change a client's state (see
/// `state_spans`).
const STATE_SPANS: usize = 2;

impl Pool {
    /// This thread's pool of `size` connections, and the task that wakes its clients and
    /// connections when the route changes or shutdown begins. Call on the thread's `LocalSet`.
    pub(super) fn for_thread(
        size: usize,
        group: &Arc<Group>,
        shutdown: &CancellationToken,
        state: &[Vec<u8>],
    ) -> Rc<Pool> {
        POOLS.with_borrow_mut(|pools| {
            if let Some((_, pool)) = pools
                .iter()
                .find(|(id, p)| *id == group.id && p.state == state)
            {
                return pool.clone();
            }
            let pool = Rc::new(Pool {
                slots: RefCell::new((0..=size.max(1)).map(|_| Slot::Empty).collect()),
                size: size.max(1),
                clients: RefCell::new(Vec::new()),
                free: RefCell::new(Vec::new()),
                failed_at: Cell::new(None),
                next_slot: Cell::new(0),
                shutting_down: Cell::new(false),
                pinning: Cell::new(0),
                pinning_since: Cell::new(None),
                pin_waiters: RefCell::new(Vec::new()),
                spares: RefCell::new(Vec::new()),
                spare_pending: Cell::new(false),
                state: state.to_vec(),
                state_spans: Rc::new(tokio::sync::Semaphore::new(STATE_SPANS)),
                resp3: {
                    let mut carry = super::carry::Carry::new();
                    carry.preload(state);
                    carry.resp3
                },
            });
            pool.refill(group);
            // The group's first pool stays open: it is where every client begins.
            let idle_after = Some(group.config().pool_idle_timeout)
                .filter(|d| !state.is_empty() && !d.is_zero());
            tokio::task::spawn_local(watch(
                Rc::downgrade(&pool),
                group.route.subscribe(),
                group.id,
                shutdown.clone(),
                idle_after,
            ));
            pools.push((group.id, pool.clone()));
            pool
        })
    }

    /// The turns to open a connection for a span that changes a client's state (see
    /// `state_spans`).
    pub(super) fn state_spans(&self) -> Rc<tokio::sync::Semaphore> {
        self.state_spans.clone()
    }

    /// Whether its clients speak RESP3 (`HELLO 3` in its state).
    pub(super) fn resp3(&self) -> bool {
        self.resp3
    }

    /// The connection state its clients share (see `state`).
    pub(super) fn state(&self) -> &[Vec<u8>] {
        &self.state
    }

    /// The spare connection for a client being pinned, if it is to the routed master, the route
    /// is open and Redis has not closed it meanwhile; a new spare is made for the next one.
    /// With it, the pinning request leaves in the same turn as it was read, as in 1:1 mode, so it
    /// stays ahead of what other clients send after it (whether pooled or pinned already);
    /// without it, connecting takes a round trip, covered only by the barrier.
    pub(super) fn take_spare(
        self: &Rc<Self>,
        group: &Arc<Group>,
    ) -> Option<(Link, u64, SocketAddr)> {
        loop {
            let spare = self.spares.borrow_mut().pop();
            self.refill(group);
            // Without a spare the pinning request waits for a new connection, covered only by the
            // barrier (50 ms): why there was none is logged, for when a request was overtaken.
            let Some(spare) = spare else {
                debug!(
                    "no spare connection for a pinned client (still being made, or none could be)"
                );
                return None;
            };
            if let Some(usable) = Self::usable_spare(spare, group) {
                return Some(usable);
            }
        }
    }

    /// `spare` if it is to the routed master, the route is open and Redis has not closed it.
    fn usable_spare(spare: Spare, group: &Group) -> Option<(Link, u64, SocketAddr)> {
        let route = group.route.load();
        // Served: a master the watcher cannot reach right now still takes the connections of
        // clients it already serves (see `pooled.rs`).
        let asker = fence::Asker {
            backend: Some(spare.generation),
            served: true,
            carrier: false,
        };
        let carriers = group.route.carriers_elsewhere(route.generation);
        let open = fence::admit(&route, asker, carriers, &mut fence::Clock::lazy())
            == fence::Admit::Go(spare.addr);
        let mut spare = spare;
        let quiet = spare.stream.quiet();
        if !(open && quiet) {
            debug!(
                open,
                quiet, "the spare connection cannot take a pinned client"
            );
        }
        (open && quiet).then_some((spare.stream, spare.generation, spare.addr))
    }

    /// A connection lent for a span, given back clean (`dedicated.rs`, `returnable`): kept as a
    /// spare if it is to the routed master and fewer than `SPARES_KEPT` are, else closed.
    pub(super) fn give_back(&self, (stream, generation, addr): (Link, u64, SocketAddr)) {
        let mut spares = self.spares.borrow_mut();
        if spares.iter().any(|s| s.generation > generation) {
            return; // the route moved on since the span ended
        }
        spares.retain(|s| s.generation == generation);
        if spares.len() < SPARES_KEPT {
            spares.push(Spare {
                stream,
                generation,
                addr,
            });
        }
    }

    /// `give_back` a connection lent to a named client once its name is removed (`CLIENT
    /// SETNAME` of nothing), off the client's path; one that does not answer at once is dropped.
    pub(super) fn give_back_unnamed(
        self: &Rc<Self>,
        (mut stream, generation, addr): (Link, u64, SocketAddr),
    ) {
        const UNNAME: &[u8] = b"*3\r\n$6\r\nCLIENT\r\n$7\r\nSETNAME\r\n$0\r\n\r\n";
        let pool = Rc::downgrade(self);
        tokio::task::spawn_local(async move {
            let unnamed = timeout(Duration::from_secs(1), exchange(&mut stream, UNNAME)).await;
            if let (Ok(Ok(b'+')), Some(pool)) = (unnamed, pool.upgrade()) {
                pool.give_back((stream, generation, addr));
            }
        });
    }

    /// Make a spare connection unless there is one or one is being made.
    fn refill(self: &Rc<Self>, group: &Arc<Group>) {
        if self.spare_pending.get() || !self.spares.borrow().is_empty() {
            return;
        }
        self.spare_pending.set(true);
        let (pool, group) = (Rc::downgrade(self), group.clone());
        let state = self.state.clone();
        tokio::task::spawn_local(async move {
            let route = group.route.load();
            let config = group.config();
            let made = async {
                let addr = route.target()?;
                let connect = async {
                    let mut stream = super::backend::open(&group, addr).await?;
                    if !set_up(&mut stream, &state).await? {
                        return Err(refused());
                    }
                    exchange(&mut stream, ACCEPTED).await?;
                    Ok::<_, std::io::Error>(stream)
                };
                let stream = timeout(config.connect_timeout, connect).await.ok()?.ok()?;
                Some(Spare {
                    stream,
                    generation: route.generation,
                    addr,
                })
            }
            .await;
            if let Some(pool) = pool.upgrade() {
                pool.spare_pending.set(false);
                let mut spares = pool.spares.borrow_mut();
                if let Some(made) = made
                    && spares.len() < SPARES_KEPT
                {
                    spares.push(made);
                }
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

    /// Whether `slot` has a live connection to the master of `generation`.
    pub(super) fn ready(&self, slot: usize, generation: u64) -> bool {
        matches!(&self.slots.borrow()[slot], Slot::Ready(c) if c.generation == generation && !c.dead.get())
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
        // Fewer than 2^32 clients: the proxy's max-clients is far below.
        client.id.set(id as u32);
    }

    pub(super) fn deregister(&self, client: &Client) {
        let id = client.id.replace(u32::MAX);
        if id != u32::MAX {
            self.clients.borrow_mut()[id as usize] = Weak::new();
            self.free.borrow_mut().push(id as usize);
        }
    }

    /// Whether a client is in the pool now (lent and pinned clients are not).
    fn has_clients(&self) -> bool {
        self.clients.borrow().iter().any(|c| c.strong_count() > 0)
    }

    /// Close the pool's connections (each once nothing is owed on it: `conn.rs`) and its
    /// spares; the next client opens them again. Whether there was any to close.
    fn close_connections(&self) -> bool {
        let mut closed = !self.spares.borrow().is_empty();
        self.spares.borrow_mut().clear();
        for slot in self.slots.borrow().iter() {
            if let Slot::Ready(c) = slot
                && !c.dead.get()
            {
                c.dead.set(true);
                c.wake();
                closed = true;
            }
        }
        closed
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

    /// The slot a new client uses (round robin over the pool), in its plain lane.
    pub(super) fn assign(&self) -> usize {
        let n = self.next_slot.get();
        self.next_slot.set(n.wrapping_add(1));
        n % self.size
    }

    /// The slot of `lane` a client of `slot` (from `assign`) uses: scripts of every client of
    /// the pool share one (Redis runs one at a time anyway).
    pub(super) fn lane(&self, slot: usize, lane: Lane) -> usize {
        match lane {
            Lane::Plain => slot,
            Lane::Scripts => self.size,
        }
    }

    /// The connection of `slot` to `addr`, the master of `generation`, connecting one if there
    /// is none (or only one to an older master). `create`: also when the slot never had one
    /// (else only a connection a switch retired is replaced: a client with nothing to send does
    /// not open one, as a client just passing through a pool's state would).
    pub(super) fn conn(
        self: &Rc<Self>,
        slot: usize,
        generation: u64,
        addr: SocketAddr,
        group: &Arc<Group>,
        create: bool,
    ) -> Result<Rc<Conn>, Wait> {
        let mut slots = self.slots.borrow_mut();
        match &slots[slot] {
            Slot::Ready(c) if c.generation == generation && !c.dead.get() => return Ok(c.clone()),
            Slot::Connecting(g) if *g == generation => return Err(Wait::Connecting(None)),
            Slot::Empty if !create => return Err(Wait::Connecting(None)),
            _ => {}
        }
        if let Some(at) = self.failed_at.get()
            && at.elapsed() < RETRY_EVERY
        {
            return Err(Wait::Connecting(Some(at + RETRY_EVERY)));
        }
        slots[slot] = Slot::Connecting(generation);
        drop(slots);
        tokio::task::spawn_local(connect(self.clone(), slot, generation, addr, group.clone()));
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
/// (or the group's removal) begins. It holds no `Group`: when the group is gone (removed, its
/// sessions closed) its route's sender drops, and the thread forgets the pool.
///
/// `idle_after` (`--pool-idle-timeout`, for a pool of a state its clients set): the pool's
/// connections close once it has had no client at two looks that far apart. A client that set
/// a database or a user for one request does not leave master connections open for good.
async fn watch(
    pool: Weak<Pool>,
    mut changes: tokio::sync::watch::Receiver<u64>,
    group_id: usize,
    shutdown: CancellationToken,
    idle_after: Option<Duration>,
) {
    let _forget = Forget(group_id);
    let mut look = idle_after.map(|d| Instant::now() + d);
    let mut empty_before = false;
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
            _ = tokio::time::sleep_until(look.unwrap_or_else(Instant::now)), if look.is_some() => {
                look = idle_after.map(|d| Instant::now() + d);
                let Some(p) = pool.upgrade() else { return };
                let empty = !p.has_clients();
                if empty && empty_before && p.close_connections() {
                    debug!("an idle pool closed its connections");
                }
                empty_before = empty;
                continue;
            }
        }
        match pool.upgrade() {
            Some(p) => p.wake_all(),
            None => return,
        }
    }
}

/// Drops the thread's pool of a group when its watcher ends.
struct Forget(usize);

impl Drop for Forget {
    fn drop(&mut self) {
        let _ = POOLS.try_with(|p| {
            if let Ok(mut p) = p.try_borrow_mut() {
                p.retain(|(id, _)| *id != self.0);
            }
        });
    }
}

/// Durable acknowledgements for a new connection to `addr`, if its group asks for them, with
/// what that master said of its commands' writes (the hand list until it has).
fn acked(group: &Group, addr: SocketAddr) -> Option<super::conn::Acked> {
    let crate::config::Ack::Replicas(need) = group.settings().ack else {
        return None;
    };
    let writes = match &*group.commands.load() {
        Some(learned) if learned.master == addr => learned.writes.clone(),
        _ => Arc::new(crate::command::Rows::written_by_hand()),
    };
    Some(super::conn::Acked::new(
        need,
        group.config().ack_timeout,
        writes,
    ))
}

fn refused() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::PermissionDenied,
        "the master refused the pool's connection state",
    )
}

/// Connect `slot` to the master and serve the connection until it ends.
async fn connect(
    pool: Rc<Pool>,
    slot: usize,
    generation: u64,
    addr: SocketAddr,
    group: Arc<Group>,
) {
    let config = group.config();
    let began = Instant::now();
    let stream = match timeout(config.connect_timeout, super::backend::open(&group, addr)).await {
        Ok(Ok(s)) => s,
        failed => {
            if let Ok(Err(e)) = failed {
                debug!(backend = %addr, error = %e, "pool connect failed");
            }
            group.metrics.backend_connect_failures_total.inc();
            group.route.request_recheck();
            pool.failed_at.set(Some(Instant::now()));
            pool.set(slot, generation, None);
            return;
        }
    };
    let mut stream = stream;
    // Opened with the pool's state (its clients' user, protocol, database), then named, so
    // `CLIENT LIST` on the master tells the proxy's shared connections apart. Any answer to the
    // name will do (`-NOAUTH` when Redis wants a password: the name is only a courtesy).
    let setname = b"*3\r\n$6\r\nCLIENT\r\n$7\r\nSETNAME\r\n$19\r\nsentinel-proxy-pool\r\n";
    let set_up = async {
        if !set_up(&mut stream, &pool.state).await? {
            // A password changed or a user removed since the clients logged in.
            debug!(backend = %addr, "the master refused a pool's connection state");
            return Err(refused());
        }
        exchange(&mut stream, setname).await
    };
    if !matches!(timeout(config.connect_timeout, set_up).await, Ok(Ok(_))) {
        group.metrics.backend_connect_failures_total.inc();
        pool.failed_at.set(Some(Instant::now()));
        pool.set(slot, generation, None);
        return;
    }
    group
        .metrics
        .backend_connect_seconds
        .observe(began.elapsed().as_secs_f64());
    pool.failed_at.set(None);
    let conn = Rc::new(Conn::new(generation, acked(&group, addr), addr));
    if group.route.generation() != generation {
        pool.set(slot, generation, None); // moved on while connecting
        return;
    }
    pool.set(slot, generation, Some(conn.clone()));
    group.metrics.pool_connections.inc();
    // Counted like a session on this master, so the watcher knows when the old one is drained.
    group.route.attach(generation);
    let why = drive(&conn, stream, &group).await;
    debug!(backend = %addr, reason = why.label(), "pool connection ended");
    conn.fail_all(why);
    group.route.detach(generation);
    group.metrics.pool_connections.dec();
    pool.set(slot, generation, None);
}
