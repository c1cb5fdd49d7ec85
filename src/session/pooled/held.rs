//! A pooled client's held requests: complete requests go on its connection when the route is
//! open on it, and are held otherwise (a failover's pause, no verified master, a connect under
//! way, the pin barrier, replies owed on an older master); held ones are released onto the next
//! connection the fence allows. A connection that ended hands back what can be sent again
//! (`conn.rs`, `Conn::fail_all`): it is held ahead of what the client sent after it.

use tokio::time::Instant;

use super::{Hold, Pooled};
use crate::resp::{Mode, RequestTracker};
use crate::session::io::Pending;

impl Pooled<'_> {
    /// Send the held requests if the route allows, else note what to wait for.
    pub(super) fn release(&mut self) {
        let now = Instant::now();
        let usable = self.usable(true);
        let s = self.slow.get_or_insert_default();
        match usable {
            Ok(conn) => {
                conn.push(
                    &self.client,
                    &[s.held.bytes()],
                    s.held_replies,
                    &s.held_marks,
                    s.held_again,
                    self.group,
                );
                s.held = Pending::default();
                s.held_replies = 0;
                s.held_marks.clear();
                s.held_again = false;
                s.held_scripts = false;
                s.deadline = None;
                if s.held_since.is_some() {
                    self.count_held("released");
                }
            }
            Err(hold) => {
                s.held_since.get_or_insert(now);
                match hold {
                    Hold::Paused => {}
                    Hold::Operator => {
                        s.deadline.get_or_insert(now + self.group.operator.wait());
                    }
                    Hold::NoMaster => {
                        s.deadline
                            .get_or_insert(now + self.group.config().connect_wait);
                    }
                    Hold::Gate(until) => s.wake_at = Some(until),
                    Hold::Barrier(until) => {
                        self.pool.wait_barrier(&self.client);
                        s.wake_at = Some(until);
                    }
                    Hold::Draining => {}
                    Hold::Connecting(at) => {
                        s.wake_at = at;
                        s.deadline
                            .get_or_insert(now + self.group.config().connect_wait);
                    }
                }
            }
        }
    }

    /// Requests its connection handed back (`Conn::fail_all`: never sent, or reads the master
    /// died before answering): held again, ahead of what the client sent after them, for the
    /// next connection the fence allows.
    pub(super) fn send_again(&mut self, again: crate::session::conn::Retry) {
        self.group
            .metrics
            .requests_sent_again_total
            .inc_by(again.replies);
        self.open = false;
        let s = self.slow.get_or_insert_default();
        let mut held = Pending::default();
        held.push(&again.bytes);
        held.push(s.held.bytes());
        s.held = held;
        // What their replies answer, read again from the requests (rare: a master died).
        let mut t = RequestTracker::new(self.group.config().max_request_bytes);
        t.mode = Mode::Pool;
        t.marking = true;
        let marked = t.feed(&again.bytes).is_ok() && t.expected_replies == again.replies;
        if marked && s.held_marks.len() as u64 == s.held_replies * 2 {
            let mut marks = t.take_marks();
            marks.extend_from_slice(&s.held_marks);
            s.held_marks = marks;
        } else {
            // Unknown: with durable acks every reply is held for the replicas (the safe side).
            s.held_marks.clear();
        }
        s.held_replies += again.replies;
        s.held_scripts |= t.scripts;
        s.held_again = true;
        s.held_since.get_or_insert(Instant::now());
    }

    pub(super) fn count_held(&mut self, outcome: &str) {
        let m = &self.group.metrics;
        m.held_requests_total.with_label_values(&[outcome]).inc();
        if let Some(since) = self.slow.as_mut().and_then(|s| s.held_since.take()) {
            m.hold_seconds.observe(since.elapsed().as_secs_f64());
        }
    }

    /// Complete requests: on the connection now if the route is open, else held.
    pub(super) fn push_complete(
        &mut self,
        carried: &[u8],
        complete: &[u8],
        replies: u64,
        scripts: bool,
        marks: &[u8],
    ) {
        if complete.is_empty() && carried.is_empty() {
            return;
        }
        let parts = [carried, complete];
        if self.open
            && self.lane_for(scripts) == self.lane
            && matches!(self.changes.has_changed(), Ok(false))
            && self.pool.barrier().is_none()
            && let Some(conn) = self.conn.as_ref().filter(|c| !c.dead.get())
        {
            conn.push(&self.client, &parts, replies, marks, false, self.group);
            return;
        }
        let s = self.slow.get_or_insert_default();
        for p in parts {
            s.held.push(p);
        }
        s.held_replies += replies;
        s.held_marks.extend_from_slice(marks);
        s.held_scripts |= scripts;
        self.open = false;
    }
}
