//! What the watcher has lived, for `/status`: the sentinels and their health, the recent switches
//! of the route, the recent failovers as a timeline (ms from the first sign to the fence, the
//! verification, the swap and the drain), the current discovery problem. Written by the watcher's
//! control-plane tasks, read by the admin server; never touched on the byte path.

use std::sync::Mutex;
use std::time::SystemTime;

use crate::config::HostPort;

/// How many switches /status remembers.
const SWITCH_HISTORY: usize = 20;

/// What the watcher knows, for /status. Touched only by control-plane tasks and the admin server.
#[derive(Default)]
pub struct WatcherState {
    inner: Mutex<StateInner>,
}

#[derive(Default, Clone, serde::Serialize)]
pub struct StateInner {
    pub sentinels: Vec<SentinelHealth>,
    pub switches: Vec<SwitchRecord>,
    pub last_problem: Option<String>,
    /// Recent failovers as the proxy lived them, newest last.
    pub failovers: Vec<FailoverRecord>,
    /// The last `+sdown`/`+odown` (true) or `-sdown`/`-odown` (false) a sentinel published
    /// about the master; reset when the route moves.
    pub master_reported_down: Option<bool>,
}

#[derive(Clone, serde::Serialize)]
pub struct SentinelHealth {
    pub address: String,
    pub query_ok: bool,
    pub subscribed: bool,
    pub last_error: Option<String>,
}

/// One failover, step by step: milliseconds from the first sign of it (a sentinel's failover
/// event, or the switch itself when no event came first).
#[derive(Clone, serde::Serialize)]
pub struct FailoverRecord {
    #[serde(skip)]
    id: u64,
    pub started_unix_ms: u128,
    pub from: Option<String>,
    pub to: Option<String>,
    /// New requests held from here (the fence).
    pub paused_ms: Option<f64>,
    /// The new master answered `ROLE` as master.
    pub verified_ms: Option<f64>,
    /// The route moved to it.
    pub swapped_ms: Option<f64>,
    /// No session left on the old master.
    pub drained_ms: Option<f64>,
    /// `in_progress`, `switched`, `aborted` or `timed_out`.
    pub outcome: &'static str,
}

#[derive(Clone, serde::Serialize)]
pub struct SwitchRecord {
    pub at_unix_ms: u128,
    pub from: Option<String>,
    pub to: String,
    pub generation: u64,
    pub cause: String,
    /// From the event's arrival to the swap, when an event caused it.
    pub latency_ms: Option<f64>,
}

impl WatcherState {
    pub fn snapshot(&self) -> StateInner {
        self.lock().clone()
    }

    /// Open the record of failover `id` (from the master routed to now).
    pub(super) fn open_failover(&self, id: u64, from: Option<String>) {
        let mut st = self.lock();
        st.failovers.push(FailoverRecord {
            id,
            started_unix_ms: unix_ms(SystemTime::now()),
            from,
            to: None,
            paused_ms: None,
            verified_ms: None,
            swapped_ms: None,
            drained_ms: None,
            outcome: "in_progress",
        });
        if st.failovers.len() > SWITCH_HISTORY {
            st.failovers.remove(0);
        }
    }

    /// The route moved: remember the switch; the problem and the down report are of the past.
    pub(super) fn switched(&self, record: SwitchRecord) {
        let mut st = self.lock();
        st.switches.push(record);
        if st.switches.len() > SWITCH_HISTORY {
            st.switches.remove(0);
        }
        st.last_problem = None;
        st.master_reported_down = None;
    }

    /// Update the failover record `id`, if it is still kept.
    pub(super) fn failover(&self, id: u64, f: impl FnOnce(&mut FailoverRecord)) {
        if let Some(r) = self.lock().failovers.iter_mut().find(|r| r.id == id) {
            f(r);
        }
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, StateInner> {
        // A panic elsewhere while holding this lock leaves only status data behind; keep going.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn forget(&self, addr: &HostPort) {
        let key = addr.to_string();
        self.lock().sentinels.retain(|h| h.address != key);
    }

    pub(super) fn sentinel(&self, addr: &HostPort, f: impl FnOnce(&mut SentinelHealth)) {
        let key = addr.to_string();
        let mut s = self.lock();
        if let Some(h) = s.sentinels.iter_mut().find(|h| h.address == key) {
            f(h);
        } else {
            let mut h = SentinelHealth {
                address: key,
                query_ok: false,
                subscribed: false,
                last_error: None,
            };
            f(&mut h);
            s.sentinels.push(h);
        }
    }
}

pub(super) fn unix_ms(t: SystemTime) -> u128 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn switch(generation: u64) -> SwitchRecord {
        SwitchRecord {
            at_unix_ms: 0,
            from: None,
            to: "127.0.0.1:1".into(),
            generation,
            cause: "poll".into(),
            latency_ms: None,
        }
    }

    #[test]
    fn history_is_bounded_and_a_switch_clears_the_problem() {
        let w = WatcherState::default();
        w.lock().last_problem = Some("no master".into());
        w.lock().master_reported_down = Some(true);
        for g in 0..30 {
            w.switched(switch(g));
            w.open_failover(g, None);
        }
        let s = w.snapshot();
        assert_eq!(s.switches.len(), SWITCH_HISTORY);
        assert_eq!(s.switches[0].generation, 10);
        assert_eq!(s.failovers.len(), SWITCH_HISTORY);
        assert_eq!((s.last_problem, s.master_reported_down), (None, None));
        w.failover(29, |r| r.outcome = "switched");
        assert_eq!(w.snapshot().failovers.last().unwrap().outcome, "switched");
    }
}
