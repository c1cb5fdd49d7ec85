//! A group's read port (`read-listen`): client connections spread over the group's healthy
//! replicas, least connections first, each one a 1:1 session to its replica.
//!
//! Each healthy replica gets a *lane*: a route of its own (a [`Group`] whose "master" is the
//! replica) that the read port's sessions connect under, so they get what master sessions get
//! from a route: when the lane's replica stops being healthy (down, disconnected, lagging past
//! `read-max-lag`, promoted), the lane is retired and its route moves to another healthy replica
//! (or to the master, with `read-fallback = "master"`), and its sessions move there at a request
//! boundary like master sessions at a failover. A retired lane takes no new client and goes
//! when its last one does.
//!
//! Health (`read/health.rs`, pure) is surveyed every poll interval, at every route change of the
//! group, and whenever a lane's session asks (its replica closed on it). With no healthy replica
//! a new read client is served by the master, or refused, as `read-fallback` says. Writes on the
//! read port get the replica's own `-READONLY`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use arc_swap::ArcSwap;
use redis_protocol::resp2::types::OwnedFrame;
use tokio::sync::Notify;
use tokio::time::{MissedTickBehavior, interval};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

pub mod health;

use crate::Group;
use crate::config::{GroupConfig, HostPort, ReadFallback};
use crate::group::ReadSide;
use crate::sentinel::client::{self, ClientError, RespConn, entries, frame_text};
use health::{SentinelReplica, parse_master_replication};

/// A group's read port: its lanes, read lock-free by the listener.
pub struct ReadPort {
    pub group: Arc<Group>,
    lanes: ArcSwap<Vec<Arc<Lane>>>,
    /// Survey now (a lane's session lost its replica, or a sentinel event).
    nudge: Notify,
}

/// The sessions of one replica (see the module doc).
pub struct Lane {
    /// The replica the lane was made for.
    pub replica: SocketAddr,
    pub group: Arc<Group>,
    retired: AtomicBool,
    /// A session lost its replica connection: renew the lane if the replica is still healthy.
    renew: AtomicBool,
    /// Read clients on this lane now.
    clients: AtomicUsize,
    /// Ends the task that forwards its sessions' re-check requests.
    stop: CancellationToken,
}

impl Drop for Lane {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A read client counted on its lane for as long as it lives.
pub struct LaneClient(Arc<Lane>);

impl Drop for LaneClient {
    fn drop(&mut self) {
        self.0.clients.fetch_sub(1, Ordering::Relaxed);
    }
}

impl LaneClient {
    pub fn group(&self) -> &Arc<Group> {
        &self.0.group
    }
}

impl ReadPort {
    pub fn new(group: Arc<Group>) -> ReadPort {
        ReadPort {
            group,
            lanes: ArcSwap::from_pointee(Vec::new()),
            nudge: Notify::new(),
        }
    }

    /// The lane for a new read client: of the open lanes, the one whose replica has the fewest
    /// read clients (counting retired lanes that moved there). None: no healthy replica.
    pub fn pick(&self) -> Option<LaneClient> {
        let lanes = self.lanes.load();
        let lane = lanes
            .iter()
            .filter(|l| !l.retired.load(Ordering::Relaxed) && l.group.route.load().ready())
            .min_by_key(|l| clients_on(&lanes, l.group.route.load().master))?;
        lane.clients.fetch_add(1, Ordering::Relaxed);
        Some(LaneClient(lane.clone()))
    }

    /// Survey now.
    pub fn nudge(&self) {
        self.nudge.notify_one();
    }

    /// Bring the lanes in line with the healthy replicas (see the module doc).
    fn apply(self: &Arc<Self>, healthy: &[SocketAddr], master: Option<SocketAddr>) {
        let fallback = match self.group.config().read_fallback {
            ReadFallback::Master => master,
            ReadFallback::Refuse => None,
        };
        let mut lanes: Vec<Arc<Lane>> = self.lanes.load().to_vec();
        for l in &lanes {
            if !l.retired.load(Ordering::Relaxed) && !healthy.contains(&l.replica) {
                info!(group = %self.group.name, replica = %l.replica, "replica leaves the read pool");
                l.retired.store(true, Ordering::Relaxed);
            }
        }
        // Where a retired lane's sessions go: the healthy replica with the fewest of them.
        for l in lanes.iter().filter(|l| l.retired.load(Ordering::Relaxed)) {
            let now = l.group.route.load().master;
            if now.is_some_and(|a| healthy.contains(&a)) {
                continue;
            }
            let to = healthy
                .iter()
                .copied()
                .min_by_key(|a| clients_on(&lanes, Some(*a)))
                .or(fallback);
            match to {
                Some(addr) if Some(addr) != now => {
                    debug!(group = %self.group.name, from = ?now, to = %addr, "read lane moves");
                    l.group.route.set_master(addr);
                }
                Some(_) => {}
                None => l.group.route.clear_master(),
            }
        }
        // A session lost its connection to a replica that is still healthy: new connections.
        for l in &lanes {
            let now = l.group.route.load().master;
            if l.renew.swap(false, Ordering::Relaxed) && now.is_some_and(|a| healthy.contains(&a)) {
                debug!(group = %self.group.name, replica = ?now, "read lane renewed");
                l.group.route.renew();
            }
        }
        lanes.retain(|l| {
            !(l.retired.load(Ordering::Relaxed) && l.clients.load(Ordering::Relaxed) == 0)
        });
        for addr in healthy {
            if lanes
                .iter()
                .any(|l| l.replica == *addr && !l.retired.load(Ordering::Relaxed))
            {
                continue;
            }
            info!(group = %self.group.name, replica = %addr, "replica joins the read pool");
            lanes.push(self.lane(*addr));
        }
        self.lanes.store(Arc::new(lanes));
    }

    fn lane(self: &Arc<Self>, replica: SocketAddr) -> Arc<Lane> {
        let settings = self.group.settings();
        let lane_settings = GroupConfig {
            name: format!("{}:read", self.group.name),
            read_listen: None,
            ..(*settings).clone()
        };
        let group = Arc::new(Group::new_lane(self.group.shared.clone(), lane_settings));
        group.route.set_master(replica);
        let stop = CancellationToken::new();
        let lane = Arc::new(Lane {
            replica,
            group,
            retired: AtomicBool::new(false),
            renew: AtomicBool::new(false),
            clients: AtomicUsize::new(0),
            stop: stop.clone(),
        });
        // A lane's session that lost its replica connection asks for a re-check: survey now,
        // then renew the lane (or move it).
        let (port, weak) = (Arc::downgrade(self), Arc::downgrade(&lane));
        tokio::spawn(async move {
            loop {
                let Some(route_of) = weak.upgrade().map(|l| l.group.clone()) else {
                    return;
                };
                tokio::select! {
                    _ = route_of.route.recheck_requested() => {}
                    _ = stop.cancelled() => return,
                }
                if let Some(l) = weak.upgrade() {
                    l.renew.store(true, Ordering::Relaxed);
                }
                match port.upgrade() {
                    Some(p) => p.nudge(),
                    None => return,
                }
            }
        });
        lane
    }
}

impl ReadSide for ReadPort {
    fn nudge(&self) {
        ReadPort::nudge(self);
    }

    /// The replicas with an open lane now (for /status).
    fn replicas(&self) -> Vec<(SocketAddr, usize)> {
        self.lanes
            .load()
            .iter()
            .filter(|l| !l.retired.load(Ordering::Relaxed))
            .map(|l| (l.replica, l.clients.load(Ordering::Relaxed)))
            .collect()
    }
}

/// Read clients on `addr` now: on every lane routed there, retired ones included.
fn clients_on(lanes: &[Arc<Lane>], addr: Option<SocketAddr>) -> usize {
    lanes
        .iter()
        .filter(|l| l.group.route.load().master == addr)
        .map(|l| l.clients.load(Ordering::Relaxed))
        .sum()
}

/// Keep the read port's lanes in line with the group's healthy replicas until `stop`.
pub async fn run(read: Arc<ReadPort>, stop: CancellationToken) {
    let mut tick = interval(read.group.config().poll_interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut changes = read.group.route.subscribe();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
            _ = read.nudge.notified() => {}
            r = changes.changed() => if r.is_err() { break },
        }
        let master = read.group.route.load().master;
        match survey(&read.group, master).await {
            Ok(healthy) => read.apply(&healthy, master),
            Err(e) => debug!(group = %read.group.name, error = %e, "read port survey failed"),
        }
    }
    // Close what the lanes hold: their sessions close with the group's own (same stop token).
    read.lanes.store(Arc::new(Vec::new()));
}

/// The healthy replicas of `group` now: Sentinel's view and the master's (see `health.rs`).
async fn survey(group: &Group, master: Option<SocketAddr>) -> Result<Vec<SocketAddr>, ClientError> {
    let Some(master) = master else {
        return Ok(Vec::new());
    };
    let cfg = group.config();
    let settings = group.settings();
    let t = cfg.sentinel_timeout;
    let mut replicas = None;
    let mut last = ClientError::Timeout;
    for s in &settings.sentinels {
        match sentinel_replicas(s, &group.master_name, &settings.sentinel_auth, t).await {
            Ok(r) => {
                replicas = Some(r);
                break;
            }
            Err(e) => last = e,
        }
    }
    let Some(replicas) = replicas else {
        return Err(last);
    };
    let mut conn = RespConn::connect_addr(master, &settings.master_auth, t).await?;
    let info = conn.call(&[b"INFO", b"replication"]).await?;
    let info = parse_master_replication(frame_text(&info).unwrap_or(""));
    let mut out = Vec::new();
    for hp in health::healthy(&replicas, &info, cfg.read_max_lag) {
        if let Ok(addr) = client::resolve(&hp, t).await
            && addr != master
        {
            out.push(addr);
        }
    }
    Ok(out)
}

async fn sentinel_replicas(
    sentinel: &HostPort,
    name: &str,
    auth: &crate::config::Auth,
    t: std::time::Duration,
) -> Result<Vec<SentinelReplica>, ClientError> {
    let mut conn = RespConn::connect(sentinel, auth, t).await?;
    let reply = conn
        .call(&[b"SENTINEL", b"replicas", name.as_bytes()])
        .await?;
    Ok(parse_replicas(&reply))
}

/// The entries of a `SENTINEL replicas` reply (flat field/value arrays).
pub fn parse_replicas(reply: &OwnedFrame) -> Vec<SentinelReplica> {
    entries(reply)
        .filter_map(|entry| {
            let field = |name: &str| entry.field(name);
            Some(SentinelReplica {
                addr: HostPort {
                    host: field("ip")?.to_string(),
                    port: field("port")?.parse().ok()?,
                },
                flags: field("flags").unwrap_or("").to_string(),
                link_ok: field("master-link-status") == Some("ok"),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> OwnedFrame {
        OwnedFrame::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn parses_sentinel_replicas() {
        let entry = |port: &str, flags: &str, link: &str| {
            OwnedFrame::Array(
                [
                    "name",
                    "x",
                    "ip",
                    "10.0.0.2",
                    "port",
                    port,
                    "flags",
                    flags,
                    "master-link-status",
                    link,
                ]
                .iter()
                .map(|s| bulk(s))
                .collect(),
            )
        };
        let reply = OwnedFrame::Array(vec![
            entry("7001", "slave", "ok"),
            entry("7002", "s_down,slave,disconnected", "err"),
            OwnedFrame::Null,
        ]);
        let r = parse_replicas(&reply);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].addr.to_string(), "10.0.0.2:7001");
        assert!(r[0].link_ok && !r[1].link_ok);
        assert_eq!(r[1].flags, "s_down,slave,disconnected");
    }
}
