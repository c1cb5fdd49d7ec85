//! The sentinels a group follows: the configured ones, and the ones learned from their peers
//! (`SENTINEL sentinels`), each with its membership of the shared event subscription
//! (`sentinel/hub.rs`), its health (for /metrics and /status) and, for a learned one, how long it
//! has been unreachable (it is forgotten after `--sentinel-prune-after`).

use tokio::time::Instant;
use tracing::info;

use super::Resolver;
use crate::config::HostPort;
use crate::sentinel::decide::{self, Answer};
use crate::sentinel::hub::{Hub, Membership};

/// A sentinel the proxy knows: configured, or learned from `SENTINEL sentinels`.
pub(super) struct Known {
    pub(super) addr: HostPort,
    configured: bool,
    /// Since when it has failed every query (None while it answers).
    failing_since: Option<Instant>,
    /// This group's share of its event subscription, left when dropped.
    _events: Membership,
}

impl Resolver {
    /// After a reload: sentinels newly configured are added, ones no longer configured are
    /// dropped (they come back as discovered ones if their peers still name them).
    pub(super) fn sync_configured(&mut self) {
        let wanted = self.group.settings().sentinels.clone();
        let mut kept = Vec::with_capacity(self.known.len());
        for mut k in std::mem::take(&mut self.known) {
            if wanted.contains(&k.addr) {
                k.configured = true;
                kept.push(k);
            } else if k.configured {
                info!(sentinel = %k.addr, "sentinel removed from the configuration");
                self.forget(k);
            } else {
                kept.push(k);
            }
        }
        self.known = kept;
        for s in wanted {
            self.learn(s, true);
        }
    }

    /// Stop following a sentinel: this group's share of its subscription, its /status entry,
    /// and its metric series once no group follows it.
    pub(super) fn forget(&self, k: Known) {
        let addr = k.addr.clone();
        drop(k);
        self.group.watcher.forget(&addr);
        if !self.group.shared.hub.follows(&addr) {
            let _ = self
                .group
                .shared
                .metrics
                .sentinel_up
                .remove_label_values(&[&addr.to_string()]);
        }
    }

    /// Add a sentinel to the known set (if new) and subscribe to its events.
    pub(super) fn learn(&mut self, addr: HostPort, configured: bool) {
        if self.known.iter().any(|k| k.addr == addr) {
            return;
        }
        if !configured {
            info!(sentinel = %addr, "discovered sentinel");
        }
        self.group.watcher.sentinel(&addr, |_| {});
        let events = Hub::join(
            &self.group.shared,
            &addr,
            &self.group.master_name,
            &self.group.settings().sentinel_auth,
            self.tx.clone(),
        );
        self.known.push(Known {
            addr,
            configured,
            failing_since: None,
            _events: events,
        });
    }

    /// The result of one query to one sentinel, for /metrics and /status.
    pub(super) fn record_health(&self, sentinel: &HostPort, error: Option<String>) {
        self.group
            .shared
            .metrics
            .sentinel_up
            .with_label_values(&[&sentinel.to_string()])
            .set(error.is_none() as i64);
        self.group.watcher.sentinel(sentinel, |h| {
            h.query_ok = error.is_none();
            h.last_error = error;
        });
    }

    /// A sentinel's shared subscription came up or went down: its /status entry, and a poll
    /// when it came up (events may have been missed meanwhile).
    pub(super) fn subscription_changed(
        &mut self,
        addr: &HostPort,
        up: bool,
        error: Option<String>,
    ) {
        if !self.known.iter().any(|k| &k.addr == addr) {
            return;
        }
        self.group.watcher.sentinel(addr, |h| {
            h.subscribed = up;
            if error.is_some() {
                h.last_error = error;
            }
        });
        if up {
            self.poll();
        }
    }

    /// Record who answered (by address: the list may have changed since the poll started, and a
    /// sentinel learned meanwhile was not asked), learn the peers they named, prune long-dead
    /// discovered sentinels, and move the ones that answered to the front.
    pub(super) fn update_known(&mut self, answers: &[(HostPort, Answer)], peers: Vec<HostPort>) {
        let now = Instant::now();
        for i in 0..self.known.len() {
            let k = &mut self.known[i];
            let Some(answer) = decide::health(answers, &k.addr) else {
                continue; // not asked: learned while the poll was out
            };
            let error = match answer {
                Answer::Names(_) => None,
                Answer::Failed(e) => Some(e.clone()),
            };
            k.failing_since = match error {
                None => None,
                Some(_) => Some(k.failing_since.unwrap_or(now)),
            };
            let addr = k.addr.clone();
            self.record_health(&addr, error);
        }
        let prune_after = self.group.config().sentinel_prune_after;
        let mut kept = Vec::with_capacity(self.known.len());
        for k in std::mem::take(&mut self.known) {
            if !k.configured && k.failing_since.is_some_and(|t| now - t > prune_after) {
                info!(sentinel = %k.addr, "forgetting a discovered sentinel that stayed unreachable");
                self.forget(k);
            } else {
                kept.push(k);
            }
        }
        kept.sort_by_key(|k| k.failing_since.is_some());
        self.known = kept;
        for p in peers {
            self.learn(p, false);
        }
    }
}
