//! Pooled mode in the request framer: where a request pins its client (the command table's
//! verdict, decided at the name, at the first argument, or at a blocking option), a whole
//! transaction that shares, and what a connection lent for a span notes (`Mode`).

use super::{RequestTracker, Scan};
use crate::command::{self, Effect, Pin, Pool, traits};
use crate::resp::ProtocolError;

/// Whose connection a tracked stream goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The client's own (a 1:1 session, or a pinned one).
    Own,
    /// Pooled mode, a shared connection (the command table, `command/`): `feed` stops at the
    /// first request that pins the client, and says so in `pin`.
    Pool,
    /// Lent to a pooled client for a span (a transaction, a blocking call, the answer to AUTH,
    /// HELLO or SELECT: `Pin::spans`): `feed` goes on through every request, and notes in `pin`
    /// the first one that would have pinned the client for another reason (a name, a
    /// subscription, a command the table does not know). The connection is then the client's
    /// own for the rest of its life.
    Lent,
}

/// Pooled mode: a `MULTI` read in this buffer whose `EXEC` has not been (`feed`), and the
/// tracker's counts before it.
pub(super) struct OpenTransaction {
    /// Where the `MULTI` begins in the buffer (`u32::MAX`: in an earlier one).
    pub(super) start: u32,
    /// The end of the last complete request before it.
    pub(super) before: u32,
    pub(super) requests: u64,
    pub(super) replies: u64,
    /// How many bytes of marks (`RequestTracker::marks`) there were.
    pub(super) marks: u32,
}

impl RequestTracker {
    /// A transaction still open at the end of a buffer (or where it stopped): rewind to its
    /// MULTI, which pins.
    pub(super) fn rewind(
        &mut self,
        tx: OpenTransaction,
        fed: Result<(), (ProtocolError, usize)>,
    ) -> Result<(), (ProtocolError, usize)> {
        self.pin = Some(Pin::Transaction);
        self.boundary = tx.before;
        self.req_start = tx.start;
        self.requests = tx.requests;
        self.expected_replies = tx.replies;
        self.captured_bytes.truncate(tx.marks as usize);
        match fed {
            Ok(()) => Ok(()),
            Err((e, _)) => Err((e, tx.before as usize)),
        }
    }

    /// Pooled mode, a request's name that pins with `pin` just ended: `Some(true)` if it opens
    /// a transaction (a bare `MULTI`), `Some(false)` if it ends one (a bare `EXEC` or
    /// `DISCARD`), else `None`. With arguments they are errors that leave Redis's transaction
    /// state as it was, so they pin.
    pub(super) fn transaction_edge(&self, pin: Pin) -> Option<bool> {
        if pin != Pin::Transaction || self.arg_index != 0 || self.args_left != 1 {
            return None;
        }
        match self.spec()?.effect {
            Effect::Multi => Some(true),
            Effect::Exec => Some(false),
            _ => None,
        }
    }

    /// Pooled mode, after `feed` stopped at a request the session answers itself (`Pin::Name`):
    /// track again from the start of the next request, with the counts of what went before.
    pub fn resume(&mut self) {
        let mut fresh = RequestTracker::new(self.max_bulk);
        fresh.mode = self.mode;
        fresh.requests = self.requests;
        fresh.expected_replies = self.expected_replies;
        fresh.blocking_seq = self.blocking_seq;
        fresh.resp3 = self.resp3;
        fresh.scripts = self.scripts;
        fresh.marking = self.marking;
        *self = fresh;
    }

    /// Where the request that pinned the client begins in the buffer last fed (`None`: it
    /// began in an earlier one).
    pub fn pin_start(&self) -> Option<usize> {
        (self.req_start != u32::MAX).then_some(self.req_start as usize)
    }

    /// Pooled mode, an argument just ended: does the request pin its client? Decided at the
    /// name (the command table's `pool`), at the first argument for SELECT and CLIENT (`*1
    /// SELECT` pins: Redis answers it with an arity error either way), and for a command that
    /// blocks only with an option (XREAD … BLOCK) when the option is seen.
    pub(super) fn pins(&mut self) -> Option<Pin> {
        if self.arg_index == 0 {
            if self.traits() & traits::SHARE != 0 {
                return None;
            }
            let Some(spec) = self.spec() else {
                // Longer than any name we know, or not in the table.
                return Some(Pin::Unknown);
            };
            return match spec.pool {
                Pool::Share | Pool::Script => None,
                Pool::Pin(pin) => Some(pin),
                Pool::ByArgument if self.args_left == 1 => Some(Pin::Unknown),
                Pool::ByArgument => {
                    self.option = Scan::ByArgument;
                    None
                }
            };
        }
        if self.arg_index == 1 && self.option == Scan::ByArgument {
            self.option = Scan::Off;
            return command::by_argument(self.name(0), self.name(1));
        }
        (self.option == Scan::Seen).then_some(Pin::Blocking)
    }

    pub(super) fn stop(&mut self, pin: Pin, last_complete: usize) {
        self.pin = Some(pin);
        self.boundary = last_complete as u32;
    }
}
