//! A shared connection with durable acknowledgements (`ack = replicas:N`): after each batch of
//! writes the connection's task sends `WAIT` (`drive`), and the replies are handed back here,
//! one at a time, holding what must wait for the master's answer (`session/ack.rs` says what)
//! in one buffer per connection (no allocation per request once it has grown).

use std::cell::Cell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::super::Close;
use super::super::ack::{self, Marks, Verdict};
use super::{Client, Conn};
use crate::Group;
use crate::resp::ReplyTracker;

/// A reply held for a client, from `start` in `Acked::held` to the next one's start.
struct Record {
    client: Rc<Client>,
    start: usize,
    write: bool,
}

/// The connection's part in durable acknowledgements.
pub(in crate::session) struct Acked {
    need: u32,
    timeout: Duration,
    wait: Vec<u8>,
    marks: Marks,
    /// For each reply owed on the connection, in order: whether it answers a write.
    writes: VecDeque<bool>,
    /// A write went on since the last `WAIT`.
    owed_wait: Cell<bool>,
    held: Vec<u8>,
    records: Vec<Record>,
    /// The reply being read is held (`Some(true)`), passed on (`Some(false)`), or none is.
    current: Option<bool>,
    /// The answer to the `WAIT` being read.
    answer: Vec<u8>,
    /// When each `WAIT` in flight was sent.
    sent: VecDeque<Instant>,
    out: Vec<u8>,
}

impl Acked {
    pub(in crate::session) fn new(
        need: u32,
        timeout: Duration,
        writes: Arc<crate::command::Rows>,
    ) -> Acked {
        Acked {
            need,
            timeout,
            wait: ack::wait_request(need, timeout),
            marks: Marks::new(writes),
            writes: VecDeque::new(),
            owed_wait: Cell::new(false),
            held: Vec::new(),
            records: Vec::new(),
            current: None,
            answer: Vec::new(),
            sent: VecDeque::new(),
            out: Vec::new(),
        }
    }

    /// `replies` replies were just owed on the connection, `marks` saying what each answers
    /// (`RequestTracker::marks`); without a mark for every one (a client that began before
    /// `ack` was turned on), every one counts as a write.
    pub(super) fn owe(&mut self, replies: u64, marks: &[u8]) {
        let mut any = false;
        if marks.len() as u64 == replies * 2 {
            for m in marks.chunks_exact(2) {
                let w = self.marks.writes(u16::from_le_bytes([m[0], m[1]]));
                any |= w;
                self.writes.push_back(w);
            }
        } else {
            any = replies > 0;
            self.writes.extend((0..replies).map(|_| true));
        }
        if any {
            self.owed_wait.set(true);
        }
    }

    /// Before the connection writes what clients appended: the `WAIT` to append after it, if
    /// a write went on since the last one.
    pub(super) fn take_wait(&mut self) -> Option<&[u8]> {
        if !self.owed_wait.replace(false) {
            return None;
        }
        self.sent.push_back(Instant::now());
        Some(&self.wait)
    }

    /// Requests appended and never written (a switch came first): forget what they owed.
    pub(super) fn unwritten_dropped(&mut self) {
        self.owed_wait.set(false);
    }

    /// The connection ended: close every client whose replies are held (their writes' fate is
    /// unknown), as the caller closes those still owed replies.
    pub(super) fn fail_held(&mut self, why: Close) {
        for r in self.records.drain(..) {
            r.client.held.set(0);
            r.client.owed.set(r.client.owed.get().saturating_sub(1));
            r.client.fail(why);
        }
        self.held.clear();
        self.writes.clear();
        self.current = None;
        self.answer.clear();
        self.sent.clear();
    }
}

/// Hand a chunk of replies to the clients they answer, holding what waits for the replicas.
/// False: bytes no client is owed, or not RESP (the connection must end). Replies passed on go
/// to their client in one write per run, as without durable acks.
pub(super) fn dispatch(
    conn: &Conn,
    a: &mut Acked,
    rep: &mut ReplyTracker,
    bytes: &[u8],
    group: &Group,
) -> bool {
    let mut waiters = conn.waiters.borrow_mut();
    let mut pos = 0;
    // Replies being passed on: where their run began, and to whom.
    let mut run: Option<(usize, Rc<Client>)> = None;
    let flush = |run: &mut Option<(usize, Rc<Client>)>, pos: usize| {
        if let Some((from, client)) = run.take() {
            client.deliver(&bytes[from..pos], group);
        }
    };
    while pos < bytes.len() {
        let Some(head) = waiters.front_mut() else {
            flush(&mut run, pos);
            return false;
        };
        let before = rep.replies;
        // One reply at a time: each is held or passed on by itself.
        let Ok(n) = rep.feed_replies(&bytes[pos..], before + 1) else {
            flush(&mut run, pos);
            return false;
        };
        let (chunk, done) = (&bytes[pos..pos + n], rep.replies > before);
        let Some(client) = &head.client else {
            // The proxy's own WAIT.
            flush(&mut run, pos);
            a.answer.extend_from_slice(chunk);
            pos += n;
            if done {
                waiters.pop_front();
                answered(a, group);
            }
            continue;
        };
        let hold = *a.current.get_or_insert_with(|| {
            let write = a.writes.pop_front().unwrap_or(true);
            let hold = write || client.held.get() > 0;
            if hold {
                client.held.set(client.held.get() + 1);
                a.records.push(Record {
                    client: client.clone(),
                    start: a.held.len(),
                    write,
                });
            }
            hold
        });
        head.started = true;
        if hold {
            flush(&mut run, pos);
            a.held.extend_from_slice(chunk);
        } else if !run.as_ref().is_some_and(|(_, c)| Rc::ptr_eq(c, client)) {
            flush(&mut run, pos);
            run = Some((pos, client.clone()));
        }
        pos += n;
        if done {
            a.current = None;
            head.replies -= 1;
            if !hold {
                client.owed.set(client.owed.get() - 1);
                if client.owed.get() == 0 && client.want_idle.get() {
                    client.wake();
                }
            }
            if head.replies == 0 {
                waiters.pop_front();
            }
        }
    }
    flush(&mut run, pos);
    conn.trim(&waiters);
    true
}

/// The master answered a `WAIT`: every held reply (all came before it) goes on, a write's
/// replaced by `-NOREPLICAS …` if too few replicas confirmed it.
fn answered(a: &mut Acked, group: &Group) {
    let verdict = ack::verdict(&a.answer, a.need);
    a.answer.clear();
    if let Some(sent) = a.sent.pop_front() {
        group
            .metrics
            .ack_wait_seconds
            .observe(sent.elapsed().as_secs_f64());
    }
    let refusal = (verdict != Verdict::Acked).then(|| ack::refusal(&verdict, a.need, a.timeout));
    let records = std::mem::take(&mut a.records);
    let mut run = 0u64;
    for (i, r) in records.iter().enumerate() {
        let end = records.get(i + 1).map_or(a.held.len(), |n| n.start);
        let reply = &a.held[r.start..end];
        match &refusal {
            Some(refused) if r.write && !ack::is_error(reply) => {
                group.metrics.ack_refused_total.inc();
                a.out.extend_from_slice(refused);
            }
            _ => a.out.extend_from_slice(reply),
        }
        run += 1;
        // One write to the client per run of its replies.
        let last_of_run = records
            .get(i + 1)
            .is_none_or(|n| !Rc::ptr_eq(&n.client, &r.client));
        if last_of_run {
            let c = &r.client;
            c.deliver(&a.out, group);
            a.out.clear();
            c.held.set(c.held.get().saturating_sub(run as u32));
            c.owed.set(c.owed.get().saturating_sub(run));
            if c.owed.get() == 0 && c.want_idle.get() {
                c.wake();
            }
            run = 0;
        }
    }
    a.held.clear();
    a.records = records;
    a.records.clear();
}
