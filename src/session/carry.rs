//! The state a client built on its connection, and how it is re-created on another master so that
//! a failover costs the client latency, not an error (pure: no sockets; `migrate.rs` does the I/O).
//!
//! What is kept comes from what Redis *answered*, not from what the client asked: a request the
//! request tracker captured (`resp::Captured`) is resolved when its reply passes, and only then
//! counts. So `CLIENT SETINFO` that Redis 7.0 rejects is not replayed, a failed `SELECT` does not
//! change the db, and a nested `MULTI` does not open a second transaction. Subscriptions come from
//! the confirmations Redis sends (`subscribe`, `unsubscribe`… frames), which is the only place
//! where `UNSUBSCRIBE` with no arguments says what it removed.
//!
//! Carried: connection state (AUTH, HELLO, SELECT, CLIENT SETNAME/SETINFO/NO-EVICT/NO-TOUCH, each
//! kind once, the last that worked), CLIENT TRACKING (without REDIRECT, whose id means nothing on
//! another node; the client then gets the flush-everything invalidation), an open MULTI with its
//! queue (bounded), WATCH (the new master cannot check keys watched on the old one, so the EXEC
//! that follows must fail as for a touched key), subscriptions, MONITOR, and a blocking command in
//! flight (re-issued with what is left of its timeout). Anything else a session did that changes
//! its connection is unknown to the proxy and not carried.

use std::collections::{BTreeSet, VecDeque};
use std::time::Instant;

use super::compose::{Frame, args, looks_like_confirmation, parse_frame, with_timeout_left};
use crate::command::{self, Slot};
use crate::resp::encode_command as encode;
use crate::resp::{CaptureKind, Captured};

/// A transaction's queue bigger than this is not carried (the session closes as before).
const MAX_TRANSACTION_BYTES: usize = 1024 * 1024;
/// Frames of a subscribed connection are inspected from this much of their start (a
/// confirmation is kind + channel + count; a message's payload is not needed).
const MAX_FRAME_PREFIX: usize = 64 * 1024 + 64;
/// The key that makes a WATCH fail on the new master (see `plan`).
pub(super) const BROKEN_WATCH_KEY: &[u8] = b"sentinel-proxy:broken-watch";

/// Connection-state slots (`command::Slot`), replayed in this order (authentication first).
const SLOTS: usize = Slot::COUNT;

/// What the session is, for counting moves and closes by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Plain,
    PubSub,
    Blocking,
    Transaction,
    Tracking,
    Monitor,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::Plain => "plain",
            Kind::PubSub => "pubsub",
            Kind::Blocking => "blocking",
            Kind::Transaction => "transaction",
            Kind::Tracking => "tracking",
            Kind::Monitor => "monitor",
        }
    }
}

struct Pend {
    kind: CaptureKind,
    /// The absolute reply number that answers it (0: none will).
    reply: u64,
    /// Replies expected before it.
    before: u64,
    bytes: Option<Vec<u8>>,
}

impl Pend {
    /// The reply count at which it resolves: once its own reply passed, or (a subscription, whose
    /// confirmations are inspected from there; a request without a reply) once those before it did.
    fn stop(&self) -> u64 {
        match self.kind {
            CaptureKind::Subscribe => self.before,
            _ if self.reply == 0 => self.before,
            _ => self.reply,
        }
    }
}

/// A blocking command in flight.
pub(super) struct Blocked {
    pub bytes: Vec<u8>,
    pub reply: u64,
    pub sent: Instant,
}

#[derive(Default)]
struct Transaction {
    bytes: Vec<u8>,
    /// Per queued command (MULTI first): whether Redis answered it with an error.
    errors: Vec<bool>,
    /// A queued command could not be captured, or the queue is too big.
    broken: bool,
}

#[derive(Default)]
pub(super) struct Subscriptions {
    pub channels: BTreeSet<Vec<u8>>,
    pub patterns: BTreeSet<Vec<u8>>,
    pub shard: BTreeSet<Vec<u8>>,
}

impl Subscriptions {
    pub fn count(&self) -> usize {
        self.channels.len() + self.patterns.len() + self.shard.len()
    }
}

enum Tracking {
    Off,
    On(Vec<u8>),
    Redirect,
}

/// See the module doc. Boxed in the session and created at its first captured request.
pub(super) struct Carry {
    pending: VecDeque<Pend>,
    slots: [Option<Vec<u8>>; SLOTS],
    pub resp3: bool,
    tracking: Tracking,
    transaction: Option<Transaction>,
    pub watching: bool,
    pub blocked: Option<Blocked>,
    pub subs: Subscriptions,
    /// Subscribed-connection frames are inspected from here on.
    pub inspecting: bool,
    frame: Vec<u8>,
    /// Why this session cannot be carried, if it cannot.
    pub uncarriable: Option<&'static str>,
    /// The `CLIENT SETNAME` a pooled client's name was put on a connection lent to it with
    /// (`session/mod.rs`): re-created by a move unless the client named the connection itself,
    /// and no state of the connection's own (a lent connection that has only it goes back).
    lent_name: Option<Vec<u8>>,
}

/// What a session carried, as handed to a successor process on a live upgrade (`handover.rs`):
/// its resolved state only (a session is handed over at a clean boundary, with nothing pending).
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Carried {
    /// Its connection-state commands (AUTH, HELLO, SELECT, CLIENT SETNAME …), in replay order.
    pub state: Vec<Vec<u8>>,
    /// A pooled client's name, put on a connection lent to it (`Carry::lent_name`).
    pub lent_name: Option<Vec<u8>>,
    /// Its `CLIENT TRACKING ON …`.
    pub tracking: Option<Vec<u8>>,
    pub channels: Vec<Vec<u8>>,
    pub patterns: Vec<Vec<u8>>,
    pub shard: Vec<Vec<u8>>,
    /// It subscribed at some point: the tracker and the carry read its replies as a
    /// subscribed connection's.
    pub pubsub: bool,
}

/// What to send to a new master before the client's own requests, and what it must answer.
pub(super) struct Plan {
    pub bytes: Vec<u8>,
    /// Per command, in order: whether its answer must be an error (as it was on the old master).
    pub replies: Vec<bool>,
    /// Subscription confirmations to swallow after those replies.
    pub confirmations: usize,
    /// The blocking command is re-sent last; its reply is the client's.
    pub reissued: bool,
}

impl Carry {
    pub fn new() -> Carry {
        Carry {
            pending: VecDeque::new(),
            slots: Default::default(),
            resp3: false,
            tracking: Tracking::Off,
            transaction: None,
            watching: false,
            blocked: None,
            subs: Subscriptions::default(),
            inspecting: false,
            frame: Vec::new(),
            uncarriable: None,
            lent_name: None,
        }
    }

    /// The connection is lent to a pooled client named with `setname` (see `lent_name`).
    pub fn lend_name(&mut self, setname: Vec<u8>) {
        self.lent_name = Some(setname);
    }

    /// Take what the request tracker captured (`bytes` is its `captured_bytes`).
    pub fn capture(&mut self, captured: &[Captured], bytes: &[u8]) {
        for c in captured {
            if matches!(c.kind, CaptureKind::Mark(_)) {
                continue; // durable acknowledgements' (`dedicated/hold.rs`), not a request
            }
            if !self.resp3
                && self.subs.count() > 0
                && !matches!(c.kind, CaptureKind::Subscribe | CaptureKind::Reset)
            {
                // A RESP2 connection that is subscribed runs nothing but (P|S)(UN)SUBSCRIBE,
                // PING, QUIT and RESET: Redis refuses the rest, and which reply answers it cannot
                // be told (messages count among the replies).
                continue;
            }
            let b = c.bytes.map(|(s, e)| bytes[s as usize..e as usize].to_vec());
            let reply = if c.answered { c.before + 1 } else { 0 };
            if c.kind == CaptureKind::Blocking {
                match &b {
                    Some(b) if c.answered => {
                        self.blocked = Some(Blocked {
                            bytes: b.clone(),
                            reply,
                            sent: Instant::now(),
                        })
                    }
                    _ => self.uncarriable = Some("blocking"),
                }
            }
            self.pending.push_back(Pend {
                kind: c.kind,
                reply,
                before: c.before,
                bytes: b,
            });
        }
    }

    /// The absolute reply count at which the oldest pending capture resolves, if any: the session
    /// feeds replies frame by frame up to it. `None` when nothing is pending.
    pub fn next_stop(&self) -> Option<u64> {
        self.pending.front().map(Pend::stop)
    }

    /// `replies` (absolute) have completed, the last one an error if `last_error`: resolve what
    /// they answer.
    pub fn replies_done(&mut self, replies: u64, last_error: bool) {
        while let Some(p) = self.pending.front() {
            if p.stop() > replies {
                return;
            }
            let Some(p) = self.pending.pop_front() else {
                return;
            };
            // Only the capture answered by exactly the last reply knows its outcome.
            let error = if p.reply == replies {
                Some(last_error)
            } else {
                None
            };
            self.resolve(p, error);
        }
    }

    /// `error`: how Redis answered (None: no answer to go by).
    fn resolve(&mut self, p: Pend, error: Option<bool>) {
        let ok = error == Some(false);
        match p.kind {
            CaptureKind::Mark(_) => {}
            CaptureKind::State => match (error, p.bytes) {
                (Some(true), _) => {}
                (Some(false), Some(b)) => {
                    let a = args(&b);
                    if let Some(slot) = command::state_slot(&a) {
                        if slot == Slot::Hello {
                            self.resp3 =
                                command::hello_version(&a).map_or(self.resp3, |v| v == b"3");
                        }
                        self.slots[slot.index()] = Some(b);
                    }
                }
                _ => self.uncarriable = Some("state"),
            },
            CaptureKind::Tracking => match (error, p.bytes) {
                (Some(true), _) => {}
                (Some(false), Some(b)) => {
                    let args = args(&b);
                    let on = args.get(2).is_some_and(|a| a.eq_ignore_ascii_case(b"on"));
                    let redirect = args.iter().any(|a| a.eq_ignore_ascii_case(b"redirect"));
                    self.tracking = match (on, redirect) {
                        (false, _) => Tracking::Off,
                        (true, true) => Tracking::Redirect,
                        (true, false) => Tracking::On(b),
                    };
                }
                _ => self.uncarriable = Some("tracking"),
            },
            CaptureKind::Multi => {
                if ok {
                    let mut t = Transaction::default();
                    match p.bytes {
                        Some(b) => t.bytes = b,
                        None => t.broken = true,
                    }
                    t.errors.push(false);
                    self.transaction = Some(t);
                }
            }
            CaptureKind::Queued => {
                let name = p
                    .bytes
                    .as_deref()
                    .and_then(|b| args(b).first().map(|n| n.to_ascii_uppercase()));
                if matches!(
                    name.as_deref(),
                    Some(b"SUBSCRIBE" | b"PSUBSCRIBE" | b"SSUBSCRIBE")
                ) {
                    // Its confirmations come inside EXEC's reply: not followed.
                    self.uncarriable = Some("pubsub");
                }
                if let Some(t) = &mut self.transaction {
                    match (error, p.bytes) {
                        (Some(e), Some(b)) if t.bytes.len() + b.len() <= MAX_TRANSACTION_BYTES => {
                            t.bytes.extend_from_slice(&b);
                            t.errors.push(e);
                        }
                        _ => t.broken = true,
                    }
                }
            }
            CaptureKind::Exec => {
                self.transaction = None;
                self.watching = false;
            }
            CaptureKind::Watch => {
                if ok {
                    self.watching = true;
                }
            }
            CaptureKind::Unwatch => self.watching = false,
            CaptureKind::Blocking => {
                if self.blocked.as_ref().is_some_and(|b| b.reply == p.reply) {
                    self.blocked = None;
                }
            }
            CaptureKind::Subscribe => self.inspecting = true,
            CaptureKind::Reset => {
                if error != Some(true) {
                    let inspecting = self.inspecting;
                    *self = Carry::new();
                    // Confirmations of what RESET dropped may still be on their way.
                    self.inspecting = inspecting;
                }
            }
        }
    }

    /// Bytes of a frame of a subscribed connection (`end`: the frame is complete): keeps its
    /// start, and at its end applies a confirmation to the subscriptions.
    pub fn inspect(&mut self, bytes: &[u8], end: bool) {
        let room = MAX_FRAME_PREFIX.saturating_sub(self.frame.len());
        self.frame
            .extend_from_slice(&bytes[..bytes.len().min(room)]);
        if !end {
            return;
        }
        let frame = std::mem::take(&mut self.frame);
        if let Frame::Confirmation {
            subscribe,
            set,
            channel,
        } = parse_frame(&frame, b"")
        {
            self.confirm(subscribe, set, channel);
        } else if frame.len() >= MAX_FRAME_PREFIX && looks_like_confirmation(&frame) {
            self.uncarriable = Some("pubsub");
        }
        self.frame = frame;
        self.frame.clear();
        if self.frame.capacity() > 4096 {
            self.frame = Vec::new();
        }
    }

    pub fn confirm(&mut self, subscribe: bool, set: u8, channel: Option<&[u8]>) {
        let Some(ch) = channel else { return };
        let set = match set {
            b'p' => &mut self.subs.patterns,
            b's' => &mut self.subs.shard,
            _ => &mut self.subs.channels,
        };
        if subscribe {
            set.insert(ch.to_vec());
        } else {
            set.remove(ch);
        }
    }

    /// Nothing to carry and nothing pending: the session can drop it (most clients only send a
    /// few state commands at connect, some of which fail).
    pub fn is_empty(&self) -> bool {
        self.only_slots()
            && self.slots.iter().all(Option::is_none)
            && !self.resp3
            && self.lent_name.is_none()
    }

    /// Nothing but state slots (and the protocol): nothing pending, no tracking, transaction,
    /// WATCH, blocked command or subscription, nothing uncarriable.
    fn only_slots(&self) -> bool {
        self.pending.is_empty()
            && matches!(self.tracking, Tracking::Off)
            && self.transaction.is_none()
            && !self.watching
            && self.blocked.is_none()
            && self.subs.count() == 0
            && !self.inspecting
            && self.uncarriable.is_none()
    }

    /// The connection state a pooled client may share a connection with other clients in
    /// (its user, protocol and database: what AUTH, HELLO and SELECT set), as the commands that
    /// set it, in the order a new connection must be sent them; `None` when the carry holds
    /// anything else (a name, tracking, a transaction, subscriptions, a pending answer …).
    /// `SELECT 0` is no state: it is where every connection starts. A library name or version
    /// (`CLIENT SETINFO`) is left out: it names a connection, it changes no answer.
    pub fn pool_state(&self) -> Option<Vec<Vec<u8>>> {
        if !self.poolable() {
            return None;
        }
        let mut state = Vec::new();
        for slot in [Slot::Auth, Slot::Hello, Slot::Db] {
            if let Some(b) = &self.slots[slot.index()] {
                let a = args(b);
                // Where every connection starts: SELECT 0, a bare HELLO or HELLO 2.
                let default = match slot {
                    Slot::Db => a.get(1).is_some_and(|db| *db == b"0"),
                    Slot::Hello => a.len() <= 2 && a.get(1).is_none_or(|v| *v == b"2"),
                    _ => false,
                };
                if default {
                    continue;
                }
                state.push(b.clone());
            }
        }
        Some(state)
    }

    /// Whether `pool_state` has one (checked without building it).
    pub fn poolable(&self) -> bool {
        let only_shared_slots = self.slots.iter().enumerate().all(|(i, s)| {
            s.is_none()
                || [
                    Slot::Auth,
                    Slot::Hello,
                    Slot::Db,
                    Slot::LibName,
                    Slot::LibVersion,
                ]
                .iter()
                .any(|slot| slot.index() == i)
        });
        only_shared_slots && self.only_slots()
    }

    /// Start from a pool's connection state (`pool_state`): the connection the session is lent
    /// was opened with it, and a move must open the next one with it too.
    pub fn preload(&mut self, state: &[Vec<u8>]) {
        for b in state {
            let a = args(b);
            if let Some(slot) = command::state_slot(&a) {
                if slot == Slot::Hello {
                    self.resp3 = command::hello_version(&a).map_or(self.resp3, |v| v == b"3");
                }
                self.slots[slot.index()] = Some(b.clone());
            }
        }
    }

    /// Whether a blocking command is in flight (sent, not answered).
    #[cfg(test)]
    pub fn blocking_in_flight(&self) -> bool {
        self.blocked.is_some()
    }

    /// What kind of session this is (the most demanding of what it carries).
    pub fn kind(&self, monitor: bool) -> Kind {
        if self.subs.count() > 0 || self.inspecting {
            Kind::PubSub
        } else if monitor {
            Kind::Monitor
        } else if self.blocked.is_some() {
            Kind::Blocking
        } else if self.transaction.is_some() || self.watching {
            Kind::Transaction
        } else if !matches!(self.tracking, Tracking::Off) {
            Kind::Tracking
        } else {
            Kind::Plain
        }
    }

    /// Why the session cannot be carried now, if it cannot. `forwarded`: the replies expected
    /// for what was forwarded (requests read but held are not on any master yet).
    pub fn why_not(&self, forwarded: u64) -> Option<&'static str> {
        if let Some(why) = self.uncarriable {
            return Some(why);
        }
        if matches!(self.tracking, Tracking::Redirect) {
            return Some("tracking_redirect");
        }
        if self.transaction.as_ref().is_some_and(|t| t.broken) {
            return Some("transaction");
        }
        if self
            .pending
            .iter()
            .any(|p| p.kind != CaptureKind::Blocking && p.before < forwarded)
        {
            // A state change whose outcome is still unknown.
            return Some("pending");
        }
        None
    }

    pub fn tracking_on(&self) -> bool {
        matches!(self.tracking, Tracking::On(_))
    }

    /// What a successor process needs to re-create this connection, if it can be handed over
    /// now: nothing pending, no transaction, WATCH or blocked command, nothing uncarriable.
    pub fn export(&self) -> Option<Carried> {
        if !self.pending.is_empty()
            || self.transaction.is_some()
            || self.watching
            || self.blocked.is_some()
            || self.uncarriable.is_some()
            || matches!(self.tracking, Tracking::Redirect)
            || !self.frame.is_empty()
        {
            return None;
        }
        let list = |set: &BTreeSet<Vec<u8>>| set.iter().cloned().collect();
        Some(Carried {
            state: self.slots.iter().flatten().cloned().collect(),
            lent_name: self.lent_name.clone(),
            tracking: match &self.tracking {
                Tracking::On(b) => Some(b.clone()),
                _ => None,
            },
            channels: list(&self.subs.channels),
            patterns: list(&self.subs.patterns),
            shard: list(&self.subs.shard),
            pubsub: self.inspecting,
        })
    }

    /// The carry of a session handed over by the process this one took over from.
    pub fn import(c: &Carried) -> Carry {
        let mut carry = Carry::new();
        carry.preload(&c.state);
        carry.lent_name = c.lent_name.clone();
        if let Some(t) = &c.tracking {
            carry.tracking = Tracking::On(t.clone());
        }
        carry.subs.channels = c.channels.iter().cloned().collect();
        carry.subs.patterns = c.patterns.iter().cloned().collect();
        carry.subs.shard = c.shard.iter().cloned().collect();
        carry.inspecting = c.pubsub;
        carry
    }

    /// The commands that re-create this connection's state on a new master. `monitor`: the
    /// session is in MONITOR; `now`: to compute what is left of a blocking timeout.
    pub fn plan(&self, monitor: bool, reissue_blocked: bool, now: Instant) -> Plan {
        let mut plan = Plan {
            bytes: Vec::new(),
            replies: Vec::new(),
            confirmations: 0,
            reissued: false,
        };
        for b in self.slots.iter().flatten() {
            plan.bytes.extend_from_slice(b);
            plan.replies.push(false);
        }
        if let (None, Some(b)) = (&self.slots[Slot::Name.index()], &self.lent_name) {
            plan.bytes.extend_from_slice(b);
            plan.replies.push(false);
        }
        if let Tracking::On(b) = &self.tracking {
            plan.bytes.extend_from_slice(b);
            plan.replies.push(false);
        }
        if self.watching {
            // The keys were watched on the old master; the new one cannot tell whether they
            // changed, so the transaction must fail as for a touched key. Watching a key of the
            // proxy's and touching it from this same connection does exactly that in Redis.
            encode(&mut plan.bytes, &[b"WATCH", BROKEN_WATCH_KEY]);
            encode(&mut plan.bytes, &[b"SET", BROKEN_WATCH_KEY, b"1"]);
            encode(&mut plan.bytes, &[b"DEL", BROKEN_WATCH_KEY]);
            plan.replies.extend([false, false, false]);
        }
        if let Some(t) = &self.transaction {
            plan.bytes.extend_from_slice(&t.bytes);
            plan.replies.extend_from_slice(&t.errors);
        }
        if monitor {
            // Before the subscriptions: every reply comes before the first confirmation.
            encode(&mut plan.bytes, &[b"MONITOR"]);
            plan.replies.push(false);
        }
        for (name, set) in [
            (&b"SUBSCRIBE"[..], &self.subs.channels),
            (b"PSUBSCRIBE", &self.subs.patterns),
            (b"SSUBSCRIBE", &self.subs.shard),
        ] {
            if !set.is_empty() {
                let mut a: Vec<&[u8]> = vec![name];
                a.extend(set.iter().map(|c| c.as_slice()));
                encode(&mut plan.bytes, &a);
                plan.confirmations += set.len();
            }
        }
        if reissue_blocked && let Some(b) = &self.blocked {
            let left = now.saturating_duration_since(b.sent);
            plan.bytes
                .extend_from_slice(&with_timeout_left(&b.bytes, left));
            plan.reissued = true;
        }
        plan
    }
}

#[cfg(test)]
mod tests;
