//! When a dedicated session's bytes may go where, and when it moves: the fence and the move rules
//! of the session (see `dedicated.rs` for the rules in prose). Client bytes go to the backend
//! only while its generation is current and the route is not paused; after a switch the session
//! waits for the replies it is owed (or has them collected by the move: a subscriber's, a blocked
//! command's), closes if what it built cannot be carried, holds while carriers move (the gate),
//! and then moves.

use std::time::Duration;

use tokio::time::Instant;
use tracing::debug;

use super::Close;
use super::carry::Kind;
use super::dedicated::{Session, Step};

/// Other sessions hold their requests at most this long after a switch while the carriers
/// (subscribers, MONITOR sessions, sessions blocked in a command) re-create what they had on the
/// new master (see `RouteTable::carriers`).
const GATE_MAX: Duration = Duration::from_secs(1);

/// When the gate of `route`'s switch opens at the latest.
pub(super) fn gate_until(route: &crate::route::Route) -> Instant {
    let since = route.since.elapsed().unwrap_or_default();
    Instant::now() + GATE_MAX.saturating_sub(since)
}

impl<'a> Session<'a> {
    /// Whether the forwarded stream is at a clean boundary from which the session can move.
    pub(super) fn movable(&self) -> bool {
        self.forwarded_state().at_boundary && self.pipe.is_none() && self.uncarriable().is_none()
    }

    /// What the session carries (for counting).
    pub(super) fn kind(&self) -> Kind {
        match &self.carry {
            Some(c) => c.kind(self.req.monitor),
            None if self.req.monitor => Kind::Monitor,
            None => Kind::Plain,
        }
    }

    /// A blocking command is the last request forwarded, and its reply has not come.
    pub(super) fn blocked_last(&self) -> bool {
        let Some(b) = self.carry.as_ref().and_then(|c| c.blocked.as_ref()) else {
            return false;
        };
        b.reply == self.forwarded_state().expected_replies
            && self.reply_base + self.rep.replies < b.reply
    }

    /// Why this session cannot be moved to another master, as the close reason.
    pub(super) fn uncarriable(&self) -> Option<Close> {
        let forwarded = self.forwarded_state().expected_replies;
        let why = self.carry.as_ref().and_then(|c| c.why_not(forwarded))?;
        debug!(why, "session state cannot be carried to the new master");
        Some(match self.kind() {
            Kind::PubSub => Close::SwitchPubSub,
            Kind::Monitor => Close::SwitchMonitor,
            Kind::Blocking => Close::SwitchBlocking,
            Kind::Transaction => Close::SwitchTransaction,
            _ => Close::SwitchUnmigratable,
        })
    }

    /// Act on the current state: forward held bytes, migrate, close.
    pub(super) fn step(&mut self) -> Step {
        self.open = false;
        // Mark the change seen before loading, so a change after the load shows in `changes`
        // (`mark_unchanged` is one atomic load; `borrow_and_update` would take the watch's lock).
        self.changes.mark_unchanged();
        let route = self.group.route.load();
        let switched = route.generation != self.generation;

        // A byte pipe has no boundaries to move at (a lost backend ends it in `backend_lost`);
        // otherwise its bytes are held while the route is paused, like any session's.
        if self.pipe.is_some() {
            if switched {
                return Step::Close(Close::SwitchPipe);
            }
            if self.shutting_down {
                return Step::Close(Close::Shutdown);
            }
        }

        // The client has closed its side and is owed nothing: done, wherever the backend is.
        // (Moving such a session to a new master would leave it waiting there for an end of
        // stream that never comes, since the FIN went to the old one.)
        if self.client_eof
            && self.pipe.is_none()
            && self.in_flight() == 0
            && self.held.is_empty()
            && self.unsent.is_empty()
            && self.replies.is_empty()
            && self.forwarded_state().at_boundary
        {
            return Step::Close(Close::ClientClosed);
        }

        if switched || self.backend_gone {
            let f = self.forwarded_state();
            if !f.at_boundary {
                // Part of a request went to the old master; nothing can complete it now.
                return Step::Close(Close::SwitchMidRequest);
            }
            if self.deadline.is_none() {
                self.deadline = Some(Instant::now() + self.group.config().drain_timeout);
            }
            // Replies still owed are awaited from the old master, except where the move itself
            // collects them: a subscriber's (a marker PING drains them) and a blocking command's
            // (unblocked on the old master, or re-issued if that one is gone).
            let collected = self.req.pubsub || self.blocked_last();
            if !self.unsent.is_empty() || (self.in_flight() > 0 && !collected) {
                if route.previous_down && !self.backend_gone && !self.blocked_last() {
                    // A hung or cut-off master: it may run these requests when it comes back,
                    // after its replacement was promoted, and that data is lost when it is
                    // demoted. The client must see an error, never that late "OK".
                    return Step::Close(Close::SwitchMasterDown);
                }
                return Step::Continue; // let the old master take its requests and finish replying
            }
            if let Some(close) = self.uncarriable() {
                return Step::Close(close);
            }
            if self.shutting_down {
                return Step::Close(Close::Shutdown);
            }
            if !self.held.is_empty() && self.held_since.is_none() {
                self.held_since = Some(Instant::now());
            }
            let Some(addr) = route.target() else {
                return Step::Continue; // no verified master yet: hold until one, or the deadline
            };
            self.gated = false;
            if !self.carrier
                && self.group.route.carriers_elsewhere(route.generation) > 0
                && gate_until(&route) > Instant::now()
            {
                // Subscribers re-subscribe on the new master before anyone can publish there.
                self.gated = true;
                return Step::Continue;
            }
            return Step::Move(addr, route.generation);
        }

        if self.shutting_down {
            // Two-phase shutdown: nothing new is forwarded; close at the first boundary.
            let f = self.forwarded_state();
            if f.at_boundary && self.in_flight() == 0 && self.unsent.is_empty() {
                return Step::Close(Close::Shutdown);
            }
            return Step::Continue;
        }

        if route.paused && !self.held.is_empty() {
            if self.held_since.is_none() {
                self.held_since = Some(Instant::now());
            }
            return Step::Continue;
        }
        if !route.paused && !self.held.is_empty() && self.unsent.is_empty() {
            if self.held_since.is_some() {
                self.count_held("same_master");
            }
            let held = std::mem::take(&mut self.held);
            if let Step::Close(c) = self.forward(held.bytes()) {
                return Step::Close(c);
            }
        }
        self.open = !route.paused && self.held.is_empty();

        if let Some(e) = self.protocol_error
            && self.in_flight() == 0
            && self.unsent.is_empty()
        {
            return Step::Refuse(e);
        }
        Step::Continue
    }
}
