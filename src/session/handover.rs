//! A live upgrade's sessions (`upgrade.rs` moves them between the processes): which session can
//! be handed to the successor, what it takes with it, and how the successor resumes it on the
//! client's same socket.
//!
//! **Handing over** (the old process, shutting down because a successor that takes sessions
//! serves now): a session at its shutdown boundary (nothing owed, nothing half-sent either way,
//! no reply of a subscriber's half-relayed) sends a copy of its client's socket and what it
//! carries, waits until the successor has them, and ends by dropping its own descriptor: the
//! socket stays open in the successor and the client sees no close. Bytes the client sends
//! meanwhile wait in the socket for the successor to read. A pooled client in its pool takes
//! its pool's state (user, protocol, database) and its name; a session with a connection of its
//! own takes its carry (`carry::Carried`: state, name, tracking, subscriptions).
//!
//! Not handed over (closed at the boundary, as before): TLS clients (their TLS state lives in
//! this process), a transaction or WATCH open, MONITOR, a replication stream or byte pipe,
//! `CLIENT REPLY OFF|SKIP`, replies held for durable acks, a pin or a request answered by the
//! proxy under way, a read port's clients, and a client still at the proxy's login gate.
//!
//! **Resuming** (the successor): a pooled client starts in the pool of its state, with its
//! name; a dedicated session connects to the master and re-creates its carry there as a
//! failover's move does (`migrate::recreate`), then serves, starting with the bytes the old
//! process had read and not sent. Messages published to a subscriber between the old process's
//! last read and the new subscription are not delivered (Redis's own at-most-once, as at any
//! reconnect).

use std::os::fd::{AsFd, OwnedFd};
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::{Instant, timeout_at};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::carry::{Carried, Carry};
use super::dedicated::{Ended, Session, Step};
use super::io::{SCRATCH, read_scratch};
use super::migrate::{ClientSide, recreate};
use super::{Accepted, Close, Lend, closed, closed_only, dedicated, pooled};
use crate::Group;
use crate::tls::Link;

/// A session handed to the successor: its group (by name), how to resume it, and the client's
/// bytes this process read but did not send on.
#[derive(Debug, Serialize, Deserialize)]
pub struct Handed {
    pub group: String,
    pub resume: Resume,
    #[serde(default)]
    pub first: Vec<u8>,
}

/// What the successor re-creates.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Resume {
    /// A pooled client in its pool: the pool's state (user, protocol, database) and its name.
    Pooled {
        state: Vec<Vec<u8>>,
        name: Option<Vec<u8>>,
    },
    /// A session with a connection of its own, and what it carried.
    Dedicated(Carried),
}

/// A session on its way to the successor, with the client's socket; `done` is told whether the
/// successor has it (`upgrade.rs` sends it).
pub struct Outgoing {
    pub handed: Handed,
    pub fd: OwnedFd,
    pub done: tokio::sync::oneshot::Sender<bool>,
}

/// Where sessions go once a successor took over and asked for them (set once; see
/// [`Handoff::send`]).
#[derive(Default)]
pub struct Handoff {
    tx: OnceLock<mpsc::Sender<Outgoing>>,
}

impl Handoff {
    /// A successor takes sessions from now on: what sessions hand over comes out here (once).
    pub fn open(&self) -> Option<mpsc::Receiver<Outgoing>> {
        let (tx, rx) = mpsc::channel();
        self.tx.set(tx).ok().map(|()| rx)
    }

    /// A successor takes sessions: a session at its boundary in a shutdown hands itself over.
    pub fn on(&self) -> bool {
        self.tx.get().is_some()
    }

    /// Hand a session over (`fd`: a copy of the client's socket). True once the successor has
    /// it: the session then only drops its own descriptor (no shutdown, no close of the socket).
    pub async fn send(&self, handed: Handed, fd: OwnedFd) -> bool {
        let Some(tx) = self.tx.get() else {
            return false;
        };
        let (done, answer) = tokio::sync::oneshot::channel();
        if tx.send(Outgoing { handed, fd, done }).is_err() {
            return false;
        }
        answer.await.unwrap_or(false)
    }
}

/// How long a subscriber's reply half-relayed may take to complete before the session closes
/// instead of being handed over.
const FINISH_FRAME: Duration = Duration::from_secs(1);

/// Whether clients of `group` can be handed over at all. (A client of the proxy's own users
/// is handed over once past the gate: it logged in here, and the successor, given its socket by
/// this process alone, serves it as logged in.)
fn handable(group: &Group) -> bool {
    group.shared.handoff.on() && !group.lane
}

impl Session<'_> {
    /// At its shutdown boundary: hand this session to the successor, if one takes sessions and
    /// this one can go (see the module doc). True once the successor has it.
    pub(super) async fn hand_over(&mut self, lend: &Lend<'_>) -> bool {
        if !handable(self.group) {
            return false;
        }
        let req = &self.req;
        let why_not = if !matches!(self.client, Link::Plain(_)) {
            Some("tls")
        } else if self.pipe.is_some() || req.replication {
            Some("pipe")
        } else if req.monitor {
            Some("monitor")
        } else if req.in_transaction || req.multi {
            Some("transaction")
        } else if req.quit || self.client_eof {
            Some("closing")
        } else if !req.replies_on() {
            Some("client_reply")
        } else if self.in_flight() != 0 || !self.unsent.is_empty() {
            Some("in_flight")
        } else if self.protocol_error.is_some() {
            Some("protocol_error")
        } else if !self.hold_empty() {
            Some("acks")
        } else {
            None
        };
        if let Some(why) = why_not {
            debug!(reason = why, "not handed over: closed at its boundary");
            return false;
        }
        if !self.rep.at_reply_boundary() && !self.finish_frame().await {
            return false;
        }
        if !self.replies.is_empty() || self.client.wants_flush() {
            self.deliver_replies().await;
            if !self.replies.is_empty() {
                return false;
            }
        }
        let carried = match &self.carry {
            Some(c) => match c.export() {
                Some(c) => c,
                None => {
                    debug!(reason = "carry", "not handed over: closed at its boundary");
                    return false;
                }
            },
            None => Carried::default(),
        };
        let resume = match (lend.span, self.carry.as_ref().map(|c| c.pool_state())) {
            // A pooled client on a connection lent for a span that is over: back to a pool.
            (true, None) => Resume::Pooled {
                state: Vec::new(),
                name: lend.name.map(<[u8]>::to_vec),
            },
            (true, Some(Some(state))) => Resume::Pooled {
                state,
                name: lend.name.map(<[u8]>::to_vec),
            },
            _ => Resume::Dedicated(carried),
        };
        let Link::Plain(tcp) = &self.client else {
            return false;
        };
        let Ok(fd) = tcp.as_fd().try_clone_to_owned() else {
            return false;
        };
        let handed = Handed {
            group: self.group.name.clone(),
            resume,
            first: self.held.bytes().to_vec(),
        };
        self.group.shared.handoff.send(handed, fd).await
    }

    /// A subscriber's frame partly relayed: relay the rest (and whatever comes with it), so the
    /// successor starts the client's stream at a frame boundary.
    async fn finish_frame(&mut self) -> bool {
        let until = Instant::now() + FINISH_FRAME;
        while !self.rep.at_reply_boundary() {
            if self.backend_gone || !self.replies.is_empty() {
                self.deliver_replies().await;
                if self.backend_gone || !self.replies.is_empty() {
                    return false;
                }
            }
            let step = match timeout_at(until, read_scratch(&mut self.backend)).await {
                Ok(None) => Step::Continue,
                Ok(Some(Ok(n))) if n > 0 => SCRATCH.with_borrow(|s| self.relay_reply(&s[..n])),
                _ => return false,
            };
            if let Step::Close(_) = step {
                return false;
            }
        }
        true
    }

    /// A session handed over by the predecessor, on its new backend (at `addr`): take what it
    /// carried and re-create it there, as a move does, then serve it, starting with `first`.
    pub(super) async fn resume(
        &mut self,
        carried: &Carried,
        addr: std::net::SocketAddr,
        first: &[u8],
        shutdown: &CancellationToken,
    ) -> Ended {
        let carry = Carry::import(carried);
        self.req.resp3 = carry.resp3;
        self.req.pubsub = carried.pubsub;
        self.carry = (!carry.is_empty() || carried.pubsub).then(|| Box::new(carry));
        self.sync_carrier();
        let mut side = ClientSide {
            client: &mut self.client,
            replies: &mut self.replies,
            group: self.group,
        };
        let carry = (&self.carry, false, false);
        let leftover = match recreate(&mut self.backend, &mut side, carry, addr).await {
            Ok(leftover) => leftover,
            Err(close) => return Ended::Closed(close),
        };
        if !leftover.is_empty()
            && let Step::Close(c) = self.relay_reply(&leftover)
        {
            return Ended::Closed(c);
        }
        if !first.is_empty() {
            self.take_request_bytes(first);
        }
        self.run(shutdown, || {}).await
    }
}

/// A pooled client at its shutdown boundary in its pool: hand it to the successor with its
/// pool's state, its name and the requests it read and did not send. How it ended: handed over,
/// or closed as at any shutdown.
pub(super) async fn hand_over_pooled(
    session: Box<pooled::Pooled<'_>>,
    group: &Group,
    state: &[Vec<u8>],
) -> Close {
    if !handable(group) {
        return Close::Shutdown;
    }
    let Some(pooled::AtRest {
        client,
        name,
        first,
    }) = session.at_rest()
    else {
        return Close::Shutdown;
    };
    let Link::Plain(tcp) = &client else {
        return Close::Shutdown; // (not reached: `at_rest` gives only plain clients)
    };
    let Ok(fd) = tcp.as_fd().try_clone_to_owned() else {
        return Close::Shutdown;
    };
    let handed = Handed {
        group: group.name.clone(),
        resume: Resume::Pooled {
            state: state.to_vec(),
            name,
        },
        first,
    };
    if group.shared.handoff.send(handed, fd).await {
        return Close::HandedOver;
    }
    // The successor did not take it: close it here, as at any shutdown.
    let mut client = client;
    let close = tokio::io::AsyncWriteExt::shutdown(&mut client);
    let _ = tokio::time::timeout(Duration::from_secs(1), close).await;
    Close::Shutdown
}

/// Serve a client the predecessor handed over (`upgrade.rs`), on its same socket.
pub async fn resume(
    stream: std::net::TcpStream,
    handed: Handed,
    group: Arc<Group>,
    shutdown: CancellationToken,
) {
    group.metrics.sessions_resumed_total.inc();
    let Handed { resume, first, .. } = handed;
    let (state, name) = match resume {
        Resume::Pooled { state, name } if group.config().pool > 0 => {
            let resumed = Some(Box::new((state, name, first)));
            return super::serve_pooled(stream, group, shutdown, resumed).await;
        }
        Resume::Pooled { state, name } => (state, name),
        Resume::Dedicated(carried) => {
            return resume_dedicated(stream, carried, first, group, shutdown).await;
        }
    };
    // A pooled client resumed by a 1:1 proxy: its own connection, with that state and name.
    let mut carried = Carried {
        state,
        ..Carried::default()
    };
    if let Some(name) = name {
        carried.state.push(pooled::setname(&name));
    }
    resume_dedicated(stream, carried, first, group, shutdown).await
}

async fn resume_dedicated(
    stream: std::net::TcpStream,
    carried: Carried,
    first: Vec<u8>,
    group: Arc<Group>,
    shutdown: CancellationToken,
) {
    let Some(client) = stream.link(&group) else {
        return;
    };
    let m = &group.metrics;
    m.client_connections.inc();
    m.client_connections_total.inc();
    let lend = Lend {
        carried: Some(&carried),
        ..Lend::NONE
    };
    let served = dedicated(
        client,
        &group,
        &shutdown,
        (&first, false),
        || {},
        None,
        &lend,
    );
    let close = closed_only(Box::pin(served).await);
    closed(&group, close);
}
