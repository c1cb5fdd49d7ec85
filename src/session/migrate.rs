//! Moving a session to a new master so that the client sees latency, never an error: connect,
//! wind down what is still in flight on the old master, re-create the client's connection state
//! on the new one (`carry.rs`), and swallow the new master's answers to that.
//!
//! Winding down, by what the session is:
//! - **A subscriber**: `PING <token>` on the old connection, and every frame before its answer is
//!   relayed (messages published before the fence, confirmations), so nothing published through
//!   the proxy is lost; the marker itself is swallowed.
//! - **A blocking command in flight**: unblocked on the old master with
//!   `CLIENT UNBLOCK <id> TIMEOUT` (over the proxy's own connection, with `--master-password`; the
//!   id is found in `CLIENT LIST` by this connection's address, so opening a connection costs no
//!   extra round trip). If the old master answers as for a timeout, that answer is swallowed and
//!   the command is re-issued on the new master with what is left of its timeout; if it answers
//!   with data, the client gets it. If the old master is gone, the command is re-issued: nothing
//!   was popped for it on a node that no client can reach.
//!
//! `move_to` acts on a session's `Step::Move`: a new generation moves it; a connection lost with
//! the route unchanged closes the client if the master still answers on new connections (it was
//! closed on purpose), waits for the watcher's verdict if not, and on a read port's lane waits
//! for the lane to be renewed (`read.rs`).
//!
//! The new master must answer the replayed commands as the old one did (an error where there was
//! one, success where there was success); otherwise the move fails and the session is closed.
//!
//! What each frame means on the way (a replayed command's answer, the blocked command's reply,
//! the marker) is decided in `migrate/frames.rs`, one frame at a time; here, the sockets and the
//! deadlines.

use std::net::SocketAddr;
use std::time::Duration;

use redis_protocol::resp2::types::OwnedFrame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::tls::Link;
use tokio::time::{Instant, timeout, timeout_at};
use tracing::{Span, debug, info};

use super::Close;
use super::carry::{Carry, Plan};
use super::dedicated::{Session, Step};
use super::io::Pending;
use crate::resp::ReplyTracker;
use crate::resp::encode_command as encode;
use crate::sentinel::client::{ClientError, RespConn, frame_text};

mod frames;

use frames::{ReplayCheck, Replayed, Unblocked};

/// Read size while winding down or replaying (rare paths: a buffer of their own).
const READ: usize = 16 * 1024;

/// What RESP3 sends for `FLUSHALL` to a tracking client: forget every key.
const INVALIDATE_ALL: &[u8] = b">2\r\n$10\r\ninvalidate\r\n_\r\n";

/// Why winding down or replaying failed.
enum Failed {
    /// The old master did not answer: it is going away.
    OldGone,
    /// The session must close.
    Close(Close),
}

impl<'a> Session<'a> {
    /// Move to the new master. `Err(None)`: the connect failed (worth another try);
    /// `Err(Some(_))`: give up and close.
    pub(super) async fn migrate(
        &mut self,
        addr: SocketAddr,
        generation: u64,
    ) -> Result<(), Option<Close>> {
        let cfg = self.group.config();
        let began = Instant::now();
        let connect = super::backend::open(self.group, addr);
        let mut backend = match timeout(cfg.connect_timeout, connect).await {
            Ok(Ok(s)) => {
                let m = &self.group.metrics;
                m.backend_connect_seconds
                    .observe(began.elapsed().as_secs_f64());
                s
            }
            _ => {
                self.group.metrics.backend_connect_failures_total.inc();
                return Err(None);
            }
        };
        let kind = self.kind();
        let wind_down = Instant::now() + cfg.connect_timeout;

        let mut reissue = false;
        if self.blocked_last() {
            reissue = if self.backend_gone {
                true
            } else {
                match self.unblock_old(wind_down).await {
                    Ok(r) => r,
                    Err(Failed::OldGone) => true,
                    Err(Failed::Close(c)) => return Err(Some(c)),
                }
            };
        } else if self.req.pubsub && !self.backend_gone {
            match self.drain_subscriber(wind_down).await {
                Ok(()) | Err(Failed::OldGone) => {}
                Err(Failed::Close(c)) => return Err(Some(c)),
            }
        }

        let mut side = ClientSide {
            client: &mut self.client,
            replies: &mut self.replies,
            group: self.group,
        };
        let carried = (&self.carry, self.req.monitor, reissue);
        let leftover = match recreate(&mut backend, &mut side, carried, addr).await {
            Ok(leftover) => leftover,
            Err(c) => return Err(Some(c)),
        };

        // The replies of the new backend start after those the client has had (a re-issued
        // blocking command's is the first of them).
        self.reply_base = self.forwarded_state().expected_replies - reissue as u64;
        self.rep = ReplyTracker::new();
        self.backend = backend;
        self.backend_gone = false;
        self.unsent = Pending::default();
        let route = &self.group.route;
        route.attach(generation);
        route.detach(self.generation);
        if self.carrier {
            route.carrier_attach(generation);
            route.carrier_detach(self.generation);
        }
        self.generation = generation;
        Span::current().record("backend", tracing::field::display(addr));
        debug!(backend = %addr, kind = kind.label(), "session moved to the new master");
        self.group
            .metrics
            .moves_total
            .with_label_values(&[kind.label()])
            .inc();
        self.group.tally.moved(generation, kind.label());
        if !leftover.is_empty()
            && let Step::Close(c) = self.relay_reply(&leftover)
        {
            return Err(Some(c));
        }
        Ok(())
    }

    /// Write to the client what it is owed first, then `bytes`, within `limit`.
    async fn send_client(&mut self, bytes: &[u8], limit: Duration) -> bool {
        let mut side = ClientSide {
            client: &mut self.client,
            replies: &mut self.replies,
            group: self.group,
        };
        side.send(bytes, limit).await
    }

    /// A subscriber: relay everything the old master sends before the answer to our marker.
    async fn drain_subscriber(&mut self, until: Instant) -> Result<(), Failed> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let token = format!("sentinel-proxy-drain-{nanos:x}").into_bytes();
        let mut ping = Vec::new();
        encode(&mut ping, &[b"PING", &token]);
        match timeout_at(until, self.backend.send(&ping)).await {
            Ok(Ok(())) => {}
            _ => return Err(Failed::OldGone),
        }
        let limit = self.group.config().drain_timeout;
        let mut buf = vec![0u8; READ];
        let mut frame = Vec::new();
        loop {
            let n = match timeout_at(until, self.backend.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => n,
                _ => return Err(Failed::OldGone),
            };
            let mut rest = &buf[..n];
            let mut out = Vec::new();
            while !rest.is_empty() {
                match take_frame(&mut self.rep, &mut rest, &mut frame) {
                    Ok(true) => {}
                    Ok(false) => continue,
                    Err(_) => return Err(Failed::Close(Close::SwitchPubSub)),
                }
                if frames::is_marker(&frame, &token) {
                    // Whatever follows was published after the fence, not through the proxy (and
                    // may end mid-frame): it is not the client's to have from this connection.
                    if !self.send_client(&out, limit).await {
                        return Err(Failed::Close(Close::ClientClosed));
                    }
                    return Ok(());
                }
                if let Some(c) = self.carry.as_mut() {
                    c.inspect(&frame, true);
                }
                out.extend_from_slice(&frame);
                frame.clear();
            }
            if !self.send_client(&out, limit).await {
                return Err(Failed::Close(Close::ClientClosed));
            }
        }
    }

    /// A blocking command in flight on the old master: unblock it there and collect the replies
    /// still owed. Returns whether the command must be re-issued (it timed out there).
    async fn unblock_old(&mut self, until: Instant) -> Result<bool, Failed> {
        let cfg = self.group.config();
        let (Ok(old), Ok(me)) = (self.backend.peer_addr(), self.backend.local_addr()) else {
            return Err(Failed::OldGone);
        };
        let Some(target) = self.carry.as_ref().and_then(|c| c.blocked.as_ref()) else {
            return Ok(false);
        };
        let target = target.reply;
        let conn = timeout_at(
            until,
            RespConn::connect_addr(old, &self.group.settings().master_auth, cfg.connect_timeout),
        )
        .await;
        let Ok(Ok(mut conn)) = conn else {
            return Err(Failed::OldGone);
        };
        let mut buf = vec![0u8; READ];
        let mut frame = Vec::new();
        let mut out = Vec::new();
        loop {
            // Not yet blocked (the command is still on its way) answers 0: try again shortly.
            let unblocked = async {
                let list = conn.call(&[b"CLIENT", b"LIST", b"TYPE", b"normal"]).await?;
                let id = client_id(frame_text(&list).unwrap_or_default(), &me.to_string());
                match id {
                    Some(id) => {
                        let r = conn
                            .call(&[b"CLIENT", b"UNBLOCK", id.as_bytes(), b"TIMEOUT"])
                            .await?;
                        Ok::<bool, ClientError>(matches!(r, OwnedFrame::Integer(1)))
                    }
                    None => Ok(false),
                }
            };
            if let Err(e) = timeout_at(until, unblocked)
                .await
                .unwrap_or(Err(ClientError::Timeout))
            {
                info!(error = %e, "could not unblock the client's command on the old master");
                return Err(Failed::Close(Close::SwitchBlocking));
            }
            let round = Instant::now() + Duration::from_millis(50);
            loop {
                let n = match timeout_at(round.min(until), self.backend.read(&mut buf)).await {
                    Err(_) if Instant::now() >= until => {
                        return Err(Failed::Close(Close::SwitchBlocking));
                    }
                    Err(_) => break, // unblock again
                    Ok(Ok(n)) if n > 0 => n,
                    Ok(_) => return Err(Failed::OldGone),
                };
                let mut rest = &buf[..n];
                while !rest.is_empty() {
                    match take_frame(&mut self.rep, &mut rest, &mut frame) {
                        Ok(true) => {}
                        Ok(false) => continue,
                        Err(_) => return Err(Failed::Close(Close::SwitchBlocking)),
                    }
                    let done = self.reply_base + self.rep.replies;
                    let what = frames::unblocked(&frame, done, target);
                    if what != Unblocked::Owed {
                        let timed_out = what == Unblocked::TimedOut;
                        if !timed_out {
                            out.extend_from_slice(&frame);
                            if let Some(c) = self.carry.as_mut() {
                                c.replies_done(done, self.rep.last_error);
                            }
                        }
                        // Nothing was sent after it: what may follow are pushes (tracking
                        // invalidations, superseded by the flush a tracking client gets after
                        // the move), possibly cut mid-frame; they stay behind.
                        if !self.send_client(&out, cfg.drain_timeout).await {
                            return Err(Failed::Close(Close::ClientClosed));
                        }
                        return Ok(timed_out);
                    }
                    if let Some(c) = self.carry.as_mut() {
                        c.replies_done(done, self.rep.last_error);
                    }
                    out.extend_from_slice(&frame);
                    frame.clear();
                }
            }
        }
    }
}

/// The client's half of a session, borrowed apart from its backend: what a replay on a new
/// backend writes to.
pub(super) struct ClientSide<'s> {
    pub(super) client: &'s mut Link,
    pub(super) replies: &'s mut Pending,
    pub(super) group: &'s crate::Group,
}

impl ClientSide<'_> {
    /// Write to the client what it is owed first, then `bytes`, within `limit`.
    async fn send(&mut self, bytes: &[u8], limit: Duration) -> bool {
        let write = async {
            if !self.replies.is_empty() {
                self.client.write_all(self.replies.bytes()).await?;
                *self.replies = Pending::default();
            }
            self.client.write_all(bytes).await
        };
        let ok = matches!(timeout(limit, write).await, Ok(Ok(())));
        if ok {
            let m = &self.group.metrics;
            m.client_bytes_sent_total.inc_by(bytes.len() as u64);
        }
        ok
    }
}

/// Re-create on `backend` (at `addr`) what the session carries (`carry`, in MONITOR or not, its
/// blocked command re-issued or not): the plan sent, its answers checked and swallowed, a
/// tracking client told to forget every key. Returns what the backend sent after the last
/// answer (the client's, to relay once the session is on this backend).
pub(super) async fn recreate(
    backend: &mut Link,
    side: &mut ClientSide<'_>,
    (carry, monitor, reissue): (&Option<Box<Carry>>, bool, bool),
    addr: SocketAddr,
) -> Result<Vec<u8>, Close> {
    let cfg = side.group.config();
    let mut leftover = Vec::new();
    // A session that carries nothing else may still be in MONITOR.
    let empty;
    let carry = match carry {
        Some(c) => c,
        None => {
            empty = Carry::new();
            &empty
        }
    };
    let plan = carry.plan(monitor, reissue, std::time::Instant::now());
    let tracking = carry.tracking_on() && carry.resp3;
    if !plan.bytes.is_empty() {
        let replay = replay(backend, side, &plan, &mut leftover);
        match timeout(cfg.connect_timeout, replay).await {
            Ok(Ok(())) => {}
            Ok(Err(Failed::Close(c))) => return Err(c),
            Ok(Err(Failed::OldGone)) | Err(_) => {
                info!(backend = %addr, "could not re-create the connection's state on the new master");
                return Err(Close::MigrateFailed);
            }
        }
    }
    if tracking && !side.send(INVALIDATE_ALL, cfg.drain_timeout).await {
        return Err(Close::ClientClosed);
    }
    Ok(leftover)
}

/// Send the plan to the new master and check its answers; frames meant for the client that
/// arrive meanwhile (pushes, messages) go to it, and what arrives after the last answer is
/// left in `leftover`.
async fn replay(
    backend: &mut Link,
    side: &mut ClientSide<'_>,
    plan: &Plan,
    leftover: &mut Vec<u8>,
) -> Result<(), Failed> {
    if backend.send(&plan.bytes).await.is_err() {
        return Err(Failed::OldGone);
    }
    if plan.replies.is_empty() && plan.confirmations == 0 {
        return Ok(()); // only a re-issued command, whose reply is the client's
    }
    let limit = side.group.config().drain_timeout;
    let mut t = ReplyTracker::new();
    let mut buf = vec![0u8; READ];
    let mut frame = Vec::new();
    let mut check = ReplayCheck::new(&plan.replies, plan.confirmations);
    loop {
        let n = match backend.read(&mut buf).await {
            Ok(n) if n > 0 => n,
            _ => return Err(Failed::OldGone),
        };
        let mut rest = &buf[..n];
        let mut out = Vec::new();
        while !rest.is_empty() {
            match take_frame(&mut t, &mut rest, &mut frame) {
                Ok(true) => {}
                Ok(false) => continue,
                Err(_) => return Err(Failed::Close(Close::MigrateFailed)),
            }
            match check.feed(&frame, t.last_error) {
                Replayed::Swallow => {}
                Replayed::ToClient => out.extend_from_slice(&frame),
                Replayed::Differs => {
                    let shown = String::from_utf8_lossy(&frame[..frame.len().min(120)]);
                    info!(answer = %shown.trim_end(), "the new master answered a replayed command differently");
                    return Err(Failed::Close(Close::MigrateFailed));
                }
            }
            frame.clear();
            if check.done() {
                leftover.extend_from_slice(rest);
                if !out.is_empty() && !side.send(&out, limit).await {
                    return Err(Failed::Close(Close::ClientClosed));
                }
                return Ok(());
            }
        }
        if !out.is_empty() && !side.send(&out, limit).await {
            return Err(Failed::Close(Close::ClientClosed));
        }
    }
}

/// Move the next piece of a frame from `rest` to `frame`, tracked by `t`: whether the frame is
/// now complete.
fn take_frame(
    t: &mut ReplyTracker,
    rest: &mut &[u8],
    frame: &mut Vec<u8>,
) -> Result<bool, crate::resp::ReplyError> {
    let used = t.feed_frame(rest)?;
    frame.extend_from_slice(&rest[..used]);
    *rest = &rest[used..];
    Ok(t.at_reply_boundary())
}

/// The id of the client connected from `addr`, in `CLIENT LIST` output.
fn client_id(list: &str, addr: &str) -> Option<String> {
    let want = format!("addr={addr}");
    list.lines()
        .find(|l| l.split(' ').any(|f| f == want))
        .and_then(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
        .map(str::to_owned)
}

/// Acting on a move: to a new generation, or on the same master when the connection was lost.
impl Session<'_> {
    /// Act on `Step::Move`.
    pub(super) async fn move_to(&mut self, addr: SocketAddr, generation: u64) -> Step {
        if generation == self.generation && self.backend_gone {
            return self.master_still_up(addr).await;
        }
        match self.migrate(addr, generation).await {
            Ok(()) => {
                self.group
                    .metrics
                    .migrations_total
                    .with_label_values(&["ok"])
                    .inc();
                self.deadline = None;
                self.gated = false;
                self.rechecked = false;
                if !self.held.is_empty() {
                    self.count_held("new_master");
                }
                Step::Again // release what is held to the new master now
            }
            Err(None) => {
                // Could not connect: the watcher re-checks; wait for it or the deadline.
                self.group.route.request_recheck();
                Step::Continue
            }
            Err(Some(close)) => {
                self.group
                    .metrics
                    .migrations_total
                    .with_label_values(&["failed"])
                    .inc();
                Step::Close(close)
            }
        }
    }

    /// The routed master closed this idle session's connection. If it still answers on a new
    /// one, it closed this one on purpose (`CLIENT KILL`, its `timeout`, a buffer limit), so the
    /// client's connection closes too, as it would directly. If it does not, it is going away:
    /// wait for the watcher's verdict (a new master to move to, or the deadline). A connect
    /// alone does not tell: a process being killed can still complete one (its listener closes
    /// after the connections), so the probe waits for an answer to `PING` (any reply, `-NOAUTH`
    /// included, means a live server).
    async fn master_still_up(&mut self, addr: SocketAddr) -> Step {
        if self.group.lane {
            // A replica behind the read port: whatever closed it, the read port re-makes the
            // connection (`read.rs` renews the lane once it has looked), or moves it.
            self.group.route.request_recheck();
            return Step::Continue;
        }
        let probe = async {
            let tls = self.group.settings().master_auth.tls.clone();
            let mut s = crate::tls::connect(addr, tls.as_deref(), Duration::ZERO).await?;
            s.send(b"PING\r\n").await?;
            let mut reply = [0u8; 1];
            let n = s.read(&mut reply).await?;
            Ok::<bool, std::io::Error>(n == 1 && matches!(reply[0], b'+' | b'-'))
        };
        if let Ok(Ok(true)) = timeout(self.group.config().connect_timeout, probe).await {
            debug!(backend = %addr, "the master closed this connection but answers on new ones");
            return Step::Close(Close::BackendClosed);
        }
        self.group.route.request_recheck();
        Step::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_id_is_found_by_address() {
        let list = "id=3 addr=127.0.0.1:5000 laddr=127.0.0.1:6379 fd=8 name=\nid=7 addr=127.0.0.1:5001 laddr=127.0.0.1:6379 fd=9\n";
        assert_eq!(client_id(list, "127.0.0.1:5001").as_deref(), Some("7"));
        assert_eq!(client_id(list, "127.0.0.1:500"), None);
    }
}
