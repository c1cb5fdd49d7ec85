//! A group's replication lag, as its verified master reports it: how much an unplanned failover
//! would lose now. Redis replicates asynchronously; what the master acknowledged to clients and
//! no replica has yet is gone once a replica is promoted. Every 5 s the master's `INFO
//! replication` is read (on a connection of its own, named `sentinel-proxy-lag`) and three
//! gauges set: the replicas it reports online, and for the most up-to-date of them (the one
//! Sentinel would promote, priorities aside) the bytes of the replication stream it has not
//! acknowledged and the seconds since it last acknowledged. With no master, or a master that
//! does not answer, the gauges keep their last values and the reason is logged at debug level.
//! The arithmetic is pure (`of`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::{MissedTickBehavior, interval};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::Group;
use crate::read::health::{MasterReplication, parse_master_replication};
use crate::sentinel::client::{RespConn, frame_text};

/// What the gauges show.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lag {
    pub online: usize,
    /// Of the online replica with the largest acknowledged offset; 0 with none online.
    pub bytes: u64,
    pub ack_age: u64,
}

/// The lag `info` shows.
pub fn of(info: &MasterReplication) -> Lag {
    let online = info.replicas.iter().filter(|r| r.online);
    let best = online.clone().max_by_key(|r| r.offset);
    Lag {
        online: online.count(),
        bytes: best.map_or(0, |r| info.offset.saturating_sub(r.offset)),
        ack_age: best.map_or(0, |r| r.ack_age.min(i64::MAX as u64)),
    }
}

/// How often the master is asked. Sentinel itself asks every 10 s; the question shows in the
/// master's `MONITOR` and `SLOWLOG` as Sentinel's do, so not more often than needed for a
/// gauge that alerts over minutes.
const EVERY: Duration = Duration::from_secs(5);

/// The name of the connection that asks (`CLIENT LIST` on the master tells it apart).
const NAME: &[u8] = b"sentinel-proxy-lag";

/// Read the master's replication every [`EVERY`] and at every route change until `stop`, on one
/// connection kept open while the master stays the same.
pub async fn run(group: Arc<Group>, stop: CancellationToken) {
    let mut tick = interval(EVERY);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // A new master is asked at once (and the connection to the old one let go).
    let mut changes = group.route.subscribe();
    let mut conn: Option<(SocketAddr, RespConn)> = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
            r = changes.changed() => if r.is_err() { return },
        }
        let Some(master) = group.route.load().master else {
            conn = None;
            continue;
        };
        let t = group.config().sentinel_timeout;
        if conn.as_ref().is_none_or(|(at, _)| *at != master) {
            let settings = group.settings();
            conn = match RespConn::connect_addr(master, &settings.master_auth, t).await {
                Ok(mut c) => {
                    // Only a courtesy: any answer will do.
                    let _ = c.call(&[b"CLIENT", b"SETNAME", NAME]).await;
                    Some((master, c))
                }
                Err(e) => {
                    debug!(group = %group.name, error = %e, "replication lag: no connection");
                    None
                }
            };
        }
        let Some((_, c)) = conn.as_mut() else {
            continue;
        };
        match c.call(&[b"INFO", b"replication"]).await {
            Ok(reply) => {
                let lag = of(&parse_master_replication(frame_text(&reply).unwrap_or("")));
                let m = &group.metrics;
                m.replicas_online.set(lag.online as i64);
                m.replication_lag_bytes.set(lag.bytes as i64);
                m.replication_ack_age_seconds.set(lag.ack_age as i64);
            }
            Err(e) => {
                debug!(group = %group.name, error = %e, "replication lag: no answer");
                conn = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_most_up_to_date_online_replica_sets_the_lag() {
        let info = parse_master_replication(
            "# Replication\r\nrole:master\r\nconnected_slaves:3\r\n\
             slave0:ip=10.0.0.2,port=6379,state=online,offset=900,lag=1\r\n\
             slave1:ip=10.0.0.3,port=6379,state=online,offset=950,lag=0\r\n\
             slave2:ip=10.0.0.4,port=6379,state=wait_bgsave,offset=1000,lag=0\r\n\
             master_repl_offset:1000\r\n",
        );
        assert_eq!(
            of(&info),
            Lag {
                online: 2,
                bytes: 50,
                ack_age: 0
            }
        );
        let alone = parse_master_replication("role:master\r\nmaster_repl_offset:77\r\n");
        assert_eq!(
            of(&alone),
            Lag {
                online: 0,
                bytes: 0,
                ack_age: 0
            }
        );
    }
}
