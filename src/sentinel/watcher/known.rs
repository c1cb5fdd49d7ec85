//! The sentinels the proxy follows: the configured ones, and the ones learned from their peers
//! (`SENTINEL sentinels`), each with its event subscription, its health (for /metrics and
//! /status) and, for a learned one, how long it has been unreachable (it is forgotten after
//! `--sentinel-prune-after`).

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::Resolver;
use crate::config::HostPort;
use crate::sentinel::subscription::subscription;

/// A sentinel the proxy knows: configured, or learned from `SENTINEL sentinels`.
pub(super) struct Known {
    pub(super) addr: HostPort,
    configured: bool,
    /// Since when it has failed every query (None while it answers).
    failing_since: Option<Instant>,
    /// Cancels its subscription when it is pruned.
    stop: CancellationToken,
}

impl Resolver {
    /// After a reload: sentinels newly configured are added, ones no longer configured are
    /// dropped (they come back as discovered ones if their peers still name them).
    pub(super) fn sync_configured(&mut self) {
        let wanted = self.shared.config().sentinels.clone();
        let mut kept = Vec::with_capacity(self.known.len());
        for mut k in std::mem::take(&mut self.known) {
            if wanted.contains(&k.addr) {
                k.configured = true;
                kept.push(k);
            } else if k.configured {
                info!(sentinel = %k.addr, "sentinel removed from the configuration");
                self.forget(&k);
            } else {
                kept.push(k);
            }
        }
        self.known = kept;
        for s in wanted {
            self.learn(s, true);
        }
    }

    /// Stop following a sentinel: its subscription, its /status entry, its metric series.
    pub(super) fn forget(&self, k: &Known) {
        k.stop.cancel();
        self.shared.watcher.forget(&k.addr);
        let _ = self
            .shared
            .metrics
            .sentinel_up
            .remove_label_values(&[&k.addr.to_string()]);
    }

    /// Add a sentinel to the known set (if new) and subscribe to its events.
    pub(super) fn learn(&mut self, addr: HostPort, configured: bool) {
        if self.known.iter().any(|k| k.addr == addr) {
            return;
        }
        if !configured {
            info!(sentinel = %addr, "discovered sentinel");
        }
        let stop = self.shutdown.child_token();
        self.shared.watcher.sentinel(&addr, |_| {});
        tokio::spawn(subscription(
            addr.clone(),
            self.shared.clone(),
            self.tx.clone(),
            stop.clone(),
        ));
        self.known.push(Known {
            addr,
            configured,
            failing_since: None,
            stop,
        });
    }

    /// The result of one query to one sentinel, for /metrics and /status.
    pub(super) fn record_health(&self, sentinel: &HostPort, error: Option<String>) {
        self.shared
            .metrics
            .sentinel_up
            .with_label_values(&[&sentinel.to_string()])
            .set(error.is_none() as i64);
        self.shared.watcher.sentinel(sentinel, |h| {
            h.query_ok = error.is_none();
            h.last_error = error;
        });
    }

    /// Record who answered, learn the peers they named, prune long-dead discovered sentinels,
    /// and move the ones that answered to the front.
    pub(super) fn update_known(&mut self, ok: &[bool], peers: Vec<HostPort>) {
        let now = Instant::now();
        for (k, ok) in self.known.iter_mut().zip(ok) {
            k.failing_since = if *ok {
                None
            } else {
                Some(k.failing_since.unwrap_or(now))
            };
        }
        let prune_after = self.shared.config().sentinel_prune_after;
        let mut kept = Vec::with_capacity(self.known.len());
        for k in std::mem::take(&mut self.known) {
            if !k.configured && k.failing_since.is_some_and(|t| now - t > prune_after) {
                info!(sentinel = %k.addr, "forgetting a discovered sentinel that stayed unreachable");
                self.forget(&k);
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
