//! What each frame means while a session moves, one frame at a time and without I/O (`migrate.rs`
//! keeps the sockets and the deadlines): the new master's answers to the replayed plan, the old
//! master's replies while a blocked command is unblocked there, and a subscriber's frames up to
//! the proxy's marker.

use crate::session::compose::{Frame, parse_frame};

/// What to do with one frame of the new master while the plan is replayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::session) enum Replayed {
    /// An answer to the replay (or a confirmation of a re-made subscription): not the client's.
    Swallow,
    /// The client's (a push, a message published meanwhile).
    ToClient,
    /// The new master answered a replayed command otherwise than the old one did (an error
    /// where there was success, or the reverse): the move fails.
    Differs,
}

/// The new master's answers to a replayed plan: as many answers as the plan has commands that
/// are answered, each an error exactly where the old master's was, and as many subscription
/// confirmations as it re-makes.
pub(in crate::session) struct ReplayCheck<'p> {
    /// Per answered command, whether the old master's answer was an error.
    errors: &'p [bool],
    confirmations: usize,
    answered: usize,
    confirmed: usize,
}

impl<'p> ReplayCheck<'p> {
    pub(in crate::session) fn new(errors: &'p [bool], confirmations: usize) -> Self {
        ReplayCheck {
            errors,
            confirmations,
            answered: 0,
            confirmed: 0,
        }
    }

    /// Every answer and confirmation has come.
    pub(in crate::session) fn done(&self) -> bool {
        self.answered == self.errors.len() && self.confirmed == self.confirmations
    }

    /// One complete frame; `error`: it is an error reply.
    pub(in crate::session) fn feed(&mut self, frame: &[u8], error: bool) -> Replayed {
        let push = frame.first() == Some(&b'>');
        if self.answered < self.errors.len() && !push {
            if error != self.errors[self.answered] {
                return Replayed::Differs;
            }
            self.answered += 1;
            return Replayed::Swallow;
        }
        if self.confirmed < self.confirmations
            && matches!(parse_frame(frame, b""), Frame::Confirmation { .. })
        {
            self.confirmed += 1;
            return Replayed::Swallow;
        }
        Replayed::ToClient
    }
}

/// A reply of the old master while a blocked command is unblocked there (`CLIENT UNBLOCK …
/// TIMEOUT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::session) enum Unblocked {
    /// A reply owed to an earlier request: the client's.
    Owed,
    /// The blocked command's own reply, with data: the client's, and nothing is re-issued.
    Answered,
    /// The blocked command's reply as for a timeout (the unblock): swallowed, and the command
    /// is re-issued on the new master with what is left of its timeout.
    TimedOut,
}

/// `done`: the number of the reply `frame` completes; `target`: the blocked command's.
pub(in crate::session) fn unblocked(frame: &[u8], done: u64, target: u64) -> Unblocked {
    if done != target {
        return Unblocked::Owed;
    }
    match frame {
        b"*-1\r\n" | b"$-1\r\n" | b"_\r\n" => Unblocked::TimedOut,
        _ => Unblocked::Answered,
    }
}

/// A subscriber's frame while it is drained: the answer to the proxy's marker `PING <token>`
/// (everything before it is the client's; it and what follows are not).
pub(in crate::session) fn is_marker(frame: &[u8], token: &[u8]) -> bool {
    parse_frame(frame, token) == Frame::Marker
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replay_is_checked_answer_by_answer() {
        // SELECT 2 (ok), AUTH wrong (an error before too), then one re-made subscription.
        let errors = [false, true];
        let mut c = ReplayCheck::new(&errors, 1);
        assert!(!c.done());
        assert_eq!(c.feed(b"+OK\r\n", false), Replayed::Swallow);
        // A push in between (tracking) is the client's, not an answer.
        let push = b">2\r\n$10\r\ninvalidate\r\n_\r\n";
        assert_eq!(c.feed(push, false), Replayed::ToClient);
        assert_eq!(c.feed(b"-WRONGPASS x\r\n", true), Replayed::Swallow);
        assert!(!c.done());
        let message = b"*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\nm\r\n";
        assert_eq!(c.feed(message, false), Replayed::ToClient);
        let confirmation = b"*3\r\n$9\r\nsubscribe\r\n$1\r\nc\r\n:1\r\n";
        assert_eq!(c.feed(confirmation, false), Replayed::Swallow);
        assert!(c.done());
        assert_eq!(c.feed(message, false), Replayed::ToClient);
    }

    #[test]
    fn a_replay_answered_differently_fails() {
        let errors = [false];
        let mut c = ReplayCheck::new(&errors, 0);
        assert_eq!(
            c.feed(b"-ERR DB index is out of range\r\n", true),
            Replayed::Differs
        );
        let errors = [true];
        let mut c = ReplayCheck::new(&errors, 0);
        assert_eq!(c.feed(b"+OK\r\n", false), Replayed::Differs);
        let c = ReplayCheck::new(&[], 0);
        assert!(c.done(), "nothing to wait for");
    }

    #[test]
    fn the_blocked_commands_reply_decides_the_reissue() {
        assert_eq!(unblocked(b"+OK\r\n", 3, 5), Unblocked::Owed);
        assert_eq!(unblocked(b"*-1\r\n", 5, 5), Unblocked::TimedOut);
        assert_eq!(unblocked(b"$-1\r\n", 5, 5), Unblocked::TimedOut);
        assert_eq!(unblocked(b"_\r\n", 5, 5), Unblocked::TimedOut);
        let popped = b"*2\r\n$1\r\nq\r\n$1\r\nv\r\n";
        assert_eq!(unblocked(popped, 5, 5), Unblocked::Answered);
    }

    #[test]
    fn the_marker_ends_a_subscribers_drain() {
        let token = b"sentinel-proxy-drain-1f";
        let pong = b"*2\r\n$4\r\npong\r\n$23\r\nsentinel-proxy-drain-1f\r\n";
        assert!(is_marker(pong, token));
        let other = b"*2\r\n$4\r\npong\r\n$23\r\nsentinel-proxy-drain-2f\r\n";
        assert!(!is_marker(other, token));
        let message = b"*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\nm\r\n";
        assert!(!is_marker(message, token));
    }
}
