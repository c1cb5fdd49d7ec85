//! The fence, in one place and without I/O: whether a client's bytes may go to a backend now,
//! to which master, or why they wait; and, for a dedicated session, what it does next after
//! anything changed (forward what it held, wait for the old master's replies, move, close).
//!
//! Every path that sends client bytes asks here: the dedicated session's step
//! (`dedicated/step.rs`), a pooled client choosing its connection (`pooled.rs`), the spare
//! connection a pinned client takes (`pool.rs`), a shared connection checking that it still
//! serves the current master (`conn.rs`) and a new session connecting (`mod.rs`). The rule:
//! - bytes go to a backend only while its generation is the route's and the route is not
//!   paused; a backend of an older generation is retired (its requests in flight may finish
//!   there, unless the master it belongs to had stopped answering: then their outcome is
//!   unknown and the client must see an error, never a late "OK");
//! - a new backend goes only to a verified, answering master; one a client already holds may
//!   stay on a master the watcher cannot reach at the moment (a long script, a busy moment);
//! - just after a switch, sessions that carry nothing wait (the gate, at most `GATE_MAX`) while
//!   subscribers, MONITOR sessions and blocked commands re-create what they had on the new master,
//!   so nothing published or added there overtakes them.
//!
//! The inputs are plain values (the route, the session's view, the carriers count, the time) so
//! that the table of cases below is tested without sockets.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::Close;
use crate::route::Route;

/// Other sessions hold their requests at most this long after a switch while the carriers
/// (subscribers, MONITOR sessions, sessions blocked in a command) re-create what they had on the
/// new master (see `RouteTable::carriers`).
const GATE_MAX: Duration = Duration::from_secs(1);

/// The time, as the fence reads it: the monotonic clock for deadlines, the wall clock for how
/// long ago the route changed (`Route::since`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Now {
    pub(crate) at: Instant,
    pub(crate) wall: SystemTime,
}

impl Now {
    pub(crate) fn get() -> Now {
        Now {
            at: Instant::now(),
            wall: SystemTime::now(),
        }
    }
}

/// The clock, read at most once per decision and only when a rule needs the time (a gate, a
/// deadline): the common case, an open route, reads no clock at all.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Clock(Option<Now>);

impl Clock {
    /// Reads the clock when first asked.
    pub(crate) fn lazy() -> Clock {
        Clock(None)
    }

    /// Always this time (tests).
    #[cfg(test)]
    pub(crate) fn fixed(now: Now) -> Clock {
        Clock(Some(now))
    }

    pub(crate) fn now(&mut self) -> Now {
        *self.0.get_or_insert_with(Now::get)
    }
}

/// When the gate of `route`'s switch opens at the latest.
pub(crate) fn gate_until(route: &Route, now: Now) -> Instant {
    let since = now.wall.duration_since(route.since).unwrap_or_default();
    now.at + GATE_MAX.saturating_sub(since)
}

/// The gate, if it is shut now: carriers of older generations are still moving.
fn gate(route: &Route, carriers_elsewhere: usize, clock: &mut Clock) -> Option<Instant> {
    if carriers_elsewhere == 0 {
        return None;
    }
    let now = clock.now();
    Some(gate_until(route, now)).filter(|until| *until > now.at)
}

/// Who asks to send.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Asker {
    /// The generation of the backend it holds, if it holds one.
    pub(crate) backend: Option<u64>,
    /// It is served already (holds, or shares, a live backend of this generation): a master the
    /// watcher cannot reach right now keeps it. A new backend needs a verified master.
    pub(crate) served: bool,
    /// It is itself a carrier: it never waits for the gate.
    pub(crate) carrier: bool,
}

/// Why bytes wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hold {
    /// A failover is under way (the fence proper).
    Paused,
    /// The operator's pause (`operator.rs`): each request waits at most the pause's wait, then
    /// its client gets the no-master error.
    Operator,
    /// No verified master (or none that answers, for a new backend).
    NoMaster,
    /// Carriers are still moving after a switch, until then at the latest.
    Gate(Instant),
}

/// May bytes go now, and where.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admit {
    /// To the master at this address (of the route's generation).
    Go(SocketAddr),
    Hold(Hold),
    /// The asker's backend belongs to an older generation: nothing new may go to it.
    /// `master_down`: its master had stopped answering when it was replaced, so requests still
    /// in flight there have an unknown outcome.
    Retired {
        master_down: bool,
    },
}

/// The one rule every sender asks (see the module doc).
pub(crate) fn admit(
    route: &Route,
    asker: Asker,
    carriers_elsewhere: usize,
    clock: &mut Clock,
) -> Admit {
    if asker.backend.is_some_and(|g| g != route.generation) {
        return Admit::Retired {
            master_down: route.previous_down,
        };
    }
    if route.held {
        return Admit::Hold(Hold::Operator);
    }
    if route.paused {
        return Admit::Hold(Hold::Paused);
    }
    let master = match asker.served {
        true => route.master,
        false => route.target(),
    };
    let Some(addr) = master else {
        return Admit::Hold(Hold::NoMaster);
    };
    if !asker.carrier
        && let Some(until) = gate(route, carriers_elsewhere, clock)
    {
        return Admit::Hold(Hold::Gate(until));
    }
    Admit::Go(addr)
}

/// A dedicated session as the fence sees it (`dedicated/step.rs` fills it in).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct View {
    /// The generation of its backend.
    pub(crate) generation: u64,
    /// A byte pipe (no boundaries to move at).
    pub(crate) pipe: bool,
    /// The client has closed its side.
    pub(crate) client_eof: bool,
    /// The stream forwarded so far ends at a request boundary.
    pub(crate) at_boundary: bool,
    /// Replies owed by the backend.
    pub(crate) in_flight: u64,
    /// Bytes forwarded but not yet written to the backend.
    pub(crate) unsent: bool,
    /// Bytes read from the client and held.
    pub(crate) held: bool,
    /// Replies read and not yet written to the client.
    pub(crate) replies: bool,
    /// The replies owed are collected by the move itself (a subscriber's, a blocked command's).
    pub(crate) collected: bool,
    /// A blocking command is the last request forwarded and has no reply yet.
    pub(crate) blocked_last: bool,
    /// The backend closed or failed.
    pub(crate) backend_gone: bool,
    /// Why what the client built cannot be carried to another master, if it cannot.
    pub(crate) uncarriable: Option<Close>,
    pub(crate) shutting_down: bool,
    /// It is counted among the carriers.
    pub(crate) carrier: bool,
    /// The client sent malformed input.
    pub(crate) protocol_error: bool,
    /// It must reach a boundary by then (a switch's drain, a lost backend, shutdown).
    pub(crate) deadline: Option<Instant>,
}

/// What a dedicated session does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// Nothing to do until something changes. `open`: client bytes may go straight to the
    /// backend meanwhile.
    Wait {
        open: bool,
    },
    /// Forward the bytes it held to its backend (the route is open again), then go on.
    Release,
    /// Hold the client's bytes (it is not read further) for this reason.
    Hold(Hold),
    /// Let the old master take what was sent and finish replying.
    Drain,
    /// Move to this master, of this generation.
    Move(SocketAddr, u64),
    /// Answer the malformed input and close.
    Refuse,
    Close(Close),
}

/// What a dedicated session does next, and whether its drain deadline should start now (it is
/// leaving its backend: the route moved, or the backend is gone).
pub(crate) fn decide(
    v: &View,
    route: &Route,
    carriers_elsewhere: usize,
    clock: &mut Clock,
) -> (Action, bool) {
    let switched = route.generation != v.generation;
    let leaving = switched || v.backend_gone;
    (step(v, route, switched, carriers_elsewhere, clock), leaving)
}

fn step(
    v: &View,
    route: &Route,
    switched: bool,
    carriers_elsewhere: usize,
    clock: &mut Clock,
) -> Action {
    if v.deadline.is_some_and(|d| clock.now().at >= d) {
        return Action::Close(if v.shutting_down {
            Close::Shutdown
        } else if v.backend_gone {
            Close::BackendClosed
        } else if v.held && route.held && !switched {
            // Held by the operator's pause past its wait: as when no master is known.
            Close::NoMaster
        } else {
            Close::DrainDeadline
        });
    }
    // A byte pipe has no boundaries to move at (a lost backend ends it elsewhere); otherwise its
    // bytes are held while the route is paused, like any session's.
    if v.pipe {
        if switched {
            return Action::Close(Close::SwitchPipe);
        }
        if v.shutting_down {
            return Action::Close(Close::Shutdown);
        }
    }
    // The client has closed its side and is owed nothing: done, wherever the backend is.
    // (Moving such a session to a new master would leave it waiting there for an end of stream
    // that never comes, since the FIN went to the old one.)
    if v.client_eof
        && !v.pipe
        && v.in_flight == 0
        && !v.held
        && !v.unsent
        && !v.replies
        && v.at_boundary
    {
        return Action::Close(Close::ClientClosed);
    }

    if switched || v.backend_gone {
        if !v.at_boundary {
            // Part of a request went to the old master; nothing can complete it now.
            return Action::Close(Close::SwitchMidRequest);
        }
        // Replies still owed are awaited from the old master, except where the move itself
        // collects them: a subscriber's (a marker PING drains them) and a blocking command's
        // (unblocked on the old master, or re-issued if that one is gone).
        if v.unsent || (v.in_flight > 0 && !v.collected) {
            if route.previous_down && !v.backend_gone && !v.blocked_last {
                // A hung or cut-off master: it may run these requests when it comes back, after
                // its replacement was promoted, and that data is lost when it is demoted.
                return Action::Close(Close::SwitchMasterDown);
            }
            return Action::Drain;
        }
        if let Some(close) = v.uncarriable {
            return Action::Close(close);
        }
        if v.shutting_down {
            return Action::Close(Close::Shutdown);
        }
        let asker = Asker {
            backend: None,
            served: false,
            carrier: v.carrier,
        };
        return match admit(route, asker, carriers_elsewhere, clock) {
            Admit::Go(addr) => Action::Move(addr, route.generation),
            // No verified master yet (or paused again): hold until one, or the deadline.
            Admit::Hold(Hold::Paused | Hold::Operator) => Action::Hold(Hold::NoMaster),
            Admit::Hold(h) => Action::Hold(h),
            Admit::Retired { .. } => Action::Hold(Hold::NoMaster),
        };
    }

    if v.shutting_down {
        // Two-phase shutdown: nothing new is forwarded; close at the first boundary.
        if v.at_boundary && v.in_flight == 0 && !v.unsent {
            return Action::Close(Close::Shutdown);
        }
        return Action::Wait { open: false };
    }
    if route.fenced() {
        if v.held {
            return Action::Hold(match route.held {
                true => Hold::Operator,
                false => Hold::Paused,
            });
        }
    } else if v.held && !v.unsent {
        return Action::Release;
    }
    if v.protocol_error && v.in_flight == 0 && !v.unsent {
        return Action::Refuse;
    }
    Action::Wait {
        open: !route.fenced() && !v.held,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "127.0.0.1:7001";
    const B: &str = "127.0.0.1:7002";

    fn now() -> Now {
        Now::get()
    }

    fn route(generation: u64, master: &str) -> Route {
        Route {
            generation,
            master: Some(master.parse().unwrap()),
            available: true,
            paused: false,
            held: false,
            previous_down: false,
            since: SystemTime::now(),
        }
    }

    /// A session of generation 1 at a boundary, owed nothing.
    fn idle() -> View {
        View {
            generation: 1,
            at_boundary: true,
            ..View::default()
        }
    }

    #[test]
    fn admit_table() {
        let n = now();
        let same = Asker {
            backend: Some(1),
            served: true,
            carrier: false,
        };
        let new = Asker::default();
        let a: SocketAddr = A.parse().unwrap();
        let paused = Route {
            paused: true,
            ..route(1, A)
        };
        let unavailable = Route {
            available: false,
            ..route(1, A)
        };
        let down_switch = Route {
            previous_down: true,
            ..route(2, B)
        };
        let old_switch = Route {
            since: SystemTime::now() - Duration::from_secs(5),
            ..route(1, A)
        };
        let cases: &[(&str, &Route, Asker, usize, Admit)] = &[
            ("open", &route(1, A), same, 0, Admit::Go(a)),
            ("new client, open", &route(1, A), new, 0, Admit::Go(a)),
            ("paused", &paused, same, 0, Admit::Hold(Hold::Paused)),
            ("paused, new", &paused, new, 0, Admit::Hold(Hold::Paused)),
            (
                "held by the operator",
                &Route {
                    held: true,
                    ..route(1, A)
                },
                same,
                0,
                Admit::Hold(Hold::Operator),
            ),
            (
                "unanswering master keeps its clients",
                &unavailable,
                same,
                0,
                Admit::Go(a),
            ),
            (
                "unanswering master takes no new one",
                &unavailable,
                new,
                0,
                Admit::Hold(Hold::NoMaster),
            ),
            (
                "switched under the asker",
                &route(2, B),
                same,
                0,
                Admit::Retired { master_down: false },
            ),
            (
                "switched from a master that was down",
                &down_switch,
                same,
                0,
                Admit::Retired { master_down: true },
            ),
            (
                "carriers moving",
                &route(1, A),
                new,
                3,
                Admit::Hold(Hold::Gate(gate_until(&route(1, A), n))),
            ),
            (
                "carriers moving, asker carries",
                &route(1, A),
                Asker {
                    carrier: true,
                    ..new
                },
                3,
                Admit::Go(a),
            ),
            (
                "carriers moving past the gate's time",
                &old_switch,
                new,
                3,
                Admit::Go(a),
            ),
        ];
        for (name, r, asker, carriers, want) in cases {
            let got = admit(r, *asker, *carriers, &mut Clock::fixed(n));
            match (got, want) {
                // The gate's time is computed from the same clock readings on both sides.
                (Admit::Hold(Hold::Gate(g)), Admit::Hold(Hold::Gate(w))) => {
                    assert!(g <= *w && *w <= g + Duration::from_millis(5), "{name}")
                }
                _ => assert_eq!(got, *want, "{name}"),
            }
        }
    }

    #[test]
    fn decide_table() {
        let n = now();
        let b: SocketAddr = B.parse().unwrap();
        let paused = Route {
            paused: true,
            ..route(1, A)
        };
        let paused_switch = Route {
            paused: true,
            ..route(2, B)
        };
        let down_switch = Route {
            previous_down: true,
            ..route(2, B)
        };
        let no_master = Route {
            master: None,
            available: false,
            ..route(2, A)
        };
        let held = View {
            held: true,
            ..idle()
        };
        let owed = View {
            in_flight: 2,
            ..idle()
        };
        let cases: &[(&str, View, &Route, usize, Action)] = &[
            ("open", idle(), &route(1, A), 0, Action::Wait { open: true }),
            (
                "paused with nothing held",
                idle(),
                &paused,
                0,
                Action::Wait { open: false },
            ),
            ("paused, held", held, &paused, 0, Action::Hold(Hold::Paused)),
            (
                "the operator's hold, held",
                held,
                &Route {
                    held: true,
                    ..route(1, A)
                },
                0,
                Action::Hold(Hold::Operator),
            ),
            (
                "the operator's hold past its wait: the no-master error",
                View {
                    deadline: Some(n.at),
                    ..held
                },
                &Route {
                    held: true,
                    ..route(1, A)
                },
                0,
                Action::Close(Close::NoMaster),
            ),
            (
                "the operator's hold over a switch: wait for it to end",
                idle(),
                &Route {
                    held: true,
                    ..route(2, B)
                },
                0,
                Action::Hold(Hold::NoMaster),
            ),
            ("pause ended, held", held, &route(1, A), 0, Action::Release),
            (
                "held behind unsent bytes",
                View {
                    unsent: true,
                    ..held
                },
                &route(1, A),
                0,
                Action::Wait { open: false },
            ),
            (
                "switched at a boundary",
                idle(),
                &route(2, B),
                0,
                Action::Move(b, 2),
            ),
            (
                "switched with replies in flight",
                owed,
                &route(2, B),
                0,
                Action::Drain,
            ),
            (
                "switched with a subscriber's replies in flight",
                View {
                    collected: true,
                    ..owed
                },
                &route(2, B),
                0,
                Action::Move(b, 2),
            ),
            (
                "switched from a master that was down, replies in flight",
                owed,
                &down_switch,
                0,
                Action::Close(Close::SwitchMasterDown),
            ),
            (
                "switched from a master that was down, blocked",
                View {
                    blocked_last: true,
                    unsent: true,
                    ..owed
                },
                &down_switch,
                0,
                Action::Drain,
            ),
            (
                "switched mid-request",
                View {
                    at_boundary: false,
                    ..idle()
                },
                &route(2, B),
                0,
                Action::Close(Close::SwitchMidRequest),
            ),
            (
                "switched with a transaction open",
                View {
                    uncarriable: Some(Close::SwitchTransaction),
                    ..idle()
                },
                &route(2, B),
                0,
                Action::Close(Close::SwitchTransaction),
            ),
            (
                "switched, no master yet",
                idle(),
                &no_master,
                0,
                Action::Hold(Hold::NoMaster),
            ),
            (
                "switched, new route paused",
                idle(),
                &paused_switch,
                0,
                Action::Hold(Hold::NoMaster),
            ),
            (
                "switched, carriers still moving",
                idle(),
                &route(2, B),
                1,
                Action::Hold(Hold::Gate(gate_until(&route(2, B), n))),
            ),
            (
                "switched, carriers moving, itself a carrier",
                View {
                    carrier: true,
                    ..idle()
                },
                &route(2, B),
                1,
                Action::Move(b, 2),
            ),
            (
                "backend gone at a boundary",
                View {
                    backend_gone: true,
                    ..idle()
                },
                &route(1, A),
                0,
                Action::Move(A.parse().unwrap(), 1),
            ),
            (
                "deadline passed while draining",
                View {
                    deadline: Some(n.at),
                    ..owed
                },
                &route(2, B),
                0,
                Action::Close(Close::DrainDeadline),
            ),
            (
                "deadline passed, backend gone",
                View {
                    deadline: Some(n.at),
                    backend_gone: true,
                    ..idle()
                },
                &no_master,
                0,
                Action::Close(Close::BackendClosed),
            ),
            (
                "deadline passed in shutdown",
                View {
                    deadline: Some(n.at),
                    shutting_down: true,
                    ..owed
                },
                &route(1, A),
                0,
                Action::Close(Close::Shutdown),
            ),
            (
                "deadline not yet",
                View {
                    deadline: Some(n.at + Duration::from_secs(1)),
                    ..owed
                },
                &route(2, B),
                0,
                Action::Drain,
            ),
            (
                "shutdown at a boundary",
                View {
                    shutting_down: true,
                    ..idle()
                },
                &route(1, A),
                0,
                Action::Close(Close::Shutdown),
            ),
            (
                "shutdown with replies owed",
                View {
                    shutting_down: true,
                    ..owed
                },
                &route(1, A),
                0,
                Action::Wait { open: false },
            ),
            (
                "pipe at a switch",
                View {
                    pipe: true,
                    ..idle()
                },
                &route(2, B),
                0,
                Action::Close(Close::SwitchPipe),
            ),
            (
                "client closed, owed nothing",
                View {
                    client_eof: true,
                    ..idle()
                },
                &route(2, B),
                0,
                Action::Close(Close::ClientClosed),
            ),
            (
                "client closed, owed replies",
                View {
                    client_eof: true,
                    ..owed
                },
                &route(1, A),
                0,
                Action::Wait { open: true },
            ),
            (
                "bad input after the replies",
                View {
                    protocol_error: true,
                    ..idle()
                },
                &route(1, A),
                0,
                Action::Refuse,
            ),
            (
                "bad input, replies still owed",
                View {
                    protocol_error: true,
                    ..owed
                },
                &route(1, A),
                0,
                Action::Wait { open: true },
            ),
        ];
        for (name, v, r, carriers, want) in cases {
            let (got, leaving) = decide(v, r, *carriers, &mut Clock::fixed(n));
            assert_eq!(
                leaving,
                r.generation != v.generation || v.backend_gone,
                "{name}"
            );
            match (got, want) {
                (Action::Hold(Hold::Gate(g)), Action::Hold(Hold::Gate(w))) => {
                    assert!(g <= *w && *w <= g + Duration::from_millis(5), "{name}")
                }
                _ => assert_eq!(got, *want, "{name}"),
            }
        }
    }
}
