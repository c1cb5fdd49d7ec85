//! Durable acknowledgements for dedicated sessions (1:1 mode, and pooled clients on a lent or
//! pinned connection): the group's *barrier*, one connection to the master of its own that
//! confirms that N replicas have every write the master ran before a given moment.
//!
//! A dedicated session's stream is the client's own, so nothing is added to it (no reply counts,
//! `MULTI`, `CLIENT REPLY` or client `WAIT` to keep apart). Instead, once a write's reply has
//! arrived, the session takes a ticket (`Barrier::ticket`) and holds that reply (and what comes
//! after it) until its ticket is resolved. The barrier's task then sends `PUBLISH` to a channel
//! of its own (propagated to the replicas, so the connection's replication offset passes every
//! write the master ran before it: `WAIT` counts replicas at or past a connection's own offset)
//! and `WAIT N timeout`, in one write. One round covers every ticket taken before it began: the
//! writes of all sessions that arrived meanwhile share one `WAIT`.
//!
//! Rounds run one at a time, in order, against the route's master of the moment; each is
//! resolved with the generation it ran on, so a session whose write went to another master
//! (a switch came between) is told the write was not confirmed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis_protocol::resp2::types::OwnedFrame;
use tokio::sync::{Notify, watch};
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::ack::Verdict;
use crate::Group;
use crate::sentinel::client::RespConn;

/// The channel the barrier publishes to (nothing subscribes; `PUBLISH` is only there to move
/// the connection's replication offset past everything before it).
pub(crate) const CHANNEL: &[u8] = b"__sentinel-proxy:ack";

/// What the rounds so far have said.
#[derive(Debug, Clone, Default)]
pub(crate) struct Resolved {
    /// Every ticket up to this one is resolved.
    pub(crate) upto: u64,
    /// The tickets confirmed on the master of the last two generations a round ran on: (the
    /// generation, confirmed up to this ticket). A round's confirmation covers the earlier
    /// writes on its master too.
    pub(crate) ok: [(u64, u64); 2],
    /// The last round that did not confirm: its generation and why.
    pub(crate) failed: Option<(u64, Arc<Verdict>)>,
}

impl Resolved {
    /// Whether `ticket`, taken for writes on the master of `generation`, is resolved, and if so
    /// whether they were confirmed (`Ok`) or why not.
    pub(crate) fn of(&self, ticket: u64, generation: u64) -> Option<Result<(), Verdict>> {
        if self.upto < ticket {
            return None;
        }
        if self.ok.iter().any(|&(g, t)| g == generation && t >= ticket) {
            return Some(Ok(()));
        }
        Some(Err(match &self.failed {
            Some((g, v)) if *g == generation => (**v).clone(),
            _ => Verdict::Lost("the master changed before its replicas confirmed it".into()),
        }))
    }

    fn confirmed(&mut self, generation: u64, upto: u64) {
        if self.ok[0].0 != generation {
            self.ok[1] = self.ok[0];
        }
        self.ok[0] = (generation, upto);
    }
}

/// A group's barrier, shared by its sessions (lock-free: one atomic add per ticket).
#[derive(Debug)]
pub(crate) struct Barrier {
    requested: AtomicU64,
    wake: Notify,
    resolved: watch::Sender<Resolved>,
}

impl Default for Barrier {
    fn default() -> Self {
        Barrier {
            requested: AtomicU64::new(0),
            wake: Notify::new(),
            resolved: watch::Sender::new(Resolved::default()),
        }
    }
}

impl Barrier {
    /// A ticket for the writes whose replies have arrived by now; resolved by the next round
    /// that begins.
    pub(crate) fn ticket(&self) -> u64 {
        let t = self.requested.fetch_add(1, Ordering::SeqCst) + 1;
        self.wake.notify_one();
        t
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<Resolved> {
        self.resolved.subscribe()
    }

    /// A round up to `upto` on `generation` ended so (what `run` does after asking the master).
    #[cfg(test)]
    pub(crate) fn resolved_for_test(&self, upto: u64, generation: u64, verdict: Verdict) {
        record(&self.resolved, upto, generation, verdict);
    }
}

/// One round: `PUBLISH` then `WAIT`, read both answers.
async fn round(c: &mut RespConn, need: &[u8], wait_ms: &[u8], t: Duration) -> Verdict {
    let asked = async {
        c.send(&[b"PUBLISH", CHANNEL, b"1"]).await?;
        c.send(&[b"WAIT", need, wait_ms]).await?;
        let published = c.read_frame().await?;
        let waited = c.read_frame().await?;
        Ok::<_, crate::sentinel::client::ClientError>((published, waited))
    };
    match timeout(t, asked).await {
        Err(_) => Verdict::Lost("the master did not answer in time".into()),
        Ok(Err(e)) => Verdict::Lost(format!("the connection to the master failed: {e}")),
        Ok(Ok((OwnedFrame::Error(e), _))) => Verdict::Lost(format!(
            "it refused PUBLISH {}: {}",
            String::from_utf8_lossy(CHANNEL),
            e.lines().next().unwrap_or_default()
        )),
        Ok(Ok((_, OwnedFrame::Integer(n)))) if n >= parse(need) => Verdict::Acked,
        Ok(Ok((_, OwnedFrame::Integer(n)))) => Verdict::Short(n),
        Ok(Ok((_, OwnedFrame::Error(e)))) => {
            Verdict::Failed(e.lines().next().unwrap_or_default().into())
        }
        Ok(Ok(_)) => Verdict::Failed("an unexpected reply".into()),
    }
}

fn parse(n: &[u8]) -> i64 {
    std::str::from_utf8(n)
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(i64::MAX)
}

/// Serve the group's barrier: a round whenever tickets are waiting, on one connection kept
/// while the master stays the same; after `stop`, for as long as sessions drain
/// (`--shutdown-timeout`), so that the writes they hold are answered.
pub(crate) async fn run(group: Arc<Group>, stop: CancellationToken) {
    let barrier = &group.barrier;
    let mut conn: Option<(u64, RespConn)> = None;
    let mut done = 0u64;
    let mut until: Option<Instant> = None;
    loop {
        let drained = async {
            match until {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stop.cancelled(), if until.is_none() => {
                until = Some(Instant::now() + group.config().shutdown_timeout);
                continue;
            }
            _ = drained => return,
            _ = barrier.wake.notified() => {}
        }
        loop {
            let upto = barrier.requested.load(Ordering::SeqCst);
            if upto <= done {
                break;
            }
            let route = group.route.load();
            let generation = route.generation;
            let crate::config::Ack::Replicas(need) = group.settings().ack else {
                // Turned off by a reload: nothing waits for the replicas any more.
                resolve(&group, upto, generation, Verdict::Acked, &mut done);
                continue;
            };
            let Some(master) = route.master else {
                let v = Verdict::Lost("no master".into());
                resolve(&group, upto, generation, v, &mut done);
                continue;
            };
            let config = group.config();
            if conn.as_ref().is_none_or(|(g, _)| *g != generation) {
                let settings = group.settings();
                conn = match RespConn::connect_addr(
                    master,
                    &settings.master_auth,
                    config.connect_timeout,
                )
                .await
                {
                    Ok(c) => Some((generation, c)),
                    Err(e) => {
                        debug!(group = %group.name, error = %e, "ack barrier: no connection");
                        let v = Verdict::Lost(format!("no connection to the master ({e})"));
                        resolve(&group, upto, generation, v, &mut done);
                        continue;
                    }
                };
            }
            let Some((_, c)) = conn.as_mut() else {
                continue;
            };
            let (n, ms) = (
                need.to_string(),
                config.ack_timeout.as_millis().max(1).to_string(),
            );
            let began = Instant::now();
            group.metrics.ack_waits_total.inc();
            let verdict = round(
                c,
                n.as_bytes(),
                ms.as_bytes(),
                config.ack_timeout + config.connect_timeout,
            )
            .await;
            group
                .metrics
                .ack_wait_seconds
                .observe(began.elapsed().as_secs_f64());
            if matches!(verdict, Verdict::Lost(_)) {
                conn = None;
            }
            resolve(&group, upto, generation, verdict, &mut done);
        }
    }
}

fn resolve(group: &Group, upto: u64, generation: u64, verdict: Verdict, done: &mut u64) {
    *done = upto;
    record(&group.barrier.resolved, upto, generation, verdict);
}

fn record(resolved: &watch::Sender<Resolved>, upto: u64, generation: u64, verdict: Verdict) {
    resolved.send_modify(|r| {
        r.upto = upto;
        if verdict == Verdict::Acked {
            r.confirmed(generation, upto);
        } else {
            r.failed = Some((generation, Arc::new(verdict)));
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_is_confirmed_by_a_round_on_its_own_master_only() {
        let mut r = Resolved::default();
        assert_eq!(r.of(1, 3), None);
        r.upto = 2;
        r.confirmed(3, 2);
        assert_eq!(r.of(1, 3), Some(Ok(())));
        assert_eq!(r.of(2, 3), Some(Ok(())));
        assert_eq!(r.of(3, 3), None);
        assert!(matches!(r.of(2, 2), Some(Err(Verdict::Lost(_)))));
        // A later round that failed: the tickets it covered failed, the earlier stay confirmed.
        r.upto = 5;
        r.failed = Some((3, Arc::new(Verdict::Short(0))));
        assert_eq!(r.of(4, 3), Some(Err(Verdict::Short(0))));
        assert_eq!(r.of(2, 3), Some(Ok(())));
        // A round on the next master: what the last one confirmed stays confirmed.
        r.upto = 6;
        r.confirmed(4, 6);
        assert_eq!(r.of(2, 3), Some(Ok(())));
        assert_eq!(r.of(6, 4), Some(Ok(())));
        assert!(matches!(r.of(4, 3), Some(Err(Verdict::Short(0)))));
        assert!(matches!(r.of(6, 3), Some(Err(_))));
    }
}
