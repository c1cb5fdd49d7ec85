//! A dedicated session whose master connection ended: a `QUIT` answered, a client gone, a
//! reply owed that is lost (the client must see it), or a session that moves to the next master
//! with nothing owed, its reads in flight sent again there (`again.rs`).

use tokio::time::Instant;
use tracing::debug;

use super::{Forwarded, Session, Step};
use crate::session::Close;
use crate::session::io::Pending;

impl Session<'_> {
    pub(in crate::session) fn backend_lost(&mut self) -> Step {
        self.backend_gone = true;
        // Redis closes after answering QUIT; so does the client's connection, once every byte
        // before that end has been relayed (never moved to a new backend, which would answer
        // what the client sends next). The end, not a reply count, marks it: a subscriber's
        // messages make reply counts meaningless.
        if self.req.quit {
            return Step::Close(Close::Quit);
        }
        let generation_moved = self.group.route.generation() != self.generation;
        if self.client_eof {
            return Step::Close(Close::ClientClosed);
        }
        // A reply was owed, a request was cut, or the session cannot be moved: the client must
        // see the loss. A blocking command is the exception: nothing was popped for it on a node
        // that is gone, so it is re-issued on the next master. So are a subscriber's replies.
        // Reads in flight are sent again to the next master instead (`again.rs`).
        let owed = self.in_flight() > 0 && !self.req.pubsub && !self.blocked_last();
        let owed = owed && !self.send_again();
        if owed || !self.unsent.is_empty() || !self.movable() {
            return Step::Close(Close::BackendClosed);
        }
        // Idle on a master that went away: wait for the next verified master and move there.
        if !generation_moved {
            self.group.route.request_recheck();
        }
        if self.deadline.is_none() {
            self.deadline = Some(Instant::now() + self.group.config().connect_wait);
        }
        Step::Continue
    }

    /// The master went away with requests in flight: if all of them only read and no byte of
    /// their replies reached the client, they are held again (ahead of what is held) for the
    /// next master, as if never forwarded: the session then moves as one that owes nothing.
    pub(super) fn send_again(&mut self) -> bool {
        if self.pipe.is_some()
            || !self.rep.at_reply_boundary()
            || self.req.in_transaction
            || self.req.monitor
            || self.carry.as_ref().is_some_and(|c| c.blocked.is_some())
        {
            return false;
        }
        let answered = self.reply_base + self.rep.replies;
        let again = self.extra.as_deref_mut().and_then(|x| x.again.as_mut());
        let Some((bytes, count)) = again.and_then(|a| a.take(answered)) else {
            return false;
        };
        let mut held = Pending::default();
        held.push(&bytes);
        held.push(self.held.bytes());
        self.held = held;
        self.unsent = Pending::default();
        self.forwarded = Forwarded {
            at_boundary: true,
            expected_replies: answered,
            requests: self.forwarded.requests.saturating_sub(count),
        };
        self.held_since.get_or_insert_with(Instant::now);
        self.group.metrics.requests_sent_again_total.inc_by(count);
        debug!(
            requests = count,
            "reads in flight on a master that went away: sent again"
        );
        true
    }
}
