//! A dedicated session's reply side: what the master sends is tracked (framed one reply at a
//! time while the carry waits for an answer), held for the replicas under durable
//! acknowledgements (`hold.rs`), and written to the client, or kept while its socket is full.
//! A reply the tracker cannot follow makes the session a byte pipe.

use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::time::{Instant, timeout};
use tracing::{debug, info};

use super::{Session, Step};
use crate::Group;
use crate::session::io::{Pending, write_now};
use crate::session::{Close, Pipe};
use crate::tls::Link;

impl Session<'_> {
    /// Write the replies still pending to the client, waiting (boundedly) if need be (on TLS,
    /// with their records: flushed).
    pub(in crate::session) async fn deliver_replies(&mut self) {
        let bytes = self.replies.bytes();
        let write = async {
            self.client.write_all(bytes).await?;
            self.client.flush().await
        };
        if let Ok(Ok(())) = timeout(Duration::from_secs(1), write).await {
            let m = &self.group.metrics;
            m.client_bytes_sent_total.inc_by(bytes.len() as u64);
        }
        self.replies = Pending::default();
    }

    /// Bytes just read from the backend: track the replies and write them to the client.
    pub(in crate::session) fn relay_reply(&mut self, bytes: &[u8]) -> Step {
        if self.idle_on {
            self.last_active = Instant::now();
        }
        if self.pipe.is_none() {
            let tracked = match &self.carry {
                Some(c) if c.inspecting || c.next_stop().is_some() => self.track_framed(bytes),
                _ => self.rep.feed(bytes).is_ok(),
            };
            if !tracked {
                self.become_pipe(Pipe::UntrackedReply);
            }
            if self.carrier {
                self.sync_carrier();
            }
            if self.carry.as_ref().is_some_and(|c| c.is_empty()) {
                self.carry = None; // back to the lean path
            }
        }
        if self.rep.saw_not_master && !self.rechecked && !self.group.lane {
            // A partitioned or demoted master: have the watcher look now.
            self.rechecked = true;
            self.group.metrics.not_master_replies_total.inc();
            self.group.route.request_recheck();
        }
        let Some(h) = self
            .extra
            .as_deref_mut()
            .and_then(|x| x.hold.as_deref_mut())
        else {
            return to_client(&mut self.client, &mut self.replies, self.group, bytes);
        };
        let passed = h.relay(bytes, self.generation, &self.group.barrier, self.group);
        let step = to_client(
            &mut self.client,
            &mut self.replies,
            self.group,
            &bytes[..passed],
        );
        if !h.out().is_empty() {
            to_client(&mut self.client, &mut self.replies, self.group, h.out());
            h.out_written();
        }
        step
    }

    /// The barrier answered: what it released goes to the client.
    pub(super) fn released(&mut self) -> Step {
        let Some(h) = self
            .extra
            .as_deref_mut()
            .and_then(|x| x.hold.as_deref_mut())
        else {
            return Step::Continue;
        };
        if !h.resolve(self.group) {
            return Step::Continue;
        }
        let step = to_client(&mut self.client, &mut self.replies, self.group, h.out());
        h.out_written();
        step
    }

    /// Track replies one frame at a time while the carry waits for the answer to a captured
    /// request, or inspects a subscribed connection's frames. False: not RESP.
    fn track_framed(&mut self, bytes: &[u8]) -> bool {
        let Some(carry) = self.carry.as_mut() else {
            return self.rep.feed(bytes).is_ok();
        };
        let mut rest = bytes;
        loop {
            carry.replies_done(self.reply_base + self.rep.replies, self.rep.last_error);
            // HELLO 3 worked: subscribe commands are now answered with pushes.
            self.req.resp3 = carry.resp3;
            if rest.is_empty() {
                return true;
            }
            if !carry.inspecting && carry.next_stop().is_none() {
                return self.rep.feed(rest).is_ok();
            }
            let Ok(n) = self.rep.feed_frame(rest) else {
                return false;
            };
            if carry.inspecting {
                carry.inspect(&rest[..n], self.rep.at_reply_boundary());
            }
            rest = &rest[n..];
        }
    }

    /// Stop tracking for good: from now on bytes pass through unchanged.
    pub(super) fn become_pipe(&mut self, why: Pipe) {
        info!(
            reason = why.label(),
            "session is now a byte pipe (no longer tracking requests and replies)"
        );
        self.group
            .metrics
            .pipe_sessions_total
            .with_label_values(&[why.label()])
            .inc();
        self.pipe = Some(why);
    }

    pub(super) fn flush_replies(&mut self) -> Step {
        // On TLS, the records of replies already taken go first.
        let flushed = self.client.flush_now();
        match flushed.and_then(|()| write_now(&mut self.client, self.replies.bytes())) {
            Ok(w) => {
                self.group.metrics.client_bytes_sent_total.inc_by(w as u64);
                self.replies.consume(w);
                Step::Continue
            }
            Err(e) => {
                debug!(error = %e, "client write error");
                Step::Close(Close::ClientClosed)
            }
        }
    }
}

/// Write replies to the client: as far as its socket takes them now, the rest kept pending
/// (after what is pending already: replies keep their order).
pub(super) fn to_client(
    client: &mut Link,
    replies: &mut Pending,
    group: &Group,
    bytes: &[u8],
) -> Step {
    if bytes.is_empty() {
        return Step::Continue;
    }
    if !replies.is_empty() {
        replies.push(bytes);
        return Step::Continue;
    }
    match write_now(client, bytes) {
        Ok(w) => {
            group.metrics.client_bytes_sent_total.inc_by(w as u64);
            replies.push(&bytes[w..]);
            Step::Continue
        }
        Err(e) => {
            debug!(error = %e, "client write error");
            Step::Close(Close::ClientClosed)
        }
    }
}
