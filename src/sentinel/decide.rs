//! The watcher's decisions, without I/O: which master a poll's answers name (votes, quorum), in
//! which order the candidates are tried, the guard against switching back to a master the
//! sentinels have not yet given up, and what each Sentinel event asks for. The watcher task
//! (`watcher.rs`) feeds it answers and events, carries out the intents (verify a node with
//! `ROLE`, swap the route, pause, watch a promotion) and does all the I/O.
//!
//! Answers are keyed by the sentinel's address, never by a position in the known list, which
//! may change while a poll is out (a reload, a peer learned, a dead one pruned).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;

use super::events::Kind;
use crate::config::{Discovery, HostPort};

/// How long a switch made ahead of the sentinels is protected from their lagging answers.
pub(crate) const EARLY_GUARD: Duration = Duration::from_secs(30);

/// A switch made ahead of the sentinels (on an observed promotion): until they confirm it, a poll
/// that still hears the old master from them must not switch back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Early {
    pub(crate) from: Option<SocketAddr>,
    pub(crate) to: SocketAddr,
    pub(crate) until: Instant,
}

impl Early {
    pub(crate) fn new(from: Option<SocketAddr>, to: SocketAddr, now: Instant) -> Early {
        Early {
            from,
            to,
            until: now + EARLY_GUARD,
        }
    }

    /// Still protecting (not run out at `now`).
    pub(crate) fn active(&self, now: Instant) -> bool {
        now <= self.until
    }

    /// `candidate` is the master the switch left, and the route is still where the switch took
    /// it: the sentinels naming `candidate` have not caught up yet.
    pub(crate) fn lagging(&self, candidate: SocketAddr, current: Option<SocketAddr>) -> bool {
        self.from == Some(candidate) && current == Some(self.to)
    }
}

/// One sentinel's answer to a poll, by its address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Answer {
    /// It answered; the master it names for the group, if it knows one.
    Names(Option<HostPort>),
    /// It did not answer (the error, for /status).
    Failed(String),
}

/// What a poll's answers add up to, before any name is resolved.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Tally {
    /// Sentinels that answered.
    pub(crate) reachable: usize,
    /// The masters they named, one per naming sentinel, in the order of `order` (the known list
    /// as it is now), so that ties go to the sentinels that answered recently.
    pub(crate) named: Vec<HostPort>,
}

/// Count a poll's answers. `order`: the known sentinels now (answers from sentinels no longer
/// known still count as votes: they were known when asked).
pub(crate) fn tally(order: &[HostPort], answers: &[(HostPort, Answer)]) -> Tally {
    let rank = |s: &HostPort| order.iter().position(|k| k == s).unwrap_or(usize::MAX);
    let mut named: Vec<(usize, &HostPort)> = answers
        .iter()
        .filter_map(|(s, a)| match a {
            Answer::Names(Some(m)) => Some((rank(s), m)),
            _ => None,
        })
        .collect();
    named.sort_by_key(|(r, _)| *r);
    Tally {
        reachable: answers
            .iter()
            .filter(|(_, a)| matches!(a, Answer::Names(_)))
            .count(),
        named: named.into_iter().map(|(_, m)| m.clone()).collect(),
    }
}

/// Distinct candidates from the named masters (resolved, in tally order), most-named first, ties
/// in the order named; with `Discovery::Quorum`, only those named by a majority of the
/// sentinels that answered.
pub(crate) fn candidates(
    named: &[SocketAddr],
    reachable: usize,
    discovery: Discovery,
) -> Vec<(SocketAddr, usize)> {
    let mut candidates: Vec<(SocketAddr, usize)> = Vec::new();
    for addr in named {
        match candidates.iter_mut().find(|(a, _)| a == addr) {
            Some((_, n)) => *n += 1,
            None => candidates.push((*addr, 1)),
        }
    }
    candidates.sort_by_key(|c| std::cmp::Reverse(c.1));
    if discovery == Discovery::Quorum {
        candidates.retain(|(_, n)| n * 2 > reachable);
    }
    candidates
}

/// What a poll does, in order (see the watcher's module doc for the rules against flapping):
/// switch at once to the only candidate if it verifies; else keep the current master if it
/// still verifies; else the first of `fallback` that verifies.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct PollPlan {
    pub(crate) only: Option<SocketAddr>,
    pub(crate) current: Option<SocketAddr>,
    pub(crate) fallback: Vec<SocketAddr>,
}

pub(crate) fn plan_poll(
    candidates: &[(SocketAddr, usize)],
    current: Option<SocketAddr>,
    early: Option<&Early>,
) -> PollPlan {
    let lagging = |c: SocketAddr| early.is_some_and(|e| e.lagging(c, current));
    let open = |c: &SocketAddr| Some(*c) != current && !lagging(*c);
    let only = match candidates {
        [(only, _)] if open(only) => Some(*only),
        _ => None,
    };
    PollPlan {
        only,
        current,
        fallback: candidates.iter().map(|(c, _)| *c).filter(open).collect(),
    }
}

/// What a Sentinel event asks the watcher to do. Addresses are resolved by the watcher first.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Intent {
    Nothing,
    /// `+switch-master`/`+promoted-slave` named the master the route already has: the fence
    /// has done its job. `confirmed`: it was `+switch-master` (the guard and the promotion
    /// watch are done).
    AlreadyThere {
        confirmed: bool,
    },
    /// Verify this node with `ROLE` and switch to it if it is a master; `confirmed` as above;
    /// `guard`: the switch is ahead of the sentinels (`+promoted-slave`), guard it.
    Verify {
        addr: SocketAddr,
        confirmed: bool,
        guard: bool,
    },
    /// A failover of the routed master selected this replica: pause (the fence) and watch it.
    Pause(SocketAddr),
    /// The failover started: open its record.
    Record,
    /// The failover aborted: stop watching, drop the guard, end the pause, poll.
    Abort,
    /// Sentinel reports the routed master down (`true`) or up again (for /status).
    MasterDown(bool),
}

/// What the event `kind`, naming `addr` (about the master `about`), asks for while the route
/// is on `current` (`available`: it answers).
pub(crate) fn on_event(
    kind: Kind,
    addr: Option<SocketAddr>,
    about: Option<SocketAddr>,
    current: Option<SocketAddr>,
    available: bool,
) -> Intent {
    match kind {
        Kind::SwitchMaster | Kind::PromotedSlave => {
            let Some(addr) = addr else {
                return Intent::Nothing;
            };
            let confirmed = kind == Kind::SwitchMaster;
            if current == Some(addr) && available {
                return Intent::AlreadyThere { confirmed };
            }
            Intent::Verify {
                addr,
                confirmed,
                guard: kind == Kind::PromotedSlave,
            }
        }
        Kind::SlaveSelected => match addr {
            // Only a failover *of the master we route to* is a reason to hold requests; a late
            // event (the route already moved) is not.
            Some(a) if current != Some(a) && about.is_none_or(|m| Some(m) == current) => {
                Intent::Pause(a)
            }
            _ => Intent::Nothing,
        },
        Kind::FailoverStarted => Intent::Record,
        Kind::FailoverAborted => Intent::Abort,
        Kind::FailoverEnded => Intent::Nothing,
        Kind::MasterDown | Kind::MasterUp => match about {
            // Only news about the node we route to is news for /status.
            Some(m) if Some(m) == current => Intent::MasterDown(kind == Kind::MasterDown),
            _ => Intent::Nothing,
        },
    }
}

/// Which known sentinels a poll's answers speak for, by address: those that answered, and
/// those that were asked and failed. A sentinel learned while the poll was out was not asked:
/// its state stays as it was.
pub(crate) fn health<'a>(
    answers: &'a [(HostPort, Answer)],
    sentinel: &HostPort,
) -> Option<&'a Answer> {
    answers.iter().find(|(s, _)| s == sentinel).map(|(_, a)| a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hp(s: &str) -> HostPort {
        s.parse().unwrap()
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn tally_counts_by_address_whatever_the_order() {
        let answers = vec![
            (hp("127.0.0.1:26381"), Answer::Failed("timed out".into())),
            (
                hp("127.0.0.1:26379"),
                Answer::Names(Some(hp("127.0.0.1:6380"))),
            ),
            (
                hp("127.0.0.1:26380"),
                Answer::Names(Some(hp("127.0.0.1:6379"))),
            ),
            (hp("127.0.0.1:26382"), Answer::Names(None)),
        ];
        // The known list was re-sorted (and one pruned) while the poll was out.
        let order = [hp("127.0.0.1:26380"), hp("127.0.0.1:26379")];
        let t = tally(&order, &answers);
        assert_eq!(t.reachable, 3);
        assert_eq!(t.named, vec![hp("127.0.0.1:6379"), hp("127.0.0.1:6380")]);
    }

    /// The bug the address keys fix: a poll started with the known list [a, b, c]; before its
    /// answers came, the list changed to [c, a] (b pruned, c moved up on an earlier answer).
    /// Matched by position, a's failure was credited to c and c's answer to b (gone) or a;
    /// matched by address, each sentinel gets its own.
    #[test]
    fn health_follows_the_address_when_the_known_list_changes_during_a_poll() {
        let (a, b, c) = (
            hp("10.0.0.1:26379"),
            hp("10.0.0.2:26379"),
            hp("10.0.0.3:26379"),
        );
        let asked = [a.clone(), b.clone(), c.clone()];
        let answers: Vec<(HostPort, Answer)> = asked
            .iter()
            .map(|s| {
                let answer = match s == &a {
                    true => Answer::Failed("connection refused".into()),
                    false => Answer::Names(Some(hp("127.0.0.1:6379"))),
                };
                (s.clone(), answer)
            })
            .collect();
        let known_now = [c.clone(), a.clone(), hp("10.0.0.4:26379")];
        let healthy: Vec<Option<bool>> = known_now
            .iter()
            .map(|k| health(&answers, k).map(|h| matches!(h, Answer::Names(_))))
            .collect();
        // c answered, a failed, the new one was not asked.
        assert_eq!(healthy, vec![Some(true), Some(false), None]);
        // What matching by position gave: position 0 of the answers (a's failure) for c.
        let by_position = |i: usize| matches!(answers[i].1, Answer::Names(_));
        assert_ne!(
            Some(by_position(0)),
            healthy[0],
            "the old matching was wrong here"
        );
    }

    #[test]
    fn candidates_most_named_first_and_quorum() {
        let (m1, m2) = (sa("127.0.0.1:6379"), sa("127.0.0.1:6380"));
        let named = [m1, m2, m2];
        assert_eq!(
            candidates(&named, 3, Discovery::First),
            vec![(m2, 2), (m1, 1)]
        );
        assert_eq!(candidates(&named, 3, Discovery::Quorum), vec![(m2, 2)]);
        // Two of five answering sentinels is no majority.
        assert_eq!(candidates(&named, 5, Discovery::Quorum), vec![]);
        // Ties keep the order named.
        assert_eq!(
            candidates(&[m1, m2], 2, Discovery::First),
            vec![(m1, 1), (m2, 1)]
        );
    }

    #[test]
    fn poll_plan() {
        let (old, new, other) = (
            sa("127.0.0.1:6379"),
            sa("127.0.0.1:6380"),
            sa("127.0.0.1:6381"),
        );
        let now = Instant::now();
        let guard = Early::new(Some(old), new, now);
        // Every sentinel names a new master: try it first.
        assert_eq!(
            plan_poll(&[(new, 3)], Some(old), None),
            PollPlan {
                only: Some(new),
                current: Some(old),
                fallback: vec![new]
            }
        );
        // They agree on the master we route to: nothing to switch to.
        assert_eq!(
            plan_poll(&[(old, 3)], Some(old), None),
            PollPlan {
                only: None,
                current: Some(old),
                fallback: vec![]
            }
        );
        // After a switch ahead of them, they still name the old one: no switch back.
        assert_eq!(
            plan_poll(&[(old, 3)], Some(new), Some(&guard)),
            PollPlan {
                only: None,
                current: Some(new),
                fallback: vec![]
            }
        );
        // The guard protects only the switch it made.
        assert_eq!(
            plan_poll(&[(old, 3)], Some(other), Some(&guard)).only,
            Some(old)
        );
        // Disagreement: no immediate switch; the current master first, then the others.
        assert_eq!(
            plan_poll(&[(new, 2), (old, 1)], Some(old), None),
            PollPlan {
                only: None,
                current: Some(old),
                fallback: vec![new]
            }
        );
        assert!(guard.active(now + EARLY_GUARD));
        assert!(!guard.active(now + EARLY_GUARD + Duration::from_millis(1)));
    }

    /// A name, the event's kind, the address it names, the master it is about, the intent.
    type EventCase = (
        &'static str,
        Kind,
        Option<SocketAddr>,
        Option<SocketAddr>,
        Intent,
    );

    #[test]
    fn events() {
        let (old, new, elsewhere) = (
            sa("127.0.0.1:6379"),
            sa("127.0.0.1:6380"),
            sa("127.0.0.1:7000"),
        );
        let cur = Some(old);
        let cases: &[EventCase] = &[
            (
                "+switch-master to a new one",
                Kind::SwitchMaster,
                Some(new),
                Some(old),
                Intent::Verify {
                    addr: new,
                    confirmed: true,
                    guard: false,
                },
            ),
            (
                "+promoted-slave",
                Kind::PromotedSlave,
                Some(new),
                None,
                Intent::Verify {
                    addr: new,
                    confirmed: false,
                    guard: true,
                },
            ),
            (
                "+switch-master to where we are",
                Kind::SwitchMaster,
                Some(old),
                None,
                Intent::AlreadyThere { confirmed: true },
            ),
            (
                "+switch-master without an address",
                Kind::SwitchMaster,
                None,
                None,
                Intent::Nothing,
            ),
            (
                "+selected-slave of our master",
                Kind::SlaveSelected,
                Some(new),
                Some(old),
                Intent::Pause(new),
            ),
            (
                "+selected-slave of another master",
                Kind::SlaveSelected,
                Some(new),
                Some(elsewhere),
                Intent::Nothing,
            ),
            (
                "+selected-slave naming where we already are",
                Kind::SlaveSelected,
                Some(old),
                None,
                Intent::Nothing,
            ),
            (
                "-failover-abort",
                Kind::FailoverAborted,
                None,
                None,
                Intent::Abort,
            ),
            (
                "+sdown of our master",
                Kind::MasterDown,
                None,
                Some(old),
                Intent::MasterDown(true),
            ),
            (
                "-sdown of another node",
                Kind::MasterUp,
                None,
                Some(new),
                Intent::Nothing,
            ),
        ];
        for (name, kind, addr, about, want) in cases {
            assert_eq!(on_event(*kind, *addr, *about, cur, true), *want, "{name}");
        }
        // Named where we are, but that master does not answer: verify it again.
        assert_eq!(
            on_event(Kind::SwitchMaster, Some(old), None, cur, false),
            Intent::Verify {
                addr: old,
                confirmed: true,
                guard: false
            }
        );
    }
}
