//! Which replicas may serve the read port (pure: the two answers in, the healthy addresses out).
//!
//! Sentinel's view (`SENTINEL replicas NAME`): not `s_down`, `o_down` or `disconnected`, and
//! `master-link-status` ok. The master's view (`INFO replication`): the replica is `online`, has
//! acknowledged an offset within `max_lag` bytes of the master's own, and acknowledged it lately
//! (replicas acknowledge every second; a replica that stopped, e.g. SIGSTOP, stops acknowledging
//! before its offset falls behind on an idle master). A replica must pass both.

use crate::config::HostPort;

/// One entry of `SENTINEL replicas`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SentinelReplica {
    pub addr: HostPort,
    pub flags: String,
    pub link_ok: bool,
}

/// The master's `INFO replication`: its offset and each replica's line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MasterReplication {
    pub offset: u64,
    pub replicas: Vec<ReplicaLine>,
}

/// `slaveN:ip=…,port=…,state=online,offset=…,lag=…`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaLine {
    pub addr: HostPort,
    pub online: bool,
    pub offset: u64,
    /// Seconds since its last acknowledgement.
    pub ack_age: u64,
}

/// A replica that acknowledged nothing for longer than this is not serving.
pub const MAX_ACK_AGE_SECS: u64 = 3;

/// The replicas both views call healthy, in Sentinel's order.
pub fn healthy(
    sentinel: &[SentinelReplica],
    master: &MasterReplication,
    max_lag: u64,
) -> Vec<HostPort> {
    sentinel
        .iter()
        .filter(|r| {
            r.link_ok
                && !r
                    .flags
                    .split(',')
                    .any(|f| matches!(f, "s_down" | "o_down" | "disconnected"))
        })
        .filter(|r| {
            master.replicas.iter().any(|l| {
                l.addr == r.addr
                    && l.online
                    && master.offset.saturating_sub(l.offset) <= max_lag
                    && l.ack_age <= MAX_ACK_AGE_SECS
            })
        })
        .map(|r| r.addr.clone())
        .collect()
}

/// Parse `INFO replication` text.
pub fn parse_master_replication(info: &str) -> MasterReplication {
    let mut out = MasterReplication::default();
    for line in info.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("master_repl_offset:") {
            out.offset = v.parse().unwrap_or(0);
            continue;
        }
        let Some((key, fields)) = line.split_once(':') else {
            continue;
        };
        if !key.starts_with("slave") || !key[5..].chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        let field = |name: &str| {
            fields
                .split(',')
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
        };
        let (Some(ip), Some(port)) = (field("ip"), field("port").and_then(|p| p.parse().ok()))
        else {
            continue;
        };
        out.replicas.push(ReplicaLine {
            addr: HostPort {
                host: ip.to_string(),
                port,
            },
            online: field("state") == Some("online"),
            offset: field("offset").and_then(|o| o.parse().ok()).unwrap_or(0),
            ack_age: field("lag")
                .and_then(|l| l.parse().ok())
                .unwrap_or(u64::MAX),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hp(port: u16) -> HostPort {
        HostPort {
            host: "127.0.0.1".into(),
            port,
        }
    }

    const INFO: &str = "# Replication\r\nrole:master\r\nconnected_slaves:2\r\n\
        slave0:ip=127.0.0.1,port=7001,state=online,offset=1000,lag=0\r\n\
        slave1:ip=127.0.0.1,port=7002,state=online,offset=400,lag=1\r\n\
        master_failover_state:no-failover\r\nmaster_repl_offset:1010\r\n";

    fn sentinel(port: u16, flags: &str, link_ok: bool) -> SentinelReplica {
        SentinelReplica {
            addr: hp(port),
            flags: flags.into(),
            link_ok,
        }
    }

    #[test]
    fn parses_info_replication() {
        let m = parse_master_replication(INFO);
        assert_eq!(m.offset, 1010);
        assert_eq!(m.replicas.len(), 2);
        assert_eq!(
            m.replicas[1],
            ReplicaLine {
                addr: hp(7002),
                online: true,
                offset: 400,
                ack_age: 1
            }
        );
    }

    #[test]
    fn lag_over_the_bound_and_sentinel_flags_exclude() {
        let m = parse_master_replication(INFO);
        let both = [sentinel(7001, "slave", true), sentinel(7002, "slave", true)];
        assert_eq!(healthy(&both, &m, 1000), vec![hp(7001), hp(7002)]);
        // 610 bytes behind: out with a 500-byte bound.
        assert_eq!(healthy(&both, &m, 500), vec![hp(7001)]);
        let down = [
            sentinel(7001, "slave,s_down", true),
            sentinel(7002, "slave", false),
        ];
        assert!(healthy(&down, &m, 1000).is_empty());
        let disconnected = [sentinel(7001, "slave,disconnected", true)];
        assert!(healthy(&disconnected, &m, 1000).is_empty());
        // Known to Sentinel but not to the master (it restarted, or it follows another): out.
        assert!(healthy(&[sentinel(7003, "slave", true)], &m, 1000).is_empty());
    }

    #[test]
    fn a_replica_that_stopped_acknowledging_is_out() {
        let info = INFO.replace("offset=1000,lag=0", "offset=1010,lag=7");
        let m = parse_master_replication(&info);
        assert_eq!(
            healthy(&[sentinel(7001, "slave", true)], &m, 1 << 20),
            Vec::<HostPort>::new()
        );
    }
}
