//! A dedicated session's replies under durable acknowledgements (`ack = replicas:N`): which
//! replies wait for the group's barrier (`session/barrier.rs`), in one buffer per session, and
//! what the client gets when the barrier answers. Sans-IO: the session hands it the replies it
//! read and writes to the client what comes out.
//!
//! A reply to a write (`session/ack.rs` says which) is held once it has arrived, with every
//! later reply (the client's replies keep their order), and a ticket of the barrier is taken
//! for it: the writes whose replies arrived in one read share one. Replies before the first
//! held one pass at once. When a ticket is resolved, the replies held up to it go on, each
//! write's replaced by `-NOREPLICAS …` if the replicas did not confirm it. Nothing is added
//! to the client's stream, so a `MULTI`, `CLIENT REPLY OFF` or the client's own `WAIT` are
//! untouched: a reply the client turned off is never there to hold.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use std::task::{Context, Poll, ready};

use tokio::sync::watch;
use tokio_util::sync::ReusableBoxFuture;

use crate::Group;
use crate::resp::ReplyTracker;
use crate::session::ack::{self, Marks, Verdict};
use crate::session::barrier::{Barrier, Resolved};

/// Past this much held, the session stops reading its master until the barrier answers.
pub(super) const HOLD_MAX: usize = 4 << 20;

struct Record {
    start: usize,
    write: bool,
}

/// Held bytes before `end` wait for `ticket`, for writes on the master of `generation`.
struct Segment {
    end: usize,
    ticket: u64,
    generation: u64,
}

pub(in crate::session) struct Hold {
    need: u32,
    timeout: Duration,
    marks: Marks,
    /// The reply numbers (counted like `expected_replies`) that answer writes, in order.
    writes: VecDeque<u64>,
    /// A RESP2 subscriber or MONITOR (whose messages count among the replies, so a write's
    /// reply cannot be told by its number) sent a write: every reply waits from then on.
    all: bool,
    /// Splits what the session relays into replies (its own count, from the session's start).
    split: ReplyTracker,
    /// The stream is no longer RESP: held bytes are not split any more.
    broken: bool,
    /// Whether the reply being read is held; none is being read.
    current: Option<bool>,
    held: Vec<u8>,
    records: Vec<Record>,
    segments: VecDeque<Segment>,
    /// A held write's reply is complete and no ticket covers it yet.
    unticketed: bool,
    /// Waits for the barrier's next answer, kept here (its box reused) rather than in the
    /// session's task: an idle session stays small.
    changed: ReusableBoxFuture<'static, Changed>,
    /// The barrier's last answer seen.
    resolved: Resolved,
    out: Vec<u8>,
}

type Changed = (bool, watch::Receiver<Resolved>);

async fn changed(mut rx: watch::Receiver<Resolved>) -> Changed {
    let ok = rx.changed().await.is_ok();
    (ok, rx)
}

impl Hold {
    /// For a session of `group`, if it asks for durable acknowledgements.
    pub(in crate::session) fn new(group: &Group) -> Option<Hold> {
        let crate::config::Ack::Replicas(need) = group.settings().ack else {
            return None;
        };
        let writes = match &*group.commands.load() {
            Some(learned) => learned.writes.clone(),
            None => Arc::new(crate::command::Rows::written_by_hand()),
        };
        Some(Hold {
            need,
            timeout: group.config().ack_timeout,
            marks: Marks::new(writes),
            writes: VecDeque::new(),
            all: false,
            split: ReplyTracker::new(),
            broken: false,
            current: None,
            held: Vec::new(),
            records: Vec::new(),
            segments: VecDeque::new(),
            unticketed: false,
            changed: ReusableBoxFuture::new(changed(group.barrier.subscribe())),
            resolved: Resolved::default(),
            out: Vec::new(),
        })
    }

    /// The tracker's mark `m` of reply number `before + 1` (`CaptureKind::Mark`).
    /// `unaligned`: reply numbers do not follow requests (a RESP2 subscriber, MONITOR).
    pub(in crate::session) fn mark(&mut self, m: u16, before: u64, unaligned: bool) {
        if self.marks.writes(m) {
            self.writes.push_back(before);
            self.all |= unaligned;
        }
    }

    /// Nothing held, nothing waiting.
    pub(in crate::session) fn is_empty(&self) -> bool {
        self.held.is_empty() && self.segments.is_empty() && !self.unticketed
    }

    /// Tickets are waiting for the barrier.
    pub(in crate::session) fn waiting(&self) -> bool {
        !self.segments.is_empty()
    }

    pub(in crate::session) fn full(&self) -> bool {
        self.held.len() >= HOLD_MAX
    }

    /// Ready when the barrier answered again (false: it is gone), for the session to wait on
    /// while `waiting()`; then `resolve`.
    pub(in crate::session) fn poll_barrier(&mut self, cx: &mut Context<'_>) -> Poll<bool> {
        let (ok, mut rx) = ready!(self.changed.poll(cx));
        self.resolved = rx.borrow_and_update().clone();
        self.changed.set(changed(rx));
        Poll::Ready(ok)
    }

    /// Replies just read from the master of `generation`: returns how many of their first bytes
    /// go to the client now; the rest is held. Then `take_out()` has what was released after
    /// them (held replies that no longer wait).
    pub(in crate::session) fn relay(
        &mut self,
        bytes: &[u8],
        generation: u64,
        barrier: &Barrier,
        group: &Group,
    ) -> usize {
        let mut pos = 0;
        let mut passed = 0;
        while pos < bytes.len() {
            if self.broken {
                if self.held.is_empty() && self.segments.is_empty() {
                    return bytes.len();
                }
                self.held.extend_from_slice(&bytes[pos..]);
                break;
            }
            let before = self.split.replies;
            let Ok(n) = self.split.feed_replies(&bytes[pos..], before + 1) else {
                // Not RESP: the session becomes a byte pipe; what is held stays in order.
                self.broken = true;
                continue;
            };
            let done = self.split.replies > before;
            let hold = match self.current {
                Some(hold) => hold,
                None => {
                    let write = self.all || self.is_write(before);
                    let hold = write || !self.held.is_empty() || !self.segments.is_empty();
                    if hold {
                        self.records.push(Record {
                            start: self.held.len(),
                            write,
                        });
                    }
                    self.current = Some(hold);
                    hold
                }
            };
            if hold {
                self.held.extend_from_slice(&bytes[pos..pos + n]);
            } else {
                passed = pos + n;
            }
            pos += n;
            if done {
                self.current = None;
                if hold && self.records.last().is_some_and(|r| r.write) {
                    self.unticketed = true;
                }
            }
        }
        if self.unticketed {
            self.unticketed = false;
            // Up to the reply still coming in, if one is: its ticket comes once it is whole.
            let end = match self.current {
                Some(true) => self.records.last().map_or(0, |r| r.start),
                _ => self.held.len(),
            };
            self.segments.push_back(Segment {
                end,
                ticket: barrier.ticket(),
                generation,
            });
        }
        if self.segments.is_empty() {
            self.release_whole(None, group);
        }
        passed
    }

    /// Whether reply number `n` answers a write (marks of replies the client turned off or
    /// that were missed count as writes: the safe answer).
    fn is_write(&mut self, n: u64) -> bool {
        let mut write = false;
        while let Some(&w) = self.writes.front() {
            if w > n {
                break;
            }
            self.writes.pop_front();
            write = true;
        }
        write
    }

    /// The barrier moved: release what its answers resolve. True if `take_out()` has bytes.
    pub(in crate::session) fn resolve(&mut self, group: &Group) -> bool {
        while let Some(s) = self.segments.front() {
            let Some(outcome) = self.resolved.of(s.ticket, s.generation) else {
                break;
            };
            let end = s.end;
            self.segments.pop_front();
            let refusal = outcome
                .err()
                .map(|v: Verdict| ack::refusal(&v, self.need, self.timeout));
            self.release(end, refusal.as_deref(), group);
        }
        if self.segments.is_empty() && !self.unticketed {
            self.release_whole(None, group);
        }
        !self.out.is_empty()
    }

    /// Release every whole reply held (none waits for a ticket any more).
    fn release_whole(&mut self, refusal: Option<&[u8]>, group: &Group) {
        let end = match self.current {
            Some(true) if !self.broken => self.records.last().map_or(0, |r| r.start),
            _ => self.held.len(),
        };
        self.release(end, refusal, group);
    }

    /// Move the held replies before `end` to `out`, each write's as `refusal` if there is one.
    fn release(&mut self, end: usize, refusal: Option<&[u8]>, group: &Group) {
        if end == 0 {
            return;
        }
        let taken = self.records.partition_point(|r| r.start < end);
        for i in 0..taken {
            let r = &self.records[i];
            let stop = self.records.get(i + 1).map_or(end, |n| n.start.min(end));
            let reply = &self.held[r.start..stop];
            match refusal {
                Some(refused) if r.write && !ack::is_error(reply) => {
                    group.metrics.ack_refused_total.inc();
                    self.out.extend_from_slice(refused);
                }
                _ => self.out.extend_from_slice(reply),
            }
        }
        if taken == 0 {
            // Bytes with no record: a stream no longer split.
            self.out.extend_from_slice(&self.held[..end]);
        }
        self.held.drain(..end);
        self.records.drain(..taken);
        for r in &mut self.records {
            r.start -= end;
        }
        for s in &mut self.segments {
            s.end -= end;
        }
    }

    /// What was released, for the session to write to the client (then `out_written`).
    pub(in crate::session) fn out(&self) -> &[u8] {
        &self.out
    }

    pub(in crate::session) fn out_written(&mut self) {
        self.out.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command;

    use crate::resp::{CaptureKind, Captured};

    /// What the session does with the tracker's marks.
    trait TakeMarks {
        fn take_marks(&mut self, captured: &mut Vec<Captured>, unaligned: bool);
    }

    impl TakeMarks for Hold {
        fn take_marks(&mut self, captured: &mut Vec<Captured>, unaligned: bool) {
            for c in captured.drain(..) {
                if let CaptureKind::Mark(m) = c.kind {
                    self.mark(m, c.before, unaligned);
                }
            }
        }
    }

    fn hold(group: &Group) -> Hold {
        let mut h = Hold::new(group).unwrap();
        h.marks = Marks::new(Arc::new(command::Rows::written_by_hand()));
        h
    }

    /// What the session does when the barrier answers: take its answer, then resolve.
    fn resolve(h: &mut Hold, g: &Group) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        while let Poll::Ready(true) = h.poll_barrier(&mut cx) {}
        h.resolve(g)
    }

    fn group() -> Group {
        let mut config = crate::Config::new(vec![], "m");
        config.ack = crate::config::Ack::Replicas(1);
        let settings = config.groups().remove(0);
        Group::new(Arc::new(crate::Shared::new(config)), settings)
    }

    fn mark(name: &str, before: u64) -> Captured {
        Captured {
            kind: CaptureKind::Mark(command::index_of(name.as_bytes()).unwrap()),
            before,
            answered: true,
            bytes: None,
        }
    }

    #[test]
    fn a_write_and_what_follows_wait_for_their_ticket() {
        let g = group();
        let mut h = hold(&g);
        let mut c = vec![mark("GET", 0), mark("SET", 1), mark("GET", 2)];
        h.take_marks(&mut c, false);
        assert!(c.is_empty());
        let replies = b"$1\r\na\r\n+OK\r\n$1\r\nb\r\n";
        let passed = h.relay(replies, 7, &g.barrier, &g);
        assert_eq!(&replies[..passed], b"$1\r\na\r\n"); // the GET before the write
        assert!(h.waiting() && h.out().is_empty());
        assert!(!resolve(&mut h, &g)); // not resolved yet
        // Later replies wait behind the held ones, even reads.
        h.take_marks(&mut vec![mark("GET", 3)], false);
        assert_eq!(h.relay(b"$1\r\nc\r\n", 7, &g.barrier, &g), 0);
        g.barrier.resolved_for_test(2, 7, Verdict::Acked);
        assert!(resolve(&mut h, &g));
        assert_eq!(h.out(), b"+OK\r\n$1\r\nb\r\n$1\r\nc\r\n");
        h.out_written();
        assert!(h.is_empty());
        // Nothing held: a read passes at once.
        h.take_marks(&mut vec![mark("GET", 4)], false);
        assert_eq!(h.relay(b"$-1\r\n", 7, &g.barrier, &g), 5);
    }

    #[test]
    fn an_unconfirmed_write_is_refused_and_its_neighbours_pass_unchanged() {
        let g = group();
        let mut h = hold(&g);
        h.take_marks(&mut vec![mark("SET", 0), mark("INCR", 1)], false);
        // The second write's reply arrives in two reads: the first ticket covers the first.
        assert_eq!(h.relay(b"+OK\r\n:4", 1, &g.barrier, &g), 0);
        h.take_marks(&mut vec![mark("LPUSH", 2), mark("GET", 3)], false);
        assert_eq!(
            h.relay(b"2\r\n-WRONGTYPE x\r\n$1\r\nv\r\n", 1, &g.barrier, &g),
            0
        );
        g.barrier.resolved_for_test(1, 1, Verdict::Short(0));
        assert!(resolve(&mut h, &g));
        assert!(
            h.out()
                .starts_with(b"-NOREPLICAS Not enough good replicas to write: 0 of 1")
        );
        h.out_written();
        g.barrier.resolved_for_test(2, 1, Verdict::Acked);
        assert!(resolve(&mut h, &g));
        // An error passes as it is; the read after it too.
        assert_eq!(h.out(), b":42\r\n-WRONGTYPE x\r\n$1\r\nv\r\n");
        h.out_written();
        assert!(h.is_empty());
    }

    #[test]
    fn a_write_on_a_master_since_replaced_is_not_confirmed() {
        let g = group();
        let mut h = hold(&g);
        h.take_marks(&mut vec![mark("SET", 0)], false);
        assert_eq!(h.relay(b"+OK\r\n", 1, &g.barrier, &g), 0);
        g.barrier.resolved_for_test(1, 2, Verdict::Acked);
        assert!(resolve(&mut h, &g));
        let out = String::from_utf8_lossy(h.out()).to_string();
        assert!(out.contains("the master changed"), "{out}");
    }

    #[test]
    fn a_subscriber_that_writes_holds_every_reply() {
        let g = group();
        let mut h = hold(&g);
        h.take_marks(&mut vec![mark("SET", 0)], true);
        let message = b"*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\nm\r\n";
        assert_eq!(h.relay(message, 1, &g.barrier, &g), 0);
        assert!(h.waiting());
    }
}
