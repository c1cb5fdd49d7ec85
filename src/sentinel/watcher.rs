//! The watcher: finds the master of the group, verifies it, and keeps the route current.
//!
//! Inputs, all funnelled into one resolver task so that decisions never race:
//! - one pub/sub subscription per known sentinel (`PSUBSCRIBE *`, `subscription.rs`): failover
//!   events are published only by the leading sentinel, so listening to a single one is not enough;
//! - `+selected-slave` / `+failover-state-send-slaveof-noone` name the replica being promoted: a
//!   promotion watch asks it `ROLE` every 5 ms and routes to it the moment it says master
//!   (Sentinel itself notices only at its next 1 s INFO poll, then publishes `+promoted-slave`);
//! - `+promoted-slave` and `+switch-master` name the new master: verified with `ROLE`, routed to;
//! - a periodic poll (`--poll-interval`) of every known sentinel (`get-master-addr-by-name` and
//!   `SENTINEL sentinels`), the safety net for lost events. It also re-verifies the current
//!   master and learns sentinels that were not configured, so the proxy keeps working when every
//!   configured sentinel is gone; discovered ones unreachable for `--sentinel-prune-after` are
//!   forgotten;
//! - a nudge from sessions that could not reach the master.
//!
//! Rules against flapping: during a failover the sentinels briefly disagree (non-leaders still name
//! the old master, which still answers `ROLE` as master until it is demoted). A poll therefore
//! replaces a master that still verifies only when *every* answering sentinel (or, with
//! `--discovery quorum`, a majority) names the same other node; and after a switch made ahead of
//! the sentinels, a poll does not switch back to the master it came from until they catch up
//! (`+switch-master`), the failover aborts, or 30 s pass.
//!
//! The resolver's parts: `decide.rs` (the rules above, without I/O: votes, quorum, the guard,
//! what each event asks for), `known.rs` (the sentinels followed), `failover.rs` (the fence,
//! the promotion watch and the record of a failover); here, the task: it feeds events and
//! answers to `decide`, and carries out what it asks (verification, the swap, the pause).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;
use tokio::time::Instant;

use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{MissedTickBehavior, interval, sleep_until};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

mod failover;
mod known;

use known::Known;

use super::client::{self, ClientError, Role, SentinelAnswer};
use super::decide::{self, Answer, Early, Intent};
use super::events::{Event, Kind};
use super::input::Msg;
use super::timeline::{SwitchRecord, unix_ms};
use crate::config::HostPort;
use crate::group::Group;

/// Run the watcher until `shutdown`: subscriptions plus the resolver loop.
pub async fn run(group: Arc<Group>, shutdown: CancellationToken) {
    let (tx, mut rx) = mpsc::channel(256);
    let mut resolver = Resolver {
        group: group.clone(),
        tx,
        known: Vec::new(),
        promotion: None,
        early: None,
        pause_until: None,
        polling: false,
        poll_again: false,
        failover: None,
        next_failover_id: 0,
        published_master: Default::default(),
    };
    for s in &group.settings().sentinels {
        resolver.learn(s.clone(), true);
    }
    let mut tick = interval(group.config().poll_interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            Some(msg) = rx.recv() => match msg {
                Msg::Event { event, at } => {
                    // Any event of the group may change which replicas serve its read port.
                    if let Some(read) = group.read.get().and_then(std::sync::Weak::upgrade) {
                        read.nudge();
                    }
                    resolver.on_event(event, at).await;
                }
                Msg::Promoted { addr, at } => resolver.on_promoted(addr, at),
                Msg::Polled(results) => resolver.finish_poll(results).await,
                Msg::Subscription { sentinel, up, error } => {
                    resolver.subscription_changed(&sentinel, up, error);
                }
            },
            _ = group.route.recheck_requested() => resolver.poll(),
            _ = group.reloaded.notified() => {
                let cfg = group.config();
                if cfg.poll_interval != tick.period() {
                    tick = interval(cfg.poll_interval);
                    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
                }
                resolver.sync_configured();
                resolver.poll();
            }
            _ = tick.tick() => resolver.poll(),
            _ = sleep_until(resolver.pause_until.unwrap_or_else(Instant::now)),
                if resolver.pause_until.is_some() =>
            {
                warn!(master = %group.master_name, "failover pause ran out; releasing held requests to the current master");
                resolver.end_pause("timed_out");
                resolver.failover_end("timed_out");
            }
        }
    }
    resolver.stop_promotion_watch();
    resolver.leave();
}

struct Resolver {
    group: Arc<Group>,
    tx: mpsc::Sender<Msg>,
    /// Ordered: sentinels that answered recently come first.
    known: Vec<Known>,
    promotion: Option<(SocketAddr, JoinHandle<()>)>,
    early: Option<Early>,
    /// While a failover pause (fence) is on: when it ends at the latest.
    pause_until: Option<Instant>,
    /// A poll is in flight; another was asked for meanwhile.
    polling: bool,
    poll_again: bool,
    /// The failover being lived through: its record id and when it started.
    failover: Option<(u64, Instant)>,
    next_failover_id: u64,
    /// The master whose `master_info` series is set.
    published_master: std::sync::Mutex<Option<SocketAddr>>,
}

impl Resolver {
    async fn on_event(&mut self, event: Event, at: Instant) {
        let name = self.group.master_name.clone();
        // Resolve only what the event's rule reads (a host name costs a lookup).
        let addr = match event.kind {
            Kind::SwitchMaster | Kind::PromotedSlave | Kind::SlaveSelected => {
                let Some(addr) = self.resolve_opt(event.addr.as_ref()).await else {
                    return;
                };
                Some(addr)
            }
            _ => None,
        };
        let about = match event.kind {
            Kind::SlaveSelected | Kind::MasterDown | Kind::MasterUp => {
                self.resolve_opt(event.about.as_ref()).await
            }
            _ => None,
        };
        let route = self.group.route.load();
        let intent = decide::on_event(event.kind, addr, about, route.master, route.available);
        let confirmed = match intent {
            Intent::AlreadyThere { confirmed } | Intent::Verify { confirmed, .. } => confirmed,
            _ => false,
        };
        if confirmed {
            // The sentinels have adopted the new configuration: nothing left to guard.
            if self.early.as_ref().is_some_and(|e| Some(e.to) == addr) {
                self.early = None;
            }
            self.stop_promotion_watch();
        }
        match intent {
            Intent::Nothing => {
                if event.kind == Kind::SlaveSelected {
                    debug!(replica = ?addr, "stale +selected-slave ignored");
                }
            }
            Intent::AlreadyThere { .. } => self.end_pause("switched"),
            Intent::Verify { addr, guard, .. } => {
                info!(master = %name, candidate = %addr, event = ?event.kind, "sentinel names a new master; verifying");
                match self.verify(addr).await {
                    Ok(Role::Master) => {
                        let from = route.master;
                        self.swap(addr, &format!("{:?}", event.kind), Some(at));
                        if guard {
                            self.guard_early(from, addr);
                        }
                    }
                    Ok(Role::Other(role)) => {
                        // Promotion not visible yet, or a stale event: the poll will settle it.
                        info!(candidate = %addr, %role, "candidate is not a master yet");
                        self.group.route.request_recheck();
                    }
                    Err(e) => {
                        warn!(candidate = %addr, error = %e, "cannot verify candidate");
                        self.group.route.request_recheck();
                    }
                }
            }
            Intent::Pause(replica) => {
                self.failover_record(at);
                self.start_pause();
                info!(master = %name, replica = %replica, "sentinel selected a replica to promote; holding new requests and watching it");
                self.watch_promotion(replica);
            }
            Intent::Record => {
                info!(master = %name, "sentinel failover started");
                self.failover_record(at);
            }
            Intent::Abort => {
                warn!(master = %name, "sentinel failover aborted");
                self.stop_promotion_watch();
                self.early = None;
                self.end_pause("aborted");
                self.failover_end("aborted");
                self.poll();
            }
            Intent::MasterDown(down) => {
                if down {
                    warn!(master = %name, "sentinel reports the master down");
                } else {
                    info!(master = %name, "sentinel reports the master up again");
                }
                self.group.watcher.lock().master_reported_down = Some(down);
            }
        }
        if event.kind == Kind::FailoverEnded {
            info!(master = %name, "sentinel failover ended");
        }
    }

    /// Ask every known sentinel at once, in the background: a hung sentinel costs its timeout
    /// there, never a delay in handling events. The answers come back as `Msg::Polled`.
    fn poll(&mut self) {
        if self.polling {
            self.poll_again = true;
            return;
        }
        self.polling = true;
        let timeout = self.group.config().sentinel_timeout;
        let auth = self.group.settings().sentinel_auth.clone();
        let name = self.group.master_name.clone();
        let targets: Vec<HostPort> = self.known.iter().map(|k| k.addr.clone()).collect();
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let mut set = JoinSet::new();
            for s in targets {
                let (name, auth, t) = (name.clone(), auth.clone(), timeout);
                set.spawn(async move {
                    let answer = client::query_sentinel(&s, &name, &auth, t).await;
                    (s, answer)
                });
            }
            let mut results = Vec::new();
            while let Some(joined) = set.join_next().await {
                if let Ok(r) = joined {
                    results.push(r);
                }
            }
            let _ = tx.send(Msg::Polled(results)).await;
        });
    }

    /// Decide on the answers of a poll (the rules: `decide.rs`).
    async fn finish_poll(&mut self, results: Vec<(HostPort, Result<SentinelAnswer, ClientError>)>) {
        self.polling = false;
        if std::mem::take(&mut self.poll_again) {
            self.poll();
        }
        let mut answers: Vec<(HostPort, Answer)> = Vec::with_capacity(results.len());
        let mut peers: Vec<HostPort> = Vec::new();
        for (s, r) in results {
            let answer = match r {
                Ok(answer) => {
                    peers.extend(answer.peers);
                    Answer::Names(answer.master)
                }
                Err(e) => {
                    debug!(sentinel = %s, error = %e, "sentinel query failed");
                    Answer::Failed(e.to_string())
                }
            };
            answers.push((s, answer));
        }
        let order: Vec<HostPort> = self.known.iter().map(|k| k.addr.clone()).collect();
        let tally = decide::tally(&order, &answers);
        self.update_known(&answers, peers);

        let mut named = Vec::with_capacity(tally.named.len());
        for hp in &tally.named {
            if let Some(addr) = self.resolve(hp).await {
                named.push(addr);
            }
        }
        let reachable = tally.reachable;
        let candidates = decide::candidates(&named, reachable, self.group.config().discovery);

        if reachable == 0 {
            let keeping = if self.group.route.load().master.is_some() {
                "; keeping the last verified master"
            } else {
                ""
            };
            self.problem(format!(
                "no sentinel reachable (of {}){keeping}",
                self.known.len()
            ));
        } else if tally.named.is_empty() {
            self.problem(format!(
                "the sentinels do not know a master named '{}'",
                self.group.master_name
            ));
        }

        if self.early.is_some_and(|e| !e.active(Instant::now())) {
            self.early = None;
        }
        let plan = decide::plan_poll(
            &candidates,
            self.group.route.load().master,
            self.early.as_ref(),
        );
        if let Some(only) = plan.only
            && matches!(self.verify(only).await, Ok(Role::Master))
        {
            self.swap(only, "poll", None);
            return;
        }
        if let Some(c) = plan.current
            && self.check_current(c).await
        {
            if reachable > 0 && !tally.named.is_empty() {
                self.problem_solved();
            }
            return;
        }
        for cand in plan.fallback {
            if matches!(self.verify(cand).await, Ok(Role::Master)) {
                self.swap(cand, "poll", None);
                return;
            }
        }
        if !self.group.route.load().ready() && reachable > 0 && !tally.named.is_empty() {
            self.problem("no node named by the sentinels verifies as master".to_string());
        }
    }

    /// Re-verify the current master. True if it still is one.
    async fn check_current(&mut self, addr: SocketAddr) -> bool {
        match self.verify(addr).await {
            Ok(Role::Master) => {
                let was = self.group.route.load().available;
                self.group.route.set_master(addr);
                if !was {
                    info!(master = %addr, "master answers again");
                    self.publish_gauges();
                }
                true
            }
            Ok(Role::Other(role)) => {
                warn!(master = %addr, %role, "routed master is no longer a master; closing its sessions");
                self.group.route.clear_master();
                self.publish_gauges();
                false
            }
            Err(e) => {
                if self.group.route.load().available {
                    warn!(master = %addr, error = %e, "master does not answer; new clients wait");
                }
                self.group.route.mark_unavailable();
                self.publish_gauges();
                false
            }
        }
    }

    async fn verify(&self, addr: SocketAddr) -> Result<Role, ClientError> {
        let timeout = self.group.config().sentinel_timeout;
        let r = client::role(addr, &self.group.settings().master_auth, timeout).await;
        let result = match &r {
            Ok(Role::Master) => "master",
            Ok(Role::Other(_)) => "not_master",
            Err(_) => "error",
        };
        self.group
            .metrics
            .role_checks_total
            .with_label_values(&[result])
            .inc();
        r
    }

    fn swap(&mut self, addr: SocketAddr, cause: &str, event_at: Option<Instant>) {
        let before = self.group.route.load();
        let reported_down = self.group.watcher.lock().master_reported_down == Some(true);
        let (route, changed) = self.group.route.switch_to(addr, reported_down);
        self.publish_gauges();
        if !changed {
            return;
        }
        // The new route is unpaused by construction; this ends the fence's bookkeeping.
        self.end_pause("switched");
        let latency = event_at.map(|t| t.elapsed());
        if let Some(l) = latency {
            self.group
                .metrics
                .switch_latency_seconds
                .observe(l.as_secs_f64());
        }
        if before.master.is_some() {
            self.group.metrics.master_switches_total.inc();
        }
        let from = before.master.map(|a| a.to_string());
        info!(
            master = %self.group.master_name,
            old = from.as_deref().unwrap_or("none"),
            new = %addr,
            generation = route.generation,
            cause,
            latency_us = latency.map(|l| l.as_micros() as u64),
            "route switched to new master"
        );
        // The timeline: a switch with no failover event before it (a poll, a crash noticed
        // first by the proxy) opens its own record.
        if before.master.is_some() {
            let to = addr.to_string();
            self.failover_step(|r, ms| {
                r.verified_ms.get_or_insert(ms);
                r.swapped_ms = Some(ms);
                r.to = Some(to);
                r.outcome = "switched";
            });
            if let Some((id, started)) = self.failover.take() {
                self.watch_drain(id, started, before.generation);
            }
        }
        self.learn_commands(addr);
        self.group.watcher.switched(SwitchRecord {
            at_unix_ms: unix_ms(SystemTime::now()),
            from,
            to: addr.to_string(),
            generation: route.generation,
            cause: cause.to_string(),
            latency_ms: latency.map(|l| l.as_secs_f64() * 1000.0),
        });
    }

    /// Ask the new master what commands it has (in the background: a slow answer delays
    /// nothing); kept for the group until the next master (`command/learned.rs`).
    fn learn_commands(&self, addr: SocketAddr) {
        let group = self.group.clone();
        let (auth, t) = (
            group.settings().master_auth.clone(),
            group.config().sentinel_timeout,
        );
        tokio::spawn(async move {
            match client::commands(addr, &auth, t).await {
                Ok(commands) if group.route.load().master == Some(addr) => {
                    // The comparison is worked out only when debug logging is on (/status
                    // shows it on request).
                    debug!(master = %addr, commands = commands.len(), differences = ?commands.differences(crate::command::all()), "learned the master's commands");
                    group
                        .commands
                        .store(Some(Arc::new(crate::group::LearnedFrom {
                            master: addr,
                            writes: Arc::new(commands.write_rows()),
                            reads: Arc::new(commands.read_rows()),
                            commands,
                        })));
                }
                Ok(_) => {}
                Err(e) => {
                    debug!(master = %addr, error = %e, "the master did not list its commands; the hand list stands")
                }
            }
        });
    }

    /// The group stops (shutdown, or removed by a reload): its sentinels and its master series.
    fn leave(&mut self) {
        for k in std::mem::take(&mut self.known) {
            self.forget(k);
        }
        let published = self.published_master.lock().map(|p| *p).unwrap_or(None);
        if let Some(old) = published {
            let _ = self
                .group
                .metrics
                .master_info
                .remove_label_values(&[&old.to_string()]);
        }
    }

    fn publish_gauges(&self) {
        let m = &self.group.metrics;
        let route = self.group.route.load();
        m.route_generation.set(route.generation as i64);
        m.master_available.set(route.ready() as i64);
        // Only this group's series: the family carries every group's master.
        let mut published = self
            .published_master
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(old) = *published
            && Some(old) != route.master
        {
            let _ = m.master_info.remove_label_values(&[&old.to_string()]);
        }
        *published = route.master;
        if let Some(a) = route.master {
            m.master_info.with_label_values(&[&a.to_string()]).set(1);
        }
    }

    /// Log a problem once when it appears, not on every poll.
    fn problem(&self, text: String) {
        let mut st = self.group.watcher.lock();
        if st.last_problem.as_deref() != Some(&text) {
            error!(problem = %text, "sentinel discovery problem");
            st.last_problem = Some(text);
        }
    }

    fn problem_solved(&self) {
        let mut st = self.group.watcher.lock();
        if let Some(p) = st.last_problem.take() {
            info!(was = %p, "sentinel discovery recovered");
        }
    }

    async fn resolve_opt(&self, hp: Option<&HostPort>) -> Option<SocketAddr> {
        match hp {
            Some(hp) => self.resolve(hp).await,
            None => None,
        }
    }

    async fn resolve(&self, hp: &HostPort) -> Option<SocketAddr> {
        match client::resolve(hp, self.group.config().sentinel_timeout).await {
            Ok(addr) => Some(addr),
            Err(client::Unresolved::Unspecified) => {
                debug!(address = %hp, "ignoring an unspecified address from a sentinel");
                None
            }
            Err(client::Unresolved::Lookup) => {
                warn!(host = %hp.host, "cannot resolve master host name");
                None
            }
        }
    }
}
