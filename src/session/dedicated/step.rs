//! A dedicated session's step: what it is (as the fence sees it) and acting on the fence's
//! decision (`fence.rs`): forward what it held, start the drain clock, hold, move, close.

use tracing::debug;

use super::{Session, Step};
use crate::session::Close;
use crate::session::carry::Kind;
use crate::session::fence::{self, Action, Clock, Hold, View};

impl<'a> Session<'a> {
    /// Whether the forwarded stream is at a clean boundary from which the session can move.
    pub(in crate::session) fn movable(&self) -> bool {
        self.forwarded_state().at_boundary && self.pipe.is_none() && self.uncarriable().is_none()
    }

    /// What the session carries (for counting).
    pub(in crate::session) fn kind(&self) -> Kind {
        match &self.carry {
            Some(c) => c.kind(self.req.monitor),
            None if self.req.monitor => Kind::Monitor,
            None => Kind::Plain,
        }
    }

    /// A blocking command is the last request forwarded, and its reply has not come.
    pub(in crate::session) fn blocked_last(&self) -> bool {
        let Some(b) = self.carry.as_ref().and_then(|c| c.blocked.as_ref()) else {
            return false;
        };
        b.reply == self.forwarded_state().expected_replies
            && self.reply_base + self.rep.replies < b.reply
    }

    /// Why this session cannot be moved to another master, as the close reason.
    pub(in crate::session) fn uncarriable(&self) -> Option<Close> {
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

    /// The session as the fence sees it.
    fn view(&self, switched: bool) -> View {
        let blocked_last = self.blocked_last();
        let forwarded = self.forwarded_state();
        View {
            generation: self.generation,
            pipe: self.pipe.is_some(),
            client_eof: self.client_eof,
            at_boundary: forwarded.at_boundary,
            in_flight: self.in_flight(),
            unsent: !self.unsent.is_empty(),
            held: !self.held.is_empty(),
            replies: !self.replies.is_empty(),
            collected: self.req.pubsub || blocked_last,
            blocked_last,
            backend_gone: self.backend_gone,
            // Only asked when it matters (it logs why): the session is leaving its backend.
            uncarriable: (switched || self.backend_gone)
                .then(|| self.uncarriable())
                .flatten(),
            shutting_down: self.shutting_down,
            carrier: self.carrier,
            protocol_error: self.protocol_error.is_some(),
            deadline: self.deadline,
        }
    }

    /// Act on the current state, as the fence decides: forward held bytes, migrate, close.
    pub(in crate::session) fn step(&mut self) -> Step {
        self.open = false;
        // Mark the change seen before loading, so a change after the load shows in `changes`
        // (`mark_unchanged` is one atomic load; `borrow_and_update` would take the watch's lock).
        self.changes.mark_unchanged();
        let route = self.group.route.load();
        let switched = route.generation != self.generation;
        let carriers = match switched {
            true => self.group.route.carriers_elsewhere(route.generation),
            false => 0,
        };
        let mut clock = Clock::lazy();
        let (action, leaving) = fence::decide(&self.view(switched), &route, carriers, &mut clock);
        if leaving && self.deadline.is_none() {
            self.deadline = Some(clock.now().at + self.group.config().drain_timeout);
        }
        self.gated = matches!(action, Action::Hold(Hold::Gate(_)));
        if action == Action::Hold(Hold::Operator) && self.deadline.is_none() {
            // The operator's pause: held at most its wait, then the no-master error.
            self.deadline = Some(clock.now().at + self.group.operator.wait());
        }
        if matches!(action, Action::Hold(_) | Action::Move(..))
            && !self.held.is_empty()
            && self.held_since.is_none()
        {
            self.held_since = Some(clock.now().at);
        }
        match action {
            Action::Wait { open } => {
                self.open = open;
                Step::Continue
            }
            Action::Hold(_) | Action::Drain => Step::Continue,
            Action::Release => {
                if self.held_since.is_some() {
                    self.count_held("same_master");
                }
                // Only an operator's pause sets a deadline on a session that stays on its
                // master and is not shutting down (the fence releases nothing otherwise).
                self.deadline = None;
                self.deadline_timer = None;
                let held = std::mem::take(&mut self.held);
                match self.forward(held.bytes()) {
                    Step::Close(c) => Step::Close(c),
                    // Decide again on what is left (malformed input after the held requests).
                    _ => Step::Again,
                }
            }
            Action::Move(addr, generation) => Step::Move(addr, generation),
            Action::Refuse => match self.protocol_error {
                Some(e) => Step::Refuse(e),
                None => Step::Continue,
            },
            Action::Close(c) => Step::Close(c),
        }
    }
}
