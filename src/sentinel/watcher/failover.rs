//! A failover as the watcher lives it: the fence (the pause while the selected replica is
//! promoted), the promotion watch that routes to it the moment it answers `ROLE` as master, the
//! guard against switching back while the sentinels catch up (its rule: `decide.rs`), and the
//! failover's record for /status (`timeline.rs`).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::{Instant, sleep};

use super::{Msg, Resolver};
use crate::sentinel::client::{self, RespConn, Role};
use crate::sentinel::decide::Early;
use crate::sentinel::timeline::FailoverRecord;

/// How often the replica being promoted is asked `ROLE`, and for how long at most.
const PROMOTION_POLL_EVERY: Duration = Duration::from_millis(5);
const PROMOTION_WATCH_MAX: Duration = Duration::from_secs(30);

impl Resolver {
    /// The selected replica said `role:master`: route to it now, before Sentinel announces it.
    pub(super) fn on_promoted(&mut self, addr: SocketAddr, at: Instant) {
        self.promotion = None;
        let from = self.group.route.load().master;
        if from == Some(addr) {
            // Already routed there (a poll or an event was first): the fence has done its job.
            self.end_pause("switched");
            return;
        }
        self.failover_step_at(at, |r, ms| r.verified_ms = Some(ms));
        self.swap(addr, "PromotionObserved", Some(at));
        self.guard_early(from, addr);
    }

    /// The failover record in progress, opened at `at` if there is none.
    pub(super) fn failover_record(&mut self, at: Instant) -> (u64, Instant) {
        if let Some(f) = self.failover {
            return f;
        }
        let id = self.next_failover_id;
        self.next_failover_id += 1;
        let from = self.group.route.load().master.map(|a| a.to_string());
        self.group.watcher.open_failover(id, from);
        self.failover = Some((id, at));
        (id, at)
    }

    /// Note a step of the failover in progress (opening one if needed), as of now.
    pub(super) fn failover_step(&mut self, f: impl FnOnce(&mut FailoverRecord, f64)) {
        self.failover_step_at(Instant::now(), f)
    }

    /// The same, as of `at`: `f` gets the milliseconds since the failover started.
    pub(super) fn failover_step_at(
        &mut self,
        at: Instant,
        f: impl FnOnce(&mut FailoverRecord, f64),
    ) {
        let (id, started) = self.failover_record(at);
        let ms = at.saturating_duration_since(started).as_secs_f64() * 1000.0;
        self.group.watcher.failover(id, |r| f(r, ms));
    }

    /// Record when the last session left the old master (bounded by the drain timeout).
    pub(super) fn watch_drain(&self, id: u64, started: Instant, old_generation: u64) {
        let group = self.group.clone();
        let limit = Instant::now() + group.config().drain_timeout + Duration::from_secs(2);
        tokio::spawn(async move {
            while Instant::now() < limit {
                if group.route.attached(old_generation) == 0 {
                    let ms = started.elapsed().as_secs_f64() * 1000.0;
                    group.watcher.failover(id, |r| r.drained_ms = Some(ms));
                    return;
                }
                sleep(Duration::from_millis(5)).await;
            }
        });
    }

    pub(super) fn failover_end(&mut self, outcome: &'static str) {
        if let Some((id, _)) = self.failover.take() {
            self.group.watcher.failover(id, |r| r.outcome = outcome);
        }
    }

    /// The fence: sessions hold new requests until the new master is verified (or the pause
    /// runs out, or the failover aborts). Requests in flight still complete on the old master.
    pub(super) fn start_pause(&mut self) {
        let route = self.group.route.load();
        if route.master.is_none() || self.pause_until.is_some() {
            return;
        }
        self.group.route.set_paused(true);
        self.pause_until = Some(Instant::now() + self.group.config().failover_pause);
        self.failover_step(|r, ms| r.paused_ms = Some(ms));
    }

    pub(super) fn end_pause(&mut self, outcome: &str) {
        if self.pause_until.take().is_some() {
            self.group.route.set_paused(false);
            self.group
                .metrics
                .failover_pauses_total
                .with_label_values(&[outcome])
                .inc();
        }
    }

    pub(super) fn guard_early(&mut self, from: Option<SocketAddr>, to: SocketAddr) {
        self.early = Some(Early::new(from, to, Instant::now()));
    }

    /// Ask the selected replica `ROLE` every few milliseconds (on one connection) until it says
    /// master. Sentinel itself only looks once a second, so this is how the proxy switches within
    /// milliseconds of the promotion instead of up to a second later.
    pub(super) fn watch_promotion(&mut self, addr: SocketAddr) {
        if self.promotion.as_ref().is_some_and(|(a, _)| *a == addr) {
            return;
        }
        self.stop_promotion_watch();
        let tx = self.tx.clone();
        let auth = self.group.settings().master_auth.clone();
        let t = self.group.config().sentinel_timeout;
        let handle = tokio::spawn(async move {
            let deadline = Instant::now() + PROMOTION_WATCH_MAX;
            let mut conn: Option<RespConn> = None;
            while Instant::now() < deadline {
                if conn.is_none() {
                    conn = RespConn::connect_addr(addr, &auth, t).await.ok();
                }
                if let Some(c) = conn.as_mut() {
                    match c
                        .call(&[b"ROLE"])
                        .await
                        .and_then(|f| client::parse_role(&f))
                    {
                        Ok(Role::Master) => {
                            let _ = tx
                                .send(Msg::Promoted {
                                    addr,
                                    at: Instant::now(),
                                })
                                .await;
                            return;
                        }
                        Ok(Role::Other(_)) => {}
                        Err(_) => conn = None,
                    }
                }
                sleep(PROMOTION_POLL_EVERY).await;
            }
        });
        self.promotion = Some((addr, handle));
    }

    pub(super) fn stop_promotion_watch(&mut self) {
        if let Some((_, h)) = self.promotion.take() {
            h.abort();
        }
    }
}
