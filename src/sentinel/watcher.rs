//! The watcher: finds the master of the group, verifies it, and keeps the route current.
//!
//! Three inputs drive it, all funnelled into one resolver task so that decisions never race:
//! - one pub/sub subscription per sentinel (`PSUBSCRIBE *`): failover events are published only
//!   by the leading sentinel, so listening to a single one is not enough. `+promoted-slave` (the
//!   leader saw the replica become master) and `+switch-master` name the new master; it is verified
//!   with `ROLE` and routed to at once, often seconds before the leader's own `+switch-master`;
//! - a periodic poll (`--poll-interval`) of every sentinel with `get-master-addr-by-name`, the
//!   safety net for lost events, which also re-verifies the current master with `ROLE`;
//! - a nudge from sessions that could not reach the master.
//!
//! Rule against flapping: during a failover sentinels briefly disagree (the non-leaders still name
//! the old master, which still answers `ROLE` as master until it is demoted). A poll therefore
//! replaces a master that still verifies only when *every* answering sentinel names the same other
//! node; events, which Sentinel only publishes for a newer configuration, switch at once.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use redis_protocol::resp2::types::OwnedFrame;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::{MissedTickBehavior, interval, sleep, timeout};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::client::{self, ClientError, RespConn, Role, frame_text};
use super::events::{self, Event, Kind};
use crate::Shared;
use crate::config::HostPort;

/// How often a subscription is pinged, and how long silence means it is dead.
const SUB_PING_EVERY: Duration = Duration::from_secs(1);
const SUB_DEAD_AFTER: Duration = Duration::from_secs(3);
const RESUBSCRIBE_MAX_BACKOFF: Duration = Duration::from_secs(5);
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
}

#[derive(Clone, serde::Serialize)]
pub struct SentinelHealth {
    pub address: String,
    pub query_ok: bool,
    pub subscribed: bool,
    pub last_error: Option<String>,
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

    fn lock(&self) -> std::sync::MutexGuard<'_, StateInner> {
        // A panic elsewhere while holding this lock leaves only status data behind; keep going.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn sentinel(&self, addr: &HostPort, f: impl FnOnce(&mut SentinelHealth)) {
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

enum Msg {
    Event { event: Event, at: Instant },
    Subscribed,
}

/// Run the watcher until `shutdown`: subscriptions plus the resolver loop.
pub async fn run(shared: Arc<Shared>, shutdown: CancellationToken) {
    let (tx, mut rx) = mpsc::channel(256);
    for s in &shared.config.sentinels {
        shared.watcher.sentinel(s, |_| {});
        tokio::spawn(subscription(
            s.clone(),
            shared.clone(),
            tx.clone(),
            shutdown.clone(),
        ));
    }
    drop(tx);
    let mut resolver = Resolver { shared };
    let mut tick = interval(resolver.shared.config.poll_interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            Some(msg) = rx.recv() => match msg {
                Msg::Event { event, at } => resolver.on_event(event, at).await,
                Msg::Subscribed => resolver.poll().await,
            },
            _ = resolver.shared.route.recheck_requested() => resolver.poll().await,
            _ = tick.tick() => resolver.poll().await,
        }
    }
}

struct Resolver {
    shared: Arc<Shared>,
}

impl Resolver {
    async fn on_event(&mut self, event: Event, at: Instant) {
        let name = &self.shared.config.master_name;
        match event.kind {
            Kind::SwitchMaster | Kind::PromotedSlave => {
                let Some(hp) = event.addr else { return };
                let Some(addr) = self.resolve(&hp).await else {
                    return;
                };
                let route = self.shared.route.load();
                if route.master == Some(addr) && route.available {
                    return;
                }
                info!(master = %name, candidate = %addr, event = ?event.kind, "sentinel names a new master; verifying");
                match self.verify(addr).await {
                    Ok(Role::Master) => self.swap(addr, &format!("{:?}", event.kind), Some(at)),
                    Ok(Role::Other(role)) => {
                        // Promotion not visible yet, or a stale event: the poll will settle it.
                        info!(candidate = %addr, %role, "candidate is not a master yet");
                        self.shared.route.request_recheck();
                    }
                    Err(e) => {
                        warn!(candidate = %addr, error = %e, "cannot verify candidate");
                        self.shared.route.request_recheck();
                    }
                }
            }
            Kind::FailoverStarted => info!(master = %name, "sentinel failover started"),
            Kind::FailoverAborted => warn!(master = %name, "sentinel failover aborted"),
            Kind::FailoverEnded => info!(master = %name, "sentinel failover ended"),
            Kind::MasterDown => warn!(master = %name, "sentinel reports the master down"),
            Kind::MasterUp => info!(master = %name, "sentinel reports the master up again"),
        }
    }

    /// Ask every sentinel at once, then decide (see the module doc for the rule).
    async fn poll(&mut self) {
        let cfg = self.shared.config.clone();
        let mut set = JoinSet::new();
        for (i, s) in cfg.sentinels.iter().enumerate() {
            let (s, name, auth, t) = (
                s.clone(),
                cfg.master_name.clone(),
                cfg.sentinel_auth.clone(),
                cfg.sentinel_timeout,
            );
            set.spawn(async move {
                let r = client::master_addr(&s, &name, &auth, t).await;
                (i, s, r)
            });
        }
        let mut answers: Vec<(usize, HostPort)> = Vec::new();
        let mut reachable = 0;
        while let Some(joined) = set.join_next().await {
            let Ok((i, s, r)) = joined else { continue };
            let label = s.to_string();
            match r {
                Ok(answer) => {
                    reachable += 1;
                    self.shared
                        .metrics
                        .sentinel_up
                        .with_label_values(&[&label])
                        .set(1);
                    self.shared.watcher.sentinel(&s, |h| {
                        h.query_ok = true;
                        h.last_error = None;
                    });
                    if let Some(hp) = answer {
                        answers.push((i, hp));
                    }
                }
                Err(e) => {
                    debug!(sentinel = %s, error = %e, "sentinel query failed");
                    self.shared
                        .metrics
                        .sentinel_up
                        .with_label_values(&[&label])
                        .set(0);
                    self.shared.watcher.sentinel(&s, |h| {
                        h.query_ok = false;
                        h.last_error = Some(e.to_string());
                    });
                }
            }
        }
        answers.sort_by_key(|(i, _)| *i);

        // Distinct candidates, most-named first, ties in configured order.
        let mut candidates: Vec<(SocketAddr, usize)> = Vec::new();
        for (_, hp) in &answers {
            let Some(addr) = self.resolve(hp).await else {
                continue;
            };
            match candidates.iter_mut().find(|(a, _)| *a == addr) {
                Some((_, n)) => *n += 1,
                None => candidates.push((addr, 1)),
            }
        }
        candidates.sort_by_key(|c| std::cmp::Reverse(c.1));

        if reachable == 0 {
            self.problem(format!(
                "no sentinel reachable (of {}); keeping the last verified master",
                cfg.sentinels.len()
            ));
        } else if answers.is_empty() {
            self.problem(format!(
                "the sentinels do not know a master named '{}'",
                cfg.master_name
            ));
        }

        let current = self.shared.route.load().master;
        if let [(only, _)] = candidates[..]
            && Some(only) != current
            && matches!(self.verify(only).await, Ok(Role::Master))
        {
            self.swap(only, "poll", None);
            return;
        }
        if let Some(c) = current
            && self.check_current(c).await
        {
            if reachable > 0 && !answers.is_empty() {
                self.problem_solved();
            }
            return;
        }
        for (cand, _) in candidates {
            if Some(cand) == current {
                continue;
            }
            if matches!(self.verify(cand).await, Ok(Role::Master)) {
                self.swap(cand, "poll", None);
                return;
            }
        }
        if self.shared.route.load().target().is_none() && reachable > 0 && !answers.is_empty() {
            self.problem("no node named by the sentinels verifies as master".to_string());
        }
    }

    /// Re-verify the current master. True if it still is one.
    async fn check_current(&mut self, addr: SocketAddr) -> bool {
        match self.verify(addr).await {
            Ok(Role::Master) => {
                let was = self.shared.route.load().available;
                self.shared.route.set_master(addr);
                if !was {
                    info!(master = %addr, "master answers again");
                    self.publish_gauges();
                }
                true
            }
            Ok(Role::Other(role)) => {
                warn!(master = %addr, %role, "routed master is no longer a master; closing its sessions");
                self.shared.route.clear_master();
                self.publish_gauges();
                false
            }
            Err(e) => {
                if self.shared.route.load().available {
                    warn!(master = %addr, error = %e, "master does not answer; new clients wait");
                }
                self.shared.route.mark_unavailable();
                self.publish_gauges();
                false
            }
        }
    }

    async fn verify(&self, addr: SocketAddr) -> Result<Role, ClientError> {
        let cfg = &self.shared.config;
        let r = client::role(addr, &cfg.master_auth, cfg.sentinel_timeout).await;
        let result = match &r {
            Ok(Role::Master) => "master",
            Ok(Role::Other(_)) => "not_master",
            Err(_) => "error",
        };
        self.shared
            .metrics
            .role_checks_total
            .with_label_values(&[result])
            .inc();
        r
    }

    fn swap(&mut self, addr: SocketAddr, cause: &str, event_at: Option<Instant>) {
        let before = self.shared.route.load();
        let (route, changed) = self.shared.route.set_master(addr);
        self.publish_gauges();
        if !changed {
            return;
        }
        let latency = event_at.map(|t| t.elapsed());
        if let Some(l) = latency {
            self.shared
                .metrics
                .switch_latency_seconds
                .observe(l.as_secs_f64());
        }
        if before.master.is_some() {
            self.shared.metrics.master_switches_total.inc();
        }
        let from = before.master.map(|a| a.to_string());
        info!(
            master = %self.shared.config.master_name,
            old = from.as_deref().unwrap_or("none"),
            new = %addr,
            generation = route.generation,
            cause,
            latency_us = latency.map(|l| l.as_micros() as u64),
            "route switched to new master"
        );
        let mut st = self.shared.watcher.lock();
        st.switches.push(SwitchRecord {
            at_unix_ms: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or(0),
            from,
            to: addr.to_string(),
            generation: route.generation,
            cause: cause.to_string(),
            latency_ms: latency.map(|l| l.as_secs_f64() * 1000.0),
        });
        if st.switches.len() > SWITCH_HISTORY {
            st.switches.remove(0);
        }
        st.last_problem = None;
    }

    fn publish_gauges(&self) {
        let m = &self.shared.metrics;
        let route = self.shared.route.load();
        m.route_generation.set(route.generation as i64);
        m.master_available.set(route.target().is_some() as i64);
        m.master_info.reset();
        if let Some(a) = route.master {
            m.master_info.with_label_values(&[&a.to_string()]).set(1);
        }
    }

    /// Log a problem once when it appears, not on every poll.
    fn problem(&self, text: String) {
        let mut st = self.shared.watcher.lock();
        if st.last_problem.as_deref() != Some(&text) {
            error!(problem = %text, "sentinel discovery problem");
            st.last_problem = Some(text);
        }
    }

    fn problem_solved(&self) {
        let mut st = self.shared.watcher.lock();
        if let Some(p) = st.last_problem.take() {
            info!(was = %p, "sentinel discovery recovered");
        }
    }

    async fn resolve(&self, hp: &HostPort) -> Option<SocketAddr> {
        if let Ok(ip) = hp.host.parse() {
            return Some(SocketAddr::new(ip, hp.port));
        }
        let lookup = tokio::net::lookup_host((hp.host.as_str(), hp.port));
        match timeout(self.shared.config.sentinel_timeout, lookup).await {
            Ok(Ok(mut addrs)) => addrs.next(),
            _ => {
                warn!(host = %hp.host, "cannot resolve master host name");
                None
            }
        }
    }
}

/// Keep one subscription to `sentinel` alive until shutdown, reconnecting with backoff.
async fn subscription(
    sentinel: HostPort,
    shared: Arc<Shared>,
    tx: mpsc::Sender<Msg>,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let started = Instant::now();
        let result = tokio::select! {
            r = subscribe_once(&sentinel, &shared, &tx) => r,
            _ = shutdown.cancelled() => return,
        };
        shared.watcher.sentinel(&sentinel, |h| {
            h.subscribed = false;
            if let Err(e) = &result {
                h.last_error = Some(e.to_string());
            }
        });
        if let Err(e) = result {
            debug!(sentinel = %sentinel, error = %e, "sentinel subscription lost");
        }
        if tx.is_closed() {
            return;
        }
        if started.elapsed() > RESUBSCRIBE_MAX_BACKOFF * 2 {
            backoff = Duration::from_millis(100);
        }
        tokio::select! {
            _ = sleep(backoff) => {}
            _ = shutdown.cancelled() => return,
        }
        backoff = (backoff * 2).min(RESUBSCRIBE_MAX_BACKOFF);
    }
}

async fn subscribe_once(
    sentinel: &HostPort,
    shared: &Shared,
    tx: &mpsc::Sender<Msg>,
) -> Result<(), ClientError> {
    let cfg = &shared.config;
    let mut conn = RespConn::connect(sentinel, &cfg.sentinel_auth, cfg.sentinel_timeout).await?;
    conn.call(&[b"PSUBSCRIBE", b"*"]).await?;
    shared.watcher.sentinel(sentinel, |h| h.subscribed = true);
    debug!(sentinel = %sentinel, "subscribed to sentinel events");
    // Events may have been missed while unsubscribed: look again now.
    if tx.send(Msg::Subscribed).await.is_err() {
        return Ok(());
    }
    let mut ping = interval(SUB_PING_EVERY);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_heard = Instant::now();
    loop {
        tokio::select! {
            frame = conn.read_frame() => {
                let frame = frame?;
                last_heard = Instant::now();
                if let Some((channel, payload)) = pmessage(&frame) {
                    let at = Instant::now();
                    shared.metrics.sentinel_events_total
                        .with_label_values(&[events::channel_label(channel)]).inc();
                    debug!(sentinel = %sentinel, channel, payload, "sentinel event");
                    if let Some(event) = events::parse(channel, payload)
                        && event.master_name == cfg.master_name
                        && tx.send(Msg::Event { event, at }).await.is_err()
                    {
                        return Ok(());
                    }
                }
            }
            _ = ping.tick() => {
                if last_heard.elapsed() > SUB_DEAD_AFTER {
                    return Err(ClientError::Timeout);
                }
                conn.send(&[b"PING"]).await?;
            }
        }
    }
}

/// `["pmessage", pattern, channel, payload]` → (channel, payload).
fn pmessage(frame: &OwnedFrame) -> Option<(&str, &str)> {
    let OwnedFrame::Array(items) = frame else {
        return None;
    };
    if items.len() != 4 || frame_text(&items[0]) != Some("pmessage") {
        return None;
    }
    Some((frame_text(&items[2])?, frame_text(&items[3])?))
}
