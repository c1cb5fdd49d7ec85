//! The route: which master client connections go to, held in one `ArcSwap` so that every session
//! reads it without a lock, and replaced whole by the watcher.
//!
//! A route has a *generation*: it changes whenever the master address changes (including to "no
//! master" because the old one was seen to be a replica). A session remembers the generation it
//! connected under and forwards client bytes only while that is still the current generation; that
//! is what guarantees no client byte reaches an old master after the swap. A master that merely
//! stops answering (`available == false`, same address) keeps its generation, so a slow probe does
//! not cut off healthy connections; it only makes new clients wait.
//!
//! A route can also be *paused* (same generation): a failover has started, so sessions hold new
//! requests instead of sending them to a master that is about to be replaced (the fence). And
//! *held*, by the operator (`admin.rs`: pause, switchover): sessions hold new requests the same
//! way, but the hold is the operator's own state, which no switch or failover lifts.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use tokio::sync::{Notify, watch};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub generation: u64,
    /// The master of this generation, if any is known.
    pub master: Option<SocketAddr>,
    /// Whether the master was verified (ROLE = master) and answers. New clients connect only then.
    pub available: bool,
    /// A failover is under way: hold new requests (see the module doc).
    pub paused: bool,
    /// The operator holds new requests (`RouteTable::hold`); every route stored carries it.
    pub held: bool,
    /// This generation began after the previous master stopped answering (or Sentinel reported
    /// it down). A reply it still sends to a request in flight would come from a master that
    /// has been replaced: what it executes now is lost when it is demoted, so such a reply must
    /// not reach the client as an acknowledgement.
    pub previous_down: bool,
    /// When this generation began (for /status).
    pub since: SystemTime,
}

impl Route {
    /// The address a new client should connect to now, if any (none while paused).
    pub fn target(&self) -> Option<SocketAddr> {
        if self.available && !self.paused {
            self.master
        } else {
            None
        }
    }

    /// New requests wait: a failover's pause or the operator's hold.
    pub fn fenced(&self) -> bool {
        self.paused || self.held
    }

    /// A verified master is known and answering (readiness), paused or not.
    pub fn ready(&self) -> bool {
        self.available && self.master.is_some()
    }
}

/// Sessions attached per generation, in a small ring: generations 8 apart share a slot, which can
/// only make "drained" late, never early.
const ATTACHED_SLOTS: usize = 8;

/// The shared route plus the means to learn of changes.
pub struct RouteTable {
    current: ArcSwap<Route>,
    /// Sessions whose backend belongs to each generation (slot = generation % 8), so the watcher
    /// can tell when the old master is drained. Touched at connect, move and close only.
    attached: [AtomicUsize; ATTACHED_SLOTS],
    /// Sessions per generation (same ring) that subscribe, MONITOR or wait in a blocking command:
    /// at a switch they re-create that on the new master before other sessions are released there
    /// (the gate), so a message published through the proxy during a failover reaches every
    /// subscriber, and an entry added there comes after a re-issued `XREAD … $`.
    carriers: [AtomicUsize; ATTACHED_SLOTS],
    /// Bumped on every change; sessions wait on it instead of polling.
    changed: watch::Sender<u64>,
    /// Sessions that fail to reach the master ask the watcher to look again now.
    recheck: Notify,
    /// The operator's hold (`held` of every route stored).
    operator: std::sync::atomic::AtomicBool,
}

impl Default for RouteTable {
    fn default() -> Self {
        RouteTable::new()
    }
}

impl RouteTable {
    pub fn new() -> RouteTable {
        RouteTable {
            current: ArcSwap::from_pointee(Route {
                generation: 0,
                master: None,
                available: false,
                paused: false,
                held: false,
                previous_down: false,
                since: SystemTime::now(),
            }),
            changed: watch::Sender::new(0),
            recheck: Notify::new(),
            operator: Default::default(),
            attached: Default::default(),
            carriers: Default::default(),
        }
    }

    /// A carrier (see `carriers`) joined (`carrier_attach`) or left a backend of `generation`.
    pub fn carrier_attach(&self, generation: u64) {
        self.carriers[generation as usize % ATTACHED_SLOTS].fetch_add(1, Ordering::Relaxed);
    }

    pub fn carrier_detach(&self, generation: u64) {
        let left =
            self.carriers[generation as usize % ATTACHED_SLOTS].fetch_sub(1, Ordering::AcqRel) - 1;
        if left == 0 && generation != self.generation() {
            // The last one moved off an old master: open the gate now.
            self.changed.send_modify(|n| *n += 1);
        }
    }

    /// Carriers still on a backend of another generation than `current`:
    /// while there are any, sessions hold their requests (for a bounded time) rather than
    /// release them on the new master.
    pub fn carriers_elsewhere(&self, current: u64) -> usize {
        let slot = current as usize % ATTACHED_SLOTS;
        self.carriers
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != slot)
            .map(|(_, c)| c.load(Ordering::Acquire))
            .sum()
    }

    /// A session attached to (`+1`) or left (`-1`) a backend of `generation`.
    pub fn attach(&self, generation: u64) {
        self.attached[generation as usize % ATTACHED_SLOTS].fetch_add(1, Ordering::Relaxed);
    }

    pub fn detach(&self, generation: u64) {
        self.attached[generation as usize % ATTACHED_SLOTS].fetch_sub(1, Ordering::Relaxed);
    }

    /// Sessions still on a backend of `generation`.
    pub fn attached(&self, generation: u64) -> usize {
        self.attached[generation as usize % ATTACHED_SLOTS].load(Ordering::Relaxed)
    }

    /// The current route (lock-free).
    pub fn load(&self) -> Arc<Route> {
        self.current.load_full()
    }

    /// The current generation (lock-free; on the byte path).
    pub fn generation(&self) -> u64 {
        self.current.load().generation
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Route to `master` (verified). Returns the route now in force and whether the address changed.
    pub fn set_master(&self, master: SocketAddr) -> (Arc<Route>, bool) {
        self.switch_to(master, false)
    }

    /// Route to `master`; `previous_down`: the master being replaced had stopped answering.
    pub fn switch_to(&self, master: SocketAddr, previous_down: bool) -> (Arc<Route>, bool) {
        let old = self.load();
        if old.master == Some(master) {
            if !old.available {
                self.store(Route {
                    available: true,
                    ..(*old).clone()
                });
            }
            return (self.load(), false);
        }
        self.store(Route {
            generation: old.generation + 1,
            master: Some(master),
            available: true,
            paused: false,
            held: false,
            previous_down: previous_down || (old.master.is_some() && !old.available),
            since: SystemTime::now(),
        });
        (self.load(), true)
    }

    /// A new generation on the same master: its sessions move to new connections to it at their
    /// next boundary (a read lane whose replica closed its clients).
    pub fn renew(&self) {
        let old = self.load();
        if old.master.is_none() {
            return;
        }
        self.store(Route {
            generation: old.generation + 1,
            available: true,
            paused: false,
            previous_down: false,
            since: SystemTime::now(),
            ..(*old).clone()
        });
    }

    /// The master is known not to be one any more (ROLE said replica): a new generation with none.
    pub fn clear_master(&self) {
        let old = self.load();
        if old.master.is_none() {
            return;
        }
        self.store(Route {
            generation: old.generation + 1,
            master: None,
            available: false,
            paused: false,
            held: false,
            previous_down: false,
            since: SystemTime::now(),
        });
    }

    /// Start or end the fence on the current generation. Returns whether anything changed.
    pub fn set_paused(&self, paused: bool) -> bool {
        let old = self.load();
        if old.paused == paused {
            return false;
        }
        self.store(Route {
            paused,
            ..(*old).clone()
        });
        true
    }

    /// The master does not answer: keep it (and its sessions) but send no new client there.
    pub fn mark_unavailable(&self) {
        let old = self.load();
        if old.available {
            self.store(Route {
                available: false,
                ..(*old).clone()
            });
        }
    }

    /// Start or end the operator's hold. Returns whether anything changed.
    pub fn hold(&self, on: bool) -> bool {
        let was = self.operator.swap(on, Ordering::SeqCst);
        if was != on {
            self.mark_held();
        }
        was != on
    }

    /// Whether the operator holds new requests.
    pub fn held(&self) -> bool {
        self.operator.load(Ordering::SeqCst)
    }

    /// Make the route in force carry the operator's hold (the watcher may store a route at the
    /// same time: whichever stores last, the hold is re-read after it).
    fn mark_held(&self) {
        loop {
            let held = self.operator.load(Ordering::SeqCst);
            let current = self.load();
            if current.held == held {
                return;
            }
            let prev = self.current.compare_and_swap(
                &current,
                Arc::new(Route {
                    held,
                    ..(*current).clone()
                }),
            );
            if Arc::ptr_eq(&*prev, &current) {
                self.changed.send_modify(|n| *n += 1);
            }
        }
    }

    fn store(&self, mut route: Route) {
        route.held = self.operator.load(Ordering::SeqCst);
        self.current.store(Arc::new(route));
        self.mark_held();
        self.changed.send_modify(|n| *n += 1);
    }

    pub fn request_recheck(&self) {
        self.recheck.notify_one();
    }

    pub async fn recheck_requested(&self) {
        self.recheck.notified().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The operator's hold is its own: switches, a failover's pause and its end keep it; only
    /// the operator lifts it.
    #[test]
    fn the_operators_hold_outlives_switches_and_pauses() {
        let t = RouteTable::new();
        let (a, b) = (
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
        );
        t.set_master(a);
        assert!(!t.load().fenced());
        assert!(t.hold(true));
        assert!(!t.hold(true), "already held");
        assert!(t.load().held && t.load().fenced() && !t.load().paused);
        t.set_paused(true);
        t.switch_to(b, false);
        assert!(
            t.load().held && !t.load().paused,
            "a switch ends the pause, not the hold"
        );
        t.clear_master();
        t.set_master(a);
        assert!(t.load().held);
        assert!(t.hold(false));
        assert!(!t.load().fenced());
    }

    #[test]
    fn generations_follow_the_address() {
        let t = RouteTable::new();
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2".parse().unwrap();
        assert_eq!(t.load().target(), None);
        let (r, changed) = t.set_master(a);
        assert!(changed);
        assert_eq!((r.generation, r.target()), (1, Some(a)));
        t.mark_unavailable();
        assert_eq!((t.generation(), t.load().target()), (1, None));
        let (r, changed) = t.set_master(a);
        assert!(!changed);
        assert_eq!((r.generation, r.target()), (1, Some(a)));
        let (r, changed) = t.set_master(b);
        assert!(changed);
        assert_eq!(r.generation, 2);
        t.clear_master();
        assert_eq!((t.generation(), t.load().target()), (3, None));
    }

    #[test]
    fn a_pause_keeps_the_generation_and_a_switch_ends_it() {
        let t = RouteTable::new();
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        t.set_master(a);
        assert!(t.set_paused(true));
        let r = t.load();
        assert_eq!((r.generation, r.target(), r.ready()), (1, None, true));
        assert!(t.set_paused(false));
        assert_eq!(t.load().target(), Some(a));
        t.set_paused(true);
        let (r, _) = t.set_master("127.0.0.1:2".parse().unwrap());
        assert!(!r.paused);
    }

    #[test]
    fn the_gate_counts_carriers_on_other_generations() {
        let t = RouteTable::new();
        t.set_master("127.0.0.1:1".parse().unwrap());
        t.carrier_attach(1);
        assert_eq!(t.carriers_elsewhere(1), 0);
        t.set_master("127.0.0.1:2".parse().unwrap());
        assert_eq!(t.carriers_elsewhere(2), 1);
        let mut rx = t.subscribe();
        rx.borrow_and_update();
        t.carrier_attach(2);
        t.carrier_detach(1);
        assert_eq!(t.carriers_elsewhere(2), 0);
        assert!(rx.has_changed().unwrap(), "the gate opening wakes sessions");
    }

    #[test]
    fn subscribers_see_changes() {
        let t = RouteTable::new();
        let mut rx = t.subscribe();
        assert!(!rx.has_changed().unwrap());
        t.set_master("127.0.0.1:1".parse().unwrap());
        assert!(rx.has_changed().unwrap());
        rx.borrow_and_update();
        t.mark_unavailable();
        assert!(rx.has_changed().unwrap());
    }
}
