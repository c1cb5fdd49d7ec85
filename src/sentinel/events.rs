//! Parsing of Sentinel pub/sub events (pure functions, no I/O).
//!
//! Sentinel publishes each event on a channel named after it, with a text payload:
//! - `+switch-master`: `<name> <old-ip> <old-port> <new-ip> <new-port>`
//! - instance events (`%@` in Sentinel's source): `<type> <name> <ip> <port>`, followed for a
//!   replica or sentinel by ` @ <master-name> <master-ip> <master-port>`; e.g. `+promoted-slave`:
//!   `slave 10.0.0.2:6379 10.0.0.2 6379 @ mymaster 10.0.0.1 6379`.
//!
//! Only the failover-relevant events of *our* master group become an [`Event`]; everything else
//! is still counted by its channel name (from a fixed list, so metric labels stay bounded).

use crate::config::HostPort;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The sentinel adopted a new master address (end of a failover, or learned from a peer).
    SwitchMaster,
    /// The leader saw the selected replica report `role:master`: the earliest moment it is writable.
    PromotedSlave,
    /// A failover started (`+try-failover`).
    FailoverStarted,
    /// The leader chose the replica to promote (`+selected-slave`,
    /// `+failover-state-send-slaveof-noone`); `addr` is that replica.
    SlaveSelected,
    /// `-failover-abort-*`.
    FailoverAborted,
    /// `+failover-end`, `+failover-end-for-timeout`.
    FailoverEnded,
    /// `+sdown`/`+odown` of the master itself.
    MasterDown,
    /// `-sdown`/`-odown` of the master itself.
    MasterUp,
}

/// A failover-relevant event about one master group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub kind: Kind,
    pub master_name: String,
    /// The address the event names as the (new) master, where it names one.
    pub addr: Option<HostPort>,
    /// The master the event is about, as the sentinel knew it (replica events say
    /// `@ <name> <ip> <port>`); tells a stale event from a current one.
    pub about: Option<HostPort>,
}

/// The event channels counted by name in metrics; anything else counts as `other`.
pub const KNOWN_CHANNELS: &[&str] = &[
    "+switch-master",
    "+promoted-slave",
    "+selected-slave",
    "+try-failover",
    "+elected-leader",
    "+failover-state-select-slave",
    "+failover-state-send-slaveof-noone",
    "+failover-state-wait-promotion",
    "+failover-state-reconf-slaves",
    "+failover-end",
    "+failover-end-for-timeout",
    "-failover-abort-not-elected",
    "-failover-abort-no-good-slave",
    "-failover-abort-slave-timeout",
    "+sdown",
    "-sdown",
    "+odown",
    "-odown",
    "+slave",
    "+sentinel",
    "+reboot",
    "+convert-to-slave",
    "+slave-reconf-sent",
    "+slave-reconf-inprog",
    "+slave-reconf-done",
    "+new-epoch",
    "+vote-for-leader",
    "+tilt",
    "-tilt",
    "+role-change",
    "-role-change",
    "+config-update-from",
    "-dup-sentinel",
    "+fix-slave-config",
];

/// The metric label for a channel.
pub fn channel_label(channel: &str) -> &'static str {
    KNOWN_CHANNELS
        .iter()
        .find(|c| **c == channel)
        .copied()
        .unwrap_or("other")
}

/// Parse one published event; `None` for events that do not concern a master group's routing.
pub fn parse(channel: &str, payload: &str) -> Option<Event> {
    let words: Vec<&str> = payload.split_whitespace().collect();
    if channel == "+switch-master" {
        if words.len() != 5 {
            return None;
        }
        return Some(Event {
            kind: Kind::SwitchMaster,
            master_name: words[0].to_string(),
            addr: host_port(words[3], words[4]),
            about: host_port(words[1], words[2]),
        });
    }
    let kind = match channel {
        "+promoted-slave" => Kind::PromotedSlave,
        "+try-failover" => Kind::FailoverStarted,
        "+selected-slave" | "+failover-state-send-slaveof-noone" => Kind::SlaveSelected,
        "+failover-end" | "+failover-end-for-timeout" => Kind::FailoverEnded,
        c if c.starts_with("-failover-abort") => Kind::FailoverAborted,
        "+sdown" | "+odown" => Kind::MasterDown,
        "-sdown" | "-odown" => Kind::MasterUp,
        _ => return None,
    };
    let inst = instance(&words)?;
    if matches!(kind, Kind::MasterDown | Kind::MasterUp) && inst.kind != "master" {
        return None;
    }
    let addr = match kind {
        // For a replica event the instance itself is the candidate; for a master event the master.
        Kind::PromotedSlave | Kind::SlaveSelected if inst.kind == "slave" => {
            host_port(inst.ip, inst.port)
        }
        _ => None,
    };
    Some(Event {
        kind,
        master_name: inst.master_name.to_string(),
        addr,
        about: host_port(inst.master_ip, inst.master_port),
    })
}

struct Instance<'a> {
    kind: &'a str,
    ip: &'a str,
    port: &'a str,
    master_name: &'a str,
    master_ip: &'a str,
    master_port: &'a str,
}

/// `<type> <name> <ip> <port> [@ <master-name> <master-ip> <master-port>] [extra…]`
fn instance<'a>(words: &[&'a str]) -> Option<Instance<'a>> {
    if words.len() < 4 {
        return None;
    }
    let kind = words[0];
    let (master_name, master_ip, master_port) = if kind == "master" {
        (words[1], words[2], words[3])
    } else {
        if words.len() < 8 || words[4] != "@" {
            return None;
        }
        (words[5], words[6], words[7])
    };
    Some(Instance {
        kind,
        ip: words[2],
        port: words[3],
        master_name,
        master_ip,
        master_port,
    })
}

fn host_port(ip: &str, port: &str) -> Option<HostPort> {
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    if ip.is_empty() {
        return None;
    }
    Some(HostPort {
        host: ip.to_string(),
        port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hp(h: &str, p: u16) -> Option<HostPort> {
        Some(HostPort {
            host: h.into(),
            port: p,
        })
    }

    #[test]
    fn switch_master() {
        let e = parse("+switch-master", "mymaster 127.0.0.1 6379 127.0.0.1 6380").unwrap();
        assert_eq!(e.kind, Kind::SwitchMaster);
        assert_eq!(e.master_name, "mymaster");
        assert_eq!(e.addr, hp("127.0.0.1", 6380));
        assert_eq!(parse("+switch-master", "mymaster 127.0.0.1 6379"), None);
        assert_eq!(
            parse("+switch-master", "m 1.1.1.1 1 2.2.2.2 notaport")
                .unwrap()
                .addr,
            None
        );
    }

    #[test]
    fn promoted_slave() {
        let e = parse(
            "+promoted-slave",
            "slave 127.0.0.1:6380 127.0.0.1 6380 @ mymaster 127.0.0.1 6379",
        )
        .unwrap();
        assert_eq!(e.kind, Kind::PromotedSlave);
        assert_eq!(e.master_name, "mymaster");
        assert_eq!(e.addr, hp("127.0.0.1", 6380));
    }

    #[test]
    fn selected_slave_names_the_replica() {
        for ch in ["+selected-slave", "+failover-state-send-slaveof-noone"] {
            let e = parse(
                ch,
                "slave 127.0.0.1:6381 127.0.0.1 6381 @ mymaster 127.0.0.1 6379",
            )
            .unwrap();
            assert_eq!(e.kind, Kind::SlaveSelected);
            assert_eq!(e.addr, hp("127.0.0.1", 6381));
            assert_eq!(e.about, hp("127.0.0.1", 6379));
        }
        let e = parse("+try-failover", "master mymaster 127.0.0.1 6379").unwrap();
        assert_eq!((e.kind, e.addr), (Kind::FailoverStarted, None));
    }

    #[test]
    fn master_state_events() {
        let e = parse("+odown", "master mymaster 127.0.0.1 6379 #quorum 2/2").unwrap();
        assert_eq!(
            (e.kind, e.master_name.as_str()),
            (Kind::MasterDown, "mymaster")
        );
        // A replica going down is not the master going down.
        assert_eq!(
            parse(
                "+sdown",
                "slave 127.0.0.1:6380 127.0.0.1 6380 @ mymaster 127.0.0.1 6379"
            ),
            None
        );
        let e = parse(
            "-failover-abort-no-good-slave",
            "master mymaster 127.0.0.1 6379",
        )
        .unwrap();
        assert_eq!(e.kind, Kind::FailoverAborted);
    }

    #[test]
    fn garbage_is_ignored() {
        assert_eq!(parse("+promoted-slave", ""), None);
        assert_eq!(parse("+promoted-slave", "slave a b c"), None);
        assert_eq!(parse("+whatever", "master m 1.1.1.1 1"), None);
        assert_eq!(channel_label("+switch-master"), "+switch-master");
        assert_eq!(channel_label("+made-up"), "other");
    }
}
